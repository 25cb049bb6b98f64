//! The client against the real `coremq` binary (target/<profile>/coremq, built
//! by `cargo test --workspace`); skipped, saying so, only when it does not exist.

use coremq_client::{
    Admin, Client, Consumer, ErrorCode, OffsetReset, OffsetSpec, Producer, Record, TopicConfig,
};
use futures::StreamExt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn broker_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("coremq");
    if candidate.is_file() {
        Some(candidate)
    } else {
        // Straight to stderr: cargo captures eprintln! of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: broker binary {} does not exist (build it with `cargo build --bin coremq`)",
            candidate.display()
        );
        None
    }
}

struct Broker {
    binary: PathBuf,
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts on port 0: the broker picks free ports itself and prints them.
    fn start(binary: &Path) -> Broker {
        Broker::start_with(binary, &[])
    }

    /// Starts with more broker flags.
    fn start_with(binary: &Path, extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let (child, addr) = spawn(binary, "127.0.0.1:0", dir.path(), extra);
        Broker {
            binary: binary.to_path_buf(),
            child,
            addr,
            dir,
        }
    }

    /// SIGKILL, then start again on the same data dir and the same ports.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr) = spawn(&self.binary, &self.addr, self.dir.path(), &[]);
        assert_eq!(addr, self.addr);
        self.child = child;
    }
}

/// Starts the broker and returns it with the main address from its ready
/// line: `coremq listening on ADDR shards=N shard_ports=a,b`.
fn spawn(binary: &Path, listen: &str, dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(binary)
        .args(["--shards", "2", "--listen", listen, "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the broker");
    let stdout = child.stdout.take().expect("stdout");
    let addr = coremq_client::ReadyLine::read(stdout)
        .expect("the broker's ready line")
        .main_address
        .to_string();
    (child, addr)
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn admin_producer_consumer_round_trip() {
    let Some(binary) = broker_binary() else {
        return;
    };
    let broker = Broker::start(&binary);
    let client = Client::connect(broker.addr.as_str()).await.unwrap();
    assert_eq!(client.metadata().shard_count, 2);
    let admin = Admin::new(client.clone());
    admin
        .create_topic("orders", &TopicConfig::new(3))
        .await
        .unwrap();
    let again = admin
        .create_topic("orders", &TopicConfig::new(3))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::TopicAlreadyExists), "{again}");
    let topics = admin.list_topics().await.unwrap();
    assert!(topics
        .iter()
        .any(|t| t.name == "orders" && t.partitions == 3));

    let producer = Producer::builder(client.clone()).build();
    let values: Vec<String> = (0..300).map(|i| format!("order-{i}")).collect();
    let keys = [b"alice".as_slice(), b"bob", b"carol"];
    let headers: &[(&[u8], &[u8])] = &[(b"h", b"v")];
    let sends = values.iter().enumerate().map(|(i, v)| {
        producer.send(
            Record::new("orders", v.as_bytes())
                .key(keys[i % 3])
                .headers(headers),
        )
    });
    let acks = futures::future::join_all(sends).await;
    let acks: Vec<(u32, u64)> = acks.into_iter().map(|a| a.unwrap()).collect();
    producer.flush().await.unwrap();

    // Same key, same partition, offsets increasing in send order.
    for key in 0..3 {
        let mine: Vec<&(u32, u64)> = acks.iter().skip(key).step_by(3).collect();
        assert!(mine.iter().all(|(p, _)| *p == mine[0].0));
        assert!(mine.windows(2).all(|w| w[0].1 < w[1].1));
    }

    let consumer = Consumer::new(client.clone());
    let (partition, _) = acks[0];
    let expected: Vec<&String> = values
        .iter()
        .zip(&acks)
        .filter(|(_, (p, _))| *p == partition)
        .map(|(v, _)| v)
        .collect();
    let start = consumer
        .offset("orders", partition, OffsetSpec::Earliest)
        .await
        .unwrap();
    let latest = consumer
        .offset("orders", partition, OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(latest - start, expected.len() as u64);
    let records: Vec<_> = consumer
        .stream("orders", partition, start)
        .take(expected.len())
        .collect()
        .await;
    for (record, value) in records.iter().zip(&expected) {
        let record = record.as_ref().unwrap();
        assert_eq!(record.value, value.as_bytes());
        assert_eq!(record.headers.len(), 1);
    }

    // Batch-level fetch from the middle of a batch skips earlier records.
    let fetched = consumer
        .fetch("orders", partition, start + 5)
        .await
        .unwrap();
    let summary = fetched.summarize(true).unwrap();
    assert_eq!(summary.records, expected.len() as u64 - 5);
    assert_eq!(summary.next_offset, latest);
    assert_eq!(fetched.records().unwrap()[0].offset, start + 5);

    let out_of_range = consumer
        .fetch("orders", partition, latest + 100)
        .await
        .unwrap_err();
    assert_eq!(out_of_range.code(), Some(ErrorCode::OffsetOutOfRange));

    let stats = admin.stats(false).await.unwrap();
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().any(|s| s.histogram("produce_us").is_some()));

    admin.delete_topic("orders").await.unwrap();
    let gone = producer
        .send(Record::new("orders", b"x").partition(0))
        .await;
    assert!(gone.is_err());

    // Re-created with another partition count: the producer notices.
    admin
        .create_topic("orders", &TopicConfig::new(1))
        .await
        .unwrap();
    let mut result = producer.send(Record::new("orders", b"again")).await;
    for _ in 0..2 {
        if result.is_ok() {
            break;
        }
        result = producer.send(Record::new("orders", b"again")).await;
    }
    assert_eq!(result.unwrap(), (0, 0));
}

#[tokio::test]
async fn client_reconnects_after_the_broker_restarts() {
    let Some(binary) = broker_binary() else {
        return;
    };
    let mut broker = Broker::start(&binary);
    let client = Client::connect(broker.addr.as_str()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("t", &TopicConfig::new(2))
        .await
        .unwrap();
    let mut batch = coremq_wire::BatchBuilder::with_capacity(256);
    batch.push(1, None, b"before", &[]).unwrap();
    let batch = batch.finish();
    let first = client.produce("t", 0, &batch).await.unwrap();
    broker.restart();
    // The old connection is dead: the first call may fail, later ones reconnect.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ack = loop {
        match client.produce("t", 0, &batch).await {
            Ok(ack) => break ack,
            Err(error) => {
                assert!(error.is_connection(), "{error}");
                assert!(Instant::now() < deadline, "no reconnect: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        ack.base_offset > first.base_offset,
        "acked data survives a restart"
    );
}

/// Retention deletes the segments a slow consumer was about to read: by
/// default its stream jumps to the new log start and goes on; with
/// `OffsetReset::Fail` it yields `OffsetOutOfRange`.
#[tokio::test]
async fn stream_behind_retention_resets_to_the_log_start() {
    let Some(binary) = broker_binary() else {
        return;
    };
    let broker = Broker::start_with(
        &binary,
        &["--segment-bytes", "2097152", "--max-batch-bytes", "262144"],
    );
    let client = Client::connect(broker.addr.as_str()).await.unwrap();
    let mut config = TopicConfig::new(1);
    config.retention_bytes = Some(2 << 20);
    Admin::new(client.clone())
        .create_topic("short", &config)
        .await
        .unwrap();
    let producer = Producer::builder(client.clone())
        .batch_bytes(128 * 1024)
        .build();
    let value = vec![7u8; 1000];
    let sends = (0..12_000).map(|_| producer.send(Record::new("short", &value).partition(0)));
    for ack in futures::future::join_all(sends).await {
        ack.unwrap();
    }
    // Maintenance (every 100 ms) deletes whole old segments.
    let consumer = Consumer::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let start = loop {
        let start = consumer
            .offset("short", 0, OffsetSpec::Earliest)
            .await
            .unwrap();
        if start > 0 {
            break start;
        }
        assert!(Instant::now() < deadline, "retention deleted nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let first = Box::pin(consumer.stream("short", 0, 0))
        .next()
        .await
        .expect("a record")
        .expect("no error: the stream resets");
    assert!(first.offset >= start, "{} < {start}", first.offset);

    let failing = Consumer::new(client).with_offset_reset(OffsetReset::Fail);
    let error = Box::pin(failing.stream("short", 0, 0))
        .next()
        .await
        .expect("an item")
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange), "{error}");
}
