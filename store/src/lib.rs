//! The replicated cluster database: typed cluster state, the commands that change it, and the
//! openraft storage (log and state machine) kept in LMDB through heed.
//!
//! # Layout
//! - [`model`]: the typed cluster state ([`ClusterState`], [`Member`], [`JoinToken`], ...).
//! - [`command`]: [`Command`], the only way state changes; applied deterministically.
//! - [`config`]: global configuration keys, their defaults and validation rules.
//! - [`limits`]: the size limit of every field that enters the Raft log.
//! - [`log_store`]: the Raft log, vote and committed index in LMDB, group-committed by a writer
//!   thread so that `fsync` never blocks the async runtime.
//! - [`state_machine`]: the in-memory state machine and its snapshots, persisted in LMDB.
//! - [`dir_lock`]: [`DirLock`], the exclusive lock that keeps one process per database.
//! - [`recover`]: recovery from quorum loss, making a stopped member the only voter.
//!
//! Start at [`open`], which opens both halves of the store from a member's data directory.
//!
//! *Architecture invariant:* only this crate knows LMDB.
#![warn(missing_docs)]

pub mod command;
pub mod config;
pub mod dir_lock;
mod error;
pub mod limits;
pub mod log_store;
pub mod member_config;
pub mod model;
pub mod recover;
pub mod state_machine;

use std::io::Cursor;
use std::path::Path;

pub use command::{Command, CommandResponse, HealthUpdate, MemberChanges};
pub use dir_lock::DirLock;
pub use error::Error;
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
        SnapshotData = Cursor<Vec<u8>>,
);

/// Opens (creating if needed) the log store and the state machine under `dir`.
///
/// The log lives in `dir/log` (every commit is durable) and the state machine's snapshots in
/// `dir/state` (durable at snapshot time; between snapshots the state is rebuilt from the log).
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), Error> {
    let log_store = LogStore::open(&dir.join("log"))?;
    let state_machine = StateMachine::open(&dir.join("state"))?;
    Ok((log_store, state_machine))
}
