//! Retention on the memory disk with an injected clock.

mod common;

use common::*;
use coremq_shard::clock::ManualClock;
use coremq_shard::disk::memory::MemDisk;
use coremq_shard::engine::Engine;
use coremq_shard::Durability;
use futures::executor::block_on;
use std::path::{Path, PathBuf};

const LOG: &str = "/data/shard-0/log";

/// Live segment files (`*.seg`; released ones kept for reuse are `*.spare`).
fn segments(disk: &MemDisk) -> usize {
    disk.files_in(Path::new(LOG))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .count()
}

#[test]
fn time_retention_deletes_expired_segments_and_survives_a_crash() {
    let disk = MemDisk::new(1);
    let clock = ManualClock::new(10_000);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        let mut t = topic("t", 2, Durability::Always);
        t.retention_ms = Some(1_000);
        engine.create_topic(t).await.unwrap();
        for i in 0..100u32 {
            engine
                .append("t", i % 2, &batch(1, 900, 0, i as u8))
                .await
                .unwrap();
            if i == 49 {
                clock.advance_ms(600);
            }
        }
        engine.maintenance().await.unwrap(); // may prepare the next segment
        let before = segments(&disk);
        assert!(before >= 4);
        engine.maintenance().await.unwrap();
        assert_eq!(segments(&disk), before, "nothing expired yet");
        // The first half (appended at t=10_000) expires; the second (t=10_600) not.
        clock.advance_ms(1_000);
        engine.maintenance().await.unwrap();
        let after = segments(&disk);
        assert!(after < before, "{before} -> {after}");
        let start = engine.log_start_offset("t", 0).unwrap();
        assert!(start > 0 && start <= 25, "start {start}");
        assert_eq!(engine.high_watermark("t", 0).unwrap(), 50);
        let kept = engine.read("t", 0, start, u32::MAX).await.unwrap();
        assert_eq!(
            coremq_wire::batch::split_batches(&kept.batches).count() as u64,
            50 - start
        );
        drop(engine);
        disk.crash();
        let engine = open(&disk, &clock, 32 << 10).await;
        assert_eq!(engine.log_start_offset("t", 0).unwrap(), start);
        assert_eq!(engine.high_watermark("t", 0).unwrap(), 50);
        // Recovery drops a next segment maintenance had prepared (empty).
        let recovered = segments(&disk);
        assert!(
            recovered == after || recovered + 1 == after,
            "{after} -> {recovered}"
        );
        // Everything expires; the segment being written stays.
        clock.advance_ms(10_000);
        engine.maintenance().await.unwrap();
        // The segment being written, and maybe the prepared next one.
        assert!(segments(&disk) <= 2, "{} segments", segments(&disk));
        for p in 0..2 {
            // What is left lives in the segment being written.
            let left = engine.log_start_offset("t", p).unwrap();
            assert!(left > start && left < 50, "start {left}");
            let kept = engine.read("t", p, left, u32::MAX).await.unwrap();
            assert_eq!(
                coremq_wire::batch::split_batches(&kept.batches).count() as u64,
                50 - left
            );
        }
        assert!(engine.read("t", 0, start, 1).await.is_err());
        let out = engine.append("t", 0, &batch(1, 10, 0, 0)).await.unwrap();
        assert_eq!(
            out.base_offset, 50,
            "offsets continue after everything expired"
        );
    });
}

#[test]
fn a_partition_without_retention_holds_shared_segments() {
    let disk = MemDisk::new(2);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        let mut short = topic("short", 1, Durability::Always);
        short.retention_ms = Some(10);
        engine.create_topic(short).await.unwrap();
        engine
            .create_topic(topic("forever", 1, Durability::Always))
            .await
            .unwrap();
        engine
            .append("forever", 0, &batch(1, 10, 0, 0))
            .await
            .unwrap();
        for i in 0..100u8 {
            engine
                .append("short", 0, &batch(1, 900, 0, i))
                .await
                .unwrap();
        }
        engine.maintenance().await.unwrap(); // may prepare the next segment
        let before = segments(&disk);
        clock.advance_ms(1_000);
        engine.maintenance().await.unwrap();
        assert_eq!(
            segments(&disk),
            before,
            "'forever' still needs the first segment"
        );
        // Once 'forever' is deleted, its data no longer holds anything back.
        engine.delete_topic("forever").await.unwrap();
        engine.maintenance().await.unwrap();
        // The segment being written, and maybe the prepared next one.
        assert!(segments(&disk) <= 2, "{} segments", segments(&disk));
        drop(engine);
        let engine = open(&disk, &clock, 32 << 10).await;
        assert!(engine.topic("forever").is_none());
        let start = engine.log_start_offset("short", 0).unwrap();
        assert!(
            start > 80 && start < 100,
            "only the segment being written is left: {start}"
        );
    });
}

#[test]
fn size_retention_keeps_at_least_the_limit() {
    let disk = MemDisk::new(3);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        let mut t = topic("t", 1, Durability::Never);
        t.retention_bytes = Some(50 << 10);
        engine.create_topic(t).await.unwrap();
        for i in 0..200u8 {
            engine.append("t", 0, &batch(1, 900, 0, i)).await.unwrap();
            if i % 20 == 0 {
                engine.maintenance().await.unwrap();
            }
        }
        engine.maintenance().await.unwrap();
        let start = engine.log_start_offset("t", 0).unwrap();
        let kept = engine.read("t", 0, start, u32::MAX).await.unwrap();
        assert!(
            kept.batches.len() >= 50 << 10,
            "kept {}",
            kept.batches.len()
        );
        assert!(
            kept.batches.len() < (50 << 10) + 2 * (32 << 10),
            "kept {}",
            kept.batches.len()
        );
        // Each append here is one flush, padded to a block: 1 KiB of data
        // takes 4 KiB of log, so the 50 KiB kept take about 7 segments,
        // plus the one being written and the one prepared.
        assert!(segments(&disk) <= 9, "{} segments", segments(&disk));
    });
}

/// Segments retention releases are renamed `*.spare` and reused as new
/// segments (written blocks are cheaper to append into); the data read back
/// is only ever the new data, before and after a crash, and a restarted
/// engine deletes leftover spares. With reuse off, released segments go.
#[test]
fn released_segments_are_reused_and_never_leak_old_data() {
    for recycle in [true, false] {
        let disk = MemDisk::new(4);
        let clock = ManualClock::new(0);
        block_on(async {
            let mut config = config(PathBuf::from("/data/shard-0"), 32 << 10);
            config.recycle_segments = recycle;
            let engine = Engine::open(disk.clone(), clock.clone(), config.clone())
                .await
                .unwrap();
            let mut t = topic("t", 1, Durability::Always);
            t.retention_bytes = Some(40 << 10);
            engine.create_topic(t).await.unwrap();
            let mut stored_batches = Vec::new();
            for i in 0..400u32 {
                let b = batch(1, 900, 0, i as u8);
                let out = engine.append("t", 0, &b).await.unwrap();
                stored_batches.push(stored(&b, out.base_offset, out.append_time_ms));
                if i % 10 == 0 {
                    engine.maintenance().await.unwrap();
                }
            }
            let recycled = engine.metrics().segments_recycled.get();
            let spares = disk
                .files_in(Path::new(LOG))
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "spare"))
                .count();
            if recycle {
                assert!(recycled >= 5, "only {recycled} segments reused");
                assert!(spares <= 2, "{spares} spares kept");
            } else {
                assert_eq!((recycled, spares), (0, 0));
            }
            check_kept(&engine, &stored_batches, recycle).await;
            drop(engine);
            disk.crash();
            let engine = Engine::open(disk.clone(), clock.clone(), config)
                .await
                .unwrap();
            check_kept(&engine, &stored_batches, recycle).await;
            assert!(
                !disk
                    .files_in(Path::new(LOG))
                    .iter()
                    .any(|p| p.extension().is_some_and(|e| e == "spare")),
                "recovery deletes spares"
            );
        });
    }
}

/// Everything from the log start to the end reads back as stored.
async fn check_kept(engine: &MemEngine, stored_batches: &[Vec<u8>], recycle: bool) {
    let start = engine.log_start_offset("t", 0).unwrap();
    assert!(start > 0, "retention dropped nothing");
    assert_eq!(engine.high_watermark("t", 0).unwrap(), 400);
    let kept = engine.read("t", 0, start, u32::MAX).await.unwrap();
    let expected: Vec<u8> = stored_batches[start as usize..].concat();
    assert!(
        kept.batches == expected,
        "recycle={recycle}: read back differs"
    );
}
