//! Images: LXD's unified tarballs, content-addressed on each holder's disk, with their records
//! (and `locations`) in the cluster database. Bytes never go through Raft.
//!
//! - [`format`]: reading `metadata.yaml` from a `.tar`, `.tar.gz` or `.tar.xz`, as a stream.
//! - [`files`]: a member's image files (temporary file, hash, `fsync`, rename).
//! - [`planner`]: which member copies which image from whom (pure).
//! - [`ops`]: the built-ins (`images.*`), run on the member that is asked or on the leader.

pub mod files;
pub mod format;
pub mod ops;
pub mod planner;
pub(crate) mod stream;
