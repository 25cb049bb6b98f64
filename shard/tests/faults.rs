//! Targeted fault tests on the memory disk: each builds one situation the
//! random crash test reaches rarely or never, and checks the exact outcome.

mod common;

use common::*;
use coremq_shard::clock::ManualClock;
use coremq_shard::commitlog::entry::walk_entries;
use coremq_shard::disk::memory::{Faults, MemDisk};
use coremq_shard::{Durability, StorageError};
use futures::executor::block_on;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LOG: &str = "/data/shard-0/log";

fn segment0() -> PathBuf {
    Path::new(LOG).join("00000000000000000000.seg")
}

/// (position, length) of every valid, chained entry in the first segment;
/// a flush's padding up to the next block is stepped over.
fn entries(disk: &MemDisk) -> Vec<(usize, usize)> {
    let bytes = disk.contents(&segment0()).unwrap();
    walk_entries(&bytes)
        .into_iter()
        .map(|(at, h)| (at, h.length as usize))
        .collect()
}

/// A batch whose log entry (32-byte header + batch) is exactly `entry_bytes`.
fn batch_with_entry_len(entry_bytes: usize, fill: u8) -> Vec<u8> {
    let b = batch(1, entry_bytes - 32 - 64 - 25, 0, fill);
    assert_eq!(b.len() + 32, entry_bytes);
    b
}

async fn open_repairing(disk: &MemDisk, clock: &ManualClock, segment_bytes: u64) -> MemEngine {
    let mut c = config(PathBuf::from("/data/shard-0"), segment_bytes);
    c.repair_corruption = true;
    coremq_shard::Engine::open(disk.clone(), clock.clone(), c)
        .await
        .expect("open with --repair-corruption")
}

async fn open_err(disk: &MemDisk, clock: &ManualClock, segment_bytes: u64) -> StorageError {
    let c = config(PathBuf::from("/data/shard-0"), segment_bytes);
    match coremq_shard::Engine::open(disk.clone(), clock.clone(), c).await {
        Ok(_) => panic!("opened a log with damaged acknowledged data"),
        Err(e) => e,
    }
}

/// Every record value of a partition, by offset (readers skip lost offsets).
async fn values(engine: &MemEngine, topic: &str) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    let mut offset = engine.log_start_offset(topic, 0).unwrap();
    let end = engine.high_watermark(topic, 0).unwrap();
    while offset < end {
        let got = engine.read(topic, 0, offset, 1 << 20).await.unwrap();
        assert!(!got.batches.is_empty(), "no progress at {offset}");
        for record in coremq_wire::batch::records_from(&got.batches, offset) {
            let record = record.unwrap();
            if record.offset >= offset {
                out.push((record.offset, record.value[0]));
                offset = record.offset + 1;
            }
        }
    }
    out
}

/// Media corruption inside synced data with more synced data after it: the
/// shard refuses to start (naming file, position and lost offsets) instead
/// of truncating acknowledged data; a repair quarantines only the damaged
/// entry and keeps everything before and after it; offsets are never
/// handed out again; later starts need no flag.
#[test]
fn damage_followed_by_synced_data_refuses_to_start_and_repair_keeps_the_rest() {
    for damaged_batch in [10usize, 29] {
        let disk = MemDisk::new(2);
        let clock = ManualClock::new(0);
        block_on(async {
            let engine = open(&disk, &clock, 32 << 10).await;
            engine
                .create_topic(topic("x", 1, Durability::Always))
                .await
                .unwrap();
            engine
                .create_topic(topic("y", 1, Durability::Always))
                .await
                .unwrap();
            for i in 0..60u8 {
                let name = if i % 2 == 0 { "x" } else { "y" };
                engine.append(name, 0, &batch(1, 900, 0, i)).await.unwrap();
            }
            drop(engine);
            let segments = disk.files_in(Path::new(LOG));
            assert!(segments.len() >= 2);
            // Batch entries of segment 0 after its snapshot and two creates;
            // 29 is the segment's last when it is the x batch before a roll.
            let all = entries(&disk);
            let batches = &all[3..];
            let index = damaged_batch.min(batches.len() - 1);
            let (at, _) = batches[index];
            let bytes = disk.contents(&segment0()).unwrap();
            let fill = bytes[at + 32 + 64 + 25]; // the value's first byte
            disk.corrupt(&segment0(), at + 100);

            let error = open_err(&disk, &clock, 32 << 10).await;
            let message = error.to_string();
            assert!(
                matches!(error, StorageError::Corruption { .. }),
                "{message}"
            );
            assert!(message.contains("00000000000000000000.seg"), "{message}");
            assert!(message.contains(&format!("at byte {at}")), "{message}");
            let lost_topic = if fill.is_multiple_of(2) { "x" } else { "y" };
            let lost_offset = u64::from(fill / 2);
            assert!(
                message.contains(&format!(
                    "{lost_topic}/0 offsets {lost_offset}..{lost_offset}"
                )),
                "{message}"
            );
            assert_eq!(disk.files_in(Path::new(LOG)), segments, "nothing deleted");

            let engine = open_repairing(&disk, &clock, 32 << 10).await;
            let quarantined = disk.files_in(Path::new("/data/shard-0/quarantine"));
            assert_eq!(quarantined.len(), 1, "the damaged range is copied aside");
            let mut want_x: Vec<(u64, u8)> = (0..30).map(|i| (i, (2 * i) as u8)).collect();
            let mut want_y: Vec<(u64, u8)> = (0..30).map(|i| (i, (2 * i + 1) as u8)).collect();
            let lost_values = if lost_topic == "x" {
                &mut want_x
            } else {
                &mut want_y
            };
            lost_values.retain(|(o, _)| *o != lost_offset);
            assert_eq!(values(&engine, "x").await, want_x);
            assert_eq!(values(&engine, "y").await, want_y);
            // The lost offset is never handed out again.
            let next = engine
                .append(lost_topic, 0, &batch(1, 10, 0, 0))
                .await
                .unwrap();
            assert_eq!(next.base_offset, 30);
            drop(engine);
            // Restart without the flag: the repair is remembered.
            let engine = open(&disk, &clock, 32 << 10).await;
            assert_eq!(engine.high_watermark(lost_topic, 0).unwrap(), 31);
            let mut lost = if lost_topic == "x" { want_x } else { want_y };
            lost.push((30, 0));
            assert_eq!(values(&engine, lost_topic).await, lost);
        });
    }
}

/// Damage that no later entry proves was synced (here: a `never` topic,
/// nothing ever fdatasync'd) is a torn tail: truncated, as before.
#[test]
fn damage_that_no_later_data_proves_synced_is_truncated() {
    let disk = MemDisk::new(1);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("x", 1, Durability::Never))
            .await
            .unwrap();
        for i in 0..10u8 {
            engine.append("x", 0, &batch(1, 300, 0, i)).await.unwrap();
        }
        drop(engine);
        let all = entries(&disk);
        let (at, _) = all[all.len() - 4];
        disk.corrupt(&segment0(), at + 100);
        let engine = open(&disk, &clock, 1 << 20).await;
        assert_eq!(
            engine.high_watermark("x", 0).unwrap(),
            6,
            "the log ends at the damage"
        );
    });
}

/// `never` topics: nothing after the creates is fdatasync'd, so damage is a
/// torn tail (see `damage_that_no_later_data_proves_synced_is_truncated`).
#[test]
fn stale_valid_entries_after_a_truncated_tail_are_not_resurrected() {
    let disk = MemDisk::new(1);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("x", 1, Durability::Never))
            .await
            .unwrap();
        engine
            .create_topic(topic("y", 1, Durability::Never))
            .await
            .unwrap();
        // Each append is one flush: A, B and C each start a block.
        let b_len = 1000;
        let a_len = 3000;
        engine
            .append("x", 0, &batch_with_entry_len(a_len, 1))
            .await
            .unwrap();
        engine
            .append("x", 0, &batch_with_entry_len(b_len, 2))
            .await
            .unwrap();
        engine.append("y", 0, &batch(1, 100, 0, 3)).await.unwrap();
        drop(engine);
        let all = entries(&disk);
        let (b_at, _) = all[all.len() - 2];
        let (c_at, _) = all[all.len() - 1];
        assert_eq!(c_at, (b_at + b_len).next_multiple_of(4096));
        // Damage inside B, which nothing proves was synced (`never`): a
        // torn tail, so the log now ends before B.
        disk.corrupt(&segment0(), b_at + 200);
        let engine = open(&disk, &clock, 1 << 20).await;
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 1);
        assert_eq!(
            engine.high_watermark("y", 0).unwrap(),
            0,
            "C follows the broken B"
        );
        // D takes B's place and length; the stale C starts at the next block,
        // where recovery looks for the log's continuation after padding.
        engine
            .append("x", 0, &batch_with_entry_len(b_len, 4))
            .await
            .unwrap();
        drop(engine);
        let engine = open(&disk, &clock, 1 << 20).await;
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 2);
        assert_eq!(
            engine.high_watermark("y", 0).unwrap(),
            0,
            "C is valid but does not chain to D: it must stay dead"
        );
    });
}

#[test]
fn a_torn_tail_is_truncated_and_overwritten() {
    let disk = MemDisk::new(3);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("x", 1, Durability::Never))
            .await
            .unwrap();
        for i in 0..5 {
            engine.append("x", 0, &batch(2, 300, 0, i)).await.unwrap();
        }
        drop(engine);
        let (last_at, last_len) = *entries(&disk).last().unwrap();
        disk.corrupt(&segment0(), last_at + last_len - 1);
        let engine = open(&disk, &clock, 1 << 20).await;
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 8);
        let b = batch(1, 50, 0, 9);
        let out = engine.append("x", 0, &b).await.unwrap();
        assert_eq!(out.base_offset, 8);
        drop(engine);
        let engine = open(&disk, &clock, 1 << 20).await;
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 9);
        let got = engine.read("x", 0, 8, 1).await.unwrap();
        assert_eq!(got.batches, stored(&b, 8, out.append_time_ms));
    });
}

#[test]
fn a_corrupt_checkpoint_falls_back_to_scanning_the_log() {
    let disk = MemDisk::new(4);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        engine
            .create_topic(topic("x", 2, Durability::Always))
            .await
            .unwrap();
        for i in 0..80u32 {
            engine
                .append("x", i % 2, &batch(1, 700, 0, i as u8))
                .await
                .unwrap();
        }
        engine.close().await.unwrap();
        let checkpoint = Path::new("/data/shard-0/index/checkpoint");
        assert!(
            disk.contents(checkpoint).is_some(),
            "close writes a checkpoint"
        );
        disk.corrupt(checkpoint, 40);
        let engine = open(&disk, &clock, 32 << 10).await;
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 40);
        assert_eq!(engine.high_watermark("x", 1).unwrap(), 40);
        let all = engine.read("x", 1, 0, u32::MAX).await.unwrap();
        assert_eq!(coremq_wire::batch::split_batches(&all.batches).count(), 40);
    });
}

/// No usable checkpoint and a damaged first snapshot, the one entry that
/// seeds a scan from scratch: the segments are never discarded. The shard
/// refuses to start; a repair quarantines the first segment and rebuilds
/// from the next one's snapshot.
#[test]
fn an_unusable_checkpoint_and_a_damaged_first_snapshot_discard_nothing() {
    let disk = MemDisk::new(5);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        engine
            .create_topic(topic("x", 1, Durability::Always))
            .await
            .unwrap();
        for i in 0..80u32 {
            engine
                .append("x", 0, &batch(1, 700, 0, i as u8))
                .await
                .unwrap();
        }
        engine.close().await.unwrap();
        let segments = disk.files_in(Path::new(LOG));
        assert!(segments.len() >= 3);
        disk.corrupt(Path::new("/data/shard-0/index/checkpoint"), 40);
        disk.corrupt(&segment0(), 40); // inside the leading snapshot
        let error = open_err(&disk, &clock, 32 << 10).await;
        assert!(matches!(error, StorageError::Corruption { .. }), "{error}");
        assert_eq!(disk.files_in(Path::new(LOG)), segments, "nothing deleted");
        let engine = open_repairing(&disk, &clock, 32 << 10).await;
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 80);
        let start = engine.log_start_offset("x", 0).unwrap();
        assert!(
            start > 0 && start < 80,
            "only the first segment is lost: {start}"
        );
        assert_eq!(
            values(&engine, "x").await,
            (start..80).map(|o| (o, o as u8)).collect::<Vec<_>>()
        );
    });
}

#[test]
fn bit_flips_on_read_are_never_served() {
    let disk = MemDisk::new(5);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("x", 1, Durability::Always))
            .await
            .unwrap();
        let b = batch(3, 500, 0, 1);
        let out = engine.append("x", 0, &b).await.unwrap();
        drop(engine);
        let engine = open(&disk, &clock, 1 << 20).await; // empty cache: reads hit the disk
        disk.set_faults(Faults {
            read_bit_flip: 1.0,
            ..Faults::default()
        });
        // Every read flips a bit somewhere in the blocks it reads: inside
        // the entry it is refused, outside it the batch is served intact.
        let want = stored(&b, 0, out.append_time_ms);
        let mut refused = 0;
        for _ in 0..50 {
            match engine.read("x", 0, 0, 1).await {
                // Refused twice: answered as data loss, nothing served.
                Ok(got) if got.data_loss.is_some() => {
                    assert!(got.batches.is_empty(), "a flipped bit was served");
                    refused += 1;
                }
                Ok(got) => assert!(got.batches == want, "a flipped bit was served"),
                Err(other) => panic!("{other}"),
            }
        }
        assert!(refused > 0);
        disk.set_faults(Faults::default());
        let got = engine.read("x", 0, 0, 1).await.unwrap();
        assert_eq!(got.batches, want);
    });
}

#[test]
fn disk_full_fails_the_append_and_stores_nothing() {
    let disk = MemDisk::new(6);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 32 << 10).await;
        engine
            .create_topic(topic("x", 1, Durability::Always))
            .await
            .unwrap();
        disk.set_disk_full(true);
        let mut stored_ok = 0;
        let error = loop {
            match engine.append("x", 0, &batch(1, 1000, 0, 1)).await {
                Ok(_) => stored_ok += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(error, StorageError::DiskFull { .. }), "{error}");
        assert_eq!(
            coremq_shard::ToErrorCode::error_code(&error),
            coremq_wire::ErrorCode::DiskFull
        );
        assert_eq!(engine.high_watermark("x", 0).unwrap(), stored_ok);
        disk.set_disk_full(false);
        let out = engine.append("x", 0, &batch(1, 1000, 0, 2)).await.unwrap();
        assert_eq!(
            out.base_offset, stored_ok,
            "the failed append took no offset"
        );
        drop(engine);
        let engine = open(&disk, &clock, 32 << 10).await;
        assert_eq!(engine.high_watermark("x", 0).unwrap(), stored_ok + 1);
    });
}

#[test]
fn write_errors_are_not_acknowledged_and_later_flushes_retry() {
    let disk = MemDisk::new(7);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("x", 1, Durability::Always))
            .await
            .unwrap();
        engine.append("x", 0, &batch(1, 10, 0, 0)).await.unwrap();
        disk.set_faults(Faults {
            write_error: 1.0,
            ..Faults::default()
        });
        let error = engine
            .append("x", 0, &batch(1, 10, 0, 1))
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::Io { .. }), "{error}");
        assert_eq!(
            engine.high_watermark("x", 0).unwrap(),
            1,
            "nothing unacknowledged is visible"
        );
        disk.set_faults(Faults {
            short_write: 1.0,
            ..Faults::default()
        });
        assert!(engine.append("x", 0, &batch(1, 10, 0, 2)).await.is_err());
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 1);
        disk.set_faults(Faults::default());
        let out = engine.append("x", 0, &batch(1, 10, 0, 3)).await.unwrap();
        // The failed appends' bytes stayed queued and went out with this
        // flush: not acknowledged, but stored (at least once, like a timeout).
        assert_eq!(out.base_offset, 3);
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 4);
        drop(engine);
        disk.crash();
        let engine = open(&disk, &clock, 1 << 20).await;
        assert_eq!(engine.high_watermark("x", 0).unwrap(), 4);
    });
}

#[test]
fn sync_errors_fail_always_but_not_never() {
    let disk = MemDisk::new(8);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("a", 1, Durability::Always))
            .await
            .unwrap();
        engine
            .create_topic(topic("n", 1, Durability::Never))
            .await
            .unwrap();
        disk.set_faults(Faults {
            sync_error: 1.0,
            ..Faults::default()
        });
        assert!(matches!(
            engine.append("a", 0, &batch(1, 10, 0, 0)).await,
            Err(StorageError::Io { .. })
        ));
        assert_eq!(engine.high_watermark("a", 0).unwrap(), 0);
        engine.append("n", 0, &batch(1, 10, 0, 0)).await.unwrap();
        assert_eq!(engine.high_watermark("n", 0).unwrap(), 1);
        disk.set_faults(Faults::default());
        engine.append("a", 0, &batch(1, 10, 0, 0)).await.unwrap();
        assert_eq!(engine.high_watermark("a", 0).unwrap(), 2);
    });
}

#[test]
fn interval_topics_sync_on_the_maintenance_timer() {
    let disk = MemDisk::new(9);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        let every = Duration::from_millis(100);
        engine
            .create_topic(topic("i", 1, Durability::Interval(every)))
            .await
            .unwrap();
        let syncs = disk.stats().syncs;
        let mut listener = engine.appended();
        engine.append("i", 0, &batch(1, 10, 0, 0)).await.unwrap();
        assert_eq!(
            disk.stats().syncs,
            syncs,
            "acknowledged after the write, before any sync"
        );
        assert_eq!(engine.high_watermark("i", 0).unwrap(), 1);
        assert!(
            futures::poll!(&mut listener).is_ready(),
            "the high watermark moved"
        );
        clock.advance_ms(50);
        engine.maintenance().await.unwrap();
        assert_eq!(disk.stats().syncs, syncs, "not due yet");
        clock.advance_ms(60);
        engine.maintenance().await.unwrap();
        assert!(disk.stats().syncs > syncs, "due: synced");
    });
}

#[test]
fn appends_dropped_mid_flush_lose_nothing() {
    use futures::FutureExt;
    let disk = MemDisk::new(10);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 64 << 10).await;
        engine
            .create_topic(topic("x", 1, Durability::Always))
            .await
            .unwrap();
        let mut acked = Vec::new();
        // Every disk operation yields first, so each poll stops at the next await.
        disk.set_faults(Faults {
            yield_first: 1.0,
            ..Faults::default()
        });
        for polls in 1..12 {
            let dropped = batch(1, 9000, 0, polls as u8);
            {
                let mut future = Box::pin(engine.append("x", 0, &dropped));
                for _ in 0..polls {
                    if (&mut future).now_or_never().is_some() {
                        break;
                    }
                }
                // Dropped here, possibly in the middle of its flush.
            }
            let b = batch(1, 9000, 0, 100 + polls as u8);
            let out = engine.append("x", 0, &b).await.unwrap();
            acked.push((
                out.base_offset,
                stored(&b, out.base_offset, out.append_time_ms),
            ));
            let hw = engine.high_watermark("x", 0).unwrap();
            let all = engine.read("x", 0, 0, u32::MAX).await.unwrap();
            let mut next = 0;
            for b in coremq_wire::batch::split_batches(&all.batches) {
                let h = coremq_wire::batch::verify_batch(b.unwrap()).unwrap();
                assert_eq!(h.base_offset, next);
                next = h.next_offset();
            }
            assert_eq!(next, hw);
        }
        disk.set_faults(Faults::default());
        drop(engine);
        disk.crash();
        let engine = open(&disk, &clock, 64 << 10).await;
        for (offset, bytes) in &acked {
            let got = engine.read("x", 0, *offset, 1).await.unwrap();
            assert!(&got.batches == bytes, "acked batch at {offset} differs");
        }
    });
}

#[test]
fn transient_read_flips_are_retried_and_never_served() {
    let disk = MemDisk::new(11);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 1 << 20).await;
        engine
            .create_topic(topic("x", 1, Durability::Always))
            .await
            .unwrap();
        let mut expected = Vec::new();
        for i in 0..20u8 {
            let b = batch(2, 3000, 0, i);
            let out = engine.append("x", 0, &b).await.unwrap();
            expected.extend_from_slice(&stored(&b, out.base_offset, out.append_time_ms));
        }
        drop(engine);
        let engine = open(&disk, &clock, 1 << 20).await; // cold cache: disk reads
        disk.set_faults(Faults {
            read_bit_flip: 0.3,
            ..Faults::default()
        });
        let (mut served, mut refused) = (0, 0);
        for _ in 0..100 {
            match engine.read("x", 0, 0, u32::MAX).await {
                // Refused twice: only the intact batches before the refused
                // one are served (none, and data loss, when it is the first).
                Ok(got) if got.batches.len() < expected.len() => {
                    assert!(
                        got.batches == expected[..got.batches.len()],
                        "a flipped bit was served"
                    );
                    assert_eq!(got.data_loss.is_some(), got.batches.is_empty());
                    refused += 1;
                }
                Ok(got) => {
                    assert!(got.batches == expected, "a flipped bit was served");
                    served += 1;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(
            served > 70,
            "one retry rescues most reads: {served} served, {refused} refused"
        );
        assert!(refused > 0, "two flips in a row are refused");
    });
}
