//! openraft's network over Starling's QUIC transport.

use std::net::SocketAddr;
use std::time::Duration;

use std::future::Future;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use starling_store::{Node, NodeId, Snapshot, SnapshotData, TypeConfig, Vote};
use starling_transport::{Error as TransportError, Pool, ServerTrust};

use crate::protocol::{RaftRequest, Reply, Request};

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

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

/// One answer of a replication stream, as openraft takes it.
pub(crate) type AppendAnswer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl PeerLink {
    /// Refused when the peer is cut off (fault injection), else its socket address.
    async fn reachable(&self) -> RpcResult<SocketAddr> {
        if is_cut_off(&self.transport.blocked, &self.address) {
            return Err(cut_off_error(&self.address));
        }
        resolve(&self.address)
            .await
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))
    }

    /// Sends one Raft request.
    async fn call(&self, request: RaftRequest, timeout: Duration) -> RpcResult<Reply> {
        let address = self.reachable().await?;
        let request = Request::Raft(request);
        self.transport
            .pool
            .request(address, &self.transport.trust, &request, timeout)
            .await
            .map_err(rpc_error)
    }
}

/// Whether `address` is cut off from this member (fault injection for tests).
pub(crate) fn is_cut_off(blocked: &crate::member::Blocked, address: &str) -> bool {
    blocked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .contains(address)
}

pub(crate) fn cut_off_error(address: &str) -> RPCError<TypeConfig> {
    let error = std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("{address} is cut off"),
    );
    RPCError::Unreachable(Unreachable::new(&error))
}

/// Only a peer that cannot be reached at all is "unreachable": openraft then pauses
/// replication to it. A slow answer is an ordinary failure, retried at once, so that one late
/// reply does not starve a follower of heartbeats.
pub(crate) fn rpc_error(error: TransportError) -> RPCError<TypeConfig> {
    if matches!(
        error,
        TransportError::Connect { .. } | TransportError::Unreachable { .. }
    ) {
        RPCError::Unreachable(Unreachable::new(&error))
    } else {
        RPCError::Network(NetworkError::new(&error))
    }
}

fn remote_failure(message: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(message))
}

fn unexpected(what: &str, reply: &Reply) -> RPCError<TypeConfig> {
    remote_failure(format!("unexpected reply to {what}: {reply:?}"))
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = SnapshotData;

    /// Retry an unreachable peer soon: a member that restarts should get heartbeats again well
    /// within an election timeout (openraft's default pause is 500 ms).
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(50))))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        let started = std::time::Instant::now();
        let entries = rpc.entries.len();
        let reply = self.call(RaftRequest::Append(rpc), option.hard_ttl()).await;
        tracing::trace!(
            entries,
            micros = started.elapsed().as_micros() as u64,
            "append rpc"
        );
        match reply? {
            Reply::Append(result) => result.map_err(remote_failure),
            other => Err(unexpected("append", &other)),
        }
    }

    /// Pipelined: one QUIC stream for the whole session, each request sent as openraft makes
    /// it, without waiting for the answers to the ones before (see [`crate::replication`]).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendAnswer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut input = input;
            // The first request before anything else: openraft waits out its backoff while
            // making a request, so a peer that cannot be reached is tried again at the
            // backoff's pace instead of in a tight loop.
            let Some(first) = input.next().await else {
                return Ok(futures::stream::empty().boxed());
            };
            let address = self.reachable().await?;
            let pool = &self.transport.pool;
            let connection = pool
                .get(address, &self.transport.trust)
                .await
                .map_err(rpc_error)?;
            let opened = connection
                .open_duplex(&Request::Raft(RaftRequest::AppendStream))
                .await;
            let (sink, answers) = match opened {
                Ok(opened) => opened,
                Err(error) => {
                    pool.discard_if_broken(address, &connection, &error).await;
                    return Err(rpc_error(error));
                }
            };
            let stream = crate::replication::Session {
                pool: pool.clone(),
                address,
                connection,
                peer: self.address.clone(),
                blocked: self.transport.blocked.clone(),
                answer_within: option.hard_ttl(),
            }
            .run(futures::stream::iter([first]).chain(input), sink, answers);
            Ok(stream)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        match self.call(RaftRequest::Vote(rpc), option.hard_ttl()).await? {
            Reply::Vote(result) => result.map_err(remote_failure),
            other => Err(unexpected("vote", &other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        match self
            .call(RaftRequest::PreVote(rpc), option.hard_ttl())
            .await?
        {
            Reply::Vote(result) => result.map_err(remote_failure),
            other => Err(unexpected("pre-vote", &other)),
        }
    }

    /// The whole snapshot in one request: a cluster database's state is far below a frame's
    /// limit (`FRAME_LEN_MAX`, 32 MiB); a larger one fails with the transport's error.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = RaftRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = self.call(request, option.hard_ttl()) => reply,
        };
        let reply = reply.map_err(|error| match error {
            RPCError::Unreachable(unreachable) => StreamingError::Unreachable(unreachable),
            other => StreamingError::Network(NetworkError::from_string(other.to_string())),
        })?;
        match reply {
            Reply::Snapshot(result) => result
                .map_err(|message| StreamingError::Network(NetworkError::from_string(message))),
            other => Err(StreamingError::Network(NetworkError::from_string(format!(
                "unexpected reply to snapshot: {other:?}"
            )))),
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        match self
            .call(RaftRequest::TransferLeader(request), option.hard_ttl())
            .await?
        {
            Reply::TransferLeader(result) => result.map_err(remote_failure),
            other => Err(unexpected("leadership transfer", &other)),
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
