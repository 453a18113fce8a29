//! `starling image ...`: lxc's image commands over the `images.*` operations.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use starling_runtime::images::ops::ImageOperation;
use starling_runtime::{Client, Operation};

use crate::format::{self, Column, Format};

/// `starling image`.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Imports an image file (LXD's unified tarball) and prints its fingerprint.
    Import {
        /// The file (.tar, .tar.gz or .tar.xz).
        file: PathBuf,
        /// An alias for it (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// Let untrusted clients download it.
        #[arg(long)]
        public: bool,
    },
    /// Writes an image's file (from whichever member holds it) to FILE, or to
    /// `<fingerprint>` plus the image's file extension in the current directory.
    Export {
        /// Fingerprint (or a unique prefix) or alias.
        image: String,
        /// Where to write it.
        target: Option<PathBuf>,
    },
    /// Lists images.
    List,
    /// Shows an image's record.
    Show {
        /// Fingerprint (or a unique prefix) or alias.
        image: String,
    },
    /// Shows an image's record, as `lxc image info` does.
    Info {
        /// Fingerprint (or a unique prefix) or alias.
        image: String,
    },
    /// Deletes an image from every member holding it.
    Delete {
        /// Fingerprint (or a unique prefix) or alias.
        image: String,
    },
    /// Image aliases.
    #[command(subcommand)]
    Alias(AliasCommand),
}

/// `starling image alias`.
#[derive(Subcommand)]
pub enum AliasCommand {
    /// Creates an alias.
    Create {
        /// The alias.
        name: String,
        /// Fingerprint (or a unique prefix) or alias of the image.
        image: String,
        /// Its description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Deletes an alias.
    Delete {
        /// The alias.
        name: String,
    },
    /// Renames an alias.
    Rename {
        /// The current name.
        name: String,
        /// The new name.
        new_name: String,
    },
    /// Lists aliases.
    List,
}

const IMAGE_COLUMNS: &[Column] = &[
    Column {
        header: "ALIAS",
        field: "alias",
    },
    Column {
        header: "FINGERPRINT",
        field: "short_fingerprint",
    },
    Column {
        header: "PUBLIC",
        field: "public_text",
    },
    Column {
        header: "DESCRIPTION",
        field: "description",
    },
    Column {
        header: "ARCHITECTURE",
        field: "architecture",
    },
    Column {
        header: "SIZE",
        field: "size_text",
    },
    Column {
        header: "LOCATIONS",
        field: "locations",
    },
];

const ALIAS_COLUMNS: &[Column] = &[
    Column {
        header: "ALIAS",
        field: "name",
    },
    Column {
        header: "FINGERPRINT",
        field: "short_fingerprint",
    },
    Column {
        header: "DESCRIPTION",
        field: "description",
    },
];

/// A progress bar with bytes, rate and ETA, on a terminal only (nothing when stdout is a
/// file or a pipe).
fn progress_bar(total: u64, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    Some(bar)
}

/// A size as lxc prints it (`12.34MiB`).
pub(crate) fn human_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.2}{}", units[unit])
    }
}

/// A record with the fields the table shows.
fn table_row(image: &Value) -> Value {
    let mut row = image.clone();
    let aliases: Vec<String> = image["aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|alias| alias["name"].as_str().map(str::to_string))
        .collect();
    let fingerprint = image["fingerprint"].as_str().unwrap_or_default();
    row["alias"] = json!(aliases);
    row["short_fingerprint"] = json!(fingerprint.chars().take(12).collect::<String>());
    row["public_text"] = json!(if image["public"] == true { "yes" } else { "no" });
    row["description"] = image["properties"]["description"].clone();
    row["size_text"] = json!(human_size(image["size"].as_u64().unwrap_or(0)));
    row
}

/// Runs `starling image ...` through `client`.
pub async fn run(format: Format, client: &Client, command: &ImageCommand) -> Result<()> {
    let image_operation = |operation| Operation::Image(operation);
    match command {
        ImageCommand::Import {
            file,
            aliases,
            public,
        } => {
            let total = std::fs::metadata(file)
                .with_context(|| format!("image file {}", file.display()))?
                .len();
            let bar = progress_bar(total, "uploading");
            let answer = client
                .upload_image(file, aliases, *public, |done, _| {
                    if let Some(bar) = &bar {
                        bar.set_position(done);
                    }
                })
                .await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let answer = answer?;
            let fingerprint = answer["fingerprint"].as_str().unwrap_or_default();
            println!("Image imported with fingerprint: {fingerprint}");
            Ok(())
        }
        ImageCommand::Export { image, target } => {
            let record = client
                .operation(image_operation(ImageOperation::Get {
                    reference: image.clone(),
                }))
                .await?;
            let fingerprint = record["fingerprint"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let size = record["size"].as_u64().unwrap_or(0);
            let target = match target {
                Some(target) => target.clone(),
                None => {
                    let filename = record["filename"].as_str().unwrap_or_default();
                    let extension = filename
                        .find(".tar")
                        .map_or(String::new(), |start| filename[start..].to_string());
                    PathBuf::from(format!("{fingerprint}{extension}"))
                }
            };
            let bar = progress_bar(size, "downloading");
            let written = client
                .download_image(&fingerprint, &fingerprint, &target, |done| {
                    if let Some(bar) = &bar {
                        bar.set_position(done);
                    }
                })
                .await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            written?;
            println!("Image exported successfully to {}", target.display());
            Ok(())
        }
        ImageCommand::List => {
            let images = client
                .operation(image_operation(ImageOperation::List))
                .await?;
            let shown = match format {
                Format::Table | Format::Csv => Value::Array(
                    images
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(table_row)
                        .collect(),
                ),
                _ => images,
            };
            println!("{}", format::render(&shown, format, IMAGE_COLUMNS));
            Ok(())
        }
        ImageCommand::Show { image } | ImageCommand::Info { image } => {
            let record = client
                .operation(image_operation(ImageOperation::Get {
                    reference: image.clone(),
                }))
                .await?;
            let format = if format == Format::Table {
                Format::Yaml
            } else {
                format
            };
            println!("{}", format::render(&record, format, IMAGE_COLUMNS));
            Ok(())
        }
        ImageCommand::Delete { image } => {
            client
                .operation(image_operation(ImageOperation::Delete {
                    reference: image.clone(),
                }))
                .await?;
            Ok(())
        }
        ImageCommand::Alias(AliasCommand::Create {
            name,
            image,
            description,
        }) => {
            client
                .operation(image_operation(ImageOperation::AliasAdd {
                    reference: image.clone(),
                    name: name.clone(),
                    description: description.clone(),
                }))
                .await?;
            Ok(())
        }
        ImageCommand::Alias(AliasCommand::Delete { name }) => {
            client
                .operation(image_operation(ImageOperation::AliasRemove {
                    name: name.clone(),
                }))
                .await?;
            Ok(())
        }
        ImageCommand::Alias(AliasCommand::Rename { name, new_name }) => {
            client
                .operation(image_operation(ImageOperation::AliasRename {
                    from: name.clone(),
                    to: new_name.clone(),
                }))
                .await?;
            Ok(())
        }
        ImageCommand::Alias(AliasCommand::List) => {
            let images = client
                .operation(image_operation(ImageOperation::List))
                .await?;
            let aliases: Vec<Value> = images
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|image| {
                    let fingerprint = image["fingerprint"].as_str().unwrap_or_default().to_string();
                    image["aliases"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |alias| {
                            json!({
                                "name": alias["name"],
                                "description": alias["description"],
                                "target": fingerprint,
                                "short_fingerprint": fingerprint.chars().take(12).collect::<String>(),
                            })
                        })
                })
                .collect();
            println!(
                "{}",
                format::render(&Value::Array(aliases), format, ALIAS_COLUMNS)
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_lxc_prints_them() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1536), "1.50KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.00MiB");
    }
}
