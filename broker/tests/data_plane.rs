//! Produce / fetch round trips against the real broker process, across shards,
//! through the shard-aware ports and through forwarding.

mod common;
use common::*;
use coremq_wire::frame::Kind;
use coremq_wire::ErrorCode;
use std::path::Path;

#[test]
fn round_trip_on_every_shard_and_through_forwarding() {
    let broker = Broker::start(2, &[]);
    let mut admin = broker.connect();
    assert_eq!(admin.create_topic("orders", 4, None), ErrorCode::None);
    assert_eq!(
        admin.create_topic("orders", 4, None),
        ErrorCode::TopicAlreadyExists
    );
    let (shards, topics) = admin.metadata();
    assert_eq!(shards, 2);
    assert_eq!(topics, vec![("orders".to_string(), 4)]);

    // Every partition: produce through its owner's port, then through the other
    // shard's port (forwarded over the mesh), and read both back from both ports.
    for partition in 0..4 {
        let owner = coremq_wire::shard_for("orders", partition, 2);
        let other = 1 - owner;
        let mut direct = broker.connect_shard(owner);
        let mut forwarded = broker.connect_shard(other);
        let (error, base) =
            direct.produce("orders", partition, &batch(&format!("d{partition}"), 10));
        assert_eq!((error, base), (ErrorCode::None, 0));
        let (error, base) =
            forwarded.produce("orders", partition, &batch(&format!("f{partition}"), 5));
        assert_eq!((error, base), (ErrorCode::None, 10));
        for conn in [&mut direct, &mut forwarded] {
            let records = conn.read_all("orders", partition, 0);
            assert_eq!(records.len(), 15);
            for (i, (offset, value)) in records.iter().enumerate() {
                assert_eq!(*offset, i as u64);
                let expected = if i < 10 {
                    format!("d{partition}-{i}")
                } else {
                    format!("f{partition}-{}", i - 10)
                };
                assert_eq!(value, expected.as_bytes());
            }
            // Mid-batch start: the reader slices.
            let tail = conn.read_all("orders", partition, 12);
            assert_eq!(
                tail.iter().map(|r| r.0).collect::<Vec<_>>(),
                vec![12, 13, 14]
            );
        }
    }
}

/// The default data dir is relative (`./coremq-data`); glommio 0.9 cannot open
/// relative paths by itself (EBADF), so this runs the broker from a working
/// directory with a relative --data-dir, produces, restarts, and reads back.
#[test]
fn relative_data_dir_works_and_survives_a_restart() {
    let temp = temp_data_dir();
    let relative = Path::new("coremq-data");
    let mut broker = Broker::start_from(Some(temp.path()), relative, 2, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("rel", 2, None), ErrorCode::None);
    for partition in 0..2 {
        let (error, base) = conn.produce("rel", partition, &batch("r", 3));
        assert_eq!((error, base), (ErrorCode::None, 0));
    }
    broker.kill9();
    let broker = Broker::start_from(Some(temp.path()), relative, 2, &[]);
    let mut conn = broker.connect();
    for partition in 0..2 {
        assert_eq!(conn.read_all("rel", partition, 0).len(), 3);
    }
    assert!(temp.path().join("coremq-data/shard-0").is_dir());
}

#[test]
fn one_request_many_partitions_and_pipelining() {
    let broker = Broker::start(2, &["--fsync", "never"]);
    let mut conn = broker.connect();
    assert_eq!(
        conn.create_topic("multi", 3, Some("always")),
        ErrorCode::None
    );
    let batches: Vec<Vec<u8>> = (0..3).map(|p| batch(&format!("p{p}"), 3)).collect();
    let parts: Vec<(&str, u32, &[u8])> = (0..3)
        .map(|p| ("multi", p as u32, &batches[p][..]))
        .collect();
    // Pipeline 20 requests, then read 20 responses (order may vary).
    let ids: Vec<u64> = (0..20)
        .map(|_| conn.send(Kind::Produce.request(), &produce_body(&parts)))
        .collect();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let frame = conn.recv().expect("response");
        assert_eq!(frame.kind, Kind::Produce.response());
        seen.push(frame.correlation_id);
    }
    seen.sort();
    assert_eq!(seen, ids);
    for p in 0..3 {
        assert_eq!(conn.read_all("multi", p, 0).len(), 60);
    }
}

#[test]
fn long_poll_waits_for_data() {
    let broker = Broker::start(1, &[]);
    let mut consumer = broker.connect();
    assert_eq!(consumer.create_topic("lp", 1, None), ErrorCode::None);
    // An empty partition: the long poll ends by its timeout, empty.
    let (error, hw, batches) = consumer.fetch("lp", 0, 0, 300);
    assert_eq!((error, hw, batches.len()), (ErrorCode::None, 0, 0));

    // A poll of 30 s (the broker's cap) that only the append can end
    // within the 20 s this side waits.
    let id = consumer.send(
        Kind::Fetch.request(),
        &fetch_body("lp", 0, 0, 1 << 20, 30_000),
    );
    consumer.set_read_timeout(std::time::Duration::from_secs(20));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut producer = broker.connect();
    assert_eq!(producer.produce("lp", 0, &batch("x", 2)).0, ErrorCode::None);
    let frame = consumer
        .recv()
        .expect("the long poll was not woken by the append");
    assert_eq!(frame.correlation_id, id);
    let r = coremq_wire::messages::parse::<coremq_wire::fb::FetchResponse>(
        &frame.body,
        &coremq_wire::messages::verifier_options(1 << 26),
    )
    .expect("fetch response");
    let first = r.results().expect("results").get(0);
    assert_eq!(first.high_watermark(), 2);
    assert!(
        first.records().is_some_and(|v| !v.bytes().is_empty()),
        "the long poll was not woken by the append"
    );
}

#[test]
fn graceful_shutdown_keeps_data() {
    let mut broker = Broker::start(2, &["--fsync", "never"]);
    let dir = broker.data_dir.clone();
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("keep", 2, None), ErrorCode::None);
    for p in 0..2 {
        assert_eq!(conn.produce("keep", p, &batch("k", 7)).0, ErrorCode::None);
    }
    let status = broker.stop();
    assert!(status.success(), "exit status {status:?}");
    let restarted = Broker::start_in(&dir, 2, &[]);
    let mut conn = restarted.connect();
    assert_eq!(conn.metadata().1, vec![("keep".to_string(), 2)]);
    for p in 0..2 {
        assert_eq!(conn.read_all("keep", p, 0).len(), 7);
    }
}

#[test]
fn stats_report_every_shard() {
    let broker = Broker::start(2, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("s", 2, None), ErrorCode::None);
    for p in 0..2 {
        assert_eq!(conn.produce("s", p, &batch("s", 4)).0, ErrorCode::None);
    }
    let mut b = flatbuffers::FlatBufferBuilder::new();
    let root = coremq_wire::fb::StatsRequest::create(
        &mut b,
        &coremq_wire::fb::StatsRequestArgs { reset: false },
    );
    b.finish(root, None);
    let frame = conn.call(Kind::Stats, b.finished_data());
    let stats = coremq_wire::messages::parse::<coremq_wire::fb::StatsResponse>(
        &frame.body,
        &coremq_wire::messages::verifier_options(1 << 20),
    )
    .unwrap();
    let shards = stats.shards().unwrap();
    assert_eq!(shards.len(), 2);
    let mut produced = 0;
    for shard in shards.iter() {
        let names: Vec<&str> = shard
            .histograms()
            .unwrap()
            .iter()
            .map(|h| h.name().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![
                "produce_us",
                "fsync_us",
                "fetch_us",
                "queue_depth",
                "write_us",
                "flush_bytes"
            ]
        );
        produced += shard
            .counters()
            .unwrap()
            .iter()
            .find(|c| c.name() == Some("produced_records"))
            .unwrap()
            .value();
    }
    assert_eq!(produced, 8);
}
