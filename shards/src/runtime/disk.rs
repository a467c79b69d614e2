//! File I/O on the executor's own ring: the shard's log appends, page writes and page reads
//! are submitted with the network operations of the same round, and their completions wake
//! the task directly — no hop to another thread and back.
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
    /// Commit-group writes whose linked fdatasync completed successfully on this executor's
    /// ring (page writes, synced too, are not counted: they would hide a group's missing sync).
    static SYNCED_GROUPS: Cell<u64> = const { Cell::new(0) };
}

/// How many commit-group writes ([`Sync::CommitGroup`]) completed their fdatasync on this
/// thread's ring: counted from the sync's own completion, so a commit that skipped the sync
/// cannot be counted.
pub fn synced_writes_completed() -> u64 {
    SYNCED_GROUPS.with(Cell::get)
}

/// What follows a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Nothing: the data may sit in the device's cache.
    No,
    /// A linked fdatasync.
    Yes,
    /// A linked fdatasync, counted in [`synced_writes_completed`]: a log commit group.
    CommitGroup,
}

/// Whether the calling thread can use these functions (it runs an executor).
pub fn available() -> bool {
    on_executor()
}

/// Writes all of `buffer` at `pos`; unless `sync` is [`Sync::No`], then fdatasyncs the file
/// (linked: the sync runs only after the write succeeded). Returns the bytes written.
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
    let write = opcode::Write::new(fd(file), ptr, len).offset(pos).build();
    if sync == Sync::No {
        let (result, _) = Op::submit_keeping(buffer, write).finish_keeping().await;
        return io_result(result);
    }
    let (write, fsync) = Op::submit_linked(buffer, write, fdatasync(file));
    let (written, _) = write.finish_keeping().await;
    let (synced, _) = fsync.await;
    // The first failure is the cause: a sync after a failed write reports ECANCELED.
    let written = io_result(written)?;
    if written < len as usize {
        // A short write breaks the link too (the sync is cancelled): the caller reports
        // the short write (a direct write stops short only when the disk is full).
        return Ok(written);
    }
    io_result(synced)?;
    if sync == Sync::CommitGroup {
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
    let (result, kept) = Op::submit_keeping(buffer, read).finish_keeping().await;
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
