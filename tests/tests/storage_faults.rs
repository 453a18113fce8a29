//! Storage faults: a member whose database cannot write leaves service visibly, and the
//! cluster replaces it.

use std::time::Duration;

use anyhow::Result;
use starling_runtime::protocol::{Reply, Request};
use starling_runtime::Operation;
use starling_tests::{init_tracing, large_edit, raw_request, wait_for, with_role, TestCluster};

/// Goal: a full database takes its member out of service — it stops answering pings and
/// heartbeats as healthy — so the leader marks it offline and a stand-by takes its vote, while
/// the cluster keeps accepting writes.
/// Method: m3 (a voter) runs with a 2 MiB log map; m4 is a stand-by; large writes fill m3's
/// log; then watch m3's answers, its status and the roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_takes_its_member_out_of_service() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(2).await?;
    cluster.detect_offline_quickly(0).await?;
    let tiny = starling_store::StoreOptions {
        log_map_size_bytes: 2 * 1024 * 1024,
        ..Default::default()
    };
    let token = cluster.any_client().await?.join_token("m3").await?;
    cluster.add_member_with(2, &token, tiny).await?;
    cluster.add_member(3).await?;
    cluster.wait_roles_settled(Duration::from_secs(30)).await?;
    let voters = cluster.names_with_role(0, "database").await;
    assert!(
        voters.contains(&"m3".to_string()),
        "m3 should vote: {voters:?}"
    );

    tracing::info!("--- fill m3's log");
    for round in 0..40 {
        if cluster.member(2).out_of_service().is_some() {
            break;
        }
        cluster.operation(0, large_edit("m1", round, 6)).await?;
    }
    let m3 = cluster.member(2).clone();
    let cause = wait_for("m3 to leave service", Duration::from_secs(10), || async {
        m3.out_of_service()
    })
    .await?;
    assert!(
        cause.contains("MDB_MAP_FULL") || cause.contains("map"),
        "{cause}"
    );

    tracing::info!("--- m3 answers nothing as healthy");
    let ca = cluster
        .member(0)
        .local_state(|state| state.ca_cert_pem.clone());
    let m1 = starling_runtime::datadir::DataDir::new(&cluster.dir(0)).load_identity("member")?;
    let reply = raw_request(&cluster.address(2), m1, &ca, &Request::Ping).await?;
    assert!(
        matches!(&reply, Reply::Refused(error) if error.to_string().contains("out of service")),
        "{reply:?}"
    );

    tracing::info!("--- the leader marks it offline and m4 takes its vote");
    cluster
        .wait_status(0, "m3", "Offline", Duration::from_secs(30))
        .await?;
    wait_for(
        "m4 to vote instead of m3",
        Duration::from_secs(30),
        || async {
            let members = cluster.members_via(0).await.ok()?;
            let voters = with_role(&members, "database");
            (voters.contains(&"m4".to_string()) && !voters.contains(&"m3".to_string()))
                .then_some(())
        },
    )
    .await?;
    cluster
        .operation(
            1,
            Operation::ConfigSet {
                key: "user.after".into(),
                value: "1".into(),
            },
        )
        .await?;
    Ok(())
}
