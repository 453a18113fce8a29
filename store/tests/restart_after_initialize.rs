//! A member killed during bootstrap, after Raft was initialized and before the bootstrap entry
//! was written, starts again cleanly on what it left.

mod support;

use std::collections::BTreeSet;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::RaftLogReader;
use starling_store::{Entry, EntryPayload, Membership, Vote};
use starling_store::{StateMachine, StoreOptions};
use support::{filler, node1, reopen, start_raft, wait_leader, TestResult};

/// Starts node 1 on the store in `dir`, waits until it leads, writes once and checks the write
/// was applied after the entries already there.
async fn leads_and_writes(dir: &std::path::Path) -> TestResult {
    let (mut log_store, state_machine) = reopen(dir, &StoreOptions::default()).await?;
    let before = log_store.get_log_state().await?.last_log_id;
    let watched: StateMachine = state_machine.clone();
    let raft = start_raft(log_store, state_machine).await?;
    wait_leader(&raft).await?;
    let written = raft.client_write(filler(1)).await?;
    assert!(
        Some(written.log_id) > before,
        "{written:?} after {before:?}"
    );
    assert_eq!(watched.last_applied(), Some(written.log_id));
    let value = watched.read(|state| state.config.get("user.filler").cloned());
    assert_eq!(value.as_deref(), Some("x"));
    raft.shutdown().await?;
    Ok(())
}

/// Goal: a member stopped right after `Raft::initialize`, before any client write, starts
/// again: it leads and takes writes.
/// Method: initialize a single-node Raft on a fresh store and shut it down at once; reopen the
/// store, check it holds the initial membership entry, start Raft again and write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_right_after_initialize() -> TestResult {
    let root = tempfile::tempdir()?;
    tracing::info!("--- initialize, then stop before the bootstrap write");
    let (log_store, state_machine) = starling_store::open(root.path())?;
    let raft = start_raft(log_store, state_machine).await?;
    raft.initialize(node1()).await?;
    raft.shutdown().await?;
    drop(raft);

    tracing::info!("--- the store holds the membership entry and reopens");
    let (mut log_store, _) = reopen(root.path(), &StoreOptions::default()).await?;
    let first = log_store.try_get_log_entries(0..1).await?;
    assert!(
        matches!(
            first.as_slice(),
            [Entry {
                payload: EntryPayload::Membership(_),
                ..
            }]
        ),
        "{first:?}"
    );
    drop(log_store);

    tracing::info!("--- restarted, it leads and writes");
    leads_and_writes(root.path()).await
}

/// Goal: a database holding only the initial membership entry and a vote (a member killed
/// between `initialize` and its first election's end) opens, and openraft starts over it.
/// Method: write that entry and a vote (uncommitted, then committed) through the storage API,
/// reopen the store, start Raft on it and write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_membership_entry_and_a_vote() -> TestResult {
    for vote in [Vote::new(1, 1), Vote::new_committed(1, 1)] {
        let root = tempfile::tempdir()?;
        tracing::info!(%vote, "--- a database with the membership entry and a vote");
        {
            let (mut log_store, _) = starling_store::open(root.path())?;
            let membership = Membership::new(vec![BTreeSet::from([1])], node1())?;
            log_store
                .blocking_append([Entry {
                    log_id: starling_store::log_id(0, 0, 0),
                    payload: EntryPayload::Membership(membership),
                }])
                .await?;
            log_store.save_vote(&vote).await?;
        }

        tracing::info!("--- it opens, leads and writes");
        leads_and_writes(root.path()).await?;
    }
    Ok(())
}
