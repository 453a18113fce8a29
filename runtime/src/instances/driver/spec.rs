//! [`ContainerSpec`]: what a container is started with (init command, environment, limits).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How to start a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The container's hostname (LXD uses the instance name).
    pub hostname: String,
    /// PID 1's command line, run as is (no shell), `["/sbin/init"]` by default.
    pub init: Vec<String>,
    /// Environment of PID 1, on top of `PATH`, `TERM=linux` and `container=lxc`.
    pub env: BTreeMap<String, String>,
    /// Resource limits (`limits.*` in LXD).
    pub limits: Limits,
}

impl ContainerSpec {
    /// A container named `hostname` that boots `/sbin/init`, without limits.
    pub fn new(hostname: impl Into<String>) -> ContainerSpec {
        ContainerSpec {
            hostname: hostname.into(),
            init: vec!["/sbin/init".to_string()],
            env: BTreeMap::new(),
            limits: Limits::default(),
        }
    }
}

/// Resource limits of a container, each enforced by the kernel through its cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `limits.memory`: most memory (and, where the kernel accounts it, memory plus swap),
    /// in bytes. Past it the kernel's OOM killer kills a process of the container.
    pub memory_bytes: Option<u64>,
    /// `limits.cpu` / `limits.cpu.allowance`: CPU time or CPUs.
    pub cpus: Option<CpuLimit>,
    /// `limits.processes`: most processes (and threads) at once; `fork` fails past it.
    pub processes: Option<u64>,
}

/// A CPU limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuLimit {
    /// At most this many CPUs' worth of time (a CFS quota of `count` × the period).
    Count(u32),
    /// At most `quota_us` of CPU time in every `period_us` (LXD's `limits.cpu.allowance`
    /// as `25ms/100ms`). The kernel takes periods from 1 ms to 1 s and quotas from 1 ms.
    Allowance {
        /// CPU time allowed per period, in microseconds.
        quota_us: u64,
        /// The period, in microseconds.
        period_us: u64,
    },
    /// Only these CPUs (LXD's `limits.cpu` as `0,2-3`): a cpuset.
    Pinned(Vec<u32>),
}
