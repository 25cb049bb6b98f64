//! ShardStorage on glommio DMA files on a real file system (never tmpfs):
//! O_DIRECT writes read back in a fresh executor thread and a fresh process,
//! which exercises MACHINE.md's IOPOLL workaround; recovery; retention.

mod common;

use common::{batch, stored, topic};
use coremq_shard::{Durability, ShardId, ShardStorage, StorageConfig};
use glommio::LocalExecutorBuilder;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A fresh directory under the target dir (ext4 here), checked not to be tmpfs.
fn test_dir(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("coremq-shard");
    std::fs::create_dir_all(&root).unwrap();
    assert!(
        !is_tmpfs(&root),
        "{} is tmpfs: O_DIRECT would be silently off",
        root.display()
    );
    let dir = root.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The file-system type of the mount holding `path`, from /proc/self/mounts.
fn is_tmpfs(path: &Path) -> bool {
    let path = path.canonicalize().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let (_, fs_type) = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), fs_type.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .expect("some mount holds the path");
    fs_type == "tmpfs"
}

fn config(dir: &Path, segment_bytes: u64) -> StorageConfig {
    let mut c = StorageConfig::new(ShardId(0), 1, dir.to_path_buf());
    c.segment_bytes = segment_bytes;
    c.read_cache_bytes = 128 << 10;
    c.max_batch_bytes = 64 << 10;
    c
}

/// Runs `f` in a new glommio executor on its own thread (a fresh IOPOLL probe cache).
fn in_executor<T: Send + 'static, F, Fut>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

type Expected = Vec<(String, u32, u64, Vec<u8>)>;

async fn write_some(storage: &ShardStorage, rounds: u32) -> Expected {
    let mut expected = Vec::new();
    for i in 0..rounds {
        let (name, _) = TOPICS[i as usize % 3];
        let b = batch(
            1 + i % 5,
            200 + (i as usize * 37) % 700,
            1000 + i as i64,
            i as u8,
        );
        let out = storage.append(name, i % 2, &b).await.unwrap();
        expected.push((
            name.to_string(),
            i % 2,
            out.base_offset,
            stored(&b, out.base_offset, out.append_time_ms),
        ));
    }
    expected
}

async fn read_all(storage: &ShardStorage, expected: &Expected) {
    for (name, p, offset, bytes) in expected {
        let got = storage.read(name, *p, *offset, 1).await.unwrap();
        assert_eq!(&got.batches, bytes, "{name}/{p} at {offset}");
    }
}

const TOPICS: [(&str, Durability); 3] = [
    ("always", Durability::Always),
    ("interval", Durability::Interval(Duration::from_millis(20))),
    ("never", Durability::Never),
];

#[test]
fn write_then_read_back_in_a_fresh_executor() {
    let dir = test_dir("fresh-executor");
    let d = dir.clone();
    let expected = in_executor(move || async move {
        let storage = ShardStorage::open(config(&d, 256 << 10)).await.unwrap();
        for (name, durability) in TOPICS {
            storage
                .create_topic(topic(name, 2, durability))
                .await
                .unwrap();
        }
        let expected = write_some(&storage, 300).await;
        read_all(&storage, &expected).await;
        storage.maintenance().await.unwrap();
        storage.close().await.unwrap();
        expected
    });
    let segments = std::fs::read_dir(dir.join("log")).unwrap().count();
    assert!(
        segments > 1,
        "the test should span segments, got {segments}"
    );
    // A fresh executor thread: its IOPOLL probe cache is empty, every read
    // below comes from disk (the cache starts empty).
    let d = dir.clone();
    in_executor(move || async move {
        let storage = ShardStorage::open(config(&d, 256 << 10)).await.unwrap();
        assert_eq!(storage.topics().len(), 3);
        read_all(&storage, &expected).await;
        let more = write_some(&storage, 30).await;
        read_all(&storage, &more).await;
        storage.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Child half of `read_back_in_a_fresh_process`; does nothing unless asked.
#[test]
#[ignore]
fn child_reads_back() {
    let Ok(dir) = std::env::var("COREMQ_SHARD_CHILD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    in_executor(move || async move {
        let storage = ShardStorage::open(config(&dir, 256 << 10)).await.unwrap();
        let hw = storage.high_watermark("always", 0).unwrap();
        assert!(hw > 0);
        let all = storage.read("always", 0, 0, u32::MAX).await.unwrap();
        let count = coremq_wire::batch::split_batches(&all.batches)
            .map(|b| coremq_wire::batch::verify_batch(b.unwrap()).unwrap())
            .map(|h| h.record_count as u64)
            .sum::<u64>();
        assert_eq!(count, hw);
        storage.close().await.unwrap();
        println!("CHILD-OK {hw}");
    });
}

#[test]
fn read_back_in_a_fresh_process() {
    let dir = test_dir("fresh-process");
    let d = dir.clone();
    in_executor(move || async move {
        let storage = ShardStorage::open(config(&d, 256 << 10)).await.unwrap();
        for (name, durability) in TOPICS {
            storage
                .create_topic(topic(name, 2, durability))
                .await
                .unwrap();
        }
        write_some(&storage, 100).await;
        // No close: the child recovers from the log alone.
        drop(storage);
    });
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_reads_back", "--ignored", "--nocapture"])
        .env("COREMQ_SHARD_CHILD_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("CHILD-OK"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retention_by_size_deletes_old_segments() {
    let dir = test_dir("retention");
    let d = dir.clone();
    in_executor(move || async move {
        let storage = open_with_size_retention(&d).await;
        let b = batch(4, 1000, 0, 7);
        for _ in 0..400 {
            storage.append("t", 0, &b).await.unwrap();
        }
        let log = d.join("log");
        let before = std::fs::read_dir(&log).unwrap().count();
        storage.maintenance().await.unwrap();
        let after = std::fs::read_dir(&log).unwrap().count();
        assert!(
            after < before,
            "retention deleted nothing ({before} segments)"
        );
        let start = storage.log_start_offset("t", 0).unwrap();
        assert!(start > 0);
        let hw = storage.high_watermark("t", 0).unwrap();
        assert_eq!(hw, 1600);
        let kept = storage.read("t", 0, start, u32::MAX).await.unwrap();
        // Retention counts log entries: each batch plus its 32-byte header.
        let kept_entry_bytes = kept.batches.len() as u64 + 32 * (hw - start) / 4;
        assert!(
            kept_entry_bytes >= 200 << 10,
            "kept {kept_entry_bytes} bytes"
        );
        assert!(
            storage.read("t", 0, 0, 1).await.is_err(),
            "offset 0 is gone"
        );
        storage.close().await.unwrap();
        let storage = ShardStorage::open(config(&d, 128 << 10)).await.unwrap();
        assert_eq!(storage.log_start_offset("t", 0).unwrap(), start);
        assert_eq!(storage.high_watermark("t", 0).unwrap(), hw);
        storage.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Released segments become new segments on a real file system: the
/// renamed DMA files take new appends, and everything from the log start
/// reads back as appended, before and after a restart.
#[test]
fn released_segments_are_reused_on_ext4() {
    let dir = test_dir("recycle");
    let d = dir.clone();
    in_executor(move || async move {
        let storage = open_with_size_retention(&d).await;
        let mut appended = Vec::new();
        for i in 0..800u32 {
            let b = batch(2, 1000, 0, i as u8);
            let out = storage.append("t", 0, &b).await.unwrap();
            appended.push(stored(&b, out.base_offset, out.append_time_ms));
            if i % 50 == 0 {
                storage.maintenance().await.unwrap();
            }
        }
        let recycled = storage.metrics().segments_recycled.get();
        assert!(recycled >= 3, "only {recycled} segments reused");
        check_reads_back(&storage, &appended).await;
        storage.close().await.unwrap();
        let storage = ShardStorage::open(config(&d, 128 << 10)).await.unwrap();
        check_reads_back(&storage, &appended).await;
        storage.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 128 KiB segments and a topic `t` (one partition, `always`) keeping about
/// 200 KiB: retention releases segments quickly.
async fn open_with_size_retention(dir: &Path) -> ShardStorage {
    let storage = ShardStorage::open(config(dir, 128 << 10)).await.unwrap();
    let mut t = topic("t", 1, Durability::Always);
    t.retention_bytes = Some(200 << 10);
    storage.create_topic(t).await.unwrap();
    storage
}

/// Everything from `t`'s log start to its end (1600 records) reads back as
/// it was appended.
async fn check_reads_back(storage: &ShardStorage, appended: &[Vec<u8>]) {
    let start = storage.log_start_offset("t", 0).unwrap();
    assert!(start > 0);
    assert_eq!(storage.high_watermark("t", 0).unwrap(), 1600);
    let kept = storage.read("t", 0, start, u32::MAX).await.unwrap();
    let first = appended
        .iter()
        .position(|b| {
            coremq_wire::batch::BatchHeader::parse(b)
                .unwrap()
                .base_offset
                == start
        })
        .expect("the log start is a batch boundary");
    assert!(
        kept.batches == appended[first..].concat(),
        "read back differs"
    );
}
