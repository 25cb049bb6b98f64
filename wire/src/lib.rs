//! coremq-wire: everything two CoreMQ processes must agree on, and nothing else.
//!
//! - [`frame`]: the length-prefixed frame that carries every request and response.
//! - [`messages`]: the FlatBuffers envelopes (generated from `wire/schema/coremq.fbs`),
//!   frame kinds, and the bounded verifier that runs once at ingress.
//! - [`batch`]: the record-batch byte layout that the broker stores and serves unchanged.
//! - [`routing`]: the stable `shard_for` and key → partition hashes clients and broker share.
//! - [`error`]: the client-visible error codes.
//!
//! No async runtime, no I/O: every function here is pure and runs on whatever thread calls it.
//! Invariant: decoding untrusted bytes never panics; it returns a typed error with the position.

pub mod batch;
pub mod error;
pub mod frame;
pub mod messages;
pub mod routing;

#[allow(clippy::all, unsafe_code, unused_imports, dead_code, mismatched_lifetime_syntaxes)]
#[rustfmt::skip]
mod generated;

/// The generated FlatBuffers types (`coremq.fb` namespace in the schema).
pub use generated::coremq_generated::coremq::fb;

pub use batch::{BatchBuilder, BatchError, BatchHeader, Record};
pub use error::ErrorCode;
pub use frame::{FrameError, FrameHeader, Kind};
pub use routing::{partition_for_key, shard_for};
