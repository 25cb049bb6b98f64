//! Checkpoints and sealed-segment index files on the memory disk.

mod common;

use common::*;
use coremq_shard::clock::ManualClock;
use coremq_shard::disk::memory::MemDisk;
use coremq_shard::Durability;
use futures::executor::block_on;
use std::path::{Path, PathBuf};

const INDEX: &str = "/data/shard-0/index";

fn index_files(disk: &MemDisk) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = disk
        .files_in(Path::new(INDEX))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    files.sort();
    files
}

fn checkpoint_len(disk: &MemDisk) -> usize {
    disk.contents(&Path::new(INDEX).join("checkpoint"))
        .unwrap()
        .len()
}

/// Appends 300 batches over several 32 KiB segments, checkpoints, and
/// returns what must read back.
async fn fill(engine: &MemEngine) -> Vec<(u32, u64, Vec<u8>)> {
    engine
        .create_topic(topic("t", 3, Durability::Never))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let b = batch(1, 500, i as i64, i as u8);
        let out = engine.append("t", i % 3, &b).await.unwrap();
        expected.push((
            i % 3,
            out.base_offset,
            stored(&b, out.base_offset, out.append_time_ms),
        ));
    }
    engine.checkpoint().await.unwrap();
    expected
}

async fn check(engine: &MemEngine, expected: &[(u32, u64, Vec<u8>)]) {
    for (p, offset, bytes) in expected {
        let got = engine.read("t", *p, *offset, 1).await.unwrap();
        assert!(&got.batches == bytes, "t/{p} at {offset} differs");
    }
    for p in 0..3 {
        assert_eq!(engine.high_watermark("t", p).unwrap(), 100);
        assert_eq!(engine.log_start_offset("t", p).unwrap(), 0);
    }
}

#[test]
fn sealed_segments_get_index_files_and_checkpoints_stay_small() {
    let disk = MemDisk::new(1);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        let expected = fill(&engine).await;
        let sealed = disk.files_in(Path::new("/data/shard-0/log")).len() - 1;
        assert!(sealed >= 4);
        assert_eq!(index_files(&disk).len(), sealed);
        // 300 batches at ~40 bytes would be 12 KiB; only the active segment's are here.
        assert!(
            checkpoint_len(&disk) <= 8192,
            "checkpoint of {} bytes",
            checkpoint_len(&disk)
        );
        drop(engine);
        let engine = open(&disk, &clock, 32 << 10).await;
        check(&engine, &expected).await;
        // Timestamps still resolve across segments (running max restored).
        assert_eq!(engine.offset_for_timestamp("t", 1, 151).unwrap(), 50);
    });
}

#[test]
fn a_missing_or_corrupt_index_file_is_rebuilt_from_its_segment() {
    let disk = MemDisk::new(2);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        let expected = fill(&engine).await;
        drop(engine);
        let files = index_files(&disk);
        let originals: Vec<_> = files.iter().map(|f| disk.contents(f).unwrap()).collect();
        disk.corrupt(&files[0], 100);
        disk.corrupt(&files[2], 4000);
        let engine = open(&disk, &clock, 32 << 10).await;
        check(&engine, &expected).await;
        // The next checkpoint writes them again, as they were.
        engine.close().await.unwrap();
        // (files[2] was damaged only in its zero padding, which no CRC covers
        // and nothing reads: it was never rebuilt.)
        assert!(
            disk.contents(&files[0]).unwrap() == originals[0],
            "{} was not written back",
            files[0].display()
        );
        let engine = open(&disk, &clock, 32 << 10).await;
        check(&engine, &expected).await;
    });
}

#[test]
fn retention_removes_index_files_with_their_segments() {
    let disk = MemDisk::new(3);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        let mut t = topic("t", 1, Durability::Always);
        t.retention_ms = Some(100);
        engine.create_topic(t).await.unwrap();
        for i in 0..200u8 {
            engine.append("t", 0, &batch(1, 500, 0, i)).await.unwrap();
        }
        engine.checkpoint().await.unwrap();
        assert!(index_files(&disk).len() >= 3);
        clock.advance_ms(1_000);
        engine.maintenance().await.unwrap();
        assert!(index_files(&disk).is_empty(), "{:?}", index_files(&disk));
        drop(engine);
        disk.crash();
        let engine = open(&disk, &clock, 32 << 10).await;
        let start = engine.log_start_offset("t", 0).unwrap();
        assert!(start > 0);
        let kept = engine.read("t", 0, start, u32::MAX).await.unwrap();
        assert_eq!(
            coremq_wire::batch::split_batches(&kept.batches).count() as u64,
            200 - start
        );
    });
}

/// Appends that copy into a segment's tail and roll to the next segment
/// while a checkpoint's flush runs leave that segment not all synced: it
/// must not get its index file yet (recovery trusts index files whole).
#[test]
fn checkpoint_during_a_roll_indexes_only_synced_segments() {
    use coremq_shard::disk::memory::Faults;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use std::rc::Rc;
    for seed in 0..40u64 {
        let disk = MemDisk::new(seed);
        let clock = ManualClock::new(0);
        let mut pool = LocalPool::new();
        let engine = Rc::new(pool.run_until(open(&disk, &clock, 32 << 10)));
        pool.run_until(engine.create_topic(topic("t", 1, Durability::Always)))
            .unwrap();
        pool.run_until(engine.create_topic(topic("n", 1, Durability::Never)))
            .unwrap();
        let mut acked = Vec::new();
        for i in 0..(24 + seed % 4) as u8 {
            let b = batch(1, 1000, 0, i);
            let out = pool.run_until(engine.append("t", 0, &b)).unwrap();
            acked.push((
                out.base_offset,
                stored(&b, out.base_offset, out.append_time_ms),
            ));
        }
        // The next segment is prepared, so the roll does no I/O.
        pool.run_until(engine.maintenance()).unwrap();
        // Written, not synced: the checkpoint's flush has an fdatasync to do.
        pool.run_until(engine.append("n", 0, &batch(1, 100, 0, 9)))
            .unwrap();
        disk.set_faults(Faults {
            yield_first: 1.0,
            ..Faults::default()
        });
        // One fits in the segment's tail, the next rolls.
        for (i, size) in [(100u8, 400usize), (101, 6000)] {
            let engine = engine.clone();
            pool.spawner()
                .spawn_local(async move {
                    let _ = engine.append("n", 0, &batch(1, size, 0, i)).await;
                })
                .unwrap();
        }
        pool.run_until(engine.checkpoint()).unwrap();
        drop(pool);
        drop(engine);
        disk.set_faults(Faults::default());
        disk.crash();
        let engine = block_on(open(&disk, &clock, 32 << 10));
        block_on(async {
            for (offset, bytes) in &acked {
                assert_eq!(
                    &engine.read("t", 0, *offset, 1).await.unwrap().batches,
                    bytes,
                    "seed {seed}"
                );
            }
            // `never` data may be lost in the crash, but what is left reads back.
            let hw = engine.high_watermark("n", 0).unwrap();
            let all = engine.read("n", 0, 0, u32::MAX).await.unwrap();
            let mut count = 0;
            for b in coremq_wire::batch::split_batches(&all.batches) {
                let header = coremq_wire::BatchHeader::parse(b.unwrap()).unwrap();
                count += header.record_count as u64;
            }
            assert_eq!(
                count, hw,
                "seed {seed}: every offset below the high watermark reads back"
            );
            let out = engine.append("n", 0, &batch(1, 10, 0, 7)).await.unwrap();
            assert_eq!(out.base_offset, hw, "seed {seed}");
            engine.close().await.unwrap();
        });
    }
}
