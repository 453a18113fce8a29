//! Stored scripts on real member processes: kept in the cluster database, run when asked (on
//! the leader or a chosen member) and on a schedule, each tick exactly once, through a
//! `kill -9` of the leader and a real network partition of it (iptables); every bad input
//! refused with what is wrong.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use starling_tests::init_tracing;
use starling_tests::processes::ProcessCluster;

/// The runs of `name`, through member `via` (as `script runs NAME --format json`).
fn runs(cluster: &ProcessCluster, via: usize, name: &str) -> Result<Vec<Value>> {
    let out = cluster.cli_ok(
        via,
        &[
            "script", "runs", name, "--limit", "1000", "--format", "json",
        ],
    )?;
    serde_json::from_str(out.trim()).with_context(|| format!("the runs of {name}: {out}"))
}

/// Goal: a stored script runs when asked, with arguments, on the leader or on the member it
/// names, and answers its record (result, printed output); a scheduled one runs every tick;
/// one pinned where nothing can run it is recorded skipped with the reason; bad input is
/// refused naming what is wrong.
/// Method: 3 member processes; Lua and the command line; an `@every 1s` script watched for
/// 3.5 s; a 21 s run asked for through a follower (longer than a forward's usual timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_scripts_run_when_asked_and_on_schedule() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(3).await?;
    cluster.lua(0,
        r#"scripts.create('hello', "print('hi from ' .. cluster.info().server_name) return {arg[1], kv.incr('hello')}", {description='says hi'}) return true"#,
    )?;
    let run = cluster.lua(1, "return scripts.run('hello', {'x'})")?;
    assert_eq!(run["status"], "ok", "{run}");
    assert_eq!(run["result"], json!(["x", 1]), "{run}");
    let leader = format!("m{}", cluster.leader(0).await? + 1);
    assert_eq!(run["member"], leader.as_str(), "{run}");
    assert_eq!(run["output"], format!("hi from {leader}\n"), "{run}");

    tracing::info!("--- pinned to a member");
    let pinned = if leader == "m2" { "m3" } else { "m2" };
    cluster.lua(
        2,
        &format!("scripts.update('hello', {{member='{pinned}'}}) return true"),
    )?;
    let run = cluster.lua(0, "return scripts.run('hello')")?;
    assert_eq!(
        (&run["status"], &run["member"]),
        (&json!("ok"), &json!(pinned)),
        "{run}"
    );
    assert_eq!(run["output"], format!("hi from {pinned}\n"), "{run}");
    cluster.lua(
        2,
        "scripts.update('hello', {member='@nowhere'}) return true",
    )?;
    let run = cluster.lua(0, "return scripts.run('hello')")?;
    assert_eq!(run["status"], "skipped", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("nowhere"),
        "{run}"
    );

    tracing::info!("--- on a schedule, from the command line");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tick.lua");
    std::fs::write(&file, "return kv.incr('ticks')")?;
    cluster.cli_ok(
        1,
        &[
            "script",
            "add",
            "tick",
            &file.to_string_lossy(),
            "--schedule",
            "@every 1s",
        ],
    )?;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let shown = cluster.cli_ok(0, &["script", "show", "tick"])?;
    assert!(shown.contains("@every 1s"), "{shown}");
    let ticks = runs(&cluster, 2, "tick")?;
    assert!((3..=5).contains(&ticks.len()), "{ticks:?}");
    for pair in ticks.windows(2) {
        assert_eq!(pair[0]["status"], "ok", "{pair:?}");
        let (a, b) = (tick_ms(&pair[0])?, tick_ms(&pair[1])?);
        assert_eq!(b - a, 1_000, "{pair:?}");
    }
    let list = cluster.cli_ok(0, &["script", "list"])?;
    assert!(list.contains("tick") && list.contains("hello"), "{list}");

    tracing::info!("--- a run longer than a forwarded request's usual timeout (20 s)");
    let follower = (cluster.leader(0).await? + 1) % 3;
    cluster.lua(
        follower,
        "scripts.create('slow', \"sleep(21) return 'done'\", {timeout=60}) return true",
    )?;
    let run = cluster.lua(follower, "return scripts.run('slow')")?;
    assert_eq!(
        (&run["status"], &run["result"]),
        (&json!("ok"), &json!("done")),
        "{run}"
    );

    tracing::info!("--- bad input");
    for (code, expected) in [
        ("scripts.create('bad', 'return (')", "does not compile"),
        (
            "scripts.create('bad', 'return 1', {schedule='every minute'})",
            "is not a 5-field cron expression",
        ),
        ("scripts.create('hello', 'return 1')", "already exists"),
        (
            "scripts.create('bad', 'return 1', {on={'x'}})",
            "unknown event \"x\"",
        ),
        (
            "scripts.create('bad', 'return 1', {on=42})",
            "on must be an event name or a list of them",
        ),
        (
            "scripts.create('bad', 'return 1', {timeout=0})",
            "timeout must be",
        ),
        (
            "scripts.create('bad', 'return 1', {missed='later'})",
            "run_once",
        ),
        (
            "scripts.create('bad', 'return 1', {colour='red'})",
            "unknown option",
        ),
        ("scripts.create('b@d', 'return 1')", "invalid script name"),
        ("scripts.run('nope')", "not found"),
        ("scripts.update('nope', {})", "not found"),
    ] {
        let error = cluster.cli_fails(0, &["exec", code])?;
        assert!(error.contains(expected), "{code}: {error}");
    }
    cluster.cli_ok(0, &["script", "delete", "tick"])?;
    let error = cluster.cli_fails(0, &["script", "show", "tick"])?;
    assert!(error.contains("not found"), "{error}");
    Ok(())
}

/// Milliseconds since the epoch of a run's `tick`.
fn tick_ms(run: &Value) -> Result<i64> {
    let text = run["tick"].as_str().context("a run without a tick")?;
    Ok(chrono::DateTime::parse_from_rfc3339(text)?.timestamp_millis())
}

/// Goal: an `@every 1s` script keeps running each tick exactly once when the leader is
/// killed with SIGKILL: no tick has two runs, ticks are missing only while there was no
/// leader, and the runs that ended counted exactly as many increments as were recorded.
/// Method: 3 member processes; the script increments a kv counter; the leader is killed
/// after 3 s; 4 s later the record is read through a surviving member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_runs_once_through_a_leader_kill() -> Result<()> {
    init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    cluster.lua(
        0,
        "scripts.create('tick', \"return kv.incr('ticks')\", {schedule='@every 1s'}) return true",
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader(0).await?;
    tracing::info!(leader, "--- kill -9 of the leader");
    cluster.kill(leader)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let via = (leader + 1) % 3;
    // No new tick from now on: one claimed between reading the record and reading the
    // counter would count an increment the record did not show.
    cluster.lua(via, "scripts.delete('tick') return true")?;
    // The runs settle: none under way any more (a run of the killed leader is lost).
    let record =
        starling_tests::wait_for("the runs to settle", Duration::from_secs(30), || async {
            let record = runs(&cluster, via, "tick").ok()?;
            record
                .iter()
                .all(|run| run["status"] != "running")
                .then_some(record)
        })
        .await;
    let record = match record {
        Ok(record) => record,
        Err(_) => runs(&cluster, via, "tick")?,
    };
    println!("{}", serde_json::to_string_pretty(&record)?);
    let ticks: Vec<i64> = record.iter().map(tick_ms).collect::<Result<_>>()?;
    assert!(
        ticks.windows(2).all(|pair| pair[0] < pair[1]),
        "a tick ran twice: {ticks:?}"
    );
    let gaps: Vec<i64> = ticks.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert!(
        gaps.iter().all(|gap| *gap <= 3_000),
        "ticks missing beyond the failover: {gaps:?}"
    );
    assert!(ticks.len() >= 5, "{ticks:?}");
    let ok = record.iter().filter(|run| run["status"] == "ok").count() as i64;
    let lost = record.iter().filter(|run| run["status"] == "lost").count() as i64;
    assert_eq!(ok + lost, record.len() as i64, "{record:?}");
    let counted = cluster
        .lua(via, "return kv.get('ticks')")?
        .as_i64()
        .unwrap_or(-1);
    // Every run that ended ok incremented once; a lost one may have.
    assert!(
        ok <= counted && counted <= ok + lost,
        "counter {counted}, {ok} ok, {lost} lost"
    );
    let results: Vec<i64> = record
        .iter()
        .filter(|run| run["status"] == "ok")
        .filter_map(|run| run["result"].as_i64())
        .collect();
    let mut unique = results.clone();
    unique.dedup();
    assert_eq!(unique, results, "two runs saw the same count: {results:?}");
    Ok(())
}

/// Goal: a leader cut off from the others by the network runs nothing: it cannot commit a
/// claim, so the ticks are claimed and run by the new leader, each once; after healing the
/// old leader follows and has run nothing meanwhile.
/// Method: 3 in-process members on loopback addresses of their own; an `@every 1s` script
/// incrementing a kv counter; iptables DROP rules between the leader's address and the
/// others' for 4 s; the record is read after healing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_runs_nothing() -> Result<()> {
    use starling_tests::netfault::{member_ip, Firewall};
    init_tracing();
    let ips: Vec<String> = (0..3).map(|member| member_ip(7, member)).collect();
    let firewall = Firewall::new()?;
    let cluster = starling_tests::TestCluster::start_with_ips(3, ips.clone()).await?;
    let leader = cluster.leader().await?;
    let old_name = cluster.member(leader).name();
    let follower = (leader + 1) % 3;
    let client = cluster.client(follower).await?;
    client
        .exec(
            "scripts.create('tick', \"return kv.incr('ticks')\", {schedule='@every 1s'})",
            "setup",
            |_| {},
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    tracing::info!(leader, "--- cut the leader off");
    for other in (0..3).filter(|index| *index != leader) {
        firewall.cut(&ips[leader], &ips[other])?;
    }
    let cut_at = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    firewall.heal()?;
    let healed_at = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // No new tick from now on, and the runs under way end: a tick claimed between reading the
    // record and reading the counter would count an increment the record did not show.
    client
        .exec("scripts.delete('tick')", "stop", |_| {})
        .await?;
    let read_record = || async {
        let record = client
            .exec("return scripts.runs('tick', {limit=100})", "read", |_| {})
            .await?;
        anyhow::Ok(record.as_array().cloned().unwrap_or_default())
    };
    let settled =
        starling_tests::wait_for("the runs to settle", Duration::from_secs(10), || async {
            let record = read_record().await.ok()?;
            record
                .iter()
                .all(|run| run["status"] != "running")
                .then_some(record)
        })
        .await;
    let record = match settled {
        Ok(record) => record,
        Err(_) => read_record().await?,
    };
    println!("{}", serde_json::to_string_pretty(&record)?);
    let millis = |time: std::time::SystemTime| -> i64 {
        time.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64)
    };
    let started = |run: &Value| -> Result<i64> {
        let text = run["started_at"].as_str().context("no started_at")?;
        Ok(chrono::DateTime::parse_from_rfc3339(text)?.timestamp_millis())
    };
    // A claim committed just before the cut may start just after it.
    let (cut, healed) = (millis(cut_at) + 200, millis(healed_at));
    for run in &record {
        let at = started(run)?;
        if run["member"] == old_name.as_str() {
            assert!(
                !(cut..healed).contains(&at),
                "the cut-off leader ran a tick: {run}"
            );
        }
    }
    let during = record
        .iter()
        .filter(|run| started(run).is_ok_and(|at| (cut..healed).contains(&at)))
        .count();
    assert!(
        during >= 2,
        "the new leader ran no tick during the cut: {record:?}"
    );
    let ticks: Vec<i64> = record.iter().map(tick_ms).collect::<Result<_>>()?;
    assert!(ticks.windows(2).all(|pair| pair[0] < pair[1]), "{ticks:?}");
    let ok = record.iter().filter(|run| run["status"] == "ok").count() as i64;
    let counted = client
        .exec("return kv.get('ticks')", "read", |_| {})
        .await?
        .as_i64()
        .unwrap_or(-1);
    let running = record
        .iter()
        .filter(|run| run["status"] == "running")
        .count() as i64;
    assert!(
        ok <= counted && counted <= ok + running,
        "counter {counted}, {ok} ok: {record:?}"
    );
    Ok(())
}

/// Goal: updates of different fields of one script at once all land: an update never undoes
/// another applied while it was made (each used to propose the whole script as read).
/// Method: 3 member processes; two `starling exec` processes at once, one setting the
/// description 60 times, the other the timeout 60 times, through different members; the
/// script ends with the last of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_one_script_at_once_all_land() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(3).await?;
    cluster.lua(0, "scripts.create('s', 'return 1') return true")?;
    let writers = [
        (
            1,
            "for i = 0, 59 do scripts.update('s', {description = 'd' .. i}) end",
        ),
        (2, "for i = 1, 60 do scripts.update('s', {timeout = i}) end"),
    ]
    .into_iter()
    .map(|(via, code)| cluster.spawn_cli(via, &["exec", code]))
    .collect::<Result<Vec<_>>>()?;
    for writer in writers {
        let output = writer.wait_with_output()?;
        anyhow::ensure!(
            output.status.success(),
            "a writer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let script = cluster.lua(0, "return scripts.get('s')")?;
    assert_eq!(
        (&script["description"], &script["timeout"]),
        (&json!("d59"), &json!(60)),
        "{script}"
    );
    Ok(())
}
