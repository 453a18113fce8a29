//! Profiles (`profiles.*`, `starling profile ...`): config and devices that instances take in
//! order, one namespace per project.
//!
//! A change is computed from the current record by [`edited_profile`] (pure), checked with
//! [`check_profile`] (config keys as LXD takes them, devices with the root-disk rule), and
//! proposed whole as `ProfileUpdate` on the leader. The rules on names, the default profile and
//! profiles in use are the store's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use starling_store::instances::{Devices, InstanceCommand, Profile, DEFAULT_PROJECT};
use starling_store::{ClusterState, Command};

use crate::cluster::join::WRITE_TIMEOUT;
use crate::instances::config_keys::{check_config, check_profile_key};
use crate::instances::devices::check_devices;
use crate::member::Member;
use crate::operation::Arguments;
use crate::Error;

/// Serializes the read-modify-write changes of profiles and projects on the leader, so that
/// two concurrent `set`s on one record both land (each proposes the whole record). The
/// proposal carries the record as it was read and is refused if it changed in between (a
/// write whose proposal timed out committing late), so none is ever applied over another.
pub(crate) static RECORD_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A profile operation; every one names the profile's project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ProfileOperation {
    /// `profiles.list([{project=}])`.
    List {
        /// The project.
        project: String,
    },
    /// `profiles.get(name [, {project=}])`.
    Get {
        /// The project.
        project: String,
        /// The profile.
        name: String,
    },
    /// `profiles.create(name [, {description=, config=, devices=, project=}])`.
    Create {
        /// The project.
        project: String,
        /// The profile.
        name: String,
        /// Its description.
        description: String,
        /// Its config.
        config: BTreeMap<String, String>,
        /// Its devices.
        devices: Devices,
    },
    /// `profiles.delete(name [, {project=}])`: not `default`, not one in use.
    Delete {
        /// The project.
        project: String,
        /// The profile.
        name: String,
    },
    /// `profiles.rename(old, new [, {project=}])`.
    Rename {
        /// The project.
        project: String,
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// `profiles.set(name, key, value [, {project=}])`; several keys at once from the CLI. An
    /// empty value unsets the key, as in LXD.
    Set {
        /// The project.
        project: String,
        /// The profile.
        name: String,
        /// Keys and their new values.
        values: BTreeMap<String, String>,
    },
    /// `profiles.unset(name, key [, {project=}])`.
    Unset {
        /// The project.
        project: String,
        /// The profile.
        name: String,
        /// The keys.
        keys: Vec<String>,
    },
    /// `profiles.edit(name, {description=, config=, devices=} [, {project=}])`: each field
    /// given replaces the profile's whole field.
    Edit {
        /// The project.
        project: String,
        /// The profile.
        name: String,
        /// New description.
        description: Option<String>,
        /// New config (whole).
        config: Option<BTreeMap<String, String>>,
        /// New devices (whole).
        devices: Option<Devices>,
    },
    /// `profiles.device_add(name, device, {type=, ...} [, {project=}])`.
    DeviceAdd {
        /// The project.
        project: String,
        /// The profile.
        name: String,
        /// The device's name.
        device: String,
        /// Its keys (`type` at least).
        settings: BTreeMap<String, String>,
    },
    /// `profiles.device_set(name, device, key, value [, {project=}])`; an empty value removes
    /// the key.
    DeviceSet {
        /// The project.
        project: String,
        /// The profile.
        name: String,
        /// The device's name.
        device: String,
        /// Keys and their new values.
        settings: BTreeMap<String, String>,
    },
    /// `profiles.device_remove(name, device [, {project=}])`.
    DeviceRemove {
        /// The project.
        project: String,
        /// The profile.
        name: String,
        /// The device's name.
        device: String,
    },
}

impl ProfileOperation {
    /// Whether it changes the cluster state.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            ProfileOperation::List { .. } | ProfileOperation::Get { .. }
        )
    }

    /// Builds the operation of a `profiles.*` call.
    pub(crate) fn from_call(arguments: &Arguments) -> Result<ProfileOperation, Error> {
        let project = |position| project_option(arguments, position);
        let operation = match arguments.name {
            "profiles.list" => ProfileOperation::List {
                project: project(0)?,
            },
            "profiles.get" => ProfileOperation::Get {
                name: arguments.string(0, "name")?,
                project: project(1)?,
            },
            "profiles.create" => {
                let options = options(
                    arguments,
                    1,
                    &["description", "config", "devices", "project"],
                )?;
                ProfileOperation::Create {
                    name: arguments.string(0, "name")?,
                    description: text_field(arguments, &options, "description")?
                        .unwrap_or_default(),
                    config: config_field(arguments, &options)?.unwrap_or_default(),
                    devices: devices_field(arguments, &options)?.unwrap_or_default(),
                    project: text_field(arguments, &options, "project")?
                        .unwrap_or_else(|| DEFAULT_PROJECT.to_string()),
                }
            }
            "profiles.delete" => ProfileOperation::Delete {
                name: arguments.string(0, "name")?,
                project: project(1)?,
            },
            "profiles.rename" => ProfileOperation::Rename {
                from: arguments.string(0, "old")?,
                to: arguments.string(1, "new")?,
                project: project(2)?,
            },
            "profiles.set" => ProfileOperation::Set {
                name: arguments.string(0, "name")?,
                values: BTreeMap::from([(
                    arguments.string(1, "key")?,
                    arguments.scalar(2, "value")?,
                )]),
                project: project(3)?,
            },
            "profiles.unset" => ProfileOperation::Unset {
                name: arguments.string(0, "name")?,
                keys: vec![arguments.string(1, "key")?],
                project: project(2)?,
            },
            "profiles.edit" => {
                if arguments.args.get(1).is_none() {
                    return Err(Error::Refused(format!(
                        "{}: argument #2 (changes) is missing",
                        arguments.name
                    )));
                }
                let changes = options(arguments, 1, &["description", "config", "devices"])?;
                ProfileOperation::Edit {
                    name: arguments.string(0, "name")?,
                    description: text_field(arguments, &changes, "description")?,
                    config: config_field(arguments, &changes)?,
                    devices: devices_field(arguments, &changes)?,
                    project: project(2)?,
                }
            }
            "profiles.device_add" => ProfileOperation::DeviceAdd {
                name: arguments.string(0, "name")?,
                device: arguments.string(1, "device")?,
                settings: arguments.string_map(2, "settings")?,
                project: project(3)?,
            },
            "profiles.device_set" => ProfileOperation::DeviceSet {
                name: arguments.string(0, "name")?,
                device: arguments.string(1, "device")?,
                settings: BTreeMap::from([(
                    arguments.string(2, "key")?,
                    arguments.scalar(3, "value")?,
                )]),
                project: project(4)?,
            },
            "profiles.device_remove" => ProfileOperation::DeviceRemove {
                name: arguments.string(0, "name")?,
                device: arguments.string(1, "device")?,
                project: project(2)?,
            },
            other => return Err(Error::Refused(format!("unknown built-in {other}"))),
        };
        Ok(operation)
    }
}

/// A profile as `profiles.get` shows it (LXD's fields).
pub fn profile_json(state: &ClusterState, profile: &Profile) -> Value {
    json!({
        "name": profile.name,
        "description": profile.description,
        "config": profile.config,
        "devices": profile.devices,
        "project": profile.project,
        "used_by": used_by(state, &profile.project, &profile.name),
    })
}

/// The instances using a profile, as LXD's `used_by` names them.
fn used_by(state: &ClusterState, project: &str, name: &str) -> Vec<String> {
    state
        .instances
        .values()
        .filter(|instance| {
            instance.project == project && instance.profiles.iter().any(|p| p == name)
        })
        .map(|instance| object_url("instances", &instance.name, project))
        .collect()
}

/// An object's URL as LXD writes it in `used_by`: `?project=` only outside the default project.
pub(crate) fn object_url(kind: &str, name: &str, project: &str) -> String {
    if project == DEFAULT_PROJECT {
        format!("/1.0/{kind}/{name}")
    } else {
        format!("/1.0/{kind}/{name}?project={project}")
    }
}

/// The profile after a change (`Set`, `Unset`, `Edit`, `Device*`), not yet checked; `Err` for
/// a device that must (or must not) exist. Other operations leave it as it is.
pub fn edited_profile(current: &Profile, operation: &ProfileOperation) -> Result<Profile, String> {
    let mut profile = current.clone();
    let missing = |device: &str| {
        format!(
            "device \"{device}\" doesn't exist in profile \"{}\"",
            current.name
        )
    };
    match operation {
        ProfileOperation::Set { values, .. } => {
            for (key, value) in values {
                if value.is_empty() {
                    profile.config.remove(key);
                } else {
                    profile.config.insert(key.clone(), value.clone());
                }
            }
        }
        ProfileOperation::Unset { keys, .. } => {
            for key in keys {
                profile.config.remove(key);
            }
        }
        ProfileOperation::Edit {
            description,
            config,
            devices,
            ..
        } => {
            if let Some(description) = description {
                profile.description = description.clone();
            }
            if let Some(config) = config {
                profile.config = config.clone();
            }
            if let Some(devices) = devices {
                profile.devices = devices.clone();
            }
        }
        ProfileOperation::DeviceAdd {
            device, settings, ..
        } => {
            if profile.devices.contains_key(device) {
                return Err(format!(
                    "the device \"{device}\" already exists in profile \"{}\"",
                    current.name
                ));
            }
            profile.devices.insert(device.clone(), settings.clone());
        }
        ProfileOperation::DeviceSet {
            device, settings, ..
        } => {
            let keys = profile
                .devices
                .get_mut(device)
                .ok_or_else(|| missing(device))?;
            for (key, value) in settings {
                if value.is_empty() {
                    keys.remove(key);
                } else {
                    keys.insert(key.clone(), value.clone());
                }
            }
        }
        ProfileOperation::DeviceRemove { device, .. } => {
            profile
                .devices
                .remove(device)
                .ok_or_else(|| missing(device))?;
        }
        ProfileOperation::List { .. }
        | ProfileOperation::Get { .. }
        | ProfileOperation::Create { .. }
        | ProfileOperation::Delete { .. }
        | ProfileOperation::Rename { .. } => {}
    }
    Ok(profile)
}

/// Checks a profile's config keys ([`check_profile_key`]) and devices ([`check_devices`]);
/// `pool_exists` says whether a storage pool exists.
pub fn check_profile(profile: &Profile, pool_exists: &dyn Fn(&str) -> bool) -> Result<(), String> {
    check_config(&profile.config, check_profile_key)?;
    check_devices(&profile.devices, pool_exists)
}

impl Member {
    /// Runs a profile operation on the leader.
    pub(crate) async fn profile_here(&self, operation: &ProfileOperation) -> Result<Value, Error> {
        match operation {
            ProfileOperation::List { project } => self.local_state(|state| {
                project_known(state, project)?;
                Ok(Value::Array(
                    state
                        .profiles
                        .values()
                        .filter(|profile| profile.project == *project)
                        .map(|profile| profile_json(state, profile))
                        .collect(),
                ))
            }),
            ProfileOperation::Get { project, name } => self.local_state(|state| {
                project_known(state, project)?;
                let profile = find_profile(state, project, name)?;
                Ok(profile_json(state, &profile))
            }),
            ProfileOperation::Create {
                project,
                name,
                description,
                config,
                devices,
            } => {
                let profile = Profile {
                    project: project.clone(),
                    name: name.clone(),
                    description: description.clone(),
                    config: config.clone(),
                    devices: devices.clone(),
                };
                self.local_state(|state| checked(state, &profile))?;
                self.propose_profile(InstanceCommand::ProfileCreate { profile })
                    .await
            }
            ProfileOperation::Delete { project, name } => {
                self.propose_profile(InstanceCommand::ProfileDelete {
                    project: project.clone(),
                    name: name.clone(),
                })
                .await
            }
            ProfileOperation::Rename { project, from, to } => {
                self.propose_profile(InstanceCommand::ProfileRename {
                    project: project.clone(),
                    from: from.clone(),
                    to: to.clone(),
                })
                .await
            }
            ProfileOperation::Set { project, name, .. }
            | ProfileOperation::Unset { project, name, .. }
            | ProfileOperation::Edit { project, name, .. }
            | ProfileOperation::DeviceAdd { project, name, .. }
            | ProfileOperation::DeviceSet { project, name, .. }
            | ProfileOperation::DeviceRemove { project, name, .. } => {
                let _one_at_a_time = RECORD_WRITES.lock().await;
                // A new leader may not have applied all that is committed yet.
                self.linearize().await?;
                let (before, profile) = self.local_state(|state| {
                    project_known(state, project)?;
                    let current = find_profile(state, project, name)?;
                    let profile = edited_profile(&current, operation).map_err(Error::Refused)?;
                    checked(state, &profile)?;
                    Ok::<_, Error>((current, profile))
                })?;
                self.propose_profile(InstanceCommand::ProfileUpdateFrom { before, profile })
                    .await
            }
        }
    }

    async fn propose_profile(&self, command: InstanceCommand) -> Result<Value, Error> {
        self.propose(Command::Instance(command), WRITE_TIMEOUT)
            .await?;
        Ok(Value::Null)
    }
}

/// [`check_profile`] against the pools of `state`.
fn checked(state: &ClusterState, profile: &Profile) -> Result<(), Error> {
    check_profile(profile, &|pool| state.pools.contains_key(pool)).map_err(Error::Refused)
}

pub(crate) fn project_known(state: &ClusterState, project: &str) -> Result<(), Error> {
    if state.projects.contains_key(project) {
        Ok(())
    } else {
        Err(Error::Refused(format!("project \"{project}\" not found")))
    }
}

fn find_profile(state: &ClusterState, project: &str, name: &str) -> Result<Profile, Error> {
    state
        .profiles
        .get(&(project.to_string(), name.to_string()))
        .cloned()
        .ok_or_else(|| {
            Error::Refused(format!(
                "profile \"{name}\" not found in project \"{project}\""
            ))
        })
}

/// The options table at `position` (absent: empty), refusing fields not in `known`.
pub(crate) fn options(
    arguments: &Arguments,
    position: usize,
    known: &[&str],
) -> Result<Map<String, Value>, Error> {
    match arguments.args.get(position) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Array(items)) if items.is_empty() => Ok(Map::new()),
        Some(Value::Object(map)) => {
            if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
                return Err(Error::Refused(format!(
                    "{}: unknown field \"{unknown}\" (fields: {})",
                    arguments.name,
                    known.join(", ")
                )));
            }
            Ok(map.clone())
        }
        Some(other) => Err(arguments.wrong_table(position, "options", other)),
    }
}

/// The `project` of an options table at `position` (`default` when not given).
fn project_option(arguments: &Arguments, position: usize) -> Result<String, Error> {
    let options = options(arguments, position, &["project"])?;
    Ok(text_field(arguments, &options, "project")?.unwrap_or_else(|| DEFAULT_PROJECT.to_string()))
}

/// A text field of a table (a number or boolean is taken as text).
pub(crate) fn text_field(
    arguments: &Arguments,
    table: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, Error> {
    match table.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => crate::operation::scalar_text(value)
            .map(Some)
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{}: field \"{field}\" must be a string, not a table",
                    arguments.name
                ))
            }),
    }
}

/// The `config` field of a table: keys to scalar values.
pub(crate) fn config_field(
    arguments: &Arguments,
    table: &Map<String, Value>,
) -> Result<Option<BTreeMap<String, String>>, Error> {
    match table.get("config") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Arguments {
            name: arguments.name,
            args: std::slice::from_ref(value),
        }
        .string_map(0, "config")
        .map(Some),
    }
}

/// The `devices` field of a table: device names to tables of scalar values.
fn devices_field(
    arguments: &Arguments,
    table: &Map<String, Value>,
) -> Result<Option<Devices>, Error> {
    let devices = match table.get("devices") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) if items.is_empty() => return Ok(Some(Devices::new())),
        Some(Value::Object(devices)) => devices,
        Some(_) => {
            return Err(Error::Refused(format!(
                "{}: field \"devices\" must be a table of devices",
                arguments.name
            )))
        }
    };
    devices
        .iter()
        .map(|(device, settings)| {
            let settings = Arguments {
                name: arguments.name,
                args: std::slice::from_ref(settings),
            }
            .string_map(0, &format!("devices.{device}"))?;
            Ok((device.clone(), settings))
        })
        .collect::<Result<Devices, Error>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        starling_store::instances::default_profile(DEFAULT_PROJECT)
    }

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn call(name: &str, args: &[Value]) -> Result<ProfileOperation, Error> {
        ProfileOperation::from_call(&Arguments { name, args })
    }

    #[test]
    fn calls_name_their_project() {
        assert_eq!(
            call("profiles.list", &[]).unwrap(),
            ProfileOperation::List {
                project: "default".into()
            }
        );
        assert_eq!(
            call("profiles.get", &[json!("p"), json!({"project": "dev"})]).unwrap(),
            ProfileOperation::Get {
                project: "dev".into(),
                name: "p".into()
            }
        );
        let create = call(
            "profiles.create",
            &[
                json!("p"),
                json!({"config": {"limits.cpu": 2}, "devices": {"root": {"type": "disk", "path": "/", "pool": "default"}}, "project": "dev"}),
            ],
        )
        .unwrap();
        let ProfileOperation::Create {
            project,
            config,
            devices,
            ..
        } = create
        else {
            panic!("not a create: {create:?}");
        };
        assert_eq!(project, "dev");
        assert_eq!(config["limits.cpu"], "2");
        assert_eq!(devices["root"]["pool"], "default");
        let error = call("profiles.create", &[json!("p"), json!({"projet": "dev"})])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field \"projet\""), "{error}");
        let error = call("profiles.edit", &[json!("p")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("argument #2 (changes) is missing"),
            "{error}"
        );
    }

    #[test]
    fn changes_apply_to_the_current_record() {
        let current = profile();
        let set = ProfileOperation::Set {
            project: "default".into(),
            name: "default".into(),
            values: settings(&[("limits.cpu", "2"), ("user.a", "b")]),
        };
        let changed = edited_profile(&current, &set).unwrap();
        assert_eq!(changed.config["limits.cpu"], "2");
        let unset = ProfileOperation::Set {
            project: "default".into(),
            name: "default".into(),
            values: settings(&[("user.a", "")]),
        };
        assert!(!edited_profile(&changed, &unset)
            .unwrap()
            .config
            .contains_key("user.a"));
        let add = ProfileOperation::DeviceAdd {
            project: "default".into(),
            name: "default".into(),
            device: "root".into(),
            settings: settings(&[("type", "none")]),
        };
        let error = edited_profile(&current, &add).unwrap_err();
        assert!(error.contains("already exists"), "{error}");
        let remove = ProfileOperation::DeviceRemove {
            project: "default".into(),
            name: "default".into(),
            device: "eth9".into(),
        };
        let error = edited_profile(&current, &remove).unwrap_err();
        assert!(error.contains("doesn't exist"), "{error}");
        let resize = ProfileOperation::DeviceSet {
            project: "default".into(),
            name: "default".into(),
            device: "root".into(),
            settings: settings(&[("size", "10GiB")]),
        };
        assert_eq!(
            edited_profile(&current, &resize).unwrap().devices["root"]["size"],
            "10GiB"
        );
    }

    /// Goal: `used_by` names the instances of the profile's project only, with `?project=`
    /// outside the default project, as LXD does.
    #[test]
    fn used_by_names_instances_as_lxd_does() {
        let mut state = ClusterState::default();
        for (project, name) in [("default", "c1"), ("dev", "c2"), ("dev", "c3")] {
            let instance = starling_store::instances::Instance {
                project: project.into(),
                name: name.into(),
                kind: "container".into(),
                architecture: "x86_64".into(),
                config: BTreeMap::new(),
                devices: Devices::new(),
                profiles: if name == "c3" {
                    vec![]
                } else {
                    vec!["default".into()]
                },
                location: "m1".into(),
                status: Default::default(),
                status_message: String::new(),
                created_at_ms: 0,
                description: String::new(),
                ephemeral: false,
                image: String::new(),
            };
            state
                .instances
                .insert((project.into(), name.into()), instance);
        }
        let in_default = profile_json(&state, &profile());
        assert_eq!(in_default["used_by"], json!(["/1.0/instances/c1"]));
        let in_dev = profile_json(&state, &starling_store::instances::default_profile("dev"));
        assert_eq!(in_dev["used_by"], json!(["/1.0/instances/c2?project=dev"]));
    }

    #[test]
    fn checks_cover_keys_and_devices() {
        let pools = |pool: &str| pool == "default";
        let mut bad = profile();
        bad.config.insert("limits.memory".into(), "lots".into());
        let error = check_profile(&bad, &pools).unwrap_err();
        assert!(
            error.contains("limits.memory") && error.contains("lots"),
            "{error}"
        );
        let mut bad = profile();
        bad.config.insert("volatile.x".into(), "1".into());
        assert!(check_profile(&bad, &pools).is_err());
        let mut second_root = profile();
        second_root
            .devices
            .insert("root2".into(), profile().devices["root"].clone());
        let error = check_profile(&second_root, &pools).unwrap_err();
        assert!(error.contains("only one root disk"), "{error}");
        assert!(check_profile(&profile(), &pools).is_ok());
    }
}
