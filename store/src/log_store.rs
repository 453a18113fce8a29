//! The Raft log: entries in append-only segment files, the vote and the committed and purged
//! log ids in LMDB.
//!
//! Appends are group-committed: [`LogStore::append`] hands entries to a dedicated writer thread
//! and returns at once; the thread gathers everything queued, writes the entries after the last
//! record of the current segment, makes them durable with one `fdatasync` for the whole batch
//! (see [`crate::segments`]) and only then reports them durable to openraft. LMDB is written
//! only when the batch changes the vote or the purged id (or, now and then, the committed id):
//! its commits cost two trips to the disk, a segment append one. The async runtime never waits
//! on `fsync`.
//!
//! An appended entry is readable at once: until its record is durable it is kept in memory
//! beside the segment files, as openraft 0.10 asks. The leader replicates entries while its own
//! `fsync` runs, and counts itself in the quorum only once the writer reports them durable. The
//! last durable entries stay in memory too, up to a budget, for replication and the state
//! machine to read without decoding them again ([`crate::recent_entries`]). A follower's
//! truncation drops the entries in memory at once and reaches the files in queue order, after
//! the appends before it.
//!
//! The committed index, which nobody waits for, is written with the next LMDB transaction, at
//! most every [`COMMITTED_WRITE_INTERVAL`] with an append, after 100 ms of quiet, or when the
//! store closes, so it costs no `fsync` of its own on the write path. It is never stored ahead
//! of the durable log: a follower may learn of a commit before its copy of the entry is
//! written, and a restart re-applies up to it.
//!
//! # Failures
//!
//! A write that fails (the log's size limit, disk full, I/O error) takes the store out of
//! service for good ([`StorageHealth`]): the cause is logged; every operation of the failed
//! batch gets the error, so openraft never counts those entries durable and stops with a fatal
//! storage error; and every later write fails without touching the disk. A batch over the size
//! limit writes nothing; a record torn by an I/O error or a crash ends the log when it is
//! opened again (the segments' recovery).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use heed::types::{Bytes, Str, U64};
use heed::{byteorder::BigEndian, CommitOrAbort, Database, Env, WithoutTls};
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use tokio::sync::oneshot;

use crate::recent_entries::RecentEntries;
use crate::segments::{self, Dirty, Record, Segments};
use crate::{Entry, Error, LogId, StorageHealth, TypeConfig, Vote};

/// Largest append replication sends at once, in encoded bytes.
pub const APPEND_BYTES_MAX: usize = crate::limits::BATCH_BYTES_MAX;

/// Largest number of queued operations the writer folds into one LMDB transaction.
const BATCH_OPERATIONS_MAX: usize = 4096;

type LogEntry = Entry;
type StorageResult<T> = Result<T, io::Error>;

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// The Raft log store of one member. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    env: Env<WithoutTls>,
    /// Entries as an older version kept them (moved to the segments when opened).
    entries: Database<'static, U64<BigEndian>, Bytes>,
    meta: Database<'static, Str, Bytes>,
    /// The entries' segment files, and where each entry lies.
    segments: Mutex<Segments>,
    segments_dir: std::path::PathBuf,
    /// When the committed index was last written.
    committed_written: Mutex<Instant>,
    writer: mpsc::Sender<WriteOp>,
    /// Set for good by the first write that fails.
    health: StorageHealth,
    /// LMDB transactions the writer committed since the store was opened.
    commits: AtomicU64,
    /// The log's last entries: those appended and not yet durable, readable at once as
    /// openraft needs to replicate them while they are being written, and the last durable
    /// ones, which replication and the state machine read next (see [`RecentEntries`]).
    recent: Mutex<RecentEntries>,
    /// Times the writer thread was woken by an operation (for tests: each append should
    /// cost one, the committed index none of its own).
    wakes: AtomicU64,
    /// The latest committed log id openraft saved and LMDB does not hold yet. It is written
    /// with the next transaction in which the log reaches it (a follower may learn of a commit
    /// before its own copy of the entry is durable), and on close.
    committed: Mutex<Option<LogId>>,
    /// Index of the last durable entry (`None`: the log is empty).
    durable_last: Mutex<Option<u64>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Index of the last entry the segments hold, else of the last purged one.
    fn last_stored_index(&self) -> Result<Option<u64>, Error> {
        if let Some(index) = locked(&self.segments).last_index() {
            return Ok(Some(index));
        }
        Ok(self.last_purged()?.map(|log_id| log_id.index))
    }

    fn last_purged(&self) -> Result<Option<LogId>, Error> {
        read_last_purged(&self.env, self.meta)
    }

    /// The stored entries from `start` to `end` (excluded), in index order.
    fn read_stored_range(&self, start: u64, end: Option<u64>) -> Result<Vec<LogEntry>, Error> {
        // Read under the lock: a truncation by the writer thread may otherwise zero (or a
        // new entry overwrite) a record between finding it and reading it, which would read
        // as a damaged record.
        let segments = locked(&self.segments);
        segments
            .locate(start, end)
            .iter()
            .map(|at| {
                let bytes = at.read().map_err(segments_error(&self.segments_dir))?;
                decode::<LogEntry>(&bytes)
            })
            .collect()
    }
}

impl Drop for Shared {
    /// Writes the committed index held back, so that a store closed right after a commit
    /// reopens with it.
    fn drop(&mut self) {
        let waiting = locked(&self.committed).is_some();
        if waiting && self.health.check().is_ok() {
            let _ = commit_batch(self, &[], true);
        }
    }
}

/// One operation for the writer thread, applied in queue order.
enum WriteOp {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        callback: IOFlushed<TypeConfig>,
    },
    PutMeta {
        key: &'static str,
        value: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Wakes a writer that holds no committed index back ([`Shared::committed`] was empty),
    /// so that it writes the one just saved when nothing else comes within
    /// [`DEFERRED_WRITE_DELAY`]. While it holds one it looks at the slot on its own.
    Nudge,
    Truncate {
        from_index: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        to_index: u64,
        last_purged: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

impl LogStore {
    /// Opens or creates the log under `dir` and starts its writer thread, with the default
    /// map size ([`crate::StoreOptions`]).
    pub fn open(dir: &Path) -> Result<LogStore, Error> {
        let options = crate::StoreOptions::default();
        let map_size_bytes = crate::map_size(options.log_map_size_bytes);
        LogStore::open_in(dir, map_size_bytes, StorageHealth::new())
    }

    /// Opens or creates the log under `dir`, an LMDB environment of `map_size_bytes` (a size
    /// LMDB accepts), and starts its writer thread, which reports failures to `health`.
    pub(crate) fn open_in(
        dir: &Path,
        map_size_bytes: usize,
        health: StorageHealth,
    ) -> Result<LogStore, Error> {
        let env = crate::open_env(dir, map_size_bytes, 4)?;
        let write_txn = env.write_txn()?;
        let (entries, meta) = env
            .create_databases_and_commit(write_txn, |opener, txn| -> Result<_, heed::Error> {
                let entries =
                    opener.create_database::<U64<BigEndian>, Bytes>(txn, Some("entries"))?;
                let meta = opener.create_database::<Str, Bytes>(txn, Some("meta"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((entries, meta)))
            })?
            .unwrap_commit();
        let segments_dir = dir.join("segments");
        let io_error = segments_error(&segments_dir);
        let purged = read_last_purged(&env, meta)?;
        let mut segments = Segments::open(
            &segments_dir,
            purged.map(|log_id| log_id.index),
            map_size_bytes as u64,
        )
        .map_err(&io_error)?;
        move_lmdb_entries(&env, entries, &mut segments, purged).map_err(|error| match error {
            MoveError::Lmdb(error) => Error::Lmdb(error),
            MoveError::Io(source) => io_error(source),
            MoveError::Decode(error) => error,
        })?;
        let (writer, queue) = mpsc::channel();
        let shared = Arc::new(Shared {
            env,
            entries,
            meta,
            segments: Mutex::new(segments),
            segments_dir: segments_dir.clone(),
            committed_written: Mutex::new(Instant::now()),
            writer,
            health,
            commits: AtomicU64::new(0),
            recent: Mutex::new(RecentEntries::default()),
            wakes: AtomicU64::new(0),
            committed: Mutex::new(None),
            durable_last: Mutex::new(None),
        });
        let stored_last = shared.last_stored_index()?;
        *locked(&shared.durable_last) = stored_last;
        let for_thread = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("raft-log-writer".to_string())
            .spawn(move || writer_loop(for_thread, queue))
            .map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(LogStore { shared })
    }

    /// Whether the log still writes, and why not once it does not.
    pub fn health(&self) -> &StorageHealth {
        &self.shared.health
    }

    /// How many transactions (each one durable write, with its `fsync`s) the writer committed
    /// since the store was opened.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// How many times an operation woke the writer thread since the store was opened.
    pub fn writer_wakes(&self) -> u64 {
        self.shared.wakes.load(Ordering::Relaxed)
    }

    /// Fails once the store is out of service, so nothing more is queued.
    fn writable(&self) -> Result<(), String> {
        self.shared
            .health
            .check()
            .map_err(|error| error.to_string())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        let txn = self
            .shared
            .env
            .read_txn()
            .map_err(|error| error.to_string())?;
        match self
            .shared
            .meta
            .get(&txn, key)
            .map_err(|error| error.to_string())?
        {
            None => Ok(None),
            Some(bytes) => bincode::deserialize(bytes)
                .map(Some)
                .map_err(|error| error.to_string()),
        }
    }

    async fn submit(
        &self,
        op_with: impl FnOnce(oneshot::Sender<Result<(), String>>) -> WriteOp,
    ) -> Result<(), String> {
        self.writable()?;
        let (done, wait) = oneshot::channel();
        self.shared
            .writer
            .send(op_with(done))
            .map_err(|_| Error::WriterStopped.to_string())?;
        wait.await.map_err(|_| Error::WriterStopped.to_string())?
    }

    /// What [`LogStore::read_range`] gives while the entries' encoded bytes add up to at most
    /// `bytes` (the first entry goes whatever its size). A bounded read decodes what it may
    /// keep, not the rest of the log behind it: the stored entries are bounded by their
    /// records' lengths before they are read; what is read is measured again after, as the
    /// entries still being written are not in the segments' index.
    fn read_range_within(
        &self,
        start: u64,
        end: Option<u64>,
        bytes: usize,
    ) -> Result<Vec<LogEntry>, String> {
        if let Some(entries) = self.recent().covering(start, end, bytes) {
            return Ok(entries);
        }
        let end = locked(&self.shared.segments).end_within(start, end, bytes);
        let mut entries = self.read_range(start, end)?;
        let mut total = 0usize;
        let kept = entries
            .iter()
            .take_while(|entry| {
                total = total.saturating_add(crate::limits::encoded_len(entry));
                total <= bytes
            })
            .count()
            .max(1);
        entries.truncate(kept);
        Ok(entries)
    }

    /// Reads the entries from `start` up to `end` (excluded), in index order: the durable ones
    /// and those still being written. From memory alone when the recent entries hold them all.
    ///
    /// The entries kept in memory are looked at first: one that becomes durable and is dropped
    /// from memory meanwhile is then found in the segment files, so none falls between the two
    /// reads.
    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<LogEntry>, String> {
        let kept = {
            let recent = self.recent();
            if let Some(entries) = recent.covering(start, end, usize::MAX) {
                return Ok(entries);
            }
            recent.range(start, end)
        };
        let mut found = BTreeMap::new();
        for entry in self
            .shared
            .read_stored_range(start, end)
            .map_err(|error| error.to_string())?
        {
            found.insert(entry.log_id.index, entry);
        }
        // An entry being written replaces a durable one at its index (a follower's log that
        // was truncated and written again).
        for entry in kept {
            found.insert(entry.log_id.index, entry);
        }
        let mut next = start;
        let mut consecutive = Vec::with_capacity(found.len());
        for (index, entry) in found {
            if index != next && !consecutive.is_empty() {
                break;
            }
            next = index.saturating_add(1);
            consecutive.push(entry);
        }
        Ok(consecutive)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        // A panic while holding the lock leaves the entries whole (every change is one call).
        locked(&self.shared.recent)
    }
}

/// The log as LMDB holds it, read by offline tools (recovery) while no Raft node runs.
pub(crate) struct StoredLog {
    /// The last vote saved.
    pub(crate) vote: Option<Vote>,
    /// The last committed log id saved (a hint; it may lag behind).
    pub(crate) committed: Option<LogId>,
    /// The last purged log id.
    pub(crate) last_purged: Option<LogId>,
    /// The stored entries from the requested index on, in index order.
    pub(crate) entries: Vec<LogEntry>,
}

/// Synchronous access straight to LMDB, for offline tools only: nothing else may write the log
/// meanwhile, since these bypass the writer thread.
impl LogStore {
    /// Reads the vote, committed and purged log ids, and the entries from `from_index` on, in
    /// one read transaction.
    pub(crate) fn read_stored(&self, from_index: u64) -> Result<StoredLog, Error> {
        let txn = self.shared.env.read_txn()?;
        let meta =
            |key: &str| -> Result<Option<&[u8]>, Error> { Ok(self.shared.meta.get(&txn, key)?) };
        let vote = meta(KEY_VOTE)?.map(decode::<Vote>).transpose()?;
        let committed = meta(KEY_COMMITTED)?
            .map(decode::<Option<LogId>>)
            .transpose()?
            .flatten();
        let last_purged = meta(KEY_LAST_PURGED)?
            .map(decode::<Option<LogId>>)
            .transpose()?
            .flatten();
        drop(txn);
        let entries = self.shared.read_stored_range(from_index, None)?;
        Ok(StoredLog {
            vote,
            committed,
            last_purged,
            entries,
        })
    }

    /// Replaces the whole log with an empty one that starts after `last_log_id` (covered by a
    /// snapshot), with `vote` saved and `last_log_id` committed, in one durable transaction.
    pub(crate) fn reset_to(&self, last_log_id: LogId, vote: &Vote) -> Result<(), Error> {
        let last = bincode::serialize(&Some(last_log_id))
            .map_err(|error| Error::Decode(error.to_string()))?;
        let vote = bincode::serialize(vote).map_err(|error| Error::Decode(error.to_string()))?;
        locked(&self.shared.segments)
            .clear()
            .map_err(segments_error(&self.shared.segments_dir))?;
        let mut txn = self.shared.env.write_txn()?;
        self.shared.entries.clear(&mut txn)?;
        self.shared.meta.put(&mut txn, KEY_LAST_PURGED, &last)?;
        self.shared.meta.put(&mut txn, KEY_COMMITTED, &last)?;
        self.shared.meta.put(&mut txn, KEY_VOTE, &vote)?;
        txn.commit()?;
        Ok(())
    }
}

/// The last purged log id, as recorded in `meta`.
fn read_last_purged(
    env: &Env<WithoutTls>,
    meta: Database<'static, Str, Bytes>,
) -> Result<Option<LogId>, Error> {
    let txn = env.read_txn()?;
    Ok(meta
        .get(&txn, KEY_LAST_PURGED)?
        .map(decode::<Option<LogId>>)
        .transpose()?
        .flatten())
}

/// The error of an I/O failure on the segment files under `dir`.
fn segments_error(dir: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: dir.display().to_string(),
        source,
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    bincode::deserialize(bytes).map_err(|error| Error::Decode(error.to_string()))
}

fn range_start_end<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(index) => *index,
        Bound::Excluded(index) => index.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(index) => Some(index.saturating_add(1)),
        Bound::Excluded(index) => Some(*index),
        Bound::Unbounded => None,
    };
    (start, end)
}

fn read_error(message: String) -> io::Error {
    io::Error::other(format!("reading the Raft log: {message}"))
}

fn write_error(message: String) -> io::Error {
    io::Error::other(format!("writing the Raft log: {message}"))
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// The entries in `range`, read and decoded a chunk of at most [`APPEND_BYTES_MAX`] bytes
    /// at a time as the stream is consumed: openraft applies committed entries from this
    /// stream, and after a restart or a long absence that is the whole log since the last
    /// snapshot, which read at once held the async runtime for as long as its decoding took.
    /// Like [`RaftLogReader::try_get_log_entries`] it stops where the log stops: before a
    /// missing entry, or at its end.
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl futures::Stream<Item = Result<LogEntry, io::Error>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        use futures::StreamExt;
        let (start, end) = range_start_end(&range);
        let chunks =
            futures::stream::unfold(Some((self.clone(), start)), move |state| async move {
                let (reader, next) = state?;
                if end.is_some_and(|end| next >= end) {
                    return None;
                }
                let chunk = match reader.read_range_within(next, end, APPEND_BYTES_MAX) {
                    Ok(chunk) => chunk,
                    Err(error) => return Some((Err(read_error(error)), None)),
                };
                // Entries missing where a later chunk begins: the log ends there (the first
                // chunk may begin after `start`, whose entries were purged).
                let first = chunk.first().map(|entry| entry.log_id.index)?;
                if next != start && first != next {
                    return None;
                }
                let after = chunk.last().map_or(next, |entry| entry.log_id.index + 1);
                Some((Ok(chunk), Some((reader, after))))
            });
        chunks.flat_map(|chunk| {
            let (entries, failure) = match chunk {
                Ok(entries) => (entries, None),
                Err(error) => (Vec::new(), Some(error)),
            };
            futures::stream::iter(entries.into_iter().map(Ok).chain(failure.map(Err)))
        })
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<LogEntry>> {
        let (start, end) = range_start_end(&range);
        self.read_range(start, end).map_err(read_error)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote>> {
        self.read_meta(KEY_VOTE).map_err(read_error)
    }

    /// What replication sends at once: the entries from `start` while they add up to at most
    /// [`APPEND_BYTES_MAX`] (one larger entry still goes alone). openraft gives an append one
    /// heartbeat interval to complete, so it must cross the network in a fraction of that.
    ///
    /// Nothing when the entry at `start` is gone (purged meanwhile): openraft builds the append
    /// from the entry before `start`, so entries beginning later would leave a hole in the
    /// follower's log. An empty answer is taken as a heartbeat and asked again (openraft logs
    /// it), and the follower gets a snapshot once the purge is known.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<LogEntry>> {
        let entries = self
            .read_range_within(start, Some(end), APPEND_BYTES_MAX)
            .map_err(read_error)?;
        if let Some(first) = entries.first().filter(|entry| entry.log_id.index != start) {
            tracing::warn!(
                start,
                first = first.log_id.index,
                "replication asked for log entries from {start}, which is purged; none sent"
            );
            return Ok(Vec::new());
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged = self
            .read_meta::<Option<LogId>>(KEY_LAST_PURGED)
            .map_err(read_error)?
            .flatten();
        let last_index = locked(&self.shared.segments).last_index();
        let stored_last = match last_index {
            None => None,
            Some(index) => self
                .shared
                .read_stored_range(index, Some(index.saturating_add(1)))
                .map_err(|error| read_error(error.to_string()))?
                .pop()
                .map(|entry| entry.log_id),
        };
        let recent_last = self.recent().last_log_id();
        let last_log_id = recent_last.or(stored_last).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> StorageResult<()> {
        let value = bincode::serialize(vote).map_err(|error| write_error(error.to_string()))?;
        self.submit(|done| WriteOp::PutMeta {
            key: KEY_VOTE,
            value,
            done,
        })
        .await
        .map_err(write_error)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StorageResult<()> {
        // Not awaited: the committed index is a hint for faster restarts. It is written with
        // the next transaction that makes the log reach it, or on its own after a quiet
        // moment, or when the store closes.
        self.writable().map_err(write_error)?;
        let Some(committed) = committed else {
            return Ok(());
        };
        // A writer holding an index back already waits at most the quiet delay; only one
        // waiting for work without a deadline needs waking (one wake-up per write saved).
        let held = locked(&self.shared.committed).replace(committed);
        if held.is_some() {
            return Ok(());
        }
        self.shared
            .writer
            .send(WriteOp::Nudge)
            .map_err(|_| write_error(Error::WriterStopped.to_string()))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId>> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED)
            .map_err(read_error)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Refused at once when out of service: the entries are neither written nor readable,
        // and openraft gets the error.
        self.writable().map_err(write_error)?;
        let mut encoded = Vec::new();
        let mut readable = Vec::new();
        for entry in entries {
            let bytes =
                bincode::serialize(&entry).map_err(|error| write_error(error.to_string()))?;
            let log_id = entry.log_id;
            readable.push((entry, bytes.len()));
            encoded.push((log_id, bytes));
        }
        if encoded.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        {
            let mut recent = self.recent();
            for (entry, bytes) in readable {
                recent.insert(entry, bytes);
            }
        }
        self.shared
            .writer
            .send(WriteOp::Append {
                entries: encoded,
                callback,
            })
            .map_err(|_| write_error(Error::WriterStopped.to_string()))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> StorageResult<()> {
        let from_index = last_log_id.map_or(0, |log_id| log_id.index.saturating_add(1));
        // Gone for readers at once; LMDB follows in queue order, after the appends before.
        self.recent().truncate_from(from_index);
        self.submit(|done| WriteOp::Truncate { from_index, done })
            .await
            .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> StorageResult<()> {
        self.recent().purge_to(log_id.index);
        let last_purged =
            bincode::serialize(&Some(log_id)).map_err(|error| write_error(error.to_string()))?;
        self.submit(|done| WriteOp::Purge {
            to_index: log_id.index,
            last_purged,
            done,
        })
        .await
        .map_err(write_error)
    }
}

/// How long a write nobody waits for (the committed index) may stay queued while nothing else
/// is written: it rides along with the next append instead of costing a commit of its own.
const DEFERRED_WRITE_DELAY: Duration = Duration::from_millis(100);

/// The writer thread: takes everything queued, commits it in one transaction, reports. Once a
/// transaction fails it writes nothing more and fails whatever is queued after it.
///
/// The committed index ([`Shared::committed`]), which nobody waits for, is held back until
/// something else is written or [`DEFERRED_WRITE_DELAY`] passes, so that it costs no `fsync`
/// of its own on the write path. A [`WriteOp::Nudge`] only wakes the writer.
fn writer_loop(shared: Weak<Shared>, queue: mpsc::Receiver<WriteOp>) {
    loop {
        let holding = match shared.upgrade() {
            Some(shared) => locked(&shared.committed).is_some(),
            None => return,
        };
        let first = if holding {
            // Idle, or the store is closing: write what was held back (on closing, the
            // store's drop does).
            queue.recv_timeout(DEFERRED_WRITE_DELAY).ok()
        } else {
            match queue.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            }
        };
        let mut batch = Vec::new();
        let idle = first.is_none();
        if let Some(first) = first {
            batch.push(first);
        }
        while batch.len() < BATCH_OPERATIONS_MAX {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !idle {
            shared.wakes.fetch_add(1, Ordering::Relaxed);
        }
        batch.retain(|op| !matches!(op, WriteOp::Nudge));
        // Woken only to hold an index back, or idle with nothing to write: the held index
        // waits until the log covers it (a follower may learn of a commit first).
        if batch.is_empty() && (!idle || !holds_durable_committed(&shared)) {
            continue;
        }
        let result = match shared.health.check() {
            Ok(()) => commit_batch(&shared, &batch, idle),
            Err(out_of_service) => Err(out_of_service.to_string()),
        };
        match result {
            Ok(()) => locked(&shared.recent).made_durable(durable_log_ids(&batch)),
            // Nothing more will be written: the log ends at the last durable entry, for
            // readers too.
            Err(_) => locked(&shared.recent).clear(),
        }
        // Let go of the store before reporting: once its owners have their answers and drop
        // their handles, the LMDB environment closes at once, and can be opened again.
        drop(shared);
        report(batch, result);
    }
}

/// Whether a committed index is held back that the durable log covers.
fn holds_durable_committed(shared: &Shared) -> bool {
    let committed = *locked(&shared.committed);
    let durable_last = *locked(&shared.durable_last);
    committed.is_some_and(|committed| Some(committed.index) <= durable_last)
}

/// The log ids of the entries `batch` appends.
fn durable_log_ids(batch: &[WriteOp]) -> impl Iterator<Item = LogId> + '_ {
    batch
        .iter()
        .filter_map(|op| match op {
            WriteOp::Append { entries, .. } => Some(entries),
            _ => None,
        })
        .flatten()
        .map(|(log_id, _)| *log_id)
}

/// How often at most the committed index is written along with appends while the log is
/// busy (an LMDB commit, two trips to the disk): a restart re-applies at most that much more.
const COMMITTED_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Writes `batch` durably; a failure takes the store out of service. `idle`: nothing else is
/// queued (or the store closes), so the committed index held back is written now.
fn commit_batch(shared: &Shared, batch: &[WriteOp], idle: bool) -> Result<(), String> {
    let started = Instant::now();
    match write_batch(shared, batch, idle) {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(
                operations = batch.len(),
                micros = started.elapsed().as_micros() as u64,
                "log batch committed"
            );
            Ok(())
        }
        Err(error) => {
            let map_size_bytes = shared.env.info().map_size;
            let failure = shared.health.fail("the Raft log", &error, map_size_bytes);
            Err(failure.to_string())
        }
    }
}

/// The segment records of encoded entries.
fn records_of(entries: &[(LogId, Vec<u8>)]) -> Vec<Record<'_>> {
    entries
        .iter()
        .map(|(log_id, bytes)| Record {
            index: log_id.index,
            term: log_id.leader_id.term,
            bytes,
        })
        .collect()
}

/// Writes the batch's entries to the segments (one `fdatasync`), then what changed of the
/// vote, purged and committed ids in one LMDB transaction, then deletes purged segments.
fn write_batch(shared: &Shared, batch: &[WriteOp], idle: bool) -> Result<(), heed::Error> {
    let mut last = *locked(&shared.durable_last);
    let mut dirty = Dirty::default();
    let mut meta: Vec<(&'static str, &[u8])> = Vec::new();
    let mut removable = Vec::new();
    {
        let mut segments = locked(&shared.segments);
        for op in batch {
            match op {
                WriteOp::Append { entries, .. } => {
                    let records = records_of(entries);
                    dirty.merge(segments.append(&records).map_err(heed::Error::Io)?);
                    if let Some(record) = records.last() {
                        last = Some(record.index);
                    }
                }
                WriteOp::PutMeta { key, value, .. } => meta.push((key, value)),
                WriteOp::Nudge => {}
                WriteOp::Truncate { from_index, .. } => {
                    // Durable before anything written after it (see the segments' recovery).
                    let truncated = segments.truncate(*from_index).map_err(heed::Error::Io)?;
                    truncated.sync(segments.dir()).map_err(heed::Error::Io)?;
                    last = last.min(from_index.checked_sub(1));
                }
                WriteOp::Purge {
                    to_index,
                    last_purged,
                    ..
                } => {
                    removable.extend(segments.purge(*to_index));
                    meta.push((KEY_LAST_PURGED, last_purged));
                    last = last.max(Some(*to_index));
                }
            }
        }
    }
    dirty.sync(&shared.segments_dir).map_err(heed::Error::Io)?;
    // The committed index held back, once the log holds what it covers, when an LMDB
    // transaction is made anyway, the log is idle, or it was last written a while ago.
    let committed = *locked(&shared.committed);
    let due = !meta.is_empty()
        || idle
        || locked(&shared.committed_written).elapsed() >= COMMITTED_WRITE_INTERVAL;
    let written = committed
        .filter(|committed| Some(committed.index) <= last)
        .filter(|_| due);
    if !meta.is_empty() || written.is_some() {
        let mut txn = shared.env.write_txn()?;
        for (key, value) in &meta {
            shared.meta.put(&mut txn, key, value)?;
        }
        if let Some(committed) = written {
            let value = bincode::serialize(&Some(committed))
                .map_err(|error| heed::Error::Io(std::io::Error::other(error)))?;
            shared.meta.put(&mut txn, KEY_COMMITTED, &value)?;
        }
        txn.commit()?;
    }
    // Purged segments go once the purge is recorded: a restart before that still finds them.
    segments::remove_files(&shared.segments_dir, &removable).map_err(heed::Error::Io)?;
    *locked(&shared.durable_last) = last;
    if written.is_some() {
        *locked(&shared.committed_written) = Instant::now();
        let mut slot = locked(&shared.committed);
        if *slot == written {
            *slot = None;
        }
    }
    Ok(())
}

/// Why entries an older version kept in LMDB could not be moved to the segments.
enum MoveError {
    Lmdb(heed::Error),
    Io(io::Error),
    Decode(Error),
}

/// Moves the entries an older version kept in LMDB into the segments: written and made
/// durable there first, then removed from LMDB. While LMDB holds any, it is the log (a move
/// cut off by a crash is done again from the start).
fn move_lmdb_entries(
    env: &Env<WithoutTls>,
    entries: Database<'static, U64<BigEndian>, Bytes>,
    segments: &mut Segments,
    purged: Option<LogId>,
) -> Result<(), MoveError> {
    let mut kept = Vec::new();
    {
        let txn = env.read_txn().map_err(MoveError::Lmdb)?;
        if entries.is_empty(&txn).map_err(MoveError::Lmdb)? {
            return Ok(());
        }
        for item in entries.iter(&txn).map_err(MoveError::Lmdb)? {
            let (index, bytes) = item.map_err(MoveError::Lmdb)?;
            if purged.is_some_and(|purged| index <= purged.index) {
                continue;
            }
            let entry = decode::<LogEntry>(bytes).map_err(MoveError::Decode)?;
            kept.push((entry.log_id, bytes.to_vec()));
        }
    }
    tracing::info!(
        entries = kept.len(),
        "moving the Raft log's entries from LMDB to segment files"
    );
    segments.clear().map_err(MoveError::Io)?;
    let records = records_of(&kept);
    segments
        .append(&records)
        .and_then(|dirty| dirty.sync(segments.dir()))
        .map_err(MoveError::Io)?;
    let mut txn = env.write_txn().map_err(MoveError::Lmdb)?;
    entries.clear(&mut txn).map_err(MoveError::Lmdb)?;
    txn.commit().map_err(MoveError::Lmdb)
}

fn report(batch: Vec<WriteOp>, result: Result<(), String>) {
    for op in batch {
        match op {
            WriteOp::Append { callback, .. } => {
                let io_result = result.clone().map_err(write_error);
                callback.io_completed(io_result);
            }
            WriteOp::PutMeta { done, .. }
            | WriteOp::Truncate { done, .. }
            | WriteOp::Purge { done, .. } => {
                let _ = done.send(result.clone());
            }
            WriteOp::Nudge => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Goal: a log an older version kept in LMDB is moved to segment files when opened, and
    /// reads back the same; LMDB keeps no entry after that.
    /// Method: write entries straight into the LMDB table of a store (as the older version
    /// did), reopen it, read them through the store, look at the table.
    #[tokio::test]
    async fn entries_kept_in_lmdb_move_to_segments() -> TestResult {
        let dir = tempfile::tempdir()?;
        let written: Vec<LogEntry> = (1..=20)
            .map(|index| LogEntry {
                log_id: crate::log_id(2, 1, index),
                payload: crate::EntryPayload::Blank,
            })
            .collect();
        {
            let store = LogStore::open(dir.path())?;
            let mut txn = store.shared.env.write_txn()?;
            for entry in &written {
                let bytes = bincode::serialize(entry)?;
                store
                    .shared
                    .entries
                    .put(&mut txn, &entry.log_id.index, &bytes)?;
            }
            txn.commit()?;
        }
        let mut store = LogStore::open(dir.path())?;
        let read = store.try_get_log_entries(1..).await?;
        assert_eq!(read, written);
        let state = store.get_log_state().await?;
        assert_eq!(state.last_log_id, Some(crate::log_id(2, 1, 20)));
        let txn = store.shared.env.read_txn()?;
        assert!(store.shared.entries.is_empty(&txn)?);
        drop(txn);
        drop(store);
        let mut store = LogStore::open(dir.path())?;
        assert_eq!(store.try_get_log_entries(1..).await?, written);
        Ok(())
    }
}
