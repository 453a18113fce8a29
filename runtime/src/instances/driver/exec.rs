//! `exec` on the daemon's side: the command's streams, its [`ExecChild`], and the exec server.
//!
//! A command runs in a shim process (`shim::run_exec`): it joins the container and waits
//! for the command. That shim comes from the member's **exec server** (`starling __shim
//! exec-server`, started on the first exec and kept), a small single-threaded process that
//! forks one per request: the daemon sends the [`ExecConfig`] and four descriptors (stdin,
//! stdout, stderr, the report pipe) over a `SOCK_SEQPACKET` socket pair and gets the shim's
//! pidfd back. Forking the daemon and executing the `starling` binary anew for every exec
//! cost ~5 ms (a large multi-threaded process's page tables copied, then a 200 MB binary
//! loaded); a fork of the server costs a fraction of a millisecond. The daemon itself never
//! forks (see the shim's module).
//!
//! The shim reports how the command ended on the report pipe (one [`ExecEnd`] per line); the
//! server reaps its children itself. A server that cannot be reached is replaced once; a
//! configuration larger than a message, or a server that fails twice, falls back to spawning
//! `starling __shim exec` directly, as before the server existed.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag};
use serde::{Deserialize, Serialize};

use super::error::SetupFailure;
use super::shim::ExecConfig;
use super::{exec_error, DriverError, InstanceKey};

/// The largest exec configuration sent to the server in one message; a larger one (a huge
/// environment) is run by a shim spawned for it.
pub const SERVER_MESSAGE_MAX: usize = 64 * 1024;
/// How long the daemon waits for the server's answer before replacing it.
const SERVER_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One of a command's standard streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecStream {
    /// `/dev/null`.
    Null,
    /// A pipe, whose other end is on the [`ExecChild`].
    Piped,
}

/// How a command ended, as its shim reports it on the report pipe (one JSON value per line).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ExecEnd {
    /// The command did not run.
    Failed(SetupFailure),
    /// The command's exit code (128 + the signal when a signal killed it).
    Exited(i32),
}

/// A command running in a container ([`Driver::exec_spawn`](super::Driver::exec_spawn)):
/// read and write its pipes, then [`ExecChild::wait`]. [`ExecChild::kill`] kills its shim,
/// which kills the command.
#[derive(Debug)]
pub struct ExecChild {
    /// The command's standard input, when piped.
    pub stdin: Option<File>,
    /// Its standard output, when piped.
    pub stdout: Option<File>,
    /// Its standard error, when piped.
    pub stderr: Option<File>,
    /// The shim.
    shim: ShimProcess,
    /// Where the shim reports how the command ended.
    report: File,
    /// The shim executable, for errors.
    shim_exe: PathBuf,
    /// The instance, for errors.
    key: InstanceKey,
}

/// The shim running a command.
#[derive(Debug)]
enum ShimProcess {
    /// Forked by the exec server: its pidfd (`None` when it had ended before the server
    /// could open one).
    Served(Option<OwnedFd>),
    /// Spawned by the daemon.
    Spawned(Child),
}

impl ExecChild {
    /// Kills the shim, and with it the command.
    pub fn kill(&mut self) -> std::io::Result<()> {
        match &mut self.shim {
            ShimProcess::Spawned(child) => child.kill(),
            ShimProcess::Served(None) => Ok(()),
            ShimProcess::Served(Some(pidfd)) => {
                // SAFETY: pidfd_send_signal takes a descriptor we own, a signal number and a
                // null info pointer.
                let sent = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                match sent {
                    0 => Ok(()),
                    _ => match std::io::Error::last_os_error() {
                        // Ended already.
                        error if error.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                        error => Err(error),
                    },
                }
            }
        }
    }

    /// Waits for the command; returns its exit code.
    pub fn wait(mut self) -> Result<i32, DriverError> {
        // The command's pipes are the caller's; closing our copy of stdin lets it see the end.
        self.stdin = None;
        let mut report = Vec::new();
        let read = self.report.read_to_end(&mut report);
        let status = match &mut self.shim {
            ShimProcess::Spawned(child) => Some(
                child
                    .wait()
                    .map_err(|error| self.shim_error(format!("waiting: {error}")))?,
            ),
            ShimProcess::Served(_) => None,
        };
        read.map_err(|error| self.shim_error(format!("reading its report: {error}")))?;
        match read_report(&report) {
            Ok(Some(ExecEnd::Failed(failure))) => Err(exec_error(&self.key, failure)),
            Ok(Some(ExecEnd::Exited(code))) => Ok(code),
            Ok(None) => Err(self.shim_error(match status {
                Some(status) => format!("it ended with {status} without a report"),
                None => "it ended without a report (killed?)".to_string(),
            })),
            Err(error) => Err(self.shim_error(format!("unreadable report: {error}"))),
        }
    }

    /// Waits for the command, collecting what it wrote to piped streams.
    pub fn wait_with_output(mut self) -> Result<super::ExecOutput, DriverError> {
        self.stdin = None;
        let stderr = self.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        });
        let mut stdout = Vec::new();
        if let Some(mut pipe) = self.stdout.take() {
            let _ = pipe.read_to_end(&mut stdout);
        }
        let stderr = stderr
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default();
        Ok(super::ExecOutput {
            exit_code: self.wait()?,
            stdout,
            stderr,
        })
    }

    fn shim_error(&self, reason: String) -> DriverError {
        DriverError::Shim {
            shim: self.shim_exe.clone(),
            reason,
        }
    }
}

/// The outcome a report holds: a failure wins over an exit code (a command that could not
/// run makes its shim exit too); `None` when it holds neither.
pub fn read_report(report: &[u8]) -> Result<Option<ExecEnd>, serde_json::Error> {
    let mut end = None;
    for line in report.split(|byte| *byte == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<ExecEnd>(line)? {
            failed @ ExecEnd::Failed(_) => return Ok(Some(failed)),
            exited => end = Some(exited),
        }
    }
    Ok(end)
}

/// The daemon's end of a running exec server.
#[derive(Debug)]
pub struct ExecServer {
    /// The socket pair's daemon end.
    socket: OwnedFd,
    /// The server process.
    process: Child,
}

impl ExecServer {
    /// Starts `shim_exe __shim exec-server`.
    pub fn start(shim_exe: &Path) -> std::io::Result<ExecServer> {
        let (ours, theirs) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        socket::setsockopt(
            &ours,
            socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(SERVER_ANSWER_TIMEOUT.as_secs() as i64, 0),
        )?;
        let their_fd = theirs.as_raw_fd();
        let mut command = Command::new(shim_exe);
        command
            .args([
                "__shim",
                "exec-server",
                "--socket-fd",
                &their_fd.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .current_dir("/");
        inherit(&mut command, their_fd);
        let process = command.spawn()?;
        drop(theirs);
        Ok(ExecServer {
            socket: ours,
            process,
        })
    }

    /// Sends the server a request: `config` with `fds` (stdin, stdout, stderr, report). An
    /// error means the server did not get it (a `SOCK_SEQPACKET` message is queued whole or
    /// not at all).
    fn send(&self, config: &[u8], fds: [RawFd; 4]) -> std::io::Result<()> {
        let rights = [ControlMessage::ScmRights(&fds)];
        socket::sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(config)],
            &rights,
            MsgFlags::empty(),
            None,
        )?;
        Ok(())
    }

    /// The server's answer to the request just sent.
    fn receive(&self) -> std::io::Result<Answer> {
        let mut answer = [0u8; 512];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut answer)];
        let message = socket::recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut pidfd = None;
        for control in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = control {
                for fd in received {
                    // SAFETY: the kernel just gave us this descriptor.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    pidfd.get_or_insert(fd);
                }
            }
        }
        let length = message.bytes;
        let text = String::from_utf8_lossy(&answer[..length]).into_owned();
        if length == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the exec server closed its socket",
            ));
        }
        Ok(match text.strip_prefix("ok") {
            Some(_) => Answer::Forked(pidfd),
            None => Answer::Refused(text),
        })
    }
}

/// The server's answer to a request.
enum Answer {
    /// It forked a shim: the shim's pidfd (`None` when the shim ended before the server
    /// could open one).
    Forked(Option<OwnedFd>),
    /// It could not (the reason).
    Refused(String),
}

impl Drop for ExecServer {
    fn drop(&mut self) {
        // Its running shims are independent processes: they go on.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Has `command`'s process inherit `fd`, which is close-on-exec everywhere else, so that no
/// other child of the daemon inherits it.
fn inherit(command: &mut Command, fd: RawFd) {
    // SAFETY: between fork and exec only fcntl(2) runs, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A command's stream: the shim's end, and ours when piped.
fn stream(kind: ExecStream, input: bool) -> std::io::Result<(OwnedFd, Option<File>)> {
    match kind {
        ExecStream::Null => {
            let null = std::fs::OpenOptions::new()
                .read(input)
                .write(!input)
                .open("/dev/null")?;
            Ok((OwnedFd::from(null), None))
        }
        ExecStream::Piped => {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            Ok(match input {
                true => (read, Some(File::from(write))),
                false => (write, Some(File::from(read))),
            })
        }
    }
}

/// Starts a shim for `config` — through `server` (started when `None`, replaced once when
/// it fails), or spawned directly — and answers the running command.
pub(super) fn spawn(
    server: &std::sync::Mutex<Option<ExecServer>>,
    shim_exe: &Path,
    key: &InstanceKey,
    config: &ExecConfig,
    streams: [ExecStream; 3],
) -> Result<ExecChild, DriverError> {
    let shim_error = |reason: String| DriverError::Shim {
        shim: shim_exe.to_path_buf(),
        reason,
    };
    let json = serde_json::to_string(config).map_err(|error| shim_error(error.to_string()))?;
    let [stdin, stdout, stderr] = streams;
    let (stdin_theirs, stdin_ours) =
        stream(stdin, true).map_err(|error| shim_error(format!("stdin: {error}")))?;
    let (stdout_theirs, stdout_ours) =
        stream(stdout, false).map_err(|error| shim_error(format!("stdout: {error}")))?;
    let (stderr_theirs, stderr_ours) =
        stream(stderr, false).map_err(|error| shim_error(format!("stderr: {error}")))?;
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| shim_error(format!("pipe: {errno}")))?;
    let child = |shim: ShimProcess| ExecChild {
        stdin: stdin_ours,
        stdout: stdout_ours,
        stderr: stderr_ours,
        shim,
        report: File::from(report_read),
        shim_exe: shim_exe.to_path_buf(),
        key: key.clone(),
    };
    if json.len() <= SERVER_MESSAGE_MAX {
        let fds = [
            stdin_theirs.as_raw_fd(),
            stdout_theirs.as_raw_fd(),
            stderr_theirs.as_raw_fd(),
            report_write.as_raw_fd(),
        ];
        let mut server = server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for attempt in 0..2 {
            let running = match server.take() {
                Some(running) => running,
                None => match ExecServer::start(shim_exe) {
                    Ok(running) => running,
                    Err(error) => {
                        tracing::warn!(%error, "cannot start the exec server: spawning the shim");
                        break;
                    }
                },
            };
            if let Err(error) = running.send(json.as_bytes(), fds) {
                // Not delivered: a new server may run it.
                tracing::warn!(%error, attempt, "the exec server did not take a request: replacing it");
                continue;
            }
            let pidfd = match running.receive() {
                Ok(Answer::Forked(pidfd)) => {
                    *server = Some(running);
                    pidfd
                }
                Ok(Answer::Refused(reason)) => {
                    *server = Some(running);
                    return Err(shim_error(reason));
                }
                // Delivered, and perhaps forked: the report pipe tells how it ends (empty when
                // nothing ran). The server is replaced on the next exec.
                Err(error) => {
                    tracing::warn!(%error, "the exec server's answer was lost: replacing it");
                    None
                }
            };
            // Our copies of the shim's ends close when this returns: the report reads its end
            // once the shim has gone.
            return Ok(child(ShimProcess::Served(pidfd)));
        }
    }
    let mut command = Command::new(shim_exe);
    let report_fd = report_write.as_raw_fd();
    command
        .args(["__shim", "exec", "--report-fd", &report_fd.to_string()])
        .arg(json)
        .stdin(Stdio::from(stdin_theirs))
        .stdout(Stdio::from(stdout_theirs))
        .stderr(Stdio::from(stderr_theirs))
        .current_dir("/");
    inherit(&mut command, report_fd);
    let spawned = command
        .spawn()
        .map_err(|error| shim_error(format!("cannot run it: {error}")))?;
    drop(command);
    drop(report_write);
    Ok(child(ShimProcess::Spawned(spawned)))
}
