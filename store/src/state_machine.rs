//! The state machine: the typed [`ClusterState`] in memory, with snapshots kept in LMDB.
//!
//! Applying an entry only changes memory; durability comes from the log. On start the state is
//! loaded from the last snapshot and openraft re-applies the committed entries after it, so a
//! restart always ends at the state that was acknowledged. A snapshot is taken every few
//! thousand entries (openraft's snapshot policy), which also bounds that replay.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use heed::types::{Bytes, Str};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{ClusterState, CommandResponse, Error, Node, NodeId, StorageHealth, TypeConfig};

const KEY_SNAPSHOT: &str = "current";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

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
    /// Set for good by the first write that fails (here or in the log).
    health: StorageHealth,
}

/// What the applied entries produced.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    state: ClusterState,
}

/// A snapshot as stored in LMDB.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
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
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        // SAFETY: opened once per member and process, as LMDB requires.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size_bytes)
                .max_dbs(2)
                .open(dir)?
        };
        let write_txn = env.write_txn()?;
        let snapshots = env
            .create_databases_and_commit(write_txn, |opener, txn| -> Result<_, heed::Error> {
                let snapshots = opener.create_database::<Str, Bytes>(txn, Some("snapshots"))?;
                Ok(CommitOrAbort::<_, ()>::Commit(snapshots))
            })?
            .unwrap_commit();
        let (applied_index, _) = watch::channel(0);
        let shared = Shared {
            env,
            snapshots,
            data: RwLock::default(),
            snapshots_built: AtomicU64::new(0),
            applied_index,
            health,
        };
        let machine = StateMachine {
            shared: Arc::new(shared),
        };
        if let Some(stored) = machine.stored_snapshot()? {
            machine.load(&stored.meta, &stored.data)?;
        }
        Ok(machine)
    }

    /// Runs `read` on the current state (held briefly; do not block inside).
    pub fn read<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        read(&self.data().state)
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.data().last_applied
    }

    /// A receiver of the last applied index, for waiting until an entry is applied here.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.applied_index.subscribe()
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
        match self.shared.snapshots.get(&txn, KEY_SNAPSHOT)? {
            None => Ok(None),
            Some(bytes) => bincode::deserialize(bytes)
                .map(Some)
                .map_err(|error| Error::Decode(error.to_string())),
        }
    }

    /// Stores `stored` as the current snapshot (durable when this returns). A failure takes the
    /// store out of service.
    fn store_snapshot(&self, stored: &StoredSnapshot) -> Result<(), Error> {
        self.shared.health.check()?;
        let bytes = bincode::serialize(stored).map_err(|error| Error::Decode(error.to_string()))?;
        let written = self.shared.env.write_txn().and_then(|mut txn| {
            self.shared.snapshots.put(&mut txn, KEY_SNAPSHOT, &bytes)?;
            txn.commit()
        });
        written.map_err(|error| {
            let map_size_bytes = self.shared.env.info().map_size;
            self.shared
                .health
                .fail("a snapshot", &error, map_size_bytes)
        })
    }

    /// Replaces the in-memory state with a snapshot's.
    fn load(&self, meta: &SnapshotMeta<NodeId, Node>, data: &[u8]) -> Result<(), Error> {
        let state: ClusterState =
            bincode::deserialize(data).map_err(|error| Error::Decode(error.to_string()))?;
        let mut applied = self.data_mut();
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
        self.shared.applied_index.send_replace(index);
        Ok(())
    }
}

/// Offline access for recovery, while no Raft node runs on this state machine.
impl StateMachine {
    /// Stores a snapshot of `state` as of `last_log_id` with `membership`, replacing the
    /// current one (durable when this returns), and makes it the in-memory state.
    pub(crate) fn replace_snapshot(
        &self,
        last_log_id: LogId<NodeId>,
        membership: StoredMembership<NodeId, Node>,
        state: &ClusterState,
    ) -> Result<(), Error> {
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(last_log_id),
                last_membership: membership,
                // Distinct from the ids `build_snapshot` makes, which end in a build counter.
                snapshot_id: format!("recovered-{}-{}", last_log_id.leader_id, last_log_id.index),
            },
            data: bincode::serialize(state).map_err(|error| Error::Decode(error.to_string()))?,
        };
        self.store_snapshot(&stored)?;
        self.load(&stored.meta, &stored.data)
    }
}

fn snapshot_error(message: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::error(message.to_string())).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, last_applied, membership) = {
            let applied = self.data();
            let data = bincode::serialize(&applied.state).map_err(snapshot_error)?;
            (data, applied.last_applied, applied.membership.clone())
        };
        let built = self.shared.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match last_applied {
            Some(log_id) => format!("{}-{}-{built}", log_id.leader_id, log_id.index),
            None => format!("--{built}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.store_snapshot(&stored).map_err(snapshot_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        let applied = self.data();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut applied = self.data_mut();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::ok(),
                EntryPayload::Normal(command) => applied.state.apply_entry(&command),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResponse::ok()
                }
            };
            responses.push(response);
        }
        let index = applied.last_applied.map_or(0, |log_id| log_id.index);
        drop(applied);
        self.shared.applied_index.send_replace(index);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.load(&stored.meta, &stored.data)
            .map_err(snapshot_error)?;
        self.store_snapshot(&stored).map_err(snapshot_error)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored = self.stored_snapshot().map_err(snapshot_error)?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
