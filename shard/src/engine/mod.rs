//! The storage engine, generic over its disk and clock.
//!
//! [`Engine`] owns one shard's log, indexes, catalog and cache. It runs on one
//! thread (the shard's executor, or a test executor): state lives in a
//! `RefCell` that is never borrowed across an `.await`, and three gates
//! order the few operations that must not interleave:
//! - `flush_gate`: one flush (write + fdatasync) at a time; appends that
//!   arrive meanwhile wait for it and are written together by the next one
//!   (group commit, see `gate`);
//! - `roll_lock`: one segment roll at a time; appends that have copied
//!   nothing yet wait for a roll under way, so a partition's offsets follow
//!   submission order across rolls;
//! - `catalog_lock`: topic creation / deletion and checkpoints, so a
//!   checkpoint never sees a half-applied catalog change.

mod append;
mod flush;
mod gate;
mod maintenance;
mod read;

pub(crate) use append::write_snapshot;
pub use append::MAX_PENDING_BYTES;
pub(crate) use maintenance::remove_if_present;
pub use read::MAX_READ_AHEAD_BYTES;

use crate::catalog::{owns, Catalog, TopicRecord};
use crate::clock::Clock;
use crate::commitlog::cache::ReadCache;
use crate::commitlog::entry::EntryKind;
use crate::commitlog::segments::Segments;
use crate::commitlog::writer::Writer;
use crate::disk::{Disk, DiskFile};
use crate::index::PartitionIndex;
use crate::storage::{StorageError, StorageMetrics};
use crate::{Durability, StorageConfig, TopicConfig};
use futures::lock::Mutex;
use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

/// Most partitions one topic may have: the one limit the broker checks at
/// ingress and the engine checks again when it creates the topic.
pub const MAX_PARTITIONS: u32 = 4096;

pub(crate) struct PartitionState {
    pub topic_id: u32,
    pub partition: u32,
    pub durability: Durability,
    pub index: PartitionIndex,
    /// Offset the next appended batch gets.
    pub next_offset: u64,
    pub log_start_offset: u64,
}

impl PartitionState {
    pub fn new(topic_id: u32, partition: u32, durability: Durability, next_offset: u64) -> Self {
        PartitionState {
            topic_id,
            partition,
            durability,
            index: PartitionIndex::new(),
            next_offset,
            log_start_offset: next_offset,
        }
    }

    /// Entries ending at or before this log position are visible to readers.
    pub fn visible_bound<F: DiskFile>(&self, writer: &Writer<F>) -> u64 {
        match self.durability {
            Durability::Always => writer.durable_end(),
            Durability::Interval(_) | Durability::Never => writer.written_end(),
        }
    }

    /// (visible entries, high watermark)
    pub fn visible<F: DiskFile>(&self, writer: &Writer<F>) -> (usize, u64) {
        let n = self.index.visible_len(self.visible_bound(writer));
        let high_watermark = match self.index.get(n) {
            Some(first_hidden) => first_hidden.base_offset,
            None => self.next_offset,
        };
        (n, high_watermark)
    }
}

/// The last failed flush, handed to every append it covered.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub attempt: u64,
    pub op: &'static str,
    pub path: String,
    pub raw_os_error: Option<i32>,
    pub kind: io::ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn to_error(&self) -> StorageError {
        let source = match self.raw_os_error {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        };
        io_error(self.op, &self.path, source)
    }
}

/// Maps an I/O error onto the typed storage error (ENOSPC → `DiskFull`).
pub(crate) fn io_error(op: &'static str, path: &str, source: io::Error) -> StorageError {
    let full = matches!(
        source.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) || matches!(
        source.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    );
    if full {
        StorageError::DiskFull {
            op,
            path: path.to_string(),
        }
    } else {
        StorageError::Io {
            op,
            path: path.to_string(),
            source,
        }
    }
}

pub(crate) struct State<F: DiskFile> {
    pub catalog: Catalog,
    pub partitions: HashMap<(u32, u32), PartitionState>,
    pub segments: Segments<F>,
    pub writer: Writer<F>,
    pub cache: ReadCache<F::Buffer>,
    /// Files written since their last fdatasync, by segment base.
    pub dirty_files: Vec<(u64, Rc<F>)>,
    /// End of the last entry whose append waits for an fdatasync.
    pub sync_needed_end: u64,
    /// End of the last `interval` entry, and when it must be synced by.
    pub interval_needed_end: u64,
    pub interval_due_ms: Option<i64>,
    pub flush_attempts: u64,
    pub failure: Option<Failure>,
    pub last_checkpoint_ms: i64,
    pub checkpointed_position: u64,
    /// A segment created ahead of the writer by maintenance.
    pub prepared: Option<crate::commitlog::segments::Segment<F>>,
    /// Segments retention dropped, deleted (or kept as spares) after the
    /// next checkpoint.
    pub doomed: Vec<crate::commitlog::segments::Segment<F>>,
    /// Released segment files (named `*.spare`) waiting to become new
    /// segments; `base` is their old base.
    pub spares: Vec<crate::commitlog::segments::Segment<F>>,
    /// Sealed segments below this position have their `.idx` file...
    pub indexed_below: u64,
    /// ...except these (bases), whose file recovery found missing or bad and
    /// rebuilt from the segment: the next checkpoint writes them back.
    pub index_missing: Vec<u64>,
}

impl<F: DiskFile> State<F> {
    /// The partition an append or read addresses, with the right error.
    pub fn partition_key(&self, topic: &str, partition: u32) -> Result<(u32, u32), StorageError> {
        let record = self
            .catalog
            .get(topic)
            .ok_or_else(|| StorageError::UnknownTopic(topic.to_string()))?;
        if partition >= record.config.partitions {
            return Err(StorageError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            });
        }
        let key = (record.id, partition);
        if !self.partitions.contains_key(&key) {
            return Err(StorageError::NotOwned {
                topic: topic.to_string(),
                partition,
            });
        }
        Ok(key)
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Result<&PartitionState, StorageError> {
        let key = self.partition_key(topic, partition)?;
        Ok(&self.partitions[&key])
    }

    pub fn add_topic(&mut self, record: TopicRecord, config: &StorageConfig) {
        add_topic(&mut self.catalog, &mut self.partitions, record, config);
    }

    pub fn remove_topic(&mut self, topic_id: u32) {
        remove_topic(&mut self.catalog, &mut self.partitions, topic_id);
    }
}

/// Adds a topic and the partitions this shard owns; a known id is a no-op.
pub(crate) fn add_topic(
    catalog: &mut Catalog,
    partitions: &mut HashMap<(u32, u32), PartitionState>,
    record: TopicRecord,
    config: &StorageConfig,
) {
    if catalog.by_id(record.id).is_some() {
        return;
    }
    for p in 0..record.config.partitions {
        if owns(&record.config.name, p, config.shard.0, config.shard_count) {
            partitions.insert(
                (record.id, p),
                PartitionState::new(record.id, p, record.config.durability, 0),
            );
        }
    }
    catalog.insert(record);
}

pub(crate) fn remove_topic(
    catalog: &mut Catalog,
    partitions: &mut HashMap<(u32, u32), PartitionState>,
    topic_id: u32,
) {
    if let Some(record) = catalog.remove(topic_id) {
        for p in 0..record.config.partitions {
            partitions.remove(&(topic_id, p));
        }
    }
}

pub struct Engine<D: Disk, C: Clock> {
    config: StorageConfig,
    disk: D,
    clock: C,
    log_dir: PathBuf,
    index_dir: PathBuf,
    state: RefCell<Option<State<D::File>>>,
    /// Durable end at close, for appends that were waiting when it closed.
    closed_durable_end: Cell<u64>,
    flush_gate: gate::FlushGate,
    roll_lock: Mutex<()>,
    /// Rolls started and not ended; appends wait for them (see `append`).
    rolls_under_way: Cell<usize>,
    roll_done: event_listener::Event,
    catalog_lock: Mutex<()>,
    appended: event_listener::Event,
    metrics: StorageMetrics,
    /// Sequential readers' next fetch, read ahead from disk (see `read`).
    read_ahead: RefCell<read::ReadAheads<D::File>>,
}

impl<D: Disk, C: Clock> Engine<D, C> {
    /// Opens (creating if needed) the shard directory on `disk` and recovers.
    pub async fn open(disk: D, clock: C, config: StorageConfig) -> Result<Self, StorageError> {
        let log_dir = config.dir.join("log");
        let index_dir = config.dir.join("index");
        let state = crate::recovery::recover(&disk, &clock, &config, &log_dir, &index_dir).await?;
        Ok(Engine {
            closed_durable_end: Cell::new(0),
            state: RefCell::new(Some(state)),
            config,
            disk,
            clock,
            log_dir,
            index_dir,
            flush_gate: gate::FlushGate::default(),
            roll_lock: Mutex::new(()),
            rolls_under_way: Cell::new(0),
            roll_done: event_listener::Event::new(),
            catalog_lock: Mutex::new(()),
            appended: event_listener::Event::new(),
            metrics: StorageMetrics::new(),
            read_ahead: RefCell::new(read::ReadAheads::default()),
        })
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub(crate) fn state(&self) -> Result<RefMut<'_, State<D::File>>, StorageError> {
        RefMut::filter_map(self.state.borrow_mut(), Option::as_mut)
            .map_err(|_| StorageError::Closed)
    }

    /// Every topic in the catalog (each shard keeps the whole catalog).
    pub fn topics(&self) -> Vec<TopicConfig> {
        let Ok(state) = self.state() else {
            return Vec::new();
        };
        let mut topics: Vec<TopicConfig> =
            state.catalog.topics().map(|t| t.config.clone()).collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        let state = self.state().ok()?;
        state.catalog.get(name).map(|t| t.config.clone())
    }

    pub fn high_watermark(&self, topic: &str, partition: u32) -> Result<u64, StorageError> {
        let state = self.state()?;
        let p = state.partition(topic, partition)?;
        Ok(p.visible(&state.writer).1)
    }

    pub fn log_start_offset(&self, topic: &str, partition: u32) -> Result<u64, StorageError> {
        let state = self.state()?;
        Ok(state.partition(topic, partition)?.log_start_offset)
    }

    /// First offset whose batch max timestamp is >= `timestamp_ms` (the high
    /// watermark if none).
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, StorageError> {
        let state = self.state()?;
        let p = state.partition(topic, partition)?;
        let (visible, high_watermark) = p.visible(&state.writer);
        Ok(match p.index.first_at_or_after(timestamp_ms, visible) {
            Some(i) => p.index.get(i).map_or(high_watermark, |e| e.base_offset),
            None => high_watermark,
        })
    }

    /// Resolves the next time any partition's high watermark moves.
    pub fn appended(&self) -> event_listener::EventListener {
        self.appended.listen()
    }

    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    /// Durably records the topic and creates the partitions this shard owns.
    pub async fn create_topic(&self, topic: TopicConfig) -> Result<(), StorageError> {
        crate::validate_topic_name(&topic.name).map_err(StorageError::InvalidTopic)?;
        if topic.partitions == 0 || topic.partitions > MAX_PARTITIONS {
            return Err(StorageError::InvalidTopic(format!(
                "partitions must be 1..={MAX_PARTITIONS}, got {}",
                topic.partitions
            )));
        }
        if let Durability::Interval(every) = topic.durability {
            if every.is_zero() {
                return Err(StorageError::InvalidTopic(
                    "interval durability of 0 ms".into(),
                ));
            }
        }
        let _catalog = self.catalog_lock.lock().await;
        let record = {
            let mut state = self.state()?;
            if state.catalog.get(&topic.name).is_some() {
                return Err(StorageError::TopicExists(topic.name));
            }
            TopicRecord {
                id: state.catalog.allocate_id(),
                config: topic,
            }
        };
        let mut payload = Vec::new();
        crate::catalog::encode_topic(&mut payload, &record);
        let config = &self.config;
        let (end, copied_at) = self
            .append_control(EntryKind::CreateTopic, record.id, &payload, |state| {
                state.add_topic(record, config)
            })
            .await?;
        self.wait_durable(end, true, copied_at).await
    }

    /// Durably removes the topic; its data becomes unreadable at once and its
    /// bytes go with retention.
    pub async fn delete_topic(&self, name: &str) -> Result<(), StorageError> {
        let _catalog = self.catalog_lock.lock().await;
        let id = {
            let state = self.state()?;
            state
                .catalog
                .get(name)
                .ok_or_else(|| StorageError::UnknownTopic(name.to_string()))?
                .id
        };
        let (end, copied_at) = self
            .append_control(EntryKind::DeleteTopic, id, &[], |state| {
                state.remove_topic(id)
            })
            .await?;
        self.wait_durable(end, true, copied_at).await
    }
}
