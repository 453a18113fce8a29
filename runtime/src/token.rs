//! Join and trust tokens as LXD encodes them: base64 of
//! `{server_name, fingerprint, addresses, secret, expires_at}`.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The decoded form of a token a joiner or a remote client holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenPayload {
    /// Name of the member (or client) the token is for.
    pub server_name: String,
    /// SHA-256 fingerprint of the cluster CA certificate the holder must see.
    pub fingerprint: String,
    /// Member addresses to try, in order.
    pub addresses: Vec<String>,
    /// 32 random bytes, hex.
    pub secret: String,
    /// Expiry as RFC 3339 UTC time.
    pub expires_at: String,
}

impl TokenPayload {
    /// Encodes the token as the string handed to the user.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    /// Decodes a token string, with an error that says what was wrong with it.
    pub fn decode(token: &str) -> Result<TokenPayload, Error> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .map_err(|error| Error::InvalidToken(format!("not base64 ({error})")))?;
        let payload: TokenPayload = serde_json::from_slice(&bytes)
            .map_err(|error| Error::InvalidToken(format!("not a Starling token ({error})")))?;
        if payload.addresses.is_empty() {
            return Err(Error::InvalidToken(
                "it lists no member addresses".to_string(),
            ));
        }
        if payload.fingerprint.len() != 64 || payload.secret.is_empty() {
            return Err(Error::InvalidToken(
                "its fingerprint or secret is malformed".to_string(),
            ));
        }
        Ok(payload)
    }
}

/// 32 random bytes as hex, for a token secret.
pub fn random_secret() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::Internal("the system random number generator failed".to_string()))?;
    Ok(hex::encode(bytes))
}

/// A random 128-bit number (request ids).
pub fn random_u128() -> Result<u128, Error> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::Internal("the system random number generator failed".to_string()))?;
    Ok(u128::from_le_bytes(bytes))
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC (`2026-11-27T16:10:09Z`).
pub fn format_time_ms(time_ms: u64) -> String {
    rfc3339(
        time_ms.saturating_mul(1_000_000),
        chrono::SecondsFormat::Secs,
    )
}

/// Formats nanoseconds since the Unix epoch as RFC 3339 UTC, with the fraction `digits` asks
/// for (`Millis`: run records; `Nanos`: events, as LXD prints them).
pub fn rfc3339(time_ns: u64, digits: chrono::SecondsFormat) -> String {
    let seconds = (time_ns / 1_000_000_000) as i64;
    let nanos = (time_ns % 1_000_000_000) as u32;
    chrono::DateTime::<chrono::Utc>::from_timestamp(seconds, nanos)
        .map(|time| time.to_rfc3339_opts(digits, true))
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_tokens() {
        let payload = TokenPayload {
            server_name: "m2".into(),
            fingerprint: "a".repeat(64),
            addresses: vec!["127.0.0.1:1".into()],
            secret: random_secret().unwrap(),
            expires_at: format_time_ms(0),
        };
        assert_eq!(TokenPayload::decode(&payload.encode()).unwrap(), payload);
        assert!(TokenPayload::decode("!!!")
            .unwrap_err()
            .to_string()
            .contains("base64"));
        let not_json = base64::engine::general_purpose::STANDARD.encode("hello");
        assert!(TokenPayload::decode(&not_json)
            .unwrap_err()
            .to_string()
            .contains("not a Starling token"));
    }

    #[test]
    fn formats_time() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time_ms(1_795_795_200_000), "2026-11-27T16:00:00Z");
    }

    /// Property tests: any string a joiner or a client pastes is decoded or refused with a
    /// reason, never panics, and a decoded token has what a joiner needs.
    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        fn payload() -> impl Strategy<Value = TokenPayload> {
            (
                ".{0,20}",
                "[0-9a-f]{64}",
                vec(".{0,24}", 1..4),
                "[0-9a-f]{1,64}",
                ".{0,24}",
            )
                .prop_map(
                    |(server_name, fingerprint, addresses, secret, expires_at)| TokenPayload {
                        server_name,
                        fingerprint,
                        addresses,
                        secret,
                        expires_at,
                    },
                )
        }

        /// Checks what a decoded token promises: an address, a 64-character fingerprint, a
        /// secret; and that it encodes back to a token that decodes to it again.
        fn check_decoded(payload: &TokenPayload) -> Result<(), TestCaseError> {
            prop_assert!(!payload.addresses.is_empty());
            prop_assert_eq!(payload.fingerprint.len(), 64);
            prop_assert!(!payload.secret.is_empty());
            prop_assert_eq!(
                &TokenPayload::decode(&payload.encode()).expect("re-decodes"),
                payload
            );
            Ok(())
        }

        proptest! {
            /// Goal: a token handed out reads back as it was, blanks around it included
            /// (a pasted token often ends with a line break).
            #[test]
            fn a_token_round_trips(
                payload in payload(),
                left in "[ \t\n]{0,2}",
                right in "[ \t\n]{0,2}",
            ) {
                let token = format!("{left}{}{right}", payload.encode());
                prop_assert_eq!(TokenPayload::decode(&token).expect("decodes"), payload);
            }

            /// Goal: a token cut short (a bad copy and paste) is refused, never half read.
            #[test]
            fn a_cut_token_is_refused(payload in payload(), cut in any::<Index>()) {
                let token = payload.encode();
                let cut = &token[..cut.index(token.len())];
                let result = TokenPayload::decode(cut);
                prop_assert!(matches!(result, Err(Error::InvalidToken(_))), "{:?}", result);
            }

            /// Goal: an edited token is refused, or decodes to a token with all a joiner
            /// needs; nothing panics. Method: change, insert or remove characters of a
            /// valid token, or of its JSON before encoding.
            #[test]
            fn an_edited_token_is_refused_or_complete(
                payload in payload(),
                in_json in any::<bool>(),
                edits in vec((any::<Index>(), any::<Option<char>>(), any::<bool>()), 1..4),
            ) {
                let mut text: Vec<char> = if in_json {
                    serde_json::to_string(&payload).expect("json").chars().collect()
                } else {
                    payload.encode().chars().collect()
                };
                for (at, replacement, insert) in edits {
                    let at = at.index(text.len() + 1);
                    match (replacement, insert) {
                        (Some(character), true) => text.insert(at, character),
                        (Some(character), false) if at < text.len() => text[at] = character,
                        (None, _) if at < text.len() => { text.remove(at); }
                        _ => {}
                    }
                }
                let text: String = text.into_iter().collect();
                let token = if in_json {
                    base64::engine::general_purpose::STANDARD.encode(text)
                } else {
                    text
                };
                match TokenPayload::decode(&token) {
                    Ok(decoded) => check_decoded(&decoded)?,
                    Err(error) => prop_assert!(matches!(error, Error::InvalidToken(_)), "{:?}", error),
                }
            }

            /// Goal: any text at all is refused with a reason or decodes to a complete token.
            #[test]
            fn any_text_is_refused_or_a_complete_token(text in ".{0,200}") {
                match TokenPayload::decode(&text) {
                    Ok(decoded) => check_decoded(&decoded)?,
                    Err(error) => prop_assert!(matches!(error, Error::InvalidToken(_)), "{:?}", error),
                }
            }

            /// Goal: a token without an address, with a fingerprint that is not 64
            /// characters, or without a secret is refused, whatever else it holds.
            #[test]
            fn an_incomplete_token_is_refused(
                payload in payload(),
                flaw in 0..3u8,
                fingerprint in "[0-9a-f]{0,63}|[0-9a-f]{65,80}",
            ) {
                let mut payload = payload;
                match flaw {
                    0 => payload.addresses.clear(),
                    1 => payload.fingerprint = fingerprint,
                    _ => payload.secret.clear(),
                }
                let result = TokenPayload::decode(&payload.encode());
                prop_assert!(matches!(result, Err(Error::InvalidToken(_))), "{:?}", result);
            }
        }
    }
}
