//! The accept loop behind [`crate::Endpoint::serve`]: one task per
//! connection, one task per request stream.

use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::endpoint::peer_certificate;
use crate::frame::{read_frame_limited, STREAM_CODE_MALFORMED_REQUEST};
use crate::tls::fingerprint_der;
use crate::{Handler, PeerIdentity, Responder};

/// Connections served at once by one endpoint; more are refused.
pub const CONNECTIONS_MAX: usize = 1024;

/// Time a client gets to complete the handshake.
const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Time a client gets to send its whole request frame after opening the
/// stream.
const REQUEST_READ_TIMEOUT_MS: u64 = 10_000;

/// Connection close code: orderly close (server shutting down).
const CLOSE_CODE_SHUTDOWN: u32 = 0;

/// Connection close code: the client sent no certificate.
const CLOSE_CODE_NO_CERTIFICATE: u32 = 1;

/// Accepts connections until `shutdown` turns true or its sender is dropped.
pub(crate) async fn accept_loop<H: Handler>(
    quic: quinn::Endpoint,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            incoming = quic.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(
                remote = %incoming.remote_address(),
                limit = CONNECTIONS_MAX,
                "refusing connection: too many open connections"
            );
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve_connection(
            incoming,
            handler.clone(),
            permit,
            shutdown.clone(),
        ));
    }
    debug!("stopped accepting connections");
}

/// Completes the handshake, then spawns a task per incoming request stream.
async fn serve_connection<H: Handler>(
    incoming: quinn::Incoming,
    handler: Arc<H>,
    _permit: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let remote_addr = incoming.remote_address();
    let handshake = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let quic = match tokio::time::timeout(handshake, incoming).await {
        Ok(Ok(quic)) => quic,
        Ok(Err(e)) => {
            debug!(remote = %remote_addr, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!(remote = %remote_addr, "handshake timed out");
            return;
        }
    };
    let Some(cert_der) = peer_certificate(&quic) else {
        warn!(remote = %remote_addr, "closing connection without a client certificate");
        quic.close(
            VarInt::from_u32(CLOSE_CODE_NO_CERTIFICATE),
            b"client certificate required",
        );
        return;
    };
    let peer = PeerIdentity {
        fingerprint: fingerprint_der(&cert_der),
        cert_der,
        remote_addr,
    };
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {
                quic.close(VarInt::from_u32(CLOSE_CODE_SHUTDOWN), b"server shutting down");
                return;
            }
            stream = quic.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(remote = %remote_addr, error = %e, "connection ended");
                    return;
                }
            },
        };
        // Boxed before it is spawned: a handler's future can be large, and spawning it by value
        // copied it several times over (a tenth of a busy member's copying, `perf`).
        tokio::spawn(Box::pin(serve_stream(
            handler.clone(),
            peer.clone(),
            send,
            recv,
        )));
    }
}

/// Reads the request frame and hands it to the handler. A bad request is
/// logged and the stream reset; the connection keeps serving.
async fn serve_stream<H: Handler>(
    handler: Arc<H>,
    peer: PeerIdentity,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let limit = Duration::from_millis(REQUEST_READ_TIMEOUT_MS);
    let len_max = handler.request_len_max(&peer);
    let code = match read_frame_limited::<H::Request>(&mut recv, limit, len_max).await {
        Ok(Some(request)) => {
            let responder = Responder::with_requests(send, recv, len_max);
            handler.handle(peer, request, responder).await;
            return;
        }
        Ok(None) => {
            debug!(remote = %peer.remote_addr, "empty request stream");
            STREAM_CODE_MALFORMED_REQUEST
        }
        Err(e @ crate::Error::Remote { .. }) => {
            debug!(remote = %peer.remote_addr, error = %e, "client abandoned its request");
            STREAM_CODE_MALFORMED_REQUEST
        }
        Err(e) => {
            warn!(
                remote = %peer.remote_addr,
                fingerprint = %peer.fingerprint,
                error = %e,
                "rejecting unreadable request"
            );
            STREAM_CODE_MALFORMED_REQUEST
        }
    };
    let _ = recv.stop(VarInt::from_u32(code));
    let _ = send.reset(VarInt::from_u32(code));
}
