//! `starling demo`: a local cluster on loopback, under one directory, with the REPL on it.
//!
//! The members run in this process. A second `starling demo --dir DIR` restarts the same
//! cluster from its data.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use starling_runtime::{Client, Member, MemberConfig, RaftTimings, StartMode};

/// Starts (or restarts) `members` members under `dir` and runs the REPL on the first.
pub async fn run(dir: &Path, members: usize, config_dir: &Path) -> Result<()> {
    let members = members.max(1);
    let running = if dir.join("m1").join("member.json").exists() {
        restart(dir).await?
    } else {
        create(dir, members).await?
    };
    println!(
        "Starling demo: {} members under {} (their log: {}). Try `cluster.members()`; `exit` leaves.",
        running.len(),
        dir.display(),
        dir.join("demo.log").display()
    );
    let client = Client::local(&dir.join("m1")).await?;
    let result = crate::console::run(client, config_dir.join("history")).await;
    for member in &running {
        member.shutdown().await;
    }
    result
}

async fn create(dir: &Path, count: usize) -> Result<Vec<Member>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let first = start(
        dir,
        "m1",
        StartMode::Bootstrap {
            name: "m1".into(),
            listen: free_address()?,
        },
    )
    .await?;
    let admin = Client::local(&dir.join("m1")).await?;
    let mut running = vec![first];
    for index in 2..=count {
        let name = format!("m{index}");
        let token = admin.join_token(&name).await?;
        let mode = StartMode::Join {
            name: name.clone(),
            listen: free_address()?,
            token,
            member_config: Vec::new(),
        };
        running.push(start(dir, &name, mode).await?);
    }
    admin.close();
    Ok(running)
}

async fn restart(dir: &Path) -> Result<Vec<Member>> {
    let mut running = Vec::new();
    for index in 1.. {
        let name = format!("m{index}");
        if !dir.join(&name).join("member.json").exists() {
            break;
        }
        running.push(start(dir, &name, StartMode::Restart).await?);
    }
    // Give the members a moment to elect a leader before the REPL's first request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(running)
}

async fn start(dir: &Path, name: &str, mode: StartMode) -> Result<Member> {
    let config = MemberConfig {
        dir: dir.join(name),
        mode,
        timings: RaftTimings::default(),
        store: Default::default(),
    };
    Member::start(config)
        .await
        .with_context(|| format!("starting member {name}"))
}

/// A loopback address with a port that is free right now.
pub fn free_address() -> Result<String> {
    free_address_on("127.0.0.1")
}

/// A free UDP port on loopback address `ip`, as `IP:PORT`.
pub fn free_address_on(ip: &str) -> Result<String> {
    let socket = UdpSocket::bind((ip, 0)).context("finding a free port")?;
    Ok(socket.local_addr()?.to_string())
}
