//! The key-value space scripts share (`kv.*`), on real member processes: values of every kind
//! round-trip and are read from any member, compare-and-set compares values, concurrent
//! increments from several members each apply once and answer distinct values, and every
//! bad input is refused with what is wrong; `time.now()`, `log.*` and `run FILE -- ARGS` beside
//! them.

use std::collections::BTreeSet;

use anyhow::Result;
use serde_json::{json, Value};
use starling_tests::init_tracing;
use starling_tests::processes::ProcessCluster;

/// Goal: kv values round-trip, are seen from every member at once, and `cas`, `delete`,
/// `list` and `incr` do what they say; bad input is refused naming what is wrong.
/// Method: 3 member processes; writes through one member, reads through the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_shared_and_compared() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(3).await?;
    cluster.lua(
        0,
        "kv.set('app/config', {replicas=3, zones={'a','b'}, on=true, name='web'}) return true",
    )?;
    for via in [1, 2] {
        let value = cluster.lua(via, "return kv.get('app/config')")?;
        assert_eq!(
            value,
            json!({"replicas": 3, "zones": ["a", "b"], "on": true, "name": "web"})
        );
    }
    assert_eq!(cluster.lua(1, "return kv.get('nothing') == nil")?, true);

    // Compare-and-set: absent → 1 once; the comparison is of values, not of text.
    assert_eq!(
        cluster.lua(1, "return {kv.cas('lock', nil, 1), kv.cas('lock', nil, 2)}")?,
        json!([true, false])
    );
    assert_eq!(
        cluster.lua(2,
            "return {kv.cas('app/config', {name='web', on=true, zones={'a','b'}, replicas=3}, 'v2'), kv.get('app/config')}"
        )?,
        json!([true, "v2"])
    );
    assert_eq!(
        cluster.lua(0, "return {kv.cas('lock', 1, nil), kv.get('lock') == nil}")?,
        json!([true, true])
    );

    // Increments, list and delete.
    assert_eq!(
        cluster.lua(
            0,
            "return {kv.incr('n'), kv.incr('n', 41), kv.incr('n', -2)}"
        )?,
        json!([1, 42, 40])
    );
    cluster.lua(
        1,
        "for i = 1, 5 do kv.set('list/' .. i, i * i) end return true",
    )?;
    assert_eq!(
        cluster.lua(2, "return kv.list('list/', {limit=2})")?,
        json!([{"key": "list/1", "value": 1}, {"key": "list/2", "value": 4}])
    );
    cluster.lua(2, "kv.delete('list/1') kv.set('list/2', nil) return true")?;
    assert_eq!(cluster.lua(0, "return #kv.list('list/')")?, json!(3));

    // Bad input.
    for (code, expected) in [
        ("return kv.incr('app/config')", "not an integer"),
        ("return kv.incr('n', 1.5)", "must be an integer"),
        ("return kv.get('')", "cannot be empty"),
        (
            "return kv.get(string.rep('k', 300))",
            "over the limit of 256",
        ),
        (
            "return kv.set('big', string.rep('v', 70000))",
            "over the limit of 65536",
        ),
        ("return kv.get(5)", "must be a string"),
        (
            "return kv.list('', {limit=0})",
            "limit must be an integer from 1",
        ),
        (
            "return kv.incr('max', math.maxinteger) and kv.incr('max')",
            "overflow",
        ),
    ] {
        let error = cluster.cli_fails(0, &["exec", code])?;
        assert!(error.contains(expected), "{code}: {error}");
    }
    assert_eq!(cluster.lua(1, "return kv.get('n')")?, 40);

    // The helpers scripts need beside kv: the clock and the member's log.
    let now = cluster.lua(
        2,
        "log.warn('from a script', kv.get('n')) return time.now()",
    )?;
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(
        (clock - now.as_f64().unwrap_or_default()).abs() < 5.0,
        "{now}"
    );
    let log = cluster.log(2);
    assert!(
        log.lines()
            .any(|line| line.contains("WARN script: from a script\t40")),
        "{log}"
    );

    // `starling run FILE -- a b`: the arguments in `arg`, as the `lua` command gives them.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("count.lua");
    std::fs::write(
        &file,
        "return {arg[0], arg[1], arg[2], #arg, kv.incr(arg[1], tonumber(arg[2]))}",
    )?;
    let out = cluster.cli_ok(1, &["run", &file.to_string_lossy(), "--", "n", "2"])?;
    let answer: Value = serde_json::from_str(out.trim())?;
    assert_eq!(answer, json!(["count.lua", "n", "2", 2, 42]));
    Ok(())
}

/// Goal: 100 concurrent `kv.incr` from several members end at exactly 100, each answered with
/// a distinct value (none lost, none applied twice).
/// Method: 3 member processes; 10 command-line clients at once, through the three members,
/// each incrementing 10 times and returning its answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_each_apply_once() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(3).await?;
    let code = "local seen = {} for i = 1, 10 do seen[#seen + 1] = kv.incr('hits') end return seen";
    let clients: Vec<_> = (0..10)
        .map(|index| cluster.spawn_cli(index % 3, &["exec", code]))
        .collect::<Result<_>>()?;
    let mut answers = BTreeSet::new();
    for client in clients {
        let output = client.wait_with_output()?;
        anyhow::ensure!(
            output.status.success(),
            "a client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let seen: Vec<i64> = serde_json::from_slice(&output.stdout)?;
        assert_eq!(seen.len(), 10);
        assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
        answers.extend(seen);
    }
    assert_eq!(answers, (1..=100).collect::<BTreeSet<i64>>());
    assert_eq!(cluster.lua(2, "return kv.get('hits')")?, 100);
    Ok(())
}
