//! The topic catalog: every topic of the broker, kept by every shard.
//!
//! Durable through the log itself: `CreateTopic` / `DeleteTopic` control
//! entries, a `CatalogSnapshot` entry at the start of every segment (so any
//! segment is a valid starting point for recovery), and the catalog copy in
//! each index checkpoint. Topic ids are shard-local and never reused, so
//! entries of a deleted topic never resurface under a re-created name.

use crate::codec::{put_u16, put_u32, put_u64, Reader};
use crate::{Durability, TopicConfig};
use std::collections::HashMap;
use std::time::Duration;

/// A topic and its shard-local id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    pub id: u32,
    pub config: TopicConfig,
}

#[derive(Debug, Default)]
pub struct Catalog {
    by_name: HashMap<String, TopicRecord>,
    names_by_id: HashMap<u32, String>,
    next_topic_id: u32,
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog {
            next_topic_id: 1,
            ..Catalog::default()
        }
    }

    pub fn get(&self, name: &str) -> Option<&TopicRecord> {
        self.by_name.get(name)
    }

    pub fn by_id(&self, id: u32) -> Option<&TopicRecord> {
        self.by_name.get(self.names_by_id.get(&id)?)
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicRecord> {
        self.by_name.values()
    }

    pub fn next_topic_id(&self) -> u32 {
        self.next_topic_id
    }

    /// Reserves the id of the next topic.
    pub fn allocate_id(&mut self) -> u32 {
        let id = self.next_topic_id;
        self.next_topic_id += 1;
        id
    }

    /// Adds a topic; replaying a create that is already known is a no-op.
    pub fn insert(&mut self, record: TopicRecord) {
        self.next_topic_id = self.next_topic_id.max(record.id + 1);
        if let Some(old) = self.by_name.get(&record.config.name) {
            self.names_by_id.remove(&old.id);
        }
        self.names_by_id
            .insert(record.id, record.config.name.clone());
        self.by_name.insert(record.config.name.clone(), record);
    }

    pub fn remove(&mut self, id: u32) -> Option<TopicRecord> {
        let name = self.names_by_id.remove(&id)?;
        self.by_name.remove(&name)
    }

    pub fn set_next_topic_id(&mut self, next: u32) {
        self.next_topic_id = self.next_topic_id.max(next);
    }
}

/// Is partition `partition` of `topic` owned by `shard` of `shard_count`?
pub fn owns(topic: &str, partition: u32, shard: u16, shard_count: u16) -> bool {
    coremq_wire::shard_for(topic, partition, shard_count) == shard
}

const NONE: u64 = u64::MAX;

pub(crate) fn encode_topic(out: &mut Vec<u8>, record: &TopicRecord) {
    let c = &record.config;
    put_u32(out, record.id);
    put_u32(out, c.partitions);
    let (kind, ms) = match c.durability {
        Durability::Always => (0u8, 0u64),
        Durability::Interval(every) => (1, every.as_millis() as u64),
        Durability::Never => (2, 0),
    };
    out.push(kind);
    put_u64(out, ms);
    put_u64(out, c.retention_ms.unwrap_or(NONE));
    put_u64(out, c.retention_bytes.unwrap_or(NONE));
    let name = c.name.as_bytes();
    put_u16(out, name.len() as u16);
    out.extend_from_slice(name);
}

pub(crate) fn decode_topic(r: &mut Reader<'_>) -> Option<TopicRecord> {
    let id = r.u32()?;
    let partitions = r.u32()?;
    let kind = r.u8()?;
    let ms = r.u64()?;
    let durability = match kind {
        0 => Durability::Always,
        1 => Durability::Interval(Duration::from_millis(ms)),
        2 => Durability::Never,
        _ => return None,
    };
    let retention_ms = Some(r.u64()?).filter(|v| *v != NONE);
    let retention_bytes = Some(r.u64()?).filter(|v| *v != NONE);
    let name_len = r.u16()? as usize;
    let name = std::str::from_utf8(r.take(name_len)?).ok()?.to_string();
    Some(TopicRecord {
        id,
        config: TopicConfig {
            name,
            partitions,
            durability,
            retention_ms,
            retention_bytes,
        },
    })
}

/// Payload of a `CatalogSnapshot` entry: the catalog plus the next offset of
/// every partition this shard owns, as of the entry's place in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub next_topic_id: u32,
    pub topics: Vec<TopicRecord>,
    /// (topic id, partition, next offset)
    pub partitions: Vec<(u32, u32, u64)>,
}

impl Snapshot {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.next_topic_id);
        put_u32(out, self.topics.len() as u32);
        for topic in &self.topics {
            encode_topic(out, topic);
        }
        put_u32(out, self.partitions.len() as u32);
        for (topic_id, partition, next) in &self.partitions {
            put_u32(out, *topic_id);
            put_u32(out, *partition);
            put_u64(out, *next);
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Snapshot> {
        let mut r = Reader::new(bytes);
        let next_topic_id = r.u32()?;
        let count = r.u32()? as usize;
        let mut topics = Vec::with_capacity(count.min(r.remaining()));
        for _ in 0..count {
            topics.push(decode_topic(&mut r)?);
        }
        let count = r.u32()? as usize;
        let mut partitions = Vec::with_capacity(count.min(r.remaining()));
        for _ in 0..count {
            partitions.push((r.u32()?, r.u32()?, r.u64()?));
        }
        r.is_empty().then_some(Snapshot {
            next_topic_id,
            topics,
            partitions,
        })
    }
}

pub(crate) fn decode_create(bytes: &[u8]) -> Option<TopicRecord> {
    let mut r = Reader::new(bytes);
    let record = decode_topic(&mut r)?;
    r.is_empty().then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(id: u32, name: &str, durability: Durability) -> TopicRecord {
        TopicRecord {
            id,
            config: TopicConfig {
                name: name.into(),
                partitions: 3,
                durability,
                retention_ms: Some(1000),
                retention_bytes: None,
            },
        }
    }

    #[test]
    fn snapshot_round_trip() {
        let snapshot = Snapshot {
            next_topic_id: 9,
            topics: vec![
                topic(1, "a", Durability::Always),
                topic(4, "b.c", Durability::Interval(Duration::from_millis(250))),
                topic(8, "d", Durability::Never),
            ],
            partitions: vec![(1, 0, 10), (4, 2, 0)],
        };
        let mut bytes = Vec::new();
        snapshot.encode(&mut bytes);
        assert_eq!(Snapshot::decode(&bytes), Some(snapshot));
        assert_eq!(Snapshot::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn ids_are_never_reused() {
        let mut catalog = Catalog::new();
        let id = catalog.allocate_id();
        catalog.insert(topic(id, "a", Durability::Always));
        catalog.remove(id);
        let again = catalog.allocate_id();
        assert!(again > id);
        assert!(catalog.get("a").is_none());
    }
}
