//! Cluster operations: one typed enum that the Lua built-ins, the CLI and the wire all use.
//!
//! A script's `cluster.members()` becomes `Operation::ClusterMembers` through
//! [`Operation::from_call`]; `starling cluster list` builds the same value directly; either way
//! [`crate::Member::execute`] runs it. Adding an operation means a variant here, an entry in
//! [`BUILTINS`], and its arm in `execute`.

use std::collections::BTreeMap;

use crate::cluster::groups::GroupOperation;
use crate::evacuation::ops::EvacuationOperation;
use crate::images::ops::ImageOperation;
use crate::instances::profiles::ProfileOperation;
use crate::instances::projects::ProjectOperation;
use crate::placement::ops::{PlacementInput, PlacementOperation};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use starling_stdlib::Builtin;

use crate::Error;

/// A cluster operation with typed arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    /// `cluster.info()`: this member, the leader, the CA fingerprint.
    ClusterInfo,
    /// `waitready`: answered by the member asked, never forwarded: ready once it has looked at
    /// its containers (adopting those a previous daemon started, recording those that ended).
    MemberReady,
    /// `cluster.members()`: every member with its roles and status.
    ClusterMembers,
    /// `cluster.member(name)`: one member.
    ClusterMember {
        /// Member name.
        name: String,
    },
    /// `cluster.add(name)`: a join token for a new member.
    ClusterAdd {
        /// Name the new member will have.
        name: String,
    },
    /// `cluster.tokens()`: outstanding join tokens.
    ClusterTokens,
    /// `cluster.revoke_token(name)`.
    ClusterRevokeToken {
        /// The name the token was issued for.
        name: String,
    },
    /// `cluster.trust_add(name)`: a token that lets a remote client become trusted.
    TrustAdd {
        /// A name for the client.
        name: String,
    },
    /// `cluster.trust_tokens()`: outstanding client trust tokens.
    TrustTokens,
    /// `cluster.trust_revoke_token(name)`: revokes a client trust token.
    TrustRevokeToken {
        /// The name the token was issued for.
        name: String,
    },
    /// `cluster.trust_list()`: trusted client certificates.
    TrustList,
    /// `cluster.trust_remove(name or fingerprint)`: stops trusting a client certificate.
    TrustRemove {
        /// The client's name, or its fingerprint (or a unique prefix of at least 12 digits).
        name: String,
    },
    /// `config.get(key)`: the effective value.
    ConfigGet {
        /// The key.
        key: String,
    },
    /// `config.set(key, value)`.
    ConfigSet {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// `config.unset(key)`.
    ConfigUnset {
        /// The key.
        key: String,
    },
    /// `config.all()`: every key with its effective value.
    ConfigAll,
    /// `cluster.member_state(name)`: live state read from the member itself.
    ClusterMemberState {
        /// Member name.
        name: String,
    },
    /// `cluster.edit(name, {description=, failure_domain=, config=, groups=, roles=})`.
    ClusterEdit {
        /// Member name.
        name: String,
        /// The properties to change.
        edit: MemberEdit,
    },
    /// `cluster.set(name, key, value)`: one member config key.
    ClusterSet {
        /// Member name.
        name: String,
        /// Config key (`scheduler.instance`, `user.*`).
        key: String,
        /// Value.
        value: String,
    },
    /// `cluster.unset(name, key)`.
    ClusterUnset {
        /// Member name.
        name: String,
        /// Config key.
        key: String,
    },
    /// `cluster.get(name, key)`: a config key, `description` or `failure_domain`.
    ClusterGet {
        /// Member name.
        name: String,
        /// Key.
        key: String,
    },
    /// `cluster.role_add(name, role)`: `event-hub` or `ovn-chassis`.
    ClusterRoleAdd {
        /// Member name.
        name: String,
        /// Role.
        role: String,
    },
    /// `cluster.role_remove(name, role)`.
    ClusterRoleRemove {
        /// Member name.
        name: String,
        /// Role.
        role: String,
    },
    /// `cluster.rename(old, new)`.
    ClusterRename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// `cluster.remove(name [, {force=true}])`.
    ClusterRemove {
        /// Member name.
        name: String,
        /// Remove an offline or broken member without its cooperation.
        force: bool,
    },
    /// `cluster.promote(name [, {replace=other}])`: the member votes now.
    ClusterPromote {
        /// Member name.
        name: String,
        /// The voter that gives its vote up, when the cluster has all the voters it keeps.
        replace: Option<String>,
    },
    /// `cluster.demote(name)`: the voter becomes a stand-by (or a spare) and another member
    /// takes its vote.
    ClusterDemote {
        /// Member name.
        name: String,
    },
    /// `cluster.transfer_leadership([name])`: leadership moves to the named voter, or the most
    /// caught-up one.
    ClusterTransferLeadership {
        /// Member name, if one is chosen.
        name: Option<String>,
    },
    /// `images.*`.
    Image(crate::images::ops::ImageOperation),
    /// `groups.*`.
    Group(crate::cluster::groups::GroupOperation),
    /// `cluster.evacuate`, `cluster.restore`, `cluster.evacuation`.
    Evacuation(crate::evacuation::ops::EvacuationOperation),
    /// `instances.*`.
    Instance(crate::instances::ops::InstanceOperation),
    /// `placement.*`.
    Placement(crate::placement::ops::PlacementOperation),
    /// `profiles.*`.
    Profile(crate::instances::profiles::ProfileOperation),
    /// `projects.*`.
    Project(crate::instances::projects::ProjectOperation),
    /// `kv.*`.
    Kv(crate::automation::kv::KvOperation),
    /// `scripts.*`.
    Script(crate::automation::scripts::ScriptOperation),
    /// `storage.create(name, driver [, config [, member_config]])`.
    StorageCreate {
        /// Pool name.
        name: String,
        /// Driver.
        driver: String,
        /// Cluster-wide config.
        config: BTreeMap<String, String>,
        /// Member-specific config by member name.
        member_config: BTreeMap<String, BTreeMap<String, String>>,
    },
    /// `storage.delete(name)`.
    StorageDelete {
        /// Pool name.
        name: String,
    },
    /// `storage.list()`.
    StorageList,
    /// `network.create(name, type [, config [, member_config]])`.
    NetworkCreate {
        /// Network name.
        name: String,
        /// Network type.
        network_type: String,
        /// Cluster-wide config.
        config: BTreeMap<String, String>,
        /// Member-specific config by member name.
        member_config: BTreeMap<String, BTreeMap<String, String>>,
    },
    /// `network.delete(name)`.
    NetworkDelete {
        /// Network name.
        name: String,
    },
    /// `network.list()`.
    NetworkList,
    /// Internal: a voter that is shutting down asks the leader to give its vote to a stand-by.
    HandOver {
        /// The leaving member's Raft node id.
        id: u64,
    },
    /// Internal: a joiner's request, run on the leader (not a script built-in).
    Join(crate::protocol::JoinRequest),
    /// Internal: a remote client's trust claim, run on the leader (not a script built-in).
    TrustClaim {
        /// The name the token was issued for.
        name: String,
        /// The token's secret.
        secret: String,
        /// Fingerprint of the client's certificate.
        fingerprint: String,
    },
}

/// Changes to a member's properties (`cluster.edit`); absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberEdit {
    /// New description.
    pub description: Option<String>,
    /// New failure domain.
    pub failure_domain: Option<String>,
    /// New member config (replaces the whole map).
    pub config: Option<BTreeMap<String, String>>,
    /// New groups.
    pub groups: Option<Vec<String>>,
    /// New roles; the `database*` roles in it must be the ones the member has.
    pub roles: Option<Vec<String>>,
}

/// The script built-ins, with their one-line help (also the REPL's completions).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "cluster.info",
        help: "cluster.info() -> this member, the leader and the cluster fingerprint",
    },
    Builtin {
        name: "cluster.members",
        help: "cluster.members() -> list of members",
    },
    Builtin {
        name: "cluster.member",
        help: "cluster.member(name) -> one member",
    },
    Builtin {
        name: "cluster.add",
        help: "cluster.add(name) -> join token for a new member",
    },
    Builtin {
        name: "cluster.tokens",
        help: "cluster.tokens() -> outstanding join tokens",
    },
    Builtin {
        name: "cluster.revoke_token",
        help: "cluster.revoke_token(name) -> revokes a join token",
    },
    Builtin {
        name: "cluster.trust_add",
        help: "cluster.trust_add(name) -> token for a remote client",
    },
    Builtin {
        name: "cluster.trust_tokens",
        help: "cluster.trust_tokens() -> outstanding client trust tokens",
    },
    Builtin {
        name: "cluster.trust_revoke_token",
        help: "cluster.trust_revoke_token(name) -> revokes a client trust token",
    },
    Builtin {
        name: "cluster.trust_list",
        help: "cluster.trust_list() -> trusted client certificates",
    },
    Builtin {
        name: "cluster.trust_remove",
        help: "cluster.trust_remove(name or fingerprint) -> stops trusting a client certificate",
    },
    Builtin {
        name: "cluster.member_state",
        help: "cluster.member_state(name) -> live state read from the member",
    },
    Builtin {
        name: "cluster.edit",
        help: "cluster.edit(name, {description=, failure_domain=, config=, groups=, roles=})",
    },
    Builtin {
        name: "cluster.set",
        help: "cluster.set(name, key, value) -> sets a member config key",
    },
    Builtin {
        name: "cluster.unset",
        help: "cluster.unset(name, key) -> unsets a member config key",
    },
    Builtin {
        name: "cluster.get",
        help: "cluster.get(name, key) -> a member config key, description or failure_domain",
    },
    Builtin {
        name: "cluster.role_add",
        help: "cluster.role_add(name, role) -> adds event-hub or ovn-chassis",
    },
    Builtin {
        name: "cluster.role_remove",
        help: "cluster.role_remove(name, role) -> removes a user role",
    },
    Builtin {
        name: "cluster.rename",
        help: "cluster.rename(old, new) -> renames a member",
    },
    Builtin {
        name: "cluster.remove",
        help: "cluster.remove(name [, {force=true}]) -> removes a member",
    },
    Builtin {
        name: "cluster.promote",
        help: "cluster.promote(name [, {replace=other}]) -> gives a member a vote now",
    },
    Builtin {
        name: "cluster.demote",
        help: "cluster.demote(name) -> a voter gives its vote to the best candidate",
    },
    Builtin {
        name: "cluster.transfer_leadership",
        help: "cluster.transfer_leadership([name]) -> moves leadership to a voter",
    },
    Builtin {
        name: "kv.get",
        help: "kv.get(key) -> the value shared under key (linearizable), or nil",
    },
    Builtin {
        name: "kv.set",
        help: "kv.set(key, value) -> stores a value (nil deletes); keys 256 bytes, values 64 KiB",
    },
    Builtin {
        name: "kv.delete",
        help: "kv.delete(key) -> removes a key",
    },
    Builtin {
        name: "kv.cas",
        help: "kv.cas(key, expected, new) -> true if key held expected (nil: absent) and now holds new",
    },
    Builtin {
        name: "kv.incr",
        help: "kv.incr(key [, delta]) -> adds delta (1) to the integer at key (absent: 0), the new value",
    },
    Builtin {
        name: "kv.list",
        help: "kv.list([prefix [, {limit=}]]) -> {{key=, value=}, ...} in key order (1,000 unless limit)",
    },
    Builtin {
        name: "scripts.create",
        help: "scripts.create(name, source, {schedule=, member=, description=, timeout=, missed=}) -> stores a script (schedule: cron in UTC, @hourly..., @every 10s)",
    },
    Builtin {
        name: "scripts.update",
        help: "scripts.update(name, {source=, schedule=, member=, description=, timeout=, missed=}) -> changes what is given",
    },
    Builtin {
        name: "scripts.delete",
        help: "scripts.delete(name) -> deletes a stored script (its runs stay listed)",
    },
    Builtin {
        name: "scripts.list",
        help: "scripts.list() -> stored scripts",
    },
    Builtin {
        name: "scripts.get",
        help: "scripts.get(name) -> one stored script",
    },
    Builtin {
        name: "scripts.run",
        help: "scripts.run(name [, {args...}]) -> runs it now, waits, and answers the run's record",
    },
    Builtin {
        name: "scripts.runs",
        help: "scripts.runs(name [, {limit=}]) -> its newest runs (20 unless limit), newest last",
    },
    Builtin {
        name: "images.list",
        help: "images.list() -> image records, with their locations",
    },
    Builtin {
        name: "images.get",
        help: "images.get(fingerprint or alias) -> one image record",
    },
    Builtin {
        name: "images.import",
        help: "images.import(path [, {aliases=, public=, properties=}]) -> imports a file on this member",
    },
    Builtin {
        name: "images.delete",
        help: "images.delete(x) -> deletes an image from every holder",
    },
    Builtin {
        name: "images.alias_add",
        help: "images.alias_add(x, name [, description]) -> adds an alias",
    },
    Builtin {
        name: "images.alias_remove",
        help: "images.alias_remove(name) -> removes an alias",
    },
    Builtin {
        name: "images.alias_rename",
        help: "images.alias_rename(old, new) -> renames an alias",
    },
    Builtin {
        name: "images.replicate",
        help: "images.replicate(x) -> copies it to the minimum now; its locations",
    },
    Builtin {
        name: "images.copy_to",
        help: "images.copy_to(x, member) -> one more copy, on member",
    },
    Builtin {
        name: "images.transfers",
        help: "images.transfers() -> copies under way",
    },
    Builtin {
        name: "storage.create",
        help: "storage.create(name, driver [, config [, member_config]]) -> creates a pool",
    },
    Builtin {
        name: "storage.delete",
        help: "storage.delete(name) -> deletes a pool",
    },
    Builtin {
        name: "storage.list",
        help: "storage.list() -> storage pools",
    },
    Builtin {
        name: "network.create",
        help: "network.create(name, type [, config [, member_config]]) -> creates a network",
    },
    Builtin {
        name: "network.delete",
        help: "network.delete(name) -> deletes a network",
    },
    Builtin {
        name: "network.list",
        help: "network.list() -> networks",
    },
    Builtin {
        name: "placement.explain",
        help: "placement.explain{image=, target=, config=, profiles=, project=} -> the member a new instance would go to, why, and the candidates (creates nothing)",
    },
    Builtin {
        name: "placement.test",
        help: "placement.test(source, {image=, ...}) -> as placement.explain, with a scriptlet that is not installed",
    },
    Builtin {
        name: "groups.list",
        help: "groups.list() -> cluster groups (name, description, members, used_by)",
    },
    Builtin {
        name: "groups.get",
        help: "groups.get(name) -> one cluster group",
    },
    Builtin {
        name: "groups.create",
        help: "groups.create(name [, {description=, members=}]) -> creates a cluster group",
    },
    Builtin {
        name: "groups.delete",
        help: "groups.delete(name) -> deletes an empty cluster group",
    },
    Builtin {
        name: "groups.rename",
        help: "groups.rename(old, new) -> renames a cluster group",
    },
    Builtin {
        name: "groups.edit",
        help: "groups.edit(name, {description=, members=}) -> changes a group (members: all of them)",
    },
    Builtin {
        name: "groups.assign",
        help: "groups.assign(member, {g1, g2}) -> sets every group of a member",
    },
    Builtin {
        name: "groups.add",
        help: "groups.add(member, group) -> adds a member to a group",
    },
    Builtin {
        name: "groups.remove",
        help: "groups.remove(member, group) -> takes a member out of a group (it keeps one)",
    },
    Builtin {
        name: "instances.launch",
        help: "instances.launch{image=, name=, target=, profiles=, config=, devices=, project=} -> creates and starts an instance",
    },
    Builtin {
        name: "instances.create",
        help: "instances.create{image=, name=, target=, profiles=, config=, devices=, project=} -> creates an instance (not started)",
    },
    Builtin {
        name: "instances.start",
        help: "instances.start(name [, {project=}]) -> starts an instance",
    },
    Builtin {
        name: "instances.stop",
        help: "instances.stop(name [, {force=, timeout=, project=}]) -> stops an instance",
    },
    Builtin {
        name: "instances.restart",
        help: "instances.restart(name [, {force=, timeout=, project=}]) -> restarts an instance",
    },
    Builtin {
        name: "instances.delete",
        help: "instances.delete(name [, {force=, project=}]) -> deletes an instance (force: a running one)",
    },
    Builtin {
        name: "instances.list",
        help: "instances.list([{project=}]) -> instances",
    },
    Builtin {
        name: "instances.get",
        help: "instances.get(name [, {project=}]) -> one instance",
    },
    Builtin {
        name: "instances.state",
        help: "instances.state(name [, {project=}]) -> live state from its member: status, pid, processes, memory, cpu",
    },
    Builtin {
        name: "instances.exec",
        help: "instances.exec(name, argv [, {env=, cwd=, project=}]) -> {exit_code, stdout, stderr}",
    },
    Builtin {
        name: "instances.set",
        help: "instances.set(name, key, value [, {project=}]) -> sets a config key",
    },
    Builtin {
        name: "instances.unset",
        help: "instances.unset(name, key [, {project=}]) -> unsets a config key",
    },
    Builtin {
        name: "cluster.evacuate",
        help: "cluster.evacuate(name [, {action=auto|migrate|live-migrate|stop}]) -> evacuates a member: its instances move (or stop); the summary: moved, stopped, failed",
    },
    Builtin {
        name: "cluster.restore",
        help: "cluster.restore(name [, {action=skip}]) -> restores an evacuated member: instances that came from it move back, those it stopped start",
    },
    Builtin {
        name: "cluster.evacuation",
        help: "cluster.evacuation(name) -> the member's latest evacuation or restore: done, total, moved, stopped, failed, pending",
    },
    Builtin {
        name: "instances.move",
        help: "instances.move(name, {target=MEMBER|@GROUP [, project=]}) -> moves an instance (a running one is stopped, moved and started): {location, from, bytes, seconds}",
    },
    Builtin {
        name: "instances.moves",
        help: "instances.moves() -> the moves under way: project, name, from, to, stage, done, total",
    },
    Builtin {
        name: "profiles.list",
        help: "profiles.list([{project=}]) -> profiles (name, description, config, devices, project, used_by)",
    },
    Builtin {
        name: "profiles.get",
        help: "profiles.get(name [, {project=}]) -> one profile",
    },
    Builtin {
        name: "profiles.create",
        help: "profiles.create(name [, {description=, config=, devices=, project=}]) -> creates a profile",
    },
    Builtin {
        name: "profiles.delete",
        help: "profiles.delete(name [, {project=}]) -> deletes a profile no instance uses",
    },
    Builtin {
        name: "profiles.rename",
        help: "profiles.rename(old, new [, {project=}]) -> renames a profile",
    },
    Builtin {
        name: "profiles.set",
        help: "profiles.set(name, key, value [, {project=}]) -> sets a config key",
    },
    Builtin {
        name: "profiles.unset",
        help: "profiles.unset(name, key [, {project=}]) -> unsets a config key",
    },
    Builtin {
        name: "profiles.edit",
        help: "profiles.edit(name, {description=, config=, devices=} [, {project=}]) -> replaces the fields given",
    },
    Builtin {
        name: "profiles.device_add",
        help: "profiles.device_add(name, device, {type=, ...} [, {project=}]) -> adds a device",
    },
    Builtin {
        name: "profiles.device_set",
        help: "profiles.device_set(name, device, key, value [, {project=}]) -> sets a device key",
    },
    Builtin {
        name: "profiles.device_remove",
        help: "profiles.device_remove(name, device [, {project=}]) -> removes a device",
    },
    Builtin {
        name: "projects.list",
        help: "projects.list() -> projects (name, description, config, used_by)",
    },
    Builtin {
        name: "projects.get",
        help: "projects.get(name) -> one project",
    },
    Builtin {
        name: "projects.create",
        help: "projects.create(name [, {description=, config=}]) -> creates a project with its default profile",
    },
    Builtin {
        name: "projects.delete",
        help: "projects.delete(name) -> deletes an empty project",
    },
    Builtin {
        name: "projects.rename",
        help: "projects.rename(old, new) -> renames a project without instances",
    },
    Builtin {
        name: "projects.set",
        help: "projects.set(name, key, value) -> sets a project config key",
    },
    Builtin {
        name: "projects.unset",
        help: "projects.unset(name, key) -> unsets a project config key",
    },
    Builtin {
        name: "projects.edit",
        help: "projects.edit(name, {description=, config=}) -> replaces the fields given",
    },
    Builtin {
        name: "config.get",
        help: "config.get(key) -> effective value of a global key",
    },
    Builtin {
        name: "config.set",
        help: "config.set(key, value) -> sets a global key",
    },
    Builtin {
        name: "config.unset",
        help: "config.unset(key) -> resets a global key to its default",
    },
    Builtin {
        name: "config.all",
        help: "config.all() -> every global key with its value",
    },
];

impl Operation {
    /// Builds an operation from a script call: built-in name and JSON arguments.
    pub fn from_call(name: &str, args: &[Value]) -> Result<Operation, Error> {
        let arguments = Arguments { name, args };
        let operation = match name {
            "cluster.info" => Operation::ClusterInfo,
            "cluster.members" => Operation::ClusterMembers,
            "cluster.member" => Operation::ClusterMember {
                name: arguments.string(0, "name")?,
            },
            "cluster.add" => Operation::ClusterAdd {
                name: arguments.string(0, "name")?,
            },
            "cluster.tokens" => Operation::ClusterTokens,
            "cluster.revoke_token" => Operation::ClusterRevokeToken {
                name: arguments.string(0, "name")?,
            },
            "cluster.trust_add" => Operation::TrustAdd {
                name: arguments.string(0, "name")?,
            },
            "cluster.trust_tokens" => Operation::TrustTokens,
            "cluster.trust_revoke_token" => Operation::TrustRevokeToken {
                name: arguments.string(0, "name")?,
            },
            "cluster.trust_list" => Operation::TrustList,
            "cluster.trust_remove" => Operation::TrustRemove {
                name: arguments.string(0, "name or fingerprint")?,
            },
            "config.get" => Operation::ConfigGet {
                key: arguments.string(0, "key")?,
            },
            "config.set" => Operation::ConfigSet {
                key: arguments.string(0, "key")?,
                value: arguments.scalar(1, "value")?,
            },
            "config.unset" => Operation::ConfigUnset {
                key: arguments.string(0, "key")?,
            },
            "config.all" => Operation::ConfigAll,
            "cluster.member_state" => Operation::ClusterMemberState {
                name: arguments.string(0, "name")?,
            },
            "cluster.edit" => Operation::ClusterEdit {
                name: arguments.string(0, "name")?,
                edit: arguments.edit(1)?,
            },
            "cluster.set" => Operation::ClusterSet {
                name: arguments.string(0, "name")?,
                key: arguments.string(1, "key")?,
                value: arguments.scalar(2, "value")?,
            },
            "cluster.unset" => Operation::ClusterUnset {
                name: arguments.string(0, "name")?,
                key: arguments.string(1, "key")?,
            },
            "cluster.get" => Operation::ClusterGet {
                name: arguments.string(0, "name")?,
                key: arguments.string(1, "key")?,
            },
            "cluster.role_add" => Operation::ClusterRoleAdd {
                name: arguments.string(0, "name")?,
                role: arguments.string(1, "role")?,
            },
            "cluster.role_remove" => Operation::ClusterRoleRemove {
                name: arguments.string(0, "name")?,
                role: arguments.string(1, "role")?,
            },
            "cluster.rename" => Operation::ClusterRename {
                from: arguments.string(0, "old")?,
                to: arguments.string(1, "new")?,
            },
            "cluster.remove" => Operation::ClusterRemove {
                name: arguments.string(0, "name")?,
                force: arguments.flag(1, "force")?,
            },
            "cluster.promote" => Operation::ClusterPromote {
                name: arguments.string(0, "name")?,
                replace: arguments.option_string(1, "replace")?,
            },
            "cluster.demote" => Operation::ClusterDemote {
                name: arguments.string(0, "name")?,
            },
            "cluster.transfer_leadership" => Operation::ClusterTransferLeadership {
                name: arguments.optional_string(0, "name")?,
            },
            "cluster.evacuate" => Operation::Evacuation(EvacuationOperation::Evacuate {
                member: arguments.string(0, "name")?,
                action: arguments.option_string(1, "action")?,
            }),
            "cluster.restore" => Operation::Evacuation(EvacuationOperation::Restore {
                member: arguments.string(0, "name")?,
                action: arguments.option_string(1, "action")?,
            }),
            "cluster.evacuation" => Operation::Evacuation(EvacuationOperation::Show {
                member: arguments.string(0, "name")?,
            }),
            "images.list" => Operation::Image(ImageOperation::List),
            "images.get" => Operation::Image(ImageOperation::Get {
                reference: arguments.string(0, "fingerprint or alias")?,
            }),
            "images.import" => Operation::Image(ImageOperation::Import {
                path: arguments.string(0, "path")?,
                aliases: arguments.option_list(1, "aliases")?,
                public: arguments.flag(1, "public")?,
                properties: arguments.option_map(1, "properties")?,
            }),
            "images.delete" => Operation::Image(ImageOperation::Delete {
                reference: arguments.string(0, "fingerprint or alias")?,
            }),
            "images.alias_add" => Operation::Image(ImageOperation::AliasAdd {
                reference: arguments.string(0, "fingerprint or alias")?,
                name: arguments.string(1, "name")?,
                description: arguments
                    .optional_string(2, "description")?
                    .unwrap_or_default(),
            }),
            "images.alias_remove" => Operation::Image(ImageOperation::AliasRemove {
                name: arguments.string(0, "name")?,
            }),
            "images.alias_rename" => Operation::Image(ImageOperation::AliasRename {
                from: arguments.string(0, "old")?,
                to: arguments.string(1, "new")?,
            }),
            "images.replicate" => Operation::Image(ImageOperation::Replicate {
                reference: arguments.string(0, "fingerprint or alias")?,
            }),
            "images.copy_to" => Operation::Image(ImageOperation::CopyTo {
                reference: arguments.string(0, "fingerprint or alias")?,
                member: arguments.string(1, "member")?,
            }),
            "images.transfers" => Operation::Image(ImageOperation::Transfers),
            "placement.explain" => Operation::Placement(PlacementOperation::Explain {
                request: Box::new(arguments.placement_input(0)?),
            }),
            "placement.test" => Operation::Placement(PlacementOperation::Test {
                source: arguments.string(0, "source")?,
                request: Box::new(arguments.placement_input(1)?),
            }),
            "groups.list" => Operation::Group(GroupOperation::List),
            "groups.get" => Operation::Group(GroupOperation::Get {
                name: arguments.string(0, "name")?,
            }),
            "groups.create" => Operation::Group(GroupOperation::Create {
                name: arguments.string(0, "name")?,
                description: arguments
                    .option_string(1, "description")?
                    .unwrap_or_default(),
                members: arguments.option_list(1, "members")?,
            }),
            "groups.delete" => Operation::Group(GroupOperation::Delete {
                name: arguments.string(0, "name")?,
            }),
            "groups.rename" => Operation::Group(GroupOperation::Rename {
                from: arguments.string(0, "old")?,
                to: arguments.string(1, "new")?,
            }),
            "groups.edit" => Operation::Group(GroupOperation::Edit {
                name: arguments.string(0, "name")?,
                description: arguments.option_string(1, "description")?,
                members: arguments.option_list_given(1, "members")?,
            }),
            "groups.assign" => Operation::Group(GroupOperation::Assign {
                member: arguments.string(0, "member")?,
                groups: arguments.string_list(1, "groups")?,
            }),
            "groups.add" => Operation::Group(GroupOperation::Add {
                member: arguments.string(0, "member")?,
                group: arguments.string(1, "group")?,
            }),
            "groups.remove" => Operation::Group(GroupOperation::Remove {
                member: arguments.string(0, "member")?,
                group: arguments.string(1, "group")?,
            }),
            "storage.create" => Operation::StorageCreate {
                name: arguments.string(0, "name")?,
                driver: arguments.string(1, "driver")?,
                config: arguments.string_map(2, "config")?,
                member_config: arguments.member_map(3)?,
            },
            "storage.delete" => Operation::StorageDelete {
                name: arguments.string(0, "name")?,
            },
            "storage.list" => Operation::StorageList,
            "network.create" => Operation::NetworkCreate {
                name: arguments.string(0, "name")?,
                network_type: arguments.string(1, "type")?,
                config: arguments.string_map(2, "config")?,
                member_config: arguments.member_map(3)?,
            },
            "network.delete" => Operation::NetworkDelete {
                name: arguments.string(0, "name")?,
            },
            "network.list" => Operation::NetworkList,
            name if name.starts_with("instances.") => {
                Operation::Instance(crate::instances::calls::from_call(name, args)?)
            }
            profile if profile.starts_with("profiles.") => {
                Operation::Profile(ProfileOperation::from_call(&arguments)?)
            }
            project if project.starts_with("projects.") => {
                Operation::Project(ProjectOperation::from_call(&arguments)?)
            }
            script if script.starts_with("scripts.") => Operation::Script(
                crate::automation::scripts::ScriptOperation::from_call(&arguments)?,
            ),
            kv if kv.starts_with("kv.") => {
                Operation::Kv(crate::automation::kv::KvOperation::from_call(&arguments)?)
            }
            _ => return Err(Error::Refused(format!("unknown built-in {name}"))),
        };
        Ok(operation)
    }

    /// How long the operation may take beyond the usual request timeouts (a stop's timeout,
    /// an image copy before a launch, a command run in an instance); `None`: the usual.
    pub fn time_budget(&self) -> Option<std::time::Duration> {
        match self {
            Operation::Instance(instance) => instance.time_budget(),
            Operation::Evacuation(evacuation) if evacuation.is_write() => {
                Some(crate::evacuation::ops::EVACUATION_BUDGET)
            }
            // `scripts.run` answers when the run ends: up to its timeout, and the wait for a
            // run whose end never comes.
            Operation::Script(crate::automation::scripts::ScriptOperation::Run { .. }) => Some(
                std::time::Duration::from_secs(u64::from(
                    crate::automation::scripts::TIMEOUT_MAX_S,
                )) + crate::automation::scripts::LOST_AFTER,
            ),
            _ => None,
        }
    }

    /// Whether the operation changes the cluster state.
    pub fn is_write(&self) -> bool {
        if let Operation::Image(image) = self {
            return image.is_write();
        }
        if let Operation::Group(group) = self {
            return group.is_write();
        }
        if let Operation::Instance(instance) = self {
            return instance.is_write();
        }
        if let Operation::Evacuation(evacuation) = self {
            return evacuation.is_write();
        }
        if let Operation::Profile(profile) = self {
            return profile.is_write();
        }
        if let Operation::Project(project) = self {
            return project.is_write();
        }
        if let Operation::Kv(kv) = self {
            return kv.is_write();
        }
        if let Operation::Script(script) = self {
            return script.is_write();
        }
        matches!(
            self,
            Operation::ClusterAdd { .. }
                | Operation::ClusterRevokeToken { .. }
                | Operation::TrustAdd { .. }
                | Operation::TrustRevokeToken { .. }
                | Operation::TrustRemove { .. }
                | Operation::ConfigSet { .. }
                | Operation::ConfigUnset { .. }
                | Operation::Join(_)
                | Operation::TrustClaim { .. }
                | Operation::ClusterEdit { .. }
                | Operation::ClusterSet { .. }
                | Operation::ClusterUnset { .. }
                | Operation::ClusterRoleAdd { .. }
                | Operation::ClusterRoleRemove { .. }
                | Operation::ClusterRename { .. }
                | Operation::ClusterRemove { .. }
                | Operation::StorageCreate { .. }
                | Operation::StorageDelete { .. }
                | Operation::NetworkCreate { .. }
                | Operation::NetworkDelete { .. }
                | Operation::HandOver { .. }
        )
    }
}

/// Positional arguments of a built-in call, with errors that name the built-in and argument.
pub(crate) struct Arguments<'a> {
    /// The built-in's name, for errors.
    pub(crate) name: &'a str,
    /// The arguments, as JSON.
    pub(crate) args: &'a [Value],
}

impl Arguments<'_> {
    pub(crate) fn string(&self, position: usize, what: &str) -> Result<String, Error> {
        match self.args.get(position) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(self.wrong(position, what, other)),
            None => Err(Error::Refused(format!(
                "{}: argument #{} ({what}) is missing",
                self.name,
                position + 1
            ))),
        }
    }

    /// A string, number or boolean, as text (config values may be given as numbers in Lua).
    pub(crate) fn scalar(&self, position: usize, what: &str) -> Result<String, Error> {
        match self.args.get(position) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(Value::Number(number)) => Ok(number.to_string()),
            Some(Value::Bool(flag)) => Ok(flag.to_string()),
            Some(other) => Err(self.wrong(position, what, other)),
            None => Err(Error::Refused(format!(
                "{}: argument #{} ({what}) is missing",
                self.name,
                position + 1
            ))),
        }
    }

    /// An optional table of scalars (`config`), as strings.
    pub(crate) fn string_map(
        &self,
        position: usize,
        what: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        match self.args.get(position) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Array(items)) if items.is_empty() => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(key, value)| {
                    Ok((
                        key.clone(),
                        scalar_text(value).ok_or_else(|| self.wrong(position, what, value))?,
                    ))
                })
                .collect(),
            Some(other) => Err(self.wrong_table(position, what, other)),
        }
    }

    /// An optional table `{member = {key = value}}`.
    fn member_map(
        &self,
        position: usize,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, Error> {
        match self.args.get(position) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Array(items)) if items.is_empty() => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(member, values)| {
                    let inner = Arguments {
                        name: self.name,
                        args: std::slice::from_ref(values),
                    };
                    Ok((member.clone(), inner.string_map(0, "member_config")?))
                })
                .collect(),
            Some(other) => Err(self.wrong_table(position, "member_config", other)),
        }
    }

    /// An optional string argument.
    fn optional_string(&self, position: usize, what: &str) -> Result<Option<String>, Error> {
        match self.args.get(position) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(position, what).map(Some),
        }
    }

    /// An optional options table's list of strings, e.g. `{aliases={"a", "b"}}`.
    fn option_list(&self, position: usize, field: &str) -> Result<Vec<String>, Error> {
        match self.args.get(position) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if items.is_empty() => Ok(Vec::new()),
            Some(Value::Object(map)) => match map.get(field) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(text) => Ok(text.clone()),
                        other => Err(self.wrong(position, field, other)),
                    })
                    .collect(),
                Some(Value::Object(map)) if map.is_empty() => Ok(Vec::new()),
                Some(other) => Err(self.wrong_table(position, field, other)),
            },
            Some(other) => Err(self.wrong_table(position, "options", other)),
        }
    }

    /// An optional options table's list of strings, `None` when the field is not given (an
    /// empty list is given).
    fn option_list_given(
        &self,
        position: usize,
        field: &str,
    ) -> Result<Option<Vec<String>>, Error> {
        let given = matches!(
            self.args.get(position),
            Some(Value::Object(map)) if map.get(field).is_some_and(|value| !value.is_null())
        );
        if given {
            self.option_list(position, field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The table of `placement.explain` / `placement.test`:
    /// `{image=, name=, project=, target=, config=, profiles=}`.
    fn placement_input(&self, position: usize) -> Result<PlacementInput, Error> {
        let Some(Value::Object(map)) = self.args.get(position) else {
            let given = self.args.get(position).unwrap_or(&Value::Null);
            return Err(self.wrong_table(position, "request", given));
        };
        let known = ["image", "name", "project", "target", "config", "profiles"];
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(Error::Refused(format!(
                "{}: unknown field \"{unknown}\" (known: {})",
                self.name,
                known.join(", ")
            )));
        }
        let text = |field: &str| {
            self.option_string(position, field)
                .map(Option::unwrap_or_default)
        };
        let image = text("image")?;
        if image.is_empty() {
            return Err(Error::Refused(format!(
                "{}: the request needs an image",
                self.name
            )));
        }
        Ok(PlacementInput {
            image,
            name: text("name")?,
            project: text("project")?,
            target: text("target")?,
            config: self.option_map(position, "config")?,
            profiles: self.option_list(position, "profiles")?,
        })
    }

    /// A list of strings, e.g. `{"g1", "g2"}`.
    fn string_list(&self, position: usize, what: &str) -> Result<Vec<String>, Error> {
        match self.args.get(position) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    other => Err(self.wrong(position, what, other)),
                })
                .collect(),
            // An empty Lua table arrives as an empty object.
            Some(Value::Object(map)) if map.is_empty() => Ok(Vec::new()),
            Some(other) => Err(self.wrong(position, what, other)),
            None => Err(Error::Refused(format!(
                "{}: argument #{} ({what}) is missing",
                self.name,
                position + 1
            ))),
        }
    }

    /// An optional options table's table of scalars, e.g. `{properties={os="busybox"}}`.
    pub(crate) fn option_map(
        &self,
        position: usize,
        field: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        match self.args.get(position) {
            Some(Value::Object(map)) => match map.get(field) {
                None | Some(Value::Null) => Ok(BTreeMap::new()),
                Some(value) => Arguments {
                    name: self.name,
                    args: std::slice::from_ref(value),
                }
                .string_map(0, field),
            },
            _ => Ok(BTreeMap::new()),
        }
    }

    /// An optional options table's string field, e.g. `{replace="m2"}`.
    pub(crate) fn option_string(
        &self,
        position: usize,
        field: &str,
    ) -> Result<Option<String>, Error> {
        match self.args.get(position) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) if items.is_empty() => Ok(None),
            Some(Value::Object(map)) => match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(other) => Err(self.wrong(position, field, other)),
            },
            Some(other) => Err(self.wrong_table(position, "options", other)),
        }
    }

    /// An optional options table's boolean field, e.g. `{force=true}`.
    fn flag(&self, position: usize, field: &str) -> Result<bool, Error> {
        match self.args.get(position) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Array(items)) if items.is_empty() => Ok(false),
            Some(Value::Object(map)) => match map.get(field) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(flag)) => Ok(*flag),
                Some(other) => Err(self.wrong(position, field, other)),
            },
            Some(other) => Err(self.wrong_table(position, "options", other)),
        }
    }

    /// The table of `cluster.edit`.
    fn edit(&self, position: usize) -> Result<MemberEdit, Error> {
        let Some(Value::Object(map)) = self.args.get(position) else {
            let given = self.args.get(position).unwrap_or(&Value::Null);
            return Err(self.wrong_table(position, "changes", given));
        };
        let known = ["description", "failure_domain", "config", "groups", "roles"];
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(Error::Refused(format!(
                "{}: unknown field \"{unknown}\" (fields: {})",
                self.name,
                known.join(", ")
            )));
        }
        let field = |key: &str| map.get(key).cloned();
        let text = |key: &str| -> Result<Option<String>, Error> {
            field(key)
                .map(|value| scalar_text(&value).ok_or_else(|| self.wrong(position, key, &value)))
                .transpose()
        };
        let list = |key: &str| -> Result<Option<Vec<String>>, Error> {
            match field(key) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| scalar_text(item).ok_or_else(|| self.wrong(position, key, item)))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(other) => Err(self.wrong_table(position, key, &other)),
            }
        };
        let config = match field("config") {
            None => None,
            Some(value) => Some(
                Arguments {
                    name: self.name,
                    args: std::slice::from_ref(&value),
                }
                .string_map(0, "config")?,
            ),
        };
        Ok(MemberEdit {
            description: text("description")?,
            failure_domain: text("failure_domain")?,
            config,
            groups: list("groups")?,
            roles: list("roles")?,
        })
    }

    pub(crate) fn wrong_table(&self, position: usize, what: &str, value: &Value) -> Error {
        let error = self.wrong(position, what, value).to_string();
        Error::Refused(error.replace("must be a string", "must be a table"))
    }

    pub(crate) fn wrong(&self, position: usize, what: &str, value: &Value) -> Error {
        let kind = match value {
            Value::Null => "nil",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) | Value::Object(_) => "table",
        };
        Error::Refused(format!(
            "{}: argument #{} ({what}) must be a string, not a {kind}",
            self.name,
            position + 1
        ))
    }
}

/// A JSON scalar as text; `None` for tables and nil.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_become_operations() {
        assert_eq!(
            Operation::from_call("cluster.members", &[]).unwrap(),
            Operation::ClusterMembers
        );
        let set =
            Operation::from_call("config.set", &[json!("cluster.max_voters"), json!(5)]).unwrap();
        assert_eq!(
            set,
            Operation::ConfigSet {
                key: "cluster.max_voters".into(),
                value: "5".into()
            }
        );
        let error = Operation::from_call("cluster.member", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cluster.member: argument #1 (name) is missing"),
            "{error}"
        );
        let error = Operation::from_call("cluster.member", &[json!({"a": 1})])
            .unwrap_err()
            .to_string();
        assert!(error.contains("must be a string, not a table"), "{error}");
    }

    #[test]
    fn every_builtin_has_an_operation() {
        let scalars = [json!("x"), json!("y"), json!("z")];
        let tables = [json!("x"), json!({}), json!({}), json!({})];
        let strings_then_tables = [json!("x"), json!("y"), json!({}), json!({})];
        let four_scalars = [json!("w"), json!("x"), json!("y"), json!("z")];
        let request = [json!({"image": "x"})];
        let source_then_request = [json!("x"), json!({"image": "x"})];
        let member_then_list = [json!("m1"), json!(["g1"])];
        let key_then_number = [json!("k"), json!(1)];
        for builtin in BUILTINS {
            let accepted = [
                &[][..],
                &scalars[..],
                &tables[..],
                &strings_then_tables[..],
                &four_scalars[..],
                &request[..],
                &source_then_request[..],
                &member_then_list[..],
                &key_then_number[..],
            ]
            .iter()
            .any(|args| Operation::from_call(builtin.name, args).is_ok());
            assert!(accepted, "{} has no operation", builtin.name);
        }
        assert!(Operation::from_call("cluster.nothing", &scalars).is_err());
    }
}
