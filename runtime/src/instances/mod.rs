//! Instances: system containers on this member.
//!
//! - [`driver`]: the container driver: unpack an image into the member's storage pool, start,
//!   stop, exec, observe and delete containers, adopting those a previous daemon started.
//!
//! Placement, records in the cluster database and the script built-ins live elsewhere; this
//! domain only knows what happens on one member's machine.

pub mod config_keys;
pub mod devices;
pub mod driver;
pub mod profiles;
pub mod projects;
