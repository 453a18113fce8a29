//! The trust boundary: what reaches the port without a registered certificate costs nothing,
//! certificates are trusted because they are registered (not because the CA signed them), and
//! revocation holds on every member.

use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

use anyhow::{bail, Result};
use starling_runtime::protocol::{JoinRequest, Reply, Request};
use starling_runtime::token::TokenPayload;
use starling_runtime::{Error, Operation};
use starling_tests::{info, init_tracing, raw_request, wait_for, TestCluster};
use starling_transport::{self_signed_identity, CertUsage, ClusterCa, Identity};

fn join_request(name: &str, secret: &str) -> Request {
    Request::Join(JoinRequest {
        name: name.into(),
        secret: secret.into(),
        address: "127.0.0.1:19999".into(),
        architecture: std::env::consts::ARCH.into(),
        member_config: vec![],
    })
}

fn ca_of(cluster: &TestCluster) -> String {
    cluster
        .member(0)
        .local_state(|state| state.ca_cert_pem.clone())
}

fn refusal(reply: Reply) -> Option<Error> {
    match reply {
        Reply::Joined(Err(error)) | Reply::Trusted(Err(error)) | Reply::Refused(error) => {
            Some(error)
        }
        Reply::Operation(Err(error)) | Reply::ScriptDone(Err(error)) => Some(error),
        _ => None,
    }
}

/// `cluster remove m3` through member 0.
async fn remove_m3(cluster: &TestCluster) -> Result<()> {
    cluster
        .operation(
            0,
            Operation::ClusterRemove {
                name: "m3".into(),
                force: false,
            },
        )
        .await?;
    Ok(())
}

async fn last_log_index(cluster: &TestCluster) -> Result<u64> {
    Ok(info(cluster, 0).await?["last_log_index"]
        .as_u64()
        .unwrap_or_default())
}

/// Goal: a failed token claim writes nothing to the log, untrusted peers get a small frame
/// limit, and an address that keeps failing is refused further claims — but a registered
/// certificate from the same address is never affected.
/// Method: a self-signed peer sends joins with wrong secrets, unknown names and an oversized
/// request; `cluster.info().last_log_index` must not move; the sixth failure is answered with
/// the limit, while the local administrator (same address) keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_claims_write_nothing_and_are_limited() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let admin = cluster.client(0).await?;
    let address = cluster.address(0);
    let ca = ca_of(&cluster);
    let token = admin.join_token("m2").await?;
    let before = last_log_index(&cluster).await?;
    let stranger = || self_signed_identity("stranger").expect("an identity");

    tracing::info!("--- wrong secrets and unknown names");
    let claims = [
        join_request("m2", &"0".repeat(64)),
        join_request("nobody", &TokenPayload::decode(&token)?.secret),
        join_request("m2", "short"),
        Request::TrustClaim {
            name: "m2".into(),
            secret: TokenPayload::decode(&token)?.secret,
        },
    ];
    for claim in &claims {
        let reply = raw_request(&address, stranger(), &ca, claim).await?;
        let error = refusal(reply).expect("a refusal");
        assert!(matches!(error, Error::InvalidToken(_)), "{error:?}");
    }
    assert_eq!(
        last_log_index(&cluster).await?,
        before,
        "a failed claim wrote to the log"
    );

    tracing::info!("--- an oversized request from an untrusted peer is refused unread");
    let mut huge = JoinRequest {
        name: "m2".into(),
        secret: "0".repeat(64),
        address: "127.0.0.1:19999".into(),
        architecture: "x86_64".into(),
        member_config: vec![],
    };
    huge.member_config
        .push(starling_store::member_config::Answer {
            entity: "storage-pool".into(),
            name: "local".into(),
            key: "source".into(),
            value: "x".repeat(100_000),
        });
    let oversized = raw_request(&address, stranger(), &ca, &Request::Join(huge)).await;
    assert!(
        matches!(oversized, Err(starling_transport::Error::Remote { .. })),
        "{oversized:?}"
    );
    assert_eq!(last_log_index(&cluster).await?, before);

    tracing::info!("--- the fifth failure makes the address wait");
    let reply = raw_request(&address, stranger(), &ca, &claims[0]).await?;
    assert!(matches!(refusal(reply), Some(Error::InvalidToken(_))));
    let reply = raw_request(&address, stranger(), &ca, &claims[0]).await?;
    let error = refusal(reply).expect("a refusal");
    assert!(
        error.to_string().contains("too many failed token claims"),
        "{error}"
    );
    // Even a good claim waits now; the administrator's requests do not.
    let good = join_request("m2", &TokenPayload::decode(&token)?.secret);
    let error = refusal(raw_request(&address, stranger(), &ca, &good).await?).expect("refused");
    assert!(error.to_string().contains("too many failed"), "{error}");
    assert_eq!(
        admin.operation(Operation::ClusterMembers).await?[0]["server_name"],
        "m1"
    );
    assert_eq!(last_log_index(&cluster).await?, before);
    Ok(())
}

/// Goal: a certificate minted with the CA key after the fact (a former replica holds the key)
/// is not trusted, and client certificates never speak for members.
/// Method: mint a member and a client certificate with the cluster's CA key and try
/// operations, pings and heartbeats with them; then try member-only requests with the local
/// administrator's (registered) client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_certificates_are_trusted() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let address = cluster.address(0);
    let ca = cluster.member(0).local_state(|state| ClusterCa {
        cert_pem: state.ca_cert_pem.clone(),
        key_pem: state.ca_key_pem.clone(),
    });
    let with_chain = |identity: Identity| Identity {
        chain_pem: vec![ca.cert_pem.clone()],
        ..identity
    };
    let ping = Request::Ping;
    let members = Request::Operation {
        operation: Operation::ClusterMembers,
        caller: Default::default(),
    };

    tracing::info!("--- minted certificates");
    for usage in [CertUsage::Member, CertUsage::Client] {
        let minted = with_chain(ca.issue("m1", usage)?);
        for request in [&ping, &members] {
            let reply = raw_request(&address, minted.clone(), &ca.cert_pem, request).await?;
            let error = refusal(reply).expect("a refusal");
            assert!(error.to_string().contains("not trusted"), "{error}");
        }
    }

    tracing::info!("--- the administrator's client certificate is not a member's");
    let admin = starling_runtime::datadir::DataDir::new(&cluster.dir(0)).load_identity("admin")?;
    for request in [Request::Ping, Request::MemberState, Request::Removed] {
        let reply = raw_request(&address, admin.clone(), &ca.cert_pem, &request).await?;
        let error = refusal(reply).expect("a refusal");
        assert!(
            error.to_string().contains("only cluster members"),
            "{error}"
        );
    }
    let reply = raw_request(&address, admin, &ca.cert_pem, &members).await?;
    assert!(matches!(reply, Reply::Operation(Ok(_))), "{reply:?}");
    Ok(())
}

/// Goal: a removed member's certificate is refused everywhere — on voters and on a spare,
/// whose own copy of the database is not kept up to date — within a heartbeat interval.
/// Method: 4 members with no stand-bys (3 voters, 1 spare); keep a copy of m3's member
/// identity; remove m3; ping every remaining member with that identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_refused_everywhere() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(3).await?;
    cluster.set_config(0, "cluster.max_standby", "0").await?;
    cluster.add_member(3).await?;
    wait_for("3 voters and a spare", Duration::from_secs(30), || async {
        let members = cluster.members_via(0).await.ok()?;
        let voters = starling_tests::with_role(&members, "database");
        let spare = members[3]["database"] == false;
        (voters.len() == 3 && spare && cluster.membership_applied_everywhere()).then_some(())
    })
    .await?;
    let ca = ca_of(&cluster);
    let m3 = starling_runtime::datadir::DataDir::new(&cluster.dir(2)).load_identity("member")?;
    for index in [0, 1, 3] {
        let reply = raw_request(&cluster.address(index), m3.clone(), &ca, &Request::Ping).await?;
        assert!(matches!(reply, Reply::Pong), "before removal: {reply:?}");
    }

    tracing::info!("--- remove m3");
    remove_m3(&cluster).await?;
    for index in [0, 1, 3] {
        let address = cluster.address(index);
        wait_for(
            "m3's certificate to be refused",
            Duration::from_secs(3),
            || async {
                let reply = raw_request(&address, m3.clone(), &ca, &Request::Ping)
                    .await
                    .ok()?;
                let error = refusal(reply)?;
                error.to_string().contains("revoked").then_some(())
            },
        )
        .await?;
    }
    cluster.stop(2).await;
    Ok(())
}

/// Goal: a replication stream checks its sender on every request, not only when it opens: a
/// member removed while its stream is open gets its next append refused, with the reason, and
/// the stream ends; a client certificate cannot open one.
/// Method: open a replication stream to the follower m2 with m3's member certificate and send
/// it heartbeats in the current leader's name (entry-less, no previous entry: accepted); remove
/// m3; keep sending on the same stream until the refusal comes; then try to open one with the
/// administrator's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_stream_checks_every_request() -> Result<()> {
    use starling_runtime::protocol::{AppendStreamReply, RaftRequest};
    init_tracing();
    let cluster = TestCluster::start(3).await?;
    let ca = ca_of(&cluster);
    let m3 = starling_runtime::datadir::DataDir::new(&cluster.dir(2)).load_identity("member")?;
    let endpoint = starling_transport::Endpoint::new(starling_transport::EndpointConfig {
        identity: m3,
        bind: "127.0.0.1:0".parse()?,
        serve: false,
    })?;
    let trust = starling_transport::ServerTrust::Ca {
        ca_cert_pem: ca.clone(),
    };
    let connection = endpoint
        .connect(cluster.address(1).parse()?, &trust)
        .await?;
    let (mut sink, mut answers) = connection
        .open_duplex(&Request::Raft(RaftRequest::AppendStream))
        .await?;
    let heartbeat = || openraft::raft::AppendEntriesRequest::<starling_store::TypeConfig> {
        vote: cluster.member(1).raft().metrics().borrow_watched().vote,
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    };
    let timeout = Duration::from_secs(10);
    sink.send(&heartbeat()).await?;
    let answer: AppendStreamReply = answers.next(timeout).await?.expect("an answer");
    assert!(matches!(answer, Ok(Ok(_))), "accepted: {answer:?}");

    tracing::info!("--- remove m3, then append again on the open stream");
    remove_m3(&cluster).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        sink.send(&heartbeat()).await?;
        match answers.next::<AppendStreamReply>(timeout).await? {
            Some(Err(refused)) => break refused,
            Some(Ok(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => bail!("no refusal within 5 s of the removal: {other:?}"),
        }
    };
    assert!(refused.contains("no longer a member"), "{refused}");
    assert!(answers.next::<AppendStreamReply>(timeout).await?.is_none());
    endpoint.close();

    tracing::info!("--- a client certificate cannot open one");
    let admin = starling_runtime::datadir::DataDir::new(&cluster.dir(0)).load_identity("admin")?;
    let reply = raw_request(
        &cluster.address(0),
        admin,
        &ca,
        &Request::Raft(RaftRequest::AppendStream),
    )
    .await?;
    let error = refusal(reply).expect("a refusal");
    assert!(
        error.to_string().contains("only cluster members"),
        "{error}"
    );
    Ok(())
}

/// Goal: trust management as `lxc config trust`: list, remove by name or fingerprint, and trust
/// tokens kept apart from join tokens (the same name may have both).
/// Method: issue a join token and a trust token for one name, list both, claim the trust token
/// with a client certificate, list it, remove it, and see the client refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_list_and_remove() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let admin = cluster.client(0).await?;
    let address = cluster.address(0);
    let ca = ca_of(&cluster);

    tracing::info!("--- separate tokens");
    admin.join_token("laptop").await?;
    let trust = admin
        .operation(Operation::TrustAdd {
            name: "laptop".into(),
        })
        .await?;
    let join_tokens = admin.operation(Operation::ClusterTokens).await?;
    let trust_tokens = admin.operation(Operation::TrustTokens).await?;
    assert_eq!(
        join_tokens.as_array().map(Vec::len),
        Some(1),
        "{join_tokens}"
    );
    assert_eq!(
        trust_tokens.as_array().map(Vec::len),
        Some(1),
        "{trust_tokens}"
    );
    assert_ne!(join_tokens[0]["token"], trust_tokens[0]["token"]);

    tracing::info!("--- claim it");
    let laptop = self_signed_identity("laptop")?;
    let secret = TokenPayload::decode(trust["token"].as_str().unwrap_or_default())?.secret;
    let claim = Request::TrustClaim {
        name: "laptop".into(),
        secret,
    };
    let reply = raw_request(&address, laptop.clone(), &ca, &claim).await?;
    assert!(matches!(reply, Reply::Trusted(Ok(_))), "{reply:?}");
    let members = Request::Operation {
        operation: Operation::ClusterMembers,
        caller: Default::default(),
    };
    let reply = raw_request(&address, laptop.clone(), &ca, &members).await?;
    assert!(matches!(reply, Reply::Operation(Ok(_))), "{reply:?}");
    // The join token for the same name is still there.
    assert_eq!(
        admin
            .operation(Operation::ClusterTokens)
            .await?
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        admin
            .operation(Operation::TrustTokens)
            .await?
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    tracing::info!("--- list and remove");
    let list = admin.operation(Operation::TrustList).await?;
    let entry = list
        .as_array()
        .and_then(|entries| entries.iter().find(|entry| entry["name"] == "laptop"))
        .cloned();
    let Some(entry) = entry else {
        bail!("laptop not listed: {list}")
    };
    assert_eq!(entry["type"], "client");
    let refused = admin
        .operation(Operation::TrustRemove {
            name: "admin@m1".into(),
        })
        .await;
    assert!(
        refused.is_err(),
        "a member's administrator was removed: {refused:?}"
    );
    let fingerprint = entry["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    admin
        .operation(Operation::TrustRemove {
            name: fingerprint[..16].to_string(),
        })
        .await?;
    let reply = raw_request(&address, laptop, &ca, &members).await?;
    let error = refusal(reply).expect("a refusal");
    assert!(error.to_string().contains("revoked"), "{error}");
    let missing = admin
        .operation(Operation::TrustRemove {
            name: "laptop".into(),
        })
        .await;
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("no trusted client"));
    Ok(())
}

/// Goal: a token is consumed by its first use, even once its name is free again, and a new
/// token for a name replaces the old one.
/// Method: join m3, remove it, join again with the same token (refused); issue two tokens for
/// m4 and join with the first (refused), then with the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_consumed_and_replaced() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(2).await?;
    let admin = cluster.client(0).await?;
    let ca = ca_of(&cluster);
    let address = cluster.address(0);
    let used = admin.join_token("m3").await?;
    cluster.add_member_with_token(2, &used).await?;
    remove_m3(&cluster).await?;
    cluster.stop(2).await;
    // The name is free again; the used token still does not work.
    let secret = TokenPayload::decode(&used)?.secret;
    let reply = raw_request(
        &address,
        self_signed_identity("m3")?,
        &ca,
        &join_request("m3", &secret),
    )
    .await?;
    let error = refusal(reply).expect("a refusal");
    assert!(
        error.to_string().contains("no valid token for \"m3\""),
        "{error}"
    );

    tracing::info!("--- a new token replaces the old one");
    let old = admin.join_token("m4").await?;
    let new = admin.join_token("m4").await?;
    let old_secret = TokenPayload::decode(&old)?.secret;
    let reply = raw_request(
        &address,
        self_signed_identity("m4")?,
        &ca,
        &join_request("m4", &old_secret),
    )
    .await?;
    let error = refusal(reply).expect("a refusal");
    assert!(error.to_string().contains("does not match"), "{error}");
    cluster.add_member_with_token(3, &new).await?;
    Ok(())
}

/// Goal: every field that enters the log has a limit, and a request over it is refused with an
/// error naming the field, writing nothing.
/// Method: oversized config values, descriptions, member config maps, names and pool configs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_refused() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let admin = cluster.client(0).await?;
    let before = last_log_index(&cluster).await?;
    let big = "x".repeat(70 * 1024);
    let cases = [
        (
            Operation::ConfigSet {
                key: "user.big".into(),
                value: big.clone(),
            },
            "the value of \"user.big\"",
        ),
        (
            Operation::ConfigSet {
                key: format!("user.{}", "k".repeat(300)),
                value: "1".into(),
            },
            "configuration key is",
        ),
        (
            Operation::ClusterEdit {
                name: "m1".into(),
                edit: starling_runtime::operation::MemberEdit {
                    description: Some("d".repeat(5000)),
                    ..Default::default()
                },
            },
            "description is 5000 bytes",
        ),
        (
            Operation::ClusterSet {
                name: "m1".into(),
                key: "user.x".into(),
                value: big.clone(),
            },
            "member config value of \"user.x\"",
        ),
        (
            Operation::StorageCreate {
                name: "local".into(),
                driver: "dir".into(),
                config: [("user.a".to_string(), big.clone())].into(),
                member_config: Default::default(),
            },
            "config value of \"user.a\"",
        ),
        (
            Operation::ClusterAdd {
                name: "n".repeat(64),
            },
            "invalid member name",
        ),
    ];
    for (operation, needle) in cases {
        let error = admin.operation(operation).await.unwrap_err().to_string();
        assert!(error.contains(needle), "{error} does not name {needle}");
    }
    assert_eq!(
        last_log_index(&cluster).await?,
        before,
        "a refused request wrote to the log"
    );
    let info = info(&cluster, 0).await?;
    for field in [
        "raft_term",
        "last_log_index",
        "applied_index",
        "snapshot_index",
        "db_size",
    ] {
        assert!(info[field].is_u64(), "cluster.info() lacks {field}: {info}");
    }
    assert!(info["db_size"].as_u64() > Some(0));
    Ok(())
}

/// Goal: an append too large for one frame makes openraft send fewer entries instead of
/// failing forever (which stalled replication to the peer).
/// Method: stop a follower, commit 40 entries of about 420 KiB each (16 MiB in all: one append
/// would neither fit the time openraft gives it nor, with more, a frame), start the follower
/// again and wait until it has applied them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_appends_are_split() -> Result<()> {
    init_tracing();
    let mut cluster = TestCluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = (0..3).find(|index| *index != leader).unwrap_or(1);
    cluster.stop(follower).await;
    for round in 0..40 {
        let edit = starling_tests::large_edit(&format!("m{}", leader + 1), round, 7);
        cluster.operation(leader, edit).await?;
    }
    let target = cluster
        .member(leader)
        .raft()
        .metrics()
        .borrow_watched()
        .last_applied;
    cluster.restart(follower).await?;
    let member = cluster.member(follower).clone();
    wait_for(
        "the follower to catch up",
        Duration::from_secs(60),
        || async {
            (member.raft().metrics().borrow_watched().last_applied >= target).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Goal: a call stream (many operations on one stream kept open) is checked call by call: an
/// unregistered certificate gets every call refused, only operations go on it, and a client
/// whose trust is removed is refused from its next call on the stream it already has open.
/// Method: one member; a self-signed peer opens a call stream and sends operations; a client
/// claims a trust token, opens a call stream, runs an operation, sends a join on it, is
/// removed by the administrator, and runs the operation again on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_stream_checks_every_call() -> Result<()> {
    init_tracing();
    let cluster = TestCluster::start(1).await?;
    let admin = cluster.client(0).await?;
    let ca = ca_of(&cluster);
    let socket: std::net::SocketAddr = cluster.address(0).parse()?;
    let trust = starling_transport::ServerTrust::Ca {
        ca_cert_pem: ca.clone(),
    };
    let connect = |identity: Identity| {
        let trust = trust.clone();
        async move {
            let endpoint = starling_transport::Endpoint::new(starling_transport::EndpointConfig {
                identity,
                bind: "127.0.0.1:0".parse()?,
                serve: false,
            })?;
            let connection = endpoint.connect(socket, &trust).await?;
            let calls: starling_transport::Calls<Request, Reply> =
                connection.open_calls(&Request::Calls, 16).await?;
            anyhow::Ok((endpoint, calls))
        }
    };
    let members = Request::Operation {
        operation: Operation::ClusterMembers,
        caller: Default::default(),
    };
    let timeout = Duration::from_secs(10);

    tracing::info!("--- a stranger's calls are each refused");
    let (_stranger_endpoint, stranger) = connect(self_signed_identity("stranger")?).await?;
    let before = last_log_index(&cluster).await?;
    for _ in 0..3 {
        let error = refusal(stranger.call(&members, timeout).await?).expect("a refusal");
        assert!(error.to_string().contains("not trusted"), "{error}");
    }
    assert_eq!(last_log_index(&cluster).await?, before);

    tracing::info!("--- a trusted client, then removed");
    let laptop = self_signed_identity("laptop")?;
    let token = admin
        .operation(Operation::TrustAdd {
            name: "laptop".into(),
        })
        .await?;
    let secret = TokenPayload::decode(token["token"].as_str().unwrap_or_default())?.secret;
    let claim = Request::TrustClaim {
        name: "laptop".into(),
        secret,
    };
    let reply = raw_request(&cluster.address(0), laptop.clone(), &ca, &claim).await?;
    assert!(matches!(reply, Reply::Trusted(Ok(_))), "{reply:?}");
    let (_laptop_endpoint, calls) = connect(laptop.clone()).await?;
    let reply = calls.call(&members, timeout).await?;
    assert!(matches!(reply, Reply::Operation(Ok(_))), "{reply:?}");
    let join = calls.call(&join_request("m9", "secret"), timeout).await?;
    let error = refusal(join).expect("a refusal");
    assert!(error.to_string().contains("only operations"), "{error}");
    admin
        .operation(Operation::TrustRemove {
            name: "laptop".into(),
        })
        .await?;
    let error = refusal(calls.call(&members, timeout).await?).expect("a refusal");
    assert!(error.to_string().contains("revoked"), "{error}");
    assert!(!calls.is_broken(), "a refusal must not end the stream");
    Ok(())
}
