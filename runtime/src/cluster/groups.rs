//! Cluster groups (`groups.*`, `starling cluster group ...`): named sets of members that
//! `--target @group` and `scheduler.instance = group` refer to. The rules (the `default` group,
//! a member keeps at least one group, only empty groups are deleted, valid names) are checked
//! where the state changes, in the store.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::instances::{ClusterGroup, InstanceCommand};
use starling_store::{ClusterState, Command};

use crate::cluster::join::WRITE_TIMEOUT;
use crate::member::Member;
use crate::Error;

/// A cluster group operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GroupOperation {
    /// `groups.list()`.
    List,
    /// `groups.get(name)`.
    Get {
        /// The group.
        name: String,
    },
    /// `groups.create(name, {description=, members=})`.
    Create {
        /// The group.
        name: String,
        /// Its description.
        description: String,
        /// Members to put in it.
        members: Vec<String>,
    },
    /// `groups.delete(name)`: only an empty group.
    Delete {
        /// The group.
        name: String,
    },
    /// `groups.rename(old, new)`.
    Rename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// `groups.edit(name, {description=, members=})`: `members`, when given, is the whole new
    /// membership.
    Edit {
        /// The group.
        name: String,
        /// New description.
        description: Option<String>,
        /// New members (whole).
        members: Option<Vec<String>>,
    },
    /// `groups.assign(member, {g1, g2})`: the member's groups, all of them.
    Assign {
        /// The member.
        member: String,
        /// Its groups.
        groups: Vec<String>,
    },
    /// `groups.add(member, group)`.
    Add {
        /// The member.
        member: String,
        /// The group.
        group: String,
    },
    /// `groups.remove(member, group)`.
    Remove {
        /// The member.
        member: String,
        /// The group.
        group: String,
    },
}

impl GroupOperation {
    /// Whether it changes the cluster state.
    pub fn is_write(&self) -> bool {
        !matches!(self, GroupOperation::List | GroupOperation::Get { .. })
    }
}

/// A group as `groups.get` shows it (LXD's fields).
pub fn group_json(state: &ClusterState, group: &ClusterGroup) -> Value {
    let used_by: Vec<String> = state
        .projects
        .values()
        .filter(|project| {
            project
                .config
                .get("restricted.cluster.groups")
                .is_some_and(|groups| groups.split(',').any(|g| g.trim() == group.name))
        })
        .map(|project| format!("/1.0/projects/{}", project.name))
        .collect();
    json!({
        "name": group.name,
        "description": group.description,
        "members": state.group_members(&group.name),
        "used_by": used_by,
    })
}

impl Member {
    async fn propose_group(&self, command: InstanceCommand) -> Result<(), Error> {
        self.propose(Command::Instance(command), WRITE_TIMEOUT)
            .await
    }

    /// Runs a group operation on the leader.
    pub(crate) async fn group_here(&self, operation: &GroupOperation) -> Result<Value, Error> {
        match operation {
            GroupOperation::List => Ok(self.local_state(|state| {
                Value::Array(
                    state
                        .groups
                        .values()
                        .map(|group| group_json(state, group))
                        .collect(),
                )
            })),
            GroupOperation::Get { name } => self.local_state(|state| {
                state
                    .groups
                    .get(name)
                    .map(|group| group_json(state, group))
                    .ok_or_else(|| Error::Refused(format!("cluster group \"{name}\" not found")))
            }),
            GroupOperation::Create {
                name,
                description,
                members,
            } => {
                self.propose_group(InstanceCommand::GroupCreate {
                    group: ClusterGroup {
                        name: name.clone(),
                        description: description.clone(),
                    },
                    members: members.clone(),
                })
                .await?;
                Ok(Value::Null)
            }
            GroupOperation::Delete { name } => {
                self.propose_group(InstanceCommand::GroupDelete { name: name.clone() })
                    .await?;
                Ok(Value::Null)
            }
            GroupOperation::Rename { from, to } => {
                self.propose_group(InstanceCommand::GroupRename {
                    from: from.clone(),
                    to: to.clone(),
                })
                .await?;
                Ok(Value::Null)
            }
            GroupOperation::Edit {
                name,
                description,
                members,
            } => {
                self.edit_group(name, description.as_deref(), members.as_deref())
                    .await
            }
            GroupOperation::Assign { member, groups } => {
                self.propose_group(InstanceCommand::GroupAssign {
                    member: member.clone(),
                    groups: groups.clone(),
                })
                .await?;
                Ok(Value::Null)
            }
            GroupOperation::Add { member, group } => {
                self.propose_group(InstanceCommand::GroupMembership {
                    member: member.clone(),
                    group: group.clone(),
                    inside: true,
                })
                .await?;
                Ok(Value::Null)
            }
            GroupOperation::Remove { member, group } => {
                self.propose_group(InstanceCommand::GroupMembership {
                    member: member.clone(),
                    group: group.clone(),
                    inside: false,
                })
                .await?;
                Ok(Value::Null)
            }
        }
    }

    /// `groups.edit`: a new description, and the members moved in and out so the group holds
    /// exactly `members`. Every change is checked before the first is proposed (a member left
    /// without a group refuses the whole edit).
    async fn edit_group(
        &self,
        name: &str,
        description: Option<&str>,
        members: Option<&[String]>,
    ) -> Result<Value, Error> {
        let mut commands = Vec::new();
        let (exists, assignments) = self.local_state(|state| {
            let exists = state.groups.contains_key(name);
            let mut assignments = Vec::new();
            if let Some(wanted) = members {
                for member in state.members.values() {
                    let inside = member.groups.iter().any(|g| g == name);
                    let want = wanted.contains(&member.name);
                    if inside != want {
                        // Taken out of its only group, it would be left in none.
                        let left_in_none = !want && member.groups.len() == 1;
                        assignments.push((member.name.clone(), want, left_in_none));
                    }
                }
                for wanted_member in wanted {
                    if !state.members.contains_key(wanted_member) {
                        return (exists, Err(format!("member \"{wanted_member}\" not found")));
                    }
                }
            }
            (exists, Ok(assignments))
        });
        if !exists {
            return Err(Error::Refused(format!(
                "cluster group \"{name}\" not found"
            )));
        }
        let assignments = assignments.map_err(Error::Refused)?;
        if let Some(description) = description {
            commands.push(InstanceCommand::GroupUpdate {
                group: ClusterGroup {
                    name: name.to_string(),
                    description: description.to_string(),
                },
            });
        }
        for (member, inside, left_in_none) in assignments {
            if left_in_none {
                return Err(Error::Refused(format!(
                    "member \"{member}\" would be left without a cluster group"
                )));
            }
            // One change of this group for this member: other groups' changes made meanwhile
            // stay.
            commands.push(InstanceCommand::GroupMembership {
                member,
                group: name.to_string(),
                inside,
            });
        }
        for command in commands {
            self.propose_group(command).await?;
        }
        Ok(Value::Null)
    }
}
