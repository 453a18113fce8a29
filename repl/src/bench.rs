//! `starling bench`: write and read latency on a cluster of real member processes.
//!
//! Starts `--members` `starling daemon` processes on loopback with durable storage, then for
//! 1, 16 and 64 concurrent writers sends `config.set user.bench.N` to the leader for a fixed
//! time and prints writes/s, p50 and p99. Then `kv.incr` of one shared key from 64 clients
//! (its counter checked against the increments acknowledged), a linearizable read figure, and
//! the jitter of a scheduled script (its start, as it reads the clock, minus its tick). With `--baseline
//! OLD_BINARY`, rounds alternate between the old binary's cluster and this one's (the same
//! machine, the same run) and the medians of both are printed with the change in percent, and
//! the rounds' own changes (their geometric mean). The two builds take turns at running first,
//! so that what favours the first or second run of a pair cancels out in an even number of
//! rounds.
//! `--writes-only` measures the writes alone, so that many short rounds fit in a few minutes.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use starling_runtime::automation::kv::KvOperation;
use starling_runtime::{Client, Operation};

/// Arguments of `starling bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Member processes to start.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Keep the members' data and logs (their path is printed) instead of deleting them.
    #[arg(long)]
    keep: bool,
    /// Concurrent writer counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    writers: Vec<usize>,
    /// Another `starling` binary to measure in the same run (an older build): rounds
    /// alternate between its cluster and this binary's, and medians of both are printed.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Rounds per binary when comparing with `--baseline`.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Async worker threads each member runs (`daemon --workers`). By default the members
    /// share the machine's CPUs: CPUs / members, at least one (a member alone on a machine
    /// runs one per CPU, the daemon's default).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    member_workers: Option<u16>,
    /// Measure the writes only (no `kv.incr`, reads, scheduled script or events): short rounds
    /// for comparing builds. Passed on to the `--baseline` build, which must know it.
    #[arg(long)]
    writes_only: bool,
}

/// One binary's figures in one round: per writer count (writes/s, p50 ms), then read p50 ms
/// (none with `--writes-only`).
struct Round {
    writes: Vec<(f64, f64)>,
    read_p50_ms: Option<f64>,
}

/// Member processes, killed on drop.
pub(crate) struct Processes {
    pub(crate) children: Vec<Child>,
    pub(crate) dir: PathBuf,
    pub(crate) keep: bool,
}

impl Processes {
    /// None yet, under a new empty directory `starling-<name>-<pid>` in the temporary
    /// directory (kept on drop with `keep`).
    pub(crate) fn in_temp_dir(name: &str, keep: bool) -> Result<Processes> {
        let dir = std::env::temp_dir().join(format!("starling-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Processes {
            children: Vec::new(),
            dir,
            keep,
        })
    }
}

/// Kills every process whose root or command line is under `dir`: the containers of a
/// benchmark's members and their monitors, which outlive the members by design (adoption).
fn kill_containers_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let root_under =
            std::fs::read_link(entry.path().join("root")).is_ok_and(|root| root.starts_with(dir));
        let named = std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|line| line.windows(needle.len().max(1)).any(|part| part == needle));
        if root_under || named {
            // SAFETY: kill(2) with a pid and a signal number.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep {
            kill_containers_under(&self.dir);
        }
        if self.keep {
            eprintln!(
                "benchmark data and member logs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs the benchmark and prints its figures; with `--baseline`, both binaries' in turn.
pub async fn run(args: &BenchArgs) -> Result<()> {
    let this = std::env::current_exe()?;
    let Some(baseline) = &args.baseline else {
        measure(args, &this).await?;
        return Ok(());
    };
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=args.rounds {
        // Which build runs first alternates from round to round: with the same binary twice
        // and a fixed order, the second run of a pair once measured 7 % more single-writer
        // writes/s (30 rounds), which a fixed order would give to one build.
        let mut order = [(0, baseline.as_path()), (1, this.as_path())];
        if round % 2 == 0 {
            order.reverse();
        }
        for (slot, exe) in order {
            println!("\n--- round {round}: {}", exe.display());
            rounds[slot].push(measure_by(args, exe)?);
        }
    }
    println!(
        "\nmedians over {} rounds, alternating (baseline first in odd rounds, this build in even ones):",
        args.rounds
    );
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "writers", "baseline /s", "this /s", "change"
    );
    for (index, writers) in args.writers.iter().enumerate() {
        let rate = |slot: usize| median(rounds[slot].iter().map(|round| round.writes[index].0));
        let (before, after) = (rate(0), rate(1));
        let paired = paired_change(&rounds, |round| round.writes[index].0);
        println!(
            "{writers:>8} {before:>14.0} {after:>14.0} {:>+7.1}%   (round by round: {paired:+.1}%)",
            (after / before - 1.0) * 100.0
        );
        let p50 = |slot: usize| median(rounds[slot].iter().map(|round| round.writes[index].1));
        let paired = paired_change(&rounds, |round| round.writes[index].1);
        println!(
            "{:>8} {:>11.3} ms {:>11.3} ms   (p50; round by round: {paired:+.1}%)",
            "",
            p50(0),
            p50(1)
        );
    }
    if !args.writes_only {
        let read = |slot: usize| median(rounds[slot].iter().filter_map(|round| round.read_p50_ms));
        println!(
            "linearizable read p50: baseline {:.3} ms, this {:.3} ms",
            read(0),
            read(1)
        );
    }
    Ok(())
}

/// The change in percent from the baseline's `figure` to this build's: the geometric mean of
/// each round's ratio (the two runs of a round follow each other). As the builds take turns at
/// running first, an advantage of the first (or second) run of a pair cancels out over an even
/// number of rounds.
fn paired_change(rounds: &[Vec<Round>; 2], figure: impl Fn(&Round) -> f64) -> f64 {
    let logs: Vec<f64> = rounds[0]
        .iter()
        .zip(&rounds[1])
        .map(|(before, after)| (figure(after) / figure(before)).ln())
        .collect();
    let mean = logs.iter().sum::<f64>() / logs.len() as f64;
    (mean.exp() - 1.0) * 100.0
}

/// Runs `exe bench` (its own client and members: the wire protocol may differ between builds)
/// and reads its figures from what it prints.
fn measure_by(args: &BenchArgs, exe: &Path) -> Result<Round> {
    let writers: Vec<String> = args.writers.iter().map(usize::to_string).collect();
    let mut command = std::process::Command::new(exe);
    command
        .args(["bench", "--members", &args.members.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--writers", &writers.join(",")]);
    if let Some(workers) = args.member_workers {
        command.args(["--member-workers", &workers.to_string()]);
    }
    if args.writes_only {
        command.arg("--writes-only");
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} bench", exe.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    if !output.status.success() {
        let errors = String::from_utf8_lossy(&output.stderr);
        let last = errors.lines().rev().find(|line| !line.trim().is_empty());
        bail!(
            "{} bench failed: {}",
            exe.display(),
            last.unwrap_or("no message")
        );
    }
    parse_round(&text, &args.writers, args.writes_only)
        .ok_or_else(|| anyhow!("cannot read the figures {} bench printed", exe.display()))
}

/// The figures of one `bench` output: a `writers writes/s p50 p99` row per writer count and,
/// unless `writes_only`, the `linearizable read ... p50 X ms` line.
fn parse_round(text: &str, writer_counts: &[usize], writes_only: bool) -> Option<Round> {
    let rows: Vec<Vec<f64>> = text
        .lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|word| word.parse().ok())
                .collect()
        })
        .filter(|numbers: &Vec<f64>| numbers.len() == 4)
        .collect();
    let writes = writer_counts
        .iter()
        .map(|count| {
            rows.iter()
                .find(|row| row[0] == *count as f64)
                .map(|row| (row[1], row[2]))
        })
        .collect::<Option<Vec<_>>>()?;
    if writes_only {
        return Some(Round {
            writes,
            read_p50_ms: None,
        });
    }
    let read_p50_ms = text
        .lines()
        .find(|line| line.starts_with("linearizable read"))?
        .split("p50 ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Round {
        writes,
        read_p50_ms: Some(read_p50_ms),
    })
}

pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Starts a cluster of `exe` processes, measures it and prints the figures.
async fn measure(args: &BenchArgs, exe: &Path) -> Result<Round> {
    let mut processes = Processes::in_temp_dir("bench", args.keep)?;
    let dir = processes.dir.clone();
    let workers = args
        .member_workers
        .map_or_else(|| shared_workers(args.members), usize::from);
    let joins = start_cluster(&mut processes, &dir, args.members, exe, Some(workers)).await?;
    let leader = leader_dir(&dir, args.members).await?;
    let joins: Vec<String> = joins
        .iter()
        .map(|seconds| format!("{:.3} s", seconds))
        .collect();
    println!(
        "join, token to member serving (process start included): {}",
        joins.join(", ")
    );
    println!(
        "cluster of {} member processes ready ({workers} async worker(s) each); writing to the leader",
        args.members,
    );
    println!(
        "{:>8} {:>12} {:>10} {:>10}",
        "writers", "writes/s", "p50 ms", "p99 ms"
    );
    let mut writes = Vec::new();
    for &writers in &args.writers {
        let (count, latencies) = write_load(
            &leader,
            writers,
            Duration::from_secs(args.seconds),
            config_set,
        )
        .await?;
        let rate = count as f64 / args.seconds as f64;
        let p50 = percentile(&latencies, 0.50);
        println!(
            "{writers:>8} {rate:>12.0} {p50:>10.3} {:>10.3}",
            percentile(&latencies, 0.99)
        );
        writes.push((rate, p50));
    }
    if args.writes_only {
        return Ok(Round {
            writes,
            read_p50_ms: None,
        });
    }
    // The same load as kv.incr on one shared counter: every increment conflicts with every
    // other, and the counter must end at the number acknowledged.
    let (count, latencies) =
        write_load(&leader, KV_CLIENTS, Duration::from_secs(args.seconds), incr).await?;
    let counted = Client::local(&leader)
        .await?
        .operation(Operation::Kv(KvOperation::Get {
            key: KV_COUNTER.into(),
        }))
        .await?;
    println!(
        "kv.incr of one key, {KV_CLIENTS} clients: {:.0}/s, p50 {:.3} ms, p99 {:.3} ms; counter {counted} for {count} acknowledged (target 10,000/s)",
        count as f64 / args.seconds as f64,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
    let reads = read_load(&leader, Duration::from_secs(args.seconds.min(3))).await?;
    let jitter = schedule_jitter(&leader, Duration::from_secs(args.seconds.max(2))).await?;
    println!(
        "scheduled script (@every 100ms, idle cluster, {} ticks): start - tick p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 50 ms)",
        jitter.len(),
        percentile(&jitter, 0.50),
        percentile(&jitter, 0.99),
        jitter.iter().copied().fold(f64::NAN, f64::max)
    );
    if args.members >= 2 {
        let (relayed, local) = event_latency(&dir, args.members, &leader).await?;
        println!(
            "event latency, log.info on another member -> monitor ({} events): p50 {:.3} ms, p99 {:.3} ms (target p50 5 ms); on the monitor's own member (baseline): p50 {:.3} ms, p99 {:.3} ms",
            relayed.len(),
            percentile(&relayed, 0.50),
            percentile(&relayed, 0.99),
            percentile(&local, 0.50),
            percentile(&local, 0.99)
        );
    }
    let read_p50_ms = percentile(&reads, 0.50);
    println!(
        "linearizable read (1 reader): p50 {read_p50_ms:.3} ms, p99 {:.3} ms",
        percentile(&reads, 0.99)
    );
    Ok(Round {
        writes,
        read_p50_ms: Some(read_p50_ms),
    })
}

/// Async worker threads for each of `members` member processes sharing this machine's CPUs:
/// tokio's default of one per CPU in each would put `members` times as many workers as CPUs
/// on the machine, each woken (an IPI to a halted virtual CPU, ~40 µs here) for tasks another
/// already runs.
fn shared_workers(members: usize) -> usize {
    (crate::cpus() / members.max(1)).max(1)
}

/// Starts the members (with `workers` async worker threads each, if given); returns how long
/// each join took, from its token to the new member answering a request.
pub(crate) async fn start_cluster(
    processes: &mut Processes,
    dir: &Path,
    members: usize,
    exe: &Path,
    workers: Option<usize>,
) -> Result<Vec<f64>> {
    let mut joins = Vec::new();
    let first = dir.join("m1");
    let listen = crate::demo::free_address()?;
    let workers = workers.map(|count| count.to_string());
    let tuning: Vec<&str> = workers
        .iter()
        .flat_map(|count| ["--workers", count])
        .collect();
    let args = ["daemon", "--name", "m1", "--listen", &listen, "--bootstrap"];
    processes
        .children
        .push(spawn(exe, &first, &[&args[..], &tuning].concat())?);
    wait_ready(&first).await?;
    let admin = Client::local(&first).await?;
    for index in 2..=members {
        let name = format!("m{index}");
        let started = Instant::now();
        let token = admin.join_token(&name).await?;
        let listen = crate::demo::free_address()?;
        let args = [
            "daemon", "--name", &name, "--listen", &listen, "--join", &token,
        ];
        processes.children.push(spawn(
            exe,
            &dir.join(&name),
            &[&args[..], &tuning].concat(),
        )?);
        wait_ready(&dir.join(&name)).await?;
        joins.push(started.elapsed().as_secs_f64());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let members = admin.operation(Operation::ClusterMembers).await?;
        let voters = members.as_array().map_or(0, |list| {
            list.iter()
                .filter(|member| {
                    member["roles"]
                        .as_array()
                        .is_some_and(|roles| roles.iter().any(|role| role == "database"))
                })
                .count()
        });
        if voters == members.as_array().map_or(0, Vec::len).min(3) {
            admin.close();
            return Ok(joins);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the benchmark cluster did not settle its voters in 30 s")
}

fn spawn(exe: &Path, dir: &Path, args: &[&str]) -> Result<Child> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.with_extension("log"))?;
    std::process::Command::new(exe)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

async fn wait_ready(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(client) = Client::local(dir).await {
            // Answered by the leader; cheaper than `cluster.info()`, which builds the join
            // questions too.
            let ready = client.operation(Operation::ClusterMembers).await.is_ok();
            client.close();
            if ready {
                return Ok(());
            }
        }
        // Fine-grained: the join figure is read from here.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!(
        "member in {} not ready after 30 s (see {}.log)",
        dir.display(),
        dir.display()
    )
}

async fn leader_dir(dir: &Path, members: usize) -> Result<PathBuf> {
    let client = Client::local(&dir.join("m1")).await?;
    let info = client.operation(Operation::ClusterInfo).await?;
    client.close();
    let leader = info["leader"]
        .as_str()
        .ok_or_else(|| anyhow!("no leader"))?;
    (1..=members)
        .map(|index| dir.join(format!("m{index}")))
        .find(|path| path.ends_with(leader))
        .ok_or_else(|| anyhow!("leader {leader} unknown"))
}

/// Concurrent clients of the `kv.incr` figure, and the key they increment.
const KV_CLIENTS: usize = 64;
const KV_COUNTER: &str = "bench/hits";

/// Writer `writer`'s `sequence`th write of the write figures.
fn config_set(writer: usize, sequence: u64) -> Operation {
    Operation::ConfigSet {
        key: format!("user.bench.{writer}"),
        value: sequence.to_string(),
    }
}

/// An increment of the `kv.incr` figure's counter.
fn incr(_writer: usize, _sequence: u64) -> Operation {
    Operation::Kv(KvOperation::Incr {
        key: KV_COUNTER.into(),
        delta: 1,
    })
}

/// `writers` concurrent writers for `duration`; returns the write count and latencies in ms.
async fn write_load(
    leader: &Path,
    writers: usize,
    duration: Duration,
    make: fn(usize, u64) -> Operation,
) -> Result<(usize, Vec<f64>)> {
    let connections = writers.div_ceil(16).max(1);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Arc::new(Client::local(leader).await?));
    }
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let client = clients[writer % connections].clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut sequence = 0u64;
                while Instant::now() < deadline {
                    sequence += 1;
                    let operation = make(writer, sequence);
                    let started = Instant::now();
                    client.operation(operation).await?;
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<_, starling_runtime::Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    for client in clients {
        client.close();
    }
    Ok((all.len(), all))
}

async fn read_load(leader: &Path, duration: Duration) -> Result<Vec<f64>> {
    let client = Client::local(leader).await?;
    let deadline = Instant::now() + duration;
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        client
            .operation(Operation::ConfigGet {
                key: "user.bench.0".into(),
            })
            .await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    client.close();
    Ok(latencies)
}

/// Stores an `@every 100ms` script that answers the time it started, lets it run for
/// `duration`, deletes it, and answers each run's start minus its tick, in milliseconds.
async fn schedule_jitter(leader: &Path, duration: Duration) -> Result<Vec<f64>> {
    use starling_runtime::automation::scripts::{ScriptOperation, ScriptOptions};
    let client = Client::local(leader).await?;
    let script = |operation| Operation::Script(operation);
    client
        .operation(script(ScriptOperation::Create {
            name: "bench-jitter".into(),
            options: ScriptOptions {
                source: Some("return time.now()".into()),
                schedule: Some("@every 100ms".into()),
                ..ScriptOptions::default()
            },
        }))
        .await?;
    tokio::time::sleep(duration).await;
    client
        .operation(script(ScriptOperation::Delete {
            name: "bench-jitter".into(),
        }))
        .await?;
    let runs = client
        .operation(script(ScriptOperation::Runs {
            name: "bench-jitter".into(),
            limit: 1_000,
        }))
        .await?;
    client.close();
    let mut jitter = Vec::new();
    for run in runs.as_array().into_iter().flatten() {
        let (Some(tick), Some(started)) = (run["tick"].as_str(), run["result"].as_f64()) else {
            continue;
        };
        let tick = chrono::DateTime::parse_from_rfc3339(tick)?.timestamp_millis() as f64;
        jitter.push(started * 1000.0 - tick);
    }
    if jitter.is_empty() {
        bail!("the scheduled script did not run: {runs}");
    }
    Ok(jitter)
}

/// Events timed from the moment they happen (`log.info` on a member) to a monitor's client:
/// on another member than the monitor's (relayed), and on the monitor's own (the baseline).
async fn event_latency(dir: &Path, members: usize, leader: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    const EVENTS: usize = 200;
    let followers: Vec<PathBuf> = (1..=members)
        .map(|index| dir.join(format!("m{index}")))
        .filter(|path| path != leader)
        .collect();
    let watched = followers
        .first()
        .ok_or_else(|| anyhow!("no member besides the leader"))?;
    let other = followers.get(1).map_or(leader, |path| path.as_path());
    let watcher = Client::local(watched).await?;
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel::<(String, f64)>();
    let monitor = tokio::spawn(async move {
        let types = ["logging".to_string()];
        let _ = watcher
            .monitor(&types, |event| {
                let now_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos() as u64);
                let message = event.metadata_json()["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let latency_ms = now_ns.saturating_sub(event.timestamp_ns) as f64 / 1e6;
                sender.send((message, latency_ms)).is_ok()
            })
            .await;
    });
    let mut figures = Vec::new();
    for source in [other, watched.as_path()] {
        let client = Client::local(source).await?;
        // Until the monitor shows one: from then on the relays are up.
        loop {
            client
                .exec("log.info('bench-probe')", "bench", |_| {})
                .await?;
            let seen = tokio::time::timeout(Duration::from_millis(200), async {
                while let Some((message, _)) = received.recv().await {
                    if message == "bench-probe" {
                        return true;
                    }
                }
                false
            })
            .await;
            if seen == Ok(true) {
                break;
            }
        }
        let mut latencies = Vec::new();
        for number in 0..EVENTS {
            let tag = format!("bench-event {number}");
            client
                .exec(&format!("log.info('{tag}')"), "bench", |_| {})
                .await?;
            let latency = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some((message, latency)) = received.recv().await {
                    if message == tag {
                        return Some(latency);
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()
            .ok_or_else(|| anyhow!("event {number} never reached the monitor"))?;
            latencies.push(latency);
        }
        client.close();
        figures.push(latencies);
    }
    monitor.abort();
    let local = figures.pop().unwrap_or_default();
    let relayed = figures.pop().unwrap_or_default();
    Ok((relayed, local))
}

fn percentile(latencies: &[f64], fraction: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the comparison reads the figures another build's `bench` printed.
    /// Method: parse a real output (an older build prints no join line), and a broken one.
    #[test]
    fn reads_a_bench_output() {
        let text = "cluster of 3 member processes ready; writing to the leader
 writers     writes/s     p50 ms     p99 ms
       1          458      2.152      3.421
      64        11112      5.560     10.365
linearizable read (1 reader): p50 0.398 ms, p99 0.985 ms
";
        let round = parse_round(text, &[1, 64], false).expect("figures");
        assert_eq!(round.writes, vec![(458.0, 2.152), (11112.0, 5.56)]);
        assert_eq!(round.read_p50_ms, Some(0.398));
        assert!(parse_round(text, &[16], false).is_none());
        assert!(parse_round("nothing", &[1], false).is_none());
        let writes = text.replace("linearizable read", "something else");
        assert!(parse_round(&writes, &[1, 64], false).is_none());
        let round = parse_round(&writes, &[1, 64], true).expect("writes only");
        assert_eq!(round.read_p50_ms, None);
    }

    /// Goal: the round-by-round change is not fooled by an advantage of the second run of a
    /// pair (once measured: +7 % single-writer writes/s with the same binary twice).
    /// Method: four rounds, the builds taking turns at running first, the second run of each
    /// round 7 % faster. Two equal builds: 0 %. This build 10 % faster: +10 %.
    #[test]
    fn the_round_by_round_change_cancels_the_second_runs_advantage() {
        let rounds = |faster: f64| -> [Vec<Round>; 2] {
            let mut rounds = [Vec::new(), Vec::new()];
            for round in 1..=4 {
                let second = if round % 2 == 0 { 0 } else { 1 };
                for slot in [0, 1] {
                    let mut rate = 1000.0;
                    if slot == second {
                        rate *= 1.07;
                    }
                    if slot == 1 {
                        rate *= faster;
                    }
                    rounds[slot].push(Round {
                        writes: vec![(rate, 1.0)],
                        read_p50_ms: None,
                    });
                }
            }
            rounds
        };
        let change = paired_change(&rounds(1.0), |round| round.writes[0].0);
        assert!(change.abs() < 1e-9, "{change}");
        let change = paired_change(&rounds(1.1), |round| round.writes[0].0);
        assert!((change - 10.0).abs() < 1e-9, "{change}");
    }
}
