//! `starling cluster group ...`: cluster groups, as `lxc cluster group`.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use starling_runtime::cluster::groups::GroupOperation;
use starling_runtime::{Client, Operation};

use crate::format::{self, Column, Format};

/// `starling cluster group` subcommands.
#[derive(clap::Subcommand)]
pub enum GroupCommand {
    /// Creates a group: `group create NAME [--description D] [MEMBER...]`.
    Create {
        /// The group.
        name: String,
        /// Members to put in it.
        members: Vec<String>,
        /// Its description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Deletes an empty group.
    Delete {
        /// The group.
        name: String,
    },
    /// Lists groups.
    List,
    /// Shows a group (YAML).
    Show {
        /// The group.
        name: String,
    },
    /// Renames a group.
    Rename {
        /// Current name.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Changes a group from YAML on stdin (`description`, `members`).
    Edit {
        /// The group.
        name: String,
    },
    /// Sets every group of a member: `group assign MEMBER G1,G2`.
    Assign {
        /// The member.
        member: String,
        /// Comma-separated groups.
        groups: String,
    },
    /// Adds a member to a group.
    Add {
        /// The member.
        member: String,
        /// The group.
        group: String,
    },
    /// Takes a member out of a group (it keeps at least one).
    Remove {
        /// The member.
        member: String,
        /// The group.
        group: String,
    },
}

const GROUP_COLUMNS: &[Column] = &[
    Column {
        header: "NAME",
        field: "name",
    },
    Column {
        header: "DESCRIPTION",
        field: "description",
    },
    Column {
        header: "MEMBERS",
        field: "members",
    },
];

/// Runs `starling cluster group ...` through `client`.
pub async fn run(format: Format, client: &Client, command: &GroupCommand) -> Result<()> {
    let group = |operation| Operation::Group(operation);
    let done = |result: Result<Value, starling_runtime::Error>| {
        result.map(|_| ()).map_err(anyhow::Error::from)
    };
    match command {
        GroupCommand::Create {
            name,
            members,
            description,
        } => {
            done(
                client
                    .operation(group(GroupOperation::Create {
                        name: name.clone(),
                        description: description.clone(),
                        members: members.clone(),
                    }))
                    .await,
            )?;
            println!("Cluster group {name} created");
            Ok(())
        }
        GroupCommand::Delete { name } => {
            done(
                client
                    .operation(group(GroupOperation::Delete { name: name.clone() }))
                    .await,
            )?;
            println!("Cluster group {name} deleted");
            Ok(())
        }
        GroupCommand::List => {
            let value = client.operation(group(GroupOperation::List)).await?;
            println!("{}", format::render(&value, format, GROUP_COLUMNS));
            Ok(())
        }
        GroupCommand::Show { name } => {
            let value = client
                .operation(group(GroupOperation::Get { name: name.clone() }))
                .await?;
            let format = if format == Format::Table {
                Format::Yaml
            } else {
                format
            };
            println!("{}", format::render(&value, format, GROUP_COLUMNS));
            Ok(())
        }
        GroupCommand::Rename { name, new_name } => done(
            client
                .operation(group(GroupOperation::Rename {
                    from: name.clone(),
                    to: new_name.clone(),
                }))
                .await,
        ),
        GroupCommand::Edit { name } => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading YAML from stdin")?;
            let value: Value = serde_yaml::from_str(&text).context("the input is not YAML")?;
            let object = value
                .as_object()
                .ok_or_else(|| anyhow!("expected a YAML mapping with description and members"))?;
            let description = object
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string);
            let members = match object.get("members") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) => Some(
                    items
                        .iter()
                        .map(|item| {
                            item.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| anyhow!("members: member names expected"))
                        })
                        .collect::<Result<Vec<String>>>()?,
                ),
                Some(_) => return Err(anyhow!("members: a list of member names expected")),
            };
            done(
                client
                    .operation(group(GroupOperation::Edit {
                        name: name.clone(),
                        description,
                        members,
                    }))
                    .await,
            )
        }
        GroupCommand::Assign { member, groups } => {
            let groups: Vec<String> = groups
                .split(',')
                .map(str::trim)
                .filter(|group| !group.is_empty())
                .map(str::to_string)
                .collect();
            done(
                client
                    .operation(group(GroupOperation::Assign {
                        member: member.clone(),
                        groups,
                    }))
                    .await,
            )
        }
        GroupCommand::Add {
            member,
            group: name,
        } => done(
            client
                .operation(group(GroupOperation::Add {
                    member: member.clone(),
                    group: name.clone(),
                }))
                .await,
        ),
        GroupCommand::Remove {
            member,
            group: name,
        } => done(
            client
                .operation(group(GroupOperation::Remove {
                    member: member.clone(),
                    group: name.clone(),
                }))
                .await,
        ),
    }
}
