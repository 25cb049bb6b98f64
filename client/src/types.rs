//! Plain owned types returned by the client: metadata, acks, stats.

use std::collections::HashMap;

/// One shard's listener, as the broker advertises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: u16,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    /// "always", "interval:<ms>" or "never".
    pub durability: Option<String>,
    /// -1: unlimited.
    pub retention_ms: i64,
    /// -1: unlimited.
    pub retention_bytes: i64,
}

#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub shard_count: u16,
    pub shards: Vec<ShardInfo>,
    pub topics: HashMap<String, TopicInfo>,
}

impl Metadata {
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    pub fn shard(&self, id: u16) -> Option<&ShardInfo> {
        self.shards.iter().find(|s| s.id == id)
    }
}

/// The broker's answer to one produced partition batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceAck {
    pub base_offset: u64,
    pub last_offset: u64,
    pub append_time_ms: i64,
}

/// Where `list_offsets` looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    /// The high watermark: the offset the next record will get.
    Latest,
    /// The first offset whose timestamp is at or after this time.
    Timestamp(i64),
}

/// Settings for a new topic. `None` fields take the broker's defaults.
#[derive(Clone, Debug)]
pub struct TopicConfig {
    pub partitions: u32,
    /// "always", "interval:<ms>" or "never".
    pub durability: Option<String>,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
}

impl TopicConfig {
    pub fn new(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            durability: None,
            retention_ms: None,
            retention_bytes: None,
        }
    }

    pub fn durability(mut self, durability: impl Into<String>) -> TopicConfig {
        self.durability = Some(durability.into());
        self
    }
}

/// One latency (or depth) distribution from a shard, in microseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramStats {
    pub name: String,
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardStats {
    pub shard: u16,
    pub histograms: Vec<HistogramStats>,
    pub counters: Vec<(String, u64)>,
}

impl ShardStats {
    pub fn histogram(&self, name: &str) -> Option<&HistogramStats> {
        self.histograms.iter().find(|h| h.name == name)
    }

    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}
