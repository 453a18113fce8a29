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
}
