//! The typed cluster state that every member replicates.
//!
//! Field names follow LXD's where LXD has the concept (`server_name`, `failure_domain`, ...).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Everything the cluster database holds. Changed only by [`crate::Command`]s.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Members by name.
    pub members: BTreeMap<String, Member>,
    /// Global configuration (`cluster.*`, `user.*`); unset keys take their defaults.
    pub config: BTreeMap<String, String>,
    /// Outstanding join tokens by member name (one per name).
    pub tokens: BTreeMap<String, JoinToken>,
    /// Outstanding client trust tokens by client name (one per name), apart from join tokens.
    pub trust_tokens: BTreeMap<String, JoinToken>,
    /// Client certificates trusted to drive the cluster remotely, by fingerprint.
    pub trusted_clients: BTreeMap<String, TrustedClient>,
    /// Fingerprints of revoked certificates: those of removed members, and client certificates
    /// removed from the trust store (until trusted again with a new token).
    pub revoked: BTreeSet<String>,
    /// Storage pools by name.
    pub pools: BTreeMap<String, StoragePool>,
    /// Networks by name.
    pub networks: BTreeMap<String, Network>,
    /// Images by fingerprint (their bytes live on the holders' disks).
    pub images: BTreeMap<String, crate::images::Image>,
    /// Fingerprints of the latest deleted images (at most [`crate::images::DELETED_KEPT`]):
    /// a member deletes its file of an image only once the image is listed here, so a member
    /// whose state lags never deletes an image it does not know yet.
    pub deleted_images: std::collections::VecDeque<String>,
    /// Projects by name.
    pub projects: BTreeMap<String, crate::instances::Project>,
    /// Profiles by (project, name).
    pub profiles: BTreeMap<crate::instances::Key, crate::instances::Profile>,
    /// Instances by (project, name).
    pub instances: BTreeMap<crate::instances::Key, crate::instances::Instance>,
    /// Cluster groups by name (each member lists its groups).
    pub groups: BTreeMap<String, crate::instances::ClusterGroup>,
    /// Each member's latest evacuation or restore, by member name.
    pub evacuations: BTreeMap<String, crate::evacuation::Evacuation>,
    /// The Raft node id the next joining member gets.
    pub next_node_id: NodeId,
    /// The cluster CA (certificate and key, PEM) that signs member and client certificates.
    pub ca_cert_pem: String,
    /// Counts changes to who is trusted (members added or removed, clients trusted or removed),
    /// so a copy of the trust registry can tell whether it is newer than another.
    pub trust_version: u64,
    /// Outcomes of recent requests by id (exactly-once writes).
    pub requests: crate::requests::RecentRequests,
    /// The CA's private key in PEM: every database member can sign joiners, as in LXD, where
    /// every member holds the cluster certificate and key.
    pub ca_key_pem: String,
    /// The key-value space scripts share (`kv.*`).
    pub kv: crate::kv::KvSpace,
    /// Stored scripts and their runs.
    pub scripts: crate::scripts::ScriptsState,
    /// Counts applied commands that may have changed a member record (see
    /// [`crate::Command::may_change_members`]): equal revisions, equal member records, so a
    /// cache of something made from them knows at once whether it still holds.
    pub members_revision: u64,
    /// The id the next lifecycle event gets.
    pub next_event_id: u64,
    /// Lifecycle events applied and not yet handed to the member's event stream (not
    /// replicated, not stored: see [`crate::lifecycle::Outbox`]).
    #[serde(skip)]
    pub lifecycle: crate::lifecycle::Outbox,
    /// How many instances each member is the location of, kept by the commands that add,
    /// move or remove one (not replicated, not stored: see [`InstanceCounts`]).
    #[serde(skip)]
    pub instance_counts: InstanceCounts,
}

/// Instances per location, kept beside [`ClusterState::instances`] so that a placement does
/// not count every instance ([`ClusterState::instances_by_location`]). Derived data: two
/// states with the same instances are the same state whatever this holds, so it compares
/// equal always. It is trusted only while it counts as many instances as there are: a state
/// made otherwise than by commands (decoded from a snapshot, a test's fixture) is counted
/// afresh.
#[derive(Clone, Debug, Default)]
pub struct InstanceCounts {
    by_location: BTreeMap<String, u64>,
    total: usize,
}

impl PartialEq for InstanceCounts {
    fn eq(&self, _: &InstanceCounts) -> bool {
        true
    }
}

impl InstanceCounts {
    /// Counts every instance of `instances`.
    pub fn of<'a>(instances: impl Iterator<Item = &'a crate::instances::Instance>) -> Self {
        let mut counts = InstanceCounts::default();
        for instance in instances {
            counts.added(&instance.location);
        }
        counts
    }

    /// An instance was added at `location`.
    pub(crate) fn added(&mut self, location: &str) {
        *self.by_location.entry(location.to_string()).or_default() += 1;
        self.total += 1;
    }

    /// An instance at `location` was removed.
    pub(crate) fn removed(&mut self, location: &str) {
        if let Some(count) = self.by_location.get_mut(location) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_location.remove(location);
            }
        }
        self.total = self.total.saturating_sub(1);
    }

    /// An instance moved from `from` to `to`.
    pub(crate) fn moved(&mut self, from: &str, to: &str) {
        if from != to {
            self.removed(from);
            self.added(to);
        }
    }

    /// Member `from` is called `to` now: its instances with it.
    pub(crate) fn renamed(&mut self, from: &str, to: &str) {
        if let Some(count) = self.by_location.remove(from) {
            *self.by_location.entry(to.to_string()).or_default() += count;
        }
    }
}

impl ClusterState {
    /// How many instances each member is the location of (members without any are absent).
    pub fn instances_by_location(&self) -> std::borrow::Cow<'_, BTreeMap<String, u64>> {
        if self.instance_counts.total == self.instances.len() {
            std::borrow::Cow::Borrowed(&self.instance_counts.by_location)
        } else {
            std::borrow::Cow::Owned(InstanceCounts::of(self.instances.values()).by_location)
        }
    }

    /// Counts the instances afresh (a state decoded from a snapshot).
    pub fn recount_instances(&mut self) {
        self.instance_counts = InstanceCounts::of(self.instances.values());
    }

    /// Whether the kept counts are those a recount gives (the property tests of `apply`).
    #[cfg(test)]
    pub(crate) fn counts_agree(&self) -> bool {
        let recount = InstanceCounts::of(self.instances.values());
        self.instance_counts.by_location == recount.by_location
            && self.instance_counts.total == recount.total
    }
}

/// A cluster member (LXD: "cluster member"; Raft calls the same thing a node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Unique member name (LXD's `server_name`).
    pub name: String,
    /// Raft node id.
    pub id: NodeId,
    /// QUIC address `host:port` other members and clients reach it at.
    pub address: String,
    /// CPU architecture the member runs on.
    pub architecture: String,
    /// Free-form description.
    pub description: String,
    /// Failure domain (default `default`).
    pub failure_domain: String,
    /// Member-specific configuration (`scheduler.instance`, `user.*`).
    pub config: BTreeMap<String, String>,
    /// Cluster groups the member belongs to.
    pub groups: Vec<String>,
    /// Roles users may assign (`event-hub`, `ovn-chassis`); database roles are derived from Raft.
    pub user_roles: Vec<String>,
    /// SHA-256 fingerprint of the member's certificate.
    pub certificate_fingerprint: String,
    /// SHA-256 fingerprint of the local administrator certificate issued with it.
    pub admin_fingerprint: String,
    /// When the member joined, in milliseconds since the Unix epoch.
    pub joined_at_ms: u64,
    /// Health as the leader last recorded it.
    pub status: MemberStatus,
    /// When the member last answered a heartbeat (recorded when its status changes), in
    /// milliseconds since the Unix epoch.
    pub last_heartbeat_ms: u64,
}

/// A member's status (LXD's `status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Answers heartbeats.
    #[default]
    Online,
    /// Has not answered heartbeats for `cluster.offline_threshold` seconds.
    Offline,
    /// Evacuated for maintenance.
    Evacuated,
}

impl MemberStatus {
    /// LXD's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Online => "Online",
            MemberStatus::Offline => "Offline",
            MemberStatus::Evacuated => "Evacuated",
        }
    }
}

/// A storage pool: cluster-wide config plus the member-specific keys each member answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoragePool {
    /// Pool name.
    pub name: String,
    /// Driver (`dir`, `zfs`, `lvm`, `btrfs`, `ceph`).
    pub driver: String,
    /// Free-form description.
    pub description: String,
    /// Cluster-wide configuration.
    pub config: BTreeMap<String, String>,
    /// Member-specific configuration, by member name.
    pub member_config: BTreeMap<String, BTreeMap<String, String>>,
}

/// A network: cluster-wide config plus the member-specific keys each member answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Network name.
    pub name: String,
    /// Type (`bridge`, `macvlan`, `physical`, `sriov`, `ovn`).
    pub network_type: String,
    /// Free-form description.
    pub description: String,
    /// Cluster-wide configuration.
    pub config: BTreeMap<String, String>,
    /// Member-specific configuration, by member name.
    pub member_config: BTreeMap<String, BTreeMap<String, String>>,
}

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    /// Join the cluster as a new member.
    Join,
    /// Become a trusted remote client (`starling remote add`).
    Client,
}

/// A single-use token (LXD's join token: base64 JSON of name, fingerprint, addresses, secret,
/// expiry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Name of the member (or client) the token was issued for.
    pub name: String,
    /// What the token is for.
    pub kind: TokenKind,
    /// 32 random bytes, hex.
    pub secret: String,
    /// SHA-256 fingerprint of the cluster CA certificate.
    pub fingerprint: String,
    /// Addresses of the members that were online when the token was issued.
    pub addresses: Vec<String>,
    /// Expiry in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// What the cluster knows a certificate fingerprint as (see [`ClusterState::registered`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Registered {
    /// The member certificate of a current member.
    Member,
    /// A trusted client certificate (a remote, or a member's local administrator).
    Client,
    /// A certificate revoked by a removal.
    Revoked,
    /// Not registered.
    Unknown,
}

/// A client certificate the cluster trusts (the local admin's or a remote's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustedClient {
    /// Name given at `trust add` time.
    pub name: String,
    /// SHA-256 fingerprint of the client's certificate.
    pub fingerprint: String,
    /// When it was added, in milliseconds since the Unix epoch.
    pub added_at_ms: u64,
}

impl ClusterState {
    /// The outstanding tokens of one kind, by name.
    pub fn tokens_of(&self, kind: TokenKind) -> &BTreeMap<String, JoinToken> {
        match kind {
            TokenKind::Join => &self.tokens,
            TokenKind::Client => &self.trust_tokens,
        }
    }

    /// The outstanding tokens of one kind, by name, for changes.
    pub fn tokens_of_mut(&mut self, kind: TokenKind) -> &mut BTreeMap<String, JoinToken> {
        match kind {
            TokenKind::Join => &mut self.tokens,
            TokenKind::Client => &mut self.trust_tokens,
        }
    }

    /// Checks a token claim without consuming the token: it exists for `name`, is of `kind`,
    /// its secret matches (compared in constant time) and it has not expired at `now_ms`.
    pub fn check_token(
        &self,
        name: &str,
        kind: TokenKind,
        secret: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        let Some(token) = self.tokens_of(kind).get(name) else {
            return Err(format!(
                "no valid token for \"{name}\": it was already used, revoked, replaced or never issued"
            ));
        };
        if !crate::command::constant_time_eq(token.secret.as_bytes(), secret.as_bytes()) {
            return Err(format!("the token secret for \"{name}\" does not match"));
        }
        if now_ms >= token.expires_at_ms {
            return Err(format!("the token for \"{name}\" has expired"));
        }
        Ok(())
    }

    /// What a certificate fingerprint is registered as: a member's certificate, a client's (a
    /// trusted client or a member's local administrator), or nothing.
    pub fn registered(&self, fingerprint: &str) -> Registered {
        if self.revoked.contains(fingerprint) {
            return Registered::Revoked;
        }
        if self.member_by_fingerprint(fingerprint).is_some() {
            return Registered::Member;
        }
        if self.trusted_clients.contains_key(fingerprint)
            || self
                .members
                .values()
                .any(|member| member.admin_fingerprint == fingerprint)
        {
            return Registered::Client;
        }
        Registered::Unknown
    }

    /// The member with Raft node id `id`.
    pub fn member_by_id(&self, id: NodeId) -> Option<&Member> {
        self.members.values().find(|member| member.id == id)
    }

    /// The member whose certificate has this fingerprint.
    pub fn member_by_fingerprint(&self, fingerprint: &str) -> Option<&Member> {
        self.members
            .values()
            .find(|member| member.certificate_fingerprint == fingerprint)
    }

    /// The effective value of a global config key (its default when unset).
    pub fn config_value(&self, key: &str) -> Option<String> {
        self.config
            .get(key)
            .cloned()
            .or_else(|| crate::config::default_value(key).map(str::to_string))
    }

    /// The effective value of an integer global config key.
    pub fn config_i64(&self, key: &str) -> i64 {
        // Parsed as the rule checked it: a value the rule accepted never reads as 0.
        self.config_value(key)
            .and_then(|value| crate::config::parse_integer(&value))
            .unwrap_or_default()
    }
}
