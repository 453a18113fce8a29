//! `bench-failover --partition`: a real network partition instead of a crash.
//!
//! Members listen on loopback addresses of their own (127.77.0.N), so `iptables` can drop the
//! packets between two members and nothing else. Two figures per run:
//!
//! 1. **Leader cut off → next acknowledged write**: every packet between the leader's address
//!    and the others' is dropped (a pulled cable: nothing answers, not even "port
//!    unreachable"), then writes go through a member of the majority as in the leader-kill run.
//! 2. **Write in a cut-off minority → error**: a write sent to the cut-off old leader, whose
//!    answer must be the quorum error, quickly.
//!
//! The rules live in a chain of their own, removed after each run (and when the run fails).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use starling_runtime::{Client, Operation};

use super::{member_name, write_until_acknowledged, Cluster};

/// The loopback address of member `index` when partitions are measured.
pub(super) fn member_ip(index: usize) -> String {
    format!("127.77.0.{}", index + 1)
}

/// One partition run: (cut → acknowledged write, minority write → error), in seconds.
pub(super) async fn run(
    cluster: &mut Cluster,
    deadline: Duration,
) -> Result<(Option<f64>, Option<f64>)> {
    let leader = cluster.leader().await?;
    let writer = cluster
        .live()
        .find(|&index| index != leader)
        .ok_or_else(|| anyhow!("no member besides the leader is running"))?;
    let client = Client::local(&cluster.member_dir(writer)).await?;
    let old_leader = Client::local(&cluster.member_dir(leader)).await?;
    // Warm the forwarding path: the measured write is forwarded over an open connection.
    client
        .operation(set("user.partition", "warm"))
        .await
        .context("a write before the partition")?;
    let chain = Chain::new()?;
    for other in cluster.live().filter(|&index| index != leader) {
        chain.cut(&member_ip(leader), &member_ip(other))?;
    }
    let cut_at = Instant::now();
    let acknowledged = write_until_acknowledged(&client, cut_at, deadline).await;
    let asked_at = Instant::now();
    let refused = match old_leader
        .operation(set("user.partition", "minority"))
        .await
    {
        Ok(_) => bail!("the cut-off leader acknowledged a write"),
        Err(_) => Some(asked_at.elapsed().as_secs_f64()),
    };
    drop(chain);
    client.close();
    old_leader.close();
    println!(
        "partition: {} cut off, write through {}: {}; write through the cut-off member refused after {}",
        member_name(leader),
        member_name(writer),
        super::describe(acknowledged),
        super::describe(refused)
    );
    cluster.settle(deadline).await?;
    Ok((acknowledged, refused))
}

fn set(key: &str, value: &str) -> Operation {
    Operation::ConfigSet {
        key: key.into(),
        value: value.into(),
    }
}

/// An iptables chain of DROP rules hooked into INPUT, removed on drop.
struct Chain {
    name: String,
}

impl Chain {
    fn new() -> Result<Chain> {
        let name = format!("STARLING-BENCH-{}", std::process::id());
        iptables(&["-N", &name]).context("--partition needs root and iptables")?;
        let chain = Chain { name };
        iptables(&["-I", "INPUT", "-j", &chain.name])?;
        Ok(chain)
    }

    fn cut(&self, a: &str, b: &str) -> Result<()> {
        iptables(&["-A", &self.name, "-s", a, "-d", b, "-j", "DROP"])?;
        iptables(&["-A", &self.name, "-s", b, "-d", a, "-j", "DROP"])
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for args in [
            vec!["-D", "INPUT", "-j", &self.name],
            vec!["-F", &self.name],
            vec!["-X", &self.name],
        ] {
            let _ = iptables(&args);
        }
    }
}

fn iptables(args: &[&str]) -> Result<()> {
    let output = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
