//! The QUIC endpoint: one per member (serving and connecting), or one per
//! client process (connecting only).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectError, ConnectionError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{check_identity, client_config, server_config};
use crate::frame::duration_ms;
use crate::server::accept_loop;
use crate::tls::fingerprint_der;
use crate::verify::PinnedCaVerifier;
use crate::{Error, Handler, Identity, SERVER_NAME};

pub use crate::connection::{Connection, ResponseStream};

/// Default limit for establishing a connection (QUIC + TLS handshake).
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;

/// How a client decides whether to trust the server it connects to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerTrust {
    /// The server's certificate must be issued by this CA for the name
    /// [`SERVER_NAME`]. Used by members and trusted clients.
    Ca {
        /// The cluster CA certificate (PEM).
        ca_cert_pem: String,
    },
    /// The server must present, after its own certificate, a CA certificate
    /// with this SHA-256 fingerprint, and its certificate must be issued by
    /// that CA. Used by joiners that only hold a join token.
    PinnedCa {
        /// Hex SHA-256 of the CA certificate's DER (case and `:` ignored).
        fingerprint: String,
    },
}

/// Settings for [`Endpoint::new`].
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Certificate and key presented in both directions.
    pub identity: Identity,
    /// Local UDP address; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Accept incoming connections (members) or only connect (clients).
    pub serve: bool,
}

/// A QUIC endpoint. Cheap to clone; clones share the socket.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) quic: quinn::Endpoint,
    identity: Arc<Identity>,
    bind: SocketAddr,
    serve: bool,
    connect_timeout: Duration,
}

/// The UDP buffer size asked for each direction. The kernel caps it (`net.core.rmem_max`,
/// `wmem_max`); the default (about 200 KiB) overflows while a busy receiver is descheduled
/// during a bulk transfer, and every datagram dropped there costs a retransmission and halves
/// the sender's congestion window.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] buffers (or as much as the kernel
/// allows).
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(error) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(%error, "could not enlarge the UDP receive buffer");
    }
    if let Err(error) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(%error, "could not enlarge the UDP send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl Endpoint {
    /// Opens the UDP socket. Must be called inside a Tokio runtime.
    pub fn new(config: EndpointConfig) -> Result<Endpoint, Error> {
        let bind_error = |source| Error::Bind {
            addr: config.bind,
            source,
        };
        let server = if config.serve {
            Some(server_config(&config.identity)?)
        } else {
            check_identity(&config.identity)?;
            None
        };
        let socket = udp_socket(config.bind).map_err(bind_error)?;
        let quic = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        Ok(Endpoint {
            quic,
            identity: Arc::new(config.identity),
            bind: config.bind,
            serve: config.serve,
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
        })
    }

    /// Returns the endpoint with a different connect time limit
    /// (default [`CONNECT_TIMEOUT_MS`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Endpoint {
        self.connect_timeout = timeout;
        self
    }

    /// The bound UDP address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.quic.local_addr().map_err(|source| Error::Bind {
            addr: self.bind,
            source,
        })
    }

    /// Connects to the server at `addr`, checking it with `trust` and
    /// presenting this endpoint's identity.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        trust: &ServerTrust,
    ) -> Result<Connection, Error> {
        let (config, pinned) = client_config(&self.identity, trust)?;
        let connecting = self
            .quic
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|e| start_failure(addr, e))?;
        let quic = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(quic)) => quic,
            Ok(Err(e)) => return Err(connect_failure(addr, e, pinned.as_deref())),
            Err(_) => {
                // Nothing was sent yet: a connect failure, not a request time-out.
                return Err(Error::Connect {
                    addr,
                    reason: format!("timed out after {} ms", duration_ms(self.connect_timeout)),
                });
            }
        };
        let fingerprint = peer_certificate(&quic)
            .map(|der| fingerprint_der(&der))
            .unwrap_or_default();
        Ok(Connection::new(quic, fingerprint))
    }

    /// Accepts connections and dispatches each request to `handler` until
    /// `shutdown` becomes true (or its sender is dropped). Each connection
    /// and each request stream gets its own task; at most
    /// [`crate::CONNECTIONS_MAX`] connections are served at once, further
    /// ones are refused. On shutdown, open connections are closed.
    ///
    /// Returns [`Error::NotServing`] on a client-only endpoint.
    pub async fn serve<H: Handler>(
        &self,
        handler: Arc<H>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        if !self.serve {
            return Err(Error::NotServing);
        }
        accept_loop(self.quic.clone(), handler, shutdown).await;
        Ok(())
    }

    /// Closes every connection of this endpoint (both directions) and
    /// stops accepting new ones. Pending and future operations fail.
    pub fn close(&self) {
        self.quic
            .close(quinn::VarInt::from_u32(0), b"endpoint closed");
    }

    /// Waits until closed connections have said goodbye to their peers;
    /// call after [`Endpoint::close`] before exiting or re-binding the port.
    pub async fn wait_idle(&self) {
        self.quic.wait_idle().await;
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.quic.local_addr().ok())
            .field("serve", &self.serve)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The peer's end-entity certificate from the TLS handshake.
pub(crate) fn peer_certificate(quic: &quinn::Connection) -> Option<Vec<u8>> {
    let chain = quic
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(|der| der.to_vec())
}

/// Turns a connection attempt that could not even start into an error.
fn start_failure(addr: SocketAddr, err: ConnectError) -> Error {
    match err {
        ConnectError::EndpointStopping => Error::EndpointClosed,
        other => Error::Connect {
            addr,
            reason: other.to_string(),
        },
    }
}

/// Turns a failed handshake into the most specific error.
fn connect_failure(
    addr: SocketAddr,
    err: ConnectionError,
    pinned: Option<&PinnedCaVerifier>,
) -> Error {
    if let Some(actual) = pinned.and_then(PinnedCaVerifier::take_mismatch) {
        let expected = pinned.map(|p| p.expected().to_string()).unwrap_or_default();
        return Error::FingerprintMismatch {
            addr,
            expected,
            actual,
        };
    }
    let tls_reason = match &err {
        ConnectionError::TransportError(e) if is_crypto_code(u64::from(e.code)) => {
            Some(e.reason.clone())
        }
        ConnectionError::ConnectionClosed(c) if is_crypto_code(u64::from(c.error_code)) => {
            Some(format!("rejected by the server ({c})"))
        }
        _ => None,
    };
    match tls_reason {
        Some(reason) => Error::Tls { addr, reason },
        None if matches!(err, ConnectionError::LocallyClosed) => Error::EndpointClosed,
        None => Error::Connect {
            addr,
            reason: err.to_string(),
        },
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
fn is_crypto_code(code: u64) -> bool {
    code & !0xff == 0x100
}

#[cfg(test)]
pub(crate) mod tests;
