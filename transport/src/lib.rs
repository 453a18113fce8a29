//! Starling's network transport: mutually authenticated QUIC between
//! cluster members and clients, carrying length-prefixed bincode frames.
//!
//! Every request travels on its own bidirectional QUIC stream: the client
//! writes exactly one request frame and finishes its side, the server
//! answers with zero or more response frames and finishes. Many requests
//! share one connection concurrently. A call stream ([`Calls`]) carries many
//! small numbered requests on one stream kept open instead.
//!
//! Both sides always present a certificate. Servers require a client
//! certificate and check that the client holds its key, but do not check
//! who issued it: the application gets a [`PeerIdentity`] with every request
//! and decides trust (normally [`issued_by`] against the cluster CA, or a
//! fingerprint in its trust store). This lets joiners and not-yet-trusted
//! clients, which only have self-signed certificates, reach the join/trust
//! handlers. Clients check servers either against the cluster CA
//! ([`ServerTrust::Ca`]) or, holding only a join token, against the CA's
//! pinned fingerprint ([`ServerTrust::PinnedCa`]). All members use the
//! fixed TLS server name [`SERVER_NAME`].
//!
//! All network functions must run inside a Tokio runtime.
//!
//! # Layout
//!
//! * `error` — [`Error`], the crate's only error type.
//! * `tls` — [`ClusterCa`], [`Identity`], fingerprints, [`issued_by`].
//! * `verify` — the rustls verifiers behind the trust rules above.
//! * `config` — rustls/quinn configuration (TLS 1.3 only, keep-alive
//!   [`KEEP_ALIVE_MS`], idle timeout [`IDLE_TIMEOUT_MS`]).
//! * `frame` — [`write_frame`] / [`read_frame`] and the frame limits.
//! * `endpoint` — [`Endpoint`], [`EndpointConfig`], [`ServerTrust`].
//! * `connection` — [`Connection`] and [`ResponseStream`] (client side).
//! * `handler` — [`Handler`], [`Responder`], [`PeerIdentity`] (server side).
//! * `server` — the accept loop behind [`Endpoint::serve`].
//! * `pool` — [`Pool`], reusable connections with back-off.
//! * `calls` — [`Calls`] and [`serve_calls`]: many numbered requests on one stream kept open.

#![warn(missing_docs)]

pub mod calls;
pub mod config;
pub mod connection;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod handler;
pub mod pool;
pub mod server;
pub mod tls;
mod verify;

#[cfg(test)]
mod testutil;

pub use calls::{serve_calls, Calls};
pub use config::{IDLE_TIMEOUT_MS, KEEP_ALIVE_MS, STREAMS_PER_CONNECTION_MAX};
pub use connection::{Connection, FrameSink, ResponseStream};
pub use endpoint::{Endpoint, EndpointConfig, ServerTrust, CONNECT_TIMEOUT_MS};
pub use error::Error;
pub use frame::{
    decode_payload, encode_frame, read_frame, read_frame_limited, read_frame_timeout, write_frame,
    FRAME_LEN_MAX, FRAME_TIMEOUT_MS, STREAM_CODE_HANDLER_FAILED, STREAM_CODE_MALFORMED_REQUEST,
};
pub use handler::{Handler, PeerIdentity, RequestFrames, Responder};
pub use pool::{Pool, BACKOFF_MAX_MS, BACKOFF_MIN_MS};
pub use server::CONNECTIONS_MAX;
pub use tls::{
    fingerprint_der, fingerprint_pem, issued_by, self_signed_identity, CertUsage, ClusterCa,
    Identity, SERVER_NAME,
};
