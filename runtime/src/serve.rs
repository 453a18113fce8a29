//! The request handler: who may ask what, and where each request goes.
//!
//! Trust is decided here, per request, from the fingerprint of the peer's certificate (see
//! [`crate::trust`]): a current member's member certificate may send anything; a registered
//! client certificate (a remote, or a member's local administrator) may run operations and
//! scripts; anyone else may only join with a token or claim trust with one, in a small frame,
//! and a few failed claims from one address make that address wait.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use starling_store::Registered;
use starling_transport::{Handler, PeerIdentity, Responder};

use crate::member::Member;
use crate::operation::Operation;
use crate::protocol::{Caller, RaftRequest, Reply, Request};
use crate::trust::ClaimLimiter;
use crate::Error;

/// Largest request an unregistered peer may send: a join or a trust claim fits easily.
pub const UNTRUSTED_REQUEST_BYTES_MAX: usize = 16 * 1024;

/// Calls a client's or a member's call stream may have running at once (a client waits for a
/// free one before it sends).
pub const CALLS_IN_FLIGHT_MAX: usize = 64;

/// Calls an unregistered peer's call stream may have running at once: each is only refused.
const UNTRUSTED_CALLS_IN_FLIGHT_MAX: usize = 4;

/// The member's [`Handler`].
pub(crate) struct Service {
    pub(crate) member: Member,
    /// Failed token claims per address.
    pub(crate) claims: Mutex<ClaimLimiter>,
}

impl Service {
    /// What the peer's certificate is registered as (see [`crate::trust`]).
    fn trust_of(&self, peer: &PeerIdentity) -> Registered {
        self.member.registered(&peer.fingerprint)
    }

    /// Runs a join or trust claim, unless its address failed too often; counts its failure.
    async fn claim(
        &self,
        peer: &PeerIdentity,
        operation: Operation,
    ) -> Result<serde_json::Value, Error> {
        let address: IpAddr = peer.remote_addr.ip();
        let refused = self
            .claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(address, Instant::now());
        if let Err(wait) = refused {
            return Err(Error::NotAuthorized(format!(
                "too many failed token claims from {address}; retry in {} s",
                wait.as_secs().max(1)
            )));
        }
        let result = self.member.execute(operation, Caller::local()).await;
        if matches!(result, Err(Error::InvalidToken(_))) {
            tracing::warn!(%address, "refused a token claim");
            self.claims
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .failed(address, Instant::now());
        }
        result
    }

    /// Only another member (the leader) may tell this one it was removed.
    fn removed(&self) -> Reply {
        let member = self.member.clone();
        tokio::spawn(async move {
            // Let the acknowledgement leave before the endpoint closes.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            member.reset_after_removal().await;
        });
        Reply::Ack
    }

    /// Runs an operation for `peer`, registered as `trust` (a client or a member).
    async fn operation(
        &self,
        peer: &PeerIdentity,
        trust: Registered,
        operation: Operation,
        caller: Caller,
    ) -> Reply {
        // A client speaks for itself; a member forwards for the client it names.
        let caller = match trust {
            Registered::Member => caller,
            _ => Caller {
                request_id: caller.request_id,
                ..Caller::client(&peer.fingerprint)
            },
        };
        let started = std::time::Instant::now();
        let result = self.member.execute(operation, caller).await;
        tracing::trace!(
            micros = started.elapsed().as_micros() as u64,
            "operation served"
        );
        Reply::Operation(result.map(|value| value.to_string()))
    }

    /// Why a request from `peer`, registered as `trust`, is refused before it is looked at: a
    /// revoked or unknown certificate, or this member unavailable to it.
    fn refusal(&self, peer: &PeerIdentity, trust: Registered) -> Option<Error> {
        match trust {
            Registered::Revoked => Some(crate::trust::revoked()),
            Registered::Unknown => Some(crate::trust::not_registered(&peer.fingerprint)),
            Registered::Member | Registered::Client => unavailable_to(&self.member, peer),
        }
    }

    /// Answers one call of a call stream: an operation, checked as a request of its own.
    async fn call(&self, peer: &PeerIdentity, request: Request) -> Reply {
        // Looked up for every call: a certificate revoked meanwhile is refused from then on.
        let trust = self.trust_of(peer);
        if let Some(error) = self.refusal(peer, trust) {
            return Reply::Refused(error);
        }
        match request {
            Request::Operation { operation, caller } => {
                self.operation(peer, trust, operation, caller).await
            }
            _ => Reply::Refused(Error::Refused(
                "only operations may be sent on a call stream".to_string(),
            )),
        }
    }

    async fn raft(&self, request: RaftRequest) -> Reply {
        let raft = self.member.raft();
        match request {
            RaftRequest::Append(rpc) => {
                self.member.append_arrived();
                let started = std::time::Instant::now();
                let entries = rpc.entries.len();
                let reply = Reply::Append(
                    raft.append_entries(rpc)
                        .await
                        .map_err(|error| error.to_string()),
                );
                tracing::trace!(
                    entries,
                    micros = started.elapsed().as_micros() as u64,
                    "append handled"
                );
                reply
            }
            RaftRequest::Vote(rpc) => {
                Reply::Vote(raft.vote(rpc).await.map_err(|error| error.to_string()))
            }
            RaftRequest::PreVote(rpc) => {
                Reply::Vote(raft.pre_vote(rpc).await.map_err(|error| error.to_string()))
            }
            RaftRequest::Snapshot { vote, meta, data } => {
                let snapshot = starling_store::Snapshot {
                    meta,
                    snapshot: std::io::Cursor::new(data),
                };
                Reply::Snapshot(
                    raft.install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|error| error.to_string()),
                )
            }
            RaftRequest::AppendStream => Reply::Refused(Error::Internal(
                "a replication stream is served on its own".to_string(),
            )),
            RaftRequest::TransferLeader(rpc) => Reply::TransferLeader(
                raft.handle_transfer_leader(rpc)
                    .await
                    .map_err(|error| error.to_string()),
            ),
        }
    }
}

/// Why `member` answers no request from `peer` now, whoever it is: its database cannot write
/// (it answers nothing as healthy: the leader marks it offline and a stand-by takes its
/// place), or it is cut off from `peer` (fault injection).
pub(crate) fn unavailable_to(member: &Member, peer: &PeerIdentity) -> Option<Error> {
    if let Some(why) = member.out_of_service() {
        return Some(Error::Local(format!(
            "member {} is out of service: {why}",
            member.name()
        )));
    }
    if is_cut_off(member, peer) {
        return Some(Error::Transport("cut off from this member".to_string()));
    }
    None
}

/// Whether `peer` is a member `member` is cut off from (fault injection).
pub(crate) fn is_cut_off(member: &Member, peer: &PeerIdentity) -> bool {
    let address = member.local_state(|state| {
        state
            .member_by_fingerprint(&peer.fingerprint)
            .map(|record| record.address.clone())
    });
    address.is_some_and(|address| member.is_blocked(&address))
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|error| Error::Internal(error.to_string()))
}

impl Handler for Service {
    type Request = Request;

    fn request_len_max(&self, peer: &PeerIdentity) -> usize {
        match self.trust_of(peer) {
            Registered::Member | Registered::Client => starling_transport::FRAME_LEN_MAX,
            Registered::Revoked | Registered::Unknown => UNTRUSTED_REQUEST_BYTES_MAX,
        }
    }

    async fn handle(&self, peer: PeerIdentity, request: Request, mut responder: Responder) {
        let trust = self.trust_of(&peer);
        let refusal = match &request {
            // Anyone may open one: each call on it is checked as a request of its own.
            Request::Calls => None,
            // Claims are what an unknown certificate may send, even to a member out of service.
            Request::Join(_) | Request::TrustClaim { .. } => {
                (trust == Registered::Revoked).then(crate::trust::revoked)
            }
            // A member whose database cannot write answers nothing as healthy: the leader
            // marks it offline and a stand-by takes its place.
            _ => self.refusal(&peer, trust),
        };
        if let Some(error) = refusal {
            send_reply(&mut responder, &Reply::Refused(error)).await;
            return;
        }
        let reply = match (request, trust) {
            (Request::Calls, trust) => {
                let in_flight_max = match trust {
                    Registered::Member | Registered::Client => CALLS_IN_FLIGHT_MAX,
                    Registered::Revoked | Registered::Unknown => UNTRUSTED_CALLS_IN_FLIGHT_MAX,
                };
                starling_transport::serve_calls(
                    &mut responder,
                    in_flight_max,
                    |request| self.call(&peer, request),
                    |error| {
                        Reply::Refused(Error::Refused(format!(
                            "member {} could not read this request ({error}); is it running \
                             another version of Starling?",
                            self.member.name()
                        )))
                    },
                    |error| {
                        Reply::Refused(Error::Internal(format!(
                            "the answer could not be sent: {error}"
                        )))
                    },
                )
                .await;
                return;
            }
            (Request::Join(join), _) => {
                let result = Box::pin(self.claim(&peer, Operation::Join(join))).await;
                Reply::Joined(result.and_then(from_json))
            }
            (Request::TrustClaim { name, secret }, _) => {
                let operation = Operation::TrustClaim {
                    name,
                    secret,
                    fingerprint: peer.fingerprint.clone(),
                };
                let result = Box::pin(self.claim(&peer, operation)).await;
                Reply::Trusted(result.and_then(from_json))
            }
            (Request::Operation { operation, caller }, trust) => {
                self.operation(&peer, trust, operation, caller).await
            }
            (
                Request::Exec {
                    source,
                    chunk_name,
                    args,
                },
                _,
            ) => {
                let caller = Caller::client(&peer.fingerprint);
                // Boxed: a script's future is large, and every request's future would carry it.
                Box::pin(crate::script::exec(
                    &self.member,
                    caller,
                    crate::script::ScriptRequest {
                        source,
                        chunk_name,
                        args,
                    },
                    &mut responder,
                ))
                .await
            }
            (
                Request::ImageUpload {
                    upload,
                    offset,
                    bytes,
                },
                _,
            ) => match self.member.upload_piece(upload, offset, bytes).await {
                Ok(()) => Reply::Ack,
                Err(error) => Reply::Refused(error),
            },
            (
                Request::ImageUploadDone {
                    upload,
                    filename,
                    aliases,
                    public,
                },
                _,
            ) => {
                let result = self
                    .member
                    .upload_done(upload, &filename, &aliases, public)
                    .await;
                Reply::Operation(result.map(|value| value.to_string()))
            }
            (Request::ImageDownload { reference }, _) => {
                // Answers with a length frame and raw bytes, or a refusal: nothing after it.
                self.member.serve_download(&reference, &mut responder).await;
                return;
            }
            (Request::StreamProbe { bytes }, _)
                if bytes > crate::protocol::STREAM_PROBE_BYTES_MAX =>
            {
                Reply::Refused(Error::Refused(format!(
                    "a stream probe is at most {} bytes",
                    crate::protocol::STREAM_PROBE_BYTES_MAX
                )))
            }
            (Request::StreamProbe { bytes }, _) => {
                crate::images::stream::send_zeros(&mut responder, bytes).await;
                return;
            }
            (Request::StreamProbeFrom { from, bytes }, _) => {
                self.member.stream_probe_from(&from, bytes).await
            }
            (
                Request::InstanceExec {
                    project,
                    name,
                    argv,
                    env,
                    cwd,
                },
                _,
            ) => {
                let request = crate::instances::stream::ExecCall {
                    project,
                    name,
                    argv,
                    env,
                    cwd,
                };
                Box::pin(self.member.relay_exec(request, &mut responder)).await
            }
            (Request::Monitor { types }, _) => {
                self.member
                    .serve_monitor(&types, &peer.fingerprint, &mut responder)
                    .await
            }
            // A client (the others were refused above).
            (_, Registered::Client | Registered::Revoked | Registered::Unknown) => Reply::Refused(
                Error::NotAuthorized("only cluster members may send this request".to_string()),
            ),
            (Request::Raft(RaftRequest::AppendStream), Registered::Member) => {
                Box::pin(crate::replication::serve(
                    &self.member,
                    &peer,
                    &mut responder,
                ))
                .await;
                return;
            }
            (Request::Raft(request), Registered::Member) => Box::pin(self.raft(request)).await,
            (Request::Ping, Registered::Member) => Reply::Pong,
            (Request::Events { subscriber, want }, Registered::Member) => {
                self.member
                    .serve_relay(&subscriber, &want, &peer.fingerprint, &mut responder)
                    .await
            }
            (Request::Heartbeat(heartbeat), Registered::Member) => {
                crate::cluster::health::on_heartbeat(&self.member, heartbeat)
            }
            (Request::Removed, Registered::Member) => self.removed(),
            (
                Request::ImagePull {
                    fingerprint,
                    size,
                    sources,
                },
                Registered::Member,
            ) => {
                self.member
                    .serve_pull(&fingerprint, size, &sources, &mut responder)
                    .await
            }
            (
                Request::ImageFetch {
                    fingerprint,
                    offset,
                },
                Registered::Member,
            ) => {
                self.member
                    .serve_fetch(&fingerprint, offset, &mut responder)
                    .await;
                return;
            }
            (
                Request::InstanceExecLocal {
                    key,
                    argv,
                    env,
                    cwd,
                },
                Registered::Member,
            ) => {
                let mut request = crate::instances::driver::ExecRequest::new(argv);
                request.env = env;
                request.cwd = cwd.into();
                self.member.exec_stream(&key, request, &mut responder).await
            }
            (Request::InstanceExport { key }, Registered::Member) => {
                self.member.serve_export(&key, &mut responder).await;
                return;
            }
            (Request::InstanceReceive(receive), Registered::Member) => {
                self.member.serve_receive(&receive, &mut responder).await
            }
            (Request::InstanceLocal { operation }, Registered::Member) => {
                let result = Box::pin(self.member.instance_local(&operation)).await;
                Reply::Operation(result.map(|value| value.to_string()))
            }
            (Request::MemberResources, Registered::Member) => Reply::MemberState(
                crate::sysinfo::local_resources(self.member.inner.dir.root()).to_string(),
            ),
            (Request::MemberState, Registered::Member) => {
                Reply::MemberState(crate::sysinfo::local_state(&self.member.name()).to_string())
            }
        };
        send_reply(&mut responder, &reply).await;
    }
}

async fn send_reply(responder: &mut Responder, reply: &Reply) {
    if let Err(error) = responder.send(reply).await {
        tracing::debug!(%error, "could not send a reply");
    }
}
