//! Fast cgroup migrations: the kernel's `favordynmods` mode, switched on for the host.
//!
//! Every process that joins a container's cgroup (a container's init, each `exec`) migrates
//! by a write to `cgroup.procs`, which takes the kernel's global cgroup thread-group lock for
//! writing. In its default mode that lock makes a writer wait for an RCU grace period first
//! unless another writer came a moment before: 7-19 ms measured on this project's machines
//! for the first migration after a quiet moment, 0.05 ms for the next. The `favordynmods`
//! mount option (Linux 6.0 and later) turns that off for the whole host, at the cost the
//! kernel documents: forks and exits take the lock's slower, shared path. It applies while
//! any cgroup hierarchy mounted with it exists.
//!
//! The daemon mounts a named cgroup v1 hierarchy without controllers (`name=starling-dynmods`,
//! nothing is ever placed in it) with the option, once per host, at [`MOUNT_POINT`] — unless
//! some cgroup file system is mounted with it already, or `--no-favordynmods` says not to. A
//! kernel without the option refuses the mount; the daemon then logs it and goes on.
//! [`enabled_in`] is the pure check of a mountinfo text.

use std::io;
use std::path::Path;

/// Where the daemon mounts its hierarchy.
pub const MOUNT_POINT: &str = "/run/starling/cgroup-favordynmods";
/// The hierarchy's name (`name=` mount option).
const NAME: &str = "starling-dynmods";

/// What [`favor_dynamic_modifications`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A cgroup file system mounted with `favordynmods` was there already.
    AlreadyOn,
    /// This call mounted the hierarchy at [`MOUNT_POINT`].
    Mounted,
}

/// Whether a `/proc/<pid>/mountinfo` text shows a cgroup (v1 or v2) file system mounted with
/// the `favordynmods` option.
pub fn enabled_in(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((_, right)) = line.split_once(" - ") else {
            return false;
        };
        let mut fields = right.split(' ');
        let (Some(fstype), Some(_source), Some(options)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        matches!(fstype, "cgroup" | "cgroup2")
            && options.split(',').any(|option| option == "favordynmods")
    })
}

/// Switches the host's cgroup migrations to `favordynmods` mode unless it is on already.
/// Concurrent callers (members sharing a host) mount once, serialized by a lock file beside
/// the mount point. An error says what failed; nothing is left half-done that matters.
pub fn favor_dynamic_modifications() -> io::Result<Outcome> {
    let mounted = || -> io::Result<bool> {
        Ok(enabled_in(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    };
    if mounted()? {
        return Ok(Outcome::AlreadyOn);
    }
    let mount_point = Path::new(MOUNT_POINT);
    let parent = mount_point.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(mount_point)?;
    let lock = std::fs::File::create(parent.join("cgroup-favordynmods.lock"))?;
    lock.lock()?;
    // Another member may have mounted it while this one waited.
    if mounted()? {
        return Ok(Outcome::AlreadyOn);
    }
    nix::mount::mount(
        Some("cgroup"),
        mount_point,
        Some("cgroup"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some(format!("none,name={NAME},favordynmods").as_str()),
    )?;
    Ok(Outcome::Mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the option is found on a v1 or v2 cgroup mount, only there, and only whole.
    #[test]
    fn finds_the_option_in_mountinfo() {
        let plain = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert!(!enabled_in(plain));
        assert!(enabled_in(&format!(
            "{plain}90 22 0:77 / /run/starling/cgroup-favordynmods rw,nosuid - cgroup cgroup rw,favordynmods,name=starling-dynmods\n"
        )));
        assert!(enabled_in(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n"
        ));
        // Another file system with the word, or a longer option, is not it.
        assert!(!enabled_in(
            "50 22 0:40 / /mnt rw - tmpfs tmpfs rw,favordynmods\n"
        ));
        assert!(!enabled_in(
            "51 22 0:41 / /x rw - cgroup cgroup rw,nofavordynmods\n"
        ));
        assert!(!enabled_in("not a mountinfo line\n"));
    }
}
