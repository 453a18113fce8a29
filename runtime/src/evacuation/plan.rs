//! What an evacuation or a restore does to each instance, decided from the cluster state
//! alone (IO-free).

use starling_store::evacuation::{
    Evacuation, EvacuationKind, EvacuationStep, StepAction, StepOutcome,
};
use starling_store::instances::{Instance, InstanceStatus};
use starling_store::{ClusterState, MemberStatus};

/// The instance key that says how an instance leaves an evacuated member.
pub const EVACUATE_KEY: &str = "cluster.evacuate";
/// The instance key that remembers where an evacuated instance came from.
pub const ORIGIN_KEY: &str = "volatile.evacuate.origin";

/// The instance key that lets self-healing recreate an instance from its image on another
/// member when its own member has been offline for `cluster.healing_threshold` (its files on
/// that member are lost to it). Off by default.
pub const RECREATE_KEY: &str = "cluster.healing.recreate";
/// The action recorded for an evacuation started by self-healing.
pub const HEALING_ACTION: &str = "heal";

/// The members self-healing must evacuate now: `Offline` for longer than
/// `cluster.healing_threshold` seconds (0: never), and neither being nor already evacuated.
pub fn healing_due(state: &ClusterState, now_ms: u64) -> Vec<String> {
    let threshold_s = state.config_i64("cluster.healing_threshold");
    if threshold_s <= 0 {
        return Vec::new();
    }
    state
        .members
        .values()
        .filter(|member| member.status == MemberStatus::Offline)
        .filter(|member| {
            now_ms.saturating_sub(member.last_heartbeat_ms) >= threshold_s as u64 * 1000
        })
        .filter(|member| {
            !state
                .evacuations
                .get(&member.name)
                .is_some_and(Evacuation::running)
        })
        .map(|member| member.name.clone())
        .collect()
}

/// Plans the self-healing of an offline `member`: an instance whose `cluster.healing.recreate`
/// is true is recreated from its image elsewhere; any other is listed as failed, saying why.
pub fn plan_healing(state: &ClusterState, member: &str, now_ms: u64) -> Evacuation {
    let steps = instances_on(state, member)
        .into_iter()
        .map(|instance| {
            let (config, _) = state.expanded(instance);
            let recreate = config
                .get(RECREATE_KEY)
                .is_some_and(|value| matches!(value.as_str(), "true" | "1" | "yes" | "on"));
            let mut planned = step(instance, StepAction::Recreate);
            if !recreate {
                planned.outcome = StepOutcome::Failed(format!(
                    "its member \"{member}\" is offline and holds its root file system; set \
                     {RECREATE_KEY}=true to let self-healing recreate it from its image"
                ));
            }
            planned
        })
        .collect();
    Evacuation {
        member: member.to_string(),
        kind: EvacuationKind::Evacuate,
        action: HEALING_ACTION.to_string(),
        started_at_ms: now_ms,
        ended_at_ms: None,
        cancelled: false,
        steps,
    }
}

/// The `--action` of an evacuation: `auto`, `migrate`, `live-migrate` or `stop`.
pub fn check_evacuate_action(action: &str) -> Result<(), String> {
    match action {
        "auto" | "migrate" | "live-migrate" | "stop" => Ok(()),
        other => Err(format!(
            "invalid evacuation action \"{other}\": use auto, migrate, live-migrate or stop"
        )),
    }
}

/// Plans the evacuation of `member`: each of its instances (by project, then name) migrates
/// or stops, as its `cluster.evacuate` key says (`auto` when unset) unless `action` overrides
/// it. `live-migrate` is refused before anything moves, naming the instances.
pub fn plan_evacuation(
    state: &ClusterState,
    member: &str,
    action: Option<&str>,
    now_ms: u64,
) -> Result<Evacuation, String> {
    let record = state
        .members
        .get(member)
        .ok_or_else(|| format!("member \"{member}\" not found"))?;
    if record.status == MemberStatus::Evacuated {
        return Err(format!("member \"{member}\" is already evacuated"));
    }
    if let Some(action) = action {
        check_evacuate_action(action)?;
    }
    let mut steps = Vec::new();
    let mut live = Vec::new();
    for instance in instances_on(state, member) {
        let (config, _) = state.expanded(instance);
        let chosen = action
            .map(str::to_string)
            .or_else(|| config.get(EVACUATE_KEY).cloned())
            .unwrap_or_else(|| "auto".to_string());
        let step_action = match chosen.as_str() {
            "auto" | "migrate" => StepAction::Migrate,
            "stop" => StepAction::Stop,
            "live-migrate" => {
                live.push(instance.name.clone());
                continue;
            }
            other => {
                return Err(format!(
                    "instance \"{}\" has an invalid {EVACUATE_KEY} \"{other}\"",
                    instance.name
                ))
            }
        };
        steps.push(step(instance, step_action));
    }
    if !live.is_empty() {
        return Err(format!(
            "cannot evacuate member \"{member}\": live migration was asked for {} ({}), and no \
             instance driver here can live-migrate; use --action migrate or stop",
            if live.len() == 1 {
                "instance"
            } else {
                "instances"
            },
            live.join(", ")
        ));
    }
    Ok(Evacuation {
        member: member.to_string(),
        kind: EvacuationKind::Evacuate,
        action: action.unwrap_or_default().to_string(),
        started_at_ms: now_ms,
        ended_at_ms: None,
        cancelled: false,
        steps,
    })
}

/// Plans the restore of `member`: instances whose origin it is move back (in the state they
/// are in), instances the last evacuation stopped start again. `--action skip` only makes the
/// member usable.
pub fn plan_restore(
    state: &ClusterState,
    member: &str,
    action: Option<&str>,
    now_ms: u64,
) -> Result<Evacuation, String> {
    let record = state
        .members
        .get(member)
        .ok_or_else(|| format!("member \"{member}\" not found"))?;
    match action {
        None | Some("skip") => {}
        Some(other) => {
            return Err(format!(
                "invalid restore action \"{other}\": only skip is known"
            ))
        }
    }
    if record.status != MemberStatus::Evacuated {
        return Err(format!("member \"{member}\" is not evacuated"));
    }
    let mut steps = Vec::new();
    if action != Some("skip") {
        let stopped_by_evacuation = state
            .evacuations
            .get(member)
            .filter(|last| last.kind == EvacuationKind::Evacuate)
            .map(|last| {
                last.steps
                    .iter()
                    .filter(|step| step.was_running && step.outcome == StepOutcome::Stopped)
                    .map(|step| (step.project.clone(), step.name.clone()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for instance in state.instances.values() {
            let key = (instance.project.clone(), instance.name.clone());
            if instance.config.get(ORIGIN_KEY).map(String::as_str) == Some(member) {
                steps.push(step(instance, StepAction::MoveBack));
            } else if instance.location == member
                && stopped_by_evacuation.contains(&key)
                && instance.status != InstanceStatus::Running
            {
                let mut start = step(instance, StepAction::Start);
                start.was_running = true;
                steps.push(start);
            }
        }
    }
    Ok(Evacuation {
        member: member.to_string(),
        kind: EvacuationKind::Restore,
        action: action.unwrap_or_default().to_string(),
        started_at_ms: now_ms,
        ended_at_ms: None,
        cancelled: false,
        steps,
    })
}

fn instances_on<'a>(state: &'a ClusterState, member: &str) -> Vec<&'a Instance> {
    state
        .instances
        .values()
        .filter(|instance| instance.location == member)
        .collect()
}

fn step(instance: &Instance, action: StepAction) -> EvacuationStep {
    EvacuationStep {
        project: instance.project.clone(),
        name: instance.name.clone(),
        action,
        was_running: instance.status == InstanceStatus::Running,
        outcome: StepOutcome::Pending,
    }
}

/// What is left to do of a record: its pending steps.
pub fn pending(evacuation: &Evacuation) -> Vec<EvacuationStep> {
    evacuation
        .steps
        .iter()
        .filter(|step| step.outcome == StepOutcome::Pending)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_store::evacuation::EvacuationCommand;
    use starling_store::Command;

    fn member(name: &str, id: u64) -> starling_store::Member {
        starling_store::Member {
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

    /// A bootstrapped state (default project and profile) with members m1, m2, m3.
    fn three_members() -> ClusterState {
        let mut state = ClusterState::default();
        state
            .apply(&Command::Bootstrap {
                member: member("m1", 1),
                ca_cert_pem: "ca".into(),
                ca_key_pem: "key".into(),
                admin: starling_store::TrustedClient {
                    name: "admin".into(),
                    fingerprint: "a".into(),
                    added_at_ms: 0,
                },
            })
            .unwrap();
        for (name, id) in [("m2", 2), ("m3", 3)] {
            state.members.insert(name.to_string(), member(name, id));
        }
        state
    }

    /// An instance to add: name, location, status, own config.
    type Spec<'a> = (&'a str, &'a str, InstanceStatus, &'a [(&'a str, &'a str)]);

    fn state_with(instances: &[Spec]) -> ClusterState {
        let mut state = three_members();
        for (name, location, status, config) in instances {
            let instance = Instance {
                project: "default".into(),
                name: (*name).into(),
                kind: "container".into(),
                architecture: "x86_64".into(),
                config: config
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
                devices: Default::default(),
                profiles: vec!["default".into()],
                location: (*location).into(),
                status: *status,
                status_message: String::new(),
                created_at_ms: 0,
                description: String::new(),
                ephemeral: false,
                image: "a".repeat(64),
            };
            state
                .instances
                .insert((instance.project.clone(), instance.name.clone()), instance);
        }
        state
    }

    /// Goal: each instance follows its own key unless an action overrides it; live migration
    /// is refused naming every instance that asks for it; other members' instances stay.
    #[test]
    fn evacuation_follows_each_instance() {
        use InstanceStatus::*;
        let state = state_with(&[
            ("a", "m1", Running, &[]),
            ("b", "m1", Stopped, &[(EVACUATE_KEY, "stop")]),
            ("c", "m1", Running, &[(EVACUATE_KEY, "migrate")]),
            ("d", "m2", Running, &[]),
        ]);
        let plan = plan_evacuation(&state, "m1", None, 7).unwrap();
        let actions: Vec<_> = plan
            .steps
            .iter()
            .map(|step| (step.name.as_str(), step.action, step.was_running))
            .collect();
        assert_eq!(
            actions,
            [
                ("a", StepAction::Migrate, true),
                ("b", StepAction::Stop, false),
                ("c", StepAction::Migrate, true),
            ]
        );
        let all_stop = plan_evacuation(&state, "m1", Some("stop"), 7).unwrap();
        assert!(all_stop
            .steps
            .iter()
            .all(|step| step.action == StepAction::Stop));
        let error = plan_evacuation(&state, "m1", Some("live-migrate"), 7).unwrap_err();
        assert!(error.contains("instances (a, b, c)"), "{error}");
        let live = state_with(&[("e", "m1", Running, &[(EVACUATE_KEY, "live-migrate")])]);
        let error = plan_evacuation(&live, "m1", None, 7).unwrap_err();
        assert!(error.contains("instance (e)"), "{error}");
        assert!(plan_evacuation(&state, "m1", Some("fly"), 7)
            .unwrap_err()
            .contains("fly"));
        assert!(plan_evacuation(&state, "m9", None, 7)
            .unwrap_err()
            .contains("m9"));
    }

    /// Goal: self-healing is due only for a member offline past the threshold (and never when
    /// the threshold is 0 or the member is evacuated already); it recreates only instances that
    /// allow it, and lists the others as failed with the reason.
    #[test]
    fn healing_waits_for_the_threshold_and_asks_the_instance() {
        use InstanceStatus::*;
        let mut state = state_with(&[
            ("phoenix", "m3", Running, &[(RECREATE_KEY, "true")]),
            ("anchored", "m3", Running, &[]),
        ]);
        let offline_since = 1_000_000;
        if let Some(record) = state.members.get_mut("m3") {
            record.status = MemberStatus::Offline;
            record.last_heartbeat_ms = offline_since;
        }
        assert!(
            healing_due(&state, offline_since + 3_600_000).is_empty(),
            "0 is off"
        );
        state
            .config
            .insert("cluster.healing_threshold".into(), "30".into());
        assert!(healing_due(&state, offline_since + 29_000).is_empty());
        assert_eq!(healing_due(&state, offline_since + 30_000), ["m3"]);
        let plan = plan_healing(&state, "m3", 5);
        let steps: Vec<_> = plan
            .steps
            .iter()
            .map(|step| (step.name.as_str(), step.action, &step.outcome))
            .collect();
        assert_eq!(steps[0].0, "anchored");
        assert!(
            matches!(steps[0].2, StepOutcome::Failed(reason) if reason.contains("offline") && reason.contains(RECREATE_KEY)),
            "{steps:?}"
        );
        assert_eq!(
            steps[1],
            ("phoenix", StepAction::Recreate, &StepOutcome::Pending)
        );
        state
            .apply(&Command::Evacuation(EvacuationCommand::Begin {
                evacuation: plan,
            }))
            .unwrap();
        assert!(healing_due(&state, offline_since + 30_000).is_empty());
    }

    /// Goal: a restore moves back what came from the member and starts what the evacuation
    /// stopped (only what ran before); `skip` does neither; a member not evacuated is refused.
    #[test]
    fn restore_brings_back_what_left() {
        use InstanceStatus::*;
        let mut state = state_with(&[
            ("moved", "m2", Running, &[(ORIGIN_KEY, "m1")]),
            ("stopped", "m1", Stopped, &[]),
            ("was-stopped", "m1", Stopped, &[]),
            ("other", "m3", Running, &[(ORIGIN_KEY, "m2")]),
        ]);
        assert!(plan_restore(&state, "m1", None, 1)
            .unwrap_err()
            .contains("not evacuated"));
        let mut evacuation = plan_evacuation(&state, "m1", Some("stop"), 1).unwrap();
        for step in &mut evacuation.steps {
            step.was_running = step.name == "stopped";
            step.outcome = StepOutcome::Stopped;
        }
        state
            .apply(&Command::Evacuation(EvacuationCommand::Begin {
                evacuation,
            }))
            .unwrap();
        state
            .apply(&Command::Evacuation(EvacuationCommand::End {
                member: "m1".into(),
                ended_at_ms: 2,
                cancelled: false,
            }))
            .unwrap();
        let plan = plan_restore(&state, "m1", None, 3).unwrap();
        let actions: Vec<_> = plan
            .steps
            .iter()
            .map(|step| (step.name.as_str(), step.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("moved", StepAction::MoveBack),
                ("stopped", StepAction::Start)
            ]
        );
        assert!(plan_restore(&state, "m1", Some("skip"), 3)
            .unwrap()
            .steps
            .is_empty());
        assert!(plan_restore(&state, "m1", Some("later"), 3).is_err());
    }
}
