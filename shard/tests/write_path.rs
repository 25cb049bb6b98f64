//! The write path on the memory disk: produce order across segment rolls,
//! failed fdatasyncs, torn rewrites of a block holding acknowledged bytes.

mod common;

use common::*;
use coremq_shard::clock::ManualClock;
use coremq_shard::disk::memory::{Faults, MemDisk};
use coremq_shard::Durability;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::cell::RefCell;
use std::rc::Rc;

const SEGMENT_BYTES: u64 = 64 << 10;

/// Two pipelined appends to one partition: the first does not fit the
/// current segment and waits for a new one (the creation yields), the second
/// fits. Offsets must follow submission order.
#[test]
fn appends_keep_submission_order_across_a_segment_roll() {
    for durability in [Durability::Always, Durability::Never] {
        let disk = MemDisk::new(21);
        let clock = ManualClock::new(0);
        let mut pool = LocalPool::new();
        let engine = Rc::new(pool.run_until(open(&disk, &clock, SEGMENT_BYTES)));
        pool.run_until(async {
            engine
                .create_topic(topic("t", 1, durability))
                .await
                .unwrap();
            // About 60 KiB of the 64 KiB segment: the big batch no longer
            // fits, the small one does.
            for i in 0..6 {
                engine
                    .append("t", 0, &batch(1, 10_000, 0, i))
                    .await
                    .unwrap();
            }
        });
        disk.set_faults(Faults {
            yield_first: 1.0,
            ..Faults::default()
        });
        let offsets = Rc::new(RefCell::new(Vec::new()));
        for (name, value_bytes) in [("big", 8_000), ("small", 100)] {
            let engine = engine.clone();
            let offsets = offsets.clone();
            pool.spawner()
                .spawn_local(async move {
                    let out = engine
                        .append("t", 0, &batch(1, value_bytes, 0, 7))
                        .await
                        .unwrap();
                    offsets.borrow_mut().push((name, out.base_offset));
                })
                .unwrap();
        }
        pool.run();
        let mut offsets = offsets.borrow().clone();
        offsets.sort_by_key(|(_, offset)| *offset);
        assert_eq!(
            offsets,
            [("big", 6), ("small", 7)],
            "{durability:?}: offsets follow submission order"
        );
    }
}

/// A failed fdatasync may drop the writes it covered (the memory disk drops
/// them all). The append it covered fails; a later append's flush must
/// rewrite the dropped bytes before its own sync, or its acknowledged entry
/// follows a hole and recovery ends the log before it.
#[test]
fn a_failed_sync_fails_its_appends_and_the_next_sync_covers_their_bytes() {
    use coremq_shard::StorageError;
    for later in [Durability::Always, Durability::Never] {
        let disk = MemDisk::new(22);
        let clock = ManualClock::new(0);
        futures::executor::block_on(async {
            let engine = open(&disk, &clock, 1 << 20).await;
            engine
                .create_topic(topic("a", 1, Durability::Always))
                .await
                .unwrap();
            engine.create_topic(topic("l", 1, later)).await.unwrap();
            disk.set_faults(Faults {
                sync_error: 1.0,
                ..Faults::default()
            });
            // Several blocks, so the next flush's rewrite of the partial
            // block does not cover them by chance.
            let failed = batch(1, 20_000, 0, 1);
            let error = engine.append("a", 0, &failed).await.unwrap_err();
            assert!(matches!(error, StorageError::Io { .. }), "{error}");
            assert_eq!(engine.high_watermark("a", 0).unwrap(), 0);
            disk.set_faults(Faults::default());
            let b = batch(1, 100, 0, 2);
            let out = engine.append("l", 0, &b).await.unwrap();
            // `never` appends complete after the write; an `always` one syncs.
            let c = batch(1, 100, 0, 3);
            let c_out = engine.append("a", 0, &c).await.unwrap();
            drop(engine);
            disk.crash();
            let engine = open(&disk, &clock, 1 << 20).await;
            assert_eq!(
                engine.high_watermark("l", 0).unwrap(),
                1,
                "{later:?}: the acknowledged append survives"
            );
            let got = engine.read("l", 0, 0, 1).await.unwrap();
            assert!(got.batches == stored(&b, out.base_offset, out.append_time_ms));
            assert_eq!(
                engine.high_watermark("a", 0).unwrap(),
                2,
                "{later:?}: the failed append was rewritten: stored, not acknowledged"
            );
            let got = engine.read("a", 0, 0, u32::MAX).await.unwrap();
            let mut expected = stored(&failed, 0, 0); // the clock stays at 0
            expected.extend_from_slice(&stored(&c, c_out.base_offset, c_out.append_time_ms));
            assert!(got.batches == expected, "{later:?}: both batches read back");
        });
    }
}

/// The chunks kept for a rewrite after a failed sync are bounded in bytes:
/// a `never` topic that no append asks to sync is synced every
/// `MAX_UNSYNCED_BYTES` written.
#[test]
fn written_unsynced_bytes_are_bounded_by_a_sync() {
    use coremq_shard::commitlog::writer::MAX_UNSYNCED_BYTES;
    let disk = MemDisk::new(23);
    let clock = ManualClock::new(0);
    futures::executor::block_on(async {
        let engine = open(&disk, &clock, 8 << 20).await;
        engine
            .create_topic(topic("n", 1, Durability::Never))
            .await
            .unwrap();
        let syncs = disk.stats().syncs;
        let b = batch(1, 60_000, 0, 1);
        let mut written = 0u64;
        while written < MAX_UNSYNCED_BYTES + (1 << 20) {
            engine.append("n", 0, &b).await.unwrap();
            written += b.len() as u64;
        }
        assert!(
            disk.stats().syncs > syncs,
            "{written} bytes written without a sync"
        );
    });
}

/// A crash while a block that holds acknowledged bytes is being written may
/// garble that block (the device does not write 4 KiB atomically). The
/// block holding a synced `always` entry must never be written again.
#[test]
fn a_torn_write_never_damages_acknowledged_bytes() {
    let mut damaged_seeds = 0;
    for seed in 0..64 {
        let disk = MemDisk::new(seed);
        let clock = ManualClock::new(0);
        futures::executor::block_on(async {
            let engine = open(&disk, &clock, 1 << 20).await;
            engine
                .create_topic(topic("a", 1, Durability::Always))
                .await
                .unwrap();
            engine
                .create_topic(topic("n", 1, Durability::Never))
                .await
                .unwrap();
            let a = batch(1, 300, 0, 1);
            let out = engine.append("a", 0, &a).await.unwrap();
            // Written, not synced: the crash may tear it.
            engine.append("n", 0, &batch(2, 300, 0, 2)).await.unwrap();
            let before = disk.contents(std::path::Path::new(SEGMENT0)).unwrap();
            drop(engine);
            disk.crash();
            let after = disk.contents(std::path::Path::new(SEGMENT0)).unwrap();
            damaged_seeds += (before != after) as u32;
            let engine = open(&disk, &clock, 1 << 20).await;
            let hw = engine
                .high_watermark("a", 0)
                .unwrap_or_else(|e| panic!("seed {seed}: the topics survive: {e}"));
            assert_eq!(hw, 1, "seed {seed}: the acknowledged append survives");
            let got = engine.read("a", 0, 0, 1).await.unwrap();
            assert!(
                got.batches == stored(&a, out.base_offset, out.append_time_ms),
                "seed {seed}: the acknowledged append reads back"
            );
        });
    }
    assert!(
        damaged_seeds > 0,
        "some crash dropped or tore the last write"
    );
}

const SEGMENT0: &str = "/data/shard-0/log/00000000000000000000.seg";

/// A flush dropped while its fdatasync is under way never learns whether
/// the sync failed (and dropped the writes it covered): that counts as a
/// failed sync, so the next flush rewrites before syncing again.
#[test]
fn a_sync_whose_flush_is_dropped_counts_as_failed() {
    use futures::FutureExt;
    let mut covered = 0;
    for polls in 1..24 {
        let disk = MemDisk::new(24);
        let clock = ManualClock::new(0);
        futures::executor::block_on(async {
            let engine = open(&disk, &clock, 1 << 20).await;
            engine
                .create_topic(topic("a", 1, Durability::Always))
                .await
                .unwrap();
            let syncs = disk.stats().syncs;
            disk.set_faults(Faults {
                sync_error: 1.0,
                yield_first: 1.0,
                ..Faults::default()
            });
            {
                let dropped = batch(1, 20_000, 0, 1);
                let mut future = Box::pin(engine.append("a", 0, &dropped));
                for _ in 0..polls {
                    if (&mut future).now_or_never().is_some() {
                        break;
                    }
                }
            }
            covered += (disk.stats().syncs > syncs) as u32;
            disk.set_faults(Faults::default());
            let b = batch(1, 100, 0, 2);
            let out = engine.append("a", 0, &b).await.unwrap();
            drop(engine);
            disk.crash();
            let engine = open(&disk, &clock, 1 << 20).await;
            let got = engine.read("a", 0, out.base_offset, 1).await;
            assert!(
                got.is_ok_and(|g| g.batches == stored(&b, out.base_offset, out.append_time_ms)),
                "dropped after {polls} polls: the acknowledged append reads back"
            );
        });
    }
    assert!(covered > 0, "some drop came after the failed sync");
}
