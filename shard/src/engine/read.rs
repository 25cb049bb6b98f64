//! Reads by partition and offset: whole batches, from the cache of recent
//! chunks when it has them, otherwise with O_DIRECT reads of the segment
//! files. Bytes read from disk are verified again (entry header CRC and
//! batch CRC) before they are served. A stored batch that fails three reads costs
//! only itself: the intact batches before it are served, and a read that
//! starts at it answers [`DataLoss`] with the offset where intact data
//! resumes.

use super::Engine;
use crate::clock::Clock;
use crate::codec::{align_down, align_up};
use crate::commitlog::entry::{parse_entry, EntryKind, Parsed, ENTRY_HEADER_LEN};
use crate::disk::{Disk, DiskFile};
use crate::engine::io_error;
use crate::index::IndexEntry;
use crate::storage::StorageError;
use crate::{DataLoss, ReadOutcome};
use futures::future::LocalBoxFuture;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};

/// Entries of one partition further apart than this are read separately.
const MAX_READ_GAP_BYTES: u64 = 256 << 10;
/// Largest single disk read.
const MAX_READ_BYTES: u64 = 8 << 20;
/// Most bytes of read-ahead held (or in flight) per shard, over all partitions
/// (part of `StorageConfig::io_memory_bytes`).
pub const MAX_READ_AHEAD_BYTES: usize = 32 << 20;
/// Fetches read ahead per sequential reader (disk reads in flight). Two
/// gave ~20% more consume throughput but, in some runs, single reads
/// waiting ~0.3–0.5 s (consistent with mq-deadline's 500 ms read expiry:
/// one shard's stream starved by the other's); see docs/perf.md.
const READ_AHEAD_DEPTH: usize = 1;

/// The next fetch of a sequential reader, read from disk while the current
/// one is being answered: one aligned read of a segment, started (its
/// future polled once, which queues the I/O) when the read before it
/// completed, and awaited by the read that asks for those entries.
pub(crate) struct ReadAhead<F: DiskFile> {
    /// Base offsets of the first and last batch it holds.
    first_offset: u64,
    last_offset: u64,
    segment_base: u64,
    /// File position and length of the aligned read.
    from: u64,
    len: usize,
    read: Fetching<F::ReadBuffer>,
}

enum Fetching<B> {
    Pending(LocalBoxFuture<'static, io::Result<B>>),
    Ready(io::Result<B>),
}

impl<F: DiskFile> ReadAhead<F> {
    fn covers(&self, segment_base: u64, entry: &IndexEntry) -> bool {
        let at = entry.position.wrapping_sub(segment_base);
        self.segment_base == segment_base
            && entry.position >= segment_base
            && at >= self.from
            && at + entry.length as u64 <= self.from + self.len as u64
    }

    async fn bytes(self) -> io::Result<F::ReadBuffer> {
        match self.read {
            Fetching::Pending(read) => read.await,
            Fetching::Ready(result) => result,
        }
    }
}

/// Read-ahead per partition (in log order), with the byte total.
pub(crate) struct ReadAheads<F: DiskFile> {
    by_partition: std::collections::HashMap<(u32, u32), VecDeque<ReadAhead<F>>>,
    bytes: usize,
}

impl<F: DiskFile> Default for ReadAheads<F> {
    fn default() -> Self {
        ReadAheads {
            by_partition: Default::default(),
            bytes: 0,
        }
    }
}

impl<F: DiskFile> ReadAheads<F> {
    fn take(&mut self, key: (u32, u32)) -> VecDeque<ReadAhead<F>> {
        let taken = self.by_partition.remove(&key).unwrap_or_default();
        self.bytes -= taken.iter().map(|a| a.len).sum::<usize>();
        taken
    }

    fn put_back(&mut self, key: (u32, u32), queue: VecDeque<ReadAhead<F>>) {
        if !queue.is_empty() {
            self.bytes += queue.iter().map(|a| a.len).sum::<usize>();
            self.by_partition.insert(key, queue);
        }
    }

    fn depth(&self, key: (u32, u32)) -> usize {
        self.by_partition.get(&key).map_or(0, |q| q.len())
    }

    fn has_room(&self, len: usize) -> bool {
        self.bytes + len <= MAX_READ_AHEAD_BYTES
    }

    fn push(&mut self, key: (u32, u32), ahead: ReadAhead<F>) {
        self.bytes += ahead.len;
        self.by_partition.entry(key).or_default().push_back(ahead);
    }

    pub fn clear(&mut self) {
        self.by_partition.clear();
        self.bytes = 0;
    }
}

impl<D: Disk, C: Clock> Engine<D, C>
where
    D::File: 'static,
{
    /// Whole batches starting with the one holding `offset`, up to
    /// `max_bytes` (at least one batch if any is visible).
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<ReadOutcome, StorageError> {
        let (key, mut selected, high_watermark, log_start_offset) = {
            let state = self.state()?;
            let key = state.partition_key(topic, partition)?;
            let p = &state.partitions[&key];
            let (visible, high_watermark) = p.visible(&state.writer);
            let start = p.log_start_offset;
            if offset < start || offset > high_watermark {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    start,
                    end: high_watermark,
                });
            }
            let mut selected: Vec<IndexEntry> = Vec::new();
            if offset < high_watermark {
                let first = p.index.find(offset).ok_or(StorageError::OffsetOutOfRange {
                    offset,
                    start,
                    end: high_watermark,
                })?;
                let mut total = 0u64;
                for i in first..visible {
                    let e = *p.index.get(i).expect("i < visible <= len");
                    let batch_bytes = (e.length as usize - ENTRY_HEADER_LEN) as u64;
                    if !selected.is_empty() && total + batch_bytes > max_bytes as u64 {
                        break;
                    }
                    total += batch_bytes;
                    selected.push(e);
                }
            }
            (key, selected, high_watermark, start)
        };
        let total: usize = selected
            .iter()
            .map(|e| e.length as usize - ENTRY_HEADER_LEN)
            .sum();
        let mut out = Vec::with_capacity(total);
        let mut ahead = self.read_ahead.borrow_mut().take(key);
        let m = &self.metrics;
        let mut from_disk = false;
        let mut data_loss = None;
        let mut next = 0;
        while next < selected.len() {
            // From memory, as many as the cache holds.
            let disk_run = {
                let state = self.state()?;
                while let Some(e) = selected.get(next) {
                    match state.cache.get(e.position, e.length as usize) {
                        Some(entry) => {
                            out.extend_from_slice(&entry[ENTRY_HEADER_LEN..]);
                            next += 1;
                        }
                        None => break,
                    }
                }
                if next == selected.len() {
                    break;
                }
                let first = selected[next];
                let segment = state
                    .segments
                    .find(first.position)
                    .ok_or(StorageError::OffsetOutOfRange {
                        offset: first.base_offset,
                        start: log_start_offset,
                        end: high_watermark,
                    })?
                    .clone();
                // Read ahead by an earlier read: the entries it holds.
                while ahead
                    .front()
                    .is_some_and(|a| a.last_offset < first.base_offset)
                {
                    ahead.pop_front();
                }
                let ahead_run = match ahead.front() {
                    Some(a) if a.covers(segment.base, &first) => {
                        let n = selected[next..]
                            .iter()
                            .take_while(|e| a.covers(segment.base, e))
                            .count();
                        ahead.pop_front().map(|a| (a, n))
                    }
                    _ => None,
                };
                let mut count = 1;
                while let Some(e) = selected.get(next + count) {
                    let previous = selected[next + count - 1];
                    if !joins_disk_run(&state.cache, segment.end(), &first, &previous, e) {
                        break;
                    }
                    count += 1;
                }
                (segment, count, ahead_run)
            };
            let (segment, mut count, ahead_run) = disk_run;
            let mut served = false;
            if let Some((ahead, n)) = ahead_run {
                count = n;
                let run = &selected[next..next + count];
                let (from, keep) = (ahead.from, out.len());
                // A failed or bad read-ahead is only a miss: read again below.
                if let Ok(bytes) = ahead.bytes().await {
                    served = verify_run(&bytes, from + segment.base, key, run, &mut out).is_ok();
                }
                if served {
                    m.read_ahead_hits.set(m.read_ahead_hits.get() + 1);
                }
                if !served {
                    out.truncate(keep);
                }
            }
            from_disk = true;
            if !served {
                let run = &selected[next..next + count];
                let damage = self
                    .read_run(&segment.file, segment.base, key, run, &mut out)
                    .await?;
                if let Some(Damage { intact, damaged }) = damage {
                    // Serve what lies before the damage; a read that starts
                    // at it learns where intact data resumes.
                    let first_damaged = next + intact;
                    if first_damaged == 0 {
                        let last = selected[damaged - 1];
                        let next_offset = self.offset_after(key, last.base_offset, high_watermark);
                        m.corrupt_batches_skipped
                            .set(m.corrupt_batches_skipped.get() + damaged as u64);
                        data_loss = Some(DataLoss {
                            offset: selected[0].base_offset,
                            next_offset,
                            batches: damaged as u32,
                        });
                    }
                    selected.truncate(first_damaged);
                    break;
                }
            }
            next += count;
        }
        if let Some(last) = selected.last().filter(|_| from_disk || !ahead.is_empty()) {
            // Keep what lies beyond this read, then top the queue up.
            ahead.retain(|a| a.first_offset > last.base_offset);
            let mut after = ahead.back().map_or(last.base_offset, |a| a.last_offset);
            self.read_ahead.borrow_mut().put_back(key, ahead);
            while self.read_ahead.borrow().depth(key) < READ_AHEAD_DEPTH {
                match self.start_read_ahead(key, after, max_bytes) {
                    Some(last) => after = last,
                    None => break,
                }
            }
        }
        Ok(ReadOutcome {
            batches: out,
            high_watermark,
            log_start_offset,
            data_loss,
        })
    }

    /// The base offset of the batch after the one at `base_offset`, or the
    /// high watermark when it is the last visible one.
    fn offset_after(&self, key: (u32, u32), base_offset: u64, high_watermark: u64) -> u64 {
        let after = self.state().ok().and_then(|state| {
            let p = state.partitions.get(&key)?;
            let (visible, _) = p.visible(&state.writer);
            let i = p.index.find(base_offset)? + 1;
            p.index
                .get(i)
                .filter(|_| i < visible)
                .map(|e| e.base_offset)
        });
        after.unwrap_or(high_watermark)
    }

    /// Starts reading, in the background, what a sequential reader's next
    /// fetch (after the batch at `last_offset`, up to `max_bytes`) will ask
    /// for, if it is on disk: the entries of one segment, one aligned read.
    /// Returns the base offset of the last batch it reads.
    fn start_read_ahead(&self, key: (u32, u32), last_offset: u64, max_bytes: u32) -> Option<u64> {
        let state = self.state().ok()?;
        let p = state.partitions.get(&key)?;
        let (visible, _) = p.visible(&state.writer);
        let mut i = p.index.find(last_offset)? + 1;
        let first = p.index.get(i).filter(|_| i < visible).copied()?;
        if state
            .cache
            .get(first.position, first.length as usize)
            .is_some()
        {
            return None;
        }
        let segment = state.segments.find(first.position)?;
        let mut last = first;
        let mut total = (first.length as usize - ENTRY_HEADER_LEN) as u64;
        i += 1;
        while i < visible {
            let Some(e) = p.index.get(i) else { break };
            let batch_bytes = (e.length as usize - ENTRY_HEADER_LEN) as u64;
            if total + batch_bytes > max_bytes as u64
                || !joins_disk_run(&state.cache, segment.end(), &first, &last, e)
            {
                break;
            }
            total += batch_bytes;
            last = *e;
            i += 1;
        }
        let from = align_down(first.position - segment.base);
        let len = (align_up(last.end() - segment.base) - from) as usize;
        if !self.read_ahead.borrow().has_room(len) {
            return None;
        }
        let file = segment.file.clone();
        let segment_base = segment.base;
        drop(state);
        let m = &self.metrics;
        m.disk_reads.set(m.disk_reads.get() + 1);
        m.disk_read_bytes.set(m.disk_read_bytes.get() + len as u64);
        let mut read: LocalBoxFuture<'static, io::Result<<D::File as DiskFile>::ReadBuffer>> =
            Box::pin(async move { file.read_at(from, len).await });
        // One poll queues the read; it completes while this fetch is answered.
        let waker = futures::task::noop_waker_ref();
        let read = match read.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(result) => Fetching::Ready(result),
            Poll::Pending => Fetching::Pending(read),
        };
        self.read_ahead.borrow_mut().push(
            key,
            ReadAhead {
                first_offset: first.base_offset,
                last_offset: last.base_offset,
                segment_base,
                from,
                len,
                read,
            },
        );
        Some(last.base_offset)
    }

    /// Reads entries of one segment with one aligned read, verifying each.
    /// A run that fails verification is read once more (a flip on the way
    /// from the device); bytes that fail three reads are never served: the intact
    /// entries before them are appended to `out` and the damage is returned.
    async fn read_run(
        &self,
        file: &Rc<D::File>,
        segment_base: u64,
        key: (u32, u32),
        run: &[IndexEntry],
        out: &mut Vec<u8>,
    ) -> Result<Option<Damage>, StorageError> {
        let first = run[0].position - segment_base;
        let last_end = run[run.len() - 1].end() - segment_base;
        let from = align_down(first);
        let len = (align_up(last_end) - from) as usize;
        let path = self.segment_path(segment_base);
        let keep = out.len();
        let mut attempt = 0;
        loop {
            let m = &self.metrics;
            m.disk_reads.set(m.disk_reads.get() + 1);
            m.disk_read_bytes.set(m.disk_read_bytes.get() + len as u64);
            let bytes = file
                .read_at(from, len)
                .await
                .map_err(|e| io_error("reading", &path, e))?;
            let bytes_start = from + segment_base;
            let Err((intact, reason)) = verify_run(&bytes, bytes_start, key, run, out) else {
                return Ok(None);
            };
            let entry = run[intact];
            // Three reads before it is believed: a transient fault (a bit
            // flipped on the way) must not cost a consumer data.
            if attempt < 2 {
                out.truncate(keep);
                tracing::warn!(path = %path, position = entry.position, reason, "stored batch fails verification; reading it again");
                attempt += 1;
                continue;
            }
            // The entries after the first bad one that are bad too.
            let damaged = 1 + run[intact + 1..]
                .iter()
                .take_while(|e| verify_entry(&bytes, bytes_start, key, e).is_err())
                .count();
            tracing::error!(
                path,
                position = entry.position,
                offset = entry.base_offset,
                damaged,
                reason,
                "corrupt batch on disk: not served"
            );
            return Ok(Some(Damage { intact, damaged }));
        }
    }
}

/// Where a disk run fails verification three times: after `intact` good entries,
/// `damaged` consecutive bad ones.
struct Damage {
    intact: usize,
    damaged: usize,
}

/// Whether entry `e` can join a disk read that starts at `first` and so far
/// ends with `previous`: in the same segment, after a small gap, within the
/// largest read, and not in the cache (which serves it without I/O).
fn joins_disk_run<B: crate::disk::IoBuffer>(
    cache: &crate::commitlog::cache::ReadCache<B>,
    segment_end: u64,
    first: &IndexEntry,
    previous: &IndexEntry,
    e: &IndexEntry,
) -> bool {
    e.end() <= segment_end
        && e.position - previous.end() <= MAX_READ_GAP_BYTES
        && e.end() - first.position <= MAX_READ_BYTES
        && cache.get(e.position, e.length as usize).is_none()
}

/// Checks every entry of `run` in `bytes` (read from global position
/// `bytes_start`) and appends the batches to `out`, stopping at the first
/// entry that fails (its index in `run` and why).
fn verify_run(
    bytes: &[u8],
    bytes_start: u64,
    key: (u32, u32),
    run: &[IndexEntry],
    out: &mut Vec<u8>,
) -> Result<(), (usize, &'static str)> {
    for (i, e) in run.iter().enumerate() {
        let batch = verify_entry(bytes, bytes_start, key, e).map_err(|reason| (i, reason))?;
        out.extend_from_slice(batch);
    }
    Ok(())
}

/// The batch of entry `e`, if it is intact: the CRCs checked at append hold
/// again (pair assertion on read) and it is the entry the index points to.
fn verify_entry<'a>(
    bytes: &'a [u8],
    bytes_start: u64,
    key: (u32, u32),
    e: &IndexEntry,
) -> Result<&'a [u8], &'static str> {
    let at = (e.position - bytes_start) as usize;
    let entry = bytes.get(at..at + e.length as usize).ok_or("short read")?;
    match parse_entry(entry, e.length as u64) {
        Parsed::Entry(h)
            if h.kind == EntryKind::Batch
                && (h.topic_id, h.partition) == key
                && h.length == e.length =>
        {
            let batch = &entry[ENTRY_HEADER_LEN..];
            let header = coremq_wire::BatchHeader::parse(batch).map_err(|_| "short batch")?;
            if header.base_offset != e.base_offset {
                return Err("base offset differs from the index");
            }
            Ok(batch)
        }
        _ => Err("entry fails verification"),
    }
}
