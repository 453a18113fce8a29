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
