//! `starling bench-instances`: the latency of `launch` (to `Running`) and of `exec NAME --
//! true`, on a local cluster of member processes with real containers, beside baselines
//! measured in the same run: the same command line running Lua (`exec 'return 1'`: process
//! start, client certificate, QUIC handshake, one request), and `true` run on the host.
//!
//! Needs root and `/bin/busybox` (static). Figures are printed; nothing is asserted.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use starling_runtime::instances::ops::{CreateRequest, InstanceOperation};
use starling_runtime::instances::stream::ExecCall;
use starling_runtime::{Client, Operation};

use crate::bench::median;

/// Arguments of `starling bench-instances`.
#[derive(clap::Args)]
pub struct InstanceBenchArgs {
    /// Rounds timed per figure (the median is printed).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Keep the data directories and member logs.
    #[arg(long)]
    keep: bool,
}

/// Runs the `starling` binary `exe` with `args` against the member at `dir`; the seconds it
/// took. Fails when it fails.
fn time_command(exe: &Path, dir: &Path, args: &[&str]) -> Result<f64> {
    let started = Instant::now();
    let output = Command::new(exe)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .with_context(|| format!("running starling {args:?}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "starling {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(seconds)
}

fn launch_request(name: &str) -> CreateRequest {
    CreateRequest {
        project: "default".into(),
        name: Some(name.to_string()),
        image: "bench".into(),
        target: Some("m2".into()),
        profiles: None,
        config: [("starling.init".to_string(), "/sbin/quick-init".to_string())].into(),
        devices: Default::default(),
        description: String::new(),
        start: true,
        ephemeral: false,
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &InstanceBenchArgs) -> Result<()> {
    let rounds = args.rounds.max(1);
    let (processes, client, _) =
        crate::bench_evacuation::container_cluster("bench-instances", args.keep).await?;
    let dir = processes.dir.clone();
    let exe = std::env::current_exe()?;
    println!(
        "Starling instances: 3 member processes on loopback, instances on m2, median of {rounds}"
    );
    let mut rows: Vec<(String, f64, String)> = Vec::new();

    // Launch to Running, through a connected client.
    let mut launches = Vec::new();
    for round in 0..rounds {
        let name = format!("l{round}");
        let started = Instant::now();
        client
            .operation(Operation::Instance(InstanceOperation::Create(
                launch_request(&name),
            )))
            .await?;
        launches.push(started.elapsed().as_secs_f64());
        client
            .operation(Operation::Instance(InstanceOperation::Delete {
                project: "default".into(),
                name,
                force: true,
            }))
            .await?;
    }
    rows.push((
        "launch a small local image to Running (client connected)".into(),
        median(launches.into_iter()),
        "LXD here: init 0.36-0.48 s + start 0.42 s; target 0.1 s".into(),
    ));

    client
        .operation(Operation::Instance(InstanceOperation::Create(
            launch_request("x"),
        )))
        .await?;
    let (m1, m2) = (dir.join("m1"), dir.join("m2"));
    let mut table: Vec<(&str, Vec<f64>)> = vec![
        ("baseline: `true` run on the host", Vec::new()),
        (
            "baseline: starling exec 'return 1' (Lua, via m2)",
            Vec::new(),
        ),
        ("exec x -- true via m2 (the instance's member)", Vec::new()),
        ("exec x -- true via m1 (relayed to m2)", Vec::new()),
        ("exec x -- true, client connected to m2", Vec::new()),
    ];
    let member_client = Client::local(&m2).await?;
    for _ in 0..rounds {
        let started = Instant::now();
        let status = Command::new("true").status()?;
        anyhow::ensure!(status.success(), "true failed");
        table[0].1.push(started.elapsed().as_secs_f64());
        table[1]
            .1
            .push(time_command(&exe, &m2, &["exec", "return 1"])?);
        table[2]
            .1
            .push(time_command(&exe, &m2, &["exec", "x", "--", "true"])?);
        table[3]
            .1
            .push(time_command(&exe, &m1, &["exec", "x", "--", "true"])?);
        let call = ExecCall {
            project: "default".into(),
            name: "x".into(),
            argv: vec!["true".into()],
            env: Default::default(),
            cwd: None,
        };
        let started = Instant::now();
        let code = member_client.exec_instance(call, |_, _| {}).await?;
        anyhow::ensure!(code == 0, "true exited with {code}");
        table[4].1.push(started.elapsed().as_secs_f64());
    }
    // Containers outlive their member processes (adoption): delete it, or it runs on.
    client
        .operation(Operation::Instance(InstanceOperation::Delete {
            project: "default".into(),
            name: "x".into(),
            force: true,
        }))
        .await?;
    for (what, samples) in table {
        let reference = if what.starts_with("exec x -- true via") {
            "LXD here: 190-280 ms; target 20 ms"
        } else {
            ""
        };
        rows.push((
            what.to_string(),
            median(samples.into_iter()),
            reference.into(),
        ));
    }

    println!("{:<62} {:>9}  reference", "operation", "ms");
    for (what, seconds, reference) in rows {
        println!("{what:<62} {:>9.1}  {reference}", seconds * 1000.0);
    }
    Ok(())
}
