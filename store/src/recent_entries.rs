//! The newest Raft log entries, kept in memory: those being written, which must be readable at
//! once (openraft 0.10 replicates an entry while the leader's own `fsync` runs), and after them
//! the last durable ones, up to a budget.
//!
//! Right after an entry becomes durable, replication to the followers and the state machine
//! still have to read it: on a busy leader both run a few batches behind the log writer, and a
//! follower applies what it made durable a moment before. Kept here, those reads clone the
//! entry instead of reading its record from a segment file and decoding it again.
//!
//! The entries kept are always the log's last ones, in index order: appends add at the end, a
//! truncation cuts the end, a purge the beginning, and the budget drops the oldest durable
//! entries first. An entry not yet durable is never dropped for the budget.

use std::collections::BTreeMap;

use crate::{Entry as LogEntry, LogId};

/// Encoded bytes of durable entries kept at most.
pub const DURABLE_BYTES_KEPT: usize = 4 << 20;

/// Durable entries kept at most.
pub const DURABLE_ENTRIES_KEPT: usize = 4096;

/// One entry kept, with its encoded size.
struct Kept {
    entry: LogEntry,
    bytes: usize,
    durable: bool,
}

/// The log's last entries (see the module's documentation).
#[derive(Default)]
pub(crate) struct RecentEntries {
    entries: BTreeMap<u64, Kept>,
    /// Encoded bytes of the durable entries kept.
    durable_bytes: usize,
    /// Durable entries kept.
    durable_count: usize,
}

impl RecentEntries {
    /// Adds an entry being written (`bytes`: its encoded size), replacing any at its index.
    pub(crate) fn insert(&mut self, entry: LogEntry, bytes: usize) {
        let index = entry.log_id.index;
        let replaced = self.entries.insert(
            index,
            Kept {
                entry,
                bytes,
                durable: false,
            },
        );
        if let Some(replaced) = replaced {
            self.forget(&replaced);
        }
    }

    /// Marks the entry `log_id` durable, unless an entry appended since replaced it (same index,
    /// other log id), then drops the oldest durable entries past the budget.
    pub(crate) fn made_durable(&mut self, log_ids: impl IntoIterator<Item = LogId>) {
        for log_id in log_ids {
            let Some(kept) = self.entries.get_mut(&log_id.index) else {
                continue;
            };
            if kept.entry.log_id == log_id && !kept.durable {
                kept.durable = true;
                self.durable_bytes = self.durable_bytes.saturating_add(kept.bytes);
                self.durable_count += 1;
            }
        }
        while self.durable_bytes > DURABLE_BYTES_KEPT || self.durable_count > DURABLE_ENTRIES_KEPT {
            // Only from the beginning, so that what is kept stays the end of the log; an
            // oldest entry still being written stops it (it is durable soon).
            match self.entries.first_entry() {
                Some(oldest) if oldest.get().durable => {
                    let oldest = oldest.remove();
                    self.forget(&oldest);
                }
                _ => break,
            }
        }
    }

    /// Drops the entries from `index` on (a follower's log truncated there).
    pub(crate) fn truncate_from(&mut self, index: u64) {
        let cut = self.entries.split_off(&index);
        cut.values().for_each(|kept| self.forget(kept));
    }

    /// Drops the entries up to `index`, included (purged).
    pub(crate) fn purge_to(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        let purged = std::mem::replace(&mut self.entries, kept);
        purged.values().for_each(|kept| self.forget(kept));
    }

    /// Drops everything (the store went out of service).
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// The log id of the last entry kept.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|kept| kept.entry.log_id)
    }

    /// The entries kept from `start` up to `end` (excluded), in index order, gaps included.
    pub(crate) fn range(&self, start: u64, end: Option<u64>) -> Vec<LogEntry> {
        let Some(span) = span(start, end) else {
            return Vec::new();
        };
        self.entries
            .range(span)
            .map(|(_, kept)| kept.entry.clone())
            .collect()
    }

    /// The answer to "the entries from `start` up to `end` (excluded) that fit in `bytes` (the
    /// first whatever its size)", when the entries kept give all of it: consecutive from
    /// `start`, up to `end` or up to where `bytes` is reached. `None` when the segment files
    /// must be read too.
    pub(crate) fn covering(
        &self,
        start: u64,
        end: Option<u64>,
        bytes: usize,
    ) -> Option<Vec<LogEntry>> {
        let span = span(start, end)?;
        let mut next = start;
        let mut total = 0usize;
        let mut entries = Vec::new();
        for (index, kept) in self.entries.range(span) {
            if *index != next {
                return None;
            }
            total = total.saturating_add(kept.bytes);
            if total > bytes && !entries.is_empty() {
                return Some(entries);
            }
            entries.push(kept.entry.clone());
            next = next.saturating_add(1);
        }
        (Some(next) == end).then_some(entries)
    }

    fn forget(&mut self, kept: &Kept) {
        if kept.durable {
            self.durable_bytes = self.durable_bytes.saturating_sub(kept.bytes);
            self.durable_count = self.durable_count.saturating_sub(1);
        }
    }
}

/// The indexes from `start` up to `end` (excluded; `None`: no end), or `None` when there are
/// none (a `BTreeMap` range must not end before it starts).
fn span(start: u64, end: Option<u64>) -> Option<std::ops::Range<u64>> {
    let upper = end.unwrap_or(u64::MAX);
    (start < upper).then_some(start..upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, index: u64) -> LogEntry {
        LogEntry {
            log_id: crate::log_id(term, 1, index),
            payload: crate::EntryPayload::Blank,
        }
    }

    fn indexes(entries: &[LogEntry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.log_id.index).collect()
    }

    fn filled(indexes: std::ops::Range<u64>, bytes: usize) -> RecentEntries {
        let mut recent = RecentEntries::default();
        for index in indexes {
            recent.insert(entry(1, index), bytes);
        }
        recent
    }

    #[test]
    fn gives_a_range_it_holds_whole_and_nothing_else() {
        let recent = filled(5..10, 10);
        assert_eq!(
            indexes(&recent.covering(5, Some(10), usize::MAX).unwrap()),
            [5, 6, 7, 8, 9]
        );
        assert_eq!(
            indexes(&recent.covering(7, Some(9), usize::MAX).unwrap()),
            [7, 8]
        );
        // Begins before what is kept, or goes past its end, or has no end: the files decide.
        assert!(recent.covering(4, Some(8), usize::MAX).is_none());
        assert!(recent.covering(8, Some(11), usize::MAX).is_none());
        assert!(recent.covering(8, None, usize::MAX).is_none());
        assert!(recent.covering(9, Some(9), usize::MAX).is_none());
        assert!(recent.covering(9, Some(3), usize::MAX).is_none());
        assert!(recent.range(9, Some(3)).is_empty());
    }

    #[test]
    fn a_byte_limit_ends_the_answer_even_without_an_end() {
        let recent = filled(5..10, 10);
        assert_eq!(indexes(&recent.covering(5, None, 25).unwrap()), [5, 6]);
        assert_eq!(
            indexes(&recent.covering(6, Some(10), 30).unwrap()),
            [6, 7, 8]
        );
        // The first entry goes whatever its size.
        assert_eq!(indexes(&recent.covering(5, None, 1).unwrap()), [5]);
    }

    #[test]
    fn a_gap_sends_the_read_to_the_files() {
        let mut recent = filled(5..8, 10);
        recent.insert(entry(1, 9), 10);
        assert!(recent.covering(5, Some(10), usize::MAX).is_none());
        assert_eq!(indexes(&recent.range(5, Some(10))), [5, 6, 7, 9]);
    }

    #[test]
    fn only_the_oldest_durable_entries_go_past_the_budget() {
        let per_entry = DURABLE_BYTES_KEPT / 4;
        let mut recent = filled(1..11, per_entry);
        // Nothing durable: all ten stay, whatever the budget.
        recent.made_durable([]);
        assert_eq!(indexes(&recent.range(0, None)), (1..11).collect::<Vec<_>>());
        recent.made_durable((1..8).map(|index| entry(1, index).log_id));
        // Four durable entries fit; 1 to 3 are dropped, 8 to 10 are still being written.
        assert_eq!(indexes(&recent.range(0, None)), (4..11).collect::<Vec<_>>());
        assert_eq!(recent.durable_bytes, 4 * per_entry);
        assert_eq!(recent.last_log_id(), Some(entry(1, 10).log_id));
    }

    #[test]
    fn the_count_is_bounded_too() {
        let mut recent = filled(0..(DURABLE_ENTRIES_KEPT as u64 + 100), 1);
        recent.made_durable((0..(DURABLE_ENTRIES_KEPT as u64 + 100)).map(|i| entry(1, i).log_id));
        assert_eq!(recent.durable_count, DURABLE_ENTRIES_KEPT);
        assert_eq!(
            recent.range(0, None).first().map(|e| e.log_id.index),
            Some(100)
        );
    }

    #[test]
    fn a_replaced_entry_is_not_marked_durable_by_its_predecessor() {
        let mut recent = filled(1..4, 10);
        // A follower's log truncated after 1 and written again in term 2.
        recent.truncate_from(2);
        recent.insert(entry(2, 2), 10);
        recent.made_durable([entry(1, 1).log_id, entry(1, 2).log_id]);
        assert_eq!(recent.durable_count, 1);
        assert_eq!(recent.durable_bytes, 10);
        assert_eq!(recent.range(2, Some(3))[0].log_id, entry(2, 2).log_id);
    }

    #[test]
    fn truncation_and_purge_keep_the_accounts() {
        let mut recent = filled(1..9, 10);
        recent.made_durable((1..9).map(|index| entry(1, index).log_id));
        recent.truncate_from(7);
        recent.purge_to(2);
        assert_eq!(indexes(&recent.range(0, None)), [3, 4, 5, 6]);
        assert_eq!((recent.durable_count, recent.durable_bytes), (4, 40));
        recent.clear();
        assert_eq!(recent.last_log_id(), None);
        assert_eq!((recent.durable_count, recent.durable_bytes), (0, 0));
    }
}
