//! Creating a cluster and joining one: both the new member's side and the leader's.

use std::net::SocketAddr;
use std::time::Duration;

use starling_store::{Command, JoinToken, Member as MemberRecord, TokenKind, TrustedClient};
use starling_transport::{
    fingerprint_pem, CertUsage, ClusterCa, Endpoint, EndpointConfig, ServerTrust,
};

use crate::datadir::{DataDir, MemberFile};
use crate::member::{initial_membership, Member, NewMemberFiles};
use crate::protocol::{JoinRequest, JoinResponse, Reply, Request};
use crate::token::{format_time_ms, now_ms, random_secret, TokenPayload};
use crate::Error;

/// How long a joiner waits for each member it tries.
const JOIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a write may wait for the cluster database.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// Creates the CA and the first member's files in `dir`.
pub(crate) fn prepare_bootstrap(dir: &DataDir, name: &str, listen: &str) -> Result<(), Error> {
    starling_store::command::validate_member_name(name).map_err(Error::Refused)?;
    check_listen_address(listen)?;
    let ca = ClusterCa::generate()?;
    let identity = ca.issue(name, CertUsage::Member)?;
    let admin = ca.issue(&format!("admin@{name}"), CertUsage::Client)?;
    let file = MemberFile {
        name: name.to_string(),
        id: 1,
        address: listen.to_string(),
        peers: vec![],
    };
    // The CA key stays on disk until the bootstrap entry carries it into the database.
    dir.save_identity(
        "ca",
        &starling_transport::Identity {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
            chain_pem: vec![],
        },
    )?;
    NewMemberFiles {
        file,
        identity: &identity,
        admin: &admin,
        ca_cert_pem: &ca.cert_pem,
    }
    .save(dir)
}

/// Initializes Raft with the first member and writes the bootstrap entry, then deletes the CA
/// key file (the database holds the key from then on). Picks up where a bootstrap killed half
/// way stopped: Raft already initialized, the entry not yet written.
pub(crate) async fn finish_bootstrap(member: &Member) -> Result<(), Error> {
    let ca_identity = member.inner.dir.load_identity("ca")?;
    let admin = member.inner.dir.load_identity("admin")?;
    let member_identity = member.inner.dir.load_identity("member")?;
    let initialized = member
        .raft()
        .is_initialized()
        .await
        .map_err(|error| Error::Internal(format!("raft: {error}")))?;
    if !initialized {
        member
            .raft()
            .initialize(initial_membership(member.id(), member.address()))
            .await
            .map_err(|error| Error::Internal(format!("raft initialize: {error}")))?;
    }
    if member.wait_leader(Duration::from_secs(10)).await.is_none() {
        return Err(Error::Internal(
            "the new cluster elected no leader".to_string(),
        ));
    }
    let record = new_record(
        &member.name(),
        member.id(),
        member.address(),
        std::env::consts::ARCH,
        (&member_identity, &admin),
    )?;
    let admin = TrustedClient {
        name: format!("admin@{}", member.name()),
        fingerprint: fingerprint_pem(&admin.cert_pem)?,
        added_at_ms: now_ms(),
    };
    let command = Command::Bootstrap {
        member: record,
        ca_cert_pem: ca_identity.cert_pem,
        ca_key_pem: ca_identity.key_pem,
        admin,
    };
    // Committed entries apply before a read is linearized: the state then says whether the
    // bootstrap entry was written before an interruption.
    member.linearize().await?;
    if member.local_state(|state| state.members.is_empty()) {
        member.propose(command, Duration::from_secs(10)).await?;
    }
    member.inner.dir.remove_ca_key()?;
    tracing::info!(name = %member.name(), "cluster bootstrapped");
    Ok(())
}

/// Whether `dir` holds a bootstrap that has not written its first entry yet.
pub(crate) fn bootstrap_unfinished(dir: &DataDir) -> bool {
    dir.has_ca_key()
}

/// The new member's side of a join: ask the cluster, save what it answers. Returns the leader
/// that admitted it, so the new member can forward requests before any heartbeat arrives.
pub(crate) async fn join(
    dir: &DataDir,
    name: &str,
    listen: &str,
    token: &str,
    answers: &[starling_store::member_config::Answer],
) -> Result<NodeIdAndAddress, Error> {
    let payload = TokenPayload::decode(token)?;
    if payload.server_name != name {
        return Err(Error::InvalidToken(format!(
            "it was issued for a member named \"{}\", not \"{name}\"",
            payload.server_name
        )));
    }
    check_listen_address(listen)?;
    // Fail before the token is spent if this machine cannot listen there.
    std::net::UdpSocket::bind(listen)
        .map_err(|error| Error::Local(format!("cannot listen on {listen}: {error}")))?;
    let identity = starling_transport::self_signed_identity(name)?;
    let endpoint = Endpoint::new(EndpointConfig {
        identity,
        bind: unspecified_like(listen),
        serve: false,
    })?;
    let trust = ServerTrust::PinnedCa {
        fingerprint: payload.fingerprint.clone(),
    };
    let request = Request::Join(JoinRequest {
        name: name.to_string(),
        secret: payload.secret.clone(),
        address: listen.to_string(),
        architecture: std::env::consts::ARCH.to_string(),
        member_config: answers.to_vec(),
    });
    let mut failures = Vec::new();
    for address in &payload.addresses {
        match ask_to_join(&endpoint, address, &trust, &request).await {
            Ok(response) => {
                endpoint.close();
                let file = MemberFile {
                    name: name.to_string(),
                    id: response.id,
                    address: listen.to_string(),
                    peers: response.peers.clone(),
                };
                let files = NewMemberFiles {
                    file,
                    identity: &response.identity,
                    admin: &response.admin,
                    ca_cert_pem: &response.ca_cert_pem,
                };
                dir.save_registry(&response.registry)?;
                files.save(dir)?;
                tracing::info!(name, id = response.id, "joined the cluster");
                return Ok((response.leader_id, response.leader_address));
            }
            Err(error @ (Error::Refused(_) | Error::InvalidToken(_) | Error::NotAuthorized(_))) => {
                return Err(error)
            }
            Err(error) => failures.push(format!("{address}: {error}")),
        }
    }
    Err(Error::Transport(format!(
        "no member listed in the token could be reached: {}",
        failures.join("; ")
    )))
}

async fn ask_to_join(
    endpoint: &Endpoint,
    address: &str,
    trust: &ServerTrust,
    request: &Request,
) -> Result<JoinResponse, Error> {
    let socket = crate::network::resolve(address)
        .await
        .map_err(|error| Error::Transport(error.to_string()))?;
    let connection = endpoint.connect(socket, trust).await?;
    match connection
        .request::<Request, Reply>(request, JOIN_ATTEMPT_TIMEOUT)
        .await?
    {
        Reply::Joined(result) => result,
        Reply::Refused(error) => Err(error),
        other => Err(Error::Internal(format!(
            "unexpected reply to a join: {other:?}"
        ))),
    }
}

/// Checks a token claim on the leader before anything is issued or proposed, so a failed claim
/// writes nothing to the log.
fn check_claim(member: &Member, name: &str, kind: TokenKind, secret: &str) -> Result<(), Error> {
    starling_store::limits::check_len(
        "token secret",
        secret,
        starling_store::limits::SECRET_BYTES_MAX,
    )
    .map_err(Error::InvalidToken)?;
    member
        .local_state(|state| state.check_token(name, kind, secret, now_ms()))
        .map_err(Error::InvalidToken)
}

/// A member's Raft node id and address.
pub(crate) type NodeIdAndAddress = (starling_store::NodeId, String);

/// The leader's side of a join: check the token, then issue the certificates and record the
/// member.
pub(crate) async fn admit(member: &Member, request: JoinRequest) -> Result<JoinResponse, Error> {
    starling_store::command::validate_member_name(&request.name).map_err(Error::Refused)?;
    check_listen_address(&request.address)?;
    starling_store::limits::check_architecture(&request.architecture).map_err(Error::Refused)?;
    check_claim(member, &request.name, TokenKind::Join, &request.secret)?;
    let ca = member.local_state(|state| ClusterCa {
        cert_pem: state.ca_cert_pem.clone(),
        key_pem: state.ca_key_pem.clone(),
    });
    let identity = ca.issue(&request.name, CertUsage::Member)?;
    let admin = ca.issue(&format!("admin@{}", request.name), CertUsage::Client)?;
    let record = new_record(
        &request.name,
        0,
        &request.address,
        &request.architecture,
        (&identity, &admin),
    )?;
    let command = Command::MemberAdd {
        member: record.clone(),
        answers: request.member_config.clone(),
        secret: request.secret.clone(),
        now_ms: now_ms(),
    };
    member.propose(command, WRITE_TIMEOUT).await?;
    // The id was assigned when the command applied. A retried request whose first attempt was
    // applied finds a record with other certificates: its answer is lost for good.
    let id = member
        .local_state(|state| {
            state
                .members
                .get(&request.name)
                .filter(|added| added.certificate_fingerprint == record.certificate_fingerprint)
                .map(|added| added.id)
        })
        .ok_or_else(|| {
            Error::Refused(format!(
                "member \"{}\" was admitted by an earlier attempt of this join whose answer was lost; \
                 remove it and join again with a new token",
                request.name
            ))
        })?;
    let (peers, registry) = member.local_state(|state| {
        let peers = state
            .members
            .values()
            .map(|other| other.address.clone())
            .collect();
        (peers, crate::trust::TrustRegistry::of(state))
    });
    tracing::info!(name = %request.name, id, address = %request.address, "member admitted");
    Ok(JoinResponse {
        id,
        identity,
        admin,
        ca_cert_pem: ca.cert_pem,
        peers,
        registry,
        leader_id: member.id(),
        leader_address: member.address().to_string(),
    })
}

/// A new member's record, with its member and admin certificates' fingerprints.
fn new_record(
    name: &str,
    id: u64,
    address: &str,
    architecture: &str,
    (identity, admin): (&starling_transport::Identity, &starling_transport::Identity),
) -> Result<MemberRecord, Error> {
    Ok(MemberRecord {
        name: name.to_string(),
        id,
        address: address.to_string(),
        architecture: architecture.to_string(),
        description: String::new(),
        failure_domain: "default".to_string(),
        config: Default::default(),
        groups: vec!["default".to_string()],
        user_roles: vec![],
        certificate_fingerprint: fingerprint_pem(&identity.cert_pem)?,
        admin_fingerprint: fingerprint_pem(&admin.cert_pem)?,
        joined_at_ms: now_ms(),
        status: starling_store::MemberStatus::Online,
        last_heartbeat_ms: now_ms(),
    })
}

/// Issues a token for `name` (a join token, or a client trust token).
pub(crate) async fn issue_token(
    member: &Member,
    name: &str,
    kind: TokenKind,
) -> Result<TokenPayload, Error> {
    starling_store::command::validate_member_name(name).map_err(Error::Refused)?;
    let (fingerprint, expiry, mut addresses) = member.local_state(|state| {
        let ca = ClusterCa {
            cert_pem: state.ca_cert_pem.clone(),
            key_pem: String::new(),
        };
        let expiry = state
            .config_value("cluster.join_token_expiry")
            .unwrap_or_else(|| "3H".to_string());
        // As LXD: the members a joiner can reach now.
        let addresses: Vec<String> = state
            .members
            .values()
            .filter(|other| other.status == starling_store::MemberStatus::Online)
            .map(|other| other.address.clone())
            .collect();
        (ca.fingerprint(), expiry, addresses)
    });
    let fingerprint = fingerprint?;
    let expiry = starling_store::config::parse_expiry(&expiry).ok_or_else(|| {
        Error::Internal(format!(
            "stored cluster.join_token_expiry {expiry} is invalid"
        ))
    })?;
    // The leader first: it is the one that will admit the member.
    addresses.retain(|address| address != member.address());
    addresses.insert(0, member.address().to_string());
    let expires_at_ms = now_ms() + expiry.as_millis() as u64;
    let token = JoinToken {
        name: name.to_string(),
        kind,
        secret: random_secret()?,
        fingerprint,
        addresses,
        expires_at_ms,
    };
    member
        .propose(Command::TokenIssue { token }, WRITE_TIMEOUT)
        .await?;
    // The stored token, not the one built here: a retried request whose first attempt applied
    // must answer with the token that is valid.
    member
        .local_state(|state| state.tokens_of(kind).get(name).map(payload_of))
        .ok_or_else(|| Error::Refused(format!("the token for \"{name}\" was revoked meanwhile")))
}

/// The token string's contents for a stored token.
pub(crate) fn payload_of(token: &JoinToken) -> TokenPayload {
    TokenPayload {
        server_name: token.name.clone(),
        fingerprint: token.fingerprint.clone(),
        addresses: token.addresses.clone(),
        secret: token.secret.clone(),
        expires_at: format_time_ms(token.expires_at_ms),
    }
}

/// The leader's side of `remote add`: trust the client's certificate if its token is good.
pub(crate) async fn trust_client(
    member: &Member,
    name: &str,
    secret: &str,
    fingerprint: &str,
) -> Result<String, Error> {
    starling_store::command::validate_member_name(name).map_err(Error::Refused)?;
    check_claim(member, name, TokenKind::Client, secret)?;
    let client = TrustedClient {
        name: name.to_string(),
        fingerprint: fingerprint.to_string(),
        added_at_ms: now_ms(),
    };
    let command = Command::ClientTrust {
        client,
        secret: secret.to_string(),
        now_ms: now_ms(),
    };
    member.propose(command, WRITE_TIMEOUT).await?;
    Ok(member.inner.ca_cert_pem.clone())
}

/// Refuses listen addresses other members could not reach.
fn check_listen_address(address: &str) -> Result<(), Error> {
    let parsed: SocketAddr = address.parse().map_err(|_| {
        Error::Refused(format!(
            "invalid listen address \"{address}\": use IP:PORT, such as 10.0.0.5:7443"
        ))
    })?;
    if parsed.ip().is_unspecified() || parsed.port() == 0 {
        return Err(Error::Refused(format!(
            "listen address {address} cannot be reached by other members: give a concrete IP and port"
        )));
    }
    Ok(())
}

/// A wildcard bind address of the same family as `address`.
fn unspecified_like(address: &str) -> SocketAddr {
    match address.parse::<SocketAddr>() {
        Ok(SocketAddr::V6(_)) => "[::]:0"
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{MemberConfig, RaftTimings, StartMode};

    /// Goal: a member killed during bootstrap, after Raft was initialized and before the
    /// bootstrap entry was written, starts again cleanly and serves (before, it stayed "still
    /// bootstrapping" for ever).
    /// Method: prepare the files, open the member and initialize Raft only, stop it; restart
    /// it from the directory and run an operation; the CA key file is gone afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bootstrap_killed_half_way_finishes_on_restart() {
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::new(root.path());
        let listen = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().to_string()
        };
        prepare_bootstrap(&dir, "m1", &listen).unwrap();
        let config = |mode| MemberConfig {
            dir: root.path().to_path_buf(),
            mode,
            timings: RaftTimings::default(),
            store: Default::default(),
        };
        let half = Member::open(&dir, &config(StartMode::Restart))
            .await
            .unwrap();
        half.raft()
            .initialize(initial_membership(half.id(), half.address()))
            .await
            .unwrap();
        half.shutdown().await;
        drop(half);
        // The stopped member's LMDB environment and UDP port may take a moment to be released
        // in this process. It once took more than 30 s in CI: a background task that started
        // after the shutdown was sent waited for a change that had already happened, holding
        // the member (and its port) for ever (`Member::stopping` now). The time and the last
        // error are printed.
        let stopped = std::time::Instant::now();
        let mut restarted = None;
        let mut last_error = None;
        for _ in 0..300 {
            match Member::start(config(StartMode::Restart)).await {
                Ok(member) => {
                    restarted = Some(member);
                    break;
                }
                Err(error) => {
                    last_error = Some(error);
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        }
        println!(
            "restart after {:?} (last refusal: {last_error:?})",
            stopped.elapsed()
        );
        let member =
            restarted.unwrap_or_else(|| panic!("the member did not restart: {last_error:?}"));
        let members = member
            .execute(crate::Operation::ClusterMembers, crate::Caller::local())
            .await
            .unwrap();
        assert_eq!(members.as_array().map(Vec::len), Some(1), "{members}");
        assert!(!bootstrap_unfinished(&dir), "the CA key file stayed");
        assert!(
            dir.load_ca().is_ok(),
            "the CA certificate went with the key"
        );
        member.shutdown().await;
    }
}
