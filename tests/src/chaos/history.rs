//! [`History`]: what the workload's clients asked and what they were told, with monotonic
//! timestamps (nanoseconds since the run started, from [`Instant`]; never the wall clock).
//!
//! Every operation is invoked, then completes as `ok` (it took effect, with this answer),
//! `fail` (it certainly did not take effect) or `info` (unknown: a timeout, a lost connection,
//! an ambiguous error). An operation still open when the run ends counts as `info`.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    /// `kv.get(key)` on a register.
    Read {
        /// The register's key.
        key: String,
    },
    /// `kv.set(key, value)` with a value no other write uses.
    Write {
        /// The register's key.
        key: String,
        /// The value written.
        value: i64,
    },
    /// `kv.cas(key, expected, new)`.
    Cas {
        /// The register's key.
        key: String,
        /// The value expected (`None`: the key absent).
        expected: Option<i64>,
        /// The new value, unique.
        new: i64,
    },
    /// `kv.set` of the set's element `element` (a key of its own).
    Add {
        /// The element.
        element: u64,
    },
    /// `kv.incr` of the counter.
    Incr,
    /// `cluster.get(member, key)` of a member config key.
    MemberRead {
        /// The member.
        member: String,
        /// The key (`user.*`).
        key: String,
    },
    /// `cluster.set(member, key, value)` with a value no other write uses.
    MemberWrite {
        /// The member.
        member: String,
        /// The key (`user.*`).
        key: String,
        /// The value written.
        value: i64,
    },
    /// `instances.launch{image=, name=}` of an instance (its name used once in a run).
    Launch {
        /// The instance.
        name: String,
        /// Whether self-healing may recreate it elsewhere (`cluster.healing.recreate`).
        recreate: bool,
    },
    /// `instances.start(name)`.
    Start {
        /// The instance.
        name: String,
    },
    /// `instances.stop(name, {force=true})`.
    Stop {
        /// The instance.
        name: String,
    },
    /// `instances.delete(name, {force=true})`.
    Delete {
        /// The instance.
        name: String,
    },
    /// `cluster.restore(member)` of a member self-healing evacuated.
    Restore {
        /// The member.
        member: String,
    },
}

impl Call {
    /// The instance this call is about, if it is an instance call.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Call::Launch { name, .. }
            | Call::Start { name }
            | Call::Stop { name }
            | Call::Delete { name } => Some(name),
            _ => None,
        }
    }
}

/// What a completed operation answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// It took effect; `answer` is what it answered.
    Ok {
        /// The answer.
        answer: Answer,
    },
    /// It certainly did not take effect.
    Fail {
        /// Why.
        error: String,
    },
    /// Unknown: it may or may not have taken effect.
    Info {
        /// Why it is unknown.
        error: String,
    },
}

/// An answer, by the kind of call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// A write or an add: nothing to say.
    Done,
    /// A read: the register's value (`None`: absent).
    Value(Option<i64>),
    /// A cas: whether it swapped.
    Swapped(bool),
    /// An incr: the counter's new value.
    Counter(i64),
}

/// One operation: its call, who made it, when, and how it ended.
#[derive(Clone, Debug, Serialize)]
pub struct Operation {
    /// The operation's number in the history.
    pub id: usize,
    /// The client (worker) that made it.
    pub process: usize,
    /// What it asked.
    pub call: Call,
    /// The member it was sent to.
    pub member: String,
    /// When it was invoked (ns since the run started).
    pub invoke_ns: u64,
    /// When it completed and how; `None`: still open (counts as `info`).
    pub completion: Option<(u64, Outcome)>,
}

impl Operation {
    /// The outcome, an open operation counting as `info`.
    pub fn outcome(&self) -> Outcome {
        match &self.completion {
            Some((_, outcome)) => outcome.clone(),
            None => Outcome::Info {
                error: "still open when the run ended".to_string(),
            },
        }
    }

    /// The completion time of an `ok` operation; `None` for any other.
    pub fn ok_at(&self) -> Option<u64> {
        match &self.completion {
            Some((at, Outcome::Ok { .. })) => Some(*at),
            _ => None,
        }
    }
}

/// The history of a run, shared by the clients.
pub struct History {
    /// Time zero of the run.
    start: Instant,
    /// Every operation, by id.
    operations: Mutex<Vec<Operation>>,
}

impl History {
    /// An empty history whose clock starts at `start`.
    pub fn new(start: Instant) -> History {
        History {
            start,
            operations: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records the invocation of `call` by `process` on `member`; answers its id.
    pub fn invoke(&self, process: usize, member: &str, call: Call) -> usize {
        let mut operations = crate::chaos::lock(&self.operations);
        let id = operations.len();
        let invoke_ns = self.start.elapsed().as_nanos() as u64;
        operations.push(Operation {
            id,
            process,
            call,
            member: member.to_string(),
            invoke_ns,
            completion: None,
        });
        id
    }

    /// Records how operation `id` ended.
    pub fn complete(&self, id: usize, outcome: Outcome) {
        let at = self.now_ns();
        if let Some(operation) = crate::chaos::lock(&self.operations).get_mut(id) {
            operation.completion = Some((at, outcome));
        }
    }

    /// A copy of every operation so far.
    pub fn operations(&self) -> Vec<Operation> {
        crate::chaos::lock(&self.operations).clone()
    }

    /// Writes the history as JSON lines, one per event (invoke, then ok/fail/info), in time
    /// order.
    pub fn write_json_lines(&self, path: &Path) -> Result<()> {
        let mut events: Vec<(u64, serde_json::Value)> = Vec::new();
        for operation in self.operations() {
            let base = serde_json::json!({
                "id": operation.id,
                "process": operation.process,
                "member": operation.member,
                "call": operation.call,
            });
            let mut invoke = base.clone();
            invoke["type"] = "invoke".into();
            invoke["time_ns"] = operation.invoke_ns.into();
            events.push((operation.invoke_ns, invoke));
            if let Some((at, outcome)) = &operation.completion {
                let mut completion = base;
                completion["time_ns"] = (*at).into();
                completion["outcome"] = serde_json::to_value(outcome)?;
                completion["type"] = completion["outcome"]["type"].clone();
                events.push((*at, completion));
            }
        }
        events.sort_by_key(|(at, _)| *at);
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for (_, event) in events {
            serde_json::to_writer(&mut out, &event)?;
            out.write_all(b"\n")?;
        }
        out.flush()
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Operation `id` made by process 0 on m1, invoked at `id`×100 ns and completed 50 ns later
/// with `outcome` (`None`: still open), for the checkers' tests.
#[cfg(test)]
pub(crate) fn test_operation(id: usize, call: Call, outcome: Option<Outcome>) -> Operation {
    Operation {
        id,
        process: 0,
        call,
        member: "m1".to_string(),
        invoke_ns: id as u64 * 100,
        completion: outcome.map(|outcome| (id as u64 * 100 + 50, outcome)),
    }
}

/// Reads a history written by [`History::write_json_lines`] back (to check it again).
pub fn read_json_lines(path: &Path) -> Result<Vec<Operation>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut operations: Vec<Option<Operation>> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let event: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), number + 1))?;
        read_event(&event, &mut operations)
            .with_context(|| format!("{}:{}: {line}", path.display(), number + 1))?;
    }
    Ok(operations.into_iter().flatten().collect())
}

fn read_event(event: &Value, operations: &mut Vec<Option<Operation>>) -> Result<()> {
    let id = event["id"].as_u64().ok_or_else(|| anyhow!("no id"))? as usize;
    let time_ns = event["time_ns"]
        .as_u64()
        .ok_or_else(|| anyhow!("no time_ns"))?;
    if operations.len() <= id {
        operations.resize_with(id + 1, || None);
    }
    if event["type"] == "invoke" {
        operations[id] = Some(Operation {
            id,
            process: event["process"].as_u64().unwrap_or_default() as usize,
            call: serde_json::from_value(event["call"].clone())?,
            member: event["member"].as_str().unwrap_or_default().to_string(),
            invoke_ns: time_ns,
            completion: None,
        });
        return Ok(());
    }
    let operation = operations[id]
        .as_mut()
        .ok_or_else(|| anyhow!("a completion before its invocation"))?;
    let outcome = &event["outcome"];
    let error = || outcome["error"].as_str().unwrap_or_default().to_string();
    let outcome = match outcome["type"].as_str() {
        Some("ok") => Outcome::Ok {
            answer: answer_of(&operation.call, &outcome["answer"])?,
        },
        Some("fail") => Outcome::Fail { error: error() },
        Some("info") => Outcome::Info { error: error() },
        other => return Err(anyhow!("unknown outcome {other:?}")),
    };
    operation.completion = Some((time_ns, outcome));
    Ok(())
}

/// The answer `value` to `call`, as recorded.
fn answer_of(call: &Call, value: &Value) -> Result<Answer> {
    let answer = match (call, value) {
        (Call::Read { .. } | Call::MemberRead { .. }, Value::Null) => Answer::Value(None),
        (Call::Read { .. } | Call::MemberRead { .. }, Value::Number(number)) => {
            Answer::Value(number.as_i64())
        }
        (
            Call::Write { .. }
            | Call::Add { .. }
            | Call::MemberWrite { .. }
            | Call::Launch { .. }
            | Call::Start { .. }
            | Call::Stop { .. }
            | Call::Delete { .. }
            | Call::Restore { .. },
            Value::Null,
        ) => Answer::Done,
        (Call::Cas { .. }, Value::Bool(swapped)) => Answer::Swapped(*swapped),
        (Call::Incr, Value::Number(number)) => {
            Answer::Counter(number.as_i64().ok_or_else(|| anyhow!("bad counter"))?)
        }
        _ => return Err(anyhow!("answer {value} does not fit {call:?}")),
    };
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history written and read back is the same history (so a kept run can be checked
    /// again).
    #[test]
    fn history_round_trips_through_json_lines() -> Result<()> {
        let history = History::new(Instant::now());
        let calls = [
            (Call::Read { key: "r".into() }, Some(Answer::Value(None))),
            (
                Call::Write {
                    key: "r".into(),
                    value: 4,
                },
                Some(Answer::Done),
            ),
            (
                Call::Cas {
                    key: "r".into(),
                    expected: Some(4),
                    new: 5,
                },
                Some(Answer::Swapped(true)),
            ),
            (Call::Add { element: 9 }, None),
            (Call::Incr, Some(Answer::Counter(3))),
            (
                Call::MemberRead {
                    member: "m1".into(),
                    key: "user.chaos.0".into(),
                },
                Some(Answer::Value(Some(7))),
            ),
            (
                Call::MemberWrite {
                    member: "m1".into(),
                    key: "user.chaos.0".into(),
                    value: 8,
                },
                Some(Answer::Done),
            ),
            (
                Call::Launch {
                    name: "c1".into(),
                    recreate: true,
                },
                Some(Answer::Done),
            ),
            (Call::Stop { name: "c1".into() }, None),
            (Call::Delete { name: "c1".into() }, Some(Answer::Done)),
            (Call::Read { key: "r".into() }, Some(Answer::Value(Some(5)))),
        ];
        for (call, answer) in calls {
            let id = history.invoke(1, "m2", call);
            match answer {
                Some(answer) => history.complete(id, Outcome::Ok { answer }),
                None => history.complete(
                    id,
                    Outcome::Info {
                        error: "timed out".into(),
                    },
                ),
            }
        }
        history.invoke(2, "m3", Call::Incr);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("history.jsonl");
        history.write_json_lines(&path)?;
        let read = read_json_lines(&path)?;
        let written = history.operations();
        assert_eq!(read.len(), written.len());
        for (read, written) in read.iter().zip(&written) {
            assert_eq!(read.call, written.call);
            assert_eq!(read.completion, written.completion);
            assert_eq!(read.invoke_ns, written.invoke_ns);
        }
        Ok(())
    }
}
