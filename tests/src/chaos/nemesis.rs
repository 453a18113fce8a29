//! [`Nemesis`]: the faults, scheduled from the seed, and the member processes they hit.
//!
//! Faults (at most two at a time, each healed after a random while):
//! - `kill`: `SIGKILL` a member (the leader a third of the time), restart it later;
//! - `pause`: `SIGSTOP` a member (the leader a third of the time) for longer than an election
//!   timeout, then `SIGCONT`;
//! - `partition`: DROP rules inside the namespaces: the leader isolated, a majority and a
//!   minority, a bridge (A–B–C, A and C cut off from each other), or one-way loss;
//! - `join`: a member joins (a removed member's slot is reused, with a fresh directory);
//! - `remove`: a member is removed (`cluster.remove`), never below three, and never m1, whose
//!   config the member-config workload reads and writes (a removed member's config goes
//!   with it, which a register check would take for a lost write);
//! - `promotion`: a voter killed for longer than the offline threshold, so that a stand-by
//!   is promoted, then restarted.
//!
//! The schedule (which fault, when, for how long, which member by position) is drawn from
//! the seed, so a seed replays it as long as the cluster answers the same way (a join or a
//! removal that fails changes the members the next choices pick from); which member *leads*
//! at a moment is the cluster's doing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use starling_runtime::automation::kv::KvOperation;
use starling_runtime::{Client, Operation};

use super::checks::Violation;
use super::netns::Network;
use super::rng::Rng;
use super::workload::{Targets, CONNECT_TIMEOUT};
use crate::processes::{MemberPlacement, ProcessCluster};

/// Voters the cluster keeps (`cluster.max_voters`, default 3).
pub const VOTERS: usize = 3;
/// Stand-bys the cluster keeps at most (`cluster.max_standby`, default 2).
pub const STANDBYS_MAX: usize = 2;
/// The bound on recovery: after the last fault heals, a write must succeed within this.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// The bound on roles settling after the final heal.
pub const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// At most this many faults at a time.
const ACTIVE_MAX: usize = 2;
/// The offline threshold the run sets (the smallest allowed), in seconds.
const OFFLINE_THRESHOLD_S: u64 = 10;

/// What a member slot is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Its process runs.
    Running,
    /// Killed; restarted when the fault heals.
    Killed,
    /// Stopped with `SIGSTOP`; continued when the fault heals.
    Paused,
    /// Not a member (removed, or a join that did not happen).
    Gone,
}

/// How a fault is undone.
#[derive(Clone, Debug)]
enum Undo {
    Restart(usize),
    Resume(usize),
    HealNetwork,
}

/// How a join went.
#[derive(Debug, PartialEq)]
enum Joined {
    /// No member gave a token.
    NoToken(String),
    /// The member answers as ready.
    Ready,
    /// Its daemon exited (the join was refused).
    Exited,
    /// It runs but has not answered yet.
    Slow,
}

/// A fault in place.
struct Active {
    undo: Undo,
    heal_at: Instant,
    what: String,
}

/// The figures of the faults, for the summary.
#[derive(Clone, Debug, Default)]
pub struct FaultFigures {
    /// Faults injected, by kind.
    pub by_kind: BTreeMap<&'static str, usize>,
    /// The time from each heal that left no fault in place to the first successful write.
    pub recoveries: Vec<Duration>,
    /// The same after the final heal.
    pub final_recovery: Option<Duration>,
    /// How long roles took to settle after the final heal.
    pub settled_in: Option<Duration>,
}

/// The member processes and the faults on them.
pub struct Nemesis {
    cluster: ProcessCluster,
    network: Arc<Network>,
    lives: Vec<Life>,
    /// The member count asked for.
    members: usize,
    /// The schedule's choices: which fault, when, for how long, on whom.
    rng: Rng,
    /// Choices that depend on how the cluster answers (which member to ask, how many
    /// retries), kept off the schedule's stream so that they do not shift it.
    plumbing: Rng,
    active: Vec<Active>,
    start: Instant,
    targets: Arc<Targets>,
    /// Every fault line printed, for the output directory.
    pub log: Vec<String>,
    /// Figures for the summary.
    pub figures: FaultFigures,
    /// What went wrong (recovery, roles, crashes).
    pub violations: Vec<Violation>,
    /// Probe writes made (their values).
    probes: u64,
}

impl Drop for Nemesis {
    /// Containers' monitors outlive the member processes: stop and delete them before the
    /// members' directories go.
    fn drop(&mut self) {
        super::instances::remove_all(self.cluster.root(), self.cluster.binary());
    }
}

impl Nemesis {
    /// Starts `members` member processes of `binary`, each in its namespace of `network`,
    /// and waits until their roles settle.
    pub async fn start(
        binary: PathBuf,
        network: Arc<Network>,
        members: usize,
        seed: u64,
        targets: Arc<Targets>,
        start: Instant,
    ) -> Result<Nemesis> {
        let placement: Arc<dyn MemberPlacement> = network.clone();
        let cluster = blocking(|| ProcessCluster::with_placement(binary, placement)?.started(1))
            .context("bootstrapping m1")?;
        let mut nemesis = Nemesis {
            cluster,
            network,
            lives: vec![Life::Running],
            members,
            rng: Rng::derived(seed, 0),
            plumbing: Rng::derived(seed, 1),
            active: Vec::new(),
            start,
            targets,
            log: Vec::new(),
            figures: FaultFigures::default(),
            violations: Vec::new(),
            probes: 0,
        };
        nemesis.targets.add(&name(0), nemesis.cluster.dir(0));
        for slot in 1..members {
            let joined = nemesis.join_slot(slot, Duration::from_secs(30)).await?;
            if joined != Joined::Ready {
                bail!("{} did not join the new cluster: {joined:?}", name(slot));
            }
        }
        for (key, value) in [
            ("cluster.offline_threshold", OFFLINE_THRESHOLD_S.to_string()),
            ("cluster.heartbeat_interval_ms", "500".to_string()),
        ] {
            let operation = Operation::ConfigSet {
                key: key.to_string(),
                value,
            };
            nemesis
                .operation(operation, Duration::from_secs(10))
                .await
                .with_context(|| format!("setting {key}"))?;
        }
        nemesis
            .settle_roles(Duration::from_secs(60))
            .await
            .map_err(|what| anyhow!("the new cluster's roles did not settle: {what}"))?;
        Ok(nemesis)
    }

    /// The directory holding the members' data directories and logs.
    pub fn root(&self) -> PathBuf {
        self.cluster.root().to_path_buf()
    }

    /// Members that ever ran (their slots).
    pub fn slots(&self) -> usize {
        self.lives.len()
    }

    /// The names of the members (not removed).
    pub fn present_names(&self) -> Vec<String> {
        self.present().into_iter().map(name).collect()
    }

    /// The `starling` binary the members run.
    pub fn binary(&self) -> &std::path::Path {
        self.cluster.binary()
    }

    /// Runs `operation` through a running member, trying up to three, within `timeout`.
    pub async fn ask(&mut self, operation: Operation, timeout: Duration) -> Result<Value> {
        self.operation(operation, timeout).await
    }

    /// Injects and heals faults until `deadline`, then heals everything and checks that the
    /// cluster recovers and its roles settle.
    pub async fn run(&mut self, deadline: Instant) -> Result<()> {
        let mut next_fault = Instant::now() + self.seconds(1, 3);
        while Instant::now() < deadline {
            self.heal_due().await?;
            self.check_exits();
            if Instant::now() >= next_fault && self.active.len() < ACTIVE_MAX {
                self.inject().await?;
                next_fault = Instant::now() + Duration::from_millis(self.rng.between(1_000, 4_000));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.heal_everything().await
    }

    fn seconds(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.rng.between(low * 1_000, high * 1_000))
    }

    /// Prints and keeps a line about a fault, with the time since the run started.
    fn note(&mut self, text: String) {
        let line = format!("[{:>8.3}s] {text}", self.start.elapsed().as_secs_f64());
        println!("{line}");
        tracing::info!("{text}");
        self.log.push(line);
    }

    fn count(&mut self, kind: &'static str) {
        *self.figures.by_kind.entry(kind).or_default() += 1;
    }

    /// Picks a fault from the seed and applies it.
    async fn inject(&mut self) -> Result<()> {
        let network_faulted = self
            .active
            .iter()
            .any(|a| matches!(a.undo, Undo::HealNetwork));
        let roll = self.rng.below(100);
        match roll {
            0..=24 => self.kill().await,
            25..=47 => self.pause().await,
            48..=79 if !network_faulted => self.partition().await,
            48..=79 => self.pause().await,
            80..=87 => self.join().await,
            88..=95 => self.remove().await,
            _ => self.promotion().await,
        }
    }

    /// Running members not hit by a fault.
    fn running(&self) -> Vec<usize> {
        (0..self.lives.len())
            .filter(|&index| self.lives[index] == Life::Running)
            .collect()
    }

    /// Members of the cluster (whatever they are doing).
    fn present(&self) -> Vec<usize> {
        (0..self.lives.len())
            .filter(|&index| self.lives[index] != Life::Gone)
            .collect()
    }

    /// A running member: the leader a third of the time (when it runs), else any.
    async fn victim(&mut self) -> Option<usize> {
        let running = self.running();
        if self.rng.chance(1, 3) {
            if let Some(leader) = self.leader().await {
                if running.contains(&leader) {
                    return Some(leader);
                }
            }
        }
        self.rng.pick(&running).copied()
    }

    async fn kill(&mut self) -> Result<()> {
        let hold = self.seconds(1, 6);
        let Some(index) = self.victim().await else {
            return Ok(());
        };
        let what = format!("kill -9 {} for {:.1}s", name(index), hold.as_secs_f64());
        self.kill_for(index, hold, "kill", what)
    }

    /// `kill -9` of member `index`, restarted after `hold`; counted as `kind`, noted as `what`.
    fn kill_for(
        &mut self,
        index: usize,
        hold: Duration,
        kind: &'static str,
        what: String,
    ) -> Result<()> {
        blocking(|| self.cluster.kill(index))?;
        self.lives[index] = Life::Killed;
        self.count(kind);
        self.note(what);
        self.hold(
            Undo::Restart(index),
            hold,
            format!("restart {}", name(index)),
        );
        Ok(())
    }

    async fn pause(&mut self) -> Result<()> {
        // Election timeouts are 120-200 ms: every pause is longer.
        let hold = Duration::from_millis(self.rng.between(500, 5_000));
        let Some(index) = self.victim().await else {
            return Ok(());
        };
        blocking(|| self.cluster.signal(index, "STOP"))?;
        self.lives[index] = Life::Paused;
        self.count("pause");
        self.note(format!(
            "SIGSTOP {} for {:.1}s",
            name(index),
            hold.as_secs_f64()
        ));
        self.hold(
            Undo::Resume(index),
            hold,
            format!("SIGCONT {}", name(index)),
        );
        Ok(())
    }

    async fn partition(&mut self) -> Result<()> {
        let hold = self.seconds(2, 8);
        let mut present = self.present();
        if present.len() < 3 {
            return Ok(());
        }
        self.rng.shuffle(&mut present);
        let what = match self.rng.below(4) {
            0 => {
                let leader = match self.leader().await {
                    Some(leader) if present.contains(&leader) => leader,
                    _ => present[0],
                };
                let others: Vec<usize> = present.iter().copied().filter(|&m| m != leader).collect();
                self.cut_between(&[leader], &others)?;
                format!("isolate {} (leader)", name(leader))
            }
            1 => {
                let minority = self.rng.between(1, ((present.len() - 1) / 2) as u64) as usize;
                let (small, large) = present.split_at(minority);
                self.cut_between(small, large)?;
                format!("split {} | {}", names(small), names(large))
            }
            2 => {
                let bridge = present[0];
                let rest = &present[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                self.cut_between(left, right)?;
                format!(
                    "bridge {} - {} - {} ({} and {} cannot see each other)",
                    names(left),
                    name(bridge),
                    names(right),
                    names(left),
                    names(right)
                )
            }
            _ => {
                let lonely = present[0];
                let others = &present[1..];
                if self.rng.chance(1, 2) {
                    for &other in others {
                        self.network.drop_one_way(lonely, other)?;
                    }
                    format!("one-way: packets from {} to the others lost", name(lonely))
                } else {
                    for &other in others {
                        self.network.drop_one_way(other, lonely)?;
                    }
                    format!("one-way: packets to {} from the others lost", name(lonely))
                }
            }
        };
        self.count("partition");
        self.note(format!("partition: {what} for {:.1}s", hold.as_secs_f64()));
        self.hold(Undo::HealNetwork, hold, "heal the network".to_string());
        Ok(())
    }

    fn cut_between(&self, side: &[usize], other: &[usize]) -> Result<()> {
        blocking(|| {
            for &a in side {
                for &b in other {
                    self.network.cut(a, b)?;
                }
            }
            Ok(())
        })
    }

    /// Kills a voter other than the leader for longer than the offline threshold, so that a
    /// stand-by takes its vote.
    async fn promotion(&mut self) -> Result<()> {
        let hold = self.seconds(OFFLINE_THRESHOLD_S + 4, OFFLINE_THRESHOLD_S + 8);
        let Some((voters, leader)) = self.voters().await else {
            return Ok(());
        };
        let candidates: Vec<usize> = voters
            .into_iter()
            .filter(|&voter| Some(voter) != leader && self.lives.get(voter) == Some(&Life::Running))
            .collect();
        let Some(&index) = self.rng.pick(&candidates) else {
            return Ok(());
        };
        let what = format!(
            "kill -9 voter {} for {:.1}s, past the offline threshold: a stand-by should take its vote",
            name(index),
            hold.as_secs_f64()
        );
        self.kill_for(index, hold, "promotion", what)
    }

    /// Joins a member: a removed member's slot with a fresh directory, or a new slot (at most
    /// two more than asked for).
    async fn join(&mut self) -> Result<()> {
        let slot = match self.lives.iter().position(|&life| life == Life::Gone) {
            Some(slot) => slot,
            None if self.lives.len() < self.members + 2 => self.lives.len(),
            None => return Ok(()),
        };
        let member = name(slot);
        self.note(format!("join {member}"));
        match self.join_slot(slot, Duration::from_secs(5)).await? {
            Joined::NoToken(error) => {
                self.note(format!("join {member}: no token ({error}); skipped"));
                return Ok(());
            }
            Joined::Ready => self.note(format!("{member} joined")),
            Joined::Exited => self.note(format!("{member} did not join (its daemon exited)")),
            Joined::Slow => self.note(format!(
                "{member} has not answered within 20s; it keeps trying"
            )),
        }
        self.count("join");
        Ok(())
    }

    /// Joins member `slot` with a fresh data directory and a token asked for (again and
    /// again) for up to `token_bound`.
    async fn join_slot(&mut self, slot: usize, token_bound: Duration) -> Result<Joined> {
        let member = name(slot);
        let deadline = Instant::now() + token_bound;
        let token = loop {
            let add = Operation::ClusterAdd {
                name: member.clone(),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let error = match self.operation(add, left.min(Duration::from_secs(5))).await {
                Ok(answer) => match answer["token"].as_str() {
                    Some(token) => break token.to_string(),
                    None => anyhow!("the answer had no token: {answer}"),
                },
                Err(error) => error,
            };
            if Instant::now() + Duration::from_millis(500) >= deadline {
                return Ok(Joined::NoToken(format!("{error:#}")));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let dir = self.cluster.dir(slot);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("clearing {} before a join", dir.display()))?;
        }
        blocking(|| self.cluster.spawn_join(slot, &token))?;
        if slot == self.lives.len() {
            self.lives.push(Life::Running);
        } else {
            self.lives[slot] = Life::Running;
        }
        if self.wait_ready(slot, Duration::from_secs(20)).await {
            self.targets.add(&member, dir);
            Ok(Joined::Ready)
        } else if !blocking(|| self.cluster.is_running(slot)) {
            self.lives[slot] = Life::Gone;
            Ok(Joined::Exited)
        } else {
            self.targets.add(&member, dir);
            Ok(Joined::Slow)
        }
    }

    /// Whether member `index` answers as ready within `bound`.
    async fn wait_ready(&mut self, index: usize, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let dir = self.cluster.dir(index);
        while Instant::now() < deadline {
            if !blocking(|| self.cluster.is_running(index)) {
                return false;
            }
            if let Ok(Ok(client)) = tokio::time::timeout(CONNECT_TIMEOUT, Client::local(&dir)).await
            {
                let ready = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.operation(Operation::MemberReady),
                )
                .await;
                client.close();
                if matches!(ready, Ok(Ok(Value::Bool(true)))) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Removes a running member (never below three members).
    async fn remove(&mut self) -> Result<()> {
        let running = self.running();
        if self.present().len() <= VOTERS || running.is_empty() {
            return Ok(());
        }
        let leader = self.leader().await;
        let candidates: Vec<usize> = running
            .iter()
            .copied()
            .filter(|&index| index != 0)
            .filter(|&index| Some(index) != leader || self.rng.chance(1, 4))
            .collect();
        let Some(&index) = self.rng.pick(&candidates) else {
            return Ok(());
        };
        let member = name(index);
        self.count("remove");
        self.note(format!("remove {member}"));
        self.targets.remove(&member);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut answer = Err(anyhow!("not tried"));
        while Instant::now() < deadline {
            let operation = Operation::ClusterRemove {
                name: member.clone(),
                force: false,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            answer = self.operation(operation, left).await;
            if answer.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let still_member = self.is_member(&member).await;
        match (still_member, answer) {
            (Some(false), answer) => {
                if let Err(error) = answer {
                    self.note(format!(
                        "remove {member}: removed, although the answer was: {error:#}"
                    ));
                }
                let exited = blocking(|| self.cluster.reap(index, Duration::from_secs(5)))?;
                if !exited {
                    self.note(format!(
                        "{member} was removed but still runs (not told?): killed"
                    ));
                    blocking(|| self.cluster.kill(index))?;
                }
                let dir = self.cluster.dir(index);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("clearing the removed {}", dir.display()))?;
                }
                self.lives[index] = Life::Gone;
                self.note(format!("{member} removed"));
            }
            (_, Err(error)) => {
                self.note(format!("remove {member} failed: {error:#}"));
                self.targets.add(&member, self.cluster.dir(index));
            }
            (_, Ok(_)) => {
                self.note(format!(
                    "remove {member}: answered, but membership not confirmed yet"
                ));
            }
        }
        Ok(())
    }

    /// Puts a fault's undo on the schedule.
    fn hold(&mut self, undo: Undo, hold: Duration, what: String) {
        self.active.push(Active {
            undo,
            heal_at: Instant::now() + hold,
            what,
        });
    }

    /// Undoes the faults whose time has come; measures recovery when none is left.
    async fn heal_due(&mut self) -> Result<()> {
        let now = Instant::now();
        let (due, kept): (Vec<Active>, Vec<Active>) = self
            .active
            .drain(..)
            .partition(|active| active.heal_at <= now);
        self.active = kept;
        if due.is_empty() {
            return Ok(());
        }
        for active in due {
            self.undo(active)?;
        }
        if self.active.is_empty() {
            let healed_at = Instant::now();
            match self.recovery(healed_at, RECOVERY_BOUND).await {
                Some(took) => {
                    self.note(format!(
                        "recovered: a write succeeded {} ms after the heal",
                        took.as_millis()
                    ));
                    self.figures.recoveries.push(took);
                }
                None => self.no_recovery("a heal"),
            }
        }
        Ok(())
    }

    fn undo(&mut self, active: Active) -> Result<()> {
        self.note(active.what.clone());
        match active.undo {
            Undo::Restart(index) => {
                if self.lives[index] == Life::Killed {
                    blocking(|| self.cluster.restart(index))?;
                    self.lives[index] = Life::Running;
                }
            }
            Undo::Resume(index) => {
                if self.lives[index] == Life::Paused {
                    blocking(|| self.cluster.signal(index, "CONT"))?;
                    self.lives[index] = Life::Running;
                }
            }
            Undo::HealNetwork => blocking(|| self.network.heal())?,
        }
        Ok(())
    }

    fn no_recovery(&mut self, after: &str) {
        let what = format!(
            "no write succeeded within {}s after {after}",
            RECOVERY_BOUND.as_secs()
        );
        self.note(format!("VIOLATION: {what}"));
        self.violations.push(Violation {
            check: "recovery",
            what,
        });
    }

    /// Heals every fault, restarts what exited, tops the members up to the count asked for,
    /// then checks recovery and roles.
    async fn heal_everything(&mut self) -> Result<()> {
        self.note("final heal".to_string());
        let active: Vec<Active> = self.active.drain(..).collect();
        for fault in active {
            self.undo(fault)?;
        }
        blocking(|| self.network.heal())?;
        let healed_at = Instant::now();
        match self.recovery(healed_at, RECOVERY_BOUND).await {
            Some(took) => {
                self.note(format!(
                    "final recovery: a write succeeded {} ms after the heal",
                    took.as_millis()
                ));
                self.figures.final_recovery = Some(took);
                self.figures.recoveries.push(took);
            }
            None => self.no_recovery("the final heal"),
        }
        self.check_exits();
        let mut joins = 0;
        while self.present().len() < self.members && joins < 3 {
            joins += 1;
            self.join().await?;
        }
        let settle_start = Instant::now();
        match self.settle_roles(SETTLE_BOUND).await {
            Ok(()) => {
                let took = settle_start.elapsed();
                self.note(format!("roles settled in {:.1}s", took.as_secs_f64()));
                self.figures.settled_in = Some(took);
            }
            Err(what) => {
                let what = format!(
                    "roles did not settle within {}s: {what}",
                    SETTLE_BOUND.as_secs()
                );
                self.note(format!("VIOLATION: {what}"));
                self.violations.push(Violation {
                    check: "roles",
                    what,
                });
            }
        }
        Ok(())
    }

    /// Finds members whose process exited by itself: a removed member (its directory reset)
    /// is gone; any other is a crash, recorded as a violation with the end of its log.
    fn check_exits(&mut self) {
        for index in 0..self.lives.len() {
            if self.lives[index] != Life::Running || blocking(|| self.cluster.is_running(index)) {
                continue;
            }
            let member = name(index);
            if !self.cluster.dir(index).join("member.json").exists() {
                self.lives[index] = Life::Gone;
                self.targets.remove(&member);
                self.note(format!("{member} exited after resetting itself (removed)"));
                continue;
            }
            let log = self.cluster.log(index);
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let what = format!(
                "{member} exited by itself; its last log lines: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
            self.note(format!("VIOLATION: {what}"));
            self.violations.push(Violation {
                check: "crash",
                what,
            });
            // Restarted, so that the run goes on with it.
            self.lives[index] = Life::Killed;
            if let Err(error) = blocking(|| self.cluster.restart(index)) {
                self.note(format!("restarting {member} failed: {error:#}"));
            } else {
                self.lives[index] = Life::Running;
            }
        }
    }

    /// The time from `since` until a write succeeds (tried through each running member in
    /// turn), or `None` past `bound`.
    async fn recovery(&mut self, since: Instant, bound: Duration) -> Option<Duration> {
        let deadline = since + bound;
        let mut turn = 0;
        while Instant::now() < deadline {
            let running = self.running();
            let Some(&index) = running.get(turn % running.len().max(1)) else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            turn += 1;
            self.probes += 1;
            let operation = Operation::Kv(KvOperation::Set {
                key: "chaos/probe".to_string(),
                value: Some(self.probes.to_string()),
            });
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = Duration::from_secs(2).min(left);
            if self.operation_via(index, operation, attempt).await.is_ok() {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits until the cluster has [`VOTERS`] voters and as many stand-bys as its size allows,
    /// with no role change under way; answers what it last saw otherwise.
    async fn settle_roles(&mut self, bound: Duration) -> std::result::Result<(), String> {
        let deadline = Instant::now() + bound;
        let mut last = "no answer".to_string();
        while Instant::now() < deadline {
            let timeout = Duration::from_secs(3);
            let members = self.operation(Operation::ClusterMembers, timeout).await;
            let info = self.operation(Operation::ClusterInfo, timeout).await;
            if let (Ok(members), Ok(info)) = (members, info) {
                let count = members.as_array().map_or(0, Vec::len);
                let voters = crate::with_role(&members, "database");
                let standbys = crate::with_role(&members, "database-standby");
                let offline: Vec<String> = members
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|member| member["status"] != "Online")
                    .filter_map(|member| member["server_name"].as_str().map(str::to_string))
                    .collect();
                let standbys_expected = count.saturating_sub(VOTERS).min(STANDBYS_MAX);
                last = format!(
                    "{count} members, voters {voters:?}, stand-bys {standbys:?} (expected {VOTERS} and {standbys_expected}), not online {offline:?}, settled {}",
                    info["roles_settled"]
                );
                if voters.len() == VOTERS.min(count)
                    && standbys.len() == standbys_expected
                    && offline.is_empty()
                    && info["roles_settled"] == true
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last)
    }

    /// The voters and the leader, as a running member sees them.
    async fn voters(&mut self) -> Option<(Vec<usize>, Option<usize>)> {
        let members = self
            .operation(Operation::ClusterMembers, Duration::from_secs(2))
            .await
            .ok()?;
        let indexes = |role: &str| -> Vec<usize> {
            crate::with_role(&members, role)
                .iter()
                .filter_map(|member| index_of(member))
                .collect()
        };
        let leader = indexes("database-leader").first().copied();
        Some((indexes("database"), leader))
    }

    /// The leader's index, as a running member sees it.
    async fn leader(&mut self) -> Option<usize> {
        self.voters().await.and_then(|(_, leader)| leader)
    }

    /// Whether `member` is in the cluster's member list (`None`: no answer).
    async fn is_member(&mut self, member: &str) -> Option<bool> {
        let members = self
            .operation(Operation::ClusterMembers, Duration::from_secs(3))
            .await
            .ok()?;
        Some(
            members
                .as_array()
                .into_iter()
                .flatten()
                .any(|record| record["server_name"] == member),
        )
    }

    /// Runs `operation` through running members (a few, in random order) until one answers,
    /// all within `timeout`.
    async fn operation(&mut self, operation: Operation, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut running = self.running();
        self.plumbing.shuffle(&mut running);
        let mut last = anyhow!("no member runs");
        for index in running.into_iter().take(3) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.operation_via(index, operation.clone(), left).await {
                Ok(value) => return Ok(value),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// Runs `operation` through member `index`, within `timeout`.
    async fn operation_via(
        &self,
        index: usize,
        operation: Operation,
        timeout: Duration,
    ) -> Result<Value> {
        let dir = self.cluster.dir(index);
        let connect = CONNECT_TIMEOUT.min(timeout);
        let started = Instant::now();
        let client = tokio::time::timeout(connect, Client::local(&dir))
            .await
            .map_err(|_| anyhow!("{}: no connection within {connect:?}", name(index)))?
            .with_context(|| format!("connecting to {}", name(index)))?;
        let left = timeout.saturating_sub(started.elapsed());
        let answer = tokio::time::timeout(left, client.operation(operation)).await;
        client.close();
        match answer {
            Err(_) => Err(anyhow!("{}: no answer within {timeout:?}", name(index))),
            Ok(answer) => answer.with_context(|| format!("through {}", name(index))),
        }
    }

    /// Copies each member's log into `dir`.
    pub fn copy_logs(&self, dir: &std::path::Path) -> Result<()> {
        for index in 0..self.lives.len() {
            let log = self.cluster.dir(index).with_extension("log");
            if log.exists() {
                let target = dir.join(format!("{}.log", name(index)));
                std::fs::copy(&log, &target)
                    .with_context(|| format!("copying {}", log.display()))?;
            }
        }
        Ok(())
    }
}

/// Member `index`'s name.
fn name(index: usize) -> String {
    format!("m{}", index + 1)
}

fn names(indexes: &[usize]) -> String {
    indexes
        .iter()
        .map(|&index| name(index))
        .collect::<Vec<_>>()
        .join(",")
}

/// The index of member `name` (`m3` → 2).
fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix('m')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// Runs blocking process work (spawn, kill, iptables) on this worker thread without stalling
/// the other tasks of the runtime.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}
