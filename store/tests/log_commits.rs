//! The committed index costs no durable write of its own on the write path.

mod support;

use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorage;
use support::{filler, reopen, start_raft, wait_leader, TestResult};

/// Goal: each client write costs one log transaction (one round of `fsync`s), not two, and
/// wakes the writer thread once, not twice: the committed index openraft saves after each
/// write waits for the next append instead of being committed alone, and wakes no writer that
/// already holds one back; once the log is idle it is still written.
/// Method: a single-node Raft; 50 writes one after another; count the writer's transactions
/// and wake-ups; then wait past the idle delay and read the committed index back from LMDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_index_rides_with_the_next_append() -> TestResult {
    let root = tempfile::tempdir()?;
    let (log_store, state_machine) = starling_store::open(root.path())?;
    let mut watched = log_store.clone();
    let raft = start_raft(log_store, state_machine).await?;
    raft.initialize(support::node1()).await?;
    wait_leader(&raft).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    const WRITES: u64 = 50;
    let before = watched.commits();
    let woken_before = watched.writer_wakes();
    let mut last = None;
    for _ in 0..WRITES {
        last = Some(raft.client_write(filler(8)).await?.log_id);
    }
    let spent = watched.commits() - before;
    let woken = watched.writer_wakes() - woken_before;
    assert!(
        woken <= WRITES + 2,
        "{WRITES} writes woke the log writer {woken} times (at most {} expected)",
        WRITES + 2
    );
    assert!(
        spent <= WRITES + 2,
        "{WRITES} writes cost {spent} log transactions (at most {} expected)",
        WRITES + 2
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let saved = watched.read_committed().await?;
        if saved == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed index on disk {saved:?}, expected {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    raft.shutdown().await?;
    drop(raft);
    drop(watched);
    let _ = reopen(root.path(), &starling_store::StoreOptions::default()).await?;
    Ok(())
}

/// Goal: a committed index held back is not lost when the store closes right after it was
/// saved: a restart re-applies up to it, so the state does not go back.
/// Method: append an entry and save it as committed through the storage API, close the store
/// at once (well within the 100 ms the index may wait), reopen it and read the index back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_index_held_back_is_written_on_close() -> TestResult {
    use openraft::storage::RaftLogStorageExt;
    let root = tempfile::tempdir()?;
    let (mut log_store, state_machine) = starling_store::open(root.path())?;
    let entry = support::entry(1, 8);
    let last = entry.log_id;
    log_store.blocking_append([entry]).await?;
    log_store.save_committed(Some(last)).await?;
    drop(log_store);
    drop(state_machine);
    let (mut reopened, _) = reopen(root.path(), &starling_store::StoreOptions::default()).await?;
    assert_eq!(reopened.read_committed().await?, Some(last));
    Ok(())
}

/// Goal: a committed index beyond the durable log (a follower learns of a commit before its own
/// copy of the entry is written) is never stored ahead of the log: a restart would re-apply
/// entries the log lacks.
/// Method: append entry 1, save entry 3 as committed, close, reopen: nothing is stored; then
/// append 2 and 3 and close: 3 is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_index_never_runs_ahead_of_the_log() -> TestResult {
    use openraft::storage::RaftLogStorageExt;
    let root = tempfile::tempdir()?;
    let (mut log_store, state_machine) = starling_store::open(root.path())?;
    log_store.blocking_append([support::entry(1, 8)]).await?;
    let ahead = support::entry(3, 8).log_id;
    log_store.save_committed(Some(ahead)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(log_store);
    drop(state_machine);
    let (mut log_store, state_machine) =
        reopen(root.path(), &starling_store::StoreOptions::default()).await?;
    assert_eq!(log_store.read_committed().await?, None);
    log_store.save_committed(Some(ahead)).await?;
    log_store
        .blocking_append([support::entry(2, 8), support::entry(3, 8)])
        .await?;
    drop(log_store);
    drop(state_machine);
    let (mut reopened, _) = reopen(root.path(), &starling_store::StoreOptions::default()).await?;
    assert_eq!(reopened.read_committed().await?, Some(ahead));
    Ok(())
}
