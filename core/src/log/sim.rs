//! A simulated disk for tests: in memory, deterministic, and able to crash and fail.
//!
//! Each file keeps what reads see and what would survive a power loss. `crash` throws away
//! everything not made durable by `sync` (and files whose creation was not made durable by
//! `sync_dir`, and brings back files whose removal was not); with tearing, a random subset of the unsynced blocks survives instead, as a
//! real disk may persist some sectors of an interrupted write and not others. Faults (EIO,
//! ENOSPC) can be armed to hit the n-th write or sync from now.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;

use super::{LogDisk, LogFile};
use crate::limits::LOG_BLOCK_SIZE;

#[derive(Debug, Default, Clone)]
struct SimFile {
    /// Which file this is: a handle opened on a name that was since replaced by a rename
    /// sees the file gone (NotFound) rather than the new one's bytes.
    id: u64,
    current: Vec<u8>,
    /// Length at the last sync.
    synced_len: usize,
    /// Writes since the last sync: (offset, the bytes they replaced, zero-filled past the end).
    unsynced: Vec<(usize, Vec<u8>)>,
}

/// Which operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOn {
    Write,
    Sync,
    Read,
    /// Making the directory's creations and removals durable.
    SyncDir,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<String, SimFile>,
    durable_names: BTreeSet<String>,
    /// Files removed since the directory was last synced, whose names were durable: a
    /// power loss brings them back (with what of them was synced), as a real directory may.
    removed_unsynced: BTreeMap<String, SimFile>,
    syncs: u64,
    writes: u64,
    /// The id the next created file gets.
    next_id: u64,
    /// (operation, countdown, raw os error): fails the countdown-th such operation from now.
    fault: Option<(FaultOn, u64, i32)>,
    /// Reads give way to other tasks once before they complete, as a real disk's do.
    yielding_reads: bool,
}

/// The files of a [`SimDisk`] at one moment.
#[derive(Debug, Clone)]
pub struct SimFiles(BTreeMap<String, SimFile>, BTreeSet<String>);

/// A shared handle on the simulated directory; clones see the same files.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Rc<RefCell<State>>,
}

/// A small deterministic generator (SplitMix64), so tests need no dependency for tearing.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

impl SimDisk {
    pub fn new() -> Self {
        SimDisk::default()
    }

    /// fdatasync calls so far.
    pub fn syncs(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// Write calls so far.
    pub fn writes(&self) -> u64 {
        self.state.borrow().writes
    }

    /// Fails the `countdown`-th (1 = next) operation of kind `on` with `errno`.
    pub fn fail_after(&self, on: FaultOn, countdown: u64, errno: i32) {
        self.state.borrow_mut().fault = Some((on, countdown, errno));
    }

    /// Makes every read wait once (yield to other tasks) before it completes, so tests can
    /// interleave operations that wait for the disk.
    pub fn set_yielding_reads(&self, on: bool) {
        self.state.borrow_mut().yielding_reads = on;
    }

    /// A power loss: unsynced data is lost; with `tear`, some unsynced blocks survive.
    pub fn crash(&self, tear: Option<&mut SimRng>) {
        let mut state = self.state.borrow_mut();
        let durable_names = state.durable_names.clone();
        state.files.retain(|name, _| durable_names.contains(name));
        let removed = std::mem::take(&mut state.removed_unsynced);
        for (name, file) in removed {
            state.files.entry(name).or_insert(file);
        }
        let mut rng = tear;
        for file in state.files.values_mut() {
            let mut len = file.synced_len;
            for (pos, old) in file.unsynced.drain(..).rev() {
                let mut block = pos;
                while block < pos + old.len() {
                    let end = (block + LOG_BLOCK_SIZE).min(pos + old.len());
                    let survives = rng.as_deref_mut().is_some_and(|rng| rng.below(2) == 0);
                    if survives {
                        len = len.max(end);
                    } else {
                        file.current[block..end].copy_from_slice(&old[block - pos..end - pos]);
                    }
                    block = end;
                }
            }
            file.current.truncate(len);
            file.synced_len = len;
        }
        state.fault = None;
    }

    /// A copy of every file, to put back with [`SimDisk::restore_files`].
    pub fn clone_files(&self) -> SimFiles {
        let state = self.state.borrow();
        SimFiles(state.files.clone(), state.durable_names.clone())
    }

    pub fn restore_files(&self, files: SimFiles) {
        let mut state = self.state.borrow_mut();
        state.files = files.0;
        state.durable_names = files.1;
        state.removed_unsynced.clear();
    }

    /// Direct access to a file's bytes, to damage them in tests.
    pub fn with_file<R>(&self, name: &str, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        let mut state = self.state.borrow_mut();
        let file = state.files.get_mut(name)?;
        let result = f(&mut file.current);
        file.synced_len = file.current.len();
        file.unsynced.clear();
        Some(result)
    }

    pub fn file_names(&self) -> Vec<String> {
        self.state.borrow().files.keys().cloned().collect()
    }

    fn check_fault(&self, on: FaultOn) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if let Some((kind, countdown, errno)) = state.fault {
            if kind == on {
                if countdown <= 1 {
                    state.fault = None;
                    return Err(io::Error::from_raw_os_error(errno));
                }
                state.fault = Some((kind, countdown - 1, errno));
            }
        }
        Ok(())
    }
}

/// Pending once (waking itself at once), then ready: gives way to the other tasks.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// A file of a [`SimDisk`].
#[derive(Debug)]
pub struct SimLogFile {
    disk: SimDisk,
    name: String,
    id: u64,
}

impl SimLogFile {
    fn with<R>(&self, f: impl FnOnce(&mut SimFile) -> R) -> io::Result<R> {
        let mut state = self.disk.state.borrow_mut();
        let file = state
            .files
            .get_mut(&self.name)
            .filter(|file| file.id == self.id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, self.name.clone()))?;
        Ok(f(file))
    }
}

impl LogDisk for SimDisk {
    type File = SimLogFile;

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.file_names())
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<SimLogFile> {
        let mut state = self.state.borrow_mut();
        if !state.files.contains_key(name) {
            if !create {
                return Err(io::Error::new(io::ErrorKind::NotFound, name.to_string()));
            }
            state.next_id += 1;
            let id = state.next_id;
            state.files.insert(
                name.to_string(),
                SimFile {
                    id,
                    ..SimFile::default()
                },
            );
        }
        Ok(SimLogFile {
            disk: self.clone(),
            name: name.to_string(),
            id: state.files[name].id,
        })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if let Some(file) = state.files.remove(name) {
            if state.durable_names.contains(name) {
                state.removed_unsynced.insert(name.to_string(), file);
            }
        }
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let file = state
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        if state.durable_names.contains(from) {
            // Until the directory is synced, a power loss may bring the old name back.
            state
                .removed_unsynced
                .insert(from.to_string(), file.clone());
        }
        // A power loss before the directory is synced keeps either name's file: this disk
        // keeps the new one under `to` (a rename is atomic; either outcome is allowed).
        state.files.insert(to.to_string(), file);
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.check_fault(FaultOn::SyncDir)?;
        let mut state = self.state.borrow_mut();
        state.durable_names = state.files.keys().cloned().collect();
        state.removed_unsynced.clear();
        Ok(())
    }

    fn path_of(&self, name: &str) -> String {
        format!("sim:/{name}")
    }

    fn synced_writes_completed(&self) -> Option<u64> {
        Some(self.syncs())
    }
}

impl LogFile for SimLogFile {
    type Buffer = Vec<u8>;

    fn alloc(&self, len: usize) -> Vec<u8> {
        assert!(
            len.is_multiple_of(LOG_BLOCK_SIZE),
            "unaligned buffer of {len} bytes"
        );
        vec![0xEE; len]
    }

    async fn write_at(&self, buffer: Vec<u8>, pos: u64) -> io::Result<()> {
        assert!(
            pos.is_multiple_of(LOG_BLOCK_SIZE as u64)
                && buffer.len().is_multiple_of(LOG_BLOCK_SIZE),
            "unaligned write"
        );
        self.disk.check_fault(FaultOn::Write)?;
        self.disk.state.borrow_mut().writes += 1;
        self.with(|file| {
            let pos = pos as usize;
            let end = pos + buffer.len();
            if file.current.len() < end {
                file.current.resize(end, 0);
            }
            let old = file.current[pos..end].to_vec();
            file.current[pos..end].copy_from_slice(&buffer);
            file.unsynced.push((pos, old));
        })
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        if self.disk.state.borrow().yielding_reads {
            YieldOnce(false).await;
        }
        self.disk.check_fault(FaultOn::Read)?;
        self.with(|file| {
            let start = (pos as usize).min(file.current.len());
            let end = (start + len).min(file.current.len());
            file.current[start..end].to_vec()
        })
    }

    async fn sync(&self) -> io::Result<()> {
        self.disk.check_fault(FaultOn::Sync)?;
        self.disk.state.borrow_mut().syncs += 1;
        self.with(|file| {
            file.synced_len = file.current.len();
            file.unsynced.clear();
        })
    }

    async fn size(&self) -> io::Result<u64> {
        self.with(|file| file.current.len() as u64)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.with(|file| {
            // Truncation is made durable at once: kvs syncs right after it anyway.
            file.current.truncate(len as usize);
            file.synced_len = file.synced_len.min(len as usize);
            file.unsynced.clear();
        })
    }
}
