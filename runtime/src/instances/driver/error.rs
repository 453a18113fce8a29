//! [`DriverError`]: why a container operation failed, one variant per cause a caller may act on.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A step of the container's setup, or of entering it for `exec`, that can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetupStep {
    /// Joining the container's cgroup.
    JoinCgroup,
    /// Creating the namespaces (`unshare`).
    CreateNamespaces,
    /// Joining the container's namespaces (`setns`).
    JoinNamespaces,
    /// A mount, a directory, a device node or a link of the container's file systems.
    Mount,
    /// Setting the hostname.
    Hostname,
    /// Bringing the loopback interface up.
    Loopback,
    /// Switching the root file system (`pivot_root`).
    PivotRoot,
    /// Setting up the console (a pseudo-terminal, the container's `/dev/console`).
    Console,
    /// Dropping capabilities.
    Capabilities,
    /// Forking the process that becomes init or runs the command.
    Fork,
    /// Changing to the working directory.
    WorkingDirectory,
    /// Running the command (`execve`).
    Exec,
    /// Writing the container's `state.json` once init runs.
    RecordState,
}

impl SetupStep {
    /// The step in words, as error messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            SetupStep::JoinCgroup => "joining the cgroup",
            SetupStep::CreateNamespaces => "creating namespaces",
            SetupStep::JoinNamespaces => "joining the namespaces",
            SetupStep::Mount => "mount",
            SetupStep::Hostname => "sethostname",
            SetupStep::Loopback => "bringing up lo",
            SetupStep::PivotRoot => "pivot_root",
            SetupStep::Console => "console",
            SetupStep::Capabilities => "dropping capabilities",
            SetupStep::Fork => "fork",
            SetupStep::WorkingDirectory => "chdir",
            SetupStep::Exec => "exec",
            SetupStep::RecordState => "recording the state",
        }
    }
}

/// A failed setup step, as the shim reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupFailure {
    /// The step.
    pub step: SetupStep,
    /// The error number the system call returned (0 when there was none).
    pub errno: i32,
    /// What the step worked on (a path, a command), for the message.
    pub detail: String,
}

impl std::fmt::Display for SetupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed", self.step.describe())?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        if self.errno != 0 {
            write!(f, ": {}", nix::errno::Errno::from_raw(self.errno).desc())?;
        }
        Ok(())
    }
}

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The project or instance name cannot be used.
    #[error("invalid instance name {key:?}: {reason}")]
    InvalidKey {
        /// `project/name`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The start request is not usable (empty init command, bad hostname, ...).
    #[error("invalid container configuration: {reason}")]
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
    /// A limit the kernel would refuse.
    #[error("invalid limit: {reason}")]
    InvalidLimit {
        /// Which limit, and why.
        reason: String,
    },
    /// The instance has no root file system on this member (never unpacked, or deleted).
    #[error("Instance not found: {key} has no root file system in the storage pool")]
    NotFound {
        /// `project/name`.
        key: String,
    },
    /// The instance already has a root file system here.
    #[error("Instance {key} already exists in the storage pool")]
    AlreadyExists {
        /// `project/name`.
        key: String,
    },
    /// The instance runs and the operation needs it stopped.
    #[error("The instance {key} is running: stop it first")]
    Running {
        /// `project/name`.
        key: String,
    },
    /// The instance is stopped and the operation needs it running.
    #[error("The instance {key} is not running")]
    NotRunning {
        /// `project/name`.
        key: String,
    },
    /// The image cannot be unpacked: names the image, and the entry when one is at fault.
    #[error("cannot unpack image {image}: {reason}")]
    BadImage {
        /// The image tarball.
        image: PathBuf,
        /// What is wrong (naming the entry).
        reason: String,
    },
    /// The kernel refused to create the container's namespaces: Starling must run as root
    /// (with `CAP_SYS_ADMIN`) on a kernel with these namespaces enabled.
    #[error("cannot create the container's namespaces: {missing}")]
    NamespacesUnavailable {
        /// What is missing: root, a capability, or a namespace kind.
        missing: String,
    },
    /// A cgroup controller Starling needs is not mounted.
    #[error("the cgroup controller {controller} is not available on this host")]
    CgroupUnavailable {
        /// The controller.
        controller: String,
    },
    /// A cgroup file or directory could not be used.
    #[error("cgroup: cannot {action} {path}: {source}")]
    Cgroup {
        /// What was being done.
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The container's setup failed before its init ran (nothing is left running).
    #[error("container setup failed: {0}")]
    Setup(SetupFailure),
    /// The command could not be run in the container.
    #[error("cannot run the command in the container: {0}")]
    Exec(SetupFailure),
    /// The shim (`starling __shim`) could not be run or did not answer as expected.
    #[error("container shim {shim}: {reason}")]
    Shim {
        /// The shim executable.
        shim: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Processes of the container were still there after `SIGKILL` and a wait.
    #[error("processes of {key} did not go away after SIGKILL: {pids:?}")]
    StopTimedOut {
        /// `project/name`.
        key: String,
        /// Those left.
        pids: Vec<u32>,
    },
    /// A container's `state.json` (or its `base` file) is unreadable.
    #[error("unreadable container state {path}: {reason}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}
