//! Real `starling` processes: joining, `kill -9`, restarts and quorum loss.

use std::time::{Duration, Instant};

use anyhow::Result;
use starling_tests::processes::ProcessCluster;
use starling_tests::{init_tracing, wait_for, with_role};

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

/// Goal: with 2 of 3 voters gone, a request fails within seconds with the quorum message.
/// Method: kill two members, then time a write and a read through the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_fails_fast_with_a_clear_message() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    cluster.wait_roles(0, 3, 0).await?;
    tracing::info!("--- kill 2 of 3 voters");
    cluster.kill(1)?;
    cluster.kill(2)?;
    for args in [
        &["config", "set", "user.x=1"][..],
        &["config", "get", "user.x"][..],
    ] {
        let started = Instant::now();
        let output = cluster.cli(0, args)?;
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

/// Goal: `SIGTERM` to the leader process hands leadership over before it exits, so writes go
/// on at once, without waiting for an election timeout or the offline threshold.
/// Method: 4 processes (3 voters, 1 stand-by); SIGTERM the leader; write through another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_over() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(4).await?;
    cluster.wait_roles(0, 3, 1).await?;
    let leader = cluster.leader(0).await?;
    let status = cluster.terminate(leader, Duration::from_secs(15))?;
    assert!(status.success(), "the leader exited with {status}");
    assert!(
        cluster.log(leader).contains("leadership handed over"),
        "{}",
        cluster.log(leader)
    );
    let other = (0..4).find(|index| *index != leader).unwrap_or(0);
    if let Err(error) = cluster.cli_ok(other, &["config", "set", "user.after_sigterm=1"]) {
        for index in 0..4 {
            eprintln!("=== m{}\n{}", index + 1, cluster.log(index));
        }
        return Err(error);
    }
    let voters = with_role(&cluster.members(other)?, "database");
    assert_eq!(
        voters.len(),
        3,
        "the stand-by did not take the leaver's vote: {voters:?}"
    );
    assert!(!voters.contains(&format!("m{}", leader + 1)));
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
    let create = "storage.create('local', 'dir', {}, {m1 = {source = '/srv/local'}}) \
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
    assert_eq!(pools[0]["member_config"]["m2"]["source"], "/srv/m2");
    assert_eq!(pools[0]["member_config"]["m3"]["source"], "/srv/m3");
    Ok(())
}
