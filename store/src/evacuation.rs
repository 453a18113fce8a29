//! Evacuations and restores as the cluster database records them, step by step, so that a new
//! leader (or a restarted one) continues one where the last stopped.
//!
//! Each member has at most one record: the latest evacuation or restore, kept once it ended so
//! its summary can be read. An instance moved by an evacuation also carries
//! `volatile.evacuate.origin` (set in the same command that moves its record), so no origin is
//! lost whatever happens to this record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::{check_len, DESCRIPTION_BYTES_MAX, NAME_BYTES_MAX};
use crate::model::{ClusterState, MemberStatus};

/// Most instances one evacuation record lists.
pub const STEPS_MAX: usize = 4096;

/// An evacuation or a restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvacuationKind {
    /// `cluster evacuate`: the member's instances leave (or stop).
    Evacuate,
    /// `cluster restore`: instances come back (or start again).
    Restore,
}

impl EvacuationKind {
    /// `evacuate` or `restore`.
    pub fn as_str(self) -> &'static str {
        match self {
            EvacuationKind::Evacuate => "evacuate",
            EvacuationKind::Restore => "restore",
        }
    }
}

/// What one step does to one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepAction {
    /// Move it to another member (placed with reason `evacuation`).
    Migrate,
    /// Stop it where it is.
    Stop,
    /// Move it back to the restored member (its origin).
    MoveBack,
    /// Start it again where it is (stopped by the evacuation).
    Start,
    /// Create it again from its image on another member (self-healing: its member is offline
    /// and its root file system out of reach).
    Recreate,
}

impl StepAction {
    /// LXD's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepAction::Migrate => "migrate",
            StepAction::Stop => "stop",
            StepAction::MoveBack => "move-back",
            StepAction::Start => "start",
            StepAction::Recreate => "recreate",
        }
    }
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutcome {
    /// Not done yet.
    Pending,
    /// Moved to this member.
    Moved(String),
    /// Stopped (or already stopped).
    Stopped,
    /// Started again (or already running).
    Started,
    /// Failed, with the reason.
    Failed(String),
}

/// One instance of an evacuation or restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuationStep {
    /// Its project.
    pub project: String,
    /// Its name.
    pub name: String,
    /// What is done to it.
    pub action: StepAction,
    /// Whether it ran when the step was planned (a moved instance is started again).
    pub was_running: bool,
    /// How it ended.
    pub outcome: StepOutcome,
}

/// A member's latest evacuation or restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evacuation {
    /// The member.
    pub member: String,
    /// Evacuate or restore.
    pub kind: EvacuationKind,
    /// The `--action` given (`auto`, `migrate`, `stop`, `skip`), or empty.
    pub action: String,
    /// Started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Ended, when it has.
    pub ended_at_ms: Option<u64>,
    /// Ended because a restore took over.
    pub cancelled: bool,
    /// The instances, in the order planned.
    pub steps: Vec<EvacuationStep>,
}

impl Evacuation {
    /// Whether it is still under way.
    pub fn running(&self) -> bool {
        self.ended_at_ms.is_none()
    }
}

/// A change to the evacuation records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvacuationCommand {
    /// Records a new evacuation (the member becomes `Evacuated`) or restore (the member
    /// becomes `Online`). Refused while another one of that member runs.
    Begin {
        /// The record, every step `Pending`.
        evacuation: Evacuation,
    },
    /// Records how one step ended.
    Step {
        /// The member.
        member: String,
        /// The instance's project.
        project: String,
        /// The instance's name.
        name: String,
        /// How it ended.
        outcome: StepOutcome,
    },
    /// Ends the member's running evacuation or restore.
    End {
        /// The member.
        member: String,
        /// When, milliseconds since the Unix epoch.
        ended_at_ms: u64,
        /// Ended because a restore took over.
        cancelled: bool,
    },
}

impl EvacuationCommand {
    /// Checks every field against its size limit.
    pub fn check_fields(&self) -> Result<(), String> {
        match self {
            EvacuationCommand::Begin { evacuation } => {
                check_len("member name", &evacuation.member, NAME_BYTES_MAX)?;
                check_len("evacuation action", &evacuation.action, NAME_BYTES_MAX)?;
                if evacuation.steps.len() > STEPS_MAX {
                    return Err(format!(
                        "an evacuation lists {} instances, more than {STEPS_MAX}",
                        evacuation.steps.len()
                    ));
                }
                evacuation.steps.iter().try_for_each(|step| {
                    check_len("project name", &step.project, NAME_BYTES_MAX)?;
                    check_len("instance name", &step.name, NAME_BYTES_MAX)?;
                    check_outcome(&step.outcome)
                })
            }
            EvacuationCommand::Step {
                member,
                project,
                name,
                outcome,
            } => {
                check_len("member name", member, NAME_BYTES_MAX)?;
                check_len("project name", project, NAME_BYTES_MAX)?;
                check_len("instance name", name, NAME_BYTES_MAX)?;
                check_outcome(outcome)
            }
            EvacuationCommand::End { member, .. } => {
                check_len("member name", member, NAME_BYTES_MAX)
            }
        }
    }
}

fn check_outcome(outcome: &StepOutcome) -> Result<(), String> {
    match outcome {
        StepOutcome::Moved(member) => check_len("member name", member, NAME_BYTES_MAX),
        StepOutcome::Failed(reason) => check_len("failure reason", reason, DESCRIPTION_BYTES_MAX),
        _ => Ok(()),
    }
}

impl ClusterState {
    /// Applies an evacuation command.
    pub(crate) fn apply_evacuation(&mut self, command: &EvacuationCommand) -> Result<(), String> {
        match command {
            EvacuationCommand::Begin { evacuation } => {
                let member = self
                    .members
                    .get_mut(&evacuation.member)
                    .ok_or_else(|| format!("member \"{}\" not found", evacuation.member))?;
                if let Some(running) = self
                    .evacuations
                    .get(&evacuation.member)
                    .filter(|record| record.running())
                {
                    return Err(format!(
                        "member \"{}\" has a {} under way",
                        evacuation.member,
                        running.kind.as_str()
                    ));
                }
                member.status = match evacuation.kind {
                    EvacuationKind::Evacuate => MemberStatus::Evacuated,
                    EvacuationKind::Restore => MemberStatus::Online,
                };
                self.evacuations
                    .insert(evacuation.member.clone(), evacuation.clone());
                Ok(())
            }
            EvacuationCommand::Step {
                member,
                project,
                name,
                outcome,
            } => {
                let record = self
                    .evacuations
                    .get_mut(member)
                    .filter(|record| record.running())
                    .ok_or_else(|| format!("member \"{member}\" has no evacuation under way"))?;
                let step = record
                    .steps
                    .iter_mut()
                    .find(|step| step.project == *project && step.name == *name)
                    .ok_or_else(|| {
                        format!("instance \"{name}\" is not part of the evacuation of \"{member}\"")
                    })?;
                step.outcome = outcome.clone();
                Ok(())
            }
            EvacuationCommand::End {
                member,
                ended_at_ms,
                cancelled,
            } => {
                let record = self
                    .evacuations
                    .get_mut(member)
                    .filter(|record| record.running())
                    .ok_or_else(|| format!("member \"{member}\" has no evacuation under way"))?;
                record.ended_at_ms = Some(*ended_at_ms);
                record.cancelled = *cancelled;
                Ok(())
            }
        }
    }
}

/// Counts of a record's steps by outcome: (done, total).
pub fn progress(evacuation: &Evacuation) -> (usize, usize) {
    let done = evacuation
        .steps
        .iter()
        .filter(|step| step.outcome != StepOutcome::Pending)
        .count();
    (done, evacuation.steps.len())
}

/// The keys of a record's steps, for lookups.
pub fn step_index(evacuation: &Evacuation) -> BTreeMap<(String, String), usize> {
    evacuation
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| ((step.project.clone(), step.name.clone()), index))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn record(kind: EvacuationKind) -> Evacuation {
        Evacuation {
            member: "m1".into(),
            kind,
            action: String::new(),
            started_at_ms: 1,
            ended_at_ms: None,
            cancelled: false,
            steps: vec![EvacuationStep {
                project: "default".into(),
                name: "c1".into(),
                action: StepAction::Migrate,
                was_running: true,
                outcome: StepOutcome::Pending,
            }],
        }
    }

    /// Goal: a begin marks the member, one record runs at a time, steps and the end are
    /// recorded, and a restore makes the member usable again.
    #[test]
    fn records_follow_the_evacuation() {
        let mut state = crate::command::tests::bootstrapped();
        let evacuation = record(EvacuationKind::Evacuate);
        state
            .apply(&Command::Evacuation(EvacuationCommand::Begin {
                evacuation: evacuation.clone(),
            }))
            .unwrap();
        assert_eq!(state.members["m1"].status, MemberStatus::Evacuated);
        let again = state
            .apply(&Command::Evacuation(EvacuationCommand::Begin {
                evacuation: record(EvacuationKind::Restore),
            }))
            .unwrap_err();
        assert!(again.contains("evacuate under way"), "{again}");
        let unknown = state
            .apply(&Command::Evacuation(EvacuationCommand::Step {
                member: "m1".into(),
                project: "default".into(),
                name: "c9".into(),
                outcome: StepOutcome::Stopped,
            }))
            .unwrap_err();
        assert!(unknown.contains("c9"), "{unknown}");
        state
            .apply(&Command::Evacuation(EvacuationCommand::Step {
                member: "m1".into(),
                project: "default".into(),
                name: "c1".into(),
                outcome: StepOutcome::Moved("m2".into()),
            }))
            .unwrap();
        assert_eq!(progress(&state.evacuations["m1"]), (1, 1));
        state
            .apply(&Command::Evacuation(EvacuationCommand::End {
                member: "m1".into(),
                ended_at_ms: 5,
                cancelled: false,
            }))
            .unwrap();
        assert!(!state.evacuations["m1"].running());
        state
            .apply(&Command::Evacuation(EvacuationCommand::Begin {
                evacuation: record(EvacuationKind::Restore),
            }))
            .unwrap();
        assert_eq!(state.members["m1"].status, MemberStatus::Online);
    }
}
