//! Commands: the replicated changes to [`ClusterState`].
//!
//! A command is checked when it is proposed and checked again when it is applied; applying is
//! deterministic (time comes inside the command, never from the clock), so every member ends in
//! the same state. A command that fails its checks changes nothing and answers with the reason,
//! with one exception: a refused join or trust claim whose token has expired removes that token
//! (nothing else removes expired tokens).

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::config;
use crate::member_config::{self, Answer};
use crate::model::{
    ClusterState, JoinToken, Member, MemberStatus, Network, StoragePool, TokenKind, TrustedClient,
};

/// A change to the cluster state, proposed through Raft.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a new cluster: its CA and its first member.
    Bootstrap {
        /// The bootstrap member.
        member: Member,
        /// The cluster CA certificate (PEM).
        ca_cert_pem: String,
        /// The cluster CA key (PEM).
        ca_key_pem: String,
        /// The local administrator's client certificate.
        admin: TrustedClient,
    },
    /// Sets a global config key (validated).
    ConfigSet {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Unsets a global config key (it takes its default again).
    ConfigUnset {
        /// The key.
        key: String,
    },
    /// Issues a token, replacing any earlier token for the same name.
    TokenIssue {
        /// The token.
        token: JoinToken,
    },
    /// Revokes the token for a name.
    TokenRevoke {
        /// The name the token was issued for.
        name: String,
        /// Which kind of token (join tokens and trust tokens are kept apart).
        kind: TokenKind,
    },
    /// Adds a member, consuming its join token.
    MemberAdd {
        /// The new member (its `id` is ignored: the next free node id is assigned on apply).
        member: Member,
        /// Its answers to the member-specific configuration questions.
        answers: Vec<Answer>,
        /// The secret presented by the joiner.
        secret: String,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// Several commands proposed together (group commit); each applies on its own, in order.
    /// Shared, so that the log's copies of an entry (the one kept in memory, the ones read
    /// for replication and for applying) do not copy every command in it; encoded as a
    /// sequence, the same as a `Vec`.
    Batch(std::sync::Arc<[Command]>),
    /// Health changes the leader observed in a heartbeat round.
    MemberHealth {
        /// One entry per member whose status changed.
        updates: Vec<HealthUpdate>,
    },
    /// Changes a member's properties.
    MemberUpdate {
        /// The member.
        name: String,
        /// What to change.
        changes: MemberChanges,
    },
    /// Renames a member.
    MemberRename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Removes a member and revokes its certificates.
    MemberRemove {
        /// The member.
        name: String,
    },
    /// Creates a storage pool.
    PoolCreate {
        /// The pool.
        pool: StoragePool,
    },
    /// Deletes a storage pool.
    PoolDelete {
        /// Its name.
        name: String,
    },
    /// A change to the image records.
    Image(crate::images::ImageCommand),
    /// A change to projects, profiles, instances or cluster groups.
    Instance(crate::instances::InstanceCommand),
    /// Creates a network.
    NetworkCreate {
        /// The network.
        network: Network,
    },
    /// Deletes a network.
    NetworkDelete {
        /// Its name.
        name: String,
    },
    /// Trusts a client certificate, consuming its client token.
    ClientTrust {
        /// The client to trust (its `name` is the token's name).
        client: TrustedClient,
        /// The secret presented by the client.
        secret: String,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// A command tagged with a request id: applied once, however often it is proposed; a
    /// repeat answers with the first outcome (see [`crate::requests`]).
    Once {
        /// The request id.
        request_id: u128,
        /// The command.
        command: Box<Command>,
    },
    /// Removes a client certificate from the trust store and revokes it (`trust remove`).
    TrustRemove {
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A change to the evacuation records.
    Evacuation(crate::evacuation::EvacuationCommand),
    /// A change to the key-value space scripts share.
    Kv(crate::kv::KvCommand),
    /// A change to stored scripts or their runs.
    Script(crate::scripts::ScriptCommand),
    /// One change to a member, made to its record as it is when applied: a config key or a
    /// user role. Unlike [`Command::MemberUpdate`], which carries whole maps read before the
    /// proposal, it never undoes a change applied in between (a lagging leader's read, or a
    /// proposal of an earlier term committed late).
    MemberPatch {
        /// The member.
        name: String,
        /// The change.
        patch: MemberPatch,
    },
}

/// One change to a member record ([`Command::MemberPatch`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MemberPatch {
    /// Sets a member config key (`cluster.set`).
    ConfigSet {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Removes a member config key (`cluster.unset`).
    ConfigUnset {
        /// The key.
        key: String,
    },
    /// Adds a user role (`cluster.role_add`); adding a role held changes nothing.
    RoleAdd {
        /// The role.
        role: String,
    },
    /// Removes a user role (`cluster.role_remove`); refused if the member does not hold it.
    RoleRemove {
        /// The role.
        role: String,
    },
}

impl MemberPatch {
    /// Checks the change on its own (the key and value, or the role), before it is proposed
    /// and again when it is applied.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            MemberPatch::ConfigSet { key, value } => validate_member_config(key, value),
            MemberPatch::ConfigUnset { key } => validate_member_config(key, "all"),
            MemberPatch::RoleAdd { role } | MemberPatch::RoleRemove { role } => {
                validate_user_role(role)
            }
        }
    }
}

/// A member's new health, as a heartbeat round saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthUpdate {
    /// The member.
    pub name: String,
    /// Its status now.
    pub status: MemberStatus,
    /// When it last answered, milliseconds since the Unix epoch.
    pub last_heartbeat_ms: u64,
}

/// Changes to a member's properties; `None` leaves a property as it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberChanges {
    /// New description.
    pub description: Option<String>,
    /// New failure domain.
    pub failure_domain: Option<String>,
    /// New member config (replaces the whole map).
    pub config: Option<BTreeMap<String, String>>,
    /// New groups (replaces the list).
    pub groups: Option<Vec<String>>,
    /// New user roles (`event-hub`, `ovn-chassis`; replaces the list).
    pub user_roles: Option<Vec<String>>,
}

/// Roles users may add and remove; the `database*` roles are automatic.
pub const USER_ROLES: &[&str] = &["event-hub", "ovn-chassis"];

/// The answer to an applied command: `Err` carries the reason it changed nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// What happened.
    pub result: Result<(), String>,
    /// For a [`Command::Batch`], what happened to each command, in order.
    pub batch: Vec<Result<(), String>>,
}

impl CommandResponse {
    /// A response with no error.
    pub fn ok() -> CommandResponse {
        CommandResponse {
            result: Ok(()),
            batch: Vec::new(),
        }
    }
}

impl Command {
    /// Whether applying the command may change a member record. Only the kinds known to leave
    /// every member record alone say no; any other, and any new one, says yes.
    pub fn may_change_members(&self) -> bool {
        use crate::instances::InstanceCommand as I;
        match self {
            Command::Once { command, .. } => command.may_change_members(),
            Command::Batch(commands) => commands.iter().any(Command::may_change_members),
            Command::Kv(_)
            | Command::Script(_)
            | Command::Image(_)
            | Command::ConfigSet { .. }
            | Command::ConfigUnset { .. }
            | Command::TokenIssue { .. }
            | Command::TokenRevoke { .. }
            | Command::PoolCreate { .. }
            | Command::PoolDelete { .. }
            | Command::NetworkCreate { .. }
            | Command::NetworkDelete { .. }
            | Command::TrustRemove { .. }
            | Command::ClientTrust { .. } => false,
            Command::Instance(instance) => !matches!(
                instance,
                I::ProjectCreate { .. }
                    | I::ProjectUpdate { .. }
                    | I::ProjectDelete { .. }
                    | I::ProjectRename { .. }
                    | I::ProfileCreate { .. }
                    | I::ProfileUpdate { .. }
                    | I::ProfileRename { .. }
                    | I::ProfileDelete { .. }
                    | I::InstanceCreate { .. }
                    | I::InstanceUpdate { .. }
                    | I::InstancePatch { .. }
                    | I::ProfileUpdateFrom { .. }
                    | I::ProjectUpdateFrom { .. }
                    | I::InstanceStatus { .. }
                    | I::InstanceMove { .. }
                    | I::InstanceMoveClaim { .. }
                    | I::InstanceMoveClaimed { .. }
                    | I::InstanceMoveRelease { .. }
                    | I::InstanceDeleting { .. }
                    | I::InstanceRename { .. }
                    | I::InstanceDelete { .. }
            ),
            _ => true,
        }
    }

    /// Whether applying the command changes which certificates the cluster trusts.
    pub fn changes_trust(&self) -> bool {
        if let Command::Once { command, .. } = self {
            return command.changes_trust();
        }
        matches!(
            self,
            Command::Bootstrap { .. }
                | Command::MemberAdd { .. }
                | Command::MemberRemove { .. }
                | Command::ClientTrust { .. }
                | Command::TrustRemove { .. }
        )
    }
}

impl ClusterState {
    /// Applies one log entry's command, a batch one command at a time.
    pub fn apply_entry(&mut self, command: &Command) -> CommandResponse {
        match command {
            Command::Batch(commands) => {
                let batch = commands.iter().map(|command| self.apply(command)).collect();
                CommandResponse {
                    result: Ok(()),
                    batch,
                }
            }
            single => CommandResponse {
                result: self.apply(single),
                batch: Vec::new(),
            },
        }
    }

    /// Applies one command. Deterministic: the same state and command give the same result.
    pub fn apply(&mut self, command: &Command) -> Result<(), String> {
        if let Command::Once {
            request_id,
            command,
        } = command
        {
            if let Some(outcome) = self.requests.outcome(*request_id) {
                return outcome;
            }
            let outcome = self.apply_one(command);
            self.requests.remember(*request_id, outcome.clone());
            return outcome;
        }
        self.apply_one(command)
    }

    fn apply_one(&mut self, command: &Command) -> Result<(), String> {
        command.check_limits()?;
        // Read off the state before the change (transitions), kept only if it applies.
        let events = crate::lifecycle::of(self, command);
        self.apply_checked(command)?;
        self.record_lifecycle(events);
        if command.may_change_members() {
            self.members_revision += 1;
        }
        if command.changes_trust() {
            self.trust_version += 1;
        }
        Ok(())
    }

    fn apply_checked(&mut self, command: &Command) -> Result<(), String> {
        match command {
            Command::Batch(_) => Err("a batch cannot be nested in a batch".to_string()),
            Command::Once { .. } => Err("a request id cannot tag a tagged command".to_string()),
            Command::Bootstrap {
                member,
                ca_cert_pem,
                ca_key_pem,
                admin,
            } => {
                if !self.members.is_empty() {
                    return Err("the cluster is already bootstrapped".to_string());
                }
                self.ca_cert_pem = ca_cert_pem.clone();
                self.ca_key_pem = ca_key_pem.clone();
                self.next_node_id = member.id + 1;
                self.members.insert(member.name.clone(), member.clone());
                self.trusted_clients
                    .insert(admin.fingerprint.clone(), admin.clone());
                self.seed_defaults();
                Ok(())
            }
            Command::ConfigSet { key, value } => {
                config::validate(key, value).map_err(|error| error.to_string())?;
                self.config.insert(key.clone(), value.clone());
                Ok(())
            }
            Command::ConfigUnset { key } => {
                config::validate_key(key).map_err(|error| error.to_string())?;
                self.config.remove(key);
                Ok(())
            }
            Command::TokenIssue { token } => {
                self.check_token_name(token)?;
                self.tokens_of_mut(token.kind)
                    .insert(token.name.clone(), token.clone());
                Ok(())
            }
            Command::TokenRevoke { name, kind } => match self.tokens_of_mut(*kind).remove(name) {
                Some(_) => Ok(()),
                None => Err(format!("no token for \"{name}\"")),
            },
            Command::MemberAdd {
                member,
                answers,
                secret,
                now_ms,
            } => self.add_member(member, answers, secret, *now_ms),
            Command::MemberHealth { updates } => {
                for update in updates {
                    if let Some(member) = self.members.get_mut(&update.name) {
                        // Evacuated until restored, whatever its heartbeats say.
                        if member.status != MemberStatus::Evacuated {
                            member.status = update.status;
                        }
                        member.last_heartbeat_ms = update.last_heartbeat_ms;
                    }
                }
                Ok(())
            }
            Command::MemberUpdate { name, changes } => self.update_member(name, changes),
            Command::MemberPatch { name, patch } => self.patch_member(name, patch),
            Command::MemberRename { from, to } => self.rename_member(from, to),
            Command::MemberRemove { name } => self.remove_member(name),
            Command::PoolCreate { pool } => self.create_pool(pool),
            Command::PoolDelete { name } => match self.pools.remove(name) {
                Some(_) => Ok(()),
                None => Err(format!("storage pool \"{name}\" not found")),
            },
            Command::Image(command) => self.apply_image(command),
            Command::Instance(command) => self.apply_instance(command),
            Command::Evacuation(command) => self.apply_evacuation(command),
            Command::Kv(command) => self.apply_kv(command),
            Command::Script(command) => self.apply_script(command),
            Command::NetworkCreate { network } => self.create_network(network),
            Command::NetworkDelete { name } => match self.networks.remove(name) {
                Some(_) => Ok(()),
                None => Err(format!("network \"{name}\" not found")),
            },
            Command::ClientTrust {
                client,
                secret,
                now_ms,
            } => {
                self.consume_token(&client.name, TokenKind::Client, secret, *now_ms)?;
                self.revoked.remove(&client.fingerprint);
                self.trusted_clients
                    .insert(client.fingerprint.clone(), client.clone());
                Ok(())
            }
            Command::TrustRemove { fingerprint } => {
                if self.trusted_clients.remove(fingerprint).is_none() {
                    return Err(format!(
                        "no trusted client certificate with fingerprint {}",
                        crate::limits::short(fingerprint)
                    ));
                }
                self.revoked.insert(fingerprint.clone());
                Ok(())
            }
        }
    }

    fn check_token_name(&self, token: &JoinToken) -> Result<(), String> {
        validate_member_name(&token.name)?;
        if token.kind == TokenKind::Join && self.members.contains_key(&token.name) {
            return Err(format!(
                "the cluster already has a member named \"{}\"",
                token.name
            ));
        }
        Ok(())
    }

    fn add_member(
        &mut self,
        member: &Member,
        answers: &[Answer],
        secret: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        if self.members.contains_key(&member.name) {
            return Err(format!(
                "the cluster already has a member named \"{}\"",
                member.name
            ));
        }
        if self
            .members
            .values()
            .any(|other| other.address == member.address)
        {
            return Err(format!(
                "another member already uses the address {}",
                member.address
            ));
        }
        member_config::check_answers(self, answers)?;
        self.consume_token(&member.name, TokenKind::Join, secret, now_ms)?;
        // The id is assigned here, in log order, so concurrent joins never collide.
        let mut member = member.clone();
        member.id = self.next_node_id;
        self.next_node_id = member.id + 1;
        self.members.insert(member.name.clone(), member.clone());
        member_config::record_answers(self, &member.name, answers);
        Ok(())
    }

    fn update_member(&mut self, name: &str, changes: &MemberChanges) -> Result<(), String> {
        validate_changes(changes)?;
        if let Some(groups) = &changes.groups {
            self.check_member_groups(groups)?;
        }
        let member = self
            .members
            .get_mut(name)
            .ok_or_else(|| format!("member \"{name}\" not found"))?;
        if let Some(description) = &changes.description {
            member.description = description.clone();
        }
        if let Some(failure_domain) = &changes.failure_domain {
            member.failure_domain = failure_domain.clone();
        }
        if let Some(config) = &changes.config {
            member.config = config.clone();
        }
        if let Some(groups) = &changes.groups {
            member.groups = groups.clone();
        }
        if let Some(user_roles) = &changes.user_roles {
            member.user_roles = user_roles.clone();
        }
        Ok(())
    }

    fn patch_member(&mut self, name: &str, patch: &MemberPatch) -> Result<(), String> {
        patch.validate()?;
        let member = self
            .members
            .get_mut(name)
            .ok_or_else(|| format!("member \"{name}\" not found"))?;
        match patch {
            MemberPatch::ConfigSet { key, value } => {
                let max = crate::limits::CONFIG_KEYS_MAX;
                if !member.config.contains_key(key) && member.config.len() >= max {
                    return Err(format!(
                        "member \"{name}\" has {max} config keys, the limit: unset one before setting \"{key}\""
                    ));
                }
                member.config.insert(key.clone(), value.clone());
            }
            MemberPatch::ConfigUnset { key } => {
                member.config.remove(key);
            }
            MemberPatch::RoleAdd { role } => {
                if !member.user_roles.contains(role) {
                    member.user_roles.push(role.clone());
                }
            }
            MemberPatch::RoleRemove { role } => {
                if !member.user_roles.contains(role) {
                    return Err(format!(
                        "member \"{name}\" does not have the role \"{role}\""
                    ));
                }
                member.user_roles.retain(|held| held != role);
            }
        }
        Ok(())
    }

    fn rename_member(&mut self, from: &str, to: &str) -> Result<(), String> {
        validate_member_name(to)?;
        if self.members.contains_key(to) {
            return Err(format!("the cluster already has a member named \"{to}\""));
        }
        let mut member = self
            .members
            .remove(from)
            .ok_or_else(|| format!("member \"{from}\" not found"))?;
        member.name = to.to_string();
        self.members.insert(to.to_string(), member);
        for object_config in self
            .pools
            .values_mut()
            .map(|pool| &mut pool.member_config)
            .chain(
                self.networks
                    .values_mut()
                    .map(|network| &mut network.member_config),
            )
        {
            if let Some(values) = object_config.remove(from) {
                object_config.insert(to.to_string(), values);
            }
        }
        self.move_image_locations(from, Some(to));
        for instance in self.instances.values_mut() {
            if instance.location == from {
                instance.location = to.to_string();
            }
        }
        self.instance_counts.renamed(from, to);
        Ok(())
    }

    /// Whether member `name` may leave the cluster: it exists, it is not the last member,
    /// and no instance is located on it. `MemberRemove` applies only what this allows; the
    /// leader asks it before it takes the member out of Raft, so that a removal refused here
    /// changes nothing.
    pub fn check_member_removal(&self, name: &str) -> Result<(), String> {
        if !self.members.contains_key(name) {
            return Err(format!("member \"{name}\" not found"));
        }
        if self.members.len() == 1 {
            return Err(format!(
                "\"{name}\" is the last member of the cluster and cannot be removed"
            ));
        }
        let instances: Vec<&str> = self
            .instances
            .values()
            .filter(|instance| instance.location == name)
            .map(|instance| instance.name.as_str())
            .collect();
        if !instances.is_empty() {
            return Err(format!(
                "member \"{name}\" still has instances ({}): move or delete them first",
                instances.join(", ")
            ));
        }
        Ok(())
    }

    fn remove_member(&mut self, name: &str) -> Result<(), String> {
        self.check_member_removal(name)?;
        let member = self
            .members
            .remove(name)
            .ok_or_else(|| format!("member \"{name}\" not found"))?;
        self.revoked.insert(member.certificate_fingerprint);
        self.revoked.insert(member.admin_fingerprint);
        for object_config in self
            .pools
            .values_mut()
            .map(|pool| &mut pool.member_config)
            .chain(
                self.networks
                    .values_mut()
                    .map(|network| &mut network.member_config),
            )
        {
            object_config.remove(name);
        }
        self.move_image_locations(name, None);
        Ok(())
    }

    fn create_pool(&mut self, pool: &StoragePool) -> Result<(), String> {
        validate_object_name(&pool.name, "storage pool")?;
        if self.pools.contains_key(&pool.name) {
            return Err(format!("storage pool \"{}\" already exists", pool.name));
        }
        if !member_config::POOL_DRIVERS.contains(&pool.driver.as_str()) {
            return Err(format!(
                "unknown storage driver \"{}\" (known: {})",
                pool.driver,
                member_config::POOL_DRIVERS.join(", ")
            ));
        }
        let what = format!("storage pool \"{}\"", pool.name);
        member_config::check_object(
            self,
            &what,
            &member_config::pool_keys(&pool.driver),
            &pool.config,
            &pool.member_config,
        )?;
        self.pools.insert(pool.name.clone(), pool.clone());
        Ok(())
    }

    fn create_network(&mut self, network: &Network) -> Result<(), String> {
        validate_object_name(&network.name, "network")?;
        if self.networks.contains_key(&network.name) {
            return Err(format!("network \"{}\" already exists", network.name));
        }
        if !member_config::NETWORK_TYPES.contains(&network.network_type.as_str()) {
            return Err(format!(
                "unknown network type \"{}\" (known: {})",
                network.network_type,
                member_config::NETWORK_TYPES.join(", ")
            ));
        }
        let what = format!("network \"{}\"", network.name);
        let keys = member_config::network_keys(&network.network_type);
        member_config::check_object(self, &what, &keys, &network.config, &network.member_config)?;
        self.networks.insert(network.name.clone(), network.clone());
        Ok(())
    }

    /// Checks and removes the single-use token for `name` (an expired one is removed too).
    fn consume_token(
        &mut self,
        name: &str,
        kind: TokenKind,
        secret: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        let checked = self.check_token(name, kind, secret, now_ms);
        let expired = self
            .tokens_of(kind)
            .get(name)
            .is_some_and(|token| now_ms >= token.expires_at_ms);
        if checked.is_ok() || expired {
            self.tokens_of_mut(kind).remove(name);
        }
        checked
    }
}

/// Checks a member name: non-empty, not `none`, no `/`, spaces or control characters.
pub fn validate_member_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a member name cannot be empty".to_string());
    }
    if name == "none" {
        return Err("the name \"none\" is reserved".to_string());
    }
    if name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!(
            "invalid member name \"{name}\": use at most 63 letters, digits, '-', '.' or '_'"
        ));
    }
    Ok(())
}

/// Checks member changes: config keys, group names, user roles, failure domain.
pub fn validate_changes(changes: &MemberChanges) -> Result<(), String> {
    if let Some(config) = &changes.config {
        for (key, value) in config {
            validate_member_config(key, value)?;
        }
    }
    if let Some(groups) = &changes.groups {
        if groups.is_empty() {
            return Err("a member must stay in at least one cluster group".to_string());
        }
        for group in groups {
            validate_object_name(group, "cluster group")?;
        }
    }
    if let Some(roles) = &changes.user_roles {
        // An automatic role is named first, whatever else the list holds.
        if let Some(role) = roles.iter().find(|role| role.starts_with("database")) {
            validate_user_role(role)?;
        }
        roles.iter().try_for_each(|role| validate_user_role(role))?;
    }
    if let Some(domain) = &changes.failure_domain {
        validate_object_name(domain, "failure domain")?;
    }
    Ok(())
}

/// Checks a role a user may add or remove: not a `database*` role (those are automatic), and
/// one of [`USER_ROLES`].
pub fn validate_user_role(role: &str) -> Result<(), String> {
    if role.starts_with("database") {
        return Err(format!(
            "the role \"{role}\" is automatic: Starling assigns database roles itself"
        ));
    }
    if !USER_ROLES.contains(&role) {
        return Err(format!(
            "unknown role \"{role}\" (roles users may set: {})",
            USER_ROLES.join(", ")
        ));
    }
    Ok(())
}

/// Checks one member config key and value: `scheduler.instance` or `user.*`.
pub fn validate_member_config(key: &str, value: &str) -> Result<(), String> {
    match key {
        "scheduler.instance" if ["all", "group", "manual"].contains(&value) => Ok(()),
        "scheduler.instance" => Err(format!(
            "invalid value \"{value}\" for \"scheduler.instance\": must be all, group or manual"
        )),
        _ if key.starts_with("user.") && key.len() > 5 => Ok(()),
        _ => Err(format!(
            "unknown member configuration key \"{key}\" (allowed: scheduler.instance, user.*)"
        )),
    }
}

/// Checks a group, pool, network or failure-domain name (LXD's rules for group names).
pub fn validate_object_name(name: &str, what: &str) -> Result<(), String> {
    let forbidden = |c: char| matches!(c, '/' | '\\' | ' ' | '_' | '"' | '\'') || c.is_control();
    if name.is_empty() || name == "*" || name == "." || name == ".." || name.chars().any(forbidden)
    {
        return Err(format!("invalid {what} name \"{name}\": no spaces, '/', '\\', '_' or quotes, and not *, . or .."));
    }
    Ok(())
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// The command's kind only (`ConfigSet`, `Bootstrap`, ...): what openraft's logs show of an
/// entry, without values (a bootstrap entry carries the CA key).
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let debug = format!("{self:?}");
        let kind = debug
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default();
        f.write_str(kind)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A batch is written to the log and to snapshots as a sequence, the same as when it held
    /// a `Vec`: entries written before it became shared read back, and the other way round.
    #[test]
    fn a_shared_batch_encodes_as_a_vec_did() {
        #[derive(Serialize, Deserialize)]
        enum Before {
            Batch(Vec<Command>),
        }
        let commands = vec![
            Command::ConfigSet {
                key: "user.a".into(),
                value: "1".into(),
            },
            Command::ConfigUnset {
                key: "user.b".into(),
            },
        ];
        let before = bincode::serialize(&Before::Batch(commands.clone())).unwrap();
        let batch = Command::Batch(commands.clone().into());
        // The variant's index differs between the two enums; what follows it must not.
        let now = bincode::serialize(&batch).unwrap();
        assert_eq!(now[4..], before[4..]);
        let Command::Batch(read) = bincode::deserialize::<Command>(&now).unwrap() else {
            panic!("not a batch");
        };
        assert_eq!(read.to_vec(), commands);
    }

    pub(crate) fn member(name: &str, id: u64) -> Member {
        Member {
            name: name.to_string(),
            id,
            address: format!("127.0.0.1:{}", 7000 + id),
            architecture: "x86_64".to_string(),
            description: String::new(),
            failure_domain: "default".to_string(),
            config: Default::default(),
            groups: vec!["default".to_string()],
            user_roles: vec![],
            certificate_fingerprint: format!("fp{id}"),
            admin_fingerprint: format!("admin{id}"),
            joined_at_ms: 0,
            status: MemberStatus::Online,
            last_heartbeat_ms: 0,
        }
    }

    pub(crate) fn token(name: &str, expires_at_ms: u64) -> JoinToken {
        JoinToken {
            name: name.to_string(),
            kind: TokenKind::Join,
            secret: "s3cret".to_string(),
            fingerprint: "f".to_string(),
            addresses: vec![],
            expires_at_ms,
        }
    }

    pub(crate) fn bootstrapped() -> ClusterState {
        let mut state = ClusterState::default();
        let admin = TrustedClient {
            name: "admin".into(),
            fingerprint: "a".into(),
            added_at_ms: 0,
        };
        let bootstrap = Command::Bootstrap {
            member: member("m1", 1),
            ca_cert_pem: "ca".into(),
            ca_key_pem: "key".into(),
            admin,
        };
        state.apply(&bootstrap).unwrap();
        state
    }

    /// Goal: a command that changes a member record moves `members_revision`; the kinds that
    /// never do leave it (the scriptlet's cache of candidates trusts it).
    #[test]
    fn the_members_revision_moves_with_every_change_of_a_member() {
        use crate::instances::{ClusterGroup, InstanceCommand};
        let mut state = bootstrapped();
        let commands = [
            Command::MemberHealth {
                updates: vec![HealthUpdate {
                    name: "m1".into(),
                    status: MemberStatus::Offline,
                    last_heartbeat_ms: 5,
                }],
            },
            Command::MemberUpdate {
                name: "m1".into(),
                changes: MemberChanges {
                    description: Some("rack 4".into()),
                    ..MemberChanges::default()
                },
            },
            Command::Instance(InstanceCommand::GroupCreate {
                group: ClusterGroup {
                    name: "fast".into(),
                    description: String::new(),
                },
                members: vec!["m1".into()],
            }),
            Command::Once {
                request_id: 9,
                command: Box::new(Command::Instance(InstanceCommand::GroupRename {
                    from: "fast".into(),
                    to: "quick".into(),
                })),
            },
            Command::ConfigSet {
                key: "user.x".into(),
                value: "1".into(),
            },
            Command::Kv(crate::kv::KvCommand::Set {
                key: "k".into(),
                value: "1".into(),
            }),
        ];
        for command in commands {
            let (members, revision) = (state.members.clone(), state.members_revision);
            state.apply(&command).unwrap();
            if state.members != members {
                assert!(state.members_revision > revision, "{command:?}");
            }
            if !command.may_change_members() {
                assert_eq!(state.members_revision, revision, "{command:?}");
            }
        }
        assert_eq!(state.members["m1"].groups, ["default", "quick"]);
    }

    #[test]
    fn a_tagged_command_applies_once_and_repeats_its_first_outcome() {
        let mut state = bootstrapped();
        let set = |value: &str| Command::Once {
            request_id: 42,
            command: Box::new(Command::ConfigSet {
                key: "user.x".into(),
                value: value.into(),
            }),
        };
        state.apply(&set("1")).unwrap();
        // The same request again (even with other contents) changes nothing.
        state.apply(&set("2")).unwrap();
        assert_eq!(state.config.get("user.x").map(String::as_str), Some("1"));
        let refused = Command::Once {
            request_id: 43,
            command: Box::new(Command::ConfigSet {
                key: "cluster.max_voters".into(),
                value: "2".into(),
            }),
        };
        let first = state.apply(&refused).unwrap_err();
        assert_eq!(state.apply(&refused).unwrap_err(), first);
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let mut state = bootstrapped();
        state
            .apply(&Command::TokenIssue {
                token: token("m2", 100),
            })
            .unwrap();
        let add = |secret: &str, now_ms| Command::MemberAdd {
            answers: vec![],
            member: member("m2", 2),
            secret: secret.into(),
            now_ms,
        };
        let error = state.apply(&add("wrong", 10)).unwrap_err();
        assert!(error.contains("does not match"), "{error}");
        state.apply(&add("s3cret", 10)).unwrap();
        let error = state
            .apply(&Command::TokenIssue {
                token: token("m2", 100),
            })
            .unwrap_err();
        assert!(error.contains("already has a member"), "{error}");

        state
            .apply(&Command::TokenIssue {
                token: token("m3", 100),
            })
            .unwrap();
        let late = Command::MemberAdd {
            answers: vec![],
            member: member("m3", 3),
            secret: "s3cret".into(),
            now_ms: 100,
        };
        assert!(state.apply(&late).unwrap_err().contains("expired"));
        assert!(state.apply(&late).unwrap_err().contains("no valid token"));
        assert!(state
            .apply(&Command::TokenIssue {
                token: token("none", 100)
            })
            .is_err());
    }

    #[test]
    fn invalid_config_changes_nothing() {
        let mut state = bootstrapped();
        let before = state.clone();
        let set = Command::ConfigSet {
            key: "cluster.max_voters".into(),
            value: "2".into(),
        };
        assert!(state.apply(&set).is_err());
        assert_eq!(state, before);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
