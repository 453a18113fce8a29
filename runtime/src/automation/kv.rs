//! `kv.*`: the key-value space scripts share, kept in the cluster database
//! ([`starling_store::kv`] holds the rules and the limits).
//!
//! Every call runs on the leader: writes are proposed (each applies once, whatever the
//! retries: it carries its request id), reads are answered once the leader has confirmed it
//! still leads, so a read sees every write acknowledged before it began. The answers of `cas`
//! and `incr` are computed where the command is applied and read back from the state under
//! the command's id, so a retried request gets its first answer.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::kv::{check_key, check_value, KvCommand};
use starling_store::Command;

use crate::cluster::join::WRITE_TIMEOUT;
use crate::member::Member;
use crate::operation::Arguments;
use crate::Error;

/// Entries `kv.list` answers with when no limit is given.
pub const LIST_DEFAULT: usize = 1_000;
/// The most entries one `kv.list` answers with.
pub const LIST_MAX: usize = 10_000;

/// A key-value operation. Values travel as JSON text (the wire format is not
/// self-describing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KvOperation {
    /// `kv.get(key)` → the value, or nil.
    Get {
        /// The key.
        key: String,
    },
    /// `kv.set(key, value)`; a nil value deletes the key, as `t[k] = nil` does in Lua.
    Set {
        /// The key.
        key: String,
        /// The value as JSON text; `None`: delete.
        value: Option<String>,
    },
    /// `kv.delete(key)`.
    Delete {
        /// The key.
        key: String,
    },
    /// `kv.cas(key, expected, new)` → true when the key held `expected` (nil: was absent) and
    /// now holds `new` (nil: deleted).
    Cas {
        /// The key.
        key: String,
        /// The value expected, JSON text; `None`: absent.
        expected: Option<String>,
        /// The new value, JSON text; `None`: delete.
        new: Option<String>,
    },
    /// `kv.incr(key [, delta])` → the new value (an absent key counts as 0).
    Incr {
        /// The key.
        key: String,
        /// What to add (1 unless given).
        delta: i64,
    },
    /// `kv.list([prefix [, {limit=}]])` → `{{key=, value=}, ...}` in key order.
    List {
        /// Keys starting with this.
        prefix: String,
        /// At most this many.
        limit: usize,
    },
}

impl KvOperation {
    /// Whether the operation changes the space.
    pub fn is_write(&self) -> bool {
        !matches!(self, KvOperation::Get { .. } | KvOperation::List { .. })
    }

    /// The operation a `kv.*` call asks for.
    pub(crate) fn from_call(arguments: &Arguments) -> Result<KvOperation, Error> {
        let key = || -> Result<String, Error> {
            let key = arguments.string(0, "key")?;
            check_key(&key)
                .map_err(|error| Error::Refused(format!("{}: {error}", arguments.name)))?;
            Ok(key)
        };
        let value = |position: usize, key: &str| -> Result<Option<String>, Error> {
            match arguments.args.get(position) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => {
                    let text = value.to_string();
                    check_value(key, &text)
                        .map_err(|error| Error::Refused(format!("{}: {error}", arguments.name)))?;
                    Ok(Some(text))
                }
            }
        };
        let operation = match arguments.name {
            "kv.get" => KvOperation::Get { key: key()? },
            "kv.set" => {
                let key = key()?;
                let value = value(1, &key)?;
                KvOperation::Set { key, value }
            }
            "kv.delete" => KvOperation::Delete { key: key()? },
            "kv.cas" => {
                let key = key()?;
                let expected = value(1, &key)?;
                let new = value(2, &key)?;
                KvOperation::Cas { key, expected, new }
            }
            "kv.incr" => {
                let key = key()?;
                let delta = match arguments.args.get(1) {
                    None | Some(Value::Null) => 1,
                    Some(Value::Number(number)) if number.is_i64() => {
                        number.as_i64().unwrap_or_default()
                    }
                    Some(other) => {
                        return Err(Error::Refused(format!(
                            "kv.incr: argument #2 (delta) must be an integer, not {other}"
                        )))
                    }
                };
                KvOperation::Incr { key, delta }
            }
            "kv.list" => {
                let prefix = match arguments.args.first() {
                    None | Some(Value::Null) => String::new(),
                    Some(_) => arguments.string(0, "prefix")?,
                };
                let limit = match arguments.args.get(1) {
                    None | Some(Value::Null) => LIST_DEFAULT,
                    Some(Value::Object(options)) => match options.get("limit") {
                        None | Some(Value::Null) => LIST_DEFAULT,
                        Some(Value::Number(number))
                            if number
                                .as_u64()
                                .is_some_and(|limit| (1..=LIST_MAX as u64).contains(&limit)) =>
                        {
                            number.as_u64().unwrap_or_default() as usize
                        }
                        Some(other) => {
                            return Err(Error::Refused(format!(
                            "kv.list: limit must be an integer from 1 to {LIST_MAX}, not {other}"
                        )))
                        }
                    },
                    Some(other) => return Err(arguments.wrong_table(1, "options", other)),
                };
                KvOperation::List { prefix, limit }
            }
            other => return Err(Error::Refused(format!("unknown built-in {other}"))),
        };
        Ok(operation)
    }
}

/// A stored value (JSON text) as JSON.
fn value_of(text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|error| Error::Internal(format!("a kv value: {error}")))
}

impl Member {
    /// Runs a key-value operation on the leader; `result_id` is where the answer of a `cas`
    /// or `incr` is kept (the id its command is tagged with).
    pub(crate) async fn kv_here(&self, operation: &KvOperation) -> Result<Value, Error> {
        match operation {
            KvOperation::Get { key } => self.local_state(|state| match state.kv.get(key) {
                Some(text) => value_of(text),
                None => Ok(Value::Null),
            }),
            KvOperation::List { prefix, limit } => self.local_state(|state| {
                state
                    .kv
                    .list(prefix, *limit)
                    .into_iter()
                    .map(|(key, text)| Ok(json!({"key": key, "value": value_of(text)?})))
                    .collect::<Result<Vec<Value>, Error>>()
                    .map(Value::Array)
            }),
            KvOperation::Set { key, value } => {
                let command = match value {
                    Some(value) => KvCommand::Set {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    None => KvCommand::Delete { key: key.clone() },
                };
                self.propose(Command::Kv(command), WRITE_TIMEOUT).await?;
                Ok(Value::Null)
            }
            KvOperation::Delete { key } => {
                self.propose(
                    Command::Kv(KvCommand::Delete { key: key.clone() }),
                    WRITE_TIMEOUT,
                )
                .await?;
                Ok(Value::Null)
            }
            KvOperation::Cas { key, expected, new } => {
                let result_id = result_id()?;
                let command = KvCommand::Cas {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: new.clone(),
                    result_id,
                };
                self.propose(Command::Kv(command), WRITE_TIMEOUT).await?;
                self.kv_result(result_id)
            }
            KvOperation::Incr { key, delta } => {
                let result_id = result_id()?;
                let command = KvCommand::Incr {
                    key: key.clone(),
                    delta: *delta,
                    result_id,
                };
                self.propose(Command::Kv(command), WRITE_TIMEOUT).await?;
                self.kv_result(result_id)
            }
        }
    }

    /// The answer kept for the `cas` or `incr` command with `result_id`.
    pub(crate) fn kv_result(&self, result_id: u128) -> Result<Value, Error> {
        self.local_state(|state| match state.kv.result(result_id) {
            Some(text) => value_of(text),
            None => Err(Error::Refused(
                "the answer of this kv request is no longer kept (too many requests since)"
                    .to_string(),
            )),
        })
    }
}

/// The id a kv write's one command is tagged with (its request's first command id), or a
/// random one outside a request.
fn result_id() -> Result<u128, Error> {
    match crate::once::next_command_id() {
        Some(id) => Ok(id),
        None => crate::token::random_u128(),
    }
}
