//! File I/O on the executor's own ring: the shard's log appends and page writes are submitted
//! with the network operations of the same round, page reads the moment they are asked for
//! (see [`read`]), and their completions wake the task directly — no hop to another thread
//! and back.
//!
//! The buffer moves into the operation and stays with it until the kernel is done with it,
//! even if the waiting future is dropped.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::executor::{fd, io_result, on_executor, Op};

fn fdatasync(file: RawFd) -> squeue::Entry {
    opcode::Fsync::new(fd(file))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
}

thread_local! {
    /// Commit-group writes that completed in full with `RWF_DSYNC` on this executor's ring
    /// (page writes, synced too, are not counted: they would hide a group's missing sync).
    static SYNCED_GROUPS: Cell<u64> = const { Cell::new(0) };
}

/// How many commit-group writes ([`Sync::CommitGroup`]) completed durably on this thread's
/// ring: counted from the completion of the write, whose entry carries `RWF_DSYNC` for every
/// sync but [`Sync::No`], so a commit written without the flag cannot be counted.
pub fn synced_writes_completed() -> u64 {
    SYNCED_GROUPS.with(Cell::get)
}

/// What follows a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Nothing: the data may sit in the device's cache.
    No,
    /// The write is durable when it completes (`RWF_DSYNC`).
    Yes,
    /// Durable when it completes, and counted in [`synced_writes_completed`]: a log commit
    /// group.
    CommitGroup,
}

/// Whether the calling thread can use these functions (it runs an executor).
pub fn available() -> bool {
    on_executor()
}

/// Writes all of `buffer` at `pos`. Unless `sync` is [`Sync::No`] the write carries
/// `RWF_DSYNC`: it completes only once its data (and whatever metadata reading it back
/// needs) is on stable storage — `pwritev2`'s per-write `O_DSYNC`, the same guarantee as a
/// write followed by fdatasync. One operation instead of a linked write and fdatasync
/// (ADR 0028): io_uring runs an fsync on an io-wq worker thread, a context switch on the
/// shard's core each way, while a direct `RWF_DSYNC` write is issued inline and the kernel
/// flushes the device cache from the write's completion. Returns the bytes written.
pub async fn write<B: AsRef<[u8]> + 'static>(
    file: RawFd,
    buffer: B,
    pos: u64,
    sync: Sync,
) -> io::Result<usize> {
    // Boxed first: the bytes' address is taken where they will stay.
    let buffer = Box::new(buffer);
    let (ptr, len) = {
        let bytes = (*buffer).as_ref();
        (bytes.as_ptr(), bytes.len() as u32)
    };
    let flags = if sync == Sync::No { 0 } else { libc::RWF_DSYNC };
    let write = opcode::Write::new(fd(file), ptr, len)
        .offset(pos)
        .rw_flags(flags)
        .build();
    let (result, _) = Op::submit_keeping(buffer, write).finish_keeping().await;
    let written = io_result(result)?;
    // A short write (a direct write stops short only when the disk is full) is reported by
    // the caller, and is not a durable group.
    if sync == Sync::CommitGroup && written == len as usize {
        SYNCED_GROUPS.with(|count| count.set(count.get() + 1));
    }
    Ok(written)
}

/// Reads into `buffer` from `pos`; returns the bytes read and the buffer.
pub async fn read<B: AsMut<[u8]> + 'static>(
    file: RawFd,
    buffer: B,
    pos: u64,
) -> (io::Result<usize>, B) {
    let mut buffer = Box::new(buffer);
    let (ptr, len) = {
        let bytes = (*buffer).as_mut();
        (bytes.as_mut_ptr(), bytes.len() as u32)
    };
    let read = opcode::Read::new(fd(file), ptr, len).offset(pos).build();
    let op = Op::submit_keeping(buffer, read);
    // Entered at once, not with the round's other entries: on this machine's virtio disk a
    // read entered by itself came back in ~300 µs against ~490 µs inside a round's burst, and
    // cold GETs rose 2-14% (four paired runs) though each costs ~12% more CPU for its own
    // system call (docs/benchmarks.md, 2026-12-06, third session).
    Op::enter_now();
    let (result, kept) = op.finish_keeping().await;
    let buffer = kept
        .and_then(|kept| kept.downcast::<B>().ok())
        .expect("the buffer comes back");
    (io_result(result), *buffer)
}

/// fdatasyncs `file`.
pub async fn sync(file: RawFd) -> io::Result<()> {
    let (result, _) = Op::submit(None, |_| fdatasync(file)).await;
    io_result(result).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::task::{Context, Waker};

    use super::*;
    use crate::runtime::executor::block_on;

    #[test]
    fn a_read_is_handed_to_the_kernel_when_asked_for_not_at_the_end_of_the_round() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        let fd = file.as_raw_fd();
        let bytes = block_on(async move {
            let mut reading = Box::pin(read(fd, vec![0u8; 4], 3));
            // The first poll queues the read; nothing of this round may be left queued.
            let first = reading
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            assert!(first.is_pending(), "completions are reaped between rounds");
            assert_eq!(Op::queued(), 0, "the read waits for the round's end");
            let (read, buffer) = reading.await;
            assert_eq!(read.unwrap(), 4);
            buffer
        })
        .unwrap();
        assert_eq!(bytes, b"3456");
        drop(file);
    }
}
