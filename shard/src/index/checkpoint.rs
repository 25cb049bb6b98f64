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
//!   u64 indexed_below       batches before this position are in `<base>.idx`
//!                           files, not here
//!   u32 next_topic_id
//!   u32 topic count, topics (catalog::encode_topic)
//!   u32 partition count, per partition:
//!     u32 topic_id, u32 partition, u64 log_start_offset, u64 next_offset,
//!     u32 entry count (batches at or after `indexed_below`), entries:
//!     u64 base_offset, u32 record_count, u32 length, u64 position,
//!     i64 running max timestamp, i64 append time
//! ```

use crate::catalog::{decode_topic, encode_topic, TopicRecord};
use crate::codec::{put_u32, put_u64, Reader};
use crate::index::segment_index::{frame, get_entry, put_entry, unframe};
use crate::index::IndexEntry;

pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";
const MAGIC: &[u8; 8] = b"CMQCKPT1";
const VERSION: u32 = 2;

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
    pub indexed_below: u64,
    pub next_topic_id: u32,
    pub topics: Vec<TopicRecord>,
    pub partitions: Vec<PartitionCheckpoint>,
}

/// Builds a checkpoint image without first copying the index.
pub struct CheckpointEncoder {
    body: Vec<u8>,
}

impl CheckpointEncoder {
    pub fn new(
        position: u64,
        chain: u32,
        first_segment_base: u64,
        indexed_below: u64,
        next_topic_id: u32,
    ) -> Self {
        let mut body = Vec::with_capacity(1 << 16);
        put_u64(&mut body, position);
        put_u32(&mut body, chain);
        put_u64(&mut body, first_segment_base);
        put_u64(&mut body, indexed_below);
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
            put_entry(b, e);
        }
    }

    /// The file image, padded to a block multiple.
    pub fn finish(self) -> Vec<u8> {
        frame(MAGIC, VERSION, &self.body)
    }
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = CheckpointEncoder::new(
            self.position,
            self.chain,
            self.first_segment_base,
            self.indexed_below,
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
        let mut r = Reader::new(unframe(MAGIC, VERSION, file)?);
        let position = r.u64()?;
        let chain = r.u32()?;
        let first_segment_base = r.u64()?;
        let indexed_below = r.u64()?;
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
                entries.push(get_entry(&mut r)?);
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
            indexed_below,
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
            indexed_below: 69_632,
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
        let used = 32 + crate::codec::get_u32(&bytes, 16) as usize;
        for bit in 0..used * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Checkpoint::decode(&bad), None, "bit {bit}");
        }
    }
}
