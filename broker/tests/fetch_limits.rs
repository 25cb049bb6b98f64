//! Fetch bounds: a fetch never makes the broker build a response larger than
//! its max frame, names a bounded number of partitions, and names each
//! (topic, partition) once. Each case gets an answer or a clear error, and the
//! broker keeps serving.

mod common;
use common::*;
use coremq_wire::batch::BatchBuilder;
use coremq_wire::fb;
use coremq_wire::frame::{Kind, FRAME_HEADER_LEN};
use coremq_wire::messages::{parse, verifier_options};
use coremq_wire::ErrorCode;
use flatbuffers::FlatBufferBuilder;

/// The test broker's `--max-frame-bytes`.
const MAX_FRAME_BYTES: usize = 4 << 20;

fn fetch_many_body(partitions: &[(&str, u32, u64, u32)]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let entries: Vec<_> = partitions
        .iter()
        .map(|(topic, partition, offset, max_bytes)| {
            let t = b.create_string(topic);
            fb::FetchPartition::create(
                &mut b,
                &fb::FetchPartitionArgs {
                    topic: Some(t),
                    partition: *partition,
                    offset: *offset,
                    max_bytes: *max_bytes,
                },
            )
        })
        .collect();
    let v = b.create_vector(&entries);
    let root = fb::FetchRequest::create(
        &mut b,
        &fb::FetchRequestArgs {
            partitions: Some(v),
            max_wait_ms: 0,
            min_bytes: 1,
        },
    );
    b.finish(root, None);
    b.finished_data().to_vec()
}

/// A batch of close to 1 MiB (the test broker's `--max-batch-bytes`).
fn big_batch(tag: u8) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(1 << 20);
    for i in 0..15 {
        builder
            .push(1_700_000_000_000 + i, None, &vec![tag; 64 << 10], &[])
            .expect("push");
    }
    builder.finish()
}

fn assert_serves(broker: &mut Broker) {
    assert!(broker.is_running(), "broker died");
    let mut conn = broker.connect();
    let (error, _, batches) = conn.fetch("t", 1, 0, 0);
    assert_eq!(error, ErrorCode::None);
    assert_eq!(coremq_wire::batch::records_from(&batches, 0).count(), 3);
}

fn setup() -> (Broker, Conn) {
    let broker = Broker::start(2, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 2, None), ErrorCode::None);
    assert_eq!(conn.produce("t", 1, &batch("small", 3)).0, ErrorCode::None);
    (broker, conn)
}

#[test]
fn max_bytes_u32_max_is_clamped_to_the_frame() {
    let (mut broker, mut conn) = setup();
    // 6 batches of ~960 KiB: more than one 4 MiB frame holds.
    for tag in 0..6 {
        assert_eq!(conn.produce("t", 0, &big_batch(tag)).0, ErrorCode::None);
    }
    let mut offset = 0;
    let mut fetches = 0;
    while offset < 6 * 15 {
        let frame = conn.call(
            Kind::Fetch,
            &fetch_many_body(&[("t", 0, offset, u32::MAX), ("t", 1, 0, u32::MAX)]),
        );
        assert_eq!(frame.kind, Kind::Fetch.response(), "{:?}", frame.error());
        assert!(
            frame.body.len() + FRAME_HEADER_LEN <= MAX_FRAME_BYTES,
            "response of {} bytes exceeds the max frame",
            frame.body.len()
        );
        let response =
            parse::<fb::FetchResponse>(&frame.body, &verifier_options(1 << 26)).expect("response");
        let first = response.results().expect("results").get(0);
        assert_eq!(first.error(), 0, "{:?}", first.error_message());
        let records = first
            .records()
            .map(|v| v.bytes().to_vec())
            .unwrap_or_default();
        for record in coremq_wire::batch::records_from(&records, offset) {
            let record = record.expect("valid record");
            assert_eq!(record.offset, offset);
            offset += 1;
        }
        fetches += 1;
        assert!(fetches < 20, "no progress at offset {offset}");
    }
    assert!(fetches >= 2, "one response held more than a frame");
    assert_serves(&mut broker);
}

#[test]
fn ten_thousand_partitions_get_a_clear_error() {
    let (mut broker, mut conn) = setup();
    let partitions: Vec<(&str, u32, u64, u32)> =
        (0..10_000).map(|p| ("t", p, 0, u32::MAX)).collect();
    let frame = conn.call(Kind::Fetch, &fetch_many_body(&partitions));
    let (code, message) = frame.error().expect("an error frame");
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("10000 partitions"), "{message}");
    // The limit itself is served.
    let partitions: Vec<(&str, u32, u64, u32)> = (0..1024).map(|p| ("t", p, 0, u32::MAX)).collect();
    let frame = conn.call(Kind::Fetch, &fetch_many_body(&partitions));
    assert_eq!(frame.kind, Kind::Fetch.response(), "{:?}", frame.error());
    let response =
        parse::<fb::FetchResponse>(&frame.body, &verifier_options(1 << 26)).expect("response");
    let results = response.results().expect("results");
    assert_eq!(results.len(), 1024);
    assert_eq!(results.get(1).error(), 0);
    assert_eq!(
        ErrorCode::from_u16(results.get(2).error()),
        ErrorCode::UnknownPartition
    );
    assert_serves(&mut broker);
}

#[test]
fn duplicate_partitions_are_refused() {
    let (mut broker, mut conn) = setup();
    let frame = conn.call(
        Kind::Fetch,
        &fetch_many_body(&[
            ("t", 1, 0, 1 << 20),
            ("t", 0, 0, 1 << 20),
            ("t", 1, 2, 1 << 20),
        ]),
    );
    let (code, message) = frame.error().expect("an error frame");
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("more than once"), "{message}");
    assert_serves(&mut broker);
}
