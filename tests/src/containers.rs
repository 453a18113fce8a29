//! Helpers for tests that run real containers on member processes: a busybox image, the
//! command line's view of instances, and cleanup of containers a failed test left.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use starling_runtime::instances::driver::Driver;

use crate::processes::{starling_binary, ProcessCluster};
use crate::wait_for;

/// Commands the test image links to busybox.
pub const APPLETS: &[&str] = &[
    "sh", "ps", "hostname", "cat", "sleep", "ls", "true", "false", "seq", "head", "tr", "dd",
    "timeout", "touch", "echo", "wc", "grep", "mount", "kill", "halt", "poweroff", "reboot",
];

/// LXD's unified tarball around a busybox root file system (init from `/etc/inittab`, which
/// says "going down" on the console at shutdown), gzip-compressed, written in `dir`.
pub fn busybox_image(dir: &Path) -> Result<PathBuf> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (install busybox-static)")?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut add =
        |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: &str| -> Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            header.set_size(data.len() as u64);
            if kind.is_symlink() {
                builder.append_link(&mut header, path, link)?;
            } else {
                builder.append_data(&mut header, path, data)?;
            }
            Ok(())
        };
    let metadata = format!(
        "architecture: {}\ncreation_date: 1700000000\nproperties:\n  os: busybox\n  release: \"1\"\n  description: busybox\n",
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
        "rootfs/root",
        "rootfs/proc",
    ] {
        add(dir, tar::EntryType::Directory, 0o755, b"", "")?;
    }
    add("rootfs/tmp", tar::EntryType::Directory, 0o1777, b"", "")?;
    add(
        "rootfs/bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        "",
    )?;
    for applet in APPLETS {
        let path = format!("rootfs/bin/{applet}");
        add(&path, tar::EntryType::Symlink, 0o777, b"", "busybox")?;
    }
    add(
        "rootfs/sbin/init",
        tar::EntryType::Symlink,
        0o777,
        b"",
        "../bin/busybox",
    )?;
    let inittab =
        b"::sysinit:/bin/true\n::respawn:/bin/sleep 3600\n::shutdown:/bin/echo going down\n";
    add(
        "rootfs/etc/inittab",
        tar::EntryType::Regular,
        0o644,
        inittab,
        "",
    )?;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&builder.into_inner()?)?;
    let path = dir.join("busybox.tar.gz");
    std::fs::write(&path, gzip.finish()?)?;
    Ok(path)
}

/// Stops and deletes, through the driver, every container left in the members' pools (a test
/// that failed half-way must not leave containers running on the machine).
pub struct LeftoverContainers {
    /// The members' pool directories.
    pub pools: Vec<PathBuf>,
}

impl Drop for LeftoverContainers {
    fn drop(&mut self) {
        let Ok(shim) = starling_binary() else { return };
        remove_containers(&self.pools, &shim);
    }
}

/// Where the file `path` (relative to the container's root) written by the container
/// `default_<name>` lies on the host of the member whose data directory is `member_dir`: in
/// the writable layer of a layered container, or under `rootfs/` of a flat one (a moved copy).
pub fn written_file(member_dir: &Path, name: &str, path: &str) -> PathBuf {
    let dir = member_dir.join(format!("storage-pools/default/containers/default_{name}"));
    let upper = dir.join("upper").join(path);
    if dir.join("upper").is_dir() {
        upper
    } else {
        dir.join("rootfs").join(path)
    }
}

/// Stops and deletes every container in `pools` through the driver (`shim`: the `starling`
/// binary); a container that cannot be deleted is logged and left.
pub fn remove_containers(pools: &[PathBuf], shim: &Path) {
    for pool in pools {
        let driver = Driver::new(pool.clone(), shim.to_path_buf());
        for key in driver.list().unwrap_or_default() {
            let _ = driver.stop(&key, Duration::ZERO, true);
            if let Err(error) = driver.delete(&key) {
                tracing::warn!(instance = %key, %error, "could not delete a container");
            }
        }
    }
}

/// The instance records, through member `via`.
pub fn instances(cluster: &ProcessCluster, via: usize) -> Result<Vec<Value>> {
    let out = cluster.cli_ok(via, &["list", "--format", "json"])?;
    let value: Value = serde_json::from_str(&out).context("list --format json")?;
    Ok(value.as_array().cloned().unwrap_or_default())
}

/// One instance's record with its live state (`info --format json`).
pub fn info(cluster: &ProcessCluster, via: usize, name: &str) -> Result<Value> {
    let out = cluster.cli_ok(via, &["info", name, "--format", "json"])?;
    serde_json::from_str(&out).context("info --format json")
}

/// Waits until instance `name` has `status` in its record, read through member 0.
pub async fn wait_status(cluster: &ProcessCluster, name: &str, status: &str) -> Result<Value> {
    wait_status_via(cluster, 0, name, status).await
}

/// Waits until instance `name` has `status` in its record, read through member `via`.
pub async fn wait_status_via(
    cluster: &ProcessCluster,
    via: usize,
    name: &str,
    status: &str,
) -> Result<Value> {
    let what = format!("{name} {status}");
    wait_for(&what, Duration::from_secs(30), || async {
        let record = info(cluster, via, name).ok()?;
        (record["status"] == status).then_some(record)
    })
    .await
}

/// `exec NAME -- argv...` through member `via`: exit code, stdout, stderr.
pub fn exec(
    cluster: &ProcessCluster,
    via: usize,
    name: &str,
    argv: &[&str],
) -> Result<(i32, String, String)> {
    let mut args = vec!["exec", name, "--"];
    args.extend_from_slice(argv);
    let output = cluster.cli(via, &args)?;
    let code = output
        .status
        .code()
        .ok_or_else(|| anyhow!("exec {argv:?} was killed"))?;
    Ok((
        code,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The index of a member named `mN` (0 for anything else).
pub fn index_of(member: &Value) -> usize {
    member
        .as_str()
        .and_then(|name| name.trim_start_matches('m').parse::<usize>().ok())
        .unwrap_or(1)
        - 1
}

/// Whether this test runs as root (containers need it); says why the test is skipped when not.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: instances need root (namespaces, cgroups, mounts)");
    }
    root
}

/// A cluster of `count` member processes with the busybox image imported as `bb` through m1;
/// with `everywhere`, copied to every member (`cluster.images_minimal_replica=-1`, set
/// first). The guard removing leftover containers and the image's directory come with it.
pub async fn cluster_with_busybox(
    count: usize,
    everywhere: bool,
) -> Result<(ProcessCluster, LeftoverContainers, tempfile::TempDir)> {
    cluster_with_busybox_on(count, if everywhere { Some("-1") } else { None }).await
}

/// [`cluster_with_busybox`] with `cluster.images_minimal_replica` set to `minimum` (when
/// given) before the import.
pub async fn cluster_with_busybox_on(
    count: usize,
    minimum: Option<&str>,
) -> Result<(ProcessCluster, LeftoverContainers, tempfile::TempDir)> {
    let cluster = ProcessCluster::start(count).await?;
    let leftovers = LeftoverContainers {
        pools: (0..count)
            .map(|index| cluster.dir(index).join("storage-pools/default"))
            .collect(),
    };
    if let Some(minimum) = minimum {
        let setting = format!("cluster.images_minimal_replica={minimum}");
        cluster.cli_ok(0, &["config", "set", &setting])?;
    }
    let work = tempfile::tempdir()?;
    let image = busybox_image(work.path())?;
    cluster.cli_ok(
        0,
        &["image", "import", &image.to_string_lossy(), "--alias", "bb"],
    )?;
    Ok((cluster, leftovers, work))
}
