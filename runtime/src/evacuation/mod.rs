//! Evacuation and restore of members (LXD's `cluster evacuate` / `cluster restore`).
//!
//! - [`plan`]: what happens to each instance, from the cluster state alone (IO-free).
//! - [`ops`]: carrying it out on the leader, step by step, recorded in the cluster database so
//!   that a new leader continues it.
//!
//! Moves themselves are [`crate::instances::moves`].

pub mod ops;
pub mod plan;
