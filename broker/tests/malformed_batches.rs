//! Batches with a correct CRC but broken framing (issue 6): the broker
//! refuses each at produce with `CorruptBatch` and a message naming the
//! position, stores nothing of it, and the partition stays readable.

mod common;
use common::*;
use coremq_wire::batch::{compute_crc, records_from, BATCH_HEADER_LEN};
use coremq_wire::ErrorCode;

fn write_field(batch: &mut [u8], at: usize, bytes: &[u8]) {
    batch[at..at + bytes.len()].copy_from_slice(bytes);
    let crc = compute_crc(batch);
    batch[20..24].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn each_kind_of_malformed_batch_is_refused_and_the_partition_stays_readable() {
    let broker = Broker::start(1, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 1, None), ErrorCode::None);
    assert_eq!(conn.produce("t", 0, &batch("before", 3)).0, ErrorCode::None);
    let good = batch("bad", 4);
    let first_len = u32::from_le_bytes(good[64..68].try_into().expect("4 bytes")) as usize;
    let second = BATCH_HEADER_LEN + 4 + first_len;
    let cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("record_count one higher", 28, 5u32.to_le_bytes().to_vec()),
        ("record_count one lower", 28, 3u32.to_le_bytes().to_vec()),
        (
            "offset delta out of sequence",
            second + 4,
            3u32.to_le_bytes().to_vec(),
        ),
        (
            "record length past the end",
            second,
            4000u32.to_le_bytes().to_vec(),
        ),
        ("unknown flags", 26, 1u16.to_le_bytes().to_vec()),
        (
            "wild first timestamp",
            32,
            (i64::MAX - 1).to_le_bytes().to_vec(),
        ),
        ("negative timestamp", 32, (-10i64).to_le_bytes().to_vec()),
        (
            "max timestamp below a record",
            40,
            0i64.to_le_bytes().to_vec(),
        ),
    ];
    for (name, at, bytes) in &cases {
        let mut bad = good.clone();
        write_field(&mut bad, *at, bytes);
        let frame = conn.call(
            coremq_wire::frame::Kind::Produce,
            &produce_body(&[("t", 0, &bad)]),
        );
        let response = coremq_wire::messages::parse::<coremq_wire::fb::ProduceResponse>(
            &frame.body,
            &coremq_wire::messages::verifier_options(1 << 26),
        )
        .expect("produce response");
        let result = response.results().expect("results").get(0);
        assert_eq!(
            ErrorCode::from_u16(result.error()),
            ErrorCode::CorruptBatch,
            "{name}: {:?}",
            result.error_message()
        );
        let message = result.error_message().unwrap_or("");
        assert!(message.contains("at byte"), "{name}: '{message}'");
    }
    // Nothing of them was stored: the next batch gets offset 3.
    assert_eq!(
        conn.produce("t", 0, &batch("after", 2)),
        (ErrorCode::None, 3)
    );
    let mut offset = 0;
    let mut values = Vec::new();
    while offset < 5 {
        let (error, _, batches) = conn.fetch("t", 0, offset, 0);
        assert_eq!(error, ErrorCode::None);
        for record in records_from(&batches, offset) {
            let record = record.expect("every stored record reads");
            values.push(String::from_utf8_lossy(record.value).into_owned());
            offset = record.offset + 1;
        }
    }
    assert_eq!(
        values,
        ["before-0", "before-1", "before-2", "after-0", "after-1"]
    );
}
