//! Cluster groups and placement on real member processes: `cluster group ...` with LXD's
//! rules, `placement explain` for untargeted, `@group` and named targets under each
//! `scheduler.instance` mode, and placement scriptlets — refused at `config set` when broken,
//! choosing when installed, failing with LXD's message, tried with `placement test` (the
//! example scriptlets, one reading member resources over QUIC) and from Lua, and deciding
//! real creations: the reason `new`, the members' database roles, creations at once spread,
//! a failing scriptlet failing `init`. And the `init` command line: a generated name, `-p`,
//! `-d`, `list` and `info`.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;
use starling_tests::containers::instances;
use starling_tests::init_tracing;
use starling_tests::processes::ProcessCluster;

fn write_image(path: &Path) -> Result<()> {
    let metadata = format!(
        "architecture: {}\ncreation_date: 1700000000\nproperties:\n  description: placement\n",
        std::env::consts::ARCH
    );
    let file = std::fs::File::create(path)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(metadata.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "metadata.yaml", metadata.as_bytes())?;
    // An empty root file system: `init` unpacks it.
    let mut directory = tar::Header::new_gnu();
    directory.set_entry_type(tar::EntryType::Directory);
    directory.set_size(0);
    directory.set_mode(0o755);
    directory.set_uid(0);
    directory.set_gid(0);
    directory.set_mtime(1_700_000_000);
    directory.set_cksum();
    builder.append_data(&mut directory, "rootfs/", std::io::empty())?;
    builder.into_inner()?.finish()?;
    Ok(())
}

/// `members` member processes, 3 of them voters and `standbys` stand-bys, and the image `bb`
/// imported; the directory that held the image.
async fn with_image(
    members: usize,
    standbys: usize,
) -> Result<(ProcessCluster, tempfile::TempDir)> {
    init_tracing();
    let cluster = ProcessCluster::start(members).await?;
    cluster.wait_roles(0, 3, standbys).await?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("image.tar.gz");
    write_image(&image)?;
    cluster.cli_ok(
        0,
        &["image", "import", &image.to_string_lossy(), "--alias", "bb"],
    )?;
    Ok((cluster, work))
}

fn explain(cluster: &ProcessCluster, args: &[&str]) -> Result<Value> {
    let mut all = vec!["placement", "explain", "bb", "--format", "json"];
    all.extend_from_slice(args);
    Ok(serde_json::from_str(&cluster.cli_ok(0, &all)?)?)
}

fn names(value: &Value, field: &str) -> Vec<String> {
    value[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["name"].as_str().map(str::to_string))
        .collect()
}

fn excluded_reason(value: &Value, member: &str) -> String {
    value["excluded"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|entry| entry["name"] == member)
        .and_then(|entry| entry["reason"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Goal: groups follow LXD's rules, from the command line and from Lua (create, rename, add,
/// remove, assign, edit from YAML, `used_by`, delete only when empty); placement honours
/// `@group`, names and `scheduler.instance`, and says why each member was left out; each way
/// a scriptlet fails (`fail()`, a runtime error, a return value, a target that is not a
/// candidate, the time and memory bounds) gives LXD's message and what went wrong.
/// Method: 4 member processes, one small image; the CLI, and Lua for the `groups.*` calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_targets_and_scriptlets() -> Result<()> {
    let (cluster, work) = with_image(4, 1).await?;

    tracing::info!("--- cluster groups");
    cluster.cli_ok(
        0,
        &[
            "cluster",
            "group",
            "create",
            "gpu",
            "m2",
            "m3",
            "--description",
            "fast",
        ],
    )?;
    let groups: Value = serde_json::from_str(
        &cluster.cli_ok(0, &["cluster", "group", "list", "--format", "json"])?,
    )?;
    let gpu = groups
        .as_array()
        .and_then(|list| list.iter().find(|group| group["name"] == "gpu"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(gpu["members"], serde_json::json!(["m2", "m3"]), "{groups}");
    assert_eq!(gpu["description"], "fast");
    let error = cluster.cli_fails(0, &["cluster", "group", "delete", "gpu"])?;
    assert!(
        error.contains("only empty cluster groups can be deleted"),
        "{error}"
    );
    let error = cluster.cli_fails(0, &["cluster", "group", "create", "bad_name"])?;
    assert!(error.contains("invalid cluster group name"), "{error}");
    let error = cluster.cli_fails(0, &["cluster", "group", "delete", "default"])?;
    assert!(error.contains("cannot be deleted"), "{error}");
    cluster.cli_ok(0, &["cluster", "group", "remove", "m2", "default"])?;
    let error = cluster.cli_fails(0, &["cluster", "group", "remove", "m2", "gpu"])?;
    assert!(error.contains("at least one cluster group"), "{error}");
    cluster.cli_ok(0, &["cluster", "group", "assign", "m2", "default,gpu"])?;
    let shown = cluster.cli_ok(0, &["cluster", "group", "show", "gpu"])?;
    assert!(shown.contains("m2") && shown.contains("m3"), "{shown}");

    tracing::info!("--- placement: untargeted, @group, by name, scheduler modes");
    let any = explain(&cluster, &[])?;
    assert_eq!(names(&any, "candidates").len(), 4, "{any}");
    assert_eq!(any["chosen_by"], "least-loaded");
    let in_gpu = explain(&cluster, &["--target", "@gpu"])?;
    let member = in_gpu["member"].as_str().unwrap_or_default();
    assert!(member == "m2" || member == "m3", "{in_gpu}");
    assert!(excluded_reason(&in_gpu, "m1").contains("gpu"), "{in_gpu}");
    cluster.cli_ok(0, &["cluster", "set", "m3", "scheduler.instance=manual"])?;
    cluster.cli_ok(0, &["cluster", "set", "m4", "scheduler.instance=group"])?;
    let in_gpu = explain(&cluster, &["--target", "@gpu"])?;
    assert_eq!(in_gpu["member"], "m2", "{in_gpu}");
    assert!(
        excluded_reason(&in_gpu, "m3").contains("manual"),
        "{in_gpu}"
    );
    let untargeted = explain(&cluster, &[])?;
    let mut candidates = names(&untargeted, "candidates");
    candidates.sort();
    assert_eq!(candidates, ["m1", "m2"], "{untargeted}");
    let named = explain(&cluster, &["--target", "m3"])?;
    assert_eq!(named["member"], "m3");
    assert_eq!(named["chosen_by"], "target");
    let error = cluster.cli_fails(0, &["placement", "explain", "bb", "--target", "@nope"])?;
    assert!(error.contains("nope"), "{error}");

    tracing::info!("--- scriptlets: refused when broken, choosing when installed");
    let error = cluster.cli_fails(
        0,
        &[
            "config",
            "set",
            "instances.placement.scriptlet=def other(a, b):\n    pass\n",
        ],
    )?;
    assert!(error.contains("instance_placement"), "{error}");
    let error = cluster.cli_fails(
        0,
        &[
            "config",
            "set",
            "instances.placement.scriptlet=def instance_placement(request, candidate_members):\n    set_target(\n",
        ],
    )?;
    assert!(error.contains("line"), "{error}");
    let last = "def instance_placement(request, candidate_members):\n    names = sorted([m.server_name for m in candidate_members])\n    log_info(\"candidates\", names)\n    set_target(names[-1])\n";
    cluster.cli_ok(
        0,
        &[
            "config",
            "set",
            &format!("instances.placement.scriptlet={last}"),
        ],
    )?;
    let chosen = explain(&cluster, &[])?;
    assert_eq!(chosen["member"], "m2", "{chosen}");
    assert_eq!(chosen["chosen_by"], "scriptlet");
    assert_eq!(chosen["scriptlet"], "installed");
    let logged = chosen["log"].to_string();
    assert!(logged.contains("candidates"), "{chosen}");

    tracing::info!("--- placement test: scriptlets not installed, the examples included");
    let failing = work.path().join("fail.star");
    std::fs::write(
        &failing,
        "def instance_placement(request, candidate_members):\n    fail(\"no room for \" + request.name)\n",
    )?;
    let error = cluster.cli_fails(
        0,
        &[
            "placement",
            "test",
            &failing.to_string_lossy(),
            "bb",
            "--name",
            "c1",
        ],
    )?;
    assert!(
        error.contains("Failed instance placement scriptlet") && error.contains("no room for c1"),
        "{error}"
    );
    // Each other way a scriptlet fails, with LXD's prefix and what went wrong.
    for (body, said) in [
        ("x = {}\n    y = x[\"missing\"]", "missing"),
        (
            "set_target(\"m1\")\n    return 1",
            "unexpected return value: 1",
        ),
        ("set_target(\"nowhere\")", "nowhere"),
        ("for i in range(100000000):\n        pass", "Time limit"),
        ("x = [0] * 100000000", "Memory limit"),
    ] {
        std::fs::write(
            &failing,
            format!("def instance_placement(request, candidate_members):\n    {body}\n"),
        )?;
        let error =
            cluster.cli_fails(0, &["placement", "test", &failing.to_string_lossy(), "bb"])?;
        assert!(
            error.contains("Failed instance placement scriptlet") && error.contains(said),
            "{body}: {error}"
        );
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/placement");
    let most_free = examples.join("most_free_memory.star");
    let tested: Value = serde_json::from_str(&cluster.cli_ok(
        0,
        &[
            "placement",
            "test",
            &most_free.to_string_lossy(),
            "bb",
            "--format",
            "json",
        ],
    )?)?;
    assert_eq!(tested["chosen_by"], "scriptlet", "{tested}");
    assert_eq!(tested["scriptlet"], "tested");
    let run_example = |example: &str, name: &str| -> Result<Value> {
        let path = examples.join(example);
        Ok(serde_json::from_str(&cluster.cli_ok(
            0,
            &[
                "placement",
                "test",
                &path.to_string_lossy(),
                "bb",
                "--name",
                name,
                "--format",
                "json",
            ],
        )?)?)
    };
    let spread = run_example("spread_by_failure_domain.star", "web-1")?;
    assert_eq!(spread["chosen_by"], "scriptlet", "{spread}");
    // Not a database instance: the example leaves the choice to the built-in rule.
    let web = run_example("pin_by_prefix.star", "web-1")?;
    assert_eq!(web["chosen_by"], "least-loaded", "{web}");
    // A database instance with no `db*` member: the example refuses, with its message.
    let path = examples.join("pin_by_prefix.star");
    let error = cluster.cli_fails(
        0,
        &[
            "placement",
            "test",
            &path.to_string_lossy(),
            "bb",
            "--name",
            "db-1",
        ],
    )?;
    assert!(
        error.contains("no database member can take db-1"),
        "{error}"
    );

    tracing::info!("--- groups: rename, add, edit from YAML, used_by, and from Lua");
    cluster.cli_ok(0, &["cluster", "group", "create", "spare"])?;
    cluster.cli_ok(0, &["cluster", "group", "rename", "spare", "cold"])?;
    cluster.cli_ok(0, &["cluster", "group", "add", "m4", "cold"])?;
    cluster.cli_with_stdin(
        0,
        &["cluster", "group", "edit", "cold"],
        "description: kept cool\nmembers:\n- m3\n- m4\n",
    )?;
    cluster.lua(
        1,
        "projects.create('cool', {config={['restricted.cluster.groups']='cold'}}) return true",
    )?;
    let cold = cluster.lua(2, "return groups.get('cold')")?;
    assert_eq!(cold["description"], "kept cool", "{cold}");
    assert_eq!(cold["members"], serde_json::json!(["m3", "m4"]), "{cold}");
    assert_eq!(
        cold["used_by"],
        serde_json::json!(["/1.0/projects/cool"]),
        "{cold}"
    );
    cluster.lua(
        0,
        "groups.create('lua', {description='from lua', members={'m1'}}) \
         groups.add('m2', 'lua') groups.remove('m1', 'lua') \
         groups.assign('m1', {'default', 'cold'}) groups.rename('lua', 'lua2') \
         groups.edit('cold', {description='edited from lua'}) return true",
    )?;
    let listed = cluster.lua(1, "return groups.list()")?;
    let group = |name: &str| {
        listed
            .as_array()
            .and_then(|groups| groups.iter().find(|group| group["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        group("lua2")["members"],
        serde_json::json!(["m2"]),
        "{listed}"
    );
    assert_eq!(group("lua2")["description"], "from lua", "{listed}");
    assert_eq!(group("lua")["name"], Value::Null, "{listed}");
    assert_eq!(
        group("cold")["members"],
        serde_json::json!(["m1", "m3", "m4"]),
        "{listed}"
    );
    assert_eq!(group("cold")["description"], "edited from lua", "{listed}");
    let error = cluster.cli_fails(0, &["exec", "return groups.delete('lua2')"])?;
    assert!(error.contains("empty"), "{error}");
    cluster.lua(
        0,
        "groups.remove('m2', 'lua2') groups.delete('lua2') return true",
    )?;
    let error = cluster.cli_fails(0, &["exec", "return groups.get('lua2')"])?;
    assert!(error.contains("lua2"), "{error}");
    Ok(())
}

/// The instances' locations, by member.
fn locations(cluster: &ProcessCluster) -> Result<std::collections::BTreeMap<String, usize>> {
    let mut counts = std::collections::BTreeMap::new();
    for instance in instances(cluster, 0)? {
        let location = instance["location"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *counts.entry(location).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Goal: an installed scriptlet decides real creations (`init`): it sees the reason `new` and
/// the members' live database roles and message; creations asked at once spread as creations
/// one after the other do, although each waits for the scriptlet; a scriptlet that fails
/// fails `init` with LXD's message; `placement.explain` and `placement.test` answer from Lua.
/// And `init` from the command line: a generated name, `-p` and `-d`, `list`, `info`.
/// Method: 3 member processes, an image with no root file system (`init` needs no root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scriptlets_decide_real_creations() -> Result<()> {
    let (cluster, _work) = with_image(3, 0).await?;

    tracing::info!("--- the candidates as a scriptlet sees them");
    let slow = "def instance_placement(request, candidate_members):\n    if request.reason != \"new\":\n        fail(\"reason \" + request.reason)\n    for m in candidate_members:\n        log_info(m.server_name, m.database, m.roles, m.message)\n    n = 0\n    for i in range(20000):\n        n += i\n    return None\n";
    cluster.cli_ok(
        0,
        &[
            "config",
            "set",
            &format!("instances.placement.scriptlet={slow}"),
        ],
    )?;
    let explained = explain(&cluster, &[])?;
    let lines: Vec<String> = explained["log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|line| line["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(lines.len(), 3, "{explained}");
    for line in &lines {
        assert!(
            line.contains(" True [")
                && line.contains("\"database\"")
                && line.ends_with("Fully operational"),
            "{line}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.contains("database-leader"))
            .count(),
        1,
        "{lines:?}"
    );

    tracing::info!("--- creations at once spread, each decided by the scriptlet");
    let children: Vec<_> = (0..24)
        .map(|index| cluster.spawn_cli(index % 3, &["init", "bb", &format!("c{index}")]))
        .collect::<Result<_>>()?;
    for child in children {
        let output = child.wait_with_output()?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let spread = locations(&cluster)?;
    assert_eq!(
        spread.values().copied().collect::<Vec<_>>(),
        [8, 8, 8],
        "{spread:?}"
    );

    tracing::info!("--- a failing scriptlet fails init");
    cluster.cli_ok(
        0,
        &[
            "config",
            "set",
            "instances.placement.scriptlet=def instance_placement(request, candidate_members):\n    set_target(\"nowhere\")\n",
        ],
    )?;
    let error = cluster.cli_fails(0, &["init", "bb", "refused"])?;
    assert!(
        error.contains("Failed instance placement scriptlet") && error.contains("nowhere"),
        "{error}"
    );
    let error = cluster.cli_fails(1, &["info", "refused"])?;
    assert!(error.contains("refused"), "{error}");

    tracing::info!("--- placement.explain and placement.test from Lua");
    let answer = cluster.lua(
        1,
        "return placement.test('def instance_placement(request, candidate_members):\\n    set_target(\"m3\")\\n', {image='bb', name='t1'})",
    )?;
    assert_eq!(answer["member"], "m3", "{answer}");
    assert_eq!(answer["chosen_by"], "scriptlet", "{answer}");
    assert_eq!(answer["scriptlet"], "tested", "{answer}");
    cluster.cli_ok(0, &["config", "unset", "instances.placement.scriptlet"])?;
    let answer = cluster.lua(2, "return placement.explain{image='bb', target='m2'}")?;
    assert_eq!(answer["member"], "m2", "{answer}");
    assert_eq!(answer["chosen_by"], "target", "{answer}");
    assert_eq!(answer["scriptlet"], "none", "{answer}");

    tracing::info!("--- init from the command line: a generated name, -p, -d, list, info");
    let said = cluster.cli_ok(0, &["init", "bb"])?;
    let generated = said
        .lines()
        .find_map(|line| line.strip_prefix("Instance name is: "))
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        !generated.is_empty()
            && generated
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "{said}"
    );
    cluster.cli_ok(
        0,
        &[
            "init",
            "bb",
            "sized",
            "-p",
            "default",
            "-d",
            "root,size=200MiB",
        ],
    )?;
    let sized = instances(&cluster, 1)?
        .into_iter()
        .find(|instance| instance["name"] == "sized")
        .unwrap_or_default();
    assert_eq!(
        sized["expanded_devices"]["root"]["size"], "200MiB",
        "{sized}"
    );
    assert_eq!(sized["profiles"], serde_json::json!(["default"]), "{sized}");
    let listed = cluster.cli_ok(2, &["list"])?;
    let header = listed
        .lines()
        .find(|line| line.contains("NAME"))
        .unwrap_or_default();
    for column in ["NAME", "STATE", "LOCATION", "PROFILES"] {
        assert!(header.contains(column), "{listed}");
    }
    let row = listed
        .lines()
        .find(|line| line.contains(&generated))
        .unwrap_or_default();
    assert!(row.contains("STOPPED") && row.contains('m'), "{listed}");
    let info = cluster.cli_ok(1, &["info", "sized"])?;
    let location = sized["location"].as_str().unwrap_or_default();
    assert!(
        !location.is_empty() && info.contains(&format!("Location: {location}")),
        "{info}"
    );

    tracing::info!("--- instances of another project");
    cluster.cli_ok(0, &["project", "create", "other"])?;
    cluster.cli_ok(
        0,
        &[
            "init",
            "bb",
            "sized",
            "--project",
            "other",
            "--target",
            "m3",
        ],
    )?;
    let other: Value = serde_json::from_str(
        &cluster.cli_ok(1, &["list", "--project", "other", "--format", "json"])?,
    )?;
    assert_eq!(other.as_array().map(Vec::len), Some(1), "{other}");
    assert_eq!(other[0]["project"], "other", "{other}");
    assert_eq!(other[0]["location"], "m3", "{other}");
    let default = instances(&cluster, 1)?;
    let named_sized = default
        .iter()
        .filter(|instance| instance["name"] == "sized")
        .count();
    assert_eq!(named_sized, 1, "{default:?}");
    cluster.cli_ok(2, &["delete", "sized", "--project", "other"])?;
    assert_eq!(
        cluster
            .cli_ok(0, &["list", "--project", "other", "--format", "json"])?
            .trim(),
        "[]"
    );
    Ok(())
}
