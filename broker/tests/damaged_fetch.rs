//! A damaged batch costs only itself (issue 6), against a real broker: a
//! batch is corrupted in its segment file while the broker runs (after it
//! left the tiny read cache), then fetched. The batches before it are
//! served, a fetch at it gets `DataLoss` with the next readable offset, the
//! shard counts it, and the client's record stream skips it (or fails, if
//! asked to).

mod common;
use common::*;
use coremq_client::{Client, Consumer, Error, OnDataLoss};
use coremq_wire::batch::split_batches;
use coremq_wire::frame::Kind;
use coremq_wire::messages::{parse, verifier_options};
use coremq_wire::{fb, BatchHeader, ErrorCode};
use futures::StreamExt;
use std::io::{Read, Seek, SeekFrom, Write};

const BATCHES: u32 = 20;
const RECORDS: u32 = 3;
const DAMAGED: u32 = 5;

/// A batch of `RECORDS` records of ~1 KiB whose values start "b{i}-".
fn numbered_batch(i: u32) -> Vec<u8> {
    let mut builder = coremq_wire::BatchBuilder::with_capacity(4096);
    for r in 0..RECORDS {
        let mut value = format!("b{i:02}-{r}-").into_bytes();
        value.resize(1000, b'.');
        builder
            .push(1_700_000_000_000 + r as i64, None, &value, &[])
            .expect("push");
    }
    builder.finish()
}

/// Flips one byte of the first record value of batch `i` in the segment
/// file, through the page cache (O_DIRECT reads write it back first).
fn corrupt_on_disk(broker: &Broker, i: u32) {
    let path = broker.data_dir.join("shard-0/log/00000000000000000000.seg");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("segment file");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("read segment");
    let needle = format!("b{i:02}-0-").into_bytes();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the batch is in the segment");
    file.seek(SeekFrom::Start(at as u64 + 10)).expect("seek");
    file.write_all(&[bytes[at + 10] ^ 0x5a]).expect("write");
    file.sync_data().expect("sync");
}

/// (error, next_offset, message, batches) of a one-partition fetch.
fn fetch_raw(conn: &mut Conn, offset: u64) -> (ErrorCode, u64, String, Vec<u8>) {
    let frame = conn.call(Kind::Fetch, &fetch_body("t", 0, offset, 1 << 20, 0));
    assert_eq!(frame.kind, Kind::Fetch.response(), "{:?}", frame.error());
    let response =
        parse::<fb::FetchResponse>(&frame.body, &verifier_options(1 << 26)).expect("response");
    let result = response.results().expect("results").get(0);
    (
        ErrorCode::from_u16(result.error()),
        result.next_offset(),
        result.error_message().unwrap_or_default().to_string(),
        result
            .records()
            .map(|v| v.bytes().to_vec())
            .unwrap_or_default(),
    )
}

fn base_offsets(batches: &[u8]) -> Vec<u64> {
    split_batches(batches)
        .map(|b| {
            BatchHeader::parse(b.expect("whole"))
                .expect("header")
                .base_offset
        })
        .collect()
}

#[test]
fn a_batch_corrupted_while_the_broker_runs_costs_only_itself() {
    let mut broker = Broker::start(1, &["--read-cache-bytes", "4096"]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("t", 1, None), ErrorCode::None);
    for i in 0..BATCHES {
        let (error, base) = conn.produce("t", 0, &numbered_batch(i));
        assert_eq!((error, base), (ErrorCode::None, (i * RECORDS) as u64));
    }
    corrupt_on_disk(&broker, DAMAGED);
    let damaged_offset = (DAMAGED * RECORDS) as u64;
    let next_offset = damaged_offset + RECORDS as u64;

    // The batches before the damage are served.
    let (error, _, _, batches) = fetch_raw(&mut conn, 0);
    assert_eq!(error, ErrorCode::None);
    let expected: Vec<u64> = (0..DAMAGED).map(|i| (i * RECORDS) as u64).collect();
    assert_eq!(base_offsets(&batches), expected);
    // A fetch at (or inside) the damaged batch says where to go on.
    for offset in [damaged_offset, damaged_offset + 1] {
        let (error, next, message, batches) = fetch_raw(&mut conn, offset);
        assert_eq!(error, ErrorCode::DataLoss, "{message}");
        assert_eq!(next, next_offset, "{message}");
        assert!(batches.is_empty());
        assert!(message.contains("next readable offset"), "{message}");
    }
    assert!(conn.counter("corrupt_batches_skipped") >= 2);
    // Everything after it is intact.
    let after = conn.read_all("t", 0, next_offset);
    assert_eq!(after.len() as u32, (BATCHES - DAMAGED - 1) * RECORDS);
    assert!(after[0].1.starts_with(b"b06-0-"));

    // The client's record stream skips the damaged batch (logging an error).
    let address = broker.main_address.to_string();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = Client::connect(address).await.expect("client");
        let consumer = Consumer::new(client.clone());
        let total = ((BATCHES - 1) * RECORDS) as usize;
        let offsets: Vec<u64> = Box::pin(consumer.stream("t", 0, 0))
            .take(total)
            .map(|r| r.expect("the stream skips the damage").offset)
            .collect()
            .await;
        let expected: Vec<u64> = (0..(BATCHES * RECORDS) as u64)
            .filter(|o| !(damaged_offset..next_offset).contains(o))
            .collect();
        assert_eq!(offsets, expected);

        let failing = Consumer::new(client).with_data_loss(OnDataLoss::Fail);
        let mut stream = Box::pin(failing.stream("t", 0, damaged_offset - 1));
        let last_good = stream.next().await.expect("an item").expect("a record");
        assert_eq!(last_good.offset, damaged_offset - 1);
        let error = stream
            .next()
            .await
            .expect("an item")
            .expect_err("data loss");
        assert!(
            matches!(error, Error::DataLoss { next_offset: n, .. } if n == next_offset),
            "{error}"
        );
    });
    assert!(broker.is_running());
}
