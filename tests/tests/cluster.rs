//! In-process scenarios: a cluster forms, replicates, and survives member restarts.

use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

use anyhow::Result;
use starling_runtime::Operation;
use starling_tests::{init_tracing, wait_for, with_role, TestCluster};

/// Goal: three members form a cluster with three voters and one leader.
/// Method: bootstrap m1, join m2 and m3 with tokens, read `cluster.members()` through each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_form_a_cluster() -> Result<()> {
    init_tracing();
    tracing::info!("--- start 3 members");
    let cluster = TestCluster::start(3).await?;
    for index in 0..3 {
        let members = cluster.members_via(index).await?;
        assert_eq!(with_role(&members, "database"), ["m1", "m2", "m3"]);
        assert_eq!(with_role(&members, "database-leader").len(), 1);
        for member in members.as_array().unwrap() {
            assert_eq!(member["status"], "Online", "{member}");
            assert_eq!(member["failure_domain"], "default");
            assert_eq!(member["groups"], serde_json::json!(["default"]));
        }
    }
    Ok(())
}

/// Goal: a config write through one member is read through the others, and every member's
/// replica holds it.
/// Method: `config.set` via m2, `config.get` via m1 and m3, then wait for each local replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_written_on_one_member_is_read_on_the_others() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(3).await?;
    tracing::info!("--- write through m2");
    let set = Operation::ConfigSet {
        key: "user.greeting".into(),
        value: "hello".into(),
    };
    cluster.client(1).await?.operation(set).await?;
    tracing::info!("--- read through m1 and m3");
    for index in [0, 2] {
        let value = cluster
            .client(index)
            .await?
            .operation(Operation::ConfigGet {
                key: "user.greeting".into(),
            })
            .await?;
        assert_eq!(value, "hello");
    }
    for index in 0..3 {
        wait_for(
            "the replica to apply the write",
            Duration::from_secs(5),
            || async {
                let value = cluster
                    .member(index)
                    .local_state(|state| state.config.get("user.greeting").cloned());
                (value.as_deref() == Some("hello")).then_some(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Goal: a member restarted from its directory keeps its data and catches up on what it missed.
/// Method: stop m3, write while it is down, restart it, and wait for its replica to hold both
/// the old and the new values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_keeps_everything_and_catches_up() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(3).await?;
    let before = Operation::ConfigSet {
        key: "user.before".into(),
        value: "1".into(),
    };
    cluster.client(0).await?.operation(before).await?;
    let stopped = if cluster.leader().await? == 2 { 1 } else { 2 };
    tracing::info!(stopped, "--- stop a follower and write while it is down");
    cluster.stop(stopped).await;
    let during = Operation::ConfigSet {
        key: "user.during".into(),
        value: "2".into(),
    };
    cluster.client(0).await?.operation(during).await?;
    tracing::info!("--- restart it");
    cluster.restart(stopped).await?;
    wait_for(
        "the restarted member to catch up",
        Duration::from_secs(15),
        || async {
            let (before, during) = cluster.member(stopped).local_state(|state| {
                (
                    state.config.get("user.before").cloned(),
                    state.config.get("user.during").cloned(),
                )
            });
            (before.as_deref() == Some("1") && during.as_deref() == Some("2")).then_some(())
        },
    )
    .await?;
    let members = cluster.members_via(stopped).await?;
    assert_eq!(with_role(&members, "database"), ["m1", "m2", "m3"]);
    Ok(())
}

/// Goal: snapshots carry the whole state: a member that joins after the log was compacted
/// gets everything through a snapshot sent over QUIC, and restarts keep it.
/// Method: snapshots every 200 entries; 600 writes on 1 member; join a second; check its replica;
/// restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_brings_a_new_member_up_to_date() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(1).await?;
    let client = cluster.client(0).await?;
    tracing::info!("--- 600 writes, so the log is snapshotted and purged");
    client
        .exec(
            "for i = 1, 600 do config.set('user.k' .. (i % 50), i) end",
            "fill.lua",
            |_| {},
        )
        .await?;
    wait_for(
        "a snapshot and a purged log",
        Duration::from_secs(10),
        || async {
            let metrics = cluster.member(0).raft().metrics().borrow_watched().clone();
            (metrics.snapshot.is_some() && metrics.purged.is_some()).then_some(())
        },
    )
    .await?;

    tracing::info!("--- a new member joins and catches up from the snapshot");
    cluster.add_member(1).await?;
    wait_for(
        "the new member's replica",
        Duration::from_secs(20),
        || async {
            let value = cluster
                .member(1)
                .local_state(|state| state.config.get("user.k0").cloned());
            (value.as_deref() == Some("600")).then_some(())
        },
    )
    .await?;
    let snapshot = cluster.member(1).raft().metrics().borrow_watched().snapshot;
    assert!(
        snapshot.is_some(),
        "the new member did not install a snapshot"
    );

    tracing::info!("--- it restarts from its own snapshot");
    cluster.stop(1).await;
    cluster.restart(1).await?;
    let value = cluster
        .member(1)
        .local_state(|state| state.config.get("user.k49").cloned());
    assert_eq!(value.as_deref(), Some("599"));
    Ok(())
}
