//! Recovery from quorum loss: a surviving member becomes the only voter and serves again.

use std::time::Duration;

use anyhow::{anyhow, Result};
use openraft::BasicNode;
use starling_runtime::datadir::DataDir;
use starling_runtime::Operation;
use starling_store::recover::{recover_as_sole_voter, Recovery};
use starling_tests::{init_tracing, wait_for, with_role, TestCluster};

/// Goal: after losing every member but m1 for good, `recover-from-quorum-loss` on m1 gives back
/// a cluster that reads what it had and takes writes, with m1 leading alone.
/// Method: three members, write `user.before=1`, stop all three, recover m1's database as the
/// only voter (its id and address from `member.json`), restart m1 alone, then read, write, and
/// look at the roles through m1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivor_recovers_from_quorum_loss_and_serves_alone() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(3).await?;
    tracing::info!("--- write, then lose all three members");
    let before = Operation::ConfigSet {
        key: "user.before".into(),
        value: "1".into(),
    };
    cluster.client(0).await?.operation(before).await?;
    for index in 0..3 {
        cluster.stop(index).await;
    }

    tracing::info!("--- recover m1 as the only voter");
    let recovery = recover_member(&cluster, 0).await?;
    tracing::info!(?recovery, "recovered");
    assert_eq!(recovery.members, 3, "the lost members stay listed");

    tracing::info!("--- restart m1 alone: it reads, writes and leads");
    cluster.restart(0).await?;
    let client = cluster.client(0).await?;
    let value = client
        .operation(Operation::ConfigGet {
            key: "user.before".into(),
        })
        .await?;
    assert_eq!(value, "1");
    let after = Operation::ConfigSet {
        key: "user.after".into(),
        value: "2".into(),
    };
    tokio::time::timeout(Duration::from_secs(5), client.operation(after))
        .await
        .map_err(|_| anyhow!("the write after recovery did not commit within 5 s"))??;
    let members = wait_for("m1 to lead alone", Duration::from_secs(10), || async {
        let members = cluster.members_via(0).await.ok()?;
        (with_role(&members, "database-leader") == ["m1"]).then_some(members)
    })
    .await?;
    assert_eq!(with_role(&members, "database"), ["m1"]);
    Ok(())
}

/// Runs the recovery on member `index`'s database once its stopped tasks have let go of it.
async fn recover_member(cluster: &TestCluster, index: usize) -> Result<Recovery> {
    let dir = cluster.dir(index);
    let member = DataDir::new(&dir).load_member()?;
    let node = BasicNode {
        addr: member.address,
    };
    // LMDB allows one environment per path and process: the stopped member's last tasks may
    // still hold it for a moment, as `TestCluster::restart` also allows for.
    wait_for(
        "the stopped member to release its database",
        Duration::from_secs(10),
        || async {
            match recover_as_sole_voter(&dir.join("db"), member.id, node.clone()) {
                Ok(recovery) => Some(Ok(recovery)),
                Err(starling_store::Error::Lmdb(error)) => {
                    tracing::debug!(%error, "recovery attempt");
                    None
                }
                Err(error) => Some(Err(error)),
            }
        },
    )
    .await?
    .map_err(Into::into)
}
