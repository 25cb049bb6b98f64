//! Reading one segment forward, entry by entry, through large aligned reads.

use super::Tables;
use crate::codec::{align_down, align_up, is_aligned};
use crate::commitlog::entry::{
    batch_header, parse_entry, EntryEnd, EntryHeader, EntryKind, Parsed, ENTRY_HEADER_LEN,
};
use crate::commitlog::segments::{segment_file_name, Segment};
use crate::disk::DiskFile;
use crate::engine::io_error;
use crate::index::IndexEntry;
use crate::storage::StorageError;
use crate::StorageConfig;

const WINDOW_BYTES: u64 = 1 << 20;

pub(super) enum ScanEnd {
    /// Unwritten space or the end of the segment.
    Clean,
    /// Something that is not a valid continuation of the log.
    Torn(&'static str),
}

pub(super) struct ScanOutcome {
    pub end: u64,
    pub reason: ScanEnd,
}

/// A window of the segment file, starting at a block boundary.
pub(super) struct Window {
    pub start: u64,
    pub bytes: Vec<u8>,
}

impl Window {
    pub(super) fn covers(&self, at: u64, len: u64) -> bool {
        at >= self.start && at + len <= self.start + self.bytes.len() as u64
    }

    /// The bytes of the entry at file offset `at` that [`entry_at`] parsed
    /// through this window (it fills the window to cover the whole entry).
    pub(super) fn entry(&self, at: u64, header: &EntryHeader) -> &[u8] {
        let from = (at - self.start) as usize;
        &self.bytes[from..from + header.length as usize]
    }
}

pub(super) async fn fill<F: DiskFile>(
    segment: &Segment<F>,
    at: u64,
    need: u64,
) -> Result<Window, StorageError> {
    let start = align_down(at);
    let want = align_up(at - start + need).max(WINDOW_BYTES);
    let len = want.min(segment.size - start);
    let bytes = segment
        .file
        .read_at(start, len as usize)
        .await
        .map_err(|e| io_error("reading", &segment_file_name(segment.base), e))?;
    Ok(Window {
        start,
        bytes: bytes.to_vec(),
    })
}

/// The entry at file offset `at`, read through `window`.
pub(super) async fn entry_at<F: DiskFile>(
    segment: &Segment<F>,
    window: &mut Option<Window>,
    at: u64,
) -> Result<Parsed, StorageError> {
    let room = segment.size - at;
    if room < ENTRY_HEADER_LEN as u64 {
        return Ok(Parsed::End(EntryEnd::SegmentFull));
    }
    let mut need = (ENTRY_HEADER_LEN as u64).min(room);
    loop {
        if !window.as_ref().is_some_and(|w| w.covers(at, need)) {
            let w = fill(segment, at, need).await?;
            if !w.covers(at, need) {
                return Ok(Parsed::End(EntryEnd::BadLength)); // The file is shorter than its size.
            }
            *window = Some(w);
        }
        let w = window.as_ref().expect("filled above");
        let from = (at - w.start) as usize;
        match parse_entry(&w.bytes[from..], room) {
            Parsed::Incomplete { need: more } if (more as u64) > need => need = more as u64,
            Parsed::Incomplete { .. } => return Ok(Parsed::End(EntryEnd::BadLength)),
            parsed => return Ok(parsed),
        }
    }
}

/// How often an entry that fails is read again before it is believed.
const READS_BEFORE_BELIEVING: usize = 5;

fn is_bad(parsed: &Parsed) -> bool {
    matches!(parsed, Parsed::End(end) if !matches!(end, EntryEnd::SegmentFull | EntryEnd::Zero))
}

/// [`entry_at`], read again (fresh from the disk) while it fails: a
/// transient read error, a bit flipped on the way, must not end the log.
pub(super) async fn entry_at_believed<F: DiskFile>(
    segment: &Segment<F>,
    window: &mut Option<Window>,
    at: u64,
) -> Result<Parsed, StorageError> {
    let mut parsed = entry_at(segment, window, at).await?;
    for _ in 1..READS_BEFORE_BELIEVING {
        if !is_bad(&parsed) {
            break;
        }
        *window = None;
        parsed = entry_at(segment, window, at).await?;
    }
    Ok(parsed)
}

/// The entry at file offset `at` or, when no entry there chains to `chain`,
/// the one at the next block boundary if it chains: a flush ends zero
/// padded to a block and the next flush starts at the boundary
/// (`commitlog/writer.rs`), and a crash may leave garbage of an unsynced
/// write in the padding. Only a chained entry continues the log there
/// (stale entries of a reused segment never chain). Returns the offset of
/// what it parsed: `at` unless it stepped over padding.
pub(super) async fn entry_or_after_padding<F: DiskFile>(
    segment: &Segment<F>,
    window: &mut Option<Window>,
    at: u64,
    chain: Option<u32>,
) -> Result<(u64, Parsed), StorageError> {
    let chains =
        |p: &Parsed| matches!(p, Parsed::Entry(h) if chain.is_some_and(|c| c == h.prev_crc));
    let parsed = entry_at_believed(segment, window, at).await?;
    let next = align_up(at);
    if chains(&parsed) || chain.is_none() || is_aligned(at) || next >= segment.size {
        return Ok((at, parsed));
    }
    // Zero padding shorter than an entry header ends where the next
    // flush's first entry starts, so the header parse at `at` straddles
    // the boundary and cannot tell padding from damage: the zeros can.
    let padding = {
        if !window.as_ref().is_some_and(|w| w.covers(at, next - at)) {
            *window = Some(fill(segment, at, next - at).await?);
        }
        let w = window.as_ref().expect("filled above");
        let from = (at - w.start) as usize;
        w.bytes[from..from + (next - at) as usize]
            .iter()
            .all(|b| *b == 0)
    };
    let after = entry_at_believed(segment, window, next).await?;
    // A chained entry continues the log; bad bytes where the next flush
    // would start end it *there*, so recovery looks at them (damage, or a
    // torn tail: recovery/damage.rs) instead of calling this a clean end,
    // and judges them from their own start, not from the padding.
    if padding || chains(&after) || (is_bad(&after) && !is_bad(&parsed)) {
        return Ok((next, after));
    }
    // The caller reads the entry at `at` through the window again (a fresh
    // read: believed only after re-reads, like the first).
    let parsed = entry_at_believed(segment, window, at).await?;
    Ok((at, parsed))
}

/// Applies every valid, chained entry from global position `from` on.
pub(super) async fn scan_segment<F: DiskFile>(
    segment: &Segment<F>,
    from: u64,
    chain: &mut Option<u32>,
    tables: &mut Tables,
    config: &StorageConfig,
) -> Result<ScanOutcome, StorageError> {
    let mut window = None;
    let mut position = from;
    loop {
        let (at, parsed) =
            entry_or_after_padding(segment, &mut window, position - segment.base, *chain).await?;
        position = segment.base + at;
        let header = match parsed {
            Parsed::Entry(header) => header,
            Parsed::End(EntryEnd::SegmentFull | EntryEnd::Zero) => {
                return Ok(ScanOutcome {
                    end: position,
                    reason: ScanEnd::Clean,
                })
            }
            Parsed::End(other) => {
                return Ok(ScanOutcome {
                    end: position,
                    reason: ScanEnd::Torn(end_reason(other)),
                })
            }
            Parsed::Incomplete { .. } => unreachable!("entry_at resolves incomplete reads"),
        };
        if chain.is_some_and(|c| c != header.prev_crc) {
            return Ok(ScanOutcome {
                end: position,
                reason: ScanEnd::Torn("entry does not chain to its predecessor"),
            });
        }
        let entry = window
            .as_ref()
            .expect("entry_at filled it")
            .entry(at, &header);
        if let Err(reason) = tables.apply(&header, entry, position, config) {
            tracing::error!(
                segment = segment.base,
                position,
                reason,
                "valid entry breaks the log's invariants; the log ends before it"
            );
            return Ok(ScanOutcome {
                end: position,
                reason: ScanEnd::Torn(reason),
            });
        }
        *chain = Some(header.crc);
        position += header.length as u64;
    }
}

/// Rebuilds the index of a sealed segment the checkpoint vouches for (its
/// index file is missing or bad): every batch entry, grouped by partition.
/// The chain is checked inside the segment; where the segment starts, the
/// checkpoint already said the log continues.
/// Ranges an earlier repair quarantined are skipped (the log resumes after
/// them with a new chain).
pub(super) async fn index_segment<F: DiskFile>(
    segment: &Segment<F>,
    quarantined: &[super::damage::Quarantined],
) -> Result<Vec<(u32, u32, Vec<IndexEntry>)>, StorageError> {
    let mut window = None;
    let mut position = segment.base;
    let mut chain: Option<u32> = None;
    let mut groups: Vec<(u32, u32, Vec<IndexEntry>)> = Vec::new();
    loop {
        let (at, parsed) =
            entry_or_after_padding(segment, &mut window, position - segment.base, chain).await?;
        position = segment.base + at;
        let header = match parsed {
            Parsed::Entry(header) if chain.is_none_or(|c| c == header.prev_crc) => header,
            _ => match quarantined.iter().find(|q| q.from == position) {
                Some(q) if q.to < segment.end() => {
                    position = q.to;
                    chain = None;
                    continue;
                }
                _ => break,
            },
        };
        if header.kind == EntryKind::Batch {
            let batch = batch_header(
                window
                    .as_ref()
                    .expect("entry_at filled it")
                    .entry(at, &header),
            );
            let key = (header.topic_id, header.partition);
            let group = match groups.iter().position(|g| (g.0, g.1) == key) {
                Some(i) => &mut groups[i].2,
                None => {
                    groups.push((key.0, key.1, Vec::new()));
                    &mut groups.last_mut().expect("just pushed").2
                }
            };
            let running = group.last().map_or(batch.max_timestamp_ms, |l| {
                l.max_timestamp_ms.max(batch.max_timestamp_ms)
            });
            group.push(IndexEntry {
                base_offset: batch.base_offset,
                record_count: batch.record_count,
                length: header.length,
                position,
                max_timestamp_ms: running,
                append_time_ms: batch.append_time_ms,
                cumulative_bytes: 0,
            });
        }
        chain = Some(header.crc);
        position += header.length as u64;
    }
    Ok(groups)
}

/// Does the segment's first entry continue the chain?
pub(super) async fn first_entry_chains<F: DiskFile>(
    segment: &Segment<F>,
    chain: Option<u32>,
) -> Result<bool, StorageError> {
    let mut window = None;
    Ok(match entry_at_believed(segment, &mut window, 0).await? {
        Parsed::Entry(header) => chain.is_none_or(|c| c == header.prev_crc),
        _ => false,
    })
}

fn end_reason(end: EntryEnd) -> &'static str {
    match end {
        EntryEnd::SegmentFull | EntryEnd::Zero => "end of data",
        EntryEnd::BadMagic => "bad entry magic",
        EntryEnd::BadLength => "entry length past the segment or file",
        EntryEnd::BadKind => "bad entry kind or version",
        EntryEnd::BadCrc => "entry header crc mismatch",
        EntryEnd::BadBatch => "batch fails verification",
    }
}
