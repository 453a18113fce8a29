//! Devices of profiles and instances, with LXD's rules: every device has a known `type`; a
//! `disk` at path `/` is the root disk, which names an existing storage pool, and there is at
//! most one; the other types need the keys that say what they attach. Pure functions: whether
//! a pool exists is a question the caller answers.

use std::collections::BTreeMap;

use starling_store::instances::Devices;

/// The device types LXD knows.
pub const DEVICE_TYPES: &[&str] = &[
    "none",
    "nic",
    "disk",
    "unix-char",
    "unix-block",
    "unix-hotplug",
    "usb",
    "gpu",
    "infiniband",
    "proxy",
    "tpm",
    "pci",
];

/// Whether a device is a root disk (a `disk` mounted at `/`).
pub fn is_root_disk(device: &BTreeMap<String, String>) -> bool {
    device.get("type").map(String::as_str) == Some("disk")
        && device.get("path").map(String::as_str) == Some("/")
}

/// Checks one device: its keys, its type, and the keys that type needs. `pool_exists` says
/// whether a storage pool of that name exists.
pub fn check_device(
    name: &str,
    device: &BTreeMap<String, String>,
    pool_exists: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    if let Some(key) = device
        .keys()
        .find(|key| key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(format!(
            "device \"{name}\": invalid key \"{}\" (keys are non-empty, without spaces)",
            key.escape_debug()
        ));
    }
    let Some(kind) = device.get("type") else {
        return Err(format!(
            "device \"{name}\" has no type: give type= one of {}",
            DEVICE_TYPES.join(", ")
        ));
    };
    let has = |key: &str| device.get(key).is_some_and(|value| !value.is_empty());
    let need = |keys: &[&str]| -> Result<(), String> {
        if keys.iter().any(|key| has(key)) {
            return Ok(());
        }
        Err(format!(
            "device \"{name}\" ({kind}) needs {}",
            keys.iter()
                .map(|key| format!("\"{key}\""))
                .collect::<Vec<_>>()
                .join(" or ")
        ))
    };
    match kind.as_str() {
        "disk" => check_disk(name, device, pool_exists),
        "nic" => need(&["network", "nictype"]),
        "unix-char" | "unix-block" => need(&["source", "path"]),
        "proxy" => need(&["listen"]).and_then(|()| need(&["connect"])),
        known if DEVICE_TYPES.contains(&known) => Ok(()),
        unknown => Err(format!(
            "device \"{name}\": unknown type \"{unknown}\" (types: {})",
            DEVICE_TYPES.join(", ")
        )),
    }
}

/// Checks every device, and that at most one of them is a root disk.
pub fn check_devices(devices: &Devices, pool_exists: &dyn Fn(&str) -> bool) -> Result<(), String> {
    for (name, device) in devices {
        check_device(name, device, pool_exists)?;
    }
    let roots: Vec<&str> = devices
        .iter()
        .filter(|(_, device)| is_root_disk(device))
        .map(|(name, _)| name.as_str())
        .collect();
    if roots.len() > 1 {
        return Err(format!(
            "only one root disk (a disk with path /) is allowed, found {}",
            roots.join(", ")
        ));
    }
    Ok(())
}

/// A disk: a path; at `/` (the root disk) an existing pool and no source; elsewhere a source
/// (a host path, or a volume of the pool given).
fn check_disk(
    name: &str,
    device: &BTreeMap<String, String>,
    pool_exists: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let path = device.get("path").map(String::as_str).unwrap_or_default();
    if path.is_empty() {
        return Err(format!(
            "device \"{name}\" (disk) needs \"path\": where it is mounted (/ for the root disk)"
        ));
    }
    let pool = device.get("pool").map(String::as_str).unwrap_or_default();
    if let Some(size) = device.get("size") {
        if crate::instances::config_keys::parse_byte_size(size).is_none() {
            return Err(format!(
                "device \"{name}\": invalid size \"{size}\" (expected e.g. 10GiB or a number of bytes)"
            ));
        }
    }
    if path == "/" {
        if pool.is_empty() {
            return Err(format!(
                "device \"{name}\" is a root disk (path /) and needs \"pool\": the storage pool it lives on"
            ));
        }
        if device
            .get("source")
            .is_some_and(|source| !source.is_empty())
        {
            return Err(format!(
                "device \"{name}\" is a root disk (path /) and cannot have a \"source\""
            ));
        }
    } else if device.get("source").is_none_or(|source| source.is_empty()) {
        return Err(format!(
            "device \"{name}\" (disk) needs \"source\": a host path, or a volume of its pool"
        ));
    }
    if !pool.is_empty() && !pool_exists(pool) {
        return Err(format!(
            "device \"{name}\": storage pool \"{pool}\" not found"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn only_default(pool: &str) -> bool {
        pool == "default"
    }

    #[test]
    fn every_device_needs_a_known_type() {
        let error = check_device("d", &device(&[("path", "/x")]), &only_default).unwrap_err();
        assert!(error.contains("has no type"), "{error}");
        let error = check_device("d", &device(&[("type", "floppy")]), &only_default).unwrap_err();
        assert!(error.contains("unknown type \"floppy\""), "{error}");
        for kind in ["none", "gpu", "usb", "tpm"] {
            assert!(check_device("d", &device(&[("type", kind)]), &only_default).is_ok());
        }
        let error = check_device(
            "d",
            &device(&[("type", "none"), ("a b", "c")]),
            &only_default,
        )
        .unwrap_err();
        assert!(error.contains("invalid key"), "{error}");
    }

    #[test]
    fn root_disk_rules() {
        let root = device(&[("type", "disk"), ("path", "/"), ("pool", "default")]);
        assert!(is_root_disk(&root));
        assert!(check_device("root", &root, &only_default).is_ok());
        let error = check_device(
            "root",
            &device(&[("type", "disk"), ("path", "/")]),
            &only_default,
        )
        .unwrap_err();
        assert!(error.contains("needs \"pool\""), "{error}");
        let error = check_device(
            "root",
            &device(&[("type", "disk"), ("path", "/"), ("pool", "fast")]),
            &only_default,
        )
        .unwrap_err();
        assert!(error.contains("storage pool \"fast\" not found"), "{error}");
        let error = check_device(
            "root",
            &device(&[
                ("type", "disk"),
                ("path", "/"),
                ("pool", "default"),
                ("size", "big"),
            ]),
            &only_default,
        )
        .unwrap_err();
        assert!(error.contains("invalid size \"big\""), "{error}");
        let two: Devices = [
            ("root".to_string(), root.clone()),
            ("root2".to_string(), root),
        ]
        .into_iter()
        .collect();
        let error = check_devices(&two, &only_default).unwrap_err();
        assert!(error.contains("only one root disk"), "{error}");
        assert!(error.contains("root, root2"), "{error}");
    }

    #[test]
    fn other_devices_need_what_they_attach() {
        let error = check_device(
            "data",
            &device(&[("type", "disk"), ("path", "/data")]),
            &only_default,
        )
        .unwrap_err();
        assert!(error.contains("needs \"source\""), "{error}");
        assert!(check_device(
            "data",
            &device(&[("type", "disk"), ("path", "/data"), ("source", "/srv")]),
            &only_default
        )
        .is_ok());
        let error = check_device("disk", &device(&[("type", "disk")]), &only_default).unwrap_err();
        assert!(error.contains("needs \"path\""), "{error}");
        let error = check_device("eth0", &device(&[("type", "nic")]), &only_default).unwrap_err();
        assert!(error.contains("\"network\" or \"nictype\""), "{error}");
        assert!(check_device(
            "eth0",
            &device(&[("type", "nic"), ("network", "lxdbr0"), ("name", "eth0")]),
            &only_default
        )
        .is_ok());
        let error = check_device(
            "p",
            &device(&[("type", "proxy"), ("listen", "tcp:0.0.0.0:80")]),
            &only_default,
        )
        .unwrap_err();
        assert!(error.contains("needs \"connect\""), "{error}");
        assert!(check_device(
            "tty",
            &device(&[("type", "unix-char"), ("path", "/dev/ttyS0")]),
            &only_default
        )
        .is_ok());
    }
}
