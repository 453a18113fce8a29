//! What operations return: cluster objects as JSON with LXD's field names.

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
        let metrics = metrics.borrow();
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
    let (status, message) = crate::health::status_of(record);
    json!({
        "server_name": record.name,
        "url": format!("quic://{}", record.address),
        "address": record.address,
        "database": raft.voters.contains(&record.id) || raft.learners.contains(&record.id),
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

/// `cluster.info()`.
pub(crate) fn cluster_info(member: &Member, origin: &str) -> Value {
    let raft = RaftRoles::of(member);
    member.local_state(|state| {
        let leader = raft
            .leader
            .and_then(|id| state.member_by_id(id))
            .map(|record| record.name.clone());
        let fingerprint =
            starling_transport::fingerprint_pem(&state.ca_cert_pem).unwrap_or_default();
        json!({
            "server_name": origin,
            "leader": leader,
            "fingerprint": fingerprint,
            "members": state.members.len(),
            "voters": raft.voters.len(),
            "standbys": raft.learners.len(),
            "roles_settled": raft.settled,
            "version": env!("CARGO_PKG_VERSION"),
            "member_config": starling_store::member_config::questions(state),
        })
    })
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

/// `cluster.tokens()`.
pub(crate) fn tokens(member: &Member, kind: TokenKind) -> Value {
    member.local_state(|state| {
        let tokens = state.tokens.values().filter(|token| token.kind == kind).map(|token| {
            let payload = crate::join::payload_of(token);
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
