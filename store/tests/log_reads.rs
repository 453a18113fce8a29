//! What replication reads from the log.

mod support;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use support::{entry, TestResult};

fn indexes(entries: &[starling_store::Entry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.log_id.index).collect()
}

/// Goal: replication is never handed entries that do not start where it asked. openraft
/// builds the append from the entry before `start`, so an answer that began later (the entry
/// at `start` purged meanwhile) would leave a hole in the follower's log.
/// Method: entries 1 to 10, purged up to 5; replication asks for 3..10 (its start is purged):
/// nothing; for 6..10: entries 6 to 9. The apply path (`try_get_log_entries`) may still read
/// what is left of a range whose beginning was purged, as openraft's contract allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_reads_start_where_asked() -> TestResult {
    let root = tempfile::tempdir()?;
    let (mut log_store, _state_machine) = starling_store::open(root.path())?;
    log_store
        .blocking_append((1..=10).map(|index| entry(index, 8)))
        .await?;
    log_store.purge(entry(5, 8).log_id).await?;
    let from_purged = log_store.limited_get_log_entries(3, 10).await?;
    assert!(
        from_purged.is_empty(),
        "asked from 3 (purged), answered {:?}",
        indexes(&from_purged)
    );
    let kept = log_store.limited_get_log_entries(6, 10).await?;
    assert_eq!(indexes(&kept), vec![6, 7, 8, 9]);
    let rest = log_store.try_get_log_entries(3..10).await?;
    assert_eq!(indexes(&rest), vec![6, 7, 8, 9]);
    Ok(())
}

/// Goal: a read of the log never fails while a truncation rewrites what it reads. The entries'
/// places are found under the segments' lock; reading them after letting go of it let the
/// writer thread zero (or overwrite, with another term) a record in between, and the read
/// failed as a damaged record, a storage error that stops openraft.
/// Method: one task truncates after entry 4 and appends entries 5 to 40 again with a new
/// term, 300 times; another reads entries 1 to 40 all the while. Every read succeeds and
/// starts at entry 1 with consecutive indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_fail_while_a_truncation_rewrites_the_log() -> TestResult {
    let root = tempfile::tempdir()?;
    let (mut log_store, _state_machine) = starling_store::open(root.path())?;
    log_store
        .blocking_append((1..=40).map(|index| entry(index, 64)))
        .await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reader = log_store.clone();
    let reading = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let entries = reader.try_get_log_entries(1..41).await?;
                let read = indexes(&entries);
                let expected: Vec<u64> = (1..=read.len() as u64).collect();
                assert_eq!(read, expected, "read after {reads} reads");
                reads += 1;
                tokio::task::yield_now().await;
            }
            Ok::<u64, std::io::Error>(reads)
        })
    };
    for term in 2..302u64 {
        log_store
            .truncate_after(Some(starling_store::log_id(1, 1, 4)))
            .await?;
        log_store
            .blocking_append((5..=40).map(|index| {
                let mut entry = entry(index, 64);
                entry.log_id = starling_store::log_id(term, 1, index);
                entry
            }))
            .await?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reading.await??;
    assert!(reads > 0, "the reader never read");
    Ok(())
}
