//! The Raft log's entries in append-only segment files: one `fdatasync` makes a batch durable.
//!
//! LMDB commits in two steps (its data pages, then its meta page through a synchronous write),
//! which costs two trips to the disk for every append. Entries are written instead to
//! preallocated segment files, one record after another, and a batch is made durable with one
//! `fdatasync` of the segment it went to. LMDB keeps what changes rarely (the vote, the
//! committed and purged log ids; see [`crate::log_store`]).
//!
//! # Format
//! `DIR/<first index, 20 digits>.seg`: a 16-byte header (magic and version), then records:
//! `length: u32 LE | crc32: u32 LE | index: u64 LE | term: u64 LE | entry (length bytes)`.
//! The CRC covers the index, the term and the entry. A segment is preallocated
//! ([`SEGMENT_BYTES`]), so the space after its last record reads as zeros.
//!
//! # Recovery
//! A crash can leave a torn record, or later records on disk without the earlier ones (the
//! disk writes pages in any order until `fdatasync` returns). On open the records are read
//! in order while each is whole (CRC), its index follows the one before and its term is no
//! lower; the log ends at the first that is not. Everything after that point is zeroed and
//! later segments are deleted before anything is appended, so an old record can never be read
//! again as the continuation of a newer one. A truncation does the same (zero the rest, delete
//! later segments) and is made durable before the entries that follow it are written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Size a new segment is preallocated to (a larger record gets a segment of its own size).
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;

const MAGIC: &[u8; 16] = b"starling-log-v1\n";
const HEADER_BYTES: u64 = MAGIC.len() as u64;
const RECORD_HEADER_BYTES: u64 = 24;

/// Where one entry's record lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    /// The segment (its first index).
    segment: u64,
    /// Offset of the record's header in the segment.
    offset: u64,
    /// Length of the entry's bytes.
    len: u32,
    /// The entry's term.
    term: u64,
}

/// One segment file.
struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
    /// The file's preallocated size.
    capacity: u64,
    /// Up to where this process has written zeros ahead of the records (at least `end`).
    zeroed: u64,
}

/// Zeros written ahead of the records at a time. A preallocated block is "unwritten" until a
/// write reaches it, and the first write into each one changes the file's extent map, which
/// `fdatasync` then writes as well: a third disk write (after the data and before the flush)
/// for about every other batch of a busy log (2.52 writes per `fdatasync` for 2 KB batches
/// against 2.04 once the blocks hold zeros, measured with `/proc/diskstats`). Zeros written
/// ahead turn that into one extent change per this many bytes.
const ZERO_AHEAD_BYTES: u64 = 256 * 1024;

/// An entry to append: its index, term and encoded bytes.
pub(crate) struct Record<'a> {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) bytes: &'a [u8],
}

/// The segment files of one log, and where each entry lies.
pub(crate) struct Segments {
    dir: PathBuf,
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// Every entry held (purged ones excluded), by index.
    entries: BTreeMap<u64, Location>,
    /// Most bytes the segments may take together.
    bytes_max: u64,
    /// Index and term of the last record on disk (purged or not): the next record written
    /// after it must follow it, or go to a new segment.
    tail: Option<(u64, u64)>,
}

/// A segment file to read from, with what to read.
pub(crate) struct ReadAt {
    file: Arc<File>,
    offset: u64,
    len: u32,
    index: u64,
    term: u64,
}

impl ReadAt {
    /// Reads the entry's bytes and checks them against the record's CRC.
    pub(crate) fn read(&self) -> io::Result<Vec<u8>> {
        let mut record = vec![0u8; RECORD_HEADER_BYTES as usize + self.len as usize];
        self.file.read_exact_at(&mut record, self.offset)?;
        match parse_record(&record) {
            Some((index, term, bytes)) if index == self.index && term == self.term => {
                Ok(bytes.to_vec())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the record of entry {} in the Raft log is damaged (CRC or header)",
                    self.index
                ),
            )),
        }
    }
}

/// Files to make durable, and whether the directory changed (a segment created or deleted).
#[derive(Default)]
pub(crate) struct Dirty {
    files: Vec<Arc<File>>,
    dir: bool,
}

impl Dirty {
    fn file(&mut self, file: &Arc<File>) {
        if !self.files.iter().any(|known| Arc::ptr_eq(known, file)) {
            self.files.push(Arc::clone(file));
        }
    }

    /// Makes every change recorded durable.
    pub(crate) fn sync(self, dir: &Path) -> io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if self.dir {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Adds what `other` needs.
    pub(crate) fn merge(&mut self, other: Dirty) {
        for file in &other.files {
            self.file(file);
        }
        self.dir |= other.dir;
    }
}

impl Segments {
    /// Opens the segments under `dir` (created if missing), reading every record; entries at
    /// or below `purged` are left out. The log ends at the first record that is not whole or
    /// does not follow; what lies after it is wiped, durably, before this returns.
    pub(crate) fn open(dir: &Path, purged: Option<u64>, bytes_max: u64) -> io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|name| name.strip_suffix(".seg"))
                .and_then(|stem| stem.parse::<u64>().ok())
            else {
                continue;
            };
            names.push((first, item.path()));
        }
        names.sort();
        let mut segments = Segments {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            entries: BTreeMap::new(),
            bytes_max,
            tail: None,
        };
        let mut last: Option<(u64, u64)> = None;
        let mut broken = false;
        let mut dirty = Dirty::default();
        for (first, path) in names {
            if broken {
                std::fs::remove_file(&path)?;
                dirty.dir = true;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let capacity = file.metadata()?.len();
            let mut magic = [0u8; HEADER_BYTES as usize];
            let header_ok = capacity >= HEADER_BYTES
                && file.read_exact_at(&mut magic, 0).is_ok()
                && &magic == MAGIC;
            // Entries between two segments may be missing only when they were purged (a
            // snapshot installed past the log's end).
            let gap_purged = purged.is_some_and(|purged| first <= purged.saturating_add(1));
            let follows =
                gap_purged || last.is_none_or(|(index, _)| index.checked_add(1) == Some(first));
            if gap_purged {
                last = None;
            }
            if !header_ok || !follows {
                // A segment created while a crash hit, or one that does not follow: the log
                // ends before it.
                std::fs::remove_file(&path)?;
                dirty.dir = true;
                broken = true;
                continue;
            }
            let file = Arc::new(file);
            let (end, whole) = scan(&file, first, capacity, &mut last, purged, |index, at| {
                segments.entries.insert(
                    index,
                    Location {
                        segment: first,
                        ..at
                    },
                );
            })?;
            if !whole {
                zero_from(&file, end, capacity)?;
                dirty.file(&file);
                broken = true;
            }
            segments.segments.insert(
                first,
                Segment {
                    path,
                    file,
                    end,
                    capacity,
                    zeroed: end,
                },
            );
        }
        dirty.sync(dir)?;
        segments.tail = last;
        Ok(segments)
    }

    /// The index of the last entry held.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    /// Where a read from `start` that takes entries while their bytes add up to at most
    /// `bytes` ends (excluded): the first held entry past the budget (never the first one
    /// read, which goes alone however large), or `end` if the held entries before it fit.
    /// Found from the index alone, so a bounded read decodes only what it keeps.
    pub(crate) fn end_within(&self, start: u64, end: Option<u64>, bytes: usize) -> Option<u64> {
        let range = match end {
            Some(end) if end <= start => return end.into(),
            Some(end) => self.entries.range(start..end),
            None => self.entries.range(start..),
        };
        let mut total = 0usize;
        for (taken, (index, at)) in range.enumerate() {
            total = total.saturating_add(at.len as usize);
            if total > bytes && taken > 0 {
                return Some(*index);
            }
        }
        end
    }

    /// Where to read the entries from `start` to `end` (excluded) that are held.
    pub(crate) fn locate(&self, start: u64, end: Option<u64>) -> Vec<ReadAt> {
        let range = match end {
            Some(end) if end <= start => return Vec::new(),
            Some(end) => self.entries.range(start..end),
            None => self.entries.range(start..),
        };
        range
            .filter_map(|(index, at)| {
                let segment = self.segments.get(&at.segment)?;
                Some(ReadAt {
                    file: Arc::clone(&segment.file),
                    offset: at.offset,
                    len: at.len,
                    index: *index,
                    term: at.term,
                })
            })
            .collect()
    }

    /// Whether `records` fit in the segments' byte limit (checked before anything is written,
    /// so a refused batch leaves the log as it was).
    pub(crate) fn fits(&self, records: &[Record<'_>]) -> Result<(), io::Error> {
        let mut used: u64 = self.segments.values().map(|segment| segment.capacity).sum();
        let mut room = self
            .segments
            .values()
            .next_back()
            .map_or(0, |segment| segment.capacity - segment.end);
        for record in records {
            let size = record_size(record.bytes.len());
            if size > room {
                let capacity = self.new_capacity(size);
                used = used.saturating_add(capacity);
                room = capacity - HEADER_BYTES;
            }
            room -= size.min(room);
        }
        if used > self.bytes_max {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the Raft log's segments would take {used} bytes, over their limit of {} \
                     bytes (StoreOptions::log_map_size_bytes)",
                    self.bytes_max
                ),
            ));
        }
        Ok(())
    }

    fn new_capacity(&self, record_bytes: u64) -> u64 {
        let wanted = record_bytes.saturating_add(HEADER_BYTES);
        SEGMENT_BYTES.min(self.bytes_max).max(wanted)
    }

    /// Writes `records` (consecutive indexes following the last one held) after the last
    /// record; nothing is durable until the answer is synced.
    pub(crate) fn append(&mut self, records: &[Record<'_>]) -> io::Result<Dirty> {
        let mut dirty = Dirty::default();
        let Some(first) = records.first() else {
            return Ok(dirty);
        };
        if let Some(last) = self.last_index() {
            if first.index <= last {
                // Appending over held entries (openraft truncates first): the same as a
                // truncation, made durable before the new records are written.
                let truncated = self.truncate(first.index)?;
                truncated.sync(&self.dir)?;
            } else if first.index != last + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "entry {} does not follow the last entry of the Raft log ({last})",
                        first.index
                    ),
                ));
            }
        }
        self.fits(records)?;
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_at: Option<(u64, u64)> = None;
        // After a purge past the log's end the next record does not follow the last one on
        // disk: it starts a segment of its own (the recovery accepts that purged gap).
        let mut follows_tail = self.tail.is_none_or(|(index, term)| {
            index.checked_add(1) == Some(first.index) && first.term >= term
        });
        for record in records {
            let size = record_size(record.bytes.len());
            let room = self
                .segments
                .values()
                .next_back()
                .map_or(0, |segment| segment.capacity - segment.end);
            let empty_elsewhere = self.segments.values().next_back().is_some_and(|segment| {
                segment.end == HEADER_BYTES
                    && self.segments.keys().next_back() != Some(&record.index)
            });
            if size > room || empty_elsewhere || !follows_tail {
                follows_tail = true;
                if let Some((segment, offset)) = pending_at.take() {
                    self.write(segment, offset, &pending, &mut dirty)?;
                    pending.clear();
                }
                self.start_segment(record.index, size, &mut dirty)?;
            }
            let (segment_first, segment) = self
                .segments
                .iter_mut()
                .next_back()
                .ok_or_else(|| io::Error::other("no segment to write to"))?;
            let offset = segment.end;
            if pending_at.is_none() {
                pending_at = Some((*segment_first, offset));
            }
            encode_record(&mut pending, record);
            segment.end += size;
            self.tail = Some((record.index, record.term));
            self.entries.insert(
                record.index,
                Location {
                    segment: *segment_first,
                    offset,
                    len: record.bytes.len() as u32,
                    term: record.term,
                },
            );
        }
        if let Some((segment, offset)) = pending_at {
            self.write(segment, offset, &pending, &mut dirty)?;
        }
        Ok(dirty)
    }

    fn write(
        &mut self,
        segment: u64,
        offset: u64,
        bytes: &[u8],
        dirty: &mut Dirty,
    ) -> io::Result<()> {
        let segment = self
            .segments
            .get_mut(&segment)
            .ok_or_else(|| io::Error::other("segment vanished while written"))?;
        let written_to = offset + bytes.len() as u64;
        if written_to > segment.zeroed && written_to < segment.capacity {
            // Past the records only: what lies there reads as zeros already.
            let from = segment.zeroed.max(offset);
            let to = (written_to + ZERO_AHEAD_BYTES).min(segment.capacity);
            let zeros = vec![0u8; (to - from) as usize];
            segment.file.write_all_at(&zeros, from)?;
            segment.zeroed = to;
        }
        segment.file.write_all_at(bytes, offset)?;
        dirty.file(&segment.file);
        Ok(())
    }

    /// Creates the segment whose first record is entry `first`, preallocated; an empty last
    /// segment for another index is removed first.
    fn start_segment(
        &mut self,
        first: u64,
        record_bytes: u64,
        dirty: &mut Dirty,
    ) -> io::Result<()> {
        if let Some((&last_first, last)) = self.segments.iter().next_back() {
            if last.end == HEADER_BYTES && last_first != first {
                let removed = self.segments.remove(&last_first);
                if let Some(removed) = removed {
                    std::fs::remove_file(&removed.path)?;
                }
            }
        }
        let capacity = self.new_capacity(record_bytes);
        let path = self.dir.join(format!("{first:020}.seg"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        preallocate(&file, capacity)?;
        file.write_all_at(MAGIC, 0)?;
        // The header and the allocation are durable before any record relies on them.
        file.sync_all()?;
        dirty.dir = true;
        self.segments.insert(
            first,
            Segment {
                path,
                file: Arc::new(file),
                end: HEADER_BYTES,
                capacity,
                zeroed: HEADER_BYTES,
            },
        );
        Ok(())
    }

    /// Removes the entries from `from` on: the rest of their segment is zeroed and later
    /// segments deleted (durable once the answer is synced).
    pub(crate) fn truncate(&mut self, from: u64) -> io::Result<Dirty> {
        let mut dirty = Dirty::default();
        let Some(at) = self.entries.get(&from).copied() else {
            // Nothing held from there on (or only purged entries before it).
            let later: Vec<u64> = self
                .segments
                .range(from.saturating_add(1)..)
                .map(|(first, _)| *first)
                .collect();
            self.remove_segments(&later, &mut dirty)?;
            return Ok(dirty);
        };
        self.entries.split_off(&from);
        // The record before `from` stays on disk; its term is known unless it was purged (a
        // term no higher than any that follows it, as Raft's terms never go down).
        let before = from.checked_sub(1);
        self.tail = before.map(|index| (index, self.entries.get(&index).map_or(0, |at| at.term)));
        let later: Vec<u64> = self
            .segments
            .range(at.segment.saturating_add(1)..)
            .map(|(first, _)| *first)
            .collect();
        self.remove_segments(&later, &mut dirty)?;
        if let Some(segment) = self.segments.get_mut(&at.segment) {
            zero_from(&segment.file, at.offset, segment.capacity)?;
            segment.end = at.offset;
            // Zeroing gives the blocks back as unwritten.
            segment.zeroed = at.offset;
            dirty.file(&segment.file);
        }
        Ok(dirty)
    }

    fn remove_segments(&mut self, firsts: &[u64], dirty: &mut Dirty) -> io::Result<()> {
        for first in firsts {
            if let Some(segment) = self.segments.remove(first) {
                std::fs::remove_file(&segment.path)?;
                dirty.dir = true;
            }
        }
        Ok(())
    }

    /// Forgets the entries up to `upto` and answers the segment files that hold nothing
    /// else; the caller deletes them ([`remove_files`]) once the purge is recorded.
    pub(crate) fn purge(&mut self, upto: u64) -> Vec<PathBuf> {
        let kept = self.entries.split_off(&upto.saturating_add(1));
        self.entries = kept;
        let last_segment = self.segments.keys().next_back().copied();
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut removable = Vec::new();
        for pair in firsts.windows(2) {
            // A segment's entries end where the next one's begin.
            if pair[1] <= upto.saturating_add(1) && Some(pair[0]) != last_segment {
                removable.push(pair[0]);
            }
        }
        removable
            .into_iter()
            .filter_map(|first| self.segments.remove(&first).map(|segment| segment.path))
            .collect()
    }

    /// Deletes every segment (the log is replaced by a snapshot).
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut dirty = Dirty::default();
        self.remove_segments(&firsts, &mut dirty)?;
        self.entries.clear();
        self.tail = None;
        dirty.sync(&self.dir)
    }

    /// The directory the segments live in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Deletes purged segment files and makes the deletion durable.
pub(crate) fn remove_files(dir: &Path, paths: &[PathBuf]) -> io::Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    sync_dir(dir)
}

fn record_size(entry_bytes: usize) -> u64 {
    RECORD_HEADER_BYTES + entry_bytes as u64
}

fn checksum(index: u64, term: u64, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(&term.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

fn encode_record(out: &mut Vec<u8>, record: &Record<'_>) {
    out.extend_from_slice(&(record.bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(record.index, record.term, record.bytes).to_le_bytes());
    out.extend_from_slice(&record.index.to_le_bytes());
    out.extend_from_slice(&record.term.to_le_bytes());
    out.extend_from_slice(record.bytes);
}

/// The index, term and entry of a whole record (header and entry), if its CRC matches.
fn parse_record(record: &[u8]) -> Option<(u64, u64, &[u8])> {
    let header = record.get(..RECORD_HEADER_BYTES as usize)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let index = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let term = u64::from_le_bytes(header[16..24].try_into().ok()?);
    let bytes = record.get(RECORD_HEADER_BYTES as usize..RECORD_HEADER_BYTES as usize + len)?;
    (checksum(index, term, bytes) == crc).then_some((index, term, bytes))
}

/// Reads the records of a segment from its header on while each is whole and follows
/// `last` (index + 1, term no lower), calling `found` for those above `purged`. Answers where
/// the valid records end and whether the segment ended cleanly (zeros or its end).
fn scan(
    file: &File,
    first: u64,
    capacity: u64,
    last: &mut Option<(u64, u64)>,
    purged: Option<u64>,
    mut found: impl FnMut(u64, Location),
) -> io::Result<(u64, bool)> {
    let mut offset = HEADER_BYTES;
    let mut header = [0u8; RECORD_HEADER_BYTES as usize];
    let mut record = Vec::new();
    loop {
        if offset + RECORD_HEADER_BYTES > capacity {
            return Ok((offset, true));
        }
        file.read_exact_at(&mut header, offset)?;
        if header.iter().all(|byte| *byte == 0) {
            // Zeros: the end of what was written. Anything non-zero after it is wiped.
            let clean = rest_is_zero(file, offset, capacity)?;
            return Ok((offset, clean));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
        if offset + RECORD_HEADER_BYTES + len > capacity {
            return Ok((offset, false));
        }
        record.resize((RECORD_HEADER_BYTES + len) as usize, 0);
        file.read_exact_at(&mut record, offset)?;
        let Some((index, term, _)) = parse_record(&record) else {
            return Ok((offset, false));
        };
        let follows = match *last {
            None => index == first,
            Some((last_index, last_term)) => {
                last_index.checked_add(1) == Some(index) && term >= last_term
            }
        };
        if !follows {
            return Ok((offset, false));
        }
        *last = Some((index, term));
        if purged.is_none_or(|purged| index > purged) {
            found(
                index,
                Location {
                    segment: first,
                    offset,
                    len: len as u32,
                    term,
                },
            );
        }
        offset += RECORD_HEADER_BYTES + len;
    }
}

/// Whether the segment holds only zeros from `offset` on (read in 1 MiB pieces).
fn rest_is_zero(file: &File, offset: u64, capacity: u64) -> io::Result<bool> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut at = offset;
    while at < capacity {
        let want = (capacity - at).min(buffer.len() as u64) as usize;
        file.read_exact_at(&mut buffer[..want], at)?;
        if buffer[..want].iter().any(|byte| *byte != 0) {
            return Ok(false);
        }
        at += want as u64;
    }
    Ok(true)
}

/// Reserves `capacity` bytes for `file`, so that writes within it need no allocation.
fn preallocate(file: &File, capacity: u64) -> io::Result<()> {
    use std::os::fd::AsFd;
    let length = i64::try_from(capacity).map_err(io::Error::other)?;
    match nix::fcntl::fallocate(file.as_fd(), nix::fcntl::FallocateFlags::empty(), 0, length) {
        Ok(()) => Ok(()),
        // A file system without fallocate: the file is sized, and blocks come as written.
        Err(nix::errno::Errno::EOPNOTSUPP) => file.set_len(capacity),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// Makes `file` read as zeros from `offset` to `capacity`.
fn zero_from(file: &File, offset: u64, capacity: u64) -> io::Result<()> {
    use std::os::fd::AsFd;
    if offset >= capacity {
        return Ok(());
    }
    let flags = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let start = i64::try_from(offset).map_err(io::Error::other)?;
    let length = i64::try_from(capacity - offset).map_err(io::Error::other)?;
    match nix::fcntl::fallocate(file.as_fd(), flags, start, length) {
        Ok(()) => {
            // A punched hole must be allocated again before it is written: keep the
            // preallocation so appends stay within allocated blocks.
            let _ = nix::fcntl::fallocate(
                file.as_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                start,
                length,
            );
            Ok(())
        }
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            let zeros = vec![0u8; 1 << 20];
            let mut at = offset;
            while at < capacity {
                let piece = (capacity - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..piece], at)?;
                at += piece as u64;
            }
            Ok(())
        }
        Err(errno) => Err(io::Error::from(errno)),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn records(range: std::ops::Range<u64>, term: u64, bytes: &[u8]) -> Vec<Record<'_>> {
        range.map(|index| Record { index, term, bytes }).collect()
    }

    fn read_all(segments: &Segments) -> io::Result<Vec<(u64, Vec<u8>)>> {
        segments
            .locate(0, None)
            .iter()
            .map(|at| Ok((at.index, at.read()?)))
            .collect()
    }

    fn indexes(segments: &Segments) -> Vec<u64> {
        segments.entries.keys().copied().collect()
    }

    fn segment_path(dir: &Path) -> io::Result<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|item| item.map(|item| item.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        paths.pop().ok_or_else(|| io::Error::other("no segment"))
    }

    /// One extent as the file system's FIEMAP answer gives it.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct FiemapExtent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }

    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [FiemapExtent; 32],
    }

    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;

    /// The flags of the extents of `file` that overlap `start..start + length`.
    fn extent_flags(file: &File, start: u64, length: u64) -> io::Result<Vec<u32>> {
        use std::os::fd::AsRawFd;
        let mut map = Fiemap {
            start,
            length,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: 32,
            reserved: 0,
            extents: [FiemapExtent::default(); 32],
        };
        // SAFETY: `map` is a FIEMAP request with room for `extent_count` extents, alive for
        // the call.
        let result = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(map.extents[..map.mapped_extents as usize]
            .iter()
            .map(|extent| extent.flags)
            .collect())
    }

    /// Goal: the blocks just past the last record hold zeros already written, so the next
    /// appends change no extent map (a disk write more in their `fdatasync`).
    /// Method: append one small record and sync; ask the file system (FIEMAP) for the extents
    /// of the 128 KiB after the record's block: none may be unwritten (preallocated only).
    #[test]
    fn blocks_ahead_of_the_records_hold_written_zeros() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut segments = Segments::open(dir.path(), None, 1 << 30)?;
        segments
            .append(&records(1..2, 1, &[7u8; 100]))?
            .sync(dir.path())?;
        let file = File::open(segment_path(dir.path())?)?;
        let flags = match extent_flags(&file, 4096, 128 * 1024) {
            Ok(flags) => flags,
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!("skipped: this file system does not map extents (FIEMAP)");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        assert!(!flags.is_empty(), "no extent mapped after the record");
        assert!(
            flags
                .iter()
                .all(|flags| flags & FIEMAP_EXTENT_UNWRITTEN == 0),
            "preallocated blocks left unwritten right after the record: {flags:x?}"
        );
        // What lies there reads as zeros, as recovery expects.
        assert!(rest_is_zero(
            &file,
            HEADER_BYTES + record_size(100),
            256 * 1024
        )?);
        Ok(())
    }

    /// Goal: what was appended and synced is read back after a reopen, in order.
    #[test]
    fn appended_records_survive_a_reopen() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut segments = Segments::open(dir.path(), None, 1 << 30)?;
        segments
            .append(&records(1..101, 1, b"entry"))?
            .sync(dir.path())?;
        drop(segments);
        let segments = Segments::open(dir.path(), None, 1 << 30)?;
        assert_eq!(indexes(&segments), (1..101).collect::<Vec<_>>());
        assert!(read_all(&segments)?
            .iter()
            .all(|(_, bytes)| bytes == b"entry"));
        Ok(())
    }

    /// Goal: a torn record ends the log there, and what follows it is wiped for good.
    /// Method: append 10 records, damage the 5th's bytes, reopen: 4 remain; append 5..8 of a
    /// later term (shorter), reopen: exactly 1..8, none of the old 5..10 back.
    #[test]
    fn a_torn_record_ends_the_log_and_nothing_old_comes_back() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut segments = Segments::open(dir.path(), None, 1 << 30)?;
        segments
            .append(&records(1..11, 1, b"old-entry"))?
            .sync(dir.path())?;
        let at = segments.entries[&5];
        drop(segments);
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path())?)?;
        file.write_all_at(b"XX", at.offset + RECORD_HEADER_BYTES + 2)?;
        drop(file);
        let mut segments = Segments::open(dir.path(), None, 1 << 30)?;
        assert_eq!(indexes(&segments), vec![1, 2, 3, 4]);
        segments
            .append(&records(5..9, 2, b"new"))?
            .sync(dir.path())?;
        drop(segments);
        let segments = Segments::open(dir.path(), None, 1 << 30)?;
        assert_eq!(indexes(&segments), (1..9).collect::<Vec<_>>());
        let read = read_all(&segments)?;
        assert!(
            read[4..].iter().all(|(_, bytes)| bytes == b"new"),
            "{read:?}"
        );
        Ok(())
    }

    /// Goal: a truncation is final: records of the same size written after it never let the
    /// old ones beyond be read again, even with a lower term (a follower's stale entries).
    #[test]
    fn a_truncation_never_lets_old_records_back() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut segments = Segments::open(dir.path(), None, 1 << 30)?;
        segments
            .append(&records(1..5, 1, b"same-size"))?
            .sync(dir.path())?;
        // A stale leader's entries, term 3; the new leader's at 5 and 6 are of term 2, the
        // same size: without the wipe, old 7 (term 3) would read as following new 6.
        segments
            .append(&records(5..11, 3, b"same-size"))?
            .sync(dir.path())?;
        segments.truncate(5)?.sync(dir.path())?;
        segments
            .append(&records(5..7, 2, b"SAME-SIZE"))?
            .sync(dir.path())?;
        drop(segments);
        let segments = Segments::open(dir.path(), None, 1 << 30)?;
        assert_eq!(indexes(&segments), (1..7).collect::<Vec<_>>());
        Ok(())
    }

    /// Goal: records over the segment size roll into new segments; purged segments go once
    /// everything in them is purged; a reopen with the purged index leaves those out.
    #[test]
    fn segments_roll_and_purged_ones_are_removed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let big = vec![7u8; 20 << 20];
        let mut segments = Segments::open(dir.path(), None, 1 << 30)?;
        segments.append(&records(1..8, 1, &big))?.sync(dir.path())?;
        assert!(segments.segments.len() >= 3, "{}", segments.segments.len());
        let removable = segments.purge(5);
        assert!(!removable.is_empty());
        remove_files(dir.path(), &removable)?;
        assert_eq!(indexes(&segments), vec![6, 7]);
        drop(segments);
        let segments = Segments::open(dir.path(), Some(5), 1 << 30)?;
        assert_eq!(indexes(&segments), vec![6, 7]);
        assert!(read_all(&segments)?.iter().all(|(_, bytes)| bytes == &big));
        Ok(())
    }

    /// Goal: after a purge past the log's end (a snapshot installed), the next entries start a
    /// segment of their own and are found again after a reopen; the old segment goes.
    #[test]
    fn entries_after_a_purge_past_the_end_survive_a_reopen() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut segments = Segments::open(dir.path(), None, 1 << 30)?;
        segments
            .append(&records(1..11, 1, b"before"))?
            .sync(dir.path())?;
        let removable = segments.purge(500);
        assert!(removable.is_empty(), "the last segment stays");
        segments
            .append(&records(501..504, 2, b"after"))?
            .sync(dir.path())?;
        drop(segments);
        let mut segments = Segments::open(dir.path(), Some(500), 1 << 30)?;
        assert_eq!(indexes(&segments), vec![501, 502, 503]);
        let removable = segments.purge(500);
        assert_eq!(removable.len(), 1, "the segment of 1..10 goes");
        remove_files(dir.path(), &removable)?;
        drop(segments);
        let segments = Segments::open(dir.path(), Some(500), 1 << 30)?;
        assert_eq!(indexes(&segments), vec![501, 502, 503]);
        Ok(())
    }

    /// Goal: a batch over the byte limit is refused whole, before anything is written.
    #[test]
    fn a_batch_over_the_limit_writes_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut segments = Segments::open(dir.path(), None, 256 << 10)?;
        segments
            .append(&records(1..11, 1, &[1u8; 1000]))?
            .sync(dir.path())?;
        let refused = segments.append(&records(11..400, 1, &[1u8; 1000]));
        assert!(refused.is_err_and(|error| error.kind() == io::ErrorKind::StorageFull));
        assert_eq!(segments.last_index(), Some(10));
        drop(segments);
        let segments = Segments::open(dir.path(), None, 256 << 10)?;
        assert_eq!(segments.last_index(), Some(10));
        Ok(())
    }

    /// Goal: a segment whose header never reached the disk, and those after it, are dropped.
    #[test]
    fn a_segment_without_its_header_ends_the_log() -> TestResult {
        let dir = tempfile::tempdir()?;
        let big = vec![1u8; 40 << 20];
        let mut segments = Segments::open(dir.path(), None, 1 << 30)?;
        segments.append(&records(1..4, 1, &big))?.sync(dir.path())?;
        let second = segments
            .segments
            .keys()
            .nth(1)
            .copied()
            .ok_or("one segment only")?;
        drop(segments);
        let path = dir.path().join(format!("{second:020}.seg"));
        OpenOptions::new()
            .write(true)
            .open(&path)?
            .write_all_at(&[0u8; 16], 0)?;
        let segments = Segments::open(dir.path(), None, 1 << 30)?;
        assert_eq!(segments.last_index(), Some(second - 1));
        assert!(!path.exists());
        Ok(())
    }
}
