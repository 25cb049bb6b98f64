//! coremq-client: a thin async client for CoreMQ on tokio.
//!
//! - [`Client`]: metadata, one pipelined connection per shard (opened lazily,
//!   reconnected with backoff), shard-aware routing, and the batch-level
//!   calls [`Client::produce`] / [`Client::fetch`] that a benchmark uses.
//! - [`Producer`]: record-level batching (`linger`, `batch_bytes`,
//!   `max_in_flight_bytes`), key → partition hashing, per-record acks.
//! - [`Consumer`]: a `Stream` of records from an offset, with long polling.
//! - [`Admin`]: topics, offsets, per-shard statistics.
//! - [`ReadyLine`]: the broker's "listening" line, for tools that start one.
//!
//! Each connection runs a writer task and a reader task on the caller's
//! runtime; requests are matched to responses by correlation id, so any
//! number may be in flight and answers may come back in any order. Nothing
//! here blocks a thread; the hot paths allocate per batch, not per record.

#![forbid(unsafe_code)]

mod admin;
mod client;
mod conn;
mod consumer;
mod error;
mod fetch;
mod producer;
mod ready_line;
mod types;

pub use admin::Admin;
pub use client::{finish_produce, Client, ClientConfig, PendingFetch, Route};
pub use conn::{Body, Connection, PendingResponse};
pub use consumer::{Consumer, OffsetReset, OnDataLoss};
pub use error::{Error, Result};
pub use fetch::{BatchSummary, ConsumerRecord, FetchOptions, FetchedPartition};
pub use producer::{Producer, ProducerBuilder, ProducerConfig, Record};
pub use ready_line::ReadyLine;
pub use types::{
    HistogramStats, Metadata, OffsetSpec, ProduceAck, ShardInfo, ShardStats, TopicConfig, TopicInfo,
};

pub use coremq_wire::ErrorCode;
