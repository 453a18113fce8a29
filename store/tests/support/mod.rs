//! Helpers shared by the store's integration tests: log entries of a chosen size, and a
//! single Raft node on a store, with a network that reaches nobody.

#![allow(dead_code)]

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use starling_store::{Command, StoreOptions, TypeConfig};

/// What the tests return: any error fails the test with its message.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A log map of 256 KiB: a few hundred small entries fill it.
pub const TINY_MAP_BYTES: usize = 256 << 10;

/// Store options whose log map is [`TINY_MAP_BYTES`] (snapshots keep the default).
pub fn tiny_log_options() -> StoreOptions {
    StoreOptions {
        log_map_size_bytes: TINY_MAP_BYTES,
        ..StoreOptions::default()
    }
}

/// A normal entry at `index` of term 1 (leader 1) whose command carries `bytes` bytes.
pub fn entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(filler(bytes)),
    }
}

/// A command that carries `bytes` bytes (a user config key; its value does not matter).
pub fn filler(bytes: usize) -> Command {
    Command::ConfigSet {
        key: "user.filler".to_string(),
        value: "x".repeat(bytes),
    }
}
