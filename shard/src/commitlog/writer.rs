//! The in-memory tail of the log and what the next flush must write.
//!
//! Appends copy their entry into the *active chunk*, an aligned buffer that
//! starts at a block boundary of the current segment. A flush *seals* the
//! active chunk (zero-pads it to a block multiple and freezes it behind an
//! `Rc`), moves `end` to the next block boundary and starts a new, empty
//! active chunk there; then it writes the sealed chunks, one aligned write
//! each. So no block is ever written twice (a retry after a failed write or
//! sync aside): a torn write can only damage the block range of its own
//! flush, never bytes an earlier flush made durable, even on a device that
//! does not write 4 KiB atomically. The padding costs on average half a
//! block per flush; recovery steps over it (`recovery/scan.rs`). A chunk
//! that fills up is sealed early, whole blocks only (its partial block moves
//! to the next chunk), so the chunks of one flush never overlap and are
//! written concurrently.
//!
//! Positions, all global log positions:
//! `durable_end <= written_end <= end`; data below `written_end` is on disk,
//! below `durable_end` it is also synced. A failed flush puts its chunks
//! back, so a later flush retries them; positions never move back.
//!
//! Written chunks stay listed as *unsynced* until a sync covers them. A
//! failed fdatasync may have dropped their bytes (Linux reports the error
//! once and then forgets the lost pages), so [`Writer::sync_failed`] queues
//! them again: no later sync happens before they are rewritten.

use crate::codec::{align_down, align_up, is_aligned};
use crate::commitlog::entry::{durable_back, seal_entry, EntryKind, ENTRY_HEADER_LEN};
use crate::disk::{DiskFile, IoBuffer};
use std::collections::VecDeque;
use std::rc::Rc;

const MIN_CHUNK_BYTES: usize = 64 << 10;
const MAX_CHUNK_BYTES: usize = 4 << 20;

struct ActiveChunk<F: DiskFile> {
    file: Rc<F>,
    segment_base: u64,
    segment_end: u64,
    /// Global position of `buffer[0]`, block aligned.
    start: u64,
    buffer: F::Buffer,
    len: usize,
}

impl<F: DiskFile> ActiveChunk<F> {
    fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    fn capacity(&self) -> usize {
        self.buffer.as_bytes().len()
    }
}

/// A frozen chunk waiting to be written (or written and cached).
pub struct SealedChunk<F: DiskFile> {
    pub file: Rc<F>,
    pub segment_base: u64,
    /// Global position of the first byte, block aligned.
    pub start: u64,
    /// Valid bytes; the buffer is zero padded up to a block multiple.
    pub len: usize,
    /// Bytes of memory the buffer holds (for the cache budget).
    pub cost: usize,
    pub data: Rc<F::Buffer>,
    /// Already in the read cache: a rewrite after a failed sync.
    pub cached: bool,
}

impl<F: DiskFile> SealedChunk<F> {
    pub fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Position of the write inside the segment file.
    pub fn file_position(&self) -> u64 {
        self.start - self.segment_base
    }
}

impl<F: DiskFile> Clone for SealedChunk<F> {
    fn clone(&self) -> Self {
        SealedChunk {
            file: self.file.clone(),
            segment_base: self.segment_base,
            start: self.start,
            len: self.len,
            cost: self.cost,
            data: self.data.clone(),
            cached: self.cached,
        }
    }
}

/// What one flush writes.
pub struct Pending<F: DiskFile> {
    pub chunks: Vec<SealedChunk<F>>,
    /// `end` when the flush took its chunks: what it makes written (and durable).
    pub target_end: u64,
    /// The chain value (CRC of the last entry) at `target_end`.
    pub target_chain: u32,
}

/// Memory held by written, unsynced chunks (their buffers' capacity) above
/// which a flush syncs even if no append asks for it, so the chunks kept
/// for a rewrite after a failed sync stay bounded.
pub const MAX_UNSYNCED_BYTES: u64 = 64 << 20;

pub struct Writer<F: DiskFile> {
    active: ActiveChunk<F>,
    sealed: VecDeque<SealedChunk<F>>,
    /// Chunks written since the last successful sync, in log order.
    unsynced: Vec<SealedChunk<F>>,
    unsynced_bytes: u64,
    end: u64,
    written_end: u64,
    durable_end: u64,
    chain: u32,
    durable_chain: u32,
    next_capacity: usize,
}

impl<F: DiskFile> Writer<F> {
    /// Resumes writing after the log's last entry, which ends at
    /// `log_end` in the segment `[segment_base, segment_end)`: at the next
    /// block boundary, so the block holding that entry is never rewritten.
    pub fn new(
        file: Rc<F>,
        segment_base: u64,
        segment_end: u64,
        log_end: u64,
        chain: u32,
    ) -> Writer<F> {
        assert!(is_aligned(segment_base) && is_aligned(segment_end));
        assert!(segment_base <= log_end && log_end <= segment_end);
        let end = align_up(log_end);
        let buffer = file.alloc_buffer(MIN_CHUNK_BYTES);
        Writer {
            active: ActiveChunk {
                file,
                segment_base,
                segment_end,
                start: end,
                buffer,
                len: 0,
            },
            sealed: VecDeque::new(),
            unsynced: Vec::new(),
            unsynced_bytes: 0,
            end,
            written_end: end,
            durable_end: end,
            chain,
            durable_chain: chain,
            next_capacity: MIN_CHUNK_BYTES,
        }
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    pub fn chain(&self) -> u32 {
        self.chain
    }

    /// The chain value at `durable_end` (what a checkpoint there records).
    pub fn durable_chain(&self) -> u32 {
        self.durable_chain
    }

    pub fn segment_base(&self) -> u64 {
        self.active.segment_base
    }

    pub fn segment_end(&self) -> u64 {
        self.active.segment_end
    }

    /// Bytes left in the current segment.
    pub fn room(&self) -> u64 {
        self.active.segment_end - self.end
    }

    /// Bytes appended but not yet taken by a flush, plus sealed chunks.
    pub fn pending_bytes(&self) -> u64 {
        let sealed: u64 = self.sealed.iter().map(|c| c.len as u64).sum();
        let from = self.covered_end().max(self.active.start);
        sealed + self.active.end().saturating_sub(from)
    }

    /// Whether a flush has anything to do (write or advance `written_end`,
    /// or rewrite what a failed sync may have dropped).
    pub fn has_unwritten(&self) -> bool {
        self.end > self.written_end || !self.sealed.is_empty()
    }

    /// Memory held by the chunks written since the last successful sync.
    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced_bytes
    }

    /// Where data already handed to a write (sealed or written) ends.
    fn covered_end(&self) -> u64 {
        self.sealed
            .back()
            .map_or(self.written_end, |c| c.end().max(self.written_end))
    }

    /// Copies one entry into the tail: `fill` writes the payload, then the
    /// header is sealed onto the chain. Returns the entry's position.
    pub fn append(
        &mut self,
        payload_len: usize,
        kind: EntryKind,
        topic_id: u32,
        partition: u32,
        fill: impl FnOnce(&mut [u8]),
    ) -> u64 {
        let length = ENTRY_HEADER_LEN + payload_len;
        assert!(length as u64 <= self.room(), "caller checks room first");
        if self.active.len + length > self.active.capacity() {
            let tail = (self.end - align_down(self.end)) as usize;
            self.seal_full_blocks(align_up((tail + length) as u64) as usize);
        }
        let position = self.end;
        let at = self.active.len;
        let entry = &mut self.active.buffer.as_bytes_mut()[at..at + length];
        fill(&mut entry[ENTRY_HEADER_LEN..]);
        // What a completed sync already made durable (recovery's proof
        // that damage before this entry hit acknowledged data).
        let back = durable_back(position, self.durable_end);
        self.chain = seal_entry(entry, kind, topic_id, partition, self.chain, back);
        self.active.len += length;
        self.end += length as u64;
        position
    }

    /// A flush takes the active chunk whole, zero padded; the log goes on
    /// at the next block boundary, in a new chunk.
    fn seal_for_flush(&mut self) {
        let next = align_up(self.end);
        assert!(
            next <= self.active.segment_end,
            "segments are block aligned"
        );
        let buffer = self.active.file.alloc_buffer(self.next_capacity);
        let fresh = ActiveChunk {
            file: self.active.file.clone(),
            segment_base: self.active.segment_base,
            segment_end: self.active.segment_end,
            start: next,
            buffer,
            len: 0,
        };
        let old = std::mem::replace(&mut self.active, fresh);
        self.push_sealed(old);
        self.end = next;
    }

    /// A chunk that filled up: freezes its full blocks into the pending
    /// list and moves its partial last block into a new chunk, so the
    /// chunks of one flush never overlap and may be written concurrently.
    fn seal_full_blocks(&mut self, min_capacity: usize) {
        let tail_start = align_down(self.end).max(self.active.segment_base);
        let tail_len = (self.end - tail_start) as usize;
        let capacity = self
            .next_capacity
            .max(min_capacity)
            .max(align_up(tail_len as u64 + 1) as usize);
        let mut buffer = self.active.file.alloc_buffer(capacity);
        let from = (tail_start - self.active.start) as usize;
        buffer.as_bytes_mut()[..tail_len]
            .copy_from_slice(&self.active.buffer.as_bytes()[from..from + tail_len]);
        let next = ActiveChunk {
            file: self.active.file.clone(),
            segment_base: self.active.segment_base,
            segment_end: self.active.segment_end,
            start: tail_start,
            buffer,
            len: tail_len,
        };
        let mut old = std::mem::replace(&mut self.active, next);
        old.len = from;
        self.push_sealed(old);
    }

    fn push_sealed(&mut self, mut chunk: ActiveChunk<F>) {
        if chunk.len == 0 {
            return;
        }
        assert!(
            chunk.start >= self.covered_end(),
            "a block is written by one flush only"
        );
        let cost = chunk.capacity();
        let padded = align_up(chunk.len as u64) as usize;
        chunk.buffer.as_bytes_mut()[chunk.len..padded].fill(0);
        chunk.buffer.trim_to(padded);
        self.sealed.push_back(SealedChunk {
            file: chunk.file,
            segment_base: chunk.segment_base,
            start: chunk.start,
            len: chunk.len,
            cost,
            data: Rc::new(chunk.buffer),
            cached: false,
        });
    }

    /// Continues the log in a new segment; the rest of the current one stays
    /// unused (zeros, which recovery reads as the segment's end).
    pub fn switch_segment(&mut self, file: Rc<F>, base: u64, size: u64) {
        assert!(
            base >= self.active.segment_end,
            "segments follow each other"
        );
        assert!(is_aligned(base) && is_aligned(size));
        let buffer = file.alloc_buffer(self.next_capacity);
        let old = std::mem::replace(
            &mut self.active,
            ActiveChunk {
                file,
                segment_base: base,
                segment_end: base + size,
                start: base,
                buffer,
                len: 0,
            },
        );
        self.push_sealed(old);
        self.end = base;
    }

    /// Takes everything a flush must write.
    pub fn take_pending(&mut self) -> Pending<F> {
        let bytes = self.pending_bytes() as usize;
        self.next_capacity = (bytes * 2)
            .next_power_of_two()
            .clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES);
        if self.active.len > 0 {
            self.seal_for_flush();
        }
        Pending {
            chunks: self.sealed.drain(..).collect(),
            target_end: self.end,
            target_chain: self.chain,
        }
    }

    /// A failed flush hands its chunks back, to be retried first.
    pub fn restore(&mut self, chunks: Vec<SealedChunk<F>>) {
        for chunk in chunks.into_iter().rev() {
            self.sealed.push_front(chunk);
        }
    }

    /// A flush wrote up to `target_end`; `chunks` are what it wrote.
    pub fn mark_written(&mut self, target_end: u64, chunks: &[SealedChunk<F>]) {
        assert!(target_end <= self.end);
        self.written_end = self.written_end.max(target_end);
        for chunk in chunks {
            self.unsynced_bytes += chunk.cost as u64; // the memory it keeps
            self.unsynced.push(SealedChunk {
                cached: true,
                ..chunk.clone()
            });
        }
    }

    /// A sync failed: everything written since the last successful sync
    /// may be gone from the disk. Queues it to be written again, before
    /// whatever is pending, so the next sync covers it.
    pub fn sync_failed(&mut self) {
        self.unsynced_bytes = 0;
        for chunk in self.unsynced.drain(..).rev() {
            self.sealed.push_front(chunk);
        }
    }

    /// A sync of every written file succeeded after the flush that wrote up
    /// to `target_end` (and nothing was written since).
    pub fn mark_durable(&mut self, target_end: u64, target_chain: u32) {
        assert!(
            target_end <= self.written_end,
            "only written data becomes durable"
        );
        assert!(
            self.unsynced.iter().all(|c| c.end() <= target_end),
            "a sync covers every chunk written before it"
        );
        self.unsynced.clear();
        self.unsynced_bytes = 0;
        if target_end > self.durable_end {
            self.durable_end = target_end;
            self.durable_chain = target_chain;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commitlog::entry::{parse_entry, Parsed};
    use crate::disk::memory::{MemDisk, MemFile};
    use crate::disk::Disk;
    use std::path::Path;

    fn file() -> Rc<MemFile> {
        let disk = MemDisk::new(7);
        futures::executor::block_on(async {
            disk.create_dir_all(Path::new("/l")).await.unwrap();
            Rc::new(disk.create(Path::new("/l/f")).await.unwrap())
        })
    }

    fn add(writer: &mut Writer<MemFile>, len: usize, fill: u8) -> u64 {
        writer.append(len, EntryKind::CreateTopic, 1, 0, |p| p.fill(fill))
    }

    #[test]
    fn a_flush_pads_to_its_block_and_the_next_starts_at_the_next_block() {
        let mut w = Writer::new(file(), 0, 1 << 20, 0, 0);
        assert_eq!(add(&mut w, 100, 1), 0);
        let p = w.take_pending();
        assert_eq!(p.target_end, 4096, "the padding is part of the flush");
        assert_eq!(p.chunks.len(), 1);
        let c = &p.chunks[0];
        assert_eq!((c.start, c.len, c.data.as_bytes().len()), (0, 132, 4096));
        assert!(
            c.data.as_bytes()[132..].iter().all(|b| *b == 0),
            "zero padded"
        );
        w.mark_written(p.target_end, &p.chunks);
        // Nothing new: nothing to write.
        assert!(w.take_pending().chunks.is_empty());
        let first_crc = crate::codec::get_u32(c.data.as_bytes(), 24);
        let second = add(&mut w, 10, 2);
        assert_eq!(second, 4096, "the written block is never rewritten");
        let p = w.take_pending();
        assert_eq!(p.chunks.len(), 1);
        let c = &p.chunks[0];
        assert_eq!((c.start, c.len), (4096, 42));
        match parse_entry(&c.data.as_bytes()[..42], 1 << 20) {
            Parsed::Entry(h) => assert_eq!(h.prev_crc, first_crc, "chained across the padding"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.target_end, 8192);
    }

    #[test]
    fn full_chunks_are_sealed_early_and_segments_switch() {
        let mut w = Writer::new(file(), 0, 1 << 30, 0, 0);
        for i in 0..40 {
            add(&mut w, 10_000, i);
        }
        let p = w.take_pending();
        assert!(p.chunks.len() > 1);
        for pair in p.chunks.windows(2) {
            assert_eq!(
                pair[1].start,
                align_down(pair[0].end()),
                "chunks overlap in one block"
            );
        }
        assert_eq!(align_up(p.chunks.last().unwrap().end()), p.target_end);
        w.mark_written(p.target_end, &p.chunks);
        add(&mut w, 10, 9);
        w.switch_segment(file(), 1 << 30, 1 << 20);
        assert_eq!(w.end(), 1 << 30);
        add(&mut w, 10, 9);
        let p = w.take_pending();
        assert_eq!(p.chunks.len(), 2);
        assert_eq!(p.chunks[1].start, 1 << 30);
        assert_eq!(p.target_end, (1 << 30) + 4096);
    }
}
