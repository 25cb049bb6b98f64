//! Command-line flags. The flag names are a contract (scripts and CI use them).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "coremq-loadgen",
    version,
    about = "Load generator for the CoreMQ broker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Maximum acknowledged produce throughput (closed loop, many requests in flight).
    Produce(ProduceArgs),
    /// Pre-fills the topic, then measures how fast it is read back.
    Consume(ConsumeArgs),
    /// Fixed-rate open-loop produce with consumers: end-to-end latency from the
    /// intended send time of every message.
    E2e(E2eArgs),
    /// Fetches every message of an ack log back and counts lost and corrupt ones.
    Verify(VerifyArgs),
    /// Starts a broker, runs a few seconds of produce and consume, prints a summary.
    Quickstart(QuickstartArgs),
}

impl Command {
    pub fn common(&self) -> Option<&Common> {
        match self {
            Command::Produce(a) => Some(&a.common),
            Command::Consume(a) => Some(&a.common),
            Command::E2e(a) => Some(&a.common),
            Command::Verify(a) => Some(&a.common),
            Command::Quickstart(a) => Some(&a.common),
        }
    }
}

/// Flags every workload takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Broker address (host:port). Default 127.0.0.1:9092 unless --spawn-broker.
    #[arg(long, value_name = "ADDR", conflicts_with = "spawn_broker")]
    pub broker: Option<String>,
    /// Start a `coremq` broker with a temporary data dir on a free port, stop it at the end.
    #[arg(long)]
    pub spawn_broker: bool,
    /// Shards of the spawned broker (default: 2, or the core count if lower).
    #[arg(long, value_name = "N")]
    pub shards: Option<u16>,
    /// Durability of the spawned broker: always | interval:MS | never.
    #[arg(long, value_name = "POLICY", default_value = "always")]
    pub fsync: String,
    /// One more flag for the spawned broker, passed as is; repeat for more
    /// (e.g. `--broker-arg=--read-cache-bytes=1073741824`).
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "spawn_broker"
    )]
    pub broker_arg: Vec<String>,
    #[arg(long, default_value = "loadgen")]
    pub topic: String,
    /// Partitions when the topic is created (default: the broker's shard count).
    #[arg(long, value_name = "N")]
    pub partitions: Option<u32>,
    /// Size retention per partition for the topic, when this run creates it.
    #[arg(long, value_name = "BYTES")]
    pub retention_bytes: Option<i64>,
    /// Payload bytes per message.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub msg_size: usize,
    /// Producer tasks.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub producers: usize,
    /// Messages per batch (produce default 250; e2e: at most this many per send).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Produce requests in flight per producer. The defaults (2 producers x 1
    /// request x 250 messages) keep the ack P99 well under --check's 10 ms on
    /// a 2-core host; deeper pipelines and bigger batches (e.g. --batch 1000
    /// --producers 1 --in-flight 4) give more throughput at a higher P99
    /// (Little's law: latency = messages in flight / rate).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub in_flight: usize,
    /// Target message rate (e2e; for produce it caps the rate).
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<u64>,
    /// How long to run (e.g. 10s, 500ms, 2m; a bare number is seconds).
    #[arg(long, value_parser = parse_duration, conflicts_with = "messages")]
    pub duration: Option<Duration>,
    /// How many messages to send (instead of --duration).
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
    /// Print one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero unless the throughput and P99 targets are met.
    #[arg(long)]
    pub check: bool,
    #[arg(long, value_name = "MSGS_PER_SEC", default_value_t = 100_000.0)]
    pub check_min_rate: f64,
    #[arg(long, value_name = "US", default_value_t = 10_000)]
    pub check_max_p99_us: u64,
    /// Tokio worker threads; 1 = a current-thread runtime.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
}

impl Common {
    pub fn batch_or(&self, default: usize) -> usize {
        self.batch.unwrap_or(default).max(1)
    }
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Append "topic partition offset crc32" for every acknowledged message.
    #[arg(long, value_name = "FILE")]
    pub ack_log: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages to pre-fill before reading (default: --messages, else 500000).
    #[arg(long, value_name = "N")]
    pub prefill: Option<u64>,
    /// Fetch max_bytes per partition (1 MiB fits the CPU caches; 4 MiB was
    /// half as fast from the broker's memory, docs/perf.md).
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub fetch_bytes: u32,
    /// Check every batch CRC while consuming.
    #[arg(long)]
    pub verify_crc: bool,
}

#[derive(Args, Debug)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long to wait for the last messages after producing stops.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Schedule slot per producer, in µs: every slot sends what became due
    /// since the previous one (a message waits on average half a slot).
    #[arg(long, value_name = "US", default_value_t = crate::e2e::DEFAULT_SLOT_US)]
    pub slot_us: u64,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: Common,
    /// The ack log written by `produce --ack-log`.
    #[arg(long, value_name = "FILE")]
    pub ack_log: PathBuf,
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    #[command(flatten)]
    pub common: Common,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (examples: 10s, 500ms, 2m)"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "coremq-loadgen",
            "produce",
            "--spawn-broker",
            "--duration",
            "2s",
            "--json",
            "--ack-log",
            "/tmp/x",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Produce(_)));
    }
}
