//! The production log disk: segment files and the page file, opened with O_DIRECT, written
//! and read through io_uring.
//!
//! On a shard's executor thread every operation goes on the executor's own ring
//! ([`crate::runtime::disk`]): a group commit is a write linked to an fdatasync, submitted in
//! the same `io_uring_enter` as the round's network operations, and its completion wakes the
//! shard directly. Measured on one core at pipeline 1, the earlier hop to an I/O thread and
//! back cost a quarter of kvsd's CPU in context switches (docs/benchmarks.md).
//!
//! Off an executor (`kvsd --verify`, tests that drive the store with `block_on`) the same
//! operations go to an I/O thread with a ring of its own, many in flight, woken by an eventfd.
//!
//! Why not glommio's DMA files: glommio probes io_uring's polled mode on the device, and on
//! virtio disks the probe passes although the device has no poll queues; writes then go to
//! its poll ring, and while any is in flight the executor spins instead of sleeping. That
//! starved the kernel worker finishing the write on the same core: 3.7 ms per 4 KiB write
//! instead of ~0.2 ms (measured, see docs/benchmarks.md).

use std::alloc::Layout;
use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};
use kvs_core::limits::LOG_BLOCK_SIZE;
use kvs_core::log::{LogDisk, LogFile};

use crate::runtime::disk;

/// Reads larger than this (whole log segments at recovery) bypass the ring.
const READ_THROUGH_RING_MAX: usize = 32 * 1024 * 1024;

/// A heap buffer aligned to LOG_BLOCK_SIZE, as O_DIRECT requires.
pub struct AlignedBuffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively; moving it to the I/O thread and back is
// a move of ownership, never shared access.
unsafe impl Send for AlignedBuffer {}

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

/// A result handed from the I/O thread to the task awaiting it.
struct Completion<T> {
    state: Mutex<(Option<T>, Option<Waker>)>,
}

struct Wait<T>(Arc<Completion<T>>);

impl<T> Future for Wait<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.0.take() {
            Some(value) => Poll::Ready(value),
            None => {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Completion<T> {
    fn complete(&self, value: T) {
        let waker = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0 = Some(value);
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

enum Job {
    /// Write `buffer` at `pos`, then fdatasync when `sync`.
    Write {
        fd: RawFd,
        buffer: AlignedBuffer,
        pos: u64,
        sync: bool,
        done: Arc<Completion<io::Result<()>>>,
    },
    Sync {
        fd: RawFd,
        done: Arc<Completion<io::Result<()>>>,
    },
    /// Read up to `buffer.len()` bytes at `pos`; hands back the bytes read.
    Read {
        fd: RawFd,
        buffer: AlignedBuffer,
        pos: u64,
        done: Arc<Completion<io::Result<Vec<u8>>>>,
    },
    Stop,
}

/// Submission queue entries of a shard's ring, and most operations in flight at once.
const RING_ENTRIES: u32 = 256;
const IN_FLIGHT_MAX: usize = 192;
/// user_data of the eventfd read that wakes the thread when jobs arrive.
const WAKE: u64 = u64::MAX;

struct Shared {
    jobs: mpsc::Sender<Job>,
    wake: OwnedFd,
}

impl Shared {
    fn send(&self, job: Job) -> io::Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| io::Error::other("the shard's I/O thread has stopped"))?;
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd we own.
        let n = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.send(Job::Stop);
    }
}

/// The I/O thread of one shard: log appends and page reads and writes, many in flight.
#[derive(Clone)]
struct IoThread {
    shared: Arc<Shared>,
}

impl IoThread {
    fn start(name: String) -> io::Result<IoThread> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: plain eventfd creation; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let wake_fd = wake.as_raw_fd();
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || io_thread(ring, queue, wake_fd))?;
        Ok(IoThread {
            shared: Arc::new(Shared { jobs, wake }),
        })
    }

    async fn run<T>(
        &self,
        make: impl FnOnce(Arc<Completion<io::Result<T>>>) -> Job,
    ) -> io::Result<T> {
        let done = Arc::new(Completion {
            state: Mutex::new((None, None)),
        });
        self.shared.send(make(Arc::clone(&done)))?;
        Wait(done).await
    }
}

/// An operation in flight: its entries' results as they complete.
struct Flight {
    results: [i32; 2],
    remaining: u8,
    job: Job,
}

fn finish(flight: Flight) {
    let first_error = flight.results.iter().find(|&&r| r < 0).copied();
    match flight.job {
        Job::Write {
            buffer, pos, done, ..
        } => {
            let result = match first_error {
                // The first failure is the cause; a linked fsync reports ECANCELED after it.
                Some(e) => Err(io::Error::from_raw_os_error(-e)),
                None => check_written(flight.results[0] as usize, buffer.as_ref().len(), pos),
            };
            drop(buffer);
            done.complete(result);
        }
        Job::Sync { done, .. } => done.complete(match first_error {
            Some(e) => Err(io::Error::from_raw_os_error(-e)),
            None => Ok(()),
        }),
        Job::Read { buffer, done, .. } => done.complete(match first_error {
            Some(e) => Err(io::Error::from_raw_os_error(-e)),
            None => Ok(buffer.as_ref()[..flight.results[0] as usize].to_vec()),
        }),
        Job::Stop => {}
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

/// The entries of a job. Buffers live in the job, which stays in `flights` until every
/// entry completed, so the kernel never sees a freed buffer.
fn entries_of(job: &Job, id: u64) -> Vec<squeue::Entry> {
    let fsync = |fd: RawFd| {
        opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
    };
    match job {
        Job::Write {
            fd,
            buffer,
            pos,
            sync,
            ..
        } => {
            let bytes = buffer.as_ref();
            let write = opcode::Write::new(types::Fd(*fd), bytes.as_ptr(), bytes.len() as u32)
                .offset(*pos)
                .build()
                .user_data(id << 1);
            if *sync {
                // The sync starts only after the write completed, and is cancelled if it
                // failed.
                vec![
                    write.flags(squeue::Flags::IO_LINK),
                    fsync(*fd).user_data(id << 1 | 1),
                ]
            } else {
                vec![write]
            }
        }
        Job::Sync { fd, .. } => vec![fsync(*fd).user_data(id << 1)],
        Job::Read {
            fd, buffer, pos, ..
        } => {
            let bytes = buffer.as_ref();
            vec![opcode::Read::new(
                types::Fd(*fd),
                bytes.as_ptr().cast_mut(),
                bytes.len() as u32,
            )
            .offset(*pos)
            .build()
            .user_data(id << 1)]
        }
        Job::Stop => Vec::new(),
    }
}

fn io_thread(mut ring: IoUring, queue: mpsc::Receiver<Job>, wake: RawFd) {
    let mut flights: HashMap<u64, Flight> = HashMap::new();
    let mut next_id = 0u64;
    let mut wake_buffer = [0u8; 8];
    let mut wake_armed = false;
    let mut stopping = false;
    loop {
        if !wake_armed && !stopping {
            let read = opcode::Read::new(types::Fd(wake), wake_buffer.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE);
            // SAFETY: wake_buffer lives as long as this thread, which outlives the ring's
            // use of it (the thread exits only with nothing in flight but this read, and the
            // ring is dropped with the thread).
            if unsafe { ring.submission().push(&read) }.is_ok() {
                wake_armed = true;
            }
        }
        while flights.len() < IN_FLIGHT_MAX {
            let job = match queue.try_recv() {
                Ok(Job::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
                Ok(job) => job,
                Err(mpsc::TryRecvError::Empty) => break,
            };
            next_id += 1;
            let entries = entries_of(&job, next_id);
            let room = {
                let sq = ring.submission();
                sq.capacity() - sq.len()
            };
            if room < entries.len() {
                let _ = ring.submit();
            }
            for entry in &entries {
                // SAFETY: the job owning the buffers stays in `flights` until completion.
                if unsafe { ring.submission().push(entry) }.is_err() {
                    let _ = ring.submit();
                    // SAFETY: as above.
                    let _ = unsafe { ring.submission().push(entry) };
                }
            }
            flights.insert(
                next_id,
                Flight {
                    results: [0; 2],
                    remaining: entries.len() as u8,
                    job,
                },
            );
        }
        if stopping && flights.is_empty() {
            return;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // The ring itself failed: fail everything in flight and stop.
                for (_, flight) in flights.drain() {
                    let mut flight = flight;
                    flight.results = [-(e.raw_os_error().unwrap_or(libc::EIO)); 2];
                    finish(flight);
                }
                return;
            }
        }
        let completed: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (user_data, result) in completed {
            if user_data == WAKE {
                wake_armed = false;
                continue;
            }
            let id = user_data >> 1;
            let Some(flight) = flights.get_mut(&id) else {
                continue;
            };
            flight.results[(user_data & 1) as usize] = result;
            flight.remaining -= 1;
            if flight.remaining == 0 {
                if let Some(flight) = flights.remove(&id) {
                    finish(flight);
                }
            }
        }
    }
}

/// A directory of log segments, written with O_DIRECT through the shard's io_uring thread.
#[derive(Clone)]
pub struct DmaDisk {
    dir: PathBuf,
    io: IoThread,
}

impl DmaDisk {
    /// Uses `dir`, creating it if needed, and starts the shard's log I/O thread.
    pub fn new(dir: &Path, shard: u32) -> io::Result<DmaDisk> {
        std::fs::create_dir_all(dir)?;
        Ok(DmaDisk {
            dir: dir.to_path_buf(),
            io: IoThread::start(format!("log-io-{shard}"))?,
        })
    }
}

/// A segment file opened with O_DIRECT.
pub struct DmaLogFile {
    file: File,
    io: IoThread,
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
        Ok(DmaLogFile {
            file,
            io: self.io.clone(),
        })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = File::open(&self.dir)?;
        let fd = dir.as_raw_fd();
        if disk::available() {
            return disk::sync(fd).await;
        }
        self.io.run(|done| Job::Sync { fd, done }).await
    }

    fn path_of(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn synced_writes_completed(&self) -> Option<u64> {
        // Off an executor (verify, tests) the I/O thread does the syncs: not counted.
        disk::available().then(disk::synced_writes_completed)
    }
}

impl DmaLogFile {
    async fn write(&self, buffer: AlignedBuffer, pos: u64, sync: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        if disk::available() {
            let len = buffer.as_ref().len();
            let written = disk::write(fd, buffer, pos, sync).await?;
            return check_written(written, len, pos);
        }
        self.io
            .run(|done| Job::Write {
                fd,
                buffer,
                pos,
                sync,
                done,
            })
            .await
    }
}

impl LogFile for DmaLogFile {
    type Buffer = AlignedBuffer;

    fn alloc(&self, len: usize) -> AlignedBuffer {
        AlignedBuffer::new(len)
    }

    async fn write_at(&self, buffer: AlignedBuffer, pos: u64) -> io::Result<()> {
        self.write(buffer, pos, true).await
    }

    async fn write_at_synced(&self, buffer: AlignedBuffer, pos: u64) -> io::Result<()> {
        self.write(buffer, pos, true).await
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let aligned = len.div_ceil(LOG_BLOCK_SIZE) * LOG_BLOCK_SIZE;
        if aligned > READ_THROUGH_RING_MAX {
            // Recovery reads whole segments once, before the shard serves: a plain aligned
            // pread will do.
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
            return Ok(buffer.as_ref()[..filled.min(len)].to_vec());
        }
        // Page and extent reads go through the ring, many in flight.
        let fd = self.file.as_raw_fd();
        if disk::available() {
            let (result, buffer) = disk::read(fd, AlignedBuffer::new(aligned), pos).await;
            let n = result?;
            return Ok(buffer.as_ref()[..n.min(len)].to_vec());
        }
        let mut bytes = self
            .io
            .run(|done| Job::Read {
                fd,
                buffer: AlignedBuffer::new(aligned),
                pos,
                done,
            })
            .await?;
        bytes.truncate(len);
        Ok(bytes)
    }

    async fn sync(&self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        if disk::available() {
            return disk::sync(fd).await;
        }
        self.io.run(|done| Job::Sync { fd, done }).await
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
        let disk = DmaDisk::new(dir.path(), 0).unwrap();
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
