//! Image records: what the cluster database knows of each image (LXD's image fields and
//! `locations`, the members holding a verified copy). The bytes never go through Raft: each
//! holder keeps them on its own disk.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::limits::{
    check_architecture, check_config, check_len, DESCRIPTION_BYTES_MAX, NAME_BYTES_MAX,
};
use crate::model::ClusterState;

/// Length of an image fingerprint (SHA-256 of the file, in hex).
pub const FINGERPRINT_CHARS: usize = 64;
/// Longest image file name kept, in bytes.
pub const FILENAME_BYTES_MAX: usize = 255;
/// Most aliases one image may have.
pub const ALIASES_MAX: usize = 64;
/// How many deleted fingerprints the database remembers, for holders that were offline.
pub const DELETED_KEPT: usize = 4096;

/// An image alias (LXD: name and description, pointing at one image).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageAlias {
    /// The alias, unique in the cluster.
    pub name: String,
    /// Free-form description.
    pub description: String,
}

/// An image as the cluster database records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// SHA-256 of the image file, lowercase hex.
    pub fingerprint: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// The file name it was imported from.
    pub filename: String,
    /// Architecture from its `metadata.yaml` (`x86_64`, `aarch64`, ...).
    pub architecture: String,
    /// Properties from its `metadata.yaml` (`description`, `os`, `release`, ...).
    pub properties: BTreeMap<String, String>,
    /// Its aliases.
    pub aliases: Vec<ImageAlias>,
    /// Whether clients that are not trusted may download it (LXD's `public`).
    pub public: bool,
    /// `creation_date` of its `metadata.yaml`, seconds since the Unix epoch.
    pub created_at: i64,
    /// When it was imported, milliseconds since the Unix epoch.
    pub uploaded_at_ms: u64,
    /// Names of the members holding a verified, durable copy.
    pub locations: BTreeSet<String>,
}

/// A change to the image records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ImageCommand {
    /// A new image, with its first location (the member that imported it).
    Add {
        /// The record.
        image: Image,
    },
    /// `member` now holds a verified, durable copy.
    LocationAdd {
        /// The image.
        fingerprint: String,
        /// The member.
        member: String,
    },
    /// `member` no longer holds a copy.
    LocationRemove {
        /// The image.
        fingerprint: String,
        /// The member.
        member: String,
    },
    /// Deletes the record; holders delete their files when they see it gone.
    Delete {
        /// The image.
        fingerprint: String,
    },
    /// Adds an alias.
    AliasAdd {
        /// The image.
        fingerprint: String,
        /// The alias.
        alias: ImageAlias,
    },
    /// Removes an alias.
    AliasRemove {
        /// The alias.
        name: String,
    },
    /// Renames an alias.
    AliasRename {
        /// The current name.
        from: String,
        /// The new name.
        to: String,
    },
}

/// Checks an image fingerprint: 64 lowercase hex digits.
pub fn check_fingerprint(fingerprint: &str) -> Result<(), String> {
    let valid = fingerprint.len() == FINGERPRINT_CHARS
        && fingerprint
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if !valid {
        return Err(format!(
            "invalid image fingerprint \"{}\": 64 lowercase hexadecimal digits expected",
            crate::limits::short(fingerprint)
        ));
    }
    Ok(())
}

/// Checks an alias name: as other object names, and not something that reads as a fingerprint
/// prefix clash (it may not be all hex digits of 12 or more).
pub fn check_alias_name(name: &str) -> Result<(), String> {
    check_len("alias name", name, NAME_BYTES_MAX)?;
    crate::command::validate_object_name(name, "alias")
}

fn check_alias(alias: &ImageAlias) -> Result<(), String> {
    check_alias_name(&alias.name)?;
    check_len(
        "alias description",
        &alias.description,
        DESCRIPTION_BYTES_MAX,
    )
}

impl ImageCommand {
    /// Checks every field's limit (see [`crate::limits`]).
    pub fn check_fields(&self) -> Result<(), String> {
        match self {
            ImageCommand::Add { image } => {
                check_fingerprint(&image.fingerprint)?;
                check_len("image file name", &image.filename, FILENAME_BYTES_MAX)?;
                check_architecture(&image.architecture)?;
                check_config("image properties", &image.properties)?;
                if image.aliases.len() > ALIASES_MAX {
                    return Err(format!(
                        "too many aliases: {} (at most {ALIASES_MAX})",
                        image.aliases.len()
                    ));
                }
                image.aliases.iter().try_for_each(check_alias)?;
                image
                    .locations
                    .iter()
                    .try_for_each(|member| check_len("member name", member, NAME_BYTES_MAX))
            }
            ImageCommand::LocationAdd {
                fingerprint,
                member,
            }
            | ImageCommand::LocationRemove {
                fingerprint,
                member,
            } => {
                check_fingerprint(fingerprint)?;
                check_len("member name", member, NAME_BYTES_MAX)
            }
            ImageCommand::Delete { fingerprint } => check_fingerprint(fingerprint),
            ImageCommand::AliasAdd { fingerprint, alias } => {
                check_fingerprint(fingerprint)?;
                check_alias(alias)
            }
            ImageCommand::AliasRemove { name } => check_len("alias name", name, NAME_BYTES_MAX),
            ImageCommand::AliasRename { from, to } => {
                check_len("alias name", from, NAME_BYTES_MAX)?;
                check_alias_name(to)
            }
        }
    }
}

impl ClusterState {
    /// The image `reference` names: an alias, a full fingerprint, or a fingerprint prefix that
    /// only one image has.
    pub fn image(&self, reference: &str) -> Result<&Image, String> {
        if let Some(image) = self.image_by_alias(reference) {
            return Ok(image);
        }
        if let Some(image) = self.images.get(reference) {
            return Ok(image);
        }
        let mut matching = self
            .images
            .range(reference.to_string()..)
            .take_while(|(fingerprint, _)| fingerprint.starts_with(reference))
            .map(|(_, image)| image);
        match (reference.is_empty(), matching.next(), matching.next()) {
            (false, Some(image), None) => Ok(image),
            (false, Some(_), Some(_)) => Err(format!(
                "more than one image has a fingerprint starting with \"{reference}\""
            )),
            _ => Err(format!("image \"{reference}\" not found")),
        }
    }

    fn image_by_alias(&self, name: &str) -> Option<&Image> {
        self.images
            .values()
            .find(|image| image.aliases.iter().any(|alias| alias.name == name))
    }

    pub(crate) fn apply_image(&mut self, command: &ImageCommand) -> Result<(), String> {
        match command {
            ImageCommand::Add { image } => {
                if self.images.contains_key(&image.fingerprint) {
                    return Err("Image with same fingerprint already exists".to_string());
                }
                for alias in &image.aliases {
                    self.alias_free(&alias.name)?;
                }
                let duplicates: BTreeSet<&str> = image
                    .aliases
                    .iter()
                    .map(|alias| alias.name.as_str())
                    .collect();
                if duplicates.len() != image.aliases.len() {
                    return Err("an alias is given twice".to_string());
                }
                self.deleted_images
                    .retain(|deleted| *deleted != image.fingerprint);
                self.images.insert(image.fingerprint.clone(), image.clone());
                Ok(())
            }
            ImageCommand::LocationAdd {
                fingerprint,
                member,
            } => {
                if !self.members.contains_key(member) {
                    return Err(format!("member \"{member}\" not found"));
                }
                let image = self.image_mut(fingerprint)?;
                image.locations.insert(member.clone());
                Ok(())
            }
            ImageCommand::LocationRemove {
                fingerprint,
                member,
            } => {
                let image = self.image_mut(fingerprint)?;
                image.locations.remove(member);
                Ok(())
            }
            ImageCommand::Delete { fingerprint } => match self.images.remove(fingerprint) {
                Some(_) => {
                    self.deleted_images.push_back(fingerprint.clone());
                    while self.deleted_images.len() > DELETED_KEPT {
                        self.deleted_images.pop_front();
                    }
                    Ok(())
                }
                None => Err(format!("image \"{fingerprint}\" not found")),
            },
            ImageCommand::AliasAdd { fingerprint, alias } => {
                self.alias_free(&alias.name)?;
                let image = self.image_mut(fingerprint)?;
                if image.aliases.len() >= ALIASES_MAX {
                    return Err(format!("image has {ALIASES_MAX} aliases already"));
                }
                image.aliases.push(alias.clone());
                Ok(())
            }
            ImageCommand::AliasRemove { name } => {
                let image = self.alias_owner_mut(name)?;
                image.aliases.retain(|alias| alias.name != *name);
                Ok(())
            }
            ImageCommand::AliasRename { from, to } => {
                self.alias_free(to)?;
                let image = self.alias_owner_mut(from)?;
                for alias in &mut image.aliases {
                    if alias.name == *from {
                        alias.name = to.clone();
                    }
                }
                Ok(())
            }
        }
    }

    fn alias_free(&self, name: &str) -> Result<(), String> {
        match self.image_by_alias(name) {
            Some(_) => Err(format!("Alias \"{name}\" already exists")),
            None => Ok(()),
        }
    }

    fn image_mut(&mut self, fingerprint: &str) -> Result<&mut Image, String> {
        self.images
            .get_mut(fingerprint)
            .ok_or_else(|| format!("image \"{fingerprint}\" not found"))
    }

    fn alias_owner_mut(&mut self, name: &str) -> Result<&mut Image, String> {
        self.images
            .values_mut()
            .find(|image| image.aliases.iter().any(|alias| alias.name == name))
            .ok_or_else(|| format!("alias \"{name}\" not found"))
    }

    /// A member left or was renamed: its locations follow (`to` `None`: removed).
    pub(crate) fn move_image_locations(&mut self, from: &str, to: Option<&str>) {
        for image in self.images.values_mut() {
            if image.locations.remove(from) {
                if let Some(to) = to {
                    image.locations.insert(to.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn image(fingerprint: &str, alias: &str) -> Image {
        Image {
            fingerprint: fingerprint.to_string(),
            size: 10,
            filename: "busybox.tar.gz".into(),
            architecture: "x86_64".into(),
            properties: BTreeMap::new(),
            aliases: vec![ImageAlias {
                name: alias.into(),
                description: String::new(),
            }],
            public: false,
            created_at: 0,
            uploaded_at_ms: 0,
            locations: BTreeSet::from(["m1".to_string()]),
        }
    }

    /// Goal: images are found by alias, full fingerprint or a unique prefix; duplicates of
    /// fingerprints and aliases are refused with LXD's words.
    #[test]
    fn lookup_and_duplicates() {
        let mut state = ClusterState::default();
        let a = "a".repeat(64);
        let b = format!("ab{}", "0".repeat(62));
        state
            .apply_image(&ImageCommand::Add {
                image: image(&a, "one"),
            })
            .unwrap();
        state
            .apply_image(&ImageCommand::Add {
                image: image(&b, "two"),
            })
            .unwrap();
        assert_eq!(state.image("one").unwrap().fingerprint, a);
        assert_eq!(state.image("ab0").unwrap().fingerprint, b);
        assert!(state.image("a").unwrap_err().contains("more than one"));
        assert!(state.image("ff").unwrap_err().contains("not found"));
        let again = state.apply_image(&ImageCommand::Add {
            image: image(&a, "three"),
        });
        assert_eq!(
            again,
            Err("Image with same fingerprint already exists".to_string())
        );
        let clash = state.apply_image(&ImageCommand::AliasAdd {
            fingerprint: b.clone(),
            alias: ImageAlias {
                name: "one".into(),
                description: String::new(),
            },
        });
        assert_eq!(clash, Err("Alias \"one\" already exists".to_string()));
        state
            .apply_image(&ImageCommand::AliasRename {
                from: "one".into(),
                to: "uno".into(),
            })
            .unwrap();
        assert_eq!(state.image("uno").unwrap().fingerprint, a);
    }

    /// Goal: bad fingerprints are refused by the limit check.
    #[test]
    fn fingerprints_are_checked() {
        assert!(check_fingerprint(&"a".repeat(64)).is_ok());
        assert!(check_fingerprint(&"A".repeat(64)).is_err());
        assert!(check_fingerprint("abc").is_err());
    }
}
