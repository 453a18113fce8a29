//! The runtime's error type.

use serde::{Deserialize, Serialize};

/// Errors of a member and of clients talking to one.
#[derive(Clone, Debug, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// No quorum: the cluster database cannot commit or serve a linearizable read.
    #[error("cluster database is unavailable: {reachable} of {voters} voters reachable, {needed} needed")]
    NoQuorum {
        /// Voters that answered a probe (this member included).
        reachable: usize,
        /// Voters in the current configuration.
        voters: usize,
        /// Voters needed for a majority.
        needed: usize,
    },
    /// The request was refused: bad arguments, failed validation, missing object.
    #[error("{0}")]
    Refused(String),
    /// A token could not be decoded or used.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The peer's certificate is not trusted for this request.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// A network or transport failure.
    #[error("{0}")]
    Transport(String),
    /// A data-directory or local file problem.
    #[error("{0}")]
    Local(String),
    /// A script failed.
    #[error("{0}")]
    Script(String),
    /// A bug or an unexpected internal state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<starling_transport::Error> for Error {
    fn from(error: starling_transport::Error) -> Self {
        Error::Transport(error.to_string())
    }
}

impl From<starling_store::Error> for Error {
    fn from(error: starling_store::Error) -> Self {
        Error::Local(error.to_string())
    }
}
