//! A damaged batch on disk costs only itself (issue 6): reads serve the
//! intact batches before it, a read that starts at it gets `DataLoss` with
//! the next readable offset, and the batches after it stay readable.

mod common;

use common::*;
use coremq_shard::clock::ManualClock;
use coremq_shard::commitlog::entry::{walk_entries, EntryKind};
use coremq_shard::disk::memory::MemDisk;
use coremq_shard::{DataLoss, Durability};
use coremq_wire::batch::split_batches;
use futures::executor::block_on;
use std::path::Path;

const SEGMENT: &str = "/data/shard-0/log/00000000000000000000.seg";

/// (position, length) of every batch entry of the first segment.
fn batch_entries(disk: &MemDisk) -> Vec<(usize, usize)> {
    let bytes = disk.contents(Path::new(SEGMENT)).expect("segment");
    walk_entries(&bytes)
        .into_iter()
        .filter(|(_, h)| h.kind == EntryKind::Batch)
        .map(|(at, h)| (at, h.length as usize))
        .collect()
}

fn base_offsets(batches: &[u8]) -> Vec<u64> {
    split_batches(batches)
        .map(|b| coremq_wire::BatchHeader::parse(b.expect("whole batch")).expect("header"))
        .map(|h| h.base_offset)
        .collect()
}

#[test]
fn a_bit_flip_in_one_batch_costs_only_that_batch() {
    let disk = MemDisk::new(7);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("t", 1, Durability::Always))
            .await
            .expect("create");
        // Ten batches of 3 records (offsets 0, 3, ..., 27), ~3 KiB each.
        for i in 0..10 {
            engine
                .append("t", 0, &batch(3, 1000, 1_000, i))
                .await
                .expect("append");
        }
        drop(engine);
        // A fresh engine: nothing in its read cache, every read goes to disk.
        let engine = open(&disk, &clock, 1 << 20).await;
        let batches: Vec<_> = batch_entries(&disk);
        assert_eq!(batches.len(), 10);
        let (at, _) = batches[4];
        disk.corrupt(Path::new(SEGMENT), at + 500);

        let read = engine.read("t", 0, 0, 1 << 20).await.expect("read");
        assert_eq!(base_offsets(&read.batches), vec![0, 3, 6, 9]);
        assert_eq!(read.data_loss, None);

        for offset in [12, 13] {
            let read = engine.read("t", 0, offset, 1 << 20).await.expect("read");
            assert!(read.batches.is_empty());
            assert_eq!(
                read.data_loss,
                Some(DataLoss {
                    offset: 12,
                    next_offset: 15,
                    batches: 1
                })
            );
        }
        assert_eq!(engine.metrics().corrupt_batches_skipped.get(), 2);

        let read = engine.read("t", 0, 15, 1 << 20).await.expect("read");
        assert_eq!(base_offsets(&read.batches), vec![15, 18, 21, 24, 27]);
        assert_eq!(read.data_loss, None);
    });
}

#[test]
fn consecutive_damaged_batches_are_skipped_together() {
    let disk = MemDisk::new(8);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("t", 1, Durability::Always))
            .await
            .expect("create");
        for i in 0..6 {
            engine
                .append("t", 0, &batch(2, 1000, 1_000, i))
                .await
                .expect("append");
        }
        drop(engine);
        let engine = open(&disk, &clock, 1 << 20).await;
        let batches: Vec<_> = batch_entries(&disk);
        for damaged in [0, 1, 5] {
            disk.corrupt(Path::new(SEGMENT), batches[damaged].0 + 300);
        }
        let read = engine.read("t", 0, 0, 1 << 20).await.expect("read");
        assert_eq!(
            read.data_loss,
            Some(DataLoss {
                offset: 0,
                next_offset: 4,
                batches: 2
            })
        );
        let read = engine.read("t", 0, 4, 1 << 20).await.expect("read");
        assert_eq!(base_offsets(&read.batches), vec![4, 6, 8]);
        // The last batch: intact data resumes at the high watermark.
        let read = engine.read("t", 0, 10, 1 << 20).await.expect("read");
        assert_eq!(
            read.data_loss,
            Some(DataLoss {
                offset: 10,
                next_offset: 12,
                batches: 1
            })
        );
        assert_eq!(read.high_watermark, 12);
    });
}
