//! An exclusive lock on a member's directory, so that only one process uses a database.
//!
//! LMDB itself lets two processes open the same environment, and offline tools such as
//! [`crate::recover`] rewrite the database under a running member's feet unless something stops
//! them. [`DirLock`] is that something: an advisory lock on `DIR/lock`, held by the daemon for
//! its lifetime and by offline tools while they work. The operating system drops it when the
//! holder exits, even on `kill -9`, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::Error;

/// Name of the lock file inside the locked directory.
const LOCK_FILE: &str = "lock";

/// An exclusive lock on a directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    /// The directory that is locked.
    dir: PathBuf,
    /// The open lock file: closing it releases the lock.
    _file: File,
}

impl DirLock {
    /// Locks `dir` (created if missing) by taking an exclusive lock on `dir/lock`, without
    /// waiting.
    ///
    /// Fails with [`Error::Locked`] if another process, or another handle in this process,
    /// holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, Error> {
        let io_error = |source| Error::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let path = dir.join(LOCK_FILE);
        // No truncation: the file has no content, and a holder may have it open.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock {
                dir: dir.to_path_buf(),
                _file: file,
            }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked {
                path: dir.display().to_string(),
            }),
            Err(TryLockError::Error(source)) => Err(Error::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the lock is exclusive while held and free again once dropped.
    /// Method: acquire, acquire again (refused with `Locked`), drop, acquire again.
    #[test]
    fn second_holder_is_refused_until_the_first_drops() -> Result<(), Error> {
        let root = tempfile::tempdir().map_err(|source| Error::Io {
            path: "temporary directory".to_string(),
            source,
        })?;
        let dir = root.path().join("db");
        let first = DirLock::acquire(&dir)?;
        assert_eq!(first.dir(), dir);
        match DirLock::acquire(&dir) {
            Err(Error::Locked { path }) => assert_eq!(path, dir.display().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
        let message = DirLock::acquire(&dir).map(|_| ()).unwrap_err().to_string();
        assert!(message.contains("in use by a running member"), "{message}");
        drop(first);
        DirLock::acquire(&dir)?;
        Ok(())
    }
}
