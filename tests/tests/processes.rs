//! Real `starling` processes: joining, `kill -9`, restarts, quorum loss, `SIGTERM`, and the
//! command line through the binary.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};
use starling_tests::processes::ProcessCluster;
use starling_tests::{init_tracing, wait_for, with_role};

/// Goal: a daemon runs one async worker per CPU unless `--workers` says otherwise, and one
/// started with a single worker serves.
/// Method: m1 with the default, m2 joined with `--workers 1`; each logs its runtime's worker
/// count (tokio's own metric) when it starts; a write through m2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_run_the_async_workers_asked_for() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(1).await?;
    cluster.join_with(1, &["--workers", "1"])?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let started = |index: usize, workers: usize| {
        cluster
            .log(index)
            .contains(&format!("async runtime started workers={workers}"))
    };
    assert!(started(0, cpus), "m1 log:\n{}", cluster.log(0));
    assert!(started(1, 1), "m2 log:\n{}", cluster.log(1));
    cluster.cli_ok(1, &["config", "set", "user.workers", "one"])?;
    assert_eq!(
        cluster
            .cli_ok(0, &["config", "get", "user.workers"])?
            .trim(),
        "one"
    );
    Ok(())
}

/// Goal: five members end with three voters, two stand-bys and one leader; losing a follower
/// voter to `kill -9` leaves writes working; the killed member comes back with what it missed.
/// Method: five processes joined with tokens; `SIGKILL` a non-leader voter; write; restart it
/// and read its replica through its own CLI after the leader is cut off from answering for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_roles_and_kill_of_a_voter() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 5 member processes");
    let mut cluster = ProcessCluster::start(5).await?;
    let members = cluster.wait_roles(0, 3, 2).await?;
    assert_eq!(with_role(&members, "database-leader").len(), 1);

    let leader = cluster.leader(0).await?;
    let voters = with_role(&members, "database");
    let victim_name = voters
        .iter()
        .find(|name| **name != format!("m{}", leader + 1))
        .cloned()
        .unwrap_or_default();
    let victim: usize = victim_name.trim_start_matches('m').parse::<usize>()? - 1;
    tracing::info!(victim, "--- kill -9 a follower voter and write");
    cluster.kill(victim)?;
    cluster.cli_ok(leader, &["config", "set", "user.after_kill=yes"])?;
    assert_eq!(
        cluster
            .cli_ok(leader, &["config", "get", "user.after_kill"])?
            .trim(),
        "yes"
    );

    tracing::info!("--- restart it: it sees the write it missed");
    cluster.restart(victim)?;
    cluster.wait_ready(victim)?;
    assert_eq!(
        cluster
            .cli_ok(victim, &["config", "get", "user.after_kill"])?
            .trim(),
        "yes"
    );
    Ok(())
}

/// Goal: an acknowledged write survives `kill -9` of every member at once.
/// Method: write, kill all three processes, restart them, read the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_write_survives_kill_of_all_members() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    cluster.wait_roles(0, 3, 0).await?;
    for index in 0..20 {
        cluster.cli_ok(
            index % 3,
            &[
                "config",
                "set",
                &format!("user.k{index}"),
                &index.to_string(),
            ],
        )?;
    }
    tracing::info!("--- kill -9 all members");
    for index in 0..3 {
        cluster.kill(index)?;
    }
    for index in 0..3 {
        cluster.restart(index)?;
    }
    for index in 0..3 {
        cluster.wait_ready(index)?;
    }
    for index in 0..20 {
        let value = cluster.cli_ok(index % 3, &["config", "get", &format!("user.k{index}")])?;
        assert_eq!(
            value.trim(),
            index.to_string(),
            "write {index} lost; log:\n{}",
            cluster.log(0)
        );
    }
    Ok(())
}

/// Goal: with 2 of 3 voters gone, a request fails within seconds with the quorum message: a
/// write, a read, and a membership change (`cluster remove`, which used to wait out a 10 s
/// membership timeout on the leader).
/// Method: kill the two members that do not lead, then time each through the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_fails_fast_with_a_clear_message() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    cluster.wait_roles(0, 3, 0).await?;
    let leader = cluster.leader(0).await?;
    let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    tracing::info!("--- kill 2 of 3 voters");
    for index in &others {
        cluster.kill(*index)?;
    }
    let removed = format!("m{}", others[0] + 1);
    for args in [
        &["config", "set", "user.x=1"][..],
        &["config", "get", "user.x"][..],
        &["cluster", "remove", &removed][..],
    ] {
        let started = Instant::now();
        let output = cluster.cli(leader, args)?;
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} succeeded without quorum"
        );
        assert!(
            stderr.contains("cluster database is unavailable"),
            "{stderr}"
        );
        assert!(stderr.contains("1 of 3 voters reachable"), "{stderr}");
        assert!(
            elapsed < Duration::from_secs(10),
            "{args:?} took {elapsed:?}"
        );
    }
    Ok(())
}

/// Goal: a client on another machine becomes trusted with a token and then drives the cluster
/// with `--remote`; a token cannot be used twice.
/// Method: `trust add` on m1, `remote add` from a fresh client config, `--remote cluster list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_client_trusted_with_a_token() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(1).await?;
    let address = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(
        cluster.dir(0).join("member.json"),
    )?)?["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let binary = starling_tests::processes::starling_binary()?;
    let client_config = tempfile::tempdir()?;
    let remote = |args: &[&str]| {
        std::process::Command::new(&binary)
            .arg("--config-dir")
            .arg(client_config.path())
            .args(args)
            .output()
    };
    tracing::info!("--- an unknown client is refused");
    let refused = remote(&["--remote", &address, "cluster", "list"])?;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown remote"));

    let token = cluster
        .cli_ok(0, &["trust", "add", "laptop"])?
        .trim()
        .to_string();
    let added = remote(&["remote", "add", &address, &token])?;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let listed = remote(&["--remote", &address, "cluster", "list", "--format", "json"])?;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let members: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    assert_eq!(with_role(&members, "database"), ["m1"]);

    tracing::info!("--- the same token again, from another client, is refused");
    let other_config = tempfile::tempdir()?;
    let again = std::process::Command::new(&binary)
        .arg("--config-dir")
        .arg(other_config.path())
        .args(["remote", "add", &address, &token])
        .output()?;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no valid token"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}

/// Goal: with real processes, `kill -9` of a voter makes it Offline after the threshold and a
/// stand-by takes its vote; removing it with force and joining the machine again works.
/// Method: 5 processes, threshold 10 s; kill a follower voter; watch; `remove --force`; rejoin
/// into the same data directory with a new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_voter_goes_offline_is_replaced_and_rejoins() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(5).await?;
    cluster.wait_roles(0, 3, 2).await?;
    let leader = cluster.leader(0).await?;
    cluster.cli_ok(leader, &["config", "set", "cluster.offline_threshold=10"])?;
    let members = cluster.members(leader)?;
    let victim_name = with_role(&members, "database")
        .into_iter()
        .find(|name| *name != format!("m{}", leader + 1))
        .unwrap_or_default();
    let victim: usize = victim_name.trim_start_matches('m').parse::<usize>()? - 1;

    tracing::info!(victim = %victim_name, "--- kill -9 a follower voter");
    let killed_at = Instant::now();
    cluster.kill(victim)?;
    wait_for(
        "the killed voter to be Offline",
        Duration::from_secs(40),
        || async {
            let members = cluster.members(leader).ok()?;
            let member = members
                .as_array()?
                .iter()
                .find(|member| member["server_name"] == victim_name.as_str())?
                .clone();
            (member["status"] == "Offline").then_some(())
        },
    )
    .await?;
    assert!(
        killed_at.elapsed() >= Duration::from_secs(10),
        "offline after {:?}",
        killed_at.elapsed()
    );
    wait_for(
        "a stand-by to take the vote",
        Duration::from_secs(20),
        || async {
            let voters = with_role(&cluster.members(leader).ok()?, "database");
            (voters.len() == 3 && !voters.contains(&victim_name)).then_some(())
        },
    )
    .await?;

    tracing::info!("--- remove it with force; the machine joins again");
    let refused = cluster.cli(leader, &["cluster", "remove", &victim_name])?;
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is Offline"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    cluster.cli_ok(leader, &["cluster", "remove", &victim_name, "--force"])?;
    // The machine was down during its removal: its operator clears the old data, as LXD asks.
    std::fs::remove_dir_all(cluster.dir(victim))?;
    cluster.join_via(victim, leader)?;
    let members = cluster.members(leader)?;
    assert!(members.to_string().contains(&format!("\"{victim_name}\"")));
    Ok(())
}

/// Goal: a leader whose follower is down tries it again at the backoff's pace, not in a tight
/// loop (replication streams that failed to open were retried at once: a leader burnt a core
/// and wrote gigabytes of log in minutes).
/// Method: 3 processes; `kill -9` a follower voter; once its connection has timed out (the
/// transport's idle timeout, after which the pool backs off between attempts and fails at once
/// meanwhile), measure the leader's CPU time over 3 s: at rest it is a few percent of a core,
/// the loop took most of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_follower_down_does_not_spin() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    cluster.wait_roles(0, 3, 0).await?;
    let leader = cluster.leader(0).await?;
    let follower = (0..3).find(|index| *index != leader).unwrap_or(1);
    cluster.kill(follower)?;
    let idle = Duration::from_millis(starling_transport::IDLE_TIMEOUT_MS);
    tokio::time::sleep(idle + Duration::from_secs(1)).await;
    let pid = cluster.pid(leader).expect("the leader's process");
    let before = ProcessCluster::cpu_time(pid)?;
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let used = ProcessCluster::cpu_time(pid)? - before;
    println!("leader CPU with a follower down: {used:?} in {window:?}");
    assert!(
        used < window / 3,
        "the leader used {used:?} of CPU in {window:?} with a follower down"
    );
    // It still serves: a write commits with the other follower.
    cluster.cli_ok(leader, &["config", "set", "user.after=1"])?;
    Ok(())
}

/// Goal: `SIGTERM` to the leader process hands leadership over before it exits: another member
/// leads in a later term, the stand-by holds the leaver's vote at once (not after the offline
/// threshold), the leaver exits cleanly, and writes go on without waiting for a failure to be
/// noticed.
/// Method: 4 processes (3 voters, 1 stand-by); record the leader and the Raft term from
/// `cluster info`; SIGTERM the leader; check its exit status and its log (`leadership handed
/// over`, which `step_down` prints once another voter leads, and no warning that a hand-over
/// failed); then time a write through another member and read the roles and the
/// leader through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_over() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 4 member processes");
    let mut cluster = ProcessCluster::start(4).await?;
    let members = cluster.wait_roles(0, 3, 1).await?;
    let standby = with_role(&members, "database-standby");
    let leader = cluster.leader(0).await?;
    let leader_name = format!("m{}", leader + 1);
    let before = cluster.info(leader)?;
    assert_eq!(before["leader"], leader_name.as_str(), "{before}");
    let term_before = before["raft_term"].as_u64().unwrap_or_default();
    assert!(term_before >= 1, "{before}");
    let other = (0..4).find(|index| *index != leader).unwrap_or_default();

    tracing::info!(leader = %leader_name, term_before, "--- SIGTERM the leader");
    let status = cluster.terminate(leader, Duration::from_secs(15))?;
    let log = cluster.log(leader);
    assert!(status.success(), "the leader exited with {status}:\n{log}");
    assert!(
        log.contains("leadership handed over"),
        "no hand-over:\n{log}"
    );
    assert!(
        !log.contains("could not hand"),
        "the hand-over failed:\n{log}"
    );

    tracing::info!("--- a write through another member goes through at once");
    let started = Instant::now();
    if let Err(error) = cluster.cli_ok(other, &["config", "set", "user.after_sigterm=1"]) {
        for index in 0..4 {
            eprintln!("=== m{}\n{}", index + 1, cluster.log(index));
        }
        return Err(error);
    }
    let write_took = started.elapsed();
    assert!(
        write_took < Duration::from_secs(5),
        "the first write after the hand-over took {write_took:?}"
    );

    tracing::info!("--- another member leads in a later term; the stand-by has the vote");
    let after = cluster.info(other)?;
    let new_leader = after["leader"].as_str().unwrap_or_default();
    assert!(
        !new_leader.is_empty() && new_leader != leader_name,
        "leader after SIGTERM of {leader_name}: {after}"
    );
    let term_after = after["raft_term"].as_u64().unwrap_or_default();
    assert!(
        term_after > term_before,
        "term {term_before} -> {term_after}"
    );
    // Read at once: without the hand-over the leaver would keep its vote until the offline
    // threshold (20 s) had passed.
    let voters = with_role(&cluster.members(other)?, "database");
    assert_eq!(
        voters.len(),
        3,
        "the stand-by did not take the leaver's vote: {voters:?}"
    );
    assert!(!voters.contains(&leader_name), "{voters:?}");
    assert!(
        standby.iter().all(|name| voters.contains(name)),
        "stand-by {standby:?} is not a voter: {voters:?}"
    );
    Ok(())
}

/// Goal: the command line answers the member-specific questions at join, from flags or a
/// preseed file, and a join without them is refused with the missing ones.
/// Method: a pool and a macvlan network on m1; join m2 without answers, then with
/// `--member-config`; m3 with `--preseed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_answers_member_specific_questions() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(1).await?;
    let create = "storage.create('local', 'btrfs', {}, {m1 = {source = '/srv/local'}}) \
                  network.create('uplink', 'macvlan', {}, {m1 = {parent = 'eth0'}}) \
                  return #cluster.info().member_config";
    assert!(
        cluster
            .cli_ok(0, &["exec", create])?
            .trim()
            .parse::<usize>()?
            >= 2
    );

    let refused = cluster.try_join(1, &[])?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("missing member-specific configuration: storage-pool \"local\" source, network \"uplink\" parent"), "{stderr}");

    cluster.join_with(
        1,
        &[
            "--member-config",
            "storage-pool/local/source=/srv/m2",
            "--member-config",
            "network/uplink/parent=eth1",
        ],
    )?;
    let preseed = cluster.dir(2).with_extension("yaml");
    std::fs::write(
        &preseed,
        "member_config:\n  - {entity: storage-pool, name: local, key: source, value: /srv/m3}\n  - {entity: network, name: uplink, key: parent, value: eth2}\n",
    )?;
    cluster.join_with(2, &["--preseed", &preseed.to_string_lossy()])?;
    let pools: serde_json::Value =
        serde_json::from_str(&cluster.cli_ok(0, &["exec", "return storage.list()"])?)?;
    let local = pools
        .as_array()
        .and_then(|pools| pools.iter().find(|pool| pool["name"] == "local"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(local["member_config"]["m2"]["source"], "/srv/m2", "{pools}");
    assert_eq!(local["member_config"]["m3"]["source"], "/srv/m3", "{pools}");
    Ok(())
}

// The command line through the binary: each subcommand as an operator types it, against real
// member processes.

/// Goal: `starling run FILE` prints a script's `print` lines as they happen, not when the script
/// ends, and then its result; a failing script exits non-zero with the script's error on stderr.
/// Method: one member; a script prints, sleeps 1 s with the built-in `sleep`, prints again;
/// read the child's stdout line by line, noting when each line arrives: the first must arrive
/// while the process still runs, well before the second. Then a script that calls `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_print_while_the_script_runs() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 1 member process");
    let cluster = ProcessCluster::start(1).await?;
    let script = cluster.dir(0).with_extension("streams.lua");
    std::fs::write(
        &script,
        "print('first')\nsleep(1)\nprint('second')\nreturn {done = true}\n",
    )?;

    tracing::info!("--- run it and read stdout as it comes");
    let mut child = cluster.spawn_cli(0, &["run", &script.to_string_lossy()])?;
    let lines = lines_as_they_come(&mut child)?;
    let (first_at, first) = lines.recv_timeout(Duration::from_secs(20))?;
    let running_at_first_line = child.try_wait()?.is_none();
    let (second_at, second) = lines.recv_timeout(Duration::from_secs(20))?;
    let (_, result) = lines.recv_timeout(Duration::from_secs(20))?;
    let status = wait_exit(&mut child, Duration::from_secs(20))?;
    assert!(status.success(), "run exited with {status}");
    assert_eq!((first.as_str(), second.as_str()), ("first", "second"));
    assert_eq!(
        serde_json::from_str::<Value>(&result)?,
        json!({"done": true})
    );
    assert!(
        running_at_first_line,
        "the first line came only after the script ended"
    );
    let gap = second_at.duration_since(first_at);
    assert!(
        gap >= Duration::from_millis(500),
        "the lines came {gap:?} apart: print output is held back until the script ends"
    );

    tracing::info!("--- a failing script exits non-zero with its error on stderr");
    let failing = cluster.dir(0).with_extension("fails.lua");
    std::fs::write(&failing, "print('before')\nerror('the script gave up')\n")?;
    let output = cluster.cli(0, &["run", &failing.to_string_lossy()])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("fails.lua:2: the script gave up"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "before");
    Ok(())
}

/// Goal: `config set` takes `KEY VALUE` and `KEY=VALUE`; `config get`, `config show` (in each
/// format) and `config unset` show and undo what was set; bad keys and values are refused.
/// Method: one member; set two user keys both ways, read them back every way, unset one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_commands_through_the_binary() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 1 member process");
    let cluster = ProcessCluster::start(1).await?;

    tracing::info!("--- set KEY VALUE and KEY=VALUE, get them back");
    cluster.cli_ok(0, &["config", "set", "user.color", "deep blue"])?;
    cluster.cli_ok(0, &["config", "set", "user.size=3"])?;
    cluster.cli_ok(0, &["config", "set", "user.equation", "a=b"])?;
    cluster.cli_ok(0, &["config", "set", "cluster.offline_threshold=30"])?;
    for (key, value) in [
        ("user.color", "deep blue"),
        ("user.size", "3"),
        ("user.equation", "a=b"),
        ("cluster.offline_threshold", "30"),
        ("cluster.max_voters", "3"),
    ] {
        let got = cluster.cli_ok(0, &["config", "get", key])?;
        assert_eq!(got.trim_end_matches('\n'), value, "config get {key}");
    }

    tracing::info!("--- show: yaml by default, json, csv");
    let yaml = cluster.cli_ok(0, &["config", "show"])?;
    for line in [
        "user.color: deep blue",
        "user.size: '3'",
        "cluster.offline_threshold: '30'",
        "cluster.max_voters: '3'",
    ] {
        assert!(
            yaml.lines().any(|got| got == line),
            "{line:?} not in:\n{yaml}"
        );
    }
    let shown: Value =
        serde_json::from_str(&cluster.cli_ok(0, &["config", "show", "--format", "json"])?)?;
    assert_eq!(shown["user.color"], "deep blue");
    assert_eq!(shown["user.size"], "3");
    assert_eq!(shown["cluster.join_token_expiry"], "3H");
    let csv = cluster.cli_ok(0, &["config", "show", "--format", "csv"])?;
    let rows: Vec<Vec<String>> = csv.lines().map(csv_fields).collect();
    assert_eq!(
        rows.len(),
        shown.as_object().map_or(0, |keys| keys.len()),
        "{csv}"
    );
    assert!(rows.iter().all(|row| row.len() == 2), "{csv}");
    assert!(
        rows.contains(&vec!["user.equation".to_string(), "a=b".to_string()]),
        "{csv}"
    );

    tracing::info!("--- unset");
    cluster.cli_ok(0, &["config", "unset", "user.color"])?;
    assert_eq!(
        cluster.cli_ok(0, &["config", "get", "user.color"])?.trim(),
        ""
    );
    let shown: Value =
        serde_json::from_str(&cluster.cli_ok(0, &["config", "show", "--format", "json"])?)?;
    assert!(shown.get("user.color").is_none(), "{shown}");
    cluster.cli_ok(0, &["config", "unset", "cluster.offline_threshold"])?;
    assert_eq!(
        cluster
            .cli_ok(0, &["config", "get", "cluster.offline_threshold"])?
            .trim(),
        "20"
    );

    tracing::info!("--- bad keys and values are refused");
    let stderr = cluster.cli_fails(0, &["config", "get", "no.such.key"])?;
    assert!(
        stderr.contains("unknown configuration key \"no.such.key\""),
        "{stderr}"
    );
    let stderr = cluster.cli_fails(0, &["config", "set", "cluster.max_voters", "4"])?;
    assert!(stderr.contains("cluster.max_voters"), "{stderr}");
    assert_eq!(
        cluster
            .cli_ok(0, &["config", "get", "cluster.max_voters"])?
            .trim(),
        "3"
    );
    Ok(())
}

/// Goal: join tokens and trust tokens can be listed and revoked from the command line; a
/// trusted client shows in `trust list` and, once removed, is refused.
/// Method: one member; `cluster add`, `cluster list-tokens`, `cluster revoke-token`; the same
/// for `trust`; a second client config becomes trusted with `remote add`, is listed, removed,
/// and then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_trust_commands_through_the_binary() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 1 member process");
    let cluster = ProcessCluster::start(1).await?;

    tracing::info!("--- cluster add, list-tokens, revoke-token");
    let token = cluster.cli_ok(0, &["cluster", "add", "m2"])?;
    assert_eq!(token.lines().count(), 1, "more than the token: {token:?}");
    let token = token.trim();
    let tokens: Value =
        serde_json::from_str(&cluster.cli_ok(0, &["cluster", "list-tokens", "--format", "json"])?)?;
    assert_eq!(tokens.as_array().map(Vec::len), Some(1), "{tokens}");
    assert_eq!(tokens[0]["server_name"], "m2");
    assert_eq!(tokens[0]["token"], token);
    let table = cluster.cli_ok(0, &["cluster", "list-tokens"])?;
    assert!(table.contains("| m2 "), "{table}");
    cluster.cli_ok(0, &["cluster", "revoke-token", "m2"])?;
    let tokens = cluster.cli_ok(0, &["cluster", "list-tokens", "--format", "json"])?;
    assert_eq!(serde_json::from_str::<Value>(&tokens)?, json!([]));
    let stderr = cluster.cli_fails(0, &["cluster", "revoke-token", "m2"])?;
    assert!(stderr.contains("no token for \"m2\""), "{stderr}");

    tracing::info!("--- trust add, list-tokens, revoke-token");
    let token = cluster
        .cli_ok(0, &["trust", "add", "laptop"])?
        .trim()
        .to_string();
    let tokens: Value =
        serde_json::from_str(&cluster.cli_ok(0, &["trust", "list-tokens", "--format", "json"])?)?;
    assert_eq!(tokens.as_array().map(Vec::len), Some(1), "{tokens}");
    assert_eq!(tokens[0]["server_name"], "laptop");
    assert_eq!(tokens[0]["token"], token.as_str());
    cluster.cli_ok(0, &["trust", "revoke-token", "laptop"])?;
    let tokens = cluster.cli_ok(0, &["trust", "list-tokens", "--format", "json"])?;
    assert_eq!(serde_json::from_str::<Value>(&tokens)?, json!([]));
    let stderr = cluster.cli_fails(0, &["trust", "revoke-token", "laptop"])?;
    assert!(stderr.contains("no token for \"laptop\""), "{stderr}");

    tracing::info!("--- a client trusted with a token is listed; removed, it is refused");
    let address = cluster.address(0)?;
    let laptop = tempfile::tempdir()?;
    let laptop_dir = laptop.path().to_string_lossy().into_owned();
    let token = cluster
        .cli_ok(0, &["trust", "add", "laptop"])?
        .trim()
        .to_string();
    cluster.cli_ok(
        0,
        &[
            "--config-dir",
            &laptop_dir,
            "remote",
            "add",
            &address,
            &token,
        ],
    )?;
    let from_laptop = [
        "--config-dir",
        &laptop_dir,
        "--remote",
        &address,
        "cluster",
        "list",
    ];
    cluster.cli_ok(0, &from_laptop)?;
    let trusted: Value =
        serde_json::from_str(&cluster.cli_ok(0, &["trust", "list", "--format", "json"])?)?;
    let clients: Vec<&Value> = trusted
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["name"] == "laptop")
        .collect();
    assert_eq!(clients.len(), 1, "{trusted}");
    assert_eq!(clients[0]["type"], "client");
    assert_eq!(
        clients[0]["fingerprint"].as_str().map(str::len),
        Some(64),
        "{trusted}"
    );
    let table = cluster.cli_ok(0, &["trust", "list"])?;
    assert!(table.contains("| laptop "), "{table}");

    cluster.cli_ok(0, &["trust", "remove", "laptop"])?;
    let trusted = cluster.cli_ok(0, &["trust", "list", "--format", "json"])?;
    assert!(!trusted.contains("\"laptop\""), "{trusted}");
    let stderr = cluster.cli_fails(0, &from_laptop)?;
    assert!(
        stderr.contains("not authorized: this certificate was revoked"),
        "{stderr}"
    );
    let stderr = cluster.cli_fails(0, &["trust", "remove", "laptop"])?;
    assert!(
        stderr.contains("no trusted client certificate named or with fingerprint \"laptop\""),
        "{stderr}"
    );
    Ok(())
}

/// Goal: `cluster info` shows the database figures, and `cluster list` prints the same members
/// in every `--format` in the shape each format promises.
/// Method: two members (a voter and a stand-by); `cluster info` as YAML and JSON;
/// `cluster list` as JSON, then YAML, CSV and table checked against it field by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_info_and_every_list_format() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 2 member processes");
    let cluster = ProcessCluster::start(2).await?;
    cluster.wait_roles(0, 1, 1).await?;

    tracing::info!("--- cluster info");
    let figures = [
        "raft_term",
        "last_log_index",
        "applied_index",
        "snapshot_index",
        "db_size",
    ];
    let yaml = cluster.cli_ok(1, &["cluster", "info"])?;
    for field in figures {
        let line = yaml
            .lines()
            .find(|line| line.starts_with(&format!("{field}: ")));
        let number = line.and_then(|line| line.split_once(": ")?.1.parse::<u64>().ok());
        assert!(number.is_some(), "no {field} in:\n{yaml}");
    }
    let info = cluster.info(1)?;
    let figure = |field: &str| info[field].as_u64().unwrap_or_default();
    assert_eq!(info["leader"], "m1", "{info}");
    assert!(figure("raft_term") >= 1, "{info}");
    assert!(figure("applied_index") >= 1, "{info}");
    assert!(
        figure("applied_index") <= figure("last_log_index"),
        "{info}"
    );
    assert!(
        figure("snapshot_index") <= figure("applied_index"),
        "{info}"
    );
    assert!(figure("db_size") > 0, "{info}");

    tracing::info!("--- cluster list in json, yaml, csv and table");
    let members = cluster.members(0)?;
    let members = members.as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 2);
    let text_fields = [
        "server_name",
        "url",
        "architecture",
        "failure_domain",
        "status",
        "message",
    ];

    let yaml = cluster.cli_ok(0, &["cluster", "list", "--format", "yaml"])?;
    let items: Vec<&str> = yaml.split("\n- ").collect();
    assert!(yaml.starts_with("- "), "not a YAML sequence:\n{yaml}");
    assert_eq!(items.len(), members.len(), "{yaml}");
    for member in &members {
        let name = member["server_name"].as_str().unwrap_or_default();
        let item = items
            .iter()
            .find(|item| {
                item.lines()
                    .any(|line| line.trim() == format!("server_name: {name}"))
            })
            .ok_or_else(|| anyhow::anyhow!("{name} not in:\n{yaml}"))?;
        for field in text_fields {
            let value = member[field].as_str().unwrap_or_default();
            assert!(
                item.lines()
                    .any(|line| line.trim() == format!("{field}: {value}")),
                "{field}: {value} not in:\n{item}"
            );
        }
    }

    let csv = cluster.cli_ok(0, &["cluster", "list", "--format", "csv"])?;
    let rows: Vec<Vec<String>> = csv.lines().map(csv_fields).collect();
    assert_eq!(
        rows.len(),
        members.len(),
        "one line per member, no header:\n{csv}"
    );
    for (row, member) in rows.iter().zip(&members) {
        let roles: Vec<&str> = member["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let expected = [
            member["server_name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            member["url"].as_str().unwrap_or_default().to_string(),
            roles.join(","),
            member["architecture"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            member["failure_domain"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            member["description"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            member["status"].as_str().unwrap_or_default().to_string(),
            member["message"].as_str().unwrap_or_default().to_string(),
        ];
        assert_eq!(row.as_slice(), expected.as_slice(), "{csv}");
    }

    let table = cluster.cli_ok(0, &["cluster", "list"])?;
    let lines: Vec<&str> = table.lines().collect();
    let rule = lines.first().copied().unwrap_or_default();
    assert!(rule.starts_with("+-") && rule.ends_with("-+"), "{table}");
    assert!(
        lines
            .iter()
            .all(|line| line.starts_with('+') || line.starts_with('|')),
        "{table}"
    );
    assert!(
        lines.iter().all(|line| line.len() == rule.len()),
        "ragged table:\n{table}"
    );
    let header: Vec<&str> = lines[1]
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "URL",
            "ROLES",
            "ARCHITECTURE",
            "FAILURE DOMAIN",
            "DESCRIPTION",
            "STATUS",
            "MESSAGE"
        ]
    );
    for member in &members {
        let name = member["server_name"].as_str().unwrap_or_default();
        let row = lines
            .iter()
            .find(|line| line.starts_with(&format!("| {name} ")))
            .ok_or_else(|| anyhow::anyhow!("no row for {name}:\n{table}"))?;
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(
            cells[1],
            member["url"].as_str().unwrap_or_default(),
            "{table}"
        );
        assert_eq!(
            cells[6],
            member["status"].as_str().unwrap_or_default(),
            "{table}"
        );
    }
    Ok(())
}

/// Goal: `waitready --timeout 1` on a directory whose member is not running gives up within
/// about its timeout, non-zero, saying that the member is not ready and why.
/// Method: one member, `SIGKILL`ed; time `waitready --timeout 1`; then a directory that holds
/// no member at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waitready_gives_up_on_a_stopped_member() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 1 member process, then kill it");
    let mut cluster = ProcessCluster::start(1).await?;
    cluster.kill(0)?;

    tracing::info!("--- waitready --timeout 1");
    let started = Instant::now();
    let stderr = cluster.cli_fails(0, &["waitready", "--timeout", "1"])?;
    let took = started.elapsed();
    assert!(
        stderr.contains("the member is not ready after 1s"),
        "{stderr}"
    );
    assert!(stderr.contains(&cluster.address(0)?), "{stderr}");
    assert!(
        took < Duration::from_millis(2500),
        "waitready --timeout 1 took {took:?}: {stderr}"
    );

    tracing::info!("--- a directory without a member");
    let empty = tempfile::tempdir()?;
    let empty = empty.path().to_string_lossy().into_owned();
    let started = Instant::now();
    let output = std::process::Command::new(starling_tests::processes::starling_binary()?)
        .args(["--dir", &empty, "waitready", "--timeout", "1"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("is this a Starling data directory?"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    Ok(())
}

/// Goal: bad input on the command line fails non-zero with a message that names the problem,
/// never a panic, and leaves the member serving.
/// Method: one member; missing values, unknown members, a script that does not parse, a missing
/// script file; then the member still answers. (Arguments that do not parse at all are in
/// `repl/tests/cli.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_message() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 1 member process");
    let cluster = ProcessCluster::start(1).await?;

    tracing::info!("--- bad input, each with its message");
    let cases: &[(&[&str], &str)] = &[
        (
            &["config", "set", "user.x"],
            "give a value: `config set user.x=VALUE` or `config set user.x VALUE`",
        ),
        (&["cluster", "set", "m1", "user.x"], "give a value"),
        (
            &["cluster", "show", "nosuch"],
            "member \"nosuch\" not found",
        ),
        (
            &["cluster", "set", "nosuch", "user.x=1"],
            "member \"nosuch\" not found",
        ),
        (
            &["cluster", "remove", "nosuch"],
            "member \"nosuch\" not found",
        ),
        (
            &["cluster", "state", "nosuch"],
            "member \"nosuch\" not found",
        ),
        (&["exec", "return ("], "exec:1:"),
        (
            &["run", "/nonexistent/script.lua"],
            "reading /nonexistent/script.lua",
        ),
    ];
    for (args, message) in cases {
        let stderr = cluster.cli_fails(0, args)?;
        assert!(stderr.contains(message), "starling {args:?}: {stderr}");
    }

    tracing::info!("--- the member still serves");
    cluster.cli_ok(0, &["config", "set", "user.after_bad_input=yes"])?;
    assert_eq!(
        cluster
            .cli_ok(0, &["config", "get", "user.after_bad_input"])?
            .trim(),
        "yes"
    );
    Ok(())
}

/// The lines of `child`'s stdout, each with the moment it was read, from a thread (so that a
/// test can wait for them with a deadline).
fn lines_as_they_come(
    child: &mut std::process::Child,
) -> Result<mpsc::Receiver<(Instant, String)>> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("the child's stdout is not piped"))?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    Ok(receiver)
}

/// Waits up to `timeout` for `child` to exit; kills it after that.
fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            anyhow::bail!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fields of one CSV line as the command line writes it (quotes around fields that hold a
/// comma or a quote, quotes doubled inside).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut characters = line.chars().peekable();
    while let Some(character) = characters.next() {
        match (character, quoted) {
            ('"', true) if characters.peek() == Some(&'"') => {
                characters.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (other, _) => field.push(other),
        }
    }
    fields.push(field);
    fields
}

/// Goal: a member that did not run for longer than a heartbeat says so in its log, and says
/// that the whole process was held up (not a task of its own), so an operator sees why
/// leadership moved.
/// Method: one member process, paused with SIGSTOP for 400 ms; its log must report a stall of
/// at least 300 ms of the whole process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_reports_its_stall() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.signal(0, "STOP")?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.signal(0, "CONT")?;
    let line = wait_for(
        "the member's log to report its stall",
        Duration::from_secs(15),
        || async {
            cluster.log(0).lines().rev().find_map(|line| {
                let worst: u64 = line
                    .split("worst_ms=")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()?;
                (worst >= 300).then(|| line.to_string())
            })
        },
    )
    .await?;
    println!("{line}");
    assert!(line.contains("the whole process did not run"), "{line}");
    Ok(())
}
