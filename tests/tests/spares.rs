//! Spares hold no replica: what they know comes from heartbeats, and it must be current.

use std::time::Duration;

use anyhow::Result;
use starling_runtime::Operation;
use starling_tests::{init_tracing, wait_for, with_role, TestCluster};

/// Three voters and a spare (no stand-bys), roles settled.
async fn three_voters_and_a_spare() -> Result<TestCluster> {
    let mut cluster = TestCluster::start(3).await?;
    cluster.set_config(0, "cluster.max_standby", "0").await?;
    cluster.add_member(3).await?;
    wait_for("3 voters and a spare", Duration::from_secs(30), || async {
        let members = cluster.members_via(0).await.ok()?;
        let spare = members[3]["database"] == false;
        (with_role(&members, "database").len() == 3 && spare).then_some(())
    })
    .await?;
    Ok(cluster)
}

/// Goal: `cluster remove` of a spare really resets it (before, the spare refused the leader's
/// notice — its own copy of the members was stale — and the refusal counted as success).
/// Method: 3 voters and a spare; remove the spare; it must stop and wipe its directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_spare_resets_it() -> Result<()> {
    init_tracing();
    let cluster = three_voters_and_a_spare().await?;
    let spare = cluster.member(3).clone();
    cluster
        .operation(
            0,
            Operation::ClusterRemove {
                name: "m4".into(),
                force: false,
            },
        )
        .await?;
    tokio::time::timeout(Duration::from_secs(10), spare.stopped()).await?;
    assert!(
        !cluster.dir(3).join("member.json").exists(),
        "m4's directory was not reset"
    );
    Ok(())
}

/// Goal: a spare that was once a voter forwards to the current leader, not to the one its
/// stale Raft view names.
/// Method: 3 voters and a spare; stop a follower voter until the spare takes its vote, restart
/// it (it is now a spare whose Raft view is frozen); stop the leader; once a new leader is
/// elected, a write through the former voter succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_voter_forwards_to_the_current_leader() -> Result<()> {
    init_tracing();
    let mut cluster = three_voters_and_a_spare().await?;
    cluster.detect_offline_quickly(0).await?;
    let leader = cluster.leader().await?;
    let voter = (0..3).find(|index| *index != leader).unwrap_or(1);
    let via = (0..3)
        .find(|index| *index != leader && *index != voter)
        .unwrap_or(2);
    let voter_name = format!("m{}", voter + 1);

    tracing::info!(voter, "--- stop a follower voter until m4 takes its vote");
    cluster.stop(voter).await;
    wait_for("m4 to vote", Duration::from_secs(40), || async {
        let members = cluster.members_via(via).await.ok()?;
        let voters = with_role(&members, "database");
        (voters.contains(&"m4".to_string()) && !voters.contains(&voter_name)).then_some(())
    })
    .await?;
    cluster.restart(voter).await?;
    wait_for(
        "the former voter to be a spare",
        Duration::from_secs(30),
        || async {
            let members = cluster.members_via(via).await.ok()?;
            let record = members
                .as_array()?
                .iter()
                .find(|m| m["server_name"] == voter_name)?;
            (record["status"] == "Online" && record["database"] == false).then_some(())
        },
    )
    .await?;

    tracing::info!(
        leader,
        "--- stop the leader; write through the former voter"
    );
    cluster.stop(leader).await;
    let write = Operation::ConfigSet {
        key: "user.via_spare".into(),
        value: "1".into(),
    };
    wait_for(
        "a write through the former voter",
        Duration::from_secs(20),
        || async { cluster.operation(voter, write.clone()).await.ok() },
    )
    .await?;
    Ok(())
}
