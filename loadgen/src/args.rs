//! Command-line flags. The flag names are a contract (scripts and CI use them).
//!
//! Each subcommand lists only the flags it reads: the flag groups below are
//! flattened into the subcommands that use them, and `XArgs::common()` turns
//! them into one `Common` (settings a subcommand has no flag for take their
//! defaults), which the workloads read.

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
    /// Reads a topic back: what it pre-fills (`--prefill`, default 500000),
    /// or with `--prefill 0` everything the topic already holds.
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
    /// Tokio worker threads the subcommand asked for.
    pub fn threads(&self) -> usize {
        let runtime = match self {
            Command::Produce(a) => &a.runtime,
            Command::Consume(a) => &a.runtime,
            Command::E2e(a) => &a.runtime,
            Command::Verify(a) => &a.runtime,
            Command::Quickstart(a) => &a.runtime,
        };
        runtime.threads.max(1)
    }
}

/// Every setting a workload reads, whichever flags its subcommand offers.
#[derive(Debug, Clone)]
pub struct Common {
    pub broker: Option<String>,
    pub spawn_broker: bool,
    pub shards: Option<u16>,
    pub fsync: String,
    pub broker_arg: Vec<String>,
    /// Send partition requests to the owning shard's port (false: every
    /// request to the main port, and the broker forwards).
    pub shard_aware: bool,
    pub topic: String,
    pub partitions: Option<u32>,
    pub retention_bytes: Option<i64>,
    pub msg_size: usize,
    pub producers: usize,
    pub batch: Option<usize>,
    pub in_flight: usize,
    pub rate: Option<u64>,
    pub duration: Option<Duration>,
    pub messages: Option<u64>,
    pub json: bool,
    pub check: bool,
    pub check_min_rate: f64,
    pub check_max_p99_us: u64,
}

impl Common {
    pub fn batch_or(&self, default: usize) -> usize {
        self.batch.unwrap_or(default).max(1)
    }

    fn new(broker: &BrokerArgs, topic: &TopicArgs, output: &OutputArgs) -> Common {
        Common {
            broker: broker.broker.clone(),
            spawn_broker: broker.spawn_broker,
            shards: broker.shards,
            fsync: broker.fsync.clone(),
            broker_arg: broker.broker_arg.clone(),
            shard_aware: !broker.no_shard_aware,
            topic: topic.topic.clone(),
            partitions: topic.partitions,
            retention_bytes: topic.retention_bytes,
            msg_size: DEFAULT_MSG_SIZE,
            producers: DEFAULT_PRODUCERS,
            batch: None,
            in_flight: DEFAULT_IN_FLIGHT,
            rate: None,
            duration: None,
            messages: None,
            json: output.json,
            check: false,
            check_min_rate: DEFAULT_CHECK_MIN_RATE,
            check_max_p99_us: DEFAULT_CHECK_MAX_P99_US,
        }
    }

    fn with_messages(mut self, messages: &MessageArgs) -> Common {
        self.msg_size = messages.msg_size;
        self.producers = messages.producers;
        self.batch = messages.batch;
        self
    }

    fn with_check(mut self, check: &CheckArgs) -> Common {
        self.check = check.check;
        self.check_min_rate = check.check_min_rate;
        self.check_max_p99_us = check.check_max_p99_us;
        self
    }
}

const DEFAULT_MSG_SIZE: usize = 1024;
const DEFAULT_PRODUCERS: usize = 2;
const DEFAULT_IN_FLIGHT: usize = 1;
const DEFAULT_CHECK_MIN_RATE: f64 = 100_000.0;
const DEFAULT_CHECK_MAX_P99_US: u64 = 10_000;

/// Which broker, or a spawned one.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Broker")]
pub struct BrokerArgs {
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
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub broker_arg: Vec<String>,
    /// Send every request to the broker's main port, so that the broker
    /// forwards those for partitions of other shards (by default requests go
    /// straight to the owning shard's port).
    #[arg(long)]
    pub no_shard_aware: bool,
}

/// The topic a run uses (created when missing).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Topic")]
pub struct TopicArgs {
    #[arg(long, default_value = "loadgen")]
    pub topic: String,
    /// Partitions when the topic is created (default: the broker's shard count).
    #[arg(long, value_name = "N")]
    pub partitions: Option<u32>,
    /// Size retention per partition for the topic, when this run creates it.
    #[arg(long, value_name = "BYTES")]
    pub retention_bytes: Option<i64>,
}

/// The messages producers send.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Messages")]
pub struct MessageArgs {
    /// Payload bytes per message.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MSG_SIZE)]
    pub msg_size: usize,
    /// Producer tasks.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PRODUCERS)]
    pub producers: usize,
    /// Messages per batch (produce and consume's prefill default 250; e2e: at
    /// most this many per send).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
}

/// Closed-loop pipelining of the produce engine.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Messages")]
pub struct InFlightArgs {
    /// Produce requests in flight per producer. The defaults (2 producers x 1
    /// request x 250 messages) keep the ack P99 well under --check's 10 ms on
    /// a 2-core host; deeper pipelines and bigger batches (e.g. --batch 1000
    /// --producers 1 --in-flight 4) give more throughput at a higher P99
    /// (Little's law: latency = messages in flight / rate).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_IN_FLIGHT)]
    pub in_flight: usize,
}

/// How long a run lasts.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Run length")]
pub struct RunLengthArgs {
    /// How long to run (e.g. 10s, 500ms, 2m; a bare number is seconds).
    #[arg(long, value_parser = parse_duration, conflicts_with = "messages")]
    pub duration: Option<Duration>,
    /// How many messages to send (instead of --duration).
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Print one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub struct RuntimeArgs {
    /// Tokio worker threads; 1 = a current-thread runtime.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Targets")]
pub struct CheckArgs {
    /// Exit non-zero unless the throughput and P99 targets are met.
    #[arg(long)]
    pub check: bool,
    #[arg(long, value_name = "MSGS_PER_SEC", default_value_t = DEFAULT_CHECK_MIN_RATE)]
    pub check_min_rate: f64,
    #[arg(long, value_name = "US", default_value_t = DEFAULT_CHECK_MAX_P99_US)]
    pub check_max_p99_us: u64,
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub shape: MessageArgs,
    #[command(flatten)]
    pub in_flight: InFlightArgs,
    /// Cap on the message rate.
    #[arg(long, value_name = "MSGS_PER_SEC", help_heading = "Messages")]
    pub rate: Option<u64>,
    #[command(flatten)]
    pub length: RunLengthArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub check: CheckArgs,
    /// Append "topic partition offset crc32" for every acknowledged message.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub ack_log: Option<PathBuf>,
}

impl ProduceArgs {
    pub fn common(&self) -> Common {
        let mut common = Common::new(&self.broker, &self.topic, &self.output)
            .with_messages(&self.shape)
            .with_check(&self.check);
        common.in_flight = self.in_flight.in_flight;
        common.rate = self.rate;
        common.duration = self.length.duration;
        common.messages = self.length.messages;
        common
    }
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    /// Messages to produce before reading; they are what is read back. 0:
    /// produce nothing and read everything the topic holds (from each
    /// partition's log start to its end).
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::consume::DEFAULT_PREFILL,
        help_heading = "Consume"
    )]
    pub prefill: u64,
    #[command(flatten)]
    pub shape: MessageArgs,
    #[command(flatten)]
    pub in_flight: InFlightArgs,
    /// Longest time to read for (e.g. 60s; a bare number is seconds) [default: 60s].
    #[arg(long, value_parser = parse_duration, help_heading = "Consume")]
    pub duration: Option<Duration>,
    /// Fetch max_bytes per partition (1 MiB fits the CPU caches; 4 MiB was
    /// half as fast from the broker's memory, docs/perf.md).
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024, help_heading = "Consume")]
    pub fetch_bytes: u32,
    /// Check every batch CRC while consuming.
    #[arg(long, help_heading = "Consume")]
    pub verify_crc: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub check: CheckArgs,
}

impl ConsumeArgs {
    pub fn common(&self) -> Common {
        let mut common = Common::new(&self.broker, &self.topic, &self.output)
            .with_messages(&self.shape)
            .with_check(&self.check);
        common.in_flight = self.in_flight.in_flight;
        common.duration = self.duration;
        common
    }
}

#[derive(Args, Debug)]
pub struct E2eArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub shape: MessageArgs,
    /// Target message rate, over all producers [default: 100000].
    #[arg(long, value_name = "MSGS_PER_SEC", help_heading = "Messages")]
    pub rate: Option<u64>,
    #[command(flatten)]
    pub length: RunLengthArgs,
    /// How long to wait for the last messages after producing stops.
    #[arg(long, value_parser = parse_duration, default_value = "5s", help_heading = "Run length")]
    pub drain: Duration,
    /// Schedule slot per producer, in µs: every slot sends what became due
    /// since the previous one (a message waits on average half a slot).
    #[arg(
        long,
        value_name = "US",
        default_value_t = crate::e2e::DEFAULT_SLOT_US,
        help_heading = "Messages"
    )]
    pub slot_us: u64,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub check: CheckArgs,
}

impl E2eArgs {
    pub fn common(&self) -> Common {
        let mut common = Common::new(&self.broker, &self.topic, &self.output)
            .with_messages(&self.shape)
            .with_check(&self.check);
        common.rate = self.rate;
        common.duration = self.length.duration;
        common.messages = self.length.messages;
        common
    }
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Broker address (host:port): the broker the ack log was written
    /// against, restarted on its data directory.
    #[arg(long, value_name = "ADDR", default_value = crate::setup::DEFAULT_BROKER)]
    pub broker: String,
    /// Send every request to the broker's main port (the broker forwards).
    #[arg(long)]
    pub no_shard_aware: bool,
    /// The ack log written by `produce --ack-log`.
    #[arg(long, value_name = "FILE")]
    pub ack_log: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl VerifyArgs {
    pub fn common(&self) -> Common {
        let broker = BrokerArgs {
            broker: Some(self.broker.clone()),
            spawn_broker: false,
            shards: None,
            fsync: String::new(),
            broker_arg: Vec::new(),
            no_shard_aware: self.no_shard_aware,
        };
        let topic = TopicArgs {
            topic: String::new(),
            partitions: None,
            retention_bytes: None,
        };
        Common::new(&broker, &topic, &self.output)
    }
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic to produce to and read back (created when missing).
    #[arg(long, default_value = "quickstart", help_heading = "Topic")]
    pub topic: String,
    /// Partitions when the topic is created (default: the broker's shard count).
    #[arg(long, value_name = "N", help_heading = "Topic")]
    pub partitions: Option<u32>,
    #[command(flatten)]
    pub shape: MessageArgs,
    #[command(flatten)]
    pub in_flight: InFlightArgs,
    #[command(flatten)]
    pub length: RunLengthArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl QuickstartArgs {
    /// A spawned broker unless --broker, and 3 s of produce unless told.
    pub fn common(&self) -> Common {
        let topic = TopicArgs {
            topic: self.topic.clone(),
            partitions: self.partitions,
            retention_bytes: None,
        };
        let mut common = Common::new(&self.broker, &topic, &OutputArgs { json: false })
            .with_messages(&self.shape);
        common.spawn_broker = common.broker.is_none();
        common.in_flight = self.in_flight.in_flight;
        common.duration = self.length.duration;
        common.messages = self.length.messages;
        if common.duration.is_none() && common.messages.is_none() {
            common.duration = Some(QUICKSTART_DURATION);
        }
        common
    }
}

const QUICKSTART_DURATION: Duration = Duration::from_secs(3);

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
