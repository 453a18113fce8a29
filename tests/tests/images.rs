//! Images on real member processes: import, replication to `cluster.images_minimal_replica`
//! members over failure domains, re-replication when a holder goes offline, delete (also on a
//! holder that was down), and every bad input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use starling_tests::processes::ProcessCluster;
use starling_tests::{init_tracing, wait_for};

/// Writes a small LXD image (`metadata.yaml` for `architecture`, a rootfs with a few files) as
/// a `.tar.gz` at `path`; `extra` makes images with different bytes.
fn write_image(path: &Path, architecture: &str, extra: &str) -> Result<()> {
    let metadata = format!(
        "architecture: {architecture}\ncreation_date: 1700000000\nproperties:\n  description: test image {extra}\n  os: busybox\n  release: \"1\"\n"
    );
    let file = std::fs::File::create(path)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    append(&mut builder, "metadata.yaml", metadata.as_bytes())?;
    append(&mut builder, "rootfs/etc/hostname", b"starling\n")?;
    append(&mut builder, "rootfs/etc/extra", extra.as_bytes())?;
    append(
        &mut builder,
        "templates/hostname.tpl",
        b"{{ container.name }}\n",
    )?;
    builder.into_inner()?.finish()?;
    Ok(())
}

/// Adds a file `name` holding `bytes` to an image tarball.
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

/// The machine's architecture, as members report it.
fn machine_architecture() -> String {
    std::env::consts::ARCH.to_string()
}

fn sha256_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(hex::encode(
        ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref(),
    ))
}

/// The image records, through member `via`.
fn images(cluster: &ProcessCluster, via: usize) -> Result<Vec<Value>> {
    let out = cluster.cli_ok(via, &["image", "list", "--format", "json"])?;
    let value: Value = serde_json::from_str(&out).context("image list --format json")?;
    Ok(value.as_array().cloned().unwrap_or_default())
}

fn locations(cluster: &ProcessCluster, via: usize, fingerprint: &str) -> Vec<String> {
    images(cluster, via)
        .unwrap_or_default()
        .into_iter()
        .find(|image| image["fingerprint"] == fingerprint)
        .and_then(|image| image["locations"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|name| name.as_str().map(str::to_string))
        .collect()
}

fn image_file(cluster: &ProcessCluster, index: usize, fingerprint: &str) -> PathBuf {
    cluster.dir(index).join("images").join(fingerprint)
}

fn index_of(name: &str) -> usize {
    name.trim_start_matches('m').parse::<usize>().unwrap_or(1) - 1
}

/// Goal: an import (uploaded by the CLI) is copied to 3 members in 3 failure domains, then to
/// every member with `-1`; every copy, and an export through a member holding none, hashes to
/// the fingerprint; bad input is refused with what is wrong and leaves no file; a delete removes
/// every file, also on a holder that was down during the delete.
/// Method: 5 member processes in domains a, a, b, b, c; import through the CLI of m1; read
/// `image list --format json` and the files on disk; then the bad inputs; then SIGKILL a
/// holder, delete, restart it and watch its file go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_replicate_and_delete() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(5).await?;
    cluster.wait_roles(0, 3, 2).await?;
    for (index, domain) in ["a", "a", "b", "b", "c"].iter().enumerate() {
        let script = format!(
            "cluster.edit(\"m{}\", {{failure_domain=\"{domain}\"}})",
            index + 1
        );
        cluster.cli_ok(0, &["exec", &script])?;
    }
    let work = tempfile::tempdir()?;
    let image = work.path().join("busybox.tar.gz");
    write_image(&image, &machine_architecture(), "one")?;
    let expected = sha256_of(&image)?;

    tracing::info!("--- import: 3 copies in 3 failure domains");
    let out = cluster.cli_ok(
        0,
        &["image", "import", &image.to_string_lossy(), "--alias", "bb"],
    )?;
    assert_eq!(
        out.trim(),
        format!("Image imported with fingerprint: {expected}")
    );
    let holders = wait_for("3 locations", Duration::from_secs(30), || async {
        let holders = locations(&cluster, 0, &expected);
        (holders.len() == 3).then_some(holders)
    })
    .await?;
    let domains: std::collections::BTreeSet<&str> = holders
        .iter()
        .map(|name| ["a", "a", "b", "b", "c"][index_of(name)])
        .collect();
    assert_eq!(domains.len(), 3, "holders {holders:?}");
    for name in &holders {
        let file = image_file(&cluster, index_of(name), &expected);
        assert_eq!(sha256_of(&file)?, expected, "{name}'s copy");
    }
    let record: Value =
        serde_json::from_str(&cluster.cli_ok(3, &["image", "show", "bb", "--format", "json"])?)?;
    assert_eq!(record["fingerprint"], expected.as_str());
    assert_eq!(record["architecture"], machine_architecture().as_str());
    assert_eq!(record["properties"]["os"], "busybox");
    assert_eq!(record["aliases"][0]["name"], "bb");

    tracing::info!("--- export through a member that holds no copy: the bytes are relayed");
    let outsider = (0..5)
        .find(|index| !holders.contains(&format!("m{}", index + 1)))
        .unwrap_or(0);
    let exported = work.path().join("exported.tar.gz");
    let out = cluster.cli_ok(
        outsider,
        &["image", "export", "bb", &exported.to_string_lossy()],
    )?;
    assert!(out.contains("exported successfully"), "{out}");
    assert_eq!(sha256_of(&exported)?, expected);

    tracing::info!("--- bad input is refused with what is wrong");
    let not_tarball = work.path().join("notes.txt");
    std::fs::write(&not_tarball, "these are not the bytes of an image")?;
    let foreign = work.path().join("s390x.tar.gz");
    write_image(&foreign, "s390x", "two")?;
    let other = work.path().join("other.tar.gz");
    write_image(&other, &machine_architecture(), "three")?;
    let missing = work.path().join("missing.tar.gz");
    let cases = [
        (not_tarball.clone(), vec![], "not an image tarball"),
        (
            image.clone(),
            vec![],
            "Image with same fingerprint already exists",
        ),
        (foreign, vec![], "no member can run"),
        (other, vec!["--alias", "bb"], "Alias \"bb\" already exists"),
        (missing, vec![], "busybox"),
    ];
    for (file, extra, expected_message) in cases {
        let path = file.to_string_lossy().into_owned();
        let mut args = vec!["image", "import", path.as_str()];
        args.extend(extra);
        let message = cluster.cli_fails(0, &args)?;
        if expected_message == "busybox" {
            assert!(message.contains("missing.tar.gz"), "{message}");
        } else {
            assert!(message.contains(expected_message), "{args:?}: {message}");
        }
    }
    assert_eq!(
        images(&cluster, 0)?.len(),
        1,
        "a refused import left a record"
    );
    let left: Vec<String> = std::fs::read_dir(cluster.dir(0).join("images"))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![expected.clone()], "refused imports left files");

    tracing::info!("--- -1: every member holds it");
    cluster.cli_ok(0, &["config", "set", "cluster.images_minimal_replica=-1"])?;
    wait_for("5 locations", Duration::from_secs(30), || async {
        (locations(&cluster, 0, &expected).len() == 5).then_some(())
    })
    .await?;

    tracing::info!("--- delete while a holder is down: its file goes when it is back");
    let leader = cluster.leader(0).await?;
    let down = (0..5)
        .find(|index| *index != leader && *index != 0)
        .unwrap_or(4);
    cluster.kill(down)?;
    cluster.cli_ok(0, &["image", "delete", "bb"])?;
    assert!(images(&cluster, 0)?.is_empty());
    wait_for(
        "the files of the running members gone",
        Duration::from_secs(20),
        || async {
            (0..5)
                .filter(|index| *index != down)
                .all(|index| !image_file(&cluster, index, &expected).exists())
                .then_some(())
        },
    )
    .await?;
    assert!(image_file(&cluster, down, &expected).exists());
    cluster.restart(down)?;
    wait_for(
        "the returning member's file gone",
        Duration::from_secs(30),
        || async { (!image_file(&cluster, down, &expected).exists()).then_some(()) },
    )
    .await?;
    Ok(())
}

/// Goal: when a holder dies, another member gets a copy from a surviving holder soon after
/// the dead one is marked Offline.
/// Method: 4 member processes, threshold 10 s; import (3 holders); SIGKILL a holder other than
/// the leader; wait for Offline, then for 3 online holders again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_is_replaced() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(4).await?;
    cluster.wait_roles(0, 3, 1).await?;
    cluster.cli_ok(0, &["config", "set", "cluster.offline_threshold=10"])?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("image.tar.gz");
    write_image(&image, &machine_architecture(), "dead-holder")?;
    let fingerprint = sha256_of(&image)?;
    cluster.cli_ok(0, &["image", "import", &image.to_string_lossy()])?;
    let holders = wait_for("3 locations", Duration::from_secs(30), || async {
        let holders = locations(&cluster, 0, &fingerprint);
        (holders.len() == 3).then_some(holders)
    })
    .await?;
    let leader = cluster.leader(0).await?;
    let victim = holders
        .iter()
        .map(|name| index_of(name))
        .find(|index| *index != leader && *index != 0)
        .unwrap_or(1);
    let spare = (0..4)
        .find(|index| !holders.contains(&format!("m{}", index + 1)))
        .unwrap_or(3);
    let via = (0..4).find(|index| *index != victim).unwrap_or(0);
    cluster.kill(victim)?;
    wait_for("a new holder", Duration::from_secs(40), || async {
        locations(&cluster, via, &fingerprint)
            .contains(&format!("m{}", spare + 1))
            .then_some(())
    })
    .await?;
    assert_eq!(
        sha256_of(&image_file(&cluster, spare, &fingerprint))?,
        fingerprint
    );
    Ok(())
}

/// Goal: raising `cluster.images_minimal_replica` copies at once, not at the next heartbeat
/// round, and copies beyond what one holder feeds at once follow as soon as a copy ends.
/// Method: 4 member processes, heartbeat rounds 10 s apart; an image on 1 member; the minimum
/// raised to -1: all 4 hold it well before the next round (1 holder feeds 2 copies at once, so
/// the third comes from a new holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_minimum_copies_at_once() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(4).await?;
    cluster.wait_roles(0, 3, 1).await?;
    cluster.cli_ok(0, &["config", "set", "cluster.images_minimal_replica=1"])?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("image.tar.gz");
    write_image(&image, &machine_architecture(), "raised")?;
    let fingerprint = sha256_of(&image)?;
    cluster.cli_ok(0, &["image", "import", &image.to_string_lossy()])?;
    assert_eq!(locations(&cluster, 0, &fingerprint).len(), 1);
    cluster.cli_ok(0, &["config", "set", "cluster.heartbeat_interval_ms=10000"])?;
    // Let the current round end: the next one is 10 s away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let raised = std::time::Instant::now();
    cluster.cli_ok(0, &["config", "set", "cluster.images_minimal_replica=-1"])?;
    wait_for("4 locations", Duration::from_secs(6), || async {
        (locations(&cluster, 0, &fingerprint).len() == 4).then_some(())
    })
    .await?;
    tracing::info!(
        seconds = raised.elapsed().as_secs_f64(),
        "every member holds it"
    );
    for index in 0..4 {
        assert_eq!(
            sha256_of(&image_file(&cluster, index, &fingerprint))?,
            fingerprint
        );
    }
    Ok(())
}

/// Goal: a client cannot record an image (claiming locations for bytes it never sent): only
/// members record the images they imported.
/// Method: an in-process cluster; the administrator's client sends the internal record
/// operation directly; it is refused and no record appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_record_images() -> Result<()> {
    use starling_runtime::images::ops::ImageOperation;
    use starling_runtime::Operation;
    init_tracing();
    let cluster = starling_tests::TestCluster::start(1).await?;
    let forged = starling_store::images::Image {
        fingerprint: "a".repeat(64),
        size: 1,
        filename: "forged.tar".into(),
        architecture: machine_architecture(),
        properties: Default::default(),
        aliases: Vec::new(),
        public: true,
        created_at: 0,
        uploaded_at_ms: 0,
        locations: ["m1".to_string()].into(),
    };
    let refused = cluster
        .operation(
            0,
            Operation::Image(ImageOperation::Record { image: forged }),
        )
        .await
        .expect_err("a client recorded an image");
    assert!(refused.to_string().contains("members only"), "{refused}");
    let list = cluster
        .operation(0, Operation::Image(ImageOperation::List))
        .await?;
    assert_eq!(list, Value::Array(Vec::new()));
    Ok(())
}

/// Writes a plain `.tar` image of about `mib` MiB (a rootfs file of random bytes, so that
/// nothing compresses it).
fn write_large_image(path: &Path, mib: usize) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    let metadata = format!(
        "architecture: {}\ncreation_date: 1700000000\nproperties:\n  description: large\n",
        machine_architecture()
    );
    append(&mut builder, "metadata.yaml", metadata.as_bytes())?;
    let mut bytes = vec![0u8; mib << 20];
    let rng = ring::rand::SystemRandom::new();
    for chunk in bytes.chunks_mut(1 << 20) {
        ring::rand::SecureRandom::fill(&rng, chunk)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
    }
    append(&mut builder, "rootfs/blob", &bytes)?;
    builder.into_inner()?;
    Ok(())
}

/// Goal: a holder that dies in the middle of a copy does not lose it: the receiver goes on from
/// the offset it reached with another holder, and the copy completes and is recorded.
/// Method: 4 member processes, `images_minimal_replica=2`; import a 256 MiB image (2 holders);
/// move leadership off the holders; `images.copy_to` a third member, which fetches from the
/// first holder by name; SIGKILL that holder once the receiver's partial file has grown; the
/// copy completes from the other holder and hashes to the fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_resumes_from_another_holder() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(4).await?;
    cluster.wait_roles(0, 3, 1).await?;
    cluster.cli_ok(0, &["config", "set", "cluster.images_minimal_replica=2"])?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("large.tar");
    write_large_image(&image, 256)?;
    let fingerprint = sha256_of(&image)?;
    cluster.cli_ok(0, &["image", "import", &image.to_string_lossy()])?;
    let holders = wait_for("2 locations", Duration::from_secs(60), || async {
        let holders = locations(&cluster, 0, &fingerprint);
        (holders.len() == 2).then_some(holders)
    })
    .await?;
    let mut by_name = holders.clone();
    by_name.sort();
    let first = index_of(&by_name[0]);
    let others: Vec<usize> = (0..4)
        .filter(|index| !holders.contains(&format!("m{}", index + 1)))
        .collect();
    let via = others[0];
    let leader = cluster.leader(via).await?;
    if holders.contains(&format!("m{}", leader + 1)) {
        // Make a member that holds nothing lead (it must vote): the copy's source dies, not the
        // leader that waits for it.
        let voters = with_role_names(&cluster, via, "database")?;
        if let Some(new_leader) = others
            .iter()
            .copied()
            .find(|index| voters.contains(&format!("m{}", index + 1)))
        {
            let name = format!("m{}", new_leader + 1);
            cluster.cli_ok(via, &["cluster", "transfer-leader", &name])?;
        }
    }
    let leader = cluster.leader(via).await?;
    anyhow::ensure!(
        !holders.contains(&format!("m{}", leader + 1)),
        "a holder still leads: {holders:?}"
    );
    let target = others
        .iter()
        .copied()
        .find(|index| *index != leader)
        .unwrap_or(others[0]);
    let via = leader;

    tracing::info!(
        first,
        target,
        "--- copy to a third member; kill its source mid-copy"
    );
    let copy = cluster.spawn_cli(
        via,
        &[
            "exec",
            &format!(
                "return images.copy_to(\"{fingerprint}\", \"m{}\")",
                target + 1
            ),
        ],
    )?;
    let images_dir = cluster.dir(target).join("images");
    wait_for(
        "the copy to be under way",
        Duration::from_secs(30),
        || async {
            let growing = std::fs::read_dir(&images_dir)
                .ok()?
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(".partial"))
                .any(|entry| {
                    entry
                        .metadata()
                        .map(|m| m.len() > (16 << 20))
                        .unwrap_or(false)
                });
            growing.then_some(())
        },
    )
    .await?;
    cluster.kill(first)?;
    tracing::info!("--- images.transfers() shows the copy going on, with its progress");
    // The receiver reports its progress every 250 ms: the copy may be younger than that.
    let to = format!("m{}", target + 1);
    let entry = wait_for(
        "images.transfers() to show the copy's progress",
        Duration::from_secs(10),
        || async {
            let transfers = cluster
                .cli_ok(via, &["exec", "return images.transfers()"])
                .ok()?;
            let transfers: Value = serde_json::from_str(&transfers).ok()?;
            let entry = transfers
                .as_array()?
                .iter()
                .find(|entry| entry["to"] == to.as_str())?
                .clone();
            (entry["done"].as_u64()? > 0).then_some(entry)
        },
    )
    .await?;
    assert_eq!(entry["image"], fingerprint.as_str());
    assert_eq!(
        entry["total"].as_u64(),
        Some(std::fs::metadata(&image)?.len())
    );
    assert!(entry["done"].as_u64().unwrap_or(0) > 0, "{entry}");
    assert!(entry["rate"].as_f64().unwrap_or(0.0) > 0.0, "{entry}");
    let output = copy.wait_with_output()?;
    assert!(
        output.status.success(),
        "copy_to failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let file = image_file(&cluster, target, &fingerprint);
    assert_eq!(sha256_of(&file)?, fingerprint);
    assert!(
        locations(&cluster, via, &fingerprint).contains(&format!("m{}", target + 1)),
        "the copy was not recorded"
    );
    assert!(
        cluster.log(target).contains("trying the next holder"),
        "the copy did not change source:\n{}",
        cluster.log(target)
    );
    Ok(())
}

fn with_role_names(cluster: &ProcessCluster, via: usize, role: &str) -> Result<Vec<String>> {
    Ok(starling_tests::with_role(&cluster.members(via)?, role))
}

/// Goal: `images.copy_to` answers only once the member holds the image, also when a copy to
/// that member is already under way (it used to answer at once, the copy still running).
/// Method: 3 member processes, `images_minimal_replica=1`; a 256 MiB image on one member;
/// two `images.copy_to` of it to the same member at once; the moment either answers, the
/// image's locations must name that member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_to_answers_once_the_member_holds_the_image() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(3).await?;
    cluster.cli_ok(0, &["config", "set", "cluster.images_minimal_replica=1"])?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("large.tar");
    write_large_image(&image, 256)?;
    let fingerprint = sha256_of(&image)?;
    cluster.cli_ok(0, &["image", "import", &image.to_string_lossy()])?;
    let holders = locations(&cluster, 0, &fingerprint);
    anyhow::ensure!(holders.len() == 1, "holders: {holders:?}");
    let target = (0..3)
        .map(|index| format!("m{}", index + 1))
        .find(|name| !holders.contains(name))
        .context("a member without the image")?;
    let script = format!("return images.copy_to(\"{fingerprint}\", \"{target}\")");
    let mut copies = vec![
        cluster.spawn_cli(0, &["exec", &script])?,
        cluster.spawn_cli(1, &["exec", &script])?,
    ];
    let mut answered = [false, false];
    while answered.contains(&false) {
        for (index, copy) in copies.iter_mut().enumerate() {
            if answered[index] || copy.try_wait()?.is_none() {
                continue;
            }
            answered[index] = true;
            let now = locations(&cluster, 0, &fingerprint);
            assert!(
                now.contains(&target),
                "images.copy_to answered while {target} did not hold the image: {now:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for copy in copies {
        let output = copy.wait_with_output()?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        sha256_of(&image_file(&cluster, index_of(&target), &fingerprint))?,
        fingerprint
    );
    // What cannot be copied is refused at once, naming why.
    let again = cluster.cli_fails(1, &["exec", &script])?;
    assert!(
        again.contains(&format!("member \"{target}\" holds the image already")),
        "{again}"
    );
    let nowhere = format!("return images.copy_to(\"{fingerprint}\", \"m9\")");
    let missing = cluster.cli_fails(1, &["exec", &nowhere])?;
    assert!(missing.contains("member \"m9\" not found"), "{missing}");
    Ok(())
}
