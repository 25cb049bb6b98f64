//! Bad input never crashes the broker or loses acknowledged data: each case
//! gets an error code or a closed connection, and other clients carry on.

mod common;
use common::*;
use coremq_wire::frame::{encode_header, Kind, FRAME_HEADER_LEN};
use coremq_wire::ErrorCode;

fn setup() -> (Broker, Conn) {
    let broker = Broker::start(2, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 2, None), ErrorCode::None);
    assert_eq!(conn.produce("t", 0, &batch("acked", 3)).0, ErrorCode::None);
    (broker, conn)
}

/// The broker still serves, and the acknowledged records are intact.
fn assert_healthy(broker: &mut Broker) {
    assert!(broker.is_running(), "broker died");
    let mut conn = broker.connect();
    let records = conn.read_all("t", 0, 0);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].1, b"acked-0");
}

#[test]
fn garbage_bytes_close_the_connection() {
    let (mut broker, _) = setup();
    let mut conn = broker.connect();
    conn.send_raw(&[
        0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0, 0, 0, 0, 0, 0, 0, 0,
    ])
    .unwrap();
    // 0xefbeadde bytes announced: over the limit, so TooLarge, then close.
    let frame = conn.recv().expect("error frame before close");
    assert_eq!(frame.error().unwrap().0, ErrorCode::TooLarge);
    assert!(
        conn.recv().is_none(),
        "connection should be closed after garbage"
    );
    assert_healthy(&mut broker);
}

#[test]
fn bad_magic_gets_malformed_frame_then_close() {
    let (mut broker, _) = setup();
    let mut conn = broker.connect();
    let mut frame = encode_header(Kind::Metadata.request(), 9, 4).to_vec();
    frame[4] = 0x00;
    frame.extend_from_slice(&[0, 0, 0, 0]);
    conn.send_raw(&frame).unwrap();
    let response = conn.recv().expect("error frame before close");
    assert_eq!(response.error().unwrap().0, ErrorCode::MalformedFrame);
    assert!(conn.recv().is_none());
    assert_healthy(&mut broker);
}

#[test]
fn oversized_frame_is_refused_without_reading_it() {
    let (mut broker, _) = setup();
    let mut conn = broker.connect();
    // Header announces 100 MiB (the test broker allows 4 MiB).
    conn.send_raw(&encode_header(Kind::Produce.request(), 5, 100 << 20))
        .unwrap();
    let response = conn.recv().expect("error frame");
    assert_eq!(response.correlation_id, 5);
    assert_eq!(response.error().unwrap().0, ErrorCode::TooLarge);
    assert!(conn.recv().is_none());
    assert_healthy(&mut broker);
}

#[test]
fn truncated_frame_then_disconnect() {
    let (mut broker, _) = setup();
    let mut conn = broker.connect();
    let body = produce_body(&[("t", 0, &batch("never", 2))]);
    let mut frame = encode_header(Kind::Produce.request(), 1, body.len()).to_vec();
    frame.extend_from_slice(&body[..body.len() / 2]);
    conn.send_raw(&frame).unwrap();
    drop(conn);
    // Wait until the broker has seen the disconnect (only `admin` is left),
    // so that whatever it did with the half frame is done.
    let mut admin = broker.connect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while admin.counter("connections") > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker never noticed the disconnect"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_healthy(&mut broker);
    // Nothing of the half-sent batch was stored.
    assert_eq!(admin.read_all("t", 0, 0).len(), 3);
    assert_eq!(admin.read_all("t", 1, 0).len(), 0);
}

#[test]
fn invalid_bodies_unknown_kinds_topics_and_partitions() {
    let (mut broker, mut conn) = setup();
    // Body that fails the FlatBuffers verifier.
    let frame = conn.call(Kind::Produce, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(frame.error().unwrap().0, ErrorCode::InvalidRequest);
    // Unknown kind.
    let id = conn.send(0x0777, &[]);
    let frame = conn.recv().unwrap();
    assert_eq!(
        (frame.correlation_id, frame.error().unwrap().0),
        (id, ErrorCode::UnknownKind)
    );
    // Unknown topic and partition.
    assert_eq!(
        conn.produce("nope", 0, &batch("x", 1)).0,
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        conn.produce("t", 9, &batch("x", 1)).0,
        ErrorCode::UnknownPartition
    );
    assert_eq!(conn.fetch("nope", 0, 0, 0).0, ErrorCode::UnknownTopic);
    // Offset past the end.
    assert_eq!(conn.fetch("t", 0, 1000, 0).0, ErrorCode::OffsetOutOfRange);
    // Bad topic names and configs.
    assert_eq!(
        conn.create_topic("a/b", 1, None),
        ErrorCode::InvalidTopicName
    );
    assert_eq!(conn.create_topic("zero", 0, None), ErrorCode::InvalidConfig);
    assert_eq!(
        conn.create_topic("d", 1, Some("sometimes")),
        ErrorCode::InvalidConfig
    );
    // The connection still works after all of that.
    assert_eq!(conn.metadata().0, 2);
    assert_healthy(&mut broker);
}

#[test]
fn corrupt_and_oversized_batches_store_nothing() {
    let (mut broker, mut conn) = setup();
    let mut bad = batch("bad", 3);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert_eq!(conn.produce("t", 0, &bad).0, ErrorCode::CorruptBatch);
    // Truncated batch.
    let good = batch("good", 3);
    assert_eq!(
        conn.produce("t", 0, &good[..good.len() - 5]).0,
        ErrorCode::CorruptBatch
    );
    // A good batch followed by a corrupt one in the same entry: all or nothing.
    let mut pair = good.clone();
    pair.extend_from_slice(&bad);
    assert_eq!(conn.produce("t", 0, &pair).0, ErrorCode::CorruptBatch);
    // Empty batches field.
    assert_eq!(conn.produce("t", 0, &[]).0, ErrorCode::CorruptBatch);
    // Over --max-batch-bytes (1 MiB in tests) but under the frame limit.
    let mut builder = coremq_wire::BatchBuilder::with_capacity(2 << 20);
    builder
        .push(0, None, &vec![7u8; (1 << 20) + 100], &[])
        .unwrap();
    let huge = builder.finish();
    assert_eq!(conn.produce("t", 0, &huge).0, ErrorCode::TooLarge);
    assert_healthy(&mut broker);
    assert_eq!(conn.read_all("t", 0, 0).len(), 3);
    let _ = FRAME_HEADER_LEN;
}

#[test]
fn client_disconnecting_mid_request_does_not_hurt_others() {
    let (mut broker, _) = setup();
    for _ in 0..20 {
        let mut conn = broker.connect();
        conn.send(
            Kind::Produce.request(),
            &produce_body(&[("t", 1, &batch("gone", 50))]),
        );
        conn.send(
            Kind::Fetch.request(),
            &fetch_body("t", 1, 0, 1 << 20, 5_000),
        );
        drop(conn);
    }
    assert_healthy(&mut broker);
    // Produces sent before the disconnect were complete requests: they may have been stored.
    let stored = broker.connect().read_all("t", 1, 0).len();
    assert_eq!(stored % 50, 0, "a partial batch was stored");
}
