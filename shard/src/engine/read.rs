//! Reads by partition and offset: whole batches, from the cache of recent
//! chunks when it has them, otherwise with O_DIRECT reads of the segment
//! files. Bytes read from disk are verified again (entry header CRC and
//! batch CRC) before they are served.

use super::Engine;
use crate::clock::Clock;
use crate::codec::{align_down, align_up};
use crate::commitlog::entry::{parse_entry, EntryKind, Parsed, ENTRY_HEADER_LEN};
use crate::disk::{Disk, DiskFile};
use crate::engine::io_error;
use crate::index::IndexEntry;
use crate::storage::StorageError;
use crate::ReadOutcome;
use coremq_wire::BatchError;
use std::rc::Rc;

/// Entries of one partition further apart than this are read separately.
const MAX_READ_GAP_BYTES: u64 = 256 << 10;
/// Largest single disk read.
const MAX_READ_BYTES: u64 = 8 << 20;

impl<D: Disk, C: Clock> Engine<D, C> {
    /// Whole batches starting with the one holding `offset`, up to
    /// `max_bytes` (at least one batch if any is visible).
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<ReadOutcome, StorageError> {
        let (key, selected, high_watermark, log_start_offset) = {
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
                let mut count = 1;
                while let Some(e) = selected.get(next + count) {
                    let previous = selected[next + count - 1];
                    if e.end() > segment.end()
                        || e.position - previous.end() > MAX_READ_GAP_BYTES
                        || e.end() - first.position > MAX_READ_BYTES
                        || state.cache.get(e.position, e.length as usize).is_some()
                    {
                        break;
                    }
                    count += 1;
                }
                (segment, count)
            };
            let (segment, count) = disk_run;
            let run = &selected[next..next + count];
            self.read_run(&segment.file, segment.base, key, run, &mut out)
                .await?;
            next += count;
        }
        Ok(ReadOutcome {
            batches: out,
            high_watermark,
            log_start_offset,
        })
    }

    /// Reads entries of one segment with one aligned read, verifying each.
    /// A run that fails verification is read once more (a flip on the way
    /// from the device); bytes that fail twice are never served.
    async fn read_run(
        &self,
        file: &Rc<D::File>,
        segment_base: u64,
        key: (u32, u32),
        run: &[IndexEntry],
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let first = run[0].position - segment_base;
        let last_end = run[run.len() - 1].end() - segment_base;
        let from = align_down(first);
        let len = (align_up(last_end) - from) as usize;
        let path = self.segment_path(segment_base);
        let keep = out.len();
        for attempt in 0..2 {
            let bytes = file
                .read_at(from, len)
                .await
                .map_err(|e| io_error("reading", &path, e))?;
            match verify_run(&bytes, from + segment_base, key, run, out) {
                Ok(()) => return Ok(()),
                Err((entry, reason)) => {
                    out.truncate(keep);
                    if attempt == 0 {
                        tracing::warn!(path = %path, position = entry.position, reason, "stored batch fails verification; reading it again");
                    } else {
                        return Err(corrupt(&path, &entry, reason));
                    }
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// Checks every entry of `run` in `bytes` (read from global position
/// `bytes_start`) and appends the batches to `out`.
fn verify_run(
    bytes: &[u8],
    bytes_start: u64,
    key: (u32, u32),
    run: &[IndexEntry],
    out: &mut Vec<u8>,
) -> Result<(), (IndexEntry, &'static str)> {
    for e in run {
        let at = (e.position - bytes_start) as usize;
        let entry = bytes
            .get(at..at + e.length as usize)
            .ok_or((*e, "short read"))?;
        // Pair assertion on read: the CRCs checked at append hold again.
        match parse_entry(entry, e.length as u64) {
            Parsed::Entry(h)
                if h.kind == EntryKind::Batch
                    && (h.topic_id, h.partition) == key
                    && h.length == e.length =>
            {
                let batch = &entry[ENTRY_HEADER_LEN..];
                let header =
                    coremq_wire::BatchHeader::parse(batch).map_err(|_| (*e, "short batch"))?;
                if header.base_offset != e.base_offset {
                    return Err((*e, "base offset differs from the index"));
                }
                out.extend_from_slice(batch);
            }
            _ => return Err((*e, "entry fails verification")),
        }
    }
    Ok(())
}

fn corrupt(path: &str, e: &IndexEntry, reason: &'static str) -> StorageError {
    tracing::error!(
        path,
        position = e.position,
        offset = e.base_offset,
        reason,
        "corrupt batch on disk"
    );
    StorageError::CorruptBatch(BatchError::BadHeader { offset: 0, reason })
}
