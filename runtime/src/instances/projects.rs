//! Projects (`projects.*`, `starling project ...`): namespaces of instances and profiles. A new
//! project gets its own `default` profile (the store makes it). The rules on names, the default
//! project, and projects with instances are the store's; config keys are checked here with
//! [`check_project_key`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::instances::{InstanceCommand, Project};
use starling_store::{ClusterState, Command};

use crate::cluster::join::WRITE_TIMEOUT;
use crate::instances::config_keys::{check_config, check_project_key};
use crate::instances::profiles::{config_field, object_url, options, text_field, RECORD_WRITES};
use crate::member::Member;
use crate::operation::Arguments;
use crate::Error;

/// A project operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ProjectOperation {
    /// `projects.list()`.
    List,
    /// `projects.get(name)`.
    Get {
        /// The project.
        name: String,
    },
    /// `projects.create(name [, {description=, config=}])`.
    Create {
        /// The project.
        name: String,
        /// Its description.
        description: String,
        /// Its config.
        config: BTreeMap<String, String>,
    },
    /// `projects.delete(name)`: not `default`, only an empty one.
    Delete {
        /// The project.
        name: String,
    },
    /// `projects.rename(old, new)`: not `default`, not one with instances.
    Rename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// `projects.set(name, key, value)`; several keys at once from the CLI. An empty value
    /// unsets the key.
    Set {
        /// The project.
        name: String,
        /// Keys and their new values.
        values: BTreeMap<String, String>,
    },
    /// `projects.unset(name, key)`.
    Unset {
        /// The project.
        name: String,
        /// The keys.
        keys: Vec<String>,
    },
    /// `projects.edit(name, {description=, config=})`: each field given replaces the whole
    /// field.
    Edit {
        /// The project.
        name: String,
        /// New description.
        description: Option<String>,
        /// New config (whole).
        config: Option<BTreeMap<String, String>>,
    },
}

impl ProjectOperation {
    /// Whether it changes the cluster state.
    pub fn is_write(&self) -> bool {
        !matches!(self, ProjectOperation::List | ProjectOperation::Get { .. })
    }

    /// Builds the operation of a `projects.*` call.
    pub(crate) fn from_call(arguments: &Arguments) -> Result<ProjectOperation, Error> {
        let operation = match arguments.name {
            "projects.list" => ProjectOperation::List,
            "projects.get" => ProjectOperation::Get {
                name: arguments.string(0, "name")?,
            },
            "projects.create" => {
                let options = options(arguments, 1, &["description", "config"])?;
                ProjectOperation::Create {
                    name: arguments.string(0, "name")?,
                    description: text_field(arguments, &options, "description")?
                        .unwrap_or_default(),
                    config: config_field(arguments, &options)?.unwrap_or_default(),
                }
            }
            "projects.delete" => ProjectOperation::Delete {
                name: arguments.string(0, "name")?,
            },
            "projects.rename" => ProjectOperation::Rename {
                from: arguments.string(0, "old")?,
                to: arguments.string(1, "new")?,
            },
            "projects.set" => ProjectOperation::Set {
                name: arguments.string(0, "name")?,
                values: BTreeMap::from([(
                    arguments.string(1, "key")?,
                    arguments.scalar(2, "value")?,
                )]),
            },
            "projects.unset" => ProjectOperation::Unset {
                name: arguments.string(0, "name")?,
                keys: vec![arguments.string(1, "key")?],
            },
            "projects.edit" => {
                if arguments.args.get(1).is_none() {
                    return Err(Error::Refused(format!(
                        "{}: argument #2 (changes) is missing",
                        arguments.name
                    )));
                }
                let changes = options(arguments, 1, &["description", "config"])?;
                ProjectOperation::Edit {
                    name: arguments.string(0, "name")?,
                    description: text_field(arguments, &changes, "description")?,
                    config: config_field(arguments, &changes)?,
                }
            }
            other => return Err(Error::Refused(format!("unknown built-in {other}"))),
        };
        Ok(operation)
    }
}

/// A project as `projects.get` shows it (LXD's fields); `used_by` lists its profiles and
/// instances.
pub fn project_json(state: &ClusterState, project: &Project) -> Value {
    let profiles = state
        .profiles
        .values()
        .filter(|profile| profile.project == project.name)
        .map(|profile| object_url("profiles", &profile.name, &project.name));
    let instances = state
        .instances
        .values()
        .filter(|instance| instance.project == project.name)
        .map(|instance| object_url("instances", &instance.name, &project.name));
    let used_by: Vec<String> = instances.chain(profiles).collect();
    json!({
        "name": project.name,
        "description": project.description,
        "config": project.config,
        "used_by": used_by,
    })
}

/// The project after a change (`Set`, `Unset`, `Edit`), not yet checked. Other operations
/// leave it as it is.
pub fn edited_project(current: &Project, operation: &ProjectOperation) -> Project {
    let mut project = current.clone();
    match operation {
        ProjectOperation::Set { values, .. } => {
            for (key, value) in values {
                if value.is_empty() {
                    project.config.remove(key);
                } else {
                    project.config.insert(key.clone(), value.clone());
                }
            }
        }
        ProjectOperation::Unset { keys, .. } => {
            for key in keys {
                project.config.remove(key);
            }
        }
        ProjectOperation::Edit {
            description,
            config,
            ..
        } => {
            if let Some(description) = description {
                project.description = description.clone();
            }
            if let Some(config) = config {
                project.config = config.clone();
            }
        }
        ProjectOperation::List
        | ProjectOperation::Get { .. }
        | ProjectOperation::Create { .. }
        | ProjectOperation::Delete { .. }
        | ProjectOperation::Rename { .. } => {}
    }
    project
}

impl Member {
    /// Runs a project operation on the leader.
    pub(crate) async fn project_here(&self, operation: &ProjectOperation) -> Result<Value, Error> {
        match operation {
            ProjectOperation::List => Ok(self.local_state(|state| {
                Value::Array(
                    state
                        .projects
                        .values()
                        .map(|project| project_json(state, project))
                        .collect(),
                )
            })),
            ProjectOperation::Get { name } => self.local_state(|state| {
                state
                    .projects
                    .get(name)
                    .map(|project| project_json(state, project))
                    .ok_or_else(|| Error::Refused(format!("project \"{name}\" not found")))
            }),
            ProjectOperation::Create {
                name,
                description,
                config,
            } => {
                check_config(config, check_project_key).map_err(Error::Refused)?;
                self.propose_project(InstanceCommand::ProjectCreate {
                    project: Project {
                        name: name.clone(),
                        description: description.clone(),
                        config: config.clone(),
                    },
                })
                .await
            }
            ProjectOperation::Delete { name } => {
                self.propose_project(InstanceCommand::ProjectDelete { name: name.clone() })
                    .await
            }
            ProjectOperation::Rename { from, to } => {
                self.propose_project(InstanceCommand::ProjectRename {
                    from: from.clone(),
                    to: to.clone(),
                })
                .await
            }
            ProjectOperation::Set { name, .. }
            | ProjectOperation::Unset { name, .. }
            | ProjectOperation::Edit { name, .. } => {
                let _one_at_a_time = RECORD_WRITES.lock().await;
                // A new leader may not have applied all that is committed yet.
                self.linearize().await?;
                let before = self.local_state(|state| {
                    state
                        .projects
                        .get(name)
                        .cloned()
                        .ok_or_else(|| Error::Refused(format!("project \"{name}\" not found")))
                })?;
                let project = edited_project(&before, operation);
                check_config(&project.config, check_project_key).map_err(Error::Refused)?;
                self.propose_project(InstanceCommand::ProjectUpdateFrom { before, project })
                    .await
            }
        }
    }

    async fn propose_project(&self, command: InstanceCommand) -> Result<Value, Error> {
        self.propose(Command::Instance(command), WRITE_TIMEOUT)
            .await?;
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[Value]) -> Result<ProjectOperation, Error> {
        ProjectOperation::from_call(&Arguments { name, args })
    }

    #[test]
    fn calls_and_changes() {
        let create = call(
            "projects.create",
            &[
                json!("dev"),
                json!({"description": "d", "config": {"limits.instances": 5}}),
            ],
        )
        .unwrap();
        assert_eq!(
            create,
            ProjectOperation::Create {
                name: "dev".into(),
                description: "d".into(),
                config: BTreeMap::from([("limits.instances".into(), "5".into())]),
            }
        );
        let error = call("projects.create", &[json!("dev"), json!({"devices": {}})])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field \"devices\""), "{error}");
        let current = Project {
            name: "dev".into(),
            description: "old".into(),
            config: BTreeMap::from([("user.a".into(), "1".into())]),
        };
        let set = call("projects.set", &[json!("dev"), json!("user.b"), json!(2)]).unwrap();
        let changed = edited_project(&current, &set);
        assert_eq!(changed.config.len(), 2);
        let edit = call(
            "projects.edit",
            &[json!("dev"), json!({"description": "new"})],
        )
        .unwrap();
        let edited = edited_project(&current, &edit);
        assert_eq!(edited.description, "new");
        assert_eq!(edited.config, current.config, "config was not given: kept");
        let unset = call("projects.unset", &[json!("dev"), json!("user.a")]).unwrap();
        assert!(edited_project(&current, &unset).config.is_empty());
    }
}
