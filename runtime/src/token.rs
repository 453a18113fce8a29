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
    let seconds = time_ms / 1000;
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
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
}
