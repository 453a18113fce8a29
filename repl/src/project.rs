//! `starling project ...`: lxc's project commands over the `projects.*` operations.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};
use starling_runtime::instances::projects::ProjectOperation;
use starling_runtime::{Client, Operation};

use crate::format::{self, Column, Format};
use crate::keys::{parse_assignments, parse_pairs, read_stdin_values};
use crate::profile::{read_yaml_mapping, with_used_by_count};

/// `starling project`.
#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Creates a project (with its own `default` profile).
    Create {
        /// The project.
        name: String,
        /// Its description.
        #[arg(long, default_value = "")]
        description: String,
        /// A config key, as KEY=VALUE (repeatable).
        #[arg(long = "config", short = 'c')]
        config: Vec<String>,
    },
    /// Deletes an empty project (not `default`).
    Delete {
        /// The project.
        name: String,
    },
    /// Lists projects.
    List,
    /// Shows a project (YAML).
    Show {
        /// The project.
        name: String,
    },
    /// Replaces a project's description and config with YAML from stdin (the fields
    /// `project show` prints; the others are ignored).
    Edit {
        /// The project.
        name: String,
    },
    /// Prints a config key's value.
    Get {
        /// The project.
        name: String,
        /// The key.
        key: String,
    },
    /// Sets config keys: `set NAME K1=V1 [K2=V2 ...]` or `set NAME KEY VALUE`.
    Set {
        /// The project.
        name: String,
        /// KEY=VALUE pairs, or KEY VALUE.
        #[arg(required = true, num_args = 1..)]
        pairs: Vec<String>,
    },
    /// Unsets a config key.
    Unset {
        /// The project.
        name: String,
        /// The key.
        key: String,
    },
    /// Renames a project (not `default`, not one with instances).
    Rename {
        /// Current name.
        name: String,
        /// New name.
        new_name: String,
    },
}

const PROJECT_COLUMNS: &[Column] = &[
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

/// Runs `starling project ...` through `client`.
pub async fn run(format: Format, client: &Client, command: &ProjectCommand) -> Result<()> {
    let run = |operation| client.operation(Operation::Project(operation));
    match command {
        ProjectCommand::Create {
            name,
            description,
            config,
        } => {
            let config = parse_assignments(config)?.into_iter().collect();
            run(ProjectOperation::Create {
                name: name.clone(),
                description: description.clone(),
                config,
            })
            .await?;
            println!("Project {name} created");
        }
        ProjectCommand::Delete { name } => {
            run(ProjectOperation::Delete { name: name.clone() }).await?;
            println!("Project {name} deleted");
        }
        ProjectCommand::List => {
            let list = run(ProjectOperation::List).await?;
            let shown = match format {
                Format::Table | Format::Csv => with_used_by_count(list),
                _ => list,
            };
            println!("{}", format::render(&shown, format, PROJECT_COLUMNS));
        }
        ProjectCommand::Show { name } => {
            let project = run(ProjectOperation::Get { name: name.clone() }).await?;
            let format = if format == Format::Table {
                Format::Yaml
            } else {
                format
            };
            println!("{}", format::render(&project, format, &[]));
        }
        ProjectCommand::Edit { name } => {
            let yaml = read_yaml_mapping()?;
            let field = |key: &str, empty: Value| match yaml.get(key) {
                None | Some(Value::Null) => empty,
                Some(value) => value.clone(),
            };
            let changes = json!({
                "description": field("description", json!("")),
                "config": field("config", json!({})),
            });
            client
                .operation(Operation::from_call(
                    "projects.edit",
                    &[json!(name), changes],
                )?)
                .await?;
        }
        ProjectCommand::Get { name, key } => {
            let project = run(ProjectOperation::Get { name: name.clone() }).await?;
            println!("{}", project["config"][key].as_str().unwrap_or_default());
        }
        ProjectCommand::Set { name, pairs } => {
            let values = read_stdin_values(parse_pairs(pairs)?)?;
            run(ProjectOperation::Set {
                name: name.clone(),
                values,
            })
            .await?;
        }
        ProjectCommand::Unset { name, key } => {
            run(ProjectOperation::Unset {
                name: name.clone(),
                keys: vec![key.clone()],
            })
            .await?;
        }
        ProjectCommand::Rename { name, new_name } => {
            run(ProjectOperation::Rename {
                from: name.clone(),
                to: new_name.clone(),
            })
            .await?;
            println!("Project {name} renamed to {new_name}");
        }
    }
    Ok(())
}
