//! Production disk: glommio DMA files (O_DIRECT through io_uring).
//!
//! [`GlommioDisk::new`] runs MACHINE.md's IOPOLL workaround before any log
//! file is opened: glommio probes polled I/O with the first DMA file an
//! executor opens on a device, and a new file (a hole) makes the probe pass
//! on a device without poll queues, after which every read fails with
//! EOPNOTSUPP (os error 95). Opening one file whose first block holds
//! written, synced data makes the probe reach the device and cache "no iopoll".

use super::{Disk, DiskFile, IoBuffer};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

impl IoBuffer for DmaBuffer {
    fn as_bytes(&self) -> &[u8] {
        DmaBuffer::as_bytes(self)
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        DmaBuffer::as_bytes_mut(self)
    }

    fn trim_to(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

/// glommio DMA files. Must be used inside a glommio executor.
#[derive(Clone, Debug)]
pub struct GlommioDisk {
    _private: (),
}

const PROBE_FILE: &str = ".iopoll-probe";

impl GlommioDisk {
    /// Does the IOPOLL workaround for the file system holding `dir` (which
    /// must exist), once per call; cheap enough to run at every open.
    pub async fn new(dir: &Path) -> io::Result<GlommioDisk> {
        if let Some(fs_type) = file_system_type(dir).filter(|t| t == "tmpfs") {
            tracing::warn!(dir = %dir.display(), fs_type, "storage on tmpfs: glommio turns O_DIRECT off there; data is not durable");
        }
        let probe = dir.join(PROBE_FILE);
        // std::fs on purpose: a DMA-created file would be a hole and fool the
        // probe. Start-up only, one small file.
        {
            let mut file = std::fs::File::create(&probe)?;
            file.write_all(&[0xA5u8; 4096])?;
            file.sync_all()?;
        }
        let file = DmaFile::open(&probe).await.map_err(to_io)?;
        file.close().await.map_err(to_io)?;
        std::fs::remove_file(&probe)?;
        Ok(GlommioDisk { _private: () })
    }
}

/// Keeps the OS error (and so its errno) instead of glommio's re-wrapped text,
/// so ENOSPC stays recognisable.
fn to_io(error: glommio::GlommioError<()>) -> io::Error {
    match error {
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        glommio::GlommioError::IoError(source) => source,
        other => io::Error::from(other),
    }
}

/// `path` resolved against the working directory. glommio 0.9 opens with
/// `openat(-1, path)` rather than `AT_FDCWD`, so a relative path (such as the
/// broker's default `./coremq-data`) fails with EBADF (os error 9).
fn absolute(path: &Path) -> io::Result<PathBuf> {
    std::path::absolute(path)
}

/// The type of the file system holding `path`, from /proc/self/mounts
/// (the longest mount point that is a prefix of the path).
fn file_system_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), fs_type.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs_type)| fs_type)
}

pub struct GlommioFile {
    file: DmaFile,
}

impl Disk for GlommioDisk {
    type File = GlommioFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn open(&self, path: &Path) -> io::Result<GlommioFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(absolute(path)?)
            .await
            .map_err(to_io)?;
        Ok(GlommioFile { file })
    }

    async fn create(&self, path: &Path) -> io::Result<GlommioFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(absolute(path)?)
            .await
            .map_err(to_io)?;
        Ok(GlommioFile { file })
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let directory = glommio::io::Directory::open(absolute(dir)?)
            .await
            .map_err(to_io)?;
        let synced = directory.sync().await.map_err(to_io);
        directory.close().await.map_err(to_io)?;
        synced
    }
}

impl DiskFile for GlommioFile {
    type Buffer = DmaBuffer;
    type ReadBuffer = ReadResult;

    fn alloc_buffer(&self, len: usize) -> DmaBuffer {
        self.file.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buffer: Rc<DmaBuffer>, position: u64) -> io::Result<usize> {
        self.file.write_rc_at(buffer, position).await.map_err(to_io)
    }

    async fn read_at(&self, position: u64, len: usize) -> io::Result<ReadResult> {
        self.file
            .read_at_aligned(position, len)
            .await
            .map_err(to_io)
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(to_io)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(to_io)
    }

    async fn pre_allocate(&self, len: u64) -> io::Result<()> {
        self.file.pre_allocate(len, false).await.map_err(to_io)
    }

    async fn rename(&self, to: &Path) -> io::Result<()> {
        self.file.rename(absolute(to)?).await.map_err(to_io)
    }

    async fn remove(&self) -> io::Result<()> {
        self.file.remove().await.map_err(to_io)
    }

    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(to_io)
    }
}
