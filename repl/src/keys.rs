//! `KEY=VALUE` arguments as `lxc` takes them: several pairs, or one `KEY VALUE`; a value of
//! `-` is read from stdin (`cat f.star | starling config set instances.placement.scriptlet=-`).

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};

/// The pairs of `set NAME K1=V1 [K2=V2 ...]`, or of `set NAME KEY VALUE` (two arguments, the
/// first without `=`). A key given twice is refused.
pub fn parse_pairs(arguments: &[String]) -> Result<Vec<(String, String)>> {
    if let [key, value] = arguments {
        if !key.contains('=') {
            return Ok(vec![(key.clone(), value.clone())]);
        }
    }
    parse_assignments(arguments)
}

/// `K=V` arguments only (`device add NAME DEV TYPE K=V...`).
pub fn parse_assignments(arguments: &[String]) -> Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for argument in arguments {
        let Some((key, value)) = argument.split_once('=') else {
            bail!("\"{argument}\" is not KEY=VALUE (give KEY=VALUE pairs, or one KEY VALUE)");
        };
        if key.is_empty() {
            bail!("\"{argument}\" has no key before '='");
        }
        if pairs.iter().any(|(seen, _)| seen == key) {
            bail!("the key \"{key}\" is given twice");
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

/// Replaces a value of `-` by what stdin holds (as is: a scriptlet keeps its last newline).
/// Only one value can come from stdin.
pub fn read_stdin_values(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>> {
    let from_stdin: Vec<&str> = pairs
        .iter()
        .filter(|(_, value)| value == "-")
        .map(|(key, _)| key.as_str())
        .collect();
    if from_stdin.len() > 1 {
        bail!(
            "only one value can be read from stdin (\"-\"), not those of {}",
            from_stdin.join(", ")
        );
    }
    let mut values = BTreeMap::new();
    for (key, value) in pairs {
        let value = if value == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .with_context(|| format!("reading the value of {key} from stdin"))?;
            text
        } else {
            value
        };
        values.insert(key, value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn pairs_as_lxc_takes_them() {
        assert_eq!(
            parse_pairs(&strings(&["user.a", "x=y"])).unwrap(),
            [("user.a".to_string(), "x=y".to_string())]
        );
        assert_eq!(
            parse_pairs(&strings(&["user.a=1", "user.b=2=3"])).unwrap(),
            [
                ("user.a".to_string(), "1".to_string()),
                ("user.b".to_string(), "2=3".to_string())
            ]
        );
        assert!(parse_pairs(&strings(&["user.a"])).is_err());
        assert!(parse_pairs(&strings(&["user.a=1", "user.b"])).is_err());
        assert!(parse_pairs(&strings(&["user.a=1", "user.a=2"]))
            .unwrap_err()
            .to_string()
            .contains("given twice"));
        assert!(parse_assignments(&strings(&["=1"])).is_err());
        let two_from_stdin = vec![
            ("a".to_string(), "-".to_string()),
            ("b".to_string(), "-".to_string()),
        ];
        assert!(read_stdin_values(two_from_stdin).is_err());
    }
}
