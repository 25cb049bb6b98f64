//! Recently written chunks, kept for readers near the head of the log.
//!
//! A chunk enters after its write completed (so everything here is on disk
//! too) and leaves oldest-first once the cache exceeds its byte budget
//! (`StorageConfig::read_cache_bytes`). The cache holds the very buffers the
//! writer wrote from: no copy.

use crate::disk::IoBuffer;
use std::collections::VecDeque;
use std::rc::Rc;

struct Cached<B> {
    start: u64,
    len: usize,
    cost: usize,
    data: Rc<B>,
}

pub struct ReadCache<B> {
    chunks: VecDeque<Cached<B>>,
    bytes: usize,
    budget: usize,
}

impl<B: IoBuffer> ReadCache<B> {
    pub fn new(budget: usize) -> ReadCache<B> {
        ReadCache {
            chunks: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// Adds a written chunk: `len` valid bytes at global position `start`.
    pub fn insert(&mut self, start: u64, len: usize, cost: usize, data: Rc<B>) {
        if let Some(last) = self.chunks.back() {
            assert!(last.start <= start, "chunks enter the cache in log order");
        }
        self.chunks.push_back(Cached {
            start,
            len,
            cost,
            data,
        });
        self.bytes += cost;
        while self.bytes > self.budget {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.bytes -= old.cost;
        }
    }

    /// The bytes `[position, position + len)` if one cached chunk holds them.
    pub fn get(&self, position: u64, len: usize) -> Option<&[u8]> {
        let after = self.chunks.partition_point(|c| c.start <= position);
        let chunk = self.chunks.get(after.checked_sub(1)?)?;
        let from = (position - chunk.start) as usize;
        if from + len > chunk.len {
            return None;
        }
        Some(&chunk.data.as_bytes()[from..from + len])
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets chunks that start before `cut` (their segments are gone).
    pub fn drop_before(&mut self, cut: u64) {
        while self.chunks.front().is_some_and(|c| c.start < cut) {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.cost;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::MemBuffer;
    use crate::disk::DiskFile;

    fn buffer(fill: u8, len: usize) -> Rc<MemBuffer> {
        let file = dummy_file();
        let mut b = file.alloc_buffer(len);
        b.as_bytes_mut().fill(fill);
        Rc::new(b)
    }

    fn dummy_file() -> crate::disk::memory::MemFile {
        use crate::disk::Disk;
        let disk = crate::disk::memory::MemDisk::new(1);
        futures::executor::block_on(async {
            disk.create_dir_all(std::path::Path::new("/d"))
                .await
                .unwrap();
            disk.create(std::path::Path::new("/d/f")).await.unwrap()
        })
    }

    #[test]
    fn lookup_and_eviction() {
        let mut cache = ReadCache::new(8192);
        cache.insert(0, 4000, 4096, buffer(1, 4096));
        cache.insert(4096, 100, 4096, buffer(2, 4096));
        assert_eq!(cache.get(10, 20), Some(&[1u8; 20][..]));
        assert_eq!(cache.get(3990, 20), None);
        assert_eq!(cache.get(4100, 10), Some(&[2u8; 10][..]));
        cache.insert(8192, 10, 4096, buffer(3, 4096));
        assert_eq!(cache.get(10, 20), None, "oldest chunk evicted");
        assert_eq!(cache.bytes(), 8192);
    }
}
