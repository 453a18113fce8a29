//! A running member: its Raft node, its QUIC endpoint, and its background tasks.
//!
//! [`Member::start`] creates, joins or restarts a member from its data directory. Requests
//! arrive through [`crate::serve`]; operations run in [`crate::execute`]; the leader's
//! heartbeat and role rebalancing run in [`crate::cluster::health`].

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use starling_store::{ClusterState, Command, NodeId, StateMachine};
use starling_transport::{Endpoint, EndpointConfig, Identity, Pool, ServerTrust};
use tokio::sync::watch;

use crate::datadir::{DataDir, MemberFile};
use crate::network::RaftTransport;
use crate::protocol::{Reply, Request};
use crate::Error;

/// How long a starting member waits without hearing from any leader before it may call an
/// election (see [`Member::hold_elections_until_quiet`]).
const QUIET_BEFORE_ELECTIONS: Duration = Duration::from_secs(3);

/// How long Raft's idea of the leader counts without an append from it (see [`Member::leader`]).
const RAFT_VIEW_FRESH: Duration = Duration::from_secs(1);

/// How a member starts.
#[derive(Clone, Debug)]
pub enum StartMode {
    /// Create a new cluster with this member as its first.
    Bootstrap {
        /// Member name.
        name: String,
        /// Address to listen on and to be reached at.
        listen: String,
    },
    /// Join an existing cluster with a token.
    Join {
        /// Member name (must match the token).
        name: String,
        /// Address to listen on and to be reached at.
        listen: String,
        /// The join token.
        token: String,
        /// Answers to the member-specific configuration questions.
        member_config: Vec<starling_store::member_config::Answer>,
    },
    /// Start again from an existing data directory.
    Restart,
}

/// Raft timing, in milliseconds. A follower stands for election only after the leader's lease
/// (`election_max_ms`) and its own election timeout have both passed without a heartbeat, so
/// a lost leader is replaced after about `election_max_ms + election_min_ms`. The defaults aim
/// at a new leader within half a second on a LAN.
#[derive(Clone, Copy, Debug)]
pub struct RaftTimings {
    /// Leader heartbeat to followers.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout.
    pub election_min_ms: u64,
    /// Upper bound of the election timeout.
    pub election_max_ms: u64,
    /// Entries between snapshots (which also bound the log replayed at restart).
    pub snapshot_logs: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 40,
            election_min_ms: 120,
            election_max_ms: 200,
            snapshot_logs: 10_000,
        }
    }
}

/// Everything needed to start a member.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// Create, join or restart.
    pub mode: StartMode,
    /// Raft timing.
    pub timings: RaftTimings,
    /// The database's settings (LMDB map sizes).
    pub store: starling_store::StoreOptions,
}

/// A running member. Cheap to clone.
#[derive(Clone)]
pub struct Member {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) id: NodeId,
    pub(crate) address: String,
    pub(crate) dir: DataDir,
    pub(crate) raft: starling_store::Raft,
    pub(crate) state: StateMachine,
    pub(crate) endpoint: Endpoint,
    pub(crate) pool: Pool,
    pub(crate) trust: ServerTrust,
    pub(crate) ca_cert_pem: String,
    /// What heartbeats told this member (spares learn the leader only this way).
    pub(crate) heard: Mutex<Heard>,
    /// Leader only: when each member last answered a heartbeat, and since when it has not.
    pub(crate) last_seen: Mutex<HashMap<NodeId, crate::cluster::health::Sighting>>,
    /// Leader only: the trust registry version each member last reported.
    pub(crate) trust_acked: Mutex<HashMap<NodeId, u64>>,
    /// When this member last became leader.
    pub(crate) leader_since: Mutex<Option<Instant>>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Writes waiting for the proposer (group commit).
    pub(crate) proposals: tokio::sync::mpsc::UnboundedSender<crate::proposer::Proposal>,
    /// Addresses this member may not talk to (fault injection for partition tests).
    pub(crate) blocked: Blocked,
    /// When the last Raft append arrived (`None`: no Raft contact since this member started).
    pub(crate) last_append: Mutex<Option<Instant>>,
    /// The trust registry last heard from a leader (or given at join), for members whose own
    /// replica is older (spares).
    pub(crate) registry: Mutex<crate::trust::TrustRegistry>,
    /// Slots for scripts running on this member.
    pub(crate) scripts: crate::script::ScriptSlots,
    /// Held while roles are planned and changed (automatic rebalancing, operator changes), so
    /// neither plans on the other's half-done change.
    pub(crate) role_lock: tokio::sync::Mutex<()>,
    /// Images being imported, received and copied (see [`crate::images::ops`]).
    pub(crate) images: crate::images::ops::ImageState,
    /// This member's containers (see [`crate::instances::local`]).
    pub(crate) instances: crate::instances::local::InstanceState,
    pub(crate) placement: crate::placement::ops::PlacementState,
    /// Stored-script runs under way here (see [`crate::automation::scripts`]).
    pub(crate) automation: crate::automation::scripts::AutomationState,
    /// This member's events (see [`crate::events`]).
    pub(crate) events: crate::events::bus::EventBus,
    /// Whether the database can still write; once it cannot, the member is out of service.
    pub(crate) storage: starling_store::StorageHealth,
    /// Becomes true once the member has stopped (after shutdown or removal).
    pub(crate) stopped: watch::Sender<bool>,
    /// Held while the member runs, so recovery tools cannot touch its database.
    _lock: starling_store::DirLock,
}

/// Peer addresses cut off from a member, shared with its Raft network.
pub type Blocked = Arc<Mutex<std::collections::HashSet<String>>>;

/// The latest heartbeat a member received.
#[derive(Clone, Debug, Default)]
pub(crate) struct Heard {
    pub(crate) leader: Option<(NodeId, String)>,
    pub(crate) peers: Vec<String>,
    /// When the last heartbeat arrived.
    pub(crate) at: Option<Instant>,
}

impl Member {
    /// Starts a member: bootstraps, joins or restarts as `config.mode` says.
    pub async fn start(config: MemberConfig) -> Result<Member, Error> {
        let dir = DataDir::new(&config.dir);
        match &config.mode {
            StartMode::Bootstrap { name, listen } => {
                if dir.is_initialized() {
                    return Err(Error::Local(format!(
                        "{} already holds a member; start it with `starling daemon --dir {}`",
                        config.dir.display(),
                        config.dir.display()
                    )));
                }
                crate::cluster::join::prepare_bootstrap(&dir, name, listen)?;
                let member = Member::open(&dir, &config).await?;
                crate::cluster::join::finish_bootstrap(&member).await?;
                Ok(member)
            }
            StartMode::Join {
                name,
                listen,
                token,
                member_config,
            } => {
                if dir.is_initialized() {
                    return Err(Error::Local(format!(
                        "{} already holds a member",
                        config.dir.display()
                    )));
                }
                let leader =
                    crate::cluster::join::join(&dir, name, listen, token, member_config).await?;
                let member = Member::open(&dir, &config).await?;
                {
                    let mut heard = member.heard();
                    heard.leader = Some(leader);
                    heard.at = Some(Instant::now());
                }
                member.hold_elections_until_quiet();
                Ok(member)
            }
            StartMode::Restart => {
                if !dir.is_initialized() {
                    return Err(Error::Local(format!(
                        "{} holds no member: use --bootstrap or --join TOKEN",
                        config.dir.display()
                    )));
                }
                let member = Member::open(&dir, &config).await?;
                let empty = member.local_state(|state| state.members.is_empty());
                if crate::cluster::join::bootstrap_unfinished(&dir) && empty {
                    // Killed between Raft initialization and the first entry: finish it.
                    tracing::info!("finishing an interrupted bootstrap");
                    crate::cluster::join::finish_bootstrap(&member).await?;
                } else {
                    // A member bootstrapped before the key file was deleted after use.
                    dir.remove_ca_key()?;
                    member.hold_elections_until_quiet();
                }
                Ok(member)
            }
        }
    }

    /// Opens the member saved in `dir` and starts serving.
    pub(crate) async fn open(dir: &DataDir, config: &MemberConfig) -> Result<Member, Error> {
        let timings = config.timings;
        let file = dir.load_member()?;
        let identity = dir.load_identity("member")?;
        let ca_cert_pem = dir.load_ca()?;
        let bind: SocketAddr = crate::network::resolve(&file.address)
            .await
            .map_err(|error| Error::Local(format!("listen address {}: {error}", file.address)))?;
        // Members are near each other; a peer that does not answer a handshake within a second
        // is down, and waiting longer only delays finding the next leader.
        let endpoint = Endpoint::new(EndpointConfig {
            identity,
            bind,
            serve: true,
        })?
        .with_connect_timeout(Duration::from_secs(1));
        let pool = Pool::new(endpoint.clone());
        let trust = ServerTrust::Ca {
            ca_cert_pem: ca_cert_pem.clone(),
        };
        let lock = starling_store::DirLock::acquire(&dir.database())?;
        let (log_store, state) = starling_store::open_with(&dir.database(), &config.store)?;
        let storage = log_store.health().clone();
        let blocked = Blocked::default();
        let transport = RaftTransport {
            pool: pool.clone(),
            trust: trust.clone(),
            blocked: blocked.clone(),
        };
        let raft = Raft::new(
            file.id,
            raft_config(timings)?,
            transport,
            log_store,
            state.clone(),
        )
        .await
        .map_err(|error| Error::Internal(format!("raft failed to start: {error}")))?;
        let (shutdown, _) = watch::channel(false);
        let (proposals, proposal_queue) = tokio::sync::mpsc::unbounded_channel();
        let heard = Heard {
            leader: None,
            peers: file.peers.clone(),
            at: None,
        };
        let inner = Inner {
            name: file.name.clone(),
            id: file.id,
            address: file.address.clone(),
            dir: dir.clone(),
            raft,
            state,
            endpoint,
            pool,
            trust,
            ca_cert_pem,
            heard: Mutex::new(heard),
            last_seen: Mutex::new(HashMap::new()),
            trust_acked: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
            shutdown,
            proposals,
            blocked,
            stopped: watch::channel(false).0,
            last_append: Mutex::new(None),
            registry: Mutex::new(dir.load_registry().unwrap_or_default()),
            storage,
            scripts: Default::default(),
            role_lock: tokio::sync::Mutex::new(()),
            images: Default::default(),
            instances: Default::default(),
            placement: Default::default(),
            automation: Default::default(),
            events: Default::default(),
            _lock: lock,
        };
        let member = Member {
            inner: Arc::new(inner),
        };
        member.image_files().remove_partials();
        member.spawn_tasks();
        tokio::spawn(crate::proposer::run(member.clone(), proposal_queue));
        tracing::info!(name = %file.name, id = file.id, address = %file.address, "member started");
        Ok(member)
    }

    /// A member that starts must not call an election while a leader is alive: its term would
    /// be higher and the leader would step down. Elections stay off until this member hears
    /// from a leader through Raft, or hears from none at all for [`QUIET_BEFORE_ELECTIONS`].
    fn hold_elections_until_quiet(&self) {
        self.inner.raft.runtime_config().elect(false);
        let member = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                // The stored vote may name the leader from before the restart, so only a
                // leader's append received since start counts as contact.
                let raft_leader = member.last_append().map(|_| ());
                let heard_recently = member
                    .heard()
                    .at
                    .is_some_and(|at| at.elapsed() < QUIET_BEFORE_ELECTIONS);
                let quiet = started.elapsed() >= QUIET_BEFORE_ELECTIONS && !heard_recently;
                if raft_leader.is_some() || quiet {
                    member.inner.raft.runtime_config().elect(true);
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = member.stopping() => return,
                }
            }
        });
    }

    fn spawn_tasks(&self) {
        let serving = self.clone();
        let stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            let handler = Arc::new(crate::serve::Service {
                member: serving.clone(),
                claims: Default::default(),
            });
            if let Err(error) = serving.inner.endpoint.serve(handler, stop).await {
                tracing::error!(%error, "endpoint stopped");
            }
        });
        let health = self.clone();
        tokio::spawn(async move { crate::cluster::health::run(health).await });
        crate::cluster::stall::spawn(self);
        crate::instances::watch::spawn(self.clone());
        tokio::spawn(crate::automation::scripts::run_scheduler(self.clone()));
        tokio::spawn(crate::events::relay::run(self.clone()));
        tokio::spawn(crate::events::lifecycle_to_bus(self.clone()));
        let storage = self.inner.storage.clone();
        let name = self.inner.name.clone();
        tokio::spawn(async move {
            let cause = storage.failed().await;
            tracing::error!(member = %name, %cause, "the database cannot write: this member is out of service");
        });
    }

    /// Why this member is out of service (its database failed to write), if it is.
    pub fn out_of_service(&self) -> Option<String> {
        self.inner.storage.failure()
    }

    /// Resolves when the member goes out of service, with the cause.
    pub async fn wait_out_of_service(&self) -> String {
        self.inner.storage.failed().await
    }

    /// The member's name.
    /// (Its current name: a member can be renamed while it runs.)
    pub fn name(&self) -> String {
        self.local_state(|state| {
            state
                .member_by_id(self.inner.id)
                .map(|record| record.name.clone())
        })
        .unwrap_or_else(|| self.inner.name.clone())
    }

    /// The socket address of the member at `address`, unless this member is cut off from it.
    async fn peer_socket(&self, address: &str) -> Result<SocketAddr, Error> {
        if self.is_blocked(address) {
            return Err(Error::Transport(format!(
                "{address} is cut off from this member"
            )));
        }
        crate::network::resolve(address)
            .await
            .map_err(|error| Error::Transport(format!("{address}: {error}")))
    }

    /// Sends `request` to the member at `address` and returns its stream of reply frames.
    pub(crate) async fn request_stream(
        &self,
        address: &str,
        request: &Request,
    ) -> Result<starling_transport::ResponseStream, Error> {
        let socket = self.peer_socket(address).await?;
        let connection = self.inner.pool.get(socket, &self.inner.trust).await?;
        Ok(connection.request_stream(request).await?)
    }

    /// Sends `request` to the member at `address` (a `host:port`) over the pool.
    pub(crate) async fn request(
        &self,
        address: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let socket = self.peer_socket(address).await?;
        Ok(self
            .inner
            .pool
            .request::<Request, Reply>(socket, &self.inner.trust, request, timeout)
            .await?)
    }

    pub(crate) fn is_blocked(&self, address: &str) -> bool {
        crate::network::is_cut_off(&self.inner.blocked, address)
    }

    /// Fault injection for tests: drop all traffic to and from the members at `addresses`.
    #[doc(hidden)]
    pub fn cut_off(&self, addresses: &[String]) {
        let mut blocked = self
            .inner
            .blocked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        blocked.extend(addresses.iter().cloned());
        for address in addresses {
            if let Ok(socket) = address.parse() {
                self.inner.pool.forget(socket);
            }
        }
    }

    /// Fault injection for tests: talk to everyone again.
    #[doc(hidden)]
    pub fn reconnect_all(&self) {
        self.inner
            .blocked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    /// Resolves once the member was removed from the cluster and has reset its data directory.
    pub async fn stopped(&self) {
        let mut stopped = self.inner.stopped.subscribe();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// The member's Raft node id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address the member listens on.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The member's data directory.
    pub fn dir(&self) -> &DataDir {
        &self.inner.dir
    }

    /// The Raft node (for tests and tools).
    pub fn raft(&self) -> &starling_store::Raft {
        &self.inner.raft
    }

    /// Reads this member's copy of the cluster state (not linearizable: may lag the leader).
    pub fn local_state<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        self.inner.state.read(read)
    }

    /// Whether this member's copy of the state follows the leader's: it leads, or Raft
    /// appends reach it (a voter or a stand-by). A spare's copy does not follow, whatever its
    /// stale Raft view says.
    pub(crate) fn state_follows(&self) -> bool {
        self.is_leader()
            || self
                .last_append()
                .is_some_and(|at| at.elapsed() < RAFT_VIEW_FRESH)
    }

    /// Whether this member currently leads the cluster database.
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.inner.id)
    }

    /// The current leader's id and address, as this member knows it.
    ///
    /// Raft's view counts while the Raft leader keeps in touch (this member leads, or an append
    /// arrived within [`RAFT_VIEW_FRESH`]); otherwise the leader of the latest heartbeat does.
    /// A spare that once voted keeps a Raft view that never updates: heartbeats correct it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let raft_view = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics.current_leader.and_then(|leader| {
                let node = metrics.membership_config.membership().get_node(&leader)?;
                Some((leader, node.addr.clone()))
            })
        };
        // A restarted member's stored vote may name itself: that counts only if it leads now.
        let raft_fresh = match &raft_view {
            Some((leader, _)) if *leader == self.id() => self.is_leader(),
            _ => self
                .last_append()
                .is_some_and(|at| at.elapsed() < RAFT_VIEW_FRESH),
        };
        let heard = self.heard();
        let heard_fresh = heard.at.is_some_and(|at| at.elapsed() < RAFT_VIEW_FRESH);
        match (raft_view, heard.leader.clone()) {
            (Some(raft), _) if raft_fresh => Some(raft),
            (_, Some(heard_leader)) if heard_fresh => Some(heard_leader),
            (Some(raft), _) => Some(raft),
            (None, heard_leader) => heard_leader,
        }
    }

    /// The current leader's name, as this member knows it.
    pub(crate) fn leader_name(&self) -> Option<String> {
        let (id, _) = self.leader()?;
        self.local_state(|state| state.member_by_id(id).map(|record| record.name.clone()))
    }

    /// When the last Raft append arrived, if one did since start.
    fn last_append(&self) -> Option<Instant> {
        *self
            .inner
            .last_append
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that a Raft append arrived now.
    pub(crate) fn append_arrived(&self) {
        *self
            .inner
            .last_append
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }

    /// Waits up to `timeout` for a leader to be known.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<(NodeId, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What a certificate fingerprint is registered as, from the newer of this member's replica
    /// and the registry last heard from a leader.
    pub(crate) fn registered(&self, fingerprint: &str) -> starling_store::Registered {
        let (local_version, local) =
            self.local_state(|state| (state.trust_version, state.registered(fingerprint)));
        let heard = self.registry_lock();
        if heard.version > local_version {
            heard.registered(fingerprint)
        } else {
            local
        }
    }

    /// The newest trust registry version this member holds.
    pub(crate) fn trust_version(&self) -> u64 {
        let local = self.local_state(|state| state.trust_version);
        local.max(self.registry_lock().version)
    }

    /// Keeps `registry` if it is newer than the one held (saved for restarts).
    pub(crate) fn learn_registry(&self, registry: crate::trust::TrustRegistry) {
        let mut held = self.registry_lock();
        if registry.version <= held.version {
            return;
        }
        if let Err(error) = self.inner.dir.save_registry(&registry) {
            tracing::warn!(%error, "could not save the trust registry");
        }
        *held = registry;
    }

    fn registry_lock(&self) -> MutexGuard<'_, crate::trust::TrustRegistry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn heard(&self) -> MutexGuard<'_, Heard> {
        self.inner
            .heard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Proposes a command and waits for it to apply; `Refused` carries the state's reason.
    /// Concurrent proposals share Raft entries (see [`crate::proposer`]).
    pub(crate) async fn propose(&self, command: Command, timeout: Duration) -> Result<(), Error> {
        // The size measured by the check stands for the tagged command's (a few bytes more).
        let bytes = command.check_limits().map_err(Error::Refused)?;
        let command = crate::once::tag(command);
        let (done, outcome) = tokio::sync::oneshot::channel();
        let proposed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let proposal = crate::proposer::Proposal {
            command,
            bytes,
            done,
            proposed: proposed.clone(),
        };
        if self.inner.proposals.send(proposal).is_err() {
            return Err(Error::Transport("the member is shutting down".to_string()));
        }
        match tokio::time::timeout(timeout, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Transport("the member is shutting down".to_string())),
            // Giving up closes the answer channel: a command still queued is never proposed.
            Err(_) if !proposed.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(self.unavailable().await)
            }
            Err(_) => Err(Error::OutcomeUnknown(format!(
                "{}; the write was proposed and may still commit",
                self.unavailable().await
            ))),
        }
    }

    /// The error for "no quorum", with a fresh count of reachable voters.
    pub(crate) async fn unavailable(&self) -> Error {
        crate::cluster::health::quorum_error(self).await
    }

    /// Resolves once the member is shutting down, at once if it already is. (A receiver's
    /// `changed()` would wait forever when the shutdown came before the task subscribed, and
    /// the task would keep the member, its database and its UDP port alive.)
    pub(crate) async fn stopping(&self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    }

    /// Stops the member: Raft, the endpoint and the background tasks.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        self.inner.endpoint.close();
        tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle())
            .await
            .ok();
        tracing::info!(name = %self.inner.name, "member stopped");
    }

    /// Saves the member file with fresh peers (from heartbeats).
    pub(crate) fn remember_peers(&self, peers: Vec<String>) {
        let changed = {
            let mut heard = self.heard();
            let changed = heard.peers != peers;
            heard.peers = peers.clone();
            changed
        };
        if changed {
            let file = MemberFile {
                name: self.inner.name.clone(),
                id: self.inner.id,
                address: self.inner.address.clone(),
                peers,
            };
            if let Err(error) = self.inner.dir.save_member(&file) {
                tracing::warn!(%error, "could not save peers");
            }
        }
    }
}

fn raft_config(timings: RaftTimings) -> Result<Arc<openraft::Config>, Error> {
    let config = openraft::Config {
        cluster_name: "starling".to_string(),
        heartbeat_interval: timings.heartbeat_ms,
        election_timeout_min: timings.election_min_ms,
        election_timeout_max: timings.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(timings.snapshot_logs),
        max_in_snapshot_log_to_keep: timings.snapshot_logs / 10,
        purge_batch_size: 1,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|error| Error::Internal(format!("raft config: {error}")))
}

/// The Raft node descriptor of a member address.
pub(crate) fn node(address: &str) -> BasicNode {
    BasicNode {
        addr: address.to_string(),
    }
}

/// The first member's initial Raft membership.
pub(crate) fn initial_membership(id: NodeId, address: &str) -> BTreeMap<NodeId, BasicNode> {
    BTreeMap::from([(id, node(address))])
}

/// Identity files a new member saves.
pub(crate) struct NewMemberFiles<'a> {
    pub(crate) file: MemberFile,
    pub(crate) identity: &'a Identity,
    pub(crate) admin: &'a Identity,
    pub(crate) ca_cert_pem: &'a str,
}

impl NewMemberFiles<'_> {
    pub(crate) fn save(&self, dir: &DataDir) -> Result<(), Error> {
        dir.save_ca(self.ca_cert_pem)?;
        dir.save_identity("member", self.identity)?;
        dir.save_identity("admin", self.admin)?;
        // member.json last: its presence marks the directory as initialized.
        dir.save_member(&self.file)
    }
}
