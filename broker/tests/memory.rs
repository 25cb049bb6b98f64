//! A client that pipelines requests and never reads its responses holds a
//! bounded amount of broker memory, and the broker keeps serving others.

mod common;
use common::*;
use coremq_wire::batch::BatchBuilder;
use coremq_wire::frame::{encode_frame, Kind};
use coremq_wire::ErrorCode;
use std::io::Write;
use std::time::{Duration, Instant};

/// The broker's resident memory, from /proc/<pid>/status.
pub fn rss_bytes(broker: &Broker) -> u64 {
    let pid = broker.child.as_ref().expect("running broker").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// A batch of `count` records of `value_bytes` each.
fn big_batch(count: u32, value_bytes: usize) -> Vec<u8> {
    let value = vec![b'v'; value_bytes];
    let mut builder = BatchBuilder::with_capacity(64 + count as usize * (value_bytes + 32));
    for i in 0..count {
        builder
            .push(1_700_000_000_000 + i as i64, None, &value, &[])
            .expect("push");
    }
    builder.finish()
}

/// Sends `requests` frames on a connection that is never read, then waits
/// until the broker reports it stopped reading a connection, checking all
/// along that its memory stays under `baseline + bound_bytes`.
fn stall_and_watch(
    broker: &Broker,
    watcher: &mut Conn,
    stalled: &mut Conn,
    requests: Vec<u8>,
    bound_bytes: u64,
) {
    let baseline = rss_bytes(broker);
    let sender = send_from_thread(stalled, requests);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = baseline;
    loop {
        let rss = rss_bytes(broker);
        peak = peak.max(rss);
        assert!(
            rss < baseline + bound_bytes,
            "broker memory grew from {} MiB to {} MiB",
            baseline >> 20,
            rss >> 20
        );
        if watcher.counter("reads_paused") > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never stopped reading"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Paused: memory stays bounded while the stalled client still does not read.
    let rss = rss_bytes(broker);
    assert!(rss < baseline + bound_bytes, "grew to {} MiB", rss >> 20);
    eprintln!(
        "baseline {} MiB, peak {} MiB, now {} MiB, buffered {} bytes",
        baseline >> 20,
        peak.max(rss) >> 20,
        rss >> 20,
        watcher.counter("buffered_bytes")
    );
    let _ = stalled.stream.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
}

/// Writes `requests` from a thread (the broker may stop reading part way).
fn send_from_thread(conn: &mut Conn, requests: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut writer = conn.stream.try_clone().expect("clone");
    std::thread::spawn(move || {
        let _ = writer.write_all(&requests);
    })
}

/// Sends `requests` unread and waits until the broker pauses the connection.
fn stall_and_watch_open(
    broker: &Broker,
    _watcher: &mut Conn,
    stalled: &mut Conn,
    requests: Vec<u8>,
) {
    let _sender = send_from_thread(stalled, requests);
    let deadline = Instant::now() + Duration::from_secs(60);
    // A fresh watcher per look (one that waits between looks may count as idle).
    while broker.connect().counter("reads_paused") == 0 {
        assert!(
            Instant::now() < deadline,
            "the broker never stopped reading"
        );
        assert!(rss_bytes(broker) > 0);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unread_fetches_hold_bounded_memory() {
    let broker = Broker::start(2, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 4, Some("never")), ErrorCode::None);
    // Fetch through shard 0 a partition of shard 1: every fetch is forwarded.
    let partition = partition_on_shard("t", 4, 1, 2);
    for _ in 0..4 {
        let (error, _) = conn.produce("t", partition, &big_batch(240, 1000));
        assert_eq!(error, ErrorCode::None);
    }
    // 3,000 fetches of 1 MiB each: about 3 GB of responses if all were kept.
    let mut requests = Vec::new();
    let body = fetch_body("t", partition, 0, 1 << 20, 0);
    for id in 0..3_000u64 {
        encode_frame(&mut requests, Kind::Fetch.request(), id, &body);
    }
    let mut stalled = broker.connect_shard(0);
    stall_and_watch(&broker, &mut conn, &mut stalled, requests, 256 << 20);
    // Still serving everyone else.
    let mut other = broker.connect();
    let (error, high_watermark, batches) = other.fetch("t", partition, 0, 0);
    assert_eq!(error, ErrorCode::None);
    assert_eq!(high_watermark, 960);
    assert!(!batches.is_empty());
    assert_eq!(
        other.produce("t", partition, &batch("after", 2)).0,
        ErrorCode::None
    );
}

#[test]
fn unread_produces_hold_bounded_memory() {
    let broker = Broker::start(1, &["--max-in-flight-per-connection", "64"]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("p", 1, Some("never")), ErrorCode::None);
    let batch = batch("x", 1);
    let body = produce_body(&[("p", 0, &batch)]);
    let mut requests = Vec::new();
    for id in 0..400_000u64 {
        encode_frame(&mut requests, Kind::Produce.request(), id, &body);
    }
    let mut stalled = broker.connect();
    stall_and_watch(&broker, &mut conn, &mut stalled, requests, 64 << 20);
    let mut other = broker.connect();
    assert_eq!(other.produce("p", 0, &batch).0, ErrorCode::None);
}

/// (The idle timeout leaves the watcher, polling every 20 ms, far from it
/// even on a loaded machine.)
#[test]
fn a_client_that_stops_reading_is_closed_and_its_memory_released() {
    let broker = Broker::start(1, &["--idle-timeout-ms", "2000"]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 1, Some("never")), ErrorCode::None);
    for _ in 0..4 {
        assert_eq!(
            conn.produce("t", 0, &big_batch(240, 1000)).0,
            ErrorCode::None
        );
    }
    let mut requests = Vec::new();
    let body = fetch_body("t", 0, 0, 1 << 20, 0);
    for id in 0..500u64 {
        encode_frame(&mut requests, Kind::Fetch.request(), id, &body);
    }
    let mut stalled = broker.connect();
    stall_and_watch_open(&broker, &mut conn, &mut stalled, requests);
    let deadline = Instant::now() + Duration::from_secs(15);
    // What is still buffered is the stats request asking (a few hundred bytes).
    // A fresh watcher per look: this test is about the stalled client, and
    // a watcher that waits between looks may itself count as idle.
    loop {
        let mut watcher = broker.connect();
        let timed_out = watcher.counter("connections_timed_out");
        let buffered = watcher.counter("buffered_bytes");
        if timed_out > 0 && buffered <= 4096 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled client was never closed: timed out {timed_out}, buffered {buffered}, connections {}, requests {}",
            watcher.counter("connections"),
            watcher.counter("requests")
        );
        drop(watcher);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_connections_are_cheap() {
    let broker = Broker::start(1, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 1, None), ErrorCode::None);
    let connections = 1_000u64;
    let baseline = rss_bytes(&broker);
    let mut idle: Vec<Conn> = (0..connections).map(|_| broker.connect()).collect();
    // Each connection is used once (its buffers grow), then stays idle.
    for c in &mut idle {
        assert_eq!(c.metadata().1.len(), 1);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let per_connection = rss_bytes(&broker).saturating_sub(baseline) / connections;
        if per_connection < 64 * 1024 {
            eprintln!("{per_connection} bytes per idle connection");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle connections hold {per_connection} bytes each"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(idle);
    assert_eq!(conn.metadata().1.len(), 1);
}
