//! Tests of printed output: backpressure on a full channel, the output cap,
//! and cancellation by dropping the receiver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc::channel;

use super::{host, lines, run_with, small_limits, BUILTINS, PRINT_CAPACITY};
use crate::{run, Error, Limits, Script, Session};

fn script(source: &str) -> Script {
    Script {
        source: source.to_string(),
        chunk_name: "script.lua".to_string(),
        args: Vec::new(),
    }
}

/// Goal: `print` waits while the channel is full instead of dropping lines or
/// queueing without bound. Method: a script prints five lines into a channel
/// of two, then calls the host; on the single-threaded test runtime we let it
/// run until the channel is full and check it has stopped before its third
/// line (no host call yet, not finished), then drain the channel and check
/// every line arrives in order and the script completes.
#[tokio::test]
async fn print_waits_while_the_channel_is_full() {
    let fixture = host();
    let (tx, mut rx) = channel(2);
    let source = "for i = 1, 5 do print('line', i) end cluster.members() return 'done'";
    let handle = tokio::spawn(run(
        Arc::clone(&fixture) as Arc<dyn crate::Host>,
        BUILTINS,
        script(source),
        small_limits(),
        tx,
    ));

    tracing::info!("--- the script fills the channel and waits");
    for _ in 0..1000 {
        if rx.len() == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(rx.len(), 2, "the script should have filled the channel");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!handle.is_finished(), "print must wait for room");
    assert!(
        fixture.calls().is_empty(),
        "the script must not get past print"
    );

    tracing::info!("--- draining lets it finish");
    let mut received = Vec::new();
    while let Some(line) = rx.recv().await {
        received.push(line);
    }
    let expected: Vec<String> = (1..=5).map(|i| format!("line\t{i}")).collect();
    assert_eq!(received, expected);
    let result = handle.await.expect("the script task panicked");
    assert_eq!(result, Ok(json!("done")));
    assert_eq!(fixture.calls().len(), 1);
}

/// Goal: waiting to print counts against the wall-clock limit, and `pcall`
/// cannot turn the timeout into a normal return. Method: scripts print into a
/// channel of one that nobody reads, with a 300 ms deadline; each must end
/// with `Error::Timeout` well within 5 s.
#[tokio::test]
async fn waiting_to_print_is_bounded_by_the_deadline() {
    let limits = Limits {
        wall_clock: Duration::from_millis(300),
        ..small_limits()
    };
    let scripts = [
        "for i = 1, 10 do print(i) end",
        "for i = 1, 10 do pcall(print, i) end return 'escaped'",
        "help() help() help()",
    ];
    for source in scripts {
        let (tx, _rx) = channel(1);
        let started = Instant::now();
        let result = run(host(), BUILTINS, script(source), limits, tx).await;
        assert_eq!(result, Err(Error::Timeout { seconds: 0.3 }), "{source}");
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(5),
            "{source} took {elapsed:?}"
        );
    }
}

/// Goal: the bytes a script prints are capped, the cap is fatal (not
/// catchable), the line that would cross it is not sent, and the message
/// names the cap. Method: a 100-byte cap against scripts printing 11-byte
/// lines (10 characters and a line break) in a loop, directly and under
/// `pcall`; exactly nine lines must arrive.
#[tokio::test]
async fn printed_bytes_are_capped() {
    let limits = Limits {
        print_bytes: 100,
        ..small_limits()
    };
    let scripts = [
        "for i = 1, 1000 do print('0123456789') end",
        "for i = 1, 1000 do pcall(print, '0123456789') end return 'escaped'",
        "local ok = pcall(function() while true do print('0123456789') end end) return 'escaped'",
    ];
    for source in scripts {
        let (result, mut rx) = run_with(host(), source, limits).await;
        assert_eq!(result, Err(Error::OutputLimit { bytes: 100 }), "{source}");
        assert_eq!(lines(&mut rx).len(), 9, "{source}");
    }
    let message = Error::OutputLimit { bytes: 100 }.to_string();
    assert!(message.contains("100 bytes"), "{message}");
}

/// Goal: a session's output allowance is per evaluation, like its other
/// limits. Method: a 100-byte cap; two evaluations of 99 bytes each succeed,
/// a third that prints 110 bytes fails.
#[tokio::test]
async fn session_output_allowance_is_per_evaluation() {
    let limits = Limits {
        print_bytes: 100,
        ..small_limits()
    };
    let (tx, mut rx) = channel(PRINT_CAPACITY);
    let mut session = Session::new(host(), BUILTINS, limits, tx).expect("session");
    let nine_lines = "for i = 1, 9 do print('0123456789') end";
    assert_eq!(session.eval(nine_lines).await, Ok(json!(null)));
    assert_eq!(session.eval(nine_lines).await, Ok(json!(null)));
    assert_eq!(
        session
            .eval("for i = 1, 10 do print('0123456789') end")
            .await,
        Err(Error::OutputLimit { bytes: 100 })
    );
    assert_eq!(lines(&mut rx).len(), 27);
}

/// Scripts that each print `started` and then keep running in a different way.
const NEVER_ENDING: &[&str] = &[
    "print('started') while true do end",
    "print('started') while true do pcall(function() while true do end end) end",
    "print('started') cluster.hang()",
    "print('started') pcall(sleep, 100) return 'escaped'",
    "print('started') return string.find(string.rep('a', 300000), '.-.-.-.-b')",
    "print('started') while true do print('more') end",
    "print('started') return coroutine.resume(coroutine.create(function() while true do end end))",
];

/// Goal: dropping the receiver of printed lines (the client went away) stops
/// the script, whether it is looping, inside `pcall`, waiting on the host,
/// sleeping, matching a pattern or printing. Method: on a multi-threaded
/// runtime (so a busy script cannot starve the test), each never-ending script
/// runs with a 60 s deadline and no instruction budget; once its `started`
/// line arrives we drop the receiver, and it must end with
/// `Error::Disconnected` within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_stops_the_script() {
    let limits = Limits {
        wall_clock: Duration::from_secs(60),
        instructions: u64::MAX,
        ..small_limits()
    };
    for source in NEVER_ENDING {
        tracing::info!("--- {source}");
        let (tx, mut rx) = channel(1);
        let handle = tokio::spawn(run(host(), BUILTINS, script(source), limits, tx));
        assert_eq!(rx.recv().await.as_deref(), Some("started"), "{source}");
        let started = Instant::now();
        drop(rx);
        let result = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .unwrap_or_else(|_| panic!("{source} did not stop"))
            .expect("the script task panicked");
        assert_eq!(result, Err(Error::Disconnected), "{source}");
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(5),
            "{source} took {elapsed:?}"
        );
    }
}

/// Goal: a run whose receiver is already gone does not start, and a session
/// whose receiver is dropped refuses further chunks. Method: drop the
/// receiver first; the script's host call must never happen.
#[tokio::test]
async fn a_run_without_a_receiver_does_not_start() {
    let fixture = host();
    let (tx, rx) = channel(1);
    drop(rx);
    let result = run(
        Arc::clone(&fixture) as Arc<dyn crate::Host>,
        BUILTINS,
        script("cluster.members() return 1"),
        small_limits(),
        tx,
    )
    .await;
    assert_eq!(result, Err(Error::Disconnected));
    assert!(fixture.calls().is_empty());

    let (tx, rx) = channel(1);
    let mut session = Session::new(host(), BUILTINS, small_limits(), tx).expect("session");
    assert_eq!(session.eval("1 + 1").await, Ok(json!(2)));
    drop(rx);
    assert_eq!(session.eval("1 + 1").await, Err(Error::Disconnected));
}
