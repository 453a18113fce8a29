//! Instances, their profiles and projects.
//!
//! - [`driver`]: the container driver: unpack an image into the member's storage pool, start,
//!   stop, exec, observe and delete containers, adopting those a previous daemon started (it
//!   only knows what happens on one member's machine).
//! - [`profiles`] and [`projects`]: the `profiles.*` and `projects.*` operations, with the
//!   pure checks of [`config_keys`] and [`devices`].
//!
//! The records are in the cluster database (`starling_store::instances`); placement is the
//! [`crate::placement`] domain.

pub mod config_keys;
pub mod devices;
pub mod driver;
pub mod profiles;
pub mod projects;
