//! The crate's single error type.

use std::net::SocketAddr;

/// Everything that can go wrong in the transport.
///
/// The variants fall into four families, which callers usually treat
/// differently:
///
/// * network trouble that may go away by itself — [`Error::Connect`],
///   [`Error::Timeout`], [`Error::Unreachable`], [`Error::ConnectionLost`]
///   ([`Error::is_retryable`] is true for these);
/// * identity and trust failures — [`Error::Tls`],
///   [`Error::FingerprintMismatch`], [`Error::Certificate`],
///   [`Error::TlsConfig`];
/// * framing failures — [`Error::FrameTooLarge`], [`Error::MalformedFrame`],
///   [`Error::TruncatedFrame`], [`Error::Encode`];
/// * the remote application refusing or abandoning a request —
///   [`Error::Remote`], [`Error::NoResponse`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or private key could not be generated, parsed or signed.
    #[error("certificate problem: {0}")]
    Certificate(String),

    /// The local TLS/QUIC configuration could not be built from this
    /// node's identity (for example a key that does not match its
    /// certificate, or an unsupported key type).
    #[error("TLS configuration problem: {0}")]
    TlsConfig(String),

    /// The UDP socket for the endpoint could not be opened.
    #[error("could not open UDP socket on {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The local endpoint has been closed; it can no longer connect or serve.
    #[error("the local QUIC endpoint is closed")]
    EndpointClosed,

    /// [`crate::Endpoint::serve`] was called on a client-only endpoint.
    #[error("this endpoint was created with serve = false and cannot accept connections")]
    NotServing,

    /// A connection to the peer could not be established (no answer,
    /// refused, or the network failed during the handshake).
    #[error("could not connect to {addr}: {reason}")]
    Connect {
        /// The peer we tried to reach.
        addr: SocketAddr,
        /// Why the attempt failed.
        reason: String,
    },

    /// An operation did not finish within its time limit.
    #[error("timed out after {timeout_ms} ms while {action}")]
    Timeout {
        /// What we were doing, e.g. "connecting to 10.0.0.2:7443".
        action: String,
        /// The limit that expired.
        timeout_ms: u64,
    },

    /// The connection pool recently failed to reach this peer and is
    /// backing off instead of trying again right away.
    #[error("{addr} is unreachable (last error: {last_error}); next attempt allowed in {retry_in_ms} ms")]
    Unreachable {
        /// The peer that could not be reached.
        addr: SocketAddr,
        /// How long until the pool will try to connect again.
        retry_in_ms: u64,
        /// The error of the last failed attempt.
        last_error: String,
    },

    /// An established connection broke (peer went away, idle timeout,
    /// connection closed by either side).
    #[error("connection lost: {reason}")]
    ConnectionLost {
        /// What happened, including the peer address where known.
        reason: String,
    },

    /// The TLS handshake failed: the peer's certificate is not trusted,
    /// has the wrong name, is expired, or a handshake signature is bad.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// The peer we tried to reach.
        addr: SocketAddr,
        /// What TLS reported.
        reason: String,
    },

    /// The server is not part of the cluster the join token points at:
    /// none of the CA certificates it presented has the pinned fingerprint.
    #[error(
        "the server at {addr} is not the expected cluster: CA fingerprint did not match \
         (expected {expected}, server presented {actual})"
    )]
    FingerprintMismatch {
        /// The server we tried to reach.
        addr: SocketAddr,
        /// The fingerprint we were told to trust (from the join token).
        expected: String,
        /// The fingerprints of the CA certificates the server presented,
        /// comma-separated, or "no CA certificate".
        actual: String,
    },

    /// A frame's length prefix is larger than the allowed maximum; the
    /// payload was not read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length the frame claimed (or would have had).
        len: usize,
        /// The limit, [`crate::FRAME_LEN_MAX`].
        max: usize,
    },

    /// A frame's payload could not be decoded into the expected message
    /// type (garbage, or the two sides run incompatible versions).
    #[error("malformed frame: {0}")]
    MalformedFrame(String),

    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({received} of {expected} bytes received)")]
    TruncatedFrame {
        /// Bytes the frame (or its length prefix) should have had.
        expected: usize,
        /// Bytes that actually arrived.
        received: usize,
    },

    /// An outgoing message could not be encoded.
    #[error("could not encode message: {0}")]
    Encode(String),

    /// The peer aborted the request stream with an application error code
    /// (see [`crate::STREAM_CODE_MALFORMED_REQUEST`] and friends).
    #[error("the peer aborted the request with code {code} ({meaning})")]
    Remote {
        /// The code the peer sent.
        code: u64,
        /// What the code means, in words.
        meaning: &'static str,
    },

    /// The peer finished the response stream without sending any response.
    #[error("the peer ended the request without sending a response")]
    NoResponse,
}

impl Error {
    /// True for failures that may succeed if tried again later (connection
    /// problems, time-outs, back-off), false for trust, framing and
    /// application errors, which will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Timeout { .. }
                | Error::Unreachable { .. }
                | Error::ConnectionLost { .. }
        )
    }

    /// False when the request certainly never reached the peer (no connection could be made,
    /// the peer is not who it should be, the request could not be encoded): it is safe to send
    /// it elsewhere. True when it may have been delivered and acted on (the connection broke or
    /// timed out after sending began, the peer reset the stream), so the outcome is unknown.
    pub fn may_have_been_delivered(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost { .. }
                | Error::Timeout { .. }
                | Error::Remote { .. }
                | Error::NoResponse
                | Error::MalformedFrame(_)
                | Error::TruncatedFrame { .. }
        )
    }

    /// True when the connection the error happened on should no longer be
    /// trusted to work (the pool drops it).
    pub(crate) fn is_connection_level(&self) -> bool {
        matches!(self, Error::ConnectionLost { .. } | Error::Timeout { .. })
    }

    /// Adds the peer address to errors that come from stream operations,
    /// which do not know who is on the other end.
    pub(crate) fn at_peer(self, addr: SocketAddr) -> Error {
        match self {
            Error::ConnectionLost { reason } => Error::ConnectionLost {
                reason: format!("{addr}: {reason}"),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(Error::Connect {
            addr,
            reason: "x".into()
        }
        .is_retryable());
        assert!(Error::ConnectionLost { reason: "x".into() }.is_retryable());
        assert!(!Error::NoResponse.is_retryable());
        assert!(!Error::Tls {
            addr,
            reason: "x".into()
        }
        .is_retryable());
        let lost = Error::ConnectionLost {
            reason: "gone".into(),
        }
        .at_peer(addr);
        assert_eq!(lost.to_string(), "connection lost: 127.0.0.1:1: gone");
    }
}
