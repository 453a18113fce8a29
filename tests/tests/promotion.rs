//! Promoting a spare that cannot catch up: the promotion waits, with a bound, then says how far
//! behind the spare is; once the spare can catch up, it is promoted.

use std::time::{Duration, Instant};

use anyhow::Result;
use starling_runtime::Operation;
use starling_tests::{init_tracing, wait_for, with_role, TestCluster};

fn name(index: usize) -> String {
    format!("m{}", index + 1)
}

/// Goal: a spare more than 100 entries behind that cannot receive the log is not made a voter:
/// after at most 10 s the promotion is refused with how many entries it lacks, and the voters
/// are unchanged; once it is reachable again the same promotion succeeds.
/// Method: 4 members with `cluster.max_standby=0` (3 voters, 1 spare); 150 writes; cut the
/// spare off from every member (Raft and requests both ways); promote it in place of a
/// follower voter; heal; promote again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_that_cannot_catch_up_is_not_promoted() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(3).await?;
    cluster.set_config(0, "cluster.max_standby", "0").await?;
    let mut cluster = cluster;
    cluster.add_member(3).await?;
    let leader = cluster.leader().await?;
    wait_for(
        "3 voters and no stand-by",
        Duration::from_secs(30),
        || async {
            let members = cluster.members_via(leader).await.ok()?;
            let voters = with_role(&members, "database");
            (voters.len() == 3 && with_role(&members, "database-standby").is_empty())
                .then_some(voters)
        },
    )
    .await?;
    let spare = 3;
    let replaced = (0..3).find(|index| *index != leader).unwrap_or(1);
    for round in 0..150 {
        cluster
            .set_config(leader, "user.filler", &round.to_string())
            .await?;
    }

    tracing::info!("--- cut the spare off and promote it");
    let others: Vec<usize> = (0..3).collect();
    cluster.partition(&[spare], &others);
    let promote = Operation::ClusterPromote {
        name: name(spare),
        replace: Some(name(replaced)),
    };
    let started = Instant::now();
    let refused = cluster.operation(leader, promote.clone()).await;
    let took = started.elapsed();
    let message = refused
        .expect_err("a spare that cannot catch up was promoted")
        .to_string();
    assert!(
        message.contains("is not caught up after 10 s") && message.contains("entries behind"),
        "{message}"
    );
    assert!(took < Duration::from_secs(15), "refused after {took:?}");
    let voters = with_role(&cluster.members_via(leader).await?, "database");
    assert!(!voters.contains(&name(spare)), "{voters:?}");
    assert!(voters.contains(&name(replaced)), "{voters:?}");

    tracing::info!("--- reachable again, it is promoted");
    cluster.heal();
    cluster.operation(leader, promote).await?;
    let voters = with_role(&cluster.members_via(leader).await?, "database");
    assert!(voters.contains(&name(spare)), "{voters:?}");
    assert!(!voters.contains(&name(replaced)), "{voters:?}");
    Ok(())
}
