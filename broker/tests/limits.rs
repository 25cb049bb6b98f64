//! Limits that keep one client from holding the broker's resources: idle and
//! partial-frame timeouts, the topic cap, topic names, bounded metadata work.

mod common;
use common::*;
use coremq_wire::fb;
use coremq_wire::frame::{encode_header, Kind};
use coremq_wire::messages::{parse, verifier_options};
use coremq_wire::ErrorCode;
use flatbuffers::FlatBufferBuilder;
use std::io::Read;
use std::time::Duration;

/// Waits (up to 20 s) for the broker to close `conn`: true on end of stream,
/// false if the wait ran out with the connection still open.
fn closed_by_broker(conn: &mut Conn) -> bool {
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buffer = [0u8; 4096];
    loop {
        match conn.stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn an_idle_connection_is_closed() {
    let broker = Broker::start(1, &["--idle-timeout-ms", "300"]);
    let mut idle = broker.connect();
    assert!(closed_by_broker(&mut idle), "idle connection stayed open");
    let mut other = broker.connect();
    assert!(other.counter("connections_timed_out") >= 1);
}

#[test]
fn a_long_poll_is_not_idle() {
    let broker = Broker::start(1, &["--idle-timeout-ms", "200"]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 1, None), ErrorCode::None);
    // Nothing to read: the fetch waits its whole 1 s, five idle timeouts.
    let (error, high_watermark, batches) = conn.fetch("t", 0, 0, 1000);
    assert_eq!(
        (error, high_watermark, batches.len()),
        (ErrorCode::None, 0, 0)
    );
}

#[test]
fn a_partial_frame_must_complete_in_time() {
    let broker = Broker::start(1, &["--read-timeout-ms", "300"]);
    let mut slow = broker.connect();
    let header = encode_header(Kind::Metadata.request(), 1, 64);
    slow.send_raw(&header[..10]).expect("send part of a header");
    assert!(
        closed_by_broker(&mut slow),
        "slow-loris connection stayed open"
    );
    let mut other = broker.connect();
    assert_eq!(other.metadata().0, 1);
    assert!(other.counter("connections_timed_out") >= 1);
}

#[test]
fn the_topic_count_is_capped() {
    let broker = Broker::start(2, &["--max-topics", "3"]);
    let mut conn = broker.connect();
    for name in ["a", "b", "c"] {
        assert_eq!(conn.create_topic(name, 2, None), ErrorCode::None);
    }
    assert_eq!(conn.create_topic("d", 1, None), ErrorCode::InvalidConfig);
    assert_eq!(conn.metadata().1.len(), 3);
    let mut b = FlatBufferBuilder::new();
    let name = b.create_string("a");
    let root =
        fb::DeleteTopicRequest::create(&mut b, &fb::DeleteTopicRequestArgs { name: Some(name) });
    b.finish(root, None);
    let frame = conn.call(Kind::DeleteTopic, b.finished_data());
    let result =
        parse::<fb::TopicResult>(&frame.body, &verifier_options(1 << 26)).expect("topic result");
    assert_eq!(result.error(), 0);
    assert_eq!(conn.create_topic("d", 1, None), ErrorCode::None);
}

#[test]
fn dot_names_are_not_topics() {
    let broker = Broker::start(1, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic(".", 1, None), ErrorCode::InvalidTopicName);
    assert_eq!(
        conn.create_topic("..", 1, None),
        ErrorCode::InvalidTopicName
    );
    assert_eq!(conn.create_topic("...", 1, None), ErrorCode::None);
}

#[test]
fn one_partition_limit_for_broker_and_shard() {
    let broker = Broker::start(1, &[]);
    let mut conn = broker.connect();
    let limit = coremq_shard::engine::MAX_PARTITIONS;
    assert_eq!(
        conn.create_topic("over", limit + 1, None),
        ErrorCode::InvalidConfig
    );
    assert_eq!(conn.create_topic("at", limit, None), ErrorCode::None);
}

#[test]
fn a_metadata_request_names_a_bounded_number_of_topics() {
    let broker = Broker::start(1, &["--max-topics", "100"]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 1, None), ErrorCode::None);
    let request = |names: usize| {
        let mut b = FlatBufferBuilder::new();
        let wanted: Vec<_> = (0..names).map(|_| b.create_string("t")).collect();
        let wanted = b.create_vector(&wanted);
        let root = fb::MetadataRequest::create(
            &mut b,
            &fb::MetadataRequestArgs {
                topics: Some(wanted),
            },
        );
        b.finish(root, None);
        b.finished_data().to_vec()
    };
    // Duplicates name one topic once.
    let frame = conn.call(Kind::Metadata, &request(100));
    let metadata =
        parse::<fb::MetadataResponse>(&frame.body, &verifier_options(1 << 26)).expect("metadata");
    assert_eq!(metadata.topics().map(|t| t.len()), Some(1));
    let frame = conn.call(Kind::Metadata, &request(101));
    let (code, message) = frame.error().expect("an error for too many names");
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("--max-topics"), "{message}");
}
