//! The command line's own errors, on the real binary (no member needed).
//!
//! The commands that talk to a member are tested against real member processes in
//! `tests/tests/processes.rs`, which builds the binary of the current tree for them.

use std::process::Command;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
}

fn starling(args: &[&str]) -> (bool, String, String) {
    let output = starling_output(args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn starling_output(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .output()
        .expect("run starling")
}

/// Goal: the help lists the commands an operator looks for.
/// Method: `starling --help`, searched for each command.
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
/// Method: `cluster list` with neither `--dir` nor `--remote`.
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
/// Method: `daemon` on an empty directory, then `daemon --bootstrap` on an address other
/// members cannot reach.
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
/// Method: `--remote` with an address missing from a fresh client configuration.
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

/// Goal: arguments the command line cannot parse are refused before anything is sent, with
/// clap's usage error (exit status 2) naming the problem and pointing at `--help`, never a
/// panic.
/// Method: an unknown subcommand, an unknown `--format`, a missing argument, an unknown flag.
#[test]
fn unparsable_arguments_are_refused_with_usage() {
    init_tracing();
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (
            &["cluster", "frobnicate"],
            "unrecognized subcommand 'frobnicate'",
        ),
        (
            &["--format", "xml", "cluster", "list"],
            "invalid value 'xml' for '--format <FORMAT>'",
        ),
        (
            &["cluster", "add"],
            "the following required arguments were not provided",
        ),
        (
            &["config", "get"],
            "the following required arguments were not provided",
        ),
        (
            &["waitready", "--timeout", "soon"],
            "invalid value 'soon' for '--timeout <TIMEOUT>'",
        ),
        (
            &["cluster", "list", "--no-such-flag"],
            "unexpected argument '--no-such-flag'",
        ),
    ];
    for (args, message) in cases {
        tracing::info!(?args, "--- refused");
        let output = starling_output(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "starling {args:?}: {stderr}");
        assert!(stderr.contains(message), "starling {args:?}: {stderr}");
        assert!(
            stderr.contains("try '--help'"),
            "starling {args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "starling {args:?}: {stderr}");
    }
}
