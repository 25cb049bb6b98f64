//! Broker configuration: command-line flags (clap), optionally layered over a
//! TOML file (`--config FILE`; flags given on the command line win).

use clap::Parser;
use coremq_shard::Durability;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// CoreMQ: a thread-per-core message broker (one shard per CPU core, io_uring,
/// O_DIRECT commit logs, group commit).
#[derive(Parser, Debug, Clone)]
#[command(name = "coremq", version, about, long_about = None)]
pub struct Args {
    /// TOML file with any of the settings below (keys use underscores, e.g.
    /// `data_dir = "/var/lib/coremq"`). Command-line flags override it.
    /// [default: none]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where the commit logs, indexes and topic catalog live (one `shard-<i>`
    /// folder per shard). Must be on a real file system (O_DIRECT), not tmpfs.
    /// [default: ./coremq-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Main address. Every shard accepts here (SO_REUSEPORT); shard i also
    /// listens on port + 1 + i. Port 0 picks free ports (printed at start).
    /// [default: 127.0.0.1:9092]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,

    /// Number of shards (one per core, pinned). More shards than usable
    /// cores is refused unless `--force-shards` is given (each shard
    /// pre-allocates a segment).
    /// [default: every core this process may run on]
    #[arg(long, value_name = "N")]
    pub shards: Option<u16>,

    /// Allow `--shards` above the number of cores this process may run on.
    #[arg(long)]
    pub force_shards: bool,

    /// Default durability for topics: `always` (ack after fdatasync, group
    /// commit), `interval:MS` (ack after write, fdatasync every MS), `never`.
    /// [default: always]
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<String>,

    /// Size of each commit-log segment file, in bytes.
    /// [default: 1073741824 (1 GiB)]
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<u64>,

    /// Largest frame a client may send, in bytes (bigger ones are refused and
    /// the connection closed). [default: 67108864 (64 MiB)]
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<u32>,

    /// Largest record batch accepted, in bytes. [default: 16777216 (16 MiB)]
    #[arg(long, value_name = "BYTES")]
    pub max_batch_bytes: Option<usize>,

    /// Open connections allowed per shard; more are closed at accept.
    /// [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Requests one connection may have in flight before the broker stops
    /// reading from it (backpressure). [default: 256]
    #[arg(long, value_name = "N")]
    pub max_in_flight_per_connection: Option<usize>,

    /// Bytes one connection may hold in requests being served and responses
    /// not yet written to its socket; beyond it the broker stops reading
    /// that connection (backpressure).
    /// [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    pub max_connection_buffer_bytes: Option<u64>,

    /// Bytes all connections of one shard may hold together (same
    /// accounting as `--max-connection-buffer-bytes`).
    /// [default: 536870912]
    #[arg(long, value_name = "BYTES")]
    pub max_shard_buffer_bytes: Option<u64>,

    /// Bytes of produce requests forwarded from other shards that one shard
    /// serves at once; beyond it the forwarding shards wait.
    /// [default: 268435456]
    #[arg(long, value_name = "BYTES")]
    pub max_forwarded_bytes: Option<u64>,

    /// Close a connection that sent nothing and has nothing in flight for
    /// this long, in milliseconds (10 min).
    /// [default: 600000]
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,

    /// A frame whose first bytes arrived must be complete within this many
    /// milliseconds, or the connection is closed (slow clients cannot hold
    /// connections with partial frames).
    /// [default: 30000]
    #[arg(long, value_name = "MS")]
    pub read_timeout_ms: Option<u64>,

    /// Most topics the broker holds.
    /// [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_topics: Option<usize>,

    /// Bytes of recently written log kept in memory per shard for readers.
    /// [default: 67108864 (64 MiB)]
    #[arg(long, value_name = "BYTES")]
    pub read_cache_bytes: Option<usize>,

    /// Spin this many microseconds before an idle shard parks (lower latency,
    /// burns CPU). 0 disables. [default: 0]
    #[arg(long, value_name = "US")]
    pub spin_before_park_us: Option<u64>,

    /// Do not pin shards to cores (for hosts where pinning is not allowed).
    #[arg(long)]
    pub no_pin: bool,

    /// Delete segments retention releases instead of reusing their files as
    /// new segments (reuse is the default: appends into written blocks are
    /// cheaper than into fresh pre-allocated ones, docs/perf.md).
    #[arg(long)]
    pub no_recycle_segments: bool,

    /// Start even though acknowledged log data is damaged: copy each damaged
    /// range aside (shard-<i>/quarantine/), keep everything before and after
    /// it, and log the partition offsets lost. Without it such a shard
    /// refuses to start (docs/storage.md, "Damage"). Command line only.
    #[arg(long)]
    pub repair_corruption: bool,
}

/// Settings as the TOML file spells them.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    shards: Option<u16>,
    force_shards: Option<bool>,
    fsync: Option<String>,
    segment_bytes: Option<u64>,
    max_frame_bytes: Option<u32>,
    max_batch_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_in_flight_per_connection: Option<usize>,
    max_connection_buffer_bytes: Option<u64>,
    max_shard_buffer_bytes: Option<u64>,
    max_forwarded_bytes: Option<u64>,
    idle_timeout_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
    max_topics: Option<usize>,
    read_cache_bytes: Option<usize>,
    spin_before_park_us: Option<u64>,
    no_pin: Option<bool>,
    no_recycle_segments: Option<bool>,
}

/// The resolved configuration, copied to every shard at start-up.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub shards: u16,
    pub default_durability: Durability,
    pub segment_bytes: u64,
    pub max_frame_bytes: u32,
    pub max_batch_bytes: usize,
    pub max_connections: usize,
    pub max_in_flight_per_connection: usize,
    pub max_connection_buffer_bytes: u64,
    pub max_shard_buffer_bytes: u64,
    pub max_forwarded_bytes: u64,
    pub idle_timeout: Duration,
    pub read_timeout: Duration,
    pub max_topics: usize,
    pub read_cache_bytes: usize,
    pub spin_before_park: Option<Duration>,
    pub pin_cores: bool,
    pub recycle_segments: bool,
    pub repair_corruption: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid --fsync: {0}")]
    Durability(String),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";

impl BrokerConfig {
    pub fn from_args(args: Args) -> Result<BrokerConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let shards = args.shards.or(file.shards).unwrap_or_else(default_shards);
        if shards == 0 || shards > 1024 {
            return Err(ConfigError::Invalid(format!(
                "--shards must be 1..=1024, got {shards}"
            )));
        }
        let usable_cores = default_shards();
        let force_shards = args.force_shards || file.force_shards.unwrap_or(false);
        if shards > usable_cores && !force_shards {
            return Err(ConfigError::Invalid(format!(
                "--shards {shards} is more than the {usable_cores} cores this process may run on: \
                 shards would share cores, and each pre-allocates a commit-log segment \
                 (--segment-bytes) on disk. Use --shards {usable_cores} or fewer, or add \
                 --force-shards to run anyway"
            )));
        }
        let fsync = args
            .fsync
            .or(file.fsync)
            .unwrap_or_else(|| "always".to_string());
        let default_durability = fsync.parse().map_err(ConfigError::Durability)?;
        let listen = match args.listen.or(file.listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| ConfigError::Invalid("default listen".into()))?,
        };
        if listen.port() != 0 && listen.port() as u32 + shards as u32 > u16::MAX as u32 {
            return Err(ConfigError::Invalid(format!(
                "port {} + {shards} shards exceeds 65535",
                listen.port()
            )));
        }
        let segment_bytes = args.segment_bytes.or(file.segment_bytes).unwrap_or(1 << 30);
        if segment_bytes < 1 << 20 || !segment_bytes.is_multiple_of(4096) {
            return Err(ConfigError::Invalid(format!(
                "--segment-bytes must be a multiple of 4096 and at least 1 MiB, got {segment_bytes}"
            )));
        }
        let max_frame_bytes = args
            .max_frame_bytes
            .or(file.max_frame_bytes)
            .unwrap_or(64 << 20);
        let max_batch_bytes = args
            .max_batch_bytes
            .or(file.max_batch_bytes)
            .unwrap_or(16 << 20);
        if max_batch_bytes as u64 > segment_bytes / 2 {
            return Err(ConfigError::Invalid(
                "--max-batch-bytes must be at most half of --segment-bytes".into(),
            ));
        }
        let max_frame_bytes_u64 = u64::from(max_frame_bytes);
        let max_connection_buffer_bytes = args
            .max_connection_buffer_bytes
            .or(file.max_connection_buffer_bytes)
            .unwrap_or(64 << 20);
        let max_shard_buffer_bytes = args
            .max_shard_buffer_bytes
            .or(file.max_shard_buffer_bytes)
            .unwrap_or(512 << 20);
        if max_connection_buffer_bytes < max_frame_bytes_u64
            || max_shard_buffer_bytes < max_connection_buffer_bytes
        {
            return Err(ConfigError::Invalid(format!(
                "need --max-frame-bytes ({max_frame_bytes}) <= --max-connection-buffer-bytes \
                 ({max_connection_buffer_bytes}) <= --max-shard-buffer-bytes ({max_shard_buffer_bytes})"
            )));
        }
        let max_forwarded_bytes = args
            .max_forwarded_bytes
            .or(file.max_forwarded_bytes)
            .unwrap_or(256 << 20);
        if max_forwarded_bytes < max_frame_bytes_u64 {
            return Err(ConfigError::Invalid(format!(
                "--max-forwarded-bytes ({max_forwarded_bytes}) must be at least \
                 --max-frame-bytes ({max_frame_bytes})"
            )));
        }
        let idle_timeout_ms = args
            .idle_timeout_ms
            .or(file.idle_timeout_ms)
            .unwrap_or(600_000);
        let read_timeout_ms = args
            .read_timeout_ms
            .or(file.read_timeout_ms)
            .unwrap_or(30_000);
        if idle_timeout_ms == 0 || read_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "--idle-timeout-ms and --read-timeout-ms must be above 0".into(),
            ));
        }
        let max_topics = args.max_topics.or(file.max_topics).unwrap_or(10_000);
        if max_topics == 0 {
            return Err(ConfigError::Invalid("--max-topics must be above 0".into()));
        }
        let spin = args
            .spin_before_park_us
            .or(file.spin_before_park_us)
            .unwrap_or(0);
        Ok(BrokerConfig {
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./coremq-data")),
            listen,
            shards,
            default_durability,
            segment_bytes,
            max_frame_bytes,
            max_batch_bytes,
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
            max_in_flight_per_connection: args
                .max_in_flight_per_connection
                .or(file.max_in_flight_per_connection)
                .unwrap_or(256),
            max_connection_buffer_bytes,
            max_shard_buffer_bytes,
            max_forwarded_bytes,
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            read_timeout: Duration::from_millis(read_timeout_ms),
            max_topics,
            read_cache_bytes: args
                .read_cache_bytes
                .or(file.read_cache_bytes)
                .unwrap_or(64 << 20),
            spin_before_park: (spin > 0).then(|| Duration::from_micros(spin)),
            pin_cores: !(args.no_pin || file.no_pin.unwrap_or(false)),
            recycle_segments: !(args.no_recycle_segments
                || file.no_recycle_segments.unwrap_or(false)),
            repair_corruption: args.repair_corruption,
        })
    }
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

/// Cores this process may run on (respects taskset / cgroup cpusets).
pub fn default_shards() -> u16 {
    std::thread::available_parallelism()
        .map(|n| n.get().min(1024) as u16)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BrokerConfig, ConfigError> {
        let mut all = vec!["coremq"];
        all.extend_from_slice(args);
        BrokerConfig::from_args(Args::parse_from(all))
    }

    #[test]
    fn defaults_work_on_a_laptop() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.data_dir, PathBuf::from("./coremq-data"));
        assert_eq!(config.default_durability, Durability::Always);
        assert!(config.shards >= 1);
    }

    #[test]
    fn flags_and_file_layer() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("coremq.toml");
        std::fs::write(
            &file,
            "shards = 3\nfsync = \"never\"\nlisten = \"127.0.0.1:7000\"\n",
        )
        .unwrap();
        let config = parse(&["--config", file.to_str().unwrap(), "--shards", "2"]).unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.default_durability, Durability::Never);
        assert_eq!(config.listen.port(), 7000);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert!(matches!(
            parse(&["--fsync", "sometimes"]),
            Err(ConfigError::Durability(_))
        ));
        assert!(matches!(
            parse(&["--shards", "0"]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            parse(&["--segment-bytes", "1000"]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            parse(&["--max-connection-buffer-bytes", "1024"]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            parse(&["--read-timeout-ms", "0"]),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn more_shards_than_cores_needs_force() {
        let too_many = (default_shards() + 1).to_string();
        match parse(&["--shards", &too_many]) {
            Err(ConfigError::Invalid(message)) => {
                assert!(message.contains("--force-shards"), "{message}");
                assert!(message.contains("cores"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let forced = parse(&["--shards", &too_many, "--force-shards"]).unwrap();
        assert_eq!(forced.shards.to_string(), too_many);
    }
}
