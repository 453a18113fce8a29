//! The event stream on real member processes: `starling monitor` on one member shows what
//! happens on another, with and without event hubs, also from a remote client; a script
//! triggered by a member going offline runs exactly once, through a change of leader.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use starling_tests::init_tracing;
use starling_tests::processes::ProcessCluster;

const WAIT: Duration = Duration::from_secs(30);

/// A running `starling monitor`, its lines gathered as they come.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    /// `monitor --format json`.
    fn start(command: Command) -> Result<Monitor> {
        Monitor::start_with(command, &["--format", "json"])
    }

    fn start_with(mut command: Command, args: &[&str]) -> Result<Monitor> {
        let mut child = command
            .arg("monitor")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .spawn()
            .context("starting starling monitor")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let gathered = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                gathered
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(line);
            }
        });
        Ok(Monitor { child, lines })
    }

    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The first event (of a JSON monitor) that `matches`.
    fn seen(&self, matches: &dyn Fn(&Value) -> bool) -> Option<Value> {
        self.lines().iter().find_map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not one JSON object per line: {line}: {error}"));
            matches(&event).then_some(event)
        })
    }

    async fn wait(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Result<Value> {
        starling_tests::wait_for(what, WAIT, || async { self.seen(&matches) }).await
    }

    /// Waits until the monitor shows a log line `via` writes (written again until it does):
    /// from then on the monitor and the relays it depends on are up.
    async fn wait_live(&self, cluster: &ProcessCluster, via: usize, tag: &str) -> Result<()> {
        starling_tests::wait_for("the monitor to show events", WAIT, || async {
            cluster.lua(via, &format!("log.info('{tag}')")).ok()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.seen(&|event| logged(event, tag)).map(|_| ())
        })
        .await
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn logged(event: &Value, message: &str) -> bool {
    event["type"] == "logging" && event["metadata"]["message"] == message
}

fn lifecycle(event: &Value, action: &str) -> bool {
    event["type"] == "lifecycle" && event["metadata"]["action"] == action
}

/// Runs `command`, which must succeed; its standard output, trimmed.
fn succeeded(command: &mut Command) -> Result<String> {
    let output = command.output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn monitor_on(cluster: &ProcessCluster, index: usize) -> Command {
    let mut command = Command::new(cluster.binary());
    command
        .arg("--dir")
        .arg(cluster.dir(index))
        .env("STARLING_CONFIG_DIR", cluster.config_dir());
    command
}

/// Goal: `monitor` on one member shows the events of the whole cluster as they happen —
/// a script's log line on another member, lifecycle events of writes made through a third —
/// without event hubs (each member takes every other's events) and with one (the others take
/// them from the hub only: while the hub is paused, nothing from the third member arrives;
/// once it resumes, the event does). A trusted remote client monitors too.
/// Method: 3 member processes; `starling monitor --format json` on the leader's side; log
/// lines through `starling exec`; `cluster.role_add(HUB, 'event-hub')`; SIGSTOP/SIGCONT of the
/// hub; a remote client made trusted with `trust add` + `remote add`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_events_from_other_members_with_and_without_hubs() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(3).await?;
    let leader = cluster.leader(0).await?;
    // The monitor's member, the hub-to-be and the third: the hub is never the leader (it is
    // paused below) and the monitor's member is never the hub.
    let watcher = leader;
    let hub = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    let name = |index: usize| format!("m{}", index + 1);

    let monitor = Monitor::start(monitor_on(&cluster, watcher))?;
    // Lifecycle events only, a line each (the default format).
    let lifecycle_only =
        Monitor::start_with(monitor_on(&cluster, watcher), &["--type", "lifecycle"])?;
    monitor
        .wait_live(&cluster, third, "probe without hubs")
        .await?;

    tracing::info!("--- a log line on another member, without hubs");
    cluster.lua(third, "log.warn('written on the third member') return true")?;
    let event = monitor
        .wait("the third member's log line", |event| {
            logged(event, "written on the third member")
        })
        .await?;
    assert_eq!(event["location"], name(third).as_str());
    assert_eq!(event["metadata"]["level"], "warn");
    assert!(event["timestamp"]
        .as_str()
        .is_some_and(|time| time.ends_with('Z')));

    tracing::info!("--- lifecycle events of a write made through another member");
    cluster.lua(hub, "config.set('user.watched', 'yes') return true")?;
    let event = monitor
        .wait("config-updated", |event| {
            lifecycle(event, "config-updated")
                && event["metadata"]["context"]["key"] == "user.watched"
        })
        .await?;
    assert_eq!(event["metadata"]["source"], "/1.0");
    starling_tests::wait_for("the pretty line", WAIT, || async {
        lifecycle_only
            .lines()
            .iter()
            .any(|line| line.contains(" lifecycle config-updated /1.0 key=user.watched"))
            .then_some(())
    })
    .await?;

    tracing::info!("--- operation events of a stored script's run");
    let status = cluster.lua(
        third,
        "scripts.create('op', 'return 1') return scripts.run('op').status",
    )?;
    assert_eq!(status, "ok");
    let operation = |event: &Value, status: &str| {
        event["type"] == "operation"
            && event["metadata"]["description"] == "Running script op"
            && event["metadata"]["status"] == status
    };
    let started = monitor
        .wait("the run's operation", |event| operation(event, "Running"))
        .await?;
    let ended = monitor
        .wait("the run's end", |event| operation(event, "Success"))
        .await?;
    assert_eq!(started["metadata"]["id"], ended["metadata"]["id"]);
    // Stored scripts run on the leader.
    assert_eq!(ended["location"], name(leader).as_str());

    tracing::info!("--- with an event hub");
    cluster.lua(
        watcher,
        &format!("cluster.role_add('{}', 'event-hub') return true", name(hub)),
    )?;
    let event = monitor
        .wait("cluster-member-updated", |event| {
            lifecycle(event, "cluster-member-updated")
        })
        .await?;
    assert_eq!(event["location"], name(hub).as_str());
    // The relays follow the new roles within their re-plan period; this probe goes through
    // the hub once they have.
    tokio::time::sleep(Duration::from_secs(1)).await;
    monitor
        .wait_live(&cluster, third, "probe through the hub")
        .await?;

    cluster.signal(hub, "STOP")?;
    cluster.lua(third, "log.warn('held by the hub') return true")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let early = monitor.seen(&|event| logged(event, "held by the hub"));
    cluster.signal(hub, "CONT")?;
    assert!(
        early.is_none(),
        "an event reached the monitor around the paused hub: {early:?}"
    );
    let event = monitor
        .wait("the event once the hub resumes", |event| {
            logged(event, "held by the hub")
        })
        .await?;
    assert_eq!(event["location"], name(third).as_str());

    tracing::info!("--- a trusted remote client monitors another member");
    let token = cluster
        .cli_ok(0, &["trust", "add", "laptop"])?
        .trim()
        .to_string();
    let address = cluster.address(third)?;
    let client_config = tempfile::tempdir()?;
    let remote = |config: &Path| {
        let mut command = Command::new(cluster.binary());
        command.arg("--config-dir").arg(config);
        command
    };
    succeeded(remote(client_config.path()).args(["remote", "add", &address, &token]))?;
    let mut command = remote(client_config.path());
    command.args(["--remote", &address]);
    let remote_monitor = Monitor::start(command)?;
    remote_monitor
        .wait_live(&cluster, watcher, "probe for the remote monitor")
        .await?;
    let answer = succeeded(remote(client_config.path()).args([
        "--remote",
        &address,
        "exec",
        "log.info('from the remote') return 6 * 7",
    ]))?;
    assert_eq!(answer, "42");
    remote_monitor
        .wait("the remote's log line", |event| {
            logged(event, "from the remote")
        })
        .await?;
    monitor
        .wait("the remote's log line on the first monitor", |event| {
            logged(event, "from the remote")
        })
        .await?;

    tracing::info!("--- the remote client runs a file and opens the REPL");
    let file = client_config.path().join("sum.lua");
    std::fs::write(&file, "return tonumber(arg[1]) + tonumber(arg[2])")?;
    let answer = succeeded(
        remote(client_config.path())
            .args(["--remote", &address, "run"])
            .arg(&file)
            .args(["--", "40", "2"]),
    )?;
    assert_eq!(answer, "42");
    let mut command = remote(client_config.path());
    command.args(["--remote", &address, "repl"]);
    let mut terminal = starling_tests::terminal::Terminal::spawn(command)?;
    terminal.wait_for_text("starling", WAIT)?;
    terminal.type_text("cluster.info().server_name .. ' answers'\r")?;
    terminal.wait_for_text(&format!("{} answers", name(third)), WAIT)?;
    terminal.type_text("config.set('user.from_the_repl', 'yes')\r")?;
    remote_monitor
        .wait("the REPL's write", |event| {
            lifecycle(event, "config-updated")
                && event["metadata"]["context"]["key"] == "user.from_the_repl"
        })
        .await?;
    terminal.type_text("log.warn('typed at the remote REPL')\r")?;
    let event = remote_monitor
        .wait("the REPL's log line", |event| {
            logged(event, "typed at the remote REPL")
        })
        .await?;
    assert_eq!(event["location"], name(third).as_str());
    terminal.type_text("exit\r")?;
    let (status, transcript) = terminal.wait(WAIT)?;
    assert!(status.success(), "{transcript:?}");
    let lines = lifecycle_only.lines();
    assert!(
        lines.iter().all(|line| line.contains(" lifecycle ")),
        "--type lifecycle showed other events: {lines:?}"
    );
    Ok(())
}

fn runs(cluster: &ProcessCluster, via: usize) -> Result<Vec<Value>> {
    let value = cluster.lua(via, "return scripts.runs('on-offline', {limit = 100})")?;
    Ok(value.as_array().cloned().unwrap_or_default())
}

/// Goal: a script triggered by `cluster-member-offline` runs exactly once per member going
/// offline, with the event as its argument — also when the leader that ran it is killed
/// afterwards (the new leader does not run it again) and for the killed leader itself.
/// Method: 5 member processes (3 voters), offline threshold 10 s; the script counts each
/// member in a kv key; `kill -9` of a non-leader, then, once its run is recorded, of the
/// leader; the runs and counters are read through a survivor after a further wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_on_a_member_going_offline_runs_exactly_once() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(5).await?;
    cluster.wait_roles(0, 3, 2).await?;
    cluster.cli_ok(0, &["config", "set", "cluster.offline_threshold=10"])?;
    let source = "local event = json.decode(arg[1]) \
                  kv.incr('offline:' .. event.location) \
                  return {action = event.metadata.action, location = event.location}";
    // Stored with the command line on another event, then moved to this one from Lua.
    let file = cluster.dir(0).join("on-offline.lua");
    std::fs::write(&file, source)?;
    let path = file.to_string_lossy().to_string();
    cluster.cli_ok(
        0,
        &[
            "script",
            "add",
            "on-offline",
            &path,
            "--on",
            "cluster-member-online",
        ],
    )?;
    let shown = cluster.lua(0, "return scripts.get('on-offline')")?;
    assert_eq!(shown["on"], serde_json::json!(["cluster-member-online"]));
    cluster.lua(
        0,
        "scripts.update('on-offline', {on = 'cluster-member-offline'}) return true",
    )?;
    let shown = cluster.lua(0, "return scripts.get('on-offline')")?;
    assert_eq!(shown["on"], serde_json::json!(["cluster-member-offline"]));

    let leader = cluster.leader(0).await?;
    let victim = (leader + 1) % 5;
    let victim_name = format!("m{}", victim + 1);
    tracing::info!(victim, "--- kill -9 of a member that does not lead");
    cluster.kill(victim)?;
    let via = (leader + 2) % 5;
    starling_tests::wait_for(
        "the triggered run to end",
        Duration::from_secs(60),
        || async {
            runs(&cluster, via)
                .ok()?
                .iter()
                .any(|run| run["status"] == "ok")
                .then_some(())
        },
    )
    .await?;

    // A stand-by takes the dead member's vote first, so the cluster outlives the leader too.
    cluster.wait_roles(via, 3, 1).await?;
    tracing::info!(leader, "--- kill -9 of the leader that ran it");
    cluster.kill(leader)?;
    let leader_name = format!("m{}", leader + 1);
    let via = (0..5)
        .find(|index| *index != leader && *index != victim)
        .unwrap_or(0);
    starling_tests::wait_for(
        "the run for the killed leader",
        Duration::from_secs(60),
        || async {
            runs(&cluster, via)
                .ok()?
                .iter()
                .any(|run| {
                    run["status"] == "ok" && run["result"]["location"] == leader_name.as_str()
                })
                .then_some(())
        },
    )
    .await?;
    // Time for a wrong second run to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let record = runs(&cluster, via)?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    for name in [&victim_name, &leader_name] {
        let of_it: Vec<&Value> = record
            .iter()
            .filter(|run| run["event"]["location"] == name.as_str())
            .collect();
        assert_eq!(of_it.len(), 1, "runs for {name}: {of_it:?}");
        assert_eq!(of_it[0]["status"], "ok");
        assert_eq!(of_it[0]["result"]["action"], "cluster-member-offline");
        assert_eq!(
            of_it[0]["event"]["metadata"]["action"],
            "cluster-member-offline"
        );
        let counted = cluster.lua(via, &format!("return kv.get('offline:{name}')"))?;
        assert_eq!(counted, 1, "the counter of {name}");
    }
    assert_eq!(record.len(), 2, "{record:?}");
    Ok(())
}
