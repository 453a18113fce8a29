//! A log that runs out of room: the map size setting, and what the store and openraft do
//! when a write fails.

mod support;

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{Fatal, RaftError};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::RaftLogReader;
use starling_store::StoreOptions;
use starling_store::Vote;
use support::{
    entry, filler, node1, reopen, start_raft, tiny_log_options, wait_leader, TestResult,
};

/// Goal: the log's LMDB map size is a setting, and it bounds what the log can hold.
/// Method: append 1 MiB of entries (in 4 KiB entries, 16 per append) to a store opened with a
/// 256 KiB log map, and to one opened with the default options; only the first fails.
#[tokio::test]
async fn map_size_setting_bounds_the_log() -> TestResult {
    let root = tempfile::tempdir()?;
    tracing::info!("--- a 256 KiB log map cannot hold 1 MiB");
    let (mut small, _) =
        starling_store::open_with(&root.path().join("small"), &tiny_log_options())?;
    let mut refused = None;
    for first in (0..256).step_by(16) {
        let appended = small
            .blocking_append((first..first + 16).map(|index| entry(index, 4096)))
            .await;
        if let Err(error) = appended {
            refused = Some(error);
            break;
        }
    }
    assert!(refused.is_some(), "1 MiB fit in a 256 KiB map");

    tracing::info!("--- the default map holds it");
    let (mut large, _) =
        starling_store::open_with(&root.path().join("large"), &StoreOptions::default())?;
    for first in (0..256).step_by(16) {
        large
            .blocking_append((first..first + 16).map(|index| entry(index, 4096)))
            .await?;
    }
    Ok(())
}

/// Goal: a write that fails takes the log out of service: openraft gets the error through
/// the flush callback, the failure is reported with its cause, nothing that failed can be read,
/// every later write fails, and after a restart with a larger map the log ends at the last
/// durable entry and takes writes again.
/// Method: append single 3 KiB entries to a store with a 256 KiB log map until one fails; then
/// read, write and check its health; drop it and reopen it with the default map.
#[tokio::test]
async fn a_failed_write_takes_the_store_out_of_service() -> TestResult {
    let root = tempfile::tempdir()?;
    let (mut log_store, state_machine) =
        starling_store::open_with(root.path(), &tiny_log_options())?;
    let health = log_store.health().clone();
    let mut failure_seen = health.subscribe();

    tracing::info!("--- append until the map is full");
    let mut failed_at = None;
    for index in 0..10_000 {
        assert_eq!(health.failure(), None, "healthy before entry {index}");
        if let Err(error) = log_store.blocking_append([entry(index, 3000)]).await {
            tracing::info!(index, %error, "append failed");
            failed_at = Some(index);
            break;
        }
    }
    let failed_at = failed_at.ok_or("10,000 entries of 3 KiB fit in 256 KiB")?;
    assert!(failed_at > 0, "not even one entry fit");

    tracing::info!("--- the failure is reported, with its cause, to both halves");
    let cause = health.failure().ok_or("no failure reported")?;
    assert!(cause.contains("over their limit"), "{cause}");
    assert!(failure_seen.has_changed()?);
    assert_eq!(
        failure_seen.borrow_and_update().as_deref(),
        Some(cause.as_str())
    );
    assert_eq!(health.failed().await, cause);
    assert_eq!(
        state_machine.health().failure().as_deref(),
        Some(cause.as_str())
    );

    tracing::info!("--- what failed cannot be read; the log ends at the last durable entry");
    assert!(log_store.try_get_log_entries(failed_at..).await?.is_empty());
    let state = log_store.get_log_state().await?;
    assert_eq!(state.last_log_id, Some(entry(failed_at - 1, 0).log_id));

    tracing::info!("--- every later write fails, however small");
    let small = log_store.blocking_append([entry(failed_at, 10)]).await;
    assert!(small.is_err(), "an append after the failure was taken");
    assert!(log_store.save_vote(&Vote::new(2, 1)).await.is_err());
    assert!(log_store
        .save_committed(Some(entry(0, 0).log_id))
        .await
        .is_err());
    assert!(log_store
        .truncate_after(Some(entry(1, 0).log_id))
        .await
        .is_err());
    assert!(log_store.purge(entry(0, 0).log_id).await.is_err());
    assert!(log_store.try_get_log_entries(failed_at..).await?.is_empty());
    assert_eq!(log_store.read_vote().await?, None);
    assert_eq!(
        health.failure().as_deref(),
        Some(cause.as_str()),
        "first cause kept"
    );

    tracing::info!("--- reopened with a larger map: the durable entries, and service again");
    drop((log_store, state_machine));
    let (mut log_store, _state_machine) =
        starling_store::open_with(root.path(), &StoreOptions::default())?;
    assert_eq!(log_store.health().failure(), None);
    let state = log_store.get_log_state().await?;
    assert_eq!(state.last_log_id, Some(entry(failed_at - 1, 0).log_id));
    let stored = log_store.try_get_log_entries(0..).await?;
    let indexes: Vec<u64> = stored.iter().map(|entry| entry.log_id.index).collect();
    assert_eq!(indexes, (0..failed_at).collect::<Vec<_>>());
    log_store.blocking_append([entry(failed_at, 3000)]).await?;
    Ok(())
}

/// Goal: a member whose log fills stops as openraft requires: its writes fail with a fatal
/// storage error (no panic, no hang), the store reports why, and what it acknowledged is
/// exactly what is on disk, so it starts again once given room.
/// Method: a single-node Raft over a 256 KiB log map takes 3 KiB writes until one fails; check
/// the error, the health report and openraft's state; shut it down, reopen the store with the
/// default map: its log ends at the last acknowledged write, and a new node leads and writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_stops_raft_and_keeps_what_it_acknowledged() -> TestResult {
    let root = tempfile::tempdir()?;
    let (log_store, state_machine) = starling_store::open_with(root.path(), &tiny_log_options())?;
    let health = log_store.health().clone();
    let raft = start_raft(log_store, state_machine).await?;
    raft.initialize(node1()).await?;
    wait_leader(&raft).await?;

    tracing::info!("--- write until the log is full");
    let mut acknowledged = None;
    let mut refusal = None;
    for _ in 0..10_000 {
        let write = raft.client_write(filler(3000));
        match tokio::time::timeout(Duration::from_secs(10), write).await {
            Err(_) => return Err("a write hung".into()),
            Ok(Ok(response)) => acknowledged = Some(response.log_id),
            Ok(Err(error)) => {
                refusal = Some(error);
                break;
            }
        }
    }
    let refusal = refusal.ok_or("10,000 writes of 3 KiB fit in 256 KiB")?;
    let acknowledged = acknowledged.ok_or("no write fit")?;
    assert!(
        matches!(refusal, RaftError::Fatal(Fatal::StorageError(_))),
        "{refusal:?}"
    );

    tracing::info!("--- the store says why, and openraft has stopped");
    let cause = tokio::time::timeout(Duration::from_secs(5), health.failed()).await?;
    assert!(cause.contains("over their limit"), "{cause}");
    let running = raft.metrics().borrow_watched().running_state.clone();
    assert!(
        matches!(running, Err(Fatal::StorageError(_))),
        "{running:?}"
    );
    let later = raft.client_write(filler(10)).await;
    assert!(matches!(later, Err(RaftError::Fatal(_))), "{later:?}");
    raft.shutdown().await?;
    drop(raft);

    tracing::info!("--- reopened with a larger map: the log ends at the last acknowledged write");
    let (mut log_store, state_machine) = reopen(root.path(), &StoreOptions::default()).await?;
    let state = log_store.get_log_state().await?;
    assert_eq!(state.last_log_id, Some(acknowledged));
    let stored = log_store.try_get_log_entries(0..).await?;
    let indexes: Vec<u64> = stored.iter().map(|entry| entry.log_id.index).collect();
    assert_eq!(indexes, (0..=acknowledged.index).collect::<Vec<_>>());

    tracing::info!("--- and a node started on it leads and writes again");
    let raft = start_raft(log_store, state_machine).await?;
    wait_leader(&raft).await?;
    let written = raft.client_write(filler(10)).await?;
    assert!(written.log_id.index > acknowledged.index);
    raft.shutdown().await?;
    Ok(())
}
