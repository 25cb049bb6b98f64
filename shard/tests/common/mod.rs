//! Helpers shared by the integration tests.
#![allow(dead_code)]

use coremq_shard::clock::ManualClock;
use coremq_shard::disk::memory::MemDisk;
use coremq_shard::{Durability, Engine, ShardId, StorageConfig, TopicConfig};
use coremq_wire::BatchBuilder;
use std::path::PathBuf;
use std::time::Duration;

pub type MemEngine = Engine<MemDisk, ManualClock>;

/// A batch of `records` records with `value_bytes`-byte values, stamped `timestamp_ms`.
pub fn batch(records: u32, value_bytes: usize, timestamp_ms: i64, fill: u8) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(64 + records as usize * (value_bytes + 32));
    for i in 0..records {
        let value = vec![fill.wrapping_add(i as u8); value_bytes];
        builder
            .push(timestamp_ms + i as i64, Some(b"key"), &value, &[])
            .expect("small records");
    }
    builder.finish()
}

/// The stored form of `batch` after an append assigned it `base_offset` at `append_time_ms`.
pub fn stored(batch: &[u8], base_offset: u64, append_time_ms: i64) -> Vec<u8> {
    let mut b = batch.to_vec();
    coremq_wire::batch::set_broker_fields(&mut b, base_offset, append_time_ms);
    b
}

pub fn config(dir: PathBuf, segment_bytes: u64) -> StorageConfig {
    let mut c = StorageConfig::new(ShardId(0), 1, dir);
    c.segment_bytes = segment_bytes;
    c.read_cache_bytes = 256 << 10;
    c.max_batch_bytes = 64 << 10;
    c.checkpoint_interval = Duration::from_secs(10);
    c
}

pub fn topic(name: &str, partitions: u32, durability: Durability) -> TopicConfig {
    TopicConfig {
        name: name.to_string(),
        partitions,
        durability,
        retention_ms: None,
        retention_bytes: None,
    }
}

pub async fn open(disk: &MemDisk, clock: &ManualClock, segment_bytes: u64) -> MemEngine {
    Engine::open(
        disk.clone(),
        clock.clone(),
        config(PathBuf::from("/data/shard-0"), segment_bytes),
    )
    .await
    .expect("open")
}
