//! Test harnesses for Starling's scenario tests.
//!
//! # Layout
//! - [`TestCluster`]: N members in this process, on `127.0.0.1` ports, with handles to stop and
//!   restart members, and waits with deadlines.
//! - [`processes`]: real `starling` processes, for the tests that must kill with `SIGKILL`.
//! - [`netfault`]: real dropped packets between per-member loopback addresses (`iptables`).
//! - [`chaos`]: the `starling-chaos` fault harness (network namespaces, nemeses, a
//!   linearizability checker).
//!
//! No test waits on a sleep being long enough: every wait is a condition with a deadline.
#![warn(missing_docs)]

pub mod chaos;
pub mod containers;
pub mod netfault;
pub mod processes;
pub mod terminal;

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use starling_runtime::{Client, Member, MemberConfig, Operation, RaftTimings, StartMode};

/// Starts tracing for a test once (honours `RUST_LOG`, quiet by default).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,quinn=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Waits until `condition` returns `Some`, polling every 50 ms, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback address whose port is free right now.
///
/// Ports come from below Linux's ephemeral range (32768 and up), where every client endpoint
/// of the suite binds: a port picked there and released could be taken by a client before the
/// member binds it.
pub fn free_address() -> String {
    free_address_on("127.0.0.1")
}

/// An address on loopback IP `ip` whose port is free right now (see [`free_address`]).
pub fn free_address_on(ip: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 60) as u16 * 200;
    loop {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 12_000;
        let port = 20_000 + (base - 20_000 + offset) % 12_000;
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return format!("{ip}:{port}");
        }
    }
}

/// The indexes (`mN` is N - 1) of the voters other than member `leader` in a
/// `cluster.members()` answer: the followers whose pause takes a 3-voter cluster's quorum.
pub fn following_voters(members: &Value, leader: usize) -> anyhow::Result<Vec<usize>> {
    let leader_name = format!("m{}", leader + 1);
    with_role(members, "database")
        .into_iter()
        .filter(|name| *name != leader_name)
        .map(|name| member_index(&name))
        .collect()
}

/// The index of member `mN`: N - 1.
pub fn member_index(name: &str) -> anyhow::Result<usize> {
    name.trim_start_matches('m')
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .ok_or_else(|| anyhow::anyhow!("{name:?} is not a member name mN"))
}

/// Names of members holding `role` in a `cluster.members()` answer.
pub fn with_role(members: &Value, role: &str) -> Vec<String> {
    let mut names: Vec<String> = members
        .as_array()
        .into_iter()
        .flatten()
        .filter(|member| {
            member["roles"]
                .as_array()
                .is_some_and(|roles| roles.iter().any(|r| r == role))
        })
        .filter_map(|member| member["server_name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Members running in this process.
pub struct TestCluster {
    /// Keeps the data directories alive.
    root: tempfile::TempDir,
    /// Member `i` is `m{i+1}`; `None` while stopped.
    members: Vec<Option<Member>>,
    /// Loopback IP of member `i`, when it has one of its own.
    ips: Vec<String>,
}

impl TestCluster {
    /// Bootstraps `m1`, joins `m2..mN`, and waits until the roles have settled.
    pub async fn start(count: usize) -> Result<TestCluster> {
        TestCluster::start_with_ips(count, Vec::new()).await
    }

    /// Like [`TestCluster::start`], member `i` listening on `ips[i]` (127.0.0.1 past the list).
    pub async fn start_with_ips(count: usize, ips: Vec<String>) -> Result<TestCluster> {
        let root = tempfile::tempdir()?;
        let mut cluster = TestCluster {
            root,
            members: Vec::new(),
            ips,
        };
        let first = StartMode::Bootstrap {
            name: "m1".into(),
            listen: cluster.listen_address(0),
        };
        cluster
            .members
            .push(Some(start_member(&cluster.dir(0), first).await?));
        for index in 1..count {
            cluster.add_member(index).await?;
        }
        cluster.wait_roles_settled(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Joins member `index` (`m{index+1}`) with a token from a running member.
    pub async fn add_member(&mut self, index: usize) -> Result<()> {
        let name = format!("m{}", index + 1);
        let token = self.any_client().await?.join_token(&name).await?;
        self.add_member_with_token(index, &token).await
    }

    /// Joins member `index` (`m{index+1}`) with `token`.
    pub async fn add_member_with_token(&mut self, index: usize, token: &str) -> Result<()> {
        self.add_member_with(index, token, Default::default()).await
    }

    /// Joins member `index` (`m{index+1}`) with `token` and database settings `store`.
    pub async fn add_member_with(
        &mut self,
        index: usize,
        token: &str,
        store: starling_store::StoreOptions,
    ) -> Result<()> {
        let mode = StartMode::Join {
            name: format!("m{}", index + 1),
            listen: self.listen_address(index),
            token: token.to_string(),
            member_config: Vec::new(),
        };
        let member = start_member_with(&self.dir(index), mode, store).await?;
        if index < self.members.len() {
            self.members[index] = Some(member);
        } else {
            self.members.push(Some(member));
        }
        Ok(())
    }

    /// A free address for member `index`, on its own IP when it has one.
    fn listen_address(&self, index: usize) -> String {
        match self.ips.get(index) {
            Some(ip) => free_address_on(ip),
            None => free_address(),
        }
    }

    /// The data directory of member `index` (0-based: `m1` is 0).
    pub fn dir(&self, index: usize) -> PathBuf {
        self.root.path().join(format!("m{}", index + 1))
    }

    /// The running member `index`.
    pub fn member(&self, index: usize) -> &Member {
        self.members[index].as_ref().expect("member is running")
    }

    /// A client of member `index`, as its local administrator.
    pub async fn client(&self, index: usize) -> Result<Client> {
        Ok(Client::local(&self.dir(index)).await?)
    }

    /// A client of any running member.
    pub async fn any_client(&self) -> Result<Client> {
        let index = self
            .members
            .iter()
            .position(Option::is_some)
            .ok_or_else(|| anyhow!("no member runs"))?;
        self.client(index).await
    }

    /// Index of the current leader, once one is known to a running member.
    pub async fn leader(&self) -> Result<usize> {
        wait_for("a leader", Duration::from_secs(10), || async {
            self.members
                .iter()
                .flatten()
                .find_map(|member| member.is_leader().then(|| member.id() as usize - 1))
        })
        .await
    }

    /// Stops member `index` (its Raft node, endpoint and tasks); its data stays.
    pub async fn stop(&mut self, index: usize) {
        if let Some(member) = self.members[index].take() {
            member.shutdown().await;
        }
    }

    /// Restarts member `index` from its data directory.
    ///
    /// Retries for a few seconds: the stopped member's last tasks may still hold its LMDB
    /// environment open, and LMDB allows one environment per path and process.
    pub async fn restart(&mut self, index: usize) -> Result<()> {
        let dir = self.dir(index);
        let member = wait_for("the member to restart", Duration::from_secs(10), || async {
            match start_member(&dir, StartMode::Restart).await {
                Ok(member) => Some(member),
                Err(error) => {
                    tracing::debug!(%error, "restart attempt");
                    None
                }
            }
        })
        .await?;
        self.members[index] = Some(member);
        Ok(())
    }

    /// The address member `index` listens on.
    pub fn address(&self, index: usize) -> String {
        starling_runtime::datadir::DataDir::new(&self.dir(index))
            .load_member()
            .map(|file| file.address)
            .unwrap_or_default()
    }

    /// Cuts every member of `side` off from every member of `other` (both directions).
    pub fn partition(&self, side: &[usize], other: &[usize]) {
        let addresses = |indexes: &[usize]| {
            indexes
                .iter()
                .map(|index| self.address(*index))
                .collect::<Vec<_>>()
        };
        for index in side {
            self.member(*index).cut_off(&addresses(other));
        }
        for index in other {
            self.member(*index).cut_off(&addresses(side));
        }
    }

    /// Undoes every partition.
    pub fn heal(&self) {
        for member in self.members.iter().flatten() {
            member.reconnect_all();
        }
    }

    /// Runs an operation through member `index`.
    pub async fn operation(&self, index: usize, operation: Operation) -> Result<Value> {
        let client = self.client(index).await?;
        let result = client.operation(operation).await;
        client.close();
        Ok(result?)
    }

    /// Sets a global config key through member `index`.
    pub async fn set_config(&self, index: usize, key: &str, value: &str) -> Result<()> {
        self.operation(
            index,
            Operation::ConfigSet {
                key: key.into(),
                value: value.into(),
            },
        )
        .await
        .map(|_| ())
    }

    /// The quickest offline detection allowed: a 10 s threshold, heartbeats every 500 ms.
    pub async fn detect_offline_quickly(&self, via: usize) -> Result<()> {
        self.set_config(via, "cluster.offline_threshold", "10")
            .await?;
        self.set_config(via, "cluster.heartbeat_interval_ms", "500")
            .await
    }

    /// Waits until member `name` has `status`, as seen through member `via`.
    pub async fn wait_status(
        &self,
        via: usize,
        name: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<Value> {
        wait_for(&format!("{name} to be {status}"), timeout, || async {
            let member = self
                .operation(via, Operation::ClusterMember { name: name.into() })
                .await
                .ok()?;
            (member["status"] == status).then_some(member)
        })
        .await
    }

    /// Names with `role`, through member `via` (empty when the request fails).
    pub async fn names_with_role(&self, via: usize, role: &str) -> Vec<String> {
        match self.members_via(via).await {
            Ok(members) => with_role(&members, role),
            Err(_) => Vec::new(),
        }
    }

    /// `cluster.members()` as seen through member `index`.
    pub async fn members_via(&self, index: usize) -> Result<Value> {
        Ok(self
            .client(index)
            .await?
            .operation(Operation::ClusterMembers)
            .await?)
    }

    /// Waits until the number of voters is as LXD would have it for the running members.
    pub async fn wait_roles_settled(&self, timeout: Duration) -> Result<()> {
        let running = self.members.iter().flatten().count();
        let voters_expected = if running >= 3 { 3 } else { 1 };
        let standbys_expected = running.saturating_sub(voters_expected).min(2);
        wait_for("roles to settle", timeout, || async {
            let members = self
                .members_via(self.members.iter().position(Option::is_some)?)
                .await
                .ok()?;
            let settled = with_role(&members, "database").len() == voters_expected
                && with_role(&members, "database-standby").len() == standbys_expected;
            (settled && self.membership_applied_everywhere()).then_some(())
        })
        .await
    }

    /// Whether every running member has applied the same, non-joint Raft membership: only then
    /// is a role change finished (the view shows a change as soon as it is proposed, and a
    /// partition during a joint change can rightly stop the majority from electing).
    pub fn membership_applied_everywhere(&self) -> bool {
        let mut seen = None;
        for member in self.members.iter().flatten() {
            let metrics = member.raft().metrics().borrow_watched().clone();
            let membership = metrics.membership_config.clone();
            if membership.membership().get_node(&member.id()).is_none() {
                // A spare holds no replica, so it has no membership to compare.
                continue;
            }
            let applied = membership.log_id() <= &metrics.last_applied;
            let uniform = membership.membership().get_joint_config().len() == 1;
            if !applied || !uniform {
                return false;
            }
            match &seen {
                None => seen = Some(*membership.log_id()),
                Some(log_id) if log_id != membership.log_id() => return false,
                Some(_) => {}
            }
        }
        true
    }
}

async fn start_member(dir: &Path, mode: StartMode) -> Result<Member> {
    start_member_with(dir, mode, Default::default()).await
}

async fn start_member_with(
    dir: &Path,
    mode: StartMode,
    store: starling_store::StoreOptions,
) -> Result<Member> {
    // Slower than the daemon's defaults: several clusters share two cores in the test suite.
    // Snapshots every 200 entries, so that tests exercise snapshot transfer and log purging.
    let timings = RaftTimings {
        heartbeat_ms: 100,
        election_min_ms: 500,
        election_max_ms: 1000,
        snapshot_logs: 200,
    };
    Ok(Member::start(MemberConfig {
        dir: dir.to_path_buf(),
        mode,
        timings,
        store,
    })
    .await?)
}

/// Sends one request to the member at `address` as the holder of `identity`, checking the
/// member's certificate against `ca_cert_pem` (or, for an untrusted joiner, pinning the CA).
pub async fn raw_request(
    address: &str,
    identity: starling_transport::Identity,
    ca_cert_pem: &str,
    request: &starling_runtime::protocol::Request,
) -> std::result::Result<starling_runtime::protocol::Reply, starling_transport::Error> {
    raw_request_within(
        address,
        identity,
        ca_cert_pem,
        request,
        Duration::from_secs(10),
    )
    .await
}

/// [`raw_request`], waiting up to `timeout` for the answer.
pub async fn raw_request_within(
    address: &str,
    identity: starling_transport::Identity,
    ca_cert_pem: &str,
    request: &starling_runtime::protocol::Request,
    timeout: Duration,
) -> std::result::Result<starling_runtime::protocol::Reply, starling_transport::Error> {
    let endpoint = starling_transport::Endpoint::new(starling_transport::EndpointConfig {
        identity,
        bind: "127.0.0.1:0".parse().expect("a valid bind address"),
        serve: false,
    })?;
    let trust = starling_transport::ServerTrust::Ca {
        ca_cert_pem: ca_cert_pem.to_string(),
    };
    let socket = address.parse().expect("a member address is IP:PORT");
    let connection = endpoint.connect(socket, &trust).await?;
    let reply = connection
        .request::<_, starling_runtime::protocol::Reply>(request, timeout)
        .await;
    endpoint.close();
    reply
}

/// A large write: member `name`'s config set to `keys` keys of 60 KiB each (values differ per
/// `round`, so each write changes the state), about `keys` × 60 KiB in the log.
pub fn large_edit(name: &str, round: usize, keys: usize) -> Operation {
    let value = "v".repeat(60 * 1024);
    let config = (0..keys)
        .map(|key| (format!("user.k{key}"), format!("{round}{value}")))
        .collect();
    Operation::ClusterEdit {
        name: name.to_string(),
        edit: starling_runtime::operation::MemberEdit {
            config: Some(config),
            ..Default::default()
        },
    }
}

/// `cluster.info()` through member `index`: the Raft indexes and more.
pub async fn info(cluster: &TestCluster, index: usize) -> Result<Value> {
    cluster.operation(index, Operation::ClusterInfo).await
}
