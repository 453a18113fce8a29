//! `starling bench-evacuation`: moves, evacuations and restores of real containers on a local
//! cluster of member processes, timed, beside the floor measured in the same run (stopping and
//! starting the same instances in place, which any evacuation must at least do).
//!
//! Needs root and `/bin/busybox` (static). Figures are printed; nothing is asserted.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use starling_runtime::evacuation::ops::EvacuationOperation;
use starling_runtime::images::ops::ImageOperation;
use starling_runtime::instances::ops::{CreateRequest, InstanceOperation};
use starling_runtime::{Client, Operation};

use crate::bench::{start_cluster, Processes};

/// Arguments of `starling bench-evacuation`.
#[derive(clap::Args)]
pub struct EvacuationBenchArgs {
    /// Running instances on the member evacuated in the large round.
    #[arg(long, default_value_t = 100)]
    instances: usize,
    /// Moves of a stopped instance to time (the median is printed).
    #[arg(long, default_value_t = 7)]
    moves: usize,
    /// Keep the data directories and member logs.
    #[arg(long)]
    keep: bool,
    /// Only the committed placements (`init` many at once), three rounds.
    #[arg(long)]
    placements_only: bool,
}

/// An init that ends at once on the stop signal (SIGPWR) or SIGTERM.
const QUICK_INIT: &[u8] =
    b"#!/bin/sh\ntrap 'exit 0' PWR TERM\nwhile :; do sleep 3600 & wait $!; done\n";

/// A busybox image: `/sbin/quick-init` (above) and busybox's own init (`/sbin/init`).
fn write_image(path: &Path) -> Result<()> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (install busybox-static)")?;
    let file = std::fs::File::create(path)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: &str| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        if kind.is_symlink() {
            builder.append_link(&mut header, path, link)
        } else {
            builder.append_data(&mut header, path, data)
        }
    };
    let metadata = format!(
        "architecture: {}\ncreation_date: 1700000000\nproperties:\n  description: bench busybox\n",
        std::env::consts::ARCH
    );
    add(
        "metadata.yaml",
        tar::EntryType::Regular,
        0o644,
        metadata.as_bytes(),
        "",
    )?;
    for dir in [
        "rootfs",
        "rootfs/bin",
        "rootfs/sbin",
        "rootfs/etc",
        "rootfs/tmp",
    ] {
        add(dir, tar::EntryType::Directory, 0o755, b"", "")?;
    }
    add(
        "rootfs/bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        "",
    )?;
    for applet in ["sh", "sleep", "true"] {
        add(
            &format!("rootfs/bin/{applet}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            "busybox",
        )?;
    }
    add(
        "rootfs/sbin/init",
        tar::EntryType::Symlink,
        0o777,
        b"",
        "../bin/busybox",
    )?;
    add(
        "rootfs/sbin/quick-init",
        tar::EntryType::Regular,
        0o755,
        QUICK_INIT,
        "",
    )?;
    let inittab = b"::sysinit:/bin/true\n::respawn:/bin/sleep 3600\n";
    add(
        "rootfs/etc/inittab",
        tar::EntryType::Regular,
        0o644,
        inittab,
        "",
    )?;
    builder.into_inner()?.flush()?;
    Ok(())
}

async fn create(client: &Client, name: &str, target: &str, quick: bool, start: bool) -> Result<()> {
    let mut config = std::collections::BTreeMap::new();
    if quick {
        config.insert("starling.init".to_string(), "/sbin/quick-init".to_string());
    }
    let request = CreateRequest {
        project: "default".into(),
        name: Some(name.to_string()),
        image: "bench".into(),
        target: Some(target.to_string()),
        profiles: None,
        config,
        devices: Default::default(),
        description: String::new(),
        start,
        ephemeral: false,
    };
    client
        .operation(Operation::Instance(InstanceOperation::Create(request)))
        .await
        .with_context(|| format!("creating {name}"))?;
    Ok(())
}

async fn evacuation(client: &Client, member: &str, restore: bool) -> Result<f64> {
    let operation = if restore {
        EvacuationOperation::Restore {
            member: member.to_string(),
            action: None,
        }
    } else {
        EvacuationOperation::Evacuate {
            member: member.to_string(),
            action: None,
        }
    };
    let started = Instant::now();
    let summary = client.operation(Operation::Evacuation(operation)).await?;
    let seconds = started.elapsed().as_secs_f64();
    if summary["failed"]
        .as_array()
        .is_some_and(|failed| !failed.is_empty())
    {
        bail!(
            "the {} failed for some instances: {summary}",
            if restore { "restore" } else { "evacuation" }
        );
    }
    Ok(seconds)
}

/// Stops then starts `names` in place, `parallel` at a time; the seconds it took.
async fn stop_start_in_place(client: &Client, names: &[String]) -> Result<f64> {
    use futures::StreamExt;
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(names.iter().cloned())
        .map(|name| async move {
            let stop = InstanceOperation::Stop {
                project: "default".into(),
                name: name.clone(),
                force: false,
                timeout_s: 30,
            };
            client.operation(Operation::Instance(stop)).await?;
            let start = InstanceOperation::Start {
                project: "default".into(),
                name,
            };
            client.operation(Operation::Instance(start)).await?;
            Ok(())
        })
        .buffer_unordered(4)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(started.elapsed().as_secs_f64())
}

async fn delete_all(client: &Client, names: &[String]) -> Result<()> {
    for name in names {
        let delete = InstanceOperation::Delete {
            project: "default".into(),
            name: name.clone(),
            force: true,
        };
        client.operation(Operation::Instance(delete)).await?;
    }
    Ok(())
}

/// A benchmark's cluster of real containers: 3 member processes (needs root), a client of m1,
/// and the busybox image above imported as `bench` on every member; answers its size too.
pub(crate) async fn container_cluster(bench: &str, keep: bool) -> Result<(Processes, Client, u64)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{bench} runs real containers: it needs root");
    }
    let mut processes = Processes::in_temp_dir(bench, keep)?;
    let dir = processes.dir.clone();
    let exe = std::env::current_exe()?;
    start_cluster(&mut processes, &dir, 3, &exe, None).await?;
    let client = Client::local(&dir.join("m1")).await?;
    client
        .operation(Operation::ConfigSet {
            key: "cluster.images_minimal_replica".into(),
            value: "-1".into(),
        })
        .await?;
    let image = dir.join("bench.tar");
    write_image(&image)?;
    let answer = client
        .upload_image(&image, &["bench".to_string()], false, |_, _| {})
        .await?;
    let size = answer["size"].as_u64().unwrap_or(0);
    // The import answers once the image is on m1; its copies to m2 and m3 follow. Timings
    // start once every member holds it, so that no figure counts the copies.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let get = ImageOperation::Get {
            reference: "bench".into(),
        };
        let image = client.operation(Operation::Image(get)).await?;
        let held = image["locations"].as_array().map_or(0, Vec::len);
        if held == 3 {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the bench image reached {held} of 3 members in 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok((processes, client, size))
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &EvacuationBenchArgs) -> Result<()> {
    let (processes, client, size) = container_cluster("bench-evacuation", args.keep).await?;
    let members: Vec<u32> = processes.children.iter().map(|child| child.id()).collect();
    println!("Starling evacuation: 3 member processes on loopback, a {size}-byte busybox image");
    let mut rows: Vec<(String, f64, String)> = Vec::new();
    if args.placements_only {
        rows.extend(placements(&client, &members, args.instances.max(1) * 2).await?);
        print_rows(&rows);
        return Ok(());
    }

    // Moves of a stopped instance, back and forth.
    create(&client, "mover", "m2", true, false).await?;
    let mut moves = Vec::new();
    for round in 0..args.moves {
        let target = if round % 2 == 0 { "m3" } else { "m2" };
        let operation = InstanceOperation::Move {
            project: "default".into(),
            name: "mover".into(),
            target: target.into(),
        };
        let started = Instant::now();
        client.operation(Operation::Instance(operation)).await?;
        moves.push(started.elapsed().as_secs_f64());
    }
    moves.sort_by(f64::total_cmp);
    rows.push((
        format!("move of a stopped instance (median of {})", args.moves),
        moves[moves.len() / 2],
        "LXD here: 0.83 s; target 0.2 s".into(),
    ));
    delete_all(&client, &["mover".to_string()]).await?;

    // One running instance, each init.
    for (quick, label) in [
        (true, "an init that exits on the stop signal"),
        (false, "busybox init"),
    ] {
        create(&client, "one", "m2", quick, true).await?;
        let floor = stop_start_in_place(&client, &["one".to_string()]).await?;
        rows.push((
            format!("floor: stop + start in place, {label}"),
            floor,
            String::new(),
        ));
        let evacuate = evacuation(&client, "m2", false).await?;
        let target = if quick {
            "LXD here: 4.5 s; target 1 s"
        } else {
            ""
        };
        rows.push((
            format!("evacuate 1 running instance, {label}"),
            evacuate,
            target.into(),
        ));
        let restore = evacuation(&client, "m2", true).await?;
        let target = if quick {
            "LXD here: 4.6 s; target 1 s"
        } else {
            ""
        };
        rows.push((format!("restore it, {label}"), restore, target.into()));
        delete_all(&client, &["one".to_string()]).await?;
    }

    // Committed placements: `init` (placed, recorded, root file system unpacked, not
    // started), many at once.
    rows.extend(placements(&client, &members, args.instances.max(1) * 2).await?);

    // Many running instances.
    let names: Vec<String> = (0..args.instances)
        .map(|index| format!("c{index}"))
        .collect();
    let launched = Instant::now();
    for name in &names {
        create(&client, name, "m2", true, true).await?;
    }
    let launch = launched.elapsed().as_secs_f64();
    rows.push((
        format!("launch {} instances one by one", names.len()),
        launch,
        String::new(),
    ));
    let floor = stop_start_in_place(&client, &names).await?;
    rows.push((
        format!("floor: stop + start {} in place, 4 at a time", names.len()),
        floor,
        String::new(),
    ));
    let evacuate = evacuation(&client, "m2", false).await?;
    rows.push((
        format!("evacuate {} running instances", names.len()),
        evacuate,
        "target 10 s for 100".into(),
    ));
    let restore = evacuation(&client, "m2", true).await?;
    rows.push((
        format!("restore {} instances", names.len()),
        restore,
        String::new(),
    ));
    delete_all(&client, &names).await?;
    print_rows(&rows);
    Ok(())
}

/// The CPU time (user and system) the processes `pids` used so far, in seconds (0 for one
/// that cannot be read).
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // The fields after the command name (which may hold spaces) in parentheses:
            // utime and stime are the 14th and 15th of the line, the 12th and 13th after it.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after.split_whitespace().collect();
            let field = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
            field(11).unwrap_or(0.0) + field(12).unwrap_or(0.0)
        })
        .sum::<f64>()
        / ticks
}

fn print_rows(rows: &[(String, f64, String)]) {
    println!("{:<62} {:>9}  reference", "operation", "seconds");
    for (what, seconds, reference) in rows {
        println!("{what:<62} {seconds:>9.3}  {reference}");
    }
}

/// `count` instances `init`ed 32 at a time (placed, recorded, root file system made, not
/// started), three rounds of new names (so the cluster holds `count`, then twice and three
/// times as many), all deleted at the end: a row per round and their median rate. Rounds
/// never follow deletes: on ext4 without a journal, inode allocation skips every inode freed in
/// the last minute (six while its inode table block is dirty), which would time the file
/// system's recycling, not placements. The same holds across runs: give the file system a
/// few minutes of rest after a run that deleted many containers.
async fn placements(
    client: &Client,
    members: &[u32],
    count: usize,
) -> Result<Vec<(String, f64, String)>> {
    use futures::StreamExt;
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    let mut made = Vec::new();
    for round in 1..=3 {
        let names: Vec<String> = (0..count)
            .map(|index| format!("p{round}-{index}"))
            .collect();
        let cpu_before = cpu_seconds(members);
        let started = Instant::now();
        let created: Vec<Result<()>> = futures::stream::iter(names.iter().cloned())
            .map(|name| async move {
                let request = CreateRequest {
                    project: "default".into(),
                    name: Some(name),
                    image: "bench".into(),
                    target: None,
                    profiles: None,
                    config: Default::default(),
                    devices: Default::default(),
                    description: String::new(),
                    start: false,
                    ephemeral: false,
                };
                client
                    .operation(Operation::Instance(InstanceOperation::Create(request)))
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        created.into_iter().collect::<Result<Vec<()>>>()?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu_ms = (cpu_seconds(members) - cpu_before) * 1000.0 / count as f64;
        let rate = count as f64 / seconds;
        rates.push(rate);
        rows.push((
            format!(
                "init {count}, 32 at a time, round {round}: {rate:.0}/s, members' CPU {cpu_ms:.2} ms each"
            ),
            seconds,
            String::new(),
        ));
        made.extend(names);
    }
    // What the instances cost the members while nothing happens (their watchers).
    let cpu_before = cpu_seconds(members);
    let rest = std::time::Duration::from_secs(3);
    tokio::time::sleep(rest).await;
    let busy = (cpu_seconds(members) - cpu_before) / rest.as_secs_f64();
    rows.push((
        format!(
            "members' CPU at rest with {} instances: {:.0}% of a core",
            made.len(),
            busy * 100.0
        ),
        0.0,
        String::new(),
    ));
    delete_all(client, &made).await?;
    rates.sort_by(f64::total_cmp);
    rows.push((
        format!("placements/s, median of the 3 rounds: {:.0}", rates[1]),
        0.0,
        "target 1,000 placements/s".into(),
    ));
    Ok(rows)
}
