//! Stored scripts (`scripts.*`, `starling script ...`): kept in the cluster database, run when
//! asked, on a schedule, on the leader or on a chosen member.
//!
//! - Every run is claimed first: the leader commits its record (`ScriptCommand::Claim`), and
//!   only then does the script start. The state machine refuses a second claim of a tick
//!   (`starling_store::scripts`), so no tick runs twice, whoever leads; a leader cut off from
//!   the others cannot commit, so it runs nothing.
//! - The scheduler ([`run_scheduler`]) runs on every member and acts only on the leader: for
//!   each scheduled script it asks the pure planner ([`super::schedule::due`]) what is due
//!   since the last claimed tick, then sleeps until the earliest tick to come, or
//!   [`SCHEDULER_PERIOD`] at most (triggered runs and new schedules are looked at then).
//! - A run on the leader is run by it; a run pinned to another member (`member=`) is sent to
//!   that member ([`ScriptOperation::Execute`]). Whoever runs it records its end through the
//!   leader (`End`). A run under way whose member is offline, whose member no longer runs it
//!   (it restarted), or that ended no word past its timeout and [`LOST_AFTER`], is recorded
//!   `lost` by the leader — never run again. A run cut off that way may have had effects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::scripts::{
    kept, Missed, RunStatus, ScriptChanges, ScriptCommand, ScriptRun, StoredScript, Trigger,
    OUTPUT_KEPT_BYTES,
};
use starling_store::{ClusterState, Command, MemberStatus};

use super::schedule::{due, Due, Schedule};
use crate::cluster::join::WRITE_TIMEOUT;
use crate::member::Member;
use crate::operation::Arguments;
use crate::protocol::{Caller, Reply, Request};
use crate::token::now_ms;
use crate::Error;

/// How often the scheduler looks at the schedules.
pub const SCHEDULER_PERIOD: Duration = Duration::from_millis(20);
/// A tick run later than this after its time was missed (`missed = skip` skips it).
pub const MISSED_AFTER_MS: u64 = 2_000;
/// A run with no end recorded this long past its timeout is recorded lost.
pub const LOST_AFTER: Duration = Duration::from_secs(30);
/// Runs claimed this recently are never called lost (their runner is starting).
const CLAIM_SETTLE_MS: u64 = 5_000;
/// A run's time bound unless the script gives one.
pub const TIMEOUT_DEFAULT_S: u32 = 60;
/// The longest time bound a stored script may have.
pub const TIMEOUT_MAX_S: u32 = 3_600;
/// Runs `scripts.runs` answers with unless a limit is given.
pub const RUNS_DEFAULT: usize = 20;

/// This member's view of the runs it is carrying out.
#[derive(Default)]
pub struct AutomationState {
    /// Runs under way on this member.
    running: Mutex<BTreeSet<u64>>,
    /// Leader: when it last looked for lost runs.
    lost_check: Mutex<Option<Instant>>,
}

use crate::sync::lock;

/// The properties of a stored script a call may give (absent: unchanged, or the default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptOptions {
    /// The source.
    pub source: Option<String>,
    /// The schedule (`Some("")`: none).
    pub schedule: Option<String>,
    /// The lifecycle events that run it (`Some([])`: none).
    pub on: Option<Vec<String>>,
    /// The member or `@group` (`Some("")`: the leader).
    pub member: Option<String>,
    /// The description.
    pub description: Option<String>,
    /// The time bound of a run, seconds.
    pub timeout_s: Option<u32>,
    /// `run_once` or `skip`.
    pub missed: Option<String>,
}

/// Why a run starts.
enum Cause {
    /// Someone asked (`scripts.run`).
    Asked,
    /// Its schedule's tick (the scheduled time).
    Tick(u64),
    /// A lifecycle event (its id, and the event as JSON).
    Event {
        /// The event's id.
        id: u64,
        /// The event, as JSON text.
        text: String,
    },
}

/// Triggered runs a scheduler round claims at most.
const TRIGGERS_PER_ROUND: usize = 64;

/// A stored-script operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ScriptOperation {
    /// `scripts.create(name, source, {...})`.
    Create {
        /// The name.
        name: String,
        /// Source and options.
        options: ScriptOptions,
    },
    /// `scripts.update(name, {...})`: the fields given change.
    Update {
        /// The name.
        name: String,
        /// What changes.
        options: ScriptOptions,
    },
    /// `scripts.delete(name)`.
    Delete {
        /// The name.
        name: String,
    },
    /// `scripts.list()`.
    List,
    /// `scripts.get(name)`.
    Get {
        /// The name.
        name: String,
    },
    /// `scripts.run(name [, args])`: runs now, waits for the end, answers the run's record.
    Run {
        /// The name.
        name: String,
        /// `arg[1]`...
        args: Vec<String>,
    },
    /// `scripts.runs(name [, {limit=}])`: the newest runs, newest last.
    Runs {
        /// The name.
        name: String,
        /// At most this many.
        limit: usize,
    },
    /// Internal (member to member): run a claimed run on the member asked.
    Execute {
        /// The run.
        run: u64,
        /// The script's name (the chunk name).
        script: String,
        /// Its source.
        source: String,
        /// `arg[1]`...
        args: Vec<String>,
        /// Its time bound, seconds.
        timeout_s: u32,
    },
    /// Internal (member to leader): a run ended.
    End {
        /// The run.
        run: u64,
        /// `Ok`, `Error` or `Timeout`.
        status: RunStatus,
        /// The result, JSON text.
        result: Option<String>,
        /// The error.
        error: Option<String>,
        /// What it printed (the first part).
        output: String,
    },
}

impl ScriptOperation {
    /// Whether the operation changes the database.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            ScriptOperation::List
                | ScriptOperation::Get { .. }
                | ScriptOperation::Runs { .. }
                | ScriptOperation::Execute { .. }
        )
    }

    /// Whether only members may ask for it (it vouches for a run).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ScriptOperation::Execute { .. } | ScriptOperation::End { .. }
        )
    }

    /// The operation a `scripts.*` call asks for.
    pub(crate) fn from_call(arguments: &Arguments) -> Result<ScriptOperation, Error> {
        let operation = match arguments.name {
            "scripts.create" => {
                let name = arguments.string(0, "name")?;
                let source = arguments.string(1, "source")?;
                let mut options = options(arguments, 2)?;
                options.source = Some(source);
                ScriptOperation::Create { name, options }
            }
            "scripts.update" => ScriptOperation::Update {
                name: arguments.string(0, "name")?,
                options: options(arguments, 1)?,
            },
            "scripts.delete" => ScriptOperation::Delete {
                name: arguments.string(0, "name")?,
            },
            "scripts.list" => ScriptOperation::List,
            "scripts.get" => ScriptOperation::Get {
                name: arguments.string(0, "name")?,
            },
            "scripts.run" => ScriptOperation::Run {
                name: arguments.string(0, "name")?,
                args: match arguments.args.get(1) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|item| {
                            crate::operation::scalar_text(item)
                                .ok_or_else(|| arguments.wrong(1, "args", item))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(Value::Object(map)) if map.is_empty() => Vec::new(),
                    Some(other) => return Err(arguments.wrong_table(1, "args", other)),
                },
            },
            "scripts.runs" => ScriptOperation::Runs {
                name: arguments.string(0, "name")?,
                limit: match arguments.args.get(1) {
                    None | Some(Value::Null) => RUNS_DEFAULT,
                    Some(Value::Object(map)) => match map.get("limit") {
                        None | Some(Value::Null) => RUNS_DEFAULT,
                        Some(Value::Number(number))
                            if number.as_u64().is_some_and(|limit| limit >= 1) =>
                        {
                            number.as_u64().unwrap_or(1) as usize
                        }
                        Some(other) => {
                            return Err(Error::Refused(format!(
                                "scripts.runs: limit must be a positive integer, not {other}"
                            )))
                        }
                    },
                    Some(other) => return Err(arguments.wrong_table(1, "options", other)),
                },
            },
            other => return Err(Error::Refused(format!("unknown built-in {other}"))),
        };
        Ok(operation)
    }
}

/// The options table of `scripts.create` / `scripts.update` at `position`.
fn options(arguments: &Arguments, position: usize) -> Result<ScriptOptions, Error> {
    let map = match arguments.args.get(position) {
        None | Some(Value::Null) => return Ok(ScriptOptions::default()),
        Some(Value::Object(map)) => map,
        Some(Value::Array(items)) if items.is_empty() => return Ok(ScriptOptions::default()),
        Some(other) => return Err(arguments.wrong_table(position, "options", other)),
    };
    let known = [
        "source",
        "schedule",
        "member",
        "description",
        "timeout",
        "missed",
        "on",
    ];
    if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(Error::Refused(format!(
            "{}: unknown option \"{unknown}\" (known: {})",
            arguments.name,
            known.join(", ")
        )));
    }
    let on = match map.get("on") {
        None | Some(Value::Null) => None,
        Some(Value::String(event)) => Some(vec![event.clone()]),
        Some(Value::Array(events)) => Some(
            events
                .iter()
                .map(|event| match event {
                    Value::String(event) => Ok(event.clone()),
                    other => Err(Error::Refused(format!(
                        "{}: on must be an event name or a list of them, not a list holding {other}",
                        arguments.name
                    ))),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(Value::Object(map)) if map.is_empty() => Some(Vec::new()),
        Some(other) => {
            return Err(Error::Refused(format!(
                "{}: on must be an event name or a list of them, not {other}",
                arguments.name
            )))
        }
    };
    let text = |field: &str| -> Result<Option<String>, Error> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(Error::Refused(format!(
                "{}: {field} must be a string, not {other}",
                arguments.name
            ))),
        }
    };
    let timeout_s = match map.get("timeout") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number))
            if number
                .as_u64()
                .is_some_and(|seconds| (1..=u64::from(TIMEOUT_MAX_S)).contains(&seconds)) =>
        {
            number.as_u64().map(|seconds| seconds as u32)
        }
        Some(other) => {
            return Err(Error::Refused(format!(
            "{}: timeout must be a whole number of seconds from 1 to {TIMEOUT_MAX_S}, not {other}",
            arguments.name
        )))
        }
    };
    Ok(ScriptOptions {
        source: text("source")?,
        schedule: text("schedule")?,
        on,
        member: text("member")?,
        description: text("description")?,
        timeout_s,
        missed: text("missed")?,
    })
}

/// `ms` as RFC 3339 (UTC, milliseconds).
fn rfc3339(ms: u64) -> Value {
    Value::String(crate::token::rfc3339(
        ms.saturating_mul(1_000_000),
        chrono::SecondsFormat::Millis,
    ))
}

fn script_json(script: &StoredScript) -> Value {
    json!({
        "name": script.name,
        "description": script.description,
        "source": script.source,
        "schedule": script.schedule,
        "on": script.on,
        "member": script.member,
        "timeout": script.timeout_s,
        "missed": script.missed.as_str(),
        "created_at": rfc3339(script.created_at_ms),
        "updated_at": rfc3339(script.updated_at_ms),
    })
}

fn run_json(run: &ScriptRun) -> Value {
    let mut record = json!({
        "id": run.id,
        "script": run.script,
        "member": run.member,
        "started_at": rfc3339(run.started_at_ms),
        "status": run.status.as_str(),
        "output": run.output,
    });
    let fields = [
        ("tick", run.tick_ms.map(rfc3339)),
        (
            "event",
            run.event
                .as_deref()
                .map(|text| serde_json::from_str(text).unwrap_or(Value::String(text.to_string()))),
        ),
        ("ended_at", run.ended_at_ms.map(rfc3339)),
        (
            "result",
            run.result
                .as_deref()
                .map(|text| serde_json::from_str(text).unwrap_or(Value::String(text.to_string()))),
        ),
        ("error", run.error.clone().map(Value::String)),
    ];
    if let Some(object) = record.as_object_mut() {
        for (field, value) in fields {
            if let Some(value) = value {
                object.insert(field.to_string(), value);
            }
        }
    }
    record
}

/// Applies `options` to `script` (a new one when `None`), checking each value.
fn edited(
    name: &str,
    current: Option<&StoredScript>,
    options: &ScriptOptions,
    now: u64,
) -> Result<StoredScript, Error> {
    let refused = |error: String| Error::Refused(error);
    let mut script = current.cloned().unwrap_or_else(|| StoredScript {
        name: name.to_string(),
        description: String::new(),
        source: String::new(),
        schedule: None,
        on: Vec::new(),
        member: None,
        timeout_s: TIMEOUT_DEFAULT_S,
        missed: Missed::RunOnce,
        created_at_ms: now,
        updated_at_ms: now,
    });
    if let Some(source) = &options.source {
        starling_stdlib::check_syntax(source, name)
            .map_err(|error| refused(format!("script \"{name}\" does not compile: {error}")))?;
        script.source = source.clone();
    }
    if let Some(schedule) = &options.schedule {
        script.schedule = if schedule.trim().is_empty() {
            None
        } else {
            Schedule::parse(schedule).map_err(refused)?;
            Some(schedule.trim().to_string())
        };
    }
    if let Some(on) = &options.on {
        if on.len() > starling_store::scripts::ON_MAX {
            return Err(refused(format!(
                "script \"{name}\": at most {} events in on=",
                starling_store::scripts::ON_MAX
            )));
        }
        for pattern in on {
            starling_store::lifecycle::check_pattern(pattern)
                .map_err(|error| refused(format!("script \"{name}\": {error}")))?;
        }
        script.on = on.clone();
    }
    if let Some(member) = &options.member {
        script.member = (!member.trim().is_empty()).then(|| member.trim().to_string());
    }
    if let Some(description) = &options.description {
        script.description = description.clone();
    }
    if let Some(timeout) = options.timeout_s {
        script.timeout_s = timeout;
    }
    if let Some(missed) = &options.missed {
        script.missed = Missed::parse(missed).map_err(refused)?;
    }
    script.updated_at_ms = now;
    Ok(script)
}

/// Where a run of `script` goes: a member name, or why it is skipped.
fn run_member(state: &ClusterState, script: &StoredScript, leader: &str) -> Result<String, String> {
    let Some(target) = &script.member else {
        return Ok(leader.to_string());
    };
    let online = |name: &str| {
        state
            .members
            .get(name)
            .is_some_and(|member| member.status == MemberStatus::Online)
    };
    if let Some(group) = target.strip_prefix('@') {
        let members: Vec<&String> = state
            .members
            .values()
            .filter(|member| member.groups.iter().any(|name| name == group))
            .map(|member| &member.name)
            .collect();
        if members.is_empty() {
            return Err(format!("cluster group \"{group}\" has no member"));
        }
        // The leader when it is in the group, else the first online member by name.
        if members.iter().any(|name| name.as_str() == leader) {
            return Ok(leader.to_string());
        }
        return members
            .into_iter()
            .find(|name| online(name))
            .cloned()
            .ok_or_else(|| format!("no member of cluster group \"{group}\" is online"));
    }
    match state.members.get(target) {
        None => Err(format!("member \"{target}\" not found")),
        Some(member) if member.status != MemberStatus::Online => {
            Err(format!("member \"{target}\" is {}", member.status.as_str()))
        }
        Some(_) => Ok(target.clone()),
    }
}

impl Member {
    /// Runs a stored-script operation (on the leader, but for `Execute`: on the member asked).
    pub(crate) async fn scripts_here(&self, operation: &ScriptOperation) -> Result<Value, Error> {
        match operation {
            ScriptOperation::List => Ok(self.local_state(|state| {
                Value::Array(state.scripts.scripts.values().map(script_json).collect())
            })),
            ScriptOperation::Get { name } => self.local_state(|state| {
                state
                    .scripts
                    .scripts
                    .get(name)
                    .map(script_json)
                    .ok_or_else(|| Error::Refused(format!("script \"{name}\" not found")))
            }),
            ScriptOperation::Runs { name, limit } => self.local_state(|state| {
                let runs: Vec<Value> = state
                    .scripts
                    .runs
                    .iter()
                    .rev()
                    .filter(|run| &run.script == name)
                    .take(*limit)
                    .map(run_json)
                    .collect();
                if runs.is_empty() && !state.scripts.scripts.contains_key(name) {
                    return Err(Error::Refused(format!("script \"{name}\" not found")));
                }
                Ok(Value::Array(runs.into_iter().rev().collect()))
            }),
            ScriptOperation::Create { name, options } => {
                let script = edited(name, None, options, now_ms())?;
                self.propose_script(ScriptCommand::Put {
                    script: script.clone(),
                    create: true,
                })
                .await?;
                Ok(script_json(&script))
            }
            ScriptOperation::Update { name, options } => {
                let current = self.local_state(|state| state.scripts.scripts.get(name).cloned());
                let current = current
                    .ok_or_else(|| Error::Refused(format!("script \"{name}\" not found")))?;
                let now = now_ms();
                // Checked and normalized as a whole; only the fields asked for are proposed.
                let script = edited(name, Some(&current), options, now)?;
                let changes = ScriptChanges {
                    source: options.source.as_ref().map(|_| script.source.clone()),
                    schedule: options.schedule.as_ref().map(|_| script.schedule.clone()),
                    on: options.on.as_ref().map(|_| script.on.clone()),
                    member: options.member.as_ref().map(|_| script.member.clone()),
                    description: options
                        .description
                        .as_ref()
                        .map(|_| script.description.clone()),
                    timeout_s: options.timeout_s.map(|_| script.timeout_s),
                    missed: options.missed.as_ref().map(|_| script.missed),
                };
                self.propose_script(ScriptCommand::Patch {
                    name: name.clone(),
                    changes,
                    now_ms: now,
                })
                .await?;
                let stored = self.local_state(|state| state.scripts.scripts.get(name).cloned());
                Ok(script_json(&stored.unwrap_or(script)))
            }
            ScriptOperation::Delete { name } => {
                self.propose_script(ScriptCommand::Delete { name: name.clone() })
                    .await?;
                Ok(Value::Null)
            }
            ScriptOperation::Run { name, args } => {
                let script = self
                    .local_state(|state| state.scripts.scripts.get(name).cloned())
                    .ok_or_else(|| Error::Refused(format!("script \"{name}\" not found")))?;
                let run = self.start_run(&script, Cause::Asked, args.clone()).await?;
                // Wait for the end, however it comes (the run's member records it).
                let bound = Duration::from_secs(u64::from(script.timeout_s)) + LOST_AFTER;
                let deadline = Instant::now() + bound;
                loop {
                    let record = self.local_state(|state| state.scripts.run(run).cloned());
                    match record {
                        Some(record) if record.status != RunStatus::Running => {
                            return Ok(run_json(&record))
                        }
                        None => {
                            return Err(Error::Internal(format!(
                                "run {run} is gone from the record"
                            )))
                        }
                        Some(_) if Instant::now() >= deadline => {
                            return Err(Error::OutcomeUnknown(format!(
                                "run {run} of script \"{name}\" has not ended after {} s",
                                bound.as_secs()
                            )))
                        }
                        Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
            ScriptOperation::Execute {
                run,
                script,
                source,
                args,
                timeout_s,
            } => {
                let member = self.clone();
                let (run, script, source, args, timeout_s) = (
                    *run,
                    script.clone(),
                    source.clone(),
                    args.clone(),
                    *timeout_s,
                );
                tokio::spawn(async move {
                    member.carry_out(run, script, source, args, timeout_s).await;
                });
                Ok(Value::Null)
            }
            ScriptOperation::End {
                run,
                status,
                result,
                error,
                output,
            } => {
                self.propose_script(ScriptCommand::End {
                    run: *run,
                    status: *status,
                    result: result.as_deref().map(kept),
                    error: error.as_deref().map(kept),
                    output: kept(output),
                    now_ms: now_ms(),
                })
                .await?;
                Ok(Value::Null)
            }
        }
    }

    /// The record of the run claimed with `claim`, as `scripts.run` answers it.
    pub(crate) fn run_by_claim(&self, claim: u128) -> Result<Value, Error> {
        self.local_state(|state| {
            state
                .scripts
                .run_by_claim(claim)
                .map(run_json)
                .ok_or_else(|| Error::Refused("the run of this request is no longer kept".into()))
        })
    }

    async fn propose_script(&self, command: ScriptCommand) -> Result<(), Error> {
        self.propose(Command::Script(command), WRITE_TIMEOUT).await
    }

    /// Leader: claims a run of `script` (for `cause`) and starts it where it belongs;
    /// answers the run's id. A run whose member is not available is recorded `skipped` with
    /// the reason.
    async fn start_run(
        &self,
        script: &StoredScript,
        cause: Cause,
        args: Vec<String>,
    ) -> Result<u64, Error> {
        let leader = self.name();
        let target = self.local_state(|state| run_member(state, script, &leader));
        let (member, skipped) = match target {
            Ok(member) => (member, None),
            Err(reason) => (
                script.member.clone().unwrap_or_else(|| leader.clone()),
                Some(reason),
            ),
        };
        self.claim(script, cause, member.clone(), skipped.clone(), args)
            .await
    }

    /// Commits the claim of a run, then starts it (unless `skipped`).
    async fn claim(
        &self,
        script: &StoredScript,
        cause: Cause,
        member: String,
        skipped: Option<String>,
        args: Vec<String>,
    ) -> Result<u64, Error> {
        // Within a request (`scripts.run`) the claim is the request's first command, and its id
        // names the claim, so a repeat of the request finds the run (`once::replay`).
        let claim = match crate::once::next_command_id() {
            Some(id) => id,
            None => crate::token::random_u128()?,
        };
        let (tick_ms, trigger, event) = match cause {
            Cause::Asked => (None, None, None),
            Cause::Tick(tick) => (Some(tick), None, None),
            Cause::Event { id, text } => (None, Some(id), Some(text)),
        };
        self.propose_script(ScriptCommand::Claim {
            claim,
            script: script.name.clone(),
            tick_ms,
            trigger,
            event,
            member: member.clone(),
            now_ms: now_ms(),
            skipped: skipped.clone(),
        })
        .await?;
        let run = self
            .local_state(|state| state.scripts.run_by_claim(claim).map(|run| run.id))
            .ok_or_else(|| Error::Internal("a claimed run is missing from the record".into()))?;
        if skipped.is_some() {
            return Ok(run);
        }
        if member == self.name() {
            // Marked before the claim's answer returns to anyone: the lost-run check never
            // sees it running without this member knowing.
            lock(&self.inner.automation.running).insert(run);
            let (member, script) = (self.clone(), script.clone());
            tokio::spawn(async move {
                member
                    .carry_out(run, script.name, script.source, args, script.timeout_s)
                    .await;
            });
            return Ok(run);
        }
        let operation = crate::operation::Operation::Script(ScriptOperation::Execute {
            run,
            script: script.name.clone(),
            source: script.source.clone(),
            args,
            timeout_s: script.timeout_s,
        });
        let address = self.local_state(|state| {
            state
                .members
                .get(&member)
                .map(|record| record.address.clone())
        });
        let sent = match address {
            Some(address) => {
                let request = Request::Operation {
                    operation,
                    caller: Caller::local(),
                };
                match self.request(&address, &request, WRITE_TIMEOUT).await {
                    Ok(Reply::Operation(Ok(_))) => Ok(()),
                    Ok(Reply::Operation(Err(error)) | Reply::Refused(error)) => Err(error),
                    Ok(other) => Err(Error::Internal(format!("unexpected reply: {other:?}"))),
                    Err(error) => Err(error),
                }
            }
            None => Err(Error::Refused(format!("member \"{member}\" not found"))),
        };
        if let Err(error) = sent {
            // Not started there, as far as anyone knows: recorded lost (it may have started
            // if the answer alone was lost), never run again.
            self.propose_script(ScriptCommand::Lost {
                runs: vec![run],
                reason: format!("could not start it on member {member}: {error}"),
                now_ms: now_ms(),
            })
            .await?;
        }
        Ok(run)
    }

    /// Runs run `run` here and records how it ended (through the leader).
    async fn carry_out(
        &self,
        run: u64,
        script: String,
        source: String,
        args: Vec<String>,
        timeout_s: u32,
    ) {
        lock(&self.inner.automation.running).insert(run);
        let limits = starling_stdlib::Limits {
            wall_clock: Duration::from_secs(u64::from(timeout_s)),
            ..starling_stdlib::Limits::default()
        };
        let program = starling_stdlib::Script {
            source,
            chunk_name: script.clone(),
            args,
        };
        let operation = crate::events::Tracked::start(
            self,
            &format!("Running script {script}"),
            json!({ "scripts": [format!("/1.0/scripts/{script}")], "runs": [run.to_string()] }),
        );
        let (result, output) =
            crate::script::run_captured(self, program, limits, OUTPUT_KEPT_BYTES).await;
        operation.end(match &result {
            Ok(_) => Ok(json!({ "run": run })),
            Err(error) => Err(error.to_string()),
        });
        let (status, result, error) = match result {
            Ok(value) => (RunStatus::Ok, Some(value.to_string()), None),
            Err(starling_stdlib::Error::Timeout { .. }) => (
                RunStatus::Timeout,
                None,
                Some(format!("the run took longer than its {timeout_s} s")),
            ),
            Err(error) => (RunStatus::Error, None, Some(error.to_string())),
        };
        if status != RunStatus::Ok {
            tracing::warn!(script = %script, run, error = ?error, "a stored script's run failed");
        }
        let end = crate::operation::Operation::Script(ScriptOperation::End {
            run,
            status,
            result,
            error,
            output,
        });
        // Through whoever leads now (this member may have stopped leading meanwhile).
        if let Err(error) = self.execute_boxed(end).await {
            tracing::warn!(script = %script, run, %error, "the end of a run could not be recorded");
        }
        lock(&self.inner.automation.running).remove(&run);
    }

    /// [`Member::execute`] as a boxed future: a run's end goes through `execute`, which can
    /// start runs, and the named type keeps the compiler from chasing that cycle.
    fn execute_boxed(
        &self,
        operation: crate::operation::Operation,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, Error>> + Send>> {
        let member = self.clone();
        Box::pin(async move { member.execute(operation, Caller::local()).await })
    }

    /// Leader: one look at the schedules, and now and then at runs that will never end.
    /// Answers the earliest tick still to come (ms since the epoch), if any.
    async fn schedule_round(&self) -> Option<u64> {
        let now = now_ms();
        // Decided on the state in place: only the scripts that are due are copied (a source
        // may be 256 KiB, and this runs every 20 ms).
        let (due_now, next_tick) = self.local_state(|state| {
            let mut next_tick: Option<u64> = None;
            let due_now: Vec<(StoredScript, Due)> = state
                .scripts
                .scripts
                .values()
                .filter_map(|script| {
                    let schedule = Schedule::parse(script.schedule.as_deref()?).ok()?;
                    let decision = due(
                        &schedule,
                        script.created_at_ms,
                        state.scripts.last_tick.get(&script.name).copied(),
                        now,
                        script.missed,
                        MISSED_AFTER_MS,
                    );
                    if let Due::Wait { at } = decision {
                        next_tick = Some(next_tick.map_or(at, |earliest| earliest.min(at)));
                    }
                    matches!(decision, Due::Run { .. } | Due::Skip { .. })
                        .then(|| (script.clone(), decision))
                })
                .collect();
            (due_now, next_tick)
        });
        for (script, decision) in due_now {
            let outcome = match decision {
                Due::Run { tick } => self.start_run(&script, Cause::Tick(tick), Vec::new()).await,
                Due::Skip { tick } => {
                    let member = script.member.clone().unwrap_or_else(|| self.name());
                    let reason = "missed while the cluster had no leader (missed = skip)";
                    self.claim(
                        &script,
                        Cause::Tick(tick),
                        member,
                        Some(reason.into()),
                        Vec::new(),
                    )
                    .await
                }
                Due::Wait { .. } | Due::Never => continue,
            };
            if let Err(error) = outcome {
                tracing::debug!(script = %script.name, %error, "a scheduled run was not started");
            }
        }
        self.start_triggered_runs().await;
        let check_now = {
            let mut last = lock(&self.inner.automation.lost_check);
            let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if check_now {
            self.record_lost_runs(now).await;
        }
        next_tick
    }

    /// Leader: claims and starts the runs lifecycle events triggered (oldest first, a bounded
    /// number a round). The event is the run's `arg[1]`, as JSON.
    async fn start_triggered_runs(&self) {
        let leader = self.name();
        let waiting: Vec<(StoredScript, Trigger)> = self.local_state(|state| {
            state
                .scripts
                .triggers
                .iter()
                .take(TRIGGERS_PER_ROUND)
                .filter_map(|trigger| {
                    let script = state.scripts.scripts.get(&trigger.script)?;
                    Some((script.clone(), trigger.clone()))
                })
                .collect()
        });
        for (script, trigger) in waiting {
            let event = crate::events::Event::lifecycle(&trigger.event, &leader)
                .to_json()
                .to_string();
            let cause = Cause::Event {
                id: trigger.event.id,
                text: event.clone(),
            };
            if let Err(error) = self.start_run(&script, cause, vec![event]).await {
                tracing::debug!(script = %script.name, %error, "a triggered run was not started");
            }
        }
    }

    /// Leader: records lost the runs under way that will never end.
    async fn record_lost_runs(&self, now: u64) {
        let me = self.name();
        let mine = lock(&self.inner.automation.running).clone();
        let lost: BTreeMap<u64, String> = self.local_state(|state| {
            state
                .scripts
                .runs
                .iter()
                .filter(|run| run.status == RunStatus::Running)
                // A run claimed a moment ago may not be marked as running here yet.
                .filter(|run| now > run.started_at_ms + CLAIM_SETTLE_MS)
                .filter_map(|run| {
                    let timeout = state
                        .scripts
                        .scripts
                        .get(&run.script)
                        .map_or(TIMEOUT_MAX_S, |script| script.timeout_s);
                    let overdue = run.started_at_ms
                        + u64::from(timeout) * 1000
                        + LOST_AFTER.as_millis() as u64;
                    let status = state.members.get(&run.member).map(|member| member.status);
                    let reason = if run.member == me && !mine.contains(&run.id) {
                        format!("member {me} no longer runs it (it restarted)")
                    } else if status.is_none() {
                        format!("member {} was removed", run.member)
                    } else if status == Some(MemberStatus::Offline) {
                        format!("member {} went offline with the run under way", run.member)
                    } else if now > overdue {
                        format!(
                            "no end was recorded {}s past its timeout",
                            LOST_AFTER.as_secs()
                        )
                    } else {
                        return None;
                    };
                    Some((run.id, reason))
                })
                .collect()
        });
        for (run, reason) in lost {
            let recorded = self
                .propose_script(ScriptCommand::Lost {
                    runs: vec![run],
                    reason,
                    now_ms: now,
                })
                .await;
            if let Err(error) = recorded {
                tracing::debug!(run, %error, "a lost run could not be recorded");
            }
        }
    }
}

/// Every member runs this; it acts while the member leads, waking for the next tick (or
/// after [`SCHEDULER_PERIOD`] at most).
pub(crate) async fn run_scheduler(member: Member) {
    let mut wait = SCHEDULER_PERIOD;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = member.stopping() => return,
        }
        wait = if member.is_leader() {
            let next_tick = member.schedule_round().await;
            super::schedule::wait_before_next_round(now_ms(), next_tick, SCHEDULER_PERIOD)
        } else {
            SCHEDULER_PERIOD
        };
    }
}
