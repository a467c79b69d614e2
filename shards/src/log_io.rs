//! The production log disk: segment files opened with O_DIRECT, written through io_uring.
//!
//! Each shard has one log I/O thread with its own small io_uring. The shard's executor hands
//! it a job and awaits its completion; a group commit is a single submission of a write
//! linked to an fdatasync, so one kernel entry makes a group durable. The thread sleeps in
//! `io_uring_enter` while the disk works, so it costs no CPU while waiting.
//!
//! Why not glommio's DMA files: glommio probes io_uring's polled mode on the device, and on
//! virtio disks the probe passes although the device has no poll queues; writes then go to
//! its poll ring, and while any is in flight the executor spins instead of sleeping. That
//! starved the kernel worker finishing the write on the same core: 3.7 ms per 4 KiB write
//! instead of ~0.2 ms (measured, see docs/benchmarks.md). A thread with a plain ring
//! avoids the problem and keeps the log independent of the executor's runtime.

use std::alloc::Layout;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};
use kvs_core::limits::LOG_BLOCK_SIZE;
use kvs_core::log::{LogDisk, LogFile};

/// Submission queue entries of a log thread's ring: one write and one fsync in flight.
const RING_ENTRIES: u32 = 8;

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
}

/// The log I/O thread of one shard.
#[derive(Clone)]
struct IoThread {
    jobs: mpsc::Sender<Job>,
}

impl IoThread {
    fn start(name: String) -> io::Result<IoThread> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || io_thread(ring, queue))?;
        Ok(IoThread { jobs })
    }

    async fn run(
        &self,
        make: impl FnOnce(Arc<Completion<io::Result<()>>>) -> Job,
    ) -> io::Result<()> {
        let done = Arc::new(Completion {
            state: Mutex::new((None, None)),
        });
        self.jobs
            .send(make(Arc::clone(&done)))
            .map_err(|_| io::Error::other("the log I/O thread has stopped"))?;
        Wait(done).await
    }
}

fn io_thread(mut ring: IoUring, queue: mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        match job {
            Job::Write {
                fd,
                buffer,
                pos,
                sync,
                done,
            } => {
                let result = submit_write(&mut ring, fd, &buffer, pos, sync);
                drop(buffer);
                done.complete(result);
            }
            Job::Sync { fd, done } => {
                let fsync = opcode::Fsync::new(types::Fd(fd))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build();
                done.complete(submit(&mut ring, &[fsync]).map(|_| ()));
            }
        }
    }
}

/// One write, linked to an fdatasync when `sync`: the sync starts only after the write
/// completed, and is cancelled if the write failed.
fn submit_write(
    ring: &mut IoUring,
    fd: RawFd,
    buffer: &AlignedBuffer,
    pos: u64,
    sync: bool,
) -> io::Result<()> {
    let bytes = buffer.as_ref();
    let write = opcode::Write::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
        .offset(pos)
        .build();
    let results = if sync {
        let write = write.flags(squeue::Flags::IO_LINK);
        let fsync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        submit(ring, &[write, fsync])?
    } else {
        submit(ring, &[write])?
    };
    let written = results[0];
    if written as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "short direct write: {written} of {} bytes at {pos}",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Submits `entries` and waits for all of them; returns their results in order, or the first
/// error.
fn submit(ring: &mut IoUring, entries: &[squeue::Entry]) -> io::Result<Vec<i32>> {
    for (i, entry) in entries.iter().enumerate() {
        let entry = entry.clone().user_data(i as u64);
        // SAFETY: the buffers the entries point to outlive this call, which waits for every
        // completion before returning.
        unsafe { ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
    }
    let mut results = vec![0i32; entries.len()];
    let mut reaped = 0;
    while reaped < entries.len() {
        match ring.submit_and_wait(entries.len() - reaped) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            results[cqe.user_data() as usize] = cqe.result();
            reaped += 1;
        }
    }
    // The first failure is the cause; a linked successor reports ECANCELED after it.
    if let Some(&error) = results.iter().find(|&&r| r < 0) {
        return Err(io::Error::from_raw_os_error(-error));
    }
    Ok(results)
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
        self.io.run(|done| Job::Sync { fd, done }).await
    }

    fn path_of(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl DmaLogFile {
    async fn write(&self, buffer: AlignedBuffer, pos: u64, sync: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
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
        self.write(buffer, pos, false).await
    }

    async fn write_at_synced(&self, buffer: AlignedBuffer, pos: u64) -> io::Result<()> {
        self.write(buffer, pos, true).await
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        // Only recovery reads, once, before the shard serves: a plain aligned pread will do.
        let aligned = len.div_ceil(LOG_BLOCK_SIZE) * LOG_BLOCK_SIZE;
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
        let fd = self.file.as_raw_fd();
        self.io.run(|done| Job::Sync { fd, done }).await
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}
