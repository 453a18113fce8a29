//! `starling-chaos --time DURATION --seed N [--members 5] [--keep DIR]`: runs real `starling`
//! members, each in a network namespace of its own, under faults scheduled from the seed, and
//! checks what the clients saw (`starling_tests::chaos`). Prints the seed first and the
//! summary last, its last line `N operations, F faults (...), V violations`; exits non-zero on
//! any violation. Needs root (namespaces, iptables).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::Parser;
use starling_tests::chaos::{self, Options};

/// A Jepsen-style fault harness for Starling.
#[derive(Parser, Debug)]
#[command(name = "starling-chaos")]
struct Arguments {
    /// How long to inject faults: 90s, 30m, 2h.
    #[arg(long, default_value = "60s")]
    time: String,
    /// The seed of the schedule (random when not given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Members at the start (at least 3).
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Write the history and the members' logs to DIR even when the run passes.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Check again the history a run kept in DIR (`--keep`, or a failed run's directory),
    /// without running anything.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["time", "seed", "members", "keep"])]
    check: Option<PathBuf>,
    /// The `starling` binary to run (default: the one beside this program, then `STARLING_BIN`).
    #[arg(long, value_name = "PATH")]
    starling: Option<PathBuf>,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,starling_tests::chaos=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let arguments = Arguments::parse();
    if let Some(dir) = &arguments.check {
        return check_kept(dir);
    }
    let seed = arguments.seed.unwrap_or_else(random_seed);
    println!("seed {seed}");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("starling-chaos: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    // Everything the run made (processes, namespaces) is dropped inside `block_on`, on
    // success, error, panic or interruption alike, before the summary is printed.
    let outcome = runtime.block_on(async {
        let options = options(arguments, seed)?;
        tokio::select! {
            report = chaos::run(options) => report.map(Some),
            signal = interrupted() => {
                eprintln!("starling-chaos: {signal}: stopping and cleaning up");
                Ok(None)
            }
        }
    });
    drop(runtime);
    match outcome {
        Ok(Some(report)) => {
            for line in report.summary() {
                println!("{line}");
            }
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(None) => {
            println!("interrupted, 0 operations checked, 0 violations");
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("starling-chaos: {error:#}");
            println!("the run did not complete: 1 violations");
            ExitCode::from(2)
        }
    }
}

/// `--check DIR`: the checkers again over a kept history.
fn check_kept(dir: &std::path::Path) -> ExitCode {
    match chaos::check_kept(dir) {
        Ok(report) => {
            let lines = report.summary();
            // Fault and recovery figures are not in a kept history.
            for line in lines.iter().filter(|line| !line.starts_with("recovery")) {
                println!("{line}");
            }
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("starling-chaos: {error:#}");
            println!("the history could not be checked: 1 violations");
            ExitCode::from(2)
        }
    }
}

fn options(arguments: Arguments, seed: u64) -> Result<Options> {
    let starling = match arguments.starling {
        Some(path) => path,
        None => beside_this_program()
            .or_else(|| std::env::var_os("STARLING_BIN").map(PathBuf::from))
            .ok_or_else(|| {
                anyhow!("no starling binary beside starling-chaos: build it (cargo build -p starling) or pass --starling PATH")
            })?,
    };
    Ok(Options {
        time: chaos::parse_duration(&arguments.time)?,
        seed,
        members: arguments.members,
        keep: arguments.keep,
        starling,
    })
}

/// `starling` in this program's directory (cargo puts both in `target/<profile>/`).
fn beside_this_program() -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.parent()?.join("starling");
    path.is_file().then_some(path)
}

/// A seed from the clock and the process id, for runs that do not name one.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default();
    chaos::rng::Rng::new(nanos ^ u64::from(std::process::id())).next_u64() % 1_000_000
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP (a closed terminal), naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut hang_up)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = terminate.recv() => "terminated",
        _ = hang_up.recv() => "hung up",
    }
}
