//! `starling bench-failover`: how fast the cluster recovers when a member dies.
//!
//! Starts `--members` real `starling daemon` processes on loopback (as `starling bench` does)
//! and measures, over `--runs` runs each:
//!
//! 1. **Leader kill → next acknowledged write.** `SIGKILL` the leader, then write
//!    `user.failover` through another member until a write is acknowledged: a new attempt
//!    every 50 ms (the figure's resolution), each limited to 500 ms. The figure is kill → that
//!    acknowledgement: detection, election and the first commit under the new leader.
//! 2. **Voter kill → Offline** and **voter kill → stand-by promoted.** With
//!    `cluster.offline_threshold` set to `--offline-threshold`, `SIGKILL` a voter that does not
//!    lead and poll `cluster.members()` on the leader every 100 ms (the figures' resolution):
//!    the first answer that shows the member `Offline`, and the first that shows three voters
//!    again without it. Their difference is how long promotion takes once the member is known
//!    to be gone.
//!
//! 3. With `--partition`: the leader cut off by dropped packets instead of killed, and a write
//!    sent into the cut-off minority (see `partition.rs`).
//!
//! After each run the killed member is restarted from its data directory and the cluster is
//! left to settle (every member online, full voter and stand-by sets), so runs do not overlap.
//! Every wait has a deadline (`--deadline`); a run that misses it is reported as timed out.

mod partition;
mod transfer;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use starling_runtime::{Client, Operation};

/// How long one write attempt after the leader is killed may take.
const ATTEMPT: Duration = Duration::from_millis(500);
/// How often a new write attempt starts: the resolution of the leader-kill figure.
const ATTEMPT_EVERY: Duration = Duration::from_millis(50);
/// How often the members are polled: the resolution of the Offline and promotion figures.
const POLL: Duration = Duration::from_millis(100);
/// Bound of one status request, far below the client's own 30 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `starling bench-failover`.
#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Runs of each measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Member processes to start: at least 3, and at least 4 for the voter-kill runs (they
    /// need a stand-by to promote).
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// `cluster.offline_threshold`, in seconds, during the runs (10 is the minimum).
    #[arg(long, default_value_t = 10)]
    offline_threshold: u64,
    /// Seconds any one wait may take before the run counts as timed out.
    #[arg(long, default_value_t = 60)]
    deadline: u64,
    /// Keep the members' data and logs (their path is printed) instead of deleting them.
    #[arg(long)]
    keep: bool,
    /// Also measure real network partitions: members listen on loopback addresses of their
    /// own (127.77.0.N) and `iptables` drops the packets between them. Needs root.
    #[arg(long)]
    partition: bool,
    /// Also measure leadership transfers (`cluster.transfer_leadership`) with a writer running
    /// through a follower, over --transfer-runs runs.
    #[arg(long)]
    transfer: bool,
    /// Runs of the transfer measurement.
    #[arg(long, default_value_t = 20)]
    transfer_runs: usize,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &FailoverArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.members < 3 {
        bail!("--members must be at least 3: a majority of voters has to survive a kill");
    }
    print_header(args);
    let mut cluster = Cluster::new(args.keep)?;
    cluster.own_ips = args.partition;
    // On Ctrl-C the measurement is dropped and `cluster` with it, which kills the members;
    // otherwise they would outlive the benchmark.
    tokio::select! {
        result = measure(&mut cluster, args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    }
}

fn print_header(args: &FailoverArgs) {
    let cores = std::thread::available_parallelism()
        .map(|cores| cores.get().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    println!(
        "Starling failover: {} member processes on loopback, runs per figure: {}, cores: {cores}",
        args.members, args.runs
    );
    println!(
        "  leader kill → next write: SIGKILL the leader, then write user.failover through \
         another member (an attempt every 50 ms, each up to 500 ms) until one is acknowledged"
    );
    println!(
        "  voter kill → Offline / promoted: SIGKILL a voter that does not lead, poll \
         cluster.members() on the leader every 100 ms (cluster.offline_threshold = {} s)",
        args.offline_threshold
    );
    println!(
        "reference: etcd 3.4 on this machine, leader kill → next write 1.5–2.4 s; LXD 5.0 ~6 s"
    );
    println!(
        "           LXD with offline_threshold 11: Offline after 4–11 s, promotion after 12–17 s"
    );
    println!(
        "targets:   a new leader writes within 0.5 s; promotion within 1 s after the member \
         is marked Offline"
    );
}

/// Starts the cluster, runs both measurements and prints the summary, also of a partial set
/// of runs when one of them fails.
async fn measure(cluster: &mut Cluster, args: &FailoverArgs) -> Result<()> {
    let deadline = Duration::from_secs(args.deadline);
    cluster
        .start(args.members, args.offline_threshold, deadline)
        .await?;
    println!(
        "\ncluster of {} member processes ready (data in {})",
        args.members,
        cluster.dir.display()
    );
    let mut figures = Figures::default();
    let outcome = all_runs(cluster, args, &mut figures).await;
    figures.print(args.runs);
    outcome
}

async fn all_runs(cluster: &mut Cluster, args: &FailoverArgs, figures: &mut Figures) -> Result<()> {
    let deadline = Duration::from_secs(args.deadline);
    for run in 1..=args.runs {
        let seconds = leader_kill_run(cluster, deadline)
            .await
            .with_context(|| format!("leader kill, run {run}"))?;
        figures.leader_write.push(seconds);
    }
    if args.partition {
        for run in 1..=args.runs {
            let (cut_write, minority_error) = partition::run(cluster, deadline)
                .await
                .with_context(|| format!("partition, run {run}"))?;
            figures.partition_write.push(cut_write);
            figures.minority_error.push(minority_error);
        }
    }
    if args.transfer {
        let mut runs = Vec::new();
        for run in 1..=args.transfer_runs {
            let outcome = transfer::run(cluster)
                .await
                .with_context(|| format!("transfer, run {run}"))?;
            runs.push(outcome);
            cluster.settle(deadline).await?;
        }
        print_transfers(&runs);
    }
    if args.members < 4 {
        println!(
            "voter kill: skipped, {} members leave no stand-by to promote",
            args.members
        );
        return Ok(());
    }
    for run in 1..=args.runs {
        let (offline, promoted) = voter_kill_run(cluster, deadline)
            .await
            .with_context(|| format!("voter kill, run {run}"))?;
        figures.offline.push(offline);
        figures.promoted.push(promoted);
        figures.promotion_after_offline.push(
            offline
                .zip(promoted)
                .map(|(offline, promoted)| promoted - offline),
        );
    }
    Ok(())
}

/// One leader-kill run; returns kill → first acknowledged write in seconds, `None` if no
/// write was acknowledged within `deadline`.
async fn leader_kill_run(cluster: &mut Cluster, deadline: Duration) -> Result<Option<f64>> {
    let leader = cluster.leader().await?;
    let writer = cluster
        .live()
        .find(|&index| index != leader)
        .ok_or_else(|| anyhow!("no member besides the leader is running"))?;
    // Connected before the kill, so the figure holds no handshake.
    let client = Client::local(&cluster.member_dir(writer))
        .await
        .with_context(|| format!("connecting to {}", member_name(writer)))?;
    let killed_at = cluster.kill(leader)?;
    let acknowledged = write_until_acknowledged(&client, killed_at, deadline).await;
    client.close();
    println!(
        "leader kill: {} killed, write through {}: {}",
        member_name(leader),
        member_name(writer),
        describe(acknowledged)
    );
    cluster.restart(leader, deadline).await?;
    cluster.settle(deadline).await?;
    Ok(acknowledged)
}

/// Writes `user.failover` through `client` until a write is acknowledged; returns when, in
/// seconds since `killed_at`, or `None` once `deadline` has passed.
///
/// A fresh attempt starts every 50 ms, each abandoned after 500 ms, and they overlap: an
/// attempt sent while the member still forwarded to the dead leader, or knew no leader, can
/// stay unanswered after the new leader is up, and waiting it out one attempt at a time would
/// round the figure up to the next 500 ms. The figure is thus when the cluster first
/// acknowledged a write, to within 50 ms.
async fn write_until_acknowledged(
    client: &Client,
    killed_at: Instant,
    deadline: Duration,
) -> Option<f64> {
    let mut attempts = FuturesUnordered::new();
    let mut next_attempt = tokio::time::interval(ATTEMPT_EVERY);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = next_attempt.tick() => {
                if killed_at.elapsed() >= deadline {
                    return None;
                }
                sequence += 1;
                let write = client.operation(Operation::ConfigSet {
                    key: "user.failover".into(),
                    value: sequence.to_string(),
                });
                attempts.push(tokio::time::timeout(ATTEMPT, write));
            }
            // Failed and abandoned attempts are dropped: later ones are already under way.
            Some(result) = attempts.next(), if !attempts.is_empty() => {
                if let Ok(Ok(_)) = result {
                    return Some(killed_at.elapsed().as_secs_f64());
                }
            }
        }
    }
}

/// One voter-kill run; returns kill → Offline and kill → stand-by promoted in seconds, each
/// `None` if not seen within `deadline`.
async fn voter_kill_run(
    cluster: &mut Cluster,
    deadline: Duration,
) -> Result<(Option<f64>, Option<f64>)> {
    let leader = cluster.leader().await?;
    let members = cluster.members().await?;
    let victim_name = with_role(&members, "database")
        .into_iter()
        .find(|name| *name != member_name(leader))
        .ok_or_else(|| anyhow!("no voter besides the leader"))?;
    let victim = member_index(&victim_name)?;
    // Polled through the leader, whose view is the one that decides status and roles.
    let client = Client::local(&cluster.member_dir(leader))
        .await
        .with_context(|| format!("connecting to the leader {}", member_name(leader)))?;
    let voters = planned_roles(cluster.size()).0;
    let killed_at = cluster.kill(victim)?;
    let (offline, promoted) =
        watch_failover(&client, &victim_name, voters, killed_at, deadline).await;
    client.close();
    let gap = match offline.zip(promoted) {
        Some((offline, promoted)) => format!(" ({:+.3} s after Offline)", promoted - offline),
        None => String::new(),
    };
    println!(
        "voter kill: {victim_name} killed, Offline: {}, stand-by promoted: {}{gap}",
        describe(offline),
        describe(promoted)
    );
    cluster.restart(victim, deadline).await?;
    cluster.settle(deadline).await?;
    Ok((offline, promoted))
}

/// Polls the members through `client` until `victim` shows as Offline and the voters are
/// `voters` again without it; returns when each was first seen, in seconds since `killed_at`.
async fn watch_failover(
    client: &Client,
    victim: &str,
    voters: usize,
    killed_at: Instant,
    deadline: Duration,
) -> (Option<f64>, Option<f64>) {
    let mut offline = None;
    let mut promoted = None;
    let mut ticks = tokio::time::interval(POLL);
    // A slow answer must not be followed by a burst of catch-up polls.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while (offline.is_none() || promoted.is_none()) && killed_at.elapsed() < deadline {
        ticks.tick().await;
        let answer =
            tokio::time::timeout(REQUEST_TIMEOUT, client.operation(Operation::ClusterMembers))
                .await;
        // While the cluster reacts an answer may fail; the next poll asks again.
        let Ok(Ok(Value::Array(members))) = answer else {
            continue;
        };
        let seen = killed_at.elapsed().as_secs_f64();
        let status = members
            .iter()
            .find(|member| member["server_name"].as_str() == Some(victim))
            .and_then(|member| member["status"].as_str());
        if offline.is_none() && status == Some("Offline") {
            offline = Some(seen);
        }
        let database = with_role(&members, "database");
        if promoted.is_none() && database.len() == voters && !database.iter().any(|n| n == victim) {
            promoted = Some(seen);
        }
    }
    (offline, promoted)
}

/// Member processes under one temporary directory; on drop every one still running is
/// killed and the directory removed (unless `--keep`).
struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    keep: bool,
    /// The process of member `m{i+1}`; `None` while it is killed.
    children: Vec<Option<Child>>,
    /// Whether each member listens on a loopback address of its own (for partitions).
    own_ips: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep {
            eprintln!("member data and logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Cluster {
    /// A free address for member `index`: on its own loopback IP when partitions are measured.
    fn listen_address(&self, index: usize) -> Result<String> {
        if self.own_ips {
            crate::demo::free_address_on(&partition::member_ip(index))
        } else {
            crate::demo::free_address()
        }
    }

    fn new(keep: bool) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("starling-failover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Cluster {
            exe: std::env::current_exe().context("finding the starling binary")?,
            dir,
            keep,
            children: Vec::new(),
            own_ips: false,
        })
    }

    /// Members started, running or not.
    fn size(&self) -> usize {
        self.children.len()
    }

    fn member_dir(&self, index: usize) -> PathBuf {
        self.dir.join(member_name(index))
    }

    /// Indices of the members whose process runs.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.children.len()).filter(|&index| self.children[index].is_some())
    }

    /// Bootstraps `m1`, joins the others one by one, sets the offline threshold and waits
    /// until the roles are in place.
    async fn start(&mut self, members: usize, threshold: u64, deadline: Duration) -> Result<()> {
        let listen = self.listen_address(0)?;
        self.spawn(
            0,
            &["daemon", "--name", "m1", "--listen", &listen, "--bootstrap"],
        )?;
        wait_ready(&self.member_dir(0), deadline).await?;
        let admin = Client::local(&self.member_dir(0))
            .await
            .context("connecting to m1")?;
        for index in 1..members {
            let name = member_name(index);
            let token = admin
                .join_token(&name)
                .await
                .with_context(|| format!("a join token for {name}"))?;
            let listen = self.listen_address(index)?;
            let args = [
                "daemon", "--name", &name, "--listen", &listen, "--join", &token,
            ];
            self.spawn(index, &args)?;
            wait_ready(&self.member_dir(index), deadline).await?;
        }
        admin
            .operation(Operation::ConfigSet {
                key: "cluster.offline_threshold".into(),
                value: threshold.to_string(),
            })
            .await
            .context("setting cluster.offline_threshold")?;
        admin.close();
        self.settle(deadline).await
    }

    /// Starts member `index` with `args`; its stderr is appended to `DIR/mN.log`.
    fn spawn(&mut self, index: usize, args: &[&str]) -> Result<()> {
        let dir = self.member_dir(index);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Appended, so a restarted member's log follows the one of the process it replaces.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .with_context(|| format!("opening {}.log", dir.display()))?;
        let child = std::process::Command::new(&self.exe)
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        if self.children.len() <= index {
            self.children.resize_with(index + 1, || None);
        }
        self.children[index] = Some(child);
        Ok(())
    }

    /// `SIGKILL`s member `index`; returns the moment just before the signal.
    fn kill(&mut self, index: usize) -> Result<Instant> {
        let mut child = self
            .children
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("{} is not running", member_name(index)))?;
        let killed_at = Instant::now();
        child
            .kill()
            .with_context(|| format!("killing {}", member_name(index)))?;
        // Reaped at once, so the restarted process is the only one that holds the directory.
        child
            .wait()
            .with_context(|| format!("reaping {}", member_name(index)))?;
        Ok(killed_at)
    }

    /// Restarts member `index` from its data directory and waits until it answers.
    async fn restart(&mut self, index: usize, deadline: Duration) -> Result<()> {
        self.spawn(index, &["daemon"])?;
        wait_ready(&self.member_dir(index), deadline).await
    }

    /// A client of the first running member that accepts a connection.
    async fn client(&self) -> Result<Client> {
        let mut last = anyhow!("no member is running");
        for index in self.live() {
            match Client::local(&self.member_dir(index)).await {
                Ok(client) => return Ok(client),
                Err(error) => last = anyhow::Error::from(error).context(member_name(index)),
            }
        }
        Err(last)
    }

    /// `cluster.members()`, asked through any running member.
    async fn members(&self) -> Result<Vec<Value>> {
        let client = self.client().await?;
        let answer =
            tokio::time::timeout(REQUEST_TIMEOUT, client.operation(Operation::ClusterMembers))
                .await;
        client.close();
        match answer.context("cluster.members() did not answer in time")?? {
            Value::Array(members) => Ok(members),
            other => bail!("cluster.members() answered {other}, not a list"),
        }
    }

    /// Index of the leader, asked through any running member; it must be running.
    async fn leader(&self) -> Result<usize> {
        let client = self.client().await?;
        let answer =
            tokio::time::timeout(REQUEST_TIMEOUT, client.operation(Operation::ClusterInfo)).await;
        client.close();
        let info = answer.context("cluster.info() did not answer in time")??;
        let name = info["leader"]
            .as_str()
            .ok_or_else(|| anyhow!("the cluster knows no leader"))?;
        let index = member_index(name)?;
        if self.live().all(|live| live != index) {
            bail!("the leader {name} is a member this benchmark killed");
        }
        Ok(index)
    }

    /// Waits until every member is Online and the planned number of voters and stand-bys
    /// hold their roles; the next run then starts from the same cluster as the first.
    async fn settle(&self, deadline: Duration) -> Result<()> {
        let (voters, standbys) = planned_roles(self.size());
        let until = Instant::now() + deadline;
        let mut last = String::from("no answer");
        while Instant::now() < until {
            match self.members().await {
                Ok(members) => {
                    let online = members
                        .iter()
                        .filter(|member| member["status"].as_str() == Some("Online"))
                        .count();
                    let seen = (
                        with_role(&members, "database").len(),
                        with_role(&members, "database-standby").len(),
                    );
                    if online == self.size() && seen == (voters, standbys) {
                        return Ok(());
                    }
                    last = format!("{online} online, {} voters, {} stand-bys", seen.0, seen.1);
                }
                Err(error) => last = format!("{error:#}"),
            }
            tokio::time::sleep(POLL).await;
        }
        bail!(
            "the cluster did not settle in {} s (wanted {} online, {voters} voters, \
             {standbys} stand-bys; last seen: {last})",
            deadline.as_secs(),
            self.size()
        )
    }
}

/// Waits until the member in `dir` answers a request.
async fn wait_ready(dir: &Path, deadline: Duration) -> Result<()> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if let Ok(client) = Client::local(dir).await {
            // Answered by the leader; cheaper than `cluster.info()`, which builds the join
            // questions too.
            let answer =
                tokio::time::timeout(REQUEST_TIMEOUT, client.operation(Operation::ClusterMembers))
                    .await;
            client.close();
            if matches!(answer, Ok(Ok(_))) {
                return Ok(());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    bail!(
        "member in {} not ready after {} s (see {}.log)",
        dir.display(),
        deadline.as_secs(),
        dir.display()
    )
}

/// Voters and stand-bys a cluster of `members` settles to under the defaults of
/// `cluster.max_voters` (3) and `cluster.max_standby` (2), which this benchmark keeps.
fn planned_roles(members: usize) -> (usize, usize) {
    let voters = members.min(3);
    (voters, (members - voters).min(2))
}

/// Names of the members whose `roles` contain `role`.
fn with_role(members: &[Value], role: &str) -> Vec<String> {
    members
        .iter()
        .filter(|member| {
            member["roles"]
                .as_array()
                .is_some_and(|roles| roles.iter().any(|held| held.as_str() == Some(role)))
        })
        .filter_map(|member| member["server_name"].as_str().map(str::to_string))
        .collect()
}

fn member_name(index: usize) -> String {
    format!("m{}", index + 1)
}

/// The index of member `mN`, the only names this benchmark gives.
fn member_index(name: &str) -> Result<usize> {
    name.strip_prefix('m')
        .and_then(|number| number.parse::<usize>().ok())
        .filter(|&number| number >= 1)
        .map(|number| number - 1)
        .ok_or_else(|| anyhow!("unexpected member name {name}"))
}

fn describe(seconds: Option<f64>) -> String {
    seconds.map_or_else(
        || "timed out".to_string(),
        |seconds| format!("{seconds:.3} s"),
    )
}

/// The transfer runs' figures: transfer time and the longest write around it (min, median,
/// max over the runs), and every failed write.
fn print_transfers(runs: &[transfer::TransferRun]) {
    let transfers: Vec<Option<f64>> = runs.iter().map(|run| Some(run.transfer)).collect();
    let writes: Vec<Option<f64>> = runs.iter().map(|run| Some(run.longest_write)).collect();
    println!(
        "\n{:<40} {:>8} {:>8} {:>8}  (seconds)",
        "transfer figure", "min", "median", "max"
    );
    println!(
        "{:<40} {}",
        "transfer, request → new leader leads",
        summarize(&transfers, runs.len())
    );
    println!(
        "{:<40} {}",
        "longest write around the transfer",
        summarize(&writes, runs.len())
    );
    let failed: Vec<&String> = runs.iter().flat_map(|run| &run.failed).collect();
    println!("failed writes: {}", failed.len());
    for error in failed.iter().take(5) {
        println!("  {error}");
    }
    println!("reference: etcd 3.4 here (etcdctl move-leader): 181–230 ms, writes around it up to 7–11 ms");
    println!("targets:   transfer ≤ 100 ms, longest write ≤ 20 ms, no failed write");
}

/// Every figure's per-run result in seconds; `None` for a run that timed out.
#[derive(Default)]
struct Figures {
    leader_write: Vec<Option<f64>>,
    partition_write: Vec<Option<f64>>,
    minority_error: Vec<Option<f64>>,
    offline: Vec<Option<f64>>,
    promoted: Vec<Option<f64>>,
    promotion_after_offline: Vec<Option<f64>>,
}

impl Figures {
    fn print(&self, runs: usize) {
        println!(
            "\n{:<40} {:>8} {:>8} {:>8}  (seconds)",
            "figure", "min", "median", "max"
        );
        let rows = [
            ("leader kill → next acknowledged write", &self.leader_write),
            (
                "leader cut off → next acknowledged write",
                &self.partition_write,
            ),
            ("write in a cut-off minority → error", &self.minority_error),
            ("voter kill → Offline", &self.offline),
            ("voter kill → stand-by promoted", &self.promoted),
            (
                "promotion after marked Offline (b − a)",
                &self.promotion_after_offline,
            ),
        ];
        for (label, samples) in rows {
            println!("{label:<40} {}", summarize(samples, runs));
        }
    }
}

/// `min median max` of the runs that finished, then how many did of `runs` planned.
fn summarize(samples: &[Option<f64>], runs: usize) -> String {
    let mut done: Vec<f64> = samples.iter().flatten().copied().collect();
    let timed_out = samples.len() - done.len();
    if done.is_empty() {
        return match samples.len() {
            0 => format!("{:>8} {:>8} {:>8}  not measured", "-", "-", "-"),
            tried => format!(
                "{:>8} {:>8} {:>8}  timed out in {tried} of {tried} runs",
                "-", "-", "-"
            ),
        };
    }
    done.sort_by(f64::total_cmp);
    let middle = done.len() / 2;
    let median = if done.len() % 2 == 1 {
        done[middle]
    } else {
        (done[middle - 1] + done[middle]) / 2.0
    };
    let mut line = format!(
        "{:>8.3} {:>8.3} {:>8.3}  {} of {runs} runs",
        done[0],
        median,
        done[done.len() - 1],
        done.len()
    );
    if timed_out > 0 {
        line.push_str(&format!(", {timed_out} timed out"));
    }
    line
}
