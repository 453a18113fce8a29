//! The store's error type.

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
