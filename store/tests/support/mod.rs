//! Helpers shared by the store's integration tests: log entries of a chosen size, and a
//! single Raft node on a store, with a network that reaches nobody.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ServerState};
use starling_store::no_network::NoNetwork;
use starling_store::{
    Command, Entry, EntryPayload, LogStore, Node, NodeId, Raft, StateMachine, StoreOptions,
};

/// What the tests return: any error fails the test with its message.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A log map of 256 KiB: a few dozen entries of a few KiB fill it.
pub const TINY_MAP_BYTES: usize = 256 << 10;

/// Store options whose log map is [`TINY_MAP_BYTES`] (snapshots keep the default).
pub fn tiny_log_options() -> StoreOptions {
    StoreOptions {
        log_map_size_bytes: TINY_MAP_BYTES,
        ..StoreOptions::default()
    }
}

/// A normal entry at `index` of term 1 (leader 1) whose command carries `bytes` bytes.
pub fn entry(index: u64, bytes: usize) -> Entry {
    Entry {
        log_id: starling_store::log_id(1, 1, index),
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

/// The Raft descriptor of node 1 (never dialled: the network reaches nobody).
pub fn node1() -> BTreeMap<NodeId, Node> {
    BTreeMap::from([(
        1,
        BasicNode {
            addr: "127.0.0.1:1".to_string(),
        },
    )])
}

/// Starts Raft node 1 over a store, with fast timeouts.
pub async fn start_raft(log_store: LogStore, state_machine: StateMachine) -> TestResult<Raft> {
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    let raft = Raft::new(
        1,
        Arc::new(config.validate()?),
        NoNetwork,
        log_store,
        state_machine,
    )
    .await?;
    Ok(raft)
}

/// Waits until `raft` leads, or fails after a few seconds.
pub async fn wait_leader(raft: &Raft) -> TestResult {
    raft.wait(Some(Duration::from_secs(5)))
        .state(ServerState::Leader, "node 1 leads")
        .await?;
    Ok(())
}

/// Opens the store in `dir` once the last handle of an earlier opening is gone: LMDB allows
/// one environment per path and process, and a stopped Raft node's tasks may still hold it for
/// a moment.
pub async fn reopen(dir: &Path, options: &StoreOptions) -> TestResult<(LogStore, StateMachine)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match starling_store::open_with(dir, options) {
            Ok(store) => return Ok(store),
            Err(starling_store::Error::Lmdb(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}
