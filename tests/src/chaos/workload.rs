//! The workload: concurrent clients, each on the client library (`Client::local` with a
//! member's data directory, one QUIC connection kept per member), sending `kv.*` operations
//! to members picked at random and recording them in the [`History`].
//!
//! - register clients: reads, writes of values no other write uses, and compare-and-sets
//!   expecting the value the client last saw, on a few keys (`chaos/r/N`);
//! - set clients: adds of unique elements (`kv.set` of a key of their own, under
//!   `chaos/set/`, read back with `kv.list` at the end) and increments of a counter
//!   (`kv.incr`, whose answers must all differ);
//! - a member-config client: reads and writes of `user.chaos.N` keys of member m1 (which the
//!   nemesis never removes), through `cluster.get` / `cluster.set`, checked as registers;
//! - an instance client: launches (half of them recreated by self-healing), stops, starts and
//!   deletes busybox containers, each name used once, and restores members self-healing
//!   evacuated, as an operator would; what runs where is checked at the end.
//!
//! Every operation is bounded by a timeout, after which its outcome is unknown (`info`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use starling_runtime::automation::kv::KvOperation;
use starling_runtime::evacuation::ops::EvacuationOperation;
use starling_runtime::instances::ops::{CreateRequest, InstanceOperation};
use starling_runtime::{Client, Error, Operation};
use tokio::sync::watch;

use super::history::{Answer, Call, History, Outcome};
use super::rng::Rng;

/// The key of the counter.
pub const COUNTER_KEY: &str = "chaos/counter";
/// Elements per `kv.list` prefix of the set (a list answers at most 10,000 entries).
pub const SET_BUCKET: u64 = 1_000;
/// The most adds a run makes (the key space holds 65,536 keys).
pub const SET_ADDS_MAX: u64 = 50_000;
/// How long a client waits to connect to a member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The member whose config the member-config client reads and writes (never removed).
pub const CONFIG_MEMBER: &str = "m1";
/// Member config registers (`user.chaos.0..`).
pub const CONFIG_REGISTERS: u64 = 2;
/// The image alias instances are launched from.
pub const IMAGE_ALIAS: &str = "chaos";
/// The project of the instances.
pub const PROJECT: &str = "default";
/// The most instances the instance client keeps at a time.
pub const INSTANCES_MAX: usize = 4;
/// How long an instance operation may take before its outcome counts as unknown (a launch
/// may copy the image first).
pub const INSTANCE_TIMEOUT: Duration = Duration::from_secs(20);

/// The key of register `index`.
pub fn register_key(index: u64) -> String {
    format!("chaos/r/{index}")
}

/// The key of member config register `index`.
pub fn config_key(index: u64) -> String {
    format!("user.chaos.{index}")
}

/// The key of set element `element`.
pub fn set_key(element: u64) -> String {
    format!("{}{element}", set_prefix(element / SET_BUCKET))
}

/// The prefix of the set's bucket `bucket`.
pub fn set_prefix(bucket: u64) -> String {
    format!("chaos/set/{bucket:05}/")
}

/// The members clients may talk to: name and data directory, removed members left out.
#[derive(Default)]
pub struct Targets {
    members: Mutex<Vec<(String, PathBuf)>>,
}

impl Targets {
    /// Makes member `name` (data directory `dir`) a target.
    pub fn add(&self, name: &str, dir: PathBuf) {
        let mut members = crate::chaos::lock(&self.members);
        if !members.iter().any(|(known, _)| known == name) {
            members.push((name.to_string(), dir));
        }
    }

    /// Stops sending to member `name`.
    pub fn remove(&self, name: &str) {
        crate::chaos::lock(&self.members).retain(|(known, _)| known != name);
    }

    /// A member picked with `rng`.
    pub fn pick(&self, rng: &mut Rng) -> Option<(String, PathBuf)> {
        let members = crate::chaos::lock(&self.members);
        rng.pick(&members).cloned()
    }
}

/// What the clients share: the history, the targets, the sources of unique values.
pub struct Shared {
    /// Where operations are recorded.
    pub history: Arc<History>,
    /// Members to send to.
    pub targets: Arc<Targets>,
    /// The next value a register write uses.
    pub next_value: AtomicI64,
    /// The next element of the set.
    pub next_element: AtomicU64,
    /// Registers (keys `chaos/r/0..registers`).
    pub registers: u64,
    /// How long an operation may take before its outcome counts as unknown.
    pub operation_timeout: Duration,
    /// The next instance number.
    pub next_instance: AtomicU64,
    /// Instance names start with this (unique to the run: a container's cgroup is named
    /// after it host-wide).
    pub instance_prefix: String,
}

/// What a client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads, writes and compare-and-sets on the registers.
    Register,
    /// Adds to the set and increments the counter.
    Set,
    /// Reads and writes member config keys.
    MemberConfig,
    /// Launches, stops, starts and deletes instances.
    Instances,
}

impl Role {
    /// The longest an operation of this role may take before its outcome is unknown.
    pub fn timeout(self, shared: &Shared) -> Duration {
        match self {
            Role::Instances => INSTANCE_TIMEOUT,
            _ => shared.operation_timeout,
        }
    }
}

/// An instance the instance client made, as it last knew it.
struct Owned {
    name: String,
    /// Running, as far as the client knows (`None`: the last operation's outcome is unknown).
    running: Option<bool>,
    /// Operations on it refused in a row.
    refusals: u32,
}

/// After this many refusals in a row the client forgets an instance (a launch whose outcome
/// was unknown and did not take effect, a delete that did): it goes on with others, and the
/// final check still covers it.
const REFUSALS_MAX: u32 = 2;

/// One client: its connections, its random stream and what it last saw of each register.
pub struct Worker {
    process: usize,
    role: Role,
    rng: Rng,
    shared: Arc<Shared>,
    connections: Connections,
    last_seen: HashMap<u64, Option<i64>>,
    owned: Vec<Owned>,
}

impl Worker {
    /// Client `process` in role `role`, its choices drawn from the run's `seed`.
    pub fn new(process: usize, role: Role, seed: u64, shared: Arc<Shared>) -> Worker {
        Worker {
            process,
            role,
            rng: Rng::derived(seed, 1_000 + process as u64),
            shared,
            connections: Connections::default(),
            last_seen: HashMap::new(),
            owned: Vec::new(),
        }
    }

    /// Sends operations until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            match self.role {
                Role::Register => self.register_operation().await,
                Role::Set => self.set_operation().await,
                Role::MemberConfig => self.member_config_operation().await,
                Role::Instances => self.instance_operation().await,
            }
            // A little room between operations, so that the clients do not starve the members
            // of the two cores they share.
            let pause = Duration::from_millis(self.rng.below(10));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        self.connections.close_all();
    }

    async fn register_operation(&mut self) {
        let register = self.rng.below(self.shared.registers);
        let key = register_key(register);
        let choice = self.rng.below(10);
        let (call, operation) = if choice < 4 {
            (Call::Read { key: key.clone() }, KvOperation::Get { key })
        } else if choice < 7 {
            let value = self.shared.next_value.fetch_add(1, Ordering::Relaxed);
            (
                Call::Write {
                    key: key.clone(),
                    value,
                },
                KvOperation::Set {
                    key,
                    value: Some(value.to_string()),
                },
            )
        } else {
            let expected = self.last_seen.get(&register).copied().flatten();
            let new = self.shared.next_value.fetch_add(1, Ordering::Relaxed);
            (
                Call::Cas {
                    key: key.clone(),
                    expected,
                    new,
                },
                KvOperation::Cas {
                    key,
                    expected: expected.map(|value| value.to_string()),
                    new: Some(new.to_string()),
                },
            )
        };
        let outcome = self.perform(call.clone(), Operation::Kv(operation)).await;
        if let Outcome::Ok { answer } = &outcome {
            let seen = match (&call, answer) {
                (_, Answer::Value(value)) => Some(*value),
                (Call::Write { value, .. }, _) => Some(Some(*value)),
                (Call::Cas { new, .. }, Answer::Swapped(true)) => Some(Some(*new)),
                _ => None,
            };
            if let Some(seen) = seen {
                self.last_seen.insert(register, seen);
            }
        }
    }

    async fn set_operation(&mut self) {
        if self.rng.chance(1, 4) {
            let operation = KvOperation::Incr {
                key: COUNTER_KEY.to_string(),
                delta: 1,
            };
            self.perform(Call::Incr, Operation::Kv(operation)).await;
            return;
        }
        let element = self.shared.next_element.fetch_add(1, Ordering::Relaxed);
        if element >= SET_ADDS_MAX {
            return;
        }
        let operation = KvOperation::Set {
            key: set_key(element),
            value: Some(element.to_string()),
        };
        self.perform(Call::Add { element }, Operation::Kv(operation))
            .await;
    }

    async fn member_config_operation(&mut self) {
        let key = config_key(self.rng.below(CONFIG_REGISTERS));
        let member = CONFIG_MEMBER.to_string();
        if self.rng.chance(1, 2) {
            let operation = Operation::ClusterGet {
                name: member.clone(),
                key: key.clone(),
            };
            self.perform(Call::MemberRead { member, key }, operation)
                .await;
        } else {
            let value = self.shared.next_value.fetch_add(1, Ordering::Relaxed);
            let operation = Operation::ClusterSet {
                name: member.clone(),
                key: key.clone(),
                value: value.to_string(),
            };
            self.perform(Call::MemberWrite { member, key, value }, operation)
                .await;
        }
    }

    async fn instance_operation(&mut self) {
        if self.rng.chance(1, 12) {
            self.restore_evacuated().await;
            return;
        }
        if self.owned.len() < INSTANCES_MAX && (self.owned.is_empty() || self.rng.chance(1, 3)) {
            let number = self.shared.next_instance.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}-{number}", self.shared.instance_prefix);
            let recreate = self.rng.chance(1, 2);
            let mut config = std::collections::BTreeMap::new();
            if recreate {
                config.insert(
                    starling_runtime::evacuation::plan::RECREATE_KEY.to_string(),
                    "true".to_string(),
                );
            }
            let request = CreateRequest {
                project: PROJECT.to_string(),
                name: Some(name.clone()),
                image: IMAGE_ALIAS.to_string(),
                target: None,
                profiles: None,
                config,
                devices: Default::default(),
                description: String::new(),
                start: true,
                ephemeral: false,
            };
            let operation = Operation::Instance(InstanceOperation::Create(request));
            let call = Call::Launch {
                name: name.clone(),
                recreate,
            };
            let outcome = self.perform(call, operation).await;
            if !matches!(outcome, Outcome::Fail { .. }) {
                // Running if the launch was acknowledged; unknown if its outcome is.
                let running = matches!(outcome, Outcome::Ok { .. }).then_some(true);
                self.owned.push(Owned {
                    name,
                    running,
                    refusals: 0,
                });
            }
            return;
        }
        let Some(index) =
            (!self.owned.is_empty()).then(|| self.rng.below(self.owned.len() as u64) as usize)
        else {
            return;
        };
        let name = self.owned[index].name.clone();
        let project = PROJECT.to_string();
        if self.rng.chance(1, 4) {
            let operation = Operation::Instance(InstanceOperation::Delete {
                project,
                name: name.clone(),
                force: true,
            });
            match self.perform(Call::Delete { name }, operation).await {
                Outcome::Ok { .. } => {
                    self.owned.remove(index);
                }
                Outcome::Info { .. } => self.owned[index].running = None,
                Outcome::Fail { .. } => self.refused(index),
            }
            return;
        }
        let start = match self.owned[index].running {
            Some(running) => !running,
            None => self.rng.chance(1, 2),
        };
        let (call, operation) = if start {
            (
                Call::Start { name: name.clone() },
                InstanceOperation::Start { project, name },
            )
        } else {
            (
                Call::Stop { name: name.clone() },
                InstanceOperation::Stop {
                    project,
                    name,
                    force: true,
                    timeout_s: 0,
                },
            )
        };
        match self.perform(call, Operation::Instance(operation)).await {
            Outcome::Ok { .. } => {
                self.owned[index].running = Some(start);
                self.owned[index].refusals = 0;
            }
            Outcome::Info { .. } => self.owned[index].running = None,
            Outcome::Fail { .. } => {
                self.owned[index].running = None;
                self.refused(index);
            }
        }
    }

    /// Counts a refusal of an operation on owned instance `index`, forgetting it after
    /// [`REFUSALS_MAX`] in a row.
    fn refused(&mut self, index: usize) {
        self.owned[index].refusals += 1;
        if self.owned[index].refusals >= REFUSALS_MAX {
            self.owned.remove(index);
        }
    }

    /// Restores the members self-healing evacuated, as an operator's automation would.
    async fn restore_evacuated(&mut self) {
        let Some((_, dir)) = self.shared.targets.pick(&mut self.rng) else {
            return;
        };
        let members = match self.connections.client(&dir).await {
            Ok(client) => {
                let request = client.operation(Operation::ClusterMembers);
                match tokio::time::timeout(self.shared.operation_timeout, request).await {
                    Ok(Ok(members)) => members,
                    _ => {
                        self.connections.discard(&dir);
                        return;
                    }
                }
            }
            Err(_) => return,
        };
        let evacuated: Vec<String> = members
            .as_array()
            .into_iter()
            .flatten()
            .filter(|member| member["status"] == "Evacuated")
            .filter_map(|member| member["server_name"].as_str().map(str::to_string))
            .collect();
        for member in evacuated {
            let operation = Operation::Evacuation(EvacuationOperation::Restore {
                member: member.clone(),
                action: None,
            });
            self.perform(Call::Restore { member }, operation).await;
        }
    }

    /// Sends `operation` to a member picked at random, recording it as `call`.
    async fn perform(&mut self, call: Call, operation: Operation) -> Outcome {
        let Some((name, dir)) = self.shared.targets.pick(&mut self.rng) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Outcome::Fail {
                error: "no member to send to".to_string(),
            };
        };
        let id = self
            .shared
            .history
            .invoke(self.process, &name, call.clone());
        let outcome = match self.connections.client(&dir).await {
            Err(error) => Outcome::Fail {
                error: format!("cannot connect to {name}: {error}"),
            },
            Ok(client) => {
                let timeout = self.role.timeout(&self.shared);
                let request = client.operation(operation);
                match tokio::time::timeout(timeout, request).await {
                    Err(_) => {
                        self.connections.discard(&dir);
                        Outcome::Info {
                            error: format!("no answer within {timeout:?}"),
                        }
                    }
                    Ok(Ok(value)) => answer(&call, value),
                    Ok(Err(error)) => {
                        if error.is_transient() {
                            self.connections.discard(&dir);
                        }
                        classify(error)
                    }
                }
            }
        };
        self.shared.history.complete(id, outcome.clone());
        outcome
    }
}

/// The outcome of an error: `fail` only when the operation certainly did not take effect.
///
/// `NotSent` says the request never left; `Refused` and the trust errors come from a check
/// made before anything was proposed (or from the state machine refusing the command). Every
/// other error may follow a proposal that still commits (`NoQuorum` after a timed-out commit,
/// `LeadershipChanged` after a lost forward), so its outcome is unknown.
pub fn classify(error: Error) -> Outcome {
    let definitely_not_applied = matches!(
        error,
        Error::NotSent(_) | Error::Refused(_) | Error::NotAuthorized(_) | Error::InvalidToken(_)
    );
    if definitely_not_applied {
        Outcome::Fail {
            error: error.to_string(),
        }
    } else {
        Outcome::Info {
            error: error.to_string(),
        }
    }
}

/// The `ok` outcome of `call` answered with `value`; an answer of the wrong shape is
/// recorded as unknown (and logged), never guessed.
fn answer(call: &Call, value: Value) -> Outcome {
    let answer = match (call, &value) {
        (Call::Read { .. }, Value::Null) => Some(Answer::Value(None)),
        (Call::Read { .. }, Value::Number(number)) => {
            number.as_i64().map(|n| Answer::Value(Some(n)))
        }
        // A member config key reads as a string, empty when unset.
        (Call::MemberRead { .. }, Value::String(text)) if text.is_empty() => {
            Some(Answer::Value(None))
        }
        (Call::MemberRead { .. }, Value::String(text)) => {
            text.parse().ok().map(|n| Answer::Value(Some(n)))
        }
        (Call::Write { .. } | Call::Add { .. }, Value::Null) => Some(Answer::Done),
        // Their answers (a record, a report) say nothing the checks use: done is done.
        (
            Call::MemberWrite { .. }
            | Call::Launch { .. }
            | Call::Start { .. }
            | Call::Stop { .. }
            | Call::Delete { .. }
            | Call::Restore { .. },
            _,
        ) => Some(Answer::Done),
        (Call::Cas { .. }, Value::Bool(swapped)) => Some(Answer::Swapped(*swapped)),
        (Call::Incr, Value::Number(number)) => number.as_i64().map(Answer::Counter),
        _ => None,
    };
    match answer {
        Some(answer) => Outcome::Ok { answer },
        None => {
            tracing::warn!(?call, %value, "an answer of an unexpected shape");
            Outcome::Info {
                error: format!("unexpected answer {value}"),
            }
        }
    }
}

/// A client's connections, one per member data directory, made on first use.
#[derive(Default)]
pub struct Connections {
    clients: HashMap<PathBuf, Client>,
}

impl Connections {
    /// The connection to the member whose data directory is `dir`.
    pub async fn client(&mut self, dir: &PathBuf) -> Result<&Client, String> {
        if !self.clients.contains_key(dir) {
            let client = match tokio::time::timeout(CONNECT_TIMEOUT, Client::local(dir)).await {
                Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
                Ok(Err(error)) => return Err(error.to_string()),
                Ok(Ok(client)) => client,
            };
            self.clients.insert(dir.clone(), client);
        }
        self.clients
            .get(dir)
            .ok_or_else(|| "the connection went away".to_string())
    }

    /// Closes the connection to `dir` (the next operation reconnects).
    pub fn discard(&mut self, dir: &PathBuf) {
        if let Some(client) = self.clients.remove(dir) {
            client.close();
        }
    }

    /// Closes every connection.
    pub fn close_all(&mut self) {
        for (_, client) in self.clients.drain() {
            client.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only errors that say the operation never took effect make it `fail`.
    #[test]
    fn ambiguous_errors_are_info() {
        let fail = |error| matches!(classify(error), Outcome::Fail { .. });
        assert!(fail(Error::NotSent("no connection".into())));
        assert!(fail(Error::Refused("bad key".into())));
        assert!(!fail(Error::OutcomeUnknown("lost".into())));
        assert!(!fail(Error::LeadershipChanged("moved".into())));
        assert!(!fail(Error::NoQuorum {
            reachable: 1,
            voters: 3,
            needed: 2
        }));
        assert!(!fail(Error::Transport("reset".into())));
    }

    #[test]
    fn answers_of_the_wrong_shape_are_not_guessed() {
        let read = Call::Read { key: "k".into() };
        assert_eq!(
            answer(&read, serde_json::json!(3)),
            Outcome::Ok {
                answer: Answer::Value(Some(3))
            }
        );
        assert!(matches!(
            answer(&read, serde_json::json!("x")),
            Outcome::Info { .. }
        ));
        assert!(matches!(
            answer(&Call::Incr, Value::Null),
            Outcome::Info { .. }
        ));
    }

    #[test]
    fn set_keys_fall_in_their_bucket() {
        assert_eq!(set_key(1_234), "chaos/set/00001/1234");
        assert!(set_key(999).starts_with(&set_prefix(0)));
    }
}
