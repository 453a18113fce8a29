//! The request handler: who may ask what, and where each request goes.
//!
//! Trust is decided here, per request, from the peer's certificate: one issued by the cluster CA
//! (members and local administrators), one whose fingerprint the cluster trusts (remote
//! clients), or an untrusted one, which may only join with a token or claim trust with one.

use starling_transport::{issued_by, Handler, PeerIdentity, Responder};

use crate::member::Member;
use crate::operation::Operation;
use crate::protocol::{RaftRequest, Reply, Request};
use crate::Error;

/// The member's [`Handler`].
pub(crate) struct Service {
    pub(crate) member: Member,
    /// Certificates already checked against the cluster CA, by fingerprint.
    pub(crate) verified: std::sync::Mutex<std::collections::HashMap<String, bool>>,
}

/// Checked certificates remembered at most (the cache starts over past this).
const VERIFIED_CERTIFICATES_MAX: usize = 4096;

/// How far the cluster trusts a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerTrust {
    /// Certificate issued by the cluster CA: a member or a local administrator.
    Cluster,
    /// A remote client whose certificate the cluster trusts.
    Client,
    /// A certificate of a removed member.
    Revoked,
    /// Anyone else.
    Untrusted,
}

impl Service {
    fn trust_of(&self, peer: &PeerIdentity) -> PeerTrust {
        if self
            .member
            .local_state(|state| state.revoked.contains(&peer.fingerprint))
        {
            return PeerTrust::Revoked;
        }
        if self.issued_by_cluster(peer) {
            return PeerTrust::Cluster;
        }
        if self
            .member
            .local_state(|state| state.trusted_clients.contains_key(&peer.fingerprint))
        {
            return PeerTrust::Client;
        }
        PeerTrust::Untrusted
    }

    /// Whether the cluster CA issued the peer's certificate. A signature check costs more than
    /// the rest of a request, so results are remembered per certificate fingerprint.
    fn issued_by_cluster(&self, peer: &PeerIdentity) -> bool {
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(known) = verified.get(&peer.fingerprint) {
            return *known;
        }
        let issued = issued_by(&self.member.inner.ca_cert_pem, &peer.cert_der);
        if verified.len() >= VERIFIED_CERTIFICATES_MAX {
            verified.clear();
        }
        verified.insert(peer.fingerprint.clone(), issued);
        issued
    }

    /// Whether the peer is a member this member is cut off from (fault injection).
    fn cut_off(&self, peer: &PeerIdentity) -> bool {
        let address = self.member.local_state(|state| {
            state
                .member_by_fingerprint(&peer.fingerprint)
                .map(|record| record.address.clone())
        });
        address.is_some_and(|address| self.member.is_blocked(&address))
    }

    /// Only another member (the leader) may tell this one it was removed.
    fn removed(&self, peer: &PeerIdentity) -> Reply {
        let from_member = self
            .member
            .local_state(|state| state.member_by_fingerprint(&peer.fingerprint).is_some());
        if !from_member {
            return Reply::Refused(Error::NotAuthorized(
                "only a member may announce a removal".to_string(),
            ));
        }
        let member = self.member.clone();
        tokio::spawn(async move {
            // Let the acknowledgement leave before the endpoint closes.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            member.reset_after_removal().await;
        });
        Reply::Ack
    }

    async fn raft(&self, request: RaftRequest) -> Reply {
        let raft = self.member.raft();
        match request {
            RaftRequest::Append(rpc) => {
                self.member
                    .inner
                    .raft_contact
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Reply::Append(
                    raft.append_entries(rpc)
                        .await
                        .map_err(|error| error.to_string()),
                )
            }
            RaftRequest::Vote(rpc) => {
                Reply::Vote(raft.vote(rpc).await.map_err(|error| error.to_string()))
            }
            RaftRequest::Snapshot(rpc) => Reply::Snapshot(
                raft.install_snapshot(rpc)
                    .await
                    .map_err(|error| error.to_string()),
            ),
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|error| Error::Internal(error.to_string()))
}

fn not_trusted(peer: &PeerIdentity) -> Reply {
    Reply::Refused(Error::NotAuthorized(format!(
        "the certificate {} is not trusted by this cluster; join with a token or add it with `starling remote add`",
        &peer.fingerprint[..peer.fingerprint.len().min(16)]
    )))
}

impl Handler for Service {
    type Request = Request;

    async fn handle(&self, peer: PeerIdentity, request: Request, mut responder: Responder) {
        let trust = self.trust_of(&peer);
        let reply = match (request, trust) {
            (_, PeerTrust::Revoked) => Reply::Refused(Error::NotAuthorized(
                "this certificate was revoked when its member was removed from the cluster"
                    .to_string(),
            )),
            (Request::Join(join), _) => {
                let result = self.member.execute(Operation::Join(join), None, 0).await;
                Reply::Joined(result.and_then(from_json))
            }
            (Request::TrustClaim { name, secret }, _) => {
                let operation = Operation::TrustClaim {
                    name,
                    secret,
                    fingerprint: peer.fingerprint.clone(),
                };
                let result = self.member.execute(operation, None, 0).await;
                Reply::Trusted(result.and_then(from_json))
            }
            (_, PeerTrust::Untrusted) => not_trusted(&peer),
            (_, _) if self.cut_off(&peer) => {
                Reply::Refused(Error::Transport("cut off from this member".to_string()))
            }
            (
                Request::Operation {
                    operation,
                    origin,
                    hops,
                },
                _,
            ) => {
                let result = self.member.execute(operation, origin, hops).await;
                Reply::Operation(result.map(|value| value.to_string()))
            }
            (Request::Exec { source, chunk_name }, _) => {
                crate::script::exec(&self.member, source, chunk_name, &mut responder).await
            }
            (_, PeerTrust::Client) => Reply::Refused(Error::NotAuthorized(
                "only cluster members may send this request".to_string(),
            )),
            (Request::Raft(request), PeerTrust::Cluster) => self.raft(request).await,
            (Request::Ping, PeerTrust::Cluster) => Reply::Pong,
            (Request::Heartbeat(heartbeat), PeerTrust::Cluster) => {
                crate::health::on_heartbeat(&self.member, heartbeat)
            }
            (Request::Removed, PeerTrust::Cluster) => self.removed(&peer),
            (Request::TakeOver, PeerTrust::Cluster) => {
                let _ = self.member.raft().trigger().elect().await;
                Reply::Ack
            }
            (Request::MemberState, PeerTrust::Cluster) => {
                Reply::MemberState(crate::sysinfo::local_state(&self.member.name()).to_string())
            }
        };
        if let Err(error) = responder.send(&reply).await {
            tracing::debug!(%error, "could not send a reply");
        }
    }
}
