//! Cluster groups and placement on real member processes: `cluster group ...` with LXD's
//! rules, `placement explain` for untargeted, `@group` and named targets under each
//! `scheduler.instance` mode, and placement scriptlets — refused at `config set` when broken,
//! choosing when installed, failing with LXD's message, tried with `placement test` (the
//! example scriptlets, one reading member resources over QUIC).

use std::path::Path;

use anyhow::Result;
use serde_json::Value;
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
    builder.into_inner()?.finish()?;
    Ok(())
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

/// Goal: groups follow LXD's rules; placement honours `@group`, names and
/// `scheduler.instance`, and says why each member was left out.
/// Method: 4 member processes, one small image; the CLI only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_targets_and_scriptlets() -> Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(4).await?;
    cluster.wait_roles(0, 3, 1).await?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("image.tar.gz");
    write_image(&image)?;
    cluster.cli_ok(
        0,
        &["image", "import", &image.to_string_lossy(), "--alias", "bb"],
    )?;

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
    Ok(())
}
