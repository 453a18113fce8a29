//! `starling bench-images`: an image imported into member processes and copied to the others.
//!
//! Starts `--members` member processes and measures, with uncompressible images of
//! `--size-mib` MiB: an import (the client's upload, hashing, the durable copy); one copy
//! alone (`images.copy_to`) to each of up to three members in turn, each against the floor
//! measured just before it between the same two members (the same number of bytes over a raw
//! QUIC stream, no disk); one holder to every member
//! (`images_minimal_replica = -1`), against one copy; an import to 3 holders; a small image's
//! import to 3 holders (LXD's figure); an export to this client. And the largest rise of a
//! member's peak resident memory during the import and during the copy.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use starling_runtime::images::ops::ImageOperation;
use starling_runtime::{Client, Operation};

use crate::bench::{start_cluster, Processes};

/// Arguments of `starling bench-images`.
#[derive(clap::Args)]
pub struct ImageBenchArgs {
    /// Member processes to start (at least 3).
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Size of the image, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: usize,
    /// Keep the members' data and logs (their path is printed) instead of deleting them.
    #[arg(long)]
    keep: bool,
}

/// Adds a file `name` holding `bytes` to a tarball.
fn append<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, bytes)?;
    Ok(())
}

/// Writes a plain `.tar` image with an uncompressible rootfs file of `mib` MiB; `seed` makes
/// each image different.
fn write_image(path: &Path, mib: usize, seed: u64) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    let metadata = format!(
        "architecture: {}\ncreation_date: 1700000000\nproperties:\n  description: bench\n",
        std::env::consts::ARCH
    );
    append(&mut builder, "metadata.yaml", metadata.as_bytes())?;
    // A cheap generator is enough: the bytes only have to defeat compression.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut bytes = vec![0u8; mib << 20];
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = state.to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    append(&mut builder, "rootfs/blob", &bytes)?;
    builder.into_inner()?;
    Ok(())
}

/// Polls the image's record until `count` members hold it, at most `limit`.
async fn wait_locations(
    client: &Client,
    fingerprint: &str,
    count: usize,
    limit: Duration,
) -> Result<f64> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let record = client
            .operation(Operation::Image(ImageOperation::Get {
                reference: fingerprint.to_string(),
            }))
            .await?;
        let held = record["locations"].as_array().map_or(0, Vec::len);
        if held >= count {
            return Ok(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("{count} members did not hold the image within {limit:?}")
}

/// The members' resident memory, read from `/proc`: the peak since [`reset_peaks`] and now.
struct Memory {
    pids: Vec<u32>,
    before: Vec<u64>,
}

impl Memory {
    /// Starts a measurement: resets each member's peak and notes its resident size.
    fn start(pids: &[u32]) -> Memory {
        for pid in pids {
            // "5" resets the peak resident size (VmHWM) to the current one.
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        let before = pids.iter().map(|pid| status_kib(*pid, "VmRSS:")).collect();
        Memory {
            pids: pids.to_vec(),
            before,
        }
    }

    /// The largest rise of a member's peak resident size since `start`, in MiB.
    fn largest_rise_mib(&self) -> f64 {
        self.pids
            .iter()
            .zip(&self.before)
            .map(|(pid, before)| status_kib(*pid, "VmHWM:").saturating_sub(*before))
            .max()
            .unwrap_or(0) as f64
            / 1024.0
    }
}

/// CPU seconds (user and system) the members used so far, from `/proc/PID/stat`.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command name (which may hold spaces) start at its closing ')'.
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| {
                fields
                    .get(n)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            // utime and stime are fields 14 and 15 of stat: 12 and 13 after the ')'.
            (field(11) + field(12)) / ticks_per_second
        })
        .sum()
}

/// A `/proc/PID/status` figure in KiB (0 when unreadable).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

async fn set_minimum(client: &Client, value: &str) -> Result<()> {
    client
        .operation(Operation::ConfigSet {
            key: "cluster.images_minimal_replica".into(),
            value: value.into(),
        })
        .await?;
    Ok(())
}

/// Imports `path` through `client`; answers the fingerprint and the seconds taken.
async fn import(client: &Client, path: &Path) -> Result<(String, f64)> {
    let started = Instant::now();
    let answer = client.upload_image(path, &[], false, |_, _| {}).await?;
    let seconds = started.elapsed().as_secs_f64();
    let fingerprint = answer["fingerprint"]
        .as_str()
        .ok_or_else(|| anyhow!("the import answered no fingerprint"))?
        .to_string();
    Ok((fingerprint, seconds))
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &ImageBenchArgs) -> Result<()> {
    if args.members < 3 {
        bail!("--members must be at least 3");
    }
    let mut processes = Processes::in_temp_dir("bench-images", args.keep)?;
    let dir = processes.dir.clone();
    let exe = std::env::current_exe()?;
    start_cluster(&mut processes, &dir, args.members, &exe, None).await?;
    let pids: Vec<u32> = processes.children.iter().map(|child| child.id()).collect();
    let pids_for_cpu = pids.clone();
    let bytes = (args.size_mib as u64) << 20;
    let mib = |seconds: f64| args.size_mib as f64 / seconds;
    let client = Client::local(&dir.join("m1")).await?;
    let limit = Duration::from_secs(900);
    println!(
        "Starling images: {} member processes on loopback, {} MiB images (uncompressible)",
        args.members, args.size_mib
    );
    let mut rows: Vec<(String, f64, Option<f64>, f64)> = Vec::new();
    let mut cpu_mark = cpu_seconds(&pids);
    let mut cpu_used = move || {
        let now = cpu_seconds(&pids_for_cpu);
        let used = now - cpu_mark;
        cpu_mark = now;
        used
    };

    // One copy alone, to each of up to three members in turn, each right after the floor
    // between the same two members: the same bytes over a raw QUIC stream, no disk. The floor
    // moves by a third from one run to the next here, so each copy is compared with the
    // floor measured next to it.
    set_minimum(&client, "1").await?;
    let image = dir.join("one.tar");
    write_image(&image, args.size_mib, 1)?;
    let memory = Memory::start(&pids);
    let (one, seconds) = import(&client, &image).await?;
    let import_rise = memory.largest_rise_mib();
    rows.push((
        "import (client upload, hash, durable copy)".into(),
        seconds,
        Some(mib(seconds)),
        cpu_used(),
    ));
    let targets: Vec<String> = (2..=args.members.min(4))
        .map(|index| format!("m{index}"))
        .collect();
    let memory = Memory::start(&pids);
    let (mut floors, mut copies, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor_cpu, mut copy_cpu) = (0.0, 0.0);
    for target in &targets {
        let receiver = Client::local(&dir.join(target)).await?;
        let (got, floor) = receiver.stream_probe_from("m1", bytes).await?;
        receiver.close();
        if got != bytes {
            bail!("the stream probe brought {got} bytes, not {bytes}");
        }
        floor_cpu += cpu_used();
        let started = Instant::now();
        client
            .operation(Operation::Image(ImageOperation::CopyTo {
                reference: one.clone(),
                member: target.clone(),
            }))
            .await?;
        let copy = started.elapsed().as_secs_f64();
        copy_cpu += cpu_used();
        floors.push(floor);
        copies.push(copy);
        ratios.push(floor / copy);
    }
    let copy_rise = memory.largest_rise_mib();
    let runs = targets.len() as f64;
    let floor = crate::bench::median(floors.iter().copied());
    let single = crate::bench::median(copies.iter().copied());
    let ratio = crate::bench::median(ratios.iter().copied());
    let worst_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let pairs = format!("m1 → {}", targets.join(", "));
    rows.push((
        format!("floor: raw QUIC stream {pairs} (median)"),
        floor,
        Some(mib(floor)),
        floor_cpu / runs,
    ));
    let one_copy_cpu = copy_cpu / runs;
    rows.push((
        format!("one copy {pairs}, durable (median)"),
        single,
        Some(mib(single)),
        one_copy_cpu,
    ));

    // From one holder to every member (the first image gone, so it is the only one copied).
    client
        .operation(Operation::Image(ImageOperation::Delete {
            reference: one.clone(),
        }))
        .await?;
    let image = dir.join("all.tar");
    write_image(&image, args.size_mib, 2)?;
    let (all, _) = import(&client, &image).await?;
    cpu_used();
    set_minimum(&client, "-1").await?;
    let every = wait_locations(&client, &all, args.members, limit).await?;
    rows.push((
        format!("1 → {} holders ({} copies)", args.members, args.members - 1),
        every,
        None,
        cpu_used(),
    ));

    // The default minimum (3) after an import.
    set_minimum(&client, "3").await?;
    let image = dir.join("three.tar");
    write_image(&image, args.size_mib, 3)?;
    let started = Instant::now();
    let (three, _) = import(&client, &image).await?;
    wait_locations(&client, &three, 3, limit).await?;
    let to_three = started.elapsed().as_secs_f64();
    rows.push(("import → 3 holders".into(), to_three, None, cpu_used()));

    // A small image, as LXD's busybox one.
    let image = dir.join("small.tar");
    write_image(&image, 2, 4)?;
    let started = Instant::now();
    let (small, _) = import(&client, &image).await?;
    wait_locations(&client, &small, 3, limit).await?;
    let small_three = started.elapsed().as_secs_f64();
    rows.push((
        "2 MiB image: import → 3 holders".into(),
        small_three,
        None,
        cpu_used(),
    ));

    // The floor to a client, through the export path.
    let exported = dir.join("exported.tar");
    let started = Instant::now();
    client.download_image(&all, &all, &exported, |_| {}).await?;
    let export = started.elapsed().as_secs_f64();
    rows.push((
        "export from a holder to this client".into(),
        export,
        Some(mib(export)),
        cpu_used(),
    ));
    client.close();

    println!(
        "{:<52} {:>9} {:>10} {:>12}",
        "figure", "seconds", "MiB/s", "member CPU s"
    );
    for (figure, seconds, rate, cpu) in &rows {
        let rate = rate.map_or(String::new(), |rate| format!("{rate:.0}"));
        println!("{figure:<52} {seconds:>9.3} {rate:>10} {cpu:>12.2}");
    }
    println!(
        "one copy: {ratio:.2}× the floor measured beside it (median; the worst {worst_ratio:.2}; \
         target ≥ 0.8); {} holders: {:.2}× one copy (target ≤ 2)",
        args.members,
        every / single
    );
    // Every copy decrypts, hashes and writes the whole image on its receiver and encrypts it
    // on its sender: with the CPUs busy, copies in parallel cannot take less than their CPU
    // time spread over every CPU.
    let cpus = crate::cpus() as f64;
    let copies_cpu = (args.members - 1) as f64 * one_copy_cpu;
    println!(
        "bound by CPU: {} copies at one copy's {one_copy_cpu:.2} CPU s on {cpus} CPUs take at \
         least {:.3} s = {:.2}× one copy (one copy keeps {:.2} CPUs busy)",
        args.members - 1,
        copies_cpu / cpus,
        copies_cpu / cpus / single,
        one_copy_cpu / single
    );
    println!(
        "largest rise of a member's peak RSS: import {import_rise:.1} MiB, copy {copy_rise:.1} MiB \
         (target ≤ 64 MiB for 1 GiB: run with --size-mib 1024)"
    );
    println!(
        "LXD 5.0 here imports a small busybox image in 0.64 s; Starling: import and 3 holders in \
         {small_three:.3} s"
    );
    Ok(())
}
