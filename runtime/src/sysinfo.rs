//! A member's live state, read from `/proc` (Linux); zeros where it cannot be read.

use serde_json::{json, Value};

/// The state `cluster.member_state()` returns (LXD's `sysinfo` fields).
pub(crate) fn local_state(name: &str) -> Value {
    let uptime_s = read("/proc/uptime")
        .and_then(|text| {
            text.split_whitespace()
                .next()
                .and_then(|first| first.parse::<f64>().ok())
        })
        .unwrap_or_default() as u64;
    let load_averages: Vec<f64> = read("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .filter_map(|field| field.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    let memory = |key: &str| meminfo_bytes(&meminfo, key);
    let processes = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .chars()
                        .all(|c| c.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or_default();
    json!({
        "server_name": name,
        "sysinfo": {
            "uptime": uptime_s,
            "load_averages": load_averages,
            "total_ram": memory("MemTotal:"),
            "free_ram": memory("MemFree:"),
            "shared_ram": memory("Shmem:"),
            "buffered_ram": memory("Buffers:"),
            "total_swap": memory("SwapTotal:"),
            "free_swap": memory("SwapFree:"),
            "processes": processes,
            "logical_cpus": std::thread::available_parallelism().map(|cpus| cpus.get()).unwrap_or(1),
        },
    })
}

/// The member's hardware as LXD's `resources` reports it (the fields placement scriptlets
/// read): CPU, memory, and the storage under `data_dir`.
pub(crate) fn local_resources(data_dir: &std::path::Path) -> Value {
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    let memory = |key: &str| meminfo_bytes(&meminfo, key);
    let total = memory("MemTotal:");
    let available = memory("MemAvailable:");
    let cpus = std::thread::available_parallelism()
        .map(|cpus| cpus.get())
        .unwrap_or(1);
    let (disk_total, disk_free) = disk_space(data_dir);
    json!({
        "cpu": {
            "architecture": std::env::consts::ARCH,
            "sockets": [{"socket": 0, "cores": cpus}],
            "total": cpus,
        },
        "memory": {
            "used": total.saturating_sub(available),
            "total": total,
        },
        "storage": {
            "disks": [],
            "total": disk_total,
            "free": disk_free,
        },
        "gpu": {"cards": [], "total": 0},
        "network": {"cards": [], "total": 0},
        "system": {"type": "physical"},
    })
}

/// Total and free bytes of the file system holding `path`.
fn disk_space(path: &std::path::Path) -> (u64, u64) {
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return (0, 0);
    };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return (0, 0);
    }
    let block = stat.f_frsize as u64;
    (stat.f_blocks as u64 * block, stat.f_bavail as u64 * block)
}

/// The machine's memory in bytes (`MemTotal`); 0 when it cannot be read.
pub(crate) fn memory_total_bytes() -> u64 {
    meminfo_bytes(&read("/proc/meminfo").unwrap_or_default(), "MemTotal:")
}

/// A `/proc/meminfo` line's figure (`MemTotal:`, ...) in bytes; 0 when absent.
fn meminfo_bytes(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find(|line| line.starts_with(key))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}
