//! Telling a torn tail from damaged acknowledged data, and quarantining the
//! damage when the operator asks for it.
//!
//! The scan stops at the first entry that is not a valid continuation of
//! the log, at position `P`. Two very different things look alike there:
//!
//! - **A torn tail**: the last writes before a crash, never synced, so never
//!   acknowledged under `always`. Truncating at `P` loses nothing promised.
//! - **Corruption**: bytes that a completed fdatasync had made durable, then
//!   damaged (media, a stray write). Everything after them was acknowledged;
//!   truncating would throw it away and hand its offsets out again.
//!
//! The difference is *proof that `P` was synced*: every entry records how far
//! the log was durable when it was sealed (`entry::durable_back`). So the
//! damage is corruption iff a *live* entry after `P` — one written after the
//! damaged one in this life of the log, not a stale entry from a reused
//! segment's previous life — claims durability beyond `P`.
//!
//! Where to look: live data follows the damaged entry directly, so it starts
//! within one maximal entry after `P`, or at the start of the next segment
//! when the damaged entry was the segment's last. The first valid entry found
//! there is followed along its chain. A batch whose offsets a partition has
//! already passed (or of an unknown topic), or appended before the newest
//! batch already recovered from the same segment, is stale, and ends the
//! search: nothing live lies beyond stale bytes. (A reused segment's old
//! entries were all written before it was released, so before anything
//! of its new life.)

use super::scan::{entry_at, entry_or_after_padding};
use super::Tables;
use crate::catalog::Snapshot;
use crate::codec::{align_down, align_up};
use crate::commitlog::entry::{batch_header, EntryHeader, EntryKind, Parsed, ENTRY_HEADER_LEN};
use crate::commitlog::segments::Segment;
use crate::disk::{Disk, DiskFile, IoBuffer};
use crate::engine::io_error;
use crate::storage::StorageError;
use std::path::{Path, PathBuf};

/// Bytes of the magic as they lie on disk.
const MAGIC_BYTES: [u8; 4] = crate::commitlog::entry::ENTRY_MAGIC.to_le_bytes();
/// How many chained entries after a candidate are examined for a claim.
const FOLLOW_ENTRIES_MAX: usize = 4096;

/// Where the log goes on after damage that later data proves was synced.
#[derive(Clone, Copy, Debug)]
pub(super) struct Resume {
    /// Index of the segment (in the recovery's list) holding `position`.
    pub segment: usize,
    pub position: u64,
}

/// Is the entry live data of this log (`Some(true)`), stale (`Some(false)`),
/// or undecided (control entries that prove nothing either way)?
fn is_live(header: &EntryHeader, entry: &[u8], segment_base: u64, tables: &Tables) -> Option<bool> {
    match header.kind {
        EntryKind::Batch => {
            let batch = batch_header(entry);
            let continues = tables
                .partitions
                .get(&(header.topic_id, header.partition))
                .is_some_and(|p| batch.base_offset >= p.next_offset);
            let not_older = match tables.newest_batch {
                Some((position, time_ms)) if position >= segment_base => {
                    batch.append_time_ms >= time_ms
                }
                _ => true,
            };
            Some(continues && not_older)
        }
        EntryKind::CatalogSnapshot => {
            let snapshot = Snapshot::decode(&entry[ENTRY_HEADER_LEN..])?;
            let current = tables.catalog.next_topic_id();
            let mut ahead = snapshot.next_topic_id > current;
            for (topic_id, partition, next) in snapshot.partitions {
                if let Some(p) = tables.partitions.get(&(topic_id, partition)) {
                    if next < p.next_offset {
                        return Some(false);
                    }
                    ahead |= next > p.next_offset;
                }
            }
            Some(snapshot.next_topic_id >= current && ahead)
        }
        EntryKind::CreateTopic | EntryKind::DeleteTopic => None,
    }
}

/// Follows the chain from the valid entry at file offset `at`: `Some(true)`
/// if a live entry on it claims durability beyond `damaged` (proof),
/// `Some(false)` if it runs into stale data, `None` if it proves nothing.
async fn chain_proves<F: DiskFile>(
    segment: &Segment<F>,
    mut at: u64,
    damaged: u64,
    tables: &Tables,
) -> Result<Option<bool>, StorageError> {
    let mut window = None;
    let mut chain = None;
    for _ in 0..FOLLOW_ENTRIES_MAX {
        // The next entry, or the one after a flush's padding: the scan's
        // own stepping (a flush ends padded to its block).
        let (found_at, parsed) = entry_or_after_padding(segment, &mut window, at, chain).await?;
        let header = match parsed {
            Parsed::Entry(h) if chain.is_none_or(|c| c == h.prev_crc) => h,
            _ => return Ok(None),
        };
        at = found_at;
        let entry = window
            .as_ref()
            .expect("entry_at filled it")
            .entry(at, &header);
        let position = segment.base + at;
        match is_live(&header, entry, segment.base, tables) {
            Some(false) => return Ok(Some(false)),
            Some(true) if header.durable_claim(position).is_some_and(|d| d > damaged) => {
                return Ok(Some(true))
            }
            _ => {}
        }
        chain = Some(header.crc);
        at += u64::from(header.length);
    }
    Ok(None)
}

/// Looks for proof that the bad bytes at `damaged` (in `segments[index]`)
/// had been synced; returns where the log resumes after them.
pub(super) async fn find_resume<F: DiskFile>(
    segments: &[Segment<F>],
    index: usize,
    damaged: u64,
    tables: &Tables,
    max_entry_bytes: u64,
) -> Result<Option<Resume>, StorageError> {
    let segment = &segments[index];
    let search_end = (damaged + max_entry_bytes + ENTRY_HEADER_LEN as u64).min(segment.end());
    let mut at = damaged - segment.base + 1;
    let mut window: Option<super::scan::Window> = None;
    while segment.base + at + ENTRY_HEADER_LEN as u64 <= search_end {
        let covered = window
            .as_ref()
            .is_some_and(|w| w.covers(at, ENTRY_HEADER_LEN as u64));
        if !covered {
            window = Some(super::scan::fill(segment, at, ENTRY_HEADER_LEN as u64).await?);
        }
        let w = window.as_ref().expect("filled above");
        let from = (at - w.start) as usize;
        let limit = ((search_end - segment.base - w.start) as usize).min(w.bytes.len());
        let Some(found) = find_magic(&w.bytes[from.min(limit)..limit]) else {
            // Next window; keep 3 bytes of overlap for a magic across windows.
            let next = (w.start + limit as u64).saturating_sub(3).max(at + 1);
            if next <= at {
                break;
            }
            at = next;
            window = None;
            continue;
        };
        at += found as u64;
        let parsed = entry_at(segment, &mut window, at).await?;
        if let Parsed::Entry(_) = parsed {
            match chain_proves(segment, at, damaged, tables).await? {
                Some(true) => {
                    return Ok(Some(Resume {
                        segment: index,
                        position: segment.base + at,
                    }))
                }
                Some(false) => return Ok(None),
                None => {}
            }
        }
        at += 1;
    }
    // The damaged entry may have been the segment's last: live data then
    // starts the next segment.
    if search_end == segment.end() {
        if let Some(next) = segments.get(index + 1) {
            if chain_proves(next, 0, damaged, tables).await? == Some(true) {
                return Ok(Some(Resume {
                    segment: index + 1,
                    position: next.base,
                }));
            }
        }
    }
    Ok(None)
}

fn find_magic(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(MAGIC_BYTES.len())
        .position(|w| w == MAGIC_BYTES)
}

/// A damaged range `[from, to)` copied aside by a repair. Its file in
/// `quarantine/` is named `<from>-<to>.damaged` (positions zero-padded to
/// 20 digits) and holds the blocks `[align_down(from), align_up(to))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Quarantined {
    pub from: u64,
    pub to: u64,
}

pub(super) fn quarantine_file_name(q: Quarantined) -> String {
    format!("{:020}-{:020}.damaged", q.from, q.to)
}

fn parse_quarantine_file_name(name: &str) -> Option<Quarantined> {
    let (from, to) = name.strip_suffix(".damaged")?.split_once('-')?;
    let q = Quarantined {
        from: from.parse().ok()?,
        to: to.parse().ok()?,
    };
    (q.from < q.to).then_some(q)
}

/// The ranges earlier repairs quarantined.
pub(super) async fn load_quarantined<D: Disk>(
    disk: &D,
    dir: &Path,
) -> Result<Vec<Quarantined>, StorageError> {
    let names = match disk.list_dir(dir).await {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", &dir.display().to_string(), e)),
    };
    let mut ranges: Vec<Quarantined> = names
        .iter()
        .filter_map(|n| parse_quarantine_file_name(n))
        .collect();
    ranges.sort_unstable_by_key(|q| q.from);
    Ok(ranges)
}

/// Copies the damaged range aside (never deletes it) and records it, so
/// that every later start skips it as this one does.
pub(super) async fn quarantine<D: Disk>(
    disk: &D,
    dir: &Path,
    segment: &Segment<D::File>,
    range: Quarantined,
) -> Result<PathBuf, StorageError> {
    let shown = dir.display().to_string();
    disk.create_dir_all(dir)
        .await
        .map_err(|e| io_error("creating", &shown, e))?;
    let path = dir.join(quarantine_file_name(range));
    let shown_file = path.display().to_string();
    let file = disk
        .create(&path)
        .await
        .map_err(|e| io_error("creating", &shown_file, e))?;
    let start = align_down(range.from).max(segment.base);
    let end = align_up(range.to).min(segment.end());
    let mut at = start;
    let result = async {
        while at < end {
            let len = (end - at).min(1 << 20);
            let bytes = segment
                .file
                .read_at(at - segment.base, len as usize)
                .await?;
            let mut buffer = file.alloc_buffer(align_up(len) as usize);
            let n = bytes.len().min(len as usize);
            buffer.as_bytes_mut()[..n].copy_from_slice(&bytes[..n]);
            file.write_at(std::rc::Rc::new(buffer), at - start).await?;
            at += len;
        }
        file.sync().await
    }
    .await;
    let closed = file.close().await;
    result
        .and(closed)
        .map_err(|e| io_error("writing", &shown_file, e))?;
    disk.sync_dir(dir)
        .await
        .map_err(|e| io_error("syncing directory", &shown, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_names_round_trip() {
        let q = Quarantined { from: 7, to: 4096 };
        assert_eq!(
            parse_quarantine_file_name(&quarantine_file_name(q)),
            Some(q)
        );
        assert_eq!(parse_quarantine_file_name("x.damaged"), None);
        assert_eq!(
            parse_quarantine_file_name("00000000000000000009-00000000000000000009.damaged"),
            None
        );
    }

    #[test]
    fn magic_is_found_anywhere() {
        let mut bytes = vec![0u8; 100];
        bytes[37..41].copy_from_slice(&MAGIC_BYTES);
        assert_eq!(find_magic(&bytes), Some(37));
        assert_eq!(find_magic(&bytes[..40]), None);
    }
}
