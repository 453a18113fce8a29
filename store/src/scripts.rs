//! Stored scripts and the record of their runs.
//!
//! A run exists only once its claim is committed: the leader's scheduler claims the tick of a
//! scheduled script (`Claim` with `tick_ms`) before the script starts, and the state machine
//! refuses a claim for a tick at or before the script's last claimed tick, so no tick runs
//! twice — not across a change of leader, not from a leader cut off from the others (it cannot
//! commit). A run ends with `End` (ok, error, timeout) or is marked `Lost` when its member
//! died or stopped leading with it under way; a lost run is never run again.
//!
//! The record keeps the last [`RUNS_KEPT`] runs of the whole cluster (the oldest finished ones
//! go first); each keeps the first [`OUTPUT_KEPT_BYTES`] of what the run printed and of its
//! result.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::limits::{check_len, DESCRIPTION_BYTES_MAX, NAME_BYTES_MAX, SCRIPT_SOURCE_BYTES_MAX};
use crate::model::ClusterState;

/// Runs kept in the record, cluster-wide.
pub const RUNS_KEPT: usize = 1_000;
/// Bytes of a run's printed output, result and error kept in its record.
pub const OUTPUT_KEPT_BYTES: usize = 4 * 1024;
/// Stored scripts at most.
pub const SCRIPTS_MAX: usize = 1_024;
/// Longest schedule, `member` or `on` text.
pub const SPEC_BYTES_MAX: usize = 128;
/// Events a script's `on` names at most.
pub const ON_MAX: usize = 32;

/// What happens to ticks missed while there was no leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Missed {
    /// The latest missed tick runs once when a leader is back (the default).
    #[default]
    RunOnce,
    /// Missed ticks do not run (each leaves a `skipped` record).
    Skip,
}

impl Missed {
    /// `run_once` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::RunOnce => "run_once",
            Missed::Skip => "skip",
        }
    }

    /// The policy named `text`.
    pub fn parse(text: &str) -> Result<Missed, String> {
        match text {
            "run_once" => Ok(Missed::RunOnce),
            "skip" => Ok(Missed::Skip),
            other => Err(format!(
                "missed must be \"run_once\" or \"skip\", not \"{other}\""
            )),
        }
    }
}

/// A script kept in the cluster database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredScript {
    /// Its name (LXD's name rules).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Lua source.
    pub source: String,
    /// When it runs by itself: a 5-field cron expression in UTC, `@hourly`..., or
    /// `@every <duration>`; `None`: only when asked.
    pub schedule: Option<String>,
    /// Lifecycle events that start it (actions, or prefixes ending in `*`; see
    /// [`crate::lifecycle`]): each matching event runs it once.
    pub on: Vec<String>,
    /// Where it runs: a member, `@group`, or `None` for the leader.
    pub member: Option<String>,
    /// Wall-clock bound of one run, in seconds.
    pub timeout_s: u32,
    /// What happens to missed ticks.
    pub missed: Missed,
    /// When it was stored, milliseconds since the Unix epoch (ticks count from there).
    pub created_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
}

/// How a run went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    /// Under way.
    Running,
    /// Returned.
    Ok,
    /// Raised an error.
    Error,
    /// Went over its time bound.
    Timeout,
    /// Its member died, or stopped, with the run under way: it may have had effects.
    Lost,
    /// Not run (its member was offline, or the tick was missed with `missed = skip`).
    Skipped,
}

impl RunStatus {
    /// LXD-style lower-case word.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Error => "error",
            RunStatus::Timeout => "timeout",
            RunStatus::Lost => "lost",
            RunStatus::Skipped => "skipped",
        }
    }
}

/// One run of a stored script.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptRun {
    /// Sequential id, cluster-wide.
    pub id: u64,
    /// The script.
    pub script: String,
    /// The scheduled time this run belongs to (scheduled runs only).
    pub tick_ms: Option<u64>,
    /// The event that triggered it (triggered runs only).
    pub event: Option<String>,
    /// The member it runs on.
    pub member: String,
    /// When it was claimed.
    pub started_at_ms: u64,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// How it went.
    pub status: RunStatus,
    /// Its result, as JSON text (cut at [`OUTPUT_KEPT_BYTES`]).
    pub result: Option<String>,
    /// Why it failed, was lost or was skipped.
    pub error: Option<String>,
    /// The first [`OUTPUT_KEPT_BYTES`] it printed.
    pub output: String,
    /// The claim's id (random), by which its proposer finds it.
    pub claim: u128,
    /// Its failure makes no `script-run-failed` event (it was triggered by one: a script that
    /// fails on every failure would otherwise trigger itself for ever).
    pub quiet: bool,
}

/// A run waiting to be claimed: a lifecycle event matched the script's `on`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// The script.
    pub script: String,
    /// The event.
    pub event: crate::lifecycle::Lifecycle,
}

/// Triggered runs waiting for the leader at most; past that an event's run is recorded
/// `skipped`.
pub const TRIGGERS_WAITING_MAX: usize = 1_000;

/// Stored scripts, their runs, and the last tick claimed for each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptsState {
    /// Scripts by name.
    pub scripts: BTreeMap<String, StoredScript>,
    /// Runs, oldest first.
    pub runs: VecDeque<ScriptRun>,
    /// The id the next run gets.
    pub next_run_id: u64,
    /// The last tick claimed for each scheduled script (survives updates of the script, so a
    /// changed schedule never re-runs a tick).
    pub last_tick: BTreeMap<String, u64>,
    /// Triggered runs waiting to be claimed, oldest first.
    pub triggers: VecDeque<Trigger>,
    /// The latest time a script command carried (a run skipped by the state machine itself
    /// has no command time of its own).
    pub clock_ms: u64,
}

impl ScriptsState {
    /// The run claimed with `claim`.
    pub fn run_by_claim(&self, claim: u128) -> Option<&ScriptRun> {
        self.runs.iter().rev().find(|run| run.claim == claim)
    }

    /// The run with `id`.
    pub fn run(&self, id: u64) -> Option<&ScriptRun> {
        self.runs.iter().rev().find(|run| run.id == id)
    }

    fn run_mut(&mut self, id: u64) -> Option<&mut ScriptRun> {
        self.runs.iter_mut().rev().find(|run| run.id == id)
    }

    /// Records that `event` triggers `script`: a run waits for the leader's claim, or, when
    /// [`TRIGGERS_WAITING_MAX`] wait already, a `skipped` run says why it did not run.
    pub(crate) fn trigger(&mut self, script: &str, event: &crate::lifecycle::Lifecycle) {
        if self.triggers.len() < TRIGGERS_WAITING_MAX {
            self.triggers.push_back(Trigger {
                script: script.to_string(),
                event: event.clone(),
            });
            return;
        }
        let id = self.next_run_id;
        self.next_run_id += 1;
        self.runs.push_back(ScriptRun {
            id,
            script: script.to_string(),
            tick_ms: None,
            event: Some(format!("{} #{}", event.action, event.id)),
            member: String::new(),
            started_at_ms: self.clock_ms,
            ended_at_ms: Some(self.clock_ms),
            status: RunStatus::Skipped,
            result: None,
            error: Some(format!(
                "{TRIGGERS_WAITING_MAX} triggered runs were waiting for the leader already"
            )),
            output: String::new(),
            claim: 0,
            quiet: false,
        });
        self.prune();
    }

    /// Drops the oldest finished runs past [`RUNS_KEPT`].
    fn prune(&mut self) {
        while self.runs.len() > RUNS_KEPT {
            match self
                .runs
                .iter()
                .position(|run| run.status != RunStatus::Running)
            {
                Some(index) => {
                    self.runs.remove(index);
                }
                None => break,
            }
        }
    }
}

/// A change to stored scripts or their runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ScriptCommand {
    /// Stores a new script (`create`) or replaces one (`!create`, keeping `created_at_ms`).
    Put {
        /// The script.
        script: StoredScript,
        /// Whether it must be new (else it must exist).
        create: bool,
    },
    /// Deletes a script (its runs stay in the record).
    Delete {
        /// Its name.
        name: String,
    },
    /// Claims a run: refused for a tick at or before the script's last claimed tick, and for
    /// an event whose run is not waiting (claimed already).
    Claim {
        /// The claim's id (random): the proposer finds its run by it.
        claim: u128,
        /// The script.
        script: String,
        /// The scheduled time, for a scheduled run.
        tick_ms: Option<u64>,
        /// The id of the lifecycle event, for a triggered run.
        trigger: Option<u64>,
        /// The triggering event, for a triggered run.
        event: Option<String>,
        /// The member that runs it.
        member: String,
        /// Now.
        now_ms: u64,
        /// `None`: the run starts (`running`); `Some(reason)`: it is recorded `skipped`.
        skipped: Option<String>,
    },
    /// A run ended.
    End {
        /// The run.
        run: u64,
        /// `Ok`, `Error` or `Timeout`.
        status: RunStatus,
        /// Its result, JSON text.
        result: Option<String>,
        /// Its error.
        error: Option<String>,
        /// What it printed.
        output: String,
        /// Now.
        now_ms: u64,
    },
    /// Runs under way that will never end: their member died or restarted.
    Lost {
        /// The runs.
        runs: Vec<u64>,
        /// Why.
        reason: String,
        /// Now.
        now_ms: u64,
    },
    /// Changes the fields of a stored script that `changes` names, on the script as it is when
    /// applied: unlike [`ScriptCommand::Put`]'s whole script, it never undoes another change
    /// applied in between.
    Patch {
        /// Its name.
        name: String,
        /// What changes.
        changes: ScriptChanges,
        /// Now.
        now_ms: u64,
    },
}

/// The fields a [`ScriptCommand::Patch`] changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptChanges {
    /// New source.
    pub source: Option<String>,
    /// New schedule (`Some(None)`: none).
    pub schedule: Option<Option<String>>,
    /// New events.
    pub on: Option<Vec<String>>,
    /// New place to run (`Some(None)`: the leader).
    pub member: Option<Option<String>>,
    /// New description.
    pub description: Option<String>,
    /// New time bound, seconds.
    pub timeout_s: Option<u32>,
    /// New handling of missed ticks.
    pub missed: Option<Missed>,
}

impl ScriptChanges {
    /// `script` with these changes made.
    pub fn applied_to(&self, script: &StoredScript) -> StoredScript {
        let mut script = script.clone();
        if let Some(source) = &self.source {
            script.source = source.clone();
        }
        if let Some(schedule) = &self.schedule {
            script.schedule = schedule.clone();
        }
        if let Some(on) = &self.on {
            script.on = on.clone();
        }
        if let Some(member) = &self.member {
            script.member = member.clone();
        }
        if let Some(description) = &self.description {
            script.description = description.clone();
        }
        if let Some(timeout_s) = self.timeout_s {
            script.timeout_s = timeout_s;
        }
        if let Some(missed) = self.missed {
            script.missed = missed;
        }
        script
    }
}

impl ScriptCommand {
    /// The size limits of the command's fields.
    pub fn check_fields(&self) -> Result<(), String> {
        match self {
            ScriptCommand::Put { script, .. } => {
                check_len("script name", &script.name, NAME_BYTES_MAX)?;
                check_len(
                    "script description",
                    &script.description,
                    DESCRIPTION_BYTES_MAX,
                )?;
                check_len("script source", &script.source, SCRIPT_SOURCE_BYTES_MAX)?;
                for spec in [&script.schedule, &script.member].into_iter().flatten() {
                    check_len("script schedule or member", spec, SPEC_BYTES_MAX)?;
                }
                if script.on.len() > ON_MAX {
                    return Err(format!("a script has at most {ON_MAX} on= events"));
                }
                for pattern in &script.on {
                    check_len("script event", pattern, SPEC_BYTES_MAX)?;
                }
                Ok(())
            }
            ScriptCommand::Patch { name, changes, .. } => {
                check_len("script name", name, NAME_BYTES_MAX)?;
                if let Some(description) = &changes.description {
                    check_len("script description", description, DESCRIPTION_BYTES_MAX)?;
                }
                if let Some(source) = &changes.source {
                    check_len("script source", source, SCRIPT_SOURCE_BYTES_MAX)?;
                }
                let specs = [&changes.schedule, &changes.member];
                for spec in specs.into_iter().flatten().flatten() {
                    check_len("script schedule or member", spec, SPEC_BYTES_MAX)?;
                }
                if let Some(on) = &changes.on {
                    if on.len() > ON_MAX {
                        return Err(format!("a script has at most {ON_MAX} on= events"));
                    }
                    for pattern in on {
                        check_len("script event", pattern, SPEC_BYTES_MAX)?;
                    }
                }
                Ok(())
            }
            ScriptCommand::Delete { name } => check_len("script name", name, NAME_BYTES_MAX),
            ScriptCommand::Claim {
                script,
                event,
                member,
                skipped,
                ..
            } => {
                check_len("script name", script, NAME_BYTES_MAX)?;
                check_len("member name", member, NAME_BYTES_MAX)?;
                for text in [event, skipped].into_iter().flatten() {
                    check_len("run reason", text, OUTPUT_KEPT_BYTES)?;
                }
                Ok(())
            }
            ScriptCommand::End {
                result,
                error,
                output,
                ..
            } => {
                for text in [result, error].into_iter().flatten() {
                    check_len("run result", text, OUTPUT_KEPT_BYTES)?;
                }
                check_len("run output", output, OUTPUT_KEPT_BYTES)
            }
            ScriptCommand::Lost { runs, reason, .. } => {
                if runs.len() > RUNS_KEPT {
                    return Err(format!("more than {RUNS_KEPT} runs lost at once"));
                }
                check_len("run reason", reason, OUTPUT_KEPT_BYTES)
            }
        }
    }
}

/// A script name: letters, digits, `-`, `_` and `.`, starting with a letter, at most 63 bytes
/// (it is also the chunk name in the script's error messages).
pub fn check_script_name(name: &str) -> Result<(), String> {
    let valid = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let first = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !valid || !first || name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "invalid script name \"{}\": letters, digits, '-', '_' and '.', starting with a letter, at most {NAME_BYTES_MAX} bytes",
            crate::limits::short(name)
        ));
    }
    Ok(())
}

/// `text` cut at [`OUTPUT_KEPT_BYTES`] (on a character boundary).
pub fn kept(text: &str) -> String {
    if text.len() <= OUTPUT_KEPT_BYTES {
        return text.to_string();
    }
    let mut end = OUTPUT_KEPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl ClusterState {
    /// Applies a stored-script command.
    pub(crate) fn apply_script(&mut self, command: &ScriptCommand) -> Result<(), String> {
        let scripts = &mut self.scripts;
        match command {
            ScriptCommand::Put { script, create } => {
                check_script_name(&script.name)?;
                for pattern in &script.on {
                    crate::lifecycle::check_pattern(pattern)?;
                }
                match (scripts.scripts.get(&script.name), create) {
                    (Some(_), true) => {
                        return Err(format!("script \"{}\" already exists", script.name))
                    }
                    (None, false) => return Err(format!("script \"{}\" not found", script.name)),
                    _ => {}
                }
                if *create && scripts.scripts.len() >= SCRIPTS_MAX {
                    return Err(format!(
                        "the cluster stores {SCRIPTS_MAX} scripts, its limit"
                    ));
                }
                let mut script = script.clone();
                if let Some(old) = scripts.scripts.get(&script.name) {
                    script.created_at_ms = old.created_at_ms;
                }
                scripts.clock_ms = scripts.clock_ms.max(script.updated_at_ms);
                scripts.scripts.insert(script.name.clone(), script);
                Ok(())
            }
            ScriptCommand::Patch {
                name,
                changes,
                now_ms,
            } => {
                for pattern in changes.on.iter().flatten() {
                    crate::lifecycle::check_pattern(pattern)?;
                }
                let current = scripts
                    .scripts
                    .get_mut(name)
                    .ok_or_else(|| format!("script \"{name}\" not found"))?;
                *current = changes.applied_to(current);
                current.updated_at_ms = *now_ms;
                scripts.clock_ms = scripts.clock_ms.max(*now_ms);
                Ok(())
            }
            ScriptCommand::Delete { name } => match scripts.scripts.remove(name) {
                Some(_) => {
                    scripts.triggers.retain(|trigger| &trigger.script != name);
                    Ok(())
                }
                None => Err(format!("script \"{name}\" not found")),
            },
            ScriptCommand::Claim {
                claim,
                script,
                tick_ms,
                trigger,
                event,
                member,
                now_ms,
                skipped,
            } => {
                if !scripts.scripts.contains_key(script) {
                    return Err(format!("script \"{script}\" not found"));
                }
                // Every check before any change: a refused claim changes nothing.
                let waiting = match trigger {
                    Some(event_id) => Some(
                        scripts
                            .triggers
                            .iter()
                            .position(|waiting| {
                                &waiting.script == script && waiting.event.id == *event_id
                            })
                            .ok_or_else(|| {
                                format!(
                                    "the run of script \"{script}\" for event {event_id} is not waiting (claimed already)"
                                )
                            })?,
                    ),
                    None => None,
                };
                if let (Some(tick), Some(last)) = (tick_ms, scripts.last_tick.get(script)) {
                    if *last >= *tick {
                        return Err(format!(
                            "the tick {tick} of script \"{script}\" was claimed already (last claimed: {last})"
                        ));
                    }
                }
                let quiet = waiting
                    .and_then(|waiting| scripts.triggers.remove(waiting))
                    .is_some_and(|waiting| waiting.event.action == "script-run-failed");
                scripts.clock_ms = scripts.clock_ms.max(*now_ms);
                if let Some(tick) = tick_ms {
                    scripts.last_tick.insert(script.clone(), *tick);
                }
                let id = scripts.next_run_id;
                scripts.next_run_id += 1;
                scripts.runs.push_back(ScriptRun {
                    id,
                    script: script.clone(),
                    tick_ms: *tick_ms,
                    event: event.clone(),
                    member: member.clone(),
                    started_at_ms: *now_ms,
                    ended_at_ms: skipped.as_ref().map(|_| *now_ms),
                    status: if skipped.is_some() {
                        RunStatus::Skipped
                    } else {
                        RunStatus::Running
                    },
                    result: None,
                    error: skipped.clone(),
                    output: String::new(),
                    claim: *claim,
                    quiet,
                });
                scripts.prune();
                Ok(())
            }
            ScriptCommand::End {
                run,
                status,
                result,
                error,
                output,
                now_ms,
            } => {
                let record = scripts
                    .run_mut(*run)
                    .ok_or_else(|| format!("run {run} not found"))?;
                if record.status != RunStatus::Running {
                    // Recorded lost meanwhile (its member was thought dead): lost it stays.
                    return Err(format!(
                        "run {run} is recorded {} already",
                        record.status.as_str()
                    ));
                }
                if !matches!(
                    status,
                    RunStatus::Ok | RunStatus::Error | RunStatus::Timeout
                ) {
                    return Err(format!("a run cannot end as {}", status.as_str()));
                }
                record.status = *status;
                record.result = result.clone();
                record.error = error.clone();
                record.output = output.clone();
                record.ended_at_ms = Some(*now_ms);
                scripts.clock_ms = scripts.clock_ms.max(*now_ms);
                Ok(())
            }
            ScriptCommand::Lost {
                runs,
                reason,
                now_ms,
            } => {
                scripts.clock_ms = scripts.clock_ms.max(*now_ms);
                for id in runs {
                    if let Some(record) = scripts.run_mut(*id) {
                        if record.status == RunStatus::Running {
                            record.status = RunStatus::Lost;
                            record.error = Some(reason.clone());
                            record.ended_at_ms = Some(*now_ms);
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_script() -> ClusterState {
        let mut state = ClusterState::default();
        state
            .apply_script(&ScriptCommand::Put {
                script: StoredScript {
                    name: "tick".into(),
                    description: String::new(),
                    source: "return 1".into(),
                    schedule: Some("@every 1s".into()),
                    on: Vec::new(),
                    member: None,
                    timeout_s: 10,
                    missed: Missed::RunOnce,
                    created_at_ms: 5,
                    updated_at_ms: 5,
                },
                create: true,
            })
            .unwrap();
        state
    }

    /// Goal: a patch changes the fields it names on the script as it is, keeps the rest
    /// (another patch's change included), and refuses a bad event pattern or a missing script
    /// without changing anything.
    #[test]
    fn a_patch_keeps_the_fields_it_does_not_name() {
        let mut state = state_with_script();
        let patch = |changes: ScriptChanges, now_ms: u64| ScriptCommand::Patch {
            name: "tick".into(),
            changes,
            now_ms,
        };
        let description = ScriptChanges {
            description: Some("ticks".into()),
            ..ScriptChanges::default()
        };
        let timeout = ScriptChanges {
            timeout_s: Some(30),
            schedule: Some(None),
            ..ScriptChanges::default()
        };
        state.apply_script(&patch(description, 7)).unwrap();
        state.apply_script(&patch(timeout, 8)).unwrap();
        let script = &state.scripts.scripts["tick"];
        assert_eq!(script.description, "ticks");
        assert_eq!(script.timeout_s, 30);
        assert_eq!(script.schedule, None);
        assert_eq!(script.source, "return 1");
        assert_eq!((script.created_at_ms, script.updated_at_ms), (5, 8));

        let before = state.clone();
        let bad = ScriptChanges {
            on: Some(vec!["no such event".into()]),
            ..ScriptChanges::default()
        };
        assert!(state.apply_script(&patch(bad, 9)).is_err());
        let missing = ScriptCommand::Patch {
            name: "ghost".into(),
            changes: ScriptChanges::default(),
            now_ms: 9,
        };
        let error = state.apply_script(&missing).unwrap_err();
        assert!(error.contains("script \"ghost\" not found"), "{error}");
        assert!(state == before);
    }

    fn claim(state: &mut ClusterState, claim: u128, tick: Option<u64>) -> Result<(), String> {
        state.apply_script(&ScriptCommand::Claim {
            claim,
            script: "tick".into(),
            tick_ms: tick,
            trigger: None,
            event: None,
            member: "m1".into(),
            now_ms: 10,
            skipped: None,
        })
    }

    fn claim_event(state: &mut ClusterState, claim: u128, event: u64) -> Result<(), String> {
        state.apply(&crate::Command::Script(ScriptCommand::Claim {
            claim,
            script: "on-offline".into(),
            tick_ms: None,
            trigger: Some(event),
            event: Some("cluster-member-offline".into()),
            member: "m1".into(),
            now_ms: 20,
            skipped: None,
        }))
    }

    /// Goal: an event matching a script's `on` leaves exactly one run waiting, whatever
    /// repeats: the claim takes it, a second claim is refused, and a status that does not
    /// change (offline again) is no event.
    #[test]
    fn an_event_triggers_one_run_claimed_once() {
        use crate::model::MemberStatus;
        use crate::{Command, HealthUpdate};
        let mut state = ClusterState::default();
        for (id, name) in [(1, "m1"), (2, "m2")] {
            state
                .members
                .insert(name.into(), crate::command::tests::member(name, id));
        }
        let script = StoredScript {
            name: "on-offline".into(),
            description: String::new(),
            source: "return event".into(),
            schedule: None,
            on: vec!["cluster-member-offline".into()],
            member: None,
            timeout_s: 10,
            missed: Missed::RunOnce,
            created_at_ms: 5,
            updated_at_ms: 5,
        };
        state
            .apply(&Command::Script(ScriptCommand::Put {
                script,
                create: true,
            }))
            .unwrap();
        let offline = Command::MemberHealth {
            updates: vec![HealthUpdate {
                name: "m2".into(),
                status: MemberStatus::Offline,
                last_heartbeat_ms: 1,
            }],
        };
        state.apply(&offline).unwrap();
        state.apply(&offline).unwrap();
        let events = state.lifecycle.take();
        let actions: Vec<&str> = events.iter().map(|event| event.action.as_str()).collect();
        assert_eq!(actions, ["script-created", "cluster-member-offline"]);
        let offline_event = &events[1];
        assert_eq!(offline_event.location, "m2");
        assert_eq!(state.scripts.triggers.len(), 1, "one run waits");
        assert_eq!(state.scripts.triggers[0].event, *offline_event);

        claim_event(&mut state, 7, offline_event.id).unwrap();
        let error = claim_event(&mut state, 8, offline_event.id).unwrap_err();
        assert!(error.contains("not waiting"), "{error}");
        assert!(state.scripts.triggers.is_empty());
        let runs: Vec<u128> = state.scripts.runs.iter().map(|run| run.claim).collect();
        assert_eq!(runs, [7]);
    }

    /// Goal: a run triggered by `script-run-failed` makes no such event when it fails (else
    /// a failing handler of failures would trigger itself for ever); any other run does.
    #[test]
    fn a_failure_handler_that_fails_triggers_nothing() {
        let mut state = state_with_script();
        claim(&mut state, 1, None).unwrap();
        let end = |run: u64| {
            crate::Command::Script(ScriptCommand::End {
                run,
                status: RunStatus::Error,
                result: None,
                error: Some("boom".into()),
                output: String::new(),
                now_ms: 30,
            })
        };
        state.apply(&end(0)).unwrap();
        let failed = state.lifecycle.take();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].action, "script-run-failed");
        assert_eq!(
            failed[0].context.get("error").map(String::as_str),
            Some("boom")
        );

        state.scripts.trigger("tick", &failed[0]);
        state
            .apply(&crate::Command::Script(ScriptCommand::Claim {
                claim: 2,
                script: "tick".into(),
                tick_ms: None,
                trigger: Some(failed[0].id),
                event: None,
                member: "m1".into(),
                now_ms: 31,
                skipped: None,
            }))
            .unwrap();
        state.apply(&end(1)).unwrap();
        assert!(state.lifecycle.take().is_empty());
    }

    #[test]
    fn a_tick_is_claimed_once_and_never_behind_the_last() {
        let mut state = state_with_script();
        claim(&mut state, 1, Some(1000)).unwrap();
        let error = claim(&mut state, 2, Some(1000)).unwrap_err();
        assert!(error.contains("claimed already"), "{error}");
        assert!(claim(&mut state, 3, Some(999)).is_err());
        claim(&mut state, 4, Some(2000)).unwrap();
        // Runs asked for by hand have no tick and are never refused for one.
        claim(&mut state, 5, None).unwrap();
        let ids: Vec<u64> = state.scripts.runs.iter().map(|run| run.id).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(state.scripts.run_by_claim(4).map(|run| run.id), Some(1));
    }

    #[test]
    fn a_lost_run_stays_lost_and_an_end_is_recorded_once() {
        let mut state = state_with_script();
        claim(&mut state, 1, Some(1000)).unwrap();
        claim(&mut state, 2, Some(2000)).unwrap();
        let end = |run| ScriptCommand::End {
            run,
            status: RunStatus::Ok,
            result: Some("1".into()),
            error: None,
            output: "hi\n".into(),
            now_ms: 20,
        };
        state.apply_script(&end(0)).unwrap();
        assert!(state.apply_script(&end(0)).is_err());
        state
            .apply_script(&ScriptCommand::Lost {
                runs: vec![0, 1],
                reason: "member m1 restarted".into(),
                now_ms: 30,
            })
            .unwrap();
        assert_eq!(state.scripts.run(0).unwrap().status, RunStatus::Ok);
        assert_eq!(state.scripts.run(1).unwrap().status, RunStatus::Lost);
        let error = state.apply_script(&end(1)).unwrap_err();
        assert!(error.contains("lost already"), "{error}");
    }

    #[test]
    fn the_record_keeps_the_newest_runs_and_every_running_one() {
        let mut state = state_with_script();
        claim(&mut state, 0, None).unwrap();
        for index in 1..=(RUNS_KEPT as u128 + 10) {
            claim(&mut state, index, None).unwrap();
            let id = state.scripts.run_by_claim(index).unwrap().id;
            state
                .apply_script(&ScriptCommand::End {
                    run: id,
                    status: RunStatus::Ok,
                    result: None,
                    error: None,
                    output: String::new(),
                    now_ms: 1,
                })
                .unwrap();
        }
        assert_eq!(state.scripts.runs.len(), RUNS_KEPT);
        assert_eq!(state.scripts.runs[0].id, 0, "the running one was dropped");
        assert_eq!(state.scripts.runs[0].status, RunStatus::Running);
    }

    /// Goal: a claim refused because its tick was claimed already changes nothing (it moved
    /// the scripts' clock before; found by the `apply_properties` property tests).
    #[test]
    fn a_refused_claim_changes_nothing() {
        let mut state = state_with_script();
        claim(&mut state, 0, Some(5)).unwrap();
        let before = state.clone();
        let late = ScriptCommand::Claim {
            claim: 1,
            script: "tick".into(),
            tick_ms: Some(5),
            trigger: None,
            event: None,
            member: "m1".into(),
            now_ms: 100,
            skipped: None,
        };
        let error = state.apply_script(&late).unwrap_err();
        assert!(error.contains("claimed already"), "{error}");
        assert_eq!(state, before);
    }
}
