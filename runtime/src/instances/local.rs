//! What an instance's member does with its containers when the leader asks
//! ([`LocalOperation`], `Request::InstanceLocal`), and how it reports what it saw.
//!
//! Driver calls block, so they run on blocking threads; calls for one instance are serialized
//! by its lock ([`InstanceState`]): a writer for what changes the container, a reader for
//! `state` and for starting an `exec` (whose command then runs without the lock, so a stop is
//! not held up by a long command). Every status change is reported to the leader under the
//! lock, so reports of one instance arrive in the order things happened.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::instances::{InstanceStatus, DEFAULT_POOL};

use super::config;
use super::driver::{Driver, DriverError, ExecRequest, InstanceKey, State};
use super::ops::{InstanceOperation, StatusReport};
use crate::images::files::ImageFiles;
use crate::member::Member;
use crate::{Caller, Error, Operation};

/// What the leader asks an instance's member to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LocalOperation {
    /// Unpack the image's root file system; then start it with `start` (the expanded config)
    /// when given, and report how that went. Without `start` nothing is reported: the answer
    /// says `Stopped`, and the leader that asked records it.
    Create {
        /// The instance.
        key: InstanceKey,
        /// The image, held by this member.
        fingerprint: String,
        /// The expanded config to start it with (a launch), or `None` (a create).
        start: Option<BTreeMap<String, String>>,
    },
    /// Unpack the image's root file system for an instance the records do not place here
    /// yet (self-healing's recreate), stamped with `stamp` (the recreate's move id); reports
    /// nothing. Asked again with the same stamp, it finds its copy and answers at once.
    Prepare {
        /// The instance.
        key: InstanceKey,
        /// The image, held by this member.
        fingerprint: String,
        /// The recreate's move id.
        stamp: String,
    },
    /// Start the container with the expanded config.
    Start {
        /// The instance.
        key: InstanceKey,
        /// Its expanded config.
        config: BTreeMap<String, String>,
    },
    /// Stop the container.
    Stop {
        /// The instance.
        key: InstanceKey,
        /// Kill at once.
        force: bool,
        /// Seconds to wait for a clean shutdown.
        timeout_s: u64,
    },
    /// Stop (if it runs), then start.
    Restart {
        /// The instance.
        key: InstanceKey,
        /// Kill at once.
        force: bool,
        /// Seconds to wait for a clean shutdown.
        timeout_s: u64,
        /// Its expanded config.
        config: BTreeMap<String, String>,
    },
    /// Delete the container (stopping it first with `force`).
    Delete {
        /// The instance.
        key: InstanceKey,
        /// Stop it first if it runs.
        force: bool,
    },
    /// Delete a copy of the container that the leader's records do not place here (the
    /// source's copy after a move, the target's after a failed one); refused if they do, so a
    /// former leader finishing a move late cannot delete a copy its successor recorded here.
    Discard {
        /// The instance.
        key: InstanceKey,
        /// Only the copy with this stamp goes: a failed move's clean-up names its own id, a
        /// moved instance's source the stamp its copy had when packed (`None`: none). Another
        /// move's copy here (a rival's, or one that brought the instance back) stays.
        stamp: Option<String>,
    },
    /// Pack the stopped container's root file system for a move; answers `{sha256, size}`.
    Export {
        /// The instance.
        key: InstanceKey,
    },
    /// The container's live state.
    State {
        /// The instance.
        key: InstanceKey,
    },
    /// Run a command in the container and collect its output.
    Exec {
        /// The instance.
        key: InstanceKey,
        /// The command and its arguments.
        argv: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
        /// Working directory.
        cwd: String,
    },
}

impl LocalOperation {
    /// How long the leader waits for the answer.
    pub(crate) fn timeout(&self) -> Duration {
        let base = Duration::from_secs(30);
        match self {
            LocalOperation::Create { .. }
            | LocalOperation::Prepare { .. }
            | LocalOperation::Exec { .. }
            | LocalOperation::Export { .. } => Duration::from_secs(600),
            LocalOperation::Discard { .. } => {
                base + Duration::from_secs(super::ops::DEFAULT_STOP_TIMEOUT_S)
            }
            LocalOperation::Stop { timeout_s, .. } | LocalOperation::Restart { timeout_s, .. } => {
                base + Duration::from_secs(*timeout_s)
            }
            LocalOperation::Delete { .. } => {
                base + Duration::from_secs(super::ops::DEFAULT_STOP_TIMEOUT_S)
            }
            _ => base,
        }
    }
}

/// A member's containers: the driver, and a lock per instance.
#[derive(Default)]
pub struct InstanceState {
    /// The driver, made on first use.
    driver: OnceLock<Driver>,
    /// One lock per instance (see the module's doc).
    locks: Mutex<HashMap<InstanceKey, Arc<tokio::sync::RwLock<()>>>>,
    /// Set once the member is shutting down: the watcher stops starting containers.
    pub(crate) shutting_down: AtomicBool,
    /// Set once the watcher's first round is done ([`InstanceState::adopted`]).
    pub(crate) adopted: AtomicBool,
    /// Root file systems received for a move, and when (kept from the stale-copy sweep for a
    /// while: the leader records the move right after).
    pub(crate) arrived: RecentKeys,
    /// Root file systems made here for a create without a start, and when this member
    /// answered it: the leader that asked records the status from the answer, and the
    /// watcher leaves their `Creating` records to it meanwhile.
    pub(crate) create_answered: RecentKeys,
    /// Containers started on this member so far: only a start makes a stopped container
    /// run, so the watcher looks at every container again after one ([`super::watch::Quiet`]).
    pub(crate) starts: std::sync::atomic::AtomicU64,
    /// What the watcher found quiet at its last look.
    pub(crate) quiet: Mutex<super::watch::Quiet>,
    /// On the leader: ephemeral instances reported stopped, deleted by its next round.
    pub(crate) ephemeral_stopped: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// On the leader: the evacuations and restores it runs.
    pub(crate) evacuations: crate::evacuation::ops::Tasks,
    /// On the leader: the moves under way, by (project, name).
    pub(crate) moves: Mutex<BTreeMap<(String, String), super::moves::MoveProgress>>,
}

/// Instances noted a moment ago, each with when: kept while younger than the grace its
/// reader gives.
#[derive(Default)]
pub(crate) struct RecentKeys(Mutex<HashMap<InstanceKey, std::time::Instant>>);

impl RecentKeys {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceKey, std::time::Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes `key` now.
    pub(crate) fn note(&self, key: &InstanceKey) {
        self.map().insert(key.clone(), std::time::Instant::now());
    }

    /// Whether `key` was noted within `grace`.
    pub(crate) fn within(&self, key: &InstanceKey, grace: Duration) -> bool {
        self.map().get(key).is_some_and(|at| at.elapsed() < grace)
    }

    /// Drops the keys noted `grace` ago or more.
    pub(crate) fn prune(&self, grace: Duration) {
        self.map().retain(|_, at| at.elapsed() < grace);
    }

    fn forget(&self, key: &InstanceKey) {
        self.map().remove(key);
    }
}

impl InstanceState {
    /// The lock of instance `key`.
    pub(crate) fn lock(&self, key: &InstanceKey) -> Arc<tokio::sync::RwLock<()>> {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn forget(&self, key: &InstanceKey) {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
        self.create_answered.forget(key);
    }

    /// Whether the watcher's first round is done: every container here looked at, those a
    /// previous daemon started adopted, those that ended meanwhile recorded.
    pub(crate) fn adopted(&self) -> bool {
        self.adopted.load(Ordering::SeqCst)
    }

    /// Whether the member is shutting down.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// A driver error as the operation's error: what the caller got wrong, or what failed here.
pub(crate) fn driver_error(member: &str, error: DriverError) -> Error {
    match error {
        DriverError::Io { .. } | DriverError::Shim { .. } | DriverError::BadState { .. } => {
            Error::Local(format!("member {member}: {error}"))
        }
        other => Error::Refused(other.to_string()),
    }
}

/// The host's memory, for `limits.memory` percentages (a huge figure when unknown, so a
/// percentage is then no limit rather than a tiny one).
fn memory_total_bytes() -> u64 {
    match crate::sysinfo::memory_total_bytes() {
        0 => u64::MAX / 2,
        bytes => bytes,
    }
}

impl Member {
    /// This member's container driver: the `default` pool under the data directory, and this
    /// binary as the shim (`STARLING_SHIM` names another, for tools that embed a member).
    pub(crate) fn driver(&self) -> &Driver {
        self.inner.instances.driver.get_or_init(|| {
            let shim = std::env::var_os("STARLING_SHIM")
                .map(PathBuf::from)
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| PathBuf::from("starling"));
            // The shim runs in `/`: a data directory given relative to the daemon's working
            // directory must be made absolute.
            let root = std::path::absolute(self.dir().root())
                .unwrap_or_else(|_| self.dir().root().to_path_buf());
            Driver::new(root.join("storage-pools").join(DEFAULT_POOL), shim)
                .keeping_bases_of(ImageFiles::new(&root).dir().to_path_buf())
        })
    }

    /// Runs `work` with the driver on a blocking thread.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Driver) -> Result<T, DriverError> + Send + 'static,
    ) -> Result<T, Error> {
        let driver = self.driver().clone();
        let name = self.name();
        tokio::task::spawn_blocking(move || work(&driver))
            .await
            .map_err(|error| Error::Internal(error.to_string()))?
            .map_err(|error| driver_error(&name, error))
    }

    /// Runs a [`LocalOperation`] on this member (the instance's location).
    pub(crate) async fn instance_local(&self, operation: &LocalOperation) -> Result<Value, Error> {
        match operation {
            LocalOperation::Create {
                key,
                fingerprint,
                start,
            } => self.create_local(key, fingerprint, start.as_ref()).await,
            LocalOperation::Prepare {
                key,
                fingerprint,
                stamp,
            } => self.prepare_local(key, fingerprint, stamp).await,
            LocalOperation::Start { key, config } => {
                let lock = self.inner.instances.lock(key);
                let _guard = lock.write().await;
                self.start_local(key, config, None).await
            }
            LocalOperation::Stop {
                key,
                force,
                timeout_s,
            } => {
                let lock = self.inner.instances.lock(key);
                let _guard = lock.write().await;
                self.stop_local(key, *force, *timeout_s, None).await?;
                Ok(Value::Null)
            }
            LocalOperation::Restart {
                key,
                force,
                timeout_s,
                config,
            } => {
                let lock = self.inner.instances.lock(key);
                let _guard = lock.write().await;
                let running = matches!(self.observe(key).await?, State::Running { .. });
                if running {
                    let timeout = Duration::from_secs(*timeout_s);
                    let stop_key = key.clone();
                    let force = *force;
                    self.blocking(move |driver| driver.stop(&stop_key, timeout, force))
                        .await?;
                }
                self.start_local(key, config, None).await
            }
            LocalOperation::Delete { key, force } => self.delete_local(key, *force).await,
            LocalOperation::Export { key } => self.export_local(key).await,
            LocalOperation::Discard { key, stamp } => {
                let lock = self.inner.instances.lock(key);
                let _guard = lock.write().await;
                let here = self.stamp_of(key).await;
                if here != *stamp {
                    tracing::info!(instance = %key, asked = ?stamp, here = ?here, "the copy here is another move's: it stays");
                    return Ok(json!({"removed": false}));
                }
                let located = self.located_by_leader(key).await?;
                if located.as_deref() == Some(self.name().as_str()) {
                    return Err(Error::Refused(format!(
                        "the records place {key} on member {}: its copy stays",
                        self.name()
                    )));
                }
                self.delete_locked(key, true).await
            }
            LocalOperation::State { key } => {
                let lock = self.inner.instances.lock(key);
                let _guard = lock.read().await;
                Ok(state_json(&self.observe(key).await?))
            }
            LocalOperation::Exec {
                key,
                argv,
                env,
                cwd,
            } => {
                let mut request = ExecRequest::new(argv.iter().cloned());
                request.env = env.clone();
                request.cwd = PathBuf::from(cwd);
                self.exec_local(key, request).await
            }
        }
    }

    /// Where the leader's records place instance `key` (`None`: no such instance).
    pub(crate) async fn located_by_leader(
        &self,
        key: &InstanceKey,
    ) -> Result<Option<String>, Error> {
        let list = Operation::Instance(InstanceOperation::List {
            project: key.project.clone(),
        });
        let listed = Box::pin(self.execute(list, Caller::local())).await?;
        Ok(listed
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|instance| {
                (instance["name"] == key.name.as_str()).then(|| {
                    instance["location"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
            }))
    }

    /// The driver's state of `key`.
    pub(crate) async fn observe(&self, key: &InstanceKey) -> Result<State, Error> {
        let key = key.clone();
        self.blocking(move |driver| driver.state(&key)).await
    }

    /// The id of the move that brought the container of `key` here, if one did.
    pub(crate) async fn stamp_of(&self, key: &InstanceKey) -> Option<String> {
        let key = key.clone();
        self.blocking(move |driver| Ok(driver.move_stamp(&key)))
            .await
            .ok()
            .flatten()
    }

    async fn prepare_local(
        &self,
        key: &InstanceKey,
        fingerprint: &str,
        stamp: &str,
    ) -> Result<Value, Error> {
        let lock = self.inner.instances.lock(key);
        let _guard = lock.write().await;
        let image = self.image_files().path(fingerprint);
        if !image.is_file() {
            return Err(Error::Refused(format!(
                "member {} has no copy of image {fingerprint}",
                self.name()
            )));
        }
        let (prepare_key, id) = (key.clone(), stamp.to_string());
        let base = fingerprint.to_string();
        let prepared = self
            .blocking(move |driver| {
                if driver.container_dir(&prepare_key).exists() {
                    return Ok(driver.move_stamp(&prepare_key).as_deref() == Some(id.as_str()));
                }
                let unpacked = driver
                    .create_from_image(&prepare_key, &image, &base)
                    .and_then(|()| driver.stamp_move(&prepare_key, &id));
                if unpacked.is_err() {
                    let _ = driver.remove_files(&prepare_key);
                }
                unpacked.map(|()| true)
            })
            .await?;
        if !prepared {
            return Err(Error::Refused(format!(
                "member {} already has a container {key}",
                self.name()
            )));
        }
        Ok(json!({"status": "Stopped"}))
    }

    async fn create_local(
        &self,
        key: &InstanceKey,
        fingerprint: &str,
        start: Option<&BTreeMap<String, String>>,
    ) -> Result<Value, Error> {
        let lock = self.inner.instances.lock(key);
        let _guard = lock.write().await;
        let image = self.image_files().path(fingerprint);
        let unpack_key = key.clone();
        let started = std::time::Instant::now();
        let unpacked = if self.driver().container_dir(key).join("rootfs").is_dir() {
            // A create asked again (a leader that took over a recreate): the root file
            // system is there already. A given-up move's copy becomes the instance's own, so
            // that settling that move no longer removes it.
            tracing::info!(instance = %key, "root file system present already");
            let own_key = key.clone();
            self.blocking(move |driver| driver.clear_move_stamp(&own_key))
                .await
        } else if image.is_file() {
            let base = fingerprint.to_string();
            self.blocking(move |driver| driver.create_from_image(&unpack_key, &image, &base))
                .await
        } else {
            Err(Error::Refused(format!(
                "member {} has no copy of image {fingerprint}",
                self.name()
            )))
        };
        if let Err(error) = unpacked {
            self.report(key, InstanceStatus::Error, &error.to_string(), None)
                .await?;
            return Err(error);
        }
        tracing::info!(instance = %key, unpack_ms = started.elapsed().as_millis() as u64, "root file system unpacked");
        match start {
            Some(config) => self.start_local(key, config, None).await,
            // The leader that asked records the status from this answer (one request fewer
            // than a report of our own).
            None => {
                self.inner.instances.create_answered.note(key);
                Ok(json!({"status": InstanceStatus::Stopped.as_str()}))
            }
        }
    }

    /// Starts the container (the caller holds its lock) and reports `Running`, or `Error`
    /// with the reason.
    pub(crate) async fn start_local(
        &self,
        key: &InstanceKey,
        config: &BTreeMap<String, String>,
        last_power_running: Option<bool>,
    ) -> Result<Value, Error> {
        let spec = config::container_spec(&key.name, config, memory_total_bytes())
            .map_err(|error| Error::Refused(error.to_string()))?;
        let start_key = key.clone();
        let driver = self.driver().clone();
        let began = std::time::Instant::now();
        self.inner.instances.starts.fetch_add(1, Ordering::SeqCst);
        let started = tokio::task::spawn_blocking(move || driver.start(&start_key, &spec))
            .await
            .map_err(|error| Error::Internal(error.to_string()))?;
        match started {
            Ok(pid) => {
                tracing::info!(instance = %key, pid, start_ms = began.elapsed().as_millis() as u64, "instance started");
                self.report(key, InstanceStatus::Running, "", last_power_running)
                    .await?;
                Ok(json!({"status": "Running", "pid": pid}))
            }
            // Already running: no change of state to report.
            Err(DriverError::Running { .. }) => Err(Error::Refused(format!(
                "The instance \"{}\" is already running",
                key.name
            ))),
            Err(error) => {
                let error = driver_error(&self.name(), error);
                self.report(key, InstanceStatus::Error, &error.to_string(), None)
                    .await?;
                Err(error)
            }
        }
    }

    /// Stops the container (the caller holds its lock) and reports `Stopped`.
    pub(crate) async fn stop_local(
        &self,
        key: &InstanceKey,
        force: bool,
        timeout_s: u64,
        last_power_running: Option<bool>,
    ) -> Result<(), Error> {
        let stop_key = key.clone();
        let timeout = Duration::from_secs(timeout_s);
        let driver = self.driver().clone();
        let stopped = tokio::task::spawn_blocking(move || driver.stop(&stop_key, timeout, force))
            .await
            .map_err(|error| Error::Internal(error.to_string()))?;
        match stopped {
            Ok(()) => {}
            Err(DriverError::NotRunning { .. }) => {
                return Err(Error::Refused(format!(
                    "The instance \"{}\" is already stopped",
                    key.name
                )))
            }
            Err(error) => return Err(driver_error(&self.name(), error)),
        }
        self.report(key, InstanceStatus::Stopped, "", last_power_running)
            .await
    }

    async fn delete_local(&self, key: &InstanceKey, force: bool) -> Result<Value, Error> {
        let lock = self.inner.instances.lock(key);
        let _guard = lock.write().await;
        self.delete_locked(key, force).await
    }

    /// Deletes the container; the caller holds its lock.
    async fn delete_locked(&self, key: &InstanceKey, force: bool) -> Result<Value, Error> {
        let state = match self.observe(key).await {
            Ok(state) => state,
            // Never unpacked, or deleted already: nothing left here.
            Err(_) if !self.driver().container_dir(key).exists() => {
                self.inner.instances.forget(key);
                return Ok(Value::Null);
            }
            Err(error) => return Err(error),
        };
        if matches!(state, State::Running { .. }) {
            if !force {
                return Err(Error::Refused(format!(
                    "The instance \"{}\" is running: stop it first, or delete it with force",
                    key.name
                )));
            }
            let stop_key = key.clone();
            self.blocking(move |driver| driver.stop(&stop_key, Duration::ZERO, true))
                .await?;
        }
        let delete_key = key.clone();
        self.blocking(move |driver| driver.delete(&delete_key))
            .await?;
        self.discard_export(key);
        self.inner.instances.forget(key);
        Ok(Value::Null)
    }

    /// Starts `request` in instance `key` with its output piped, under the instance's lock
    /// (released once the command runs: a long command does not hold up a stop).
    pub(crate) async fn spawn_exec(
        &self,
        key: &InstanceKey,
        request: ExecRequest,
    ) -> Result<crate::instances::driver::ExecChild, Error> {
        let lock = self.inner.instances.lock(key);
        let _guard = lock.read().await;
        let spawn_key = key.clone();
        self.blocking(move |driver| {
            driver.exec_spawn(
                &spawn_key,
                &request,
                crate::instances::driver::ExecStream::Null,
                crate::instances::driver::ExecStream::Piped,
                crate::instances::driver::ExecStream::Piped,
            )
        })
        .await
    }

    /// Whether container `key` runs on this member (any failure to tell says no).
    pub(crate) async fn runs_here(&self, key: &InstanceKey) -> bool {
        let key = key.clone();
        self.blocking(move |driver| driver.liveness(&key))
            .await
            .is_ok_and(|state| matches!(state, crate::instances::driver::State::Running { .. }))
    }

    async fn exec_local(&self, key: &InstanceKey, request: ExecRequest) -> Result<Value, Error> {
        let child = self.spawn_exec(key, request).await?;
        let name = self.name();
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .map_err(|error| Error::Internal(error.to_string()))?
            .map_err(|error| driver_error(&name, error))?;
        Ok(json!({
            "exit_code": output.exit_code,
            "stdout": String::from_utf8_lossy(&output.stdout),
            "stderr": String::from_utf8_lossy(&output.stderr),
        }))
    }

    /// Reports what this member saw of instance `key` to the leader, which records it.
    pub(crate) async fn report(
        &self,
        key: &InstanceKey,
        status: InstanceStatus,
        message: &str,
        last_power_running: Option<bool>,
    ) -> Result<(), Error> {
        let report = StatusReport {
            project: key.project.clone(),
            name: key.name.clone(),
            location: self.name(),
            status,
            message: message.to_string(),
            last_power_running,
        };
        let operation = Operation::Instance(InstanceOperation::Report(report));
        Box::pin(self.execute(operation, Caller::local()))
            .await
            .map(|_| ())
    }
}

/// `instances.state()`: LXD's fields of a container's state.
fn state_json(state: &State) -> Value {
    match state {
        State::Running {
            pid,
            processes,
            memory_bytes,
            cpu_ns,
        } => json!({
            "status": "Running",
            "status_code": 103,
            "pid": pid,
            "processes": processes,
            "memory": {"usage": memory_bytes},
            "cpu": {"usage": cpu_ns},
        }),
        State::Stopped { exit } => json!({
            "status": "Stopped",
            "status_code": 102,
            "pid": 0,
            "processes": 0,
            "memory": {"usage": 0},
            "cpu": {"usage": 0},
            "exit_code": exit.and_then(|exit| exit.code),
            "exit_signal": exit.and_then(|exit| exit.signal),
        }),
    }
}
