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
    let memory = |key: &str| -> u64 {
        meminfo
            .lines()
            .find(|line| line.starts_with(key))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
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

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}
