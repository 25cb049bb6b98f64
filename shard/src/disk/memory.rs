//! A seeded, fault-injecting in-memory disk for tests (TigerBeetle's
//! `testing/storage.zig` idea).
//!
//! Every file is an inode with a durable image, a current image and the list
//! of writes since its last sync. Directory changes are pending until
//! `sync_dir`. Runtime faults (EIO on write / sync / read, short writes, bit
//! flips on read) and operations that yield to other tasks are drawn from one
//! seeded generator, so a failing run is replayed from its seed. A failed
//! sync drops the file's writes since its last sync (Linux may drop the
//! dirty data and report the error once: "fsyncgate").
//!
//! [`MemDisk::crash`] models power loss: a random prefix of the pending
//! directory changes survives, and each write since the last sync is
//! applied, dropped, torn (a random subset of its 512-byte sectors lands;
//! in a block that already held bytes, the whole block or some of its
//! sectors may instead be garbage, as a device without atomic 4 KiB writes
//! leaves an interrupted rewrite) or applied with one flipped bit where it
//! changed the durable content.

use super::{Disk, DiskFile, IoBuffer};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

const SECTOR_BYTES: usize = 512;
const BLOCK_BYTES: usize = crate::codec::BLOCK_BYTES as usize;
use crate::codec::is_aligned;

/// splitmix64: tiny, seedable, good enough for fault schedules.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Probabilities of runtime faults, per operation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub write_error: f64,
    pub short_write: f64,
    pub sync_error: f64,
    pub read_error: f64,
    pub read_bit_flip: f64,
    /// Chance that an operation first yields to other ready tasks, so
    /// concurrent appends interleave with flushes.
    pub yield_first: f64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MemStats {
    pub writes: u64,
    pub write_bytes: u64,
    pub syncs: u64,
    pub reads: u64,
}

#[derive(Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Writes since the last successful sync, in order.
    pending: Vec<(usize, Vec<u8>)>,
}

enum DirOp {
    Link { path: PathBuf, inode: u64 },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl DirOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => path.parent(),
            DirOp::Rename { to, .. } => to.parent(),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link { path, inode } => {
                names.insert(path.clone(), *inode);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to } => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
        }
    }
}

struct MemState {
    rng: Rng,
    faults: Faults,
    disk_full: bool,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending_dir_ops: Vec<DirOp>,
    stats: MemStats,
}

/// The in-memory disk; clones share the same disk.
#[derive(Clone)]
pub struct MemDisk {
    state: Rc<RefCell<MemState>>,
}

fn error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl MemDisk {
    pub fn new(seed: u64) -> MemDisk {
        MemDisk {
            state: Rc::new(RefCell::new(MemState {
                rng: Rng::new(seed),
                faults: Faults::default(),
                disk_full: false,
                inodes: HashMap::new(),
                next_inode: 1,
                dirs: BTreeSet::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending_dir_ops: Vec::new(),
                stats: MemStats::default(),
            })),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.borrow_mut().faults = faults;
    }

    /// While set, creating files and growing them fail with ENOSPC.
    pub fn set_disk_full(&self, full: bool) {
        self.state.borrow_mut().disk_full = full;
    }

    pub fn stats(&self) -> MemStats {
        self.state.borrow().stats
    }

    /// Current names under `dir`.
    pub fn files_in(&self, dir: &Path) -> Vec<PathBuf> {
        let state = self.state.borrow();
        state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// The current bytes of a file, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let inode = state.names.get(path)?;
        Some(state.inodes[inode].current.clone())
    }

    /// Flips one bit of a file's durable and current content (media corruption).
    pub fn corrupt(&self, path: &Path, at: usize) {
        let mut state = self.state.borrow_mut();
        let inode = *state
            .names
            .get(path)
            .expect("corrupting a file that exists");
        let inode = state.inodes.get_mut(&inode).expect("live inode");
        inode.current[at] ^= 0x10;
        if at < inode.durable.len() {
            inode.durable[at] ^= 0x10;
        }
    }

    /// Power loss: see the module docs. Open files must have been dropped.
    pub fn crash(&self) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let keep = state.rng.below(state.pending_dir_ops.len() as u64 + 1) as usize;
        let ops = std::mem::take(&mut state.pending_dir_ops);
        for op in ops.iter().take(keep) {
            op.apply(&mut state.durable_names);
        }
        state.names = state.durable_names.clone();
        let live: BTreeSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|id, _| live.contains(id));
        let mut ids: Vec<u64> = state.inodes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let inode = state.inodes.get_mut(&id).expect("listed inode");
            let mut image = std::mem::take(&mut inode.durable);
            for (at, bytes) in std::mem::take(&mut inode.pending) {
                let roll = state.rng.below(100);
                if roll < 45 {
                    apply(&mut image, at, &bytes);
                } else if roll < 70 {
                    // Dropped.
                } else if roll < 90 {
                    tear(&mut state.rng, &mut image, at, &bytes);
                } else {
                    let before = image.clone();
                    apply(&mut image, at, &bytes);
                    let changed: Vec<usize> = (0..bytes.len())
                        .filter(|i| before.get(at + i).copied().unwrap_or(0) != bytes[*i])
                        .collect();
                    if !changed.is_empty() {
                        let i = changed[state.rng.below(changed.len() as u64) as usize];
                        image[at + i] ^= 1 << state.rng.below(8);
                    }
                }
            }
            inode.current = image.clone();
            inode.durable = image;
        }
    }

    fn roll(&self, pick: impl FnOnce(&Faults) -> f64) -> bool {
        let mut state = self.state.borrow_mut();
        let p = pick(&state.faults);
        state.rng.chance(p)
    }

    async fn maybe_yield(&self) {
        if self.roll(|f| f.yield_first) {
            YieldNow { yielded: false }.await;
        }
    }
}

/// A write interrupted by power loss: each 512-byte sector lands or not,
/// and a block that already held bytes (written before) may be garbled,
/// whole or sector by sector: the device does not write 4 KiB atomically,
/// so an interrupted rewrite of a block damages what the block held.
fn tear(rng: &mut Rng, image: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    for (j, block) in bytes.chunks(BLOCK_BYTES).enumerate() {
        let block_at = at + j * BLOCK_BYTES;
        let held = image
            .get(block_at..(block_at + block.len()).min(image.len()))
            .is_some_and(|old| old.iter().any(|b| *b != 0));
        if held && rng.below(4) == 0 {
            let garbage: Vec<u8> = (0..block.len()).map(|_| rng.next_u64() as u8).collect();
            apply(image, block_at, &garbage);
            continue;
        }
        for (i, sector) in block.chunks(SECTOR_BYTES).enumerate() {
            let sector_at = block_at + i * SECTOR_BYTES;
            if held && rng.below(4) == 0 {
                let garbage: Vec<u8> = (0..sector.len()).map(|_| rng.next_u64() as u8).collect();
                apply(image, sector_at, &garbage);
            } else if rng.below(2) == 0 {
                apply(image, sector_at, sector);
            }
        }
    }
}

fn apply(image: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if image.len() < at + bytes.len() {
        image.resize(at + bytes.len(), 0);
    }
    image[at..at + bytes.len()].copy_from_slice(bytes);
}

struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A heap buffer; new buffers hold garbage, like uninitialised DMA memory,
/// so missing zero padding shows up.
pub struct MemBuffer {
    bytes: Vec<u8>,
}

impl IoBuffer for MemBuffer {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    fn trim_to(&mut self, len: usize) {
        assert!(len <= self.bytes.len(), "trim_to grows the buffer");
        self.bytes.truncate(len);
    }
}

pub struct MemFile {
    disk: MemDisk,
    inode: u64,
    path: RefCell<PathBuf>,
}

impl Disk for MemDisk {
    type File = MemFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.borrow();
        if !state.dirs.contains(dir) {
            return Err(error(libc::ENOENT));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    async fn open(&self, path: &Path) -> io::Result<MemFile> {
        self.maybe_yield().await;
        let state = self.state.borrow();
        let inode = *state.names.get(path).ok_or_else(|| error(libc::ENOENT))?;
        Ok(MemFile {
            disk: self.clone(),
            inode,
            path: RefCell::new(path.to_path_buf()),
        })
    }

    async fn create(&self, path: &Path) -> io::Result<MemFile> {
        self.maybe_yield().await;
        let mut state = self.state.borrow_mut();
        if state.disk_full {
            return Err(error(libc::ENOSPC));
        }
        let parent = path.parent().ok_or_else(|| error(libc::EINVAL))?;
        if !state.dirs.contains(parent) {
            return Err(error(libc::ENOENT));
        }
        let inode = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(inode, Inode::default());
        state.names.insert(path.to_path_buf(), inode);
        state.pending_dir_ops.push(DirOp::Link {
            path: path.to_path_buf(),
            inode,
        });
        Ok(MemFile {
            disk: self.clone(),
            inode,
            path: RefCell::new(path.to_path_buf()),
        })
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.maybe_yield().await;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let ops = std::mem::take(&mut state.pending_dir_ops);
        for op in ops {
            if op.dir() == Some(dir) {
                op.apply(&mut state.durable_names);
            } else {
                state.pending_dir_ops.push(op);
            }
        }
        Ok(())
    }
}

impl MemFile {
    fn with_inode<T>(&self, f: impl FnOnce(&mut Inode) -> T) -> T {
        let mut state = self.disk.state.borrow_mut();
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .expect("a file handle outlived a crash");
        f(inode)
    }
}

impl MemFile {
    /// The device's side of an fdatasync: pending writes become durable, or,
    /// on an injected failure, are dropped.
    fn sync_now(&self) -> io::Result<()> {
        let fail = {
            let mut state = self.disk.state.borrow_mut();
            state.stats.syncs += 1;
            let p = state.faults.sync_error;
            state.rng.chance(p)
        };
        if fail {
            // As Linux may after a failed writeback: the writes since the
            // last sync are gone (reads see the durable image again), and
            // the next sync succeeds without them.
            self.with_inode(|inode| {
                inode.pending.clear();
                let len = inode.current.len().max(inode.durable.len());
                inode.current = inode.durable.clone();
                inode.current.resize(len, 0);
            });
            return Err(error(libc::EIO));
        }
        self.with_inode(|inode| {
            for (at, bytes) in std::mem::take(&mut inode.pending) {
                apply(&mut inode.durable, at, &bytes);
            }
            if inode.durable.len() < inode.current.len() {
                inode.durable.resize(inode.current.len(), 0);
            }
        });
        Ok(())
    }
}

impl DiskFile for MemFile {
    type Buffer = MemBuffer;
    type ReadBuffer = Vec<u8>;

    fn alloc_buffer(&self, len: usize) -> MemBuffer {
        MemBuffer {
            bytes: vec![0xEE; len],
        }
    }

    async fn write_at(&self, buffer: Rc<MemBuffer>, position: u64) -> io::Result<usize> {
        let bytes = buffer.as_bytes();
        assert!(
            is_aligned(position) && is_aligned(bytes.len() as u64),
            "unaligned O_DIRECT write: {} bytes at {position}",
            bytes.len()
        );
        self.disk.maybe_yield().await;
        let (fail, short, full) = {
            let mut state = self.disk.state.borrow_mut();
            let faults = state.faults;
            let full = state.disk_full;
            let fail = state.rng.chance(faults.write_error);
            let short = state.rng.chance(faults.short_write);
            let sectors = (bytes.len() / SECTOR_BYTES) as u64;
            let landed = state.rng.below(sectors.max(1)) as usize * SECTOR_BYTES;
            state.stats.writes += 1;
            state.stats.write_bytes += bytes.len() as u64;
            (fail.then_some(landed), short.then_some(landed), full)
        };
        let at = position as usize;
        let grows = self.with_inode(|inode| at + bytes.len() > inode.current.len());
        if full && grows {
            return Err(error(libc::ENOSPC));
        }
        let landed = fail.or(short).unwrap_or(bytes.len());
        if landed > 0 {
            self.with_inode(|inode| {
                apply(&mut inode.current, at, &bytes[..landed]);
                inode.pending.push((at, bytes[..landed].to_vec()));
            });
        }
        if fail.is_some() {
            return Err(error(libc::EIO));
        }
        Ok(landed)
    }

    async fn read_at(&self, position: u64, len: usize) -> io::Result<Vec<u8>> {
        assert!(
            is_aligned(position) && is_aligned(len as u64),
            "unaligned O_DIRECT read: {len} bytes at {position}"
        );
        self.disk.maybe_yield().await;
        let (fail, flip) = {
            let mut state = self.disk.state.borrow_mut();
            let faults = state.faults;
            state.stats.reads += 1;
            let fail = state.rng.chance(faults.read_error);
            let flip = state
                .rng
                .chance(faults.read_bit_flip)
                .then(|| state.rng.next_u64());
            (fail, flip)
        };
        if fail {
            return Err(error(libc::EIO));
        }
        let mut out = self.with_inode(|inode| {
            let start = (position as usize).min(inode.current.len());
            let end = (start + len).min(inode.current.len());
            inode.current[start..end].to_vec()
        });
        if let Some(random) = flip {
            if !out.is_empty() {
                let at = (random % out.len() as u64) as usize;
                out[at] ^= 1 << (random % 8);
            }
        }
        Ok(out)
    }

    async fn sync(&self) -> io::Result<()> {
        self.disk.maybe_yield().await;
        let result = self.sync_now();
        // The device has acted; the caller may still be dropped before it
        // hears how it went.
        self.disk.maybe_yield().await;
        result
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.with_inode(|inode| inode.current.len() as u64))
    }

    async fn pre_allocate(&self, len: u64) -> io::Result<()> {
        self.disk.maybe_yield().await;
        let full = self.disk.state.borrow().disk_full;
        self.with_inode(|inode| {
            let len = len as usize;
            if len > inode.current.len() {
                if full {
                    return Err(error(libc::ENOSPC));
                }
                // Simplification: the new length is durable at once.
                inode.current.resize(len, 0);
                if inode.durable.len() < len {
                    inode.durable.resize(len, 0);
                }
            }
            Ok(())
        })
    }

    async fn rename(&self, to: &Path) -> io::Result<()> {
        self.disk.maybe_yield().await;
        let from = self.path.borrow().clone();
        let mut state = self.disk.state.borrow_mut();
        let inode = state
            .names
            .remove(&from)
            .ok_or_else(|| error(libc::ENOENT))?;
        state.names.insert(to.to_path_buf(), inode);
        state.pending_dir_ops.push(DirOp::Rename {
            from,
            to: to.to_path_buf(),
        });
        *self.path.borrow_mut() = to.to_path_buf();
        Ok(())
    }

    async fn remove(&self) -> io::Result<()> {
        self.disk.maybe_yield().await;
        let path = self.path.borrow().clone();
        let mut state = self.disk.state.borrow_mut();
        if state.names.get(&path) != Some(&self.inode) {
            return Err(error(libc::ENOENT));
        }
        state.names.remove(&path);
        state.pending_dir_ops.push(DirOp::Unlink { path });
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}
