//! Lifecycle events: what an applied command did, in LXD's words (`instance-started`,
//! `cluster-member-added`, ...), plus Starling's own (`cluster-member-offline`/`-online`,
//! `image-replicated`, `script-run-failed`).
//!
//! They come from the log, so every replica derives the same events with the same ids, in the
//! same order, from the same entries: no member has to tell another that something happened,
//! and a script triggered by an event (`on=`) is recorded as waiting in the same step that
//! produced the event (see [`crate::scripts`]), so no event is missed or triggers twice.
//!
//! [`of`] is pure: it reads the state *before* the command applies, so it can see transitions
//! (a member `Online` before and `Offline` after); its events count only if the command applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::evacuation::{EvacuationCommand, EvacuationKind};
use crate::images::ImageCommand;
use crate::instances::{InstanceCommand, InstanceStatus};
use crate::model::{ClusterState, MemberStatus, TokenKind};
use crate::scripts::{RunStatus, ScriptCommand};

/// Lifecycle events kept for the members' event streams between two entries, at most (an
/// entry is a batch of at most a few hundred commands).
pub const OUTBOX_MAX: usize = 4_096;

/// Every action a lifecycle event may have: what `on=` may name.
pub const ACTIONS: &[&str] = &[
    "certificate-created",
    "certificate-deleted",
    "cluster-group-created",
    "cluster-group-deleted",
    "cluster-group-renamed",
    "cluster-group-updated",
    "cluster-member-added",
    "cluster-member-evacuated",
    "cluster-member-offline",
    "cluster-member-online",
    "cluster-member-removed",
    "cluster-member-renamed",
    "cluster-member-restored",
    "cluster-member-updated",
    "cluster-token-created",
    "cluster-token-deleted",
    "config-updated",
    "image-alias-created",
    "image-alias-deleted",
    "image-alias-renamed",
    "image-created",
    "image-deleted",
    "image-replicated",
    "instance-created",
    "instance-deleted",
    "instance-migrated",
    "instance-renamed",
    "instance-started",
    "instance-stopped",
    "instance-updated",
    "network-created",
    "network-deleted",
    "profile-created",
    "profile-deleted",
    "profile-renamed",
    "profile-updated",
    "project-created",
    "project-deleted",
    "project-renamed",
    "project-updated",
    "script-created",
    "script-deleted",
    "script-run-failed",
    "script-updated",
    "storage-pool-created",
    "storage-pool-deleted",
];

/// One lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Its number, cluster-wide (the same on every replica).
    pub id: u64,
    /// LXD's action name.
    pub action: String,
    /// The object, as LXD's API path (`/1.0/instances/c1`).
    pub source: String,
    /// The object's project (`default` for objects outside projects... as LXD shows them).
    pub project: String,
    /// The member where it happened (the instance's member, the member that went offline); empty
    /// for cluster-wide changes, which the member that shows the event fills in.
    pub location: String,
    /// More about it (`old_name`, `status`, ...).
    pub context: BTreeMap<String, String>,
}

/// Whether a script's `on` entry `pattern` (an action, or a prefix ending in `*`) matches
/// `action`.
pub fn matches(pattern: &str, action: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => action.starts_with(prefix),
        None => pattern == action,
    }
}

/// Checks an `on` entry: a known action, or a prefix of one ending in `*`.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if ACTIONS.iter().any(|action| matches(pattern, action)) && !pattern.is_empty() {
        return Ok(());
    }
    Err(format!(
        "unknown event \"{}\": an action ({}), or a prefix of one ending in '*'",
        crate::limits::short(pattern),
        ACTIONS.join(", ")
    ))
}

/// A lifecycle event before it is numbered.
fn event(action: &str, source: String, project: &str, location: &str) -> Lifecycle {
    Lifecycle {
        id: 0,
        action: action.to_string(),
        source,
        project: project.to_string(),
        location: location.to_string(),
        context: BTreeMap::new(),
    }
}

fn with(mut lifecycle: Lifecycle, key: &str, value: impl ToString) -> Lifecycle {
    lifecycle.context.insert(key.to_string(), value.to_string());
    lifecycle
}

/// `script-run-failed` for `record`, which ended as `status` because of `error`.
fn run_failed(record: &crate::scripts::ScriptRun, status: RunStatus, error: &str) -> Lifecycle {
    let failed = event(
        "script-run-failed",
        format!("/1.0/scripts/{}", record.script),
        "",
        &record.member,
    );
    let failed = with(failed, "run", record.id);
    let failed = with(failed, "status", status.as_str());
    with(failed, "error", cut(error))
}

/// An error's first KiB: the event is a triggered run's argument, kept in its record.
fn cut(text: &str) -> String {
    let mut end = text.len().min(1024);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn member_path(name: &str) -> String {
    format!("/1.0/cluster/members/{name}")
}

fn instance_path(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

/// The events `command` produces if it applies to `state` (the state before it).
pub fn of(state: &ClusterState, command: &Command) -> Vec<Lifecycle> {
    match command {
        Command::Once { command, .. } => of(state, command),
        // A batch's commands apply, and make their events, one at a time.
        Command::Batch(_) | Command::Bootstrap { .. } | Command::Kv(_) => Vec::new(),
        Command::ConfigSet { key, .. } | Command::ConfigUnset { key } => {
            vec![with(
                event("config-updated", "/1.0".into(), "", ""),
                "key",
                key,
            )]
        }
        Command::TokenIssue { token } => match token.kind {
            TokenKind::Join => vec![event(
                "cluster-token-created",
                format!("/1.0/cluster/members/{}", token.name),
                "",
                "",
            )],
            TokenKind::Client => Vec::new(),
        },
        Command::TokenRevoke { name, kind } => match kind {
            TokenKind::Join => vec![event("cluster-token-deleted", member_path(name), "", "")],
            TokenKind::Client => Vec::new(),
        },
        Command::MemberAdd { member, .. } => vec![event(
            "cluster-member-added",
            member_path(&member.name),
            "",
            &member.name,
        )],
        Command::MemberHealth { updates } => updates
            .iter()
            .filter_map(|update| {
                let before = state.members.get(&update.name)?.status;
                let action = match (before, update.status) {
                    (MemberStatus::Online, MemberStatus::Offline) => "cluster-member-offline",
                    (MemberStatus::Offline, MemberStatus::Online) => "cluster-member-online",
                    _ => return None,
                };
                Some(event(action, member_path(&update.name), "", &update.name))
            })
            .collect(),
        Command::MemberUpdate { name, .. } | Command::MemberPatch { name, .. } => {
            vec![event("cluster-member-updated", member_path(name), "", name)]
        }
        Command::MemberRename { from, to } => vec![with(
            event("cluster-member-renamed", member_path(to), "", to),
            "old_name",
            from,
        )],
        Command::MemberRemove { name } => {
            vec![event("cluster-member-removed", member_path(name), "", name)]
        }
        Command::PoolCreate { pool } => vec![event(
            "storage-pool-created",
            format!("/1.0/storage-pools/{}", pool.name),
            "",
            "",
        )],
        Command::PoolDelete { name } => vec![event(
            "storage-pool-deleted",
            format!("/1.0/storage-pools/{name}"),
            "",
            "",
        )],
        Command::NetworkCreate { network } => vec![event(
            "network-created",
            format!("/1.0/networks/{}", network.name),
            "default",
            "",
        )],
        Command::NetworkDelete { name } => vec![event(
            "network-deleted",
            format!("/1.0/networks/{name}"),
            "default",
            "",
        )],
        Command::ClientTrust { client, .. } => vec![event(
            "certificate-created",
            format!("/1.0/certificates/{}", client.fingerprint),
            "",
            "",
        )],
        Command::TrustRemove { fingerprint } => vec![event(
            "certificate-deleted",
            format!("/1.0/certificates/{fingerprint}"),
            "",
            "",
        )],
        Command::Image(command) => of_image(state, command),
        Command::Instance(command) => of_instance(state, command),
        Command::Evacuation(command) => of_evacuation(state, command),
        Command::Script(command) => of_script(state, command),
    }
}

fn of_image(state: &ClusterState, command: &ImageCommand) -> Vec<Lifecycle> {
    let image_path = |fingerprint: &str| format!("/1.0/images/{fingerprint}");
    let alias_path = |name: &str| format!("/1.0/images/aliases/{name}");
    match command {
        ImageCommand::Add { image } => {
            let location = image.locations.iter().next().cloned().unwrap_or_default();
            vec![event(
                "image-created",
                image_path(&image.fingerprint),
                "default",
                &location,
            )]
        }
        ImageCommand::LocationAdd {
            fingerprint,
            member,
        } => {
            let new = state
                .images
                .get(fingerprint)
                .is_some_and(|image| !image.locations.contains(member));
            if !new {
                return Vec::new();
            }
            vec![event(
                "image-replicated",
                image_path(fingerprint),
                "default",
                member,
            )]
        }
        ImageCommand::LocationRemove { .. } => Vec::new(),
        ImageCommand::Delete { fingerprint } => vec![event(
            "image-deleted",
            image_path(fingerprint),
            "default",
            "",
        )],
        ImageCommand::AliasAdd { alias, .. } => vec![event(
            "image-alias-created",
            alias_path(&alias.name),
            "default",
            "",
        )],
        ImageCommand::AliasRemove { name } => vec![event(
            "image-alias-deleted",
            alias_path(name),
            "default",
            "",
        )],
        ImageCommand::AliasRename { from, to } => vec![with(
            event("image-alias-renamed", alias_path(to), "default", ""),
            "old_name",
            from,
        )],
    }
}

fn of_instance(state: &ClusterState, command: &InstanceCommand) -> Vec<Lifecycle> {
    use InstanceCommand as I;
    let profile_path = |name: &str| format!("/1.0/profiles/{name}");
    let project_path = |name: &str| format!("/1.0/projects/{name}");
    let group_path = |name: &str| format!("/1.0/cluster/groups/{name}");
    let location_of = |project: &str, name: &str| {
        state
            .instances
            .get(&(project.to_string(), name.to_string()))
            .map(|instance| instance.location.clone())
    };
    match command {
        I::ProjectCreate { project } => vec![event(
            "project-created",
            project_path(&project.name),
            &project.name,
            "",
        )],
        I::ProjectUpdate { project } | I::ProjectUpdateFrom { project, .. } => vec![event(
            "project-updated",
            project_path(&project.name),
            &project.name,
            "",
        )],
        I::ProjectDelete { name } => {
            vec![event("project-deleted", project_path(name), name, "")]
        }
        I::ProjectRename { from, to } => vec![with(
            event("project-renamed", project_path(to), to, ""),
            "old_name",
            from,
        )],
        I::ProfileCreate { profile } => vec![event(
            "profile-created",
            profile_path(&profile.name),
            &profile.project,
            "",
        )],
        I::ProfileUpdate { profile } | I::ProfileUpdateFrom { profile, .. } => vec![event(
            "profile-updated",
            profile_path(&profile.name),
            &profile.project,
            "",
        )],
        I::ProfileRename { project, from, to } => vec![with(
            event("profile-renamed", profile_path(to), project, ""),
            "old_name",
            from,
        )],
        I::ProfileDelete { project, name } => {
            vec![event("profile-deleted", profile_path(name), project, "")]
        }
        I::InstanceCreate { instance } => vec![event(
            "instance-created",
            instance_path(&instance.name),
            &instance.project,
            &instance.location,
        )],
        I::InstanceUpdate { project, name, .. } | I::InstancePatch { project, name, .. } => {
            vec![event(
                "instance-updated",
                instance_path(name),
                project,
                &location_of(project, name).unwrap_or_default(),
            )]
        }
        I::InstanceStatus {
            project,
            name,
            location,
            status,
            ..
        } => {
            let before = state
                .instances
                .get(&(project.clone(), name.clone()))
                .map(|instance| instance.status);
            let action = match (before, status) {
                (Some(InstanceStatus::Running), InstanceStatus::Running) => return Vec::new(),
                (Some(_), InstanceStatus::Running) => "instance-started",
                (Some(InstanceStatus::Running), InstanceStatus::Stopped) => "instance-stopped",
                _ => return Vec::new(),
            };
            vec![event(action, instance_path(name), project, location)]
        }
        I::InstanceMove {
            project,
            name,
            from,
            location,
            ..
        }
        | I::InstanceMoveClaimed {
            project,
            name,
            from,
            location,
            ..
        } => vec![with(
            event("instance-migrated", instance_path(name), project, location),
            "old_location",
            from,
        )],
        I::InstanceRename { project, from, to } => vec![with(
            event(
                "instance-renamed",
                instance_path(to),
                project,
                &location_of(project, from).unwrap_or_default(),
            ),
            "old_name",
            from,
        )],
        I::InstanceDelete { project, name } => vec![event(
            "instance-deleted",
            instance_path(name),
            project,
            &location_of(project, name).unwrap_or_default(),
        )],
        I::GroupCreate { group, .. } => vec![event(
            "cluster-group-created",
            group_path(&group.name),
            "",
            "",
        )],
        I::GroupUpdate { group } => vec![event(
            "cluster-group-updated",
            group_path(&group.name),
            "",
            "",
        )],
        I::GroupRename { from, to } => vec![with(
            event("cluster-group-renamed", group_path(to), "", ""),
            "old_name",
            from,
        )],
        I::GroupDelete { name } => {
            vec![event("cluster-group-deleted", group_path(name), "", "")]
        }
        I::GroupAssign { member, .. } | I::GroupMembership { member, .. } => vec![event(
            "cluster-member-updated",
            member_path(member),
            "",
            member,
        )],
        // A claim is the cluster's bookkeeping of a move; the move itself is the event.
        I::InstanceMoveClaim { .. }
        | I::InstanceMoveRelease { .. }
        | I::InstanceDeleting { .. } => Vec::new(),
    }
}

fn of_evacuation(state: &ClusterState, command: &EvacuationCommand) -> Vec<Lifecycle> {
    let EvacuationCommand::End {
        member, cancelled, ..
    } = command
    else {
        return Vec::new();
    };
    let Some(record) = state.evacuations.get(member) else {
        return Vec::new();
    };
    if !record.running() || *cancelled {
        return Vec::new();
    }
    let action = match record.kind {
        EvacuationKind::Evacuate => "cluster-member-evacuated",
        EvacuationKind::Restore => "cluster-member-restored",
    };
    vec![event(action, member_path(member), "", member)]
}

fn of_script(state: &ClusterState, command: &ScriptCommand) -> Vec<Lifecycle> {
    let script_path = |name: &str| format!("/1.0/scripts/{name}");
    match command {
        ScriptCommand::Put { script, create } => vec![event(
            if *create {
                "script-created"
            } else {
                "script-updated"
            },
            script_path(&script.name),
            "",
            "",
        )],
        ScriptCommand::Patch { name, .. } => {
            vec![event("script-updated", script_path(name), "", "")]
        }
        ScriptCommand::Delete { name } => vec![event("script-deleted", script_path(name), "", "")],
        ScriptCommand::Claim { .. } => Vec::new(),
        ScriptCommand::End {
            run, status, error, ..
        } => {
            if *status == RunStatus::Ok {
                return Vec::new();
            }
            state
                .scripts
                .run(*run)
                .filter(|record| record.status == RunStatus::Running && !record.quiet)
                .map(|record| run_failed(record, *status, error.as_deref().unwrap_or_default()))
                .into_iter()
                .collect()
        }
        ScriptCommand::Lost { runs, reason, .. } => runs
            .iter()
            .filter_map(|id| state.scripts.run(*id))
            .filter(|record| record.status == RunStatus::Running && !record.quiet)
            .map(|record| run_failed(record, RunStatus::Lost, reason))
            .collect(),
    }
}

impl ClusterState {
    /// Numbers the events of an applied command, records a waiting run for each script whose
    /// `on` matches, and hands them to the member's event stream.
    pub(crate) fn record_lifecycle(&mut self, events: Vec<Lifecycle>) {
        for mut lifecycle in events {
            lifecycle.id = self.next_event_id;
            self.next_event_id += 1;
            let triggered: Vec<String> = self
                .scripts
                .scripts
                .values()
                .filter(|script| {
                    script
                        .on
                        .iter()
                        .any(|pattern| matches(pattern, &lifecycle.action))
                })
                .map(|script| script.name.clone())
                .collect();
            for script in triggered {
                self.scripts.trigger(&script, &lifecycle);
            }
            self.lifecycle.push(lifecycle);
        }
    }
}

/// Lifecycle events applied but not yet handed to the member's event stream. Not part of the
/// replicated state (never stored, never compared): the state machine drains it after each
/// entry.
#[derive(Clone, Debug, Default)]
pub struct Outbox(Vec<Lifecycle>);

impl Outbox {
    /// Adds an event, dropping the oldest past [`OUTBOX_MAX`] (nobody drains a state applied
    /// offline, as recovery does).
    pub(crate) fn push(&mut self, lifecycle: Lifecycle) {
        if self.0.len() >= OUTBOX_MAX {
            self.0.remove(0);
        }
        self.0.push(lifecycle);
    }

    /// Takes the events gathered so far.
    pub fn take(&mut self) -> Vec<Lifecycle> {
        std::mem::take(&mut self.0)
    }
}

impl PartialEq for Outbox {
    fn eq(&self, _other: &Outbox) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::{member, token};
    use crate::images::tests::image;
    use crate::instances::tests::instance;

    fn actions(events: &[Lifecycle]) -> Vec<(&str, &str)> {
        events
            .iter()
            .map(|event| (event.action.as_str(), event.location.as_str()))
            .collect()
    }

    /// Goal: each kind of change yields LXD's action, on the member it happened on, and only
    /// a real transition counts (an instance reported running again, a copy already held).
    #[test]
    fn changes_yield_lxd_actions_where_they_happened() {
        let mut state = ClusterState::default();
        for (id, name) in [(1, "m1"), (2, "m2")] {
            state.members.insert(name.into(), member(name, id));
        }
        let joined = of(
            &state,
            &Command::MemberAdd {
                member: member("m3", 3),
                answers: vec![],
                secret: String::new(),
                now_ms: 0,
            },
        );
        assert_eq!(actions(&joined), [("cluster-member-added", "m3")]);
        let renamed = of(
            &state,
            &Command::MemberRename {
                from: "m2".into(),
                to: "m9".into(),
            },
        );
        assert_eq!(actions(&renamed), [("cluster-member-renamed", "m9")]);
        assert_eq!(
            renamed[0].context.get("old_name").map(String::as_str),
            Some("m2")
        );
        let token = of(
            &state,
            &Command::TokenIssue {
                token: token("m4", 1),
            },
        );
        assert_eq!(actions(&token), [("cluster-token-created", "")]);

        let created = Command::Instance(InstanceCommand::InstanceCreate {
            instance: instance("c1", &[]),
        });
        assert_eq!(actions(&of(&state, &created)), [("instance-created", "m1")]);
        state
            .instances
            .insert(("default".into(), "c1".into()), instance("c1", &[]));
        let report = |status| {
            Command::Instance(InstanceCommand::InstanceStatus {
                project: "default".into(),
                name: "c1".into(),
                location: "m1".into(),
                status,
                message: String::new(),
            })
        };
        let started = of(&state, &report(InstanceStatus::Running));
        assert_eq!(actions(&started), [("instance-started", "m1")]);
        assert_eq!(started[0].source, "/1.0/instances/c1");
        for record in state.instances.values_mut() {
            record.status = InstanceStatus::Running;
        }
        assert!(of(&state, &report(InstanceStatus::Running)).is_empty());
        let stopped = of(&state, &report(InstanceStatus::Stopped));
        assert_eq!(actions(&stopped), [("instance-stopped", "m1")]);

        let fingerprint = "b".repeat(64);
        let added = Command::Image(ImageCommand::Add {
            image: image(&fingerprint, "busybox"),
        });
        assert_eq!(actions(&of(&state, &added)), [("image-created", "m1")]);
        state
            .images
            .insert(fingerprint.clone(), image(&fingerprint, "busybox"));
        let copied = |to: &str| {
            Command::Image(ImageCommand::LocationAdd {
                fingerprint: fingerprint.clone(),
                member: to.into(),
            })
        };
        assert_eq!(
            actions(&of(&state, &copied("m2"))),
            [("image-replicated", "m2")]
        );
        assert!(of(&state, &copied("m1")).is_empty(), "m1 held it already");
    }

    #[test]
    fn patterns_name_known_actions_or_prefixes() {
        assert!(check_pattern("cluster-member-offline").is_ok());
        assert!(check_pattern("instance-*").is_ok());
        assert!(check_pattern("*").is_ok());
        let error = check_pattern("member-gone").unwrap_err();
        assert!(error.contains("unknown event \"member-gone\""), "{error}");
        assert!(check_pattern("").is_err());
        assert!(check_pattern("nothing-*").is_err());
        assert!(matches("instance-*", "instance-started"));
        assert!(!matches("instance-started", "instance-stopped"));
    }
}
