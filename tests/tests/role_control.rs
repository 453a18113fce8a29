//! The operator's role control on real member processes: `cluster promote`, `cluster demote`,
//! `cluster transfer-leader` (and their Lua built-ins), with a writer running throughout, and
//! every refusal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;
use starling_runtime::{Client, Operation};
use starling_tests::processes::ProcessCluster;
use starling_tests::{init_tracing, wait_for, with_role};

/// What the writer saw.
#[derive(Default)]
struct Outcomes {
    acknowledged: Vec<String>,
    failed: Vec<(String, String)>,
}

/// Writes `user.w<n>` keys one after another through member `dir` until `stop`.
async fn writer(dir: std::path::PathBuf, stop: Arc<AtomicBool>, outcomes: Arc<Mutex<Outcomes>>) {
    let Ok(client) = Client::local(&dir).await else {
        let mut outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
        outcomes.failed.push(("connect".into(), "no client".into()));
        return;
    };
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("user.w{sequence}");
        sequence += 1;
        let result = client
            .operation(Operation::ConfigSet {
                key: key.clone(),
                value: "1".into(),
            })
            .await;
        let mut outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => outcomes.acknowledged.push(key),
            Err(error) => outcomes.failed.push((key, error.to_string())),
        }
    }
}

fn leader_name(cluster: &ProcessCluster, via: usize) -> Result<String> {
    let info = cluster.info(via)?;
    Ok(info["leader"].as_str().unwrap_or_default().to_string())
}

fn index_of(name: &str) -> usize {
    name.trim_start_matches('m').parse::<usize>().unwrap_or(1) - 1
}

/// The voters, read through member `via`.
fn voters(cluster: &ProcessCluster, via: usize) -> Result<Vec<String>> {
    let mut voters = with_role(&cluster.members(via)?, "database");
    voters.sort();
    Ok(voters)
}

/// Goal: leadership moves to a named voter and back, a spare is promoted in place of a voter,
/// a voter and then the leader are demoted, and the leader gets SIGTERM, all while a writer
/// runs: it sees no error and every acknowledged write is there; the planner leaves each
/// accepted change alone for several heartbeat rounds.
/// Method: 5 member processes with `cluster.max_standby=1` (3 voters, a stand-by, a spare); a
/// writer through the stand-by; the CLI
/// and the Lua built-ins change roles; after each change, the roles are read again after 3 s
/// (several rebalancing rounds); at the end every acknowledged key is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_change_under_a_writer() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(5).await?;
    cluster.wait_roles(0, 3, 2).await?;
    cluster.cli_ok(0, &["config", "set", "cluster.max_standby=1"])?;
    let members = cluster.wait_roles(0, 3, 1).await?;
    let standbys = with_role(&members, "database-standby");
    let spare = members
        .as_array()
        .into_iter()
        .flatten()
        .filter(|member| {
            let roles = member["roles"].as_array().cloned().unwrap_or_default();
            !roles.iter().any(|role| {
                role.as_str()
                    .is_some_and(|role| role.starts_with("database"))
            })
        })
        .filter_map(|member| member["server_name"].as_str().map(str::to_string))
        .next()
        .unwrap_or_default();
    assert!(!spare.is_empty(), "no spare: {members}");
    let first_leader = leader_name(&cluster, 0)?;
    let via = index_of(&standbys[0]);

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let writing = tokio::spawn(writer(cluster.dir(via), stop.clone(), outcomes.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    tracing::info!("--- transfer to a named voter and back");
    let other_voter = voters(&cluster, via)?
        .into_iter()
        .find(|name| *name != first_leader)
        .unwrap_or_default();
    let started = Instant::now();
    let out = cluster.cli_ok(via, &["cluster", "transfer-leader", &other_voter])?;
    tracing::info!(took = ?started.elapsed(), "transfer");
    assert!(out.contains(&other_voter), "{out}");
    assert_eq!(leader_name(&cluster, via)?, other_voter);
    let script = format!("return cluster.transfer_leadership(\"{first_leader}\")");
    let out = cluster.cli_ok(via, &["exec", &script])?;
    assert!(out.contains(&first_leader), "{out}");
    assert_eq!(leader_name(&cluster, via)?, first_leader);

    tracing::info!("--- promote the spare in place of a follower voter");
    let replaced = voters(&cluster, via)?
        .into_iter()
        .find(|name| *name != first_leader)
        .unwrap_or_default();
    let promoted = spare.clone();
    cluster.cli_ok(
        via,
        &["cluster", "promote", &promoted, "--replace", &replaced],
    )?;
    let expected: Vec<String> = {
        let mut list: Vec<String> = voters(&cluster, via)?;
        list.sort();
        list
    };
    assert!(expected.contains(&promoted), "{expected:?}");
    assert!(!expected.contains(&replaced), "{expected:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        voters(&cluster, via)?,
        expected,
        "the planner undid the promotion"
    );
    // With cluster.max_standby=1 taken by the stand-by, the replaced voter becomes a spare.
    let members = cluster.members(via)?;
    assert!(
        with_role(&members, "database-standby") == standbys,
        "the stand-bys changed: {members}"
    );

    tracing::info!("--- demote a follower voter, then the leader");
    let demoted = voters(&cluster, via)?
        .into_iter()
        .find(|name| *name != first_leader && *name != standbys[0])
        .unwrap_or_default();
    let script = format!("return cluster.demote(\"{demoted}\")");
    cluster.cli_ok(via, &["exec", &script])?;
    let after = voters(&cluster, via)?;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!after.contains(&demoted), "{after:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        voters(&cluster, via)?,
        after,
        "the planner undid the demotion"
    );

    cluster.cli_ok(via, &["cluster", "demote", &first_leader])?;
    let after = voters(&cluster, via)?;
    assert!(!after.contains(&first_leader), "{after:?}");
    assert_eq!(after.len(), 3, "{after:?}");
    let leader = leader_name(&cluster, via)?;
    assert!(
        leader != first_leader && after.contains(&leader),
        "{leader}"
    );

    tracing::info!("--- SIGTERM of the leader (not the writer's member): it transfers first");
    if index_of(&leader_name(&cluster, via)?) == via {
        cluster.cli_ok(via, &["cluster", "transfer-leader"])?;
    }
    let leaving = index_of(&leader_name(&cluster, via)?);
    let status = cluster.terminate(leaving, Duration::from_secs(15))?;
    assert!(status.success(), "{status}:\n{}", cluster.log(leaving));
    let log = cluster.log(leaving);
    assert!(
        log.contains("leadership transferred"),
        "no transfer:\n{log}"
    );
    let leader = leader_name(&cluster, via)?;
    assert!(
        !leader.is_empty() && index_of(&leader) != leaving,
        "{leader}"
    );

    tracing::info!("--- the writer saw no error; every acknowledged write is there");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writing.await?;
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
    assert!(
        outcomes.failed.is_empty(),
        "failed writes: {:?}",
        outcomes.failed
    );
    assert!(
        outcomes.acknowledged.len() > 20,
        "{}",
        outcomes.acknowledged.len()
    );
    let client = Client::local(&cluster.dir(via)).await?;
    let all = client.operation(Operation::ConfigAll).await?;
    for key in &outcomes.acknowledged {
        if all.get(key).is_none() {
            bail!("acknowledged {key} is missing");
        }
    }
    Ok(())
}

/// Goal: every refusal says what is wrong: unknown member, a target that is not a voter, a
/// replace that is not a voter, a change that would leave a failure domain without a voter,
/// an offline member.
/// Method: 5 member processes; voters in failure domains a, b and c, stand-bys in a; try each
/// refused change through the CLI and read its message; kill a stand-by and promote it once
/// it is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(5).await?;
    let members = cluster.wait_roles(0, 3, 2).await?;
    let voter_names = with_role(&members, "database");
    let standbys = with_role(&members, "database-standby");
    let leader = leader_name(&cluster, 0)?;
    let domains = voter_names
        .iter()
        .zip(["a", "b", "c"])
        .chain(standbys.iter().map(|name| (name, "a")));
    for (name, domain) in domains {
        let script = format!("cluster.edit(\"{name}\", {{failure_domain=\"{domain}\"}})");
        cluster.cli_ok(0, &["exec", &script])?;
    }
    cluster.wait_roles(0, 3, 2).await?;
    let by_domain = |members: &Value, domain: &str| -> Vec<String> {
        members
            .as_array()
            .into_iter()
            .flatten()
            .filter(|member| member["failure_domain"] == domain)
            .filter_map(|member| member["server_name"].as_str().map(str::to_string))
            .collect()
    };
    let members = cluster.members(0)?;
    let in_c: Vec<String> = by_domain(&members, "c");
    assert_eq!(in_c.len(), 1, "{members}");

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["cluster".into(), "promote".into(), "nope".into()],
            "member \"nope\" not found",
        ),
        (
            vec![
                "cluster".into(),
                "transfer-leader".into(),
                standbys[0].clone(),
            ],
            "is not a voter",
        ),
        (
            vec![
                "cluster".into(),
                "promote".into(),
                standbys[0].clone(),
                "--replace".into(),
                standbys[1].clone(),
            ],
            "replace: member",
        ),
        (
            vec![
                "cluster".into(),
                "promote".into(),
                standbys[0].clone(),
                "--replace".into(),
                in_c[0].clone(),
            ],
            "failure domain \"c\" would have no voter",
        ),
        (
            vec![
                "cluster".into(),
                "promote".into(),
                standbys[0].clone(),
                "--replace".into(),
                leader.clone(),
            ],
            "leads; transfer leadership away from it first",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let message = cluster.cli_fails(0, &args)?;
        assert!(
            message.contains(expected),
            "{args:?}: expected \"{expected}\" in: {message}"
        );
    }

    tracing::info!("--- an offline member is refused");
    cluster.cli_ok(0, &["config", "set", "cluster.offline_threshold=10"])?;
    let gone = index_of(&standbys[1]);
    let via = (0..5).find(|index| *index != gone).unwrap_or(0);
    cluster.kill(gone)?;
    wait_for(
        "the killed stand-by to be offline",
        Duration::from_secs(30),
        || async {
            let members = cluster.members(via).ok()?;
            members
                .as_array()?
                .iter()
                .any(|member| {
                    member["server_name"] == standbys[1].as_str() && member["status"] == "Offline"
                })
                .then_some(())
        },
    )
    .await?;
    let message = cluster.cli_fails(via, &["cluster", "promote", &standbys[1]])?;
    assert!(message.contains("is not online"), "{message}");

    tracing::info!("--- demoting a member that does not vote changes nothing, and says so");
    let out = cluster.cli_ok(via, &["cluster", "demote", &standbys[0]])?;
    assert!(out.contains("does not vote"), "{out}");
    Ok(())
}
