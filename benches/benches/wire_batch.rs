//! Record-batch hot paths of coremq-wire: what a producer pays to build a
//! batch, what the broker pays once at ingress (`verify_batch`: header checks,
//! one CRC over the batch, and a walk over every record's length fields), and
//! what a consumer pays to walk the records (`records_from`: header and CRC
//! again, then bounds-checked record decoding).
//!
//! Shape: 1000 records of 1 KiB values, 16-byte keys, no headers (~1.05 MB).
//! Throughput is reported in bytes of the finished batch, so the figures
//! compare directly with the crc32 and memcpy limits in shared/MACHINE.md.

use coremq_wire::batch::{records_from, verify_batch, BatchBuilder};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const RECORD_COUNT: usize = 1000;
const VALUE_BYTES: usize = 1024;
const KEY_BYTES: usize = 16;

fn build_batch(keys: &[[u8; KEY_BYTES]], value: &[u8]) -> Vec<u8> {
    let capacity = RECORD_COUNT * (VALUE_BYTES + KEY_BYTES + 32) + 64;
    let mut builder = BatchBuilder::with_capacity(capacity);
    builder.set_producer(7, 1, 0);
    for (i, key) in keys.iter().enumerate() {
        builder
            .push(1_700_000_000_000 + i as i64, Some(key), value, &[])
            .expect("record fits a batch");
    }
    builder.finish()
}

fn batch_benches(c: &mut Criterion) {
    let keys: Vec<[u8; KEY_BYTES]> = (0..RECORD_COUNT)
        .map(|i| {
            let mut key = [b'k'; KEY_BYTES];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            key
        })
        .collect();
    let value: Vec<u8> = (0..VALUE_BYTES).map(|i| (i * 31) as u8).collect();
    let batch = build_batch(&keys, &value);
    let header = verify_batch(&batch).expect("the built batch verifies");
    assert_eq!(header.record_count as usize, RECORD_COUNT);

    let mut group = c.benchmark_group("wire_batch_1000x1KiB");
    group.throughput(Throughput::Bytes(batch.len() as u64));

    group.bench_function("build", |b| {
        b.iter(|| black_box(build_batch(black_box(&keys), black_box(&value))))
    });

    group.bench_function("verify_batch", |b| {
        b.iter(|| black_box(verify_batch(black_box(&batch)).expect("valid batch")))
    });

    group.bench_function("records_from_all", |b| {
        b.iter(|| {
            let mut value_bytes = 0usize;
            for record in records_from(black_box(&batch), 0) {
                value_bytes += record.expect("valid record").value.len();
            }
            assert_eq!(value_bytes, RECORD_COUNT * VALUE_BYTES);
            black_box(value_bytes)
        })
    });

    // A fetch that starts in the middle of the batch: the skipped half is
    // still CRC-checked and walked, so this costs most of the full walk.
    group.bench_function("records_from_mid_batch", |b| {
        let start = (RECORD_COUNT / 2) as u64;
        b.iter(|| {
            let mut count = 0usize;
            for record in records_from(black_box(&batch), start) {
                record.expect("valid record");
                count += 1;
            }
            assert_eq!(count, RECORD_COUNT / 2);
            black_box(count)
        })
    });

    group.finish();
}

/// Ingress verification of the two shapes in docs/perf.md ("Ingress
/// verification"): 100 records of 1 KiB and 1000 records of 100 B, 16-byte
/// keys, one header per record (what the record walk has to skip).
fn verify_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify_batch");
    for (records, value_bytes) in [(100usize, 1024usize), (1000, 100)] {
        let value = vec![0x5a_u8; value_bytes];
        let mut builder = BatchBuilder::with_capacity(records * (value_bytes + 64) + 64);
        for i in 0..records {
            let key = (i as u128).to_le_bytes();
            builder
                .push(
                    1_700_000_000_000 + i as i64,
                    Some(&key),
                    &value,
                    &[(b"trace", b"0123456789")],
                )
                .expect("record fits a batch");
        }
        let batch = builder.finish();
        verify_batch(&batch).expect("the built batch verifies");
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(format!("{records}x{value_bytes}B"), |b| {
            b.iter(|| black_box(verify_batch(black_box(&batch)).expect("valid batch")))
        });
    }
    group.finish();
}

criterion_group!(benches, batch_benches, verify_benches);
criterion_main!(benches);
