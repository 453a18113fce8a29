//! LXD's unified image tarball: `metadata.yaml` (architecture, creation_date, properties) plus
//! `rootfs/` and optional `templates/`, as `.tar`, `.tar.gz` or `.tar.xz`. Read as a stream, so
//! memory stays bounded whatever the image size.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::Deserialize;

/// The largest `metadata.yaml` read, in bytes.
const METADATA_BYTES_MAX: u64 = 1024 * 1024;

/// What an image's `metadata.yaml` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMetadata {
    /// The architecture, in the kernel's words (`x86_64`, `aarch64`, ...).
    pub architecture: String,
    /// `creation_date`, seconds since the Unix epoch.
    pub created_at: i64,
    /// Its properties (`description`, `os`, `release`, ...).
    pub properties: BTreeMap<String, String>,
}

/// Why a file is not a usable image.
#[derive(Debug)]
pub enum FormatError {
    /// Not a tarball (nor a gzip or xz compressed one).
    NotATarball(String),
    /// A tarball without `metadata.yaml`.
    NoMetadata,
    /// `metadata.yaml` is not what LXD writes.
    BadMetadata(String),
    /// The file could not be read.
    Io(std::io::Error),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::NotATarball(why) => {
                write!(f, "not an image tarball (.tar, .tar.gz or .tar.xz): {why}")
            }
            FormatError::NoMetadata => write!(f, "the image has no metadata.yaml"),
            FormatError::BadMetadata(why) => write!(f, "invalid metadata.yaml: {why}"),
            FormatError::Io(error) => write!(f, "could not read the image: {error}"),
        }
    }
}

#[derive(Deserialize)]
struct RawMetadata {
    architecture: Option<String>,
    creation_date: Option<i64>,
    #[serde(default)]
    properties: BTreeMap<String, serde_yaml::Value>,
}

/// The kernel's name of an architecture LXD images may name in Debian's words.
pub fn normalize_architecture(name: &str) -> String {
    match name {
        "amd64" | "x86_64" => "x86_64",
        "arm64" | "aarch64" => "aarch64",
        "i386" | "i686" => "i686",
        "armhf" | "armv7l" => "armv7l",
        "ppc64el" | "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
    .to_string()
}

/// Reads `metadata.yaml` from the image at `path`.
pub fn read_metadata(path: &Path) -> Result<ImageMetadata, FormatError> {
    metadata_from_tar(open_tar_stream(path)?)
}

/// The uncompressed tar stream of the image at `path`: gzip and xz are recognised by their
/// magic bytes, anything else is read as a plain tarball.
pub fn open_tar_stream(path: &Path) -> Result<Box<dyn Read>, FormatError> {
    let file = std::fs::File::open(path).map_err(FormatError::Io)?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let magic = reader.fill_buf().map_err(FormatError::Io)?.to_vec();
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Box::new(xz2::read::XzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// Finds and parses `metadata.yaml` in a tar stream.
fn metadata_from_tar(stream: impl Read) -> Result<ImageMetadata, FormatError> {
    let mut archive = tar::Archive::new(stream);
    let entries = archive
        .entries()
        .map_err(|error| FormatError::NotATarball(error.to_string()))?;
    let mut seen_any = false;
    for entry in entries {
        let entry = entry.map_err(|error| FormatError::NotATarball(error.to_string()))?;
        seen_any = true;
        let path = entry
            .path()
            .map_err(|error| FormatError::NotATarball(error.to_string()))?
            .into_owned();
        let name = path.to_string_lossy();
        if name.trim_start_matches("./") != "metadata.yaml" {
            continue;
        }
        if entry.size() > METADATA_BYTES_MAX {
            return Err(FormatError::BadMetadata(format!(
                "{} bytes, at most {METADATA_BYTES_MAX}",
                entry.size()
            )));
        }
        let mut text = String::new();
        entry
            .take(METADATA_BYTES_MAX)
            .read_to_string(&mut text)
            .map_err(|error| FormatError::BadMetadata(error.to_string()))?;
        return parse_metadata(&text);
    }
    if seen_any {
        Err(FormatError::NoMetadata)
    } else {
        Err(FormatError::NotATarball("no entries".to_string()))
    }
}

/// Parses the text of a `metadata.yaml`.
pub fn parse_metadata(text: &str) -> Result<ImageMetadata, FormatError> {
    let raw: RawMetadata =
        serde_yaml::from_str(text).map_err(|error| FormatError::BadMetadata(error.to_string()))?;
    let architecture = raw
        .architecture
        .filter(|architecture| !architecture.is_empty())
        .ok_or_else(|| FormatError::BadMetadata("no architecture".to_string()))?;
    let created_at = raw
        .creation_date
        .ok_or_else(|| FormatError::BadMetadata("no creation_date".to_string()))?;
    let mut properties = BTreeMap::new();
    for (key, value) in raw.properties {
        let text = match value {
            serde_yaml::Value::String(text) => text,
            serde_yaml::Value::Number(number) => number.to_string(),
            serde_yaml::Value::Bool(flag) => flag.to_string(),
            other => {
                return Err(FormatError::BadMetadata(format!(
                    "property \"{key}\" is not a scalar: {other:?}"
                )))
            }
        };
        properties.insert(key, text);
    }
    Ok(ImageMetadata {
        architecture: normalize_architecture(&architecture),
        created_at,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    const METADATA: &[u8] = b"architecture: amd64\ncreation_date: 1700000000\nproperties:\n  description: busybox\n  os: busybox\n  release: 1\n";

    /// Goal: metadata is read from plain, gzip and xz tarballs, with Debian's architecture
    /// names turned into the kernel's.
    #[test]
    fn reads_every_compression() {
        let plain = tarball(&[("metadata.yaml", METADATA), ("rootfs/bin/sh", b"x")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut xz, &plain).unwrap();
        let xz = xz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("a.tar", &plain), ("a.tar.gz", &gz), ("a.tar.xz", &xz)] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let metadata = read_metadata(&path).unwrap();
            assert_eq!(metadata.architecture, "x86_64", "{name}");
            assert_eq!(metadata.created_at, 1_700_000_000);
            assert_eq!(metadata.properties["release"], "1");
        }
    }

    /// Goal: each kind of bad input is named.
    #[test]
    fn bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let text = write("text", b"hello, this is not a tarball at all");
        assert!(matches!(
            read_metadata(&text),
            Err(FormatError::NotATarball(_))
        ));
        let bare = write("bare.tar", &tarball(&[("rootfs/x", b"x")]));
        assert!(matches!(read_metadata(&bare), Err(FormatError::NoMetadata)));
        let no_arch = write(
            "noarch.tar",
            &tarball(&[("metadata.yaml", b"creation_date: 1\n")]),
        );
        let error = read_metadata(&no_arch).unwrap_err().to_string();
        assert!(error.contains("no architecture"), "{error}");
    }

    /// Property tests: what any `metadata.yaml`, or any file given as an image, does to the
    /// reader.
    mod properties {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::*;
        use proptest::sample::{select, Index};

        /// A property value as `metadata.yaml` may hold it.
        #[derive(Clone, Debug, serde::Serialize)]
        #[serde(untagged)]
        enum Property {
            Text(String),
            Integer(i64),
            Flag(bool),
        }

        impl Property {
            /// The text the reader keeps for it.
            fn kept(&self) -> String {
                match self {
                    Property::Text(text) => text.clone(),
                    Property::Integer(number) => number.to_string(),
                    Property::Flag(flag) => flag.to_string(),
                }
            }
        }

        /// The fields of a `metadata.yaml`, as LXD writes them.
        #[derive(Clone, Debug, serde::Serialize)]
        struct Written {
            architecture: String,
            creation_date: i64,
            properties: BTreeMap<String, Property>,
        }

        fn written() -> impl Strategy<Value = Written> {
            let architecture = prop_oneof![
                    select(
                        &[
                            "amd64", "x86_64", "arm64", "armhf", "i386", "ppc64el", "s390x",
                            "riscv64"
                        ][..]
                    )
                    .prop_map(str::to_string),
                    "[a-z0-9_]{1,12}",
                ];
            let property = prop_oneof![
                ".{0,24}".prop_map(Property::Text),
                any::<i64>().prop_map(Property::Integer),
                any::<bool>().prop_map(Property::Flag),
            ];
            (
                architecture,
                any::<i64>(),
                btree_map("[a-z_.]{1,12}", property, 0..6),
            )
                .prop_map(|(architecture, creation_date, properties)| Written {
                    architecture,
                    creation_date,
                    properties,
                })
        }

        /// Pieces of YAML, so that random text reaches the parser's mappings, lists,
        /// anchors, tags and quotes rather than failing on its first character.
        fn yaml_ish() -> impl Strategy<Value = String> {
            let piece = select(
                &[
                    "architecture: ",
                    "creation_date: ",
                    "properties:",
                    "\n",
                    "  ",
                    "- ",
                    "{",
                    "}",
                    "[",
                    "]",
                    ": ",
                    ", ",
                    "&a ",
                    "*a",
                    "!!binary ",
                    "!!str ",
                    "'",
                    "\"",
                    "1700000000",
                    "-1",
                    "9223372036854775808",
                    "1.5e3",
                    "amd64",
                    "true",
                    "~",
                    "null",
                    "? ",
                    "|\n",
                    ">\n",
                    "---\n",
                    "#",
                    "\t",
                    "é",
                ][..],
            );
            vec(piece, 0..40).prop_map(|pieces| pieces.concat())
        }

        fn check_parsed(result: Result<ImageMetadata, FormatError>) -> Result<(), TestCaseError> {
            match result {
                Ok(metadata) => prop_assert!(!metadata.architecture.is_empty()),
                Err(error) => prop_assert!(
                    !matches!(error, FormatError::Io(_)),
                    "reading memory cannot fail: {}",
                    error
                ),
            }
            Ok(())
        }

        proptest! {
            /// Goal: a `metadata.yaml` as LXD writes it is read as written: the kernel's name
            /// of the architecture, the creation date, every property as text. Method:
            /// generate the fields, write them as YAML, parse; and again from a tarball.
            #[test]
            fn a_written_metadata_yaml_reads_back(written in written()) {
                let text = serde_yaml::to_string(&written).expect("yaml");
                let expected = ImageMetadata {
                    architecture: normalize_architecture(&written.architecture),
                    created_at: written.creation_date,
                    properties: written
                        .properties
                        .iter()
                        .map(|(key, value)| (key.clone(), value.kept()))
                        .collect(),
                };
                prop_assert_eq!(&parse_metadata(&text).expect("parses"), &expected);
                let image = tarball(&[("rootfs/bin/sh", b"x"), ("./metadata.yaml", text.as_bytes())]);
                prop_assert_eq!(metadata_from_tar(image.as_slice()).expect("reads"), expected);
            }

            /// Goal: any YAML-like text is read or refused, never panics or hangs (anchors
            /// and aliases included). Method: random sequences of YAML pieces.
            #[test]
            fn yaml_like_text_is_read_or_refused(text in yaml_ish()) {
                check_parsed(parse_metadata(&text))?;
            }

            /// Goal: any bytes given as an image are refused with a reason, never panic.
            /// Method: random bytes, and a valid image tarball with a few bytes changed.
            #[test]
            fn any_file_is_read_or_refused(
                bytes in vec(any::<u8>(), 0..1536),
                edits in vec((any::<Index>(), any::<u8>()), 0..6),
                written in written(),
            ) {
                check_parsed(metadata_from_tar(bytes.as_slice()))?;
                let text = serde_yaml::to_string(&written).expect("yaml");
                let mut image = tarball(&[("metadata.yaml", text.as_bytes()), ("rootfs/x", b"x")]);
                for (at, byte) in edits {
                    let at = at.index(image.len());
                    image[at] = byte;
                }
                check_parsed(metadata_from_tar(image.as_slice()))?;
            }
        }
    }
}
