//! `starling bench-placement`: the time of one placement decision, in process (the pure
//! engine, as the leader runs it), with a 50-line scriptlet, at 50 and 1,000 members; and the
//! built-in rule alone at the same sizes as the baseline.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use starling_runtime::placement::{
    place, Limits, MemberView, PlacementRequest, Reason, SchedulerMode, Scriptlet, ScriptletHost,
    ScriptletRun, Target,
};

/// Arguments of `starling bench-placement`.
#[derive(clap::Args)]
pub struct PlacementBenchArgs {
    /// Decisions timed per size.
    #[arg(long, default_value_t = 2000)]
    decisions: usize,
}

/// A 50-line scriptlet of the usual kind: filter the candidates on config and resources read
/// from the members' views, score them, log, choose.
const SCRIPTLET: &str = r#"
# Prefer members of the request's preferred failure domain, then the least loaded by score.
def score(member, wanted_cpu, wanted_memory):
    points = 0
    if member.config.get("user.tier", "") == "fast":
        points += 10
    if member.failure_domain == "rack1":
        points += 3
    if "gpu" in member.groups:
        points -= 5
    if wanted_cpu > 4:
        points -= 1
    if wanted_memory > 8 * 1024 * 1024 * 1024:
        points -= 2
    return points

def allowed(member, request):
    if member.status != "Online":
        return False
    if member.architecture != request.architecture:
        return False
    if member.config.get("user.maintenance", "false") == "true":
        return False
    return True

def instance_placement(request, candidate_members):
    resources = get_instance_resources()
    wanted_cpu = resources.cpu_cores
    wanted_memory = resources.memory_size
    best = None
    best_points = -1000
    seen = 0
    for member in candidate_members:
        if not allowed(member, request):
            continue
        seen += 1
        points = score(member, wanted_cpu, wanted_memory)
        if points > best_points:
            best = member.server_name
            best_points = points
    if best == None:
        log_warn("no member fits", request.name)
        return None
    if seen == 0:
        fail("nothing seen")
    set_target(best)
    return None
"#;

/// Answers the scriptlet's read-only questions from memory (this scriptlet asks none).
struct NoCluster;

impl ScriptletHost for NoCluster {
    fn member_state(&self, _: &str) -> Result<Value, String> {
        Ok(json!({}))
    }
    fn member_resources(&self, _: &str) -> Result<Value, String> {
        Ok(json!({}))
    }
    fn instances(&self, _: Option<&str>, _: Option<&str>) -> Vec<Value> {
        Vec::new()
    }
    fn instances_count(&self, _: Option<&str>, _: Option<&str>, _: bool) -> u64 {
        0
    }
    fn cluster_members(&self, _: Option<&str>) -> Vec<MemberView> {
        Vec::new()
    }
    fn project(&self, _: &str) -> Option<Value> {
        None
    }
}

fn members(count: usize) -> Vec<MemberView> {
    (0..count)
        .map(|index| MemberView {
            name: format!("m{index:04}"),
            url: format!("https://10.0.{}.{}:8443", index / 250, index % 250),
            database: index < 3,
            status: "Online".into(),
            message: "Fully operational".into(),
            architecture: std::env::consts::ARCH.into(),
            roles: Vec::new(),
            failure_domain: format!("rack{}", index % 4),
            description: String::new(),
            config: BTreeMap::from([(
                "user.tier".to_string(),
                if index % 3 == 0 { "fast" } else { "slow" }.to_string(),
            )]),
            groups: vec!["default".into()],
            scheduler: SchedulerMode::All,
            instance_count: (index % 7) as u64,
            move_failed: false,
            // As the cluster's views are made: at one revision of the member records.
            revision: Some(1),
        })
        .collect()
}

fn request() -> PlacementRequest {
    PlacementRequest {
        name: "c1".into(),
        project: "default".into(),
        kind: "container".into(),
        architecture: std::env::consts::ARCH.into(),
        source: String::new(),
        config: BTreeMap::from([
            ("limits.cpu".to_string(), "2".to_string()),
            ("limits.memory".to_string(), "1GiB".to_string()),
        ]),
        devices: BTreeMap::new(),
        profiles: vec!["default".into()],
        ephemeral: false,
        description: String::new(),
        reason: Reason::New,
    }
}

/// p50 and p99 of `decisions` runs of `decide`, in microseconds.
fn time(decisions: usize, mut decide: impl FnMut() -> Result<String>) -> Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(decisions);
    for _ in 0..decisions {
        let started = Instant::now();
        decide()?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99)))
}

/// Runs the benchmark and prints its figures.
pub fn run(args: &PlacementBenchArgs) -> Result<()> {
    let scriptlet = Scriptlet::compile(SCRIPTLET).map_err(|error| anyhow!("{error}"))?;
    // The floor of any scriptlet: a call with the request and the candidates, doing nothing.
    let empty =
        Scriptlet::compile("def instance_placement(request, candidate_members):\n    pass\n")
            .map_err(|error| anyhow!("{error}"))?;
    let limits = Limits::default();
    let request = request();
    let decisions = args.decisions.max(10);
    println!(
        "Placement decisions, in process, {decisions} per figure ({}-line scriptlet)",
        SCRIPTLET.lines().count()
    );
    println!("{:<40} {:>10} {:>10}", "figure", "p50 µs", "p99 µs");
    for count in [50, 1000] {
        let views = members(count);
        let mut random = |n: usize| n / 2;
        let (p50, p99) = time(decisions, || {
            place(&views, &request, &Target::None, None, None, &mut random)
                .map(|placement| placement.member)
                .map_err(|error| anyhow!("{error}"))
        })?;
        println!(
            "{:<40} {p50:>10.1} {p99:>10.1}",
            format!("built-in rule, {count} members")
        );
        for (label, scriptlet) in [("empty scriptlet", &empty), ("scriptlet", &scriptlet)] {
            let (p50, p99) = time(decisions, || {
                let run = ScriptletRun {
                    scriptlet,
                    host: &NoCluster,
                    limits: &limits,
                };
                place(
                    &views,
                    &request,
                    &Target::None,
                    None,
                    Some(run),
                    &mut random,
                )
                .map(|placement| placement.member)
                .map_err(|error| anyhow!("{error}"))
            })?;
            println!(
                "{:<40} {p50:>10.1} {p99:>10.1}",
                format!("{label}, {count} members")
            );
        }
    }
    println!("targets: scriptlet p50 ≤ 50 µs at 50 members, ≤ 1,000 µs at 1,000");
    Ok(())
}
