//! The log entry: a 32-byte header in front of every record batch and
//! control payload in the shard's shared commit log.
//!
//! ```text
//! offset size field
//!  0      4   magic        0x4C514D43 ("CMQL")
//!  4      4   length       header + payload, bytes
//!  8      1   kind         1 batch, 2 create topic, 3 delete topic, 4 catalog snapshot
//!  9      1   version      2 (1: written before durability claims; still read)
//! 10      2   reserved     0
//! 12      4   topic_id     shard-local topic id (0 for a snapshot)
//! 16      4   partition
//! 20      4   prev_crc     crc of the previous entry in the log (the chain)
//! 24      4   header_crc   crc32 of bytes [0, 24) and [28, 32) + the covered payload prefix
//! 28      4   durable_back v2: the log was durable (synced) up to this entry's
//!                          position minus `durable_back` × 4 KiB when it was
//!                          sealed (u32::MAX: no claim); v1: 0, not covered
//! ```
//!
//! **Durability claim.** An entry only claims what a completed fdatasync had
//! made durable before the entry existed. Recovery uses it to tell a torn
//! tail (bad bytes in what may never have been synced: truncated) from
//! corruption of acknowledged data (bad bytes that a later entry proves were
//! synced: refused, or quarantined on request) — see `recovery/`.
//!
//! The header CRC covers the payload bytes nobody else checks: for a batch
//! its first 24 bytes (broker-assigned base offset and append time, length,
//! batch CRC), whose own CRC covers the rest; for a control entry the whole
//! payload. `prev_crc` chains every entry to the one before it, so recovery
//! accepts only an unbroken continuation of what it has verified: stale
//! bytes behind a truncated tail, or a later segment written after a lost
//! block, do not chain and are ignored.

use crate::codec::{get_u32, set_u32};
use coremq_wire::batch::{verify_stored_batch, BatchHeader, CRC_START};

pub const ENTRY_HEADER_LEN: usize = 32;
pub const ENTRY_MAGIC: u32 = 0x4C51_4D43;
pub const ENTRY_VERSION: u8 = 2;
/// Entries of logs written before durability claims (read, never written).
pub const ENTRY_VERSION_1: u8 = 1;
/// `durable_back` of an entry that makes no durability claim.
pub const NO_DURABLE_CLAIM: u32 = u32::MAX;
/// `prev_crc` of the first entry ever written in a log.
pub const CHAIN_START: u32 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Batch = 1,
    CreateTopic = 2,
    DeleteTopic = 3,
    CatalogSnapshot = 4,
}

impl EntryKind {
    fn from_u8(v: u8) -> Option<EntryKind> {
        match v {
            1 => Some(EntryKind::Batch),
            2 => Some(EntryKind::CreateTopic),
            3 => Some(EntryKind::DeleteTopic),
            4 => Some(EntryKind::CatalogSnapshot),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub length: u32,
    pub kind: EntryKind,
    pub topic_id: u32,
    pub partition: u32,
    pub prev_crc: u32,
    pub crc: u32,
    /// See the module docs; [`NO_DURABLE_CLAIM`] for version 1 entries.
    pub durable_back: u32,
}

impl EntryHeader {
    /// Where the log was known durable when this entry, at `position`, was
    /// sealed; `None` when it makes no claim.
    pub fn durable_claim(&self, position: u64) -> Option<u64> {
        if self.durable_back == NO_DURABLE_CLAIM {
            return None;
        }
        position.checked_sub(u64::from(self.durable_back) * crate::codec::BLOCK_BYTES)
    }
}

/// The `durable_back` an entry at `position` records when the log is
/// durable up to `durable_end`: rounded up to whole blocks, so the claim is
/// never more than what was synced.
pub fn durable_back(position: u64, durable_end: u64) -> u32 {
    debug_assert!(durable_end <= position);
    let blocks = (position - durable_end).div_ceil(crate::codec::BLOCK_BYTES);
    u32::try_from(blocks).unwrap_or(NO_DURABLE_CLAIM)
}

fn covered_len(kind: EntryKind, payload_len: usize) -> usize {
    match kind {
        EntryKind::Batch => CRC_START.min(payload_len),
        _ => payload_len,
    }
}

fn compute_crc(entry: &[u8], kind: EntryKind) -> u32 {
    let payload = &entry[ENTRY_HEADER_LEN..];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&entry[..24]);
    if entry[9] != ENTRY_VERSION_1 {
        hasher.update(&entry[28..32]);
    }
    hasher.update(&payload[..covered_len(kind, payload.len())]);
    hasher.finalize()
}

/// Writes the header into `entry[..32]` (the payload must already be in
/// place, broker fields patched) and returns the entry's CRC, the next
/// entry's `prev_crc`. `durable_back`: see [`durable_back`].
pub fn seal_entry(
    entry: &mut [u8],
    kind: EntryKind,
    topic_id: u32,
    partition: u32,
    prev_crc: u32,
    durable_back: u32,
) -> u32 {
    let length = u32::try_from(entry.len()).expect("entries are far below 4 GiB");
    let h = &mut entry[..ENTRY_HEADER_LEN];
    set_u32(h, 0, ENTRY_MAGIC);
    set_u32(h, 4, length);
    h[8] = kind as u8;
    h[9] = ENTRY_VERSION;
    h[10] = 0;
    h[11] = 0;
    set_u32(h, 12, topic_id);
    set_u32(h, 16, partition);
    set_u32(h, 20, prev_crc);
    set_u32(h, 28, durable_back);
    let crc = compute_crc(entry, kind);
    set_u32(entry, 24, crc);
    crc
}

/// Why a scan stopped at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryEnd {
    /// Not even a header fits before the end of the segment.
    SegmentFull,
    /// All-zero header: never written.
    Zero,
    BadMagic,
    BadLength,
    BadKind,
    BadCrc,
    /// The header is sound but the batch inside fails `verify_stored_batch`.
    BadBatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    Entry(EntryHeader),
    /// The log holds no valid entry here.
    End(EntryEnd),
    /// `bytes` is too short; call again with at least `need` bytes.
    Incomplete {
        need: usize,
    },
}

/// Parses the entry at the start of `bytes`. `room` is how many bytes the
/// segment has from this position to its end. Pure: recovery calls it on
/// windows read from disk, readers on single entries.
pub fn parse_entry(bytes: &[u8], room: u64) -> Parsed {
    if room < ENTRY_HEADER_LEN as u64 {
        return Parsed::End(EntryEnd::SegmentFull);
    }
    if bytes.len() < ENTRY_HEADER_LEN {
        return Parsed::Incomplete {
            need: ENTRY_HEADER_LEN,
        };
    }
    let h = &bytes[..ENTRY_HEADER_LEN];
    let magic = get_u32(h, 0);
    if magic != ENTRY_MAGIC {
        let end = if h.iter().all(|b| *b == 0) {
            EntryEnd::Zero
        } else {
            EntryEnd::BadMagic
        };
        return Parsed::End(end);
    }
    let length = get_u32(h, 4);
    if (length as usize) < ENTRY_HEADER_LEN || length as u64 > room {
        return Parsed::End(EntryEnd::BadLength);
    }
    let Some(kind) = EntryKind::from_u8(h[8]) else {
        return Parsed::End(EntryEnd::BadKind);
    };
    let version = h[9];
    let v1 = version == ENTRY_VERSION_1;
    if !(v1 || version == ENTRY_VERSION) || h[10] != 0 || h[11] != 0 || (v1 && get_u32(h, 28) != 0)
    {
        return Parsed::End(EntryEnd::BadKind);
    }
    if bytes.len() < length as usize {
        return Parsed::Incomplete {
            need: length as usize,
        };
    }
    let entry = &bytes[..length as usize];
    let crc = get_u32(h, 24);
    if compute_crc(entry, kind) != crc {
        return Parsed::End(EntryEnd::BadCrc);
    }
    if kind == EntryKind::Batch && verify_stored_batch(&entry[ENTRY_HEADER_LEN..]).is_err() {
        return Parsed::End(EntryEnd::BadBatch);
    }
    Parsed::Entry(EntryHeader {
        length,
        kind,
        topic_id: get_u32(h, 12),
        partition: get_u32(h, 16),
        prev_crc: get_u32(h, 20),
        crc,
        durable_back: if v1 { NO_DURABLE_CLAIM } else { get_u32(h, 28) },
    })
}

/// Every valid, chained entry of a segment image from its start, as
/// recovery walks it (stepping over a flush's zero padding to the next block
/// boundary): `(file offset, header)`. For tools and tests that look at
/// segment files; recovery itself reads through windows.
pub fn walk_entries(segment: &[u8]) -> Vec<(usize, EntryHeader)> {
    let block = crate::codec::BLOCK_BYTES as usize;
    let mut at = 0usize;
    let mut chain: Option<u32> = None;
    let mut out = Vec::new();
    let parse = |at: usize, chain: Option<u32>| match parse_entry(
        &segment[at..],
        (segment.len() - at) as u64,
    ) {
        Parsed::Entry(h) if chain.is_none_or(|c| c == h.prev_crc) => Some(h),
        _ => None,
    };
    while at < segment.len() {
        let next_block = at.next_multiple_of(block);
        let found = match parse(at, chain) {
            Some(h) => Some((at, h)),
            None if chain.is_some() && next_block != at && next_block < segment.len() => {
                parse(next_block, chain).map(|h| (next_block, h))
            }
            None => None,
        };
        let Some((found, h)) = found else { break };
        out.push((found, h));
        chain = Some(h.crc);
        at = found + h.length as usize;
    }
    out
}

/// The batch header of a batch entry that [`parse_entry`] accepted.
pub fn batch_header(entry: &[u8]) -> BatchHeader {
    BatchHeader::parse(&entry[ENTRY_HEADER_LEN..]).expect("parse_entry checked the batch")
}

#[cfg(test)]
mod tests {
    use super::*;
    use coremq_wire::batch::set_broker_fields;
    use coremq_wire::BatchBuilder;

    fn batch_entry(prev: u32) -> (Vec<u8>, u32) {
        let mut b = BatchBuilder::with_capacity(256);
        b.push(5, Some(b"k"), b"value", &[]).unwrap();
        let batch = b.finish();
        let mut entry = vec![0u8; ENTRY_HEADER_LEN + batch.len()];
        entry[ENTRY_HEADER_LEN..].copy_from_slice(&batch);
        set_broker_fields(&mut entry[ENTRY_HEADER_LEN..], 42, 1000);
        let crc = seal_entry(&mut entry, EntryKind::Batch, 3, 1, prev, 5);
        (entry, crc)
    }

    #[test]
    fn round_trip_and_chain() {
        let (entry, crc) = batch_entry(77);
        match parse_entry(&entry, 1 << 20) {
            Parsed::Entry(h) => {
                assert_eq!(h.kind, EntryKind::Batch);
                assert_eq!(
                    (h.topic_id, h.partition, h.prev_crc, h.crc),
                    (3, 1, 77, crc)
                );
                assert_eq!(h.length as usize, entry.len());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(batch_header(&entry).base_offset, 42);
    }

    #[test]
    fn durability_claims_round_down_and_version_1_is_read() {
        assert_eq!(durable_back(8192, 8192), 0);
        assert_eq!(durable_back(8192, 8191), 1);
        assert_eq!(durable_back(8192, 0), 2);
        assert_eq!(durable_back(u64::MAX, 0), NO_DURABLE_CLAIM);
        let (entry, _) = batch_entry(0);
        let Parsed::Entry(h) = parse_entry(&entry, 1 << 20) else {
            panic!("valid entry")
        };
        assert_eq!(h.durable_claim(1 << 20), Some((1 << 20) - 5 * 4096));
        // A version 1 entry: reserved 0 at 28, not covered by the crc.
        let mut old = entry.clone();
        old[9] = ENTRY_VERSION_1;
        set_u32(&mut old, 28, 0);
        let crc = compute_crc(&old, EntryKind::Batch);
        set_u32(&mut old, 24, crc);
        let Parsed::Entry(h) = parse_entry(&old, 1 << 20) else {
            panic!("version 1 entry")
        };
        assert_eq!(h.durable_claim(1 << 20), None);
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let (entry, _) = batch_entry(0);
        for bit in 0..entry.len() * 8 {
            let mut bad = entry.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(parse_entry(&bad, 1 << 20), Parsed::Entry(_)),
                "bit {bit} flipped unnoticed"
            );
        }
    }

    #[test]
    fn ends_and_incomplete() {
        let (entry, _) = batch_entry(0);
        assert_eq!(
            parse_entry(&[0u8; 64], 1 << 20),
            Parsed::End(EntryEnd::Zero)
        );
        assert_eq!(parse_entry(&entry, 16), Parsed::End(EntryEnd::SegmentFull));
        assert_eq!(
            parse_entry(&entry, entry.len() as u64 - 1),
            Parsed::End(EntryEnd::BadLength)
        );
        assert_eq!(
            parse_entry(&entry[..40], 1 << 20),
            Parsed::Incomplete { need: entry.len() }
        );
        assert_eq!(
            parse_entry(&entry[..10], 1 << 20),
            Parsed::Incomplete { need: 32 }
        );
    }
}
