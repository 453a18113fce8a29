//! `starling bench`: write and read latency on a cluster of real member processes.
//!
//! Starts `--members` `starling daemon` processes on loopback with durable storage, then for
//! 1, 16 and 64 concurrent writers sends `config.set user.bench.N` to the leader for a fixed
//! time and prints writes/s, p50 and p99. Then a linearizable read figure.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use starling_runtime::{Client, Operation};

/// Arguments of `starling bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Member processes to start.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Keep the members' data and logs (their path is printed) instead of deleting them.
    #[arg(long)]
    keep: bool,
    /// Concurrent writer counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    writers: Vec<usize>,
}

/// Member processes, killed on drop.
struct Processes {
    children: Vec<Child>,
    dir: PathBuf,
    keep: bool,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep {
            eprintln!(
                "benchmark data and member logs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &BenchArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("starling-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut processes = Processes {
        children: Vec::new(),
        dir: dir.clone(),
        keep: args.keep,
    };
    let joins = start_cluster(&mut processes, &dir, args.members).await?;
    let leader = leader_dir(&dir, args.members).await?;
    let joins: Vec<String> = joins
        .iter()
        .map(|seconds| format!("{:.3} s", seconds))
        .collect();
    println!(
        "join, token to member serving (process start included): {}",
        joins.join(", ")
    );
    println!(
        "cluster of {} member processes ready; writing to the leader",
        args.members
    );
    println!(
        "{:>8} {:>12} {:>10} {:>10}",
        "writers", "writes/s", "p50 ms", "p99 ms"
    );
    for &writers in &args.writers {
        let (count, latencies) =
            write_load(&leader, writers, Duration::from_secs(args.seconds)).await?;
        let rate = count as f64 / args.seconds as f64;
        println!(
            "{writers:>8} {rate:>12.0} {:>10.3} {:>10.3}",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99)
        );
    }
    let reads = read_load(&leader, Duration::from_secs(args.seconds.min(3))).await?;
    println!(
        "linearizable read (1 reader): p50 {:.3} ms, p99 {:.3} ms",
        percentile(&reads, 0.50),
        percentile(&reads, 0.99)
    );
    Ok(())
}

/// Starts the members; returns how long each join took, from its token to the new member
/// answering a request.
async fn start_cluster(processes: &mut Processes, dir: &Path, members: usize) -> Result<Vec<f64>> {
    let mut joins = Vec::new();
    let exe = std::env::current_exe()?;
    let first = dir.join("m1");
    let listen = crate::demo::free_address()?;
    let args = ["daemon", "--name", "m1", "--listen", &listen, "--bootstrap"];
    processes.children.push(spawn(&exe, &first, &args)?);
    wait_ready(&first).await?;
    let admin = Client::local(&first).await?;
    for index in 2..=members {
        let name = format!("m{index}");
        let started = Instant::now();
        let token = admin.join_token(&name).await?;
        let listen = crate::demo::free_address()?;
        let args = [
            "daemon", "--name", &name, "--listen", &listen, "--join", &token,
        ];
        processes
            .children
            .push(spawn(&exe, &dir.join(&name), &args)?);
        wait_ready(&dir.join(&name)).await?;
        joins.push(started.elapsed().as_secs_f64());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let members = admin.operation(Operation::ClusterMembers).await?;
        let voters = members.as_array().map_or(0, |list| {
            list.iter()
                .filter(|member| {
                    member["roles"]
                        .as_array()
                        .is_some_and(|roles| roles.iter().any(|role| role == "database"))
                })
                .count()
        });
        if voters == members.as_array().map_or(0, Vec::len).min(3) {
            admin.close();
            return Ok(joins);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the benchmark cluster did not settle its voters in 30 s")
}

fn spawn(exe: &Path, dir: &Path, args: &[&str]) -> Result<Child> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.with_extension("log"))?;
    std::process::Command::new(exe)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

async fn wait_ready(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(client) = Client::local(dir).await {
            let ready = client.operation(Operation::ClusterInfo).await.is_ok();
            client.close();
            if ready {
                return Ok(());
            }
        }
        // Fine-grained: the join figure is read from here.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!(
        "member in {} not ready after 30 s (see {}.log)",
        dir.display(),
        dir.display()
    )
}

async fn leader_dir(dir: &Path, members: usize) -> Result<PathBuf> {
    let client = Client::local(&dir.join("m1")).await?;
    let info = client.operation(Operation::ClusterInfo).await?;
    client.close();
    let leader = info["leader"]
        .as_str()
        .ok_or_else(|| anyhow!("no leader"))?;
    (1..=members)
        .map(|index| dir.join(format!("m{index}")))
        .find(|path| path.ends_with(leader))
        .ok_or_else(|| anyhow!("leader {leader} unknown"))
}

/// `writers` concurrent writers for `duration`; returns the write count and latencies in ms.
async fn write_load(
    leader: &Path,
    writers: usize,
    duration: Duration,
) -> Result<(usize, Vec<f64>)> {
    let connections = writers.div_ceil(16).max(1);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Arc::new(Client::local(leader).await?));
    }
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let client = clients[writer % connections].clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut sequence = 0u64;
                while Instant::now() < deadline {
                    sequence += 1;
                    let operation = Operation::ConfigSet {
                        key: format!("user.bench.{writer}"),
                        value: sequence.to_string(),
                    };
                    let started = Instant::now();
                    client.operation(operation).await?;
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<_, starling_runtime::Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    for client in clients {
        client.close();
    }
    Ok((all.len(), all))
}

async fn read_load(leader: &Path, duration: Duration) -> Result<Vec<f64>> {
    let client = Client::local(leader).await?;
    let deadline = Instant::now() + duration;
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        client
            .operation(Operation::ConfigGet {
                key: "user.bench.0".into(),
            })
            .await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    client.close();
    Ok(latencies)
}

fn percentile(latencies: &[f64], fraction: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}
