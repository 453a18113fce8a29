//! What the container's first process does before it becomes init: join the cgroup, create
//! the namespaces, mount the container's file systems ([`plan_mounts`], pure), set the
//! hostname, bring up loopback, `pivot_root`, take the console as its terminal, drop a few
//! capabilities and exec init. Also the pieces `exec` shares: signal reset, capability drop,
//! and the `PATH` search.
//!
//! This code runs in a child the shim forked: the shim is single-threaded, so ordinary Rust
//! (allocation included) is safe here. A failure is written to the error pipe as a
//! [`SetupFailure`]; success is the pipe closing on `exec` (it is close-on-exec).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};

use super::error::{SetupFailure, SetupStep};
use super::layers::Layers;
use super::shim::StartConfig;

/// The `PATH` a container's processes get unless the caller sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities taken from the bounding set of everything in the container, as LXC does for
/// privileged containers: loading kernel modules, raw I/O, setting the clock, and the MAC
/// policy.
const DROPPED_CAPABILITIES: [(libc::c_int, &str); 5] = [
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (25, "CAP_SYS_TIME"),
    (32, "CAP_MAC_OVERRIDE"),
    (33, "CAP_MAC_ADMIN"),
];

/// Character devices of the container's `/dev`: name, major, minor (LXC's list).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// One step of building the container's file systems, before `pivot_root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountStep {
    /// Creates a directory unless it exists (a symbolic link there is an error).
    MakeDir {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Creates an empty file to bind-mount onto.
    MakeFile {
        /// The file.
        path: PathBuf,
    },
    /// `mount(2)`.
    Mount {
        /// Source (a device name, or a path for bind mounts).
        source: Option<PathBuf>,
        /// Target; never followed if it is a symbolic link.
        target: PathBuf,
        /// File system type.
        fstype: Option<&'static str>,
        /// Flags.
        flags: MsFlags,
        /// Options.
        data: Option<String>,
    },
    /// Makes `path` a read-only bind mount of itself, when the kernel has it.
    ReadOnlyBind {
        /// The file or directory.
        path: PathBuf,
    },
    /// `mknod(2)` of a character device, mode 0666.
    MakeDevice {
        /// The node.
        path: PathBuf,
        /// Major number.
        major: u64,
        /// Minor number.
        minor: u64,
    },
    /// A symbolic link.
    Symlink {
        /// What it points to.
        target: &'static str,
        /// The link.
        path: PathBuf,
    },
}

/// The file systems of a container whose root is `rootfs`, with `console` (a pseudo-terminal
/// on the host) as its `/dev/console`, in order. As LXC does: `/proc` with `/proc/sys` and
/// `/proc/sysrq-trigger` read-only, `/sys` read-only, a small `/dev` tmpfs with the usual
/// devices, its own `devpts` at `/dev/pts`, and `/dev/shm`. With `layers`, the root is an
/// overlay of the container's writable layer on its base ([`super::layers`]), mounted at
/// `rootfs` here, in the container's mount namespace only.
pub fn plan_mounts(rootfs: &Path, console: &Path, layers: Option<&Layers>) -> Vec<MountStep> {
    let at = |relative: &str| rootfs.join(relative);
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mount = |source: Option<PathBuf>, target: PathBuf, fstype, flags, data: Option<&str>| {
        MountStep::Mount {
            source,
            target,
            fstype,
            flags,
            data: data.map(str::to_string),
        }
    };
    // pivot_root needs the new root to be a mount point: the overlay is one; a flat root is
    // bound onto itself.
    let root = match layers {
        Some(layers) => MountStep::Mount {
            source: Some("overlay".into()),
            target: rootfs.to_path_buf(),
            fstype: Some("overlay"),
            flags: MsFlags::empty(),
            data: Some(layers.mount_options()),
        },
        None => mount(
            Some(rootfs.to_path_buf()),
            rootfs.to_path_buf(),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
    };
    let mut steps = vec![
        root,
        MountStep::MakeDir {
            path: at("proc"),
            mode: 0o555,
        },
        mount(Some("proc".into()), at("proc"), Some("proc"), common, None),
    ];
    steps.push(MountStep::ReadOnlyBind {
        path: at("proc/sys"),
    });
    steps.push(MountStep::ReadOnlyBind {
        path: at("proc/sysrq-trigger"),
    });
    steps.extend([
        MountStep::MakeDir {
            path: at("sys"),
            mode: 0o555,
        },
        mount(
            Some("sysfs".into()),
            at("sys"),
            Some("sysfs"),
            common | MsFlags::MS_RDONLY,
            None,
        ),
        MountStep::MakeDir {
            path: at("dev"),
            mode: 0o755,
        },
        // Device nodes live here: no MS_NODEV.
        mount(
            Some("none".into()),
            at("dev"),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=755,size=512k"),
        ),
    ]);
    for (name, major, minor) in DEVICES {
        steps.push(MountStep::MakeDevice {
            path: at("dev").join(name),
            major,
            minor,
        });
    }
    steps.extend([
        MountStep::MakeDir {
            path: at("dev/pts"),
            mode: 0o755,
        },
        mount(
            Some("devpts".into()),
            at("dev/pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        MountStep::Symlink {
            target: "pts/ptmx",
            path: at("dev/ptmx"),
        },
        MountStep::MakeDir {
            path: at("dev/shm"),
            mode: 0o1777,
        },
        mount(
            Some("shm".into()),
            at("dev/shm"),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        MountStep::Symlink {
            target: "/proc/self/fd",
            path: at("dev/fd"),
        },
        MountStep::Symlink {
            target: "/proc/self/fd/0",
            path: at("dev/stdin"),
        },
        MountStep::Symlink {
            target: "/proc/self/fd/1",
            path: at("dev/stdout"),
        },
        MountStep::Symlink {
            target: "/proc/self/fd/2",
            path: at("dev/stderr"),
        },
        MountStep::MakeFile {
            path: at("dev/console"),
        },
        mount(
            Some(console.to_path_buf()),
            at("dev/console"),
            None,
            MsFlags::MS_BIND,
            None,
        ),
    ]);
    steps
}

/// Runs in the forked child that becomes the container's init: sets the container up and
/// execs init, or reports the failed step on `errors` and exits.
pub fn become_init(
    config: &StartConfig,
    console: OwnedFd,
    console_path: &Path,
    errors: OwnedFd,
) -> ! {
    let failure = match set_up_and_exec(config, console, console_path) {
        Err(failure) => failure,
        Ok(never) => match never {},
    };
    report_failure(&errors, &failure);
    // SAFETY: _exit ends this forked child without running the parent's exit handlers.
    unsafe { libc::_exit(1) }
}

/// Writes `failure` to the pipe `errors` (best effort: the reader sees a closed pipe anyway).
pub fn report_failure(errors: &OwnedFd, failure: &SetupFailure) {
    if let Ok(bytes) = serde_json::to_vec(failure) {
        let mut written = 0;
        while written < bytes.len() {
            match nix::unistd::write(errors, &bytes[written..]) {
                Ok(0) | Err(_) => break,
                Ok(count) => written += count,
            }
        }
    }
}

fn set_up_and_exec(
    config: &StartConfig,
    console: OwnedFd,
    console_path: &Path,
) -> Result<std::convert::Infallible, SetupFailure> {
    nix::sys::stat::umask(Mode::empty());
    join_cgroup(&config.cgroup.procs_files())?;
    let namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    nix::sched::unshare(namespaces).map_err(|errno| {
        fail(
            SetupStep::CreateNamespaces,
            errno,
            "mount, UTS, IPC, network",
        )
    })?;
    super::layers::make_mounts_private()
        .map_err(|errno| fail(SetupStep::Mount, errno, "making / private"))?;
    for step in plan_mounts(&config.rootfs, console_path, config.layers.as_ref()) {
        apply(&step)?;
    }
    nix::unistd::sethostname(&config.hostname)
        .map_err(|errno| fail(SetupStep::Hostname, errno, &config.hostname))?;
    loopback_up().map_err(|errno| fail(SetupStep::Loopback, errno, "lo"))?;
    pivot_root(&config.rootfs)?;
    take_console(console)?;
    let environment: Vec<CString> = config
        .env
        .iter()
        .map(|(name, value)| c_string(&format!("{name}={value}")))
        .collect();
    prepare_exec()?;
    let argv: Vec<CString> = config.init.iter().map(|arg| c_string(arg)).collect();
    let Err(errno) = nix::unistd::execve(&argv[0], &argv, &environment);
    Err(fail(SetupStep::Exec, errno, &config.init[0]))
}

/// Moves the calling process into the cgroup (`0` names the writer).
pub fn join_cgroup(procs_files: &[PathBuf]) -> Result<(), SetupFailure> {
    for file in procs_files {
        std::fs::write(file, "0").map_err(|error| SetupFailure {
            step: SetupStep::JoinCgroup,
            errno: error.raw_os_error().unwrap_or(0),
            detail: file.display().to_string(),
        })?;
    }
    Ok(())
}

/// Carries out one step.
fn apply(step: &MountStep) -> Result<(), SetupFailure> {
    let mount_failure =
        |errno: Errno, what: &Path| fail(SetupStep::Mount, errno, &what.display().to_string());
    match step {
        MountStep::MakeDir { path, mode } => {
            refuse_symlink(path)?;
            match nix::unistd::mkdir(path, Mode::from_bits_truncate(*mode)) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(errno) => Err(mount_failure(errno, path)),
            }
        }
        MountStep::MakeFile { path } => {
            refuse_symlink(path)?;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map(drop)
                .map_err(|error| {
                    mount_failure(Errno::from_raw(error.raw_os_error().unwrap_or(0)), path)
                })
        }
        MountStep::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => {
            refuse_symlink(target)?;
            nix::mount::mount(
                source.as_deref(),
                target.as_path(),
                *fstype,
                *flags,
                data.as_deref(),
            )
            .map_err(|errno| mount_failure(errno, target))
        }
        MountStep::ReadOnlyBind { path } => {
            if !path.exists() {
                return Ok(());
            }
            refuse_symlink(path)?;
            nix::mount::mount(
                Some(path.as_path()),
                path.as_path(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|errno| mount_failure(errno, path))?;
            let read_only = MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC;
            nix::mount::mount(
                None::<&str>,
                path.as_path(),
                None::<&str>,
                read_only,
                None::<&str>,
            )
            .map_err(|errno| mount_failure(errno, path))
        }
        MountStep::MakeDevice { path, major, minor } => nix::sys::stat::mknod(
            path.as_path(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(*major, *minor),
        )
        .map_err(|errno| mount_failure(errno, path)),
        MountStep::Symlink { target, path } => {
            std::os::unix::fs::symlink(target, path).map_err(|error| {
                mount_failure(Errno::from_raw(error.raw_os_error().unwrap_or(0)), path)
            })
        }
    }
}

/// An image's symbolic link where a mount target belongs could point the mount (or a new
/// file) at the host's file system: refuse it.
fn refuse_symlink(path: &Path) -> Result<(), SetupFailure> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => Err(SetupFailure {
            step: SetupStep::Mount,
            errno: libc::ELOOP,
            detail: format!("{} is a symbolic link in the image", path.display()),
        }),
        _ => Ok(()),
    }
}

/// Brings the loopback interface of the new network namespace up.
fn loopback_up() -> Result<(), Errno> {
    // SAFETY: a plain socket(2) call; the descriptor is owned right away.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `socket` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: ifreq is plain old data, valid when zeroed.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq passed, which lives
    // across both calls.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(Errno::last());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Makes `rootfs` the root, and detaches the old root (stacked under it by pivoting onto
/// itself, as pivot_root(2) describes).
fn pivot_root(rootfs: &Path) -> Result<(), SetupFailure> {
    let detail = rootfs.display().to_string();
    nix::unistd::chdir(rootfs).map_err(|errno| fail(SetupStep::PivotRoot, errno, &detail))?;
    nix::unistd::pivot_root(".", ".")
        .map_err(|errno| fail(SetupStep::PivotRoot, errno, &detail))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH)
        .map_err(|errno| fail(SetupStep::PivotRoot, errno, "detaching the old root"))?;
    nix::unistd::chdir("/").map_err(|errno| fail(SetupStep::PivotRoot, errno, "/"))
}

/// Makes `console` init's standard input, output and error and its controlling terminal, in a
/// session of its own.
fn take_console(console: OwnedFd) -> Result<(), SetupFailure> {
    let failed = |errno| fail(SetupStep::Console, errno, "/dev/console");
    nix::unistd::setsid().map_err(failed)?;
    // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours.
    if unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(failed(Errno::last()));
    }
    nix::unistd::dup2_stdin(&console).map_err(failed)?;
    nix::unistd::dup2_stdout(&console).map_err(failed)?;
    nix::unistd::dup2_stderr(&console).map_err(failed)?;
    Ok(())
}

/// What every process started in the container needs just before `exec`: default signal
/// handling (Rust ignores `SIGPIPE`, and an ignored signal stays ignored across `exec`), no
/// blocked signal, the usual umask, and the capabilities LXC drops gone.
pub fn prepare_exec() -> Result<(), SetupFailure> {
    use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
    // SAFETY: restoring the default disposition installs no handler.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|errno| fail(SetupStep::Exec, errno, "resetting SIGPIPE"))?;
    SigSet::empty()
        .thread_set_mask()
        .map_err(|errno| fail(SetupStep::Exec, errno, "unblocking signals"))?;
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    // Starling's own processes opt out of transparent huge pages (see the `starling` binary's
    // `main`), and the opt-out is inherited: the instance's programs get the system's policy.
    // SAFETY: PR_SET_THP_DISABLE takes integers only.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) };
    for (capability, name) in DROPPED_CAPABILITIES {
        // SAFETY: PR_CAPBSET_DROP takes integers only.
        let result = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) };
        // EINVAL: a kernel that does not know this capability.
        if result < 0 && Errno::last() != Errno::EINVAL {
            return Err(fail(SetupStep::Capabilities, Errno::last(), name));
        }
    }
    Ok(())
}

/// Execs `argv` with `environment`, searching `PATH` (from `environment`) as a shell does when
/// the command has no `/`. Returns only on failure, with the most telling error.
pub fn exec_searching_path(argv: &[String], environment: &[(String, String)]) -> Errno {
    let Some(command) = argv.first() else {
        return Errno::ENOENT;
    };
    let argv: Vec<CString> = argv.iter().map(|arg| c_string(arg)).collect();
    let envp: Vec<CString> = environment
        .iter()
        .map(|(name, value)| c_string(&format!("{name}={value}")))
        .collect();
    if command.contains('/') {
        let Err(errno) = nix::unistd::execve(&argv[0], &argv, &envp);
        return errno;
    }
    let path = environment
        .iter()
        .find(|(name, _)| name == "PATH")
        .map_or(DEFAULT_PATH, |(_, value)| value.as_str());
    let mut best = Errno::ENOENT;
    for dir in path.split(':').filter(|dir| !dir.is_empty()) {
        let candidate = c_string(&format!("{dir}/{command}"));
        let Err(errno) = nix::unistd::execve(&candidate, &argv, &envp);
        match errno {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => best = Errno::EACCES,
            other => return other,
        }
    }
    best
}

/// A C string of `text`, cut at a NUL byte if it has one (callers check their input).
fn c_string(text: &str) -> CString {
    let bytes = std::ffi::OsStr::new(text).as_bytes();
    let end = bytes
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap_or_default()
}

fn fail(step: SetupStep, errno: Errno, detail: &str) -> SetupFailure {
    SetupFailure {
        step,
        errno: errno as i32,
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_targets(steps: &[MountStep]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|step| match step {
                MountStep::Mount { target, .. } => Some(target.display().to_string()),
                _ => None,
            })
            .collect()
    }

    /// Goal: the root is bind-mounted onto itself first; `/dev` comes before what lives in it;
    /// `/sys` and `/proc/sys` end read-only; `/dev` allows device nodes; the console is bound
    /// last, onto a file made for it.
    #[test]
    fn plans_the_container_file_systems() {
        let steps = plan_mounts(Path::new("/c/rootfs"), Path::new("/dev/pts/7"), None);
        let targets = mount_targets(&steps);
        assert_eq!(targets[0], "/c/rootfs");
        assert!(
            matches!(&steps[0], MountStep::Mount { source: Some(source), flags, .. }
            if source == Path::new("/c/rootfs") && flags.contains(MsFlags::MS_BIND))
        );
        let position = |target: &str| targets.iter().position(|t| t == target).unwrap();
        let step_index = |wanted: &MountStep| steps.iter().position(|step| step == wanted).unwrap();
        let proc_mount = steps
            .iter()
            .position(|step| matches!(step, MountStep::Mount { target, .. } if target == Path::new("/c/rootfs/proc")))
            .unwrap();
        assert!(
            proc_mount
                < step_index(&MountStep::ReadOnlyBind {
                    path: "/c/rootfs/proc/sys".into()
                })
        );
        assert!(position("/c/rootfs/dev") < position("/c/rootfs/dev/pts"));
        assert_eq!(targets.last().unwrap(), "/c/rootfs/dev/console");
        let flags_of = |wanted: &str| {
            steps
                .iter()
                .filter_map(|step| match step {
                    MountStep::Mount { target, flags, .. } if target == Path::new(wanted) => {
                        Some(*flags)
                    }
                    _ => None,
                })
                .next_back()
                .unwrap()
        };
        assert!(flags_of("/c/rootfs/sys").contains(MsFlags::MS_RDONLY));
        assert!(steps.contains(&MountStep::ReadOnlyBind {
            path: "/c/rootfs/proc/sys".into()
        }));
        assert!(!flags_of("/c/rootfs/dev").contains(MsFlags::MS_NODEV));
        assert!(steps.contains(&MountStep::MakeFile {
            path: "/c/rootfs/dev/console".into()
        }));
        let devices = steps
            .iter()
            .filter(|step| matches!(step, MountStep::MakeDevice { .. }));
        assert_eq!(devices.count(), DEVICES.len());
    }

    /// Goal: a layered container's root is the overlay of its layers, mounted where a flat
    /// root is bound, and the rest of the plan is the same.
    #[test]
    fn plans_a_layered_root() {
        let layers = Layers::new(Path::new("/c"), "/b/rootfs".into());
        let layered = plan_mounts(
            Path::new("/c/rootfs"),
            Path::new("/dev/pts/7"),
            Some(&layers),
        );
        let flat = plan_mounts(Path::new("/c/rootfs"), Path::new("/dev/pts/7"), None);
        assert_eq!(
            layered[0],
            MountStep::Mount {
                source: Some("overlay".into()),
                target: "/c/rootfs".into(),
                fstype: Some("overlay"),
                flags: MsFlags::empty(),
                data: Some(layers.mount_options()),
            }
        );
        assert_eq!(layered[1..], flat[1..]);
    }
}
