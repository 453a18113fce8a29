//! The client side of an established connection: requests and streamed
//! responses.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::calls::Calls;
use crate::frame::{duration_ms, read_frame_untimed, write_frame_untimed};
use crate::Error;

/// A connection to one peer. Cheap to clone; all clones share the QUIC
/// connection, and each request uses its own stream, so clones may be used
/// concurrently.
#[derive(Clone)]
pub struct Connection {
    pub(crate) quic: quinn::Connection,
    peer_fingerprint: Arc<str>,
}

impl Connection {
    pub(crate) fn new(quic: quinn::Connection, peer_fingerprint: String) -> Connection {
        Connection {
            quic,
            peer_fingerprint: peer_fingerprint.into(),
        }
    }

    /// Sends `req` and waits for exactly one response frame. `timeout`
    /// bounds the whole exchange (opening the stream, sending, the
    /// server's work, receiving).
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error> {
        let exchange = async {
            let (_send, mut recv) = self.open(req).await?;
            let response = read_frame_untimed::<Resp>(&mut recv).await?;
            response.ok_or(Error::NoResponse)
        };
        self.bounded(exchange, timeout, "waiting for a response")
            .await
    }

    /// Sends `req` and returns the stream of response frames, to be read
    /// with [`ResponseStream::next`]. Sending is bounded by
    /// [`crate::FRAME_TIMEOUT_MS`].
    pub async fn request_stream<Req: Serialize>(&self, req: &Req) -> Result<ResponseStream, Error> {
        let (_send, recv) = self.open_timed(req).await?;
        Ok(ResponseStream::new(recv, self.remote_addr()))
    }

    /// Opens a stream that stays open both ways: `first` is sent as its first frame, then
    /// [`FrameSink::send`] sends more request frames while [`ResponseStream::next`] reads the
    /// server's answers (the server reads the frames after the first through
    /// [`crate::Responder::take_requests`]). Sending `first` is bounded by
    /// [`crate::FRAME_TIMEOUT_MS`].
    pub async fn open_duplex<Req: Serialize>(
        &self,
        first: &Req,
    ) -> Result<(FrameSink, ResponseStream), Error> {
        let timeout = Duration::from_millis(crate::FRAME_TIMEOUT_MS);
        let opened = self.open_with(first);
        let (send, recv) = self.bounded(opened, timeout, "opening a stream").await?;
        let remote_addr = self.remote_addr();
        Ok((
            FrameSink { send, remote_addr },
            ResponseStream::new(recv, remote_addr),
        ))
    }

    /// Opens a call stream ([`crate::calls`]): `first` is sent as its first frame (the server
    /// serves the rest with [`crate::serve_calls`]), then [`Calls::call`] sends numbered
    /// requests, `in_flight_max` at most waiting for answers at once.
    pub async fn open_calls<Open, Req, Resp>(
        &self,
        first: &Open,
        in_flight_max: usize,
    ) -> Result<Calls<Req, Resp>, Error>
    where
        Open: Serialize,
        Req: Serialize,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (sink, answers) = self.open_duplex(first).await?;
        Ok(Calls::start(
            sink,
            answers,
            self.remote_addr(),
            in_flight_max,
        ))
    }

    /// Fingerprint (lowercase hex SHA-256) of the certificate the peer
    /// presented.
    pub fn peer_fingerprint(&self) -> &str {
        &self.peer_fingerprint
    }

    /// True once the connection is closed (by either side, or because the
    /// peer stopped answering); a closed connection never recovers.
    pub fn is_closed(&self) -> bool {
        self.quic.close_reason().is_some()
    }

    /// The peer's UDP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.quic.remote_address()
    }

    /// Closes the connection for all clones; in-flight requests fail.
    pub fn close(&self) {
        self.quic
            .close(quinn::VarInt::from_u32(0), b"closed by client");
    }

    /// Identifies the underlying QUIC connection (equal for clones).
    pub(crate) fn stable_id(&self) -> usize {
        self.quic.stable_id()
    }

    /// Opens a stream and writes `first` on it; the send side stays open.
    async fn open_with<Req: Serialize>(
        &self,
        first: &Req,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
        let (mut send, recv) = self
            .quic
            .open_bi()
            .await
            .map_err(|e| Error::ConnectionLost {
                reason: format!("{}: {e}", self.remote_addr()),
            })?;
        write_frame_untimed(&mut send, first)
            .await
            .map_err(|e| e.at_peer(self.remote_addr()))?;
        Ok((send, recv))
    }

    /// Opens a stream, writes the request and finishes the send side.
    async fn open<Req: Serialize>(
        &self,
        req: &Req,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
        let (mut send, recv) = self.open_with(req).await?;
        send.finish().map_err(|e| Error::ConnectionLost {
            reason: format!("{}: {e}", self.remote_addr()),
        })?;
        Ok((send, recv))
    }

    async fn open_timed<Req: Serialize>(
        &self,
        req: &Req,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
        // Opening may wait for a free stream slot; it shares the write bound.
        let timeout = Duration::from_millis(crate::FRAME_TIMEOUT_MS);
        self.bounded(self.open(req), timeout, "sending a request")
            .await
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, Error>>,
        timeout: Duration,
        action: &str,
    ) -> Result<T, Error> {
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result.map_err(|e| e.at_peer(self.remote_addr())),
            Err(_) => Err(Error::Timeout {
                action: format!("{action} ({})", self.remote_addr()),
                timeout_ms: duration_ms(timeout),
            }),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("remote_addr", &self.remote_addr())
            .field("peer_fingerprint", &self.peer_fingerprint)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The sending half of a stream opened with [`Connection::open_duplex`]. Dropping it ends the
/// stream cleanly (the server reads the end after the frames sent).
#[derive(Debug)]
pub struct FrameSink {
    send: quinn::SendStream,
    remote_addr: SocketAddr,
}

impl FrameSink {
    /// Sends one more frame, within [`crate::FRAME_TIMEOUT_MS`].
    pub async fn send<T: Serialize>(&mut self, value: &T) -> Result<(), Error> {
        crate::frame::write_frame(&mut self.send, value)
            .await
            .map_err(|e| e.at_peer(self.remote_addr))
    }

    /// Sends bytes already encoded as whole frames ([`crate::encode_frame`]), within
    /// [`crate::FRAME_TIMEOUT_MS`].
    pub(crate) async fn send_encoded(&mut self, frames: &[u8]) -> Result<(), Error> {
        let remote_addr = self.remote_addr;
        let write = async {
            self.send
                .write_all(frames)
                .await
                .map_err(|e| crate::frame::write_error(e).at_peer(remote_addr))
        };
        crate::frame::within_frame_timeout(write, || format!("writing frames ({remote_addr})"))
            .await
    }

    /// Abandons the stream: the server's next read fails rather than seeing a clean end.
    pub fn abort(mut self) {
        let _ = self
            .send
            .reset(quinn::VarInt::from_u32(crate::STREAM_CODE_HANDLER_FAILED));
    }
}

impl Drop for FrameSink {
    fn drop(&mut self) {
        let _ = self.send.finish();
    }
}

/// The response frames of one request, in the order the server sent them.
#[derive(Debug)]
pub struct ResponseStream {
    recv: quinn::RecvStream,
    remote_addr: SocketAddr,
}

impl ResponseStream {
    pub(crate) fn new(recv: quinn::RecvStream, remote_addr: SocketAddr) -> ResponseStream {
        ResponseStream { recv, remote_addr }
    }

    /// Reads raw body bytes (sent with [`crate::Responder::send_raw`] after the frames) into
    /// `buffer`: the count read, 0 once the server finished the stream. `timeout` bounds the
    /// wait for this read. A stream the server abandoned is an error, never a short end.
    pub async fn read_raw(&mut self, buffer: &mut [u8], timeout: Duration) -> Result<usize, Error> {
        match tokio::time::timeout(timeout, self.recv.read(buffer)).await {
            Ok(Ok(Some(read))) => Ok(read),
            Ok(Ok(None)) => Ok(0),
            Ok(Err(error)) => Err(crate::frame::read_error(error).at_peer(self.remote_addr)),
            Err(_) => Err(Error::Timeout {
                action: format!("waiting for body bytes ({})", self.remote_addr),
                timeout_ms: duration_ms(timeout),
            }),
        }
    }

    /// The next response frame, or `None` once the server finished the response, without a
    /// time limit (for a stream that may stay quiet for as long as the connection lives).
    pub async fn next_untimed<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        read_frame_untimed(&mut self.recv)
            .await
            .map_err(|e| e.at_peer(self.remote_addr))
    }

    /// The next response frame, or `None` once the server finished the
    /// response. `timeout` bounds the wait for this one frame; after an
    /// error the stream must not be read again.
    pub async fn next<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<T>, Error> {
        match tokio::time::timeout(timeout, read_frame_untimed(&mut self.recv)).await {
            Ok(result) => result.map_err(|e| e.at_peer(self.remote_addr)),
            Err(_) => Err(Error::Timeout {
                action: format!("waiting for the next response frame ({})", self.remote_addr),
                timeout_ms: duration_ms(timeout),
            }),
        }
    }
}
