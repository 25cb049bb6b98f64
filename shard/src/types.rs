//! Newtypes and small value types shared by the shard's modules and the broker.

use coremq_wire::ErrorCode;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Offset(pub u64);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// When an append is acknowledged, per topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Ack after the data is written and fdatasync'd (group commit).
    #[default]
    Always,
    /// Ack after the write; fdatasync on a timer.
    Interval(Duration),
    /// Ack after the write; the OS decides when it reaches the platter.
    Never,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => write!(f, "always"),
            Durability::Interval(every) => write!(f, "interval:{}", every.as_millis()),
            Durability::Never => write!(f, "never"),
        }
    }
}

impl FromStr for Durability {
    type Err = String;

    /// `always`, `interval:<ms>` or `never`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Durability::Always),
            "never" => Ok(Durability::Never),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval(Duration::from_millis(ms))),
                _ => Err(format!(
                    "invalid durability '{s}': expected always, interval:<ms> (ms > 0) or never"
                )),
            },
        }
    }
}

/// A topic as the catalog stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    pub name: String,
    pub partitions: u32,
    pub durability: Durability,
    /// Delete segments whose newest batch is older than this.
    pub retention_ms: Option<u64>,
    /// Keep at most about this many bytes per partition (whole segments are deleted).
    pub retention_bytes: Option<u64>,
}

/// Topic names: 1..=200 bytes of `[A-Za-z0-9._-]`, other than `.` and `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!(
            "topic name must be 1..=200 bytes, got {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "topic name '{name}' may only hold letters, digits, '.', '_' and '-'"
        ));
    }
    // Names like these mean "this folder" and "the parent" to every tool
    // that turns a topic into a path or a URL segment.
    if name == "." || name == ".." {
        return Err(format!("'{name}' is not a topic name"));
    }
    Ok(())
}

/// What a completed append reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: u64,
    pub last_offset: u64,
    pub append_time_ms: i64,
}

/// What a read returns: whole batches, back to back, starting with the one
/// that holds the requested offset. A read that meets a damaged stored batch
/// returns the intact batches before it; a read that starts at one returns
/// no batches and `data_loss`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    pub batches: Vec<u8>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub data_loss: Option<DataLoss>,
}

/// Stored batches that fail verification (twice, read from the device) and
/// are never served: offsets `offset..next_offset` of the partition are
/// unreadable; `next_offset` is where a reader may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLoss {
    pub offset: u64,
    pub next_offset: u64,
    /// Damaged batches in the range.
    pub batches: u32,
}

/// Maps an error the client will see onto its wire code.
pub trait ToErrorCode {
    fn error_code(&self) -> ErrorCode;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_prints() {
        for text in ["always", "never", "interval:250"] {
            let parsed: Durability = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert!("interval:0".parse::<Durability>().is_err());
        assert!("sometimes".parse::<Durability>().is_err());
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1-eu_2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(201)).is_err());
    }
}
