//! The engine end to end on the in-memory disk: appends under every
//! durability, reads, group commit, recovery after close, topics, errors.

mod common;

use common::*;
use coremq_shard::clock::ManualClock;
use coremq_shard::disk::memory::{Faults, MemDisk};
use coremq_shard::{Durability, StorageError};
use futures::executor::{block_on, LocalPool};
use futures::task::LocalSpawnExt;
use std::rc::Rc;
use std::time::Duration;

#[test]
fn append_read_close_reopen() {
    let disk = MemDisk::new(1);
    let clock = ManualClock::new(1_000);
    block_on(async {
        let engine = open(&disk, &clock, 256 << 10).await;
        let durabilities = [
            ("always", Durability::Always),
            ("interval", Durability::Interval(Duration::from_millis(50))),
            ("never", Durability::Never),
        ];
        for (name, d) in durabilities {
            engine.create_topic(topic(name, 2, d)).await.unwrap();
        }
        let mut expected = Vec::new();
        for i in 0..30u32 {
            let (name, _) = durabilities[i as usize % 3];
            let b = batch(1 + i % 4, 100 + i as usize, 500 + i as i64, i as u8);
            let out = engine.append(name, i % 2, &b).await.unwrap();
            expected.push((
                name,
                i % 2,
                out.base_offset,
                stored(&b, out.base_offset, out.append_time_ms),
            ));
        }
        check(&engine, &expected).await;
        assert_eq!(
            engine.high_watermark("always", 0).unwrap(),
            engine
                .read("always", 0, 0, u32::MAX)
                .await
                .unwrap()
                .high_watermark
        );
        engine.close().await.unwrap();
        assert!(matches!(
            engine.high_watermark("always", 0),
            Err(StorageError::Closed)
        ));
        let engine = open(&disk, &clock, 256 << 10).await;
        check(&engine, &expected).await;
        assert_eq!(engine.topics().len(), 3);
        // Appends continue the offsets.
        let hw = engine.high_watermark("never", 1).unwrap();
        let out = engine
            .append("never", 1, &batch(2, 10, 0, 0))
            .await
            .unwrap();
        assert_eq!(out.base_offset, hw);
        engine.close().await.unwrap();
    });
}

async fn check(engine: &MemEngine, expected: &[(&str, u32, u64, Vec<u8>)]) {
    for (name, p, offset, bytes) in expected {
        let got = engine.read(name, *p, *offset, 1).await.unwrap();
        assert_eq!(&got.batches, bytes, "{name}/{p} at {offset}");
    }
}

#[test]
fn reads_respect_bounds_and_max_bytes() {
    let disk = MemDisk::new(2);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 256 << 10).await;
        engine
            .create_topic(topic("t", 1, Durability::Always))
            .await
            .unwrap();
        let b = batch(10, 50, 0, 1);
        for _ in 0..5 {
            engine.append("t", 0, &b).await.unwrap();
        }
        assert_eq!(engine.high_watermark("t", 0).unwrap(), 50);
        // Mid-batch offset returns the whole batch holding it.
        let r = engine.read("t", 0, 15, 1).await.unwrap();
        assert_eq!(r.batches.len(), b.len());
        assert_eq!(
            coremq_wire::BatchHeader::parse(&r.batches)
                .unwrap()
                .base_offset,
            10
        );
        // max_bytes bounds whole batches, at least one.
        let r = engine
            .read("t", 0, 0, (b.len() * 2 + 1) as u32)
            .await
            .unwrap();
        assert_eq!(r.batches.len(), b.len() * 2);
        let r = engine.read("t", 0, 50, 1 << 20).await.unwrap();
        assert!(r.batches.is_empty());
        assert!(matches!(
            engine.read("t", 0, 51, 1).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            engine.read("t", 1, 0, 1).await,
            Err(StorageError::UnknownPartition { .. })
        ));
        assert!(matches!(
            engine.read("x", 0, 0, 1).await,
            Err(StorageError::UnknownTopic(_))
        ));
    });
}

#[test]
fn bad_requests_store_nothing() {
    let disk = MemDisk::new(3);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 256 << 10).await;
        engine
            .create_topic(topic("t", 1, Durability::Always))
            .await
            .unwrap();
        let good = batch(3, 10, 0, 1);
        let mut bad = batch(3, 10, 0, 2);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut both = good.clone();
        both.extend_from_slice(&bad);
        assert!(matches!(
            engine.append("t", 0, &both).await,
            Err(StorageError::CorruptBatch(_))
        ));
        assert!(matches!(
            engine.append("t", 0, &[]).await,
            Err(StorageError::CorruptBatch(_))
        ));
        let huge = batch(1, 70 << 10, 0, 1);
        assert!(matches!(
            engine.append("t", 0, &huge).await,
            Err(StorageError::BatchTooLarge { .. })
        ));
        assert_eq!(engine.high_watermark("t", 0).unwrap(), 0);
        assert!(matches!(
            engine.create_topic(topic("t", 1, Durability::Always)).await,
            Err(StorageError::TopicExists(_))
        ));
        assert!(matches!(
            engine
                .create_topic(topic("bad/name", 1, Durability::Always))
                .await,
            Err(StorageError::InvalidTopic(_))
        ));
        assert!(matches!(
            engine
                .create_topic(topic("zero", 0, Durability::Always))
                .await,
            Err(StorageError::InvalidTopic(_))
        ));
    });
}

#[test]
fn ownership_follows_shard_for() {
    let disk = MemDisk::new(4);
    let clock = ManualClock::new(0);
    block_on(async {
        let mut config = config("/data/shard-1".into(), 256 << 10);
        config.shard = coremq_shard::ShardId(1);
        config.shard_count = 4;
        let engine = coremq_shard::Engine::open(disk.clone(), clock.clone(), config)
            .await
            .unwrap();
        engine
            .create_topic(topic("orders", 8, Durability::Always))
            .await
            .unwrap();
        for p in 0..8 {
            let owned = coremq_wire::shard_for("orders", p, 4) == 1;
            let result = engine.append("orders", p, &batch(1, 1, 0, 0)).await;
            assert_eq!(result.is_ok(), owned, "partition {p}");
            if !owned {
                assert!(matches!(result, Err(StorageError::NotOwned { .. })));
            }
        }
    });
}

/// Appenders with one append outstanding each, woken together by a flush,
/// all go into the next flush: its leader lets them copy first. (Before, the
/// first woken appender flushed alone and the others waited for the flush
/// after it, so flushes alternated between 1 batch and all the rest.)
#[test]
fn woken_appenders_share_the_next_flush() {
    const APPENDERS: u32 = 64;
    const ROUNDS: u32 = 10;
    let disk = MemDisk::new(6);
    disk.set_faults(Faults {
        yield_first: 1.0,
        ..Faults::default()
    });
    let clock = ManualClock::new(0);
    let mut pool = LocalPool::new();
    let engine = Rc::new(pool.run_until(open(&disk, &clock, 4 << 20)));
    pool.run_until(engine.create_topic(topic("t", 1, Durability::Always)))
        .unwrap();
    let syncs_before = disk.stats().syncs;
    for i in 0..APPENDERS {
        let engine = engine.clone();
        pool.spawner()
            .spawn_local(async move {
                for _ in 0..ROUNDS {
                    engine
                        .append("t", 0, &batch(1, 64, 0, i as u8))
                        .await
                        .unwrap();
                }
            })
            .unwrap();
    }
    pool.run();
    let syncs = disk.stats().syncs - syncs_before;
    assert_eq!(
        engine.high_watermark("t", 0).unwrap(),
        u64::from(APPENDERS * ROUNDS)
    );
    assert!(
        syncs <= u64::from(ROUNDS) + 2,
        "{ROUNDS} rounds of {APPENDERS} appenders took {syncs} fsyncs (one per round expected)"
    );
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let disk = MemDisk::new(5);
    disk.set_faults(Faults {
        yield_first: 0.5,
        ..Faults::default()
    });
    let clock = ManualClock::new(0);
    let mut pool = LocalPool::new();
    let engine = Rc::new(pool.run_until(open(&disk, &clock, 1 << 20)));
    pool.run_until(engine.create_topic(topic("t", 4, Durability::Always)))
        .unwrap();
    let syncs_before = disk.stats().syncs;
    let results = Rc::new(std::cell::RefCell::new(Vec::new()));
    for i in 0..200u32 {
        let engine = engine.clone();
        let results = results.clone();
        pool.spawner()
            .spawn_local(async move {
                let b = batch(2, 64, 0, i as u8);
                let out = engine.append("t", i % 4, &b).await.unwrap();
                results.borrow_mut().push((
                    i % 4,
                    out.base_offset,
                    stored(&b, out.base_offset, out.append_time_ms),
                ));
            })
            .unwrap();
    }
    pool.run();
    let syncs = disk.stats().syncs - syncs_before;
    assert!(
        syncs < 100,
        "200 appends took {syncs} fsyncs: no group commit"
    );
    for (p, offset, bytes) in results.borrow().iter() {
        let got = pool.run_until(engine.read("t", *p, *offset, 1)).unwrap();
        assert_eq!(&got.batches, bytes);
    }
    for p in 0..4 {
        assert_eq!(engine.high_watermark("t", p).unwrap(), 100);
    }
    assert_eq!(engine.metrics().appended_batches.get(), 200);
    assert!(!engine.metrics().fsync_us.borrow().is_empty());
}

#[test]
fn delete_and_recreate_topic() {
    let disk = MemDisk::new(6);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 256 << 10).await;
        engine
            .create_topic(topic("t", 1, Durability::Always))
            .await
            .unwrap();
        engine.append("t", 0, &batch(5, 10, 0, 1)).await.unwrap();
        engine.delete_topic("t").await.unwrap();
        assert!(matches!(
            engine.read("t", 0, 0, 1).await,
            Err(StorageError::UnknownTopic(_))
        ));
        assert!(matches!(
            engine.delete_topic("t").await,
            Err(StorageError::UnknownTopic(_))
        ));
        engine
            .create_topic(topic("t", 1, Durability::Never))
            .await
            .unwrap();
        assert_eq!(engine.high_watermark("t", 0).unwrap(), 0);
        engine.append("t", 0, &batch(2, 10, 0, 1)).await.unwrap();
        drop(engine); // no close: recovery replays create, delete, create
        let engine = open(&disk, &clock, 256 << 10).await;
        assert_eq!(engine.topic("t").unwrap().durability, Durability::Never);
        assert_eq!(engine.high_watermark("t", 0).unwrap(), 2);
    });
}

#[test]
fn offsets_for_timestamps() {
    let disk = MemDisk::new(7);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 256 << 10).await;
        engine
            .create_topic(topic("t", 1, Durability::Always))
            .await
            .unwrap();
        for ts in [100, 200, 300] {
            engine.append("t", 0, &batch(2, 10, ts, 1)).await.unwrap();
        }
        assert_eq!(engine.offset_for_timestamp("t", 0, 0).unwrap(), 0);
        assert_eq!(engine.offset_for_timestamp("t", 0, 150).unwrap(), 2);
        assert_eq!(engine.offset_for_timestamp("t", 0, 301).unwrap(), 4);
        assert_eq!(engine.offset_for_timestamp("t", 0, 999).unwrap(), 6);
    });
}

#[test]
fn segments_roll_and_reads_come_from_disk() {
    let disk = MemDisk::new(8);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 64 << 10).await;
        engine
            .create_topic(topic("t", 2, Durability::Always))
            .await
            .unwrap();
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let b = batch(3, 300, i as i64, i as u8);
            let out = engine.append("t", i % 2, &b).await.unwrap();
            expected.push((
                i % 2,
                out.base_offset,
                stored(&b, out.base_offset, out.append_time_ms),
            ));
        }
        let segments = disk
            .files_in(std::path::Path::new("/data/shard-0/log"))
            .len();
        assert!(segments >= 3, "only {segments} segments");
        let reads_before = disk.stats().reads;
        for (p, offset, bytes) in &expected {
            assert_eq!(
                &engine.read("t", *p, *offset, 1).await.unwrap().batches,
                bytes
            );
        }
        assert!(
            disk.stats().reads > reads_before,
            "old data is read from disk (cache is 256 KiB)"
        );
        // A whole-partition read returns every batch in order.
        let all = engine.read("t", 0, 0, u32::MAX).await.unwrap();
        let want: Vec<u8> = expected
            .iter()
            .filter(|e| e.0 == 0)
            .flat_map(|e| e.2.clone())
            .collect();
        assert_eq!(all.batches, want);
        drop(engine);
        let engine = open(&disk, &clock, 64 << 10).await;
        for (p, offset, bytes) in &expected {
            assert_eq!(
                &engine.read("t", *p, *offset, 1).await.unwrap().batches,
                bytes
            );
        }
    });
}

/// A sequential reader's next fetches are read ahead from disk; what it gets
/// is still exactly what was appended, also when reads yield, and a
/// read-ahead that fails verification is never served.
#[test]
fn sequential_reads_are_read_ahead() {
    use coremq_shard::disk::memory::Faults;
    let disk = MemDisk::new(11);
    let clock = ManualClock::new(0);
    block_on(async {
        let engine = open(&disk, &clock, 256 << 10).await;
        engine
            .create_topic(topic("t", 1, Durability::Always))
            .await
            .unwrap();
        let mut want = Vec::new();
        for i in 0..300u32 {
            let b = batch(2, 700 + (i as usize % 5) * 100, i as i64, i as u8);
            let out = engine.append("t", 0, &b).await.unwrap();
            want.extend(stored(&b, out.base_offset, out.append_time_ms));
        }
        let hw = engine.high_watermark("t", 0).unwrap();
        let read_all = |max_bytes: u32| {
            let engine = &engine;
            async move {
                let mut got = Vec::new();
                let mut offset = 0;
                while offset < hw {
                    let read = engine.read("t", 0, offset, max_bytes).await?;
                    let last = coremq_wire::batch::split_batches(&read.batches)
                        .last()
                        .unwrap()
                        .unwrap();
                    let header = coremq_wire::BatchHeader::parse(last).unwrap();
                    offset = header.base_offset + header.record_count as u64;
                    got.extend_from_slice(&read.batches);
                }
                Ok::<_, StorageError>(got)
            }
        };
        disk.set_faults(Faults {
            yield_first: 0.5,
            ..Faults::default()
        });
        for max_bytes in [5_000, 20_000, 64 << 10] {
            assert_eq!(read_all(max_bytes).await.unwrap(), want);
        }
        assert!(engine.metrics().read_ahead_hits.get() > 10);
        // Bit flips on the way from the device: never served.
        disk.set_faults(Faults {
            read_bit_flip: 0.3,
            yield_first: 0.3,
            ..Faults::default()
        });
        for _ in 0..5 {
            match read_all(20_000).await {
                Ok(got) => assert_eq!(got, want),
                Err(StorageError::CorruptBatch(_)) => {}
                Err(other) => panic!("unexpected read error: {other}"),
            }
        }
        disk.set_faults(Faults::default());
        engine.close().await.unwrap();
    });
}
