//! The facade the broker uses: one `ShardStorage` per shard, shared as `Rc`
//! by that shard's tasks, and the storage error and metrics types.

use crate::clock::SystemClock;
use crate::disk::glommio::GlommioDisk;
use crate::engine::{io_error, Engine};
use crate::{AppendOutcome, ReadOutcome, StorageConfig, ToErrorCode, TopicConfig};
use coremq_wire::ErrorCode;
use std::cell::RefCell;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("topic '{topic}' has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("partition {partition} of '{topic}' is not owned by this shard")]
    NotOwned { topic: String, partition: u32 },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("corrupt batch: {0}")]
    CorruptBatch(#[from] coremq_wire::BatchError),
    #[error("batch of {size} bytes exceeds the maximum of {max}")]
    BatchTooLarge { size: usize, max: usize },
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("disk full while {op} {path}")]
    DiskFull { op: &'static str, path: String },
    #[error("i/o error while {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("storage is closed")]
    Closed,
    #[error(
        "shard {shard}: acknowledged data is damaged in {file} at byte {file_position} (log \
         position {position}: {reason}); later data proves it had been synced, so this is not a \
         torn tail. {ranges} damaged range(s); lost: {lost}. The shard refuses to start rather \
         than drop the data after it. To keep everything before and after the damage and copy \
         the damaged bytes aside (shard-{shard}/quarantine/), start once with \
         --repair-corruption (docs/storage.md, \"Damage\")"
    )]
    Corruption {
        shard: u16,
        file: String,
        file_position: u64,
        position: u64,
        resume: u64,
        reason: &'static str,
        ranges: usize,
        lost: String,
    },
}

impl ToErrorCode for StorageError {
    fn error_code(&self) -> ErrorCode {
        match self {
            StorageError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            StorageError::UnknownPartition { .. } | StorageError::NotOwned { .. } => {
                ErrorCode::UnknownPartition
            }
            StorageError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
            StorageError::InvalidTopic(_) => ErrorCode::InvalidTopicName,
            StorageError::CorruptBatch(_) => ErrorCode::CorruptBatch,
            StorageError::BatchTooLarge { .. } => ErrorCode::TooLarge,
            StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            StorageError::DiskFull { .. } => ErrorCode::DiskFull,
            StorageError::Io { .. } | StorageError::Corruption { .. } => ErrorCode::StorageError,
            StorageError::Closed => ErrorCode::ShuttingDown,
        }
    }
}

/// Histograms (microseconds) and counters the storage keeps for the stats request.
pub struct StorageMetrics {
    pub fsync_us: RefCell<hdrhistogram::Histogram<u64>>,
    /// Time of the O_DIRECT write(s) of one flush (all its chunks, issued together).
    pub write_us: RefCell<hdrhistogram::Histogram<u64>>,
    /// Bytes written by one flush (padded chunks: the padding to the block boundary counts).
    pub flush_size: RefCell<hdrhistogram::Histogram<u64>>,
    pub flush_bytes: std::cell::Cell<u64>,
    pub flushes: std::cell::Cell<u64>,
    pub appended_batches: std::cell::Cell<u64>,
    pub appended_records: std::cell::Cell<u64>,
    pub appended_bytes: std::cell::Cell<u64>,
    /// O_DIRECT log reads (read-ahead included) and their bytes.
    pub disk_reads: std::cell::Cell<u64>,
    pub disk_read_bytes: std::cell::Cell<u64>,
    /// Disk runs served from a read-ahead.
    pub read_ahead_hits: std::cell::Cell<u64>,
    /// Segments created by reusing a file retention released.
    pub segments_recycled: std::cell::Cell<u64>,
    /// Damaged stored batches a fetch answered with `DataLoss` (each fetch
    /// that starts at one counts it again).
    pub corrupt_batches_skipped: std::cell::Cell<u64>,
}

impl StorageMetrics {
    pub fn new() -> StorageMetrics {
        StorageMetrics {
            // 1 µs .. 60 s, 3 significant digits.
            fsync_us: RefCell::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("static histogram bounds are valid"),
            ),
            write_us: RefCell::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("static histogram bounds are valid"),
            ),
            // 1 byte .. 4 GiB.
            flush_size: RefCell::new(
                hdrhistogram::Histogram::new_with_bounds(1, 1 << 32, 3)
                    .expect("static histogram bounds are valid"),
            ),
            flush_bytes: Default::default(),
            flushes: Default::default(),
            appended_batches: Default::default(),
            appended_records: Default::default(),
            appended_bytes: Default::default(),
            disk_reads: Default::default(),
            disk_read_bytes: Default::default(),
            read_ahead_hits: Default::default(),
            segments_recycled: Default::default(),
            corrupt_batches_skipped: Default::default(),
        }
    }
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics::new()
    }
}

/// One shard's storage on glommio DMA files: the broker's entry point.
/// A thin, non-generic facade over [`Engine`]; see the crate docs.
pub struct ShardStorage {
    engine: Engine<GlommioDisk, SystemClock>,
}

impl ShardStorage {
    /// Opens (creating if needed) the shard directory on glommio DMA files,
    /// doing MACHINE.md's IOPOLL workaround first, and recovers: loads the
    /// checkpoint, scans the log after it, verifies CRCs, truncates a torn tail.
    /// Must run inside the shard's glommio executor.
    pub async fn open(config: StorageConfig) -> Result<ShardStorage, StorageError> {
        let shown = config.dir.display().to_string();
        std::fs::create_dir_all(&config.dir).map_err(|e| io_error("creating", &shown, e))?;
        let disk = GlommioDisk::new(&config.dir)
            .await
            .map_err(|e| io_error("probing io_uring polling on", &shown, e))?;
        let engine = Engine::open(disk, SystemClock, config).await?;
        Ok(ShardStorage { engine })
    }

    pub fn config(&self) -> &StorageConfig {
        self.engine.config()
    }

    /// Every topic in the catalog (each shard keeps the whole catalog).
    pub fn topics(&self) -> Vec<TopicConfig> {
        self.engine.topics()
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.engine.topic(name)
    }

    /// Durably records the topic; creates the partitions this shard owns
    /// (`shard_for(name, p, shard_count) == shard`).
    pub async fn create_topic(&self, topic: TopicConfig) -> Result<(), StorageError> {
        self.engine.create_topic(topic).await
    }

    /// Durably removes the topic; its data becomes unreadable at once and its
    /// bytes go with retention.
    pub async fn delete_topic(&self, name: &str) -> Result<(), StorageError> {
        self.engine.delete_topic(name).await
    }

    /// Appends one or more back-to-back record batches to a partition this shard
    /// owns. Each batch is verified (header + CRC) before anything is stored; a
    /// request with any bad batch stores nothing. Offsets are assigned, broker
    /// fields patched, and the call completes as the topic's durability says
    /// (`always`: after the group-commit fdatasync that covers it).
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        batches: &[u8],
    ) -> Result<AppendOutcome, StorageError> {
        self.engine.append(topic, partition, batches).await
    }

    /// Whole batches starting with the one holding `offset`, up to `max_bytes`
    /// (at least one batch if any is available). Only data that is visible
    /// (acknowledgeable under the topic's durability) is returned. An offset
    /// equal to the high watermark returns no batches; below the log start or
    /// above the high watermark is `OffsetOutOfRange`.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<ReadOutcome, StorageError> {
        self.engine.read(topic, partition, offset, max_bytes).await
    }

    /// Next offset to be assigned that is visible to readers.
    pub fn high_watermark(&self, topic: &str, partition: u32) -> Result<u64, StorageError> {
        self.engine.high_watermark(topic, partition)
    }

    pub fn log_start_offset(&self, topic: &str, partition: u32) -> Result<u64, StorageError> {
        self.engine.log_start_offset(topic, partition)
    }

    /// First offset whose batch max timestamp is >= `timestamp_ms` (the high watermark if none).
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, StorageError> {
        self.engine
            .offset_for_timestamp(topic, partition, timestamp_ms)
    }

    /// Resolves the next time any partition's high watermark moves (for long polling).
    pub fn appended(&self) -> event_listener::EventListener {
        self.engine.appended()
    }

    /// Periodic work, called by the broker about every 100 ms: fdatasync for
    /// `interval` topics that are due, retention, index checkpoint.
    pub async fn maintenance(&self) -> Result<(), StorageError> {
        self.engine.maintenance().await
    }

    pub fn metrics(&self) -> &StorageMetrics {
        self.engine.metrics()
    }

    /// Flushes and syncs everything, writes a checkpoint, closes files.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.engine.close().await
    }

    /// Writes an index checkpoint now (maintenance does it on its timer).
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        self.engine.checkpoint().await
    }
}
