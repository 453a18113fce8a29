//! Projects, profiles, instances and cluster groups as the cluster database records them
//! (LXD's fields). An instance's processes and root file system live on its `location` member;
//! the record says where it is and what state that member last reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::{
    check_architecture, check_config, check_items, check_len, DESCRIPTION_BYTES_MAX,
    LIST_ITEMS_MAX, NAME_BYTES_MAX,
};
use crate::model::ClusterState;

/// The project every cluster has.
pub const DEFAULT_PROJECT: &str = "default";
/// The profile every project has.
pub const DEFAULT_PROFILE: &str = "default";
/// The storage pool bootstrap creates.
pub const DEFAULT_POOL: &str = "default";
/// The cluster group every member starts in.
pub const DEFAULT_GROUP: &str = "default";
/// Most devices one instance or profile may have.
pub const DEVICES_MAX: usize = 64;
/// The config key holding the id of the move that has claimed an instance
/// ([`InstanceCommand::InstanceMoveClaim`]); kept by the cluster, never by an update.
pub const MOVE_CLAIM_KEY: &str = "volatile.move.id";
/// The config key marking an instance whose delete has begun
/// ([`InstanceCommand::InstanceDeleting`]); kept by the cluster, never by an update.
pub const DELETING_KEY: &str = "volatile.deleting";
/// The config keys only the cluster sets.
pub const CLUSTER_KEYS: [&str; 2] = [MOVE_CLAIM_KEY, DELETING_KEY];
/// Most bytes of a move id.
pub const MOVE_ID_BYTES_MAX: usize = 64;

/// Devices by name, each a map of keys (`type`, `path`, `pool`, `size`, ...).
pub type Devices = BTreeMap<String, BTreeMap<String, String>>;

/// A project: its own namespace of instances and profiles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Name.
    pub name: String,
    /// Free-form description.
    pub description: String,
    /// Configuration (`user.*`, `limits.*`, ...).
    pub config: BTreeMap<String, String>,
}

/// A profile: config and devices instances take in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Its project.
    pub project: String,
    /// Name (unique in its project).
    pub name: String,
    /// Free-form description.
    pub description: String,
    /// Configuration keys.
    pub config: BTreeMap<String, String>,
    /// Devices.
    pub devices: Devices,
}

/// What an instance is doing, as its member last reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceStatus {
    /// Its root file system is being prepared on its member.
    #[default]
    Creating,
    /// Not running.
    Stopped,
    /// Running.
    Running,
    /// Failed (the record's `status_message` says why).
    Error,
}

impl InstanceStatus {
    /// LXD's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Creating => "Creating",
            InstanceStatus::Stopped => "Stopped",
            InstanceStatus::Running => "Running",
            InstanceStatus::Error => "Error",
        }
    }
}

/// An instance (a system container).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its project.
    pub project: String,
    /// Name (unique in its project; a valid host name).
    pub name: String,
    /// `container`.
    pub kind: String,
    /// Architecture (the image's).
    pub architecture: String,
    /// Its own configuration (`volatile.*` and `image.*` included).
    pub config: BTreeMap<String, String>,
    /// Its own devices.
    pub devices: Devices,
    /// Profiles applied in order, before its own config and devices.
    pub profiles: Vec<String>,
    /// The member it lives on.
    pub location: String,
    /// What its member last reported.
    pub status: InstanceStatus,
    /// Why it is in `Error`, empty otherwise.
    pub status_message: String,
    /// Created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Free-form description.
    pub description: String,
    /// Deleted when it stops.
    pub ephemeral: bool,
    /// The fingerprint of the image it was created from.
    pub image: String,
}

/// A cluster group (members are listed in each member's `groups`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterGroup {
    /// Name.
    pub name: String,
    /// Free-form description.
    pub description: String,
}

/// What an instance update changes (`None`: unchanged).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceChanges {
    /// New configuration (whole).
    pub config: Option<BTreeMap<String, String>>,
    /// New devices (whole).
    pub devices: Option<Devices>,
    /// New profiles.
    pub profiles: Option<Vec<String>>,
    /// New description.
    pub description: Option<String>,
}

/// A change to projects, profiles, instances or groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InstanceCommand {
    /// Creates a project (with its `default` profile).
    ProjectCreate {
        /// The project.
        project: Project,
    },
    /// Replaces a project's description and config.
    ProjectUpdate {
        /// The project, as it is to be.
        project: Project,
    },
    /// Deletes an empty project.
    ProjectDelete {
        /// Its name.
        name: String,
    },
    /// Renames a project without instances (not `default`); its profiles move with it.
    ProjectRename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Creates a profile.
    ProfileCreate {
        /// The profile.
        profile: Profile,
    },
    /// Replaces a profile's description, config and devices.
    ProfileUpdate {
        /// The profile, as it is to be.
        profile: Profile,
    },
    /// Renames a profile (and every instance's reference to it).
    ProfileRename {
        /// Its project.
        project: String,
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Deletes a profile no instance uses.
    ProfileDelete {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
    },
    /// Records a new instance, placed on `instance.location`, `Creating`.
    InstanceCreate {
        /// The instance.
        instance: Instance,
    },
    /// Changes an instance's config, devices, profiles or description.
    InstanceUpdate {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
        /// What changes.
        changes: InstanceChanges,
    },
    /// Records what an instance's member reports of it.
    InstanceStatus {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
        /// The member reporting (must be its location: a stale report from a former
        /// location changes nothing).
        location: String,
        /// The status.
        status: InstanceStatus,
        /// Why, for `Error`.
        message: String,
    },
    /// Moves an instance's record from member `from` (refused if it is elsewhere, so a move is
    /// never applied twice) to `location`, `Stopped`, changing config keys in the same step
    /// (`volatile.evacuate.origin`).
    InstanceMove {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
        /// Where it must be now.
        from: String,
        /// The new member.
        location: String,
        /// Config keys to set (`Some`) or remove (`None`).
        config: BTreeMap<String, Option<String>>,
    },
    /// Renames an instance.
    InstanceRename {
        /// Its project.
        project: String,
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Deletes an instance's record.
    InstanceDelete {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
    },
    /// Creates a cluster group, with members.
    GroupCreate {
        /// The group.
        group: ClusterGroup,
        /// Members to add to it.
        members: Vec<String>,
    },
    /// Changes a group's description.
    GroupUpdate {
        /// The group, as it is to be.
        group: ClusterGroup,
    },
    /// Renames a group (and every member's reference to it).
    GroupRename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Deletes a group no member is in.
    GroupDelete {
        /// Its name.
        name: String,
    },
    /// Sets the groups a member is in.
    GroupAssign {
        /// The member.
        member: String,
        /// Its groups (at least one).
        groups: Vec<String>,
    },
    /// Claims instance `name`, on member `from` (refused if it is elsewhere), for move `id`
    /// ([`MOVE_CLAIM_KEY`]). A later claim replaces an earlier one, whose move can then no
    /// longer be recorded: of two moves of one instance at once (a former leader's and its
    /// successor's), at most the one holding the claim lands.
    InstanceMoveClaim {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
        /// Where it must be now.
        from: String,
        /// The move's id.
        id: String,
    },
    /// Records claimed move `id`: as [`InstanceCommand::InstanceMove`], and refused unless
    /// `id` still holds the claim, which ends.
    InstanceMoveClaimed {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
        /// The move's id.
        id: String,
        /// Where it must be now.
        from: String,
        /// The new member.
        location: String,
        /// Config keys to set (`Some`) or remove (`None`).
        config: BTreeMap<String, Option<String>>,
    },
    /// Ends move `id`'s claim without moving the instance; refused if `id` no longer holds
    /// it. Once applied, move `id` can never be recorded.
    InstanceMoveRelease {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
        /// The move's id.
        id: String,
    },
    /// Marks (or unmarks) an instance whose delete has begun ([`DELETING_KEY`]): its member
    /// finishes a delete cut short after the files went, so the record never stays behind
    /// with nothing on disk.
    InstanceDeleting {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
        /// Mark (`true`) or unmark.
        deleting: bool,
    },
    /// Sets (`Some`) or removes (`None`) config keys of an instance, on its record as it is
    /// when applied: unlike [`InstanceCommand::InstanceUpdate`]'s whole map, it never undoes a
    /// change applied in between (a lagging leader's read, or a proposal of an earlier term
    /// committed late). With `location`, refused unless the instance is there (a stale report
    /// changes nothing). The cluster's keys ([`CLUSTER_KEYS`]) are refused.
    InstancePatch {
        /// Its project.
        project: String,
        /// Its name.
        name: String,
        /// Where it must be, if anywhere.
        location: Option<String>,
        /// Config keys to set (`Some`) or remove (`None`).
        config: BTreeMap<String, Option<String>>,
    },
    /// Replaces a profile, refused unless it is still `before`: an edit made from a read that
    /// a change applied in between made stale is refused, never applied over that change.
    ProfileUpdateFrom {
        /// The profile as the edit read it.
        before: Profile,
        /// The profile, as it is to be (same project and name).
        profile: Profile,
    },
    /// Replaces a project's description and config, refused unless it is still `before` (as
    /// [`InstanceCommand::ProfileUpdateFrom`]).
    ProjectUpdateFrom {
        /// The project as the edit read it.
        before: Project,
        /// The project, as it is to be (same name).
        project: Project,
    },
    /// Puts a member in a group (`inside`; already in it changes nothing) or takes it out
    /// (refused if it is not in it, or if it would be left in none), on the member's groups as
    /// they are when applied: unlike [`InstanceCommand::GroupAssign`]'s whole list, it never
    /// undoes another change of them applied in between.
    GroupMembership {
        /// The member.
        member: String,
        /// The group.
        group: String,
        /// In (`true`) or out.
        inside: bool,
    },
}

/// Replaces `existing` (the `what` named `name`) by `after`, refused unless it is still
/// `before`: an edit computed from a read that a change made stale is never applied over it.
fn replace_unchanged<T: PartialEq + Clone>(
    existing: Option<&mut T>,
    before: &T,
    after: &T,
    what: &str,
    name: &str,
) -> Result<(), String> {
    let existing = existing.ok_or_else(|| format!("{what} \"{name}\" not found"))?;
    if existing != before {
        return Err(format!(
            "{what} \"{name}\" changed while this edit was made: nothing was changed, edit it again"
        ));
    }
    *existing = after.clone();
    Ok(())
}

/// Sets (`Some`) or removes (`None`) the keys `changes` names in `config`.
fn set_keys(config: &mut BTreeMap<String, String>, changes: &BTreeMap<String, Option<String>>) {
    for (key, value) in changes {
        match value {
            Some(value) => config.insert(key.clone(), value.clone()),
            None => config.remove(key),
        };
    }
}

/// Checks the config keys a command sets (`Some`) or removes (`None`): their number and each
/// key's and value's length.
fn check_changed_keys(config: &BTreeMap<String, Option<String>>) -> Result<(), String> {
    check_items("config keys", config.len(), LIST_ITEMS_MAX)?;
    config.iter().try_for_each(|(key, value)| {
        check_len("config key", key, crate::limits::CONFIG_KEY_BYTES_MAX)?;
        check_len(
            "config value",
            value.as_deref().unwrap_or_default(),
            crate::limits::CONFIG_VALUE_BYTES_MAX,
        )
    })
}

/// Refuses unless `instance` is on member `member` (a stale report or a move from where it is
/// not changes nothing).
fn check_on(instance: &Instance, member: &str) -> Result<(), String> {
    if instance.location != member {
        return Err(format!(
            "instance \"{}\" is on member \"{}\", not \"{member}\"",
            instance.name, instance.location
        ));
    }
    Ok(())
}

/// Checks a move id: not empty, at most [`MOVE_ID_BYTES_MAX`] bytes.
fn check_move_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("a move id cannot be empty".to_string());
    }
    check_len("move id", id, MOVE_ID_BYTES_MAX)
}

/// Checks a name for a project, profile or group: LXD's object-name rules.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    check_len(&format!("{what} name"), name, NAME_BYTES_MAX)?;
    crate::command::validate_object_name(name, what)
}

/// Checks an instance name: a host name label (letters, digits and `-`, not starting with a
/// digit or `-`, not ending with `-`, at most 63 bytes), as LXD requires.
pub fn check_instance_name(name: &str) -> Result<(), String> {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if name.is_empty() || name.len() > 63 || !valid_chars || !first_ok || name.ends_with('-') {
        return Err(format!(
            "invalid instance name \"{}\": a host name is needed (letters, digits and '-', \
             starting with a letter, at most 63 characters)",
            crate::limits::short(name)
        ));
    }
    Ok(())
}

fn check_devices(field: &str, devices: &Devices) -> Result<(), String> {
    check_items(field, devices.len(), DEVICES_MAX)?;
    for (name, device) in devices {
        check_name("device", name)?;
        check_config(&format!("{field} \"{name}\""), device)?;
    }
    Ok(())
}

fn check_profile(profile: &Profile) -> Result<(), String> {
    check_name("project", &profile.project)?;
    check_name("profile", &profile.name)?;
    check_len(
        "profile description",
        &profile.description,
        DESCRIPTION_BYTES_MAX,
    )?;
    check_config("profile config", &profile.config)?;
    check_devices("profile devices", &profile.devices)
}

/// Checks a project's fields against their limits.
fn check_project(project: &Project) -> Result<(), String> {
    check_name("project", &project.name)?;
    check_len(
        "project description",
        &project.description,
        DESCRIPTION_BYTES_MAX,
    )?;
    check_config("project config", &project.config)
}

impl InstanceCommand {
    /// Checks every field's limit (see [`crate::limits`]).
    pub fn check_fields(&self) -> Result<(), String> {
        match self {
            InstanceCommand::ProjectCreate { project }
            | InstanceCommand::ProjectUpdate { project } => check_project(project),
            InstanceCommand::ProjectDelete { name } => {
                check_len("project name", name, NAME_BYTES_MAX)
            }
            InstanceCommand::ProjectRename { from, to } => {
                check_len("project name", from, NAME_BYTES_MAX)?;
                check_name("project", to)
            }
            InstanceCommand::ProfileCreate { profile }
            | InstanceCommand::ProfileUpdate { profile } => check_profile(profile),
            InstanceCommand::ProfileUpdateFrom { before, profile } => {
                check_profile(before)?;
                check_profile(profile)
            }
            InstanceCommand::ProjectUpdateFrom { before, project } => {
                check_project(before)?;
                check_project(project)
            }
            InstanceCommand::InstancePatch {
                project,
                name,
                location,
                config,
            } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)?;
                if let Some(location) = location {
                    check_len("member name", location, NAME_BYTES_MAX)?;
                }
                check_changed_keys(config)
            }
            InstanceCommand::ProfileRename { project, from, to } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("profile name", from, NAME_BYTES_MAX)?;
                check_name("profile", to)
            }
            InstanceCommand::ProfileDelete { project, name } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("profile name", name, NAME_BYTES_MAX)
            }
            InstanceCommand::InstanceCreate { instance } => {
                check_name("project", &instance.project)?;
                check_instance_name(&instance.name)?;
                check_len("instance type", &instance.kind, NAME_BYTES_MAX)?;
                check_architecture(&instance.architecture)?;
                check_config("instance config", &instance.config)?;
                check_devices("instance devices", &instance.devices)?;
                check_items("profiles", instance.profiles.len(), LIST_ITEMS_MAX)?;
                for profile in &instance.profiles {
                    check_len("profile name", profile, NAME_BYTES_MAX)?;
                }
                check_len("member name", &instance.location, NAME_BYTES_MAX)?;
                check_len(
                    "instance description",
                    &instance.description,
                    DESCRIPTION_BYTES_MAX,
                )?;
                check_len(
                    "status message",
                    &instance.status_message,
                    DESCRIPTION_BYTES_MAX,
                )?;
                crate::images::check_fingerprint(&instance.image)
            }
            InstanceCommand::InstanceUpdate {
                project,
                name,
                changes,
            } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)?;
                if let Some(config) = &changes.config {
                    check_config("instance config", config)?;
                }
                if let Some(devices) = &changes.devices {
                    check_devices("instance devices", devices)?;
                }
                if let Some(profiles) = &changes.profiles {
                    check_items("profiles", profiles.len(), LIST_ITEMS_MAX)?;
                    for profile in profiles {
                        check_len("profile name", profile, NAME_BYTES_MAX)?;
                    }
                }
                if let Some(description) = &changes.description {
                    check_len("instance description", description, DESCRIPTION_BYTES_MAX)?;
                }
                Ok(())
            }
            InstanceCommand::InstanceStatus {
                project,
                name,
                location,
                message,
                ..
            } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)?;
                check_len("member name", location, NAME_BYTES_MAX)?;
                check_len("status message", message, DESCRIPTION_BYTES_MAX)
            }
            InstanceCommand::InstanceMove {
                project,
                name,
                from,
                location,
                config,
            } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)?;
                check_len("member name", from, NAME_BYTES_MAX)?;
                check_len("member name", location, NAME_BYTES_MAX)?;
                check_changed_keys(config)
            }
            InstanceCommand::InstanceRename { project, from, to } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", from, NAME_BYTES_MAX)?;
                check_instance_name(to)
            }
            InstanceCommand::InstanceDelete { project, name } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)
            }
            InstanceCommand::GroupCreate { group, members } => {
                check_name("cluster group", &group.name)?;
                check_len(
                    "group description",
                    &group.description,
                    DESCRIPTION_BYTES_MAX,
                )?;
                check_items("members", members.len(), crate::limits::LIST_ITEMS_MAX)?;
                members
                    .iter()
                    .try_for_each(|member| check_len("member name", member, NAME_BYTES_MAX))
            }
            InstanceCommand::GroupUpdate { group } => {
                check_len("group name", &group.name, NAME_BYTES_MAX)?;
                check_len(
                    "group description",
                    &group.description,
                    DESCRIPTION_BYTES_MAX,
                )
            }
            InstanceCommand::GroupRename { from, to } => {
                check_len("group name", from, NAME_BYTES_MAX)?;
                check_name("cluster group", to)
            }
            InstanceCommand::GroupDelete { name } => check_len("group name", name, NAME_BYTES_MAX),
            InstanceCommand::GroupMembership { member, group, .. } => {
                check_len("member name", member, NAME_BYTES_MAX)?;
                check_len("group name", group, NAME_BYTES_MAX)
            }
            InstanceCommand::GroupAssign { member, groups } => {
                check_len("member name", member, NAME_BYTES_MAX)?;
                check_items("groups", groups.len(), LIST_ITEMS_MAX)?;
                groups
                    .iter()
                    .try_for_each(|group| check_len("group name", group, NAME_BYTES_MAX))
            }
            InstanceCommand::InstanceMoveClaim {
                project,
                name,
                from,
                id,
            } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)?;
                check_len("member name", from, NAME_BYTES_MAX)?;
                check_move_id(id)
            }
            InstanceCommand::InstanceMoveClaimed {
                project,
                name,
                id,
                from,
                location,
                config,
            } => {
                check_move_id(id)?;
                InstanceCommand::InstanceMove {
                    project: project.clone(),
                    name: name.clone(),
                    from: from.clone(),
                    location: location.clone(),
                    config: config.clone(),
                }
                .check_fields()
            }
            InstanceCommand::InstanceMoveRelease { project, name, id } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)?;
                check_move_id(id)
            }
            InstanceCommand::InstanceDeleting { project, name, .. } => {
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)
            }
        }
    }
}

/// The key of a profile or instance: (project, name).
pub type Key = (String, String);

fn key(project: &str, name: &str) -> Key {
    (project.to_string(), name.to_string())
}

impl ClusterState {
    /// Creates what `lxd init` would: the `default` project, its `default` profile with a root
    /// disk on the `default` pool, the `default` `dir` pool and the `default` cluster group.
    pub(crate) fn seed_defaults(&mut self) {
        self.projects.insert(
            DEFAULT_PROJECT.to_string(),
            Project {
                name: DEFAULT_PROJECT.to_string(),
                description: "Default Starling project".to_string(),
                config: BTreeMap::new(),
            },
        );
        self.profiles.insert(
            key(DEFAULT_PROJECT, DEFAULT_PROFILE),
            default_profile(DEFAULT_PROJECT),
        );
        self.pools
            .entry(DEFAULT_POOL.to_string())
            .or_insert_with(|| crate::model::StoragePool {
                name: DEFAULT_POOL.to_string(),
                driver: "dir".to_string(),
                description: String::new(),
                config: BTreeMap::new(),
                member_config: BTreeMap::new(),
            });
        self.groups.insert(
            DEFAULT_GROUP.to_string(),
            ClusterGroup {
                name: DEFAULT_GROUP.to_string(),
                description: "Default cluster group".to_string(),
            },
        );
    }

    /// Members of a cluster group, by name.
    pub fn group_members(&self, group: &str) -> Vec<String> {
        self.members
            .values()
            .filter(|member| member.groups.iter().any(|g| g == group))
            .map(|member| member.name.clone())
            .collect()
    }

    /// The instances on `member` (all projects).
    pub fn instances_on(&self, member: &str) -> usize {
        self.instances
            .values()
            .filter(|instance| instance.location == member)
            .count()
    }

    /// The instance's config and devices with its profiles applied in order, then its own.
    pub fn expanded(&self, instance: &Instance) -> (BTreeMap<String, String>, Devices) {
        self.expand(
            &instance.project,
            &instance.profiles,
            &instance.config,
            &instance.devices,
        )
    }

    /// Profiles `profiles` of `project` applied in order, then `config` and `devices`. A
    /// profile that does not exist adds nothing.
    pub fn expand(
        &self,
        project: &str,
        profiles: &[String],
        config: &BTreeMap<String, String>,
        devices: &Devices,
    ) -> (BTreeMap<String, String>, Devices) {
        let mut expanded_config = BTreeMap::new();
        let mut expanded_devices = Devices::new();
        for name in profiles {
            if let Some(profile) = self.profiles.get(&key(project, name)) {
                expanded_config.extend(profile.config.clone());
                expanded_devices.extend(profile.devices.clone());
            }
        }
        expanded_config.extend(config.clone());
        expanded_devices.extend(devices.clone());
        (expanded_config, expanded_devices)
    }

    fn project_exists(&self, project: &str) -> Result<(), String> {
        if self.projects.contains_key(project) {
            Ok(())
        } else {
            Err(format!("project \"{project}\" not found"))
        }
    }

    /// LXD's rule: neither the default project nor one with instances is renamed. Its
    /// profiles (the default one at least) move to the new name.
    fn rename_project(&mut self, from: &str, to: &str) -> Result<(), String> {
        if from == DEFAULT_PROJECT {
            return Err("the default project cannot be renamed".to_string());
        }
        self.project_exists(from)?;
        if self.projects.contains_key(to) {
            return Err(format!("project \"{to}\" already exists"));
        }
        if self.instances.keys().any(|(project, _)| project == from) {
            return Err(format!(
                "project \"{from}\" still has instances: only projects without instances can be renamed"
            ));
        }
        if let Some(mut project) = self.projects.remove(from) {
            project.name = to.to_string();
            self.projects.insert(to.to_string(), project);
        }
        let moved: Vec<Key> = self
            .profiles
            .keys()
            .filter(|(project, _)| project == from)
            .cloned()
            .collect();
        for old_key in moved {
            if let Some(mut profile) = self.profiles.remove(&old_key) {
                profile.project = to.to_string();
                self.profiles.insert(key(to, &profile.name), profile);
            }
        }
        Ok(())
    }

    fn instance_mut(&mut self, project: &str, name: &str) -> Result<&mut Instance, String> {
        self.instances
            .get_mut(&key(project, name))
            .ok_or_else(|| format!("instance \"{name}\" not found in project \"{project}\""))
    }

    fn check_profiles_exist(&self, project: &str, profiles: &[String]) -> Result<(), String> {
        for profile in profiles {
            if !self.profiles.contains_key(&key(project, profile)) {
                return Err(format!(
                    "profile \"{profile}\" not found in project \"{project}\""
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = profiles.iter().find(|profile| !seen.insert(*profile)) {
            return Err(format!("profile \"{twice}\" is listed twice"));
        }
        Ok(())
    }

    fn check_groups_exist(&self, groups: &[String]) -> Result<(), String> {
        if groups.is_empty() {
            return Err("a member must stay in at least one cluster group".to_string());
        }
        for group in groups {
            if !self.groups.contains_key(group) {
                return Err(format!("cluster group \"{group}\" not found"));
            }
        }
        Ok(())
    }

    pub(crate) fn apply_instance(&mut self, command: &InstanceCommand) -> Result<(), String> {
        match command {
            InstanceCommand::ProjectCreate { project } => {
                if self.projects.contains_key(&project.name) {
                    return Err(format!("project \"{}\" already exists", project.name));
                }
                self.projects.insert(project.name.clone(), project.clone());
                self.profiles.insert(
                    key(&project.name, DEFAULT_PROFILE),
                    default_profile(&project.name),
                );
                Ok(())
            }
            InstanceCommand::ProjectUpdate { project } => {
                let existing = self
                    .projects
                    .get_mut(&project.name)
                    .ok_or_else(|| format!("project \"{}\" not found", project.name))?;
                *existing = project.clone();
                Ok(())
            }
            InstanceCommand::ProjectDelete { name } => {
                if name == DEFAULT_PROJECT {
                    return Err("the default project cannot be deleted".to_string());
                }
                self.project_exists(name)?;
                if self.instances.keys().any(|(project, _)| project == name) {
                    return Err(format!("project \"{name}\" still has instances"));
                }
                if self
                    .profiles
                    .keys()
                    .any(|(project, profile)| project == name && profile != DEFAULT_PROFILE)
                {
                    return Err(format!(
                        "project \"{name}\" still has profiles other than default"
                    ));
                }
                self.profiles.remove(&key(name, DEFAULT_PROFILE));
                self.projects.remove(name);
                Ok(())
            }
            InstanceCommand::ProjectRename { from, to } => self.rename_project(from, to),
            InstanceCommand::ProfileCreate { profile } => {
                self.project_exists(&profile.project)?;
                let profile_key = key(&profile.project, &profile.name);
                if self.profiles.contains_key(&profile_key) {
                    return Err(format!("profile \"{}\" already exists", profile.name));
                }
                self.profiles.insert(profile_key, profile.clone());
                Ok(())
            }
            InstanceCommand::ProfileUpdateFrom { before, profile } => {
                if (&before.project, &before.name) != (&profile.project, &profile.name) {
                    return Err(format!(
                        "an update of profile \"{}\" cannot rename it to \"{}\"",
                        before.name, profile.name
                    ));
                }
                let existing = self.profiles.get_mut(&key(&profile.project, &profile.name));
                replace_unchanged(existing, before, profile, "profile", &profile.name)
            }
            InstanceCommand::ProjectUpdateFrom { before, project } => {
                if before.name != project.name {
                    return Err(format!(
                        "an update of project \"{}\" cannot rename it to \"{}\"",
                        before.name, project.name
                    ));
                }
                let existing = self.projects.get_mut(&project.name);
                replace_unchanged(existing, before, project, "project", &project.name)
            }
            InstanceCommand::InstancePatch {
                project,
                name,
                location,
                config,
            } => {
                let instance = self.instance_mut(project, name)?;
                if let Some(location) = location {
                    check_on(instance, location)?;
                }
                if let Some(key) = config
                    .keys()
                    .find(|key| CLUSTER_KEYS.contains(&key.as_str()))
                {
                    return Err(format!("the config key \"{key}\" is the cluster's own"));
                }
                let mut changed = instance.config.clone();
                set_keys(&mut changed, config);
                crate::limits::check_config("instance config", &changed)?;
                instance.config = changed;
                Ok(())
            }
            InstanceCommand::ProfileUpdate { profile } => {
                let existing = self
                    .profiles
                    .get_mut(&key(&profile.project, &profile.name))
                    .ok_or_else(|| format!("profile \"{}\" not found", profile.name))?;
                *existing = profile.clone();
                Ok(())
            }
            InstanceCommand::ProfileRename { project, from, to } => {
                if from == DEFAULT_PROFILE {
                    return Err("the default profile cannot be renamed".to_string());
                }
                if self.profiles.contains_key(&key(project, to)) {
                    return Err(format!("profile \"{to}\" already exists"));
                }
                let mut profile = self
                    .profiles
                    .remove(&key(project, from))
                    .ok_or_else(|| format!("profile \"{from}\" not found"))?;
                profile.name = to.clone();
                self.profiles.insert(key(project, to), profile);
                for instance in self.instances.values_mut() {
                    if instance.project == *project {
                        for name in &mut instance.profiles {
                            if name == from {
                                *name = to.clone();
                            }
                        }
                    }
                }
                Ok(())
            }
            InstanceCommand::ProfileDelete { project, name } => {
                if name == DEFAULT_PROFILE {
                    return Err("the default profile cannot be deleted".to_string());
                }
                if !self.profiles.contains_key(&key(project, name)) {
                    return Err(format!("profile \"{name}\" not found"));
                }
                let users: Vec<&str> = self
                    .instances
                    .values()
                    .filter(|instance| {
                        instance.project == *project && instance.profiles.contains(name)
                    })
                    .map(|instance| instance.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(format!(
                        "profile \"{name}\" is used by instances: {}",
                        users.join(", ")
                    ));
                }
                self.profiles.remove(&key(project, name));
                Ok(())
            }
            InstanceCommand::InstanceCreate { instance } => {
                self.project_exists(&instance.project)?;
                let instance_key = key(&instance.project, &instance.name);
                if self.instances.contains_key(&instance_key) {
                    return Err(format!(
                        "instance \"{}\" already exists in project \"{}\"",
                        instance.name, instance.project
                    ));
                }
                if !self.members.contains_key(&instance.location) {
                    return Err(format!("member \"{}\" not found", instance.location));
                }
                self.check_profiles_exist(&instance.project, &instance.profiles)?;
                if !self.images.contains_key(&instance.image) {
                    return Err(format!("image \"{}\" not found", instance.image));
                }
                self.instances.insert(instance_key, instance.clone());
                self.instance_counts.added(&instance.location);
                Ok(())
            }
            InstanceCommand::InstanceUpdate {
                project,
                name,
                changes,
            } => {
                if let Some(profiles) = &changes.profiles {
                    self.check_profiles_exist(project, profiles)?;
                }
                let instance = self.instance_mut(project, name)?;
                if let Some(config) = &changes.config {
                    // The cluster's keys (a move's claim, a delete's mark) are the cluster's:
                    // an update read before them (or naming them) neither ends nor forges them.
                    let kept: Vec<_> = CLUSTER_KEYS
                        .iter()
                        .map(|key| (*key, instance.config.get(*key).cloned()))
                        .collect();
                    instance.config = config.clone();
                    for (key, value) in kept {
                        match value {
                            Some(value) => instance.config.insert(key.to_string(), value),
                            None => instance.config.remove(key),
                        };
                    }
                }
                if let Some(devices) = &changes.devices {
                    instance.devices = devices.clone();
                }
                if let Some(profiles) = &changes.profiles {
                    instance.profiles = profiles.clone();
                }
                if let Some(description) = &changes.description {
                    instance.description = description.clone();
                }
                Ok(())
            }
            InstanceCommand::InstanceStatus {
                project,
                name,
                location,
                status,
                message,
            } => {
                let instance = self.instance_mut(project, name)?;
                check_on(instance, location)?;
                instance.status = *status;
                instance.status_message = message.clone();
                Ok(())
            }
            InstanceCommand::InstanceMove {
                project,
                name,
                from,
                location,
                config,
            } => {
                if !self.members.contains_key(location) {
                    return Err(format!("member \"{location}\" not found"));
                }
                let instance = self.instance_mut(project, name)?;
                check_on(instance, from)?;
                let was = std::mem::replace(&mut instance.location, location.clone());
                instance.status = InstanceStatus::Stopped;
                instance.status_message.clear();
                set_keys(&mut instance.config, config);
                // Whatever move had claimed it can no longer be recorded.
                instance.config.remove(MOVE_CLAIM_KEY);
                self.instance_counts.moved(&was, location);
                Ok(())
            }
            InstanceCommand::InstanceRename { project, from, to } => {
                if self.instances.contains_key(&key(project, to)) {
                    return Err(format!("instance \"{to}\" already exists"));
                }
                let mut instance = self
                    .instances
                    .remove(&key(project, from))
                    .ok_or_else(|| format!("instance \"{from}\" not found"))?;
                instance.name = to.clone();
                self.instances.insert(key(project, to), instance);
                Ok(())
            }
            InstanceCommand::InstanceDelete { project, name } => {
                match self.instances.remove(&key(project, name)) {
                    Some(instance) => {
                        self.instance_counts.removed(&instance.location);
                        Ok(())
                    }
                    None => Err(format!(
                        "instance \"{name}\" not found in project \"{project}\""
                    )),
                }
            }
            InstanceCommand::GroupCreate { group, members } => {
                if self.groups.contains_key(&group.name) {
                    return Err(format!("cluster group \"{}\" already exists", group.name));
                }
                for member in members {
                    if !self.members.contains_key(member) {
                        return Err(format!("member \"{member}\" not found"));
                    }
                }
                self.groups.insert(group.name.clone(), group.clone());
                for member in members {
                    if let Some(record) = self.members.get_mut(member) {
                        if !record.groups.contains(&group.name) {
                            record.groups.push(group.name.clone());
                        }
                    }
                }
                Ok(())
            }
            InstanceCommand::GroupUpdate { group } => {
                let existing = self
                    .groups
                    .get_mut(&group.name)
                    .ok_or_else(|| format!("cluster group \"{}\" not found", group.name))?;
                existing.description = group.description.clone();
                Ok(())
            }
            InstanceCommand::GroupRename { from, to } => {
                if from == DEFAULT_GROUP {
                    return Err("the default cluster group cannot be renamed".to_string());
                }
                if self.groups.contains_key(to) {
                    return Err(format!("cluster group \"{to}\" already exists"));
                }
                let mut group = self
                    .groups
                    .remove(from)
                    .ok_or_else(|| format!("cluster group \"{from}\" not found"))?;
                group.name = to.clone();
                self.groups.insert(to.clone(), group);
                for member in self.members.values_mut() {
                    for name in &mut member.groups {
                        if name == from {
                            *name = to.clone();
                        }
                    }
                }
                Ok(())
            }
            InstanceCommand::GroupDelete { name } => {
                if name == DEFAULT_GROUP {
                    return Err("the default cluster group cannot be deleted".to_string());
                }
                if !self.groups.contains_key(name) {
                    return Err(format!("cluster group \"{name}\" not found"));
                }
                let members = self.group_members(name);
                if !members.is_empty() {
                    return Err(format!(
                        "only empty cluster groups can be deleted: \"{name}\" has members {}",
                        members.join(", ")
                    ));
                }
                self.groups.remove(name);
                Ok(())
            }
            InstanceCommand::GroupMembership {
                member,
                group,
                inside,
            } => {
                if *inside && !self.groups.contains_key(group) {
                    return Err(format!("cluster group \"{group}\" not found"));
                }
                let record = self
                    .members
                    .get_mut(member)
                    .ok_or_else(|| format!("member \"{member}\" not found"))?;
                let held = record.groups.contains(group);
                match (*inside, held) {
                    (true, true) => {}
                    (true, false) => record.groups.push(group.clone()),
                    (false, false) => {
                        return Err(format!(
                            "member \"{member}\" is not in cluster group \"{group}\""
                        ))
                    }
                    (false, true) if record.groups.len() == 1 => {
                        return Err(format!(
                            "member \"{member}\" must stay in at least one cluster group"
                        ))
                    }
                    (false, true) => record.groups.retain(|held| held != group),
                }
                Ok(())
            }
            InstanceCommand::GroupAssign { member, groups } => {
                self.check_groups_exist(groups)?;
                let mut unique = groups.clone();
                unique.dedup();
                let record = self
                    .members
                    .get_mut(member)
                    .ok_or_else(|| format!("member \"{member}\" not found"))?;
                record.groups = unique;
                Ok(())
            }
            InstanceCommand::InstanceMoveClaim {
                project,
                name,
                from,
                id,
            } => {
                let instance = self.instance_mut(project, name)?;
                check_on(instance, from)?;
                instance
                    .config
                    .insert(MOVE_CLAIM_KEY.to_string(), id.clone());
                Ok(())
            }
            InstanceCommand::InstanceMoveClaimed {
                project,
                name,
                id,
                from,
                location,
                config,
            } => {
                self.check_move_claim(project, name, id)?;
                self.apply_instance(&InstanceCommand::InstanceMove {
                    project: project.clone(),
                    name: name.clone(),
                    from: from.clone(),
                    location: location.clone(),
                    config: config.clone(),
                })
            }
            InstanceCommand::InstanceDeleting {
                project,
                name,
                deleting,
            } => {
                let config = &mut self.instance_mut(project, name)?.config;
                if *deleting {
                    config.insert(DELETING_KEY.to_string(), "true".to_string());
                } else {
                    config.remove(DELETING_KEY);
                }
                Ok(())
            }
            InstanceCommand::InstanceMoveRelease { project, name, id } => {
                self.check_move_claim(project, name, id)?;
                self.instance_mut(project, name)?
                    .config
                    .remove(MOVE_CLAIM_KEY);
                Ok(())
            }
        }
    }

    /// Refuses unless move `id` holds the claim of instance `name`.
    fn check_move_claim(&self, project: &str, name: &str, id: &str) -> Result<(), String> {
        let instance = self
            .instances
            .get(&key(project, name))
            .ok_or_else(|| format!("instance \"{name}\" not found in project \"{project}\""))?;
        match instance.config.get(MOVE_CLAIM_KEY) {
            Some(claim) if claim == id => Ok(()),
            Some(claim) => Err(format!(
                "move {id} of instance \"{name}\" was overtaken by move {claim}"
            )),
            None => Err(format!(
                "move {id} of instance \"{name}\" no longer holds its claim"
            )),
        }
    }

    /// Checks a member's new group list (`cluster.edit`): existing groups, at least one.
    pub(crate) fn check_member_groups(&self, groups: &[String]) -> Result<(), String> {
        self.check_groups_exist(groups)
    }
}

/// A project's `default` profile: the root disk on the `default` pool, as `lxd init` makes it.
pub fn default_profile(project: &str) -> Profile {
    Profile {
        project: project.to_string(),
        name: DEFAULT_PROFILE.to_string(),
        description: format!("Default Starling profile for project {project}"),
        config: BTreeMap::new(),
        devices: BTreeMap::from([(
            "root".to_string(),
            BTreeMap::from([
                ("path".to_string(), "/".to_string()),
                ("pool".to_string(), DEFAULT_POOL.to_string()),
                ("type".to_string(), "disk".to_string()),
            ]),
        )]),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::command::tests::{bootstrapped, member};
    use crate::Command;

    fn apply(state: &mut ClusterState, command: InstanceCommand) -> Result<(), String> {
        state.apply(&Command::Instance(command))
    }

    fn with_members(names: &[&str]) -> ClusterState {
        let mut state = bootstrapped();
        for (index, name) in names.iter().enumerate() {
            let record = member(name, index as u64 + 2);
            state.members.insert(record.name.clone(), record);
        }
        state
    }

    fn group(name: &str) -> ClusterGroup {
        ClusterGroup {
            name: name.to_string(),
            description: String::new(),
        }
    }

    /// Goal: bootstrap makes what `lxd init` makes: the default project, its default profile
    /// with a root disk on the default `dir` pool, and the default group holding the member.
    #[test]
    fn bootstrap_seeds_the_defaults() {
        let state = bootstrapped();
        assert!(state.projects.contains_key(DEFAULT_PROJECT));
        let profile = &state.profiles[&key(DEFAULT_PROJECT, DEFAULT_PROFILE)];
        assert_eq!(profile.devices["root"]["path"], "/");
        assert_eq!(profile.devices["root"]["pool"], DEFAULT_POOL);
        assert_eq!(state.pools[DEFAULT_POOL].driver, "dir");
        assert_eq!(state.group_members(DEFAULT_GROUP), ["m1"]);
    }

    /// Goal: a profile or project edit made from a stale read is refused and changes nothing;
    /// one made from the record as it is applies.
    /// Method: two edits read from the same default profile (and project); the first applies,
    /// the second, whose read the first made stale, is refused with the reason.
    #[test]
    fn an_update_from_a_stale_read_is_refused() {
        let mut state = bootstrapped();
        let read = state.profiles[&key(DEFAULT_PROJECT, DEFAULT_PROFILE)].clone();
        let mut first = read.clone();
        first.config.insert("user.a".into(), "1".into());
        let mut second = read.clone();
        second.config.insert("user.b".into(), "2".into());
        apply(
            &mut state,
            InstanceCommand::ProfileUpdateFrom {
                before: read.clone(),
                profile: first.clone(),
            },
        )
        .unwrap();
        let error = apply(
            &mut state,
            InstanceCommand::ProfileUpdateFrom {
                before: read.clone(),
                profile: second,
            },
        )
        .unwrap_err();
        assert!(
            error.contains("changed while this edit was made"),
            "{error}"
        );
        assert_eq!(
            state.profiles[&key(DEFAULT_PROJECT, DEFAULT_PROFILE)],
            first
        );
        let mut renamed = first.clone();
        renamed.name = "other".into();
        let error = apply(
            &mut state,
            InstanceCommand::ProfileUpdateFrom {
                before: first,
                profile: renamed,
            },
        )
        .unwrap_err();
        assert!(error.contains("cannot rename it"), "{error}");

        let read = state.projects[DEFAULT_PROJECT].clone();
        let mut first = read.clone();
        first.description = "one".into();
        let mut second = read.clone();
        second.config.insert("user.b".into(), "2".into());
        apply(
            &mut state,
            InstanceCommand::ProjectUpdateFrom {
                before: read.clone(),
                project: first.clone(),
            },
        )
        .unwrap();
        let error = apply(
            &mut state,
            InstanceCommand::ProjectUpdateFrom {
                before: read,
                project: second,
            },
        )
        .unwrap_err();
        assert!(
            error.contains("changed while this edit was made"),
            "{error}"
        );
        assert_eq!(state.projects[DEFAULT_PROJECT], first);
    }

    /// Goal: an instance patch changes the keys it names on the record as applied, refuses
    /// the cluster's keys and, with a location, an instance that is elsewhere.
    #[test]
    fn an_instance_patch_keeps_the_other_keys() {
        let mut state = with_members(&["m2"]);
        with_image(&mut state);
        let mut record = instance("c1", &[DEFAULT_PROFILE]);
        record.location = "m2".into();
        record.config.insert("user.kept".into(), "yes".into());
        apply(
            &mut state,
            InstanceCommand::InstanceCreate { instance: record },
        )
        .unwrap();
        let patch = |location: Option<&str>, key: &str, value: Option<&str>| {
            InstanceCommand::InstancePatch {
                project: DEFAULT_PROJECT.into(),
                name: "c1".into(),
                location: location.map(Into::into),
                config: BTreeMap::from([(key.to_string(), value.map(Into::into))]),
            }
        };
        apply(&mut state, patch(None, "user.a", Some("1"))).unwrap();
        apply(&mut state, patch(Some("m2"), "user.b", Some("2"))).unwrap();
        let error = apply(&mut state, patch(Some("m1"), "user.a", None)).unwrap_err();
        assert!(error.contains("is on member \"m2\""), "{error}");
        let error = apply(&mut state, patch(None, MOVE_CLAIM_KEY, Some("x"))).unwrap_err();
        assert!(error.contains("the cluster's own"), "{error}");
        apply(&mut state, patch(None, "user.a", None)).unwrap();
        let config = &state.instances[&key(DEFAULT_PROJECT, "c1")].config;
        assert_eq!(config.get("user.kept").map(String::as_str), Some("yes"));
        assert_eq!(config.get("user.b").map(String::as_str), Some("2"));
        assert_eq!(config.get("user.a"), None);
        assert_eq!(config.get(MOVE_CLAIM_KEY), None);
    }

    /// Goal: adding a member to a group it is in changes nothing (the assertion the runtime's
    /// `with_group` test made, now where the change is applied).
    #[test]
    fn adding_a_group_twice_changes_nothing() {
        let mut state = with_members(&["m2"]);
        apply(
            &mut state,
            InstanceCommand::GroupCreate {
                group: group("gpu"),
                members: Vec::new(),
            },
        )
        .unwrap();
        let add = |group: &str| InstanceCommand::GroupMembership {
            member: "m2".into(),
            group: group.into(),
            inside: true,
        };
        apply(&mut state, add("gpu")).unwrap();
        assert_eq!(state.members["m2"].groups, ["default", "gpu"]);
        let before = state.members.clone();
        apply(&mut state, add("default")).unwrap();
        assert_eq!(state.members, before);
    }

    /// Goal: LXD's group rules: invalid names refused, `default` neither renamed nor deleted,
    /// only empty groups deleted, a member keeps at least one group, renames follow members.
    #[test]
    fn group_rules() {
        let mut state = with_members(&["m2"]);
        for bad in ["*", ".", "..", "a/b", "a b", "a_b", "a\"b", ""] {
            let error = apply(
                &mut state,
                InstanceCommand::GroupCreate {
                    group: group(bad),
                    members: vec![],
                },
            )
            .unwrap_err();
            assert!(
                error.contains("invalid cluster group name"),
                "{bad}: {error}"
            );
        }
        apply(
            &mut state,
            InstanceCommand::GroupCreate {
                group: group("gpu"),
                members: vec!["m2".into()],
            },
        )
        .unwrap();
        assert_eq!(state.group_members("gpu"), ["m2"]);
        assert!(apply(
            &mut state,
            InstanceCommand::GroupDelete { name: "gpu".into() }
        )
        .unwrap_err()
        .contains("only empty cluster groups can be deleted"));
        assert!(apply(
            &mut state,
            InstanceCommand::GroupDelete {
                name: DEFAULT_GROUP.into()
            }
        )
        .unwrap_err()
        .contains("cannot be deleted"));
        assert!(apply(
            &mut state,
            InstanceCommand::GroupRename {
                from: DEFAULT_GROUP.into(),
                to: "x".into()
            }
        )
        .unwrap_err()
        .contains("cannot be renamed"));
        let error = apply(
            &mut state,
            InstanceCommand::GroupAssign {
                member: "m2".into(),
                groups: vec![],
            },
        )
        .unwrap_err();
        assert!(error.contains("at least one cluster group"), "{error}");
        assert!(apply(
            &mut state,
            InstanceCommand::GroupAssign {
                member: "m2".into(),
                groups: vec!["nope".into()],
            },
        )
        .unwrap_err()
        .contains("not found"));
        apply(
            &mut state,
            InstanceCommand::GroupRename {
                from: "gpu".into(),
                to: "fast".into(),
            },
        )
        .unwrap();
        assert_eq!(state.members["m2"].groups, ["default", "fast"]);
        apply(
            &mut state,
            InstanceCommand::GroupAssign {
                member: "m2".into(),
                groups: vec![DEFAULT_GROUP.into()],
            },
        )
        .unwrap();
        apply(
            &mut state,
            InstanceCommand::GroupDelete {
                name: "fast".into(),
            },
        )
        .unwrap();
        assert!(!state.groups.contains_key("fast"));
    }

    pub(crate) fn instance(name: &str, profiles: &[&str]) -> Instance {
        Instance {
            project: DEFAULT_PROJECT.into(),
            name: name.into(),
            kind: "container".into(),
            architecture: "x86_64".into(),
            config: BTreeMap::from([("limits.cpu".into(), "2".into())]),
            devices: Devices::new(),
            profiles: profiles.iter().map(|p| p.to_string()).collect(),
            location: "m1".into(),
            status: InstanceStatus::Creating,
            status_message: String::new(),
            created_at_ms: 1,
            description: String::new(),
            ephemeral: false,
            image: "a".repeat(64),
        }
    }

    fn with_image(state: &mut ClusterState) {
        let image = test_image();
        state
            .apply(&Command::Image(crate::images::ImageCommand::Add { image }))
            .unwrap();
    }

    /// The image the instances of these tests come from, held by m1.
    pub(crate) fn test_image() -> crate::images::Image {
        crate::images::Image {
            fingerprint: "a".repeat(64),
            size: 1,
            filename: "i.tar".into(),
            architecture: "x86_64".into(),
            properties: BTreeMap::new(),
            aliases: vec![],
            public: false,
            created_at: 0,
            uploaded_at_ms: 0,
            locations: ["m1".to_string()].into(),
        }
    }

    /// Goal: a move applies only from the member the record names (so a repeated or stale
    /// move changes nothing), sets the new location, `Stopped`, and its config changes at once.
    #[test]
    fn a_move_applies_once_from_its_source() {
        let mut state = with_members(&["m2"]);
        with_image(&mut state);
        apply(
            &mut state,
            InstanceCommand::InstanceCreate {
                instance: instance("c1", &["default"]),
            },
        )
        .unwrap();
        let moving = |from: &str, to: &str| InstanceCommand::InstanceMove {
            project: DEFAULT_PROJECT.into(),
            name: "c1".into(),
            from: from.into(),
            location: to.into(),
            config: BTreeMap::from([
                (
                    "volatile.evacuate.origin".to_string(),
                    Some("m1".to_string()),
                ),
                ("limits.cpu".to_string(), None),
            ]),
        };
        apply(&mut state, moving("m1", "m2")).unwrap();
        let moved = &state.instances[&key(DEFAULT_PROJECT, "c1")];
        assert_eq!(
            (moved.location.as_str(), moved.status),
            ("m2", InstanceStatus::Stopped)
        );
        assert_eq!(moved.config.get("volatile.evacuate.origin").unwrap(), "m1");
        assert!(!moved.config.contains_key("limits.cpu"));
        let again = apply(&mut state, moving("m1", "m2")).unwrap_err();
        assert!(again.contains("is on member \"m2\", not \"m1\""), "{again}");
        let nowhere = apply(&mut state, moving("m2", "m9")).unwrap_err();
        assert!(nowhere.contains("m9"), "{nowhere}");
    }

    /// Goal: of two moves of one instance at once, only the one holding the claim can be
    /// recorded; a released or overtaken claim never lands; an update neither ends nor forges a
    /// claim; an unclaimed move (a recreate) ends any claim. Every refusal changes nothing.
    /// Method: claims, records and releases applied in the orders two leaders could commit.
    #[test]
    fn a_move_lands_only_while_it_holds_the_claim() {
        let mut state = with_members(&["m2", "m3"]);
        with_image(&mut state);
        apply(
            &mut state,
            InstanceCommand::InstanceCreate {
                instance: instance("c1", &["default"]),
            },
        )
        .unwrap();
        let c1 = key(DEFAULT_PROJECT, "c1");
        let claim = |from: &str, id: &str| InstanceCommand::InstanceMoveClaim {
            project: DEFAULT_PROJECT.into(),
            name: "c1".into(),
            from: from.into(),
            id: id.into(),
        };
        let record = |id: &str, from: &str, to: &str| InstanceCommand::InstanceMoveClaimed {
            project: DEFAULT_PROJECT.into(),
            name: "c1".into(),
            id: id.into(),
            from: from.into(),
            location: to.into(),
            config: BTreeMap::new(),
        };
        let release = |id: &str| InstanceCommand::InstanceMoveRelease {
            project: DEFAULT_PROJECT.into(),
            name: "c1".into(),
            id: id.into(),
        };
        // A former leader's move x is overtaken by its successor's y.
        apply(&mut state, claim("m1", "x")).unwrap();
        apply(&mut state, claim("m1", "y")).unwrap();
        let before = state.clone();
        let late = apply(&mut state, record("x", "m1", "m2")).unwrap_err();
        assert!(late.contains("overtaken by move y"), "{late}");
        assert!(apply(&mut state, release("x")).is_err());
        assert_eq!(
            state, before,
            "a refused record or release changed the state"
        );
        apply(&mut state, record("y", "m1", "m3")).unwrap();
        assert_eq!(state.instances[&c1].location, "m3");
        assert!(!state.instances[&c1].config.contains_key(MOVE_CLAIM_KEY));
        let again = apply(&mut state, record("y", "m1", "m3")).unwrap_err();
        assert!(again.contains("no longer holds its claim"), "{again}");
        assert!(
            apply(&mut state, claim("m1", "z")).is_err(),
            "claimed from where it is not"
        );
        // A released claim can never be recorded.
        apply(&mut state, claim("m3", "r")).unwrap();
        apply(&mut state, release("r")).unwrap();
        assert!(apply(&mut state, record("r", "m3", "m2")).is_err());
        assert_eq!(state.instances[&c1].location, "m3");
        // An update keeps the claim, whatever its config says of it.
        apply(&mut state, claim("m3", "u")).unwrap();
        for config in [
            BTreeMap::new(),
            BTreeMap::from([(MOVE_CLAIM_KEY.to_string(), "forged".to_string())]),
        ] {
            apply(
                &mut state,
                InstanceCommand::InstanceUpdate {
                    project: DEFAULT_PROJECT.into(),
                    name: "c1".into(),
                    changes: InstanceChanges {
                        config: Some(config),
                        ..InstanceChanges::default()
                    },
                },
            )
            .unwrap();
            assert_eq!(state.instances[&c1].config[MOVE_CLAIM_KEY], "u");
        }
        // A recreate elsewhere (an unclaimed move) ends the claim.
        apply(
            &mut state,
            InstanceCommand::InstanceMove {
                project: DEFAULT_PROJECT.into(),
                name: "c1".into(),
                from: "m3".into(),
                location: "m2".into(),
                config: BTreeMap::new(),
            },
        )
        .unwrap();
        assert!(apply(&mut state, record("u", "m2", "m1")).is_err());
        let empty = claim("m2", "").check_fields().unwrap_err();
        assert!(empty.contains("move id"), "{empty}");
    }

    /// Goal: profiles expand in order under the instance's own keys; a profile in use cannot
    /// be deleted, the default one never; a renamed profile is renamed in its instances; an
    /// instance needs a valid host name, existing profiles, image and member.
    #[test]
    fn profiles_and_instances() {
        let mut state = with_members(&["m2"]);
        with_image(&mut state);
        let mut big = default_profile(DEFAULT_PROJECT);
        big.name = "big".into();
        big.devices.clear();
        big.config = BTreeMap::from([
            ("limits.cpu".into(), "4".into()),
            ("limits.memory".into(), "1GiB".into()),
        ]);
        apply(&mut state, InstanceCommand::ProfileCreate { profile: big }).unwrap();
        for bad in ["1abc", "-a", "a-", "a_b", "a.b", ""] {
            let error = apply(
                &mut state,
                InstanceCommand::InstanceCreate {
                    instance: instance(bad, &["default"]),
                },
            )
            .unwrap_err();
            assert!(error.contains("invalid instance name"), "{bad}: {error}");
        }
        let error = apply(
            &mut state,
            InstanceCommand::InstanceCreate {
                instance: instance("c1", &["default", "nope"]),
            },
        )
        .unwrap_err();
        assert!(error.contains("profile \"nope\" not found"), "{error}");
        apply(
            &mut state,
            InstanceCommand::InstanceCreate {
                instance: instance("c1", &["default", "big"]),
            },
        )
        .unwrap();
        let record = &state.instances[&key(DEFAULT_PROJECT, "c1")];
        let (config, devices) = state.expanded(record);
        assert_eq!(config["limits.cpu"], "2", "the instance's own key wins");
        assert_eq!(config["limits.memory"], "1GiB");
        assert_eq!(devices["root"]["pool"], DEFAULT_POOL);
        // Profiles apply in the order given: a later one's key wins over an earlier one's.
        let mut small = default_profile(DEFAULT_PROJECT);
        small.name = "small".into();
        small.devices.clear();
        small.config = BTreeMap::from([("limits.memory".into(), "512MiB".into())]);
        apply(
            &mut state,
            InstanceCommand::ProfileCreate { profile: small },
        )
        .unwrap();
        let in_order = |profiles: &[&str]| {
            let profiles: Vec<String> = profiles.iter().map(|name| name.to_string()).collect();
            state
                .expand(
                    DEFAULT_PROJECT,
                    &profiles,
                    &BTreeMap::new(),
                    &Devices::new(),
                )
                .0["limits.memory"]
                .clone()
        };
        assert_eq!(in_order(&["big", "small"]), "512MiB");
        assert_eq!(in_order(&["small", "big"]), "1GiB");
        let error = apply(
            &mut state,
            InstanceCommand::ProfileDelete {
                project: DEFAULT_PROJECT.into(),
                name: "big".into(),
            },
        )
        .unwrap_err();
        assert!(error.contains("used by instances: c1"), "{error}");
        apply(
            &mut state,
            InstanceCommand::ProfileRename {
                project: DEFAULT_PROJECT.into(),
                from: "big".into(),
                to: "large".into(),
            },
        )
        .unwrap();
        assert_eq!(
            state.instances[&key(DEFAULT_PROJECT, "c1")].profiles,
            ["default", "large"]
        );
        let error = state
            .apply(&Command::MemberRemove { name: "m1".into() })
            .unwrap_err();
        assert!(error.contains("still has instances (c1)"), "{error}");
        // A status from a member that is not the instance's location changes nothing.
        let error = apply(
            &mut state,
            InstanceCommand::InstanceStatus {
                project: DEFAULT_PROJECT.into(),
                name: "c1".into(),
                location: "m9".into(),
                status: InstanceStatus::Running,
                message: String::new(),
            },
        )
        .unwrap_err();
        assert!(error.contains("is on member \"m1\""), "{error}");
    }

    /// Goal: a project is its own namespace with its own default profile; the default project
    /// cannot be deleted, nor a project that has instances.
    #[test]
    fn projects() {
        let mut state = with_members(&[]);
        with_image(&mut state);
        apply(
            &mut state,
            InstanceCommand::ProjectCreate {
                project: Project {
                    name: "dev".into(),
                    description: String::new(),
                    config: BTreeMap::new(),
                },
            },
        )
        .unwrap();
        assert!(state.profiles.contains_key(&key("dev", DEFAULT_PROFILE)));
        let mut in_dev = instance("c1", &["default"]);
        in_dev.project = "dev".into();
        apply(
            &mut state,
            InstanceCommand::InstanceCreate {
                instance: in_dev.clone(),
            },
        )
        .unwrap();
        // The same name in another project is another instance.
        apply(
            &mut state,
            InstanceCommand::InstanceCreate {
                instance: instance("c1", &["default"]),
            },
        )
        .unwrap();
        assert!(apply(
            &mut state,
            InstanceCommand::ProjectDelete { name: "dev".into() }
        )
        .unwrap_err()
        .contains("still has instances"));
        assert!(apply(
            &mut state,
            InstanceCommand::ProjectDelete {
                name: DEFAULT_PROJECT.into()
            }
        )
        .unwrap_err()
        .contains("cannot be deleted"));
        apply(
            &mut state,
            InstanceCommand::InstanceDelete {
                project: "dev".into(),
                name: "c1".into(),
            },
        )
        .unwrap();
        apply(
            &mut state,
            InstanceCommand::ProjectDelete { name: "dev".into() },
        )
        .unwrap();
        assert!(!state.profiles.contains_key(&key("dev", DEFAULT_PROFILE)));
    }

    /// Goal: a project is renamed with its profiles; never the default project, nor one that
    /// has instances, nor onto an existing name.
    #[test]
    fn project_rename() {
        let mut state = with_members(&[]);
        with_image(&mut state);
        let project = |name: &str| Project {
            name: name.into(),
            description: String::new(),
            config: BTreeMap::new(),
        };
        for name in ["dev", "prod"] {
            apply(
                &mut state,
                InstanceCommand::ProjectCreate {
                    project: project(name),
                },
            )
            .unwrap();
        }
        let mut extra = default_profile("dev");
        extra.name = "extra".into();
        apply(
            &mut state,
            InstanceCommand::ProfileCreate { profile: extra },
        )
        .unwrap();
        let rename = |from: &str, to: &str| InstanceCommand::ProjectRename {
            from: from.into(),
            to: to.into(),
        };
        let error = apply(&mut state, rename(DEFAULT_PROJECT, "x")).unwrap_err();
        assert!(error.contains("cannot be renamed"), "{error}");
        let error = apply(&mut state, rename("dev", "prod")).unwrap_err();
        assert!(error.contains("already exists"), "{error}");
        let error = apply(&mut state, rename("nope", "x")).unwrap_err();
        assert!(error.contains("not found"), "{error}");
        let error = apply(&mut state, rename("dev", "a b")).unwrap_err();
        assert!(error.contains("invalid project name"), "{error}");
        let mut in_prod = instance("c1", &["default"]);
        in_prod.project = "prod".into();
        apply(
            &mut state,
            InstanceCommand::InstanceCreate { instance: in_prod },
        )
        .unwrap();
        let error = apply(&mut state, rename("prod", "x")).unwrap_err();
        assert!(error.contains("still has instances"), "{error}");
        apply(&mut state, rename("dev", "staging")).unwrap();
        assert!(!state.projects.contains_key("dev"));
        assert_eq!(state.projects["staging"].name, "staging");
        for name in [DEFAULT_PROFILE, "extra"] {
            assert!(!state.profiles.contains_key(&key("dev", name)));
            assert_eq!(state.profiles[&key("staging", name)].project, "staging");
        }
    }
}
