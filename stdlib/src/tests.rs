//! Tests against the real Lua engine, with a small recording [`Host`] as fixture.
//!
//! This file covers the sandbox, the limits and the session; `patterns` checks
//! the Rust string functions against Lua's C ones and stops runaway patterns;
//! `output` covers backpressure, the output cap and cancellation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{json, Value as Json};
use tokio::sync::mpsc::{channel, Receiver};

use crate::{is_incomplete, run, Builtin, Error, Host, Limits, Script, Session};

mod output;
mod patterns;

/// Room in the print channel of most tests: more than any of them prints, so
/// lines can be read after the script ends.
const PRINT_CAPACITY: usize = 1024;

/// Operation that never completes, to exercise the deadline around host calls.
const HANG: &str = "cluster.hang";

/// Records every call and answers from a table of canned replies.
#[derive(Default)]
struct FakeHost {
    replies: HashMap<&'static str, Result<Json, String>>,
    calls: Mutex<Vec<(String, Vec<Json>)>>,
}

impl FakeHost {
    fn calls(&self) -> Vec<(String, Vec<Json>)> {
        self.calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default()
    }
}

impl Host for FakeHost {
    fn call(&self, name: &str, args: Vec<Json>) -> BoxFuture<'static, Result<Json, String>> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((name.to_string(), args));
        }
        if name == HANG {
            return Box::pin(futures::future::pending());
        }
        let reply = self
            .replies
            .get(name)
            .cloned()
            .unwrap_or_else(|| Err(format!("unknown operation {name}")));
        Box::pin(async move {
            tokio::task::yield_now().await;
            reply
        })
    }
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "cluster.members",
        help: "cluster.members() -> list of members",
    },
    Builtin {
        name: "cluster.member",
        help: "cluster.member(name) -> one member",
    },
    Builtin {
        name: HANG,
        help: "cluster.hang() -> never returns",
    },
];

fn host() -> Arc<FakeHost> {
    let mut replies = HashMap::new();
    replies.insert(
        "cluster.members",
        Ok(json!([{"name": "a", "roles": ["voter"], "addr": null}, {"name": "b", "roles": []}])),
    );
    replies.insert("cluster.member", Err(r#"member "x" not found"#.to_string()));
    Arc::new(FakeHost {
        replies,
        calls: Mutex::new(Vec::new()),
    })
}

fn small_limits() -> Limits {
    Limits {
        memory_bytes: 16 * 1024 * 1024,
        instructions: 1_000_000,
        wall_clock: Duration::from_secs(20),
        print_bytes: 64 * 1024,
    }
}

async fn run_with(
    host: Arc<FakeHost>,
    source: &str,
    limits: Limits,
) -> (Result<Json, Error>, Receiver<String>) {
    run_named(host, source, limits, "script.lua").await
}

async fn run_named(
    host: Arc<FakeHost>,
    source: &str,
    limits: Limits,
    chunk_name: &str,
) -> (Result<Json, Error>, Receiver<String>) {
    let (tx, rx) = channel(PRINT_CAPACITY);
    let script = Script {
        source: source.to_string(),
        chunk_name: chunk_name.to_string(),
        args: Vec::new(),
    };
    (run(host, BUILTINS, script, limits, tx).await, rx)
}

async fn run_script(source: &str) -> Result<Json, Error> {
    run_with(host(), source, small_limits()).await.0
}

fn lines(rx: &mut Receiver<String>) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Goal: builtins forward converted arguments to the host and return its
/// JSON as Lua tables. Method: call two builtins and inspect both the
/// script's result and the calls the fake host recorded.
#[tokio::test]
async fn builtins_take_arguments_and_return_tables() {
    let fixture = host();
    let source = r#"
        local members = cluster.members()
        local ok = pcall(cluster.member, "a", 3, {x = 1.5}, nil)
        return {count = #members, first = members[1].name, role = members[1].roles[1],
                addr = members[1].addr, empty = members[2].roles, ok = ok}
    "#;
    let (result, _) = run_with(Arc::clone(&fixture), source, small_limits()).await;
    let expected = json!({"count": 2, "first": "a", "role": "voter", "empty": [], "ok": false});
    assert_eq!(result, Ok(expected));
    let calls = fixture.calls();
    assert_eq!(calls[0], ("cluster.members".to_string(), vec![]));
    assert_eq!(
        calls[1],
        (
            "cluster.member".to_string(),
            vec![json!("a"), json!(3), json!({"x": 1.5}), Json::Null]
        )
    );
}

/// Goal: a failed host operation is an ordinary Lua error with the caller's
/// position, catchable by `pcall`. Method: caught, uncaught, tail-called and
/// script-raised errors, each compared with the exact message.
#[tokio::test]
async fn host_errors_are_catchable_and_carry_the_line() {
    let caught = run_script(
        r#"local ok, err = pcall(function() local m = cluster.member("x") end)
           return {ok = ok, err = err}"#,
    )
    .await;
    assert_eq!(
        caught,
        Ok(json!({"ok": false, "err": r#"script.lua:1: member "x" not found"#}))
    );

    let uncaught = run_script("local a = 1\n\nlocal m = cluster.member(\"x\")\n").await;
    assert_eq!(
        uncaught,
        Err(Error::Runtime {
            message: r#"script.lua:3: member "x" not found"#.to_string()
        })
    );

    let tail_call = run_script("local a = 1\nreturn cluster.member(\"x\")").await;
    let message = r#"script.lua:2: member "x" not found"#.to_string();
    assert_eq!(tail_call, Err(Error::Runtime { message }));

    let own = run_script("local a = 1\nerror('boom')").await;
    assert_eq!(
        own,
        Err(Error::Runtime {
            message: "script.lua:2: boom".to_string()
        })
    );
}

/// Goal: `print` and `help` send their lines in order, formatted as Lua
/// prints them. Method: read every line after the script ends.
#[tokio::test]
async fn print_streams_lines_in_order() {
    let source = r#"
        print("a", 1, nil, true, 2.5, 2.0)
        print()
        for i = 1, 3 do print("line", i) end
        help("cluster.members")
    "#;
    let (result, mut rx) = run_with(host(), source, small_limits()).await;
    assert_eq!(result, Ok(Json::Null));
    let expected = [
        "a\t1\tnil\ttrue\t2.5\t2.0",
        "",
        "line\t1",
        "line\t2",
        "line\t3",
        "cluster.members() -> list of members",
    ];
    assert_eq!(lines(&mut rx), expected);
}

/// Goal: nothing that loads code or reaches the host system is reachable.
/// Method: check each removed global is nil and that calling one fails.
#[tokio::test]
async fn dangerous_globals_are_gone() {
    let source = r#"
        return {io == nil, os == nil, debug == nil, package == nil, load == nil, loadstring == nil,
                require == nil, dofile == nil, loadfile == nil, collectgarbage == nil, string.dump == nil}
    "#;
    assert_eq!(
        run_script(source).await,
        Ok(Json::Array(vec![json!(true); 11]))
    );
    let Err(Error::Runtime { message }) = run_script("return load('return 1')").await else {
        panic!("calling load must fail");
    };
    assert!(
        message.contains("script.lua:1:") && message.contains("load"),
        "{message}"
    );
}

/// Goal: a spent instruction budget ends the script whatever Lua does to
/// catch it. Method: endless loops wrapped in `pcall`, `xpcall`, coroutines,
/// metamethods, `table.sort` and `gsub` callbacks; each must end with
/// `Error::InstructionLimit` within 3 s.
#[tokio::test]
async fn instruction_budget_cannot_be_caught() {
    let scripts = [
        "while true do end",
        "pcall(function() while true do end end) return 'escaped'",
        "while true do pcall(function() while true do end end) end",
        "pcall(pcall, pcall, function() while true do end end) return 'escaped'",
        "while true do pcall(pcall, function() while true do end end) end",
        "xpcall(function() while true do end end, function(e) return e end) return 'escaped'",
        "while true do xpcall(function() while true do end end, function() while true do end end) end",
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        "while true do pcall(coroutine.wrap(function() while true do end end)) end",
        "local co = coroutine.create(function() while true do end end) coroutine.resume(co) return coroutine.close(co)",
        "return pcall(print, setmetatable({}, {__tostring = function() while true do end end}))",
        "return pcall(table.sort, {3, 2, 1}, function() while true do end end)",
        "while true do pcall(string.gsub, 'aaa', 'a', function() while true do end end) end",
    ];
    for source in scripts {
        let started = Instant::now();
        let result = run_script(source).await;
        assert_eq!(
            result,
            Err(Error::InstructionLimit {
                instructions: 1_000_000
            }),
            "{source}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{source} took {:?}",
            started.elapsed()
        );
    }
}

/// Goal: hitting the memory limit ends the script even under `pcall`,
/// `xpcall` or a coroutine. Method: grow a table of 1 MB strings past 16 MiB.
#[tokio::test]
async fn memory_limit_cannot_be_caught() {
    let grow = r#"local t = {} while true do t[#t + 1] = string.rep("x", 1e6) end"#;
    let scripts = [
        grow.to_string(),
        format!("pcall(function() {grow} end) return 'escaped'"),
        format!("while true do pcall(function() {grow} end) end"),
        format!("local ok, e = xpcall(function() {grow} end, function(e) return 'ignored' end) return e"),
        format!("return coroutine.resume(coroutine.create(function() {grow} end))"),
    ];
    let limits = Limits {
        instructions: 100_000_000,
        ..small_limits()
    };
    for source in scripts {
        let result = run_with(host(), &source, limits).await.0;
        assert_eq!(
            result,
            Err(Error::MemoryLimit {
                bytes: 16 * 1024 * 1024
            }),
            "{source}"
        );
    }
}

/// Goal: the wall-clock limit bounds sleeping, host calls and loops. Method:
/// a 1 s limit against each; a short sleep still completes normally.
#[tokio::test]
async fn wall_clock_limit_covers_sleep_host_calls_and_loops() {
    let limits = Limits {
        wall_clock: Duration::from_secs(1),
        instructions: u64::MAX,
        ..small_limits()
    };
    let scripts = [
        "sleep(100)",
        "pcall(sleep, 100) return 'escaped'",
        "cluster.hang()",
        "while true do end",
    ];
    for source in scripts {
        let started = Instant::now();
        let result = run_with(host(), source, limits).await.0;
        assert_eq!(result, Err(Error::Timeout { seconds: 1.0 }), "{source}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{source} took {:?}",
            started.elapsed()
        );
    }
    let quick = run_with(host(), "sleep(0.01) return 'done'", limits)
        .await
        .0;
    assert_eq!(quick, Ok(json!("done")));
}

/// Goal: host calls (which yield to the async runtime) work at any coroutine
/// depth. Method: calls inside `coroutine.wrap`, `coroutine.resume` and a
/// `pcall`-ed wrapped coroutine.
#[tokio::test]
async fn host_calls_work_inside_coroutines() {
    let source = r#"
        local gen = coroutine.wrap(function()
            coroutine.yield(cluster.members()[1].name)
            sleep(0.01)
            coroutine.yield(#cluster.members())
        end)
        local co = coroutine.create(function() return cluster.members()[2].name end)
        local _, third = coroutine.resume(co)
        local ok, err = pcall(coroutine.wrap(function() local m = cluster.member("x") end))
        return {gen(), gen(), third, ok, err}
    "#;
    let expected = json!(["a", 2, "b", false, r#"script.lua:9: member "x" not found"#]);
    assert_eq!(run_script(source).await, Ok(expected));
}

/// Goal: scripts cannot install `__gc`, which Lua runs with hooks off.
/// Method: `setmetatable` with `__gc` must fail with a message naming it.
#[tokio::test]
async fn finalizers_are_refused() {
    // Lua runs __gc with hooks off, where no limit could stop it.
    let source = "setmetatable({}, {__gc = function() while true do end end})";
    let Err(Error::Runtime { message }) = run_script(source).await else {
        panic!("__gc must be refused");
    };
    assert!(message.contains("__gc"), "{message}");
}

/// Goal: syntax errors name the chunk and line. Method: an error on line 2.
#[tokio::test]
async fn syntax_errors_name_chunk_and_line() {
    let Err(Error::Syntax { message }) = run_script("local x = 1\nlocal y = = 2\n").await else {
        panic!("expected a syntax error");
    };
    assert!(message.starts_with("script.lua:2:"), "{message}");
}

/// Goal: the REPL can tell unfinished input from complete or invalid input.
/// Method: open blocks, tables, long strings and trailing operators against
/// complete statements, expressions and a plain syntax error.
#[test]
fn incomplete_input_is_detected() {
    assert!(is_incomplete("function f()"));
    assert!(is_incomplete("x = {"));
    assert!(is_incomplete("1 +"));
    assert!(is_incomplete("for i = 1, 3 do\n  print(i)"));
    assert!(is_incomplete("s = [[first line"));
    assert!(!is_incomplete("function f()\n  return 1\nend"));
    assert!(!is_incomplete("x = 1"));
    assert!(!is_incomplete("x"));
    assert!(!is_incomplete("1 + 1"));
    assert!(!is_incomplete("x = = 1"));
}

/// Goal: a script's result converts to JSON as documented, and values with
/// no JSON form are refused. Method: one script per shape.
#[tokio::test]
async fn results_convert_to_json() {
    assert_eq!(run_script("return {}").await, Ok(json!([])));
    assert_eq!(run_script("return nil").await, Ok(Json::Null));
    assert_eq!(run_script("local x = 1").await, Ok(Json::Null));
    assert_eq!(run_script("return 1, 2").await, Ok(json!(1)));
    assert_eq!(
        run_script("return {a = {1, 2}, b = 'x', c = 0.5}").await,
        Ok(json!({"a": [1, 2], "b": "x", "c": 0.5}))
    );
    assert_eq!(
        run_script("return {1, nil, 3}").await,
        Ok(json!([1, null, 3]))
    );
    assert_eq!(
        run_script("return {1, x = 'y'}").await,
        Ok(json!({"1": 1, "x": "y"}))
    );
    let unconvertible = [
        "local t = {} t.t = t return t",
        "local t = {} for i = 1, 60 do t = {t, t} end return t",
        "return 0/0",
        "return {[true] = 1}",
    ];
    for source in unconvertible {
        let result = run_script(source).await;
        assert!(
            matches!(result, Err(Error::Conversion(_))),
            "{source}: {result:?}"
        );
    }
    let Err(Error::Conversion(message)) = run_script("return {f = print}").await else {
        panic!("a function cannot be JSON");
    };
    assert!(message.contains("function"), "{message}");
}

/// Goal: `json.encode` and `json.decode` round-trip and report bad input.
/// Method: encode, decode and compare; decode invalid JSON under `pcall`.
#[tokio::test]
async fn json_round_trips() {
    let source = r#"
        local v = json.decode(json.encode({a = {1, 2, 3}, b = "x", c = {}}))
        local ok, err = pcall(json.decode, "{")
        return {v = v, null_is_nil = json.decode('{"a": null}').a == nil, ok = ok,
                err = string.match(err, "^json.decode: invalid JSON") ~= nil}
    "#;
    let expected = json!({"v": {"a": [1, 2, 3], "b": "x", "c": []}, "null_is_nil": true, "ok": false, "err": true});
    assert_eq!(run_script(source).await, Ok(expected));
}

/// Goal: a session keeps globals between evaluations, evaluates bare
/// expressions and recovers from a tripped limit. Method: a REPL-like
/// sequence of inputs.
#[tokio::test]
async fn session_keeps_globals_and_evaluates_expressions() {
    let (tx, mut rx) = channel(PRINT_CAPACITY);
    let mut session = Session::new(host(), BUILTINS, small_limits(), tx).expect("session");
    assert_eq!(session.eval("1+1").await, Ok(json!(2)));
    assert_eq!(session.eval("x = 41").await, Ok(Json::Null));
    assert_eq!(session.eval("x + 1").await, Ok(json!(42)));
    assert_eq!(session.eval("#cluster.members()").await, Ok(json!(2)));
    assert_eq!(
        session.eval("while true do end").await,
        Err(Error::InstructionLimit {
            instructions: 1_000_000
        })
    );
    assert_eq!(session.eval("x").await, Ok(json!(41)));
    assert_eq!(session.eval("print('hi', x)").await, Ok(Json::Null));
    assert_eq!(lines(&mut rx), ["hi\t41"]);
    let Err(Error::Runtime { message }) = session.eval("nope()").await else {
        panic!("calling nil must fail");
    };
    assert!(message.starts_with("repl:1:"), "{message}");
}

/// Goal: builtin names that are not dotted identifiers, or collide with a
/// global, are refused at setup. Method: one session per bad name.
#[test]
fn bad_builtin_names_are_rejected() {
    for name in ["print", "bad name", "cluster..x", ""] {
        let builtins = [Builtin { name, help: "" }];
        let (tx, _rx) = channel(PRINT_CAPACITY);
        let result = Session::new(host(), &builtins, Limits::default(), tx);
        assert!(matches!(result, Err(Error::Setup(_))), "{name}");
    }
}

/// Goal: `run` and `Session::eval` can be spawned on a multi-threaded
/// runtime. Method: a compile-time `Send` check.
#[test]
fn futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (tx, _rx) = channel(PRINT_CAPACITY);
    let script = Script {
        source: String::new(),
        chunk_name: "s".to_string(),
        args: Vec::new(),
    };
    assert_send(&run(
        host(),
        BUILTINS,
        script,
        Limits::default(),
        tx.clone(),
    ));
    if let Ok(mut session) = Session::new(host(), BUILTINS, Limits::default(), tx) {
        assert_send(&session.eval("1"));
    }
}

/// Goal: `time.now()` is the wall clock in seconds with a fraction, and `log.*` accepts any
/// arguments (its lines reach the member's log: see the process test in `tests/tests/kv.rs`).
/// Method: compare with the clock read around the script; log a table and a long line.
#[tokio::test]
async fn time_now_reads_the_clock_and_log_takes_anything() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let result = run_script(
        "log.info('a', 1, {}, nil) log.warn(string.rep('x', 10000)) log.error() return time.now()",
    )
    .await
    .unwrap();
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let now = result.as_f64().unwrap();
    assert!(before <= now && now <= after, "{before} {now} {after}");
}

/// Goal: an interrupted chunk stops at once with `Interrupted`, `pcall` cannot catch it, and
/// the session runs the next chunk normally (the REPL's Ctrl-C).
/// Method: interrupt an endless loop (inside `pcall`) and a `sleep` from another task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_chunk_stops_and_the_session_goes_on() {
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let mut session = crate::Session::new(host(), BUILTINS, Limits::default(), tx).unwrap();
    for chunk in [
        "pcall(function() while true do end end) return 'caught'",
        "sleep(30) return 'slept'",
    ] {
        let interrupter = session.interrupter();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            interrupter.interrupt();
        });
        let result = session.eval(chunk).await;
        assert_eq!(result, Err(Error::Interrupted), "{chunk}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{chunk}"
        );
        assert_eq!(session.eval("1 + 1").await, Ok(json!(2)));
    }
}
