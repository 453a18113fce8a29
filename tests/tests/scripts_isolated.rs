//! Scripts never stall a member: Lua runs off the async runtime, bounded in number, and a
//! script whose client went away stops.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use starling_tests::processes::ProcessCluster;
use starling_tests::{init_tracing, wait_for};

/// Runaway scripts: an instruction loop, and pattern matching that backtracks for ever (both
/// end at the instruction budget, pattern steps included).
const PATHOLOGICAL: &[&str] = &[
    "local n = 0 while true do n = n + 1 end",
    "return string.find(string.rep('a', 200000), '.-.-.-.-b')",
];

fn term_of(cluster: &ProcessCluster, index: usize) -> Result<u64> {
    let info: Value =
        serde_json::from_str(&cluster.cli_ok(index, &["cluster", "info", "--format", "json"])?)?;
    info["raft_term"]
        .as_u64()
        .context("cluster info has no raft_term")
}

/// Goal: with twice as many pathological scripts as cores running on the leader, Raft,
/// heartbeats and QUIC keep their latency: no election happens and no member goes offline.
/// Method: 3 member processes; run 4 runaway scripts at once on the leader (about 20 s)
/// while reading the Raft term through a follower; the term must not change, every member must
/// stay online, and each script must end with its limit's error (instructions, or wall clock
/// on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pathological_scripts_do_not_stall_the_leader() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(3).await?;
    cluster.wait_roles(0, 3, 0).await?;
    let leader = cluster.leader(0).await?;
    let follower = (leader + 1) % 3;
    let term = term_of(&cluster, follower)?;
    let scripts = 2 * std::thread::available_parallelism().map_or(2, usize::from);

    let started = Instant::now();
    for round in 0..1 {
        tracing::info!(round, scripts, "--- runaway scripts on the leader");
        let children = (0..scripts)
            .map(|index| {
                Command::new(cluster.binary())
                    .arg("--dir")
                    .arg(cluster.dir(leader))
                    .args(["exec", PATHOLOGICAL[index % PATHOLOGICAL.len()]])
                    .env("STARLING_CONFIG_DIR", cluster.dir(leader).join("client"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting starling exec")
            })
            .collect::<Result<Vec<_>>>()?;
        for child in children {
            let output = child.wait_with_output()?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "a runaway script succeeded");
            // The instruction budget ends them; on a machine loaded by other work the
            // wall-clock limit may come first. Either is the script's limit, not a stall.
            assert!(
                stderr.contains("instruction budget") || stderr.contains("wall-clock limit"),
                "{stderr}"
            );
        }
        assert_eq!(term_of(&cluster, follower)?, term, "an election happened");
    }
    tracing::info!(elapsed = ?started.elapsed(), "--- every member stayed online");
    let members = cluster.members(follower)?;
    for member in members.as_array().into_iter().flatten() {
        assert_eq!(member["status"], "Online", "{member}");
    }
    Ok(())
}

/// Goal: a script whose client went away is stopped, and a member refuses scripts past its
/// queue with a clear "busy" error rather than piling them up.
/// Method: start a script that loops with `sleep` (so it would run for a minute), kill the
/// client process, and check that new scripts still get a slot; then flood the member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_scripts_stop_and_a_full_member_says_busy() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(1).await?;
    let run = |code: &str| {
        Command::new(cluster.binary())
            .arg("--dir")
            .arg(cluster.dir(0))
            .args(["exec", code])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting starling exec")
    };

    tracing::info!("--- four sleeping scripts, their clients killed");
    let mut sleepers = (0..4)
        .map(|_| run("while true do sleep(0.05) end"))
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(500));
    for sleeper in &mut sleepers {
        sleeper.kill()?;
        sleeper.wait()?;
    }
    // All four slots come back: a fifth script runs at once.
    wait_for("a free script slot", Duration::from_secs(10), || async {
        let output = cluster.cli(0, &["exec", "return 7"]).ok()?;
        (output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "7")
            .then_some(())
    })
    .await?;

    tracing::info!("--- flood: past the queue, scripts are refused as busy");
    let flood = (0..48)
        .map(|_| run("sleep(2) return 1"))
        .collect::<Result<Vec<_>>>()?;
    let mut busy = 0;
    for child in flood {
        let output = child.wait_with_output()?;
        if String::from_utf8_lossy(&output.stderr).contains("is busy") {
            busy += 1;
        }
    }
    assert!(busy > 0, "48 scripts at once and none was refused as busy");
    Ok(())
}
