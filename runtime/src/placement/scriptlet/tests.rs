use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::placement::tests::{member, request, TestHost};
use crate::placement::{MemberView, PlacementError, Reason};

fn members() -> Vec<MemberView> {
    vec![member("m1"), member("m2"), member("m3")]
}

/// Compiles and runs `source` against m1..m3 and the test host, with `limits`.
fn run_with(source: &str, limits: &Limits) -> Result<Outcome, ScriptletError> {
    let members = members();
    let host = TestHost::new(&members);
    Scriptlet::compile(source)?.run(&request("c1"), &members, &host, limits)
}

fn run(source: &str) -> Result<Outcome, ScriptletError> {
    run_with(source, &Limits::default())
}

/// The default memory bound with a generous time bound: the memory bound must be what stops
/// a run, even in a debug build on a loaded machine.
fn generous_time() -> Limits {
    Limits {
        time: Duration::from_secs(60),
        ..Limits::default()
    }
}

/// The error of a run over the default memory bound.
fn memory_limit() -> ScriptletError {
    ScriptletError::MemoryLimit {
        limit_bytes: Limits::default().memory_bytes,
    }
}

/// Wraps statements into `instance_placement`'s body.
fn body(lines: &str) -> String {
    let indented: Vec<String> = lines.lines().map(|line| format!("    {line}")).collect();
    format!(
        "def instance_placement(request, candidate_members):\n{}\n",
        indented.join("\n")
    )
}

fn target(source: &str) -> Option<String> {
    run(source).unwrap().target
}

fn error(source: &str) -> String {
    run(source).unwrap_err().to_string()
}

/// Goal: `set_target` and `set_cluster_member_target` choose; no call leaves it to the rule.
#[test]
fn set_target_chooses() {
    assert_eq!(target(&body("set_target(\"m2\")")).as_deref(), Some("m2"));
    assert_eq!(
        target(&body("set_cluster_member_target(member_name=\"m3\")")).as_deref(),
        Some("m3")
    );
    assert_eq!(target(&body("pass")), None);
    assert_eq!(
        target(&body(
            "set_target(candidate_members[0].server_name)\nreturn None"
        ))
        .as_deref(),
        Some("m1")
    );
}

/// Goal: a target that is not a candidate fails the placement with a clear message.
#[test]
fn non_candidate_target_fails() {
    let failure = run(&body("set_target(\"m9\")")).unwrap_err();
    assert_eq!(
        failure,
        ScriptletError::InvalidTarget {
            name: "m9".to_string()
        }
    );
    assert_eq!(
        PlacementError::from(failure).to_string(),
        "Failed instance placement scriptlet: Member \"m9\" given to set_target is not a candidate"
    );
}

/// Goal: `fail()`, a runtime error and a non-None return each fail with their message.
#[test]
fn failures_carry_their_message() {
    assert_eq!(
        error(&body("fail(\"no GPU member for\", request.name)")),
        "fail: no GPU member for c1 (line 2)"
    );
    assert_eq!(
        PlacementError::from(run(&body("fail(\"nope\")")).unwrap_err()).to_string(),
        "Failed instance placement scriptlet: fail: nope (line 2)"
    );
    let runtime = run(&body("x = {}\nreturn x[\"missing\"]")).unwrap_err();
    assert!(
        matches!(&runtime, ScriptletError::Runtime { line: Some(3), message } if message.contains("missing")),
        "{runtime:?}"
    );
    assert_eq!(
        error(&body("return \"m1\"")),
        "Failed with unexpected return value: \"m1\""
    );
    assert_eq!(
        error(&body("return 3")),
        "Failed with unexpected return value: 3"
    );
    let bad_operands = error(&body("return \"a\" * \"b\""));
    assert!(bad_operands.contains('*'), "{bad_operands}");
    let missing_attribute = error(&body("return request.no_such_field"));
    assert!(
        missing_attribute.contains("no_such_field"),
        "{missing_attribute}"
    );
}

/// Goal: compile refuses syntax errors with their line, unknown names, a missing function,
/// other parameters, `while`, top-level `for`, `load` and `*=`.
#[test]
fn compile_refusals() {
    let syntax =
        Scriptlet::compile("def instance_placement(request, candidate_members):\n    x = (\n")
            .unwrap_err();
    assert!(
        matches!(syntax, ScriptletError::Syntax { line: 2 | 3, .. }),
        "{syntax:?}"
    );

    let unknown = Scriptlet::compile(&body("x = 1\nset_targett(\"m1\")")).unwrap_err();
    assert!(
        matches!(&unknown, ScriptletError::Compile { line: Some(3), message } if message.contains("set_targett")),
        "{unknown:?}"
    );

    assert_eq!(
        Scriptlet::compile("def other(request, candidate_members):\n    pass\n").unwrap_err(),
        ScriptletError::MissingFunction
    );
    assert_eq!(
        Scriptlet::compile("x = 1\ndef instance_placement(request):\n    pass\n").unwrap_err(),
        ScriptletError::WrongParameters {
            found: "request".to_string(),
            line: 2
        }
    );
    assert!(matches!(
        Scriptlet::compile("def instance_placement(request, members):\n    pass\n").unwrap_err(),
        ScriptletError::WrongParameters { .. }
    ));
    assert!(matches!(
        Scriptlet::compile(&body("while True:\n    pass")).unwrap_err(),
        ScriptletError::Syntax { line: 2, .. }
    ));
    assert!(
        Scriptlet::compile(&format!("for i in range(3):\n    pass\n{}", body("pass"))).is_err()
    );
    assert!(Scriptlet::compile(&format!("load(\"x.star\", \"y\")\n{}", body("pass"))).is_err());
    assert_eq!(
        Scriptlet::compile(&body("x = [1]\nx *= 3")).unwrap_err(),
        ScriptletError::Unsupported {
            line: 3,
            message: "`x *= y` is not supported in scriptlets; write `x = x * y`".to_string()
        }
    );
    assert!(validate(&body("pass")).is_ok());
    assert!(validate("x = ").is_err());
}

/// Goal: a function calling itself, directly or through another, fails the run.
#[test]
fn recursion_is_refused() {
    let direct = "def f(n):\n    return f(n - 1) if n > 0 else 0\n".to_string() + &body("f(3)");
    assert_eq!(
        run(&direct).unwrap_err(),
        ScriptletError::Recursion {
            function: "f".to_string()
        }
    );
    let mutual =
        "def f(n):\n    return g(n)\ndef g(n):\n    return f(n)\n".to_string() + &body("f(1)");
    assert!(matches!(
        run(&mutual).unwrap_err(),
        ScriptletError::Recursion { .. }
    ));
    // A lambda has no name to check: the call depth stops it.
    let lambda = "f = lambda n: f(n)\n".to_string() + &body("f(1)");
    assert!(matches!(
        run(&lambda).unwrap_err(),
        ScriptletError::Runtime { .. }
    ));
    // Calling the same helper twice in a row is not recursion.
    let twice = "def f(n):\n    return n + 1\n".to_string() + &body("f(f(1))\nf(2)");
    assert_eq!(target(&twice), None);
}

/// Goal: a huge loop stops at the time bound, promptly, naming the bound.
#[test]
fn time_bound() {
    let limits = Limits {
        time: Duration::from_millis(200),
        ..Limits::default()
    };
    let started = Instant::now();
    let failure = run_with(&body("for i in range(100000000):\n    pass"), &limits).unwrap_err();
    assert_eq!(
        failure,
        ScriptletError::TimeLimit {
            limit: Duration::from_millis(200)
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        PlacementError::from(failure).to_string(),
        "Failed instance placement scriptlet: Time limit of 200ms exceeded"
    );
    // Nested loops and a comprehension are stopped too.
    let nested =
        body("n = 0\nfor i in range(100000):\n    for j in range(100000):\n        n = n + 1");
    assert!(matches!(
        run_with(&nested, &limits),
        Err(ScriptletError::TimeLimit { .. })
    ));
}

/// Goal: huge allocations fail at the memory bound without being built: repetition, a
/// string doubled in a loop, a long comprehension, a range materialised at once.
#[test]
fn memory_bound() {
    // A generous time bound: the memory bound must be what stops these, even in a debug build
    // on a loaded machine.
    let generous = generous_time();
    let memory = |source: &str| run_with(source, &generous).unwrap_err();
    let limit = memory_limit();
    assert_eq!(memory(&body("x = [0] * 100000000")), limit);
    assert_eq!(memory(&body("x = 100000000 * [0, 1]")), limit);
    assert_eq!(memory(&body("x = \"ab\" * 2000000000")), limit);
    assert_eq!(memory(&body("x = (\"ab\" * 1000) * 2000000000")), limit);
    assert_eq!(
        memory(&body("s = \"x\"\nfor i in range(100):\n    s = s + s")),
        limit
    );
    assert_eq!(
        memory(&body(
            "big = \"x\" * 100000\nx = [big + str(i) for i in range(100000000)]"
        )),
        limit
    );
    assert_eq!(
        memory(&body("x = list(range(2000000000))")),
        ScriptletError::RangeLimit {
            limit: bounds::RANGE_STEPS_MAX
        }
    );
    assert_eq!(
        memory(&body("x = []\nx.extend(range(2000000000))")),
        ScriptletError::RangeLimit {
            limit: bounds::RANGE_STEPS_MAX
        }
    );
    assert!(memory(&body("x = max(range(2000000000))"))
        .to_string()
        .contains("Range limit"));
    // The top level is bounded too, at compile time.
    assert_eq!(
        Scriptlet::compile(&format!("x = [0] * 100000000\n{}", body("pass"))).unwrap_err(),
        limit
    );
    // Numbers multiply as usual, and small repetitions work.
    assert_eq!(
        target(&body("x = [1, 2] * 3\ny = 6 * 7\nif len(x) == 6 and y == 42 and \"ab\" * 2 == \"abab\":\n    set_target(\"m1\")")).as_deref(),
        Some("m1")
    );
}

/// Goal: ranges behave as Starlark's own: length, index, `in`, iteration, equality.
#[test]
fn ranges_behave() {
    let source = body(
        "r = range(2, 11, 3)\n\
         ok = len(r) == 3 and r[1] == 5 and r[-1] == 8 and 8 in r and not (9 in r)\n\
         ok = ok and list(r) == [2, 5, 8] and list(range(5, 0, -2)) == [5, 3, 1]\n\
         ok = ok and range(0) == range(3, 1) and len(range(10)) == 10 and type(r) == \"range\"\n\
         ok = ok and [i * 2 for i in range(3)] == [0, 2, 4] and sorted(range(3), reverse=True) == [2, 1, 0]\n\
         if ok:\n    set_target(\"m3\")",
    );
    assert_eq!(target(&source).as_deref(), Some("m3"));
}

/// Goal: the request's fields and the candidates' LXD fields are attributes; a missing one is
/// an error; config is a dict.
#[test]
fn request_and_candidate_fields() {
    let mut request = request("web-1");
    request
        .config
        .insert("limits.memory".into(), "512MiB".into());
    request.profiles = vec!["default".into()];
    request.reason = Reason::Evacuation;
    let source = body(
        "log_info(request.name, request.project, request.type, request.architecture, request.source)\n\
         log_info(request.config[\"limits.memory\"], request.config.get(\"nope\", \"-\"), request.profiles, request.ephemeral, request.reason)\n\
         m = candidate_members[1]\n\
         log_warn(m.server_name, m.url, m.database, m.status, m.message, m.architecture, m.roles, m.failure_domain, m.description, m.config, m.groups)\n\
         log_error(len(candidate_members))",
    );
    let members = members();
    let host = TestHost::new(&members);
    let outcome = Scriptlet::compile(&source)
        .unwrap()
        .run(&request, &members, &host, &Limits::default())
        .unwrap();
    let lines: Vec<(LogLevel, &str)> = outcome
        .log
        .iter()
        .map(|line| (line.level, line.text.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (LogLevel::Info, "web-1 default container x86_64 debian/12"),
            (LogLevel::Info, "512MiB - [\"default\"] False evacuation"),
            (
                LogLevel::Warn,
                "m2 https://m2:8443 False Online Fully operational x86_64 [\"database\"] default  {} [\"default\"]"
            ),
            (LogLevel::Error, "3"),
        ]
    );
}

/// Goal: state and resources come from the host with attribute and key access; a name that
/// is not a candidate answers "Invalid member name"; a host failure fails the run.
#[test]
fn member_state_and_resources() {
    let source = body(
        "res = get_cluster_member_resources(\"m2\")\n\
         log_info(res.memory.total - res.memory.used, res[\"memory\"][\"total\"], res.cpu.total, \"memory\" in res, res.memory.get(\"nope\", 0))\n\
         state = get_cluster_member_state(member_name=\"m1\")\n\
         log_info(state.sysinfo.logical_cpus, sorted(state.keys()))\n\
         log_info(get_cluster_member_resources(\"m9\"), get_cluster_member_state(\"m9\"))",
    );
    let lines: Vec<String> = run(&source)
        .unwrap()
        .log
        .into_iter()
        .map(|line| line.text)
        .collect();
    assert_eq!(
        lines,
        [
            "6144 8192 4 True 0",
            "4 [\"storage_pools\", \"sysinfo\"]",
            "Invalid member name Invalid member name"
        ]
    );
    let broken = vec![member("broken")];
    let host = TestHost::new(&broken);
    let failure = Scriptlet::compile(&body("get_cluster_member_state(\"broken\")"))
        .unwrap()
        .run(&request("c1"), &broken, &host, &Limits::default())
        .unwrap_err();
    assert_eq!(
        failure.to_string(),
        "get_cluster_member_state failed: member did not answer"
    );
}

/// Goal: instance resources come from the expanded config and the root disk.
#[test]
fn instance_resources_from_config() {
    let mut request = request("c1");
    request.config.insert("limits.cpu".into(), "1".into());
    request
        .config
        .insert("limits.memory".into(), "512MiB".into());
    request.devices.insert(
        "root".into(),
        BTreeMap::from([
            ("type".to_string(), "disk".to_string()),
            ("path".to_string(), "/".to_string()),
            ("pool".to_string(), "default".to_string()),
            ("size".to_string(), "200MiB".to_string()),
        ]),
    );
    assert_eq!(
        instance_resources(&request),
        InstanceResources {
            cpu_cores: 1,
            memory_size: 536_870_912,
            root_disk_size: 209_715_200,
        }
    );
    let source = body(
        "r = get_instance_resources()\nlog_info(r.cpu_cores, r.memory_size, r.root_disk_size)",
    );
    let members = members();
    let host = TestHost::new(&members);
    let outcome = Scriptlet::compile(&source)
        .unwrap()
        .run(&request, &members, &host, &Limits::default())
        .unwrap();
    assert_eq!(outcome.log[0].text, "1 536870912 209715200");
    assert_eq!(
        instance_resources(&PlacementRequest::default()),
        InstanceResources::default()
    );
}

/// Goal: the size and CPU forms LXD accepts.
#[test]
fn sizes_and_cpu_sets() {
    assert_eq!(byte_size("1GB"), Some(1_000_000_000));
    assert_eq!(byte_size("2GiB"), Some(2 << 30));
    assert_eq!(byte_size("1048576"), Some(1_048_576));
    assert_eq!(byte_size("1.5GiB"), Some(1_610_612_736));
    assert_eq!(byte_size("10kB"), Some(10_000));
    assert_eq!(byte_size("50%"), None);
    assert_eq!(byte_size("lots"), None);
    assert_eq!(cpu_count("4"), Some(4));
    assert_eq!(cpu_count("0-3"), Some(4));
    assert_eq!(cpu_count("0,2,4-5"), Some(4));
    assert_eq!(cpu_count("1,1"), Some(1));
    assert_eq!(cpu_count("x"), None);
}

/// Goal: Incus's built-ins answer from the host, with arguments by position or by name.
#[test]
fn incus_builtins() {
    let members = members();
    let mut host = TestHost::new(&members);
    host.members[2].groups.push("gpu".into());
    host.instances = vec![
        json!({"name": "a", "project": "default", "location": "m1", "status": "Running"}),
        json!({"name": "b", "project": "default", "location": "m2", "status": "Running"}),
        json!({"name": "c", "project": "other", "location": "m1", "status": "Pending"}),
    ];
    let source = body(
        "log_info(len(get_instances()), len(get_instances(\"default\")), len(get_instances(location=\"m1\")), len(get_instances(\"other\", \"m1\")))\n\
         log_info([i.name for i in get_instances(project=\"default\", location=\"m2\")])\n\
         log_info(get_instances_count(), get_instances_count(\"other\"), get_instances_count(\"other\", \"m1\", True), get_instances_count(location=\"m1\", pending=True))\n\
         log_info([m.server_name for m in get_cluster_members()], [m.server_name for m in get_cluster_members(\"gpu\")], len(get_cluster_members(group=\"none\")))\n\
         p = get_project(\"default\")\n\
         log_info(p.name, p.config[\"features.images\"], get_project(name=\"nope\"))",
    );
    let outcome = Scriptlet::compile(&source)
        .unwrap()
        .run(&request("c1"), &members, &host, &Limits::default())
        .unwrap();
    let lines: Vec<&str> = outcome.log.iter().map(|line| line.text.as_str()).collect();
    assert_eq!(
        lines,
        [
            "3 2 2 1",
            "[\"b\"]",
            "2 0 1 2",
            "[\"m1\", \"m2\", \"m3\"] [\"m3\"] 0",
            "default true None",
        ]
    );
}

/// Goal: placement built-ins are refused at the top level (there is no request there yet).
#[test]
fn builtins_outside_the_call() {
    let failure =
        Scriptlet::compile(&format!("x = get_instances()\n{}", body("pass"))).unwrap_err();
    assert!(
        matches!(&failure, ScriptletError::Compile { message, .. } if message.contains("only be called from instance_placement")),
        "{failure:?}"
    );
}

/// Goal: a compiled scriptlet can be shared between threads and called many times; a
/// 50-line scriptlet over 50 candidates runs fast because nothing is parsed again.
#[test]
fn compiled_once_run_many() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Scriptlet>();
    let mut lines = vec!["best = None".to_string(), "best_free = -1".to_string()];
    for index in 0..20 {
        lines.push(format!("weight_{index} = {index} * 2 + len(request.name)"));
    }
    lines.push("for m in candidate_members:".to_string());
    lines.push("    res = get_cluster_member_resources(m.server_name)".to_string());
    lines.push("    free = res.memory.total - res.memory.used".to_string());
    lines.push("    if m.status != \"Online\" or \"gpu\" in m.groups:".to_string());
    lines.push("        continue".to_string());
    lines.push("    if free > best_free:".to_string());
    lines.push("        best = m.server_name".to_string());
    lines.push("        best_free = free".to_string());
    for index in 0..18 {
        lines.push(format!("log_info(\"line\", {index}, best)"));
    }
    lines.push("set_target(best)".to_string());
    let source = body(&lines.join("\n"));
    let members: Vec<MemberView> = (0..50).map(|index| member(&format!("m{index}"))).collect();
    let host = TestHost::new(&members);
    let scriptlet = Scriptlet::compile(&source).unwrap();
    let request = request("c1");
    let started = Instant::now();
    let runs = 20;
    for _ in 0..runs {
        let outcome = scriptlet
            .run(&request, &members, &host, &Limits::default())
            .unwrap();
        assert_eq!(outcome.target.as_deref(), Some("m0"));
    }
    let per_run = started.elapsed() / runs;
    // Generous for a debug build on a loaded 2-core machine; a re-parse per call alone would
    // not break it, but a hang or a per-candidate re-evaluation would.
    assert!(per_run < Duration::from_millis(250), "{per_run:?} per run");
    eprintln!("50-line scriptlet, 50 candidates: {per_run:?} per run (debug build)");
}

/// Goal: the calls that can build far more text than they are given in one step (`join` with
/// a long separator, `replace("", s)`, `str`/`repr`/`format`/`%` of a list holding one big
/// list many times) are refused before they build it; `fail` and the log show a bounded part
/// of such a value; the same calls work as Starlark's own on ordinary values, and errors keep
/// their lines.
#[test]
fn amplifying_calls_are_bounded_before_they_build() {
    let generous = generous_time();
    let memory = |source: &str| run_with(source, &generous).unwrap_err();
    let limit = memory_limit();
    // Each would build about a terabyte: without the checks the process dies (an allocation
    // fails) or the machine runs out of memory, not merely goes over the bound.
    let shared = "a = [\"x\" * 1000] * 1000\nc = [a] * 1000\nb = [c] * 1000\n";
    assert_eq!(
        memory(&body(
            "sep = \"x\" * 1000000\nx = sep.join([\"\"] * 1000000)"
        )),
        limit
    );
    assert_eq!(
        memory(&body("s = \"x\" * 1000000\nx = s.replace(\"\", s)")),
        limit
    );
    assert_eq!(memory(&body(&format!("{shared}x = str(b)"))), limit);
    assert_eq!(memory(&body(&format!("{shared}x = repr(b)"))), limit);
    assert_eq!(
        memory(&body(&format!("{shared}x = \"{{}}\".format(b)"))),
        limit
    );
    assert_eq!(memory(&body(&format!("{shared}x = \"%s\" % (b,)"))), limit);
    assert_eq!(
        memory(&body(&format!("{shared}x = \",\".join([str(b)])"))),
        limit
    );
    let failed = memory(&body(&format!("{shared}fail(\"big:\", b)")));
    let ScriptletError::Fail { message, .. } = &failed else {
        panic!("{failed:?}")
    };
    assert!(message.len() < 1000, "{}", message.len());
    assert!(
        message.contains("big: <list longer than 65536 bytes as text>"),
        "{message}"
    );
    let logged = run_with(&body(&format!("{shared}log_info(b)")), &generous).unwrap();
    assert!(
        logged.log[0].text.contains("longer than"),
        "{:?}",
        logged.log
    );

    assert!(matches!(
        Scriptlet::compile(&body("j = \",\".join\nj([])")),
        Err(ScriptletError::Unsupported { line: 2, .. })
    ));
    let ordinary = body(
        "ok = \",\".join([\"a\", \"b\"]) == \"a,b\" and \"aXbX\".replace(\"X\", \"-\") == \"a-b-\"\n\
         ok = ok and \"aaa\".replace(\"a\", \"b\", 2) == \"bba\" and \"{} {x}\".format(1, x=2) == \"1 2\"\n\
         ok = ok and \"%d-%s\" % (1, \"a\") == \"1-a\" and 10 % 3 == 1 and str(1) == \"1\"\n\
         ok = ok and repr(\"a\") == '\"a\"' and str(\"a\") == \"a\" and str([1, \"a\"]) == '[1, \"a\"]'\n\
         if ok:\n    set_target(\"m2\")",
    );
    assert_eq!(target(&ordinary).as_deref(), Some("m2"));
    let error = run(&body(
        "x = \",\".join(\n  [\"a\",\n   \"b\"])\ny = 1 + \"a\"",
    ))
    .unwrap_err();
    assert!(
        matches!(error, ScriptletError::Runtime { line: Some(5), .. }),
        "{error:?}"
    );
}

/// Goal: the candidates' values kept between calls follow the members: a changed field, a
/// member gone and a member added show in the next call, and so does a new revision of the
/// member records or a new database leader; the list and its members cannot be
/// changed by the scriptlet (a clear error, not a changed cache).
#[test]
fn kept_candidates_follow_the_members() {
    let source = body(
        "for m in candidate_members:\n    if m.config.get(\"user.tier\", \"\") == \"fast\":\n        set_target(m.server_name)",
    );
    let scriptlet = Scriptlet::compile(&source).unwrap();
    let mut members = vec![member("m1"), member("m2"), member("m3")];
    members[0].config.insert("user.tier".into(), "fast".into());
    let run = |members: &[MemberView]| {
        let host = TestHost::new(members);
        scriptlet
            .run(&request("c1"), members, &host, &Limits::default())
            .unwrap()
            .target
    };
    assert_eq!(run(&members).as_deref(), Some("m1"));
    assert_eq!(run(&members).as_deref(), Some("m1"));
    members[0].config.insert("user.tier".into(), "slow".into());
    members[2].config.insert("user.tier".into(), "fast".into());
    assert_eq!(run(&members).as_deref(), Some("m3"));
    members.remove(2);
    assert_eq!(run(&members).as_deref(), None);
    let mut added = member("m4");
    added.config.insert("user.tier".into(), "fast".into());
    members.push(added);
    assert_eq!(run(&members).as_deref(), Some("m4"));

    let changing = Scriptlet::compile(&body("candidate_members[0].groups.append(\"x\")")).unwrap();
    let host = TestHost::new(&members);
    for _ in 0..2 {
        let error = changing
            .run(&request("c1"), &members, &host, &Limits::default())
            .unwrap_err();
        assert!(error.to_string().contains("mmutable"), "{error}");
    }
    assert_eq!(run(&members).as_deref(), Some("m4"));

    // Views made from the cluster state carry its revision of the member records: a new
    // revision is a new list, whatever changed.
    for member in &mut members {
        member.revision = Some(7);
    }
    assert_eq!(run(&members).as_deref(), Some("m4"));
    members[2].config.insert("user.tier".into(), "slow".into());
    members[0].config.insert("user.tier".into(), "fast".into());
    for member in &mut members {
        member.revision = Some(8);
    }
    assert_eq!(run(&members).as_deref(), Some("m1"));
    // At one revision, the fields that come from Raft (database roles) still count: a new
    // leader shows at once.
    let leader = Scriptlet::compile(&body(
        "for m in candidate_members:\n    if \"database-leader\" in m.roles:\n        set_target(m.server_name)",
    ))
    .unwrap();
    let leader_run = |members: &[MemberView]| {
        let host = TestHost::new(members);
        leader
            .run(&request("c1"), members, &host, &Limits::default())
            .unwrap()
            .target
    };
    members[0].roles = vec!["database-leader".into(), "database".into()];
    assert_eq!(leader_run(&members).as_deref(), Some("m1"));
    members[0].roles = vec!["database".into()];
    members[1].roles = vec!["database-leader".into(), "database".into()];
    assert_eq!(leader_run(&members).as_deref(), Some("m2"));
    // A view made by hand beside the others is compared field by field.
    members[1].revision = None;
    members[0].config.insert("user.tier".into(), "slow".into());
    assert_eq!(run(&members).as_deref(), None);
}

/// Starts this process's peak resident memory again from what it holds now (the kernel's
/// `clear_refs` 5), so that a case measures its own peak.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// This process's peak resident memory, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Goal: additions in one statement are refused before they are built. Sixteen 30 MB strings
/// added in one statement build 4 GB of partial sums, which the check before the next
/// statement came too late for: each `+` of strings, lists or tuples is checked first.
#[test]
fn a_chain_of_additions_stops_at_the_memory_bound() {
    let terms = vec!["s"; 16].join(" + ");
    reset_peak();
    let before = peak_kib();
    assert_eq!(
        run_with(
            &body(&format!("s = \"x\" * 30000000\nt = {terms}")),
            &generous_time()
        )
        .unwrap_err(),
        memory_limit()
    );
    let risen_mib = peak_kib().saturating_sub(before) / 1024;
    assert!(risen_mib < 1024, "the peak rose by {risen_mib} MiB");
    // Numbers, lists and strings that fit still add up.
    let outcome = run(&body(
        "n = 1 + 2\nl = [1] + [2]\nt = (1,) + (2,)\nlog_info(n, l, t, \"a\" + \"b\", 8 * 1024 * 1024 * 1024)",
    ))
    .unwrap();
    assert_eq!(outcome.log[0].text, "3 [1, 2] (1, 2) ab 8589934592");
}

/// Goal: copies in one statement are checked one by one. Forty-eight copies of a 30 MB string
/// in one list (slices, `upper()`, `list()`) were all built before the next statement's check:
/// each copying call and slice is now followed by a check.
#[test]
fn copies_in_one_statement_stop_at_the_memory_bound() {
    let text = "s = \"x\" * 30000000";
    for (setup, copy) in [
        (text, "s[1:]"),
        (text, "s.upper()"),
        (text, "s.split(\"-\")"),
        ("l = [0] * 3000000", "list(l)"),
    ] {
        let copies = vec![copy; 48].join(", ");
        reset_peak();
        let before = peak_kib();
        let source = body(&format!("{setup}\nt = [{copies}]"));
        assert_eq!(
            run_with(&source, &generous_time()).unwrap_err(),
            memory_limit(),
            "{copy}"
        );
        let risen_mib = peak_kib().saturating_sub(before) / 1024;
        assert!(risen_mib < 1024, "{copy}: the peak rose by {risen_mib} MiB");
    }
}

/// Goal: what lives outside the Starlark heap counts against the memory bound. Big integers
/// keep their digits on the Rust heap, and nothing is freed during a call: shifting one 100,000
/// bits at a time held 912 MiB after the one-second time bound, under a 64 MiB memory bound.
#[test]
fn big_integers_count_against_the_memory_bound() {
    reset_peak();
    let before = peak_kib();
    assert_eq!(
        run(&body("x = 1\nfor i in range(100000):\n    x = x << 99999")).unwrap_err(),
        memory_limit()
    );
    let risen_mib = peak_kib().saturating_sub(before) / 1024;
    assert!(risen_mib < 256, "the peak rose by {risen_mib} MiB");
}
