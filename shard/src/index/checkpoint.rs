//! Index checkpoints: `<dir>/index/checkpoint`, written as
//! `checkpoint.tmp` + fdatasync + rename + directory sync, so a crash leaves
//! either the old or the new one.
//!
//! ```text
//!  0  u64  magic "CMQCKPT1"
//!  8  u32  version (1)
//! 12  u32  reserved (0)
//! 16  u64  body length
//! 24  u32  crc32 of the body
//! 28  u32  crc32 of bytes [0, 28)
//! 32       body, then zeros up to a 4 KiB multiple (O_DIRECT)
//! body:
//!   u64 position            log position the checkpoint covers (synced data)
//!   u32 chain               crc of the last entry before `position`
//!   u64 first_segment_base  segments ending at or before it are garbage
//!   u32 next_topic_id
//!   u32 topic count, topics (catalog::encode_topic)
//!   u32 partition count, per partition:
//!     u32 topic_id, u32 partition, u64 log_start_offset, u64 next_offset,
//!     u32 entry count, entries: u64 base_offset, u32 record_count,
//!     u32 length, u64 position, i64 running max timestamp, i64 append time
//! ```

use crate::catalog::{decode_topic, encode_topic, TopicRecord};
use crate::codec::{align_up, get_u32, put_i64, put_u32, put_u64, Reader};
use crate::index::IndexEntry;

pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";
const MAGIC: &[u8; 8] = b"CMQCKPT1";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionCheckpoint {
    pub topic_id: u32,
    pub partition: u32,
    pub log_start_offset: u64,
    pub next_offset: u64,
    pub entries: Vec<IndexEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: u64,
    pub chain: u32,
    pub first_segment_base: u64,
    pub next_topic_id: u32,
    pub topics: Vec<TopicRecord>,
    pub partitions: Vec<PartitionCheckpoint>,
}

/// Builds a checkpoint image without first copying the index.
pub struct CheckpointEncoder {
    body: Vec<u8>,
}

impl CheckpointEncoder {
    pub fn new(position: u64, chain: u32, first_segment_base: u64, next_topic_id: u32) -> Self {
        let mut body = Vec::with_capacity(1 << 16);
        put_u64(&mut body, position);
        put_u32(&mut body, chain);
        put_u64(&mut body, first_segment_base);
        put_u32(&mut body, next_topic_id);
        CheckpointEncoder { body }
    }

    pub fn topics<'a>(&mut self, topics: impl ExactSizeIterator<Item = &'a TopicRecord>) {
        put_u32(&mut self.body, topics.len() as u32);
        for topic in topics {
            encode_topic(&mut self.body, topic);
        }
    }

    pub fn partition_count(&mut self, count: usize) {
        put_u32(&mut self.body, count as u32);
    }

    pub fn partition<'a>(
        &mut self,
        topic_id: u32,
        partition: u32,
        log_start_offset: u64,
        next_offset: u64,
        entries: impl ExactSizeIterator<Item = &'a IndexEntry>,
    ) {
        let b = &mut self.body;
        put_u32(b, topic_id);
        put_u32(b, partition);
        put_u64(b, log_start_offset);
        put_u64(b, next_offset);
        put_u32(b, entries.len() as u32);
        for e in entries {
            put_u64(b, e.base_offset);
            put_u32(b, e.record_count);
            put_u32(b, e.length);
            put_u64(b, e.position);
            put_i64(b, e.max_timestamp_ms);
            put_i64(b, e.append_time_ms);
        }
    }

    /// The file image, padded to a block multiple.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(align_up((HEADER_LEN + self.body.len()) as u64) as usize);
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, VERSION);
        put_u32(&mut out, 0);
        put_u64(&mut out, self.body.len() as u64);
        put_u32(&mut out, crc32fast::hash(&self.body));
        let header_crc = crc32fast::hash(&out);
        put_u32(&mut out, header_crc);
        out.extend_from_slice(&self.body);
        out.resize(align_up(out.len() as u64) as usize, 0);
        out
    }
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = CheckpointEncoder::new(
            self.position,
            self.chain,
            self.first_segment_base,
            self.next_topic_id,
        );
        e.topics(self.topics.iter());
        e.partition_count(self.partitions.len());
        for p in &self.partitions {
            e.partition(
                p.topic_id,
                p.partition,
                p.log_start_offset,
                p.next_offset,
                p.entries.iter(),
            );
        }
        e.finish()
    }

    /// Decodes a checkpoint file; `None` if anything is off.
    pub fn decode(file: &[u8]) -> Option<Checkpoint> {
        if file.len() < HEADER_LEN || &file[..8] != MAGIC {
            return None;
        }
        if crc32fast::hash(&file[..28]) != get_u32(file, 28) {
            return None;
        }
        let mut header = Reader::new(&file[8..28]);
        let version = header.u32()?;
        let _reserved = header.u32()?;
        let body_len = usize::try_from(header.u64()?).ok()?;
        let body_crc = header.u32()?;
        if version != VERSION {
            return None;
        }
        let body = file.get(HEADER_LEN..HEADER_LEN.checked_add(body_len)?)?;
        if crc32fast::hash(body) != body_crc {
            return None;
        }
        let mut r = Reader::new(body);
        let position = r.u64()?;
        let chain = r.u32()?;
        let first_segment_base = r.u64()?;
        let next_topic_id = r.u32()?;
        let count = r.u32()? as usize;
        let mut topics = Vec::with_capacity(count.min(r.remaining()));
        for _ in 0..count {
            topics.push(decode_topic(&mut r)?);
        }
        let count = r.u32()? as usize;
        let mut partitions = Vec::with_capacity(count.min(r.remaining()));
        for _ in 0..count {
            let topic_id = r.u32()?;
            let partition = r.u32()?;
            let log_start_offset = r.u64()?;
            let next_offset = r.u64()?;
            let n = r.u32()? as usize;
            let mut entries = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                entries.push(IndexEntry {
                    base_offset: r.u64()?,
                    record_count: r.u32()?,
                    length: r.u32()?,
                    position: r.u64()?,
                    max_timestamp_ms: r.i64()?,
                    append_time_ms: r.i64()?,
                    cumulative_bytes: 0,
                });
            }
            partitions.push(PartitionCheckpoint {
                topic_id,
                partition,
                log_start_offset,
                next_offset,
                entries,
            });
        }
        r.is_empty().then_some(Checkpoint {
            position,
            chain,
            first_segment_base,
            next_topic_id,
            topics,
            partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, TopicConfig};

    fn sample() -> Checkpoint {
        Checkpoint {
            position: 123_456,
            chain: 0xDEAD_BEEF,
            first_segment_base: 65_536,
            next_topic_id: 3,
            topics: vec![TopicRecord {
                id: 2,
                config: TopicConfig {
                    name: "orders".into(),
                    partitions: 4,
                    durability: Durability::Always,
                    retention_ms: None,
                    retention_bytes: Some(1 << 30),
                },
            }],
            partitions: vec![PartitionCheckpoint {
                topic_id: 2,
                partition: 1,
                log_start_offset: 10,
                next_offset: 30,
                entries: vec![IndexEntry {
                    base_offset: 10,
                    record_count: 20,
                    length: 1000,
                    position: 70_000,
                    max_timestamp_ms: 5,
                    append_time_ms: 6,
                    cumulative_bytes: 0,
                }],
            }],
        }
    }

    #[test]
    fn round_trip_is_block_aligned() {
        let bytes = sample().encode();
        assert_eq!(bytes.len() % 4096, 0);
        assert_eq!(Checkpoint::decode(&bytes), Some(sample()));
    }

    #[test]
    fn any_bit_flip_is_rejected() {
        let bytes = sample().encode();
        let used = 32 + get_u32(&bytes, 16) as usize;
        for bit in 0..used * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Checkpoint::decode(&bad), None, "bit {bit}");
        }
    }
}
