//! Shard-to-shard messages. Every shard owns one bounded receiver; every shard
//! (and the main thread, for shutdown) holds a sender to each. We use
//! `async-channel` rather than glommio's `channel_mesh`: it is runtime-agnostic
//! (the main thread can send too), and it needs no all-peers `join`, which
//! MACHINE.md notes hangs every shard when one fails at start-up.

use crate::metrics::ShardStatsSnapshot;
use coremq_shard::{AppendOutcome, TopicConfig};
use coremq_wire::ErrorCode;
use futures::channel::oneshot;
use std::time::Duration;

/// Bound on queued cross-shard requests per shard: a slow shard pushes back on
/// its peers instead of growing a queue without limit.
pub const MESH_CHANNEL_DEPTH: usize = 4096;

/// An error as it crosses a shard boundary and goes back to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError {
            code,
            message: message.into(),
        }
    }
}

impl<E: coremq_shard::ToErrorCode + std::fmt::Display> From<E> for RequestError {
    fn from(error: E) -> Self {
        RequestError {
            code: error.error_code(),
            message: error.to_string(),
        }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, RequestError>>;

/// Result of fetching one partition.
#[derive(Clone, Debug, Default)]
pub struct PartitionFetch {
    pub batches: Vec<u8>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// The read started at a damaged stored batch (answered as `DataLoss`).
    pub data_loss: Option<coremq_shard::DataLoss>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    Timestamp(i64),
}

/// A change to the topic catalog, which every shard keeps a copy of.
#[derive(Clone, Debug)]
pub enum CatalogChange {
    Create(TopicConfig),
    Delete(String),
}

pub enum ShardRequest {
    Append {
        topic: String,
        partition: u32,
        batches: Vec<u8>,
        reply: Reply<AppendOutcome>,
    },
    Fetch {
        topic: String,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
        reply: Reply<PartitionFetch>,
    },
    ListOffset {
        topic: String,
        partition: u32,
        query: OffsetQuery,
        reply: Reply<u64>,
    },
    CreateTopic {
        config: TopicConfig,
        reply: Reply<()>,
    },
    DeleteTopic {
        name: String,
        reply: Reply<()>,
    },
    /// A create or delete, sent to the coordinator (shard 0), which runs
    /// catalog changes one at a time and applies each on every shard.
    ChangeCatalog {
        change: CatalogChange,
        reply: Reply<()>,
    },
    /// This shard's copy of the catalog.
    Topics {
        reply: Reply<Vec<TopicConfig>>,
    },
    /// To the coordinator at start-up: make every shard's catalog agree.
    ReconcileCatalog {
        reply: Reply<()>,
    },
    Stats {
        reset: bool,
        reply: oneshot::Sender<ShardStatsSnapshot>,
    },
    /// Stop accepting, drain, sync and close; reply when closed.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Senders to every shard, indexed by shard id.
#[derive(Clone)]
pub struct Mesh {
    senders: Vec<async_channel::Sender<ShardRequest>>,
}

impl Mesh {
    pub fn new(shards: u16) -> (Mesh, Vec<async_channel::Receiver<ShardRequest>>) {
        let (senders, receivers) = (0..shards)
            .map(|_| async_channel::bounded(MESH_CHANNEL_DEPTH))
            .unzip();
        (Mesh { senders }, receivers)
    }

    pub fn shard_count(&self) -> u16 {
        self.senders.len() as u16
    }

    /// Sends a request to `shard` and awaits its reply.
    pub async fn call<T>(
        &self,
        shard: u16,
        make: impl FnOnce(Reply<T>) -> ShardRequest,
    ) -> Result<T, RequestError> {
        let (tx, rx) = oneshot::channel();
        let sender = self
            .senders
            .get(shard as usize)
            .ok_or_else(|| RequestError::new(ErrorCode::Unknown, format!("no shard {shard}")))?;
        sender.send(make(tx)).await.map_err(|_| {
            RequestError::new(
                ErrorCode::ShuttingDown,
                format!("shard {shard} is shutting down"),
            )
        })?;
        rx.await.map_err(|_| {
            RequestError::new(
                ErrorCode::ShuttingDown,
                format!("shard {shard} dropped the request"),
            )
        })?
    }

    pub async fn send(&self, shard: u16, request: ShardRequest) -> bool {
        match self.senders.get(shard as usize) {
            Some(sender) => sender.send(request).await.is_ok(),
            None => false,
        }
    }
}
