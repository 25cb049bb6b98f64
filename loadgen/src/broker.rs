//! Spawning a `coremq` broker for a run: temporary data dir, port 0, wait
//! until it answers metadata, SIGTERM (then kill) when dropped.

use anyhow::{bail, Context, Result};
use coremq_client::{Client, ClientConfig, ReadyLine};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "coremq";

/// Finds the broker binary: next to this executable (and its parent, for
/// target/<profile>/deps), then $COREMQ_BIN, then PATH.
pub fn find_binary() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            for candidate in [dir.join(BINARY), dir.join("..").join(BINARY)] {
                if candidate.is_file() {
                    return Ok(candidate);
                }
                tried.push(candidate.display().to_string());
            }
        }
    }
    if let Some(path) = std::env::var_os("COREMQ_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        tried.push(format!("$COREMQ_BIN={}", path.display()));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(BINARY);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        tried.push("$PATH".to_string());
    }
    bail!(
        "cannot find the `{BINARY}` broker binary (looked in: {}). Build it with \
         `cargo build --release` (it lands next to coremq-loadgen in target/release), \
         or set COREMQ_BIN=/path/to/coremq",
        tried.join(", ")
    )
}

pub struct SpawnedBroker {
    child: Child,
    pub addr: String,
    log_path: PathBuf,
    // Dropped after the child stops: removes the data and the log.
    _dir: tempfile::TempDir,
}

impl SpawnedBroker {
    pub async fn start(shards: u16, fsync: &str, extra: &[String]) -> Result<SpawnedBroker> {
        let binary = find_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("coremq-loadgen-")
            .tempdir()
            .context("creating a temporary data dir")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let log_path = dir.path().join("broker.log");
        let log = File::create(&log_path)?;
        // Port 0: the broker picks its ports itself and prints them, so
        // parallel runs never race for a port between probing and binding.
        let child = Command::new(&binary)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--fsync")
            .arg(fsync)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut broker = SpawnedBroker {
            child,
            addr: String::new(),
            log_path,
            _dir: dir,
        };
        broker.wait_ready(Duration::from_secs(30)).await?;
        eprintln!(
            "spawned broker {} (pid {}) on {} with {shards} shards, fsync {fsync}",
            binary.display(),
            broker.child.id(),
            broker.addr
        );
        Ok(broker)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let config = ClientConfig {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            ..ClientConfig::default()
        };
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the broker exited during start-up ({status}); its log:\n{}",
                    excerpt(&self.log_path)
                );
            }
            if self.addr.is_empty() {
                match listening_address(&self.log_path) {
                    Some(addr) => self.addr = addr,
                    None if start.elapsed() > limit => bail!(
                        "the broker did not report its address within {limit:?}; its log:\n{}",
                        excerpt(&self.log_path)
                    ),
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            match Client::connect_with(self.addr.clone(), config.clone()).await {
                Ok(client) if client.metadata().shard_count > 0 => return Ok(()),
                Ok(_) => {}
                Err(error) if start.elapsed() > limit => {
                    bail!(
                        "the broker did not answer metadata within {limit:?}: {error}; its log:\n{}",
                        excerpt(&self.log_path)
                    )
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_path)
    }

    fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        let pid = self.child.id();
        // SIGTERM for a graceful shutdown; `Child::kill` only sends SIGKILL.
        let terminated = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        if terminated {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if !self.is_running() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("broker pid {pid} ignored SIGTERM for 10 s; killing it");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The main address from the broker's ready line on stdout:
/// `coremq listening on 127.0.0.1:PORT shards=N shard_ports=a,b`.
fn listening_address(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find_map(ReadyLine::parse)
        .map(|ready| ready.main_address.to_string())
}

/// The part of a failed broker's log that explains the failure: from the
/// first error line on (`coremq` ends with one `error: ...` line; an ERROR
/// log line or a panic may come before it), or the last lines when there is
/// none.
fn excerpt(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let first_error = lines
        .iter()
        .position(|l| l.starts_with("error:") || l.contains("ERROR") || l.contains("panicked"));
    match first_error {
        Some(at) => lines[at..lines.len().min(at + 40)].join("\n"),
        None => tail(path),
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
