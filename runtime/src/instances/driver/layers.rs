//! Layered root file systems: an image is unpacked once per member, as a *base*
//! (`<pool>/bases/<fingerprint>/rootfs`), and every container made from it gets its own
//! writable layer on top (overlayfs: `upper/` and `work/` in the container's directory, made
//! at its first start or read, and a `base` file naming the base). A create then makes a
//! directory, a file and a mount point instead of writing the image's files once more, which
//! is what LXD's copy-on-write storage drivers (ZFS, btrfs, LVM thin) give it: a create in
//! constant time, and one copy of the image's files on disk.
//!
//! The overlay is mounted in the container's own mount namespace as the root of its file
//! systems ([`super::setup::plan_mounts`]), so the host never sees it and nothing is left
//! mounted when the container ends, however it ends. To read the whole tree of a stopped
//! container (a move packs it), [`in_private_mounts`] mounts a read-only view in a mount
//! namespace of a thread of its own, which goes with the thread.
//!
//! A container received from another member (a move) is *flat*: its `rootfs/` holds its files.
//! A container is layered exactly when its directory has a `base` file. `rootfs/` exists in
//! both (empty for a layered container: its mount point), and is made last, so its presence
//! still means a container whose files are all here.
//!
//! A base lives while a container names it, and on a member also while the member holds its
//! image ([`super::Driver::keeping_bases_of`], as LXD keeps an image's volume): a delete (or a
//! failed create) removes the base its container named once no other container names it and
//! its image is not held; the member's watcher removes the bases of images deleted since
//! ([`super::Driver::collect_unheld_bases`]).
//! Making and collecting a base hold its lock file (`<pool>/bases/<fingerprint>.lock`), so a
//! base is never removed between being found and being named.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

/// The file in a container's directory naming the base it is layered on.
pub const BASE_FILE: &str = "base";
/// The container's writable layer.
pub const UPPER_DIR: &str = "upper";
/// Overlayfs's work directory (same file system as the upper layer, empty when unmounted).
pub const WORK_DIR: &str = "work";
/// The directory of the bases, under the pool.
pub const BASES_DIR: &str = "bases";

/// The layers of a container's root file system.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layers {
    /// The base: the image's files, shared, never written.
    pub lower: PathBuf,
    /// The container's writable layer.
    pub upper: PathBuf,
    /// Overlayfs's work directory.
    pub work: PathBuf,
}

impl Layers {
    /// The layers of the container in `container_dir` on the base at `base_rootfs`.
    pub fn new(container_dir: &Path, base_rootfs: PathBuf) -> Layers {
        Layers {
            lower: base_rootfs,
            upper: container_dir.join(UPPER_DIR),
            work: container_dir.join(WORK_DIR),
        }
    }

    /// The options of the writable overlay a running container has as its root.
    pub fn mount_options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }

    /// The options of a read-only view of the whole tree: both layers as lower layers
    /// (overlayfs honours the writable layer's whiteouts there as well), so nothing is written.
    pub fn view_options(&self) -> String {
        format!("lowerdir={}:{}", self.upper.display(), self.lower.display())
    }

    /// Whether overlayfs can be given these paths: its options are split at `,` and lower
    /// layers at `:`, and `\` escapes, so a path holding one of them is refused (the container
    /// is then made flat).
    pub fn paths_usable(&self) -> bool {
        [&self.lower, &self.upper, &self.work]
            .iter()
            .all(|path| path.to_str().is_some_and(option_safe))
    }
}

/// Whether `text` can stand in an overlayfs option unescaped.
fn option_safe(text: &str) -> bool {
    !text.contains([',', ':', '\\']) && !text.is_empty()
}

/// Whether `name` can name a base: an image fingerprint (lowercase hexadecimal, 1 to 64).
pub fn base_name_valid(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Runs `work` on a thread of its own, in a new mount namespace whose mounts propagate
/// nowhere: whatever `work` mounts is gone when it returns, even if it panics or forgets to
/// unmount, and no other thread or process sees it. Needs `CAP_SYS_ADMIN`.
pub fn in_private_mounts<T: Send>(
    work: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // A thread may leave the process's mount namespace (unsharing CLONE_NEWNS
                // unshares CLONE_FS too); the namespace ends with the thread.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                make_mounts_private()?;
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("a private mount thread panicked")))
    })
}

/// Makes every mount of the calling thread's (new) mount namespace private: nothing mounted
/// in it from now on propagates to the namespace it was copied from.
pub fn make_mounts_private() -> nix::Result<()> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// Mounts a read-only view of both layers at `target` (in the calling thread's mount
/// namespace: call it inside [`in_private_mounts`]).
pub fn mount_view(layers: &Layers, target: &Path) -> std::io::Result<()> {
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(layers.view_options().as_str()),
    )?;
    Ok(())
}

/// Whether overlayfs works on the file system under `dir` as this process uses it: a
/// writable overlay is mounted (privately) on layers made there, a file written through it
/// must land in the upper layer, and everything made is removed again.
pub fn probe(dir: &Path) -> bool {
    let root = dir.join(format!(".probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let tried = (|| -> std::io::Result<bool> {
        let layers = Layers {
            lower: root.join("lower"),
            upper: root.join(UPPER_DIR),
            work: root.join(WORK_DIR),
        };
        let merged = root.join("merged");
        for made in [&layers.lower, &layers.upper, &layers.work, &merged] {
            std::fs::create_dir_all(made)?;
        }
        if !layers.paths_usable() {
            return Ok(false);
        }
        in_private_mounts(|| {
            nix::mount::mount(
                Some("overlay"),
                merged.as_path(),
                Some("overlay"),
                MsFlags::empty(),
                Some(layers.mount_options().as_str()),
            )?;
            std::fs::write(merged.join("written"), b"probe")?;
            Ok(())
        })?;
        Ok(layers.upper.join("written").is_file())
    })();
    let _ = std::fs::remove_dir_all(&root);
    match tried {
        Ok(usable) => usable,
        Err(error) => {
            tracing::info!(dir = %dir.display(), %error, "overlayfs is not usable here: containers get flat root file systems");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: overlayfs gets options it parses as meant, and paths it would split are refused.
    #[test]
    fn options_and_usable_paths() {
        let layers = Layers::new(
            Path::new("/p/containers/a_b"),
            "/p/bases/ab12/rootfs".into(),
        );
        assert_eq!(
            layers.mount_options(),
            "lowerdir=/p/bases/ab12/rootfs,upperdir=/p/containers/a_b/upper,workdir=/p/containers/a_b/work"
        );
        assert_eq!(
            layers.view_options(),
            "lowerdir=/p/containers/a_b/upper:/p/bases/ab12/rootfs"
        );
        assert!(layers.paths_usable());
        for bad in ["/p,q", "/p:q", "/p\\q"] {
            let layers = Layers::new(Path::new(bad), "/b".into());
            assert!(!layers.paths_usable(), "{bad}");
        }
        assert!(base_name_valid("0123abcdef"));
        assert!(!base_name_valid(""));
        assert!(!base_name_valid("../x"));
        assert!(!base_name_valid("ABCDEF"));
        assert!(!base_name_valid(&"a".repeat(65)));
    }
}
