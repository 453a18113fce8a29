//! Recovery from quorum loss: make one stopped member the only voter of the cluster database.
//!
//! When most voters are gone for good, no leader can be elected and nothing can be written. As
//! LXD's `lxd cluster recover-from-quorum-loss` (dqlite's `node.Recover`) does, an operator then
//! picks a survivor, stops it, and runs [`recover_as_sole_voter`] on its database directory:
//!
//! 1. the last snapshot is loaded and **every** entry of the survivor's log after it is applied,
//!    committed or not, since the survivor's whole log is the best record left;
//! 2. a new snapshot of that state is written at the last index, under a term above any seen,
//!    with a membership where the survivor is the only voter;
//! 3. the log is emptied behind that snapshot, and a committed vote for the survivor saved,
//!    so that it restarts as leader at once and needs nobody to commit.
//!
//! The members listed in the cluster state are left as they are: the lost ones are removed
//! afterwards (`cluster remove --force`) or join again.
//!
//! Running it twice is harmless: the second run finds an empty log behind the recovered
//! snapshot and only raises the term again. If it stops between steps 2 and 3, openraft discards
//! the stale entries at start (they fall behind the snapshot's newer log id), and running it
//! again finishes the job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::dir_lock::DirLock;
use crate::log_store::StoredLog;
use crate::{
    ClusterState, EntryPayload, Error, LogId, Membership, Node, NodeId, StoredMembership, Vote,
};

/// What a recovery did, to tell the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Index of the last entry kept: everything up to it is in the recovered state.
    pub last_index: u64,
    /// The new term the member restarts in.
    pub term: u64,
    /// How many members the cluster state still lists (the lost ones included).
    pub members: usize,
}

/// Turns the member whose database is in `dir` into the only voter of the cluster database, as
/// Raft node `id` reachable at `node`. The member must be stopped.
///
/// `dir` is the directory [`crate::open`] takes. Fails with [`Error::NoDatabase`] if there is no
/// database in it, and with [`Error::Locked`] while a member runs on it.
pub fn recover_as_sole_voter(dir: &Path, id: NodeId, node: Node) -> Result<Recovery, Error> {
    let Replica {
        _lock,
        log_store,
        state_machine,
        snapshot_log_id,
        mut state,
        stored,
    } = Replica::open(dir)?;
    if snapshot_log_id.is_none() && stored.entries.is_empty() {
        return Err(no_database(dir));
    }
    let last_applied = apply_log(&mut state, snapshot_log_id, &stored)?;
    let last_index = last_applied.map_or(0, |log_id| log_id.index);
    let term = highest_term(snapshot_log_id, &stored)
        .checked_add(1)
        .ok_or_else(|| Error::Inconsistent("the stored term cannot grow any more".to_string()))?;
    let recovered = crate::log_id(term, id, last_index);
    let membership = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]))
        .map_err(|error| Error::Inconsistent(format!("the sole voter's membership: {error}")))?;
    // The snapshot goes first: until the log is reset, the old entries remain a valid log behind
    // it, so a crash in between leaves a database that still opens.
    state_machine.replace_snapshot(
        recovered,
        StoredMembership::new(Some(recovered), membership),
        &state,
    )?;
    log_store.reset_to(recovered, &Vote::new_committed(term, id))?;
    tracing::info!(dir = %dir.display(), id, term, last_index, "recovered as the only voter");
    Ok(Recovery {
        last_index,
        term,
        members: state.members.len(),
    })
}

/// The cluster state in a stopped member's database: its last snapshot with every entry of its
/// log after it applied (committed or not), and the index of the last one. For inspection
/// (tests, support); it changes nothing.
pub fn read_stopped_state(dir: &Path) -> Result<(ClusterState, u64), Error> {
    let mut replica = Replica::open(dir)?;
    let last = apply_log(&mut replica.state, replica.snapshot_log_id, &replica.stored)?;
    Ok((replica.state, last.map_or(0, |log_id| log_id.index)))
}

/// A stopped member's database, opened and locked: its last snapshot and the log after it.
struct Replica {
    // Declared first so that it is released last, after both LMDB environments close.
    _lock: DirLock,
    log_store: crate::LogStore,
    state_machine: crate::StateMachine,
    snapshot_log_id: Option<LogId>,
    /// The state of the snapshot.
    state: ClusterState,
    /// The log after the snapshot.
    stored: StoredLog,
}

impl Replica {
    fn open(dir: &Path) -> Result<Replica, Error> {
        // Checked before locking, which would create the directory.
        if !dir.join("log").is_dir() || !dir.join("state").is_dir() {
            return Err(no_database(dir));
        }
        let lock = DirLock::acquire(dir)?;
        let (log_store, state_machine) = crate::open(dir)?;
        // Right after opening, the state machine holds exactly the stored snapshot.
        let snapshot_log_id = state_machine.last_applied();
        let state = state_machine.read(ClusterState::clone);
        let stored = log_store.read_stored(next_index(snapshot_log_id))?;
        Ok(Replica {
            _lock: lock,
            log_store,
            state_machine,
            snapshot_log_id,
            state,
            stored,
        })
    }
}

fn no_database(dir: &Path) -> Error {
    Error::NoDatabase {
        path: dir.display().to_string(),
    }
}

/// The index of the entry that follows `log_id` (the first entry, 0, if there is none).
fn next_index(log_id: Option<LogId>) -> u64 {
    log_id.map_or(0, |log_id| log_id.index.saturating_add(1))
}

/// Applies the stored entries after the snapshot to `state`, in order, and returns the log id
/// of the last one (the snapshot's if there is none).
///
/// A command the state refuses is skipped, as it was when the entry was first applied: refusals
/// are deterministic, and the state is unchanged by them.
fn apply_log(
    state: &mut ClusterState,
    snapshot_log_id: Option<LogId>,
    stored: &StoredLog,
) -> Result<Option<LogId>, Error> {
    let snapshot_index = snapshot_log_id.map(|log_id| log_id.index);
    if let Some(purged) = stored.last_purged {
        if Some(purged.index) > snapshot_index {
            return Err(Error::Inconsistent(format!(
                "entries up to index {} were purged but the snapshot ends at {}",
                purged.index,
                snapshot_index.map_or("nothing".to_string(), |index| index.to_string())
            )));
        }
    }
    let mut last = snapshot_log_id;
    for entry in &stored.entries {
        let expected = next_index(last);
        if entry.log_id.index != expected {
            return Err(Error::Inconsistent(format!(
                "the log skips from index {expected} to {}",
                entry.log_id.index
            )));
        }
        if let EntryPayload::Normal(command) = &entry.payload {
            // As the state machine does: a batch applies command by command.
            let response = state.apply_entry(command);
            if let Err(refusal) = response.result {
                tracing::debug!(index = entry.log_id.index, %refusal, "refused entry skipped");
            }
        }
        last = Some(entry.log_id);
    }
    Ok(last)
}

/// The highest term the database has seen: in its vote, snapshot, purge mark or entries.
fn highest_term(snapshot_log_id: Option<LogId>, stored: &StoredLog) -> u64 {
    let log_ids = [snapshot_log_id, stored.committed, stored.last_purged]
        .into_iter()
        .flatten()
        .chain(stored.entries.iter().map(|entry| entry.log_id));
    let vote_term = stored.vote.map_or(0, |vote| vote.leader_id.term);
    log_ids
        .map(|log_id| log_id.leader_id.term)
        .fold(vote_term, u64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::no_network::NoNetwork;
    use crate::Raft;
    use crate::{Command, LogStore, StateMachine};
    use openraft::async_runtime::WatchReceiver;
    use openraft::{BasicNode, ServerState};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn node(address: &str) -> Node {
        BasicNode {
            addr: address.to_string(),
        }
    }

    fn config_set(key: &str, value: &str) -> Command {
        Command::ConfigSet {
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    /// Raft node 1 running on a database, with handles on its store for the checks.
    struct TestNode {
        raft: Raft,
        log_store: LogStore,
        state_machine: StateMachine,
    }

    /// Starts Raft node 1 on the database in `dir`, with fast timeouts.
    async fn start_node(dir: &Path) -> Result<TestNode, Box<dyn std::error::Error>> {
        let config = openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..Default::default()
        };
        let (log_store, state_machine) = crate::open(dir)?;
        let config = Arc::new(config.validate()?);
        let raft = Raft::new(
            1,
            config,
            NoNetwork,
            log_store.clone(),
            state_machine.clone(),
        )
        .await?;
        Ok(TestNode {
            raft,
            log_store,
            state_machine,
        })
    }

    impl TestNode {
        /// Waits until node 1 leads, or fails after a few seconds.
        async fn wait_leader(&self) -> TestResult {
            self.raft
                .wait(Some(Duration::from_secs(5)))
                .state(ServerState::Leader, "node 1 leads")
                .await?;
            Ok(())
        }

        /// Waits until LMDB holds `count` entries (appends become durable on the writer
        /// thread, after openraft has already counted them).
        async fn wait_durable_entries(&self, count: usize) -> TestResult {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.log_store.read_stored(0)?.entries.len() < count {
                if Instant::now() >= deadline {
                    return Err(format!("{count} entries never reached LMDB").into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }

        /// Shuts the node down and waits until its LMDB environments are closed, which happens
        /// once its last tasks have dropped the store (LMDB allows one per path and process).
        async fn stop(self, dir: &Path) -> TestResult {
            self.raft.shutdown().await?;
            drop(self);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match crate::open(dir) {
                    Ok(_) => return Ok(()),
                    Err(Error::Lmdb(heed::Error::EnvAlreadyOpened))
                        if Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }

    /// Node 1 with two peers that never answer: it writes `user.before=1` alone, adds them,
    /// then begins a membership change to all three, which cannot commit (and a write after it
    /// is refused). Leaves six entries (0..=5) on disk and the node stopped.
    async fn cluster_that_lost_quorum(dir: &Path) -> TestResult {
        let node1 = start_node(dir).await?;
        node1
            .raft
            .initialize(BTreeMap::from([(1, node("10.0.0.1:1"))]))
            .await?;
        node1.wait_leader().await?;
        node1
            .raft
            .client_write(config_set("user.before", "1"))
            .await?;
        for (id, address) in [(2, "10.0.0.2:1"), (3, "10.0.0.3:1")] {
            node1.raft.add_learner(id, node(address), false).await?;
        }
        // The joint configuration needs 2 or 3 to commit: this is the quorum loss. The write
        // behind it cannot commit either, but it is in the survivor's log.
        let changing = node1.raft.clone();
        let change = tokio::spawn(async move {
            changing
                .change_membership(BTreeSet::from([1, 2, 3]), false)
                .await
        });
        node1.wait_durable_entries(6).await?;
        // A write now is refused: the leader has lost its lease (no quorum answers), so no
        // client entry follows the membership change in the log.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let refused = node1
            .raft
            .client_write(config_set("user.during", "2"))
            .await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(!change.is_finished(), "the membership change cannot commit");
        node1.stop(dir).await?;
        change.abort();
        Ok(())
    }

    /// Goal: a member whose peers are lost comes back as the only voter and leads, with what its
    /// log held (committed or not), and takes new writes.
    /// Method: a real openraft node writes alone, adds two peers that never answer and begins a
    /// membership change to them, then a write that cannot commit; stop it, recover, start a
    /// fresh node on the same directory, wait for it to lead, read and write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survivor_leads_alone_with_its_whole_log() -> TestResult {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("db");
        tracing::info!("--- lose the quorum during a membership change");
        cluster_that_lost_quorum(&dir).await?;

        tracing::info!("--- recover as node 1");
        let recovery = recover_as_sole_voter(&dir, 1, node("10.0.0.1:2"))?;
        assert_eq!(recovery.last_index, 5);
        assert!(recovery.term >= 2, "{recovery:?}");
        assert_eq!(recovery.members, 0);

        tracing::info!("--- restart: node 1 leads alone");
        let node1 = start_node(&dir).await?;
        node1.wait_leader().await?;
        let metrics = node1.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        assert_eq!(membership.voter_ids().collect::<Vec<_>>(), [1]);
        assert_eq!(membership.learner_ids().count(), 0);
        assert_eq!(membership.get_node(&1), Some(&node("10.0.0.1:2")));
        assert_eq!(metrics.current_term, recovery.term);

        tracing::info!("--- the log's writes are there, and new ones commit");
        let written = node1
            .raft
            .client_write(config_set("user.after", "3"))
            .await?;
        assert_eq!(written.log_id.index, recovery.last_index + 1);
        let config = node1.state_machine.read(|state| state.config.clone());
        assert_eq!(config.get("user.before").map(String::as_str), Some("1"));
        assert_eq!(config.get("user.during"), None);
        assert_eq!(config.get("user.after").map(String::as_str), Some("3"));
        node1.stop(&dir).await
    }

    /// Goal: recovery never touches a database a running member holds, and running it again
    /// is harmless.
    /// Method: hold the directory's lock, recover (refused with `Locked`), release it, recover
    /// twice, and read the state back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_while_the_directory_is_locked() -> TestResult {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("db");
        tracing::info!("--- a database with one write");
        let node1 = start_node(&dir).await?;
        node1
            .raft
            .initialize(BTreeMap::from([(1, node("10.0.0.1:1"))]))
            .await?;
        node1.wait_leader().await?;
        node1
            .raft
            .client_write(config_set("user.before", "1"))
            .await?;
        node1.stop(&dir).await?;

        tracing::info!("--- refused while locked, done once released");
        let held = DirLock::acquire(&dir)?;
        let refused = recover_as_sole_voter(&dir, 1, node("10.0.0.1:1"));
        assert!(matches!(refused, Err(Error::Locked { .. })), "{refused:?}");
        drop(held);
        let recovery = recover_as_sole_voter(&dir, 1, node("10.0.0.1:1"))?;
        assert_eq!(recovery.last_index, 2);

        tracing::info!("--- a second run keeps everything and only raises the term");
        let again = recover_as_sole_voter(&dir, 1, node("10.0.0.1:1"))?;
        assert_eq!(again.last_index, recovery.last_index);
        assert_eq!(again.term, recovery.term + 1);
        let (_, state_machine) = crate::open(&dir)?;
        let before = state_machine.read(|state| state.config.get("user.before").cloned());
        assert_eq!(before.as_deref(), Some("1"));
        Ok(())
    }

    /// Goal: a path without a database is refused, and nothing is created there.
    /// Method: recover on a missing directory and on an empty one.
    #[test]
    fn refuses_a_directory_without_a_database() -> TestResult {
        let root = tempfile::tempdir()?;
        let missing = root.path().join("missing");
        let refused = recover_as_sole_voter(&missing, 1, node("10.0.0.1:1"));
        assert!(
            matches!(refused, Err(Error::NoDatabase { .. })),
            "{refused:?}"
        );
        assert!(!missing.exists());
        let empty = root.path().join("empty");
        crate::open(&empty)?;
        let refused = recover_as_sole_voter(&empty, 1, node("10.0.0.1:1"));
        let message = refused.map(|_| ()).unwrap_err().to_string();
        assert!(message.starts_with("no database in"), "{message}");
        Ok(())
    }

    /// Goal: a batched entry (group commit) is applied command by command when the log is
    /// replayed offline; before, the whole batch was refused as "nested" and skipped.
    #[test]
    fn replay_applies_batches() {
        let set = |key: &str| Command::ConfigSet {
            key: key.into(),
            value: "1".into(),
        };
        let entry = crate::Entry {
            log_id: crate::log_id(1, 1, 0),
            payload: EntryPayload::Normal(Command::Batch(
                vec![set("user.a"), set("user.b")].into(),
            )),
        };
        let stored = StoredLog {
            vote: None,
            committed: None,
            last_purged: None,
            entries: vec![entry],
        };
        let mut state = ClusterState::default();
        apply_log(&mut state, None, &stored).unwrap();
        assert_eq!(state.config.len(), 2, "{:?}", state.config);
    }
}
