//! Names for instances launched without one, as LXD makes them: an adjective and a noun
//! (`quiet-falcon`), each a valid host name. IO-free: the caller passes the randomness.

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "crisp", "daring", "eager", "fancy", "gentle", "happy", "honest",
    "jolly", "keen", "lively", "lucky", "merry", "modest", "noble", "polite", "proud", "quiet",
    "rapid", "solid", "steady", "sunny", "swift", "tidy", "vivid", "warm", "witty", "young",
];

const NOUNS: &[&str] = &[
    "badger", "beetle", "bison", "crane", "dingo", "eagle", "falcon", "ferret", "gecko", "heron",
    "ibis", "jackal", "koala", "lemur", "lynx", "marten", "moose", "newt", "otter", "panda",
    "puffin", "quail", "raven", "salmon", "stork", "tapir", "toucan", "walrus", "wren", "yak",
];

/// How many adjective-noun names are tried before falling back to `c-<hex>`.
const TRIES: usize = 8;

/// A name that `taken` does not hold: adjective-noun from `random`, or `c-` and 12 hex digits
/// once [`TRIES`] of those were taken.
pub fn generate(random: u128, taken: impl Fn(&str) -> bool) -> String {
    let mut bits = random;
    for _ in 0..TRIES {
        let adjective = ADJECTIVES[(bits % ADJECTIVES.len() as u128) as usize];
        bits /= ADJECTIVES.len() as u128;
        let noun = NOUNS[(bits % NOUNS.len() as u128) as usize];
        bits /= NOUNS.len() as u128;
        let name = format!("{adjective}-{noun}");
        if !taken(&name) {
            return name;
        }
    }
    format!("c-{:012x}", random & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: generated names are valid host names, and a taken name is not given again.
    #[test]
    fn generated_names_are_host_names_and_free() {
        for random in [0u128, 1, 12345, u128::MAX] {
            let name = generate(random, |_| false);
            starling_store::instances::check_instance_name(&name).unwrap();
        }
        let first = generate(7, |_| false);
        let second = generate(7, |name| name == first);
        assert_ne!(first, second);
        let fallback = generate(7, |_| true);
        assert!(fallback.starts_with("c-"), "{fallback}");
        starling_store::instances::check_instance_name(&fallback).unwrap();
    }
}
