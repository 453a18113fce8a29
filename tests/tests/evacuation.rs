//! Evacuation and restore on real member processes with real containers: each action, no
//! placement onto an evacuated member, live migration refused before anything moves, restore
//! bringing every instance back to its origin and restarting what was stopped, an evacuation
//! continued by a new leader after `kill -9` of the old one, a restore issued during an
//! evacuation losing no origin, a move whose destination dies placed again, moves bounded at
//! 4 at a time, the command line's question and progress bar on a terminal, and the reason a
//! placement scriptlet is given.
//!
//! They need root (namespaces, cgroups, mounts) and `/bin/busybox` (static; Debian's
//! `busybox-static`). As another user the test prints why and returns.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use starling_tests::containers::{
    cluster_with_busybox, exec, info, instances, is_root, wait_status, wait_status_via,
    written_file,
};
use starling_tests::processes::ProcessCluster;
use starling_tests::{init_tracing, wait_for};

/// Launches `name` from `bb` on member `target` through member `via` and writes `megabytes`
/// MB of zeros and a mark (`/root/mark`: `kept`) into it, so that moving it takes a while.
fn launch_filled(
    cluster: &ProcessCluster,
    via: usize,
    name: &str,
    target: &str,
    megabytes: u32,
) -> Result<()> {
    cluster.cli_ok(via, &["launch", "bb", name, "--target", target])?;
    let fill =
        format!("head -c {megabytes}000000 /dev/zero > /root/fill && echo kept > /root/mark");
    let (code, _, stderr) =
        starling_tests::containers::exec(cluster, via, name, &["sh", "-c", &fill])?;
    anyhow::ensure!(code == 0, "filling {name}: {stderr}");
    Ok(())
}

fn member_status(cluster: &ProcessCluster, via: usize, name: &str) -> Result<String> {
    let members = cluster.members(via)?;
    Ok(members
        .as_array()
        .into_iter()
        .flatten()
        .find(|member| member["server_name"] == name)
        .and_then(|member| member["status"].as_str())
        .unwrap_or_default()
        .to_string())
}

/// Goal: evacuating a member moves its running and stopped instances (each remembering its
/// origin, the running one running again), stops the one whose `cluster.evacuate` says
/// `stop`, and nothing new is placed there; live migration is refused before anything moves,
/// naming the instances; restore moves each back, starts what was stopped, clears the origins
/// and makes the member usable.
/// Method: 3 member processes; instances on m1 set up through `--target`; everything through
/// the command line and the Lua built-ins, the records read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuate_and_restore() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) = cluster_with_busybox(3, true).await?;
    cluster.cli_ok(0, &["launch", "bb", "mover", "--target", "m1"])?;
    cluster.cli_ok(
        0,
        &[
            "launch",
            "bb",
            "stopper",
            "--target",
            "m1",
            "-c",
            "cluster.evacuate=stop",
        ],
    )?;
    cluster.cli_ok(0, &["init", "bb", "sleeper", "--target", "m1"])?;
    cluster.cli_ok(0, &["launch", "bb", "elsewhere", "--target", "m2"])?;
    let error = cluster.cli_fails(0, &["config", "set", "mover", "cluster.evacuate=fly"])?;
    assert!(error.contains("fly"), "{error}");

    tracing::info!("--- live migration is refused before anything moves");
    let error = cluster.cli_fails(
        0,
        &[
            "cluster",
            "evacuate",
            "m1",
            "--action",
            "live-migrate",
            "--force",
        ],
    )?;
    assert!(error.contains("mover") && error.contains("live"), "{error}");
    assert_eq!(member_status(&cluster, 0, "m1")?, "Online");
    assert_eq!(info(&cluster, 0, "mover")?["location"], "m1");

    tracing::info!("--- evacuate m1");
    let started = Instant::now();
    let out = cluster.cli_ok(0, &["cluster", "evacuate", "m1", "--force"])?;
    println!("evacuation of 3 instances: {:?}\n{out}", started.elapsed());
    assert_eq!(member_status(&cluster, 0, "m1")?, "Evacuated");
    let mover = info(&cluster, 0, "mover")?;
    assert_ne!(mover["location"], "m1", "{mover}");
    assert_eq!(mover["status"], "Running", "{mover}");
    assert_eq!(mover["config"]["volatile.evacuate.origin"], "m1");
    let sleeper = info(&cluster, 0, "sleeper")?;
    assert_ne!(sleeper["location"], "m1", "{sleeper}");
    assert_eq!(sleeper["status"], "Stopped");
    assert_eq!(sleeper["config"]["volatile.evacuate.origin"], "m1");
    let stopper = info(&cluster, 0, "stopper")?;
    assert_eq!(
        (&stopper["location"], &stopper["status"]),
        (&Value::from("m1"), &Value::from("Stopped")),
        "{stopper}"
    );
    assert_eq!(info(&cluster, 0, "elsewhere")?["location"], "m2");
    let summary = cluster.lua(2, "return cluster.evacuation('m1')")?;
    assert_eq!(summary["running"], false, "{summary}");
    assert_eq!(summary["done"], 3, "{summary}");
    assert_eq!(
        summary["moved"].as_array().map(Vec::len),
        Some(2),
        "{summary}"
    );
    assert_eq!(
        summary["stopped"],
        serde_json::json!(["stopper"]),
        "{summary}"
    );

    tracing::info!("--- nothing new lands on an evacuated member");
    for name in ["new1", "new2", "new3"] {
        cluster.cli_ok(0, &["init", "bb", name])?;
        assert_ne!(info(&cluster, 0, name)?["location"], "m1");
    }
    let error = cluster.cli_fails(0, &["init", "bb", "forced", "--target", "m1"])?;
    assert!(error.contains("m1"), "{error}");
    let error = cluster.cli_fails(0, &["cluster", "evacuate", "m1", "--force"])?;
    assert!(error.contains("already evacuated"), "{error}");

    tracing::info!("--- restore m1");
    let started = Instant::now();
    let summary = cluster.lua(1, "return cluster.restore('m1')")?;
    println!("restore: {:?} {summary}", started.elapsed());
    assert_eq!(member_status(&cluster, 0, "m1")?, "Online");
    for (name, status) in [
        ("mover", "Running"),
        ("sleeper", "Stopped"),
        ("stopper", "Running"),
    ] {
        let record = wait_status(&cluster, name, status).await?;
        assert_eq!(record["location"], "m1", "{record}");
        assert!(
            record["config"]["volatile.evacuate.origin"].is_null(),
            "{record}"
        );
    }
    assert_eq!(info(&cluster, 0, "elsewhere")?["location"], "m2");
    let error = cluster.cli_fails(0, &["cluster", "restore", "m1", "--force"])?;
    assert!(error.contains("not evacuated"), "{error}");

    tracing::info!(
        "--- --action migrate overrides an instance's stop; --action skip only restores"
    );
    cluster.cli_ok(
        0,
        &[
            "cluster", "evacuate", "m1", "--action", "migrate", "--force",
        ],
    )?;
    let stopper = wait_status(&cluster, "stopper", "Running").await?;
    assert_ne!(stopper["location"], "m1", "{stopper}");
    cluster.cli_ok(
        0,
        &["cluster", "restore", "m1", "--action", "skip", "--force"],
    )?;
    assert_eq!(member_status(&cluster, 0, "m1")?, "Online");
    assert_ne!(info(&cluster, 0, "stopper")?["location"], "m1");
    Ok(())
}

/// Goal: an evacuation survives a `kill -9` of the leader running it: the new leader continues
/// it until every instance has left, each running again, each with its origin.
/// Method: 4 member processes; the leader takes no instance (`scheduler.instance=manual`);
/// 6 running instances on another member (more than are moved at once), each with 30 MB of
/// files so the evacuation takes a while; the leader is killed once the first instance has
/// moved; the new leader's log must say it continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_finishes_an_evacuation() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let (mut cluster, _leftovers, _work) = cluster_with_busybox(4, true).await?;
    let leader = cluster.leader(0).await?;
    let leader_name = format!("m{}", leader + 1);
    let drained = (leader + 1) % 4;
    let drained_name = format!("m{}", drained + 1);
    let survivor = (leader + 2) % 4;
    cluster.cli_ok(
        survivor,
        &["cluster", "set", &leader_name, "scheduler.instance=manual"],
    )?;
    let names: Vec<String> = (1..=6).map(|index| format!("busy{index}")).collect();
    for name in &names {
        launch_filled(&cluster, survivor, name, &drained_name, 30)?;
    }
    let evacuation =
        cluster.spawn_cli(survivor, &["cluster", "evacuate", &drained_name, "--force"])?;
    wait_for(
        "the first instance to move",
        Duration::from_secs(60),
        || async {
            let record = cluster
                .lua(
                    survivor,
                    &format!("return cluster.evacuation('{drained_name}')"),
                )
                .ok()?;
            (record["done"].as_u64()? >= 1).then_some(())
        },
    )
    .await?;
    tracing::info!(leader = %leader_name, "--- kill -9 of the leader mid-evacuation");
    cluster.kill(leader)?;
    let output = evacuation.wait_with_output()?;
    println!(
        "the evacuating CLI, its leader killed, said: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let record = wait_for(
        "the evacuation to end",
        Duration::from_secs(120),
        || async {
            let record = cluster
                .lua(
                    survivor,
                    &format!("return cluster.evacuation('{drained_name}')"),
                )
                .ok()?;
            (record["running"] == false).then_some(record)
        },
    )
    .await?;
    assert_eq!(record["done"], 6, "{record}");
    assert_eq!(
        record["moved"].as_array().map(Vec::len),
        Some(6),
        "{record}"
    );
    let new_leader = cluster.leader(survivor).await?;
    assert!(
        cluster
            .log(new_leader)
            .contains("continuing an evacuation record left running"),
        "the new leader did not continue the evacuation"
    );
    for name in &names {
        let record = wait_status_via(&cluster, survivor, name, "Running").await?;
        assert_ne!(record["location"], drained_name.as_str(), "{record}");
        assert_ne!(record["location"], leader_name.as_str(), "{record}");
        assert_eq!(
            record["config"]["volatile.evacuate.origin"],
            drained_name.as_str()
        );
    }
    let on_drained = instances(&cluster, survivor)?
        .into_iter()
        .filter(|record| record["location"] == drained_name.as_str())
        .count();
    assert_eq!(on_drained, 0);
    Ok(())
}

/// Goal: an evacuation asked through a follower answers its summary when leadership moves
/// while it runs, however long it ran before: the follower asks the new leader, which goes on
/// with the record, instead of failing with "retry".
/// Method: 4 member processes; 2 instances on the stand-by whose PID 1 (`/bin/sleep`, which ignores
/// SIGTERM as PID 1) keeps each stop waiting for `boot.host_shutdown_timeout=9`; the
/// evacuation (`--action stop`) is asked through a follower; 6 s later leadership moves to
/// that follower. Before the fix the follower gave up 5 s after the request began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evacuation_answers_through_a_change_of_leader() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) = cluster_with_busybox(4, true).await?;
    let members = cluster.wait_roles(0, 3, 1).await?;
    let leader = cluster.leader(0).await?;
    let index = |name: &str| name.trim_start_matches('m').parse::<usize>().unwrap_or(1) - 1;
    let drained_name = starling_tests::with_role(&members, "database-standby")[0].clone();
    let via = starling_tests::with_role(&members, "database")
        .iter()
        .map(|name| index(name))
        .find(|&voter| voter != leader)
        .context("a voter that does not lead")?;
    for name in ["slow1", "slow2"] {
        cluster.cli_ok(
            via,
            &[
                "launch",
                "bb",
                name,
                "--target",
                &drained_name,
                "-c",
                "starling.init=/bin/sleep 1000",
                "-c",
                "boot.host_shutdown_timeout=9",
            ],
        )?;
    }
    let started = Instant::now();
    let evacuation = cluster.spawn_cli(
        via,
        &[
            "cluster",
            "evacuate",
            &drained_name,
            "--action",
            "stop",
            "--force",
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let running = cluster.lua(via, &format!("return cluster.evacuation('{drained_name}')"))?;
    assert_eq!(running["running"], true, "{running}");
    let new_leader = format!("m{}", via + 1);
    tracing::info!(to = %new_leader, "--- leadership moves mid-evacuation");
    cluster.cli_ok(via, &["cluster", "transfer-leader", &new_leader])?;
    let output = evacuation.wait_with_output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    println!(
        "after {:?} the CLI said: {stdout} {stderr}",
        started.elapsed()
    );
    assert!(output.status.success(), "{stdout} {stderr}");
    assert!(
        stdout.contains("slow1") && stdout.contains("slow2"),
        "{stdout}"
    );
    assert_eq!(cluster.info(via)?["leader"], new_leader.as_str());
    for name in ["slow1", "slow2"] {
        let record = wait_status_via(&cluster, via, name, "Stopped").await?;
        assert_eq!(record["location"], drained_name.as_str(), "{record}");
    }
    let record = cluster.lua(via, &format!("return cluster.evacuation('{drained_name}')"))?;
    assert_eq!(
        (&record["running"], &record["done"]),
        (&Value::from(false), &Value::from(2))
    );
    Ok(())
}

/// Goal: a restore issued while an evacuation runs waits for the steps under way, ends the
/// evacuation and brings every instance back: no origin is lost.
/// Method: 3 member processes; 4 running instances with 40 MB of files on m3; the restore is
/// issued once the first instance has moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_during_an_evacuation_loses_no_origin() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) = cluster_with_busybox(3, true).await?;
    let names: Vec<String> = (1..=4).map(|index| format!("r{index}")).collect();
    for name in &names {
        launch_filled(&cluster, 0, name, "m3", 40)?;
    }
    let evacuation = cluster.spawn_cli(0, &["cluster", "evacuate", "m3", "--force"])?;
    wait_for(
        "the first instance to move",
        Duration::from_secs(60),
        || async {
            let record = cluster.lua(1, "return cluster.evacuation('m3')").ok()?;
            (record["kind"] == "evacuate" && record["done"].as_u64()? >= 1).then_some(())
        },
    )
    .await?;
    tracing::info!("--- restore while the evacuation runs");
    let out = cluster.cli_ok(1, &["cluster", "restore", "m3", "--force"])?;
    println!("{out}");
    let evacuated = evacuation.wait_with_output()?;
    println!(
        "the evacuation said: {} {}",
        String::from_utf8_lossy(&evacuated.stdout).trim(),
        String::from_utf8_lossy(&evacuated.stderr).trim()
    );
    assert_eq!(member_status(&cluster, 0, "m3")?, "Online");
    for name in &names {
        let record = wait_status(&cluster, name, "Running").await?;
        assert_eq!(record["location"], "m3", "{record}");
        assert!(
            record["config"]["volatile.evacuate.origin"].is_null(),
            "{record}"
        );
    }
    let record = cluster.lua(0, "return cluster.evacuation('m3')")?;
    assert_eq!(
        (&record["kind"], &record["running"]),
        (&Value::from("restore"), &Value::from(false))
    );
    Ok(())
}

/// A self-healing cluster: 3 member processes, offline after 10 s, healing after 1 s more;
/// instance `phoenix` (`cluster.healing.recreate=true`) on `victim`, a follower; `via` is the
/// third member.
struct Healing {
    cluster: ProcessCluster,
    leftovers: starling_tests::containers::LeftoverContainers,
    work: tempfile::TempDir,
    leader: usize,
    victim: usize,
    via: usize,
}

impl Healing {
    async fn start() -> Result<Healing> {
        let (cluster, leftovers, work) = cluster_with_busybox(3, true).await?;
        let leader = cluster.leader(0).await?;
        let (victim, via) = ((leader + 1) % 3, (leader + 2) % 3);
        for (key, value) in [
            ("cluster.offline_threshold", "10"),
            ("cluster.heartbeat_interval_ms", "500"),
            ("cluster.healing_threshold", "1"),
        ] {
            cluster.cli_ok(via, &["config", "set", &format!("{key}={value}")])?;
        }
        let victim_name = format!("m{}", victim + 1);
        cluster.cli_ok(
            via,
            &[
                "launch",
                "bb",
                "phoenix",
                "--target",
                &victim_name,
                "-c",
                "cluster.healing.recreate=true",
            ],
        )?;
        Ok(Healing {
            cluster,
            leftovers,
            work,
            leader,
            victim,
            via,
        })
    }
}

/// Goal: a member offline past `cluster.healing_threshold` is evacuated by the leader itself:
/// an instance with `cluster.healing.recreate=true` is recreated from its image on another
/// member and runs; another is listed as failed with the reason and stays; when the member is
/// back, its stale copy of the recreated instance is not started and is removed.
/// Method: 3 member processes, offline after 10 s, healing after 1 s more; a follower holding
/// both instances is killed with SIGKILL (its containers go on running, as on a machine cut
/// off from the network), then restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_healing_recreates_what_it_may() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let healing = Healing::start().await?;
    let (mut cluster, victim, via) = (healing.cluster, healing.victim, healing.via);
    let (_leftovers, _work) = (healing.leftovers, healing.work);
    let victim_name = format!("m{}", victim + 1);
    cluster.cli_ok(via, &["launch", "bb", "anchored", "--target", &victim_name])?;
    let error = cluster.cli_fails(
        via,
        &[
            "config",
            "set",
            "anchored",
            "cluster.healing.recreate=maybe",
        ],
    )?;
    assert!(error.contains("maybe"), "{error}");

    tracing::info!(victim = %victim_name, "--- the member holding both goes away");
    let killed_at = Instant::now();
    cluster.kill(victim)?;
    let phoenix = wait_for(
        "phoenix to be recreated",
        Duration::from_secs(60),
        || async {
            let record = info(&cluster, via, "phoenix").ok()?;
            (record["location"] != victim_name.as_str() && record["status"] == "Running")
                .then_some(record)
        },
    )
    .await?;
    println!(
        "recreated {:?} after the member died: {phoenix}",
        killed_at.elapsed()
    );
    assert_eq!(
        phoenix["config"]["volatile.evacuate.origin"],
        victim_name.as_str()
    );
    let record = wait_for("the healing to end", Duration::from_secs(30), || async {
        let record = cluster
            .lua(via, &format!("return cluster.evacuation('{victim_name}')"))
            .ok()?;
        (record["running"] == false).then_some(record)
    })
    .await?;
    let failed = record["failed"].to_string();
    assert!(
        failed.contains("anchored") && failed.contains("offline"),
        "{record}"
    );
    assert_eq!(record["action"], "heal", "{record}");
    let anchored = info(&cluster, via, "anchored")?;
    assert_eq!(anchored["location"], victim_name.as_str());
    assert_eq!(anchored["status"], "Error", "{anchored}");
    let message = anchored["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("offline") && message.contains(&victim_name),
        "{message}"
    );
    assert_eq!(member_status(&cluster, via, &victim_name)?, "Evacuated");

    tracing::info!("--- the member is back: its stale copy goes");
    cluster.restart(victim)?;
    let stale = cluster
        .dir(victim)
        .join("storage-pools/default/containers/default_phoenix");
    let removed = wait_for(
        "the stale copy to be removed",
        Duration::from_secs(60),
        || async { (!stale.exists()).then_some(()) },
    )
    .await;
    if removed.is_err() {
        let log = cluster.log(victim);
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        println!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    removed?;
    assert!(cluster
        .dir(victim)
        .join("storage-pools/default/containers/default_anchored")
        .exists());
    let phoenix_now = info(&cluster, via, "phoenix")?;
    assert_eq!(phoenix_now["location"], phoenix["location"]);
    assert_eq!(phoenix_now["status"], "Running");
    Ok(())
}

/// Goal: a self-healing recreate that fails on the member it chose leaves the instance
/// recorded on its own member, whose copy is whole when it is back (before, the record moved
/// first and the failed create left it recorded where nothing was; back, its member removed
/// its copy as stale: the instance was lost, as `starling-chaos` seed 7 found).
/// Method: 3 member processes, offline after 10 s, healing after 1 s more; the two members
/// that could take the instance cannot unpack it (a plain file where its directory would go);
/// the member holding it, with a file written inside, is killed with SIGKILL, then restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreate_that_fails_keeps_the_instance_on_its_member() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let healing = Healing::start().await?;
    let (mut cluster, leader, victim, via) =
        (healing.cluster, healing.leader, healing.victim, healing.via);
    let (_leftovers, _work) = (healing.leftovers, healing.work);
    let victim_name = format!("m{}", victim + 1);
    let (code, _, stderr) = exec(
        &cluster,
        via,
        "phoenix",
        &["sh", "-c", "echo kept > /root/mark"],
    )?;
    assert_eq!(code, 0, "{stderr}");
    let blockers: Vec<_> = [leader, via]
        .iter()
        .map(|index| {
            cluster
                .dir(*index)
                .join("storage-pools/default/containers/default_phoenix")
        })
        .collect();
    for blocker in &blockers {
        std::fs::create_dir_all(blocker.parent().context("a pool")?)?;
        std::fs::write(blocker, b"not a container")?;
    }

    cluster.kill(victim)?;
    let record = wait_for("the healing to end", Duration::from_secs(60), || async {
        let record = cluster
            .lua(via, &format!("return cluster.evacuation('{victim_name}')"))
            .ok()?;
        (record["action"] == "heal" && record["running"] == false).then_some(record)
    })
    .await?;
    println!("the healing: {record}");
    assert!(record["failed"].to_string().contains("phoenix"), "{record}");
    let phoenix = info(&cluster, via, "phoenix")?;
    assert_eq!(phoenix["location"], victim_name.as_str(), "{phoenix}");

    cluster.restart(victim)?;
    cluster.wait_ready(victim)?;
    // Its watcher looks for stale copies every 5 s: give it three rounds.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let phoenix = info(&cluster, via, "phoenix")?;
    assert_eq!(phoenix["location"], victim_name.as_str(), "{phoenix}");
    let mark = written_file(&cluster.dir(victim), "phoenix", "root/mark");
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap_or_default().trim(),
        "kept",
        "the instance's own member lost its copy"
    );
    for blocker in &blockers {
        std::fs::remove_file(blocker)?;
    }
    Ok(())
}

/// Goal: a move whose destination dies during an evacuation is placed again on another
/// member: the evacuation completes, the instance runs elsewhere with its files and its
/// origin, and the dead member never holds it.
/// Method: 4 member processes; the leader takes no instance (`scheduler.instance=manual`), so
/// two members can take it; one running instance with 30 MB of files on a third; once the
/// leader's `instances.moves()` names the destination (it is then stopping the instance, which
/// takes busybox ~2 s), that member is killed with SIGKILL. Still recorded online, it is left
/// out only because the move to it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_destination_dies_is_placed_again() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let (mut cluster, _leftovers, _work) = cluster_with_busybox(4, true).await?;
    let leader = cluster.leader(0).await?;
    let leader_name = format!("m{}", leader + 1);
    let drained = (leader + 1) % 4;
    let drained_name = format!("m{}", drained + 1);
    cluster.cli_ok(
        leader,
        &["cluster", "set", &leader_name, "scheduler.instance=manual"],
    )?;
    launch_filled(&cluster, leader, "far", &drained_name, 30)?;
    let evacuation =
        cluster.spawn_cli(leader, &["cluster", "evacuate", &drained_name, "--force"])?;
    let doomed_name = wait_for(
        "the leader to choose a destination",
        Duration::from_secs(60),
        || async {
            let moves = cluster.lua(leader, "return instances.moves()").ok()?;
            let to = moves.as_array()?.first()?["to"].as_str()?.to_string();
            (!to.is_empty()).then_some(to)
        },
    )
    .await?;
    let doomed: usize = doomed_name.trim_start_matches('m').parse::<usize>()? - 1;
    anyhow::ensure!(doomed != leader && doomed != drained, "chose {doomed_name}");
    tracing::info!(destination = %doomed_name, "--- kill -9 of the destination mid-move");
    cluster.kill(doomed)?;
    let output = evacuation.wait_with_output()?;
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the evacuation failed: {said}");
    println!("the evacuation said: {}", said.trim());

    let record = cluster.lua(
        leader,
        &format!("return cluster.evacuation('{drained_name}')"),
    )?;
    assert_eq!(record["running"], false, "{record}");
    assert_eq!(record["failed"], serde_json::json!([]), "{record}");
    let moved_to = record["moved"][0]["to"].as_str().unwrap_or_default();
    assert!(
        ![
            drained_name.as_str(),
            doomed_name.as_str(),
            leader_name.as_str()
        ]
        .contains(&moved_to),
        "{record}"
    );
    let instance = wait_status_via(&cluster, leader, "far", "Running").await?;
    assert_eq!(instance["location"], moved_to, "{instance}");
    assert_eq!(
        instance["config"]["volatile.evacuate.origin"],
        drained_name.as_str()
    );
    let (code, stdout, _) =
        starling_tests::containers::exec(&cluster, leader, "far", &["cat", "/root/mark"])?;
    assert_eq!((code, stdout.trim()), (0, "kept"));
    assert!(
        cluster
            .log(leader)
            .contains("an evacuation move failed; placing again"),
        "the leader's log does not show the second placement"
    );
    Ok(())
}

/// Goal: an evacuation moves several instances at once, never more than 4.
/// Method: 3 member processes; 8 running instances on m3 (busybox takes ~2 s to stop, so the
/// moves under way overlap for seconds); a Lua script on the leader samples
/// `instances.moves()` every 20 ms for the whole evacuation and answers the most it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuation_moves_are_bounded() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) = cluster_with_busybox(3, true).await?;
    let leader = cluster.leader(0).await?;
    let drained_name = if leader == 2 { "m2" } else { "m3" };
    let names: Vec<String> = (1..=8).map(|index| format!("b{index}")).collect();
    for name in &names {
        cluster.cli_ok(leader, &["launch", "bb", name, "--target", drained_name])?;
    }
    let sampler = cluster.spawn_cli(
        leader,
        &[
            "exec",
            "local most, seen = 0, false \
             for _ = 1, 2500 do \
               local now = #instances.moves() \
               if now > most then most = now end \
               if now > 0 then seen = true elseif seen then break end \
               sleep(0.02) \
             end \
             return most",
        ],
    )?;
    let started = Instant::now();
    let out = cluster.cli_ok(leader, &["cluster", "evacuate", drained_name, "--force"])?;
    println!(
        "evacuated 8 running instances in {:?}: {}",
        started.elapsed(),
        out.trim()
    );
    let sampled = sampler.wait_with_output()?;
    let most: u64 = String::from_utf8_lossy(&sampled.stdout)
        .trim()
        .parse()
        .with_context(|| {
            format!(
                "the sampler said {} {}",
                String::from_utf8_lossy(&sampled.stdout),
                String::from_utf8_lossy(&sampled.stderr)
            )
        })?;
    assert_eq!(most, 4, "moves under way at once");
    let moved = instances(&cluster, leader)?
        .into_iter()
        .filter(|record| record["location"] != drained_name)
        .count();
    assert_eq!(moved, 8);
    Ok(())
}

/// Goal: on a terminal, `cluster evacuate` asks first and an answer other than yes changes
/// nothing; answered yes, it draws a progress bar (instances done / total, the instance moving
/// and its stage) and ends with the summary; `cluster restore` asks too.
/// Method: 3 member processes, 2 running instances on m3 (each takes busybox ~2 s to stop, so
/// the bar has time to draw); the command line runs on a pseudo-terminal, answers typed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_asks_and_shows_progress_on_a_terminal() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) = cluster_with_busybox(3, true).await?;
    for name in ["t1", "t2"] {
        cluster.cli_ok(0, &["launch", "bb", name, "--target", "m3"])?;
    }
    let question =
        "Are you sure you want to evacuate cluster member \"m3\"? (yes/no) [default=no]: ";
    let mut terminal = cluster.cli_on_terminal(0, &["cluster", "evacuate", "m3"])?;
    terminal.wait_for_text(question, Duration::from_secs(30))?;
    terminal.type_text("no\n")?;
    let (status, transcript) = terminal.wait(Duration::from_secs(30))?;
    assert!(!status.success(), "{transcript}");
    assert!(
        transcript.contains("evacuate of \"m3\" cancelled"),
        "{transcript}"
    );
    assert_eq!(member_status(&cluster, 0, "m3")?, "Online");
    assert_eq!(info(&cluster, 0, "t1")?["location"], "m3");

    let mut terminal = cluster.cli_on_terminal(0, &["cluster", "evacuate", "m3"])?;
    terminal.wait_for_text(question, Duration::from_secs(30))?;
    terminal.type_text("yes\n")?;
    let (status, transcript) = terminal.wait(Duration::from_secs(120))?;
    println!("the terminal showed: {transcript:?}");
    assert!(status.success(), "{transcript}");
    assert!(
        transcript.contains("evacuate m3 ["),
        "no progress bar: {transcript:?}"
    );
    assert!(
        transcript.contains("/2 t"),
        "no done/total and instance: {transcript:?}"
    );
    assert!(
        transcript.contains("(stopping)"),
        "no stage: {transcript:?}"
    );
    assert!(!transcript.contains("0/0"), "an empty bar: {transcript:?}");
    assert!(transcript.contains("Member m3 evacuated"), "{transcript:?}");
    assert_eq!(member_status(&cluster, 0, "m3")?, "Evacuated");

    let mut terminal = cluster.cli_on_terminal(0, &["cluster", "restore", "m3"])?;
    terminal.wait_for_text(
        "Are you sure you want to restore cluster member \"m3\"?",
        Duration::from_secs(30),
    )?;
    terminal.type_text("yes\n")?;
    let (status, transcript) = terminal.wait(Duration::from_secs(120))?;
    assert!(status.success(), "{transcript}");
    assert!(transcript.contains("Member m3 restored"), "{transcript:?}");
    for name in ["t1", "t2"] {
        let record = wait_status(&cluster, name, "Running").await?;
        assert_eq!(record["location"], "m3", "{record}");
    }
    Ok(())
}

/// A scriptlet that fails unless it is asked to place for `reason`, and otherwise picks the
/// last candidate by name.
fn scriptlet_for(reason: &str) -> String {
    format!(
        "instances.placement.scriptlet=def instance_placement(request, candidate_members):\n    if request.reason != \"{reason}\":\n        fail(\"placed for \" + request.reason)\n    set_target(sorted([m.server_name for m in candidate_members])[-1])\n"
    )
}

/// Goal: the installed scriptlet is asked with reason `evacuation` for an evacuation's moves
/// and `relocation` for a move to `@group`, and its choice is followed; `starling move` on a
/// terminal shows a progress bar with the target, the stage and the bytes.
/// Method: 3 member processes; c1 (80 MB of files) on m3, c2 on m2, so that the built-in rule
/// would pick m1; a scriptlet that fails for any other reason picks the last candidate by name
/// (m2 when m3 is evacuated; m3, once restored with `--action skip`, for a move from m2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scriptlets_see_why_they_place_and_a_move_shows_progress() -> Result<()> {
    init_tracing();
    if !is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) = cluster_with_busybox(3, true).await?;
    launch_filled(&cluster, 0, "c1", "m3", 80)?;
    cluster.cli_ok(0, &["launch", "bb", "c2", "--target", "m2"])?;

    tracing::info!("--- evacuation");
    cluster.cli_ok(0, &["config", "set", &scriptlet_for("evacuation")])?;
    let out = cluster.cli_ok(0, &["cluster", "evacuate", "m3", "--force"])?;
    println!("{out}");
    let record = wait_status(&cluster, "c1", "Running").await?;
    assert_eq!(record["location"], "m2", "{out} {record}");

    tracing::info!("--- relocation, on a terminal");
    cluster.cli_ok(
        0,
        &["cluster", "restore", "m3", "--action", "skip", "--force"],
    )?;
    assert_eq!(member_status(&cluster, 0, "m3")?, "Online");
    cluster.cli_ok(0, &["config", "set", &scriptlet_for("relocation")])?;
    let terminal = cluster.cli_on_terminal(0, &["move", "c1", "--target", "@default"])?;
    let (status, transcript) = terminal.wait(Duration::from_secs(120))?;
    println!("the terminal showed: {transcript:?}");
    assert!(status.success(), "{transcript}");
    assert!(
        transcript.contains("moving c1 to m3: "),
        "no progress bar: {transcript:?}"
    );
    assert!(transcript.contains("MiB/"), "no bytes: {transcript:?}");
    assert!(
        !transcript.contains("0/0")
            && !transcript.contains("0 B/0 B")
            && !transcript.contains('░')
            && !transcript.contains("\r\u{1b}[2K ["),
        "a frame without a size or a message: {transcript:?}"
    );
    assert!(
        transcript.contains("Instance c1 moved from m2 to m3"),
        "{transcript:?}"
    );
    let record = wait_status(&cluster, "c1", "Running").await?;
    assert_eq!(record["location"], "m3", "{record}");
    let (code, stdout, _) =
        starling_tests::containers::exec(&cluster, 0, "c1", &["cat", "/root/mark"])?;
    assert_eq!((code, stdout.trim()), (0, "kept"));
    Ok(())
}
