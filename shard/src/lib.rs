//! coremq-shard: everything one CPU core owns.
//!
//! SKELETON: the public API the broker builds on. Bodies are filled in by the storage work.

pub mod types;
pub use types::*;

use std::path::PathBuf;
use std::time::Duration;

/// Configuration handed to each shard at start-up (a copyable struct, as in Redpanda).
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub shard: ShardId,
    pub shard_count: u16,
    /// This shard's directory: `<data-dir>/shard-<i>`.
    pub dir: PathBuf,
    /// Fixed segment size; default 1 GiB.
    pub segment_bytes: u64,
    /// Bounded cache of recently written blocks served to readers.
    pub read_cache_bytes: usize,
    /// Largest single record batch accepted.
    pub max_batch_bytes: usize,
    /// How often `maintenance` writes an index checkpoint.
    pub checkpoint_interval: Duration,
    /// Durability of topics created without one.
    pub default_durability: Durability,
}

pub mod storage;
pub use storage::{ShardStorage, StorageError, StorageMetrics};
