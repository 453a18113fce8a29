//! The key-value space scripts share (`kv.*`): part of the replicated cluster state, so every
//! write goes through the Raft log and reads are served by the leader once it has confirmed
//! it leads (linearizable).
//!
//! Values are JSON text (what a Lua value becomes); a compare-and-set compares values, not
//! their text, so `{a=1, b=2}` equals itself whatever order its keys were written in. The
//! answers of `cas` and `incr` are computed when the command is applied and kept (the last
//! [`RESULTS_KEPT`]) under the command's id, so the leader reads the answer of its own write,
//! and a retried request gets the first answer rather than applying twice.
//!
//! | limit | value |
//! |---|---|
//! | key | 1 to 256 bytes of UTF-8, no control characters |
//! | value (JSON text) | 64 KiB |
//! | keys | 65,536 |
//! | keys and values in all | 64 MiB |
//! | `incr` | 64-bit signed integers; overflow is refused |

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::ClusterState;

/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 256;
/// Longest value (its JSON text), in bytes.
pub const VALUE_BYTES_MAX: usize = 64 * 1024;
/// Most keys in the space.
pub const KEYS_MAX: usize = 65_536;
/// Most bytes of keys and values in the space.
pub const SPACE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Answers of `cas` and `incr` kept for their requests.
pub const RESULTS_KEPT: usize = 16_384;

/// A change to the key-value space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KvCommand {
    /// `kv.set(key, value)`.
    Set {
        /// The key.
        key: String,
        /// The value, as JSON text.
        value: String,
    },
    /// `kv.delete(key)` (a key that is not there is no error).
    Delete {
        /// The key.
        key: String,
    },
    /// `kv.cas(key, expected, new)`: sets `new` (or deletes, `None`) only if the key holds
    /// `expected` (or is absent, `None`); answers `true` or `false`.
    Cas {
        /// The key.
        key: String,
        /// The value expected, as JSON text; `None`: the key must be absent.
        expected: Option<String>,
        /// The new value, as JSON text; `None`: delete the key.
        new: Option<String>,
        /// Where the answer is kept.
        result_id: u128,
    },
    /// `kv.incr(key, delta)`: adds `delta` to the integer at `key` (absent: 0); answers the
    /// new value.
    Incr {
        /// The key.
        key: String,
        /// What to add.
        delta: i64,
        /// Where the answer is kept.
        result_id: u128,
    },
}

impl KvCommand {
    /// The size limits of the command's fields.
    pub fn check_fields(&self) -> Result<(), String> {
        match self {
            KvCommand::Set { key, value } => {
                check_key(key)?;
                check_value(key, value)
            }
            KvCommand::Delete { key } | KvCommand::Incr { key, .. } => check_key(key),
            KvCommand::Cas {
                key, expected, new, ..
            } => {
                check_key(key)?;
                for value in [expected, new].into_iter().flatten() {
                    check_value(key, value)?;
                }
                Ok(())
            }
        }
    }
}

/// Whether `key` may name a value: 1 to [`KEY_BYTES_MAX`] bytes, no control characters.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a kv key cannot be empty".to_string());
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "the kv key \"{}...\" is {} bytes, over the limit of {KEY_BYTES_MAX}",
            key.chars().take(32).collect::<String>(),
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("the kv key {key:?} has a control character"));
    }
    Ok(())
}

/// Whether `value` (JSON text) may be stored under `key`: at most [`VALUE_BYTES_MAX`] bytes.
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(format!(
            "the value for kv key \"{key}\" is {} bytes once encoded, over the limit of {VALUE_BYTES_MAX}",
            value.len()
        ));
    }
    Ok(())
}

/// The key-value space.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KvSpace {
    /// Values (JSON text) by key.
    entries: BTreeMap<String, String>,
    /// Bytes of keys and values.
    bytes: usize,
    /// Answers of recent `cas` and `incr` commands (JSON text), by result id (random; hashed
    /// with foldhash, as [`crate::requests::RecentRequests`] does).
    results: HashMap<u128, String, foldhash::fast::RandomState>,
    /// Result ids, oldest first.
    order: VecDeque<u128>,
}

impl KvSpace {
    /// The value (JSON text) at `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Keys starting with `prefix` and their values, in key order, at most `limit`.
    pub fn list(&self, prefix: &str, limit: usize) -> Vec<(&str, &str)> {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect()
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The answer of the `cas` or `incr` with `result_id`, if it was applied and is still kept.
    pub fn result(&self, result_id: u128) -> Option<&str> {
        self.results.get(&result_id).map(String::as_str)
    }

    fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        let old = self.entries.get(key).map_or(0, |old| key.len() + old.len());
        let bytes = self.bytes - old + key.len() + value.len();
        if old == 0 && self.entries.len() >= KEYS_MAX {
            return Err(format!(
                "the kv space holds {KEYS_MAX} keys, its limit: delete some first"
            ));
        }
        if bytes > SPACE_BYTES_MAX {
            return Err(format!(
                "the kv space would hold {bytes} bytes, over its limit of {SPACE_BYTES_MAX}: delete some keys first"
            ));
        }
        self.entries.insert(key.to_string(), value.to_string());
        self.bytes = bytes;
        Ok(())
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= key.len() + old.len();
        }
    }

    fn keep_result(&mut self, result_id: u128, answer: String) {
        if self.results.insert(result_id, answer).is_some() {
            return;
        }
        self.order.push_back(result_id);
        while self.order.len() > RESULTS_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.results.remove(&oldest);
            }
        }
    }

    /// Applies `command` (deterministic).
    pub fn apply(&mut self, command: &KvCommand) -> Result<(), String> {
        match command {
            KvCommand::Set { key, value } => {
                parse(key, value)?;
                self.put(key, value)
            }
            KvCommand::Delete { key } => {
                self.remove(key);
                Ok(())
            }
            KvCommand::Cas {
                key,
                expected,
                new,
                result_id,
            } => {
                let expected = expected
                    .as_deref()
                    .map(|text| parse(key, text))
                    .transpose()?;
                let current = self.get(key).map(|text| parse(key, text)).transpose()?;
                let swapped = current == expected;
                if swapped {
                    match new {
                        Some(value) => {
                            parse(key, value)?;
                            self.put(key, value)?;
                        }
                        None => self.remove(key),
                    }
                }
                self.keep_result(*result_id, swapped.to_string());
                Ok(())
            }
            KvCommand::Incr {
                key,
                delta,
                result_id,
            } => {
                let current = match self.get(key) {
                    None => 0,
                    Some(text) => match parse(key, text)? {
                        serde_json::Value::Number(number) if number.is_i64() => {
                            number.as_i64().unwrap_or_default()
                        }
                        other => {
                            return Err(format!(
                                "kv key \"{key}\" holds {}, not an integer",
                                short(&other.to_string())
                            ))
                        }
                    },
                };
                let new = current.checked_add(*delta).ok_or_else(|| {
                    format!("kv.incr of \"{key}\" by {delta} would overflow a 64-bit integer")
                })?;
                self.put(key, &new.to_string())?;
                self.keep_result(*result_id, new.to_string());
                Ok(())
            }
        }
    }
}

fn parse(key: &str, text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text)
        .map_err(|error| format!("the value for kv key \"{key}\" is not JSON: {error}"))
}

fn short(text: &str) -> String {
    if text.len() <= 40 {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(40).collect::<String>())
    }
}

impl ClusterState {
    /// Applies a key-value command.
    pub(crate) fn apply_kv(&mut self, command: &KvCommand) -> Result<(), String> {
        self.kv.apply(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(space: &mut KvSpace, key: &str, delta: i64, id: u128) -> Result<String, String> {
        space.apply(&KvCommand::Incr {
            key: key.into(),
            delta,
            result_id: id,
        })?;
        Ok(space.result(id).unwrap().to_string())
    }

    fn cas(space: &mut KvSpace, expected: Option<&str>, new: Option<&str>, id: u128) -> String {
        space
            .apply(&KvCommand::Cas {
                key: "k".into(),
                expected: expected.map(Into::into),
                new: new.map(Into::into),
                result_id: id,
            })
            .unwrap();
        space.result(id).unwrap().to_string()
    }

    #[test]
    fn incr_counts_from_zero_and_refuses_what_is_not_an_integer() {
        let mut space = KvSpace::default();
        assert_eq!(incr(&mut space, "n", 1, 1).unwrap(), "1");
        assert_eq!(incr(&mut space, "n", 41, 2).unwrap(), "42");
        assert_eq!(incr(&mut space, "n", -50, 3).unwrap(), "-8");
        space
            .apply(&KvCommand::Set {
                key: "s".into(),
                value: "\"text\"".into(),
            })
            .unwrap();
        let error = incr(&mut space, "s", 1, 4).unwrap_err();
        assert!(error.contains("not an integer"), "{error}");
        incr(&mut space, "big", i64::MAX, 5).unwrap();
        let error = incr(&mut space, "big", 1, 6).unwrap_err();
        assert!(error.contains("overflow"), "{error}");
        assert_eq!(space.get("big"), Some(i64::MAX.to_string().as_str()));
    }

    #[test]
    fn cas_compares_values_not_text_and_can_create_and_delete() {
        let mut space = KvSpace::default();
        assert_eq!(cas(&mut space, Some("1"), Some("2"), 1), "false");
        assert_eq!(space.get("k"), None);
        assert_eq!(cas(&mut space, None, Some(r#"{"a":1,"b":[2]}"#), 2), "true");
        assert_eq!(cas(&mut space, None, Some("3"), 3), "false");
        assert_eq!(
            cas(&mut space, Some(r#"{ "b": [2], "a": 1 }"#), Some("4"), 4),
            "true"
        );
        assert_eq!(space.get("k"), Some("4"));
        assert_eq!(cas(&mut space, Some("4"), None, 5), "true");
        assert!(space.is_empty());
        assert_eq!(space.bytes, 0);
    }

    #[test]
    fn limits_are_named() {
        assert!(check_key("").unwrap_err().contains("empty"));
        assert!(check_key(&"k".repeat(KEY_BYTES_MAX + 1))
            .unwrap_err()
            .contains("over the limit of 256"));
        assert!(check_key("a\nb").unwrap_err().contains("control"));
        let value = format!("\"{}\"", "v".repeat(VALUE_BYTES_MAX));
        let command = KvCommand::Set {
            key: "k".into(),
            value,
        };
        assert!(command
            .check_fields()
            .unwrap_err()
            .contains("value for kv key \"k\""));
        let mut space = KvSpace::default();
        for index in 0..KEYS_MAX {
            space.put(&format!("k{index}"), "1").unwrap();
        }
        let error = space.put("one more", "1").unwrap_err();
        assert!(error.contains("65536 keys"), "{error}");
        space.put("k0", "2").unwrap();
    }

    #[test]
    fn list_takes_a_prefix_in_key_order_up_to_a_limit() {
        let mut space = KvSpace::default();
        for key in ["b/2", "a/1", "b/1", "b/3", "c"] {
            space.put(key, "1").unwrap();
        }
        let keys: Vec<&str> = space
            .list("b/", 2)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys, ["b/1", "b/2"]);
        assert_eq!(space.list("", 10).len(), 5);
        assert!(space.list("d", 10).is_empty());
    }

    #[test]
    fn results_are_kept_for_the_last_requests_only() {
        let mut space = KvSpace::default();
        for id in 0..=(RESULTS_KEPT as u128) {
            incr(&mut space, "n", 1, id).unwrap();
        }
        assert_eq!(space.result(0), None);
        assert_eq!(space.result(1), Some("2"));
        assert_eq!(space.results.len(), RESULTS_KEPT);
    }
}
