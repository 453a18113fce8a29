//! What replication reads from the log.

mod support;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use support::{entry, TestResult};

fn indexes(entries: &[starling_store::Entry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.log_id.index).collect()
}

/// Goal: replication is never handed entries that do not start where it asked. openraft
/// builds the append from the entry before `start`, so an answer that began later (the entry
/// at `start` purged meanwhile) would leave a hole in the follower's log.
/// Method: entries 1 to 10, purged up to 5; replication asks for 3..10 (its start is purged):
/// nothing; for 6..10: entries 6 to 9. The apply path (`try_get_log_entries`) may still read
/// what is left of a range whose beginning was purged, as openraft's contract allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_reads_start_where_asked() -> TestResult {
    let root = tempfile::tempdir()?;
    let (mut log_store, _state_machine) = starling_store::open(root.path())?;
    log_store
        .blocking_append((1..=10).map(|index| entry(index, 8)))
        .await?;
    log_store.purge(entry(5, 8).log_id).await?;
    let from_purged = log_store.limited_get_log_entries(3, 10).await?;
    assert!(
        from_purged.is_empty(),
        "asked from 3 (purged), answered {:?}",
        indexes(&from_purged)
    );
    let kept = log_store.limited_get_log_entries(6, 10).await?;
    assert_eq!(indexes(&kept), vec![6, 7, 8, 9]);
    let rest = log_store.try_get_log_entries(3..10).await?;
    assert_eq!(indexes(&rest), vec![6, 7, 8, 9]);
    Ok(())
}

/// Goal: a read of the log never fails while a truncation rewrites what it reads. The entries'
/// places are found under the segments' lock; reading them after letting go of it let the
/// writer thread zero (or overwrite, with another term) a record in between, and the read
/// failed as a damaged record, a storage error that stops openraft.
/// Method: one task truncates after entry 4 and appends entries 5 to 40 again with a new
/// term, 300 times; another reads entries 1 to 40 all the while. Every read succeeds and
/// starts at entry 1 with consecutive indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_fail_while_a_truncation_rewrites_the_log() -> TestResult {
    let root = tempfile::tempdir()?;
    let (mut log_store, _state_machine) = starling_store::open(root.path())?;
    log_store
        .blocking_append((1..=40).map(|index| entry(index, 64)))
        .await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reader = log_store.clone();
    let reading = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let entries = reader.try_get_log_entries(1..41).await?;
                let read = indexes(&entries);
                let expected: Vec<u64> = (1..=read.len() as u64).collect();
                assert_eq!(read, expected, "read after {reads} reads");
                reads += 1;
                tokio::task::yield_now().await;
            }
            Ok::<u64, std::io::Error>(reads)
        })
    };
    for term in 2..302u64 {
        log_store
            .truncate_after(Some(starling_store::log_id(1, 1, 4)))
            .await?;
        log_store
            .blocking_append((5..=40).map(|index| {
                let mut entry = entry(index, 64);
                entry.log_id = starling_store::log_id(term, 1, index);
                entry
            }))
            .await?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reading.await??;
    assert!(reads > 0, "the reader never read");
    Ok(())
}

/// Flips a byte inside the value of the only `user.marker` entry on disk (a run of `y`s), so
/// that reading its record fails its CRC.
fn damage_the_marked_record(root: &std::path::Path) -> TestResult {
    let mut files = vec![root.to_path_buf()];
    let mut damaged = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for child in std::fs::read_dir(&path)? {
                files.push(child?.path());
            }
            continue;
        }
        if !path.parent().is_some_and(|dir| dir.ends_with("segments")) {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let run = vec![b'y'; 64];
        if let Some(at) = bytes.windows(run.len()).position(|window| window == run) {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.write_all_at(b"z", (at + 10) as u64)?;
            damaged += 1;
        }
    }
    assert_eq!(
        damaged, 1,
        "the marked record was not found in one segment file"
    );
    Ok(())
}

/// Entries 1 to 40 of `bytes` each; entry 30 carries the `user.marker` value that
/// [`damage_the_marked_record`] finds.
fn marked_entries(bytes: usize) -> impl Iterator<Item = starling_store::Entry> {
    (1..=40).map(move |index| {
        let mut entry = entry(index, bytes);
        if index == 30 {
            entry.payload =
                starling_store::EntryPayload::Normal(starling_store::Command::ConfigSet {
                    key: "user.marker".to_string(),
                    value: "y".repeat(bytes),
                });
        }
        entry
    })
}

/// Goal: a bounded read decodes only the entries it gives. Replication asks for everything a
/// follower lacks and sends a batch of at most `APPEND_BYTES_MAX` bytes; reading and decoding
/// the whole backlog for each batch made catching up after a restart quadratic, and held the
/// async runtime for a second at a time. The apply path reads its range a chunk at a time,
/// as it is consumed.
/// Method: 40 entries of 100 KB, then as many again as the durable entries kept in memory
/// may hold (so that 1 to 40 are read from the files), the record of entry 30 damaged on disk
/// while the store is open (opening would end the log before it). Replication asks for
/// 1..41: it gets entries from 1 within the byte limit, and no error (the damaged record is
/// beyond what it sends). The apply stream for 1..41 gives the entries of the chunks before
/// the damaged record's (at least a batch's worth), then the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_reads_decode_only_what_they_give() -> TestResult {
    use futures::StreamExt;
    let root = tempfile::tempdir()?;
    let (mut log_store, _state_machine) = starling_store::open(root.path())?;
    log_store.blocking_append(marked_entries(100_000)).await?;
    let filler = starling_store::recent_entries::DURABLE_BYTES_KEPT as u64 / 100_000 + 1;
    log_store
        .blocking_append((41..=40 + filler).map(|index| entry(index, 100_000)))
        .await?;
    damage_the_marked_record(root.path())?;
    let batch = log_store.limited_get_log_entries(1, 41).await?;
    let limit = starling_store::log_store::APPEND_BYTES_MAX / 100_000;
    assert_eq!(indexes(&batch), (1..=limit as u64).collect::<Vec<_>>());
    let mut stream = std::pin::pin!(log_store.entries_stream(1..41).await);
    let mut read = Vec::new();
    let failure = loop {
        match stream.next().await {
            Some(Ok(entry)) => read.push(entry.log_id.index),
            Some(Err(error)) => break error.to_string(),
            None => panic!("the stream ended without the damaged record's error"),
        }
    };
    // Read a chunk at a time: the chunks before the damaged record's come first.
    assert!(read.len() >= limit && read.len() < 30, "read {read:?}");
    assert_eq!(read, (1..=read.len() as u64).collect::<Vec<_>>());
    assert!(failure.contains("entry 30"), "{failure}");
    Ok(())
}

/// Goal: the apply path's stream gives every entry of its range, across its chunks, and stops
/// where the log does (openraft's contract: nothing omitted in the middle).
/// Method: 300 entries of 20 KB (several chunks); streams of 1..301, 57..250 and 290..400
/// give exactly the entries asked for that the log holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apply_stream_gives_its_whole_range_in_chunks() -> TestResult {
    use futures::StreamExt;
    let root = tempfile::tempdir()?;
    let (mut log_store, _state_machine) = starling_store::open(root.path())?;
    log_store
        .blocking_append((1..=300).map(|index| entry(index, 20_000)))
        .await?;
    for (start, end, expected) in [(1, 301, 1..301), (57, 250, 57..250), (290, 400, 290..301)] {
        let read: Vec<u64> = log_store
            .entries_stream(start..end)
            .await
            .map(|entry| entry.map(|entry| entry.log_id.index))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(read, expected.collect::<Vec<_>>(), "{start}..{end}");
    }
    Ok(())
}

/// Goal: what was just made durable is read from memory: replication and the state machine read
/// the newest entries right after the writer made them durable, and decoding them again from
/// the segment files cost the leader a tenth of its time at 64 writers.
/// Method: 40 entries of 100 bytes, durable (the append waited for the flush), the record of
/// entry 30 damaged on disk: replication's read, the apply stream and a plain read of 1..41
/// all give the 40 entries, without an error. Past the budget of entries kept, the damaged
/// record is read from its file again, and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_durable_entries_are_read_from_memory() -> TestResult {
    use futures::StreamExt;
    let root = tempfile::tempdir()?;
    let (mut log_store, _state_machine) = starling_store::open(root.path())?;
    log_store.blocking_append(marked_entries(100)).await?;
    damage_the_marked_record(root.path())?;
    let all: Vec<u64> = (1..=40).collect();
    assert_eq!(
        indexes(&log_store.limited_get_log_entries(1, 41).await?),
        all
    );
    assert_eq!(indexes(&log_store.try_get_log_entries(1..41).await?), all);
    let streamed: Vec<_> = log_store.entries_stream(1..41).await.collect().await;
    let streamed = streamed.into_iter().collect::<Result<Vec<_>, _>>()?;
    assert_eq!(indexes(&streamed), all);
    let filler = starling_store::recent_entries::DURABLE_ENTRIES_KEPT as u64;
    log_store
        .blocking_append((41..=40 + filler).map(|index| entry(index, 100)))
        .await?;
    let failure = log_store
        .try_get_log_entries(1..41)
        .await
        .expect_err("entry 30 read from its damaged record");
    assert!(failure.to_string().contains("entry 30"), "{failure}");
    Ok(())
}
