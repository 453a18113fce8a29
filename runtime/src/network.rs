//! openraft's network over Starling's QUIC transport.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use starling_store::{Node, NodeId, TypeConfig};
use starling_transport::{Error as TransportError, Pool, ServerTrust};

use crate::protocol::{RaftRequest, Reply, Request};

/// Largest append sent at once, in encoded bytes (one larger entry still goes alone). openraft
/// gives an append one heartbeat interval to complete, so it must be small enough to cross the
/// network in a fraction of that.
const APPEND_BYTES_MAX: u64 = starling_store::limits::BATCH_BYTES_MAX as u64;

/// Creates a [`PeerLink`] per Raft peer; all share the member's connection pool.
#[derive(Clone)]
pub struct RaftTransport {
    /// The member's connection pool.
    pub pool: Pool,
    /// How peers' certificates are checked (the cluster CA).
    pub trust: ServerTrust,
    /// Addresses cut off (fault injection for tests).
    pub blocked: crate::member::Blocked,
}

/// The Raft connection to one peer.
pub struct PeerLink {
    transport: RaftTransport,
    address: String,
}

impl RaftNetworkFactory<TypeConfig> for RaftTransport {
    type Network = PeerLink;

    async fn new_client(&mut self, _target: NodeId, node: &Node) -> PeerLink {
        PeerLink {
            transport: self.clone(),
            address: node.addr.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl PeerLink {
    /// Sends one Raft request; `entries` is the number of log entries it carries (0 but for an
    /// append), for the hint when it does not fit a frame.
    async fn call<E: std::error::Error>(
        &self,
        request: RaftRequest,
        timeout: Duration,
        entries: u64,
    ) -> RpcResult<Reply, E> {
        let cut_off = self
            .transport
            .blocked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&self.address);
        if cut_off {
            let error = std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("{} is cut off", self.address),
            );
            return Err(RPCError::Unreachable(Unreachable::new(&error)));
        }
        let address: SocketAddr = resolve(&self.address)
            .await
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))?;
        let request = Request::Raft(request);
        self.transport
            .pool
            .request(address, &self.transport.trust, &request, timeout)
            .await
            .map_err(|error| {
                // Too large for one frame is no network failure: retried unchanged it would stall
                // replication to the peer, so openraft is asked for half as many entries.
                if let TransportError::FrameTooLarge { .. } = error {
                    tracing::debug!(entries, %error, "an append did not fit a frame: sending fewer entries");
                    let hint = PayloadTooLarge::new_entries_hint((entries / 2).max(1));
                    return RPCError::PayloadTooLarge(hint.with_source_error(&error));
                }
                // Only a peer that cannot be reached at all is "unreachable": openraft then
                // pauses replication to it. A slow answer is an ordinary failure, retried at
                // once, so that one late reply does not starve a follower of heartbeats.
                if matches!(
                    error,
                    TransportError::Connect { .. } | TransportError::Unreachable { .. }
                ) {
                    RPCError::Unreachable(Unreachable::new(&error))
                } else {
                    RPCError::Network(NetworkError::new(&error))
                }
            })
    }
}

fn remote_failure<E: std::error::Error>(
    message: String,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&AnyError::error(message)))
}

impl RaftNetwork<TypeConfig> for PeerLink {
    /// Retry an unreachable peer soon: a member that restarts should get heartbeats again well
    /// within an election timeout (openraft's default pause is 500 ms).
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(50)))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let entries = rpc.entries.len() as u64;
        let bytes = starling_store::limits::encoded_len(&rpc.entries) as u64;
        if entries > 1 && bytes > APPEND_BYTES_MAX {
            // openraft bounds an append by the heartbeat interval: a large one would time out
            // again and again. Ask for fewer entries, in proportion.
            let hint = (entries * APPEND_BYTES_MAX / bytes).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        match self
            .call(RaftRequest::Append(rpc), option.hard_ttl(), entries)
            .await?
        {
            Reply::Append(result) => result.map_err(remote_failure),
            other => Err(remote_failure(format!(
                "unexpected reply to append: {other:?}"
            ))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .call(RaftRequest::Snapshot(rpc), option.hard_ttl(), 0)
            .await?
        {
            Reply::Snapshot(result) => result.map_err(remote_failure),
            other => Err(remote_failure(format!(
                "unexpected reply to snapshot: {other:?}"
            ))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self
            .call(RaftRequest::Vote(rpc), option.hard_ttl(), 0)
            .await?
        {
            Reply::Vote(result) => result.map_err(remote_failure),
            other => Err(remote_failure(format!(
                "unexpected reply to vote: {other:?}"
            ))),
        }
    }
}

/// Resolves `host:port` (an IP literal needs no lookup).
pub async fn resolve(address: &str) -> Result<SocketAddr, std::io::Error> {
    if let Ok(parsed) = address.parse() {
        return Ok(parsed);
    }
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{address} does not resolve to an address"),
            )
        })
}
