//! A member's image files: `<data>/images/<fingerprint>`, content-addressed.
//!
//! A file appears under its fingerprint only once it is complete, verified and durable: it is
//! written to a temporary name in the same directory, hashed on the way, `fsync`ed, renamed,
//! and the directory `fsync`ed. Temporary files left by an interrupted import or copy are
//! removed when the member starts.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};

/// Bytes read or written at once.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Prefix of temporary files.
const PARTIAL_PREFIX: &str = ".partial-";

/// The image files of one member.
#[derive(Clone, Debug)]
pub struct ImageFiles {
    dir: PathBuf,
}

/// A file being received: bytes are hashed as they are written.
pub struct Incoming {
    file: File,
    path: PathBuf,
    hasher: Context,
    written: u64,
    /// Bytes already handed to the kernel's writeback.
    queued: u64,
    dir: PathBuf,
}

/// Written bytes gathered before their writeback is started.
const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

impl ImageFiles {
    /// The image files under the member's data directory `root`.
    pub fn new(root: &Path) -> ImageFiles {
        ImageFiles {
            dir: root.join("images"),
        }
    }

    /// The directory of the images, each a file named by its fingerprint.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the image `fingerprint` lives.
    pub fn path(&self, fingerprint: &str) -> PathBuf {
        self.dir.join(fingerprint)
    }

    /// Whether a complete copy of `fingerprint` is here.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.path(fingerprint).is_file()
    }

    /// Fingerprints of the complete files here.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect()
    }

    /// Removes temporary files an interrupted import or copy left.
    pub fn remove_partials(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(PARTIAL_PREFIX)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Deletes the file of `fingerprint`, if any.
    pub fn remove(&self, fingerprint: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(fingerprint)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Starts receiving a file.
    pub fn incoming(&self) -> std::io::Result<Incoming> {
        std::fs::create_dir_all(&self.dir)?;
        let name = format!(
            "{PARTIAL_PREFIX}{}-{}",
            std::process::id(),
            crate::token::random_u128().unwrap_or_default()
        );
        let path = self.dir.join(name);
        let file = File::create(&path)?;
        Ok(Incoming {
            file,
            path,
            hasher: Context::new(&SHA256),
            written: 0,
            queued: 0,
            dir: self.dir.clone(),
        })
    }

    /// Copies `source` in, hashing it on the way; returns its fingerprint and size. Reads and
    /// writes in [`CHUNK_BYTES`] pieces, so memory stays bounded. Blocking: run it off the
    /// async runtime.
    pub fn copy_in(&self, source: &Path) -> std::io::Result<(String, u64)> {
        let mut input = File::open(source)?;
        let mut incoming = self.incoming()?;
        let mut buffer = vec![0; CHUNK_BYTES];
        loop {
            let read = input.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            incoming.write(&buffer[..read])?;
        }
        let (fingerprint, size) = incoming.fingerprint_and_size();
        incoming.finish(&fingerprint)?;
        Ok((fingerprint, size))
    }

    /// Free bytes on the file system holding the image files.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        std::fs::create_dir_all(&self.dir)?;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `stat` a valid, writable statvfs.
        let result = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
}

impl Incoming {
    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.queued >= WRITEBACK_BYTES {
            self.start_writeback();
        }
        Ok(())
    }

    /// Asks the kernel to start writing what was written since the last call, without waiting:
    /// the disk works while the network does, and the `fsync` at the end has little left.
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let (start, length) = (self.queued, self.written - self.queued);
        // SAFETY: a valid open descriptor and a range of it; the call only schedules I/O.
        let result = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                start as libc::off64_t,
                length as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if result == 0 {
            self.queued = self.written;
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The SHA-256 (hex) and size of what was written so far.
    pub fn fingerprint_and_size(&self) -> (String, u64) {
        let digest = self.hasher.clone().finish();
        (hex::encode(digest.as_ref()), self.written)
    }

    /// Verifies the bytes hash to `expected`, makes the file durable and gives it its name.
    /// A mismatch deletes what was received and says so.
    pub fn finish(self, expected: &str) -> std::io::Result<()> {
        let (fingerprint, _) = self.fingerprint_and_size();
        if fingerprint != expected {
            let _ = std::fs::remove_file(&self.path);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("received bytes hash to {fingerprint}, expected {expected}"),
            ));
        }
        self.file.sync_all()?;
        let target = self.dir.join(expected);
        std::fs::rename(&self.path, &target)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

impl Drop for Incoming {
    /// An abandoned file leaves nothing behind (after `finish` the path no longer exists).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a copied-in file is named by its SHA-256 and nothing temporary remains; received
    /// bytes with the wrong hash are refused and leave nothing behind.
    #[test]
    fn content_addressed_and_clean() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::new(dir.path());
        let source = dir.path().join("image.tar");
        std::fs::write(&source, b"hello").unwrap();
        let (fingerprint, size) = files.copy_in(&source).unwrap();
        assert_eq!(
            fingerprint,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(size, 5);
        assert!(files.contains(&fingerprint));
        assert_eq!(files.list(), vec![fingerprint.clone()]);

        let mut incoming = files.incoming().unwrap();
        incoming.write(b"other bytes").unwrap();
        let error = incoming.finish(&fingerprint).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(files.list(), vec![fingerprint.clone()]);
        let leftovers = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 1);
    }
}
