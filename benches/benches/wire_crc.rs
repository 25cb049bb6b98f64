//! crc32fast, the checksum of every record batch (computed by the producer,
//! checked once by the broker at ingress and again by storage on read-back).
//! shared/MACHINE.md measured 24.5 GB/s on 1 KiB and 58 GB/s on 1 MiB per
//! core; this bench repeats that measurement inside the workspace so a
//! crc32fast upgrade or a target-feature change shows up here.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn crc_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32fast");
    for (label, bytes) in [
        ("1KiB", 1usize << 10),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
    ] {
        let buffer: Vec<u8> = (0..bytes)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
            .collect();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::new("hash", label), &buffer, |b, buffer| {
            b.iter(|| black_box(crc32fast::hash(black_box(buffer))))
        });
    }
    group.finish();
}

criterion_group!(benches, crc_benches);
criterion_main!(benches);
