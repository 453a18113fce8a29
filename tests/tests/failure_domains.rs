//! Failure domains: the leader spreads voters and stand-bys over them, also when the number of
//! voters and stand-bys is already right (see `starling_runtime::cluster::roles` for the rules).

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::Value;
use starling_runtime::operation::MemberEdit;
use starling_runtime::Operation;
use starling_tests::{info, init_tracing, wait_for, with_role, TestCluster};

const SETTLE: Duration = Duration::from_secs(30);

fn name(index: usize) -> String {
    format!("m{}", index + 1)
}

fn index_of(name: &str) -> usize {
    name.trim_start_matches('m').parse::<usize>().unwrap_or(1) - 1
}

/// Sets member `index`'s failure domain through member `via`.
async fn set_domain(cluster: &TestCluster, via: usize, index: usize, domain: &str) -> Result<()> {
    let edit = Operation::ClusterEdit {
        name: name(index),
        edit: MemberEdit {
            failure_domain: Some(domain.into()),
            ..Default::default()
        },
    };
    cluster.operation(via, edit).await?;
    Ok(())
}

/// The failure domains of the members holding `role` in a `cluster.members()` answer, one
/// entry per member.
fn domains_with_role(members: &Value, role: &str) -> Vec<String> {
    let names = with_role(members, role);
    members
        .as_array()
        .into_iter()
        .flatten()
        .filter(|member| {
            member["server_name"]
                .as_str()
                .is_some_and(|name| names.iter().any(|held| held == name))
        })
        .filter_map(|member| member["failure_domain"].as_str().map(str::to_string))
        .collect()
}

fn distinct(domains: &[String]) -> usize {
    domains.iter().collect::<BTreeSet<_>>().len()
}

/// Roles as seen through member `via` once they have settled: `count_voters` voters and
/// `count_standbys` stand-bys each in a domain of their own, no membership change under way
/// (`cluster.info().roles_settled`) and every replica on the same membership.
async fn wait_spread(
    cluster: &TestCluster,
    via: usize,
    count_voters: usize,
    count_standbys: usize,
) -> Result<Value> {
    let what = format!(
        "{count_voters} voters and {count_standbys} stand-bys, each in a failure domain of its own"
    );
    wait_for(&what, SETTLE, || async {
        let members = cluster.members_via(via).await.ok()?;
        let voters = domains_with_role(&members, "database");
        let standbys = domains_with_role(&members, "database-standby");
        let spread = voters.len() == count_voters
            && distinct(&voters) == count_voters
            && standbys.len() == count_standbys
            && distinct(&standbys) == count_standbys;
        let settled = info(cluster, via).await.ok()?["roles_settled"] == true
            && replicas_applied(cluster, via);
        (spread && settled).then_some(members)
    })
    .await
}

/// Whether every replica in member `via`'s Raft membership has applied that membership.
///
/// Not `TestCluster::membership_applied_everywhere`: a stand-by that the swap removes keeps
/// running as a spare, and it still holds the last membership it saw, which names it.
fn replicas_applied(cluster: &TestCluster, via: usize) -> bool {
    let membership = cluster
        .member(via)
        .raft()
        .metrics()
        .borrow_watched()
        .membership_config
        .clone();
    let log_id = *membership.log_id();
    let replicas: Vec<u64> = membership.membership().nodes().map(|(id, _)| *id).collect();
    replicas.into_iter().all(|id| {
        let metrics = cluster
            .member(id as usize - 1)
            .raft()
            .metrics()
            .borrow_watched()
            .clone();
        *metrics.membership_config.log_id() == log_id
            && metrics.last_applied >= log_id
            && metrics
                .membership_config
                .membership()
                .get_joint_config()
                .len()
                == 1
    })
}

/// Checks that member `leader` keeps leading and that its Raft membership does not change
/// while about `rounds` heartbeat rounds go by.
///
/// This is an observation window, not a wait for something to happen: on a slow machine
/// fewer rounds fit in it, which weakens the check but cannot fail it.
async fn assert_roles_stay(cluster: &TestCluster, leader: usize, rounds: u32) -> Result<()> {
    let interval_ms = cluster
        .member(leader)
        .local_state(|state| state.config_i64("cluster.heartbeat_interval_ms"))
        .max(100) as u64;
    let membership = |cluster: &TestCluster| {
        let metrics = cluster
            .member(leader)
            .raft()
            .metrics()
            .borrow_watched()
            .clone();
        *metrics.membership_config.log_id()
    };
    let before = membership(cluster);
    let until = Instant::now() + Duration::from_millis(interval_ms) * rounds;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ensure!(cluster.member(leader).is_leader(), "the leader changed");
        let now = membership(cluster);
        ensure!(
            now == before,
            "roles changed after they had spread: membership {before:?} became {now:?}"
        );
    }
    Ok(())
}

/// Goal: voters spread over failure domains even when the voter count is already on target
/// (the hardening issue): when domains are set after every member joined, within a few
/// heartbeat rounds the 3 voters are in 3 domains, the leader still leads and votes, the
/// stand-bys are spread too, and then the roles stay put.
/// Method: 6 members join in the default domain (3 voters, 2 stand-bys, a spare); then m1, m2
/// go to az1, m3, m4 to az2 and m5, m6 to az3, one edit at a time; wait (with a deadline) for
/// the spread and for `cluster.info().roles_settled`; then watch the membership for 10 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_spread_over_domains_set_after_joining() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(6).await?;
    let leader = cluster.leader().await?;
    let members = cluster.members_via(leader).await?;
    assert_eq!(domains_with_role(&members, "database").len(), 3);
    assert_eq!(domains_with_role(&members, "database-standby").len(), 2);

    tracing::info!(leader = %name(leader), "--- set failure domains: m1, m2 az1; m3, m4 az2; m5, m6 az3");
    for (index, domain) in ["az1", "az1", "az2", "az2", "az3", "az3"]
        .iter()
        .enumerate()
    {
        set_domain(&cluster, leader, index, domain).await?;
    }

    tracing::info!("--- the voters spread over the 3 domains, the stand-bys over 2");
    let started = Instant::now();
    let members = wait_spread(&cluster, leader, 3, 2).await?;
    tracing::info!(after = ?started.elapsed(), voters = ?with_role(&members, "database"), standbys = ?with_role(&members, "database-standby"), "spread");
    assert_eq!(cluster.leader().await?, leader, "the leader changed");
    assert!(
        with_role(&members, "database").contains(&name(leader)),
        "the leader was demoted: {members}"
    );
    assert_eq!(with_role(&members, "database-leader"), vec![name(leader)]);
    let in_domain = |domain: &str| -> Vec<String> {
        members
            .as_array()
            .into_iter()
            .flatten()
            .filter(|member| member["failure_domain"] == domain)
            .filter_map(|member| member["server_name"].as_str().map(str::to_string))
            .collect()
    };
    for domain in ["az1", "az2", "az3"] {
        let voters: Vec<String> = in_domain(domain)
            .into_iter()
            .filter(|member| with_role(&members, "database").contains(member))
            .collect();
        assert_eq!(voters.len(), 1, "{domain} should hold one voter: {members}");
    }

    tracing::info!("--- once spread, the next rounds change nothing");
    assert_roles_stay(&cluster, leader, 10).await
}

/// Goal: stand-bys spread over failure domains too: when two stand-bys share a domain and an
/// online spare sits in a domain with no stand-by, one stand-by hands its role to the spare,
/// and the voters (already spread) are left alone.
/// Method: 6 members; the voters go to az1, az2, az3; one stand-by to az1, the spare to az2,
/// and last the other stand-by to az1; wait (with a deadline) for the spare to stand by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_spread_over_failure_domains() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(6).await?;
    let leader = cluster.leader().await?;
    let members = cluster.members_via(leader).await?;
    let voters = with_role(&members, "database");
    let standbys: Vec<usize> = with_role(&members, "database-standby")
        .iter()
        .map(|standby| index_of(standby))
        .collect();
    let spare = (0..6)
        .find(|index| !voters.contains(&name(*index)) && !standbys.contains(index))
        .expect("a spare");

    tracing::info!(?voters, ?standbys, spare = %name(spare), "--- the voters go to az1, az2, az3");
    for (voter, domain) in voters.iter().zip(["az1", "az2", "az3"]) {
        set_domain(&cluster, leader, index_of(voter), domain).await?;
    }

    tracing::info!("--- one stand-by and the spare get domains; nothing to spread yet");
    set_domain(&cluster, leader, standbys[0], "az1").await?;
    set_domain(&cluster, leader, spare, "az2").await?;

    tracing::info!("--- the other stand-by joins az1: two stand-bys share it");
    set_domain(&cluster, leader, standbys[1], "az1").await?;
    let members = wait_spread(&cluster, leader, 3, 2).await?;
    let standbys_now = with_role(&members, "database-standby");
    assert!(
        standbys_now.contains(&name(spare)),
        "the az2 spare should stand by: {standbys_now:?}"
    );
    assert_eq!(
        with_role(&members, "database"),
        voters,
        "the voters were already spread and should not move"
    );
    assert_eq!(cluster.leader().await?, leader, "the leader changed");

    tracing::info!("--- once spread, the next rounds change nothing");
    assert_roles_stay(&cluster, leader, 10).await
}
