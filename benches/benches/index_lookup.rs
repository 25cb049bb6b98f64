//! Partition index lookups: offset → entry (every read), the visible prefix
//! (every high-watermark query), timestamp → offset, and appends.

use coremq_shard::index::PartitionIndex;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// `entries` batches of 64 records, 64 KiB apart, timestamps rising.
fn index(entries: u64) -> PartitionIndex {
    let mut index = PartitionIndex::new();
    for i in 0..entries {
        index.push(i * 64, 64, 65_536, i * 65_600, i as i64 * 10, i as i64);
    }
    index
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_lookup");
    group.throughput(Throughput::Elements(1));
    for entries in [1_000u64, 1_000_000] {
        let index = index(entries);
        let records = entries * 64;
        // A cheap LCG walks offsets in a cache-unfriendly order.
        let mut x = 12345u64;
        group.bench_with_input(
            BenchmarkId::new("find_offset", entries),
            &index,
            |b, index| {
                b.iter(|| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    black_box(index.find(black_box((x >> 11) % records)))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("first_at_or_after_timestamp", entries),
            &index,
            |b, index| {
                b.iter(|| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    black_box(index.first_at_or_after(
                        black_box(((x >> 11) % entries) as i64 * 10),
                        index.len(),
                    ))
                })
            },
        );
        // The high watermark: all but the newest few entries are visible.
        let bound = (entries - 3) * 65_600;
        group.bench_with_input(
            BenchmarkId::new("visible_len", entries),
            &index,
            |b, index| b.iter(|| black_box(index.visible_len(black_box(bound)))),
        );
    }
    group.bench_function("push", |b| {
        let mut index = PartitionIndex::new();
        let mut i = 0u64;
        b.iter(|| {
            if index.len() >= 1 << 20 {
                index = PartitionIndex::new();
                i = 0;
            }
            index.push(i * 64, 64, 65_536, i * 65_600, i as i64, i as i64);
            i += 1;
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
