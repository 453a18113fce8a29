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
}
