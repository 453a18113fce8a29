//! Cluster membership: who is a member, who votes, who leads.
//!
//! Each part is an IO-free planner (decisions, tested without a cluster) beside the async code
//! that carries the plan out:
//! - [`join`]: bootstrap, joining, tokens and client trust.
//! - [`health`]: heartbeats and member status; each round it runs the [`roles`] planner and
//!   carries its plan out.
//! - [`manage`]: member records, removal, hand-over on shutdown.
//! - [`role_control`] (planner) and [`role_ops`] (carrying out): the operator's promote, demote
//!   and leadership transfer.
//! - [`stall`]: says in the log when the member's async runtime ran late, and why (its
//!   [`stall::StallMeter`] is the planner).
//! - [`groups`]: cluster groups (their rules are checked in the store, where the state
//!   changes).

pub mod groups;
pub mod health;
pub mod join;
pub mod manage;
pub mod role_control;
pub mod role_ops;
pub mod roles;
pub mod stall;
