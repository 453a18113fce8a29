//! Configuration keys of instances, profiles and projects: the name syntax LXD accepts, and the
//! value formats of the keys whose values Starling reads (`limits.memory`, `limits.cpu`,
//! `limits.processes`, booleans). Pure functions, checked on the leader before a change is
//! proposed; an error names the key and the bad value.

/// Namespaces of instance (and profile) configuration keys, as LXD has them.
pub const INSTANCE_NAMESPACES: &[&str] = &[
    "agent",
    "boot",
    "cloud-init",
    "cluster",
    "environment",
    "image",
    "limits",
    "linux",
    "migration",
    "nvidia",
    "raw",
    "security",
    "snapshots",
    // Starling's own keys (`starling.init`).
    "starling",
    "ubuntu_pro",
    "user",
    "volatile",
];

/// Namespaces of project configuration keys, as LXD has them.
pub const PROJECT_NAMESPACES: &[&str] = &[
    "backups",
    "features",
    "images",
    "limits",
    "restricted",
    "user",
];

/// Instance keys whose value is a boolean.
const INSTANCE_BOOLEAN_KEYS: &[&str] = &[
    "boot.autostart",
    "limits.memory.enforce.swap",
    "limits.memory.swap",
    "security.devlxd",
    "security.idmap.isolated",
    "security.nesting",
    "security.privileged",
    "security.protection.delete",
    "security.protection.shift",
    "security.syscalls.intercept.mknod",
    "security.syscalls.intercept.setxattr",
];

/// Checks an instance configuration key and its value: a valid key name in one of LXD's
/// namespaces (see [`INSTANCE_NAMESPACES`]), and the value's format for the keys Starling
/// reads. `Err` says which key and value are wrong, and what is expected.
pub fn check_instance_key(key: &str, value: &str) -> Result<(), String> {
    check_key_name(key, INSTANCE_NAMESPACES)?;
    check_settable(key)?;
    match key {
        "limits.memory" => check_memory(key, value, true),
        "limits.cpu" => check_cpu(key, value),
        "limits.processes" => check_positive_integer(key, value),
        "cluster.evacuate" => crate::evacuation::plan::check_evacuate_action(value),
        super::config::INIT_KEY => super::config::init_command(value)
            .map(|_| ())
            .map_err(|error| error.to_string()),
        "boot.autostart.delay" | "boot.autostart.priority" | "boot.stop.priority" => {
            check_integer(key, value)
        }
        crate::evacuation::plan::RECREATE_KEY => check_boolean(key, value),
        _ if INSTANCE_BOOLEAN_KEYS.contains(&key) => check_boolean(key, value),
        _ => Ok(()),
    }
}

/// Refuses the instance keys only the cluster sets (the claim of a move under way), whether to
/// set or to unset them.
pub fn check_settable(key: &str) -> Result<(), String> {
    if starling_store::instances::CLUSTER_KEYS.contains(&key) {
        return Err(format!(
            "configuration key \"{key}\" records a move or delete under way: the cluster sets \
             it, not a user"
        ));
    }
    Ok(())
}

/// Checks a profile configuration key: an instance key ([`check_instance_key`]) that is not
/// `volatile.*` (those describe one instance's state, so LXD keeps them off profiles).
pub fn check_profile_key(key: &str, value: &str) -> Result<(), String> {
    if key.starts_with("volatile.") {
        return Err(format!(
            "configuration key \"{key}\" cannot be set on a profile: volatile.* keys belong to instances"
        ));
    }
    check_instance_key(key, value)
}

/// Checks a project configuration key and its value: a valid key name in one of LXD's project
/// namespaces (see [`PROJECT_NAMESPACES`]); `features.*` are booleans, `limits.memory` a size,
/// `limits.cpu`, `limits.processes` and the instance counts non-negative integers.
pub fn check_project_key(key: &str, value: &str) -> Result<(), String> {
    check_key_name(key, PROJECT_NAMESPACES)?;
    match key {
        "limits.memory" => check_memory(key, value, false),
        "limits.cpu"
        | "limits.processes"
        | "limits.instances"
        | "limits.containers"
        | "limits.virtual-machines"
        | "limits.networks" => check_count(key, value),
        _ if key.starts_with("features.") => check_boolean(key, value),
        _ => Ok(()),
    }
}

/// Checks a whole configuration map with `check` (the first bad key is reported).
pub fn check_config<'a>(
    config: impl IntoIterator<Item = (&'a String, &'a String)>,
    check: fn(&str, &str) -> Result<(), String>,
) -> Result<(), String> {
    config
        .into_iter()
        .try_for_each(|(key, value)| check(key, value))
}

/// A key name: non-empty, no spaces or control characters, dot-separated parts none of which
/// is empty, and the first of which is one of `namespaces`.
fn check_key_name(key: &str, namespaces: &[&str]) -> Result<(), String> {
    if key.is_empty() {
        return Err("a configuration key cannot be empty".to_string());
    }
    if key
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '=')
    {
        return Err(format!(
            "invalid configuration key \"{}\": no spaces, control characters or '='",
            key.escape_debug()
        ));
    }
    if key.split('.').any(str::is_empty) {
        return Err(format!(
            "invalid configuration key \"{key}\": a name is needed between dots (e.g. user.name)"
        ));
    }
    let namespace = key.split('.').next().unwrap_or_default();
    if !key.contains('.') || !namespaces.contains(&namespace) {
        return Err(format!(
            "unknown configuration key \"{key}\": keys are {}.*",
            namespaces.join(".*, ")
        ));
    }
    Ok(())
}

/// `limits.memory`: a number of bytes with an optional unit (`512MiB`, `1GB`, `2GiB`,
/// `1073741824`), or, for instances, a percentage of the host's memory (`50%`).
fn check_memory(key: &str, value: &str, percentage_allowed: bool) -> Result<(), String> {
    if let Some(percent) = value.strip_suffix('%') {
        if !percentage_allowed {
            return Err(format!(
                "invalid value \"{value}\" for {key}: a size is needed (e.g. 512MiB, 2GiB), not a percentage"
            ));
        }
        return match percent.parse::<u32>() {
            Ok(1..=100) => Ok(()),
            _ => Err(format!(
                "invalid value \"{value}\" for {key}: a percentage is 1% to 100%"
            )),
        };
    }
    match parse_byte_size(value) {
        Some(bytes) if bytes > 0 => Ok(()),
        _ => Err(format!(
            "invalid value \"{value}\" for {key}: expected a size such as 512MiB, 1GB, 2GiB or \
             a number of bytes{}",
            if percentage_allowed {
                ", or a percentage such as 50%"
            } else {
                ""
            }
        )),
    }
}

/// A size with LXD's units (`B`, `kB`..`EB`, `KiB`..`EiB`), in bytes; `None` when it is not
/// one or does not fit 64 bits.
pub fn parse_byte_size(value: &str) -> Option<u64> {
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "PB" => 1000u64.pow(5),
        "EB" => 1000u64.pow(6),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "PiB" => 1 << 50,
        "EiB" => 1 << 60,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// `limits.cpu`: a number of CPUs (`2`), or the CPUs to pin to: a range or list (`0-3`,
/// `0,2`, `0-1,4`).
fn check_cpu(key: &str, value: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "invalid value \"{value}\" for {key}: expected a number of CPUs (e.g. 2) or a set of \
             CPUs (e.g. 0-3 or 0,2)"
        )
    };
    if !value.contains(['-', ',']) {
        return match value.parse::<u32>() {
            Ok(count) if count > 0 => Ok(()),
            _ => Err(bad()),
        };
    }
    for part in value.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let is_number = |text: &str| !text.is_empty() && text.chars().all(|c| c.is_ascii_digit());
        if !is_number(first) || !is_number(last) {
            return Err(bad());
        }
        match (first.parse::<u32>(), last.parse::<u32>()) {
            (Ok(first), Ok(last)) if first <= last => {}
            _ => return Err(bad()),
        }
    }
    Ok(())
}

fn check_positive_integer(key: &str, value: &str) -> Result<(), String> {
    match value.parse::<u64>() {
        Ok(number) if number > 0 => Ok(()),
        _ => Err(format!(
            "invalid value \"{value}\" for {key}: expected a positive integer"
        )),
    }
}

fn check_count(key: &str, value: &str) -> Result<(), String> {
    value.parse::<u64>().map(|_| ()).map_err(|_| {
        format!("invalid value \"{value}\" for {key}: expected a non-negative integer")
    })
}

fn check_integer(key: &str, value: &str) -> Result<(), String> {
    value
        .parse::<i64>()
        .map(|_| ())
        .map_err(|_| format!("invalid value \"{value}\" for {key}: expected an integer"))
}

/// LXD's booleans: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
fn check_boolean(key: &str, value: &str) -> Result<(), String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "false" | "1" | "0" | "yes" | "no" | "on" | "off" => Ok(()),
        _ => Err(format!(
            "invalid value \"{value}\" for {key}: expected true or false"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_and_percentages() {
        for good in [
            "512MiB",
            "1GB",
            "2GiB",
            "1073741824",
            "50%",
            "100%",
            "1kB",
            "3TiB",
        ] {
            assert!(
                check_instance_key("limits.memory", good).is_ok(),
                "{good} should be accepted"
            );
        }
        for bad in [
            "", "lots", "1.5GiB", "12XB", "0", "0%", "101%", "-1GiB", "GiB", "1 GiB",
        ] {
            let error = check_instance_key("limits.memory", bad).unwrap_err();
            assert!(
                error.contains("limits.memory") && error.contains(&format!("\"{bad}\"")),
                "{bad}: {error}"
            );
        }
        assert_eq!(parse_byte_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_byte_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_byte_size("99999999999EiB"), None);
        // A project's memory limit is a size, never a share of one host.
        assert!(check_project_key("limits.memory", "4GiB").is_ok());
        assert!(check_project_key("limits.memory", "50%")
            .unwrap_err()
            .contains("not a percentage"));
    }

    #[test]
    fn cpu_counts_and_sets() {
        for good in ["1", "4", "0-3", "0,2", "0-1,4", "3-3"] {
            assert!(check_instance_key("limits.cpu", good).is_ok(), "{good}");
        }
        for bad in [
            "0", "", "two", "3-1", "0-", ",1", "1,,2", "-1", "1.5", "0-3,x",
        ] {
            let error = check_instance_key("limits.cpu", bad).unwrap_err();
            assert!(
                error.contains("limits.cpu") && error.contains(&format!("\"{bad}\"")),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn processes_and_booleans() {
        assert!(check_instance_key("limits.processes", "500").is_ok());
        for bad in ["0", "-5", "many", ""] {
            assert!(
                check_instance_key("limits.processes", bad)
                    .unwrap_err()
                    .contains("positive integer"),
                "{bad}"
            );
        }
        assert!(check_instance_key("security.nesting", "true").is_ok());
        assert!(check_instance_key("boot.autostart", "0").is_ok());
        assert!(check_instance_key("security.privileged", "maybe")
            .unwrap_err()
            .contains("expected true or false"));
        assert!(check_project_key("features.profiles", "yes").is_ok());
        assert!(check_project_key("limits.instances", "x").is_err());
    }

    #[test]
    fn key_names() {
        for good in [
            "user.anything",
            "user.a.b-c_d",
            "environment.PATH",
            "raw.lxc",
            "limits.memory.swap",
            "volatile.eth0.hwaddr",
            "security.nesting",
            "cloud-init.user-data",
        ] {
            assert!(check_instance_key(good, "true").is_ok(), "{good}");
        }
        // Starling's own key, which the README documents, with its format checked.
        assert!(check_instance_key("starling.init", "/sbin/quick-init").is_ok());
        assert!(check_profile_key("starling.init", "/bin/sleep 1000").is_ok());
        assert!(check_instance_key("starling.init", "sbin/init")
            .unwrap_err()
            .contains("starling.init"));
        assert!(check_instance_key("cluster.evacuate", "stop").is_ok());
        assert!(check_instance_key("cluster.evacuate", "fly").is_err());
        for bad in [
            "",
            "user. x",
            "user.",
            ".user",
            "user..x",
            "a=b",
            "nokey",
            "bogus.key",
        ] {
            assert!(
                check_instance_key(bad, "x").is_err(),
                "{bad:?} should be refused"
            );
        }
        let error = check_instance_key("bogus.key", "x").unwrap_err();
        assert!(
            error.contains("unknown configuration key \"bogus.key\""),
            "{error}"
        );
        let error = check_profile_key("volatile.eth0.hwaddr", "x").unwrap_err();
        assert!(error.contains("cannot be set on a profile"), "{error}");
        let error = check_instance_key("volatile.move.id", "x").unwrap_err();
        assert!(
            error.contains("records a move or delete under way"),
            "{error}"
        );
        assert!(check_settable("volatile.move.id").is_err());
        assert!(check_settable("volatile.deleting").is_err());
        assert!(check_settable("volatile.uuid").is_ok());
        assert!(check_project_key("restricted", "x").is_err());
        assert!(check_project_key("restricted.containers.nesting", "allow").is_ok());
        assert!(check_project_key("security.nesting", "true").is_err());
    }
}
