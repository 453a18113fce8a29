//! The REPL on a pseudo-terminal, as an operator uses it: tables, `:format`, `help`, and
//! Ctrl-C stopping a running chunk while the REPL goes on.

use std::time::Duration;

use anyhow::Result;
use starling_tests::init_tracing;
use starling_tests::processes::ProcessCluster;

const WAIT: Duration = Duration::from_secs(30);

/// Goal: lists of records show as tables, `:format json` switches to JSON, `help("name")`
/// explains one built-in, and Ctrl-C stops a chunk that keeps calling the member (it really
/// stops: the counter it raises stays put) while the REPL answers the next input.
/// Method: 1 member process; `starling repl` on a pseudo-terminal it controls; a second
/// command line reads the counter the loop raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_on_a_terminal() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(1).await?;
    let mut terminal = cluster.cli_on_terminal(0, &["repl"])?;
    terminal.wait_for_text("starling", WAIT)?;
    terminal.type_text("cluster.members()\r")?;
    terminal.wait_for_text("| SERVER_NAME |", WAIT)?;
    terminal.type_text(":format json\r")?;
    terminal.type_text("cluster.members()\r")?;
    terminal.wait_for_text("\"server_name\": \"m1\"", WAIT)?;
    terminal.type_text(":format yaml\r")?;
    terminal.type_text("cluster.info()\r")?;
    terminal.wait_for_text("server_name: m1", WAIT)?;
    terminal.type_text("help('kv.incr')\r")?;
    terminal.wait_for_text("adds delta (1) to the integer at key", WAIT)?;

    terminal.type_text("while true do kv.incr('spin') end\r")?;
    let spin = || -> Result<i64> {
        let out = cluster.cli_ok(0, &["exec", "return kv.get('spin') or 0"])?;
        Ok(out.trim().parse()?)
    };
    starling_tests::wait_for("the loop to run", WAIT, || async {
        (spin().ok()? > 0).then_some(())
    })
    .await?;
    terminal.type_text("\x03")?;
    terminal.wait_for_text("error: interrupted", WAIT)?;
    let stopped_at = spin()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(spin()?, stopped_at, "the loop went on after Ctrl-C");
    terminal.type_text("40 + 2\r")?;
    terminal.wait_for_text("42", WAIT)?;
    terminal.type_text("exit\r")?;
    let (status, transcript) = terminal.wait(WAIT)?;
    assert!(status.success(), "{transcript:?}");
    // Kept in the client's config directory for the next session.
    let history = std::fs::read_to_string(cluster.config_dir().join("history"))?;
    assert!(history.contains("help('kv.incr')"), "{history:?}");
    Ok(())
}

/// Goal: `starling demo` runs its members in the REPL's process, and their logs go to a file
/// in the demo directory, never into the prompt, also when a member's peer goes away (openraft
/// warns then).
/// Method: `starling demo --dir D --members 3` on a pseudo-terminal; a member is removed from
/// the REPL (the others' Raft warns about it); the transcript holds no log line and
/// `D/demo.log` holds the members' warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_keeps_member_logs_out_of_the_prompt() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let config = tempfile::tempdir()?;
    let mut command = std::process::Command::new(starling_tests::processes::starling_binary()?);
    command
        .arg("--config-dir")
        .arg(config.path())
        .arg("--dir")
        .arg(dir.path().join("demo"))
        .args(["demo", "--members", "3"]);
    let mut terminal = starling_tests::terminal::Terminal::spawn(command)?;
    terminal.wait_for_text("Starling demo: 3 members", WAIT)?;
    // The prompt (the banner says "Starling").
    terminal.wait_for_text("starling", WAIT)?;
    terminal.type_text("#cluster.members() .. ' in all'\r")?;
    terminal.wait_for_text("3 in all", WAIT)?;
    terminal.type_text("cluster.remove('m3', {force = true}) return 'removed'\r")?;
    terminal.wait_for_text("removed", WAIT)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    terminal.type_text("exit\r")?;
    let (_, transcript) = terminal.wait(WAIT)?;
    for level in [" INFO ", " WARN ", " ERROR "] {
        assert!(
            !transcript.contains(level),
            "a log line in the prompt: {transcript:?}"
        );
    }
    let log = std::fs::read_to_string(dir.path().join("demo").join("demo.log"))?;
    // m3's own warning as it went: in the file, not in the prompt.
    assert!(
        log.contains("this member was removed from the cluster"),
        "{log}"
    );
    Ok(())
}
