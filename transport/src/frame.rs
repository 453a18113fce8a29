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
    within_frame_timeout(write_frame_untimed(send, value), || {
        "writing a frame".into()
    })
    .await
}

/// `work` within [`FRAME_TIMEOUT_MS`]; `action` names it in the time-out's error.
pub(crate) async fn within_frame_timeout<T>(
    work: impl std::future::Future<Output = Result<T, Error>>,
    action: impl FnOnce() -> String,
) -> Result<T, Error> {
    let timeout_ms = FRAME_TIMEOUT_MS;
    match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            action: action(),
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
    match tokio::time::timeout(timeout, read_frame_limited_untimed(recv, len_max)).await {
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
    read_frame_limited_untimed(recv, FRAME_LEN_MAX).await
}

/// [`read_frame_limited`] without the time limit: for a stream that may stay quiet between
/// frames for as long as the connection lives.
pub(crate) async fn read_frame_limited_untimed<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    len_max: usize,
) -> Result<Option<T>, Error> {
    match read_payload(recv, len_max.min(FRAME_LEN_MAX)).await? {
        Some(payload) => decode_payload(&payload).map(Some),
        None => Ok(None),
    }
}

/// Reads frames from a stream that stays open, through a buffer: reading is cancel-safe (a
/// frame read in part stays buffered for the next call), and one read from QUIC may yield
/// several frames. The buffer holds one frame in part and one piece read at most.
#[derive(Debug)]
pub(crate) struct FrameBuffer {
    recv: quinn::RecvStream,
    buffer: Vec<u8>,
    /// Where the unread bytes start in `buffer`.
    start: usize,
    len_max: usize,
    finished: bool,
}

impl FrameBuffer {
    /// Frames of at most `len_max` bytes (and never more than [`FRAME_LEN_MAX`]).
    pub(crate) fn new(recv: quinn::RecvStream, len_max: usize) -> FrameBuffer {
        FrameBuffer {
            recv,
            buffer: Vec::new(),
            start: 0,
            len_max: len_max.min(FRAME_LEN_MAX),
            finished: false,
        }
    }

    /// The next frame, or `None` once the peer finished the stream between frames.
    pub(crate) async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        self.next_with(decode_payload).await?.transpose()
    }

    /// What `read` makes of the next frame's payload, or `None` once the peer finished the
    /// stream between frames. The frame is consumed whatever `read` answers, so a payload
    /// that does not decode leaves the stream at the next frame.
    pub(crate) async fn next_with<R>(
        &mut self,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, Error> {
        loop {
            let unread = &self.buffer[self.start..];
            // The bytes the next frame needs in all, as far as they are known.
            let mut expected = HEADER_LEN;
            if unread.len() >= HEADER_LEN {
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&unread[..HEADER_LEN]);
                let len = frame_len(header, self.len_max)?;
                expected = HEADER_LEN + len;
                if unread.len() >= expected {
                    let value = read(&unread[HEADER_LEN..HEADER_LEN + len]);
                    self.start += HEADER_LEN + len;
                    if self.start == self.buffer.len() {
                        self.buffer.clear();
                        self.start = 0;
                    }
                    return Ok(Some(value));
                }
            }
            if self.finished {
                return match unread.len() {
                    0 => Ok(None),
                    received => Err(Error::TruncatedFrame { expected, received }),
                };
            }
            // Cancel-safe: a chunk is taken from QUIC only when this returns it.
            match self.recv.read_chunk(READ_CHUNK_LEN_MAX, true).await {
                Ok(Some(chunk)) => {
                    if self.start > 0 {
                        self.buffer.drain(..self.start);
                        self.start = 0;
                    }
                    self.buffer.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => self.finished = true,
                Err(e) => return Err(read_error(e)),
            }
        }
    }
}

/// The payload length a frame's prefix announces, refused over `len_max` before anything of
/// the payload is read.
fn frame_len(header: [u8; HEADER_LEN], len_max: usize) -> Result<usize, Error> {
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > len_max {
        return Err(Error::FrameTooLarge { len, max: len_max });
    }
    Ok(len)
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
    let len = frame_len(header, len_max)?;
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

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

    /// Property tests: what any payload or stream of bytes does to the decoder.
    mod properties {
        use super::*;
        use crate::testutil::{raw_connection, RawConnection};
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;
        use proptest::test_runner::{TestCaseError, TestRunner};

        /// A message with the shapes requests have: integers, strings, lists, options and a
        /// nested enum.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        enum Rich {
            Ping(u32),
            Text(String),
            Record {
                name: String,
                items: Vec<u64>,
                note: Option<String>,
                bytes: Vec<u8>,
                inner: Option<Msg>,
                flag: bool,
            },
        }

        fn rich() -> impl Strategy<Value = Rich> {
            let inner = prop_oneof![
                any::<u32>().prop_map(Msg::Ping),
                ".{0,8}".prop_map(Msg::Text)
            ];
            prop_oneof![
                any::<u32>().prop_map(Rich::Ping),
                ".{0,40}".prop_map(Rich::Text),
                (
                    ".{0,16}",
                    vec(any::<u64>(), 0..6),
                    prop::option::of(".{0,8}"),
                    vec(any::<u8>(), 0..48),
                    prop::option::of(inner),
                    any::<bool>(),
                )
                    .prop_map(|(name, items, note, bytes, inner, flag)| {
                        Rich::Record {
                            name,
                            items,
                            note,
                            bytes,
                            inner,
                            flag,
                        }
                    }),
            ]
        }

        /// A byte edit of an encoded payload.
        #[derive(Clone, Debug)]
        enum Edit {
            Set(Index, u8),
            Insert(Index, u8),
            Remove(Index),
        }

        fn edit() -> impl Strategy<Value = Edit> {
            prop_oneof![
                (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set(at, byte)),
                (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
                any::<Index>().prop_map(Edit::Remove),
            ]
        }

        fn apply_edit(payload: &mut Vec<u8>, edit: &Edit) {
            match edit {
                Edit::Set(at, byte) if !payload.is_empty() => {
                    let at = at.index(payload.len());
                    payload[at] = *byte;
                }
                Edit::Insert(at, byte) => {
                    let at = at.index(payload.len() + 1);
                    payload.insert(at, *byte);
                }
                Edit::Remove(at) if !payload.is_empty() => {
                    let at = at.index(payload.len());
                    payload.remove(at);
                }
                _ => {}
            }
        }

        fn payload_of(value: &Rich) -> Vec<u8> {
            encode_frame(value).expect("a small value encodes")[HEADER_LEN..].to_vec()
        }

        /// Decodes `payload`: either it is refused as a malformed frame, or it is the one
        /// encoding of what it decodes to (re-encoding gives the same bytes back).
        fn check_decode(payload: &[u8]) -> Result<(), TestCaseError> {
            match decode_payload::<Rich>(payload) {
                Ok(value) => prop_assert_eq!(payload_of(&value), payload),
                Err(error) => {
                    prop_assert!(matches!(error, Error::MalformedFrame(_)), "{:?}", error)
                }
            }
            Ok(())
        }

        proptest! {
            /// Goal: what is sent is what is read. Method: encode any value; the prefix is
            /// the payload's length and the payload decodes to the value.
            #[test]
            fn a_frame_round_trips(value in rich()) {
                let frame = encode_frame(&value).expect("encodes");
                let mut prefix = [0u8; HEADER_LEN];
                prefix.copy_from_slice(&frame[..HEADER_LEN]);
                prop_assert_eq!(u32::from_be_bytes(prefix) as usize, frame.len() - HEADER_LEN);
                prop_assert_eq!(decode_payload::<Rich>(&frame[HEADER_LEN..]).expect("decodes"), value);
            }

            /// Goal: any bytes a peer sends decode or are refused, never panic, and never
            /// decode to something else than they encode. Method: random payloads.
            #[test]
            fn arbitrary_payloads_decode_canonically_or_are_refused(
                payload in vec(any::<u8>(), 0..256),
            ) {
                check_decode(&payload)?;
            }

            /// Goal: as above, on payloads close to valid ones (where a decoder's length
            /// and tag checks are reached). Method: a few byte edits of an encoded value.
            #[test]
            fn edited_payloads_decode_canonically_or_are_refused(
                value in rich(),
                edits in vec(edit(), 1..4),
            ) {
                let mut payload = payload_of(&value);
                for edit in &edits {
                    apply_edit(&mut payload, edit);
                }
                check_decode(&payload)?;
            }

            /// Goal: a payload cut short or followed by anything is refused (bincode reads
            /// a fixed structure; trailing bytes are an error). Method: cut at every
            /// position the case picks, and append 1 to 8 bytes.
            #[test]
            fn a_cut_or_padded_payload_is_refused(
                value in rich(),
                cut in any::<Index>(),
                extra in vec(any::<u8>(), 1..8),
            ) {
                let payload = payload_of(&value);
                let cut_payload = &payload[..cut.index(payload.len())];
                let cut_result = decode_payload::<Rich>(cut_payload);
                prop_assert!(matches!(cut_result, Err(Error::MalformedFrame(_))), "{:?}", cut_result);
                let padded = [payload.as_slice(), &extra].concat();
                let padded_result = decode_payload::<Rich>(&padded);
                prop_assert!(matches!(padded_result, Err(Error::MalformedFrame(_))), "{:?}", padded_result);
            }
        }

        /// A current-thread runtime and one connection, shared by the cases of a test.
        fn rig() -> (tokio::runtime::Runtime, RawConnection) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let connection = runtime.block_on(raw_connection());
            (runtime, connection)
        }

        /// Opens a stream, writes `bytes` (and finishes it if `finish`), and accepts it.
        async fn stream_with(
            connection: &RawConnection,
            bytes: &[u8],
            finish: bool,
        ) -> (quinn::SendStream, quinn::RecvStream) {
            let (mut send, _recv) = connection.client.open_bi().await.expect("open");
            send.write_all(bytes).await.expect("write");
            if finish {
                send.finish().expect("finish");
            }
            let (_server_send, recv) = connection.server.accept_bi().await.expect("accept");
            (send, recv)
        }

        /// Goal: the reader returns each whole frame of a stream, then says how the stream
        /// ended: cleanly between frames, or cut in a frame (with how much of it arrived).
        /// Method: 0 to 4 encoded values, the stream cut at any byte (or not), read over
        /// QUIC until the end or an error. 48 cases, one connection.
        #[test]
        fn a_stream_of_frames_reads_back_until_it_is_cut() {
            let (runtime, connection) = rig();
            let mut runner = TestRunner::new(ProptestConfig::with_cases(48));
            let strategy = (vec(rich(), 0..4), prop::option::of(any::<Index>()));
            let result = runner.run(&strategy, |(values, cut)| {
                let frames: Vec<Vec<u8>> = values
                    .iter()
                    .map(|value| encode_frame(value).expect("encodes"))
                    .collect();
                let all = frames.concat();
                let cut_at = cut.map_or(all.len(), |cut| cut.index(all.len() + 1));
                runtime.block_on(async {
                    let (_send, mut recv) = stream_with(&connection, &all[..cut_at], true).await;
                    let mut offset = 0;
                    for (value, frame) in values.iter().zip(&frames) {
                        let read = read_frame::<Rich>(&mut recv).await;
                        if offset + frame.len() <= cut_at {
                            prop_assert_eq!(read.expect("a whole frame"), Some(value.clone()));
                            offset += frame.len();
                            continue;
                        }
                        let received = cut_at - offset;
                        let (expected, received) = if received < HEADER_LEN {
                            (HEADER_LEN, received)
                        } else {
                            (frame.len() - HEADER_LEN, received - HEADER_LEN)
                        };
                        if received == 0 && expected == HEADER_LEN {
                            // Cut between frames: a clean end.
                            prop_assert!(matches!(read, Ok(None)), "{:?}", read);
                        } else {
                            prop_assert!(
                                matches!(read, Err(Error::TruncatedFrame { expected: e, received: r })
                                    if e == expected && r == received),
                                "{:?}, expected {} received {}", read, expected, received
                            );
                        }
                        return Ok(());
                    }
                    let end = read_frame::<Rich>(&mut recv).await;
                    prop_assert!(matches!(end, Ok(None)), "{:?}", end);
                    Ok(())
                })
            });
            if let Err(error) = result {
                panic!("{error}");
            }
        }

        /// Goal: a peer announcing a frame longer than the limit is refused at once, before
        /// any of its payload is read (the payload is never sent and the stream stays open,
        /// so waiting for it would time out). Method: a limit and a longer announced length,
        /// over QUIC. 48 cases, one connection.
        #[test]
        fn a_length_over_the_limit_is_refused_before_the_payload() {
            let (runtime, connection) = rig();
            let mut runner = TestRunner::new(ProptestConfig::with_cases(48));
            let strategy = (0..=FRAME_LEN_MAX, any::<u32>()).prop_map(|(len_max, len)| {
                let len = (len as usize).max(len_max + 1);
                (len_max, u32::try_from(len).unwrap_or(u32::MAX))
            });
            let result = runner.run(&strategy, |(len_max, len)| {
                runtime.block_on(async {
                    let (_send, mut recv) =
                        stream_with(&connection, &len.to_be_bytes(), false).await;
                    let read = read_frame_limited::<Rich>(
                        &mut recv,
                        Duration::from_secs(5),
                        len_max,
                    )
                    .await;
                    prop_assert!(
                        matches!(read, Err(Error::FrameTooLarge { len: l, max }) if l == len as usize && max == len_max),
                        "{:?}", read
                    );
                    Ok(())
                })
            });
            if let Err(error) = result {
                panic!("{error}");
            }
        }
    }
}
