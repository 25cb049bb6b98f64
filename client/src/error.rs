//! Typed client errors. `Error` is `Clone` so one failure (a dropped
//! connection, a rejected batch) can be handed to every waiter it concerns.

use coremq_wire::ErrorCode;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Error)]
pub enum Error {
    /// Could not open a TCP connection (after the configured retries).
    /// (The I/O error is part of the message, not a `source`, so error
    /// chains do not print it twice.)
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        addr: String,
        error: Arc<std::io::Error>,
    },
    /// The connection broke while the request was outstanding. The request
    /// may or may not have been applied by the broker.
    #[error("connection to {addr} closed: {reason}")]
    ConnectionClosed { addr: String, reason: String },
    /// No response within the request timeout. As for `ConnectionClosed`, the
    /// request may have been applied.
    #[error("{kind} request to {addr} timed out after {after:?}")]
    Timeout {
        kind: &'static str,
        addr: String,
        after: Duration,
    },
    /// The broker answered with an error code.
    #[error("broker error {code}: {message}")]
    Broker { code: ErrorCode, message: String },
    /// The broker's answer could not be understood (verifier failure, wrong
    /// kind, missing field): a protocol mismatch or a broker bug.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A record or batch could not be encoded.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The topic is not in the broker's metadata (after a refresh).
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The partition is not below the topic's partition count.
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// The broker holds a damaged batch at `offset` and never serves it:
    /// records from `offset` up to `next_offset` are lost to readers, and
    /// fetching `next_offset` goes on (record streams do so by default).
    #[error("data loss in {topic:?} partition {partition} at offset {offset}, readable again from {next_offset}: {message}")]
    DataLoss {
        topic: String,
        partition: u32,
        offset: u64,
        next_offset: u64,
        message: String,
    },
    /// A fetched batch failed its CRC or layout checks.
    #[error("corrupt data from the broker: {0}")]
    Corrupt(#[from] coremq_wire::BatchError),
    /// The producer or client was closed.
    #[error("closed")]
    Closed,
}

impl Error {
    /// The broker error code, when the broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            Error::DataLoss { .. } => Some(ErrorCode::DataLoss),
            _ => None,
        }
    }

    pub(crate) fn broker(code: u16, message: Option<&str>) -> Error {
        Error::Broker {
            code: ErrorCode::from_u16(code),
            message: message.unwrap_or_default().to_string(),
        }
    }

    /// Whether the connection behind this error is suspect (reconnect).
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::ConnectionClosed { .. } | Error::Timeout { .. }
        )
    }

    /// Whether retrying later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Broker { code, .. } => code.is_retriable(),
            other => other.is_connection(),
        }
    }
}

/// Maps a per-partition `error: ushort` field to a result.
pub(crate) fn check_code(code: u16, message: Option<&str>) -> Result<()> {
    if code == ErrorCode::None.as_u16() {
        Ok(())
    } else {
        Err(Error::broker(code, message))
    }
}
