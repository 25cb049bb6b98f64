//! The I/O boundary of the storage engine.
//!
//! The engine is generic over [`Disk`], so the same code runs on glommio DMA
//! files in production ([`glommio::GlommioDisk`]) and on a seeded,
//! fault-injecting in-memory disk in tests ([`memory::MemDisk`]). Futures are
//! `!Send`: everything runs on the shard's single thread.
//!
//! Contract for implementations: writes and reads are block aligned
//! ([`BLOCK_BYTES`](crate::codec::BLOCK_BYTES) in position and length), bypass the
//! page cache, and a write is durable only after [`DiskFile::sync`] succeeds.
//! Directory changes (create, rename, remove) are durable only after
//! [`Disk::sync_dir`].

pub mod glommio;
pub mod memory;

use std::io;
use std::ops::Deref;
use std::path::Path;
use std::rc::Rc;

/// An aligned buffer the disk can write from.
pub trait IoBuffer {
    fn as_bytes(&self) -> &[u8];
    fn as_bytes_mut(&mut self) -> &mut [u8];
    /// Shrinks the addressable length (never grows it).
    fn trim_to(&mut self, len: usize);
}

#[allow(async_fn_in_trait)]
pub trait Disk {
    type File: DiskFile;

    /// Creates `dir` and its parents. Start-up only.
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`. Start-up only.
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates (or truncates) a file for reading and writing.
    async fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Makes creations, renames and removals in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

#[allow(async_fn_in_trait)]
pub trait DiskFile {
    type Buffer: IoBuffer;
    type ReadBuffer: Deref<Target = [u8]>;

    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
    /// Writes the whole buffer at `position`; returns the bytes written
    /// (fewer than asked is a short write).
    async fn write_at(&self, buffer: Rc<Self::Buffer>, position: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `position` (shorter at the end of the file).
    async fn read_at(&self, position: u64, len: usize) -> io::Result<Self::ReadBuffer>;
    /// fdatasync.
    async fn sync(&self) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    /// Reserves blocks so that the file is `len` bytes long.
    async fn pre_allocate(&self, len: u64) -> io::Result<()>;
    async fn rename(&self, to: &Path) -> io::Result<()>;
    async fn remove(&self) -> io::Result<()>;
    async fn close(self) -> io::Result<()>;
}

/// Closes a shared file if this is the last reference; otherwise the last
/// holder's drop releases it.
pub(crate) async fn close_shared<F: DiskFile>(file: Rc<F>) -> io::Result<()> {
    match Rc::try_unwrap(file) {
        Ok(file) => file.close().await,
        Err(_) => Ok(()),
    }
}
