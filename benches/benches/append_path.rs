//! The append path of the shard storage.
//!
//! - `append_path/cpu`: what one batch costs before any I/O — verify (CRC),
//!   copy into the log tail with the entry header (its CRC chained), index it.
//!   Runs the real `Writer` on the memory disk's buffers; chunks are taken
//!   and dropped as a flush would.
//! - `append_path/glommio_*`: `ShardStorage::append` end to end on glommio
//!   DMA files (O_DIRECT, ext4 under the target dir), many concurrent
//!   appenders so group commit batches them; `always` waits for the
//!   fdatasync, `never` only for the write.

use coremq_shard::commitlog::entry::{EntryKind, ENTRY_HEADER_LEN};
use coremq_shard::commitlog::writer::Writer;
use coremq_shard::disk::memory::MemDisk;
use coremq_shard::disk::Disk;
use coremq_shard::index::PartitionIndex;
use coremq_shard::{Durability, ShardId, ShardStorage, StorageConfig, TopicConfig};
use coremq_wire::batch::{set_broker_fields, verify_batch};
use coremq_wire::BatchBuilder;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A batch of `records` 1 KiB messages.
fn batch(records: u32) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(records as usize * 1100);
    let value = vec![0x5Au8; 1024];
    for i in 0..records {
        b.push(1_700_000_000_000 + i as i64, Some(b"key-0001"), &value, &[])
            .unwrap();
    }
    b.finish()
}

fn cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_path");
    for records in [16u32, 64] {
        let batch = batch(records);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        let disk = MemDisk::new(1);
        let file = futures::executor::block_on(async {
            disk.create_dir_all(Path::new("/b")).await.unwrap();
            Rc::new(disk.create(Path::new("/b/seg")).await.unwrap())
        });
        let mut writer = Writer::new(file, 0, 1 << 40, 0, 0);
        let mut index = PartitionIndex::new();
        let mut next_offset = 0u64;
        group.bench_function(format!("cpu_{}x1KiB", records), |b| {
            b.iter(|| {
                let header = verify_batch(black_box(&batch)).unwrap();
                let base = next_offset;
                let position = writer.append(batch.len(), EntryKind::Batch, 1, 0, |dst| {
                    dst.copy_from_slice(&batch);
                    set_broker_fields(dst, base, 1_700_000_000_000);
                });
                index.push(
                    base,
                    header.record_count,
                    (ENTRY_HEADER_LEN + batch.len()) as u32,
                    position,
                    header.max_timestamp_ms,
                    0,
                );
                next_offset += header.record_count as u64;
                if writer.pending_bytes() > 4 << 20 {
                    let taken = writer.take_pending();
                    writer.mark_written(taken.target_end, &taken.chunks);
                    writer.mark_durable(taken.target_end, taken.target_chain);
                }
                if index.len() > 1 << 20 {
                    index = PartitionIndex::new();
                }
            })
        });
    }
    group.finish();
}

/// One warm shard on its own glommio executor thread, driven by commands:
/// creating and deleting big pre-allocated segments per sample would time
/// the file system (this ext4 is mounted with online discard), not appends.
struct Shard {
    commands: mpsc::Sender<(u64, u64)>,
    done: mpsc::Receiver<Duration>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shard {
    fn start(name: &str, durability: Durability, batch: Vec<u8>) -> Shard {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("append-path-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = StorageConfig::new(ShardId(0), 1, dir.clone());
        config.segment_bytes = 256 << 20;
        let (commands, command_rx) = mpsc::channel::<(u64, u64)>();
        let (done_tx, done) = mpsc::channel();
        let executor = glommio::LocalExecutorBuilder::default().io_memory(config.io_memory_bytes());
        let thread = std::thread::spawn(move || {
            executor.make().unwrap().run(async move {
                let batch = Rc::new(batch);
                let storage = Rc::new(ShardStorage::open(config).await.unwrap());
                storage
                    .create_topic(TopicConfig {
                        name: "bench".into(),
                        partitions: 8,
                        durability,
                        retention_ms: None,
                        // Keeps the disk footprint near 1 GiB.
                        retention_bytes: Some(64 << 20),
                    })
                    .await
                    .unwrap();
                // Blocking on the channel is fine: nothing else runs here.
                while let Ok((iters, tasks)) = command_rx.recv() {
                    let started = Instant::now();
                    let mut handles = Vec::new();
                    for t in 0..tasks {
                        let storage = storage.clone();
                        let batch = batch.clone();
                        let n = iters / tasks + u64::from(t < iters % tasks);
                        handles.push(glommio::spawn_local(async move {
                            for _ in 0..n {
                                storage
                                    .append("bench", (t % 8) as u32, &batch)
                                    .await
                                    .unwrap();
                            }
                        }));
                    }
                    for h in handles {
                        h.await;
                    }
                    let elapsed = started.elapsed();
                    storage.maintenance().await.unwrap();
                    done_tx.send(elapsed).unwrap();
                }
                storage.close().await.unwrap();
            });
            let _ = std::fs::remove_dir_all(&dir);
        });
        Shard {
            commands,
            done,
            thread: Some(thread),
        }
    }

    fn run(&self, iters: u64, tasks: u64) -> Duration {
        self.commands.send((iters, tasks)).unwrap();
        self.done.recv().unwrap()
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.commands, closed));
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn glommio_group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_path");
    group.sample_size(10);
    let batch = batch(64);
    group.throughput(Throughput::Bytes(batch.len() as u64));
    for (name, durability, tasks) in [
        ("always", Durability::Always, 64),
        ("always", Durability::Always, 16),
        ("never", Durability::Never, 16),
        ("always", Durability::Always, 1),
    ] {
        let shard = Shard::start(name, durability, batch.clone());
        shard.run(2000, tasks); // warm up: first writes into fresh extents
        group.bench_function(format!("glommio_{name}_64x1KiB_{tasks}_appenders"), |b| {
            b.iter_custom(|iters| shard.run(iters, tasks))
        });
    }
    group.finish();
}

criterion_group!(benches, cpu, glommio_group_commit);
criterion_main!(benches);
