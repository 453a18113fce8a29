//! Acknowledged writes survive `kill -9` of the leader and then of a follower voter, under 64
//! concurrent writers, and no write is applied twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use starling_runtime::{Client, Operation};
use starling_tests::processes::ProcessCluster;
use starling_tests::{init_tracing, wait_for, with_role};

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    acknowledged: Vec<String>,
    failed: Vec<(String, String)>,
}

/// One writer: creates networks `w{writer}-{n}` through member `first`, moving to the next
/// member when one stops answering, until `stop`.
async fn writer(
    cluster_dirs: Vec<std::path::PathBuf>,
    writer: usize,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let mut member = writer % cluster_dirs.len();
    let mut client: Option<Client> = None;
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = Client::local(&cluster_dirs[member]).await.ok();
            if client.is_none() {
                member = (member + 1) % cluster_dirs.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let name = format!("w{writer}-{sequence}");
        sequence += 1;
        let create = Operation::NetworkCreate {
            name: name.clone(),
            network_type: "bridge".into(),
            config: Default::default(),
            member_config: Default::default(),
        };
        let result = match &client {
            Some(client) => client.operation(create).await,
            None => continue,
        };
        let mut outcomes = outcomes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(_) => outcomes.acknowledged.push(name),
            Err(error) => {
                outcomes.failed.push((name, error.to_string()));
                client = None;
                member = (member + 1) % cluster_dirs.len();
            }
        }
    }
}

/// Goal: with 64 writers going through several members, `kill -9` of the leader and then of a
/// follower voter loses no acknowledged write, and no write is applied twice (a retried
/// forward or proposal applied again would answer its writer "already exists").
/// Method: 5 member processes (3 voters, 2 stand-bys); 64 writers create uniquely named
/// networks; SIGKILL the leader, wait for a stand-by to take its vote, SIGKILL a follower
/// voter; stop the writers; restart the killed members and let them catch up; stop everyone
/// and read each member's database offline: every acknowledged network is in every replica.
/// Each member runs one async worker thread (`--workers 1`), so anything that holds a worker
/// holds up its heartbeats too: catching up (the leader reading the restarted members'
/// backlog, they applying it) and `waitready` polling a leader that holds thousands of
/// networks must not make the voters elect again and again (before they were bounded, the
/// cluster had no leader for the 30 s `waitready` allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kills_under_64_writers() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::new()?.with_workers(1).started(5)?;
    cluster.wait_roles(0, 3, 2).await?;
    cluster.cli_ok(0, &["config", "set", "cluster.offline_threshold=10"])?;
    let dirs: Vec<_> = (0..5).map(|index| cluster.dir(index)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let writers: Vec<_> = (0..64)
        .map(|index| tokio::spawn(writer(dirs.clone(), index, stop.clone(), outcomes.clone())))
        .collect();
    let acknowledged = || outcomes.lock().map(|o| o.acknowledged.len()).unwrap_or(0);
    wait_for("the first writes", Duration::from_secs(20), || async {
        (acknowledged() > 200).then_some(())
    })
    .await?;

    let leader = cluster.leader(0).await?;
    tracing::info!(leader, "--- kill -9 the leader");
    cluster.kill(leader)?;
    let via = (leader + 1) % 5;
    let leader_name = format!("m{}", leader + 1);
    let members = wait_for(
        "a stand-by to take the lost vote",
        Duration::from_secs(60),
        || async {
            let members = cluster.members(via).ok()?;
            let voters = with_role(&members, "database");
            (voters.len() == 3 && !voters.contains(&leader_name)).then_some(members)
        },
    )
    .await?;
    let new_leader = cluster.leader(via).await?;
    let victim = with_role(&members, "database")
        .iter()
        .filter_map(|name| name.trim_start_matches('m').parse::<usize>().ok())
        .map(|number| number - 1)
        .find(|index| *index != new_leader)
        .unwrap_or(via);
    let before = acknowledged();
    tracing::info!(victim, "--- kill -9 a follower voter");
    cluster.kill(victim)?;
    wait_for("writes to go on", Duration::from_secs(30), || async {
        (acknowledged() > before + 200).then_some(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await?;
    }

    tracing::info!("--- restart the killed members and let them catch up");
    cluster.restart(leader)?;
    cluster.restart(victim)?;
    for index in [leader, victim] {
        if let Err(error) = cluster.wait_ready(index) {
            // Say what every member was doing: a failure here is read from CI's output.
            for member in 0..5 {
                let log = cluster.log(member);
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                tracing::error!(member, log = %tail.into_iter().rev().collect::<Vec<_>>().join("\n"), "member log");
            }
            return Err(error);
        }
    }
    cluster.cli_ok(via, &["config", "set", "user.last=1"])?;
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
    tracing::info!(
        acknowledged = outcomes.acknowledged.len(),
        failed = outcomes.failed.len(),
        "--- writers done"
    );
    for (name, error) in &outcomes.failed {
        assert!(
            !error.contains("already exists"),
            "{name} was applied twice: {error}"
        );
    }
    // Stop everyone with kill -9 and read each replica offline. A member that has not
    // received the last write yet is given another moment (all restart, then all stop again).
    let mut rounds = 0;
    let states = loop {
        rounds += 1;
        for index in 0..5 {
            cluster.kill(index)?;
        }
        let mut states = Vec::new();
        for index in 0..5 {
            let db = cluster.dir(index).join("db");
            states.push(starling_store::recover::read_stopped_state(&db)?.0);
        }
        if states
            .iter()
            .all(|state| state.config.contains_key("user.last"))
        {
            break states;
        }
        if rounds == 5 {
            bail!("some member never received the last write");
        }
        for index in 0..5 {
            cluster.restart(index)?;
        }
        for index in 0..5 {
            cluster.wait_ready(index)?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for (index, state) in states.iter().enumerate() {
        let missing: Vec<&String> = outcomes
            .acknowledged
            .iter()
            .filter(|name| !state.networks.contains_key(*name))
            .collect();
        assert!(
            missing.is_empty(),
            "m{} lost acknowledged writes: {missing:?}",
            index + 1
        );
    }
    Ok(())
}
