//! [`InstanceKey`]: which instance, as LXD names it (project and name), and the one name it
//! has on disk and in the cgroup tree.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::DriverError;

/// The longest instance name: a hostname label.
const NAME_CHARS_MAX: usize = 63;
/// The longest project name (LXD's limit).
const PROJECT_CHARS_MAX: usize = 63;

/// An instance: its project and its name, in LXD's words.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceKey {
    /// The project (`default` unless another one is used).
    pub project: String,
    /// The instance name, also the container's hostname by default.
    pub name: String,
}

impl InstanceKey {
    /// The key of instance `name` in `project`.
    pub fn new(project: impl Into<String>, name: impl Into<String>) -> InstanceKey {
        InstanceKey {
            project: project.into(),
            name: name.into(),
        }
    }

    /// `<project>_<name>`: the container's directory in the pool and its cgroup's name.
    ///
    /// Unambiguous because an instance name has no `_` (see [`InstanceKey::validate`]).
    pub fn storage_name(&self) -> String {
        format!("{}_{}", self.project, self.name)
    }

    /// The key whose [`InstanceKey::storage_name`] is `storage_name`, if it is one.
    pub fn from_storage_name(storage_name: &str) -> Option<InstanceKey> {
        let (project, name) = storage_name.rsplit_once('_')?;
        let key = InstanceKey::new(project, name);
        key.validate().ok()?;
        Some(key)
    }

    /// Checks the name as LXD does (letters, digits and `-`, not starting with a digit or `-`,
    /// at most 63 characters: a valid hostname) and that the project is a plain file name.
    pub fn validate(&self) -> Result<(), DriverError> {
        let invalid = |reason: &str| DriverError::InvalidKey {
            key: self.to_string(),
            reason: reason.to_string(),
        };
        validate_hostname(&self.name).map_err(|reason| invalid(&reason))?;
        if self.project.is_empty() || self.project.chars().count() > PROJECT_CHARS_MAX {
            return Err(invalid(&format!(
                "a project name has 1 to {PROJECT_CHARS_MAX} characters"
            )));
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
        if !self.project.chars().all(plain) || self.project.starts_with('.') {
            return Err(invalid(
                "a project name has only letters, digits, '-', '_' and '.', not first",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.name)
    }
}

/// Checks that `name` can be an instance name and a hostname; says why not.
pub(crate) fn validate_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_CHARS_MAX {
        return Err(format!("a name has 1 to {NAME_CHARS_MAX} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("a name has only letters, digits and '-'".to_string());
    }
    if name.starts_with('-') || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a name cannot start with a digit or '-'".to_string());
    }
    if name.ends_with('-') {
        return Err("a name cannot end with '-'".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the storage name round-trips, and names LXD refuses are refused here.
    #[test]
    fn storage_names_and_validation() {
        let key = InstanceKey::new("my_project", "web-1");
        assert_eq!(key.storage_name(), "my_project_web-1");
        assert_eq!(
            InstanceKey::from_storage_name("my_project_web-1"),
            Some(key)
        );
        assert_eq!(InstanceKey::from_storage_name(".partial"), None);
        for bad in ["", "1abc", "-a", "a_b", "a b", "a-", &"a".repeat(64)] {
            assert!(
                InstanceKey::new("default", bad).validate().is_err(),
                "{bad:?}"
            );
        }
        for bad in ["", "a/b", "..", ".hidden"] {
            assert!(InstanceKey::new(bad, "c1").validate().is_err(), "{bad:?}");
        }
    }
}
