//! `starling bench-images`: an image imported into member processes and copied to the others.
//!
//! Starts `--members` member processes, writes an uncompressible image of `--size-mib` MiB,
//! and measures: the import (the CLI's upload, hashing and the durable copy on the member);
//! the time until `cluster.images_minimal_replica` (3) members hold it; then, after setting it
//! to `-1`, until every member does. As the floor, an export of the same image from a holder to
//! this client over the same QUIC transport (no disk `fsync` at the receiving end).

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

/// Writes a plain `.tar` image with an uncompressible rootfs file of `mib` MiB.
fn write_image(path: &Path, mib: usize) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    let metadata = format!(
        "architecture: {}\ncreation_date: 1700000000\nproperties:\n  description: bench\n",
        std::env::consts::ARCH
    );
    append(&mut builder, "metadata.yaml", metadata.as_bytes())?;
    // A cheap generator is enough: the bytes only have to defeat compression.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
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
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{count} members did not hold the image within {limit:?}")
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &ImageBenchArgs) -> Result<()> {
    if args.members < 3 {
        bail!("--members must be at least 3");
    }
    let dir = std::env::temp_dir().join(format!("starling-bench-images-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut processes = Processes {
        children: Vec::new(),
        dir: dir.clone(),
        keep: args.keep,
    };
    let exe = std::env::current_exe()?;
    start_cluster(&mut processes, &dir, args.members, &exe).await?;
    let image = dir.join("bench.tar");
    write_image(&image, args.size_mib)?;
    let size = std::fs::metadata(&image)?.len() as f64;
    let mib = |seconds: f64| size / (1 << 20) as f64 / seconds;
    let client = Client::local(&dir.join("m1")).await?;
    println!(
        "Starling images: {} member processes on loopback, a {} MiB image (uncompressible)",
        args.members, args.size_mib
    );

    let started = Instant::now();
    let answer = client.upload_image(&image, &[], false, |_, _| {}).await?;
    let import = started.elapsed().as_secs_f64();
    let fingerprint = answer["fingerprint"]
        .as_str()
        .ok_or_else(|| anyhow!("the import answered no fingerprint"))?
        .to_string();
    let limit = Duration::from_secs(600);
    let three = wait_locations(&client, &fingerprint, 3, limit).await?;
    client
        .operation(Operation::ConfigSet {
            key: "cluster.images_minimal_replica".into(),
            value: "-1".into(),
        })
        .await?;
    let all = wait_locations(&client, &fingerprint, args.members, limit).await?;

    let exported = dir.join("exported.tar");
    let started = Instant::now();
    client
        .download_image(&fingerprint, &fingerprint, &exported, |_| {})
        .await?;
    let floor = started.elapsed().as_secs_f64();
    client.close();

    println!("{:<52} {:>9} {:>10}", "figure", "seconds", "MiB/s");
    println!(
        "{:<52} {import:>9.3} {:>10.0}",
        "import (upload, hash, durable copy)",
        mib(import)
    );
    println!(
        "{:<52} {three:>9.3} {:>10.0}",
        "import → 3 members hold it (2 copies, in parallel)",
        mib(three)
    );
    println!(
        "{:<52} {all:>9.3} {:>10.0}",
        format!("-1 → all {} members hold it", args.members),
        mib(all)
    );
    println!(
        "{:<52} {floor:>9.3} {:>10.0}",
        "floor: export from a holder to this client",
        mib(floor)
    );
    println!(
        "targets: each copy ≥ 0.8× the floor; 5 copies in ≤ 2× the time of one; \
         LXD 5.0 imports a small busybox image in 0.64 s"
    );
    Ok(())
}
