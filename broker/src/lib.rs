//! coremq-broker: the `coremq` process.
//!
//! Start-up ([`server`]) resolves the configuration ([`config`]), starts one
//! glommio executor per shard pinned to its core, and has each open its
//! storage (coremq-shard) and listen on the main port (SO_REUSEPORT) and its
//! own port. Each connection ([`connection`]) runs pipelined requests as
//! concurrent tasks, within a byte [`budget`] per connection and per shard; [`dispatch`] hands them to [`handlers`], which work
//! through the shard's [`context`]: locally when the shard owns the partition,
//! over the [`mesh`] when another shard does. [`metrics`] keeps per-shard
//! hdrhistograms for the stats request.
//!
//! Threads: one per shard (its executor), plus the main thread, which only
//! waits for signals. Shards share no mutable state.

pub mod budget;
pub mod config;
pub mod connection;
pub mod context;
pub mod dispatch;
pub mod handlers;
pub mod malloc;
pub mod mesh;
pub mod metrics;
pub mod ports;
pub mod read_buffer;
pub mod server;
