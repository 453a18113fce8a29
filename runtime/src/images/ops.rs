//! The image built-ins and replication, carried out.
//!
//! - `images.import(path)` runs on the member asked (the file is on its disk): the file is
//!   copied into its image files, verified, and the record proposed with that member as the
//!   first location.
//! - Everything else runs on the leader. After each heartbeat round, after an import and on
//!   `images.replicate`, the leader runs the [`planner`](super::planner) and asks each
//!   receiving member to pull its copy ([`Request::ImagePull`]); the receiver fetches the bytes
//!   from a holder ([`Request::ImageFetch`], a length frame then the raw bytes), resuming from the
//!   offset reached with the next holder if one fails, verifies the hash, makes the file
//!   durable and answers; then the leader records the location.
//! - Every member deletes its files of images the database lists as deleted (an offline holder
//!   does when it is back), except those it is importing or receiving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use starling_store::images::{Image, ImageAlias, ImageCommand};
use starling_store::{Command, MemberStatus};

use super::files::ImageFiles;
use super::format::{self, FormatError};
use super::planner::{self, Copy, Peer};
use super::stream;
use crate::cluster::join::WRITE_TIMEOUT;
use crate::member::Member;
use crate::protocol::{Reply, Request};
use crate::{Caller, Error, Operation};

/// How long one copy may go without progress before it fails over to the next holder.
const FETCH_SILENCE: Duration = Duration::from_secs(30);
/// How long the leader waits for word of a copy (the receiver reports every
/// [`PROGRESS_EVERY`], and fails over itself after [`FETCH_SILENCE`] without bytes).
const PULL_SILENCE: Duration = Duration::from_secs(90);
/// How long [`Member::ensure_image_on`] tries again a copy that failed for a reason that may
/// pass (the member could not be reached), and how long it waits between tries.
const ENSURE_RETRY_FOR: Duration = Duration::from_secs(30);
const ENSURE_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How often a receiver reports the progress of a copy.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long `images.replicate` waits for the copies it started.
const REPLICATE_WAIT: Duration = Duration::from_secs(600);

/// An image operation (`images.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ImageOperation {
    /// `images.list()`.
    List,
    /// `images.get(fingerprint or alias)`.
    Get {
        /// Fingerprint, unique prefix or alias.
        reference: String,
    },
    /// `images.import(path [, {aliases=, public=, properties=}])`: a file on the member asked.
    Import {
        /// Path of the image file on the member.
        path: String,
        /// Aliases to give it.
        aliases: Vec<String>,
        /// Whether untrusted clients may download it.
        public: bool,
        /// Properties added to (or overriding) those of its `metadata.yaml`.
        properties: BTreeMap<String, String>,
    },
    /// Records an image a member imported (sent by that member to the leader).
    Record {
        /// The record, its importer as the only location.
        image: Image,
    },
    /// `images.delete(x)`.
    Delete {
        /// Fingerprint, unique prefix or alias.
        reference: String,
    },
    /// `images.alias_add(x, name [, description])`.
    AliasAdd {
        /// Fingerprint, unique prefix or alias.
        reference: String,
        /// The alias.
        name: String,
        /// Its description.
        description: String,
    },
    /// `images.alias_remove(name)`.
    AliasRemove {
        /// The alias.
        name: String,
    },
    /// `images.alias_rename(old, new)`.
    AliasRename {
        /// The current name.
        from: String,
        /// The new name.
        to: String,
    },
    /// `images.replicate(x)`: bring it to the minimum now; answers its locations.
    Replicate {
        /// Fingerprint, unique prefix or alias.
        reference: String,
    },
    /// `images.copy_to(x, member)`: one more copy, on `member`.
    CopyTo {
        /// Fingerprint, unique prefix or alias.
        reference: String,
        /// The member to copy it to.
        member: String,
    },
    /// `images.transfers()`: copies under way.
    Transfers,
}

impl ImageOperation {
    /// Whether it changes the cluster state.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            ImageOperation::List | ImageOperation::Get { .. } | ImageOperation::Transfers
        )
    }

    /// Whether it runs on the member asked rather than on the leader.
    pub fn is_local(&self) -> bool {
        matches!(self, ImageOperation::Import { .. })
    }
}

/// A copy under way, as `images.transfers()` shows it.
#[derive(Clone, Debug)]
struct Transfer {
    from: String,
    to: String,
    total: u64,
    /// Bytes the receiver reported written.
    done: u64,
    started: Instant,
}

/// An image file a client is uploading.
struct OpenUpload {
    incoming: super::files::Incoming,
    touched: Instant,
}

/// Why a copy cannot be made: no online member holds the image.
fn no_online_holder() -> Error {
    refused("no online member holds the image")
}

/// An image file in place under its fingerprint, with what its `metadata.yaml` says.
struct Imported {
    fingerprint: String,
    size: u64,
    filename: String,
    metadata: format::ImageMetadata,
}

/// Uploads open at once on one member.
const UPLOADS_MAX: usize = 8;
/// An upload without a piece for this long is dropped (with its partial file).
const UPLOAD_IDLE_MAX: Duration = Duration::from_secs(300);

/// A member's image bookkeeping.
#[derive(Default)]
pub struct ImageState {
    /// Uploads from clients, by id.
    uploads: Mutex<BTreeMap<u128, OpenUpload>>,
    /// Fingerprints being imported or received here: the clean-up leaves their files alone.
    local: Mutex<BTreeSet<String>>,
    /// The list of deleted images (its length and newest entry) the last complete clean-up
    /// saw: the image directory is read again only once the list changes.
    swept: Mutex<Option<(usize, Option<String>)>>,
    /// Copies this member (as leader) started: (fingerprint, receiver) → transfer.
    copies: Mutex<BTreeMap<(String, String), Transfer>>,
    /// Images this member is receiving.
    receiving: Mutex<BTreeSet<String>>,
    /// Why the last copy of (fingerprint, receiver) this member started failed, until one
    /// succeeds: a caller that followed a copy started by the replication can say why.
    failures: Mutex<BTreeMap<(String, String), Error>>,
}

use crate::sync::lock;

fn refused(error: impl std::fmt::Display) -> Error {
    Error::Refused(error.to_string())
}

use crate::token::now_ms;

/// The JSON of an image record, in LXD's field names.
fn image_json(image: &Image) -> Value {
    json!({
        "fingerprint": image.fingerprint,
        "size": image.size,
        "filename": image.filename,
        "architecture": image.architecture,
        "properties": image.properties,
        "aliases": image.aliases.iter().map(|alias| json!({
            "name": alias.name,
            "description": alias.description,
        })).collect::<Vec<_>>(),
        "public": image.public,
        "created_at": image.created_at,
        "uploaded_at": image.uploaded_at_ms / 1000,
        "locations": image.locations,
    })
}

impl Member {
    /// This member's image files.
    pub(crate) fn image_files(&self) -> ImageFiles {
        ImageFiles::new(self.dir().root())
    }

    /// Runs an image operation on the member asked ([`ImageOperation::is_local`]).
    pub(crate) async fn image_local(&self, operation: &ImageOperation) -> Result<Value, Error> {
        match operation {
            ImageOperation::Import {
                path,
                aliases,
                public,
                properties,
            } => self.import_image(path, aliases, *public, properties).await,
            other => Err(Error::Internal(format!("{other:?} runs on the leader"))),
        }
    }

    /// Runs an image operation on the leader.
    pub(crate) async fn image_here(&self, operation: &ImageOperation) -> Result<Value, Error> {
        match operation {
            ImageOperation::List => Ok(self.local_state(|state| {
                Value::Array(state.images.values().map(image_json).collect())
            })),
            ImageOperation::Get { reference } => self
                .local_state(|state| state.image(reference).map(image_json))
                .map_err(refused),
            ImageOperation::Import { .. } => self.image_local(operation).await,
            ImageOperation::Record { image } => {
                self.propose_image(ImageCommand::Add {
                    image: image.clone(),
                })
                .await?;
                self.replicate_images().await;
                Ok(json!({"fingerprint": image.fingerprint}))
            }
            ImageOperation::Delete { reference } => {
                let fingerprint = self.fingerprint_of(reference)?;
                self.propose_image(ImageCommand::Delete { fingerprint })
                    .await?;
                Ok(Value::Null)
            }
            ImageOperation::AliasAdd {
                reference,
                name,
                description,
            } => {
                let fingerprint = self.fingerprint_of(reference)?;
                let alias = ImageAlias {
                    name: name.clone(),
                    description: description.clone(),
                };
                self.propose_image(ImageCommand::AliasAdd { fingerprint, alias })
                    .await?;
                Ok(Value::Null)
            }
            ImageOperation::AliasRemove { name } => {
                self.propose_image(ImageCommand::AliasRemove { name: name.clone() })
                    .await?;
                Ok(Value::Null)
            }
            ImageOperation::AliasRename { from, to } => {
                self.propose_image(ImageCommand::AliasRename {
                    from: from.clone(),
                    to: to.clone(),
                })
                .await?;
                Ok(Value::Null)
            }
            ImageOperation::Replicate { reference } => {
                let fingerprint = self.fingerprint_of(reference)?;
                // Copies come in generations (a holder feeds a few at once): plan, wait, and
                // plan again until a plan starts nothing.
                let deadline = Instant::now() + REPLICATE_WAIT;
                while Instant::now() < deadline {
                    let started = self.replicate_images().await;
                    self.wait_copies_of(&fingerprint, deadline - Instant::now())
                        .await;
                    if started == 0 && !self.copying(&fingerprint) {
                        break;
                    }
                }
                let locations = self.local_state(|state| {
                    state
                        .images
                        .get(&fingerprint)
                        .map(|image| image.locations.clone())
                        .unwrap_or_default()
                });
                Ok(json!(locations))
            }
            ImageOperation::CopyTo { reference, member } => {
                let fingerprint = self.fingerprint_of(reference)?;
                // Refused at once where a copy cannot be made (no such member, offline, a
                // holder already); a copy already under way to the member is followed to
                // its end, so the answer always means the member holds the image.
                self.copy_sources(&fingerprint, member)?;
                self.ensure_image_on(&fingerprint, member).await?;
                Ok(Value::Null)
            }
            ImageOperation::Transfers => Ok(self.transfers()),
        }
    }

    fn fingerprint_of(&self, reference: &str) -> Result<String, Error> {
        self.local_state(|state| {
            state
                .image(reference)
                .map(|image| image.fingerprint.clone())
        })
        .map_err(refused)
    }

    async fn propose_image(&self, command: ImageCommand) -> Result<(), Error> {
        self.propose(Command::Image(command), WRITE_TIMEOUT).await
    }

    /// `images.import(path)`: copies the file in, checks it, and records it through the leader.
    async fn import_image(
        &self,
        path: &str,
        aliases: &[String],
        public: bool,
        properties: &BTreeMap<String, String>,
    ) -> Result<Value, Error> {
        let source = Path::new(path).to_path_buf();
        if !source.is_file() {
            return Err(Error::Refused(format!(
                "image file \"{path}\" not found on member {}",
                self.name()
            )));
        }
        let metadata = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || format::read_metadata(&source))
                .await
                .map_err(|error| Error::Internal(error.to_string()))?
        }
        .map_err(|error: FormatError| Error::Refused(format!("\"{path}\": {error}")))?;
        self.check_importable(path, &metadata, aliases)?;
        let size = std::fs::metadata(&source)
            .map_err(|error| Error::Local(error.to_string()))?
            .len();
        let files = self.image_files();
        self.check_free(size, path)?;
        let (fingerprint, size) = {
            let files = files.clone();
            tokio::task::spawn_blocking(move || files.copy_in(&source))
                .await
                .map_err(|error| Error::Internal(error.to_string()))?
                .map_err(|error| Error::Local(format!("copying \"{path}\": {error}")))?
        };
        let filename = Path::new(path)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let imported = Imported {
            fingerprint,
            size,
            filename,
            metadata,
        };
        self.record_import(imported, aliases, public, properties)
            .await
    }

    /// Refuses an image no member can run, or aliases already taken.
    fn check_importable(
        &self,
        what: &str,
        metadata: &format::ImageMetadata,
        aliases: &[String],
    ) -> Result<(), Error> {
        let runnable = self.local_state(|state| {
            state
                .members
                .values()
                .any(|member| member.architecture == metadata.architecture)
        });
        if !runnable {
            return Err(Error::Refused(format!(
                "\"{what}\": architecture {} is one no member can run",
                metadata.architecture
            )));
        }
        for alias in aliases {
            starling_store::images::check_alias_name(alias).map_err(Error::Refused)?;
            if self.local_state(|state| state.image(alias).is_ok()) {
                return Err(Error::Refused(format!("Alias \"{alias}\" already exists")));
            }
        }
        Ok(())
    }

    /// Refuses a file larger than the free space of this member's image directory.
    fn check_free(&self, size: u64, what: &str) -> Result<(), Error> {
        let free = self
            .image_files()
            .free_bytes()
            .map_err(|error| Error::Local(error.to_string()))?;
        if free < size {
            return Err(Error::Refused(format!(
                "not enough free disk on member {} for \"{what}\": {size} bytes needed, {free} free",
                self.name()
            )));
        }
        Ok(())
    }

    /// Records an image whose file is in place here, through the leader; on refusal the file
    /// goes, unless the database knows the image (this member then held it already).
    async fn record_import(
        &self,
        imported: Imported,
        aliases: &[String],
        public: bool,
        properties: &BTreeMap<String, String>,
    ) -> Result<Value, Error> {
        let Imported {
            fingerprint,
            size,
            filename,
            metadata,
        } = imported;
        let files = self.image_files();
        if self.local_state(|state| state.images.contains_key(&fingerprint)) {
            return Err(Error::Refused(
                "Image with same fingerprint already exists".to_string(),
            ));
        }
        lock(&self.inner.images.local).insert(fingerprint.clone());
        let mut all_properties = metadata.properties.clone();
        all_properties.extend(properties.clone());
        let image = Image {
            fingerprint: fingerprint.clone(),
            size,
            filename,
            architecture: metadata.architecture,
            properties: all_properties,
            aliases: aliases
                .iter()
                .map(|name| ImageAlias {
                    name: name.clone(),
                    description: String::new(),
                })
                .collect(),
            public,
            created_at: metadata.created_at,
            uploaded_at_ms: now_ms(),
            locations: BTreeSet::from([self.name()]),
        };
        // Boxed: `execute` runs imports, so it would otherwise contain itself.
        let recorded = Box::pin(self.execute(
            Operation::Image(ImageOperation::Record { image }),
            Caller::local(),
        ))
        .await;
        lock(&self.inner.images.local).remove(&fingerprint);
        if let Err(error) = recorded {
            if !self.local_state(|state| state.images.contains_key(&fingerprint)) {
                let _ = files.remove(&fingerprint);
            }
            return Err(error);
        }
        tracing::info!(%fingerprint, size, "image imported");
        Ok(json!({"fingerprint": fingerprint, "size": size}))
    }

    /// A piece of a client's upload. The upload is taken out of the open ones while its piece
    /// is written off the async runtime (pieces of one upload come one after the other); one
    /// whose write failed is dropped, with its file.
    pub(crate) async fn upload_piece(
        &self,
        upload: u128,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<(), Error> {
        let mut open = {
            let mut uploads = lock(&self.inner.images.uploads);
            uploads.retain(|_, open| open.touched.elapsed() < UPLOAD_IDLE_MAX);
            match uploads.remove(&upload) {
                Some(open) if open.incoming.written() != offset => {
                    let expected = open.incoming.written();
                    uploads.insert(upload, open);
                    return Err(Error::Refused(format!(
                        "upload piece at {offset}, expected {expected}"
                    )));
                }
                Some(open) => open,
                None if offset != 0 => {
                    return Err(Error::Refused(format!(
                        "upload {upload:x} is unknown here (it expired, or went to another member)"
                    )));
                }
                None if uploads.len() >= UPLOADS_MAX => {
                    return Err(Error::Busy(format!(
                        "member {} has {UPLOADS_MAX} uploads open; try again",
                        self.name()
                    )));
                }
                None => OpenUpload {
                    incoming: self
                        .image_files()
                        .incoming()
                        .map_err(|error| Error::Local(error.to_string()))?,
                    touched: Instant::now(),
                },
            }
        };
        let (mut open, written) = tokio::task::spawn_blocking(move || {
            let written = open.incoming.write(&bytes);
            (open, written)
        })
        .await
        .map_err(|error| Error::Internal(error.to_string()))?;
        written.map_err(|error| Error::Local(error.to_string()))?;
        open.touched = Instant::now();
        lock(&self.inner.images.uploads).insert(upload, open);
        Ok(())
    }

    /// A client's upload is complete: check and record it as an import.
    pub(crate) async fn upload_done(
        &self,
        upload: u128,
        filename: &str,
        aliases: &[String],
        public: bool,
    ) -> Result<Value, Error> {
        let open = lock(&self.inner.images.uploads)
            .remove(&upload)
            .ok_or_else(|| Error::Refused(format!("upload {upload:x} is unknown here")))?;
        let incoming = open.incoming;
        let (fingerprint, size) = incoming.fingerprint_and_size();
        if self.local_state(|state| state.images.contains_key(&fingerprint)) {
            return Err(Error::Refused(
                "Image with same fingerprint already exists".to_string(),
            ));
        }
        let expected = fingerprint.clone();
        tokio::task::spawn_blocking(move || incoming.finish(&expected))
            .await
            .map_err(|error| Error::Internal(error.to_string()))?
            .map_err(|error| Error::Local(error.to_string()))?;
        let path = self.image_files().path(&fingerprint);
        let metadata = tokio::task::spawn_blocking(move || format::read_metadata(&path))
            .await
            .map_err(|error| Error::Internal(error.to_string()))?;
        let checked = metadata
            .map_err(|error| Error::Refused(format!("\"{filename}\": {error}")))
            .and_then(|metadata| {
                self.check_importable(filename, &metadata, aliases)
                    .map(|()| metadata)
            });
        let metadata = match checked {
            Ok(metadata) => metadata,
            Err(error) => {
                if !self.local_state(|state| state.images.contains_key(&fingerprint)) {
                    let _ = self.image_files().remove(&fingerprint);
                }
                return Err(error);
            }
        };
        let imported = Imported {
            fingerprint,
            size,
            filename: filename.to_string(),
            metadata,
        };
        self.record_import(imported, aliases, public, &BTreeMap::new())
            .await
    }

    /// Streams image `reference` to a client: from this member's copy, or relayed from a
    /// holder's (a length frame, then the raw bytes; see [`stream`]).
    pub(crate) async fn serve_download(
        &self,
        reference: &str,
        responder: &mut starling_transport::Responder,
    ) {
        let found = self.local_state(|state| {
            state
                .image(reference)
                .map(|image| (image.fingerprint.clone(), image.locations.clone()))
        });
        let (fingerprint, holders) = match found {
            Ok(found) => found,
            Err(error) => {
                let _ = responder.send(&Reply::Refused(Error::Refused(error))).await;
                return;
            }
        };
        let files = self.image_files();
        if files.contains(&fingerprint) {
            let what = format!("image {fingerprint} on member {}", self.name());
            return stream::send_file(responder, &files.path(&fingerprint), 0, &what).await;
        }
        let addresses = self.online_addresses(&holders);
        let Some(address) = addresses.first() else {
            let refusal = Error::Refused(format!("no online member holds image {fingerprint}"));
            let _ = responder.send(&Reply::Refused(refusal)).await;
            return;
        };
        let request = Request::ImageFetch {
            fingerprint: fingerprint.clone(),
            offset: 0,
        };
        let opened = match self.request_stream(address, &request).await {
            Ok(source) => stream::Body::open(source, FETCH_SILENCE).await,
            Err(error) => Err(error),
        };
        let mut body = match opened {
            Ok(body) => body,
            Err(error) => {
                let _ = responder.send(&Reply::Refused(error)).await;
                return;
            }
        };
        let header = Reply::ImageStream {
            bytes: body.length(),
        };
        if responder.send(&header).await.is_err() {
            return;
        }
        let mut piece = Vec::new();
        loop {
            match body.next_piece(&mut piece).await {
                Ok(true) => {
                    let bytes = bytes::Bytes::from(std::mem::take(&mut piece));
                    if responder.send_raw(bytes).await.is_err() {
                        return;
                    }
                }
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(%error, %fingerprint, "relaying an image failed");
                    responder.abort();
                    return;
                }
            }
        }
    }

    /// The addresses of the online members among `names`.
    fn online_addresses(&self, names: &BTreeSet<String>) -> Vec<String> {
        self.local_state(|state| {
            names
                .iter()
                .filter_map(|name| state.members.get(name))
                .filter(|member| member.status == MemberStatus::Online)
                .map(|member| member.address.clone())
                .collect()
        })
    }

    /// The members as the replication planner sees them.
    fn image_peers(&self) -> Vec<Peer> {
        self.local_state(|state| {
            state
                .members
                .values()
                .map(|member| Peer {
                    name: member.name.clone(),
                    failure_domain: member.failure_domain.clone(),
                    online: member.status == MemberStatus::Online,
                })
                .collect()
        })
    }

    /// Leader only: plans the copies missing and starts them (in the background); answers how
    /// many it started.
    pub(crate) async fn replicate_images(&self) -> usize {
        if !self.is_leader() {
            return 0;
        }
        let (holders, minimum) = self.local_state(|state| {
            let holders: BTreeMap<String, BTreeSet<String>> = state
                .images
                .values()
                .map(|image| (image.fingerprint.clone(), image.locations.clone()))
                .collect();
            (holders, state.config_i64("cluster.images_minimal_replica"))
        });
        if holders.is_empty() {
            return 0;
        }
        let in_flight: BTreeSet<(String, String)> =
            lock(&self.inner.images.copies).keys().cloned().collect();
        let feeding = self.feeding();
        let copies = planner::plan(&holders, &self.image_peers(), minimum, &in_flight, &feeding);
        let started = copies.len();
        for copy in copies {
            let member = self.clone();
            tokio::spawn(async move {
                let what = format!("{} to {}", copy.fingerprint, copy.to);
                match member.run_copy(copy).await {
                    // The new holder (and its freed source) can feed the copies still
                    // waiting. A failed copy waits for the next heartbeat round instead, so a
                    // copy that keeps failing is not retried in a tight loop.
                    Ok(()) => member.replicate_again().await,
                    Err(error) => tracing::warn!(%error, copy = %what, "image copy failed"),
                }
            });
        }
        started
    }

    /// After a change of `key` (committed, on the leader): a new image minimum takes effect
    /// at once, not at the next heartbeat round.
    pub(crate) async fn config_changed(&self, key: &str) {
        if key == "cluster.images_minimal_replica" {
            self.replicate_images().await;
        }
    }

    /// [`Member::replicate_images`] as a boxed future: a copy that ends plans again, and the
    /// named type keeps the compiler from chasing the future's type around that cycle.
    fn replicate_again(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let member = self.clone();
        Box::pin(async move {
            member.replicate_images().await;
        })
    }

    /// Leader: makes sure `member` holds `fingerprint` (an instance is created there), copying
    /// it there first when it does not; waits for a copy already under way.
    pub(crate) async fn ensure_image_on(
        &self,
        fingerprint: &str,
        member: &str,
    ) -> Result<(), Error> {
        let held = |this: &Member| {
            this.local_state(|state| {
                state
                    .images
                    .get(fingerprint)
                    .is_some_and(|image| image.locations.contains(member))
            })
        };
        if held(self) {
            return Ok(());
        }
        let key = (fingerprint.to_string(), member.to_string());
        let deadline = Instant::now() + REPLICATE_WAIT;
        // A copy the replication started is followed, not repeated. When it fails (or a copy
        // of our own does) because the member could not be reached for a moment (one that
        // just joined, a loaded machine), copies of our own are tried for a while.
        let retry_until = Instant::now() + ENSURE_RETRY_FOR;
        let mut followed = false;
        let mut last: Option<Error> = None;
        loop {
            if held(self) {
                return Ok(());
            }
            if lock(&self.inner.images.copies).contains_key(&key) {
                if Instant::now() >= deadline {
                    break;
                }
                followed = true;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if std::mem::take(&mut followed) {
                last = lock(&self.inner.images.failures).get(&key).cloned();
            }
            match &last {
                // Never tried, or the copy followed ended without a word: try.
                None => {}
                Some(error) if error.is_transient() && Instant::now() < retry_until => {
                    tokio::time::sleep(ENSURE_RETRY_PAUSE).await;
                }
                Some(_) => break,
            }
            // An error from `copy_to` (the copy finished between the checks, the member went
            // offline) is a reason like any other: the loop looks again.
            let outcome = match self.copy_to(fingerprint, member) {
                Ok(copy) => self.run_copy(copy).await,
                Err(error) => Err(error),
            };
            last = outcome.err();
        }
        if held(self) {
            return Ok(());
        }
        let reason = last.map_or_else(|| "it took too long".to_string(), |error| error.to_string());
        Err(Error::Refused(format!(
            "image {fingerprint} could not be copied to member \"{member}\": {reason}"
        )))
    }

    /// The online holders a copy of `fingerprint` to `member` could come from, or why no copy
    /// can be made (no such image or member, the member offline or a holder already, no
    /// online holder).
    fn copy_sources(&self, fingerprint: &str, member: &str) -> Result<Vec<String>, Error> {
        let (record, target) = self.local_state(|state| {
            (
                state.images.get(fingerprint).cloned(),
                state.members.get(member).cloned(),
            )
        });
        let record = record.ok_or_else(|| refused(format!("image \"{fingerprint}\" not found")))?;
        let target = target.ok_or_else(|| refused(format!("member \"{member}\" not found")))?;
        crate::cluster::health::require_online(&target)?;
        if record.locations.contains(member) {
            return Err(refused(format!(
                "member \"{member}\" holds the image already"
            )));
        }
        let online: BTreeSet<String> = self
            .image_peers()
            .into_iter()
            .filter(|peer| peer.online)
            .map(|peer| peer.name)
            .collect();
        let holders: Vec<String> = record
            .locations
            .into_iter()
            .filter(|name| online.contains(name))
            .collect();
        if holders.is_empty() {
            return Err(no_online_holder());
        }
        Ok(holders)
    }

    /// A copy of `fingerprint` to `member`, from the online holders, the least busy first.
    fn copy_to(&self, fingerprint: &str, member: &str) -> Result<Copy, Error> {
        let holders = self.copy_sources(fingerprint, member)?;
        let sources = planner::order_sources(holders.iter(), &self.feeding());
        let from = sources.first().cloned().ok_or_else(no_online_holder)?;
        Ok(Copy {
            fingerprint: fingerprint.to_string(),
            from,
            sources,
            to: member.to_string(),
        })
    }

    /// Copies under way from each member (this leader's copies).
    fn feeding(&self) -> BTreeMap<String, usize> {
        let mut feeding: BTreeMap<String, usize> = BTreeMap::new();
        for transfer in lock(&self.inner.images.copies).values() {
            *feeding.entry(transfer.from.clone()).or_default() += 1;
        }
        feeding
    }

    /// Leader: asks `copy.to` to pull the image, then records the location.
    async fn run_copy(&self, copy: Copy) -> Result<(), Error> {
        let key = (copy.fingerprint.clone(), copy.to.clone());
        let (size, addresses, target) = self.local_state(|state| {
            let size = state
                .images
                .get(&copy.fingerprint)
                .map_or(0, |image| image.size);
            let addresses: Vec<String> = copy
                .sources
                .iter()
                .filter_map(|name| state.members.get(name).map(|member| member.address.clone()))
                .collect();
            let target = state
                .members
                .get(&copy.to)
                .map(|member| member.address.clone());
            (size, addresses, target)
        });
        let target = target.ok_or_else(|| refused(format!("member \"{}\" not found", copy.to)))?;
        {
            let mut copies = lock(&self.inner.images.copies);
            if copies.contains_key(&key) {
                return Ok(());
            }
            copies.insert(
                key.clone(),
                Transfer {
                    from: copy.from.clone(),
                    to: copy.to.clone(),
                    total: size,
                    done: 0,
                    started: Instant::now(),
                },
            );
        }
        let request = Request::ImagePull {
            fingerprint: copy.fingerprint.clone(),
            size,
            sources: addresses,
        };
        let outcome = match self.request_stream(&target, &request).await {
            Ok(answers) => self.follow_pull(answers, &key).await,
            Err(error) => Err(error),
        };
        let result = match outcome {
            Ok(()) => {
                self.propose_image(ImageCommand::LocationAdd {
                    fingerprint: copy.fingerprint.clone(),
                    member: copy.to.clone(),
                })
                .await
            }
            Err(error) => Err(error),
        };
        lock(&self.inner.images.copies).remove(&key);
        match &result {
            Ok(()) => {
                lock(&self.inner.images.failures).remove(&key);
                tracing::info!(fingerprint = %copy.fingerprint, to = %copy.to, "image copied");
            }
            Err(error) => {
                lock(&self.inner.images.failures).insert(key, error.clone());
            }
        }
        result
    }

    /// Reads a pull's progress into its transfer until the receiver says it is done.
    async fn follow_pull(
        &self,
        mut answers: starling_transport::ResponseStream,
        key: &(String, String),
    ) -> Result<(), Error> {
        loop {
            match answers.next::<Reply>(PULL_SILENCE).await {
                Ok(Some(Reply::Progress { done })) => {
                    if let Some(transfer) = lock(&self.inner.images.copies).get_mut(key) {
                        transfer.done = done;
                    }
                }
                Ok(Some(Reply::Ack)) => return Ok(()),
                Ok(Some(Reply::Refused(error))) => return Err(error),
                Ok(Some(other)) => {
                    return Err(Error::Internal(format!(
                        "unexpected reply to a pull: {other:?}"
                    )))
                }
                Ok(None) => {
                    return Err(Error::Transport(format!(
                        "member {} ended the copy without an answer",
                        key.1
                    )))
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Whether a copy of `fingerprint` is under way.
    fn copying(&self, fingerprint: &str) -> bool {
        lock(&self.inner.images.copies)
            .keys()
            .any(|(image, _)| image == fingerprint)
    }

    /// Waits until no copy of `fingerprint` is under way, at most `wait`.
    async fn wait_copies_of(&self, fingerprint: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && self.copying(fingerprint) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn transfers(&self) -> Value {
        let copies = lock(&self.inner.images.copies).clone();
        Value::Array(
            copies
                .iter()
                .map(|((fingerprint, _), transfer)| {
                    let seconds = transfer.started.elapsed().as_secs_f64();
                    json!({
                        "image": fingerprint,
                        "from": transfer.from,
                        "to": transfer.to,
                        "done": transfer.done,
                        "total": transfer.total,
                        "seconds": seconds,
                        "rate": if seconds > 0.0 { transfer.done as f64 / seconds } else { 0.0 },
                    })
                })
                .collect(),
        )
    }

    /// Receiver: runs [`Member::pull_image`], answering its progress every
    /// [`PROGRESS_EVERY`] and then how it ended.
    pub(crate) async fn serve_pull(
        &self,
        fingerprint: &str,
        size: u64,
        sources: &[String],
        responder: &mut starling_transport::Responder,
    ) -> Reply {
        let progress = Arc::new(AtomicU64::new(0));
        let pull = self.pull_image(fingerprint, size, sources, progress.clone());
        stream::with_progress(responder, &progress, PROGRESS_EVERY, pull).await
    }

    /// Receiver: fetches `fingerprint` from `sources` in order, resuming from the offset
    /// reached, verifies and keeps it. Answers once the file is durable.
    pub(crate) async fn pull_image(
        &self,
        fingerprint: &str,
        size: u64,
        sources: &[String],
        progress: Arc<AtomicU64>,
    ) -> Result<(), Error> {
        starling_store::images::check_fingerprint(fingerprint).map_err(Error::Refused)?;
        let files = self.image_files();
        if files.contains(fingerprint) {
            return Ok(());
        }
        {
            let mut receiving = lock(&self.inner.images.receiving);
            if !receiving.insert(fingerprint.to_string()) {
                return Err(refused(format!(
                    "member {} is already receiving {fingerprint}",
                    self.name()
                )));
            }
        }
        lock(&self.inner.images.local).insert(fingerprint.to_string());
        let result = self
            .fetch_from(&files, fingerprint, size, sources, progress)
            .await;
        lock(&self.inner.images.receiving).remove(fingerprint);
        lock(&self.inner.images.local).remove(fingerprint);
        result
    }

    async fn fetch_from(
        &self,
        files: &ImageFiles,
        fingerprint: &str,
        size: u64,
        sources: &[String],
        progress: Arc<AtomicU64>,
    ) -> Result<(), Error> {
        self.check_free(size, fingerprint)?;
        let started = Instant::now();
        let mut incoming = files
            .incoming()
            .map_err(|error| Error::Local(error.to_string()))?;
        let mut last_error = Error::Refused("no member to copy the image from".to_string());
        for source in sources {
            let (back, result) = self
                .fetch_range(source, fingerprint, size, incoming, progress.clone())
                .await;
            incoming = match back {
                Some(incoming) => incoming,
                None => return result,
            };
            match result {
                Ok(()) => {
                    let expected = fingerprint.to_string();
                    let received = started.elapsed();
                    tokio::task::spawn_blocking(move || incoming.finish(&expected))
                        .await
                        .map_err(|error| Error::Internal(error.to_string()))?
                        .map_err(|error| Error::Local(error.to_string()))?;
                    tracing::info!(
                        fingerprint,
                        size,
                        received_s = received.as_secs_f64(),
                        durable_s = (started.elapsed() - received).as_secs_f64(),
                        "image received"
                    );
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, source, offset = incoming.written(), "image fetch failed; trying the next holder");
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    /// Appends to `incoming` what `source` sends of `fingerprint` from `incoming.written()`.
    /// The network is read here; the bytes are hashed and written on a blocking thread at
    /// most [`stream::PIECES_AHEAD`] pieces behind. Gives `incoming` back, however it went
    /// (unless its writer panicked), so the next holder can go on from where this one stopped.
    async fn fetch_range(
        &self,
        source: &str,
        fingerprint: &str,
        size: u64,
        incoming: super::files::Incoming,
        progress: Arc<AtomicU64>,
    ) -> (Option<super::files::Incoming>, Result<(), Error>) {
        let offset = incoming.written();
        let (pieces, mut to_write) = tokio::sync::mpsc::channel::<Vec<u8>>(stream::PIECES_AHEAD);
        let (spent, mut free) = tokio::sync::mpsc::channel::<Vec<u8>>(stream::PIECES_AHEAD + 1);
        let writer = tokio::task::spawn_blocking(move || {
            let mut incoming = incoming;
            let mut failed = None;
            while let Some(piece) = to_write.blocking_recv() {
                if failed.is_none() {
                    match incoming.write(&piece) {
                        Ok(()) => progress.store(incoming.written(), Ordering::Relaxed),
                        Err(error) => failed = Some(error),
                    }
                }
                let _ = spent.try_send(piece);
            }
            (incoming, failed)
        });
        let received = async {
            let request = Request::ImageFetch {
                fingerprint: fingerprint.to_string(),
                offset,
            };
            let answers = self.request_stream(source, &request).await?;
            let mut body = stream::Body::open(answers, FETCH_SILENCE).await?;
            if offset + body.length() != size {
                return Err(Error::Transport(format!(
                    "{source} offers {} bytes from offset {offset} of a {size}-byte image",
                    body.length()
                )));
            }
            loop {
                let mut piece = free.try_recv().unwrap_or_default();
                if !body.next_piece(&mut piece).await? {
                    return Ok(());
                }
                if pieces.send(piece).await.is_err() {
                    return Err(Error::Local("the image writer stopped".to_string()));
                }
            }
        }
        .await;
        drop(pieces);
        let (incoming, failed) = match writer.await {
            Ok(done) => done,
            // The writer panicked: nothing to resume from.
            Err(error) => return (None, Err(Error::Internal(error.to_string()))),
        };
        let result = match failed {
            Some(error) => Err(Error::Local(format!(
                "writing image {fingerprint}: {error}"
            ))),
            None => received,
        };
        (Some(incoming), result)
    }

    /// Holder: sends `fingerprint` from `offset` (a length frame, then the raw bytes).
    pub(crate) async fn serve_fetch(
        &self,
        fingerprint: &str,
        offset: u64,
        responder: &mut starling_transport::Responder,
    ) {
        if starling_store::images::check_fingerprint(fingerprint).is_err() {
            let _ = responder
                .send(&Reply::Refused(refused("invalid fingerprint")))
                .await;
            return;
        }
        let path = self.image_files().path(fingerprint);
        let what = format!("member {} copy of {fingerprint}", self.name());
        stream::send_file(responder, &path, offset, &what).await;
    }

    /// Takes a stream probe of `bytes` from member `from` and says how long it took.
    pub(crate) async fn stream_probe_from(&self, from: &str, bytes: u64) -> Reply {
        let address =
            self.local_state(|state| state.members.get(from).map(|member| member.address.clone()));
        let Some(address) = address else {
            return Reply::Refused(refused(format!("member \"{from}\" not found")));
        };
        let started = Instant::now();
        let probe = async {
            let answers = self
                .request_stream(&address, &Request::StreamProbe { bytes })
                .await?;
            let mut body = stream::Body::open(answers, FETCH_SILENCE).await?;
            let mut piece = Vec::new();
            let mut received = 0u64;
            while body.next_piece(&mut piece).await? {
                received += piece.len() as u64;
            }
            Ok::<u64, Error>(received)
        };
        match probe.await {
            Ok(received) => Reply::Probe {
                bytes: received,
                seconds: started.elapsed().as_secs_f64(),
            },
            Err(error) => Reply::Refused(error),
        }
    }

    /// Deletes the files of images the database deleted (those it lists as deleted: a member
    /// whose state lags never deletes an image it does not know of yet), except those being
    /// imported or received here.
    pub(crate) fn remove_deleted_images(&self) {
        let (deleted, seen): (BTreeSet<String>, (usize, Option<String>)) =
            self.local_state(|state| {
                let list = &state.deleted_images;
                (
                    list.iter().cloned().collect(),
                    (list.len(), list.back().cloned()),
                )
            });
        if deleted.is_empty() || lock(&self.inner.images.swept).as_ref() == Some(&seen) {
            return;
        }
        let files = self.image_files();
        let keep: BTreeSet<String> = lock(&self.inner.images.local).clone();
        let mut complete = true;
        for fingerprint in files.list() {
            if !deleted.contains(&fingerprint) {
                continue;
            }
            if keep.contains(&fingerprint) {
                complete = false;
                continue;
            }
            match files.remove(&fingerprint) {
                Ok(()) => tracing::info!(%fingerprint, "deleted image removed from disk"),
                Err(error) => {
                    complete = false;
                    tracing::warn!(%error, %fingerprint, "could not remove image");
                }
            }
        }
        if complete {
            *lock(&self.inner.images.swept) = Some(seen);
        }
    }
}
