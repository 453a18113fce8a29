//! Bad input of every kind gets a clear error, and the cluster keeps working.

use std::time::Duration;

use anyhow::Result;
use starling_runtime::token::TokenPayload;
use starling_runtime::{Client, Member, MemberConfig, Operation, RaftTimings, StartMode};
use starling_tests::{free_address, init_tracing, TestCluster};

async fn try_join(
    dir: &std::path::Path,
    name: &str,
    token: &str,
) -> Result<Member, starling_runtime::Error> {
    let mode = StartMode::Join {
        name: name.into(),
        listen: free_address(),
        token: token.into(),
        member_config: Vec::new(),
    };
    Member::start(MemberConfig {
        dir: dir.to_path_buf(),
        mode,
        timings: RaftTimings::default(),
        store: Default::default(),
    })
    .await
}

async fn token_for(client: &Client, name: &str) -> Result<String> {
    Ok(client.join_token(name).await?)
}

fn expect_error<T>(result: Result<T, starling_runtime::Error>, needle: &str) {
    match result {
        Ok(_) => panic!("expected an error containing {needle:?}, got success"),
        Err(error) => assert!(
            error.to_string().contains(needle),
            "error {error:?} does not say {needle:?}"
        ),
    }
}

/// Goal: tokens are single-use, expire, can be revoked, and resist tampering.
/// Method: join attempts with a used, revoked, tampered, expired and foreign-fingerprint token,
/// then a normal join that still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let admin = cluster.client(0).await?;
    let scratch = tempfile::tempdir()?;

    tracing::info!("--- reused token");
    let token = token_for(&admin, "m2").await?;
    let joined = try_join(&scratch.path().join("m2"), "m2", &token).await?;
    expect_error(
        try_join(&scratch.path().join("m2b"), "m2", &token).await,
        "no valid token for \"m2\"",
    );
    expect_error(
        admin
            .operation(Operation::ClusterAdd { name: "m2".into() })
            .await,
        "already has a member",
    );

    tracing::info!("--- revoked token");
    let token = token_for(&admin, "m3").await?;
    admin
        .operation(Operation::ClusterRevokeToken { name: "m3".into() })
        .await?;
    expect_error(
        try_join(&scratch.path().join("m3"), "m3", &token).await,
        "no valid token for \"m3\"",
    );

    tracing::info!("--- tampered tokens");
    let token = token_for(&admin, "m4").await?;
    let mut payload = TokenPayload::decode(&token)?;
    payload.secret = "0".repeat(64);
    expect_error(
        try_join(&scratch.path().join("m4"), "m4", &payload.encode()).await,
        "secret for \"m4\" does not match",
    );
    expect_error(
        try_join(&scratch.path().join("m4"), "m4", "not-a-token!").await,
        "invalid token: not base64",
    );
    expect_error(
        try_join(&scratch.path().join("m4"), "m5", &token).await,
        "issued for a member named \"m4\"",
    );

    tracing::info!("--- a fingerprint that does not match the cluster's certificate");
    let mut payload = TokenPayload::decode(&token)?;
    payload.fingerprint = "ab".repeat(32);
    expect_error(
        try_join(&scratch.path().join("m4"), "m4", &payload.encode()).await,
        "fingerprint",
    );

    tracing::info!("--- expired token");
    let expiry = Operation::ConfigSet {
        key: "cluster.join_token_expiry".into(),
        value: "1S".into(),
    };
    admin.operation(expiry).await?;
    let token = token_for(&admin, "m6").await?;
    let expires_at = TokenPayload::decode(&token)?.expires_at;
    starling_tests::wait_for("the token to expire", Duration::from_secs(5), || async {
        (starling_runtime::token::format_time_ms(starling_runtime::token::now_ms()) > expires_at)
            .then_some(())
    })
    .await?;
    expect_error(
        try_join(&scratch.path().join("m6"), "m6", &token).await,
        "has expired",
    );

    tracing::info!("--- the name none is reserved");
    expect_error(
        admin
            .operation(Operation::ClusterAdd {
                name: "none".into(),
            })
            .await,
        "reserved",
    );

    tracing::info!("--- the cluster still works");
    admin
        .operation(Operation::ConfigUnset {
            key: "cluster.join_token_expiry".into(),
        })
        .await?;
    let token = token_for(&admin, "m7").await?;
    let m7 = try_join(&scratch.path().join("m7"), "m7", &token).await?;
    joined.shutdown().await;
    m7.shutdown().await;
    Ok(())
}

/// Goal: a client holding a certificate from another cluster is refused.
/// Method: start two single-member clusters and use the second's admin identity on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_from_another_cluster_is_refused() -> Result<()> {
    init_tracing();
    let ours = TestCluster::start(1).await?;
    let theirs = TestCluster::start(1).await?;
    // Their admin files, pointed at our member's address and CA.
    let impostor = tempfile::tempdir()?;
    let copy = |from: std::path::PathBuf, to: &str| {
        std::fs::copy(from, impostor.path().join(to)).map(|_| ())
    };
    std::fs::create_dir_all(impostor.path().join("tls"))?;
    copy(theirs.dir(0).join("tls/admin.crt"), "tls/admin.crt")?;
    copy(theirs.dir(0).join("tls/admin.key"), "tls/admin.key")?;
    copy(ours.dir(0).join("tls/ca.crt"), "tls/ca.crt")?;
    copy(ours.dir(0).join("member.json"), "member.json")?;
    let client = Client::local(impostor.path()).await?;
    expect_error(
        client.operation(Operation::ClusterMembers).await,
        "not trusted by this cluster",
    );
    expect_error(
        client.exec("return 1", "exec", |_| {}).await,
        "not trusted by this cluster",
    );
    assert!(ours
        .client(0)
        .await?
        .operation(Operation::ClusterMembers)
        .await
        .is_ok());
    Ok(())
}

/// Goal: a malformed frame closes only its stream; the member keeps serving.
/// Method: send a frame that is valid bincode of the wrong type, then a real request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_does_not_hurt_the_member() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let dir = starling_runtime::datadir::DataDir::new(&cluster.dir(0));
    let identity = dir.load_identity("admin")?;
    let endpoint = starling_transport::Endpoint::new(starling_transport::EndpointConfig {
        identity,
        bind: "127.0.0.1:0".parse()?,
        serve: false,
    })?;
    let address = dir.load_member()?.address.parse()?;
    let trust = starling_transport::ServerTrust::Ca {
        ca_cert_pem: dir.load_ca()?,
    };
    let connection = endpoint.connect(address, &trust).await?;
    let garbage = connection
        .request::<(u64, u64, u64, u64), starling_runtime::protocol::Reply>(
            &(u64::MAX, 7, 7, 7),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        garbage.is_err(),
        "a malformed request got an answer: {garbage:?}"
    );
    let members = cluster
        .client(0)
        .await?
        .operation(Operation::ClusterMembers)
        .await?;
    assert_eq!(members.as_array().map(Vec::len), Some(1));
    Ok(())
}

/// Goal: invalid config values are refused with the key and the rule, and nothing is stored.
/// Method: set out-of-range and unknown keys, then read the effective values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let admin = cluster.client(0).await?;
    let cases = [
        (
            "cluster.max_voters",
            "4",
            "must be an odd integer of at least 3",
        ),
        ("cluster.max_voters", "many", "must be an odd integer"),
        ("cluster.max_standby", "6", "from 0 to 5"),
        ("cluster.offline_threshold", "5", "at least 10"),
        ("cluster.images_minimal_replica", "0", "or -1"),
        ("cluster.join_token_expiry", "soon", "duration"),
        // Would overflow the expiry time in milliseconds.
        (
            "cluster.join_token_expiry",
            "500000000000y",
            "at most 100 years",
        ),
        ("cluster.healing_threshold", "-3", "0 to disable"),
        (
            "cluster.nonsense",
            "1",
            "unknown configuration key \"cluster.nonsense\"",
        ),
    ];
    for (key, value, rule) in cases {
        let result = admin
            .operation(Operation::ConfigSet {
                key: key.into(),
                value: value.into(),
            })
            .await;
        expect_error(result, rule);
    }
    let value = admin
        .operation(Operation::ConfigGet {
            key: "cluster.max_voters".into(),
        })
        .await?;
    assert_eq!(value, "3");
    admin
        .operation(Operation::ConfigSet {
            key: "cluster.max_voters".into(),
            value: "5".into(),
        })
        .await?;
    assert_eq!(
        admin
            .operation(Operation::ConfigGet {
                key: "cluster.max_voters".into()
            })
            .await?,
        "5"
    );
    Ok(())
}

/// Goal: runaway scripts end with a clear error and the member keeps serving.
/// Method: run an endless loop (bare and inside pcall) and an unbounded allocation on a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_scripts_are_stopped() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let admin = cluster.client(0).await?;
    expect_error(
        admin.exec("while true do end", "loop.lua", |_| {}).await,
        "instruction budget",
    );
    let in_pcall = "local ok = pcall(function() while true do end end) return ok";
    expect_error(
        admin.exec(in_pcall, "pcall.lua", |_| {}).await,
        "instruction budget",
    );
    let hog = "local t = {} while true do t[#t + 1] = string.rep('x', 1000000) end";
    expect_error(admin.exec(hog, "hog.lua", |_| {}).await, "memory limit");
    let hog_in_pcall = format!("return pcall(function() {hog} end)");
    expect_error(
        admin.exec(&hog_in_pcall, "hog.lua", |_| {}).await,
        "memory limit",
    );
    expect_error(
        admin.exec("error('boom')", "boom.lua", |_| {}).await,
        "boom.lua:1: boom",
    );
    expect_error(
        admin
            .exec("return cluster.member('ghost')", "ghost.lua", |_| {})
            .await,
        "member \"ghost\" not found",
    );
    expect_error(
        admin
            .exec("return io.open('/etc/passwd')", "io.lua", |_| {})
            .await,
        "io",
    );
    let mut printed = Vec::new();
    let value = admin
        .exec(
            "print('still', 'here') return #cluster.members()",
            "ok.lua",
            |line| printed.push(line.to_string()),
        )
        .await?;
    assert_eq!(value, 1);
    assert_eq!(printed, ["still\there"]);
    Ok(())
}

/// Goal: a script source over its documented limit (256 KiB) is refused with an error saying
/// so, before anything runs.
/// Method: send a 300 KiB script (a long comment, then a statement that would print).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_script_is_refused() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let admin = cluster.client(0).await?;
    let source = format!("--{}\nprint('ran')", "x".repeat(300 * 1024));
    let mut printed = Vec::new();
    let result = admin
        .exec(&source, "big.lua", |line| printed.push(line.to_string()))
        .await;
    expect_error(result, "over the limit of 262144 bytes");
    assert!(printed.is_empty(), "the oversized script ran: {printed:?}");
    Ok(())
}
