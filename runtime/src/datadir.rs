//! A member's data directory: what it keeps on disk besides the database.
//!
//! ```text
//! DIR/member.json          name, node id, listen address, known peers
//! DIR/tls/ca.crt           the cluster CA certificate
//! DIR/tls/member.{crt,key} the member's identity (signed by the CA)
//! DIR/tls/admin.{crt,key}  the local administrator's client identity
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

    /// Saves an identity as `tls/NAME.crt` and `tls/NAME.key` (the key readable by owner only).
    pub fn save_identity(&self, name: &str, identity: &Identity) -> Result<(), Error> {
        self.write_atomic(&format!("tls/{name}.crt"), identity.cert_pem.as_bytes())?;
        self.write_atomic(&format!("tls/{name}.key"), identity.key_pem.as_bytes())?;
        restrict_to_owner(&self.root.join(format!("tls/{name}.key")))
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
        std::fs::write(&temporary, bytes).map_err(local)?;
        std::fs::rename(&temporary, &path).map_err(local)
    }
}

#[cfg(unix)]
fn restrict_to_owner(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|error| Error::Local(format!("{}: {error}", path.display())))
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) -> Result<(), Error> {
    Ok(())
}
