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
