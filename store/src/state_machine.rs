//! The state machine: the typed [`ClusterState`] in memory, with snapshots kept in LMDB.
//!
//! Applying an entry only changes memory; durability comes from the log. On start the state is
//! loaded from the last snapshot and openraft re-applies the committed entries after it, so a
//! restart always ends at the state that was acknowledged. A snapshot is taken every few
//! thousand entries (openraft's snapshot policy), which also bounds that replay.
//!
//! Snapshots and the state only move forward. openraft builds a snapshot in a task of its own
//! while it may install a newer one from the leader: a build stores its snapshot only if none
//! with a later last log id is stored (checked inside the write transaction), and an installed
//! snapshot replaces the in-memory state only if it is newer than what was applied.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use heed::types::{Bytes, Str};
use heed::{CommitOrAbort, Database, Env, WithoutTls};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::lifecycle::Lifecycle;

use crate::{
    ClusterState, CommandResponse, EntryPayload, Error, LogId, Snapshot, SnapshotData,
    SnapshotMeta, StorageHealth, StoredMembership, TypeConfig,
};

const KEY_SNAPSHOT: &str = "current";
/// Lifecycle events buffered for a slow receiver before it misses some.
const LIFECYCLE_BUFFERED: usize = 4_096;

type StorageResult<T> = Result<T, std::io::Error>;

/// The state machine of one member. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

struct Shared {
    env: Env<WithoutTls>,
    snapshots: Database<'static, Str, Bytes>,
    data: RwLock<Applied>,
    snapshots_built: AtomicU64,
    /// Index of the last applied entry, for waiters.
    applied_index: watch::Sender<u64>,
    /// The applied state's trust registry version, sent only when it changes.
    trust_version: watch::Sender<u64>,
    /// The lifecycle events of applied entries, as they apply (a receiver that falls behind
    /// is told how many it missed).
    lifecycle: broadcast::Sender<Lifecycle>,
    /// Set for good by the first write that fails (here or in the log).
    health: StorageHealth,
}

/// What the applied entries produced.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

/// A snapshot as stored in LMDB.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl StateMachine {
    /// Opens or creates the snapshot store under `dir` and loads the last snapshot, with the
    /// default map size ([`crate::StoreOptions`]).
    pub fn open(dir: &Path) -> Result<StateMachine, Error> {
        let options = crate::StoreOptions::default();
        let map_size_bytes = crate::map_size(options.snapshot_map_size_bytes);
        StateMachine::open_in(dir, map_size_bytes, StorageHealth::new())
    }

    /// Opens or creates the snapshot store under `dir`, an LMDB environment of `map_size_bytes`
    /// (a size LMDB accepts), and loads the last snapshot. Failed writes go to `health`.
    pub(crate) fn open_in(
        dir: &Path,
        map_size_bytes: usize,
        health: StorageHealth,
    ) -> Result<StateMachine, Error> {
        let env = crate::open_env(dir, map_size_bytes, 2)?;
        let write_txn = env.write_txn()?;
        let snapshots = env
            .create_databases_and_commit(write_txn, |opener, txn| -> Result<_, heed::Error> {
                let snapshots = opener.create_database::<Str, Bytes>(txn, Some("snapshots"))?;
                Ok(CommitOrAbort::<_, ()>::Commit(snapshots))
            })?
            .unwrap_commit();
        let (applied_index, _) = watch::channel(0);
        let (trust_version, _) = watch::channel(0);
        let (lifecycle, _) = broadcast::channel(LIFECYCLE_BUFFERED);
        let shared = Shared {
            lifecycle,
            env,
            snapshots,
            data: RwLock::default(),
            snapshots_built: AtomicU64::new(0),
            applied_index,
            trust_version,
            health,
        };
        let machine = StateMachine {
            shared: Arc::new(shared),
        };
        if let Some(stored) = machine.stored_snapshot()? {
            machine.advance_to(&stored.meta, decode_state(&stored.data)?);
        }
        Ok(machine)
    }

    /// Runs `read` on the current state (held briefly; do not block inside).
    pub fn read<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        read(&self.data().state)
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.data().last_applied
    }

    /// A receiver of the last applied index, for waiting until an entry is applied here.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.applied_index.subscribe()
    }

    /// A receiver of the applied state's trust registry version: it changes only when an
    /// applied entry (or an installed snapshot) changes the registry.
    pub fn trust_versions(&self) -> watch::Receiver<u64> {
        self.shared.trust_version.subscribe()
    }

    /// Publishes `version` as the applied trust registry version, if it changed.
    fn trust_version_applied(&self, version: u64) {
        self.shared.trust_version.send_if_modified(|held| {
            let changed = *held != version;
            *held = version;
            changed
        });
    }

    /// A receiver of the lifecycle events of the entries applied from now on.
    pub fn lifecycle(&self) -> broadcast::Receiver<Lifecycle> {
        self.shared.lifecycle.subscribe()
    }

    /// Whether the store still writes snapshots, and why not once it does not.
    pub fn health(&self) -> &StorageHealth {
        &self.shared.health
    }

    fn data(&self) -> RwLockReadGuard<'_, Applied> {
        self.shared
            .data
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn data_mut(&self) -> RwLockWriteGuard<'_, Applied> {
        self.shared
            .data
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, Error> {
        let txn = self.shared.env.read_txn()?;
        self.shared
            .snapshots
            .get(&txn, KEY_SNAPSHOT)?
            .map(decode_snapshot)
            .transpose()
    }

    /// Stores `snapshot` as the current one (durable when this returns) unless the stored one
    /// is newer, and returns whether it did. A build takes the state before it stores it, and a
    /// newer snapshot may be installed meanwhile: the build must not replace it. A failure takes
    /// the store out of service.
    fn store_snapshot(&self, snapshot: &StoredSnapshot) -> Result<bool, Error> {
        self.shared.health.check()?;
        let bytes =
            bincode::serialize(snapshot).map_err(|error| Error::Decode(error.to_string()))?;
        let failed = |error: heed::Error| {
            let map_size_bytes = self.shared.env.info().map_size;
            self.shared
                .health
                .fail("a snapshot", &error, map_size_bytes)
        };
        let mut txn = self.shared.env.write_txn().map_err(failed)?;
        // Compared inside the write transaction, so that no other store slips in between.
        let stored_last_log_id = match self.shared.snapshots.get(&txn, KEY_SNAPSHOT) {
            Ok(None) => None,
            Ok(Some(bytes)) => Some(decode_snapshot(bytes)?.meta.last_log_id),
            Err(error) => return Err(failed(error)),
        };
        if let Some(stored_last_log_id) = stored_last_log_id {
            if stored_last_log_id > snapshot.meta.last_log_id {
                tracing::info!(
                    kept = %snapshot_position(stored_last_log_id),
                    dropped = %snapshot_position(snapshot.meta.last_log_id),
                    "a newer snapshot is stored already: keeping it"
                );
                return Ok(false);
            }
        }
        self.shared
            .snapshots
            .put(&mut txn, KEY_SNAPSHOT, &bytes)
            .map_err(failed)?;
        txn.commit().map_err(failed)?;
        Ok(true)
    }

    /// A snapshot of the state as applied now, with a new id.
    fn snapshot_of_applied(&self) -> Result<StoredSnapshot, Error> {
        let (data, last_applied, membership) = {
            let applied = self.data();
            let data = bincode::serialize(&applied.state)
                .map_err(|error| Error::Decode(error.to_string()))?;
            (data, applied.last_applied, applied.membership.clone())
        };
        self.shared.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
        };
        Ok(StoredSnapshot { meta, data })
    }

    /// Makes `state`, as of `meta`, the in-memory state, unless the state applied is as new
    /// or newer (the state never goes back), and returns whether it did.
    fn advance_to(&self, meta: &SnapshotMeta, state: ClusterState) -> bool {
        let mut applied = self.data_mut();
        if meta.last_log_id <= applied.last_applied {
            return false;
        }
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let trust_version = applied.state.trust_version;
        drop(applied);
        let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
        self.shared.applied_index.send_replace(index);
        self.trust_version_applied(trust_version);
        true
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<StoredSnapshot, Error> {
    bincode::deserialize(bytes).map_err(|error| Error::Decode(error.to_string()))
}

fn decode_state(bytes: &[u8]) -> Result<ClusterState, Error> {
    let mut state: ClusterState =
        bincode::deserialize(bytes).map_err(|error| Error::Decode(error.to_string()))?;
    state.recount_instances();
    Ok(state)
}

/// A snapshot's last log id, for logs.
fn snapshot_position(last_log_id: Option<LogId>) -> String {
    last_log_id.map_or("nothing".to_string(), |log_id| log_id.to_string())
}

/// Offline access for recovery, while no Raft node runs on this state machine.
impl StateMachine {
    /// Stores a snapshot of `state` as of `last_log_id` with `membership`, replacing the
    /// current one (durable when this returns), and makes it the in-memory state.
    pub(crate) fn replace_snapshot(
        &self,
        last_log_id: LogId,
        membership: StoredMembership,
        state: &ClusterState,
    ) -> Result<(), Error> {
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(last_log_id),
                last_membership: membership,
            },
            data: bincode::serialize(state).map_err(|error| Error::Decode(error.to_string()))?,
        };
        // The recovered log id has a term above any stored, so it is newer than the snapshot
        // stored and the state loaded.
        let newer = self.store_snapshot(&stored)? && self.advance_to(&stored.meta, state.clone());
        if !newer {
            return Err(Error::Inconsistent(format!(
                "a snapshot newer than the recovered one ({last_log_id}) is stored"
            )));
        }
        Ok(())
    }
}

fn snapshot_error(message: impl ToString) -> std::io::Error {
    std::io::Error::other(format!("snapshot: {}", message.to_string()))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    /// Builds a snapshot of the state applied now and stores it, unless a newer one was
    /// installed meanwhile (openraft then ignores this older one too).
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot> {
        let built = self.snapshot_of_applied().map_err(snapshot_error)?;
        self.store_snapshot(&built).map_err(snapshot_error)?;
        Ok(Snapshot {
            meta: built.meta,
            snapshot: Cursor::new(built.data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId>, StoredMembership)> {
        let applied = self.data();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> StorageResult<()>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            // A long run of entries (a restart applying the log since the last snapshot, a
            // member catching up) gives the runtime back between entries once this task has
            // used its share, so heartbeats and requests on the same worker are not held up.
            tokio::task::coop::consume_budget().await;
            let (entry, responder) = item?;
            let (response, events, trust_version) = {
                let mut applied = self.data_mut();
                applied.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => CommandResponse::ok(),
                    EntryPayload::Normal(command) => applied.state.apply_entry(&command),
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        CommandResponse::ok()
                    }
                };
                let trust_version = applied.state.trust_version;
                (response, applied.state.lifecycle.take(), trust_version)
            };
            for lifecycle in events {
                // No receiver is no error: nobody is watching.
                let _ = self.shared.lifecycle.send(lifecycle);
            }
            // Seen applied before the writer hears back, so its next local read finds it.
            self.shared.applied_index.send_replace(entry.log_id.index);
            self.trust_version_applied(trust_version);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> StorageResult<()> {
        let snapshot = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // Decoded first: data that cannot be loaded is never stored.
        let state = decode_state(&snapshot.data).map_err(snapshot_error)?;
        self.store_snapshot(&snapshot).map_err(snapshot_error)?;
        self.advance_to(&snapshot.meta, state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot>> {
        let stored = self.stored_snapshot().map_err(snapshot_error)?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Cursor::new(stored.data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Entry};

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn log_id(index: u64) -> LogId {
        crate::log_id(1, 1, index)
    }

    /// Applies entries `first..=last`, each setting `user.step` to its index.
    async fn apply_steps(machine: &mut StateMachine, first: u64, last: u64) -> TestResult {
        let entries = (first..=last).map(|index| {
            let entry = Entry {
                log_id: log_id(index),
                payload: EntryPayload::Normal(Command::ConfigSet {
                    key: "user.step".to_string(),
                    value: index.to_string(),
                }),
            };
            Ok((entry, None))
        });
        machine.apply(futures::stream::iter(entries)).await?;
        Ok(())
    }

    /// Goal: a long run of entries to apply does not hold the async runtime until the last is
    /// applied (after a restart, openraft applies the whole log since the last snapshot at
    /// once; on a member with one worker thread that held up its heartbeats for a second).
    /// Method: on a runtime with a single thread, a task that notes the applied index when it
    /// first runs is spawned, then 2,000 entries are applied from a stream that is always
    /// ready: the task runs while they are being applied, not after the last.
    #[tokio::test(flavor = "current_thread")]
    async fn a_long_apply_lets_other_tasks_run() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut machine = StateMachine::open(root.path())?;
        let applied = machine.subscribe();
        let seen = tokio::spawn(async move { *applied.borrow() });
        apply_steps(&mut machine, 1, 2000).await?;
        let seen = seen.await?;
        assert!(
            seen > 0 && seen < 2000,
            "the other task ran with {seen} of 2000 entries applied"
        );
        assert_eq!(step(&machine).as_deref(), Some("2000"));
        Ok(())
    }

    /// A snapshot made elsewhere (the leader's), at `index`, where `user.step` is `index`.
    fn leader_snapshot(index: u64) -> TestResult<(SnapshotMeta, Vec<u8>)> {
        let mut state = ClusterState::default();
        state
            .config
            .insert("user.step".to_string(), index.to_string());
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(index)),
            last_membership: StoredMembership::default(),
        };
        Ok((meta, bincode::serialize(&state)?))
    }

    fn step(machine: &StateMachine) -> Option<String> {
        machine.read(|state| state.config.get("user.step").cloned())
    }

    /// Goal: a snapshot built from an older state never replaces a newer one installed while
    /// it was being built, neither in LMDB nor in memory.
    /// Method: apply entries 1..=2, take the data of a build, install the leader's snapshot at
    /// 10, then store the build; the current snapshot and the state stay the leader's, also
    /// after reopening.
    #[tokio::test]
    async fn a_build_never_replaces_a_newer_installed_snapshot() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut machine = StateMachine::open(root.path())?;
        apply_steps(&mut machine, 1, 2).await?;

        tracing::info!("--- a build takes the state at 2, the leader's snapshot at 10 arrives");
        let built = machine.snapshot_of_applied()?;
        assert_eq!(built.meta.last_log_id, Some(log_id(2)));
        let (meta, data) = leader_snapshot(10)?;
        machine.install_snapshot(&meta, Cursor::new(data)).await?;

        tracing::info!("--- the build finishes: the leader's snapshot stays");
        assert!(
            !machine.store_snapshot(&built)?,
            "the older build was stored"
        );
        let current = machine
            .get_current_snapshot()
            .await?
            .ok_or("no current snapshot")?;
        assert_eq!(current.meta, meta);
        assert_eq!(machine.last_applied(), Some(log_id(10)));
        assert_eq!(step(&machine).as_deref(), Some("10"));

        tracing::info!("--- and it is what a restart loads");
        drop(machine);
        let machine = StateMachine::open(root.path())?;
        assert_eq!(machine.last_applied(), Some(log_id(10)));
        assert_eq!(step(&machine).as_deref(), Some("10"));
        Ok(())
    }

    /// Goal: the in-memory state never goes back to an older snapshot.
    /// Method: apply entries 1..=5, install a snapshot at 3; the state, the last applied log id
    /// and the applied index waiters see stay at 5.
    #[tokio::test]
    async fn an_older_snapshot_never_moves_the_state_back() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut machine = StateMachine::open(root.path())?;
        apply_steps(&mut machine, 1, 5).await?;
        let applied_index = machine.subscribe();
        let (meta, data) = leader_snapshot(3)?;
        machine.install_snapshot(&meta, Cursor::new(data)).await?;
        assert_eq!(machine.last_applied(), Some(log_id(5)));
        assert_eq!(step(&machine).as_deref(), Some("5"));
        assert_eq!(*applied_index.borrow(), 5);
        Ok(())
    }
}
