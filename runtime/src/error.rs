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
    /// The request certainly did not reach the peer (no connection): safe to send elsewhere.
    #[error("{0}")]
    NotSent(String),
    /// The request may have reached the peer and been applied, but no answer came back.
    #[error("{0} (the request may or may not have been applied)")]
    OutcomeUnknown(String),
    /// Leadership moved while the request was under way: retry against the new leader.
    #[error("leadership changed during the request: {0}")]
    LeadershipChanged(String),
    /// A data-directory or local file problem.
    #[error("{0}")]
    Local(String),
    /// The member has no room for more work of this kind now; retry later.
    #[error("{0}")]
    Busy(String),
    /// A script failed.
    #[error("{0}")]
    Script(String),
    /// The request took effect in part, then failed: the message says what stays. (A
    /// `Refused` request changed nothing; this one changed something.)
    #[error("{0}")]
    Incomplete(String),
    /// A bug or an unexpected internal state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether the same request may well succeed if tried again a little later: the peer
    /// could not be reached or answered nothing, or had no room for it now.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Transport(_) | Error::NotSent(_) | Error::OutcomeUnknown(_) | Error::Busy(_)
        )
    }
}

impl From<starling_transport::Error> for Error {
    fn from(error: starling_transport::Error) -> Self {
        if error.may_have_been_delivered() {
            Error::OutcomeUnknown(error.to_string())
        } else {
            Error::NotSent(error.to_string())
        }
    }
}

impl From<starling_store::Error> for Error {
    fn from(error: starling_store::Error) -> Self {
        Error::Local(error.to_string())
    }
}
