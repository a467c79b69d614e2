//! The production log disk: segment files and the page file, opened with O_DIRECT, written
//! and read through io_uring.
//!
//! On a shard's executor thread every operation goes on the executor's own ring
//! ([`crate::runtime::disk`]): a group commit is one write carrying `RWF_DSYNC` (ADR 0028),
//! submitted in the same `io_uring_enter` as the round's network operations, and its
//! completion wakes the shard directly. Measured on one core at pipeline 1, the earlier hop to an I/O thread and
//! back cost a quarter of kvsd's CPU in context switches (docs/benchmarks.md).
//!
//! Off an executor (`kvsd --verify`, tests that drive the store with `block_on`) the same
//! operations are plain blocking system calls (pwrite, pread, fdatasync) on the calling
//! thread: nothing there waits for anything else, so a second ring (an I/O thread with its
//! own io_uring, as this file had) bought nothing but a second copy of the ring machinery.
//!
//! Why not glommio's DMA files: glommio probes io_uring's polled mode on the device, and on
//! virtio disks the probe passes although the device has no poll queues; writes then go to
//! its poll ring, and while any is in flight the executor spins instead of sleeping. That
//! starved the kernel worker finishing the write on the same core: 3.7 ms per 4 KiB write
//! instead of ~0.2 ms (measured, see docs/benchmarks.md).

use std::alloc::Layout;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kvs_core::limits::LOG_BLOCK_SIZE;
use kvs_core::log::{LogDisk, LogFile};

use crate::runtime::disk;

/// Reads larger than this (whole log segments at recovery) bypass the ring.
const READ_THROUGH_RING_MAX: usize = 32 * 1024 * 1024;

/// The size of the buffers page reads borrow (`LogFile::read_with`): one page.
const READ_BUFFER_SIZE: usize = 4096;

/// Read buffers a thread keeps for reuse: a cold random read allocated, zeroed and freed
/// one per page read, and copied the page out of it (~5% of kvsd's CPU per read).
const READ_BUFFERS_KEPT: usize = 256;

thread_local! {
    static READ_BUFFERS: std::cell::RefCell<Vec<AlignedBuffer>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A heap buffer aligned to LOG_BLOCK_SIZE, as O_DIRECT requires.
pub struct AlignedBuffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl AlignedBuffer {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(LOG_BLOCK_SIZE), LOG_BLOCK_SIZE).expect("a valid layout")
    }

    pub fn new(len: usize) -> AlignedBuffer {
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        let ptr = std::ptr::NonNull::new(raw)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(len)));
        AlignedBuffer { ptr, len }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl AsRef<[u8]> for AlignedBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr points to len initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for AlignedBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// A direct write to a regular file stops short only when the filesystem has no room for the
/// rest (writing the remainder would fail with ENOSPC).
fn check_written(written: usize, len: usize, pos: u64) -> io::Result<()> {
    if written == len {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::StorageFull,
        format!("short direct write: {written} of {len} bytes at {pos} (no space left)"),
    ))
}

/// A directory of log segments and a page file, written with O_DIRECT on the calling
/// executor's ring (see the module documentation).
#[derive(Clone)]
pub struct DmaDisk {
    dir: PathBuf,
}

impl DmaDisk {
    /// Uses `dir`, creating it if needed.
    pub fn new(dir: &Path) -> io::Result<DmaDisk> {
        std::fs::create_dir_all(dir)?;
        Ok(DmaDisk {
            dir: dir.to_path_buf(),
        })
    }
}

/// A segment file (or the page file) opened with O_DIRECT.
pub struct DmaLogFile {
    file: File,
}

impl LogDisk for DmaDisk {
    type File = DmaLogFile;

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<DmaLogFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(libc::O_DIRECT)
            .open(self.dir.join(name))?;
        Ok(DmaLogFile { file })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = File::open(&self.dir)?;
        if disk::available() {
            return disk::sync(dir.as_raw_fd()).await;
        }
        dir.sync_all()
    }

    fn path_of(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn synced_writes_completed(&self) -> Option<u64> {
        // Off an executor (verify, tests) the syncs are plain system calls: not counted.
        disk::available().then(disk::synced_writes_completed)
    }
}

impl DmaLogFile {
    async fn write(&self, buffer: AlignedBuffer, pos: u64, sync: disk::Sync) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        if disk::available() {
            let len = buffer.as_ref().len();
            let written = disk::write(fd, buffer, pos, sync).await?;
            return check_written(written, len, pos);
        }
        let written = self.file.write_at(buffer.as_ref(), pos)?;
        check_written(written, buffer.as_ref().len(), pos)?;
        if sync != disk::Sync::No {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

impl LogFile for DmaLogFile {
    type Buffer = AlignedBuffer;

    fn alloc(&self, len: usize) -> AlignedBuffer {
        AlignedBuffer::new(len)
    }

    async fn write_at(&self, buffer: AlignedBuffer, pos: u64) -> io::Result<()> {
        self.write(buffer, pos, disk::Sync::Yes).await
    }

    async fn write_at_synced(&self, buffer: AlignedBuffer, pos: u64) -> io::Result<()> {
        self.write(buffer, pos, disk::Sync::CommitGroup).await
    }

    async fn read_with<R>(
        &self,
        pos: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        if len > READ_BUFFER_SIZE || !disk::available() {
            let bytes = self.read_at(pos, len).await?;
            return Ok(f(&bytes));
        }
        // A page read: into a buffer kept for reuse, lent to `f` where the disk put it.
        let buffer = READ_BUFFERS
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_else(|| AlignedBuffer::new(READ_BUFFER_SIZE));
        let (result, buffer) = disk::read(self.file.as_raw_fd(), buffer, pos).await;
        let out = result.map(|n| f(&buffer.as_ref()[..n.min(len)]));
        READ_BUFFERS.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < READ_BUFFERS_KEPT {
                pool.push(buffer);
            }
        });
        out
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let aligned = len.div_ceil(LOG_BLOCK_SIZE) * LOG_BLOCK_SIZE;
        if aligned <= READ_THROUGH_RING_MAX && disk::available() {
            // Page and extent reads go through the ring, many in flight.
            let fd = self.file.as_raw_fd();
            let (result, buffer) = disk::read(fd, AlignedBuffer::new(aligned), pos).await;
            let n = result?;
            return Ok(buffer.as_ref()[..n.min(len)].to_vec());
        }
        // Recovery reads whole segments once, before the shard serves, and off an executor
        // nothing else waits: a plain aligned pread will do.
        let mut buffer = AlignedBuffer::new(aligned);
        let mut filled = 0;
        while filled < aligned {
            let n = self
                .file
                .read_at(&mut buffer.as_mut()[filled..], pos + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(buffer.as_ref()[..filled.min(len)].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        if disk::available() {
            return disk::sync(self.file.as_raw_fd()).await;
        }
        self.file.sync_data()
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn writes_and_reads_through_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DmaDisk::new(dir.path()).unwrap();
        let file = block_on(disk.open("f", true)).unwrap();
        for (len, pos) in [(1 << 20, 0u64), (4096, 1 << 20), (8192, 4096)] {
            let mut buffer = file.alloc(len);
            buffer.as_mut().fill(7);
            block_on(file.write_at(buffer, pos))
                .unwrap_or_else(|e| panic!("write {len} at {pos}: {e}"));
        }
        let bytes = block_on(file.read_at(4096, 8192)).unwrap();
        assert_eq!(bytes, vec![7u8; 8192]);
    }
}
