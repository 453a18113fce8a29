//! Unpacking an image's `rootfs/` into a container's directory: into a staging directory
//! first, renamed into place once complete, so that a crash never leaves half a root file
//! system where a whole one is expected.
//!
//! Entries that would land outside the root file system are refused with the image: absolute
//! paths and `..` here ([`place_of`]), writes through a symbolic link by the `tar` crate's
//! `unpack_in`, which checks each entry's canonical parent. Device nodes are skipped (the
//! container's `/dev` is a `tmpfs` made at start); modes, ownership (when run as root) and
//! symbolic links are kept.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::images::format::{open_tar_stream, FormatError};

use super::DriverError;

/// The staging directory's name inside the container's directory.
const STAGING_DIR: &str = ".unpack";

/// Where an image entry belongs.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryPlace {
    /// Under `rootfs/`: unpacked.
    RootFs,
    /// `metadata.yaml`, `templates/`, ...: not part of the root file system, skipped.
    Other,
    /// A path that points outside the image: the image is refused.
    Refused(&'static str),
}

/// Where the entry at `path` belongs (pure).
pub fn place_of(path: &Path) -> EntryPlace {
    let mut first = None;
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return EntryPlace::Refused("an absolute path")
            }
            Component::ParentDir => return EntryPlace::Refused("a '..' component"),
            Component::CurDir => {}
            Component::Normal(name) => {
                first.get_or_insert(name);
            }
        }
    }
    match first {
        Some(name) if name == "rootfs" => EntryPlace::RootFs,
        _ => EntryPlace::Other,
    }
}

/// Unpacks `image`'s `rootfs/` into `container_dir/rootfs`, which must not exist yet.
pub fn unpack_rootfs(image: &Path, container_dir: &Path) -> Result<(), DriverError> {
    let bad_image = |reason: String| DriverError::BadImage {
        image: image.to_path_buf(),
        reason,
    };
    let staging = container_dir.join(STAGING_DIR);
    remove_if_present(&staging)?;
    std::fs::create_dir_all(&staging).map_err(|source| io_error(&staging, "creating", source))?;
    let result = unpack_into(image, &staging).and_then(|()| {
        let unpacked = staging.join("rootfs");
        if !unpacked.is_dir() {
            return Err(bad_image("it has no rootfs/ directory".to_string()));
        }
        let rootfs = container_dir.join("rootfs");
        std::fs::rename(&unpacked, &rootfs)
            .map_err(|source| io_error(&rootfs, "renaming into", source))
    });
    remove_if_present(&staging)?;
    result
}

/// Unpacks the root file system entries of `image` under `staging`.
fn unpack_into(image: &Path, staging: &Path) -> Result<(), DriverError> {
    let bad_image = |reason: String| DriverError::BadImage {
        image: image.to_path_buf(),
        reason,
    };
    let stream = open_tar_stream(image).map_err(|error| match error {
        FormatError::Io(source) => io_error(image, "reading", source),
        other => bad_image(other.to_string()),
    })?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|error| bad_image(format!("not a tarball: {error}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| bad_image(format!("unreadable entry: {error}")))?;
        let path = entry
            .path()
            .map_err(|error| bad_image(format!("an entry has an unreadable path: {error}")))?
            .into_owned();
        match place_of(&path) {
            EntryPlace::Refused(why) => {
                return Err(bad_image(format!(
                    "entry {} has {why}: it would land outside the root file system",
                    path.display()
                )))
            }
            EntryPlace::Other => continue,
            EntryPlace::RootFs => {}
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            continue;
        }
        match entry.unpack_in(staging) {
            Ok(true) => {}
            Ok(false) => {
                return Err(bad_image(format!(
                    "entry {} would land outside the root file system",
                    path.display()
                )))
            }
            // The tar crate reports entries that escape (through a symbolic link, or a hard
            // link to outside) as `Other`; anything else is the disk's or the stream's fault.
            Err(error) if is_image_fault(&error) => {
                return Err(bad_image(format!(
                    "entry {}: {}",
                    path.display(),
                    with_causes(&error)
                )))
            }
            Err(source) => return Err(io_error(&path, "unpacking entry", source)),
        }
    }
    Ok(())
}

/// An error and its causes, as one line (the tar crate puts the system's error in a cause).
fn with_causes(error: &io::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

/// Whether an unpacking error is the image's fault rather than the disk's.
fn is_image_fault(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::Other
            | io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::UnexpectedEof
    )
}

fn remove_if_present(path: &Path) -> Result<(), DriverError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error(path, "removing", source)),
    }
}

fn io_error(path: &Path, action: &str, source: io::Error) -> DriverError {
    DriverError::Io {
        context: format!("{action} {}", PathBuf::from(path).display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: only `rootfs/` entries are unpacked; absolute paths and `..` are refused.
    #[test]
    fn places_entries() {
        assert_eq!(place_of(Path::new("rootfs/bin/sh")), EntryPlace::RootFs);
        assert_eq!(place_of(Path::new("./rootfs/")), EntryPlace::RootFs);
        assert_eq!(place_of(Path::new("metadata.yaml")), EntryPlace::Other);
        assert_eq!(
            place_of(Path::new("templates/hosts.tpl")),
            EntryPlace::Other
        );
        assert!(matches!(
            place_of(Path::new("/etc/passwd")),
            EntryPlace::Refused(_)
        ));
        assert!(matches!(
            place_of(Path::new("rootfs/../../x")),
            EntryPlace::Refused(_)
        ));
    }

    fn tarball(dir: &Path, entries: &[(&str, tar::EntryType, &str)]) -> PathBuf {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mode(if kind.is_dir() { 0o755 } else { 0o640 });
            if kind.is_symlink() || kind.is_hard_link() {
                header.set_size(0);
                builder.append_link(&mut header, name, content).unwrap();
            } else {
                header.set_size(content.len() as u64);
                // `append_data` refuses `..`; write such names into the header directly.
                let bytes = name.as_bytes();
                header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
                header.set_cksum();
                builder.append(&header, content.as_bytes()).unwrap();
            }
        }
        let path = dir.join("image.tar");
        std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
        path
    }

    /// Goal: a good image lands in `rootfs/` with modes and links kept and no staging left;
    /// each kind of escape is refused with the entry named, and leaves nothing behind.
    #[test]
    fn unpacks_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let good = tarball(
            dir.path(),
            &[
                (
                    "metadata.yaml",
                    tar::EntryType::Regular,
                    "architecture: x86_64\n",
                ),
                ("rootfs/", tar::EntryType::Directory, ""),
                ("rootfs/bin/", tar::EntryType::Directory, ""),
                ("rootfs/bin/tool", tar::EntryType::Regular, "#!/bin/sh\n"),
                ("rootfs/bin/sh", tar::EntryType::Symlink, "tool"),
                ("rootfs/bin/again", tar::EntryType::Link, "rootfs/bin/tool"),
            ],
        );
        let container = dir.path().join("c");
        std::fs::create_dir(&container).unwrap();
        unpack_rootfs(&good, &container).unwrap();
        let tool = container.join("rootfs/bin/tool");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_link(container.join("rootfs/bin/sh")).unwrap(),
            Path::new("tool")
        );
        assert!(!container.join(STAGING_DIR).exists());

        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let escapes: [&[(&str, tar::EntryType, &str)]; 4] = [
            &[("rootfs/../../escaped", tar::EntryType::Regular, "x")],
            &[("/rootfs/abs", tar::EntryType::Regular, "x")],
            &[
                (
                    "rootfs/link",
                    tar::EntryType::Symlink,
                    outside.to_str().unwrap(),
                ),
                ("rootfs/link/escaped", tar::EntryType::Regular, "x"),
            ],
            &[("rootfs/hard", tar::EntryType::Link, "/etc/passwd")],
        ];
        for entries in escapes {
            let image = tarball(dir.path(), entries);
            let target = dir.path().join("bad");
            let _ = std::fs::remove_dir_all(&target);
            std::fs::create_dir(&target).unwrap();
            let error = unpack_rootfs(&image, &target).unwrap_err();
            assert!(
                matches!(error, DriverError::BadImage { .. }),
                "{entries:?}: {error}"
            );
            assert!(error.to_string().contains("rootfs/"), "{error}");
            assert!(!target.join("rootfs").exists() && !target.join(STAGING_DIR).exists());
            assert!(
                std::fs::read_dir(&outside).unwrap().next().is_none(),
                "{entries:?}"
            );
        }
        let empty = tarball(
            dir.path(),
            &[("metadata.yaml", tar::EntryType::Regular, "")],
        );
        let error = unpack_rootfs(&empty, &dir.path().join("bad")).unwrap_err();
        assert!(error.to_string().contains("no rootfs/"), "{error}");
    }
}
