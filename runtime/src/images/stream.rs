//! Image bytes on the wire: a `Reply::ImageStream { bytes }` frame announcing the length, then
//! the bytes raw on the same QUIC stream (no frame, no serde, no copy on the sending side), then
//! the end of the stream. A sender that fails part-way resets the stream, so a receiver never
//! takes a cut body for a whole one; the receiver also checks it got exactly the length
//! announced.
//!
//! Reading a file and writing one happen on blocking threads, a few [`CHUNK_BYTES`] pieces
//! ahead of the network at most: memory stays bounded whatever the size of the image.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use starling_transport::{Responder, ResponseStream};

use super::files::{Outgoing, CHUNK_BYTES};
use crate::protocol::Reply;
use crate::Error;

/// Pieces read ahead of the network (or received ahead of the disk).
pub(crate) const PIECES_AHEAD: usize = 4;

/// Sends `path` from `offset`: the length frame, the bytes, and the end. A file that cannot be
/// opened is refused with a reply frame; a failure after the length frame resets the stream.
pub(crate) async fn send_file(responder: &mut Responder, path: &Path, offset: u64, what: &str) {
    let opened = Outgoing::open(path).and_then(|file| {
        let size = file.size()?;
        Ok((file, size))
    });
    let (file, size) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let refusal = Reply::Refused(Error::Refused(format!("{what}: {error}")));
            let _ = responder.send(&refusal).await;
            return;
        }
    };
    if offset > size {
        let refusal = Reply::Refused(Error::Refused(format!(
            "{what}: offset {offset} is beyond its {size} bytes"
        )));
        let _ = responder.send(&refusal).await;
        return;
    }
    let length = size - offset;
    if responder
        .send(&Reply::ImageStream { bytes: length })
        .await
        .is_err()
    {
        return;
    }
    let (pieces, mut next) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(PIECES_AHEAD);
    let reader = tokio::task::spawn_blocking(move || read_pieces(file, offset, length, &pieces));
    let mut sent = 0u64;
    while let Some(piece) = next.recv().await {
        let outcome = match piece {
            Ok(piece) => {
                sent += piece.len() as u64;
                responder.send_raw(piece).await.map_err(|error| {
                    tracing::debug!(%error, "image stream abandoned by the receiver");
                })
            }
            Err(error) => {
                tracing::warn!(%error, what, "could not read the image to send it");
                Err(())
            }
        };
        if outcome.is_err() {
            break;
        }
    }
    drop(next);
    let _ = reader.await;
    if sent != length {
        responder.abort();
    }
}

/// Reads `length` bytes of `file` from `offset` into pieces (blocking).
fn read_pieces(
    mut file: Outgoing,
    offset: u64,
    length: u64,
    pieces: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut done = 0;
    while done < length {
        let want = (length - done).min(CHUNK_BYTES as u64) as usize;
        let piece = file.read_at(offset + done, want);
        let failed = piece.is_err();
        if pieces.blocking_send(piece).is_err() || failed {
            return;
        }
        done += want as u64;
    }
}

/// Sends `length` zero bytes the same way (the raw stream rate, for `bench-images`).
pub(crate) async fn send_zeros(responder: &mut Responder, length: u64) {
    if responder
        .send(&Reply::ImageStream { bytes: length })
        .await
        .is_err()
    {
        return;
    }
    let zeros = Bytes::from(vec![0u8; CHUNK_BYTES]);
    let mut left = length;
    while left > 0 {
        let want = left.min(CHUNK_BYTES as u64) as usize;
        if responder.send_raw(zeros.slice(..want)).await.is_err() {
            responder.abort();
            return;
        }
        left -= want as u64;
    }
}

/// The receiving end: the announced length, then the bytes in pieces.
pub(crate) struct Body {
    stream: ResponseStream,
    length: u64,
    remaining: u64,
    silence: Duration,
}

impl Body {
    /// Reads the length frame; a refusal or another reply is the error.
    pub(crate) async fn open(mut stream: ResponseStream, silence: Duration) -> Result<Body, Error> {
        match stream.next::<Reply>(silence).await {
            Ok(Some(Reply::ImageStream { bytes })) => Ok(Body {
                stream,
                length: bytes,
                remaining: bytes,
                silence,
            }),
            Ok(Some(Reply::Refused(error))) => Err(error),
            Ok(Some(other)) => Err(Error::Internal(format!(
                "unexpected reply to an image stream: {other:?}"
            ))),
            Ok(None) => Err(Error::Transport(
                "the image stream ended before its length".to_string(),
            )),
            Err(error) => Err(Error::Transport(error.to_string())),
        }
    }

    /// The length the sender announced.
    pub(crate) fn length(&self) -> u64 {
        self.length
    }

    /// Fills `piece` with up to [`CHUNK_BYTES`] of the next bytes (its length becomes theirs);
    /// `false` once every announced byte was read. A body shorter or longer than announced is
    /// an error. A piece given back for reuse is overwritten, not zeroed first.
    pub(crate) async fn next_piece(&mut self, piece: &mut Vec<u8>) -> Result<bool, Error> {
        let want = self.remaining.min(CHUNK_BYTES as u64) as usize;
        if want == 0 {
            piece.clear();
            return self.expect_end().await.map(|()| false);
        }
        // Only bytes beyond the piece's present length are zeroed; all `want` are read over.
        piece.resize(want, 0);
        let mut filled = 0;
        while filled < want {
            let read = self
                .stream
                .read_raw(&mut piece[filled..], self.silence)
                .await
                .map_err(|error| Error::Transport(error.to_string()))?;
            if read == 0 {
                return Err(Error::Transport(format!(
                    "the image stream ended {} bytes short",
                    self.remaining - filled as u64
                )));
            }
            filled += read;
        }
        self.remaining -= want as u64;
        Ok(true)
    }

    async fn expect_end(&mut self) -> Result<(), Error> {
        let mut extra = [0u8; 1];
        match self.stream.read_raw(&mut extra, self.silence).await {
            Ok(0) => Ok(()),
            Ok(_) => Err(Error::Transport(
                "the image stream carried more bytes than announced".to_string(),
            )),
            Err(error) => Err(Error::Transport(error.to_string())),
        }
    }
}

/// Answers a long transfer: `Progress { done }` every `every` (read from `progress`) while
/// `work` runs, then `Ack` or its refusal. A client that went away ends the answer early.
pub(crate) async fn with_progress(
    responder: &mut Responder,
    progress: &std::sync::atomic::AtomicU64,
    every: Duration,
    work: impl std::future::Future<Output = Result<(), Error>>,
) -> Reply {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            result = &mut work => {
                return match result {
                    Ok(()) => Reply::Ack,
                    Err(error) => Reply::Refused(error),
                };
            }
            _ = tick.tick() => {
                let done = progress.load(std::sync::atomic::Ordering::Relaxed);
                if responder.send(&Reply::Progress { done }).await.is_err() {
                    return Reply::Ack;
                }
            }
        }
    }
}
