//! The wire protocol between members and between clients and members.
//!
//! Each request travels on its own QUIC stream as one frame; the answer is one or more
//! [`Reply`] frames (a script streams its `print` lines before its result).

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use starling_store::{NodeId, TypeConfig};
use starling_transport::Identity;

use crate::operation::Operation;
use crate::Error;

/// A request to a member.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft traffic; members only.
    Raft(RaftRequest),
    /// A cluster operation, from a client or forwarded by a member.
    Operation {
        /// The operation.
        operation: Operation,
        /// Who asked, and through whom (set by the first member; a client's value is ignored).
        caller: Caller,
    },
    /// Runs a Lua script on the member; the reply streams `Print` lines, then `ScriptDone`.
    Exec {
        /// Lua source.
        source: String,
        /// Name shown in error messages (the file name, or `exec`).
        chunk_name: String,
        /// The script's `arg[1]`... (`starling run FILE -- a b`).
        args: Vec<String>,
    },
    /// A joiner asks to join with a token (allowed from untrusted certificates).
    Join(JoinRequest),
    /// A remote client presents a trust token (allowed from untrusted certificates).
    TrustClaim {
        /// The name the token was issued for.
        name: String,
        /// The token's secret.
        secret: String,
    },
    /// The leader's heartbeat: tells the member who leads and who the members are.
    Heartbeat(Heartbeat),
    /// Opens a call stream (`starling_transport::calls`): numbered [`Request::Operation`]s
    /// follow on the same stream, each answered with its number. Each is checked as a request
    /// of its own (the certificate's standing is looked up again for every one).
    Calls,
    /// Are you there? (used to count reachable voters); members only.
    Ping,
    /// The leader removed the receiver from the cluster: it resets itself; members only.
    Removed,
    /// A piece of an image file a client uploads (trusted clients and members), at `offset`
    /// of upload `upload` (an id the client chose). Pieces come in order.
    ImageUpload {
        /// The upload's id.
        upload: u128,
        /// Where the piece starts.
        offset: u64,
        /// The bytes (at most [`crate::images::files::CHUNK_BYTES`] × 4).
        #[serde(with = "byte_buffer")]
        bytes: Vec<u8>,
    },
    /// Upload `upload` is complete: import it as `images.import` does.
    ImageUploadDone {
        /// The upload's id.
        upload: u128,
        /// The file's name on the client.
        filename: String,
        /// Aliases to give it.
        aliases: Vec<String>,
        /// Whether untrusted clients may download it.
        public: bool,
    },
    /// Streams an image's bytes to a client (see [`crate::images::stream`]: a length frame,
    /// then the raw bytes), from this member's copy or relayed from a holder.
    ImageDownload {
        /// Fingerprint, unique prefix or alias.
        reference: String,
    },
    /// The leader asks the receiver to fetch an image from `sources` (member addresses, in
    /// order) and keep it; answered with `Progress` frames while it runs, then `Ack` once the
    /// file is verified and durable. Members only.
    ImagePull {
        /// The image.
        fingerprint: String,
        /// Its size in bytes (checked against the free disk before the transfer starts).
        size: u64,
        /// Addresses of members holding it.
        sources: Vec<String>,
    },
    /// Sends the bytes of an image from `offset` (a length frame, then the raw bytes). Members
    /// only.
    ImageFetch {
        /// The image.
        fingerprint: String,
        /// Where to start, in bytes.
        offset: u64,
    },
    /// The receiver's live state (`cluster.member_state`); members only.
    MemberState,
    /// Runs a command in an instance and streams its output (`ExecOutput` frames, then
    /// `ExecExit`): the member asked relays it from the instance's member (trusted clients and
    /// members).
    InstanceExec {
        /// The project.
        project: String,
        /// The instance.
        name: String,
        /// The command and its arguments.
        argv: Vec<String>,
        /// Extra environment.
        env: std::collections::BTreeMap<String, String>,
        /// Working directory (`/` when absent).
        cwd: Option<String>,
    },
    /// Runs a command in a container of the receiver and streams its output, as
    /// `InstanceExec` answers. Members only.
    InstanceExecLocal {
        /// The instance.
        key: crate::instances::driver::InstanceKey,
        /// The command and its arguments.
        argv: Vec<String>,
        /// Extra environment.
        env: std::collections::BTreeMap<String, String>,
        /// Working directory.
        cwd: String,
    },
    /// The leader asks an instance's member to act on its container (unpack, start, stop,
    /// exec, state, delete); answered with `Operation`. Members only.
    InstanceLocal {
        /// What to do.
        operation: crate::instances::local::LocalOperation,
    },
    /// Sends the packed root file system of a moving instance (a length frame, then the raw
    /// bytes; see `instances::transfer`). Members only.
    InstanceExport {
        /// The instance.
        key: crate::instances::driver::InstanceKey,
    },
    /// Asks the receiver to fetch a moving instance's root file system from `source` (an
    /// address), verify and unpack it; answered with `Progress` frames, then `Ack`. Members
    /// only.
    InstanceReceive(crate::instances::transfer::Receive),
    /// The receiver's hardware resources (placement scriptlets); answered as `MemberState`
    /// (JSON text); members only.
    MemberResources,
    /// Sends `bytes` zero bytes as an image stream would: the raw stream rate, the floor
    /// `bench-images` compares copies with. At most [`STREAM_PROBE_BYTES_MAX`].
    StreamProbe {
        /// How many bytes.
        bytes: u64,
    },
    /// The receiver's events as they happen (`starling monitor`): `Ack` when the stream is
    /// open, then an `Event` per event of `types` (all when empty) and an `Ack` now and then
    /// while there are none.
    Monitor {
        /// `lifecycle`, `logging`, `operation`.
        types: Vec<String>,
    },
    /// A member's relay subscription to the receiver's events (members only); answered as
    /// `Monitor` is.
    Events {
        /// The subscribing member (its own events are never sent back to it).
        subscriber: String,
        /// What it takes.
        want: crate::events::monitor::Want,
    },
    /// Asks the receiver to take a `StreamProbe` of `bytes` from member `from` and answer
    /// how long it took (`Probe`).
    StreamProbeFrom {
        /// The member sending.
        from: String,
        /// How many bytes.
        bytes: u64,
    },
}

/// The largest `StreamProbe`.
pub const STREAM_PROBE_BYTES_MAX: u64 = 16 << 30;

/// The member a request came in at. The leader names it from its own state by id: the
/// first member may not have applied a rename the leader already has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// The member's Raft node id.
    pub id: NodeId,
    /// What the member called itself, for a member the leader does not know.
    pub name: String,
}

/// Who an operation runs for. The first member to receive a request fills it in; a member that
/// forwards it keeps it, so the leader judges the original client, not the forwarding member.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    /// The member the client talks to (`cluster.info().server_name`).
    pub origin: Option<Origin>,
    /// Fingerprint of the client certificate the request came with; `None` when a member asks
    /// for itself. The leader refuses the request unless it is still registered.
    pub client: Option<String>,
    /// How many times the request was forwarded already (a loop cannot form).
    pub hops: u8,
    /// The request's id: a write with an id applies once, however often it is retried (see
    /// `starling_store::requests`). The first member sets one when the client did not.
    pub request_id: Option<u128>,
}

impl Caller {
    /// A member asking for itself.
    pub fn local() -> Caller {
        Caller::default()
    }

    /// A client of this member, with the certificate `fingerprint`.
    pub fn client(fingerprint: &str) -> Caller {
        Caller {
            client: Some(fingerprint.to_string()),
            ..Caller::default()
        }
    }
}

/// Raft RPCs.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    /// Append entries (and heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// Request a vote.
    Vote(VoteRequest<TypeConfig>),
    /// Ask whether a vote would be granted, before an election (pre-vote).
    PreVote(VoteRequest<TypeConfig>),
    /// Install a whole snapshot, sent by the leader of `vote`.
    Snapshot {
        /// The sending leader's vote.
        vote: starling_store::Vote,
        /// What the snapshot covers.
        meta: starling_store::SnapshotMeta,
        /// The serialized state.
        data: Vec<u8>,
    },
    /// The leader hands leadership over to the receiver.
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Opens a replication stream: the leader sends `AppendEntriesRequest` frames on it for as
    /// long as it replicates to the receiver, without waiting for answers, and the receiver
    /// answers each with an [`AppendStreamReply`] frame, in order.
    AppendStream,
}

/// The receiver's answer to one request of a replication stream ([`RaftRequest::AppendStream`]):
/// what openraft answered, or why the stream ends (openraft stopped, the sender is no longer
/// trusted, the receiver is out of service).
pub type AppendStreamReply = Result<openraft::raft::StreamAppendResult<TypeConfig>, String>;

/// A member's answer.
// Replies are built once per request and encoded at once; boxing the larger Raft answers would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to a Raft append.
    Append(Result<AppendEntriesResponse<TypeConfig>, String>),
    /// Answer to a vote or pre-vote request.
    Vote(Result<VoteResponse<TypeConfig>, String>),
    /// Answer to a snapshot.
    Snapshot(Result<SnapshotResponse<TypeConfig>, String>),
    /// Answer to a leadership transfer.
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, String>),
    /// The raw bytes that follow on this stream: `bytes` of them, then its end.
    ImageStream {
        /// How many.
        bytes: u64,
    },
    /// How far a copy got (`ImagePull` answers these until it is done).
    Progress {
        /// Bytes received and written.
        done: u64,
    },
    /// How long a `StreamProbeFrom` took.
    Probe {
        /// Bytes received.
        bytes: u64,
        /// Seconds from the request to the last byte.
        seconds: f64,
    },
    /// Output of a command run in an instance, as it comes.
    ExecOutput {
        /// From its standard error (else its standard output).
        stderr: bool,
        /// The bytes.
        #[serde(with = "byte_buffer")]
        bytes: Vec<u8>,
    },
    /// The command run in an instance ended: its exit code, or why it did not run.
    ExecExit(Result<i32, Error>),
    /// Answer to an operation: the result as JSON text.
    Operation(Result<String, Error>),
    /// One line a script printed.
    Print(String),
    /// The script finished: its return value as JSON text, or its error.
    ScriptDone(Result<String, Error>),
    /// Answer to a join.
    Joined(Result<JoinResponse, Error>),
    /// Answer to a trust claim: the cluster CA certificate to pin from now on.
    Trusted(Result<String, Error>),
    /// Answer to a heartbeat.
    HeartbeatAck {
        /// The member's name.
        name: String,
        /// The newest trust registry version the member holds.
        trust_version: u64,
    },
    /// Answer to a ping.
    Pong,
    /// The request was taken (removal, takeover).
    Ack,
    /// The member's live state as JSON text.
    MemberState(String),
    /// One event (`Monitor`, `Events`).
    Event(crate::events::Event),
    /// The request itself was refused (unauthorized, malformed).
    Refused(Error),
}

/// What a joiner sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The member name (must match the token).
    pub name: String,
    /// The token secret.
    pub secret: String,
    /// The address the joiner listens on.
    pub address: String,
    /// The joiner's CPU architecture.
    pub architecture: String,
    /// Answers to the member-specific configuration questions.
    pub member_config: Vec<starling_store::member_config::Answer>,
}

/// What a joiner gets back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// Its Raft node id.
    pub id: NodeId,
    /// Its member identity, signed by the cluster CA.
    pub identity: Identity,
    /// A client identity for the local administrator on the joiner's machine.
    pub admin: Identity,
    /// The cluster CA certificate.
    pub ca_cert_pem: String,
    /// The other members' addresses.
    pub peers: Vec<String>,
    /// Who the cluster trusts, so that the new member can judge its first requests.
    pub registry: crate::trust::TrustRegistry,
    /// The leader that admitted the member (its Raft node id), so the new member can forward
    /// requests at once instead of waiting for a heartbeat.
    pub leader_id: NodeId,
    /// That leader's address.
    pub leader_address: String,
}

/// The leader's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leader's node id.
    pub leader_id: NodeId,
    /// The leader's address.
    pub leader_address: String,
    /// Addresses of all members.
    pub addresses: Vec<String>,
    /// The trust registry, when the receiver's copy is older than the leader's.
    pub registry: Option<crate::trust::TrustRegistry>,
}

/// Serializes a byte buffer as bytes (one length and a copy), not as a sequence of numbers
/// (one call per byte), for image data.
mod byte_buffer {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a byte buffer")
            }

            fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }

            fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }
        }
        deserializer.deserialize_byte_buf(Bytes)
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Holder(#[serde(with = "super")] Vec<u8>);

        /// Goal: bytes survive the round trip through bincode, as a length and the bytes.
        #[test]
        fn round_trip() {
            let original = Holder((0..=255).collect());
            let encoded = bincode::serialize(&original).unwrap();
            assert_eq!(encoded.len(), 8 + 256);
            assert_eq!(bincode::deserialize::<Holder>(&encoded).unwrap(), original);
        }
    }
}
