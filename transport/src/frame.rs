//! Framing: a frame is a 4-byte big-endian payload length followed by a
//! bincode payload.
//!
//! Encoding is bincode 1.x with fixed-width integers, and trailing bytes
//! after the value are an error. bincode is not self-describing, so
//! message types must not rely on `deserialize_any` (no
//! `#[serde(untagged)]`, `#[serde(flatten)]` or `serde_json::Value`).
//!
//! After any read or write error, including a time-out, the stream is in an
//! unknown position and must be abandoned.

use std::time::Duration;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Largest payload a frame may carry, in bytes.
pub const FRAME_LEN_MAX: usize = 32 * 1024 * 1024;

/// Time limit for each [`read_frame`] and [`write_frame`] call.
pub const FRAME_TIMEOUT_MS: u64 = 30_000;

/// Size of the length prefix.
const HEADER_LEN: usize = 4;

/// Largest piece read from the stream at once, so that a peer claiming a
/// large frame cannot make us allocate the whole length up front.
const READ_CHUNK_LEN_MAX: usize = 64 * 1024;

/// Encodes `value` and writes it as one frame, within [`FRAME_TIMEOUT_MS`].
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    value: &T,
) -> Result<(), Error> {
    let timeout_ms = FRAME_TIMEOUT_MS;
    match tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        write_frame_untimed(send, value),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            action: "writing a frame".into(),
            timeout_ms,
        }),
    }
}

/// Reads one frame and decodes it, within [`FRAME_TIMEOUT_MS`].
/// `Ok(None)` means the peer finished the stream cleanly between frames.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, Error> {
    read_frame_timeout(recv, Duration::from_millis(FRAME_TIMEOUT_MS)).await
}

/// Like [`read_frame`] with an explicit time limit for the whole frame.
pub async fn read_frame_timeout<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    timeout: Duration,
) -> Result<Option<T>, Error> {
    read_frame_limited(recv, timeout, FRAME_LEN_MAX).await
}

/// Like [`read_frame_timeout`], refusing a frame whose announced length is over `len_max`
/// before any of its payload is read or decoded.
pub async fn read_frame_limited<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    timeout: Duration,
    len_max: usize,
) -> Result<Option<T>, Error> {
    let read = async {
        match read_payload(recv, len_max.min(FRAME_LEN_MAX)).await? {
            Some(payload) => decode_payload(&payload).map(Some),
            None => Ok(None),
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            action: "reading a frame".into(),
            timeout_ms: duration_ms(timeout),
        }),
    }
}

/// Encodes `value` as a complete frame (length prefix included).
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let encode_error = |e: bincode::Error| Error::Encode(e.to_string());
    // Measure first (no allocation) so an oversized value is refused
    // before it is serialized.
    let size = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .serialized_size(value)
        .map_err(encode_error)?;
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= FRAME_LEN_MAX)
        .ok_or(Error::FrameTooLarge {
            len,
            max: FRAME_LEN_MAX,
        })?;
    let mut buf = Vec::with_capacity(HEADER_LEN + len);
    buf.extend_from_slice(&prefix.to_be_bytes());
    codec()
        .serialize_into(&mut buf, value)
        .map_err(encode_error)?;
    Ok(buf)
}

/// Decodes a frame payload (without its length prefix).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    codec()
        .deserialize(payload)
        .map_err(|e| Error::MalformedFrame(e.to_string()))
}

/// [`write_frame`] without the time limit; callers bound the whole exchange.
pub(crate) async fn write_frame_untimed<T: Serialize>(
    send: &mut quinn::SendStream,
    value: &T,
) -> Result<(), Error> {
    let buf = encode_frame(value)?;
    send.write_all(&buf).await.map_err(write_error)
}

/// [`read_frame`] without the time limit; callers bound the whole exchange.
pub(crate) async fn read_frame_untimed<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, Error> {
    match read_payload(recv, FRAME_LEN_MAX).await? {
        Some(payload) => decode_payload(&payload).map(Some),
        None => Ok(None),
    }
}

/// Reads the length prefix and the payload bytes of one frame.
async fn read_payload(
    recv: &mut quinn::RecvStream,
    len_max: usize,
) -> Result<Option<Vec<u8>>, Error> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(received)) => {
            return Err(Error::TruncatedFrame {
                expected: HEADER_LEN,
                received,
            })
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
    }
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > len_max {
        return Err(Error::FrameTooLarge { len, max: len_max });
    }
    let mut payload = Vec::with_capacity(len.min(READ_CHUNK_LEN_MAX));
    while payload.len() < len {
        let want = (len - payload.len()).min(READ_CHUNK_LEN_MAX);
        match recv.read_chunk(want, true).await {
            Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(Error::TruncatedFrame {
                    expected: len,
                    received: payload.len(),
                })
            }
            Err(e) => return Err(read_error(e)),
        }
    }
    Ok(Some(payload))
}

/// The bincode configuration shared by both directions.
fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(FRAME_LEN_MAX as u64)
}

pub(crate) fn read_error(e: quinn::ReadError) -> Error {
    match e {
        quinn::ReadError::Reset(code) => remote(code.into_inner()),
        quinn::ReadError::ConnectionLost(e) => Error::ConnectionLost {
            reason: e.to_string(),
        },
        other => Error::ConnectionLost {
            reason: format!("stream unusable: {other}"),
        },
    }
}

pub(crate) fn write_error(e: quinn::WriteError) -> Error {
    match e {
        quinn::WriteError::Stopped(code) => remote(code.into_inner()),
        quinn::WriteError::ConnectionLost(e) => Error::ConnectionLost {
            reason: e.to_string(),
        },
        other => Error::ConnectionLost {
            reason: format!("stream unusable: {other}"),
        },
    }
}

/// Stream error code: the request frame could not be read or decoded.
pub const STREAM_CODE_MALFORMED_REQUEST: u32 = 1;
/// Stream error code: the handler failed (panicked) before finishing.
pub const STREAM_CODE_HANDLER_FAILED: u32 = 2;

fn remote(code: u64) -> Error {
    let meaning = match code {
        0 => "stream abandoned",
        c if c == u64::from(STREAM_CODE_MALFORMED_REQUEST) => {
            "the peer could not read or decode the request"
        }
        c if c == u64::from(STREAM_CODE_HANDLER_FAILED) => "the peer's request handler failed",
        _ => "unknown code",
    };
    Error::Remote { code, meaning }
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::raw_pair;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u32),
        Text(String),
    }

    #[test]
    fn encode_decode_roundtrip() {
        let frame = encode_frame(&Msg::Text("hi".into())).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(
            decode_payload::<Msg>(&frame[4..]).unwrap(),
            Msg::Text("hi".into())
        );
        assert!(matches!(
            decode_payload::<Msg>(&[0xff; 7]),
            Err(Error::MalformedFrame(_))
        ));
        let huge = vec![0u8; FRAME_LEN_MAX + 1];
        assert!(matches!(
            encode_frame(&huge),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn frames_over_quic() {
        let mut pair = raw_pair(&encode_frame(&Msg::Ping(7)).unwrap(), false).await;
        write_frame(&mut pair.client_send, &Msg::Text("x".into()))
            .await
            .unwrap();
        pair.client_send.finish().unwrap();
        let recv = &mut pair.server_recv;
        assert_eq!(read_frame::<Msg>(recv).await.unwrap(), Some(Msg::Ping(7)));
        assert_eq!(
            read_frame::<Msg>(recv).await.unwrap(),
            Some(Msg::Text("x".into()))
        );
        assert_eq!(read_frame::<Msg>(recv).await.unwrap(), None);
    }

    async fn read_raw(bytes: &[u8]) -> Result<Option<Msg>, Error> {
        let mut pair = raw_pair(bytes, true).await;
        read_frame::<Msg>(&mut pair.server_recv).await
    }

    #[tokio::test]
    async fn bad_frames_are_rejected() {
        let oversized = read_raw(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
        assert!(matches!(
            oversized,
            Err(Error::FrameTooLarge { len, max })
                if len == u32::MAX as usize && max == FRAME_LEN_MAX
        ));
        let garbage = read_raw(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await;
        assert!(matches!(garbage, Err(Error::MalformedFrame(_))));
        let short_payload = read_raw(&[0, 0, 0, 10, 0, 0]).await;
        assert!(matches!(
            short_payload,
            Err(Error::TruncatedFrame {
                expected: 10,
                received: 2
            })
        ));
        let short_header = read_raw(&[0, 0]).await;
        assert!(matches!(
            short_header,
            Err(Error::TruncatedFrame {
                expected: 4,
                received: 2
            })
        ));
        assert!(matches!(read_raw(&[]).await, Ok(None)));
    }

    #[tokio::test]
    async fn a_smaller_limit_refuses_before_reading_the_payload() {
        // Announces 5000 bytes but sends none: the limit answers without waiting for them.
        let mut pair = raw_pair(&[0, 0, 0x13, 0x88], false).await;
        let result =
            read_frame_limited::<Msg>(&mut pair.server_recv, Duration::from_secs(5), 4096).await;
        assert!(matches!(
            result,
            Err(Error::FrameTooLarge {
                len: 5000,
                max: 4096
            })
        ));
    }

    #[tokio::test]
    async fn read_times_out_mid_frame() {
        let mut pair = raw_pair(&[0, 0, 0, 10], false).await;
        let timeout = Duration::from_millis(100);
        let result = read_frame_timeout::<Msg>(&mut pair.server_recv, timeout).await;
        assert!(matches!(
            result,
            Err(Error::Timeout {
                timeout_ms: 100,
                ..
            })
        ));
    }
}
