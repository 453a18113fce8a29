//! A stopped container's root file system, moved between members.
//!
//! The source packs `rootfs/` as an image tarball (`metadata.yaml` and `rootfs/`, uncompressed)
//! into `<pool>/exports/<project>_<name>.tar` (written under a name of its own, then renamed
//! over it, so that a send under way keeps its whole file), hashing it as it writes
//! ([`LocalOperation::Export`](super::local::LocalOperation::Export)). The target fetches it
//! ([`Request::InstanceExport`]: a length frame, then the raw bytes, as an image copy), verifies
//! the SHA-256, unpacks it with the driver (which refuses entries that would land outside the
//! root file system) and deletes the tarball ([`Request::InstanceReceive`], answered with
//! `Progress` frames, then `Ack`). A failure on the target leaves nothing there; the source's
//! container is untouched until the leader has recorded the new location.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::driver::{InstanceKey, State};
use crate::images::stream;
use crate::member::Member;
use crate::protocol::{Reply, Request};
use crate::Error;

/// How long the target waits for the next bytes from the source.
const FETCH_SILENCE: Duration = Duration::from_secs(30);
/// How often the target reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What a target is asked to receive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receive {
    /// The instance.
    pub key: InstanceKey,
    /// The address of the member it comes from.
    pub source: String,
    /// The SHA-256 of the packed tarball.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The move's id, stamped on the copy (see `moves`).
    pub move_id: String,
}

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hasher: Context,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Packs `rootfs` into the tarball `path`; returns its SHA-256 (hex) and size. Blocking.
///
/// The tarball is written beside `path` under a name of its own, then renamed over it: a send
/// of an earlier pack that has `path` open goes on reading that whole file. (Two moves of one
/// instance at once, by a former leader and its successor, pack it twice; writing in place
/// cut the first send short.)
fn pack(rootfs: &Path, path: &Path) -> std::io::Result<(String, u64)> {
    static PACKS: AtomicU64 = AtomicU64::new(0);
    let partial = path.with_extension(format!(
        "tar.{}-{}.partial",
        std::process::id(),
        PACKS.fetch_add(1, Ordering::Relaxed)
    ));
    let packed = pack_into(rootfs, &partial).and_then(|packed| {
        std::fs::rename(&partial, path)?;
        Ok(packed)
    });
    if packed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    packed
}

fn pack_into(rootfs: &Path, path: &Path) -> std::io::Result<(String, u64)> {
    let file = std::fs::File::create(path)?;
    let writer = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: Context::new(&SHA256),
        written: 0,
    };
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    // The architecture as this member reports its own (`cluster.join` records the same).
    let metadata = format!(
        "architecture: {}\ncreation_date: 0\nproperties:\n  description: a moving instance\n",
        std::env::consts::ARCH
    );
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(metadata.len() as u64);
    builder.append_data(&mut header, "metadata.yaml", metadata.as_bytes())?;
    builder.append_dir_all("rootfs", rootfs)?;
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    writer.inner.get_ref().sync_all()?;
    let digest = writer.hasher.finish();
    Ok((hex::encode(digest.as_ref()), writer.written))
}

impl Member {
    /// `<pool>/exports/<project>_<name>.tar`.
    fn export_path(&self, key: &InstanceKey) -> PathBuf {
        self.driver()
            .pool_dir()
            .join("exports")
            .join(format!("{}.tar", key.storage_name()))
    }

    /// Source: packs the stopped container's root file system; answers its hash and size.
    pub(crate) async fn export_local(&self, key: &InstanceKey) -> Result<Value, Error> {
        let lock = self.inner.instances.lock(key);
        let _guard = lock.write().await;
        if matches!(self.observe(key).await?, State::Running { .. }) {
            return Err(Error::Refused(format!(
                "The instance \"{}\" is running: it must be stopped to move",
                key.name
            )));
        }
        let (driver, tree_key) = (self.driver().clone(), key.clone());
        let path = self.export_path(key);
        let started = std::time::Instant::now();
        let packed = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // A layered container's whole tree is its layers seen together.
            driver.read_tree(&tree_key, |rootfs| pack(rootfs, &path))
        })
        .await
        .map_err(|error| Error::Internal(error.to_string()))?
        .map_err(|error| {
            Error::Local(format!(
                "member {}: packing the root file system of {key}: {error}",
                self.name()
            ))
        })?;
        tracing::info!(instance = %key, size = packed.1, pack_ms = started.elapsed().as_millis() as u64, "root file system packed");
        let stamp = self.driver().move_stamp(key);
        Ok(json!({"sha256": packed.0, "size": packed.1, "stamp": stamp}))
    }

    /// Source: removes the packed tarball, if any.
    pub(crate) fn discard_export(&self, key: &InstanceKey) {
        let _ = std::fs::remove_file(self.export_path(key));
    }

    /// Source: sends the packed tarball (a length frame, then the raw bytes).
    pub(crate) async fn serve_export(
        &self,
        key: &InstanceKey,
        responder: &mut starling_transport::Responder,
    ) {
        if let Err(error) = key.validate() {
            let reply = Reply::Refused(Error::Refused(error.to_string()));
            let _ = responder.send(&reply).await;
            return;
        }
        let what = format!("member {} export of {key}", self.name());
        stream::send_file(responder, &self.export_path(key), 0, &what).await;
    }

    /// Target: runs [`Member::receive_local`], answering its progress every
    /// [`PROGRESS_EVERY`], then how it ended.
    pub(crate) async fn serve_receive(
        &self,
        receive: &Receive,
        responder: &mut starling_transport::Responder,
    ) -> Reply {
        let progress = Arc::new(AtomicU64::new(0));
        let receive = self.receive_local(receive, progress.clone());
        stream::with_progress(responder, &progress, PROGRESS_EVERY, receive).await
    }

    /// Target: fetches the tarball of the instance from its source, verifies its SHA-256,
    /// unpacks it as the container's root file system and stamps it with the move's id.
    /// Refuses when a container is here already (another move's copy is never replaced).
    /// Leaves nothing behind on failure.
    pub(crate) async fn receive_local(
        &self,
        receive: &Receive,
        progress: Arc<AtomicU64>,
    ) -> Result<(), Error> {
        let Receive {
            key,
            source,
            sha256,
            size,
            move_id,
        } = receive;
        let size = *size;
        key.validate()
            .map_err(|error| Error::Refused(error.to_string()))?;
        let lock = self.inner.instances.lock(key);
        let _guard = lock.write().await;
        if self.driver().container_dir(key).exists() {
            return Err(Error::Refused(format!(
                "member {} already has a container {key}",
                self.name()
            )));
        }
        let free = self
            .image_files()
            .free_bytes()
            .map_err(|error| Error::Local(error.to_string()))?;
        // The tarball and the unpacked tree side by side.
        if free < size.saturating_mul(2) {
            return Err(Error::Refused(format!(
                "member {} has {free} bytes free, not enough for a {size}-byte root file system",
                self.name()
            )));
        }
        let path = self
            .driver()
            .pool_dir()
            .join("imports")
            .join(format!("{}.tar", key.storage_name()));
        let result = self
            .fetch_export(key, source, sha256, size, &path, progress)
            .await;
        let result = match result {
            Ok(()) => {
                let unpack_key = key.clone();
                let tarball = path.clone();
                let id = move_id.clone();
                self.blocking(move |driver| {
                    driver.unpack(&unpack_key, &tarball)?;
                    driver.stamp_move(&unpack_key, &id)
                })
                .await
            }
            Err(error) => Err(error),
        };
        let _ = std::fs::remove_file(&path);
        if result.is_ok() {
            self.inner.instances.arrived.note(key);
        }
        if result.is_err() {
            let dir = self.driver().container_dir(key);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        result
    }

    async fn fetch_export(
        &self,
        key: &InstanceKey,
        source: &str,
        sha256: &str,
        size: u64,
        path: &Path,
        progress: Arc<AtomicU64>,
    ) -> Result<(), Error> {
        let (pieces, mut to_write) = tokio::sync::mpsc::channel::<Vec<u8>>(stream::PIECES_AHEAD);
        let file_path = path.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
            if let Some(dir) = file_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut writer = Hashing {
                inner: std::fs::File::create(&file_path)?,
                hasher: Context::new(&SHA256),
                written: 0,
            };
            while let Some(piece) = to_write.blocking_recv() {
                writer.write_all(&piece)?;
                progress.store(writer.written, Ordering::Relaxed);
            }
            writer.inner.sync_all()?;
            Ok((hex::encode(writer.hasher.finish().as_ref()), writer.written))
        });
        let received = async {
            let request = Request::InstanceExport { key: key.clone() };
            let answers = self.request_stream(source, &request).await?;
            let mut body = stream::Body::open(answers, FETCH_SILENCE).await?;
            if body.length() != size {
                return Err(Error::Transport(format!(
                    "{source} offers {} bytes of a {size}-byte root file system",
                    body.length()
                )));
            }
            loop {
                let mut piece = Vec::new();
                if !body.next_piece(&mut piece).await? {
                    return Ok(());
                }
                if pieces.send(piece).await.is_err() {
                    return Err(Error::Local("the root file system writer stopped".into()));
                }
            }
        }
        .await;
        drop(pieces);
        let written = writer
            .await
            .map_err(|error| Error::Internal(error.to_string()))?
            .map_err(|error| {
                Error::Local(format!(
                    "member {}: writing {}: {error}",
                    self.name(),
                    path.display()
                ))
            });
        received?;
        let (hash, _) = written?;
        if hash != sha256 {
            return Err(Error::Transport(format!(
                "the root file system of {key} from {source} hashes to {hash}, expected {sha256}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Goal: a packed instance is an image tarball LXD's metadata reader takes, naming this
    /// machine's architecture (it said `x86_64` on every machine).
    /// Method: pack a small root file system and read its metadata back.
    #[test]
    fn a_pack_names_this_machines_architecture() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc"))?;
        let path = dir.path().join("exports.tar");
        pack(&rootfs, &path)?;
        match crate::images::format::read_metadata(&path) {
            Ok(metadata) => assert_eq!(metadata.architecture, std::env::consts::ARCH),
            Err(error) => panic!("the packed instance is no image: {error}"),
        }
        Ok(())
    }

    /// Goal: a second pack of an instance (a second move of it at once) leaves a send of the
    /// first, which has the tarball open, reading the whole first tarball.
    /// Method: pack, open the tarball and read a little, change the root file system and pack
    /// again, then read the rest through the open file: the bytes must be the first tarball.
    #[test]
    fn a_second_pack_leaves_a_send_of_the_first_whole() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc"))?;
        std::fs::write(rootfs.join("etc/hostname"), b"first\n")?;
        std::fs::write(rootfs.join("big"), vec![7u8; 3 << 20])?;
        let path = dir.path().join("exports.tar");
        let (first_sha, first_size) = pack(&rootfs, &path)?;
        let mut sending = std::fs::File::open(&path)?;
        let mut bytes = vec![0u8; 4096];
        sending.read_exact(&mut bytes)?;
        std::fs::write(rootfs.join("etc/added"), vec![1u8; 1 << 20])?;
        let (second_sha, second_size) = pack(&rootfs, &path)?;
        assert_ne!(second_sha, first_sha);
        sending.read_to_end(&mut bytes)?;
        assert_eq!(bytes.len() as u64, first_size);
        let mut hasher = Context::new(&SHA256);
        hasher.update(&bytes);
        assert_eq!(hex::encode(hasher.finish().as_ref()), first_sha);
        assert_eq!(std::fs::metadata(&path)?.len(), second_size);
        let left: Vec<_> = std::fs::read_dir(dir.path())?
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(left.is_empty(), "a partial tarball was left behind");
        Ok(())
    }
}
