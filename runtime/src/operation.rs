//! Cluster operations: one typed enum that the Lua built-ins, the CLI and the wire all use.
//!
//! A script's `cluster.members()` becomes `Operation::ClusterMembers` through
//! [`Operation::from_call`]; `starling cluster list` builds the same value directly; either way
//! [`crate::Member::execute`] runs it. Adding an operation means a variant here, an entry in
//! [`BUILTINS`], and its arm in `execute`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use starling_stdlib::Builtin;

use crate::Error;

/// A cluster operation with typed arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    /// `cluster.info()`: this member, the leader, the CA fingerprint.
    ClusterInfo,
    /// `cluster.members()`: every member with its roles and status.
    ClusterMembers,
    /// `cluster.member(name)`: one member.
    ClusterMember {
        /// Member name.
        name: String,
    },
    /// `cluster.add(name)`: a join token for a new member.
    ClusterAdd {
        /// Name the new member will have.
        name: String,
    },
    /// `cluster.tokens()`: outstanding join tokens.
    ClusterTokens,
    /// `cluster.revoke_token(name)`.
    ClusterRevokeToken {
        /// The name the token was issued for.
        name: String,
    },
    /// `cluster.trust_add(name)`: a token that lets a remote client become trusted.
    TrustAdd {
        /// A name for the client.
        name: String,
    },
    /// `config.get(key)`: the effective value.
    ConfigGet {
        /// The key.
        key: String,
    },
    /// `config.set(key, value)`.
    ConfigSet {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// `config.unset(key)`.
    ConfigUnset {
        /// The key.
        key: String,
    },
    /// `config.all()`: every key with its effective value.
    ConfigAll,
    /// Internal: a joiner's request, run on the leader (not a script built-in).
    Join(crate::protocol::JoinRequest),
    /// Internal: a remote client's trust claim, run on the leader (not a script built-in).
    TrustClaim {
        /// The name the token was issued for.
        name: String,
        /// The token's secret.
        secret: String,
        /// Fingerprint of the client's certificate.
        fingerprint: String,
    },
}

/// The script built-ins, with their one-line help (also the REPL's completions).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "cluster.info",
        help: "cluster.info() -> this member, the leader and the cluster fingerprint",
    },
    Builtin {
        name: "cluster.members",
        help: "cluster.members() -> list of members",
    },
    Builtin {
        name: "cluster.member",
        help: "cluster.member(name) -> one member",
    },
    Builtin {
        name: "cluster.add",
        help: "cluster.add(name) -> join token for a new member",
    },
    Builtin {
        name: "cluster.tokens",
        help: "cluster.tokens() -> outstanding join tokens",
    },
    Builtin {
        name: "cluster.revoke_token",
        help: "cluster.revoke_token(name) -> revokes a join token",
    },
    Builtin {
        name: "cluster.trust_add",
        help: "cluster.trust_add(name) -> token for a remote client",
    },
    Builtin {
        name: "config.get",
        help: "config.get(key) -> effective value of a global key",
    },
    Builtin {
        name: "config.set",
        help: "config.set(key, value) -> sets a global key",
    },
    Builtin {
        name: "config.unset",
        help: "config.unset(key) -> resets a global key to its default",
    },
    Builtin {
        name: "config.all",
        help: "config.all() -> every global key with its value",
    },
];

impl Operation {
    /// Builds an operation from a script call: built-in name and JSON arguments.
    pub fn from_call(name: &str, args: &[Value]) -> Result<Operation, Error> {
        let arguments = Arguments { name, args };
        let operation = match name {
            "cluster.info" => Operation::ClusterInfo,
            "cluster.members" => Operation::ClusterMembers,
            "cluster.member" => Operation::ClusterMember {
                name: arguments.string(0, "name")?,
            },
            "cluster.add" => Operation::ClusterAdd {
                name: arguments.string(0, "name")?,
            },
            "cluster.tokens" => Operation::ClusterTokens,
            "cluster.revoke_token" => Operation::ClusterRevokeToken {
                name: arguments.string(0, "name")?,
            },
            "cluster.trust_add" => Operation::TrustAdd {
                name: arguments.string(0, "name")?,
            },
            "config.get" => Operation::ConfigGet {
                key: arguments.string(0, "key")?,
            },
            "config.set" => Operation::ConfigSet {
                key: arguments.string(0, "key")?,
                value: arguments.scalar(1, "value")?,
            },
            "config.unset" => Operation::ConfigUnset {
                key: arguments.string(0, "key")?,
            },
            "config.all" => Operation::ConfigAll,
            _ => return Err(Error::Refused(format!("unknown built-in {name}"))),
        };
        Ok(operation)
    }

    /// Whether the operation changes the cluster state.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Operation::ClusterAdd { .. }
                | Operation::ClusterRevokeToken { .. }
                | Operation::TrustAdd { .. }
                | Operation::ConfigSet { .. }
                | Operation::ConfigUnset { .. }
                | Operation::Join(_)
                | Operation::TrustClaim { .. }
        )
    }
}

/// Positional arguments of a built-in call, with errors that name the built-in and argument.
struct Arguments<'a> {
    name: &'a str,
    args: &'a [Value],
}

impl Arguments<'_> {
    fn string(&self, position: usize, what: &str) -> Result<String, Error> {
        match self.args.get(position) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(self.wrong(position, what, other)),
            None => Err(Error::Refused(format!(
                "{}: argument #{} ({what}) is missing",
                self.name,
                position + 1
            ))),
        }
    }

    /// A string, number or boolean, as text (config values may be given as numbers in Lua).
    fn scalar(&self, position: usize, what: &str) -> Result<String, Error> {
        match self.args.get(position) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(Value::Number(number)) => Ok(number.to_string()),
            Some(Value::Bool(flag)) => Ok(flag.to_string()),
            Some(other) => Err(self.wrong(position, what, other)),
            None => Err(Error::Refused(format!(
                "{}: argument #{} ({what}) is missing",
                self.name,
                position + 1
            ))),
        }
    }

    fn wrong(&self, position: usize, what: &str, value: &Value) -> Error {
        let kind = match value {
            Value::Null => "nil",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) | Value::Object(_) => "table",
        };
        Error::Refused(format!(
            "{}: argument #{} ({what}) must be a string, not a {kind}",
            self.name,
            position + 1
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_become_operations() {
        assert_eq!(
            Operation::from_call("cluster.members", &[]).unwrap(),
            Operation::ClusterMembers
        );
        let set =
            Operation::from_call("config.set", &[json!("cluster.max_voters"), json!(5)]).unwrap();
        assert_eq!(
            set,
            Operation::ConfigSet {
                key: "cluster.max_voters".into(),
                value: "5".into()
            }
        );
        let error = Operation::from_call("cluster.member", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cluster.member: argument #1 (name) is missing"),
            "{error}"
        );
        let error = Operation::from_call("cluster.member", &[json!({"a": 1})])
            .unwrap_err()
            .to_string();
        assert!(error.contains("must be a string, not a table"), "{error}");
    }

    #[test]
    fn every_builtin_has_an_operation() {
        for builtin in BUILTINS {
            let args = [json!("x"), json!("y")];
            assert!(
                Operation::from_call(builtin.name, &args).is_ok(),
                "{}",
                builtin.name
            );
        }
    }
}
