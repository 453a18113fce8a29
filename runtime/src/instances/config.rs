//! An instance's expanded configuration read as what its container is started with: LXD's
//! `limits.*` keys and Starling's `starling.init`, and the devices `-d root,size=...` changes.
//! IO-free: the caller passes the host's memory for `limits.memory` percentages.

use std::collections::BTreeMap;

use starling_store::instances::Devices;

use super::driver::{ContainerSpec, CpuLimit, Limits};

/// The command that runs as the container's PID 1, instead of `/sbin/init`: an absolute path
/// and its arguments, separated by spaces (Starling's key; LXD always runs `/sbin/init`).
pub const INIT_KEY: &str = "starling.init";
/// Set on an instance that was running when its member shut down cleanly: the member starts it
/// again when it is back (LXD's key).
pub const LAST_POWER_KEY: &str = "volatile.last_state.power";
/// The image an instance was created from (LXD's key).
pub const BASE_IMAGE_KEY: &str = "volatile.base_image";
/// Image properties copied into an instance's config as `image.<property>`.
pub const IMAGE_PROPERTIES: &[&str] = &["os", "release", "description", "architecture"];

/// The CFS period an allowance given as a percentage is measured over.
const ALLOWANCE_PERIOD_US: u64 = 100_000;

/// A key whose value cannot be used, and why (the message names the key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid value \"{value}\" for {key}: {reason}")]
pub struct ConfigError {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// What is wrong, and what is expected.
    pub reason: String,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// How to start instance `name`'s container from its expanded config. `memory_total_bytes` is
/// the host's memory, for a `limits.memory` given as a percentage.
pub fn container_spec(
    name: &str,
    config: &BTreeMap<String, String>,
    memory_total_bytes: u64,
) -> Result<ContainerSpec, ConfigError> {
    let mut spec = ContainerSpec::new(name);
    spec.limits = limits(config, memory_total_bytes)?;
    if let Some(init) = config.get(INIT_KEY) {
        spec.init = init_command(init)?;
    }
    for (key, value) in config {
        if let Some(variable) = key.strip_prefix("environment.") {
            if variable.is_empty() || variable.contains('=') || value.contains('\0') {
                return Err(invalid(key, value, "not a usable environment variable"));
            }
            spec.env.insert(variable.to_string(), value.clone());
        }
    }
    Ok(spec)
}

/// Checks the keys this module reads, as `instances.set` and a create must before they are
/// recorded.
pub fn check(config: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    container_spec("check", config, u64::MAX / 2).map(|_| ())
}

/// `limits.memory`, `limits.cpu`, `limits.cpu.allowance`, `limits.processes`.
fn limits(
    config: &BTreeMap<String, String>,
    memory_total_bytes: u64,
) -> Result<Limits, ConfigError> {
    let value = |key: &str| {
        config
            .get(key)
            .map(|value| value.trim())
            .filter(|v| !v.is_empty())
    };
    let memory_bytes = value("limits.memory")
        .map(|text| memory(text, memory_total_bytes))
        .transpose()?;
    let count_or_set = value("limits.cpu").map(cpu).transpose()?;
    let allowance = value("limits.cpu.allowance")
        .map(|text| allowance(text, &count_or_set))
        .transpose()?;
    let cpus = match (count_or_set, allowance) {
        (Some(CpuLimit::Pinned(_)), Some(_)) => {
            return Err(invalid(
                "limits.cpu.allowance",
                value("limits.cpu.allowance").unwrap_or_default(),
                "Starling does not combine an allowance with CPUs pinned by limits.cpu yet: \
                 unset one of them",
            ))
        }
        (_, Some(allowance)) => Some(allowance),
        (count_or_set, None) => count_or_set,
    };
    let processes = value("limits.processes")
        .map(|text| match text.parse::<u64>() {
            Ok(count) if count > 0 => Ok(count),
            _ => Err(invalid(
                "limits.processes",
                text,
                "a whole number of processes, at least 1, is expected",
            )),
        })
        .transpose()?;
    Ok(Limits {
        memory_bytes,
        cpus,
        processes,
    })
}

/// `limits.memory`: a byte size (`256MiB`, `1GB`, `1073741824`) or a percentage of the host's.
fn memory(text: &str, memory_total_bytes: u64) -> Result<u64, ConfigError> {
    let bytes = match text.strip_suffix('%') {
        Some(percent) => match percent.trim().parse::<f64>() {
            Ok(percent) if percent > 0.0 && percent <= 100.0 => {
                (memory_total_bytes as f64 * percent / 100.0) as u64
            }
            _ => {
                return Err(invalid(
                    "limits.memory",
                    text,
                    "a percentage must be above 0% and at most 100%",
                ))
            }
        },
        None => super::config_keys::parse_byte_size(text).ok_or_else(|| {
            invalid(
                "limits.memory",
                text,
                "a size such as 256MiB, 1GB or 1073741824 (bytes), or a percentage, is expected",
            )
        })?,
    };
    if bytes < 1 << 20 {
        return Err(invalid("limits.memory", text, "the least is 1MiB"));
    }
    Ok(bytes)
}

/// `limits.cpu`: a count (`2`: that many CPUs' worth of time), or CPUs to pin to as LXD takes
/// them (`0-1,3`, and `1-1` or `3,` for one CPU).
fn cpu(text: &str) -> Result<CpuLimit, ConfigError> {
    let bad = |reason: &str| invalid("limits.cpu", text, reason);
    if !text.contains(['-', ',']) {
        return match text.parse::<u32>() {
            Ok(count) if count > 0 => Ok(CpuLimit::Count(count)),
            _ => Err(bad(
                "a number of CPUs (at least 1), or CPUs to pin to such as 0-1,3",
            )),
        };
    }
    let mut cpus = std::collections::BTreeSet::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first.trim().parse::<u32>(), last.trim().parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        match (first, last) {
            (Ok(first), Ok(last)) if first <= last && last < 4096 => cpus.extend(first..=last),
            _ => return Err(bad("CPUs are numbers and ranges such as 0-1,3")),
        }
    }
    if cpus.is_empty() {
        return Err(bad("no CPU named"));
    }
    Ok(CpuLimit::Pinned(cpus.into_iter().collect()))
}

/// `limits.cpu.allowance`: `25ms/100ms` (a hard quota per period), or `50%`, which Starling
/// enforces as a hard quota of that share of the CPUs `limits.cpu` counts (one when unset).
fn allowance(text: &str, cpus: &Option<CpuLimit>) -> Result<CpuLimit, ConfigError> {
    let bad = |reason: &str| invalid("limits.cpu.allowance", text, reason);
    let expected = "a percentage such as 50% or a quota per period such as 25ms/100ms";
    if let Some(percent) = text.strip_suffix('%') {
        let percent: u64 = percent.trim().parse().map_err(|_| bad(expected))?;
        if percent == 0 || percent > 100 {
            return Err(bad("a percentage from 1% to 100%"));
        }
        let count = match cpus {
            Some(CpuLimit::Count(count)) => u64::from(*count),
            _ => 1,
        };
        return Ok(CpuLimit::Allowance {
            quota_us: ALLOWANCE_PERIOD_US * count * percent / 100,
            period_us: ALLOWANCE_PERIOD_US,
        });
    }
    let (quota, period) = text.split_once('/').ok_or_else(|| bad(expected))?;
    let quota_us = milliseconds(quota).ok_or_else(|| bad(expected))? * 1000;
    let period_us = milliseconds(period).ok_or_else(|| bad(expected))? * 1000;
    if !(1_000..=1_000_000).contains(&period_us) || quota_us < 1_000 {
        return Err(bad(
            "the period must be 1ms to 1000ms and the quota at least 1ms",
        ));
    }
    Ok(CpuLimit::Allowance {
        quota_us,
        period_us,
    })
}

/// `25ms` → 25.
fn milliseconds(text: &str) -> Option<u64> {
    text.trim().strip_suffix("ms")?.trim().parse().ok()
}

/// `starling.init`: an absolute path, then arguments, separated by spaces.
pub(crate) fn init_command(text: &str) -> Result<Vec<String>, ConfigError> {
    let argv: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    match argv.first() {
        Some(first) if first.starts_with('/') && !text.contains('\0') => Ok(argv),
        _ => Err(invalid(
            INIT_KEY,
            text,
            "an absolute path to run as PID 1, then its arguments, is expected",
        )),
    }
}

/// The instance's own devices once `given` is applied: a device given without `type` changes
/// keys of the profile device of that name (`-d root,size=200MiB`: the profile's root disk,
/// copied into the instance with its size set), as `lxc launch -d` does; a device with `type`
/// is taken as it is. A key-only device no profile has is refused.
pub fn device_overrides(profile_devices: &Devices, given: &Devices) -> Result<Devices, String> {
    let mut devices = Devices::new();
    for (name, keys) in given {
        if keys.contains_key("type") {
            devices.insert(name.clone(), keys.clone());
            continue;
        }
        let Some(base) = profile_devices.get(name) else {
            return Err(format!(
                "device \"{name}\" has no type and no profile of the instance has a device of \
                 that name to change"
            ));
        };
        let mut device = base.clone();
        device.extend(keys.clone());
        devices.insert(name.clone(), device);
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn spec(pairs: &[(&str, &str)]) -> Result<ContainerSpec, ConfigError> {
        container_spec("c1", &config(pairs), 8 << 30)
    }

    /// Goal: LXD's spellings of each limit become the driver's limits.
    #[test]
    fn reads_limits() {
        let limits = spec(&[
            ("limits.memory", "256MiB"),
            ("limits.cpu", "2"),
            ("limits.processes", "100"),
        ])
        .unwrap()
        .limits;
        assert_eq!(limits.memory_bytes, Some(256 << 20));
        assert_eq!(limits.cpus, Some(CpuLimit::Count(2)));
        assert_eq!(limits.processes, Some(100));
        assert_eq!(
            spec(&[("limits.memory", "1GB")])
                .unwrap()
                .limits
                .memory_bytes,
            Some(1_000_000_000)
        );
        assert_eq!(
            spec(&[("limits.memory", "50%")])
                .unwrap()
                .limits
                .memory_bytes,
            Some(4 << 30)
        );
        assert_eq!(
            spec(&[("limits.cpu", "0-1,3")]).unwrap().limits.cpus,
            Some(CpuLimit::Pinned(vec![0, 1, 3]))
        );
        assert_eq!(
            spec(&[("limits.cpu", "1-1")]).unwrap().limits.cpus,
            Some(CpuLimit::Pinned(vec![1]))
        );
        assert_eq!(
            spec(&[("limits.cpu.allowance", "25ms/100ms")])
                .unwrap()
                .limits
                .cpus,
            Some(CpuLimit::Allowance {
                quota_us: 25_000,
                period_us: 100_000
            })
        );
        assert_eq!(
            spec(&[("limits.cpu", "2"), ("limits.cpu.allowance", "50%")])
                .unwrap()
                .limits
                .cpus,
            Some(CpuLimit::Allowance {
                quota_us: 100_000,
                period_us: 100_000
            })
        );
        assert_eq!(spec(&[]).unwrap().limits, Limits::default());
    }

    /// Goal: a bad value is refused with an error that names the key and what is expected.
    #[test]
    fn refuses_bad_values_naming_the_key() {
        for (key, value) in [
            ("limits.memory", "lots"),
            ("limits.memory", "12XB"),
            ("limits.memory", "100"),
            ("limits.memory", "0%"),
            ("limits.cpu", "0"),
            ("limits.cpu", "two"),
            ("limits.cpu", "3-1"),
            ("limits.cpu.allowance", "150%"),
            ("limits.cpu.allowance", "25/100"),
            ("limits.cpu.allowance", "0ms/100ms"),
            ("limits.processes", "0"),
            ("limits.processes", "-1"),
            (INIT_KEY, "sbin/init"),
            ("environment.", "x"),
        ] {
            let error = spec(&[(key, value)]).unwrap_err();
            assert_eq!(error.key, key, "{value}");
            assert!(error.to_string().contains(key), "{error}");
        }
        let error = spec(&[("limits.cpu", "0-1"), ("limits.cpu.allowance", "50%")]).unwrap_err();
        assert_eq!(error.key, "limits.cpu.allowance");
    }

    /// Goal: `starling.init` replaces `/sbin/init`; `environment.*` reaches init.
    #[test]
    fn init_and_environment() {
        let spec = spec(&[
            (INIT_KEY, "/bin/sleep 1000"),
            ("environment.GREETING", "hello"),
        ])
        .unwrap();
        assert_eq!(spec.init, ["/bin/sleep", "1000"]);
        assert_eq!(spec.env["GREETING"], "hello");
        assert_eq!(spec.hostname, "c1");
    }

    /// Goal: `-d root,size=200MiB` copies the profile's root disk and sets its size; a typed
    /// device is taken whole; a key-only device no profile has is refused.
    #[test]
    fn device_overrides_change_profile_devices() {
        let profile: Devices = BTreeMap::from([(
            "root".to_string(),
            config(&[("type", "disk"), ("path", "/"), ("pool", "default")]),
        )]);
        let given: Devices = BTreeMap::from([
            ("root".to_string(), config(&[("size", "200MiB")])),
            (
                "data".to_string(),
                config(&[("type", "disk"), ("path", "/d")]),
            ),
        ]);
        let devices = device_overrides(&profile, &given).unwrap();
        assert_eq!(devices["root"]["size"], "200MiB");
        assert_eq!(devices["root"]["pool"], "default");
        assert_eq!(devices["data"]["path"], "/d");
        let unknown: Devices = BTreeMap::from([("eth0".to_string(), config(&[("name", "eth1")]))]);
        assert!(device_overrides(&profile, &unknown)
            .unwrap_err()
            .contains("eth0"));
    }
}
