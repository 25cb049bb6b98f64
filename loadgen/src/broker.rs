//! Spawning a `coremq` broker for a run: temporary data dir, free port, wait
//! until it answers metadata, SIGTERM (then kill) when dropped.

use anyhow::{bail, Context, Result};
use coremq_client::{Client, ClientConfig};
use std::fs::File;
use std::net::TcpListener;
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

/// A port P such that P and the shard ports P+1..=P+shards are free now.
fn free_port_range(shards: u16) -> Result<u16> {
    for _ in 0..50 {
        let probe = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
        let port = probe.local_addr()?.port();
        drop(probe);
        if u32::from(port) + u32::from(shards) + 1 > 65535 {
            continue;
        }
        let all_free = (0..=shards).all(|i| TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if all_free {
            return Ok(port);
        }
    }
    bail!("no free range of {} ports on 127.0.0.1", shards + 1)
}

pub struct SpawnedBroker {
    child: Child,
    pub addr: String,
    log_path: PathBuf,
    // Dropped after the child stops: removes the data and the log.
    _dir: tempfile::TempDir,
}

impl SpawnedBroker {
    pub async fn start(shards: u16, fsync: &str) -> Result<SpawnedBroker> {
        let binary = find_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("coremq-loadgen-")
            .tempdir()
            .context("creating a temporary data dir")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let log_path = dir.path().join("broker.log");
        let log = File::create(&log_path)?;
        let port = free_port_range(shards)?;
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(&binary)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(&addr)
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--fsync")
            .arg(fsync)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut broker = SpawnedBroker {
            child,
            addr,
            log_path,
            _dir: dir,
        };
        eprintln!(
            "spawned broker {} (pid {}) on {} with {shards} shards, fsync {fsync}",
            binary.display(),
            broker.child.id(),
            broker.addr
        );
        broker.wait_ready(Duration::from_secs(30)).await?;
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
                    tail(&self.log_path)
                );
            }
            match Client::connect_with(self.addr.clone(), config.clone()).await {
                Ok(client) if client.metadata().shard_count > 0 => return Ok(()),
                Ok(_) => {}
                Err(error) if start.elapsed() > limit => {
                    bail!(
                        "the broker did not answer metadata within {limit:?}: {error}; its log:\n{}",
                        tail(&self.log_path)
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

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
