//! A member's image files: `<data>/images/<fingerprint>`, content-addressed.
//!
//! A file appears under its fingerprint only once it is complete, verified and durable: it is
//! written to a temporary name in the same directory, hashed on the way, `fsync`ed, renamed,
//! and the directory `fsync`ed. Temporary files left by an interrupted import or copy are
//! removed when the member starts.
//!
//! Received bytes go to the disk with direct I/O (`O_DIRECT`) where the file system takes it:
//! they are gathered in an aligned buffer of [`STAGE_BYTES`] and written past the page cache.
//! An image is written once and read rarely, so caching it buys little, and copying it into
//! the page cache cost more CPU than hashing it (buffered: 2.4 s of system time per GiB on
//! the test machine; direct: 0.15 s). Where direct I/O is refused, writes are buffered.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};

use crate::sync::lock;

/// Bytes read or written at once.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Prefix of temporary files.
const PARTIAL_PREFIX: &str = ".partial-";

/// The image files of one member.
#[derive(Clone, Debug)]
pub struct ImageFiles {
    dir: PathBuf,
}

/// A file being received: bytes are hashed as they are written.
pub struct Incoming {
    file: File,
    path: PathBuf,
    hasher: Context,
    /// Bytes accepted: on the file, then staged.
    written: u64,
    /// Accepted bytes not on the file yet; written out whenever [`STAGE_BYTES`] are there.
    stage: Stage,
    /// Bytes on the file: a multiple of [`DIRECT_ALIGN`] while writes are direct.
    on_file: u64,
    /// Whether the file takes direct I/O (`O_DIRECT`).
    direct: bool,
    /// Bytes handed to the kernel's writeback (buffered writes only).
    queued: u64,
    dir: PathBuf,
}

/// Written bytes gathered before their writeback is started (buffered writes only).
const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes gathered before they are written out.
pub const STAGE_BYTES: usize = 1024 * 1024;
/// Alignment of direct I/O: of the buffer, the file offset and the length. 4 KiB suits every
/// logical block size (512 bytes or 4 KiB).
const DIRECT_ALIGN: usize = 4096;

/// A buffer of [`STAGE_BYTES`] whose start is aligned to [`DIRECT_ALIGN`], as direct I/O
/// needs: an over-allocated vector and the aligned window inside it.
struct Stage {
    memory: Vec<u8>,
    start: usize,
    len: usize,
}

impl Stage {
    fn new() -> Stage {
        let memory = vec![0u8; STAGE_BYTES + DIRECT_ALIGN];
        let start = memory.as_ptr().align_offset(DIRECT_ALIGN);
        Stage {
            memory,
            start,
            len: 0,
        }
    }

    fn room(&self) -> usize {
        STAGE_BYTES - self.len
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.memory[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The staged bytes.
    fn bytes(&self) -> &[u8] {
        &self.memory[self.start..self.start + self.len]
    }

    /// The staged bytes followed by zeros up to the next multiple of [`DIRECT_ALIGN`].
    fn padded(&mut self) -> &[u8] {
        let padded = self.len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        self.memory[self.start + self.len..self.start + padded].fill(0);
        &self.memory[self.start..self.start + padded]
    }
}

impl ImageFiles {
    /// The image files under the member's data directory `root`.
    pub fn new(root: &Path) -> ImageFiles {
        ImageFiles {
            dir: root.join("images"),
        }
    }

    /// The directory of the images, each a file named by its fingerprint.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the image `fingerprint` lives.
    pub fn path(&self, fingerprint: &str) -> PathBuf {
        self.dir.join(fingerprint)
    }

    /// Whether a complete copy of `fingerprint` is here.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.path(fingerprint).is_file()
    }

    /// Fingerprints of the complete files here.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect()
    }

    /// Removes temporary files an interrupted import or copy left.
    pub fn remove_partials(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(PARTIAL_PREFIX)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Deletes the file of `fingerprint`, if any.
    pub fn remove(&self, fingerprint: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(fingerprint)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Starts receiving a file, with direct I/O where the file system takes it.
    pub fn incoming(&self) -> std::io::Result<Incoming> {
        self.incoming_with(true)
    }

    /// Starts receiving a file; `direct` asks for direct I/O (buffered when refused).
    fn incoming_with(&self, direct: bool) -> std::io::Result<Incoming> {
        std::fs::create_dir_all(&self.dir)?;
        let name = format!(
            "{PARTIAL_PREFIX}{}-{}",
            std::process::id(),
            crate::token::random_u128().unwrap_or_default()
        );
        let path = self.dir.join(name);
        let open = |flags: i32| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(flags)
                .open(&path)
        };
        let (file, direct) = match direct.then(|| open(libc::O_DIRECT)) {
            Some(Ok(file)) => (file, true),
            // The file system has no direct I/O (EINVAL): buffered.
            Some(Err(error)) if error.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
            Some(Err(error)) => return Err(error),
            None => (open(0)?, false),
        };
        Ok(Incoming {
            file,
            path,
            hasher: Context::new(&SHA256),
            written: 0,
            stage: Stage::new(),
            on_file: 0,
            direct,
            queued: 0,
            dir: self.dir.clone(),
        })
    }

    /// Copies `source` in, hashing it on the way; returns its fingerprint and size. Reads and
    /// writes in [`CHUNK_BYTES`] pieces, so memory stays bounded. Blocking: run it off the
    /// async runtime.
    pub fn copy_in(&self, source: &Path) -> std::io::Result<(String, u64)> {
        let mut input = File::open(source)?;
        let mut incoming = self.incoming()?;
        let mut buffer = vec![0; CHUNK_BYTES];
        loop {
            let read = input.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            incoming.write(&buffer[..read])?;
        }
        let (fingerprint, size) = incoming.fingerprint_and_size();
        incoming.finish(&fingerprint)?;
        Ok((fingerprint, size))
    }

    /// Free bytes on the file system holding the image files.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        std::fs::create_dir_all(&self.dir)?;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `stat` a valid, writable statvfs.
        let result = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
}

/// An image file opened for sending, with direct I/O where the file system takes it: a file
/// just received was written past the page cache, and reading it through the cache would cost
/// what writing it past the cache saved.
pub struct Outgoing {
    file: File,
    direct: bool,
    /// Read buffers given back once the network is done with their bytes.
    spare: Spare,
}

/// Direct-read buffers no piece uses any more, kept for the next pieces: a buffer allocated
/// for every piece was zeroed first, a pass over every byte sent (2 % of a copy's CPU).
type Spare = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Spare read buffers kept at most: the pieces read ahead and those the network still holds.
const SPARE_BUFFERS_MAX: usize = 8;

/// The length of a pooled read buffer: a piece of up to [`CHUNK_BYTES`] starting anywhere in
/// a block, and room to align the start.
const READ_BUFFER_BYTES: usize = CHUNK_BYTES + 2 * DIRECT_ALIGN;

/// A read buffer lent to a piece: back to the spare ones when the piece is dropped.
struct Lent {
    memory: Vec<u8>,
    spare: Spare,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.memory
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut spare = lock(&self.spare);
        if spare.len() < SPARE_BUFFERS_MAX && self.memory.len() == READ_BUFFER_BYTES {
            spare.push(std::mem::take(&mut self.memory));
        }
    }
}

impl Outgoing {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> std::io::Result<Outgoing> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let (file, direct) = match direct {
            Ok(file) => (file, true),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => (File::open(path)?, false),
            Err(error) => return Err(error),
        };
        Ok(Outgoing {
            file,
            direct,
            spare: Spare::default(),
        })
    }

    /// A buffer of at least `bytes` to read into: a spare one, or a new one. Its contents are
    /// whatever they were: a read overwrites what it answers.
    fn buffer(&self, bytes: usize) -> Vec<u8> {
        if bytes > READ_BUFFER_BYTES {
            return vec![0u8; bytes];
        }
        let spare = lock(&self.spare).pop();
        spare.unwrap_or_else(|| vec![0u8; READ_BUFFER_BYTES])
    }

    /// The file's length.
    pub fn size(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Reads exactly `want` bytes at `at` (blocking). A direct read covers the aligned span
    /// around them in a read buffer, and answers the window inside it; the buffer serves
    /// another read once every piece of it is dropped.
    pub fn read_at(&mut self, at: u64, want: usize) -> std::io::Result<bytes::Bytes> {
        if self.direct {
            let start = at - at % DIRECT_ALIGN as u64;
            let skip = (at - start) as usize;
            let span = (skip + want).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
            let mut memory = self.buffer(span + DIRECT_ALIGN);
            let base = memory.as_ptr().align_offset(DIRECT_ALIGN);
            let mut filled = 0;
            while filled < skip + want {
                let window = &mut memory[base + filled..base + span];
                match self.file.read_at(window, start + filled as u64) {
                    Ok(0) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the file ends before byte {}", at + want as u64),
                        ))
                    }
                    Ok(read) => filled += read,
                    // Opened with O_DIRECT but a read refused it: go on buffered.
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) && filled == 0 => {
                        clear_direct(&self.file)?;
                        self.direct = false;
                        return self.read_at(at, want);
                    }
                    Err(error) => return Err(error),
                }
            }
            let whole = bytes::Bytes::from_owner(Lent {
                memory,
                spare: self.spare.clone(),
            });
            return Ok(whole.slice(base + skip..base + skip + want));
        }
        let mut piece = vec![0u8; want];
        self.file.read_exact_at(&mut piece, at)?;
        Ok(bytes::Bytes::from(piece))
    }
}

/// Clears `O_DIRECT` on `file`: its reads and writes from here on go through the page cache.
fn clear_direct(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns; F_GETFL/F_SETFL touch only its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Incoming {
    /// Appends `bytes`.
    pub fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let take = bytes.len().min(self.stage.room());
            self.stage.push(&bytes[..take]);
            self.written += take as u64;
            bytes = &bytes[take..];
            if self.stage.room() == 0 {
                self.write_out(false)?;
            }
        }
        Ok(())
    }

    /// Writes out what is staged. Direct writes go in whole blocks: the `last` one is padded
    /// to the alignment and the file cut back to its length. A direct write refused with
    /// `EINVAL` (some file systems take `O_DIRECT` at open and refuse it only then) turns the
    /// file to buffered writes, and the bytes are written again that way.
    fn write_out(&mut self, last: bool) -> std::io::Result<()> {
        if self.stage.len == 0 {
            return Ok(());
        }
        let length = self.stage.len as u64;
        if self.direct {
            let bytes = if last {
                self.stage.padded()
            } else {
                self.stage.bytes()
            };
            match self.file.write_all_at(bytes, self.on_file) {
                Ok(()) => {
                    self.on_file += length;
                    self.stage.len = 0;
                    return if last {
                        self.file.set_len(self.on_file)
                    } else {
                        Ok(())
                    };
                }
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    clear_direct(&self.file)?;
                    self.direct = false;
                }
                Err(error) => return Err(error),
            }
        }
        self.file.write_all_at(self.stage.bytes(), self.on_file)?;
        self.on_file += length;
        self.stage.len = 0;
        if !last && self.on_file - self.queued >= WRITEBACK_BYTES {
            self.start_writeback();
        }
        Ok(())
    }

    /// Asks the kernel to start writing what was written since the last call, without waiting:
    /// the disk works while the network does, and the `fsync` at the end has little left.
    fn start_writeback(&mut self) {
        let (start, length) = (self.queued, self.on_file - self.queued);
        // SAFETY: a valid open descriptor and a range of it; the call only schedules I/O.
        let result = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                start as libc::off64_t,
                length as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if result == 0 {
            self.queued = self.on_file;
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The SHA-256 (hex) and size of what was written so far.
    pub fn fingerprint_and_size(&self) -> (String, u64) {
        let digest = self.hasher.clone().finish();
        (hex::encode(digest.as_ref()), self.written)
    }

    /// Verifies the bytes hash to `expected`, makes the file durable and gives it its name.
    /// A mismatch deletes what was received and says so.
    pub fn finish(mut self, expected: &str) -> std::io::Result<()> {
        let (fingerprint, _) = self.fingerprint_and_size();
        if fingerprint != expected {
            let _ = std::fs::remove_file(&self.path);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("received bytes hash to {fingerprint}, expected {expected}"),
            ));
        }
        self.write_out(true)?;
        self.file.sync_all()?;
        let target = self.dir.join(expected);
        std::fs::rename(&self.path, &target)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

impl Drop for Incoming {
    /// An abandoned file leaves nothing behind (after `finish` the path no longer exists).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a copied-in file is named by its SHA-256 and nothing temporary remains; received
    /// bytes with the wrong hash are refused and leave nothing behind.
    #[test]
    fn content_addressed_and_clean() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::new(dir.path());
        let source = dir.path().join("image.tar");
        std::fs::write(&source, b"hello").unwrap();
        let (fingerprint, size) = files.copy_in(&source).unwrap();
        assert_eq!(
            fingerprint,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(size, 5);
        assert!(files.contains(&fingerprint));
        assert_eq!(files.list(), vec![fingerprint.clone()]);

        let mut incoming = files.incoming().unwrap();
        incoming.write(b"other bytes").unwrap();
        let error = incoming.finish(&fingerprint).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(files.list(), vec![fingerprint.clone()]);
        let leftovers = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 1);
    }

    /// Bytes that differ from one position to the next (no two pieces alike).
    fn pattern(size: usize) -> Vec<u8> {
        (0..size)
            .map(|index| (index as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect()
    }

    /// Goal: direct or buffered, whatever the length of the whole and of the pieces it comes
    /// in (aligned or not, across the stage's size), the file holds exactly the bytes written
    /// and is named by their SHA-256.
    #[test]
    fn any_length_in_any_pieces_lands_whole() {
        let sizes = [
            0,
            5,
            4095,
            4096,
            4097,
            STAGE_BYTES - 1,
            STAGE_BYTES,
            STAGE_BYTES + 1,
            3 * STAGE_BYTES - 7,
        ];
        for direct in [true, false] {
            for size in sizes {
                for piece in [1000, 300 * 1024, STAGE_BYTES] {
                    let dir = tempfile::tempdir().unwrap();
                    let files = ImageFiles::new(dir.path());
                    let bytes = pattern(size);
                    let mut incoming = files.incoming_with(direct).unwrap();
                    for chunk in bytes.chunks(piece) {
                        incoming.write(chunk).unwrap();
                    }
                    assert_eq!(incoming.written(), size as u64);
                    let (fingerprint, _) = incoming.fingerprint_and_size();
                    let expected = hex::encode(ring::digest::digest(&SHA256, &bytes).as_ref());
                    assert_eq!(fingerprint, expected, "direct {direct}, size {size}");
                    incoming.finish(&fingerprint).unwrap();
                    let landed = std::fs::read(files.path(&fingerprint)).unwrap();
                    assert!(
                        landed == bytes,
                        "direct {direct}, size {size}, pieces of {piece}: {} bytes landed",
                        landed.len()
                    );
                }
            }
        }
    }

    /// Goal: a file read for sending gives exactly the bytes asked for, from any offset
    /// (aligned or not) and of any length, direct or buffered, and says so when it ends early.
    #[test]
    fn outgoing_reads_any_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let bytes = pattern(2 * STAGE_BYTES + 12_345);
        std::fs::write(&path, &bytes).unwrap();
        for direct in [true, false] {
            let mut file = Outgoing::open(&path).unwrap();
            if !direct {
                clear_direct(&file.file).unwrap();
                file.direct = false;
            }
            assert_eq!(file.size().unwrap(), bytes.len() as u64);
            let end = bytes.len();
            for (at, want) in [
                (0, STAGE_BYTES),
                (1, 10),
                (4095, 2),
                (4096, 4096),
                (5000, STAGE_BYTES),
                (end - 3, 3),
                (end - STAGE_BYTES - 1, STAGE_BYTES + 1),
                (end, 0),
            ] {
                let piece = file.read_at(at as u64, want).unwrap();
                assert!(
                    piece[..] == bytes[at..at + want],
                    "direct {direct}: {want} bytes at {at}"
                );
            }
            let error = file.read_at(end as u64 - 2, 3).unwrap_err();
            assert_eq!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "direct {direct}"
            );
        }
    }

    /// Pages of `path` in the page cache, and pages in all.
    fn cached_pages(path: &Path) -> (usize, usize) {
        let file = File::open(path).unwrap();
        let length = file.metadata().unwrap().len() as usize;
        let page = 4096;
        let pages = length.div_ceil(page);
        let mut resident = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of an open file, unmapped before returning;
        // `resident` has one byte per page of it, as mincore writes.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mincore(map, length, resident.as_mut_ptr()), 0);
            libc::munmap(map, length);
        }
        (resident.iter().filter(|byte| *byte & 1 == 1).count(), pages)
    }

    /// Goal: where the file system takes direct I/O, a received image is written with it: its
    /// bytes do not fill the page cache. Method: the same 8 MiB received direct and buffered;
    /// count each file's pages in the page cache (`mincore`).
    #[test]
    fn received_bytes_bypass_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        if let Err(error) = OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
        {
            eprintln!(
                "no direct I/O on {}: {error}; nothing to check",
                dir.path().display()
            );
            return;
        }
        let bytes = pattern(8 * STAGE_BYTES + 100);
        let mut cached = Vec::new();
        for direct in [true, false] {
            let files = ImageFiles::new(&dir.path().join(direct.to_string()));
            let mut incoming = files.incoming_with(direct).unwrap();
            assert_eq!(incoming.direct, direct);
            incoming.write(&bytes).unwrap();
            let (fingerprint, _) = incoming.fingerprint_and_size();
            incoming.finish(&fingerprint).unwrap();
            cached.push(cached_pages(&files.path(&fingerprint)));
        }
        let (direct, buffered) = (cached[0], cached[1]);
        assert!(direct.0 <= 1, "direct: {direct:?} pages cached");
        assert!(
            buffered.0 * 2 > buffered.1,
            "buffered: {buffered:?} pages cached"
        );
    }

    /// Goal: pieces read directly are the file's bytes wherever they start, and a buffer the
    /// network is done with serves the next read (not a new, zeroed one each time).
    #[test]
    fn direct_reads_answer_the_bytes_and_reuse_their_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let bytes = pattern(3 * CHUNK_BYTES + 777);
        std::fs::write(&path, &bytes).unwrap();
        let mut file = Outgoing::open(&path).unwrap();
        if !file.direct {
            eprintln!(
                "no direct I/O on {}; nothing to check",
                dir.path().display()
            );
            return;
        }
        for (at, want) in [
            (0, CHUNK_BYTES),
            (4095, CHUNK_BYTES),
            (CHUNK_BYTES * 3, 777),
            (1, 10),
        ] {
            let piece = file.read_at(at as u64, want).unwrap();
            assert_eq!(&piece[..], &bytes[at..at + want], "{want} bytes at {at}");
        }
        let spare = |file: &Outgoing| file.spare.lock().unwrap().len();
        let kept = spare(&file);
        assert!(kept >= 1, "the buffers of dropped pieces are kept");
        let first = file.read_at(5, CHUNK_BYTES).unwrap();
        assert_eq!(spare(&file), kept - 1, "a kept buffer serves the read");
        let held = first.as_ptr() as usize;
        drop(first);
        assert_eq!(
            spare(&file),
            kept,
            "the piece's buffer is back once it is dropped"
        );
        let again = file.read_at(2 * CHUNK_BYTES as u64, CHUNK_BYTES).unwrap();
        assert_eq!(&again[..], &bytes[2 * CHUNK_BYTES..3 * CHUNK_BYTES]);
        assert!((again.as_ptr() as usize).abs_diff(held) < 2 * DIRECT_ALIGN);
        assert!(
            file.read_at(3 * CHUNK_BYTES as u64, 778).is_err(),
            "a read past the end is an error"
        );
    }
}
