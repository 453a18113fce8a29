//! `starling-chaos`: a Jepsen-style fault harness. Real `starling` processes, each in a network
//! namespace of its own, under faults scheduled from a seed, with clients recording a history
//! that is then checked.
//!
//! # Layout
//! - [`run`] (here): the phases of a run, and the [`Report`] it ends with.
//! - [`netns`]: the namespaces, the bridge and the DROP rules.
//! - [`nemesis`]: the faults (kill, pause, partitions, membership changes) and the member
//!   processes they hit; recovery and role checks.
//! - [`workload`]: the clients (registers, set, counter, member config, instances) on the
//!   client library.
//! - [`history`]: what the clients did, with monotonic timestamps.
//! - [`linearizable`]: the linearizability checker (a bounded WGL search).
//! - [`checks`]: the register, set and counter checks over a history.
//! - [`instances`]: the instance check (records, containers on disk and the history agree).
//! - [`rng`]: the seeded generator every choice is drawn from.
//!
//! Start at [`run`].

pub mod checks;
pub mod history;
pub mod instances;
pub mod linearizable;
pub mod nemesis;
pub mod netns;
pub mod rng;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use starling_runtime::automation::kv::KvOperation;
use starling_runtime::{Client, Operation};

use checks::Violation;
use history::{History, Outcome};
use nemesis::{FaultFigures, Nemesis};
use workload::{Role, Shared, Targets, Worker};

/// Registers of the register workload.
pub const REGISTERS: u64 = 4;
/// Clients on the registers.
pub const REGISTER_CLIENTS: usize = 4;
/// Clients on the set and the counter.
pub const SET_CLIENTS: usize = 2;
/// How long the instance check waits for records and containers to agree after the heal
/// (self-healing, stale copies removed by the members' watchers, statuses reported).
pub const INSTANCES_SETTLE: Duration = Duration::from_secs(90);
/// How long one operation may take before its outcome counts as unknown.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The most states the linearizability search visits per register.
pub const SEARCH_STATES_MAX: usize = 2_000_000;

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long faults are injected (the run takes longer: start, final heal, checks).
    pub time: Duration,
    /// The seed every choice is drawn from.
    pub seed: u64,
    /// Members at the start.
    pub members: usize,
    /// Where to write the history and logs even when the run passes; a failed run writes
    /// them to a fresh directory when this is `None`.
    pub keep: Option<PathBuf>,
    /// The `starling` binary the members run.
    pub starling: PathBuf,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Operations in the history.
    pub operations: usize,
    /// Of them `ok`, `fail` and `info`.
    pub ok: usize,
    /// Failed operations.
    pub failed: usize,
    /// Operations with an unknown outcome.
    pub unknown: usize,
    /// The faults' figures.
    pub faults: FaultFigures,
    /// The register check's figures.
    pub registers: checks::RegisterFigures,
    /// The set check's figures.
    pub set: checks::SetFigures,
    /// The counter's final value.
    pub counter: Option<i64>,
    /// The instance check's figures (`None`: instances were not part of the run).
    pub instances: Option<instances::Figures>,
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// Where the history and the logs were written, if they were.
    pub output: Option<PathBuf>,
}

impl Report {
    /// Faults injected in all.
    pub fn fault_count(&self) -> usize {
        self.faults.by_kind.values().sum()
    }

    /// The summary, its last line `N operations, F faults (...), V violations`.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.push(format!(
            "history: {} operations ({} ok, {} fail, {} info)",
            self.operations, self.ok, self.failed, self.unknown
        ));
        lines.push(format!(
            "registers: {} keys, {} operations searched{}",
            self.registers.keys,
            self.registers.entries,
            if self.registers.unknown.is_empty() {
                String::new()
            } else {
                format!(
                    "; search gave up on {:?} (counted as violations)",
                    self.registers.unknown
                )
            }
        ));
        lines.push(format!(
            "set: {} adds acknowledged, {} unknown ({} of them present), {} elements read; counter: {}",
            self.set.acknowledged,
            self.set.unknown,
            self.set.unknown_present,
            self.set.read,
            self.counter.map_or("not read".to_string(), |value| value.to_string())
        ));
        if let Some(figures) = &self.instances {
            lines.push(format!(
                "instances: {} launches and {} deletes acknowledged, {} unknown; {} records and {} containers running at the end",
                figures.launched, figures.deleted, figures.unknown, figures.records, figures.running
            ));
        }
        lines.push(self.recovery_line());
        if let Some(output) = &self.output {
            lines.push(format!("history and member logs in {}", output.display()));
        }
        for violation in &self.violations {
            lines.push(format!(
                "violation ({}): {}",
                violation.check, violation.what
            ));
        }
        let kinds: Vec<String> = self
            .faults
            .by_kind
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        lines.push(format!(
            "{} operations, {} faults ({}), {} violations",
            self.operations,
            self.fault_count(),
            kinds.join(", "),
            self.violations.len()
        ));
        lines
    }

    fn recovery_line(&self) -> String {
        let mut times: Vec<Duration> = self.faults.recoveries.clone();
        times.sort();
        let median = times.get(times.len() / 2);
        let max = times.last();
        format!(
            "recovery after heals: {} measured, p50 {} ms, max {} ms; final recovery {} ms; roles settled in {}",
            times.len(),
            median.map_or("-".to_string(), |t| t.as_millis().to_string()),
            max.map_or("-".to_string(), |t| t.as_millis().to_string()),
            self.faults
                .final_recovery
                .map_or("-".to_string(), |t| t.as_millis().to_string()),
            self.faults
                .settled_in
                .map_or("-".to_string(), |t| format!("{:.1}s", t.as_secs_f64())),
        )
    }
}

/// Runs the harness: starts the members, runs the workload under faults for `options.time`,
/// heals, reads the final state, checks the history.
pub async fn run(options: Options) -> Result<Report> {
    if options.members < 3 {
        return Err(anyhow!("--members must be at least 3 (there are 3 voters)"));
    }
    let start = Instant::now();
    tracing::info!("--- setting up the network");
    let network = Arc::new(netns::Network::create()?);
    let targets = Arc::new(Targets::default());
    tracing::info!(members = options.members, "--- starting the members");
    let mut nemesis = Nemesis::start(
        options.starling.clone(),
        network,
        options.members,
        options.seed,
        targets.clone(),
        start,
    )
    .await?;
    let with_instances = instances_possible();
    if with_instances {
        prepare_instances(&mut nemesis)
            .await
            .context("preparing the instance workload")?;
    }
    let history = Arc::new(History::new(start));
    let shared = Arc::new(Shared {
        history: history.clone(),
        targets,
        next_value: AtomicI64::new(1),
        next_element: AtomicU64::new(0),
        registers: REGISTERS,
        operation_timeout: OPERATION_TIMEOUT,
        next_instance: AtomicU64::new(0),
        instance_prefix: format!("chaos{}", std::process::id() % 100_000),
    });
    tracing::info!("--- workload and faults");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut roles = vec![Role::Register; REGISTER_CLIENTS];
    roles.extend([Role::Set; SET_CLIENTS]);
    roles.push(Role::MemberConfig);
    if with_instances {
        roles.push(Role::Instances);
    }
    let mut workers = Vec::new();
    for (process, role) in roles.into_iter().enumerate() {
        let bound = role.timeout(&shared) + workload::CONNECT_TIMEOUT + Duration::from_secs(2);
        let worker = Worker::new(process, role, options.seed, shared.clone());
        workers.push((bound, tokio::spawn(worker.run(stopped.clone()))));
    }
    let faults = nemesis.run(Instant::now() + options.time).await;
    // Clients see the healed cluster until here; each stops within one operation's timeout.
    let _ = stop.send(true);
    for (bound, worker) in workers {
        if tokio::time::timeout(bound, worker).await.is_err() {
            tracing::warn!("a client did not stop in time");
        }
    }
    faults?;
    tracing::info!("--- final reads");
    let (elements, counter) = final_reads(&nemesis, shared.next_element.load(Ordering::Relaxed))
        .await
        .context("the final reads after the heal")?;
    let operations = history.operations();
    let seen = if with_instances {
        tracing::info!("--- the instances: records against containers");
        Some(final_instances(&mut nemesis, &operations).await)
    } else {
        None
    };
    tracing::info!("--- checking the history");
    let mut report = check(options.seed, &operations, &elements, counter, seen.as_ref());
    report.violations.extend(nemesis.violations.iter().cloned());
    report.faults = nemesis.figures.clone();
    let output = match (&options.keep, report.violations.is_empty()) {
        (Some(dir), _) => Some(dir.clone()),
        (None, false) => Some(std::env::temp_dir().join(format!(
            "starling-chaos-seed{}-{}",
            options.seed,
            std::process::id()
        ))),
        (None, true) => None,
    };
    if let Some(dir) = &output {
        write_output(dir, &history, &nemesis, &report, &elements, seen.as_ref())
            .with_context(|| format!("writing the run's output to {}", dir.display()))?;
        report.output = Some(dir.clone());
    }
    Ok(report)
}

/// Checks a history and the final reads: every register, the set, the counter, and the
/// instances when `seen` holds what was seen of them.
pub fn check(
    seed: u64,
    operations: &[history::Operation],
    elements: &[u64],
    counter: i64,
    seen: Option<&instances::Seen>,
) -> Report {
    let mut report = Report {
        seed,
        operations: operations.len(),
        counter: Some(counter),
        ..Report::default()
    };
    for operation in operations {
        match operation.outcome() {
            Outcome::Ok { .. } => report.ok += 1,
            Outcome::Fail { .. } => report.failed += 1,
            Outcome::Info { .. } => report.unknown += 1,
        }
    }
    let (mut violations, registers) = checks::registers(operations, SEARCH_STATES_MAX);
    for key in &registers.unknown {
        violations.push(Violation {
            check: "linearizable",
            what: format!(
                "register {key}: the search gave up after {SEARCH_STATES_MAX} placements (unchecked)"
            ),
        });
    }
    let (set_violations, set) = checks::set(operations, elements);
    violations.extend(set_violations);
    violations.extend(checks::counter(operations, counter));
    if let Some(seen) = seen {
        let (instance_violations, figures) = instances::check(operations, seen);
        violations.extend(instance_violations);
        report.instances = Some(figures);
    }
    report.registers = registers;
    report.set = set;
    report.violations = violations;
    report
}

/// Checks again the history a run kept in `dir` (`history.jsonl` and `final.json`), for
/// instance after a change to the checkers. Fault figures are not part of it.
pub fn check_kept(dir: &Path) -> Result<Report> {
    let operations = history::read_json_lines(&dir.join("history.jsonl"))?;
    let path = dir.join("final.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kept: Value = serde_json::from_str(&text)?;
    let elements: Vec<u64> = serde_json::from_value(kept["elements"].clone())?;
    let counter = kept["counter"]
        .as_i64()
        .ok_or_else(|| anyhow!("{} has no counter", path.display()))?;
    let seed = kept["seed"].as_u64().unwrap_or_default();
    let seen: Option<instances::Seen> = match kept.get("instances") {
        None | Some(Value::Null) => None,
        Some(value) => {
            Some(serde_json::from_value(value.clone()).context("final.json: instances")?)
        }
    };
    Ok(check(seed, &operations, &elements, counter, seen.as_ref()))
}

/// Whether this run can have instances: containers need root and `/bin/busybox`.
fn instances_possible() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let busybox = std::path::Path::new("/bin/busybox").is_file();
    if !(root && busybox) {
        tracing::warn!(
            root,
            busybox,
            "no instance workload: containers need root and /bin/busybox"
        );
    }
    root && busybox
}

/// Copies images to every member, lets self-healing recreate instances one second after a
/// member is marked offline, and imports the busybox image as [`workload::IMAGE_ALIAS`].
async fn prepare_instances(nemesis: &mut Nemesis) -> Result<()> {
    for (key, value) in [
        ("cluster.images_minimal_replica", "-1"),
        ("cluster.healing_threshold", "1"),
    ] {
        let operation = Operation::ConfigSet {
            key: key.to_string(),
            value: value.to_string(),
        };
        nemesis
            .ask(operation, Duration::from_secs(10))
            .await
            .with_context(|| format!("setting {key}"))?;
    }
    let dir = nemesis.root().join("image");
    std::fs::create_dir_all(&dir)?;
    let image = crate::containers::busybox_image(&dir)?;
    let import = starling_runtime::images::ops::ImageOperation::Import {
        path: image.to_string_lossy().into_owned(),
        aliases: vec![workload::IMAGE_ALIAS.to_string()],
        public: false,
        properties: Default::default(),
    };
    nemesis
        .ask(Operation::Image(import), Duration::from_secs(30))
        .await
        .context("importing the busybox image")?;
    Ok(())
}

/// Reads the instance records and the containers on every member until they agree with the
/// history, for up to [`INSTANCES_SETTLE`]; answers the last thing seen.
async fn final_instances(
    nemesis: &mut Nemesis,
    operations: &[history::Operation],
) -> instances::Seen {
    let deadline = Instant::now() + INSTANCES_SETTLE;
    let mut seen = instances::Seen::default();
    loop {
        let list = starling_runtime::instances::ops::InstanceOperation::List {
            project: workload::PROJECT.to_string(),
        };
        match nemesis
            .ask(Operation::Instance(list), OPERATION_TIMEOUT)
            .await
            .map_err(|error| format!("{error:#}"))
            .and_then(|list| instances::records_of(&list))
        {
            Ok(records) => {
                let members = nemesis.present_names();
                let root = nemesis.root();
                let binary = nemesis.binary().to_path_buf();
                let containers = tokio::task::spawn_blocking(move || {
                    instances::containers(&root, &members, &binary)
                })
                .await
                .unwrap_or_default();
                seen = instances::Seen {
                    records,
                    containers,
                };
                let (violations, _) = instances::check(operations, &seen);
                if violations.is_empty() {
                    return seen;
                }
                tracing::info!(first = %violations[0].what, count = violations.len(), "instances do not agree yet");
            }
            Err(error) => tracing::warn!(%error, "instances.list after the heal"),
        }
        if Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reads the set's elements and the counter through running members, retrying for up to 30 s.
async fn final_reads(nemesis: &Nemesis, elements_made: u64) -> Result<(Vec<u64>, i64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let buckets = elements_made.div_ceil(workload::SET_BUCKET);
    let mut last_error = anyhow!("not tried");
    while Instant::now() < deadline {
        for index in 0..nemesis.slots() {
            let dir = nemesis.root().join(format!("m{}", index + 1));
            match read_everything(&dir, buckets).await {
                Ok(found) => return Ok(found),
                Err(error) => last_error = error,
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last_error)
}

async fn read_everything(dir: &Path, buckets: u64) -> Result<(Vec<u64>, i64)> {
    let client = tokio::time::timeout(workload::CONNECT_TIMEOUT, Client::local(dir))
        .await
        .map_err(|_| anyhow!("no connection"))??;
    let result = async {
        let mut elements = Vec::new();
        for bucket in 0..buckets {
            let list = KvOperation::List {
                prefix: workload::set_prefix(bucket),
                limit: starling_runtime::automation::kv::LIST_MAX,
            };
            let answer =
                tokio::time::timeout(OPERATION_TIMEOUT, client.operation(Operation::Kv(list)))
                    .await
                    .map_err(|_| anyhow!("kv.list timed out"))??;
            for entry in answer.as_array().into_iter().flatten() {
                let element = entry["value"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("a set entry of an unexpected shape: {entry}"))?;
                elements.push(element);
            }
        }
        let get = KvOperation::Get {
            key: workload::COUNTER_KEY.to_string(),
        };
        let counter = tokio::time::timeout(OPERATION_TIMEOUT, client.operation(Operation::Kv(get)))
            .await
            .map_err(|_| anyhow!("kv.get timed out"))??;
        let counter = match counter {
            Value::Null => 0,
            other => other
                .as_i64()
                .ok_or_else(|| anyhow!("the counter holds {other}"))?,
        };
        Ok::<_, anyhow::Error>((elements, counter))
    }
    .await;
    client.close();
    result
}

fn write_output(
    dir: &Path,
    history: &History,
    nemesis: &Nemesis,
    report: &Report,
    elements: &[u64],
    seen: Option<&instances::Seen>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    history.write_json_lines(&dir.join("history.jsonl"))?;
    let kept = serde_json::json!({
        "seed": report.seed,
        "elements": elements,
        "counter": report.counter,
        "instances": seen,
    });
    std::fs::write(dir.join("final.json"), kept.to_string())?;
    std::fs::write(dir.join("faults.log"), nemesis.log.join("\n") + "\n")?;
    let mut summary = report.summary();
    summary.insert(0, format!("seed {}", report.seed));
    std::fs::write(dir.join("summary.txt"), summary.join("\n") + "\n")?;
    nemesis.copy_logs(dir)
}

/// Locks `mutex`, going on with the data of a holder that panicked (the data here is a log
/// or a list, valid after any panic).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Parses a duration such as `90s`, `30m`, `2h` or `45` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| anyhow!("bad duration {text:?}: expected a number and s, m or h, as 90s"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(anyhow!("bad duration {text:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m").ok(), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h").ok(), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45").ok(), Some(Duration::from_secs(45)));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn the_last_summary_line_counts_violations() {
        let mut report = Report {
            operations: 12,
            ..Report::default()
        };
        report.faults.by_kind.insert("kill", 2);
        report.faults.by_kind.insert("partition", 1);
        report.violations.push(Violation {
            check: "set",
            what: "lost".into(),
        });
        let summary = report.summary();
        assert_eq!(
            summary.last().map(String::as_str),
            Some("12 operations, 3 faults (kill 2, partition 1), 1 violations")
        );
    }
}
