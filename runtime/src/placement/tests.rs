//! The placement tests: a table of clusters, targets, scriptlets and requests with the member
//! expected (or the error), then the example scriptlets of `scripts/placement/`. The fixtures
//! here ([`TestHost`], [`member`], [`request`]) serve the scriptlet tests too.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;

/// A host answering from fixed data: resources and state per member, instances with a
/// `location` and a `project`.
pub(crate) struct TestHost {
    pub(crate) members: Vec<MemberView>,
    pub(crate) resources: BTreeMap<String, serde_json::Value>,
    pub(crate) instances: Vec<serde_json::Value>,
}

impl TestHost {
    pub(crate) fn new(members: &[MemberView]) -> Self {
        let resources = members
            .iter()
            .enumerate()
            .map(|(position, member)| {
                let used = 1024 * (position as u64 + 1);
                (
                    member.name.clone(),
                    json!({
                        "cpu": {"architecture": member.architecture, "sockets": [], "total": 4},
                        "memory": {"used": used, "total": 8192},
                        "storage": {"disks": [], "total": 100},
                    }),
                )
            })
            .collect();
        TestHost {
            members: members.to_vec(),
            resources,
            instances: Vec::new(),
        }
    }

    fn matching<'a>(
        &'a self,
        project: Option<&'a str>,
        location: Option<&'a str>,
    ) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
        self.instances.iter().filter(move |instance| {
            project.is_none_or(|project| instance["project"] == project)
                && location.is_none_or(|location| instance["location"] == location)
        })
    }
}

impl ScriptletHost for TestHost {
    fn member_state(&self, name: &str) -> Result<serde_json::Value, String> {
        if name == "broken" {
            return Err("member did not answer".to_string());
        }
        Ok(
            json!({"sysinfo": {"uptime": 100, "logical_cpus": 4, "total_ram": 8192}, "storage_pools": {}}),
        )
    }

    fn member_resources(&self, name: &str) -> Result<serde_json::Value, String> {
        self.resources
            .get(name)
            .cloned()
            .ok_or_else(|| "no resources".to_string())
    }

    fn instances(&self, project: Option<&str>, location: Option<&str>) -> Vec<serde_json::Value> {
        self.matching(project, location).cloned().collect()
    }

    fn instances_count(&self, project: Option<&str>, location: Option<&str>, pending: bool) -> u64 {
        self.matching(project, location)
            .filter(|instance| pending || instance["status"] != "Pending")
            .count() as u64
    }

    fn cluster_members(&self, group: Option<&str>) -> Vec<MemberView> {
        self.members
            .iter()
            .filter(|member| group.is_none_or(|group| member.groups.iter().any(|g| g == group)))
            .cloned()
            .collect()
    }

    fn project(&self, name: &str) -> Option<serde_json::Value> {
        (name == "default").then(|| {
            json!({"name": "default", "description": "Default project", "config": {"features.images": "true"}})
        })
    }
}

pub(crate) fn member(name: &str) -> MemberView {
    MemberView {
        name: name.to_string(),
        url: format!("https://{name}:8443"),
        status: "Online".to_string(),
        message: "Fully operational".to_string(),
        architecture: "x86_64".to_string(),
        failure_domain: "default".to_string(),
        groups: vec!["default".to_string()],
        roles: vec!["database".to_string()],
        ..MemberView::default()
    }
}

pub(crate) fn request(name: &str) -> PlacementRequest {
    PlacementRequest {
        name: name.to_string(),
        project: "default".to_string(),
        kind: "container".to_string(),
        architecture: "x86_64".to_string(),
        source: "debian/12".to_string(),
        reason: Reason::New,
        ..PlacementRequest::default()
    }
}

/// A member of a fixture: name, status, architecture, `scheduler.instance`, groups, instances.
type Row<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [&'a str], u64);

fn cluster(rows: &[Row]) -> Vec<MemberView> {
    rows.iter()
        .map(|(name, status, architecture, scheduler, groups, count)| {
            let mut member = member(name);
            member.status = status.to_string();
            member.architecture = architecture.to_string();
            if !scheduler.is_empty() {
                member
                    .config
                    .insert(SCHEDULER_KEY.to_string(), scheduler.to_string());
            }
            member.scheduler = SchedulerMode::from_config(&member.config);
            member.groups = groups.iter().map(|group| group.to_string()).collect();
            member.instance_count = *count;
            member
        })
        .collect()
}

/// One placement: the cluster, `--target`, the instance being moved off (if any), the
/// scriptlet (if any), the tie-break index, and the expected member or error text.
struct Case<'a> {
    name: &'a str,
    members: Vec<MemberView>,
    target: &'a str,
    current: Option<&'a str>,
    scriptlet: Option<&'a str>,
    architecture: &'a str,
    random: usize,
    expect: Result<&'a str, &'a str>,
}

impl<'a> Case<'a> {
    fn new(name: &'a str, members: Vec<MemberView>, expect: Result<&'a str, &'a str>) -> Self {
        Case {
            name,
            members,
            target: "",
            current: None,
            scriptlet: None,
            architecture: "x86_64",
            random: 0,
            expect,
        }
    }
    fn target(mut self, target: &'a str) -> Self {
        self.target = target;
        self
    }
    fn moving_from(mut self, current: &'a str) -> Self {
        self.current = Some(current);
        self
    }
    fn scriptlet(mut self, body: &'a str) -> Self {
        self.scriptlet = Some(body);
        self
    }
    fn architecture(mut self, architecture: &'a str) -> Self {
        self.architecture = architecture;
        self
    }
    fn random(mut self, index: usize) -> Self {
        self.random = index;
        self
    }

    fn place(&self) -> Result<String, String> {
        let mut request = request("c1");
        request.architecture = self.architecture.to_string();
        let target = Target::parse(self.target).map_err(|error| error.to_string())?;
        let host = TestHost::new(&self.members);
        let limits = Limits::default();
        let compiled = self.scriptlet.map(|body| {
            let source = format!(
                "def instance_placement(request, candidate_members):\n    {}\n",
                body.replace('\n', "\n    ")
            );
            Scriptlet::compile(&source).expect("the case's scriptlet compiles")
        });
        let run = compiled.as_ref().map(|scriptlet| ScriptletRun {
            scriptlet,
            host: &host,
            limits: &limits,
        });
        let random = self.random;
        place(
            &self.members,
            &request,
            &target,
            self.current,
            run,
            &mut |_| random,
        )
        .map(|placement| placement.member)
        .map_err(|error| error.to_string())
    }
}

const ALL: &[&str] = &["default"];
const GPU: &[&str] = &["default", "gpu"];

fn cases() -> Vec<Case<'static>> {
    let three = || {
        cluster(&[
            ("m1", "Online", "x86_64", "", ALL, 5),
            ("m2", "Online", "x86_64", "", ALL, 2),
            ("m3", "Online", "x86_64", "", ALL, 9),
        ])
    };
    vec![
        Case::new("fewest instances wins", three(), Ok("m2")),
        Case::new(
            "offline, evacuated and pending are excluded even when least loaded",
            cluster(&[
                ("m1", "Offline", "x86_64", "", ALL, 0),
                ("m2", "Evacuated", "x86_64", "", ALL, 0),
                ("m3", "Pending", "x86_64", "", ALL, 0),
                ("m4", "Online", "x86_64", "", ALL, 7),
            ]),
            Ok("m4"),
        ),
        Case::new(
            "architecture mismatch is excluded",
            cluster(&[
                ("m1", "Online", "aarch64", "", ALL, 0),
                ("m2", "Online", "x86_64", "", ALL, 4),
            ]),
            Ok("m2"),
        ),
        Case::new(
            "architecture alias matches",
            cluster(&[
                ("m1", "Online", "aarch64", "", ALL, 0),
                ("m2", "Online", "x86_64", "", ALL, 4),
            ]),
            Ok("m1"),
        )
        .architecture("arm64"),
        Case::new(
            "untargeted: scheduler group and manual are excluded",
            cluster(&[
                ("m1", "Online", "x86_64", "group", GPU, 0),
                ("m2", "Online", "x86_64", "manual", ALL, 0),
                ("m3", "Online", "x86_64", "all", ALL, 8),
            ]),
            Ok("m3"),
        ),
        Case::new(
            "@group: least loaded member of the group, scheduler all or group",
            cluster(&[
                ("m1", "Online", "x86_64", "", ALL, 0),
                ("m2", "Online", "x86_64", "group", GPU, 3),
                ("m3", "Online", "x86_64", "", GPU, 6),
                ("m4", "Online", "x86_64", "manual", GPU, 0),
            ]),
            Ok("m2"),
        )
        .target("@gpu"),
        Case::new(
            "@group: only manual or offline members left",
            cluster(&[
                ("m1", "Online", "x86_64", "", ALL, 0),
                ("m2", "Offline", "x86_64", "", GPU, 3),
                ("m3", "Online", "x86_64", "manual", GPU, 0),
            ]),
            Err("No suitable cluster member could be found (m1: not in group gpu; m2: offline; \
                 m3: scheduler.instance is manual (chosen only when targeted by name))"),
        )
        .target("@gpu"),
        Case::new("@group nobody is in", three(), Err("Cluster group \"nope\" not found or has no members"))
            .target("@nope"),
        Case::new("bare @", three(), Err("Empty cluster group name in target \"@\"")).target("@"),
        Case::new(
            "named member with scheduler manual is allowed",
            cluster(&[
                ("m1", "Online", "x86_64", "manual", ALL, 50),
                ("m2", "Online", "x86_64", "", ALL, 0),
            ]),
            Ok("m1"),
        )
        .target("m1"),
        Case::new(
            "named member that is evacuated fails saying so",
            cluster(&[
                ("m1", "Evacuated", "x86_64", "", ALL, 0),
                ("m2", "Online", "x86_64", "", ALL, 0),
            ]),
            Err("Cluster member m1 cannot take the instance: evacuated"),
        )
        .target("m1"),
        Case::new(
            "named member that is offline fails saying so",
            cluster(&[("m1", "Offline", "x86_64", "", ALL, 0)]),
            Err("Cluster member m1 cannot take the instance: offline"),
        )
        .target("m1"),
        Case::new(
            "named member of another architecture",
            cluster(&[("m1", "Online", "aarch64", "", ALL, 0)]),
            Err("Cluster member m1 cannot take the instance: architecture aarch64 cannot run a x86_64 instance"),
        )
        .target("m1"),
        Case::new("unknown named member", three(), Err("Cluster member \"m9\" not found")).target("m9"),
        Case::new(
            "tie broken by the random source: first",
            cluster(&[
                ("m1", "Online", "x86_64", "", ALL, 1),
                ("m2", "Online", "x86_64", "", ALL, 1),
                ("m3", "Online", "x86_64", "", ALL, 1),
            ]),
            Ok("m1"),
        ),
        Case::new(
            "tie broken by the random source: third",
            cluster(&[
                ("m1", "Online", "x86_64", "", ALL, 1),
                ("m2", "Online", "x86_64", "", ALL, 1),
                ("m3", "Online", "x86_64", "", ALL, 1),
            ]),
            Ok("m3"),
        )
        .random(2),
        Case::new(
            "no candidate: every member listed with its reason",
            cluster(&[
                ("m1", "Offline", "x86_64", "", ALL, 0),
                ("m2", "Online", "aarch64", "", ALL, 0),
                ("m3", "Online", "x86_64", "group", ALL, 0),
            ]),
            Err("No suitable cluster member could be found (m1: offline; m2: architecture aarch64 \
                 cannot run a x86_64 instance; m3: scheduler.instance is group (chosen only by \
                 name or for one of its groups))"),
        ),
        Case::new("no members at all", Vec::new(), Err("No suitable cluster member could be found (the cluster has no members)")),
        Case::new("a move never stays on its member", three(), Ok("m1")).moving_from("m2"),
        Case::new(
            "the scriptlet's choice wins over the fewest instances",
            three(),
            Ok("m3"),
        )
        .scriptlet("set_target(\"m3\")"),
        Case::new("no set_target: the built-in rule places", three(), Ok("m2"))
            .scriptlet("log_info(\"nothing to say\")"),
        Case::new("a named target is not given to the scriptlet", three(), Ok("m1"))
            .target("m1")
            .scriptlet("fail(\"not called\")"),
        Case::new(
            "@group: the scriptlet sees only the group's candidates",
            cluster(&[
                ("m1", "Online", "x86_64", "", ALL, 0),
                ("m2", "Online", "x86_64", "", GPU, 3),
                ("m3", "Online", "x86_64", "", GPU, 6),
            ]),
            Ok("m3"),
        )
        .target("@gpu")
        .scriptlet("set_target(candidate_members[-1].server_name)\nif len(candidate_members) != 2:\n    fail(\"expected 2 candidates\")"),
        Case::new(
            "the scriptlet cannot choose an excluded member",
            cluster(&[
                ("m1", "Online", "x86_64", "", ALL, 0),
                ("m2", "Offline", "x86_64", "", ALL, 0),
            ]),
            Err("Failed instance placement scriptlet: Member \"m2\" given to set_target is not a candidate"),
        )
        .scriptlet("set_target(\"m2\")"),
        Case::new(
            "the scriptlet's fail() fails the placement",
            three(),
            Err("Failed instance placement scriptlet: fail: no room for c1 (line 2)"),
        )
        .scriptlet("fail(\"no room for\", request.name)"),
        Case::new(
            "the scriptlet is not consulted when nothing is left",
            cluster(&[("m1", "Offline", "x86_64", "", ALL, 0)]),
            Err("No suitable cluster member could be found (m1: offline)"),
        )
        .scriptlet("fail(\"not called\")"),
    ]
}

/// Goal: every built-in rule, the targets and the scriptlet's part in one table: each case
/// places on the expected member or fails with the expected text.
#[test]
fn placement_table() {
    let mut wrong = Vec::new();
    for case in cases() {
        let expected = case.expect.map(str::to_string).map_err(str::to_string);
        let got = case.place();
        if got != expected {
            wrong.push(format!(
                "{}:\n  expected {expected:?}\n  got      {got:?}",
                case.name
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Goal: a placement reports who chose, the exclusions and the scriptlet's log.
#[test]
fn placement_reports_how() {
    let members = cluster(&[
        ("m1", "Online", "x86_64", "", ALL, 4),
        ("m2", "Offline", "x86_64", "", ALL, 0),
        ("m3", "Online", "x86_64", "", ALL, 1),
    ]);
    let host = TestHost::new(&members);
    let scriptlet = Scriptlet::compile(
        "def instance_placement(request, candidate_members):\n    log_warn(\"for\", request.name)\n",
    )
    .unwrap();
    let placement = place(
        &members,
        &request("c1"),
        &Target::None,
        None,
        Some(ScriptletRun {
            scriptlet: &scriptlet,
            host: &host,
            limits: &Limits::default(),
        }),
        &mut |_| 0,
    )
    .unwrap();
    assert_eq!(placement.member, "m3");
    assert_eq!(placement.chosen_by, ChosenBy::LeastLoaded);
    assert_eq!(
        placement.exclusions,
        [Exclusion {
            member: "m2".to_string(),
            reason: ExclusionReason::Offline
        }]
    );
    assert_eq!(
        placement.log,
        [LogLine {
            level: LogLevel::Warn,
            text: "for c1".to_string()
        }]
    );
}

/// Goal: the types a caller stores or sends survive serde, and `--target` parses as LXD's.
#[test]
fn types_round_trip() {
    let members = cluster(&[("m1", "Online", "x86_64", "group", GPU, 2)]);
    let text = serde_json::to_string(&members[0]).unwrap();
    assert!(text.contains("\"scheduler\":\"group\""), "{text}");
    assert_eq!(
        serde_json::from_str::<MemberView>(&text).unwrap(),
        members[0]
    );
    let error = PlacementError::NoCandidate {
        exclusions: vec![Exclusion {
            member: "m1".into(),
            reason: ExclusionReason::NotInGroup {
                group: "gpu".into(),
            },
        }],
    };
    let text = serde_json::to_string(&error).unwrap();
    assert_eq!(
        serde_json::from_str::<PlacementError>(&text).unwrap(),
        error
    );
    assert_eq!(Target::parse("").unwrap(), Target::None);
    assert_eq!(Target::parse("@gpu").unwrap(), Target::Group("gpu".into()));
    assert_eq!(Target::parse("m1").unwrap(), Target::Member("m1".into()));
    assert_eq!(Target::parse("@"), Err(PlacementError::EmptyGroupName));
    let mut config = BTreeMap::new();
    assert_eq!(SchedulerMode::from_config(&config), SchedulerMode::All);
    config.insert(SCHEDULER_KEY.to_string(), "manual".to_string());
    assert_eq!(SchedulerMode::from_config(&config), SchedulerMode::Manual);
}

const SPREAD_BY_FAILURE_DOMAIN: &str =
    include_str!("../../../scripts/placement/spread_by_failure_domain.star");
const MOST_FREE_MEMORY: &str = include_str!("../../../scripts/placement/most_free_memory.star");
const PIN_BY_PREFIX: &str = include_str!("../../../scripts/placement/pin_by_prefix.star");

fn in_domain(name: &str, domain: &str) -> MemberView {
    let mut member = member(name);
    member.failure_domain = domain.to_string();
    member
}

fn instance(name: &str, location: &str, status: &str) -> serde_json::Value {
    json!({"name": name, "project": "default", "location": location, "status": status})
}

/// Goal: `spread_by_failure_domain.star` picks the domain with the fewest instances, pending
/// creations included, then the member there with the fewest.
#[test]
fn script_spread_by_failure_domain() {
    let members = vec![
        in_domain("m1", "a"),
        in_domain("m2", "a"),
        in_domain("m3", "b"),
        in_domain("m4", "c"),
    ];
    let mut host = TestHost::new(&members);
    host.instances = vec![
        instance("i1", "m1", "Running"),
        instance("i2", "m2", "Running"),
        instance("i3", "m3", "Pending"),
        instance("i4", "m4", "Running"),
        instance("i5", "m4", "Running"),
        instance("i6", "m4", "Running"),
    ];
    let scriptlet = Scriptlet::compile(SPREAD_BY_FAILURE_DOMAIN).unwrap();
    let outcome = scriptlet
        .run(&request("c1"), &members, &host, &Limits::default())
        .unwrap();
    // Domains: a=2, b=1 (pending), c=3.
    assert_eq!(outcome.target.as_deref(), Some("m3"));
    assert_eq!(outcome.log[0].text, "spread_by_failure_domain: c1 -> m3");
    // A second pending creation on m3 ties b with a; m1 then has the fewest (by name).
    host.instances.push(instance("i7", "m3", "Pending"));
    let outcome = scriptlet
        .run(&request("c1"), &members, &host, &Limits::default())
        .unwrap();
    assert_eq!(outcome.target.as_deref(), Some("m1"));
}

/// Goal: `most_free_memory.star` picks the most free memory that fits the instance, and
/// leaves the choice to the built-in rule when none fits.
#[test]
fn script_most_free_memory() {
    let members = vec![member("m1"), member("m2"), member("m3")];
    let mut host = TestHost::new(&members);
    for (name, used) in [("m1", 7000), ("m2", 2000), ("m3", 4000)] {
        host.resources.insert(
            name.to_string(),
            json!({"memory": {"used": used, "total": 8000}}),
        );
    }
    let scriptlet = Scriptlet::compile(MOST_FREE_MEMORY).unwrap();
    let mut request = request("c1");
    request.config.insert("limits.memory".into(), "5kB".into());
    let outcome = scriptlet
        .run(&request, &members, &host, &Limits::default())
        .unwrap();
    assert_eq!(outcome.target.as_deref(), Some("m2"));
    request.config.insert("limits.memory".into(), "7kB".into());
    let outcome = scriptlet
        .run(&request, &members, &host, &Limits::default())
        .unwrap();
    assert_eq!(outcome.target, None);
    assert_eq!(
        outcome.log[0].text,
        "no candidate has 7000 bytes free for c1"
    );
}

/// Goal: `pin_by_prefix.star` sends db-* to the least loaded db member, leaves others alone,
/// and fails when no db member is a candidate.
#[test]
fn script_pin_by_prefix() {
    let members = vec![member("db1"), member("db2"), member("web1")];
    let mut host = TestHost::new(&members);
    host.instances = vec![instance("db-a", "db1", "Running")];
    let scriptlet = Scriptlet::compile(PIN_BY_PREFIX).unwrap();
    let limits = Limits::default();
    let outcome = scriptlet
        .run(&request("db-main"), &members, &host, &limits)
        .unwrap();
    assert_eq!(outcome.target.as_deref(), Some("db2"));
    let outcome = scriptlet
        .run(&request("web-3"), &members, &host, &limits)
        .unwrap();
    assert_eq!(outcome.target, None);
    let failure = scriptlet
        .run(&request("db-main"), &members[2..], &host, &limits)
        .unwrap_err();
    assert_eq!(
        PlacementError::from(failure).to_string(),
        "Failed instance placement scriptlet: fail: no database member can take db-main (line 10)"
    );
}
