//! Commands: the replicated changes to [`ClusterState`].
//!
//! A command is checked when it is proposed and checked again when it is applied; applying is
//! deterministic (time comes inside the command, never from the clock), so every member ends in
//! the same state. A command that fails its checks changes nothing and answers with the reason.

use serde::{Deserialize, Serialize};

use crate::config;
use crate::model::{ClusterState, JoinToken, Member, TokenKind, TrustedClient};

/// A change to the cluster state, proposed through Raft.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a new cluster: its CA and its first member.
    Bootstrap {
        /// The bootstrap member.
        member: Member,
        /// The cluster CA certificate (PEM).
        ca_cert_pem: String,
        /// The cluster CA key (PEM).
        ca_key_pem: String,
        /// The local administrator's client certificate.
        admin: TrustedClient,
    },
    /// Sets a global config key (validated).
    ConfigSet {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Unsets a global config key (it takes its default again).
    ConfigUnset {
        /// The key.
        key: String,
    },
    /// Issues a token, replacing any earlier token for the same name.
    TokenIssue {
        /// The token.
        token: JoinToken,
    },
    /// Revokes the token for a name.
    TokenRevoke {
        /// The name the token was issued for.
        name: String,
    },
    /// Adds a member, consuming its join token.
    MemberAdd {
        /// The new member (its `id` must be the next free node id).
        member: Member,
        /// The secret presented by the joiner.
        secret: String,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// Several commands proposed together (group commit); each applies on its own, in order.
    Batch(Vec<Command>),
    /// Trusts a client certificate, consuming its client token.
    ClientTrust {
        /// The client to trust (its `name` is the token's name).
        client: TrustedClient,
        /// The secret presented by the client.
        secret: String,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: u64,
    },
}

/// The answer to an applied command: `Err` carries the reason it changed nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// What happened.
    pub result: Result<(), String>,
    /// For a [`Command::Batch`], what happened to each command, in order.
    pub batch: Vec<Result<(), String>>,
}

impl CommandResponse {
    /// A response with no error.
    pub fn ok() -> CommandResponse {
        CommandResponse {
            result: Ok(()),
            batch: Vec::new(),
        }
    }
}

impl ClusterState {
    /// Applies one log entry's command, a batch one command at a time.
    pub fn apply_entry(&mut self, command: &Command) -> CommandResponse {
        match command {
            Command::Batch(commands) => {
                let batch = commands.iter().map(|command| self.apply(command)).collect();
                CommandResponse {
                    result: Ok(()),
                    batch,
                }
            }
            single => CommandResponse {
                result: self.apply(single),
                batch: Vec::new(),
            },
        }
    }

    /// Applies one command. Deterministic: the same state and command give the same result.
    pub fn apply(&mut self, command: &Command) -> Result<(), String> {
        match command {
            Command::Batch(_) => Err("a batch cannot be nested in a batch".to_string()),
            Command::Bootstrap {
                member,
                ca_cert_pem,
                ca_key_pem,
                admin,
            } => {
                if !self.members.is_empty() {
                    return Err("the cluster is already bootstrapped".to_string());
                }
                self.ca_cert_pem = ca_cert_pem.clone();
                self.ca_key_pem = ca_key_pem.clone();
                self.next_node_id = member.id + 1;
                self.members.insert(member.name.clone(), member.clone());
                self.trusted_clients
                    .insert(admin.fingerprint.clone(), admin.clone());
                Ok(())
            }
            Command::ConfigSet { key, value } => {
                config::validate(key, value).map_err(|error| error.to_string())?;
                self.config.insert(key.clone(), value.clone());
                Ok(())
            }
            Command::ConfigUnset { key } => {
                config::validate_key(key).map_err(|error| error.to_string())?;
                self.config.remove(key);
                Ok(())
            }
            Command::TokenIssue { token } => {
                self.check_token_name(token)?;
                self.tokens.insert(token.name.clone(), token.clone());
                Ok(())
            }
            Command::TokenRevoke { name } => match self.tokens.remove(name) {
                Some(_) => Ok(()),
                None => Err(format!("no token for \"{name}\"")),
            },
            Command::MemberAdd {
                member,
                secret,
                now_ms,
            } => self.add_member(member, secret, *now_ms),
            Command::ClientTrust {
                client,
                secret,
                now_ms,
            } => {
                self.consume_token(&client.name, TokenKind::Client, secret, *now_ms)?;
                self.trusted_clients
                    .insert(client.fingerprint.clone(), client.clone());
                Ok(())
            }
        }
    }

    fn check_token_name(&self, token: &JoinToken) -> Result<(), String> {
        validate_member_name(&token.name)?;
        if token.kind == TokenKind::Join && self.members.contains_key(&token.name) {
            return Err(format!(
                "the cluster already has a member named \"{}\"",
                token.name
            ));
        }
        Ok(())
    }

    fn add_member(&mut self, member: &Member, secret: &str, now_ms: u64) -> Result<(), String> {
        if self.members.contains_key(&member.name) {
            return Err(format!(
                "the cluster already has a member named \"{}\"",
                member.name
            ));
        }
        if member.id < self.next_node_id {
            return Err(format!(
                "node id {} is already taken; retry the join",
                member.id
            ));
        }
        if self
            .members
            .values()
            .any(|other| other.address == member.address)
        {
            return Err(format!(
                "another member already uses the address {}",
                member.address
            ));
        }
        self.consume_token(&member.name, TokenKind::Join, secret, now_ms)?;
        self.next_node_id = member.id + 1;
        self.members.insert(member.name.clone(), member.clone());
        Ok(())
    }

    /// Checks and removes the single-use token for `name`.
    fn consume_token(
        &mut self,
        name: &str,
        kind: TokenKind,
        secret: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        let Some(token) = self.tokens.get(name) else {
            return Err(format!(
                "no valid token for \"{name}\": it was already used, revoked, replaced or never issued"
            ));
        };
        if token.kind != kind {
            return Err(format!("the token for \"{name}\" is not a {kind:?} token"));
        }
        if !constant_time_eq(token.secret.as_bytes(), secret.as_bytes()) {
            return Err(format!("the token secret for \"{name}\" does not match"));
        }
        if now_ms >= token.expires_at_ms {
            self.tokens.remove(name);
            return Err(format!("the token for \"{name}\" has expired"));
        }
        self.tokens.remove(name);
        Ok(())
    }
}

/// Checks a member name: non-empty, not `none`, no `/`, spaces or control characters.
pub fn validate_member_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a member name cannot be empty".to_string());
    }
    if name == "none" {
        return Err("the name \"none\" is reserved".to_string());
    }
    if name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!(
            "invalid member name \"{name}\": use at most 63 letters, digits, '-', '.' or '_'"
        ));
    }
    Ok(())
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, id: u64) -> Member {
        Member {
            name: name.to_string(),
            id,
            address: format!("127.0.0.1:{}", 7000 + id),
            architecture: "x86_64".to_string(),
            description: String::new(),
            failure_domain: "default".to_string(),
            config: Default::default(),
            groups: vec!["default".to_string()],
            user_roles: vec![],
            certificate_fingerprint: format!("fp{id}"),
            joined_at_ms: 0,
        }
    }

    fn token(name: &str, expires_at_ms: u64) -> JoinToken {
        JoinToken {
            name: name.to_string(),
            kind: TokenKind::Join,
            secret: "s3cret".to_string(),
            fingerprint: "f".to_string(),
            addresses: vec![],
            expires_at_ms,
        }
    }

    fn bootstrapped() -> ClusterState {
        let mut state = ClusterState::default();
        let admin = TrustedClient {
            name: "admin".into(),
            fingerprint: "a".into(),
            added_at_ms: 0,
        };
        let bootstrap = Command::Bootstrap {
            member: member("m1", 1),
            ca_cert_pem: "ca".into(),
            ca_key_pem: "key".into(),
            admin,
        };
        state.apply(&bootstrap).unwrap();
        state
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let mut state = bootstrapped();
        state
            .apply(&Command::TokenIssue {
                token: token("m2", 100),
            })
            .unwrap();
        let add = |secret: &str, now_ms| Command::MemberAdd {
            member: member("m2", 2),
            secret: secret.into(),
            now_ms,
        };
        let error = state.apply(&add("wrong", 10)).unwrap_err();
        assert!(error.contains("does not match"), "{error}");
        state.apply(&add("s3cret", 10)).unwrap();
        let error = state
            .apply(&Command::TokenIssue {
                token: token("m2", 100),
            })
            .unwrap_err();
        assert!(error.contains("already has a member"), "{error}");

        state
            .apply(&Command::TokenIssue {
                token: token("m3", 100),
            })
            .unwrap();
        let late = Command::MemberAdd {
            member: member("m3", 3),
            secret: "s3cret".into(),
            now_ms: 100,
        };
        assert!(state.apply(&late).unwrap_err().contains("expired"));
        assert!(state.apply(&late).unwrap_err().contains("no valid token"));
        assert!(state
            .apply(&Command::TokenIssue {
                token: token("none", 100)
            })
            .is_err());
    }

    #[test]
    fn invalid_config_changes_nothing() {
        let mut state = bootstrapped();
        let before = state.clone();
        let set = Command::ConfigSet {
            key: "cluster.max_voters".into(),
            value: "2".into(),
        };
        assert!(state.apply(&set).is_err());
        assert_eq!(state, before);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
