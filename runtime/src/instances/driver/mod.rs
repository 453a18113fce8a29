//! The system-container driver: LXC-style privileged containers made with namespaces,
//! `pivot_root` and cgroups, each watched by a monitor process that outlives the daemon.
//!
//! # Use
//! [`Driver::new`] with the member's `default` storage pool directory and the `starling`
//! binary (the shim), then [`Driver::create_from_image`] (or [`Driver::unpack`] a tarball),
//! [`Driver::start`], [`Driver::exec`],
//! [`Driver::state`], [`Driver::stop`], [`Driver::delete`]. Every call blocks (processes,
//! files, waits of up to the stop timeout): call it from `spawn_blocking`. Calls for one
//! instance must not overlap (the caller serializes them); calls for different instances may.
//!
//! # On disk
//! `<pool>/containers/<project>_<name>/`: `rootfs/` (a flat container's files, or a layered
//! one's mount point, with `base`, and from its first start `upper/` and `work/`, beside it:
//! [`layers`]), `state.json`
//! (the monitor's [`state::StateRecord`]), `console.log`, `monitor.log`. Bases are
//! `<pool>/bases/<fingerprint>/rootfs`. The cgroup is
//! `starling/<project>_<name>` under each controller ([`cgroup`]).
//!
//! # Adoption
//! Nothing lives in the daemon's memory: [`Driver::state`] reads `state.json` and checks that
//! the recorded init (and monitor) still run, comparing start times so that a PID reused by
//! another process is not taken for init. A daemon restarted after `kill -9` sees the
//! containers the previous one started ([`Driver::list`]) and runs, stops or enters them the
//! same way.
//!
//! # Layout
//! - [`key`]: [`InstanceKey`]. [`spec`]: [`ContainerSpec`], [`Limits`], [`CpuLimit`].
//! - [`unpack`]: the image's `rootfs/` into the pool, refusing entries that escape.
//! - [`layers`]: an image's base shared by the containers made from it, each with an
//!   overlayfs layer of its own.
//! - [`cgroup`]: cgroup v1 and v2, limits planned by a pure function.
//! - [`setup`]: the container's mounts (planned by a pure function), `pivot_root`, exec.
//! - [`shim`]: the re-executed `starling __shim start|exec|exec-server`: the monitor, `exec`,
//!   and the exec server that forks `exec` shims.
//! - [`exec`]: the daemon's side of `exec`: streams, [`ExecChild`], the exec server's client.
//! - [`dynmods`]: the host's cgroup migrations switched to `favordynmods` mode.
//! - [`state`]: `state.json`, process identity, and [`state::observe`], the pure decision of
//!   what a record and the live processes say.
//! - [`error`]: [`DriverError`], and the [`SetupStep`] a failure names.

pub mod cgroup;
pub mod dynmods;
pub mod error;
pub mod exec;
pub mod key;
pub mod layers;
pub mod setup;
pub mod shim;
pub mod spec;
pub mod state;
pub mod unpack;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;

pub use error::{DriverError, SetupFailure, SetupStep};
pub use exec::{ExecChild, ExecStream};
pub use key::InstanceKey;
pub use spec::{ContainerSpec, CpuLimit, Limits};
pub use state::{ExitInfo, State};

use cgroup::{Cgroup, Hierarchy};
use layers::Layers;
use shim::{ExecConfig, StartConfig, StartReport};
use state::{Observation, ProcessIdentity, StateRecord};

/// How long a monitor may take to record an exit it has seen.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long processes may take to go after `SIGKILL`.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often waits look again.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// The most of `monitor.log` quoted in an error.
const LOG_TAIL_BYTES: usize = 2048;

/// A command to run in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    /// The command and its arguments; a command without `/` is searched in `PATH`.
    pub argv: Vec<String>,
    /// Environment, on top of `PATH`, `HOME=/root`, `USER=root` and `LANG=C.UTF-8`.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container.
    pub cwd: PathBuf,
}

impl ExecRequest {
    /// `argv`, run in `/` (which every root file system has) with the default environment.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> ExecRequest {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: PathBuf::from("/"),
        }
    }
}

/// What a finished command returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code; 128 + the signal when a signal killed it.
    pub exit_code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// The containers of one member's storage pool.
#[derive(Clone, Debug)]
pub struct Driver {
    /// The storage pool's directory (`<datadir>/storage-pools/default`).
    pool_dir: PathBuf,
    /// The `starling` binary, run as `starling __shim ...`.
    shim_exe: PathBuf,
    /// Whether containers can be layered here ([`layers::probe`], once).
    layering: std::sync::Arc<std::sync::OnceLock<bool>>,
    /// The exec server, once an exec started it ([`exec`]).
    exec_server: std::sync::Arc<std::sync::Mutex<Option<exec::ExecServer>>>,
    /// Where the member keeps its images (`<datadir>/images/<fingerprint>`), when it does: a
    /// base whose image is there stays when its last container goes ([`Driver::keeping_bases_of`]).
    images_dir: Option<PathBuf>,
}

impl Driver {
    /// A driver for the containers under `pool_dir`, re-executing `shim_exe` (the `starling`
    /// binary) for the monitor and `exec`.
    pub fn new(pool_dir: PathBuf, shim_exe: PathBuf) -> Driver {
        Driver {
            pool_dir,
            shim_exe,
            layering: Default::default(),
            exec_server: Default::default(),
            images_dir: None,
        }
    }

    /// This driver, keeping the base of every image held in `images_dir` (files named by
    /// fingerprint) while the image is there, as LXD keeps an image's volume: the next
    /// container made from it needs no unpacking, and a delete does not look for other
    /// containers on the base. A base whose image is gone goes with its last container
    /// ([`Driver::collect_base`], [`Driver::collect_unheld_bases`]).
    pub fn keeping_bases_of(mut self, images_dir: PathBuf) -> Driver {
        self.images_dir = Some(images_dir);
        self
    }

    /// Whether the image of base `name` is held here (its base is kept).
    fn image_held(&self, name: &str) -> bool {
        self.images_dir
            .as_ref()
            .is_some_and(|dir| dir.join(name).is_file())
    }

    /// The container's cgroup under `starling/`: the key, after a tag of the pool's path, so
    /// that members sharing a host (a local cluster, or an instance moving between two of
    /// them) never share a cgroup, whose creation empties one left from an earlier run.
    pub fn cgroup_name(&self, key: &InstanceKey) -> String {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            self.pool_dir.as_os_str().as_encoded_bytes(),
        );
        format!(
            "{}_{}",
            hex::encode(&digest.as_ref()[..4]),
            key.storage_name()
        )
    }

    /// The storage pool's directory.
    pub fn pool_dir(&self) -> &Path {
        &self.pool_dir
    }

    /// `<pool>/containers/<project>_<name>`.
    pub fn container_dir(&self, key: &InstanceKey) -> PathBuf {
        self.pool_dir.join("containers").join(key.storage_name())
    }

    /// Every instance with a directory in the pool, running or not, sorted.
    pub fn list(&self) -> Result<Vec<InstanceKey>, DriverError> {
        let dir = self.pool_dir.join("containers");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error(&dir, "listing", source)),
        };
        let mut keys: Vec<InstanceKey> = entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .filter_map(|entry| {
                InstanceKey::from_storage_name(&entry.file_name().to_string_lossy())
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Unpacks the `rootfs/` of the image tarball at `image` (`.tar`, `.tar.gz`, `.tar.xz`) as
    /// the instance's root file system. Refuses an instance that has one already.
    pub fn unpack(&self, key: &InstanceKey, image: &Path) -> Result<(), DriverError> {
        key.validate()?;
        let dir = self.container_dir(key);
        if dir.join("rootfs").exists() {
            return Err(DriverError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let created = !dir.exists();
        create_private_dir(&dir)?;
        let result = unpack::unpack_rootfs(image, &dir);
        if result.is_err() && created {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Makes the container of `key` from the image tarball `image`, whose fingerprint is
    /// `fingerprint`: layered on this member's base of that image (unpacked first when there
    /// is none, [`layers`]), or flat ([`Driver::unpack`]) where overlayfs cannot be used.
    /// Refuses an instance that has a root file system already; leaves nothing behind on
    /// failure.
    pub fn create_from_image(
        &self,
        key: &InstanceKey,
        image: &Path,
        fingerprint: &str,
    ) -> Result<(), DriverError> {
        key.validate()?;
        let dir = self.container_dir(key);
        if dir.join("rootfs").exists() {
            return Err(DriverError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let base_dir = self.base_dir(fingerprint);
        let layers = Layers::new(&dir, base_dir.join("rootfs"));
        if !layers::base_name_valid(fingerprint) || !layers.paths_usable() || !self.layering() {
            return self.unpack(key, image);
        }
        let created = !dir.exists();
        let result = self.lock_base(fingerprint).and_then(|_lock| {
            if !layers.lower.is_dir() {
                create_private_dir(&base_dir)?;
                unpack::unpack_rootfs(image, &base_dir)?;
            }
            make_layered(&dir, fingerprint)
        });
        if result.is_err() {
            if created {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let _ = self.collect_base(fingerprint);
        }
        result
    }

    /// Whether containers made here can be layered: overlayfs works on the pool's file system
    /// (probed once, [`layers::probe`]); never without root.
    pub fn layering(&self) -> bool {
        *self.layering.get_or_init(|| {
            let bases = self.pool_dir.join(layers::BASES_DIR);
            nix::unistd::geteuid().is_root()
                && create_private_dir(&bases).is_ok()
                && layers::probe(&bases)
        })
    }

    /// The layers of the container of `key`; `None` for a flat container (or none).
    pub fn layers(&self, key: &InstanceKey) -> Result<Option<Layers>, DriverError> {
        let dir = self.container_dir(key);
        let path = dir.join(layers::BASE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(name) if layers::base_name_valid(name.trim()) => Ok(Some(Layers::new(
                &dir,
                self.base_dir(name.trim()).join("rootfs"),
            ))),
            Ok(name) => Err(DriverError::BadState {
                path,
                reason: format!("{:?} does not name a base", name.trim()),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(&path, "reading", source)),
        }
    }

    /// The name of the base the container of `key` is layered on, as its `base` file says
    /// (`None`: flat, gone, or unreadable).
    fn base_of(&self, key: &InstanceKey) -> Option<String> {
        std::fs::read_to_string(self.container_dir(key).join(layers::BASE_FILE))
            .ok()
            .map(|name| name.trim().to_string())
    }

    /// Removes the directory of the container of `key` (nothing of it may run or be
    /// mounted), then its base if no other container is on it.
    pub fn remove_files(&self, key: &InstanceKey) -> Result<(), DriverError> {
        let base = self.base_of(key);
        let dir = self.container_dir(key);
        match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error(&dir, "removing", error))
            }
            _ => {}
        }
        match base {
            Some(base) => self.collect_base(&base),
            None => Ok(()),
        }
    }

    /// Runs `read` on the whole tree of the stopped container of `key`: its `rootfs/` when
    /// flat; when layered, a read-only view of its layers mounted there in a mount namespace
    /// no one else sees, which goes when `read` returns.
    pub fn read_tree<T: Send>(
        &self,
        key: &InstanceKey,
        read: impl FnOnce(&Path) -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        let rootfs = self.container_dir(key).join("rootfs");
        let layers = self.layers(key).map_err(std::io::Error::other)?;
        match layers {
            None => read(&rootfs),
            Some(layers) => layers::in_private_mounts(|| {
                make_writable_layer(&layers).map_err(std::io::Error::other)?;
                layers::mount_view(&layers, &rootfs)?;
                read(&rootfs)
            }),
        }
    }

    /// `<pool>/bases/<name>`: the base of the image whose fingerprint is `name`.
    fn base_dir(&self, name: &str) -> PathBuf {
        self.pool_dir.join(layers::BASES_DIR).join(name)
    }

    /// Holds `<pool>/bases/<name>.lock` (against other threads and processes) until dropped:
    /// a base is made, named and collected under it.
    fn lock_base(&self, name: &str) -> Result<std::fs::File, DriverError> {
        let bases = self.pool_dir.join(layers::BASES_DIR);
        create_private_dir(&bases)?;
        let path = bases.join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| io_error(&path, "opening", source))?;
        file.lock()
            .map_err(|source| io_error(&path, "locking", source))?;
        Ok(file)
    }

    /// Removes the base `name` unless a container here is layered on it or its image is held
    /// here ([`Driver::keeping_bases_of`]).
    pub fn collect_base(&self, name: &str) -> Result<(), DriverError> {
        if !layers::base_name_valid(name) || self.image_held(name) {
            return Ok(());
        }
        let _lock = self.lock_base(name)?;
        let named = self
            .list()?
            .iter()
            .any(|key| self.base_of(key).as_deref() == Some(name));
        if named {
            return Ok(());
        }
        let dir = self.base_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error(&dir, "removing", error))
            }
            _ => Ok(()),
        }
    }

    /// Removes every base here that no container is layered on and whose image is not held
    /// here (its image deleted, or a member that stopped between the two).
    pub fn collect_unheld_bases(&self) -> Result<(), DriverError> {
        let bases = self.pool_dir.join(layers::BASES_DIR);
        let entries = match std::fs::read_dir(&bases) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(io_error(&bases, "listing", source)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && layers::base_name_valid(&name) && !self.image_held(&name) {
                self.collect_base(&name)?;
            }
        }
        Ok(())
    }

    /// Marks the container as the copy that move `id` brought here (`move-id` beside its root
    /// file system), durably: a failed move's clean-up removes only its own copy.
    pub fn stamp_move(&self, key: &InstanceKey, id: &str) -> Result<(), DriverError> {
        key.validate()?;
        let path = self.container_dir(key).join(MOVE_STAMP_FILE);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut file, id.as_bytes())?;
            file.sync_all()
        };
        write().map_err(|source| io_error(&path, "writing", source))
    }

    /// Forgets the move that brought the container here: the copy is the instance's own now.
    pub fn clear_move_stamp(&self, key: &InstanceKey) -> Result<(), DriverError> {
        key.validate()?;
        let path = self.container_dir(key).join(MOVE_STAMP_FILE);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error(&path, "removing", error))
            }
            _ => Ok(()),
        }
    }

    /// The id of the move that brought the container here (`None`: none, or unreadable).
    pub fn move_stamp(&self, key: &InstanceKey) -> Option<String> {
        key.validate().ok()?;
        std::fs::read_to_string(self.container_dir(key).join(MOVE_STAMP_FILE)).ok()
    }

    /// Starts the container; returns once init runs, with init's PID on the host.
    pub fn start(&self, key: &InstanceKey, spec: &ContainerSpec) -> Result<u32, DriverError> {
        key.validate()?;
        validate_spec(spec)?;
        let dir = self.container_dir(key);
        if !dir.join("rootfs").is_dir() {
            return Err(DriverError::NotFound {
                key: key.to_string(),
            });
        }
        if !matches!(self.observe(key)?, (Observation::Stopped(_), _)) {
            return Err(DriverError::Running {
                key: key.to_string(),
            });
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(DriverError::NamespacesUnavailable {
                missing: "root: creating mount, PID, UTS, IPC and network namespaces needs \
                          CAP_SYS_ADMIN, and Starling runs as an unprivileged user"
                    .to_string(),
            });
        }
        let layers = self.layers(key)?;
        if let Some(layers) = &layers {
            if !layers.lower.is_dir() {
                return Err(io_error(
                    &layers.lower,
                    &format!("finding the base of {key}"),
                    std::io::ErrorKind::NotFound.into(),
                ));
            }
            make_writable_layer(layers)?;
        }
        let cgroup = Cgroup::create(&Hierarchy::detect()?, &self.cgroup_name(key), &spec.limits)?;
        let config = StartConfig {
            container_dir: dir.clone(),
            rootfs: dir.join("rootfs"),
            layers,
            hostname: spec.hostname.clone(),
            init: spec.init.clone(),
            env: init_environment(spec),
            cgroup: cgroup.clone(),
        };
        match self.run_start_shim(&config) {
            Ok(init) => Ok(init.pid),
            Err(error) => {
                let _ = cgroup.remove();
                Err(error)
            }
        }
    }

    /// Runs `starling __shim start` and reads its answer.
    fn run_start_shim(&self, config: &StartConfig) -> Result<ProcessIdentity, DriverError> {
        let json =
            serde_json::to_string(config).map_err(|error| self.shim_error(error.to_string()))?;
        let log_path = config.container_dir.join("monitor.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|source| io_error(&log_path, "creating", source))?;
        let mut child = Command::new(&self.shim_exe)
            .args(["__shim", "start"])
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .current_dir("/")
            .spawn()
            .map_err(|error| self.shim_error(format!("cannot run it: {error}")))?;
        let mut answer = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut answer);
        }
        let _ = child.wait();
        let report: Option<StartReport> = answer
            .lines()
            .last()
            .and_then(|line| serde_json::from_str(line).ok());
        match report {
            Some(StartReport::Started { init }) => Ok(init),
            Some(StartReport::Failed(failure)) => Err(setup_error(failure)),
            None => Err(self.shim_error(format!(
                "no answer from the monitor; its log says: {}",
                log_tail(&log_path)
            ))),
        }
    }

    /// Stops the container: `SIGPWR` to init (the shutdown request LXC sends), then after
    /// `timeout`, or at once when `force`, `SIGKILL` to everything in it. Returns once every
    /// process is gone and the exit is recorded.
    pub fn stop(
        &self,
        key: &InstanceKey,
        timeout: Duration,
        force: bool,
    ) -> Result<(), DriverError> {
        let record = match self.observe(key)? {
            (Observation::Running, Some(record)) => record,
            _ => {
                return Err(DriverError::NotRunning {
                    key: key.to_string(),
                })
            }
        };
        if !force {
            let _ = signal_process(&record.init, libc::SIGPWR);
            if wait_until(timeout, || {
                !record.init.is_alive() && record.cgroup.pids().is_empty()
            }) {
                return self.wait_recorded(&record);
            }
        }
        let _ = signal_process(&record.init, libc::SIGKILL);
        let gone = wait_until(KILL_TIMEOUT, || {
            record.cgroup.kill_all();
            !record.init.is_alive() && record.cgroup.pids().is_empty()
        });
        if !gone {
            return Err(DriverError::StopTimedOut {
                key: key.to_string(),
                pids: record.cgroup.pids(),
            });
        }
        self.wait_recorded(&record)
    }

    /// Waits for the monitor of `record` to record the exit and end (it ends right after).
    fn wait_recorded(&self, record: &StateRecord) -> Result<(), DriverError> {
        wait_until(SETTLE_TIMEOUT, || !record.monitor.is_alive());
        Ok(())
    }

    /// The container's state, for a container started by this or an earlier daemon.
    pub fn state(&self, key: &InstanceKey) -> Result<State, DriverError> {
        self.observed_state(key, true)
    }

    /// [`Driver::state`] with the usage figures left at zero (they cost reads of the cgroup):
    /// for watchers that only need whether it runs, and how it ended.
    pub fn liveness(&self, key: &InstanceKey) -> Result<State, DriverError> {
        self.observed_state(key, false)
    }

    fn observed_state(&self, key: &InstanceKey, usage: bool) -> Result<State, DriverError> {
        match self.observe(key)? {
            (Observation::Running, Some(record)) => {
                let (processes, memory_bytes, cpu_ns) = match usage {
                    true => (
                        record.cgroup.pids().len() as u64,
                        record.cgroup.memory_bytes().unwrap_or(0),
                        record.cgroup.cpu_ns().unwrap_or(0),
                    ),
                    false => (0, 0, 0),
                };
                Ok(State::Running {
                    pid: record.init.pid,
                    processes,
                    memory_bytes,
                    cpu_ns,
                })
            }
            (Observation::Stopped(exit), _) => Ok(State::Stopped { exit }),
            (observation, _) => Err(DriverError::BadState {
                path: self.container_dir(key).join("state.json"),
                reason: format!("unexpected observation {observation:?}"),
            }),
        }
    }

    /// The container's record, when it has one.
    pub fn record(&self, key: &InstanceKey) -> Result<Option<StateRecord>, DriverError> {
        StateRecord::load(&self.container_dir(key).join("state.json"))
    }

    /// What the record and the live processes say, waiting out a monitor that is recording an
    /// exit. A container without a directory is [`DriverError::NotFound`].
    fn observe(
        &self,
        key: &InstanceKey,
    ) -> Result<(Observation, Option<StateRecord>), DriverError> {
        key.validate()?;
        if !self.container_dir(key).is_dir() {
            return Err(DriverError::NotFound {
                key: key.to_string(),
            });
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let record = self.record(key)?;
            let observation = state::observe(
                record.as_ref(),
                record.as_ref().is_some_and(|record| record.init.is_alive()),
                record
                    .as_ref()
                    .is_some_and(|record| record.monitor.is_alive()),
            );
            match observation {
                Observation::Settling if Instant::now() < deadline => {
                    std::thread::sleep(POLL_INTERVAL)
                }
                Observation::Settling => return Ok((Observation::Stopped(None), record)),
                observation => return Ok((observation, record)),
            }
        }
    }

    /// Runs a command in the running container and collects its output.
    pub fn exec(
        &self,
        key: &InstanceKey,
        request: &ExecRequest,
    ) -> Result<ExecOutput, DriverError> {
        self.exec_spawn(
            key,
            request,
            ExecStream::Null,
            ExecStream::Piped,
            ExecStream::Piped,
        )?
        .wait_with_output()
    }

    /// Starts a command in the running container, with the standard streams given.
    pub fn exec_spawn(
        &self,
        key: &InstanceKey,
        request: &ExecRequest,
        stdin: ExecStream,
        stdout: ExecStream,
        stderr: ExecStream,
    ) -> Result<ExecChild, DriverError> {
        if request.argv.is_empty() {
            return Err(DriverError::InvalidSpec {
                reason: "exec needs a command".to_string(),
            });
        }
        let record = match self.observe(key)? {
            (Observation::Running, Some(record)) => record,
            _ => {
                return Err(DriverError::NotRunning {
                    key: key.to_string(),
                })
            }
        };
        let config = ExecConfig {
            init: record.init,
            cgroup_procs: record.cgroup.procs_files(),
            argv: request.argv.clone(),
            env: exec_environment(request),
            cwd: request.cwd.clone(),
        };
        exec::spawn(
            &self.exec_server,
            &self.shim_exe,
            key,
            &config,
            [stdin, stdout, stderr],
        )
    }

    /// Deletes a stopped container: its cgroup, any mount left under its directory, and the
    /// directory with the root file system. Refuses a running one.
    pub fn delete(&self, key: &InstanceKey) -> Result<(), DriverError> {
        let (observation, record) = self.observe(key)?;
        if !matches!(observation, Observation::Stopped(_)) {
            return Err(DriverError::Running {
                key: key.to_string(),
            });
        }
        if let Some(record) = record {
            record.cgroup.remove()?;
        }
        // A start that failed half-way may have left the cgroup without a record.
        if let Ok(hierarchy) = Hierarchy::detect() {
            Cgroup::every_controller(&hierarchy, &self.cgroup_name(key)).remove()?;
        }
        unmount_under(&self.container_dir(key))?;
        self.remove_files(key)
    }

    fn shim_error(&self, reason: String) -> DriverError {
        DriverError::Shim {
            shim: self.shim_exe.clone(),
            reason,
        }
    }
}

/// Checks what [`Driver::start`] is given.
fn validate_spec(spec: &ContainerSpec) -> Result<(), DriverError> {
    let invalid = |reason: String| Err(DriverError::InvalidSpec { reason });
    if let Err(reason) = key::validate_hostname(&spec.hostname) {
        return invalid(format!("hostname {:?}: {reason}", spec.hostname));
    }
    match spec.init.first() {
        None => return invalid("the init command is empty".to_string()),
        Some(init) if !init.starts_with('/') => {
            return invalid(format!("the init command {init:?} is not an absolute path"))
        }
        Some(_) => {}
    }
    let texts = spec
        .init
        .iter()
        .chain(spec.env.keys())
        .chain(spec.env.values());
    if texts.clone().any(|text| text.contains('\0'))
        || spec
            .env
            .keys()
            .any(|name| name.contains('=') || name.is_empty())
    {
        return invalid(
            "a NUL byte in the command or environment, or a bad variable name".to_string(),
        );
    }
    Ok(())
}

/// Init's environment: LXC's defaults, then the spec's.
fn init_environment(spec: &ContainerSpec) -> Vec<(String, String)> {
    // `container=lxc` is what systemd and distribution images look for to adapt to a
    // container set up as LXC sets one up, which this driver follows.
    let mut env: BTreeMap<String, String> = [
        ("PATH", setup::DEFAULT_PATH),
        ("TERM", "linux"),
        ("container", "lxc"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    env.extend(spec.env.clone());
    env.into_iter().collect()
}

/// A command's environment: LXD's `exec` defaults, then the request's.
fn exec_environment(request: &ExecRequest) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = [
        ("PATH", setup::DEFAULT_PATH),
        ("HOME", "/root"),
        ("USER", "root"),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    env.extend(request.env.clone());
    env.into_iter().collect()
}

/// The error for a failed container setup: the kernel refusing namespaces is told apart.
pub fn setup_error(failure: SetupFailure) -> DriverError {
    let refused = [
        Errno::EPERM as i32,
        Errno::EACCES as i32,
        Errno::EINVAL as i32,
        Errno::ENOSPC as i32,
    ];
    if failure.step == SetupStep::CreateNamespaces && refused.contains(&failure.errno) {
        let why = match Errno::from_raw(failure.errno) {
            Errno::EINVAL => "this kernel lacks one of them",
            Errno::ENOSPC => "the limit on namespaces (/proc/sys/user/max_*_namespaces) is reached",
            _ => "permission denied: CAP_SYS_ADMIN is needed (run as root, outside a restricted sandbox)",
        };
        return DriverError::NamespacesUnavailable {
            missing: format!("{} namespace(s): {why}", failure.detail),
        };
    }
    DriverError::Setup(failure)
}

/// The error for a command that did not run: a container that ended meanwhile is told apart.
fn exec_error(key: &InstanceKey, failure: SetupFailure) -> DriverError {
    if failure.step == SetupStep::JoinNamespaces
        && [Errno::ESRCH as i32, Errno::ENOENT as i32].contains(&failure.errno)
    {
        return DriverError::NotRunning {
            key: key.to_string(),
        };
    }
    DriverError::Exec(failure)
}

/// Sends `signal` to `process` if it is still that process: through a pidfd, so that a PID
/// reused between the check and the signal cannot be hit.
fn signal_process(process: &ProcessIdentity, signal: libc::c_int) -> Result<(), Errno> {
    let pidfd = shim::pidfd_open(process.pid as i32)?;
    if !process.is_alive() {
        return Err(Errno::ESRCH);
    }
    // SAFETY: pidfd_send_signal takes a descriptor and integers; no siginfo is passed.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if result < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Polls `condition` until it holds (true) or `timeout` passes (false).
fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Unmounts everything mounted at or under `dir` in this mount namespace, deepest first.
fn unmount_under(dir: &Path) -> Result<(), DriverError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| io_error(Path::new("/proc/self/mountinfo"), "reading", source))?;
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in mounts {
        match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(io_error(&point, "unmounting", errno.into())),
        }
    }
    Ok(())
}

/// Creates `dir` (and its parents), readable by root only: the root file system of a
/// privileged container holds set-user-ID programs no host user should reach.
fn create_private_dir(dir: &Path) -> Result<(), DriverError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| io_error(parent, "creating", source))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(io_error(dir, "creating", source)),
    }
}

/// Makes the directory of a container layered on the base at `layers.lower`: the `base` file
/// naming it, and `rootfs/` (its mount point) last, so that a `rootfs/` means a container
/// whose files are all here. The writable layer and overlayfs's work directory are made when
/// first needed ([`make_writable_layer`]): a container that never runs costs three inodes, not
/// five (on ext4 without a journal, inode allocation skips, one by one, every inode freed in
/// the last minute, or six while its inode table block is not written back: creating after
/// deleting many pays for each).
fn make_layered(dir: &Path, base: &str) -> Result<(), DriverError> {
    use std::os::unix::fs::PermissionsExt;
    create_private_dir(dir)?;
    let base_file = dir.join(layers::BASE_FILE);
    std::fs::write(&base_file, base).map_err(|source| io_error(&base_file, "writing", source))?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir(&rootfs).map_err(|source| io_error(&rootfs, "creating", source))?;
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755))
        .map_err(|source| io_error(&rootfs, "setting the mode of", source))
}

/// Makes the writable layer (owned and moded as the base's root, which is what the overlay's
/// root shows) and overlayfs's work directory of a layered container, where missing.
fn make_writable_layer(layers: &Layers) -> Result<(), DriverError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let make = |path: &Path, mode: u32| -> Result<(), DriverError> {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(source) => return Err(io_error(path, "creating", source)),
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|source| io_error(path, "setting the mode of", source))
    };
    if !layers.upper.is_dir() {
        // Moded and owned under another name, then renamed: an `upper/` is always whole.
        let staging = layers.upper.with_file_name(".upper.new");
        let _ = std::fs::remove_dir(&staging);
        let root = std::fs::metadata(&layers.lower)
            .map_err(|source| io_error(&layers.lower, "reading", source))?;
        make(&staging, root.mode() & 0o7777)?;
        std::os::unix::fs::chown(&staging, Some(root.uid()), Some(root.gid()))
            .map_err(|source| io_error(&staging, "setting the owner of", source))?;
        std::fs::rename(&staging, &layers.upper)
            .map_err(|source| io_error(&layers.upper, "making", source))?;
    }
    make(&layers.work, 0o700)
}

/// The end of a log file, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    let tail = String::from_utf8_lossy(&text[start..]).trim().to_string();
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

/// The file, beside a container's root file system, naming the move that brought it.
const MOVE_STAMP_FILE: &str = "move-id";

fn io_error(path: &Path, action: &str, source: std::io::Error) -> DriverError {
    DriverError::Io {
        context: format!("{action} {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the kernel refusing namespaces is told apart by the step and the error number
    /// (never by message text); other failures stay setup failures naming their step.
    #[test]
    fn classifies_setup_failures() {
        let failure = |step, errno: Errno| SetupFailure {
            step,
            errno: errno as i32,
            detail: "PID".to_string(),
        };
        let refused = setup_error(failure(SetupStep::CreateNamespaces, Errno::EPERM));
        assert!(
            matches!(&refused, DriverError::NamespacesUnavailable { missing } if missing.contains("CAP_SYS_ADMIN"))
        );
        let pivot = setup_error(failure(SetupStep::PivotRoot, Errno::EINVAL));
        assert!(matches!(
            pivot,
            DriverError::Setup(SetupFailure {
                step: SetupStep::PivotRoot,
                ..
            })
        ));
        assert_eq!(
            pivot.to_string(),
            "container setup failed: pivot_root failed (PID): Invalid argument"
        );
        let key = InstanceKey::new("default", "c1");
        let gone = exec_error(&key, failure(SetupStep::JoinNamespaces, Errno::ESRCH));
        assert!(matches!(gone, DriverError::NotRunning { .. }));
    }

    /// Goal: what start refuses before any process runs.
    #[test]
    fn validates_the_spec() {
        let mut spec = ContainerSpec::new("c1");
        assert!(validate_spec(&spec).is_ok());
        spec.init = vec!["sbin/init".to_string()];
        assert!(validate_spec(&spec).is_err());
        spec.init = Vec::new();
        assert!(validate_spec(&spec).is_err());
        let mut spec = ContainerSpec::new("not_a_hostname");
        assert!(validate_spec(&spec).is_err());
        spec.hostname = "c1".to_string();
        spec.env.insert("A=B".to_string(), "x".to_string());
        assert!(validate_spec(&spec).is_err());
    }
}
