//! A Starling member: the daemon that holds a replica of the cluster database (or not, for a
//! spare), serves clients and other members over QUIC, and runs scripts.
//!
//! # Layout
//! - [`member`]: [`Member`], start (bootstrap, join, restart) and shutdown.
//! - [`serve`](crate::serve): the request handler and its trust rules.
//! - [`execute`](crate::execute): operations, run on the leader or forwarded to it.
//! - [`operation`]: [`Operation`], the one list of cluster operations, and the script built-ins.
//! - [`cluster`]: membership, each part an IO-free planner and the code that carries it out:
//!   joining ([`cluster::join`]), member status and role rebalancing ([`cluster::health`],
//!   planned by [`cluster::roles`]), member management ([`cluster::manage`]) and the
//!   operator's role control: promote, demote, transfer leadership ([`cluster::role_control`],
//!   carried out by [`cluster::role_ops`]).
//! - [`images`]: image import, records, replication between members (bytes off Raft).
//! - [`placement`]: which member an instance goes to: the built-in rules and Starlark
//!   placement scriptlets, IO-free.
//! - [`instances`]: system containers on this member ([`instances::driver`]: namespaces,
//!   cgroups, the monitor process that outlives the daemon).
//! - [`events`]: the event stream (lifecycle, logging, operation): each member's bus, the
//!   relay between members (event hubs), `starling monitor`.
//! - [`trust`]: the trust registry (which fingerprints are members and clients) and the limit
//!   on failed claims per address.
//! - [`once`](crate::once): exactly-once writes (request ids).
//! - [`client`]: [`Client`], how the CLI and tools talk to a member.
//! - [`network`](crate::network), [`protocol`]: Raft over the transport, and the wire messages.
//!
//! Start at [`Member::start`] for the daemon and [`Client`] for everything that talks to one.
#![warn(missing_docs)]

/// The unit tests count their threads' allocations as the binary does (the scriptlet bounds
/// read the count).
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: counting_alloc::Counting<std::alloc::System> =
    counting_alloc::Counting(std::alloc::System);

pub mod automation;
pub mod client;
pub mod cluster;
pub mod counting_alloc;
pub mod datadir;
mod error;
pub mod evacuation;
pub mod events;
mod execute;
pub mod images;
pub mod instances;
pub mod member;
pub mod network;
mod once;
pub mod operation;
pub mod placement;
mod proposer;
pub mod protocol;
mod replication;
pub mod script;
mod serve;
mod sync;
mod sysinfo;
pub mod token;
pub mod trust;
mod view;

pub use client::Client;
pub use error::Error;
pub use member::{Member, MemberConfig, RaftTimings, StartMode};
pub use operation::{Operation, BUILTINS};
pub use protocol::Caller;
