//! Global configuration keys: their defaults and the rules a value must follow.
//!
//! Validation runs twice: when a request arrives (to answer the user at once) and when the
//! command is applied (so that no path can store an invalid value).

use std::time::Duration;

/// A value refused for a configuration key. The message names the key and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The key is not a known configuration key.
    #[error("unknown configuration key \"{key}\" (known keys: {known}, and user.*)")]
    UnknownKey {
        /// The key given.
        key: String,
        /// The known keys, comma-separated.
        known: String,
    },
    /// The value breaks the key's rule.
    #[error("invalid value \"{value}\" for \"{key}\": {rule}")]
    InvalidValue {
        /// The key given.
        key: String,
        /// The value given.
        value: String,
        /// The rule the value breaks.
        rule: &'static str,
    },
}

/// One global configuration key.
struct KeySpec {
    name: &'static str,
    default: &'static str,
    rule: &'static str,
    check: fn(&str) -> bool,
}

const KEYS: &[KeySpec] = &[
    KeySpec {
        name: "instances.placement.scriptlet",
        default: "",
        // The member checks the source (syntax, names, `instance_placement`) before proposing:
        // the store cannot run Starlark.
        rule: "must be a Starlark placement scriptlet",
        check: |_| true,
    },
    KeySpec {
        name: "cluster.max_voters",
        default: "3",
        rule: "must be an odd integer of at least 3",
        check: |value| parse_integer(value).is_some_and(|n| n >= 3 && n % 2 == 1),
    },
    KeySpec {
        name: "cluster.max_standby",
        default: "2",
        rule: "must be an integer from 0 to 5",
        check: |value| parse_integer(value).is_some_and(|n| (0..=5).contains(&n)),
    },
    KeySpec {
        name: "cluster.offline_threshold",
        default: "20",
        rule: "must be an integer number of seconds, at least 10",
        check: |value| parse_integer(value).is_some_and(|n| n >= 10),
    },
    KeySpec {
        name: "cluster.heartbeat_interval_ms",
        default: "500",
        rule: "must be an integer number of milliseconds from 100 to 10000",
        check: |value| parse_integer(value).is_some_and(|n| (100..=10_000).contains(&n)),
    },
    KeySpec {
        name: "cluster.images_minimal_replica",
        default: "3",
        rule: "must be an integer of at least 1, or -1 for all members",
        check: |value| parse_integer(value).is_some_and(|n| n >= 1 || n == -1),
    },
    KeySpec {
        name: "cluster.join_token_expiry",
        default: "3H",
        rule: "must be a duration <n>(S|M|H|d|w|m|y) such as 30M or 3H, at most 100 years",
        check: |value| parse_expiry(value).is_some(),
    },
    KeySpec {
        name: "cluster.healing_threshold",
        default: "0",
        rule: "must be an integer number of seconds, 0 to disable",
        check: |value| parse_integer(value).is_some_and(|n| n >= 0),
    },
];

/// An integer value as the rules check it and the members read it: blanks around it allowed.
pub fn parse_integer(value: &str) -> Option<i64> {
    value.trim().parse().ok()
}

/// The default value of a known key, or `None` for unknown and `user.*` keys.
pub fn default_value(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .find(|spec| spec.name == key)
        .map(|spec| spec.default)
}

/// The names of all known (non-`user.*`) keys.
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|spec| spec.name)
}

/// Checks that `key` may be set, and to `value`.
pub fn validate(key: &str, value: &str) -> Result<(), ConfigError> {
    if let Some(rest) = key.strip_prefix("user.") {
        if rest.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: key.to_string(),
                value: value.to_string(),
                rule: "user keys need a name after \"user.\"",
            });
        }
        return Ok(());
    }
    let Some(spec) = KEYS.iter().find(|spec| spec.name == key) else {
        return Err(unknown_key(key));
    };
    if (spec.check)(value) {
        Ok(())
    } else {
        Err(ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            rule: spec.rule,
        })
    }
}

/// Checks that `key` may be unset (it exists as a key).
pub fn validate_key(key: &str) -> Result<(), ConfigError> {
    if key.starts_with("user.") || KEYS.iter().any(|spec| spec.name == key) {
        Ok(())
    } else {
        Err(unknown_key(key))
    }
}

fn unknown_key(key: &str) -> ConfigError {
    ConfigError::UnknownKey {
        key: key.to_string(),
        known: known_keys().collect::<Vec<_>>().join(", "),
    }
}

/// Longest token expiry: 100 years.
pub const EXPIRY_S_MAX: u64 = 100 * 365 * 86_400;

/// Parses an LXD-style expiry such as `3H`, `30M`, `1d`: `<n>(S|M|H|d|w|m|y)`.
pub fn parse_expiry(value: &str) -> Option<Duration> {
    let value = value.trim();
    let unit = value.chars().last()?;
    let count: u64 = value[..value.len() - unit.len_utf8()].parse().ok()?;
    let unit_s: u64 = match unit {
        'S' => 1,
        'M' => 60,
        'H' => 3_600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'm' => 30 * 86_400,
        'y' => 365 * 86_400,
        _ => return None,
    };
    if count == 0 {
        return None;
    }
    // Tokens carry their expiry as milliseconds since the epoch: keep the sum far from overflow.
    count
        .checked_mul(unit_s)
        .filter(|seconds| *seconds <= EXPIRY_S_MAX)
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_key_and_the_rule() {
        assert!(validate("cluster.max_voters", "5").is_ok());
        let error = validate("cluster.max_voters", "4").unwrap_err().to_string();
        assert!(
            error.contains("cluster.max_voters") && error.contains("odd"),
            "{error}"
        );
        assert!(validate("cluster.max_voters", "1").is_err());
        assert!(validate("cluster.max_standby", "6").is_err());
        assert!(validate("cluster.max_standby", "0").is_ok());
        assert!(validate("cluster.offline_threshold", "9").is_err());
        assert!(validate("cluster.offline_threshold", "10").is_ok());
        assert!(validate("cluster.images_minimal_replica", "-1").is_ok());
        assert!(validate("cluster.images_minimal_replica", "0").is_err());
        assert!(validate("cluster.join_token_expiry", "30M").is_ok());
        assert!(validate("cluster.join_token_expiry", "30X").is_err());
        assert!(validate("cluster.healing_threshold", "-1").is_err());
        assert!(validate("user.anything", "x").is_ok());
        assert!(validate("user.", "x").is_err());
        let error = validate("cluster.bogus", "1").unwrap_err().to_string();
        assert!(
            error.contains("unknown configuration key \"cluster.bogus\""),
            "{error}"
        );
    }

    #[test]
    fn expiry_units() {
        assert_eq!(parse_expiry("3H"), Some(Duration::from_secs(10_800)));
        assert_eq!(parse_expiry("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_expiry("1w"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_expiry("H"), None);
        assert_eq!(parse_expiry("0H"), None);
        assert_eq!(
            parse_expiry("100y"),
            Some(Duration::from_secs(EXPIRY_S_MAX))
        );
        assert_eq!(parse_expiry("101y"), None);
        assert_eq!(parse_expiry("18446744073709551615S"), None);
        assert!(validate("cluster.join_token_expiry", "99999999999999999y").is_err());
        assert_eq!(parse_expiry(""), None);
    }

    /// Goal: a value the rule accepts with blanks around it reads as its number (it read as
    /// 0 before: " 3" voters meant none; found by `valid_integers_are_stored_and_read_back`).
    #[test]
    fn a_padded_integer_reads_as_its_number() {
        let mut state = crate::model::ClusterState::default();
        let set = crate::command::Command::ConfigSet {
            key: "cluster.max_voters".into(),
            value: " 3".into(),
        };
        state.apply(&set).unwrap();
        assert_eq!(state.config_i64("cluster.max_voters"), 3);
    }
}
