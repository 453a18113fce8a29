//! The container driver against the real kernel: busybox containers started through the
//! `starling` binary's shim, entered, limited, stopped, adopted and deleted.
//!
//! They need root (namespaces, cgroups, mounts) and `/bin/busybox` (static; Debian's
//! `busybox-static`). As another user each test prints why and returns.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use starling_runtime::instances::driver::{
    ContainerSpec, CpuLimit, Driver, DriverError, ExecRequest, ExecStream, InstanceKey, Limits,
    SetupStep, State,
};
use starling_tests::containers::busybox_image;
use starling_tests::init_tracing;
use starling_tests::processes::starling_binary;

/// Keeps the pool directory and the image, and deletes the containers it started on drop.
struct Fixture {
    /// Holds the pool and the image.
    root: tempfile::TempDir,
    /// The driver under test.
    driver: Driver,
    /// A busybox image tarball (`.tar.gz`).
    image: PathBuf,
    /// The containers to clean up.
    keys: Vec<InstanceKey>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for key in &self.keys {
            let _ = self.driver.stop(key, Duration::ZERO, true);
            let _ = self.driver.delete(key);
        }
    }
}

impl Fixture {
    /// A pool with a busybox image ready, or `None` (with the reason printed) when not root.
    fn new() -> Result<Option<Fixture>> {
        init_tracing();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the container driver needs root (namespaces, cgroups, mounts)");
            return Ok(None);
        }
        let root = tempfile::tempdir()?;
        let image = busybox_image(root.path())?;
        let driver = Driver::new(
            root.path().join("storage-pools/default"),
            starling_binary()?,
        );
        Ok(Some(Fixture {
            root,
            driver,
            image,
            keys: Vec::new(),
        }))
    }

    /// A key unique to this test process, unpacked from the busybox image.
    fn unpacked(&mut self, name: &str) -> Result<InstanceKey> {
        let key = InstanceKey::new(format!("t{}", std::process::id()), name);
        self.driver.unpack(&key, &self.image)?;
        self.keys.push(key.clone());
        Ok(key)
    }

    /// A key unique to this test process, layered on this pool's base of the busybox image.
    fn layered(&mut self, name: &str) -> Result<InstanceKey> {
        let key = InstanceKey::new(format!("t{}", std::process::id()), name);
        self.driver
            .create_from_image(&key, &self.image, &self.fingerprint()?)?;
        self.keys.push(key.clone());
        Ok(key)
    }

    /// The image's fingerprint (SHA-256 of the file, as LXD's).
    fn fingerprint(&self) -> Result<String> {
        let bytes = std::fs::read(&self.image)?;
        Ok(hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &bytes,
        )))
    }

    /// Runs `argv` in the container; fails unless the command ran.
    fn exec(&self, key: &InstanceKey, argv: &[&str]) -> Result<(i32, String, String)> {
        let output = self
            .driver
            .exec(key, &ExecRequest::new(argv.iter().copied()))?;
        Ok((
            output.exit_code,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Standard output of `argv`, which must exit 0.
    fn output(&self, key: &InstanceKey, argv: &[&str]) -> Result<String> {
        let (code, stdout, stderr) = self.exec(key, argv)?;
        ensure!(code == 0, "{argv:?} exited {code}: {stderr}");
        Ok(stdout)
    }
}

/// The cgroup directories a container may have on this host (v1 or v2).
fn cgroup_dirs(driver: &Driver, key: &InstanceKey) -> Vec<PathBuf> {
    let name = driver.cgroup_name(key);
    ["memory", "cpu", "cpuacct", "pids", "cpuset", ""]
        .iter()
        .map(|controller| {
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("starling")
                .join(&name)
        })
        .collect()
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Goal: a started container is what LXC makes: its own hostname, busybox init as PID 1, its
/// own root (a host file is out of sight), loopback alone and up, `/sys` read-only, the usual
/// devices; exec returns exit codes and output; a graceful stop lets busybox init shut down
/// (it handles `SIGPWR`) and the exit is recorded; delete leaves no process, cgroup, mount or
/// file. Method: one busybox container, examined through exec; times printed.
#[test]
fn container_is_isolated_and_cleaned_up() -> Result<()> {
    let Some(mut fixture) = Fixture::new()? else {
        return Ok(());
    };
    tracing::info!("--- unpack and start");
    let key = fixture.unpacked("iso")?;
    let started = Instant::now();
    let pid = fixture.driver.start(&key, &ContainerSpec::new("iso"))?;
    let start_time = started.elapsed();
    let Ok(State::Running {
        pid: running,
        processes,
        memory_bytes,
        ..
    }) = fixture.driver.state(&key)
    else {
        bail!("not running after start");
    };
    assert_eq!(running, pid);
    assert!(
        processes >= 1 && memory_bytes > 0,
        "{processes} processes, {memory_bytes} bytes"
    );

    tracing::info!("--- what the container sees");
    assert_eq!(fixture.output(&key, &["hostname"])?.trim(), "iso");
    let cmdline = fixture.output(&key, &["cat", "/proc/1/cmdline"])?;
    // busybox init writes "init" over its argv[0].
    assert_eq!(cmdline.trim_end_matches('\0'), "init");
    let ps = fixture.output(&key, &["ps", "-o", "pid,args"])?;
    assert!(
        ps.lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["1", "init"]),
        "ps shows no init as PID 1:\n{ps}"
    );
    assert!(
        ps.contains("sleep 3600"),
        "init's respawn entry is not running:\n{ps}"
    );
    let secret = fixture.root.path().join("host-secret");
    std::fs::write(&secret, "host only")?;
    let (code, _, _) = fixture.exec(&key, &["cat", secret.to_str().unwrap_or_default()])?;
    assert_ne!(code, 0, "a host file is visible inside");
    assert!(
        fixture
            .output(&key, &["ls", "/"])?
            .split_whitespace()
            .count()
            >= 5
    );
    let interfaces: Vec<String> = fixture
        .output(&key, &["cat", "/proc/net/dev"])?
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next().map(|name| name.trim().to_string()))
        .collect();
    assert_eq!(interfaces, ["lo"]);
    let flags = fixture.output(&key, &["cat", "/sys/class/net/lo/flags"])?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)?;
    assert_eq!(flags & 1, 1, "lo is not up");
    let (code, _, _) = fixture.exec(&key, &["touch", "/sys/kernel/x"])?;
    assert_ne!(code, 0, "/sys is writable");
    let devices = fixture.output(&key, &["ls", "/dev", "/dev/pts"])?;
    for device in [
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "shm",
    ] {
        assert!(
            devices.split_whitespace().any(|name| name == device),
            "no /dev/{device}:\n{devices}"
        );
    }
    assert_eq!(
        fixture.output(&key, &["head", "-c", "3", "/dev/zero"])?,
        "\0\0\0"
    );

    tracing::info!("--- exec: codes, streams, speed");
    assert_eq!(fixture.exec(&key, &["true"])?.0, 0);
    let (code, stdout, stderr) =
        fixture.exec(&key, &["sh", "-c", "echo out; echo err >&2; exit 3"])?;
    assert_eq!(
        (code, stdout.as_str(), stderr.as_str()),
        (3, "out\n", "err\n")
    );
    assert_eq!(fixture.exec(&key, &["sh", "-c", "kill -9 $$"])?.0, 128 + 9);
    let missing = fixture
        .driver
        .exec(&key, &ExecRequest::new(["/no/such/command"]));
    assert!(
        matches!(&missing, Err(DriverError::Exec(failure)) if failure.step == SetupStep::Exec),
        "{missing:?}"
    );
    let mut samples = Vec::new();
    for _ in 0..15 {
        let begun = Instant::now();
        assert_eq!(fixture.exec(&key, &["true"])?.0, 0);
        samples.push(begun.elapsed());
    }
    let exec_time = median(samples);
    println!(
        "driver timing: start to init running {start_time:?}, exec -- true median {exec_time:?}"
    );

    tracing::info!("--- refusals while running");
    assert!(matches!(
        fixture.driver.start(&key, &ContainerSpec::new("iso")),
        Err(DriverError::Running { .. })
    ));
    assert!(matches!(
        fixture.driver.delete(&key),
        Err(DriverError::Running { .. })
    ));
    assert!(matches!(
        fixture.driver.unpack(&key, &fixture.image),
        Err(DriverError::AlreadyExists { .. })
    ));
    assert_eq!(fixture.driver.list()?, std::slice::from_ref(&key));

    tracing::info!("--- graceful stop");
    let record = fixture
        .driver
        .record(&key)?
        .ok_or_else(|| anyhow!("no state record"))?;
    let stopping = Instant::now();
    fixture.driver.stop(&key, Duration::from_secs(20), false)?;
    let stop_time = stopping.elapsed();
    let State::Stopped { exit: Some(exit) } = fixture.driver.state(&key)? else {
        bail!("no exit recorded after stop");
    };
    // busybox init halts on SIGPWR, and the kernel reports reboot(2) in a PID namespace as
    // death by SIGINT: the SIGKILL fallback was not needed.
    assert_eq!(
        exit.signal,
        Some(libc::SIGINT),
        "{exit:?} after {stop_time:?}"
    );
    println!("driver timing: graceful stop of busybox init {stop_time:?}");
    assert!(!record.init.is_alive() && !record.monitor.is_alive());
    assert!(matches!(
        fixture.driver.exec(&key, &ExecRequest::new(["true"])),
        Err(DriverError::NotRunning { .. })
    ));
    let console = std::fs::read_to_string(fixture.driver.container_dir(&key).join("console.log"))?;
    assert!(console.contains("going down"), "console: {console}");

    tracing::info!("--- delete leaves nothing");
    let dir = fixture.driver.container_dir(&key);
    fixture.driver.delete(&key)?;
    assert!(!dir.exists());
    for cgroup in cgroup_dirs(&fixture.driver, &key) {
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&key.storage_name()),
        "a mount is left:\n{mounts}"
    );
    assert!(fixture.driver.list()?.is_empty());
    assert!(matches!(
        fixture.driver.state(&key),
        Err(DriverError::NotFound { .. })
    ));
    Ok(())
}

/// Goal: the kernel enforces each limit: a process allocating past `limits.memory` is killed
/// by the OOM killer (the cgroup counts the kill), forking past `limits.processes` fails (the
/// cgroup counts the refusals), and a busy loop gets no more CPU than its allowance.
/// Method: one container with all three limits; commands that push past each.
#[test]
fn limits_are_enforced_by_the_kernel() -> Result<()> {
    let Some(mut fixture) = Fixture::new()? else {
        return Ok(());
    };
    let key = fixture.unpacked("limits")?;
    let mut spec = ContainerSpec::new("limits");
    spec.limits = Limits {
        memory_bytes: Some(32 << 20),
        cpus: Some(CpuLimit::Allowance {
            quota_us: 20_000,
            period_us: 100_000,
        }),
        processes: Some(12),
    };
    fixture.driver.start(&key, &spec)?;
    let cgroup = fixture
        .driver
        .record(&key)?
        .ok_or_else(|| anyhow!("no record"))?
        .cgroup;

    tracing::info!("--- cpu: a busy loop for 1 s against 20 ms per 100 ms");
    let quota = std::fs::read_to_string(cgroup.dirs[&Controller::Cpu].join("cpu.cfs_quota_us"))?;
    assert_eq!(quota.trim(), "20000");
    let cpu_ns = || {
        cgroup.cpu_ns().ok_or_else(|| {
            anyhow!(
                "no CPU usage in the container's cgroup {:?} (state {:?})",
                cgroup.dirs,
                fixture.driver.state(&key)
            )
        })
    };
    let before = cpu_ns()?;
    let began = Instant::now();
    let mut busy = fixture.driver.exec_spawn(
        &key,
        &ExecRequest::new(["sh", "-c", "while :; do :; done"]),
        ExecStream::Null,
        ExecStream::Null,
        ExecStream::Null,
    )?;
    // The measuring window, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(1));
    busy.kill()?;
    ensure!(busy.wait().is_err(), "a killed exec reported an exit");
    let wall = began.elapsed();
    let after = cpu_ns()?;
    ensure!(
        after >= before,
        "CPU usage went back from {before} to {after} ns"
    );
    let used = Duration::from_nanos(after - before);
    println!("cpu allowance 20%: used {used:?} in {wall:?}");
    assert!(
        used > Duration::from_millis(20),
        "the loop did not run: {used:?}"
    );
    assert!(
        used < wall.mul_f64(0.2) + Duration::from_millis(150),
        "used {used:?} in {wall:?}"
    );

    tracing::info!("--- processes: 20 background sleeps against 12");
    let (_, _, stderr) = fixture.exec(
        &key,
        &[
            "sh",
            "-c",
            "for i in $(seq 20); do sleep 30 >/dev/null 2>&1 & done",
        ],
    )?;
    let refused = cgroup
        .event_count(Controller::Pids, "pids.events", "max")
        .unwrap_or(0);
    assert!(
        refused >= 1,
        "pids.events counted no refused fork; stderr: {stderr}"
    );
    assert!(
        stderr.contains("fork"),
        "the shell saw no failed fork: {stderr}"
    );
    let State::Running { processes, .. } = fixture.driver.state(&key)? else {
        bail!("stopped")
    };
    assert!(processes <= 12, "{processes} processes");
    // The sleeps hold every process slot: end them from the host (init and what its inittab
    // respawns stay).
    let is_sleep = |pid: &u32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|line| line == b"sleep\x0030\x00")
    };
    for sleeper in cgroup.pids().into_iter().filter(is_sleep) {
        // SAFETY: kill(2) with a pid and a signal number.
        unsafe { libc::kill(sleeper as libc::pid_t, libc::SIGKILL) };
    }
    // A killed process holds its slot until init reaps it: wait until the count matches the
    // processes listed, with no sleep among them.
    let pids_current = cgroup.dirs[&Controller::Pids].join("pids.current");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let current = std::fs::read_to_string(&pids_current)?;
        let listed = cgroup.pids();
        if current.trim() == listed.len().to_string() && !listed.iter().any(is_sleep) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the sleeps did not end: pids.current {}, {listed:?}",
            current.trim(),
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The OOM step last, and one process that grows: with a `head | tr` pipeline feeding the
    // shell, `head` went on allocating while the killed shell's memory was being uncharged,
    // and a second OOM kill took init (CI, twice; dmesg: usage 30 of 32 MiB, init picked).
    tracing::info!("--- memory: a shell variable doubled past 32 MiB");
    let (code, _, stderr) =
        fixture.exec(&key, &["sh", "-c", "x=aaaaaaaa; while :; do x=$x$x; done"])?;
    assert_eq!(code, 128 + libc::SIGKILL, "not OOM-killed: {stderr}");
    use starling_runtime::instances::driver::cgroup::Controller;
    let oom_kills = cgroup
        .event_count(Controller::Memory, "memory.oom_control", "oom_kill")
        .or_else(|| cgroup.event_count(Controller::Memory, "memory.events", "oom_kill"));
    assert!(
        oom_kills.unwrap_or(0) >= 1,
        "the cgroup counted no OOM kill: {oom_kills:?}"
    );
    assert!(
        matches!(fixture.driver.state(&key)?, State::Running { .. }),
        "init died too"
    );

    fixture.driver.stop(&key, Duration::ZERO, true)?;
    Ok(())
}

/// Goal: an init that ignores `SIGPWR` is killed once the timeout passes, not before, and a
/// forced stop kills at once; each exit is recorded as `SIGKILL`.
/// Method: `sleep` as init (PID 1 of a namespace ignores signals it has no handler for), a
/// 300 ms timeout; then busybox init, forced.
#[test]
fn stop_times_out_to_sigkill_and_force_kills() -> Result<()> {
    let Some(mut fixture) = Fixture::new()? else {
        return Ok(());
    };
    let key = fixture.unpacked("stubborn")?;
    let mut spec = ContainerSpec::new("stubborn");
    spec.init = vec!["/bin/sleep".into(), "3600".into()];
    fixture.driver.start(&key, &spec)?;
    let began = Instant::now();
    fixture
        .driver
        .stop(&key, Duration::from_millis(300), false)?;
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let State::Stopped { exit: Some(exit) } = fixture.driver.state(&key)? else {
        bail!("no exit")
    };
    assert_eq!(exit.signal, Some(libc::SIGKILL));

    tracing::info!("--- restart, then force");
    fixture
        .driver
        .start(&key, &ContainerSpec::new("stubborn"))?;
    let began = Instant::now();
    fixture.driver.stop(&key, Duration::from_secs(60), true)?;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let State::Stopped { exit: Some(exit) } = fixture.driver.state(&key)? else {
        bail!("no exit")
    };
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(matches!(
        fixture.driver.stop(&key, Duration::ZERO, true),
        Err(DriverError::NotRunning { .. })
    ));
    Ok(())
}

/// Goal: a setup failure comes back as the typed step with the kernel's error, and leaves
/// nothing running and no cgroup; a container never unpacked is not found.
/// Method: an init path that does not exist in the image.
#[test]
fn setup_failures_are_typed_and_leave_nothing() -> Result<()> {
    let Some(mut fixture) = Fixture::new()? else {
        return Ok(());
    };
    let ghost = InstanceKey::new(format!("t{}", std::process::id()), "ghost");
    assert!(matches!(
        fixture.driver.start(&ghost, &ContainerSpec::new("ghost")),
        Err(DriverError::NotFound { .. })
    ));
    let key = fixture.unpacked("broken")?;
    let mut spec = ContainerSpec::new("broken");
    spec.init = vec!["/sbin/nothing-here".into()];
    let error = fixture.driver.start(&key, &spec).unwrap_err();
    let DriverError::Setup(failure) = &error else {
        bail!("unexpected error {error}")
    };
    assert_eq!(
        (failure.step, failure.errno),
        (SetupStep::Exec, libc::ENOENT),
        "{error}"
    );
    assert!(error.to_string().contains("/sbin/nothing-here"), "{error}");
    assert_eq!(fixture.driver.state(&key)?, State::Stopped { exit: None });
    for cgroup in cgroup_dirs(&fixture.driver, &key) {
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }
    Ok(())
}

/// Goal: a container outlives a `kill -9` of the daemon that started it (and of the daemon's
/// whole process group), and a new driver, as after a restart, adopts it: running with the
/// same init, enterable, stoppable.
/// Method: a stand-in daemon process starts the container and prints init's PID; its process
/// group is killed; a fresh `Driver` looks at the pool.
#[test]
fn restarted_daemon_adopts_a_running_container() -> Result<()> {
    let Some(mut fixture) = Fixture::new()? else {
        return Ok(());
    };
    let key = fixture.unpacked("adopted")?;
    let pool = fixture.root.path().join("storage-pools/default");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_driver_daemon"))
        .arg(&pool)
        .arg(starling_binary()?)
        .args([&key.project, &key.name])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().ok_or_else(|| anyhow!("no stdout"))?)
        .read_line(&mut line)?;
    let pid: u32 = line
        .trim()
        .parse()
        .with_context(|| format!("daemon said {line:?}"))?;
    tracing::info!(pid, "--- kill -9 the daemon's process group");
    // SAFETY: kill takes integers; the group is the stand-in daemon's own.
    assert_eq!(
        unsafe { libc::kill(-(daemon.id() as i32), libc::SIGKILL) },
        0
    );
    daemon.wait()?;

    let adopter = Driver::new(pool, starling_binary()?);
    assert_eq!(adopter.list()?, std::slice::from_ref(&key));
    let State::Running { pid: adopted, .. } = adopter.state(&key)? else {
        bail!("not running")
    };
    assert_eq!(adopted, pid);
    let hostname = adopter.exec(&key, &ExecRequest::new(["hostname"]))?;
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "adopted");
    adopter.stop(&key, Duration::from_secs(20), false)?;
    assert!(matches!(
        adopter.state(&key)?,
        State::Stopped { exit: Some(_) }
    ));
    Ok(())
}

/// Goal: the streaming exec hands over the command's pipes and kills the command when the
/// shim is killed. Method: `cat` echoing stdin; then a `sleep` whose shim is killed.
#[test]
fn streaming_exec() -> Result<()> {
    let Some(mut fixture) = Fixture::new()? else {
        return Ok(());
    };
    let key = fixture.unpacked("stream")?;
    fixture.driver.start(&key, &ContainerSpec::new("stream"))?;
    let mut cat = fixture.driver.exec_spawn(
        &key,
        &ExecRequest::new(["cat"]),
        ExecStream::Piped,
        ExecStream::Piped,
        ExecStream::Null,
    )?;
    cat.stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(b"echoed\n")?;
    let mut echoed = String::new();
    BufReader::new(cat.stdout.take().ok_or_else(|| anyhow!("no stdout"))?)
        .read_line(&mut echoed)?;
    assert_eq!(echoed, "echoed\n");
    assert_eq!(cat.wait()?, 0);

    let mut sleeper = fixture.driver.exec_spawn(
        &key,
        &ExecRequest::new(["sleep", "1000"]),
        ExecStream::Null,
        ExecStream::Null,
        ExecStream::Null,
    )?;
    let count_sleepers = || -> Result<usize> {
        Ok(fixture
            .output(&key, &["ps", "-o", "args"])?
            .lines()
            .filter(|line| line.trim() == "sleep 1000")
            .count())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_sleepers()? == 0 {
        ensure!(Instant::now() < deadline, "the command never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    sleeper.kill()?;
    ensure!(sleeper.wait().is_err(), "a killed exec reported an exit");
    while count_sleepers()? != 0 {
        ensure!(Instant::now() < deadline, "the command outlived its shim");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Whether anything is mounted at or under `dir` in this process's mount namespace.
fn mounted_under(dir: &Path) -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| Path::new(point).starts_with(dir)))
}

/// Goal: containers made from one image share one unpacked base and each writes only its own
/// layer: a file written, changed or removed in one is as it was in the other and in the
/// base; the whole tree of a stopped container (what a move packs) shows its changes and
/// removals; the host never has the overlay mounted; the base goes with the last container
/// layered on it.
/// Method: two busybox containers from `create_from_image`, changed through exec; the tree
/// read with `read_tree`; `/proc/self/mountinfo` of the test process (the host's namespace).
#[test]
fn layered_containers_share_their_base() -> Result<()> {
    let Some(mut fixture) = Fixture::new()? else {
        return Ok(());
    };
    ensure!(
        fixture.driver.layering(),
        "overlayfs is not usable under {}",
        fixture.driver.pool_dir().display()
    );
    let started = Instant::now();
    let a = fixture.layered("a")?;
    let first = started.elapsed();
    let started = Instant::now();
    let b = fixture.layered("b")?;
    println!(
        "create from the image: {first:?} (the base unpacked), then {:?}",
        started.elapsed()
    );
    let base = fixture
        .driver
        .pool_dir()
        .join("bases")
        .join(fixture.fingerprint()?)
        .join("rootfs");
    ensure!(
        base.join("bin/busybox").is_file(),
        "no base at {}",
        base.display()
    );
    let dir_a = fixture.driver.container_dir(&a);
    ensure!(
        std::fs::read_dir(dir_a.join("rootfs"))?.next().is_none(),
        "the mount point of a is not empty"
    );
    // The writable layer comes with the first start: a create makes three inodes.
    for later in ["upper", "work"] {
        ensure!(!dir_a.join(later).exists(), "{later}/ made before a start");
    }

    fixture.driver.start(&a, &ContainerSpec::new("a"))?;
    ensure!(
        dir_a.join("upper").is_dir() && dir_a.join("work").is_dir(),
        "no writable layer after the start"
    );
    fixture.driver.start(&b, &ContainerSpec::new("b"))?;
    fixture.output(
        &a,
        &[
            "sh",
            "-c",
            "echo mine > /root/mark && echo changed > /etc/inittab && rm /bin/true",
        ],
    )?;
    assert_eq!(fixture.output(&a, &["cat", "/root/mark"])?.trim(), "mine");
    assert_ne!(
        fixture.exec(&a, &["ls", "/bin/true"])?.0,
        0,
        "/bin/true is still in a"
    );
    assert_ne!(
        fixture.exec(&b, &["cat", "/root/mark"])?.0,
        0,
        "b sees a's file"
    );
    assert_eq!(
        fixture.output(&b, &["cat", "/etc/inittab"])?,
        std::fs::read_to_string(base.join("etc/inittab"))?
    );
    assert_eq!(
        fixture.exec(&b, &["ls", "/bin/true"])?.0,
        0,
        "b lost /bin/true"
    );
    ensure!(!base.join("root/mark").exists(), "a wrote into the base");
    ensure!(
        std::fs::symlink_metadata(base.join("bin/true")).is_ok(),
        "a removed /bin/true from the base"
    );
    ensure!(!std::fs::read_to_string(base.join("etc/inittab"))?.contains("changed"));
    ensure!(
        !mounted_under(fixture.driver.pool_dir())?,
        "an overlay is mounted on the host"
    );

    fixture.driver.stop(&a, Duration::ZERO, true)?;
    let tree = fixture.driver.read_tree(&a, |root| {
        Ok((
            std::fs::read_to_string(root.join("root/mark"))?,
            std::fs::read_to_string(root.join("etc/inittab"))?,
            std::fs::symlink_metadata(root.join("bin/true")).is_ok(),
            root.join("bin/busybox").is_file(),
        ))
    })?;
    assert_eq!(
        tree,
        ("mine\n".to_string(), "changed\n".to_string(), false, true),
        "the tree of a"
    );
    ensure!(
        !mounted_under(fixture.driver.pool_dir())?,
        "the view stayed mounted"
    );
    ensure!(std::fs::read_dir(dir_a.join("rootfs"))?.next().is_none());
    // A container never started is read through a writable layer made for the view.
    let c = fixture.layered("c")?;
    let whole = fixture
        .driver
        .read_tree(&c, |root| Ok(root.join("bin/busybox").is_file()))?;
    ensure!(
        whole,
        "the tree of a container never started lacks the base's files"
    );
    fixture.driver.delete(&c)?;

    fixture.driver.delete(&a)?;
    ensure!(
        base.join("bin/busybox").is_file(),
        "the base went while b is on it"
    );
    fixture.driver.stop(&b, Duration::ZERO, true)?;
    fixture.driver.delete(&b)?;
    ensure!(!base.exists(), "the base stayed after its last container");
    Ok(())
}

/// Goal: a daemon switches the host's cgroup migrations to `favordynmods` mode (spares each
/// container start and exec a wait for an RCU grace period), once: a host that has it already
/// is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_switches_cgroup_migrations_to_favordynmods() -> Result<()> {
    use starling_runtime::instances::driver::dynmods;
    init_tracing();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a cgroup hierarchy needs root");
        return Ok(());
    }
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo");
    // Whatever an earlier daemon on this host mounted goes first (detached: a concurrent test
    // may be in it; nothing is ever placed in it).
    while mountinfo()?.contains(&format!(" {} ", dynmods::MOUNT_POINT)) {
        nix::mount::umount2(dynmods::MOUNT_POINT, nix::mount::MntFlags::MNT_DETACH)?;
    }
    let host_has_it = dynmods::enabled_in(&mountinfo()?);
    let cluster = starling_tests::processes::ProcessCluster::start(1).await?;
    let after = mountinfo()?;
    ensure!(
        dynmods::enabled_in(&after),
        "no cgroup file system has favordynmods after a daemon started"
    );
    if !host_has_it {
        ensure!(
            after.contains(&format!(" {} ", dynmods::MOUNT_POINT)),
            "the daemon's hierarchy is not at {}",
            dynmods::MOUNT_POINT
        );
    }
    assert_eq!(
        dynmods::favor_dynamic_modifications()?,
        dynmods::Outcome::AlreadyOn
    );
    let mounts = mountinfo()?
        .matches(&format!(" {} ", dynmods::MOUNT_POINT))
        .count();
    ensure!(mounts <= 1, "{mounts} mounts at {}", dynmods::MOUNT_POINT);
    drop(cluster);
    Ok(())
}
