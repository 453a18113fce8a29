//! Size limits on everything that enters the Raft log.
//!
//! A command is replicated to every voter and kept in every log until a snapshot covers it, so
//! each field a client controls has a limit, checked when the command is proposed and again when
//! it is applied. A command over a limit is refused with an error naming the field. The limits
//! are generous for real use and small enough that one entry always fits a frame.
//!
//! | field | limit |
//! |---|---|
//! | member, token and client names | 63 bytes (LXD's name rules) |
//! | group, pool, network and failure-domain names | 63 bytes |
//! | architecture | 32 bytes |
//! | address | 255 bytes |
//! | description | 4 KiB |
//! | configuration key | 256 bytes |
//! | configuration value | 64 KiB |
//! | keys in one configuration map | 256 |
//! | groups or roles of a member | 64 |
//! | member_config answers in a join | 256, each value 4 KiB |
//! | token secret | 128 bytes |
//! | script source (for stored scripts) | 256 KiB |
//! | kv key / value (see [`crate::kv`]) | 256 bytes / 64 KiB |
//! | one command, encoded | 512 KiB |
//! | one log entry (a batch), encoded | 1 MiB |

use std::collections::BTreeMap;

use crate::command::{Command, MemberChanges, MemberPatch};
use crate::member_config::Answer;
use crate::model::{JoinToken, Member, TrustedClient};

/// Longest member, token or client name, in bytes.
pub const NAME_BYTES_MAX: usize = 63;
/// Longest architecture name, in bytes.
pub const ARCHITECTURE_BYTES_MAX: usize = 32;
/// Longest member address (`host:port`), in bytes.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// Longest description, in bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 4 * 1024;
/// Longest configuration key, in bytes.
pub const CONFIG_KEY_BYTES_MAX: usize = 256;
/// Longest configuration value, in bytes.
pub const CONFIG_VALUE_BYTES_MAX: usize = 64 * 1024;
/// Most keys in one configuration map.
pub const CONFIG_KEYS_MAX: usize = 256;
/// Most groups, or user roles, of one member.
pub const LIST_ITEMS_MAX: usize = 64;
/// Most member-specific answers in one join.
pub const ANSWERS_MAX: usize = 256;
/// Longest member-specific answer value, in bytes.
pub const ANSWER_VALUE_BYTES_MAX: usize = 4 * 1024;
/// Longest token secret, in bytes.
pub const SECRET_BYTES_MAX: usize = 128;
/// Longest script source, in bytes.
pub const SCRIPT_SOURCE_BYTES_MAX: usize = 256 * 1024;
/// Largest encoded command (a batch counts its parts one by one).
pub const COMMAND_BYTES_MAX: usize = 512 * 1024;
/// Largest encoded batch of commands in one log entry, and the size appends are kept under:
/// openraft gives an append one heartbeat interval, so it must cross the network quickly.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Checks that `value`, the field `field`, is at most `max` bytes.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes long, over the limit of {max} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// Checks a configuration map: the number of keys and each key's and value's length.
pub fn check_config<'a>(
    field: &str,
    config: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    let mut count = 0;
    for (key, value) in config {
        count += 1;
        check_len(
            &format!("{field} key \"{}\"", short(key)),
            key,
            CONFIG_KEY_BYTES_MAX,
        )?;
        check_len(
            &format!("{field} value of \"{}\"", short(key)),
            value,
            CONFIG_VALUE_BYTES_MAX,
        )?;
    }
    if count > CONFIG_KEYS_MAX {
        return Err(format!(
            "{field} has {count} keys, over the limit of {CONFIG_KEYS_MAX}"
        ));
    }
    Ok(())
}

/// Checks the number of items of a list field.
pub fn check_items(field: &str, count: usize, max: usize) -> Result<(), String> {
    if count > max {
        return Err(format!(
            "{field} has {count} items, over the limit of {max}"
        ));
    }
    Ok(())
}

/// The first 40 bytes of a key (on a character boundary), for error messages.
pub fn short(text: &str) -> &str {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The encoded size of a value as it travels in a log entry (bincode, fixed-width integers).
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .serialized_size(value)
        .map(|size| usize::try_from(size).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
}

impl Command {
    /// Checks every field of the command against its limit, and the command's encoded size;
    /// returns that size (of a batch, the sum of its commands').
    pub fn check_limits(&self) -> Result<usize, String> {
        if let Command::Batch(commands) = self {
            return commands.iter().map(Command::check_limits).sum();
        }
        self.check_fields()?;
        let encoded = encoded_len(self);
        if encoded > COMMAND_BYTES_MAX {
            return Err(format!(
                "the request is {encoded} bytes once encoded, over the limit of {COMMAND_BYTES_MAX} bytes"
            ));
        }
        Ok(encoded)
    }

    fn check_fields(&self) -> Result<(), String> {
        match self {
            Command::Bootstrap { member, admin, .. } => {
                check_member(member)?;
                check_client(admin)
            }
            Command::ConfigSet { key, value } => {
                check_len("configuration key", key, CONFIG_KEY_BYTES_MAX)?;
                check_len(
                    &format!("the value of \"{}\"", short(key)),
                    value,
                    CONFIG_VALUE_BYTES_MAX,
                )
            }
            Command::ConfigUnset { key } => {
                check_len("configuration key", key, CONFIG_KEY_BYTES_MAX)
            }
            Command::TokenIssue { token } => check_token(token),
            Command::TokenRevoke { name, .. } => check_len("token name", name, NAME_BYTES_MAX),
            Command::MemberAdd {
                member,
                answers,
                secret,
                ..
            } => {
                check_member(member)?;
                check_answers(answers)?;
                check_len("token secret", secret, SECRET_BYTES_MAX)
            }
            Command::Batch(_) | Command::MemberHealth { .. } => Ok(()),
            Command::Once { command, .. } => command.check_fields(),
            Command::MemberUpdate { name, changes } => {
                check_len("member name", name, NAME_BYTES_MAX)?;
                check_changes(changes)
            }
            Command::MemberPatch { name, patch } => {
                check_len("member name", name, NAME_BYTES_MAX)?;
                match patch {
                    MemberPatch::ConfigSet { key, value } => {
                        check_config("member config", [(key, value)])
                    }
                    MemberPatch::ConfigUnset { key } => check_len(
                        &format!("member config key \"{}\"", short(key)),
                        key,
                        CONFIG_KEY_BYTES_MAX,
                    ),
                    MemberPatch::RoleAdd { role } | MemberPatch::RoleRemove { role } => {
                        check_len("role", role, NAME_BYTES_MAX)
                    }
                }
            }
            Command::MemberRename { from, to } => {
                check_len("member name", from, NAME_BYTES_MAX)?;
                check_len("new member name", to, NAME_BYTES_MAX)
            }
            Command::MemberRemove { name } => check_len("member name", name, NAME_BYTES_MAX),
            Command::PoolCreate { pool } => {
                check_object(
                    "storage pool",
                    &pool.name,
                    &pool.description,
                    &pool.config,
                    &pool.member_config,
                )?;
                check_len("storage driver", &pool.driver, NAME_BYTES_MAX)
            }
            Command::NetworkCreate { network } => {
                check_object(
                    "network",
                    &network.name,
                    &network.description,
                    &network.config,
                    &network.member_config,
                )?;
                check_len("network type", &network.network_type, NAME_BYTES_MAX)
            }
            Command::PoolDelete { name } => check_len("storage pool name", name, NAME_BYTES_MAX),
            Command::NetworkDelete { name } => check_len("network name", name, NAME_BYTES_MAX),
            Command::ClientTrust { client, secret, .. } => {
                check_client(client)?;
                check_len("token secret", secret, SECRET_BYTES_MAX)
            }
            Command::TrustRemove { fingerprint } => {
                check_len("fingerprint", fingerprint, FINGERPRINT_BYTES)
            }
            Command::Image(command) => command.check_fields(),
            Command::Instance(command) => command.check_fields(),
            Command::Evacuation(command) => command.check_fields(),
            Command::Kv(command) => command.check_fields(),
            Command::Script(command) => command.check_fields(),
        }
    }
}

/// Length of a SHA-256 fingerprint in hex.
const FINGERPRINT_BYTES: usize = 64;

fn check_member(member: &Member) -> Result<(), String> {
    check_len("member name", &member.name, NAME_BYTES_MAX)?;
    check_len("address", &member.address, ADDRESS_BYTES_MAX)?;
    check_architecture(&member.architecture)?;
    check_len("description", &member.description, DESCRIPTION_BYTES_MAX)?;
    check_len("failure domain", &member.failure_domain, NAME_BYTES_MAX)?;
    check_config("member config", &member.config)?;
    check_names("groups", &member.groups)?;
    check_names("roles", &member.user_roles)?;
    check_len(
        "certificate fingerprint",
        &member.certificate_fingerprint,
        FINGERPRINT_BYTES,
    )?;
    check_len(
        "administrator fingerprint",
        &member.admin_fingerprint,
        FINGERPRINT_BYTES,
    )
}

/// Checks an architecture name: at most 32 bytes of lowercase letters, digits and `_`.
pub fn check_architecture(architecture: &str) -> Result<(), String> {
    check_len("architecture", architecture, ARCHITECTURE_BYTES_MAX)?;
    let valid = !architecture.is_empty()
        && architecture
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(format!(
            "invalid architecture \"{}\": use lowercase letters, digits and '_' (such as x86_64)",
            short(architecture)
        ));
    }
    Ok(())
}

fn check_names(field: &str, names: &[String]) -> Result<(), String> {
    check_items(field, names.len(), LIST_ITEMS_MAX)?;
    names
        .iter()
        .try_for_each(|name| check_len(&format!("an entry of {field}"), name, NAME_BYTES_MAX))
}

fn check_client(client: &TrustedClient) -> Result<(), String> {
    check_len("client name", &client.name, NAME_BYTES_MAX)?;
    check_len("fingerprint", &client.fingerprint, FINGERPRINT_BYTES)
}

fn check_token(token: &JoinToken) -> Result<(), String> {
    check_len("token name", &token.name, NAME_BYTES_MAX)?;
    check_len("token secret", &token.secret, SECRET_BYTES_MAX)?;
    check_len("token fingerprint", &token.fingerprint, FINGERPRINT_BYTES)?;
    check_items("token addresses", token.addresses.len(), LIST_ITEMS_MAX)?;
    token
        .addresses
        .iter()
        .try_for_each(|address| check_len("token address", address, ADDRESS_BYTES_MAX))
}

fn check_answers(answers: &[Answer]) -> Result<(), String> {
    check_items("member_config answers", answers.len(), ANSWERS_MAX)?;
    for answer in answers {
        check_len("member_config entity", &answer.entity, NAME_BYTES_MAX)?;
        check_len("member_config name", &answer.name, NAME_BYTES_MAX)?;
        check_len("member_config key", &answer.key, CONFIG_KEY_BYTES_MAX)?;
        check_len(
            &format!("member_config value of \"{}\"", short(&answer.key)),
            &answer.value,
            ANSWER_VALUE_BYTES_MAX,
        )?;
    }
    Ok(())
}

fn check_changes(changes: &MemberChanges) -> Result<(), String> {
    if let Some(description) = &changes.description {
        check_len("description", description, DESCRIPTION_BYTES_MAX)?;
    }
    if let Some(domain) = &changes.failure_domain {
        check_len("failure domain", domain, NAME_BYTES_MAX)?;
    }
    if let Some(config) = &changes.config {
        check_config("member config", config)?;
    }
    if let Some(groups) = &changes.groups {
        check_names("groups", groups)?;
    }
    if let Some(roles) = &changes.user_roles {
        check_names("roles", roles)?;
    }
    Ok(())
}

fn check_object(
    what: &str,
    name: &str,
    description: &str,
    config: &BTreeMap<String, String>,
    member_config: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<(), String> {
    check_len(&format!("{what} name"), name, NAME_BYTES_MAX)?;
    check_len("description", description, DESCRIPTION_BYTES_MAX)?;
    check_config("config", config)?;
    check_items("member_config", member_config.len(), CONFIG_KEYS_MAX)?;
    for (member, values) in member_config {
        check_len("member_config member name", member, NAME_BYTES_MAX)?;
        check_config(&format!("member_config of \"{}\"", short(member)), values)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_field() {
        assert!(check_len("description", "short", DESCRIPTION_BYTES_MAX).is_ok());
        let error = check_len("description", &"x".repeat(5000), DESCRIPTION_BYTES_MAX).unwrap_err();
        assert!(error.contains("description is 5000 bytes"), "{error}");
        let mut config = BTreeMap::new();
        config.insert("user.a".to_string(), "v".repeat(CONFIG_VALUE_BYTES_MAX + 1));
        let error = check_config("config", &config).unwrap_err();
        assert!(error.contains("config value of \"user.a\""), "{error}");
        let many: BTreeMap<String, String> = (0..=CONFIG_KEYS_MAX)
            .map(|i| (format!("user.{i}"), String::new()))
            .collect();
        assert!(check_config("config", &many).unwrap_err().contains("keys"));
        assert_eq!(short("é".repeat(30).as_str()).len(), 40);
    }
}
