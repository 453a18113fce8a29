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

    /// Property tests: every value a key's rule allows is stored and read back as meant;
    /// anything else is refused with the key named, and nothing panics.
    mod properties {
        use super::*;
        use crate::command::Command;
        use crate::model::ClusterState;
        use proptest::prelude::*;
        use proptest::sample::select;

        /// The units of an expiry and their length in seconds.
        const UNITS: [(char, u64); 7] = [
            ('S', 1),
            ('M', 60),
            ('H', 3_600),
            ('d', 86_400),
            ('w', 7 * 86_400),
            ('m', 30 * 86_400),
            ('y', 365 * 86_400),
        ];

        /// A valid setting: the key, its text, and the integer it means (for integer keys).
        fn valid_integer_setting() -> impl Strategy<Value = (&'static str, i64)> {
            prop_oneof![
                (1..50i64).prop_map(|half| ("cluster.max_voters", 2 * half + 1)),
                (0..=5i64).prop_map(|n| ("cluster.max_standby", n)),
                (10..1_000_000i64).prop_map(|n| ("cluster.offline_threshold", n)),
                (100..=10_000i64).prop_map(|n| ("cluster.heartbeat_interval_ms", n)),
                prop_oneof![Just(-1i64), 1..1_000i64]
                    .prop_map(|n| ("cluster.images_minimal_replica", n)),
                (0..1_000_000i64).prop_map(|n| ("cluster.healing_threshold", n)),
            ]
        }

        /// Blanks around a value: the rules read the value trimmed.
        fn padding() -> impl Strategy<Value = &'static str> {
            select(&["", "", " ", "\t", "  \n"][..])
        }

        proptest! {
            /// Goal: a value the rule allows is stored, and the members read the number it
            /// means (blanks around it included: the rule reads it trimmed). Method: set it
            /// on a state through `ConfigSet`, read it back with `config_i64`.
            #[test]
            fn valid_integers_are_stored_and_read_back(
                (key, number) in valid_integer_setting(),
                left in padding(),
                right in padding(),
            ) {
                let text = format!("{left}{number}{right}");
                prop_assert_eq!(validate(key, &text), Ok(()));
                let mut state = ClusterState::default();
                let set = Command::ConfigSet { key: key.to_string(), value: text.clone() };
                prop_assert_eq!(state.apply(&set), Ok(()));
                prop_assert_eq!(state.config_value(key), Some(text));
                prop_assert_eq!(state.config_i64(key), number);
            }

            /// Goal: an expiry within 100 years is accepted and means its count of units;
            /// zero and longer ones are refused. Method: any count, any unit.
            #[test]
            fn expiries_mean_their_count_of_units(
                count in prop_oneof![0..200u64, any::<u64>()],
                (unit, unit_s) in select(&UNITS[..]),
                left in padding(),
                right in padding(),
            ) {
                let text = format!("{left}{count}{unit}{right}");
                let seconds = count.checked_mul(unit_s).filter(|s| *s > 0 && *s <= EXPIRY_S_MAX);
                prop_assert_eq!(parse_expiry(&text), seconds.map(Duration::from_secs));
                prop_assert_eq!(validate("cluster.join_token_expiry", &text).is_ok(), seconds.is_some());
            }

            /// Goal: a `user.*` key takes any value and gives it back as it was.
            #[test]
            fn user_keys_take_any_value(name in "[a-z0-9._-]{1,16}", value in ".{0,64}") {
                let key = format!("user.{name}");
                let mut state = ClusterState::default();
                let set = Command::ConfigSet { key: key.clone(), value: value.clone() };
                prop_assert_eq!(state.apply(&set), Ok(()));
                prop_assert_eq!(state.config_value(&key), Some(value));
            }

            /// Goal: whatever a client sends, the check answers without panicking, a refusal
            /// names the key, and the proposer's check and the apply agree. Method: known,
            /// `user.*` and random keys with numbers, expiries and random text.
            #[test]
            fn any_setting_is_answered_and_a_refusal_names_the_key(
                key in prop_oneof![
                    select(known_keys().collect::<Vec<_>>()).prop_map(str::to_string),
                    "user\\.[a-z]{0,3}",
                    ".{0,12}",
                ],
                value in prop_oneof![
                    "-?[0-9]{1,20}",
                    "[0-9]{1,4}[SMHdwmyx]",
                    "[ -~]{0,12}",
                    ".{0,8}",
                ],
            ) {
                let checked = validate(&key, &value);
                if let Err(error) = &checked {
                    prop_assert!(error.to_string().contains(&key), "{}", error);
                }
                let mut state = ClusterState::default();
                let applied = state.apply(&Command::ConfigSet { key: key.clone(), value });
                prop_assert_eq!(applied.is_ok(), checked.is_ok(), "{:?}", applied);
                let unset = validate_key(&key);
                if let Err(error) = &unset {
                    prop_assert!(error.to_string().contains(&key), "{}", error);
                }
                prop_assert_eq!(unset.is_ok(), key.starts_with("user.") || default_value(&key).is_some());
            }
        }
    }
}
