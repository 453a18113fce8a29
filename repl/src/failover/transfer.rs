//! `bench-failover --transfer`: leadership moved on purpose, with a writer running.
//!
//! Each run asks the leader to hand leadership to another voter (`cluster.transfer_leadership`)
//! while one writer writes one key after another through a follower that is neither. Three
//! figures per run: how long the transfer took (request to answer, which comes once the new
//! leader leads), the longest write that overlapped it, and the writes that failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use starling_runtime::{Client, Operation};

use super::{member_name, with_role, Cluster};

/// A write the writer made: when it started and ended, and whether it failed.
struct Write {
    started: Instant,
    ended: Instant,
    failed: Option<String>,
}

/// One run's figures.
pub(super) struct TransferRun {
    /// Request to answer, in seconds.
    pub(super) transfer: f64,
    /// The longest write that overlapped the transfer, in seconds.
    pub(super) longest_write: f64,
    /// Writes that failed during the run.
    pub(super) failed: Vec<String>,
}

/// One transfer run.
pub(super) async fn run(cluster: &Cluster) -> Result<TransferRun> {
    let members = cluster.members().await?;
    let leader = cluster.leader().await?;
    let voters = with_role(&members, "database");
    let target = voters
        .iter()
        .find(|name| **name != member_name(leader))
        .cloned()
        .ok_or_else(|| anyhow!("no voter besides the leader"))?;
    let follower = cluster
        .live()
        .find(|index| *index != leader && member_name(*index) != target)
        .ok_or_else(|| anyhow!("no member besides the leader and the target"))?;
    let writer_client = Client::local(&cluster.member_dir(follower)).await?;
    let leader_client = Client::local(&cluster.member_dir(leader)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let writing = {
        let stop = stop.clone();
        let writes = writes.clone();
        tokio::spawn(async move {
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = writer_client
                    .operation(Operation::ConfigSet {
                        key: "user.transfer".to_string(),
                        value: sequence.to_string(),
                    })
                    .await;
                sequence += 1;
                let write = Write {
                    started,
                    ended: Instant::now(),
                    failed: result.err().map(|error| error.to_string()),
                };
                writes.lock().unwrap_or_else(|p| p.into_inner()).push(write);
            }
            writer_client.close();
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let asked = Instant::now();
    let answer = leader_client
        .operation(Operation::ClusterTransferLeadership {
            name: Some(target.clone()),
        })
        .await
        .context("the transfer")?;
    let answered = Instant::now();
    leader_client.close();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writing.await?;
    if answer["leader"] != Value::String(target.clone()) {
        return Err(anyhow!("asked for {target}, the leader is now {answer}"));
    }

    let writes = writes.lock().unwrap_or_else(|p| p.into_inner());
    let longest_write = writes
        .iter()
        .filter(|write| write.started <= answered && write.ended >= asked)
        .map(|write| (write.ended - write.started).as_secs_f64())
        .fold(0.0, f64::max);
    Ok(TransferRun {
        transfer: (answered - asked).as_secs_f64(),
        longest_write,
        failed: writes
            .iter()
            .filter_map(|write| write.failed.clone())
            .collect(),
    })
}
