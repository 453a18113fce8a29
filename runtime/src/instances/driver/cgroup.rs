//! One container's cgroup: a directory per controller under cgroup v1, or one directory in
//! the unified hierarchy under cgroup v2, named `starling/<project>_<name>` in either.
//!
//! - [`Hierarchy`]: where this host mounts the controllers, read from `/proc/self/mountinfo`
//!   ([`Hierarchy::from_mountinfo`] is pure). v2 is used only when no v1 hierarchy holds the
//!   controllers Starling needs (a "hybrid" host mounts an empty v2 tree beside v1).
//! - [`plan_limits`]: which files get which values for a [`Limits`] (pure).
//! - [`Cgroup`]: create with limits, read usage, kill everything inside, remove. Processes join
//!   it from the shim (`cgroup.procs`), before the container's init runs.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{CpuLimit, DriverError, Limits};

/// The directory under each hierarchy's root that holds Starling's containers.
pub const PARENT_DIR: &str = "starling";
/// The CFS period used for a CPU count, in microseconds (the kernel's default).
const CFS_PERIOD_US: u64 = 100_000;
/// How long [`Cgroup::remove`] keeps trying while exiting processes still hold the cgroup.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which cgroup interface the host uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    /// One hierarchy per controller (or per group of co-mounted controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

/// A cgroup controller Starling uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Controller {
    /// Memory limit and usage.
    Memory,
    /// CPU bandwidth (CFS quota).
    Cpu,
    /// CPU usage accounting (v1; part of `cpu` in v2).
    Cpuacct,
    /// Process count limit.
    Pids,
    /// CPU pinning.
    Cpuset,
}

impl Controller {
    /// The kernel's name.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Cpuset => "cpuset",
        }
    }

    const ALL: [Controller; 5] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Pids,
        Controller::Cpuset,
    ];
}

/// Where this host mounts the cgroup controllers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: Version,
    /// The mount point holding each controller (under v2, the unified mount for all).
    mounts: BTreeMap<Controller, PathBuf>,
}

impl Hierarchy {
    /// The hierarchy of this process's mount namespace.
    pub fn detect() -> Result<Hierarchy, DriverError> {
        let text =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| DriverError::Io {
                context: "reading /proc/self/mountinfo".to_string(),
                source,
            })?;
        Hierarchy::from_mountinfo(&text).ok_or(DriverError::CgroupUnavailable {
            controller: "any (no cgroup or cgroup2 file system is mounted)".to_string(),
        })
    }

    /// The hierarchy a `/proc/<pid>/mountinfo` text describes: v1 when a v1 mount holds the
    /// memory controller, else v2 when a `cgroup2` file system is mounted.
    pub fn from_mountinfo(text: &str) -> Option<Hierarchy> {
        let mut v1 = BTreeMap::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (Some(fstype), Some(_source), Some(options)) =
                (right.next(), right.next(), right.next())
            else {
                continue;
            };
            let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
            match fstype {
                "cgroup" => {
                    for option in options.split(',') {
                        if let Some(controller) = Controller::ALL
                            .into_iter()
                            .find(|controller| controller.name() == option)
                        {
                            v1.entry(controller).or_insert_with(|| mount_point.clone());
                        }
                    }
                }
                "cgroup2" => unified = unified.or(Some(mount_point)),
                _ => {}
            }
        }
        if v1.contains_key(&Controller::Memory) {
            return Some(Hierarchy {
                version: Version::V1,
                mounts: v1,
            });
        }
        let unified = unified?;
        Some(Hierarchy {
            version: Version::V2,
            mounts: Controller::ALL
                .into_iter()
                .map(|controller| (controller, unified.clone()))
                .collect(),
        })
    }

    /// The mount point of `controller`.
    fn mount(&self, controller: Controller) -> Result<&Path, DriverError> {
        self.mounts
            .get(&controller)
            .map(PathBuf::as_path)
            .ok_or_else(|| DriverError::CgroupUnavailable {
                controller: controller.name().to_string(),
            })
    }
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        });
        match (bytes[index], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One file to write in a container's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitWrite {
    /// The controller whose directory holds the file.
    pub controller: Controller,
    /// The file name.
    pub file: &'static str,
    /// What to write.
    pub value: String,
    /// Skip the write when the kernel has no such file (swap accounting is optional).
    pub optional: bool,
}

/// The controllers a container with `limits` uses: memory, CPU and process accounting always
/// (for [`State::Running`](super::State::Running)'s usage figures), cpuset when pinned.
pub fn controllers_for(version: Version, limits: &Limits) -> Vec<Controller> {
    let mut controllers = match version {
        Version::V1 => vec![
            Controller::Memory,
            Controller::Cpu,
            Controller::Cpuacct,
            Controller::Pids,
        ],
        Version::V2 => vec![Controller::Memory, Controller::Cpu, Controller::Pids],
    };
    if matches!(limits.cpus, Some(CpuLimit::Pinned(_))) {
        controllers.push(Controller::Cpuset);
    }
    controllers
}

/// The writes that set `limits` in a fresh cgroup (whose defaults are "no limit"), in order.
/// An error says which limit the kernel would refuse, and why.
pub fn plan_limits(version: Version, limits: &Limits) -> Result<Vec<LimitWrite>, String> {
    let write = |controller, file, value: String, optional| LimitWrite {
        controller,
        file,
        value,
        optional,
    };
    let mut writes = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        if bytes < 1024 * 1024 {
            return Err(format!("limits.memory of {bytes} bytes is below 1 MiB"));
        }
        writes.extend(match version {
            // memsw (memory + swap) must stay at or above the memory limit: set memory first.
            Version::V1 => [
                write(
                    Controller::Memory,
                    "memory.limit_in_bytes",
                    bytes.to_string(),
                    false,
                ),
                write(
                    Controller::Memory,
                    "memory.memsw.limit_in_bytes",
                    bytes.to_string(),
                    true,
                ),
            ],
            Version::V2 => [
                write(Controller::Memory, "memory.max", bytes.to_string(), false),
                write(Controller::Memory, "memory.swap.max", "0".to_string(), true),
            ],
        });
    }
    if let Some(cpus) = &limits.cpus {
        writes.extend(plan_cpu(version, cpus)?);
    }
    if let Some(processes) = limits.processes {
        if processes == 0 {
            return Err("limits.processes must be at least 1".to_string());
        }
        writes.push(write(
            Controller::Pids,
            "pids.max",
            processes.to_string(),
            false,
        ));
    }
    Ok(writes)
}

/// The writes for a CPU limit.
fn plan_cpu(version: Version, cpus: &CpuLimit) -> Result<Vec<LimitWrite>, String> {
    let write = |controller, file, value: String| LimitWrite {
        controller,
        file,
        value,
        optional: false,
    };
    let (quota_us, period_us) = match cpus {
        CpuLimit::Pinned(list) => {
            if list.is_empty() {
                return Err("limits.cpu names no CPU".to_string());
            }
            let text = list
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            return Ok(vec![write(Controller::Cpuset, "cpuset.cpus", text)]);
        }
        CpuLimit::Count(0) => return Err("limits.cpu must be at least 1".to_string()),
        CpuLimit::Count(count) => (u64::from(*count) * CFS_PERIOD_US, CFS_PERIOD_US),
        CpuLimit::Allowance {
            quota_us,
            period_us,
        } => (*quota_us, *period_us),
    };
    if !(1_000..=1_000_000).contains(&period_us) || quota_us < 1_000 {
        return Err(format!(
            "a CPU allowance of {quota_us}us/{period_us}us: the period must be 1ms to 1s and \
             the quota at least 1ms"
        ));
    }
    Ok(match version {
        Version::V1 => vec![
            write(Controller::Cpu, "cpu.cfs_period_us", period_us.to_string()),
            write(Controller::Cpu, "cpu.cfs_quota_us", quota_us.to_string()),
        ],
        Version::V2 => vec![write(
            Controller::Cpu,
            "cpu.max",
            format!("{quota_us} {period_us}"),
        )],
    })
}

/// A container's cgroup: its directory under each controller it uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// v1 or v2.
    pub version: Version,
    /// The directory per controller (under v2, the same one for all).
    pub dirs: BTreeMap<Controller, PathBuf>,
}

impl Cgroup {
    /// Creates the cgroup `starling/<name>` with `limits`. A cgroup left from an earlier run is
    /// emptied and made again, so that no old limit stays.
    pub fn create(
        hierarchy: &Hierarchy,
        name: &str,
        limits: &Limits,
    ) -> Result<Cgroup, DriverError> {
        let writes = plan_limits(hierarchy.version, limits)
            .map_err(|reason| DriverError::InvalidLimit { reason })?;
        let mut dirs = BTreeMap::new();
        for controller in controllers_for(hierarchy.version, limits) {
            let dir = hierarchy.mount(controller)?.join(PARENT_DIR).join(name);
            dirs.insert(controller, dir);
        }
        let cgroup = Cgroup {
            version: hierarchy.version,
            dirs,
        };
        Cgroup::every_controller(hierarchy, name).remove()?;
        for (controller, dir) in &cgroup.dirs {
            cgroup.make_dir(hierarchy.mount(*controller)?, dir, *controller)?;
        }
        for write in writes {
            let path = cgroup.dirs[&write.controller].join(write.file);
            if write.optional && !path.exists() {
                continue;
            }
            write_file(&path, &write.value)?;
        }
        Ok(cgroup)
    }

    /// The cgroup `starling/<name>` under every controller Starling may use that the host
    /// mounts, whether or not it exists (to remove what any start may have made).
    pub fn every_controller(hierarchy: &Hierarchy, name: &str) -> Cgroup {
        Cgroup {
            version: hierarchy.version,
            dirs: hierarchy
                .mounts
                .iter()
                .map(|(controller, mount)| (*controller, mount.join(PARENT_DIR).join(name)))
                .collect(),
        }
    }

    /// Makes `dir` and its parent under `mount`, readying each level for `controller`.
    fn make_dir(
        &self,
        mount: &Path,
        dir: &Path,
        controller: Controller,
    ) -> Result<(), DriverError> {
        let parent = mount.join(PARENT_DIR);
        for level in [&parent, dir] {
            match std::fs::create_dir(level) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(cgroup_error(level, "create", source)),
            }
            match (self.version, controller) {
                // A v1 cpuset admits no process until it has CPUs and memory nodes.
                (Version::V1, Controller::Cpuset) => {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        inherit_if_empty(level, file)?;
                    }
                }
                // A v2 cgroup offers its children only the controllers it enables.
                (Version::V2, _) if *level == parent => {
                    for file_dir in [mount, parent.as_path()] {
                        enable_v2_controllers(file_dir, self.dirs.keys())?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes `0` to in order to join, one per distinct
    /// directory.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .dirs
            .values()
            .map(|dir| dir.join("cgroup.procs"))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// The directory whose `cgroup.procs` lists every process of the container.
    fn procs_dir(&self) -> &Path {
        self.dirs
            .get(&Controller::Pids)
            .or_else(|| self.dirs.values().next())
            .map_or(Path::new("/nonexistent"), PathBuf::as_path)
    }

    /// Whether the cgroup's directories are there.
    pub fn exists(&self) -> bool {
        self.dirs.values().any(|dir| dir.exists())
    }

    /// The processes in the cgroup (host PIDs); none when it is gone.
    pub fn pids(&self) -> Vec<u32> {
        let text =
            std::fs::read_to_string(self.procs_dir().join("cgroup.procs")).unwrap_or_default();
        text.lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// Memory in use, in bytes.
    pub fn memory_bytes(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        read_number(&self.dirs.get(&Controller::Memory)?.join(file))
    }

    /// CPU time used, in nanoseconds.
    pub fn cpu_ns(&self) -> Option<u64> {
        match self.version {
            Version::V1 => read_number(&self.dirs.get(&Controller::Cpuacct)?.join("cpuacct.usage")),
            Version::V2 => {
                let stat =
                    std::fs::read_to_string(self.dirs.get(&Controller::Cpu)?.join("cpu.stat"))
                        .ok()?;
                stat.lines()
                    .find_map(|line| line.strip_prefix("usage_usec "))
                    .and_then(|usec| usec.trim().parse::<u64>().ok())
                    .map(|usec| usec * 1000)
            }
        }
    }

    /// A counter of `events_file` (`pids.events`' `max`, `memory.events`' `oom_kill`, ...).
    pub fn event_count(
        &self,
        controller: Controller,
        events_file: &str,
        name: &str,
    ) -> Option<u64> {
        let text = std::fs::read_to_string(self.dirs.get(&controller)?.join(events_file)).ok()?;
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// Sends `SIGKILL` to every process in the cgroup; returns how many there were.
    pub fn kill_all(&self) -> usize {
        let kill_file = self.procs_dir().join("cgroup.kill");
        if self.version == Version::V2
            && kill_file.exists()
            && std::fs::write(&kill_file, "1").is_ok()
        {
            return self.pids().len();
        }
        let pids = self.pids();
        for pid in &pids {
            if let Ok(pid) = i32::try_from(*pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        pids.len()
    }

    /// Removes the cgroup's directories, killing what is left inside; done when none is left.
    pub fn remove(&self) -> Result<(), DriverError> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        for dir in self.dirs.values() {
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    Err(error)
                        if error.raw_os_error() == Some(libc::EBUSY)
                            && Instant::now() < deadline =>
                    {
                        self.kill_all();
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(source) => return Err(cgroup_error(dir, "remove", source)),
                }
            }
        }
        Ok(())
    }
}

/// Copies `file` from the parent directory when it is empty in `dir`.
fn inherit_if_empty(dir: &Path, file: &str) -> Result<(), DriverError> {
    let path = dir.join(file);
    let current =
        std::fs::read_to_string(&path).map_err(|source| cgroup_error(&path, "read", source))?;
    if !current.trim().is_empty() {
        return Ok(());
    }
    let parent_path = dir.parent().unwrap_or(dir).join(file);
    let inherited = std::fs::read_to_string(&parent_path)
        .map_err(|source| cgroup_error(&parent_path, "read", source))?;
    write_file(&path, inherited.trim())
}

/// Enables `controllers` for the children of the v2 cgroup `dir`.
fn enable_v2_controllers<'a>(
    dir: &Path,
    controllers: impl Iterator<Item = &'a Controller>,
) -> Result<(), DriverError> {
    let path = dir.join("cgroup.subtree_control");
    for controller in controllers {
        write_file(&path, &format!("+{}", controller.name()))?;
    }
    Ok(())
}

fn write_file(path: &Path, value: &str) -> Result<(), DriverError> {
    std::fs::write(path, value)
        .map_err(|source| cgroup_error(path, &format!("write {value:?} to"), source))
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn cgroup_error(path: &Path, action: &str, source: io::Error) -> DriverError {
    DriverError::Cgroup {
        action: action.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// Goal: v1 wins on a hybrid host (co-mounted controllers share a mount), v2 is used when
    /// only the unified hierarchy exists, and none is found on a host without cgroups.
    #[test]
    fn detects_the_hierarchy() {
        let hybrid = Hierarchy::from_mountinfo(HYBRID).unwrap();
        assert_eq!(hybrid.version, Version::V1);
        assert_eq!(
            hybrid.mount(Controller::Cpuacct).unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            hybrid.mount(Controller::Memory).unwrap(),
            Path::new("/sys/fs/cgroup/memory")
        );
        assert!(matches!(
            hybrid.mount(Controller::Cpuset),
            Err(DriverError::CgroupUnavailable { .. })
        ));
        let unified = Hierarchy::from_mountinfo(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        )
        .unwrap();
        assert_eq!(unified.version, Version::V2);
        assert_eq!(
            unified.mount(Controller::Pids).unwrap(),
            Path::new("/sys/fs/cgroup")
        );
        assert_eq!(
            Hierarchy::from_mountinfo("22 27 0:21 / /proc rw - proc proc rw\n"),
            None
        );
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
    }

    /// Goal: each limit becomes the kernel's files for each version, memory before memory +
    /// swap, the CFS period before its quota; values the kernel refuses are named.
    #[test]
    fn plans_limits() {
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(CpuLimit::Count(2)),
            processes: Some(50),
        };
        let files = |version| {
            plan_limits(version, &limits)
                .unwrap()
                .into_iter()
                .map(|write| format!("{}={}", write.file, write.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            files(Version::V1),
            [
                "memory.limit_in_bytes=67108864",
                "memory.memsw.limit_in_bytes=67108864",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=200000",
                "pids.max=50"
            ]
        );
        assert_eq!(
            files(Version::V2),
            [
                "memory.max=67108864",
                "memory.swap.max=0",
                "cpu.max=200000 100000",
                "pids.max=50"
            ]
        );
        let pinned = Limits {
            cpus: Some(CpuLimit::Pinned(vec![0, 2])),
            ..Limits::default()
        };
        assert_eq!(plan_limits(Version::V1, &pinned).unwrap()[0].value, "0,2");
        assert!(controllers_for(Version::V1, &pinned).contains(&Controller::Cpuset));
        assert!(plan_limits(Version::V1, &Limits::default())
            .unwrap()
            .is_empty());
        for bad in [
            Limits {
                memory_bytes: Some(4096),
                ..Limits::default()
            },
            Limits {
                processes: Some(0),
                ..Limits::default()
            },
            Limits {
                cpus: Some(CpuLimit::Count(0)),
                ..Limits::default()
            },
            Limits {
                cpus: Some(CpuLimit::Pinned(vec![])),
                ..Limits::default()
            },
            Limits {
                cpus: Some(CpuLimit::Allowance {
                    quota_us: 10,
                    period_us: 100_000,
                }),
                ..Limits::default()
            },
        ] {
            assert!(plan_limits(Version::V1, &bad).is_err(), "{bad:?}");
        }
    }
}
