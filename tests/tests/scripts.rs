//! Every script in `scripts/` runs against a real cluster and does what it says.

use anyhow::Result;
use starling_tests::{init_tracing, TestCluster};

fn script(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Goal: each example script runs and returns what its header promises.
/// Method: run them on a 3-member cluster through a member, checking their results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_scripts_run() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(3).await?;
    let client = cluster.client(1).await?;

    let mut lines = Vec::new();
    let summary = client
        .exec(&script("members.lua"), "members.lua", |line| {
            lines.push(line.to_string())
        })
        .await?;
    assert_eq!(summary["voters"], 3, "{summary}");
    assert_eq!(lines.len(), 3);
    assert!(summary["leader"]
        .as_str()
        .is_some_and(|leader| leader.starts_with('m')));

    let applied = client.exec(&script("tune.lua"), "tune.lua", |_| {}).await?;
    assert_eq!(applied["cluster.offline_threshold"], "30");
    assert_eq!(applied["user.owner"], "ops");

    let tokens = client
        .exec(&script("tokens.lua"), "tokens.lua", |_| {})
        .await?;
    assert_eq!(
        tokens,
        serde_json::json!({"issued": 2, "listed": 2, "left": 0})
    );

    let listed: Vec<String> =
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts"))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".lua"))
            .collect();
    assert_eq!(
        listed.len(),
        3,
        "a new script in scripts/ needs a check here: {listed:?}"
    );
    Ok(())
}
