//! Helpers shared by the store's integration tests: log entries of a chosen size, and a
//! single Raft node on a store, with a network that reaches nobody.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Raft, ServerState};
use starling_store::{Command, LogStore, Node, NodeId, StateMachine, StoreOptions, TypeConfig};

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
pub async fn start_raft(
    log_store: LogStore,
    state_machine: StateMachine,
) -> TestResult<Raft<TypeConfig>> {
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
pub async fn wait_leader(raft: &Raft<TypeConfig>) -> TestResult {
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

/// A network that reaches nobody: a single node never needs it.
pub struct NoNetwork;

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;

    async fn new_client(&mut self, _target: NodeId, _node: &Node) -> NoNetwork {
        NoNetwork
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "no network in tests",
    )))
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        Err(unreachable())
    }
}
