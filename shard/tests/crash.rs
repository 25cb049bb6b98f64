//! Seeded crash tests on the fault-injecting memory disk.
//!
//! Each seed runs concurrent appends to topics of every durability while the
//! disk fails writes and syncs (a failed sync drops the file's unsynced
//! writes), tears writes and yields at random; then the
//! power goes (unsynced writes are dropped, torn or bit-flipped) and the
//! shard recovers. Twice per seed. Invariants checked after every crash:
//! - every append acknowledged under `always` is readable, byte for byte;
//! - every acknowledged append of any durability that is below the recovered
//!   high watermark is exactly what was acknowledged (the log is a prefix);
//! - no `always` high watermark a reader ever saw goes backwards;
//! - every partition reads back from log start to high watermark as valid
//!   batches with dense offsets: nothing half-written is ever served;
//! - no partition's recovered log start is above its log start before the
//!   crash (only retention moves it; recovery never drops the front);
//! - reads during the load, with read errors and bit flips injected, return
//!   the acknowledged bytes or an error, never other bytes; recovery itself
//!   runs with bit flips on its reads.
//!
//! The `interval` and `never` topics have time and size retention, so
//! segment deletion and checkpoints are crashed through as well.
//!
//! A failure prints its seed; `COREMQ_SEED=<n>` replays one seed,
//! `COREMQ_SEEDS=<from>..<to>` runs a range (benches/scripts/crash-seeds.sh
//! runs 10,000).

mod common;

use common::*;
use coremq_shard::clock::ManualClock;
use coremq_shard::disk::memory::{Faults, MemDisk, Rng};
use coremq_shard::{Durability, StorageError};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

const TOPICS: [(&str, Durability); 3] = [
    ("a", Durability::Always),
    ("i", Durability::Interval(Duration::from_millis(30))),
    ("n", Durability::Never),
];
const PARTITIONS: u32 = 2;
const SEGMENT_BYTES: u64 = 32 << 10;

thread_local! {
    /// (acknowledged appends, failed appends, partitions found trimmed by retention)
    static COUNTS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

thread_local! {
    /// Segments created from a released file (retention, then reuse).
    static RECYCLED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count(acked: u64, failed: u64, trimmed: u64) {
    COUNTS.with(|c| {
        let (a, f, t) = c.get();
        c.set((a + acked, f + failed, t + trimmed));
    });
}

/// An acknowledged append.
#[derive(Clone)]
struct Acked {
    topic: &'static str,
    partition: u32,
    base_offset: u64,
    bytes: Vec<u8>,
}

fn faults_for(rng: &mut Rng) -> Faults {
    let level = rng.below(4) as f64 * 0.02;
    Faults {
        write_error: level,
        short_write: level / 2.0,
        sync_error: level,
        read_error: level / 2.0,
        read_bit_flip: level,
        yield_first: 0.3,
    }
}

/// Highest `always` high watermark any reader saw, per partition.
type Seen = Rc<RefCell<[u64; PARTITIONS as usize]>>;

/// Each partition's log start just before the crash.
type Starts = std::collections::HashMap<(&'static str, u32), u64>;

fn workload(
    seed: u64,
    round: u64,
    disk: &MemDisk,
    clock: &ManualClock,
    acked: &Rc<RefCell<Vec<Acked>>>,
    seen: &Seen,
) -> Starts {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(round));
    let mut pool = LocalPool::new();
    let engine = Rc::new(pool.run_until(open(disk, clock, SEGMENT_BYTES)));
    if round == 0 {
        for (name, durability) in TOPICS {
            let mut t = topic(name, PARTITIONS, durability);
            // Retention runs under crashes too: segments are shared, so
            // every topic needs a limit for any segment to go.
            match name {
                "a" => t.retention_bytes = Some(4 << 10),
                "i" => t.retention_ms = Some(300),
                "n" => t.retention_bytes = Some(6 << 10),
                _ => {}
            }
            pool.run_until(engine.create_topic(t)).unwrap();
        }
    }
    disk.set_faults(faults_for(&mut rng));
    for task in 0..4u64 {
        let engine = engine.clone();
        let acked = acked.clone();
        let seen = seen.clone();
        let clock = clock.clone();
        let mut rng = Rng::new(rng.next_u64() ^ task);
        pool.spawner()
            .spawn_local(async move {
                for _ in 0..12 {
                    let (topic, _) = TOPICS[rng.below(3) as usize];
                    let partition = rng.below(PARTITIONS as u64) as u32;
                    let records = 1 + rng.below(4) as u32;
                    let value = rng.below(1500) as usize;
                    let b = batch(
                        records,
                        value,
                        clock.now_ms_for_tests(),
                        rng.next_u64() as u8,
                    );
                    match engine.append(topic, partition, &b).await {
                        Ok(out) => {
                            count(1, 0, 0);
                            let bytes = stored(&b, out.base_offset, out.append_time_ms);
                            if rng.below(3) == 0 {
                                // Read it back through the faulty disk (the
                                // cache is small, so often from "disk").
                                match engine.read(topic, partition, out.base_offset, 1).await {
                                    Ok(got) => assert!(
                                        got.batches.is_empty() || got.batches == bytes,
                                        "{topic}/{partition} @{}: a read served other bytes",
                                        out.base_offset
                                    ),
                                    Err(
                                        StorageError::Io { .. }
                                        | StorageError::OffsetOutOfRange { .. },
                                    ) => {}
                                    Err(other) => panic!("unexpected read error: {other}"),
                                }
                            }
                            acked.borrow_mut().push(Acked {
                                topic,
                                partition,
                                base_offset: out.base_offset,
                                bytes,
                            })
                        }
                        Err(StorageError::Io { .. }) => count(0, 1, 0),
                        Err(other) => panic!("unexpected append error: {other}"),
                    }
                    for p in 0..PARTITIONS {
                        let hw = engine.high_watermark("a", p).unwrap();
                        let mut seen = seen.borrow_mut();
                        seen[p as usize] = seen[p as usize].max(hw);
                    }
                    if rng.below(8) == 0 {
                        clock.advance_ms(rng.below(40) as i64);
                        match engine.maintenance().await {
                            Ok(()) | Err(StorageError::Io { .. }) => {}
                            Err(other) => panic!("unexpected maintenance error: {other}"),
                        }
                    }
                    if rng.below(30) == 0 {
                        clock.advance_ms(20_000); // the next maintenance checkpoints
                    }
                }
            })
            .unwrap();
    }
    pool.run();
    RECYCLED.with(|r| r.set(r.get() + engine.metrics().segments_recycled.get()));
    let mut starts = Starts::new();
    for (name, _) in TOPICS {
        for p in 0..PARTITIONS {
            starts.insert((name, p), engine.log_start_offset(name, p).unwrap());
        }
    }
    drop(engine);
    disk.set_faults(Faults::default());
    disk.crash();
    starts
}

/// Checks the invariants; returns the acknowledged appends that survived
/// (a lost `interval` / `never` append's offsets are reused afterwards).
fn verify(
    disk: &MemDisk,
    clock: &ManualClock,
    acked: &[Acked],
    seen: &Seen,
    starts: &Starts,
) -> Vec<Acked> {
    let mut survivors = Vec::new();
    let mut pool = LocalPool::new();
    // Recovery reads through bit flips (it must read again, not truncate).
    disk.set_faults(Faults {
        read_bit_flip: 0.05,
        ..Faults::default()
    });
    let engine = pool.run_until(open(disk, clock, SEGMENT_BYTES));
    disk.set_faults(Faults::default());
    for ((name, p), before) in starts {
        let start = engine.log_start_offset(name, *p).unwrap();
        assert!(
            start <= *before,
            "{name}/{p}: recovery moved the log start from {before} to {start}"
        );
    }
    for p in 0..PARTITIONS {
        let hw = engine.high_watermark("a", p).unwrap();
        let max_seen = seen.borrow()[p as usize];
        assert!(
            hw >= max_seen,
            "a/{p}: readers saw offsets up to {max_seen}, recovered {hw}"
        );
    }
    for a in acked {
        let hw = engine.high_watermark(a.topic, a.partition).unwrap();
        let start = engine.log_start_offset(a.topic, a.partition).unwrap();
        assert!(
            start <= hw,
            "{}/{}: log start {start} above high watermark {hw}",
            a.topic,
            a.partition
        );
        if a.base_offset < start {
            continue; // Retention dropped it.
        }
        let durable = a.topic == "a";
        if durable {
            assert!(
                a.base_offset < hw,
                "acked {}/{} @{} lost (hw {hw})",
                a.topic,
                a.partition,
                a.base_offset
            );
        }
        if a.base_offset < hw {
            let got = pool
                .run_until(engine.read(a.topic, a.partition, a.base_offset, 1))
                .unwrap();
            assert!(
                got.batches == a.bytes,
                "{}/{} @{} differs: {} bytes stored, {} acknowledged",
                a.topic,
                a.partition,
                a.base_offset,
                got.batches.len(),
                a.bytes.len()
            );
            survivors.push(a.clone());
        }
    }
    for (name, _) in TOPICS {
        for p in 0..PARTITIONS {
            let start = engine.log_start_offset(name, p).unwrap();
            let hw = engine.high_watermark(name, p).unwrap();
            count(0, 0, (start > 0) as u64);
            let all = pool
                .run_until(engine.read(name, p, start, u32::MAX))
                .unwrap();
            let mut next = start;
            for b in coremq_wire::batch::split_batches(&all.batches) {
                let header = coremq_wire::batch::verify_batch(b.unwrap()).unwrap();
                assert_eq!(header.base_offset, next, "{name}/{p}: offsets are dense");
                next = header.next_offset();
            }
            assert_eq!(next, hw, "{name}/{p}: reads reach the high watermark");
        }
    }
    survivors
}

trait NowForTests {
    fn now_ms_for_tests(&self) -> i64;
}

impl NowForTests for ManualClock {
    fn now_ms_for_tests(&self) -> i64 {
        use coremq_shard::clock::Clock;
        self.now_ms()
    }
}

fn run_seed(seed: u64) {
    let disk = MemDisk::new(seed);
    let clock = ManualClock::new(1_000_000);
    let acked = Rc::new(RefCell::new(Vec::new()));
    let seen: Seen = Rc::new(RefCell::new([0; PARTITIONS as usize]));
    for round in 0..2 {
        let starts = workload(seed, round, &disk, &clock, &acked, &seen);
        let survivors = verify(&disk, &clock, &acked.borrow(), &seen, &starts);
        *acked.borrow_mut() = survivors;
    }
}

#[test]
fn crash_recovery_keeps_every_acknowledged_append() {
    let seeds: Vec<u64> = match (std::env::var("COREMQ_SEED"), std::env::var("COREMQ_SEEDS")) {
        (Ok(seed), _) => vec![seed.parse().expect("COREMQ_SEED is a number")],
        (_, Ok(range)) => {
            let (from, to) = range
                .split_once("..")
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .expect("COREMQ_SEEDS is <from>..<to>");
            (from..to).collect()
        }
        _ => (0..250).collect(),
    };
    for seed in seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        if let Err(panic) = result {
            eprintln!("crash test failed with seed {seed}; replay with COREMQ_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
    let (acked, failed, trimmed) = COUNTS.with(|c| c.get());
    eprintln!(
        "{acked} appends acknowledged, {failed} failed, {trimmed} partition checks after retention"
    );
    let recycled = RECYCLED.with(|r| r.get());
    eprintln!("{recycled} segments reused from released files");
    assert!(
        acked > 0 && failed > 0 && trimmed > 0 && recycled > 0,
        "the faults, retention and segment-reuse paths must be reached"
    );
}
