//! The command line's own errors, on the real binary (no member needed).

use std::process::Command;

fn starling(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .output()
        .expect("run starling");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Goal: the help lists the commands an operator looks for.
#[test]
fn help_lists_the_commands() {
    let (ok, stdout, _) = starling(&["--help"]);
    assert!(ok);
    for command in [
        "daemon",
        "cluster",
        "config",
        "exec",
        "run",
        "repl",
        "demo",
        "bench",
        "waitready",
    ] {
        assert!(stdout.contains(command), "help lacks {command}:\n{stdout}");
    }
}

/// Goal: a command without a member to talk to says how to name one.
#[test]
fn client_commands_need_a_member() {
    let (ok, _, stderr) = starling(&["cluster", "list"]);
    assert!(!ok);
    assert!(
        stderr.contains("--dir DIR or --remote HOST:PORT"),
        "{stderr}"
    );
}

/// Goal: restarting from an empty directory explains what to do instead.
#[test]
fn daemon_on_an_empty_directory_explains() {
    let empty = tempfile::tempdir().expect("tempdir");
    let dir = empty.path().to_string_lossy().into_owned();
    let (ok, _, stderr) = starling(&["--dir", &dir, "daemon"]);
    assert!(!ok);
    assert!(
        stderr.contains("holds no member: use --bootstrap or --join TOKEN"),
        "{stderr}"
    );
    let (ok, _, stderr) = starling(&[
        "--dir",
        &dir,
        "daemon",
        "--bootstrap",
        "--name",
        "m1",
        "--listen",
        "0.0.0.0:7443",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot be reached by other members"),
        "{stderr}"
    );
}

/// Goal: a remote that was never added is named in the error.
#[test]
fn unknown_remote_is_named() {
    let config = tempfile::tempdir().expect("tempdir");
    let config = config.path().to_string_lossy().into_owned();
    let (ok, _, stderr) = starling(&[
        "--config-dir",
        &config,
        "--remote",
        "10.1.2.3:7443",
        "cluster",
        "list",
    ]);
    assert!(!ok);
    assert!(stderr.contains("unknown remote 10.1.2.3:7443"), "{stderr}");
}
