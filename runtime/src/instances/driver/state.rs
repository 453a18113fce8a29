//! A container's state: the record its monitor keeps in `state.json`, how a process is told
//! apart from a later one with a recycled PID, and [`observe`], the pure decision of what a
//! record and the live processes say together.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cgroup::Cgroup;
use super::DriverError;

/// What the driver reports about a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Init runs.
    Running {
        /// Init's PID on the host.
        pid: u32,
        /// Processes in the container's cgroup.
        processes: u64,
        /// Memory in use, in bytes.
        memory_bytes: u64,
        /// CPU time used since start, in nanoseconds.
        cpu_ns: u64,
    },
    /// Not running.
    Stopped {
        /// How init ended, when the monitor saw it end (`None`: never started, or the
        /// monitor was killed before it could record the end).
        exit: Option<ExitInfo>,
    },
}

/// How a container's init ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, when init exited.
    pub code: Option<i32>,
    /// The signal, when init was killed. In a PID namespace the kernel reports `reboot(2)`
    /// by init as death by `SIGINT` (halt, power off) or `SIGHUP` (restart).
    pub signal: Option<i32>,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl ExitInfo {
    /// Whether init asked for a restart (`reboot` inside the container).
    pub fn requested_restart(&self) -> bool {
        self.signal == Some(libc::SIGHUP)
    }
}

/// A process, told apart from a later process that reuses its PID by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// PID on the host.
    pub pid: u32,
    /// Start time, in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// The identity of the live process `pid`.
    pub fn of(pid: u32) -> io::Result<ProcessIdentity> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let (_, start_ticks) = parse_stat(&text).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/<pid>/stat")
        })?;
        Ok(ProcessIdentity { pid, start_ticks })
    }

    /// Whether this very process still runs (not exited, not a zombie, PID not reused).
    pub fn is_alive(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        matches!(parse_stat(&text), Some((state, ticks)) if ticks == self.start_ticks && state != 'Z' && state != 'X')
    }
}

/// The state letter and start time of a `/proc/<pid>/stat` text. The command name, in
/// parentheses, may hold spaces and parentheses: fields are counted after the last `)`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; the start time is field 22, 19 further on.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some((state, start_ticks))
}

/// What the monitor writes in `<container>/state.json`: at start, and again when init ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// The container's init.
    pub init: ProcessIdentity,
    /// The monitor: the shim process that waits for init and records its end.
    pub monitor: ProcessIdentity,
    /// The container's cgroup.
    pub cgroup: Cgroup,
    /// Start, in milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// How init ended; `None` while it runs.
    pub exit: Option<ExitInfo>,
}

impl StateRecord {
    /// Reads the record at `path`; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<StateRecord>, DriverError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DriverError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| DriverError::BadState {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })
    }

    /// Writes the record to `path` atomically (a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let temporary = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, path)
    }
}

/// What a record and the processes it names say together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Init runs.
    Running,
    /// Init has ended but its monitor, still alive, has not recorded the end yet: look again.
    Settling,
    /// Not running; how it ended when known.
    Stopped(Option<ExitInfo>),
}

/// Decides what a container is from its record and whether its init and monitor (the very
/// processes, not PIDs reused since) are alive.
pub fn observe(record: Option<&StateRecord>, init_alive: bool, monitor_alive: bool) -> Observation {
    let Some(record) = record else {
        return Observation::Stopped(None);
    };
    if record.exit.is_some() {
        return Observation::Stopped(record.exit);
    }
    if init_alive {
        Observation::Running
    } else if monitor_alive {
        Observation::Settling
    } else {
        Observation::Stopped(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the state letter and start time are read past a command name holding `) `.
    #[test]
    fn parses_proc_stat() {
        let text = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 \
                    200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_stat(text), Some(('S', 987654)));
        let me = ProcessIdentity::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let recycled = ProcessIdentity {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!recycled.is_alive());
    }

    /// Goal: a recorded exit wins; a live init is running; a dead init with a live monitor is
    /// settling (the exit is about to be written); with both gone the end is unknown.
    #[test]
    fn observes() {
        let process = ProcessIdentity {
            pid: 1,
            start_ticks: 1,
        };
        let mut record = StateRecord {
            init: process,
            monitor: process,
            cgroup: Cgroup {
                version: super::super::cgroup::Version::V1,
                dirs: Default::default(),
            },
            started_at_unix_ms: 0,
            exit: None,
        };
        assert_eq!(observe(None, false, false), Observation::Stopped(None));
        assert_eq!(observe(Some(&record), true, true), Observation::Running);
        assert_eq!(observe(Some(&record), true, false), Observation::Running);
        assert_eq!(observe(Some(&record), false, true), Observation::Settling);
        assert_eq!(
            observe(Some(&record), false, false),
            Observation::Stopped(None)
        );
        let exit = ExitInfo {
            code: Some(0),
            signal: None,
            at_unix_ms: 5,
        };
        record.exit = Some(exit);
        assert_eq!(
            observe(Some(&record), false, true),
            Observation::Stopped(Some(exit))
        );
    }
}
