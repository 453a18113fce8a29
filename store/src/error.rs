//! The store's error type, and [`StorageHealth`], the signal a failed write raises.

use std::sync::Arc;

use tokio::sync::watch;

/// Errors of the store crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// LMDB refused an operation (open, read or commit).
    #[error("database error: {0}")]
    Lmdb(#[from] heed::Error),
    /// A file system operation on the data directory failed.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path that could not be used.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Stored bytes could not be decoded (corruption or a format from another version).
    #[error("stored data could not be decoded: {0}")]
    Decode(String),
    /// The log writer thread is gone (the store is shutting down).
    #[error("the log writer has stopped")]
    WriterStopped,
    /// A write failed earlier, so the store writes nothing more (see [`StorageHealth`]). Not
    /// retryable: the member has to stop, and start again once the cause is fixed.
    #[error("the database stopped writing after a storage error ({cause}); fix the cause and restart the member")]
    OutOfService {
        /// What made the first write fail.
        cause: String,
    },
    /// Another process (or another handle in this one) holds the directory's lock.
    #[error("the data directory {path} is in use by a running member; stop it first")]
    Locked {
        /// The locked directory.
        path: String,
    },
    /// The directory holds no cluster database (wrong path, or a member never started there).
    #[error("no database in {path}: expected the log and state directories of a member")]
    NoDatabase {
        /// The directory that was searched.
        path: String,
    },
    /// The stored pieces do not fit together (entries missing between snapshot and log, ...).
    #[error("the database is inconsistent: {0}")]
    Inconsistent(String),
}

/// Whether the store still writes, shared by the log and the state machine of one member.
///
/// The first write that fails (map full, disk full, I/O error) takes the whole store out of
/// service for good: writing on after a failed transaction could leave a hole in the log, or
/// save a committed index or a snapshot that no durable entry backs. Every later write fails
/// with [`Error::OutOfService`], and whoever holds a `StorageHealth` learns the cause, so that
/// the member can stop answering as healthy and exit. What LMDB already holds stays readable:
/// it is all durable.
#[derive(Clone, Debug)]
pub struct StorageHealth {
    /// The cause of the first failure, `None` while every write has succeeded. Set once.
    failure: Arc<watch::Sender<Option<String>>>,
}

impl StorageHealth {
    /// The cause of the failure that took the store out of service, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// A receiver that holds `None` until the store fails, then the cause (it changes once).
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// Waits until the store fails, and returns the cause.
    pub async fn failed(&self) -> String {
        let mut failure = self.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let cause = match failure.wait_for(Option::is_some).await {
            Ok(cause) => cause.clone().unwrap_or_default(),
            Err(_) => Error::WriterStopped.to_string(),
        };
        cause
    }
}

/// For the store's writers.
impl StorageHealth {
    /// A store whose writes have all succeeded so far.
    pub(crate) fn new() -> StorageHealth {
        StorageHealth {
            failure: Arc::new(watch::channel(None).0),
        }
    }

    /// Fails with [`Error::OutOfService`] once the store is out of service.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.failure() {
            None => Ok(()),
            Some(cause) => Err(Error::OutOfService { cause }),
        }
    }

    /// Takes the store out of service because writing `what` failed with `error`, logs it, and
    /// returns the error for the caller. Only the first cause is kept.
    pub(crate) fn fail(&self, what: &str, error: &heed::Error, map_size_bytes: usize) -> Error {
        let cause = match error {
            heed::Error::Mdb(heed::MdbError::MapFull) => format!(
                "{what} could not be written: the database reached its map size of \
                 {map_size_bytes} bytes ({error})"
            ),
            _ => format!("{what} could not be written: {error}"),
        };
        tracing::error!(
            %cause,
            "storage error: the database is out of service and this member must stop"
        );
        self.failure.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            *failure = Some(cause.clone());
            true
        });
        Error::OutOfService { cause }
    }
}
