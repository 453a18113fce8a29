//! Carrying out evacuations and restores on the leader, step by step, each step recorded.
//!
//! `cluster.evacuate` plans ([`super::plan`]), records the plan (`EvacuationCommand::Begin`:
//! the member becomes `Evacuated`, so placement skips it from then on), then runs the pending
//! steps [`PARALLEL_STEPS`] at a time, recording each outcome, and ends the record. A leader
//! that finds a record still running with no task of its own continues it (every heartbeat
//! round, [`Member::resume_evacuations`]): a step whose instance already moved is recorded as
//! moved, the others run again. A restore issued while an evacuation runs stops it from
//! starting new steps, waits for the steps under way, ends it as cancelled and restores; the
//! origin of every moved instance is in its record (`volatile.evacuate.origin`, written with
//! the move), so none is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::evacuation::{
    Evacuation, EvacuationCommand, EvacuationKind, EvacuationStep, StepAction, StepOutcome,
};
use starling_store::instances::InstanceStatus;
use starling_store::Command;

use super::plan::{self, ORIGIN_KEY};
use crate::cluster::join::WRITE_TIMEOUT;
use crate::instances::local::LocalOperation;
use crate::instances::moves::{MoveFailure, MoveOptions, Recorded};
use crate::instances::ops::{key_of, DEFAULT_STOP_TIMEOUT_S};
use crate::member::Member;
use crate::placement::{Reason, Target};
use crate::Error;

/// Steps run at once.
pub const PARALLEL_STEPS: usize = 4;
/// Placements tried for one instance before it is stopped instead (its destination died).
const PLACEMENTS_MAX: usize = 3;
/// How long a restore waits for the evacuation it takes over to finish its steps under way.
const TAKE_OVER_WAIT: Duration = Duration::from_secs(600);
/// How long an evacuation or restore may take, as its asker waits for it.
pub const EVACUATION_BUDGET: Duration = Duration::from_secs(3600);

/// An evacuation operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EvacuationOperation {
    /// `cluster.evacuate(name [, {action=}])`.
    Evacuate {
        /// The member.
        member: String,
        /// `auto`, `migrate`, `live-migrate` or `stop`; each instance's key when absent.
        action: Option<String>,
    },
    /// `cluster.restore(name [, {action=}])`.
    Restore {
        /// The member.
        member: String,
        /// `skip`: only the status.
        action: Option<String>,
    },
    /// `cluster.evacuation(name)`: the member's latest evacuation or restore.
    Show {
        /// The member.
        member: String,
    },
}

impl EvacuationOperation {
    /// Whether it changes the cluster state.
    pub fn is_write(&self) -> bool {
        !matches!(self, EvacuationOperation::Show { .. })
    }
}

/// The leader's evacuation tasks: one per member at most.
#[derive(Default)]
pub struct Tasks {
    running: Mutex<HashMap<String, Arc<Task>>>,
}

/// A running evacuation or restore.
#[derive(Default)]
struct Task {
    /// Start no new step.
    cancel: AtomicBool,
    /// Held while the task runs: a restore taking over waits on it.
    running: tokio::sync::Mutex<()>,
}

impl Tasks {
    fn get(&self, member: &str) -> Option<Arc<Task>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(member)
            .cloned()
    }

    /// Registers a task for `member`, unless one runs.
    fn claim(&self, member: &str) -> Option<Arc<Task>> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.contains_key(member) {
            return None;
        }
        let task = Arc::new(Task::default());
        running.insert(member.to_string(), task.clone());
        Some(task)
    }

    fn release(&self, member: &str) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(member);
    }
}

use crate::token::now_ms;

/// A record as `cluster.evacuation` shows it, with a summary.
pub fn evacuation_json(evacuation: &Evacuation) -> Value {
    let (done, total) = starling_store::evacuation::progress(evacuation);
    let mut moved = Vec::new();
    let mut stopped = Vec::new();
    let mut started = Vec::new();
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    for step in &evacuation.steps {
        match &step.outcome {
            StepOutcome::Moved(to) => {
                moved.push(json!({"name": step.name, "project": step.project, "to": to}))
            }
            StepOutcome::Stopped => stopped.push(json!(step.name)),
            StepOutcome::Started => started.push(json!(step.name)),
            StepOutcome::Failed(reason) => {
                failed.push(json!({"name": step.name, "project": step.project, "reason": reason}))
            }
            StepOutcome::Pending => pending.push(json!(step.name)),
        }
    }
    json!({
        "member": evacuation.member,
        "kind": evacuation.kind.as_str(),
        "action": evacuation.action,
        "running": evacuation.running(),
        "cancelled": evacuation.cancelled,
        "started_at": crate::token::format_time_ms(evacuation.started_at_ms),
        "ended_at": evacuation.ended_at_ms.map(crate::token::format_time_ms),
        "done": done,
        "total": total,
        "moved": moved,
        "stopped": stopped,
        "started": started,
        "failed": failed,
        "pending": pending,
    })
}

/// The answer of a leader that lost leadership while an evacuation or restore of `member` ran:
/// the record stays running and the new leader continues it.
fn moved_on(member: &str) -> Error {
    Error::LeadershipChanged(format!(
        "the evacuation of \"{member}\" goes on on the new leader"
    ))
}

impl Member {
    /// Runs an evacuation operation on the leader.
    pub(crate) async fn evacuation_here(
        &self,
        operation: &EvacuationOperation,
    ) -> Result<Value, Error> {
        match operation {
            EvacuationOperation::Evacuate { member, action } => {
                self.evacuate(member, action.as_deref()).await
            }
            EvacuationOperation::Restore { member, action } => {
                self.restore(member, action.as_deref()).await
            }
            EvacuationOperation::Show { member } => self
                .local_state(|state| state.evacuations.get(member).map(evacuation_json))
                .ok_or_else(|| Error::Refused(format!("member \"{member}\" was never evacuated"))),
        }
    }

    /// The answer to an evacuation or restore of `member` asked again after its first
    /// attempt began the record (its leader changed): the record's summary once it ends here.
    /// While it runs, this leader (or the one before it) carries it out; if this member stops
    /// leading, the member that asked looks for the next leader and asks again.
    pub(crate) async fn evacuation_outcome(&self, member: &str) -> Result<Value, Error> {
        let deadline = tokio::time::Instant::now() + EVACUATION_BUDGET;
        loop {
            if !self.is_leader() {
                return Err(moved_on(member));
            }
            // The record is read in place; only its end is turned into an answer.
            let look = self.local_state(|state| {
                state.evacuations.get(member).map(|record| {
                    if record.running() {
                        Progress::Running(record.kind)
                    } else {
                        Progress::Ended(evacuation_json(record))
                    }
                })
            });
            let kind = match look {
                None => {
                    return Err(Error::Internal(format!(
                        "the record of \"{member}\" is gone"
                    )))
                }
                Some(Progress::Ended(summary)) => return Ok(summary),
                Some(Progress::Running(kind)) => kind,
            };
            if tokio::time::Instant::now() > deadline {
                return Err(Error::OutcomeUnknown(format!(
                    "the {} of \"{member}\" is still running after {} s: see cluster.evacuation",
                    kind.as_str(),
                    EVACUATION_BUDGET.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn propose_evacuation(&self, command: EvacuationCommand) -> Result<(), Error> {
        self.propose(Command::Evacuation(command), WRITE_TIMEOUT)
            .await
    }

    /// `cluster.evacuate`: plans, records, runs; answers the summary.
    async fn evacuate(&self, member: &str, action: Option<&str>) -> Result<Value, Error> {
        if let Some(running) = self.local_state(|state| {
            state
                .evacuations
                .get(member)
                .filter(|record| record.running())
                .map(|record| record.kind)
        }) {
            return Err(Error::Refused(format!(
                "member \"{member}\" has a {} under way",
                running.as_str()
            )));
        }
        let evacuation = self
            .local_state(|state| plan::plan_evacuation(state, member, action, now_ms()))
            .map_err(Error::Refused)?;
        let Some(task) = self.inner.instances.evacuations.claim(member) else {
            return Err(Error::Refused(format!(
                "member \"{member}\" has an evacuation or restore under way"
            )));
        };
        let begun = self
            .propose_evacuation(EvacuationCommand::Begin { evacuation })
            .await;
        if let Err(error) = begun {
            self.inner.instances.evacuations.release(member);
            return Err(error);
        }
        tracing::info!(member, "evacuating");
        self.run_task(member, task).await
    }

    /// `cluster.restore`: takes over a running evacuation, then plans, records, runs.
    async fn restore(&self, member: &str, action: Option<&str>) -> Result<Value, Error> {
        let task = self.take_over(member).await?;
        let restore =
            match self.local_state(|state| plan::plan_restore(state, member, action, now_ms())) {
                Ok(restore) => restore,
                Err(error) => {
                    self.inner.instances.evacuations.release(member);
                    return Err(Error::Refused(error));
                }
            };
        let begun = self
            .propose_evacuation(EvacuationCommand::Begin {
                evacuation: restore,
            })
            .await;
        if let Err(error) = begun {
            self.inner.instances.evacuations.release(member);
            return Err(error);
        }
        tracing::info!(member, "restoring");
        self.run_task(member, task).await
    }

    /// Ends a running evacuation of `member` and answers the claim on it: a task running it
    /// starts no new step and is waited for (with its steps under way) until it lets go of
    /// its claim; a restore under way is waited for likewise; a record left running with no
    /// task (a change of leader) is ended as cancelled.
    async fn take_over(&self, member: &str) -> Result<Arc<Task>, Error> {
        let deadline = tokio::time::Instant::now() + TAKE_OVER_WAIT;
        let task = loop {
            if let Some(task) = self.inner.instances.evacuations.claim(member) {
                break task;
            }
            if let Some(running) = self.inner.instances.evacuations.get(member) {
                let kind = self
                    .local_state(|state| state.evacuations.get(member).map(|record| record.kind));
                if kind == Some(EvacuationKind::Evacuate) {
                    running.cancel.store(true, Ordering::SeqCst);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Refused(format!(
                    "the evacuation or restore of member \"{member}\" did not end within {} s",
                    TAKE_OVER_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let left_running = self.local_state(|state| {
            state
                .evacuations
                .get(member)
                .is_some_and(|record| record.running())
        });
        if left_running {
            let ended = self
                .propose_evacuation(EvacuationCommand::End {
                    member: member.to_string(),
                    ended_at_ms: now_ms(),
                    cancelled: true,
                })
                .await;
            if let Err(error) = ended {
                self.inner.instances.evacuations.release(member);
                return Err(error);
            }
            tracing::info!(member, "a running evacuation or restore ended by a restore");
        }
        Ok(task)
    }

    /// Runs the pending steps of `member`'s record with `task` claimed, ends the record and
    /// answers its summary.
    async fn run_task(&self, member: &str, task: Arc<Task>) -> Result<Value, Error> {
        let result = {
            let _running = task.running.lock().await;
            self.run_steps(member, &task).await
        };
        self.inner.instances.evacuations.release(member);
        result?;
        let record = self
            .local_state(|state| state.evacuations.get(member).cloned())
            .ok_or_else(|| Error::Internal(format!("the record of \"{member}\" is gone")))?;
        Ok(evacuation_json(&record))
    }

    async fn run_steps(&self, member: &str, task: &Task) -> Result<(), Error> {
        // A leader elected a moment ago may not have applied what its predecessor committed
        // (a move's new location): read the records only once they are up to date.
        self.linearize().await?;
        let Some(record) = self.local_state(|state| state.evacuations.get(member).cloned()) else {
            return Ok(());
        };
        if !record.running() {
            return Ok(());
        }
        let steps = plan::pending(&record);
        let kind = record.kind;
        let started_at_ms = record.started_at_ms;
        let description = match kind {
            starling_store::evacuation::EvacuationKind::Evacuate => "Evacuating cluster member",
            starling_store::evacuation::EvacuationKind::Restore => "Restoring cluster member",
        };
        let operation = crate::events::Tracked::start(
            self,
            description,
            serde_json::json!({ "cluster": [format!("/1.0/cluster/members/{member}")] }),
        );
        let total = steps.len();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let (tracked, done) = (&operation, &done);
        // Still this record, still running: a restore may have ended or replaced it.
        let current = move || {
            self.local_state(|state| {
                state.evacuations.get(member).is_some_and(|now| {
                    now.running() && now.kind == kind && now.started_at_ms == started_at_ms
                })
            })
        };
        let outcomes: Vec<Result<(), Error>> = futures::stream::iter(steps)
            .map(|step| async move {
                // A restore took over, or this member no longer leads (the next leader goes on).
                if task.cancel.load(Ordering::SeqCst) || !self.is_leader() || !current() {
                    return Ok(());
                }
                let outcome = self.run_step(member, &step).await;
                tracing::info!(member, instance = %step.name, action = step.action.as_str(), ?outcome, "evacuation step");
                let finished = done.fetch_add(1, Ordering::SeqCst) + 1;
                tracked.progress(serde_json::json!({
                    "done": finished,
                    "total": total,
                    "instance": step.name,
                    "action": step.action.as_str(),
                }));
                self.propose_evacuation(EvacuationCommand::Step {
                    member: member.to_string(),
                    project: step.project.clone(),
                    name: step.name.clone(),
                    outcome,
                })
                .await
            })
            .buffer_unordered(PARALLEL_STEPS)
            .collect()
            .await;
        let ended = self.end_steps(member, task, outcomes).await;
        operation.end(match &ended {
            Ok(()) => Ok(serde_json::json!({ "done": total, "total": total })),
            Err(error) => Err(error.to_string()),
        });
        ended?;
        tracing::info!(
            member,
            kind = kind.as_str(),
            cancelled = task.cancel.load(Ordering::SeqCst),
            "evacuation record ended"
        );
        Ok(())
    }

    /// Records the end of `member`'s record once its steps ran (unless a step could not be
    /// recorded, or this member stopped leading: the next leader goes on).
    async fn end_steps(
        &self,
        member: &str,
        task: &Task,
        outcomes: Vec<Result<(), Error>>,
    ) -> Result<(), Error> {
        // A step that could not be recorded (no quorum, leadership moved) stays pending: the
        // record keeps running and the next leader continues it.
        if let Some(error) = outcomes.into_iter().find_map(Result::err) {
            return Err(error);
        }
        if !self.is_leader() {
            return Err(moved_on(member));
        }
        let cancelled = task.cancel.load(Ordering::SeqCst);
        self.propose_evacuation(EvacuationCommand::End {
            member: member.to_string(),
            ended_at_ms: now_ms(),
            cancelled,
        })
        .await
    }

    /// Carries out one step; its outcome.
    async fn run_step(&self, member: &str, step: &EvacuationStep) -> StepOutcome {
        let result = match step.action {
            StepAction::Migrate => self.migrate_away(member, step).await,
            StepAction::Stop => self.stop_for_evacuation(step).await,
            StepAction::MoveBack => self.move_back(member, step).await,
            StepAction::Start => self.start_again(step).await,
            StepAction::Recreate => self.recreate_elsewhere(member, step).await,
        };
        result.unwrap_or_else(|error| StepOutcome::Failed(error.to_string()))
    }

    async fn migrate_away(
        &self,
        member: &str,
        step: &EvacuationStep,
    ) -> Result<StepOutcome, Error> {
        let mut last_error = None;
        // A destination that died or cannot be reached fails the move (after the QUIC idle
        // timeout at worst) long before it is recorded offline: the next try goes elsewhere.
        let mut avoid = BTreeSet::new();
        for _ in 0..PLACEMENTS_MAX {
            let instance = self.instance_record(&step.project, &step.name)?;
            if instance.location != member {
                // Moved already (by a former leader, before it recorded the step).
                self.ensure_running(&instance, step.was_running).await?;
                return Ok(StepOutcome::Moved(instance.location));
            }
            let options = MoveOptions {
                reason: Reason::Evacuation,
                config: BTreeMap::from([(ORIGIN_KEY.to_string(), Some(member.to_string()))]),
                stop_timeout_s: self.stop_timeout_s(&instance),
                start_after: step.was_running,
                avoid: avoid.clone(),
            };
            match self
                .relocate(&step.project, &step.name, &Target::None, options)
                .await
            {
                Ok(moved) => {
                    return Ok(StepOutcome::Moved(
                        moved["location"].as_str().unwrap_or_default().to_string(),
                    ))
                }
                Err(MoveFailure { to, error }) => {
                    tracing::warn!(instance = %step.name, to = ?to, %error, "an evacuation move failed; placing again");
                    avoid.extend(to);
                    last_error = Some(error);
                }
            }
        }
        // No member could take it: `auto` (the default) stops it instead, as LXD does.
        let instance = self.instance_record(&step.project, &step.name)?;
        let (config, _) = self.local_state(|state| state.expanded(&instance));
        let explicit_migrate =
            config.get(plan::EVACUATE_KEY).map(String::as_str) == Some("migrate");
        let reason = last_error.map_or_else(String::new, |error| error.to_string());
        if explicit_migrate {
            return Ok(StepOutcome::Failed(reason));
        }
        tracing::warn!(instance = %step.name, %reason, "stopping the instance instead of moving it");
        self.stop_for_evacuation(step).await
    }

    async fn stop_for_evacuation(&self, step: &EvacuationStep) -> Result<StepOutcome, Error> {
        let instance = self.instance_record(&step.project, &step.name)?;
        if instance.status == InstanceStatus::Running {
            let stop = LocalOperation::Stop {
                key: key_of(&instance),
                force: false,
                timeout_s: self.stop_timeout_s(&instance),
            };
            if let Err(error) = self.on_location(&instance, stop).await {
                if self.instance_record(&step.project, &step.name)?.status
                    == InstanceStatus::Running
                {
                    return Err(error);
                }
            }
        }
        Ok(StepOutcome::Stopped)
    }

    async fn move_back(&self, member: &str, step: &EvacuationStep) -> Result<StepOutcome, Error> {
        let instance = self.instance_record(&step.project, &step.name)?;
        if instance.location == member {
            return Ok(StepOutcome::Moved(member.to_string()));
        }
        let options = MoveOptions {
            reason: Reason::Relocation,
            config: BTreeMap::from([(ORIGIN_KEY.to_string(), None)]),
            stop_timeout_s: self.stop_timeout_s(&instance),
            start_after: false,
            avoid: BTreeSet::new(),
        };
        let moved = self
            .relocate(
                &step.project,
                &step.name,
                &Target::Member(member.to_string()),
                options,
            )
            .await
            .map_err(|failure| failure.error)?;
        Ok(StepOutcome::Moved(
            moved["location"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// Self-healing: the instance's member is offline, so it is created again from its image
    /// on the member placement chooses, as a move whose copy comes from the image
    /// ([`Member::recreate_on`]); then it starts if it ran. Asked again after the record moved
    /// (a change of leader), it only starts it.
    async fn recreate_elsewhere(
        &self,
        member: &str,
        step: &EvacuationStep,
    ) -> Result<StepOutcome, Error> {
        let mut instance = self.instance_record(&step.project, &step.name)?;
        if instance.location == member {
            let request = self.local_state(|state| {
                crate::instances::moves::placement_request_of(state, &instance, Reason::Evacuation)
            });
            let placed = self
                .place_instance(&request, &Target::None, Some(member), &BTreeSet::new())
                .await?;
            let to = placed.name.clone();
            let recreated = self.recreate_on(&instance, &to).await;
            drop(placed);
            recreated?;
            instance = self.instance_record(&step.project, &step.name)?;
            tracing::warn!(instance = %step.name, from = member, to = %to, "recreated the instance of an offline member from its image");
        }
        self.ensure_running(&instance, step.was_running).await?;
        Ok(StepOutcome::Moved(instance.location))
    }

    /// Creates `instance` again from its image on member `to`, as a move: it claims the
    /// instance, `to` unpacks the image stamped with the claim's id
    /// ([`LocalOperation::Prepare`]), then the record moves (only while the claim holds).
    /// Until then the record stays on the offline member, whose copy is whole when it is back
    /// (the record moving first, a create that then failed left the instance recorded where
    /// nothing was, and its member, back, removed its copy: `starling-chaos` seed 7). A
    /// failure removes the copy it made, or leaves it for `to` to settle.
    async fn recreate_on(
        &self,
        instance: &starling_store::instances::Instance,
        to: &str,
    ) -> Result<(), Error> {
        self.ensure_image_on(&instance.image, to).await?;
        let id = self.claim_move(instance).await?;
        let mut at_target = instance.clone();
        at_target.location = to.to_string();
        let discard = LocalOperation::Discard {
            key: key_of(instance),
            stamp: Some(id.clone()),
        };
        let prepare = LocalOperation::Prepare {
            key: key_of(instance),
            fingerprint: instance.image.clone(),
            stamp: id.clone(),
        };
        if let Err(error) = self.on_location(&at_target, prepare).await {
            let _ = self.release_claim(instance, &id).await;
            let _ = self.on_location(&at_target, discard).await;
            return Err(error);
        }
        let origin = BTreeMap::from([(ORIGIN_KEY.to_string(), Some(instance.location.clone()))]);
        match self.record_move(instance, &id, to, origin).await {
            Recorded::Landed => Ok(()),
            Recorded::NotLanded(error) => {
                let _ = self.on_location(&at_target, discard).await;
                Err(error)
            }
            Recorded::Unknown(error) => Err(Error::OutcomeUnknown(format!(
                "the recreate of instance \"{}\" on member \"{to}\" may or may not have been \
                 recorded ({error})",
                instance.name
            ))),
        }
    }

    async fn start_again(&self, step: &EvacuationStep) -> Result<StepOutcome, Error> {
        let instance = self.instance_record(&step.project, &step.name)?;
        self.ensure_running(&instance, true).await?;
        Ok(StepOutcome::Started)
    }

    /// Starts `instance` on its member if `wanted` and it does not run.
    async fn ensure_running(
        &self,
        instance: &starling_store::instances::Instance,
        wanted: bool,
    ) -> Result<(), Error> {
        if !wanted || instance.status == InstanceStatus::Running {
            return Ok(());
        }
        let config = self.local_state(|state| state.expanded(instance).0);
        let start = LocalOperation::Start {
            key: key_of(instance),
            config,
        };
        self.on_location(instance, start).await.map(|_| ())
    }

    /// `boot.host_shutdown_timeout` of the instance (expanded), else the default.
    fn stop_timeout_s(&self, instance: &starling_store::instances::Instance) -> u64 {
        self.local_state(|state| state.expanded(instance).0)
            .get("boot.host_shutdown_timeout")
            .and_then(|value| value.parse().ok())
            .unwrap_or(DEFAULT_STOP_TIMEOUT_S)
    }

    /// Leader, every heartbeat round: starts self-healing for members offline past
    /// `cluster.healing_threshold`, and continues each running record that no task here runs
    /// (left by a former leader, or by this one before a restart).
    pub(crate) async fn resume_evacuations(&self) {
        for member in self.local_state(|state| plan::healing_due(state, now_ms())) {
            let evacuation = self.local_state(|state| plan::plan_healing(state, &member, now_ms()));
            tracing::warn!(
                member,
                instances = evacuation.steps.len(),
                "member offline past cluster.healing_threshold: evacuating it"
            );
            let Some(task) = self.inner.instances.evacuations.claim(&member) else {
                continue;
            };
            let begun = self
                .propose_evacuation(EvacuationCommand::Begin { evacuation })
                .await;
            self.inner.instances.evacuations.release(&member);
            drop(task);
            if let Err(error) = begun {
                tracing::warn!(member, %error, "could not start self-healing");
            }
        }
        let running: Vec<String> = self.local_state(|state| {
            state
                .evacuations
                .values()
                .filter(|record| record.running())
                .map(|record| record.member.clone())
                .collect()
        });
        for member in running {
            let Some(task) = self.inner.instances.evacuations.claim(&member) else {
                continue;
            };
            tracing::info!(member, "continuing an evacuation record left running");
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = this.run_task(&member, task).await {
                    tracing::warn!(member, %error, "a continued evacuation stopped; the next leader round goes on");
                }
            });
        }
    }
}

/// Where an evacuation or restore stands, as `evacuation_outcome` reads its record.
enum Progress {
    /// Still running: its kind names it in a timeout's error.
    Running(EvacuationKind),
    /// Ended: the record's summary.
    Ended(Value),
}
