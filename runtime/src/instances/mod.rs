//! Instances: system containers recorded in the cluster database and run on their members,
//! their profiles and projects.
//!
//! - [`ops`]: the `instances.*` operations, run on the leader: records, placement, and
//!   requests to the instance's member. Start there.
//! - [`local`]: what an instance's member does when asked ([`local::LocalOperation`]), and
//!   how it reports status changes.
//! - [`watch`]: each member keeps its instances' records true (init exited, adopted after a
//!   daemon restart, started again after a clean shutdown).
//! - [`stream`]: `exec` with its output streamed to the client as it comes.
//! - [`transfer`]: a stopped container's root file system packed, sent and unpacked on
//!   another member (a move).
//! - [`moves`]: `instances.move`, on the leader.
//! - [`config`]: the expanded config read as the container's limits and init (IO-free).
//! - [`calls`]: `instances.*` script calls read into operations.
//! - [`names`]: generated names.
//! - [`driver`]: the container driver: unpack an image into the member's storage pool, start,
//!   stop, exec, observe and delete containers, adopting those a previous daemon started (it
//!   only knows what happens on one member's machine).
//! - [`profiles`] and [`projects`]: the `profiles.*` and `projects.*` operations, with the
//!   pure checks of [`config_keys`] and [`devices`].
//!
//! The records are in the cluster database (`starling_store::instances`); placement is the
//! [`crate::placement`] domain.

pub mod calls;
pub mod config;
pub mod config_keys;
pub mod devices;
pub mod driver;
pub mod local;
pub mod moves;
pub mod names;
pub mod ops;
pub mod profiles;
pub mod projects;
pub mod stream;
pub mod transfer;
pub mod watch;
