//! What operations return: cluster objects as JSON with LXD's field names.

use openraft::async_runtime::WatchReceiver;
use serde_json::{json, Map, Value};
use starling_store::{ClusterState, Member as MemberRecord, NodeId, TokenKind};

use crate::member::Member;
use crate::Error;

/// Database roles as Raft sees them right now.
pub(crate) struct RaftRoles {
    pub(crate) leader: Option<NodeId>,
    pub(crate) voters: Vec<NodeId>,
    pub(crate) learners: Vec<NodeId>,
    /// No membership change is under way: the last one is applied and not joint.
    pub(crate) settled: bool,
}

impl RaftRoles {
    pub(crate) fn of(member: &Member) -> RaftRoles {
        let metrics = member.raft().metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let settled = metrics.membership_config.log_id() <= &metrics.last_applied
            && membership.get_joint_config().len() == 1;
        RaftRoles {
            settled,
            leader: metrics.current_leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }
    }

    /// Whether the member holds a copy of the database (a voter or a stand-by): LXD's
    /// `database` field.
    pub(crate) fn is_database(&self, record: &MemberRecord) -> bool {
        self.voters.contains(&record.id) || self.learners.contains(&record.id)
    }

    /// LXD's roles of a member: `database-leader`, `database`, `database-standby`.
    pub(crate) fn roles(&self, record: &MemberRecord) -> Vec<String> {
        let mut roles = Vec::new();
        if self.leader == Some(record.id) {
            roles.push("database-leader".to_string());
        }
        if self.voters.contains(&record.id) {
            roles.push("database".to_string());
        } else if self.learners.contains(&record.id) {
            roles.push("database-standby".to_string());
        }
        roles.extend(record.user_roles.iter().cloned());
        roles
    }
}

fn member_json(raft: &RaftRoles, record: &MemberRecord) -> Value {
    let (status, message) = crate::cluster::health::status_of(record);
    json!({
        "server_name": record.name,
        "url": format!("quic://{}", record.address),
        "address": record.address,
        "database": raft.is_database(record),
        "status": status,
        "message": message,
        "architecture": record.architecture,
        "roles": raft.roles(record),
        "failure_domain": record.failure_domain,
        "description": record.description,
        "config": record.config,
        "groups": record.groups,
    })
}

/// `cluster.members()`.
pub(crate) fn members(member: &Member) -> Value {
    let raft = RaftRoles::of(member);
    let records: Vec<MemberRecord> =
        member.local_state(|state| state.members.values().cloned().collect());
    Value::Array(
        records
            .iter()
            .map(|record| member_json(&raft, record))
            .collect(),
    )
}

/// `cluster.member(name)`.
pub(crate) fn member(member: &Member, name: &str) -> Result<Value, Error> {
    let raft = RaftRoles::of(member);
    let record = member.local_state(|state| state.members.get(name).cloned());
    match record {
        Some(record) => Ok(member_json(&raft, &record)),
        None => Err(Error::Refused(format!("member \"{name}\" not found"))),
    }
}

/// `cluster.info()`: with the figures `etcdctl endpoint status` shows, as the member that
/// answers (the leader) knows them. The join questions (`member_config`, several per pool and
/// network) are built on a blocking thread: with thousands of networks that took the async
/// runtime long enough to miss heartbeats.
pub(crate) async fn cluster_info(
    member: &Member,
    origin: Option<&crate::protocol::Origin>,
) -> Result<Value, Error> {
    let raft = RaftRoles::of(member);
    let (raft_term, last_log_index, applied_index, snapshot_index) = {
        let metrics = member.raft().metrics();
        let metrics = metrics.borrow_watched();
        (
            metrics.current_term,
            metrics.last_log_index.unwrap_or(0),
            metrics.last_applied.map_or(0, |log_id| log_id.index),
            metrics.snapshot.map_or(0, |log_id| log_id.index),
        )
    };
    let db_size = directory_size(&member.dir().database());
    let (mut info, asked) = member.local_state(|state| {
        let leader = raft
            .leader
            .and_then(|id| state.member_by_id(id))
            .map(|record| record.name.clone());
        let fingerprint =
            starling_transport::fingerprint_pem(&state.ca_cert_pem).unwrap_or_default();
        let server_name = origin.map(|origin| {
            state
                .member_by_id(origin.id)
                .map_or(origin.name.as_str(), |record| record.name.as_str())
        });
        let info = json!({
            "server_name": server_name.unwrap_or_default(),
            "leader": leader,
            "fingerprint": fingerprint,
            "members": state.members.len(),
            "voters": raft.voters.len(),
            "standbys": raft.learners.len(),
            "roles_settled": raft.settled,
            "raft_term": raft_term,
            "last_log_index": last_log_index,
            "applied_index": applied_index,
            "snapshot_index": snapshot_index,
            "db_size": db_size,
            "version": env!("CARGO_PKG_VERSION"),
        });
        (info, starling_store::member_config::Asked::of(state))
    });
    let questions = tokio::task::spawn_blocking(move || serde_json::to_value(asked.questions()))
        .await
        .map_err(|error| Error::Internal(format!("building the join questions: {error}")))?
        .map_err(|error| Error::Internal(format!("the join questions: {error}")))?;
    info["member_config"] = questions;
    Ok(info)
}

/// Bytes used on disk by the files under `path` (LMDB files are sparse: count allocated blocks).
fn directory_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => directory_size(&entry.path()),
            Ok(metadata) => allocated_bytes(&metadata),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(unix)]
fn allocated_bytes(metadata: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (metadata.blocks() * 512).min(metadata.len())
}

#[cfg(not(unix))]
fn allocated_bytes(metadata: &std::fs::Metadata) -> u64 {
    metadata.len()
}

/// `storage.list()`.
pub(crate) fn pools(member: &Member) -> Value {
    member.local_state(|state| {
        let pools = state.pools.values().map(|pool| {
            json!({"name": pool.name, "driver": pool.driver, "description": pool.description,
                   "config": pool.config, "member_config": pool.member_config})
        });
        Value::Array(pools.collect())
    })
}

/// `network.list()`.
pub(crate) fn networks(member: &Member) -> Value {
    member.local_state(|state| {
        let networks = state.networks.values().map(|network| {
            json!({"name": network.name, "type": network.network_type, "description": network.description,
                   "config": network.config, "member_config": network.member_config})
        });
        Value::Array(networks.collect())
    })
}

/// `cluster.trust_list()`: trusted clients, then the members' local administrators.
pub(crate) fn trust_list(member: &Member) -> Value {
    member.local_state(|state| {
        let clients = state.trusted_clients.values().map(|client| {
            json!({"name": client.name, "type": "client", "fingerprint": client.fingerprint,
                   "added_at": crate::token::format_time_ms(client.added_at_ms)})
        });
        // The first member's administrator is also in the trust table: list it once.
        let admins = state
            .members
            .values()
            .filter(|record| {
                !state
                    .trusted_clients
                    .contains_key(&record.admin_fingerprint)
            })
            .map(|record| {
                json!({"name": format!("admin@{}", record.name), "type": "member-admin",
                   "fingerprint": record.admin_fingerprint,
                   "added_at": crate::token::format_time_ms(record.joined_at_ms)})
            });
        Value::Array(clients.chain(admins).collect())
    })
}

/// The fingerprint of the trusted client named `name`, or whose fingerprint is or starts with
/// `name` (at least 12 hex digits, as `lxc config trust remove` accepts).
pub(crate) fn trusted_fingerprint(member: &Member, name: &str) -> Result<String, Error> {
    member.local_state(|state| {
        let by_name: Vec<&String> = state
            .trusted_clients
            .values()
            .filter(|client| client.name == name)
            .map(|client| &client.fingerprint)
            .collect();
        let by_prefix: Vec<&String> = state
            .trusted_clients
            .keys()
            .filter(|fingerprint| name.len() >= 12 && fingerprint.starts_with(name))
            .collect();
        let admin_of = state.members.values().find(|record| {
            record.admin_fingerprint == name || format!("admin@{}", record.name) == name
        });
        if let Some(record) = admin_of {
            return Err(Error::Refused(format!(
                "the certificate of admin@{0} belongs to member \"{0}\": remove the member instead",
                record.name
            )));
        }
        match (by_name.as_slice(), by_prefix.as_slice()) {
            ([fingerprint], _) | ([], [fingerprint]) => Ok((*fingerprint).clone()),
            ([], []) => Err(Error::Refused(format!(
                "no trusted client certificate named or with fingerprint \"{name}\""
            ))),
            _ => Err(Error::Refused(format!(
                "\"{name}\" matches several trusted certificates: give a full fingerprint"
            ))),
        }
    })
}

/// `cluster.tokens()` and `cluster.trust_tokens()`.
pub(crate) fn tokens(member: &Member, kind: TokenKind) -> Value {
    member.local_state(|state| {
        let tokens = state.tokens_of(kind).values().map(|token| {
            let payload = crate::cluster::join::payload_of(token);
            json!({"server_name": token.name, "token": payload.encode(), "expires_at": payload.expires_at})
        });
        Value::Array(tokens.collect())
    })
}

/// `config.all()`: known keys with their effective values, then the `user.*` keys set.
pub(crate) fn config(member: &Member) -> Value {
    member.local_state(|state: &ClusterState| {
        let mut all = Map::new();
        for key in starling_store::config::known_keys() {
            all.insert(
                key.to_string(),
                Value::String(state.config_value(key).unwrap_or_default()),
            );
        }
        for (key, value) in &state.config {
            all.insert(key.clone(), Value::String(value.clone()));
        }
        Value::Object(all)
    })
}
