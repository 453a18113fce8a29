//! A member's data directory: what it keeps on disk besides the database.
//!
//! ```text
//! DIR/member.json          name, node id, listen address, known peers
//! DIR/tls/ca.crt           the cluster CA certificate
//! DIR/tls/member.{crt,key} the member's identity (signed by the CA)
//! DIR/tls/admin.{crt,key}  the local administrator's client identity
//! DIR/registry.json        the trust registry last heard from the leader (spares need it)
//! DIR/db/                  the Raft log and state machine (LMDB)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use starling_store::NodeId;
use starling_transport::Identity;

use crate::Error;

/// What a member remembers about itself between restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberFile {
    /// Member name.
    pub name: String,
    /// Raft node id.
    pub id: NodeId,
    /// Address the member listens on (`host:port`).
    pub address: String,
    /// Other members' addresses, refreshed from heartbeats.
    pub peers: Vec<String>,
}

/// Paths and files of one member's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (not created until something is saved).
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_path_buf(),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the database lives.
    pub fn database(&self) -> PathBuf {
        self.root.join("db")
    }

    /// Whether a member was already created here.
    pub fn is_initialized(&self) -> bool {
        self.root.join("member.json").exists()
    }

    /// Loads `member.json`.
    pub fn load_member(&self) -> Result<MemberFile, Error> {
        let path = self.root.join("member.json");
        let text = std::fs::read_to_string(&path).map_err(|error| {
            Error::Local(format!(
                "{}: {error} (is this a Starling data directory?)",
                path.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|error| Error::Local(format!("{}: {error}", path.display())))
    }

    /// Saves `member.json` atomically.
    pub fn save_member(&self, member: &MemberFile) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(member)
            .map_err(|error| Error::Internal(error.to_string()))?;
        self.write_atomic("member.json", text.as_bytes())
    }

    /// Loads the trust registry saved by [`DataDir::save_registry`], if any.
    pub fn load_registry(&self) -> Option<crate::trust::TrustRegistry> {
        let text = std::fs::read_to_string(self.root.join("registry.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Saves the trust registry atomically.
    pub fn save_registry(&self, registry: &crate::trust::TrustRegistry) -> Result<(), Error> {
        let text =
            serde_json::to_vec(registry).map_err(|error| Error::Internal(error.to_string()))?;
        self.write_atomic("registry.json", &text)
    }

    /// Loads an identity saved as `tls/NAME.crt` and `tls/NAME.key`.
    pub fn load_identity(&self, name: &str) -> Result<Identity, Error> {
        let cert_pem = self.read(&format!("tls/{name}.crt"))?;
        let key_pem = self.read(&format!("tls/{name}.key"))?;
        let ca_pem = self.load_ca()?;
        Ok(Identity {
            cert_pem,
            key_pem,
            chain_pem: vec![ca_pem],
        })
    }

    /// Saves an identity as `tls/NAME.crt` and `tls/NAME.key` (the key readable by owner only,
    /// from the moment the file is created).
    pub fn save_identity(&self, name: &str, identity: &Identity) -> Result<(), Error> {
        self.write_atomic(&format!("tls/{name}.crt"), identity.cert_pem.as_bytes())?;
        self.write_atomic(&format!("tls/{name}.key"), identity.key_pem.as_bytes())
    }

    /// Whether the CA's private key is on disk (only between bootstrap and its first entry).
    pub fn has_ca_key(&self) -> bool {
        self.root.join("tls/ca.key").exists()
    }

    /// Deletes the CA's private key file, kept only until the bootstrap entry carries the key
    /// into the database (a missing file is not an error; `tls/ca.crt` stays).
    pub fn remove_ca_key(&self) -> Result<(), Error> {
        let path = self.root.join("tls/ca.key");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Error::Local(format!("{}: {error}", path.display()))),
        }
    }

    /// Loads the cluster CA certificate.
    pub fn load_ca(&self) -> Result<String, Error> {
        self.read("tls/ca.crt")
    }

    /// Saves the cluster CA certificate.
    pub fn save_ca(&self, ca_cert_pem: &str) -> Result<(), Error> {
        self.write_atomic("tls/ca.crt", ca_cert_pem.as_bytes())
    }

    fn read(&self, relative: &str) -> Result<String, Error> {
        let path = self.root.join(relative);
        std::fs::read_to_string(&path)
            .map_err(|error| Error::Local(format!("{}: {error}", path.display())))
    }

    fn write_atomic(&self, relative: &str, bytes: &[u8]) -> Result<(), Error> {
        let path = self.root.join(relative);
        let local = |error: std::io::Error| Error::Local(format!("{}: {error}", path.display()));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(local)?;
        }
        let temporary = path.with_extension("tmp");
        // A leftover temporary file may have other permissions: start from a new file.
        let _ = std::fs::remove_file(&temporary);
        write_private(&temporary, bytes).map_err(local)?;
        std::fs::rename(&temporary, &path).map_err(local)?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)
                .and_then(|directory| directory.sync_all())
                .map_err(local)?;
        }
        Ok(())
    }
}

/// Writes a new file readable and writable by its owner only (mode 0600 from creation, so a key
/// is never briefly readable by others), and makes it durable.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every file of the data directory, keys above all, is created with mode 0600.
    #[cfg(unix)]
    #[test]
    fn files_are_private_from_creation() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::new(root.path());
        let identity = Identity {
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            chain_pem: vec![],
        };
        // A stale temporary file that anyone could read must not lend its mode to the key.
        std::fs::create_dir_all(root.path().join("tls")).unwrap();
        std::fs::write(root.path().join("tls/member.tmp"), "old").unwrap();
        std::fs::set_permissions(
            root.path().join("tls/member.tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        dir.save_identity("member", &identity).unwrap();
        for file in ["tls/member.key", "tls/member.crt"] {
            let mode = std::fs::metadata(root.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        // Without the CA certificate the identity does not load, and the error says which file.
        let error = dir.load_identity("member").unwrap_err().to_string();
        assert!(error.contains("ca.crt"), "{error}");
    }
}
