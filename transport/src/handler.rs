//! The server-side request handling contract: [`Handler`] is implemented by
//! the application, [`Responder`] sends its answer, [`PeerIdentity`] says
//! who asked.

use std::future::Future;
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{write_frame, FrameBuffer, STREAM_CODE_HANDLER_FAILED};
use crate::Error;

/// Who sent a request: the client certificate from the TLS handshake.
///
/// The transport only proves that the peer holds the key of this
/// certificate; it does NOT check who issued it. The application decides
/// trust, typically with [`crate::issued_by`] (cluster members and trusted
/// clients) or by looking the fingerprint up in its trust store, and
/// refuses everything else except join/trust requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Lowercase hex SHA-256 of `cert_der`.
    pub fingerprint: String,
    /// The peer's end-entity certificate (DER).
    pub cert_der: Vec<u8>,
    /// The peer's UDP address.
    pub remote_addr: SocketAddr,
}

/// Application request handler, called once per request.
///
/// Each request arrives on its own bidirectional QUIC stream, in its own
/// task, so `handle` may take as long as it needs and several requests run
/// concurrently. The handler answers through `responder`: zero or more
/// [`Responder::send`] calls, then [`Responder::finish`] (dropping the
/// responder finishes too).
///
/// Implementations may simply write `async fn handle(&self, ...)`; the
/// resulting future must be `Send`. The trait is used generically
/// (`serve<H: Handler>`), not as a trait object; to serve several request
/// types, make `Request` an enum.
///
/// If `handle` panics, the client's request fails with
/// [`crate::Error::Remote`] carrying [`crate::STREAM_CODE_HANDLER_FAILED`]
/// and the endpoint keeps serving.
pub trait Handler: Send + Sync + 'static {
    /// The request message type.
    type Request: DeserializeOwned + Send + 'static;

    /// The largest request frame accepted from `peer`, in bytes; a larger one is refused from
    /// its length prefix, before its payload is read or decoded. Untrusted peers should get a
    /// small limit.
    fn request_len_max(&self, _peer: &PeerIdentity) -> usize {
        crate::FRAME_LEN_MAX
    }

    /// Handles one request from `peer`.
    fn handle(
        &self,
        peer: PeerIdentity,
        request: Self::Request,
        responder: Responder,
    ) -> impl Future<Output = ()> + Send;
}

/// Sends the response frames for one request.
///
/// Dropping it finishes the stream cleanly; if it is dropped while the
/// handler panics, the stream is reset with
/// [`crate::STREAM_CODE_HANDLER_FAILED`] instead, so the client sees an
/// error rather than an empty response.
#[derive(Debug)]
pub struct Responder {
    send: Option<quinn::SendStream>,
    requests: Option<RequestFrames>,
}

/// The frames a client sends after its request on a stream it keeps open
/// ([`crate::Connection::open_duplex`]), taken with [`Responder::take_requests`].
#[derive(Debug)]
pub struct RequestFrames {
    frames: FrameBuffer,
}

impl RequestFrames {
    /// The next frame, or `None` once the client ended the stream. No time limit: such a
    /// stream may stay quiet for as long as the connection lives (a lost connection ends it).
    /// A frame longer than the peer's request limit is refused from its length prefix. After
    /// an error the frames must not be read again. Cancel-safe: a frame read in part when the
    /// future is dropped is completed by the next call.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        self.frames.next().await
    }

    /// What `read` makes of the next frame's payload (see [`RequestFrames::next`]). The frame
    /// is consumed whatever `read` answers: one that does not decode may be answered and the
    /// stream read on.
    pub(crate) async fn next_with<R>(
        &mut self,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, Error> {
        self.frames.next_with(read).await
    }
}

impl Responder {
    #[cfg(test)]
    pub(crate) fn new(send: quinn::SendStream) -> Responder {
        Responder {
            send: Some(send),
            requests: None,
        }
    }

    /// A responder whose client may send more frames after the request (`len_max` bytes at
    /// most each).
    pub(crate) fn with_requests(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        len_max: usize,
    ) -> Responder {
        Responder {
            send: Some(send),
            requests: Some(RequestFrames {
                frames: FrameBuffer::new(recv, len_max),
            }),
        }
    }

    /// The frames the client sends after its request, for a handler that serves a stream
    /// kept open; `None` once taken.
    pub fn take_requests(&mut self) -> Option<RequestFrames> {
        self.requests.take()
    }

    /// Sends one response frame. Fails if the client went away or stopped
    /// reading, or if the value cannot be encoded.
    pub async fn send<T: Serialize>(&mut self, value: &T) -> Result<(), Error> {
        match self.send.as_mut() {
            Some(send) => write_frame(send, value).await,
            None => Err(Error::ConnectionLost {
                reason: "the response stream is already finished".into(),
            }),
        }
    }

    /// Sends raw bytes, not a frame: the body that follows a frame announcing its length (see
    /// [`crate::ResponseStream::read_raw`]). The bytes are handed to QUIC without a copy.
    /// Fails if the client went away or stopped reading, or nothing could be sent for
    /// [`crate::FRAME_TIMEOUT_MS`].
    pub async fn send_raw(&mut self, bytes: bytes::Bytes) -> Result<(), Error> {
        let Some(send) = self.send.as_mut() else {
            return Err(Error::ConnectionLost {
                reason: "the response stream is already finished".into(),
            });
        };
        let write = async {
            send.write_chunk(bytes)
                .await
                .map_err(crate::frame::write_error)
        };
        crate::frame::within_frame_timeout(write, || "writing raw bytes".into()).await
    }

    /// Abandons the response: the client's next read fails (rather than seeing a clean end),
    /// so a body cut short is never taken for a complete one.
    pub fn abort(&mut self) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(quinn::VarInt::from_u32(STREAM_CODE_HANDLER_FAILED));
        }
    }

    /// A future that completes when the client stops reading the response (it went away or
    /// dropped the request) or the connection is lost: long work for it can stop then.
    pub fn client_gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.send.as_ref().map(|send| send.stopped());
        async move {
            match stopped {
                Some(stopped) => {
                    let _ = stopped.await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Ends the response: the client sees the end of the stream after the
    /// frames already sent.
    pub fn finish(mut self) -> Result<(), Error> {
        self.finish_stream()
    }

    fn finish_stream(&mut self) -> Result<(), Error> {
        match self.send.take() {
            Some(mut send) => send.finish().map_err(|e| Error::ConnectionLost {
                reason: format!("could not finish the response: {e}"),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(mut send) = self.send.take() {
                let _ = send.reset(quinn::VarInt::from_u32(STREAM_CODE_HANDLER_FAILED));
            }
        } else {
            let _ = self.finish_stream();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::raw_pair;

    #[tokio::test]
    async fn responder_finishes_on_drop() {
        let mut pair = raw_pair(b"x", true).await;
        let mut responder = Responder::new(pair.server_send);
        responder.send(&5u32).await.unwrap();
        drop(responder);
        let recv = &mut pair.client_recv;
        assert_eq!(crate::read_frame::<u32>(recv).await.unwrap(), Some(5));
        assert_eq!(crate::read_frame::<u32>(recv).await.unwrap(), None);
    }

    /// A frame, then a raw body: read back exactly, in pieces no larger than asked.
    #[tokio::test]
    async fn raw_body_after_a_frame() {
        let pair = raw_pair(b"x", true).await;
        let mut responder = Responder::new(pair.server_send);
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        responder.send(&(body.len() as u64)).await.unwrap();
        responder
            .send_raw(bytes::Bytes::from(body[..100_000].to_vec()))
            .await
            .unwrap();
        responder
            .send_raw(bytes::Bytes::from(body[100_000..].to_vec()))
            .await
            .unwrap();
        drop(responder);
        let mut stream = crate::ResponseStream::new(pair.client_recv, crate::testutil::loopback());
        let timeout = std::time::Duration::from_secs(5);
        let len: u64 = stream.next(timeout).await.unwrap().unwrap();
        let mut got = Vec::new();
        let mut buffer = vec![0; 65_536];
        loop {
            let read = stream.read_raw(&mut buffer, timeout).await.unwrap();
            if read == 0 {
                break;
            }
            got.extend_from_slice(&buffer[..read]);
        }
        assert_eq!(got.len() as u64, len);
        assert_eq!(got, body);
    }

    /// An aborted body is an error to the reader, not a short clean end.
    #[tokio::test]
    async fn aborted_body_is_an_error() {
        let pair = raw_pair(b"x", true).await;
        let mut responder = Responder::new(pair.server_send);
        responder
            .send_raw(bytes::Bytes::from_static(b"abc"))
            .await
            .unwrap();
        responder.abort();
        let mut stream = crate::ResponseStream::new(pair.client_recv, crate::testutil::loopback());
        let timeout = std::time::Duration::from_secs(5);
        let mut buffer = vec![0; 16];
        let outcome = loop {
            match stream.read_raw(&mut buffer, timeout).await {
                Ok(0) => break Ok(0),
                Ok(_) => continue,
                Err(error) => break Err(error),
            }
        };
        assert!(
            outcome.is_err(),
            "a reset stream must fail, got {outcome:?}"
        );
    }
}
