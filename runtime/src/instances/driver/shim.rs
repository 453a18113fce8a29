//! The shim: the `starling` binary re-executed as `starling __shim start|exec|exec-server`, so
//! that no `fork` happens inside the multi-threaded daemon (as runc and conmon do).
//!
//! # `start`: the monitor
//! The first shim process forks and exits at once, so the monitor is not the daemon's child;
//! the monitor starts a session of its own (`setsid`: not in the daemon's process group, no
//! parent-death signal), so it outlives a `kill -9` of the daemon. It then
//! 1. opens a pseudo-terminal for the container's console,
//! 2. `unshare(CLONE_NEWPID)`, so that its next child is PID 1 of a new PID namespace, and
//!    forks that child, which sets the container up and execs init
//!    ([`setup::become_init`]),
//! 3. waits for the child's close-on-exec error pipe: closed empty means init runs, else it
//!    holds the failed step,
//! 4. writes `state.json` and answers the daemon with one [`StartReport`] line on standard
//!    output, then closes it,
//! 5. copies the console to `console.log` (at most [`CONSOLE_LOG_BYTES`] twice over) until
//!    init ends, then removes the cgroup and records the exit in `state.json`.
//!
//! The monitor stays in the host's mount, network, UTS and IPC namespaces: only init's child
//! namespaces change (`pivot_root` would otherwise move the monitor's root too).
//!
//! # `exec`
//! Opens `/proc/<init>/ns/*`, joins the PID namespace (which applies to children), forks;
//! the child joins the cgroup and the other namespaces (the mount namespace last, which also
//! makes the container's root its root), changes directory and execs. The shim waits, writes
//! how the command ended on the report pipe the daemon passed (`--report-fd`: a failure
//! before the command ran, or its exit code, 128 + signal when killed; one
//! [`ExecEnd`] per line) and exits with that code.
//!
//! # `exec-server`
//! The member's exec server ([`run_exec_server`]): forks an `exec` shim per request on its
//! socket, so that an exec costs a fork of this small process rather than a new `starling`
//! process (see [`super::exec`]).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::cgroup::Cgroup;
use super::error::{SetupFailure, SetupStep};
use super::exec::ExecEnd;
use super::setup;
use super::state::{ExitInfo, ProcessIdentity, StateRecord};

/// The console log is moved to `console.log.1` when it reaches this size.
pub const CONSOLE_LOG_BYTES: u64 = 1024 * 1024;
/// The exit code of an `exec` shim that failed before the command ran (the report says why).
pub const EXEC_SHIM_FAILED: i32 = 255;

/// What `starling __shim start` is given.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartConfig {
    /// The container's directory: `state.json` and `console.log` go there.
    pub container_dir: PathBuf,
    /// The root file system.
    pub rootfs: PathBuf,
    /// The layers mounted at `rootfs` for a layered container; `None` for a flat one.
    #[serde(default)]
    pub layers: Option<super::layers::Layers>,
    /// The hostname.
    pub hostname: String,
    /// Init's command line (`init[0]` an absolute path).
    pub init: Vec<String>,
    /// Init's whole environment.
    pub env: Vec<(String, String)>,
    /// The cgroup init joins, already made with its limits.
    pub cgroup: Cgroup,
}

/// The monitor's answer to the daemon: one JSON line on its standard output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StartReport {
    /// Init was exec'd.
    Started {
        /// Init on the host.
        init: ProcessIdentity,
    },
    /// The setup failed; nothing of the container runs.
    Failed(SetupFailure),
}

/// What `starling __shim exec` is given.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The container's init, whose namespaces are joined.
    pub init: ProcessIdentity,
    /// The `cgroup.procs` files of the container's cgroup.
    pub cgroup_procs: Vec<PathBuf>,
    /// The command.
    pub argv: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory, inside the container.
    pub cwd: PathBuf,
}

/// `starling __shim start <config>`: the first process's part; returns its exit code. The
/// monitor, forked here, returns 0 once init has ended and its exit is recorded.
pub fn run_start(config_json: &str) -> i32 {
    let config: StartConfig = match serde_json::from_str(config_json) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("starling shim: bad start configuration: {error}");
            return 2;
        }
    };
    // SAFETY: the shim is single-threaded (no runtime started), so the child may run any code.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => 0,
        Ok(ForkResult::Child) => {
            if let Err(errno) = nix::unistd::setsid() {
                eprintln!("starling shim: setsid: {errno}");
            }
            monitor(&config)
        }
        Err(errno) => {
            answer(&StartReport::Failed(failure(
                SetupStep::Fork,
                errno,
                "monitor",
            )));
            1
        }
    }
}

/// The monitor: starts init, answers the daemon, then waits for init to end.
fn monitor(config: &StartConfig) -> i32 {
    let (child, console_master) = match start_init(config) {
        Ok(started) => started,
        Err(failure) => {
            answer(&StartReport::Failed(failure));
            return 1;
        }
    };
    let state_path = config.container_dir.join("state.json");
    let record = ProcessIdentity::of(child.as_raw() as u32)
        .and_then(|init| Ok((init, ProcessIdentity::of(std::process::id())?)))
        .and_then(|(init, monitor)| {
            let record = StateRecord {
                init,
                monitor,
                cgroup: config.cgroup.clone(),
                started_at_unix_ms: unix_ms(),
                exit: None,
            };
            record.save(&state_path)?;
            Ok(record)
        });
    let mut record = match record {
        Ok(record) => record,
        Err(error) => {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(child, None);
            answer(&StartReport::Failed(SetupFailure {
                step: SetupStep::RecordState,
                errno: error.raw_os_error().unwrap_or(0),
                detail: state_path.display().to_string(),
            }));
            return 1;
        }
    };
    answer(&StartReport::Started { init: record.init });
    release_stdio();
    let status = watch(
        child,
        &console_master,
        &config.container_dir.join("console.log"),
    );
    if let Err(error) = config.cgroup.remove() {
        eprintln!("starling shim: {error}");
    }
    record.exit = Some(exit_info(status));
    if let Err(error) = record.save(&state_path) {
        eprintln!(
            "starling shim: recording the exit in {}: {error}",
            state_path.display()
        );
    }
    0
}

/// Forks the container's init in a new PID namespace; returns it once it has exec'd, with the
/// console's master side.
fn start_init(config: &StartConfig) -> Result<(Pid, OwnedFd), SetupFailure> {
    let pty = nix::pty::openpty(None, None)
        .map_err(|errno| failure(SetupStep::Console, errno, "openpty"))?;
    set_cloexec(&pty.master).map_err(|errno| failure(SetupStep::Console, errno, "pty master"))?;
    let console_path = nix::unistd::ttyname(&pty.slave)
        .map_err(|errno| failure(SetupStep::Console, errno, "ttyname"))?;
    let (errors_read, errors_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|errno| failure(SetupStep::Fork, errno, "pipe"))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|errno| failure(SetupStep::CreateNamespaces, errno, "PID"))?;
    // SAFETY: the monitor is single-threaded, so the child may run any code.
    match unsafe { fork() }.map_err(|errno| failure(SetupStep::Fork, errno, "init"))? {
        ForkResult::Child => {
            drop(errors_read);
            setup::become_init(config, pty.slave, &console_path, errors_write)
        }
        ForkResult::Parent { child } => {
            drop(errors_write);
            let mut report = Vec::new();
            let _ = std::fs::File::from(errors_read).read_to_end(&mut report);
            if report.is_empty() {
                // The monitor keeps a slave open, so that the master never reads as hung up
                // while init has no console open.
                std::mem::forget(pty.slave);
                return Ok((child, pty.master));
            }
            let _ = waitpid(child, None);
            Err(
                serde_json::from_slice(&report).unwrap_or_else(|_| SetupFailure {
                    step: SetupStep::Exec,
                    errno: 0,
                    detail: String::from_utf8_lossy(&report).into_owned(),
                }),
            )
        }
    }
}

/// Copies the console to `log_path` until `child` ends; returns how it ended.
fn watch(child: Pid, console: &OwnedFd, log_path: &Path) -> WaitStatus {
    let mut log = ConsoleLog::open(log_path);
    // A pidfd becomes readable when the process ends; without one, look every 100 ms.
    let exit_fd = pidfd_open(child.as_raw()).ok();
    let _ = nix::fcntl::fcntl(console, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                drain(console, &mut buffer, &mut log);
                return status;
            }
            Ok(_) => {}
            Err(errno) => {
                eprintln!("starling shim: waitpid: {errno}");
                return WaitStatus::Exited(child, 255);
            }
        }
        let mut fds = vec![libc::pollfd {
            fd: console.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(exit_fd) = &exit_fd {
            fds.push(libc::pollfd {
                fd: exit_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout_ms = if exit_fd.is_some() { -1 } else { 100 };
        // SAFETY: `fds` is a valid array of pollfd for the length given.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        drain(console, &mut buffer, &mut log);
    }
}

/// Reads what the console has now into the log.
fn drain(console: &OwnedFd, buffer: &mut [u8], log: &mut ConsoleLog) {
    while let Ok(count @ 1..) = nix::unistd::read(console, buffer) {
        log.write(&buffer[..count]);
    }
}

/// `console.log`, moved to `console.log.1` when full.
struct ConsoleLog {
    /// The log file.
    path: PathBuf,
    /// Open for appending; `None` when it could not be opened.
    file: Option<std::fs::File>,
    /// Bytes in the current file.
    written: u64,
}

impl ConsoleLog {
    fn open(path: &Path) -> ConsoleLog {
        ConsoleLog {
            path: path.to_path_buf(),
            file: std::fs::File::create(path).ok(),
            written: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.written + bytes.len() as u64 > CONSOLE_LOG_BYTES {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            self.file = std::fs::File::create(&self.path).ok();
            self.written = 0;
        }
        if let Some(file) = &mut self.file {
            if file.write_all(bytes).is_ok() {
                self.written += bytes.len() as u64;
            }
        }
    }
}

/// `starling __shim exec --report-fd <fd> <config>`: runs the command in the container,
/// reports how it ended on the report pipe ([`ExecEnd`]) and returns its exit code, or
/// [`EXEC_SHIM_FAILED`] after reporting why it did not run.
pub fn run_exec(config_json: &str, report_fd: RawFd) -> i32 {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if report_fd < 0 || unsafe { libc::fcntl(report_fd, libc::F_GETFD) } < 0 {
        eprintln!("starling shim: report descriptor {report_fd} is not open");
        return EXEC_SHIM_FAILED;
    }
    // SAFETY: the descriptor is open, and the daemon passed it to this process for it alone.
    let report = unsafe { OwnedFd::from_raw_fd(report_fd) };
    // The command must not hold the report pipe open.
    if let Err(errno) = set_cloexec(&report) {
        eprintln!("starling shim: report pipe: {errno}");
        return EXEC_SHIM_FAILED;
    }
    let config: ExecConfig = match serde_json::from_str(config_json) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("starling shim: bad exec configuration: {error}");
            return EXEC_SHIM_FAILED;
        }
    };
    match enter_and_run(&config, &report) {
        Ok(code) => {
            report_end(&report, &ExecEnd::Exited(code));
            code
        }
        Err(failure) => {
            report_end(&report, &ExecEnd::Failed(failure));
            EXEC_SHIM_FAILED
        }
    }
}

/// Writes `end` as one line on the report pipe.
fn report_end(report: &OwnedFd, end: &ExecEnd) {
    if let Ok(mut bytes) = serde_json::to_vec(end) {
        bytes.push(b'\n');
        let mut written = 0;
        while written < bytes.len() {
            match nix::unistd::write(report, &bytes[written..]) {
                Ok(0) | Err(_) => break,
                Ok(count) => written += count,
            }
        }
    }
}

/// `starling __shim exec-server --socket-fd <fd>`: forks a shim ([`run_exec`]) for each
/// request the daemon sends on its socket (the configuration, with stdin, stdout, stderr and
/// the report pipe as `SCM_RIGHTS`), answering `ok` with the shim's pidfd, or `error: ...`.
/// Returns once the daemon closes its end. Single-threaded, so its children may run any
/// code; they are reaped by the kernel (`SIGCHLD` ignored).
pub fn run_exec_server(socket_fd: RawFd) -> i32 {
    use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
    use std::io::{IoSlice, IoSliceMut};
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if socket_fd < 0 || unsafe { libc::fcntl(socket_fd, libc::F_GETFD) } < 0 {
        eprintln!("starling exec server: socket descriptor {socket_fd} is not open");
        return 2;
    }
    // SAFETY: the descriptor is open, and the daemon passed it to this process for it alone.
    let socket = unsafe { OwnedFd::from_raw_fd(socket_fd) };
    if let Err(errno) = set_cloexec(&socket) {
        eprintln!("starling exec server: socket: {errno}");
        return 2;
    }
    // SAFETY: setting a signal's disposition to "ignore" installs no handler.
    if let Err(errno) = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGCHLD,
            nix::sys::signal::SigHandler::SigIgn,
        )
    } {
        eprintln!("starling exec server: SIGCHLD: {errno}");
        return 2;
    }
    let mut buffer = vec![0u8; super::exec::SERVER_MESSAGE_MAX + 1];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let received = socket::recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let message = match received {
            Ok(message) => message,
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                eprintln!("starling exec server: receiving: {errno}");
                return 1;
            }
        };
        let length = message.bytes;
        let truncated = message
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(controls) = message.cmsgs() {
            for control in controls {
                if let ControlMessageOwned::ScmRights(received) = control {
                    // SAFETY: the kernel just gave us these descriptors.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        if length == 0 && fds.is_empty() {
            // The daemon closed its end.
            return 0;
        }
        let answer = |text: &str, pidfd: Option<&OwnedFd>| {
            let raw: Vec<RawFd> = pidfd.map(|fd| fd.as_raw_fd()).into_iter().collect();
            let rights = [ControlMessage::ScmRights(&raw)];
            let controls: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
            let _ = socket::sendmsg::<()>(
                socket.as_raw_fd(),
                &[IoSlice::new(text.as_bytes())],
                controls,
                MsgFlags::empty(),
                None,
            );
        };
        let config = match std::str::from_utf8(&buffer[..length]) {
            Ok(config) if !truncated && fds.len() == 4 => config.to_string(),
            _ => {
                answer(
                    &format!(
                        "error: a malformed request ({length} bytes, {} descriptors{})",
                        fds.len(),
                        if truncated { ", truncated" } else { "" }
                    ),
                    None,
                );
                continue;
            }
        };
        // SAFETY: this process is single-threaded, so the child may run any code.
        match unsafe { fork() } {
            Err(errno) => answer(&format!("error: fork: {errno}"), None),
            Ok(ForkResult::Child) => {
                drop(socket);
                let code = serve_one(&config, fds);
                // SAFETY: _exit ends this forked child without running exit handlers.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(fds);
                // A shim that ended already has no pidfd: there is nothing left to kill.
                let pidfd = pidfd_open(child.as_raw()).ok();
                answer("ok", pidfd.as_ref());
            }
        }
    }
}

/// A forked exec server's child: the request's descriptors become its standard streams, and
/// it runs the shim.
fn serve_one(config: &str, fds: Vec<OwnedFd>) -> i32 {
    let mut fds = fds.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr), Some(report)) =
        (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return EXEC_SHIM_FAILED;
    };
    // dup2 leaves the copies without close-on-exec: the command's streams.
    if nix::unistd::dup2_stdin(&stdin).is_err()
        || nix::unistd::dup2_stdout(&stdout).is_err()
        || nix::unistd::dup2_stderr(&stderr).is_err()
    {
        return EXEC_SHIM_FAILED;
    }
    drop((stdin, stdout, stderr));
    // The shim waits for its command: its children are not to be reaped by the kernel.
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGCHLD,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    run_exec(config, std::os::fd::IntoRawFd::into_raw_fd(report))
}

/// The kinds of namespace `exec` joins, by their `/proc/<pid>/ns` names; `mnt` last.
const EXEC_NAMESPACES: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn enter_and_run(config: &ExecConfig, report: &OwnedFd) -> Result<i32, SetupFailure> {
    let mut namespaces = Vec::new();
    for (name, kind) in EXEC_NAMESPACES {
        let path = format!("/proc/{}/ns/{name}", config.init.pid);
        let file = std::fs::File::open(&path).map_err(|error| SetupFailure {
            step: SetupStep::JoinNamespaces,
            errno: error.raw_os_error().unwrap_or(0),
            detail: path.clone(),
        })?;
        namespaces.push((OwnedFd::from(file), kind, name));
    }
    // The namespaces are open now: checking after opening proves they are init's, not those
    // of a process that took its PID since.
    if !config.init.is_alive() {
        return Err(failure(
            SetupStep::JoinNamespaces,
            Errno::ESRCH,
            "init has ended",
        ));
    }
    let (pid_namespace, others): (Vec<_>, Vec<_>) = namespaces
        .into_iter()
        .partition(|(_, kind, _)| *kind == CloneFlags::CLONE_NEWPID);
    for (fd, kind, name) in &pid_namespace {
        nix::sched::setns(fd, *kind)
            .map_err(|errno| failure(SetupStep::JoinNamespaces, errno, name))?;
    }
    // SAFETY: the shim is single-threaded, so the child may run any code.
    match unsafe { fork() }.map_err(|errno| failure(SetupStep::Fork, errno, "command"))? {
        ForkResult::Child => {
            let failure = run_in_container(config, &others);
            report_end(report, &ExecEnd::Failed(failure.clone()));
            let code = if failure.step == SetupStep::Exec && failure.errno == Errno::ENOENT as i32 {
                127
            } else {
                126
            };
            // SAFETY: _exit ends this forked child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(errno) => return Err(failure(SetupStep::Fork, errno, "waitpid")),
            }
        },
    }
}

/// The exec child: joins the cgroup and namespaces and execs; returns only on failure.
fn run_in_container(
    config: &ExecConfig,
    namespaces: &[(OwnedFd, CloneFlags, &str)],
) -> SetupFailure {
    // The command dies with the shim, so that a caller killing the shim ends the command.
    // SAFETY: PR_SET_PDEATHSIG takes integers only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if let Err(failure) = setup::join_cgroup(&config.cgroup_procs) {
        return failure;
    }
    for (fd, kind, name) in namespaces {
        if let Err(errno) = nix::sched::setns(fd.as_fd(), *kind) {
            return failure(SetupStep::JoinNamespaces, errno, name);
        }
    }
    if let Err(errno) = nix::unistd::chdir(&config.cwd) {
        return failure(
            SetupStep::WorkingDirectory,
            errno,
            &config.cwd.display().to_string(),
        );
    }
    if let Err(failure) = setup::prepare_exec() {
        return failure;
    }
    let errno = setup::exec_searching_path(&config.argv, &config.env);
    failure(
        SetupStep::Exec,
        errno,
        config.argv.first().map_or("", String::as_str),
    )
}

/// Writes `report` as one line on standard output and closes it.
fn answer(report: &StartReport) {
    let mut stdout = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(report) {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
}

/// Points standard input and output at `/dev/null`: the daemon's pipe closes, and a later
/// write cannot fail on it. Standard error stays the monitor's log.
fn release_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// How a wait status reads as an exit.
fn exit_info(status: WaitStatus) -> ExitInfo {
    let (code, signal) = match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, signal, _) => (None, Some(signal as i32)),
        _ => (None, None),
    };
    ExitInfo {
        code,
        signal,
        at_unix_ms: unix_ms(),
    }
}

/// `pidfd_open(2)`: a descriptor that reads as ready when process `pid` ends.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the descriptor was just created for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn set_cloexec(fd: &OwnedFd) -> Result<(), Errno> {
    nix::fcntl::fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

fn failure(step: SetupStep, errno: Errno, detail: &str) -> SetupFailure {
    SetupFailure {
        step,
        errno: errno as i32,
        detail: detail.to_string(),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
