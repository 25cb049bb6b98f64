//! Append throughput of one shard on glommio DMA files.
//!
//! `cargo run --release -p coremq-shard --example append_throughput -- [always|interval|never] [appenders] [appends] [dir] [records]`
//!
//! Each appender loops over batches of `records` (default 64) records of
//! 1 KiB (one outstanding append each), so group commit batches the
//! concurrent ones. Prints the bytes the flushes wrote (padding included)
//! per byte appended.
//! The executor gets `StorageConfig::io_memory_bytes()` of io_memory.

use coremq_shard::{Durability, ShardId, ShardStorage, StorageConfig, TopicConfig};
use coremq_wire::BatchBuilder;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let durability = match args.get(1).map(String::as_str) {
        Some("never") => Durability::Never,
        Some("interval") => Durability::Interval(Duration::from_millis(10)),
        _ => Durability::Always,
    };
    let appenders: u64 = args.get(2).map_or(64, |s| s.parse().expect("appenders"));
    let appends: u64 = args.get(3).map_or(8000, |s| s.parse().expect("appends"));
    let dir = PathBuf::from(
        args.get(4)
            .map_or("coremq-append-throughput", String::as_str),
    );
    let records: i64 = args.get(5).map_or(64, |s| s.parse().expect("records"));
    let _ = std::fs::remove_dir_all(&dir);
    let config = StorageConfig::new(ShardId(0), 1, dir.clone());
    glommio::LocalExecutorBuilder::default()
        .io_memory(config.io_memory_bytes())
        .spawn(move || async move {
            let mut builder = BatchBuilder::with_capacity(records as usize * 1100);
            for i in 0..records {
                builder.push(i, Some(b"key"), &[7u8; 1024], &[]).unwrap();
            }
            let batch = Rc::new(builder.finish());
            let storage = Rc::new(ShardStorage::open(config).await.unwrap());
            let topic = TopicConfig {
                name: "throughput".into(),
                partitions: 8,
                durability,
                retention_ms: None,
                retention_bytes: None,
            };
            storage.create_topic(topic).await.unwrap();
            let started = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..appenders {
                let storage = storage.clone();
                let batch = batch.clone();
                tasks.push(glommio::spawn_local(async move {
                    for _ in 0..appends / appenders {
                        storage.append("throughput", (t % 8) as u32, &batch).await.unwrap();
                    }
                }));
            }
            for task in tasks {
                task.await;
            }
            let elapsed = started.elapsed();
            let m = storage.metrics();
            let bytes = (appends / appenders * appenders) as f64 * batch.len() as f64;
            let (p50, p99) = {
                let fsync = m.fsync_us.borrow();
                (fsync.value_at_quantile(0.5), fsync.value_at_quantile(0.99))
            };
            println!(
                "{durability} x{appenders}: {:.0} MB/s ({} appends of {} B in {elapsed:?}), {} flushes, fsync p50 {} us p99 {} us, {:.3} B written per B appended",
                bytes / elapsed.as_secs_f64() / 1e6,
                appends / appenders * appenders,
                batch.len(),
                m.flushes.get(),
                p50,
                p99,
                m.flush_bytes.get() as f64 / m.appended_bytes.get() as f64,
            );
            storage.close().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
