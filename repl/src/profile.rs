//! `starling profile ...`: lxc's profile commands over the `profiles.*` operations, in the
//! project of `--project`.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Map, Value};
use starling_runtime::instances::profiles::ProfileOperation;
use starling_runtime::{Client, Operation};

use crate::format::{self, Column, Format};
use crate::keys::{parse_assignments, parse_pairs, read_stdin_values};

/// `starling profile`.
#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Creates a profile.
    Create {
        /// The profile.
        name: String,
        /// Its description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Deletes a profile (not `default`, not one an instance uses).
    Delete {
        /// The profile.
        name: String,
    },
    /// Lists profiles.
    List,
    /// Shows a profile (YAML).
    Show {
        /// The profile.
        name: String,
    },
    /// Replaces a profile's description, config and devices with YAML from stdin (the fields
    /// `profile show` prints; the others are ignored).
    Edit {
        /// The profile.
        name: String,
    },
    /// Prints a config key's value.
    Get {
        /// The profile.
        name: String,
        /// The key.
        key: String,
    },
    /// Sets config keys: `set NAME K1=V1 [K2=V2 ...]` or `set NAME KEY VALUE`; a value of `-`
    /// is read from stdin.
    Set {
        /// The profile.
        name: String,
        /// KEY=VALUE pairs, or KEY VALUE.
        #[arg(required = true, num_args = 1..)]
        pairs: Vec<String>,
    },
    /// Unsets a config key.
    Unset {
        /// The profile.
        name: String,
        /// The key.
        key: String,
    },
    /// Renames a profile.
    Rename {
        /// Current name.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Copies a profile (to another project with --target-project).
    Copy {
        /// The profile to copy.
        source: String,
        /// The new profile.
        destination: String,
        /// The project to copy it to (default: the same).
        #[arg(long)]
        target_project: Option<String>,
    },
    /// A profile's devices.
    #[command(subcommand)]
    Device(DeviceCommand),
}

/// `starling profile device`.
#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Adds a device: `device add NAME DEVICE TYPE [K=V ...]`.
    Add {
        /// The profile.
        name: String,
        /// The device's name.
        device: String,
        /// Its type (disk, nic, unix-char, none, ...).
        device_type: String,
        /// Its keys, as K=V.
        settings: Vec<String>,
    },
    /// Sets device keys: `device set NAME DEVICE K=V ...` or `... KEY VALUE`.
    Set {
        /// The profile.
        name: String,
        /// The device's name.
        device: String,
        /// KEY=VALUE pairs, or KEY VALUE.
        #[arg(required = true, num_args = 1..)]
        pairs: Vec<String>,
    },
    /// Unsets a device key.
    Unset {
        /// The profile.
        name: String,
        /// The device's name.
        device: String,
        /// The key.
        key: String,
    },
    /// Prints a device key's value.
    Get {
        /// The profile.
        name: String,
        /// The device's name.
        device: String,
        /// The key.
        key: String,
    },
    /// Removes a device.
    Remove {
        /// The profile.
        name: String,
        /// The device's name.
        device: String,
    },
    /// Lists a profile's devices.
    List {
        /// The profile.
        name: String,
    },
    /// Shows a profile's devices (YAML).
    Show {
        /// The profile.
        name: String,
    },
}

const PROFILE_COLUMNS: &[Column] = &[
    Column {
        header: "NAME",
        field: "name",
    },
    Column {
        header: "DESCRIPTION",
        field: "description",
    },
    Column {
        header: "USED BY",
        field: "used_by_count",
    },
];

const DEVICE_COLUMNS: &[Column] = &[
    Column {
        header: "NAME",
        field: "name",
    },
    Column {
        header: "TYPE",
        field: "type",
    },
];

/// The format for one record: YAML unless another is asked for.
fn record_format(format: Format) -> Format {
    if format == Format::Table {
        Format::Yaml
    } else {
        format
    }
}

/// Records with the count of their users, for tables (`profile list`, `project list`).
pub fn with_used_by_count(records: Value) -> Value {
    Value::Array(
        records
            .as_array()
            .into_iter()
            .flatten()
            .map(|record| {
                let mut row = record.clone();
                let count = record["used_by"].as_array().map_or(0, Vec::len);
                row["used_by_count"] = json!(count.to_string());
                row
            })
            .collect(),
    )
}

/// Reads a YAML mapping from stdin (for `edit`).
pub fn read_yaml_mapping() -> Result<Map<String, Value>> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading YAML from stdin")?;
    let value: Value = serde_yaml::from_str(&text).context("the input is not YAML")?;
    match value {
        Value::Object(map) => Ok(map),
        _ => bail!("expected a YAML mapping (the fields `show` prints)"),
    }
}

/// The changes of `profile edit`: description, config and devices, each replaced whole (a
/// field left out becomes empty, as with `lxc profile edit`).
fn edit_changes(yaml: &Map<String, Value>) -> Value {
    let field = |key: &str, empty: Value| match yaml.get(key) {
        None | Some(Value::Null) => empty,
        Some(value) => value.clone(),
    };
    json!({
        "description": field("description", json!("")),
        "config": field("config", json!({})),
        "devices": field("devices", json!({})),
    })
}

/// Runs `starling profile ...` in `project` through `client`.
pub async fn run(
    format: Format,
    project: &str,
    client: &Client,
    command: &ProfileCommand,
) -> Result<()> {
    let profiles = Profiles { client, project };
    match command {
        ProfileCommand::Create { name, description } => {
            profiles
                .run(ProfileOperation::Create {
                    project: project.to_string(),
                    name: name.clone(),
                    description: description.clone(),
                    config: BTreeMap::new(),
                    devices: BTreeMap::new(),
                })
                .await?;
            println!("Profile {name} created");
        }
        ProfileCommand::Delete { name } => {
            profiles
                .run(ProfileOperation::Delete {
                    project: project.to_string(),
                    name: name.clone(),
                })
                .await?;
            println!("Profile {name} deleted");
        }
        ProfileCommand::List => {
            let list = profiles
                .run(ProfileOperation::List {
                    project: project.to_string(),
                })
                .await?;
            let shown = match format {
                Format::Table | Format::Csv => with_used_by_count(list),
                _ => list,
            };
            println!("{}", format::render(&shown, format, PROFILE_COLUMNS));
        }
        ProfileCommand::Show { name } => {
            let profile = profiles.get(name).await?;
            println!("{}", format::render(&profile, record_format(format), &[]));
        }
        ProfileCommand::Edit { name } => {
            let yaml = read_yaml_mapping()?;
            let call = [
                json!(name),
                edit_changes(&yaml),
                json!({ "project": project }),
            ];
            profiles
                .client
                .operation(Operation::from_call("profiles.edit", &call)?)
                .await?;
        }
        ProfileCommand::Get { name, key } => {
            let profile = profiles.get(name).await?;
            println!("{}", profile["config"][key].as_str().unwrap_or_default());
        }
        ProfileCommand::Set { name, pairs } => {
            let values = read_stdin_values(parse_pairs(pairs)?)?;
            profiles
                .run(ProfileOperation::Set {
                    project: project.to_string(),
                    name: name.clone(),
                    values,
                })
                .await?;
        }
        ProfileCommand::Unset { name, key } => {
            profiles
                .run(ProfileOperation::Unset {
                    project: project.to_string(),
                    name: name.clone(),
                    keys: vec![key.clone()],
                })
                .await?;
        }
        ProfileCommand::Rename { name, new_name } => {
            profiles
                .run(ProfileOperation::Rename {
                    project: project.to_string(),
                    from: name.clone(),
                    to: new_name.clone(),
                })
                .await?;
            println!("Profile {name} renamed to {new_name}");
        }
        ProfileCommand::Copy {
            source,
            destination,
            target_project,
        } => {
            profiles
                .copy(source, destination, target_project.as_deref())
                .await?
        }
        ProfileCommand::Device(command) => device(format, &profiles, command).await?,
    }
    Ok(())
}

/// The `profiles.*` operations of one project.
struct Profiles<'a> {
    client: &'a Client,
    project: &'a str,
}

impl Profiles<'_> {
    async fn run(&self, operation: ProfileOperation) -> Result<Value> {
        Ok(self.client.operation(Operation::Profile(operation)).await?)
    }

    async fn get(&self, name: &str) -> Result<Value> {
        self.run(ProfileOperation::Get {
            project: self.project.to_string(),
            name: name.to_string(),
        })
        .await
    }

    /// `profile copy`: the source's description, config and devices in a new profile.
    async fn copy(&self, source: &str, destination: &str, target: Option<&str>) -> Result<()> {
        let profile = self.get(source).await?;
        let create = Operation::from_call(
            "profiles.create",
            &[
                json!(destination),
                json!({
                    "description": profile["description"],
                    "config": profile["config"],
                    "devices": profile["devices"],
                    "project": target.unwrap_or(self.project),
                }),
            ],
        )?;
        self.client.operation(create).await?;
        Ok(())
    }

    async fn devices(&self, name: &str) -> Result<Value> {
        let profile = self.get(name).await?;
        Ok(profile["devices"].clone())
    }
}

async fn device(format: Format, profiles: &Profiles<'_>, command: &DeviceCommand) -> Result<()> {
    let project = profiles.project.to_string();
    match command {
        DeviceCommand::Add {
            name,
            device,
            device_type,
            settings,
        } => {
            let mut settings: BTreeMap<String, String> =
                parse_assignments(settings)?.into_iter().collect();
            if settings
                .insert("type".to_string(), device_type.clone())
                .is_some()
            {
                bail!("give the type once: `device add {name} {device} TYPE [K=V...]`");
            }
            profiles
                .run(ProfileOperation::DeviceAdd {
                    project,
                    name: name.clone(),
                    device: device.clone(),
                    settings,
                })
                .await?;
            println!("Device {device} added to {name}");
        }
        DeviceCommand::Set {
            name,
            device,
            pairs,
        } => {
            let settings = parse_pairs(pairs)?.into_iter().collect();
            profiles
                .run(ProfileOperation::DeviceSet {
                    project,
                    name: name.clone(),
                    device: device.clone(),
                    settings,
                })
                .await?;
        }
        DeviceCommand::Unset { name, device, key } => {
            profiles
                .run(ProfileOperation::DeviceSet {
                    project,
                    name: name.clone(),
                    device: device.clone(),
                    settings: BTreeMap::from([(key.clone(), String::new())]),
                })
                .await?;
        }
        DeviceCommand::Get { name, device, key } => {
            let devices = profiles.devices(name).await?;
            let settings = devices.get(device).ok_or_else(|| {
                anyhow!("device \"{device}\" doesn't exist in profile \"{name}\"")
            })?;
            println!("{}", settings[key].as_str().unwrap_or_default());
        }
        DeviceCommand::Remove { name, device } => {
            profiles
                .run(ProfileOperation::DeviceRemove {
                    project,
                    name: name.clone(),
                    device: device.clone(),
                })
                .await?;
            println!("Device {device} removed from {name}");
        }
        DeviceCommand::List { name } => {
            let devices = profiles.devices(name).await?;
            let shown = match format {
                Format::Table | Format::Csv => device_rows(&devices),
                _ => devices,
            };
            println!("{}", format::render(&shown, format, DEVICE_COLUMNS));
        }
        DeviceCommand::Show { name } => {
            let devices = profiles.devices(name).await?;
            println!("{}", format::render(&devices, record_format(format), &[]));
        }
    }
    Ok(())
}

/// One row per device: its name and type.
fn device_rows(devices: &Value) -> Value {
    Value::Array(
        devices
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, settings)| json!({"name": name, "type": settings["type"]}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_replaces_the_three_fields() {
        let yaml: Value = serde_yaml::from_str(
            "name: a\ndescription: web\nconfig:\n  limits.cpu: 2\nused_by: []\nproject: default\n",
        )
        .unwrap();
        let changes = edit_changes(yaml.as_object().unwrap());
        assert_eq!(
            changes,
            json!({"description": "web", "config": {"limits.cpu": 2}, "devices": {}})
        );
        // The YAML's numbers become text in the operation.
        let operation =
            Operation::from_call("profiles.edit", &[json!("b"), changes, json!({})]).unwrap();
        let Operation::Profile(ProfileOperation::Edit { config, .. }) = operation else {
            panic!("not an edit");
        };
        assert_eq!(config.unwrap()["limits.cpu"], "2");
    }

    #[test]
    fn device_rows_name_their_type() {
        let rows = device_rows(&json!({"root": {"type": "disk", "path": "/"}}));
        assert_eq!(rows, json!([{"name": "root", "type": "disk"}]));
    }
}
