//! The cluster keeps itself healthy: lost members turn offline, stand-bys take their votes,
//! failure domains are respected, leaders hand over, partitions heal.

use std::time::{Duration, Instant};

use anyhow::Result;
use openraft::async_runtime::WatchReceiver;
use starling_runtime::Operation;
use starling_tests::{init_tracing, wait_for, TestCluster};

const SETTLE: Duration = Duration::from_secs(30);

fn name(index: usize) -> String {
    format!("m{}", index + 1)
}

fn index_of(name: &str) -> usize {
    name.trim_start_matches('m').parse::<usize>().unwrap_or(1) - 1
}

/// Goal: a voter that stops answering turns Offline after `cluster.offline_threshold`, not
/// before; a stand-by takes its vote; operations aimed at it fail at once; when it comes back
/// it is Online again and gets a role without disturbing the leader.
/// Method: 5 members, threshold 10 s, stop a follower voter, watch status and roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_voter_is_replaced_by_a_standby() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(5).await?;
    let leader = cluster.leader().await?;
    cluster.detect_offline_quickly(leader).await?;
    let voters = cluster.names_with_role(leader, "database").await;
    let victim = voters
        .iter()
        .map(|voter| index_of(voter))
        .find(|index| *index != leader)
        .expect("a follower voter");
    let victim_name = name(victim);

    tracing::info!(victim = %victim_name, "--- stop a follower voter");
    let stopped_at = Instant::now();
    cluster.stop(victim).await;
    let offline = cluster
        .wait_status(leader, &victim_name, "Offline", SETTLE)
        .await?;
    let detected_after = stopped_at.elapsed();
    assert!(
        detected_after >= Duration::from_secs(10),
        "marked offline early, after {detected_after:?}"
    );
    assert!(
        offline["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("No heartbeat for"),
        "{offline}"
    );

    tracing::info!("--- an operation aimed at it fails at once, naming it");
    let started = Instant::now();
    let error = cluster
        .operation(
            leader,
            Operation::ClusterMemberState {
                name: victim_name.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        error
            .to_string()
            .contains(&format!("member \"{victim_name}\" is Offline")),
        "{error}"
    );

    tracing::info!("--- a stand-by takes its vote");
    wait_for("3 voters without the stopped member", SETTLE, || async {
        let voters = cluster.names_with_role(leader, "database").await;
        (voters.len() == 3 && !voters.contains(&victim_name)).then_some(())
    })
    .await?;

    tracing::info!("--- it comes back");
    cluster.restart(victim).await?;
    cluster
        .wait_status(leader, &victim_name, "Online", SETTLE)
        .await?;
    wait_for(
        "the returning member to hold a database role",
        SETTLE,
        || async {
            let standbys = cluster.names_with_role(leader, "database-standby").await;
            standbys.contains(&victim_name).then_some(())
        },
    )
    .await?;
    assert_eq!(cluster.leader().await?, leader, "the leader changed");
    assert!(
        cluster
            .operation(leader, Operation::ClusterMemberState { name: victim_name })
            .await?["sysinfo"]["logical_cpus"]
            .as_u64()
            >= Some(1)
    );
    Ok(())
}

/// Goal: when a voter is lost, a member from the same failure domain takes its vote, even a
/// spare over a stand-by from a domain that already votes.
/// Method: 6 members in az1/az2/az3 (one voter each, stand-bys in az1 and az3, a spare in
/// az2); stop the az2 voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_voter_is_replaced_from_its_failure_domain() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(6).await?;
    let leader = cluster.leader().await?;
    cluster.detect_offline_quickly(leader).await?;
    let voters: Vec<usize> = cluster
        .names_with_role(leader, "database")
        .await
        .iter()
        .map(|voter| index_of(voter))
        .collect();
    let standbys: Vec<usize> = cluster
        .names_with_role(leader, "database-standby")
        .await
        .iter()
        .map(|s| index_of(s))
        .collect();
    let spare = (0..6)
        .find(|index| !voters.contains(index) && !standbys.contains(index))
        .expect("a spare");
    let az2_voter = *voters
        .iter()
        .find(|index| **index != leader)
        .expect("a follower voter");
    let az3_voter = *voters
        .iter()
        .find(|index| **index != leader && **index != az2_voter)
        .expect("another voter");
    let domains = [
        (leader, "az1"),
        (az2_voter, "az2"),
        (az3_voter, "az3"),
        (standbys[0], "az1"),
        (standbys[1], "az3"),
        (spare, "az2"),
    ];
    for (index, domain) in domains {
        let edit = Operation::ClusterEdit {
            name: name(index),
            edit: starling_runtime::operation::MemberEdit {
                failure_domain: Some(domain.into()),
                ..Default::default()
            },
        };
        cluster.operation(leader, edit).await?;
    }
    assert_eq!(
        cluster
            .operation(
                leader,
                Operation::ClusterGet {
                    name: name(spare),
                    key: "failure_domain".into()
                }
            )
            .await?,
        "az2"
    );

    tracing::info!(az2_voter, spare, "--- stop the az2 voter");
    cluster.stop(az2_voter).await;
    cluster
        .wait_status(leader, &name(az2_voter), "Offline", SETTLE)
        .await?;
    wait_for("the az2 spare to vote", SETTLE, || async {
        let voters = cluster.names_with_role(leader, "database").await;
        (voters.len() == 3 && voters.contains(&name(spare))).then_some(())
    })
    .await?;
    Ok(())
}

/// Goal: on graceful shutdown a leader hands leadership over and a voter hands its vote to a
/// stand-by before leaving, so the cluster never waits for the offline threshold.
/// Method: 5 members; leave_gracefully + stop the leader, then a voter; check roles at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_roles_over() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(5).await?;
    let leader = cluster.leader().await?;

    tracing::info!("--- the leader leaves gracefully");
    let started = Instant::now();
    cluster.member(leader).leave_gracefully().await;
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await?;
    assert_ne!(new_leader, leader);
    cluster
        .set_config(new_leader, "user.after_leader_left", "1")
        .await?;
    tracing::info!(elapsed = ?started.elapsed(), "new leader wrote");
    wait_for(
        "3 voters without the old leader",
        Duration::from_secs(10),
        || async {
            let voters = cluster.names_with_role(new_leader, "database").await;
            (voters.len() == 3 && !voters.contains(&name(leader))).then_some(())
        },
    )
    .await?;

    tracing::info!("--- a voter leaves gracefully");
    let voters = cluster.names_with_role(new_leader, "database").await;
    let voter = voters
        .iter()
        .map(|voter| index_of(voter))
        .find(|index| *index != new_leader)
        .expect("a follower voter");
    cluster.member(voter).leave_gracefully().await;
    let voters = cluster.names_with_role(new_leader, "database").await;
    assert_eq!(voters.len(), 3, "the vote was not handed over: {voters:?}");
    assert!(!voters.contains(&name(voter)), "{voters:?}");
    cluster.stop(voter).await;
    cluster
        .set_config(new_leader, "user.after_voter_left", "1")
        .await?;
    Ok(())
}

/// Goal: a partitioned minority cannot commit; the majority elects a leader and can; after the
/// partition heals the old leader follows and catches up.
/// Method: 3 members, cut the leader off from the other two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_minority_cannot_commit() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(3).await?;
    let old_leader = cluster.leader().await?;
    let majority: Vec<usize> = (0..3).filter(|index| *index != old_leader).collect();

    tracing::info!(old_leader, "--- partition the leader from the rest");
    cluster.partition(&[old_leader], &majority);
    let error = cluster
        .operation(
            old_leader,
            Operation::ConfigSet {
                key: "user.minority".into(),
                value: "1".into(),
            },
        )
        .await;
    let message = error
        .expect_err("the minority committed a write")
        .to_string();
    assert!(
        message.contains("cluster database is unavailable"),
        "{message}"
    );

    let new_leader = wait_for("the majority to elect a leader", SETTLE, || async {
        majority
            .iter()
            .copied()
            .find(|index| cluster.member(*index).is_leader())
    })
    .await?;
    cluster.set_config(new_leader, "user.majority", "1").await?;

    tracing::info!("--- heal");
    cluster.heal();
    wait_for("the old leader to catch up", SETTLE, || async {
        let value = cluster
            .member(old_leader)
            .local_state(|state| state.config.get("user.majority").cloned());
        (value.as_deref() == Some("1") && !cluster.member(old_leader).is_leader()).then_some(())
    })
    .await?;
    let minority_write = cluster
        .member(new_leader)
        .local_state(|state| state.config.get("user.minority").cloned());
    assert_eq!(minority_write, None, "the minority's write was committed");
    Ok(())
}

/// Goal: statuses survive a change of leader, and a new leader does not call members offline
/// just because it has not heard from them yet.
/// Method: 4 members, threshold 10 s; stop a follower until Offline; hand leadership over;
/// the new leader still shows it Offline and every live member Online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_survive_a_change_of_leader() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(4).await?;
    let leader = cluster.leader().await?;
    cluster.detect_offline_quickly(leader).await?;
    let victim = (0..4).find(|index| *index != leader).expect("a follower");
    cluster.stop(victim).await;
    cluster
        .wait_status(leader, &name(victim), "Offline", SETTLE)
        .await?;

    tracing::info!("--- hand leadership over");
    cluster.member(leader).leave_gracefully().await;
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await?;
    let members = cluster.members_via(new_leader).await?;
    for member in members.as_array().into_iter().flatten() {
        let expected = if member["server_name"] == name(victim).as_str() {
            "Offline"
        } else {
            "Online"
        };
        assert_eq!(member["status"], expected, "{member}");
    }
    Ok(())
}

/// Goal: a joint membership left behind by a change of leader (the old leader's second step
/// cut off) is finished by the new leader: the cluster never stays between two configurations,
/// where the old half may need the vote of a member about to leave.
/// Method: 4 members (3 voters, a stand-by); on the leader, Raft itself is asked to swap a
/// follower voter for the stand-by and, in the same instant, to hand leadership to the other
/// follower voter (past Starling's role lock, as an election would); then the roles must settle:
/// 3 voters, 1 stand-by, one uniform membership applied everywhere. Four rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joint_membership_cut_off_by_a_new_leader_is_finished() -> Result<()> {
    const ROUNDS: usize = 4;
    init_tracing();
    let cluster = TestCluster::start(4).await?;
    cluster.wait_roles_settled(SETTLE).await?;
    let mut cut_off = 0;
    for round in 0..ROUNDS {
        let leader = cluster.leader().await?;
        let voters = cluster.names_with_role(leader, "database").await;
        let standby = cluster.names_with_role(leader, "database-standby").await;
        let followers: Vec<usize> = voters
            .iter()
            .map(|voter| index_of(voter))
            .filter(|index| *index != leader)
            .collect();
        assert_eq!(
            (followers.len(), standby.len()),
            (2, 1),
            "{voters:?} {standby:?}"
        );
        let (swapped, successor) = (followers[0], followers[1]);
        let new_voters: std::collections::BTreeSet<u64> =
            [leader, successor, index_of(&standby[0])]
                .iter()
                .map(|index| *index as u64 + 1)
                .collect();
        tracing::info!(round, ?new_voters, swapped = %name(swapped), successor = %name(successor),
            "--- a voter change and a transfer at once");
        let raft = cluster.member(leader).raft().clone();
        let mut metrics = raft.metrics();
        let change = tokio::spawn({
            let raft = raft.clone();
            async move { raft.change_membership(new_voters, true).await }
        });
        // The moment the joint half is committed, before the second step is proposed (the
        // watch may skip that state when both steps commit quickly: then there is no race).
        while !change.is_finished() {
            let joint_committed = {
                let metrics = metrics.borrow_watched();
                metrics
                    .membership_config
                    .membership()
                    .get_joint_config()
                    .len()
                    > 1
                    && metrics.membership_config.log_id() <= &metrics.last_applied
            };
            if joint_committed {
                raft.trigger().transfer_leader(successor as u64 + 1).await?;
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), metrics.changed()).await;
        }
        if change.await?.is_err() {
            cut_off += 1;
        }
        cluster.wait_roles_settled(SETTLE).await?;
    }
    println!("{cut_off} of {ROUNDS} changes were cut off by the transfer");
    Ok(())
}

/// Goal: raising and lowering `cluster.max_voters` and `cluster.max_standby` takes effect.
/// Method: 5 members; max_voters 5, then max_voters 3 with max_standby 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voter_and_standby_limits_take_effect() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(5).await?;
    let leader = cluster.leader().await?;
    cluster
        .set_config(leader, "cluster.max_voters", "5")
        .await?;
    wait_for("5 voters", SETTLE, || async {
        (cluster.names_with_role(leader, "database").await.len() == 5).then_some(())
    })
    .await?;
    cluster
        .set_config(leader, "cluster.max_voters", "3")
        .await?;
    cluster
        .set_config(leader, "cluster.max_standby", "0")
        .await?;
    wait_for("3 voters and no stand-by", SETTLE, || async {
        let voters = cluster.names_with_role(leader, "database").await.len();
        let standbys = cluster
            .names_with_role(leader, "database-standby")
            .await
            .len();
        (voters == 3 && standbys == 0).then_some(())
    })
    .await?;
    assert!(
        cluster
            .names_with_role(leader, "database-leader")
            .await
            .contains(&name(leader)),
        "the leader was demoted"
    );
    Ok(())
}
