//! Sealed-segment index files: `<dir>/index/<base>.idx`, written once after
//! a segment is sealed and its data synced, so checkpoints only carry the
//! entries of the segment being written.
//!
//! ```text
//!  0  u64  magic "CMQSIDX1"
//!  8  u32  version (1)
//! 12  u32  reserved (0)
//! 16  u64  body length
//! 24  u32  crc32 of the body
//! 28  u32  crc32 of bytes [0, 28)
//! 32       body, then zeros up to a 4 KiB multiple
//! body:
//!   u64 segment base, u64 segment size
//!   u32 partition count, per partition with batches in the segment:
//!     u32 topic_id, u32 partition, u32 entry count, entries as in the checkpoint
//! ```

use crate::codec::{align_up, get_u32, put_i64, put_u32, put_u64, Reader};
use crate::index::IndexEntry;

pub const SEGMENT_INDEX_SUFFIX: &str = ".idx";
const MAGIC: &[u8; 8] = b"CMQSIDX1";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;

pub fn segment_index_file_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_INDEX_SUFFIX}")
}

pub fn parse_segment_index_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_INDEX_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The batches of one sealed segment, grouped by partition, in log order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub base: u64,
    pub size: u64,
    pub partitions: Vec<(u32, u32, Vec<IndexEntry>)>,
}

pub(crate) fn put_entry(b: &mut Vec<u8>, e: &IndexEntry) {
    put_u64(b, e.base_offset);
    put_u32(b, e.record_count);
    put_u32(b, e.length);
    put_u64(b, e.position);
    put_i64(b, e.max_timestamp_ms);
    put_i64(b, e.append_time_ms);
}

pub(crate) fn get_entry(r: &mut Reader<'_>) -> Option<IndexEntry> {
    Some(IndexEntry {
        base_offset: r.u64()?,
        record_count: r.u32()?,
        length: r.u32()?,
        position: r.u64()?,
        max_timestamp_ms: r.i64()?,
        append_time_ms: r.i64()?,
        cumulative_bytes: 0,
    })
}

/// Wraps a body in the shared file framing (magic, version, CRCs, padding).
pub(crate) fn frame(magic: &[u8; 8], version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(align_up((HEADER_LEN + body.len()) as u64) as usize);
    out.extend_from_slice(magic);
    put_u32(&mut out, version);
    put_u32(&mut out, 0);
    put_u64(&mut out, body.len() as u64);
    put_u32(&mut out, crc32fast::hash(body));
    let header_crc = crc32fast::hash(&out);
    put_u32(&mut out, header_crc);
    out.extend_from_slice(body);
    out.resize(align_up(out.len() as u64) as usize, 0);
    out
}

/// The verified body of a framed file.
pub(crate) fn unframe<'a>(magic: &[u8; 8], version: u32, file: &'a [u8]) -> Option<&'a [u8]> {
    if file.len() < HEADER_LEN || &file[..8] != magic {
        return None;
    }
    if crc32fast::hash(&file[..28]) != get_u32(file, 28) {
        return None;
    }
    let mut header = Reader::new(&file[8..28]);
    if header.u32()? != version {
        return None;
    }
    let _reserved = header.u32()?;
    let body_len = usize::try_from(header.u64()?).ok()?;
    let body_crc = header.u32()?;
    let body = file.get(HEADER_LEN..HEADER_LEN.checked_add(body_len)?)?;
    (crc32fast::hash(body) == body_crc).then_some(body)
}

impl SegmentIndex {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_u64(&mut b, self.base);
        put_u64(&mut b, self.size);
        put_u32(&mut b, self.partitions.len() as u32);
        for (topic_id, partition, entries) in &self.partitions {
            put_u32(&mut b, *topic_id);
            put_u32(&mut b, *partition);
            put_u32(&mut b, entries.len() as u32);
            for e in entries {
                put_entry(&mut b, e);
            }
        }
        frame(MAGIC, VERSION, &b)
    }

    /// Decodes and checks that every entry lies in the segment, in order.
    pub fn decode(file: &[u8]) -> Option<SegmentIndex> {
        let mut r = Reader::new(unframe(MAGIC, VERSION, file)?);
        let base = r.u64()?;
        let size = r.u64()?;
        let count = r.u32()? as usize;
        let mut partitions = Vec::with_capacity(count.min(r.remaining()));
        for _ in 0..count {
            let topic_id = r.u32()?;
            let partition = r.u32()?;
            let n = r.u32()? as usize;
            let mut entries: Vec<IndexEntry> = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                let e = get_entry(&mut r)?;
                let in_segment = e.position >= base && e.end() <= base.checked_add(size)?;
                let in_order = entries
                    .last()
                    .is_none_or(|l| l.next_offset() == e.base_offset && l.end() <= e.position);
                if !in_segment || !in_order {
                    return None;
                }
                entries.push(e);
            }
            partitions.push((topic_id, partition, entries));
        }
        r.is_empty().then_some(SegmentIndex {
            base,
            size,
            partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let entry = |base_offset, position| IndexEntry {
            base_offset,
            record_count: 5,
            length: 100,
            position,
            max_timestamp_ms: 7,
            append_time_ms: 8,
            cumulative_bytes: 0,
        };
        SegmentIndex {
            base: 4096,
            size: 8192,
            partitions: vec![
                (1, 0, vec![entry(0, 4200), entry(5, 4400)]),
                (2, 3, vec![entry(9, 4300)]),
            ],
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let bytes = sample().encode();
        assert_eq!(bytes.len() % 4096, 0);
        assert_eq!(SegmentIndex::decode(&bytes), Some(sample()));
        let mut bad = bytes.clone();
        bad[40] ^= 1;
        assert_eq!(SegmentIndex::decode(&bad), None);
        let mut outside = sample();
        outside.partitions[0].1 = 0;
        outside.partitions[0].2[0].position = 100;
        assert_eq!(SegmentIndex::decode(&outside.encode()), None);
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_segment_index_file_name(&segment_index_file_name(4096)),
            Some(4096)
        );
        assert_eq!(
            parse_segment_index_file_name("00000000000000004096.seg"),
            None
        );
    }
}
