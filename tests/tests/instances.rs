//! Instances on real member processes: busybox containers launched across a cluster through
//! the command line, placed, copied their image, isolated, limited, entered, stopped, watched,
//! adopted after a `kill -9` of their daemon, started again after a clean restart, deleted
//! without a trace, and every bad input refused with what is wrong.
//!
//! They need root (namespaces, cgroups, mounts) and `/bin/busybox` (static; Debian's
//! `busybox-static`). As another user the test prints why and returns. One test runs its
//! member as an unprivileged user on purpose (`setpriv`), to see `launch` say what is missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use serde_json::Value;
use starling_runtime::instances::ops::{CreateRequest, InstanceOperation};
use starling_runtime::{Client, Error, Operation};
use starling_tests::containers::{
    busybox_image, exec, index_of, info, instances, wait_status, LeftoverContainers,
};
use starling_tests::processes::{MemberPlacement, ProcessCluster};
use starling_tests::{init_tracing, wait_for};

/// The launch of image `bb` as `name` on member `target`.
fn launch_of(name: &str, target: &str) -> CreateRequest {
    CreateRequest {
        project: "default".into(),
        name: Some(name.to_string()),
        image: "bb".into(),
        target: Some(target.to_string()),
        profiles: None,
        config: Default::default(),
        devices: Default::default(),
        description: String::new(),
        start: true,
        ephemeral: false,
    }
}

/// The median of `samples`, in milliseconds.
fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

/// Goal: instances really run across the cluster. Three launches without a target spread one
/// per member, each member without the image getting a copy first; `--target` places; a
/// container has its own hostname, PID 1 and root; `limits.memory` is enforced by the kernel;
/// `exec` gives exit codes and output, honours `cwd` and `env`; the live state's memory and
/// CPU usage; stop, force stop and restart; the life cycle from Lua (create, start, restart,
/// set, unset, list, stop, delete); an init that halts is recorded
/// `Stopped`; after `kill -9` of its daemon a container still runs with the same PID and is
/// reported `Running`; after a clean restart it runs again; delete leaves no process, cgroup,
/// mount or file; bad input is refused with what is wrong.
/// Method: 3 member processes, the image imported on m1 only (`images_minimal_replica=1`),
/// everything through the command line of m1; the kernel's view read from `/proc`,
/// `/sys/fs/cgroup` and the pools on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_across_the_cluster() -> Result<()> {
    init_tracing();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: instances need root (namespaces, cgroups, mounts)");
        return Ok(());
    }
    let mut cluster = ProcessCluster::start(3).await?;
    let _leftovers = LeftoverContainers {
        pools: (0..3)
            .map(|index| cluster.dir(index).join("storage-pools/default"))
            .collect(),
    };
    // Names unique to this test process: a container's cgroup is named after it host-wide.
    let suffix = std::process::id() % 100_000;
    let name = |base: &str| format!("{base}-{suffix}");
    let work = tempfile::tempdir()?;
    let image = busybox_image(work.path())?;
    cluster.cli_ok(0, &["config", "set", "cluster.images_minimal_replica=1"])?;
    let out = cluster.cli_ok(
        0,
        &["image", "import", &image.to_string_lossy(), "--alias", "bb"],
    )?;
    let fingerprint = out
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();

    tracing::info!("--- three launches without a target: one per member, the image copied first");
    let mut launches = Vec::new();
    for base in ["a", "b", "c"] {
        let started = Instant::now();
        cluster.cli_ok(0, &["launch", "bb", &name(base)])?;
        launches.push(started.elapsed());
    }
    let records = instances(&cluster, 0)?;
    let mut locations: Vec<String> = records
        .iter()
        .map(|record| record["location"].as_str().unwrap_or_default().to_string())
        .collect();
    locations.sort();
    assert_eq!(locations, ["m1", "m2", "m3"], "{records:#?}");
    for record in &records {
        assert_eq!(record["status"], "Running", "{record}");
        assert_eq!(
            record["config"]["volatile.base_image"],
            fingerprint.as_str()
        );
        assert_eq!(record["config"]["image.os"], "busybox");
        assert_eq!(record["expanded_devices"]["root"]["path"], "/");
        let holder = index_of(&record["location"]);
        let copy = cluster.dir(holder).join("images").join(&fingerprint);
        assert!(copy.is_file(), "{} has no image copy", record["location"]);
    }
    let on = |member: &str| -> String {
        records
            .iter()
            .find(|record| record["location"] == member)
            .and_then(|record| record["name"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (on_m2, on_m3) = (on("m2"), on("m3"));

    tracing::info!("--- removing a member that holds an instance is refused and writes nothing");
    let log_index = || -> Result<u64> {
        cluster.lua(0, "return cluster.info()")?["last_log_index"]
            .as_u64()
            .ok_or_else(|| anyhow!("cluster.info() has no last_log_index"))
    };
    let voters = || -> Result<usize> {
        let members = cluster.lua(0, "return cluster.members()")?;
        Ok(starling_tests::with_role(&members, "database").len())
    };
    // Once the roles settle (m2 and m3 join as stand-bys and are promoted), the log is quiet.
    wait_for("three voters", Duration::from_secs(30), || async {
        (voters().ok()? == 3).then_some(())
    })
    .await?;
    let before = log_index()?;
    let error = cluster.cli_fails(0, &["cluster", "remove", "m3"])?;
    assert!(
        error.contains("still has instances") && error.contains(&on_m3),
        "{error}"
    );
    // Before the check came first, the leader took m3 out of the voters, then the removal
    // itself was refused: two membership entries and a refused one.
    assert_eq!(log_index()?, before, "a refused removal wrote to the log");
    assert_eq!(voters()?, 3);

    tracing::info!("--- --target m2");
    let targeted = name("t");
    let started = Instant::now();
    cluster.cli_ok(0, &["launch", "bb", &targeted, "--target", "m2"])?;
    launches.push(started.elapsed());
    assert_eq!(info(&cluster, 0, &targeted)?["location"], "m2");

    tracing::info!("--- an instance's config through `config`, beside the global keys");
    cluster.cli_ok(
        0,
        &["config", "set", &targeted, "user.tier=gold", "user.x=1"],
    )?;
    assert_eq!(
        cluster
            .cli_ok(1, &["config", "get", &targeted, "user.tier"])?
            .trim(),
        "gold"
    );
    assert!(cluster
        .cli_ok(0, &["config", "show", &targeted])?
        .contains("user.x"));
    cluster.cli_ok(0, &["config", "unset", &targeted, "user.x"])?;
    assert!(!cluster
        .cli_ok(0, &["config", "show", &targeted])?
        .contains("user.x"));
    cluster.cli_ok(0, &["config", "set", "user.global", "yes"])?;
    assert_eq!(
        cluster.cli_ok(0, &["config", "get", "user.global"])?.trim(),
        "yes"
    );

    tracing::info!("--- isolation: hostname, PID 1, root (through m1, on m2)");
    let (code, hostname, _) = exec(&cluster, 0, &on_m2, &["hostname"])?;
    assert_eq!((code, hostname.trim()), (0, on_m2.as_str()));
    let (_, comm, _) = exec(&cluster, 0, &on_m2, &["cat", "/proc/1/comm"])?;
    assert_eq!(comm.trim(), "init");
    let host_pid = info(&cluster, 0, &on_m2)?["state"]["pid"]
        .as_u64()
        .ok_or_else(|| anyhow!("no pid"))?;
    ensure!(host_pid > 1, "init's host PID is {host_pid}");
    let marker = work.path().join("host-only");
    std::fs::write(&marker, b"host")?;
    let (code, _, _) = exec(&cluster, 0, &on_m2, &["cat", &marker.to_string_lossy()])?;
    assert_ne!(code, 0, "a host file is visible in the container");

    tracing::info!("--- exec: exit codes and output");
    let mut execs = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (code, _, _) = exec(&cluster, 0, &on_m3, &["true"])?;
        execs.push(started.elapsed());
        assert_eq!(code, 0);
    }
    let (code, stdout, stderr) = exec(
        &cluster,
        0,
        &on_m3,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    )?;
    assert_eq!(
        (code, stdout.as_str(), stderr.as_str()),
        (3, "out\n", "err\n")
    );
    let script = format!(
        "local r = instances.exec('{on_m3}', {{'sh', '-c', 'echo hi; exit 3'}}) \
         local s = instances.state('{on_m3}') \
         return {{r.exit_code, r.stdout, s.status, s.processes > 0}}"
    );
    let answer: Value = serde_json::from_str(&cluster.cli_ok(0, &["exec", &script])?)?;
    assert_eq!(answer, serde_json::json!([3, "hi\n", "Running", true]));
    // Options of exec, and the live state's usage figures (CPU time grows with work done).
    let script = format!(
        "local r = instances.exec('{on_m3}', {{'sh', '-c', 'pwd; echo $GREETING'}}, {{cwd='/tmp', env={{GREETING='hello'}}}}) \
         local before = instances.state('{on_m3}') \
         instances.exec('{on_m3}', {{'sh', '-c', 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'}}) \
         local after = instances.state('{on_m3}') \
         return {{r.stdout, before.memory.usage > 0, after.cpu.usage > before.cpu.usage}}"
    );
    let answer: Value = serde_json::from_str(&cluster.cli_ok(0, &["exec", &script])?)?;
    assert_eq!(answer, serde_json::json!(["/tmp\nhello\n", true, true]));
    println!(
        "launch to Running (CLI, median of {}): {:.1} ms; exec true (CLI, median of {}): {:.1} ms",
        launches.len(),
        median_ms(launches),
        execs.len(),
        median_ms(execs)
    );

    tracing::info!("--- limits.memory: an allocation past it is OOM-killed");
    let limited = name("mem");
    cluster.cli_ok(0, &["launch", "bb", &limited, "-c", "limits.memory=32MiB"])?;
    let (code, _, stderr) = exec(
        &cluster,
        0,
        &limited,
        &[
            "sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
    )?;
    assert_eq!(code, 128 + libc::SIGKILL, "not OOM-killed: {stderr}");

    tracing::info!("--- stop, start, force stop");
    cluster.cli_ok(0, &["stop", &targeted, "--timeout", "10"])?;
    assert_eq!(info(&cluster, 0, &targeted)?["status"], "Stopped");
    cluster.cli_ok(0, &["start", &targeted])?;
    assert_eq!(info(&cluster, 0, &targeted)?["status"], "Running");
    cluster.cli_ok(0, &["stop", &targeted, "--force"])?;
    assert_eq!(info(&cluster, 0, &targeted)?["status"], "Stopped");
    cluster.cli_ok(0, &["start", &targeted])?;
    let first = info(&cluster, 0, &targeted)?["state"]["pid"].clone();
    cluster.cli_ok(0, &["restart", &targeted, "--timeout", "10"])?;
    let restarted = info(&cluster, 0, &targeted)?;
    assert_eq!(restarted["status"], "Running", "{restarted}");
    assert_ne!(restarted["state"]["pid"], first, "{restarted}");
    cluster.cli_ok(0, &["stop", &targeted, "--force"])?;

    tracing::info!("--- the instance life cycle from Lua");
    let scripted = name("lua");
    let script = format!(
        "instances.create{{image='bb', name='{scripted}', target='m2', config={{['user.a']='1'}}}} \
         local created = instances.get('{scripted}').status \
         instances.start('{scripted}') \
         local pid = instances.state('{scripted}').pid \
         instances.restart('{scripted}', {{timeout=10}}) \
         local again = instances.state('{scripted}') \
         instances.set('{scripted}', 'user.b', '2') \
         instances.unset('{scripted}', 'user.a') \
         local config = instances.get('{scripted}').config \
         local listed = false \
         for _, i in ipairs(instances.list()) do if i.name == '{scripted}' then listed = i.location end end \
         instances.stop('{scripted}', {{force=true}}) \
         local stopped = instances.get('{scripted}').status \
         instances.delete('{scripted}') \
         return {{created, again.status, again.pid ~= pid, config['user.a'] == nil, config['user.b'], listed, stopped}}"
    );
    let answer: Value = serde_json::from_str(&cluster.cli_ok(1, &["exec", &script])?)?;
    assert_eq!(
        answer,
        serde_json::json!(["Stopped", "Running", true, true, "2", "m2", "Stopped"])
    );
    let error = cluster.cli_fails(0, &["info", &scripted])?;
    assert!(error.contains(&scripted), "{error}");

    tracing::info!("--- an init that halts on its own is recorded Stopped");
    // `halt` returns at once, but init's shutdown kills every process, so the exec may end
    // with the container rather than with halt's own code: what matters is the record.
    let (code, _, stderr) = exec(&cluster, 0, &limited, &["halt"])?;
    println!("halt exited {code}: {}", stderr.trim());
    wait_status(&cluster, &limited, "Stopped").await?;

    tracing::info!("--- kill -9 of m3's daemon: the container runs on, adopted");
    let before = info(&cluster, 0, &on_m3)?["state"]["pid"].clone();
    cluster.kill(2)?;
    cluster.restart(2)?;
    cluster.wait_ready(2)?;
    let after = wait_for(
        "m3 answering for its instance",
        Duration::from_secs(30),
        || async { info(&cluster, 0, &on_m3).ok() },
    )
    .await?;
    assert_eq!(after["status"], "Running");
    assert_eq!(after["state"]["pid"], before, "init was restarted");
    assert_eq!(exec(&cluster, 0, &on_m3, &["true"])?.0, 0);

    tracing::info!(
        "--- init ends while m3's daemon is down: recorded by the time waitready returns"
    );
    let pid = after["state"]["pid"]
        .as_u64()
        .ok_or_else(|| anyhow!("no pid: {after}"))?;
    cluster.kill(2)?;
    // SAFETY: kill has no memory preconditions; the PID is the container's init, on this host.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    wait_for("init to be gone", Duration::from_secs(10), || async {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await?;
    cluster.restart(2)?;
    cluster.wait_ready(2)?;
    let ended = info(&cluster, 0, &on_m3)?;
    assert_eq!(
        ended["status"], "Stopped",
        "waitready returned before adoption: {ended}"
    );
    cluster.cli_ok(0, &["start", &on_m3])?;

    tracing::info!("--- clean restart of m3: stopped at shutdown, started again when back");
    cluster.terminate(2, Duration::from_secs(30))?;
    let stopped = info(&cluster, 0, &on_m3)?;
    assert_eq!(stopped["status"], "Stopped", "{stopped}");
    assert_eq!(stopped["config"]["volatile.last_state.power"], "RUNNING");
    cluster.restart(2)?;
    cluster.wait_ready(2)?;
    let again = wait_status(&cluster, &on_m3, "Running").await?;
    assert!(again["config"].get("volatile.last_state.power").is_none());

    tracing::info!("--- delete: refused while running, then nothing left");
    let error = cluster.cli_fails(0, &["delete", &on_m2])?;
    assert!(error.contains("is running"), "{error}");
    let pid = info(&cluster, 0, &on_m2)?["state"]["pid"]
        .as_u64()
        .ok_or_else(|| anyhow!("no pid"))?;
    cluster.cli_ok(0, &["delete", &on_m2, "--force"])?;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "init {pid} runs on"
    );
    let storage_name = format!("default_{on_m2}");
    assert!(!cluster
        .dir(1)
        .join("storage-pools/default/containers")
        .join(&storage_name)
        .exists());
    let cgroup_name = starling_runtime::instances::driver::Driver::new(
        cluster.dir(1).join("storage-pools/default"),
        std::path::PathBuf::new(),
    )
    .cgroup_name(&starling_runtime::instances::driver::InstanceKey::new(
        "default",
        on_m2.as_str(),
    ));
    for controller in ["memory", "cpu", "cpuacct", "pids", ""] {
        let dir = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("starling")
            .join(&cgroup_name);
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!mounts.contains(&storage_name), "a mount is left");
    assert!(cluster
        .cli_fails(0, &["info", &on_m2])?
        .contains("not found"));

    tracing::info!("--- bad input");
    for (args, expected) in [
        (vec!["launch", "nope", "x1"], "image \"nope\" not found"),
        (vec!["launch", "bb", "1bad"], "invalid instance name"),
        (
            vec!["launch", "bb", "x2", "-c", "limits.memory=lots"],
            "limits.memory",
        ),
        (
            vec!["launch", "bb", "x3", "-p", "nope"],
            "profile \"nope\" not found",
        ),
        (vec!["launch", "bb", "x4", "--target", "m9"], "m9"),
        (vec!["start", "x5"], "not found"),
    ] {
        let error = cluster.cli_fails(0, &args)?;
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    assert_eq!(
        instances(&cluster, 0)?.len(),
        4,
        "a refused launch left a record"
    );

    tracing::info!("--- a launch that fails after its record is written does not say Refused");
    let broken = name("broken");
    let mut request = launch_of(&broken, "m2");
    request
        .config
        .insert("starling.init".to_string(), "/bin/nothing-here".to_string());
    let client = Client::local(&cluster.dir(0)).await?;
    let answer = client
        .operation(Operation::Instance(InstanceOperation::Create(request)))
        .await;
    client.close();
    // `Refused` says that nothing changed, and a client (the chaos harness among them) may
    // rely on it; here the instance's record was written.
    match answer {
        Err(Error::Incomplete(message)) => {
            assert!(
                message.contains(&broken) && message.contains("nothing-here"),
                "{message}"
            )
        }
        other => panic!("a launch whose start failed answered {other:?}"),
    }
    assert_eq!(info(&cluster, 0, &broken)?["status"], "Error");

    tracing::info!(
        "--- a launch cut off after its record, sent again as the same request, is finished"
    );
    // m3 is dead but not yet offline: the record is written on it, its root file system
    // cannot be. Sent again with the same request id once m3 is back, the launch must create
    // and start it (before, the repeat was answered from the first command's outcome, `ok`,
    // and the record stayed without a container).
    cluster.kill(2)?;
    let resumed = name("resumed");
    let request = launch_of(&resumed, "m3");
    let request_id = (0x5eed_u128 << 64) | u128::from(suffix);
    let launch = Operation::Instance(InstanceOperation::Create(request));
    let client = Client::local(&cluster.dir(0)).await?;
    let first = client.operation_with_id(launch.clone(), request_id).await;
    assert!(
        first.is_err(),
        "a launch on a dead member answered {first:?}"
    );
    cluster.restart(2)?;
    cluster.wait_ready(2)?;
    let again = client.operation_with_id(launch, request_id).await;
    client.close();
    assert!(again.is_ok(), "the repeated launch answered {again:?}");
    let record = wait_status(&cluster, &resumed, "Running").await?;
    assert_eq!(record["location"], "m3", "{record}");
    let uuid = record["config"]["volatile.uuid"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(uuid.len(), 36, "{record}");

    tracing::info!("--- clean up");
    for record in instances(&cluster, 0)? {
        let name = record["name"].as_str().unwrap_or_default();
        cluster.cli_ok(0, &["delete", name, "--force"])?;
    }
    Ok(())
}

/// Goal: a command runs in a running instance through the instance's own member without
/// asking the leader: with the two other members killed (no quorum, no leader), `exec`
/// through that member still runs it; through a member without it, the leader is asked.
/// Method: 3 member processes, an instance launched on m3 through m1 (exec through m1 is
/// relayed); then `kill -9` of m1 and m2 and exec through m3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_through_the_instances_member_needs_no_leader() -> Result<()> {
    init_tracing();
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    let (mut cluster, _leftovers, _work) =
        starling_tests::containers::cluster_with_busybox(3, false).await?;
    cluster.cli_ok(0, &["launch", "bb", "alone", "--target", "m3"])?;
    let (code, stdout, stderr) = exec(&cluster, 0, "alone", &["hostname"])?;
    assert_eq!((code, stdout.trim()), (0, "alone"), "{stderr}");
    cluster.kill(0)?;
    cluster.kill(1)?;
    let (code, stdout, stderr) = exec(&cluster, 2, "alone", &["echo", "still here"])?;
    assert_eq!((code, stdout.trim()), (0, "still here"), "{stderr}");
    Ok(())
}

/// Goal: a launch onto a member that cannot be reached for a moment (a loaded machine, a
/// member that just joined) waits for it: the image copy is tried again rather than failing
/// at the first unanswered connection.
/// Method: 3 member processes, the image on m1 only (`cluster.images_minimal_replica=1`); m3
/// is stopped with SIGSTOP for 8 s (well under the offline threshold of 20 s): after 6 s (its
/// connections have timed out: new ones cannot be made) `launch --target m3` starts; 2 s
/// later m3 is continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_waits_for_a_member_unreachable_for_a_moment() -> Result<()> {
    init_tracing();
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) =
        starling_tests::containers::cluster_with_busybox_on(3, Some("1")).await?;
    let images: Value =
        serde_json::from_str(&cluster.cli_ok(0, &["image", "list", "--format", "json"])?)?;
    assert_eq!(
        images[0]["locations"],
        serde_json::json!(["m1"]),
        "{images}"
    );
    cluster.signal(2, "STOP")?;
    std::thread::sleep(Duration::from_millis(
        starling_transport::IDLE_TIMEOUT_MS + 1_000,
    ));
    let launch = cluster.spawn_cli(0, &["launch", "bb", "late", "--target", "m3"]);
    std::thread::sleep(Duration::from_secs(2));
    cluster.signal(2, "CONT")?;
    let output = launch?.wait_with_output()?;
    ensure!(
        output.status.success(),
        "the launch failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record = wait_status(&cluster, "late", "Running").await?;
    assert_eq!(record["location"], "m3", "{record}");
    Ok(())
}

/// Goal: `exec` through a member whose copy of the state does not know the instance's member
/// (a spare: outside Raft, its copy is the one it had when it left the replicas) asks the
/// leader where that member is, instead of failing with "member not found".
/// Method: 3 voters and no stand-bys (`cluster.max_standby=0`); m4 joins and is a spare, then
/// m5 joins (m4's copy never hears of it); an instance is launched on m5; `exec` through m4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_through_a_spare_that_never_heard_of_the_instances_member() -> Result<()> {
    init_tracing();
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    let (mut cluster, _leftovers, _work) =
        starling_tests::containers::cluster_with_busybox_on(3, Some("1")).await?;
    cluster.cli_ok(0, &["config", "set", "cluster.max_standby=0"])?;
    cluster.join(3)?;
    wait_for("m4 to be a spare", Duration::from_secs(30), || async {
        let members = cluster.members(0).ok()?;
        let spare = members
            .as_array()?
            .iter()
            .any(|member| member["server_name"] == "m4" && member["database"] == false);
        spare.then_some(())
    })
    .await?;
    cluster.join(4)?;
    let _more_leftovers = LeftoverContainers {
        pools: (3..5)
            .map(|index| cluster.dir(index).join("storage-pools/default"))
            .collect(),
    };
    cluster.cli_ok(0, &["launch", "bb", "far", "--target", "m5"])?;
    let (code, stdout, stderr) = exec(&cluster, 3, "far", &["hostname"])?;
    assert_eq!((code, stdout.trim()), (0, "far"), "{stderr}");
    Ok(())
}

/// Goal: a delete that loses its quorum part-way never leaves the record behind with nothing
/// on disk: the record is marked before the files go, so without a quorum nothing goes, and
/// with one the instance is deleted whole.
/// Method: 5 member processes (3 voters, 2 stand-bys); an instance on a stand-by; the two
/// voters that do not lead are paused with SIGSTOP and the instance is deleted through the
/// leader at once; then they resume. Before the mark, the files went first and the record's
/// removal met no quorum: the record stayed, `Running`, on a member with no container
/// (`starling-chaos` seed 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_without_quorum_leaves_the_instance_whole() -> Result<()> {
    init_tracing();
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) =
        starling_tests::containers::cluster_with_busybox(5, false).await?;
    let members = cluster.wait_roles(0, 3, 2).await?;
    let leader = cluster.leader(0).await?;
    let followers = starling_tests::following_voters(&members, leader)?;
    let index = starling_tests::member_index;
    let holder = starling_tests::with_role(&members, "database-standby")
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("no stand-by: {members}"))?;
    cluster.cli_ok(leader, &["launch", "bb", "doomed", "--target", &holder])?;
    let container = cluster
        .dir(index(&holder)?)
        .join("storage-pools/default/containers/default_doomed");
    ensure!(container.exists(), "no container on {holder}");

    for follower in &followers {
        cluster.signal(*follower, "STOP")?;
    }
    let output = cluster.cli(leader, &["delete", "doomed", "--force"]);
    for follower in &followers {
        cluster.signal(*follower, "CONT")?;
    }
    let output = output?;
    println!(
        "the delete without quorum said: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let record = wait_for("the cluster to answer", Duration::from_secs(60), || async {
        let listed = cluster.cli_ok(leader, &["list", "--format", "json"]).ok()?;
        serde_json::from_str::<Value>(&listed).ok()
    })
    .await?;
    let kept = record
        .as_array()
        .into_iter()
        .flatten()
        .any(|instance| instance["name"] == "doomed");
    if kept {
        assert!(
            container.exists(),
            "the record of doomed stayed, its files went: {record}"
        );
        cluster.cli_ok(leader, &["delete", "doomed", "--force"])?;
    }
    wait_for("doomed to go whole", Duration::from_secs(30), || async {
        let listed = cluster.cli_ok(leader, &["list", "--format", "json"]).ok()?;
        (!listed.contains("\"doomed\"") && !container.exists()).then_some(())
    })
    .await?;
    Ok(())
}

/// Goal: a delete sent again with its request id, after its first attempt marked the record
/// and then failed (its member was down), deletes the instance: the answer "done" always means
/// gone. Before, a repeat was answered from the first command's outcome (the mark's) with
/// "done" while the record stayed (`starling-chaos` seed 7 after the mark came in: "deleted
/// (acknowledged), yet it has a record").
/// Method: 3 member processes; an instance on a member that does not lead; that member killed
/// with SIGKILL; the delete sent to the leader with a chosen request id fails; the member
/// restarted; the same request sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_asked_again_after_a_failed_attempt_deletes() -> Result<()> {
    init_tracing();
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    let (mut cluster, _leftovers, _work) =
        starling_tests::containers::cluster_with_busybox(3, false).await?;
    let leader = cluster.leader(0).await?;
    let holder = (leader + 1) % 3;
    let holder_name = format!("m{}", holder + 1);
    cluster.cli_ok(leader, &["launch", "bb", "twice", "--target", &holder_name])?;
    let container = cluster
        .dir(holder)
        .join("storage-pools/default/containers/default_twice");
    ensure!(container.exists(), "no container on {holder_name}");
    let third = format!("m{}", (leader + 2) % 3 + 1);
    cluster.cli_ok(leader, &["init", "bb", "stays", "--target", &third])?;

    let client = Client::local(&cluster.dir(leader)).await?;
    let delete = || {
        Operation::Instance(InstanceOperation::Delete {
            project: "default".into(),
            name: "twice".into(),
            force: true,
        })
    };
    let request_id = 0x5eed_0000_0000_0000_0000_0000_0000_0001_u128;
    cluster.kill(holder)?;
    let first = client.operation_with_id(delete(), request_id).await;
    println!("the first attempt, its member down: {first:?}");
    ensure!(first.is_err(), "the delete succeeded with its member down");
    let listed = cluster.cli_ok(leader, &["list", "--format", "json"])?;
    ensure!(
        listed.contains("\"twice\""),
        "the failed delete removed the record: {listed}"
    );
    // A move is the same: its first command claims the instance. Asked again, it cannot
    // tell whether it moved, and says so instead of "done".
    let move_to_holder = || {
        Operation::Instance(InstanceOperation::Move {
            project: "default".into(),
            name: "stays".into(),
            target: holder_name.clone(),
        })
    };
    let move_id = request_id + 1000;
    let moved = client.operation_with_id(move_to_holder(), move_id).await;
    println!("a move to the member down: {moved:?}");
    ensure!(moved.is_err(), "a move to a member down succeeded");
    let again = client.operation_with_id(move_to_holder(), move_id).await;
    println!("the move asked again: {again:?}");
    assert!(
        matches!(again, Err(Error::OutcomeUnknown(_))),
        "the repeated move answered {again:?}; it is on {}",
        info(&cluster, leader, "stays")?["location"]
    );

    cluster.restart(holder)?;
    cluster.wait_ready(holder)?;
    let again = wait_for(
        "the repeat to get an answer",
        Duration::from_secs(60),
        || async {
            match client.operation_with_id(delete(), request_id).await {
                Err(Error::NotSent(_) | Error::Transport(_)) => None,
                answer => Some(answer),
            }
        },
    )
    .await?;
    println!("the repeat: {again:?}");
    if again.is_ok() {
        let listed = cluster.cli_ok(leader, &["list", "--format", "json"])?;
        assert!(
            !listed.contains("\"twice\""),
            "the repeated delete answered done, yet the record stays: {listed}"
        );
        assert!(
            !container.exists(),
            "the repeated delete answered done, yet its files stay"
        );
    } else {
        panic!("the repeated delete failed with its member back: {again:?}");
    }
    Ok(())
}

/// Goal: an instance whose member was killed after making its container and before the
/// create's report reached the records does not stay `Creating`: once the member is back, the
/// record says what the container is (`starling-chaos` seed 7, 30 m: "instance
/// chaos4430-157: recorded Creating, but its container runs on m3", its member being the
/// leader, killed right after making the container).
/// Method: 3 member processes; a launch on the leader, targeting the leader; the leader
/// frozen (SIGSTOP) the moment the container's directory appears; when the record (read
/// through the new leader) still says `Creating`, the old leader killed (SIGKILL) and
/// restarted. A freeze that came after the report is a try that proves nothing: it is
/// undone and the next instance tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cut_short_by_its_members_death_is_recorded_as_it_is() -> Result<()> {
    init_tracing();
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    let (mut cluster, _leftovers, _work) =
        starling_tests::containers::cluster_with_busybox(3, false).await?;
    cluster.wait_roles(0, 3, 0).await?;
    for attempt in 0..8 {
        let leader = cluster.leader(0).await?;
        let other = (leader + 1) % 3;
        let leader_name = format!("m{}", leader + 1);
        let name = format!("cut{attempt}");
        let container = cluster
            .dir(leader)
            .join(format!("storage-pools/default/containers/default_{name}"));
        let mut launch =
            cluster.spawn_cli(leader, &["launch", "bb", &name, "--target", &leader_name])?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !container.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        cluster.signal(leader, "STOP")?;
        ensure!(container.exists(), "the launch made no container");
        let status = wait_for("a new leader's answer", Duration::from_secs(30), || async {
            info(&cluster, other, &name)
                .map_err(|error| println!("not yet: {error:#}"))
                .ok()
        })
        .await?["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        println!("attempt {attempt}: frozen with the record {status}");
        if status != "Creating" {
            cluster.signal(leader, "CONT")?;
            let _ = launch.wait();
            continue;
        }
        cluster.kill(leader)?;
        let _ = launch.kill();
        let _ = launch.wait();
        cluster.restart(leader)?;
        cluster.wait_ready(leader)?;
        let init = container.join("state.json");
        let settled = wait_for(
            "the record to say what the container is",
            Duration::from_secs(60),
            || async {
                let record = info(&cluster, other, &name).ok()?;
                let status = record["status"].as_str()?.to_string();
                (status != "Creating").then_some(status)
            },
        )
        .await?;
        println!(
            "the record after the restart: {settled} (state.json: {})",
            init.exists()
        );
        ensure!(
            settled == "Running" || settled == "Stopped",
            "the record says {settled}"
        );
        // What runs agrees with the record (an exec may wait for the member to be seen
        // online again).
        if settled == "Running" {
            wait_for("an exec in it", Duration::from_secs(30), || async {
                cluster.cli_ok(other, &["exec", &name, "--", "true"]).ok()
            })
            .await?;
        } else {
            let refused = cluster.cli_fails(leader, &["exec", &name, "--", "true"])?;
            ensure!(
                refused.contains("is not running"),
                "an exec in the Stopped instance said: {refused}"
            );
        }
        return Ok(());
    }
    bail!("every freeze came after the create's report: the window was never hit")
}

/// Goal: an image's base (its unpacked root file system, under the layers of the containers
/// made from it) stays on a member while the member holds the image, as LXD keeps an image's
/// volume: deleting the last instance made from it keeps it (the next create unpacks
/// nothing), and deleting the image removes it.
/// Method: 1 member process; `init` of the busybox image, the base found on disk; the
/// instance deleted, the base still there; the image deleted, the base gone within 15 s (the
/// image's file goes first, then the member's watcher sweeps the bases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_base_stays_while_the_image_does() -> Result<()> {
    init_tracing();
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) =
        starling_tests::containers::cluster_with_busybox(1, false).await?;
    cluster.cli_ok(0, &["init", "bb", "first"])?;
    let bases = cluster.dir(0).join("storage-pools/default/bases");
    let base = std::fs::read_dir(&bases)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.is_dir())
        .ok_or_else(|| anyhow!("no base under {}", bases.display()))?;
    ensure!(
        base.join("rootfs/bin/busybox").is_file(),
        "the base is not whole"
    );

    cluster.cli_ok(0, &["delete", "first"])?;
    ensure!(
        base.join("rootfs/bin/busybox").is_file(),
        "the base went with the last instance while the image stays"
    );
    cluster.cli_ok(0, &["init", "bb", "second"])?;
    cluster.cli_ok(0, &["delete", "second"])?;

    cluster.cli_ok(0, &["image", "delete", "bb"])?;
    wait_for(
        "the base of the deleted image to go",
        Duration::from_secs(15),
        || {
            let gone = !base.exists();
            async move { gone.then_some(()) }
        },
    )
    .await?;
    Ok(())
}

/// Goal: concurrent `instances.set` of different keys of one instance all land: a set never
/// undoes another applied while it was made (each used to propose the whole config map as
/// the leader read it).
/// Method: 1 member process, one instance made with `init`; 4 `starling exec` processes at
/// once, each setting 20 keys of its own; every key must be there at the end, with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_of_one_instance_all_land() -> Result<()> {
    init_tracing();
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    let (cluster, _leftovers, _work) =
        starling_tests::containers::cluster_with_busybox(1, false).await?;
    cluster.cli_ok(0, &["init", "bb", "c1"])?;
    const WRITERS: usize = 4;
    const KEYS: usize = 20;
    let writers = (0..WRITERS)
        .map(|writer| {
            let code = format!(
                "for key = 0, {} do instances.set('c1', 'user.w{writer}.k' .. key, '{writer}-' .. key) end",
                KEYS - 1
            );
            cluster.spawn_cli(0, &["exec", &code])
        })
        .collect::<Result<Vec<_>>>()?;
    for writer in writers {
        let output = writer.wait_with_output()?;
        ensure!(
            output.status.success(),
            "a writer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let config = &info(&cluster, 0, "c1")?["config"];
    let missing: Vec<String> = (0..WRITERS)
        .flat_map(|writer| (0..KEYS).map(move |key| (writer, key)))
        .filter(|(writer, key)| {
            config[format!("user.w{writer}.k{key}")] != format!("{writer}-{key}")
        })
        .map(|(writer, key)| format!("user.w{writer}.k{key}"))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} of {} keys were lost: {missing:?}",
        missing.len(),
        WRITERS * KEYS
    );
    cluster.cli_ok(0, &["delete", "c1"])?;
    Ok(())
}

/// The user and group `nobody` runs as on Debian.
const NOBODY: u32 = 65534;

/// Runs members as `nobody` on a loopback address of their own: the harness's command becomes
/// `sh -c 'chown nobody DIR && exec setpriv ... BINARY --dir DIR ...'`.
struct Unprivileged {
    ip: String,
}

impl MemberPlacement for Unprivileged {
    fn ip(&self, _index: usize) -> Result<String> {
        Ok(self.ip.clone())
    }

    fn command(&self, _index: usize, program: &Path) -> Result<Command> {
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!(
            "chown {NOBODY}:{NOBODY} \"$2\" && exec setpriv --reuid={NOBODY} --regid={NOBODY} \
             --clear-groups --inh-caps=-all -- \"$0\" \"$@\""
        ));
        command.arg(program);
        Ok(command)
    }
}

/// Goal: where namespaces cannot be created, `launch` fails with an error saying what is
/// missing (root, for the namespaces it names), and the instance is recorded `Error` with
/// that message, no process running.
/// Method: one member process run as `nobody` (`setpriv`, no capabilities), the busybox
/// image, `launch` through the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_without_root_says_what_is_missing() -> Result<()> {
    init_tracing();
    // Root, to run a member as another user.
    if !starling_tests::containers::is_root() {
        return Ok(());
    }
    // The binary where `nobody` may run it, and a loopback address of this test's own.
    let bin = tempfile::tempdir()?;
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755))?;
    let binary: PathBuf = bin.path().join("starling");
    std::fs::copy(starling_tests::processes::starling_binary()?, &binary)?;
    let ip = format!(
        "127.0.{}.{}",
        1 + std::process::id() % 250,
        2 + std::process::id() % 200
    );
    let cluster = ProcessCluster::with_placement(binary, Arc::new(Unprivileged { ip }))?;
    std::fs::set_permissions(cluster.root(), std::fs::Permissions::from_mode(0o755))?;
    let cluster = cluster.started(1)?;
    let work = tempfile::tempdir()?;
    let image = busybox_image(work.path())?;
    cluster.cli_ok(
        0,
        &["image", "import", &image.to_string_lossy(), "--alias", "bb"],
    )?;
    let error = cluster.cli_fails(0, &["launch", "bb", "c1"])?;
    assert!(
        error.contains("namespaces") && error.contains("root") && error.contains("CAP_SYS_ADMIN"),
        "{error}"
    );
    let record = info(&cluster, 0, "c1")?;
    assert_eq!(record["status"], "Error", "{record}");
    assert!(
        record["status_message"]
            .as_str()
            .is_some_and(|message| message.contains("CAP_SYS_ADMIN")),
        "{record}"
    );
    assert_eq!(record["state"]["processes"], 0, "{record}");
    Ok(())
}
