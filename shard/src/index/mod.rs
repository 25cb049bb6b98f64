//! Per-partition index: offset → place in the shard's log, in memory.
//!
//! One entry per stored batch, in offset order (which is also log order).
//! Lookups are binary searches; appends and retention touch only the ends.
//! Checkpointed by [`crate::checkpoint`]; rebuilt from the log after it.

pub mod checkpoint;
pub mod segment_index;

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub base_offset: u64,
    pub record_count: u32,
    /// Entry length in the log, header included.
    pub length: u32,
    /// Global log position of the entry header.
    pub position: u64,
    /// Running maximum of batch max timestamps up to this entry, so
    /// timestamp lookups are a binary search.
    pub max_timestamp_ms: i64,
    /// Broker append time (retention by time uses it).
    pub append_time_ms: i64,
    /// Bytes of all entries of the partition up to and including this one,
    /// counted from an arbitrary origin (size retention uses differences).
    pub cumulative_bytes: u64,
}

impl IndexEntry {
    pub fn next_offset(&self) -> u64 {
        self.base_offset + self.record_count as u64
    }

    pub fn end(&self) -> u64 {
        self.position + self.length as u64
    }
}

#[derive(Debug, Default)]
pub struct PartitionIndex {
    entries: VecDeque<IndexEntry>,
}

impl PartitionIndex {
    pub fn new() -> PartitionIndex {
        PartitionIndex::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&IndexEntry> {
        self.entries.get(i)
    }

    pub fn first(&self) -> Option<&IndexEntry> {
        self.entries.front()
    }

    pub fn last(&self) -> Option<&IndexEntry> {
        self.entries.back()
    }

    pub fn iter(&self) -> std::collections::vec_deque::Iter<'_, IndexEntry> {
        self.entries.iter()
    }

    /// Appends the next batch. `max_timestamp_ms` is the batch's own; the
    /// running maximum and cumulative bytes are computed here.
    pub fn push(
        &mut self,
        base_offset: u64,
        record_count: u32,
        length: u32,
        position: u64,
        max_timestamp_ms: i64,
        append_time_ms: i64,
    ) {
        let (running, cumulative) = match self.entries.back() {
            Some(last) => {
                // Dense, except after damage a repair skipped (recovery).
                assert!(last.next_offset() <= base_offset, "offsets only grow");
                assert!(last.end() <= position, "index entries follow log order");
                (
                    last.max_timestamp_ms.max(max_timestamp_ms),
                    last.cumulative_bytes + length as u64,
                )
            }
            None => (max_timestamp_ms, length as u64),
        };
        self.entries.push_back(IndexEntry {
            base_offset,
            record_count,
            length,
            position,
            max_timestamp_ms: running,
            append_time_ms,
            cumulative_bytes: cumulative,
        });
    }

    /// Restores an entry from a checkpoint, keeping its stored running max.
    pub fn push_restored(&mut self, entry: IndexEntry) {
        let cumulative =
            self.entries.back().map_or(0, |l| l.cumulative_bytes) + entry.length as u64;
        self.entries.push_back(IndexEntry {
            cumulative_bytes: cumulative,
            ..entry
        });
    }

    /// Index of the entry holding `offset`, or of the first entry after it
    /// when `offset` lies in a gap that damaged data left (recovery); `None`
    /// below the first entry or at or past the end.
    pub fn find(&self, offset: u64) -> Option<usize> {
        let after = self.entries.partition_point(|e| e.base_offset <= offset);
        let i = after.checked_sub(1)?;
        if offset < self.entries[i].next_offset() {
            Some(i)
        } else {
            (after < self.entries.len()).then_some(after)
        }
    }

    /// Number of leading entries that end at or before `bound` (are visible).
    pub fn visible_len(&self, bound: u64) -> usize {
        // The invisible ones are the few newest: walk back from the end.
        let mut n = self.entries.len();
        while n > 0 && self.entries[n - 1].end() > bound {
            n -= 1;
        }
        n
    }

    /// First of the leading `visible` entries whose running max timestamp is
    /// at least `timestamp_ms`.
    pub fn first_at_or_after(&self, timestamp_ms: i64, visible: usize) -> Option<usize> {
        let at = self
            .entries
            .partition_point(|e| e.max_timestamp_ms < timestamp_ms);
        (at < visible).then_some(at)
    }

    /// The entries that start in `[from, to)` (log positions).
    pub fn between(&self, from: u64, to: u64) -> std::collections::vec_deque::Iter<'_, IndexEntry> {
        self.entries
            .range(self.count_before(from)..self.count_before(to))
    }

    /// Number of leading entries that start before log position `cut`.
    pub fn count_before(&self, cut: u64) -> usize {
        self.entries.partition_point(|e| e.position < cut)
    }

    /// Bytes of the leading `n` entries.
    pub fn bytes_of_first(&self, n: usize) -> u64 {
        match (self.entries.front(), n) {
            (_, 0) | (None, _) => 0,
            (Some(first), n) => {
                self.entries[n - 1].cumulative_bytes - first.cumulative_bytes + first.length as u64
            }
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes_of_first(self.entries.len())
    }

    /// Drops the leading `n` entries (retention).
    pub fn drop_first(&mut self, n: usize) {
        self.entries.drain(..n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> PartitionIndex {
        let mut index = PartitionIndex::new();
        // Batches of 10 records at offsets 100, 110, 120, 100 bytes apart.
        for (i, ts) in [50, 40, 70].into_iter().enumerate() {
            index.push(100 + 10 * i as u64, 10, 80, 1000 + 100 * i as u64, ts, 7);
        }
        index
    }

    #[test]
    fn find_by_offset() {
        let index = index();
        assert_eq!(index.find(99), None);
        assert_eq!(index.find(100), Some(0));
        assert_eq!(index.find(115), Some(1));
        assert_eq!(index.find(129), Some(2));
        assert_eq!(index.find(130), None);
    }

    #[test]
    fn visibility_timestamps_and_bytes() {
        let mut index = index();
        assert_eq!(index.visible_len(1180), 2);
        assert_eq!(index.visible_len(u64::MAX), 3);
        assert_eq!(index.first_at_or_after(45, 3), Some(0));
        assert_eq!(index.first_at_or_after(60, 3), Some(2));
        assert_eq!(index.first_at_or_after(60, 2), None);
        assert_eq!(index.total_bytes(), 240);
        assert_eq!(index.count_before(1100), 1);
        index.drop_first(1);
        assert_eq!(index.total_bytes(), 160);
        assert_eq!(index.bytes_of_first(1), 80);
        assert_eq!(index.find(105), None);
    }
}
