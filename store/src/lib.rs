//! The replicated cluster database: typed cluster state, the commands that change it, and the
//! openraft storage (log and state machine) kept in LMDB through heed.
//!
//! # Layout
//! - [`model`]: the typed cluster state ([`ClusterState`], [`Member`], [`JoinToken`], ...).
//! - [`command`]: [`Command`], the only way state changes; applied deterministically.
//! - [`config`]: global configuration keys, their defaults and validation rules.
//! - [`images`]: image records (fingerprint, properties, aliases, locations); bytes stay off Raft.
//! - [`lifecycle`]: the lifecycle events applied commands produce (`instance-started`, ...).
//! - [`limits`]: the size limit of every field that enters the Raft log.
//! - [`log_store`]: the Raft log: entries in append-only segment files (`segments`), the vote,
//!   committed and purged ids in LMDB; group-committed by a writer thread so that `fsync` never
//!   blocks the async runtime.
//! - [`state_machine`]: the in-memory state machine and its snapshots, persisted in LMDB.
//! - [`dir_lock`]: [`DirLock`], the exclusive lock that keeps one process per database.
//! - [`StorageHealth`]: a failed write takes the store out of service, and tells the member.
//! - [`requests`]: the outcomes of recent requests, so a retried write applies once.
//! - [`no_network`]: [`no_network::NoNetwork`], for a single Raft node run on a store alone.
//! - [`recover`]: recovery from quorum loss, making a stopped member the only voter.
//!
//! Start at [`open`], which opens both halves of the store from a member's data directory
//! ([`open_with`] takes [`StoreOptions`]).
//!
//! *Architecture invariant:* only this crate knows LMDB.
#![warn(missing_docs)]

#[cfg(test)]
mod apply_props;
pub mod command;
pub mod config;
pub mod dir_lock;
mod error;
pub mod evacuation;
pub mod images;
pub mod instances;
pub mod kv;
pub mod lifecycle;
pub mod limits;
pub mod log_store;
pub mod member_config;
pub mod model;
pub mod no_network;
pub mod recent_entries;
pub mod recover;
pub mod requests;
pub mod scripts;
mod segments;
pub mod state_machine;

use std::io::Cursor;
use std::path::Path;

pub use command::{Command, CommandResponse, HealthUpdate, MemberChanges, MemberPatch};
pub use dir_lock::DirLock;
pub use error::{Error, StorageHealth};
pub use log_store::LogStore;
pub use model::{
    ClusterState, JoinToken, Member, MemberStatus, Network, Registered, StoragePool, TokenKind,
    TrustedClient,
};
pub use state_machine::StateMachine;

/// Raft node id of a member (assigned by the leader at join time, never reused).
pub type NodeId = u64;

/// The Raft node descriptor: the member's QUIC address as `host:port`.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// openraft type configuration of Starling's cluster database.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = Node,
);

/// A Raft log position: the term and leader that wrote it, and its index.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// The leader a log id names (its term and node).
pub type CommittedLeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;
/// A Raft vote (term, candidate, whether a quorum granted it).
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// One Raft log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// The payload of a Raft log entry.
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
/// The membership of the Raft group (voters and learners).
pub type Membership = openraft::Membership<NodeId, Node>;
/// A membership and the log id that stored it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers: its last log id and membership.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot of the state machine: its meta and the serialized state.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// The serialized state a snapshot carries.
pub type SnapshotData = Cursor<Vec<u8>>;

/// A Raft node over Starling's state machine.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// The log id at `index` written by `node` in `term`.
pub fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
    LogId::new(
        CommittedLeaderId {
            term,
            node_id: node,
        },
        index,
    )
}

/// Settings of the store that a member's configuration can change.
///
/// Build one from [`StoreOptions::default`] and change what you need
/// (`StoreOptions { log_map_size_bytes, ..StoreOptions::default() }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most bytes the Raft log's segment files may take together (they are preallocated
    /// 16 MiB at a time, or this size when smaller), and the map size of its LMDB file (vote,
    /// committed and purged ids). A log that reaches it can take no more entries. Rounded up
    /// to a multiple of 64 KiB, which every page size divides.
    pub log_map_size_bytes: usize,
    /// Largest size of the snapshot store's LMDB file, in bytes; otherwise as
    /// `log_map_size_bytes`.
    pub snapshot_map_size_bytes: usize,
}

impl Default for StoreOptions {
    /// 64 GiB for the log and 16 GiB for snapshots: far more than a cluster database needs,
    /// and free, since only address space is reserved.
    fn default() -> StoreOptions {
        StoreOptions {
            log_map_size_bytes: 64 << 30,
            snapshot_map_size_bytes: 16 << 30,
        }
    }
}

/// Opens (creating if needed) the log store and the state machine under `dir`, with the
/// default [`StoreOptions`].
///
/// The log lives in `dir/log` (every commit is durable) and the state machine's snapshots in
/// `dir/state` (durable at snapshot time; between snapshots the state is rebuilt from the log).
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), Error> {
    open_with(dir, &StoreOptions::default())
}

/// Opens (creating if needed) the log store and the state machine under `dir`, as [`open`]
/// does, with `options`.
///
/// Both halves share one [`StorageHealth`] ([`LogStore::health`], [`StateMachine::health`]):
/// a failed write in either takes the whole store out of service.
pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<(LogStore, StateMachine), Error> {
    let health = StorageHealth::new();
    let log_store = LogStore::open_in(
        &dir.join("log"),
        map_size(options.log_map_size_bytes),
        health.clone(),
    )?;
    let state_machine = StateMachine::open_in(
        &dir.join("state"),
        map_size(options.snapshot_map_size_bytes),
        health,
    )?;
    Ok((log_store, state_machine))
}

/// What LMDB's map size is rounded up to: heed refuses sizes that are not a multiple of the
/// system's page size, and every page size in use (4, 16 or 64 KiB) divides this.
const MAP_SIZE_GRANULE_BYTES: usize = 64 << 10;

/// `requested` rounded up to a map size LMDB accepts (at least one granule).
pub(crate) fn map_size(requested: usize) -> usize {
    let granules = requested
        .div_ceil(MAP_SIZE_GRANULE_BYTES)
        .clamp(1, usize::MAX / MAP_SIZE_GRANULE_BYTES);
    granules * MAP_SIZE_GRANULE_BYTES
}

/// Creates `dir` if needed and opens the LMDB environment in it, of `map_size_bytes` (a size
/// LMDB accepts, see [`map_size`]) with room for `max_dbs` named databases.
pub(crate) fn open_env(
    dir: &Path,
    map_size_bytes: usize,
    max_dbs: u32,
) -> Result<heed::Env<heed::WithoutTls>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    // SAFETY: each environment directory is opened exactly once per process (the runtime holds
    // the log and the snapshot store, each in its own directory, for the member's lifetime),
    // which is LMDB's requirement.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .read_txn_without_tls()
            .map_size(map_size_bytes)
            .max_dbs(max_dbs)
            .open(dir)?
    };
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: any requested map size becomes one heed accepts.
    /// Method: round sizes below, at and above a granule, and the largest size.
    #[test]
    fn map_sizes_round_up_to_whole_granules() {
        assert_eq!(map_size(0), MAP_SIZE_GRANULE_BYTES);
        assert_eq!(map_size(1), MAP_SIZE_GRANULE_BYTES);
        assert_eq!(map_size(MAP_SIZE_GRANULE_BYTES), MAP_SIZE_GRANULE_BYTES);
        assert_eq!(
            map_size(MAP_SIZE_GRANULE_BYTES + 1),
            2 * MAP_SIZE_GRANULE_BYTES
        );
        assert_eq!(map_size(usize::MAX) % MAP_SIZE_GRANULE_BYTES, 0);
        let default = StoreOptions::default();
        assert_eq!(
            map_size(default.log_map_size_bytes),
            default.log_map_size_bytes
        );
    }
}
