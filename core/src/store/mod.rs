//! A shard's paged store: a copy-on-write B+tree in a file of 4 KiB pages, cached in a
//! buffer pool with a fixed budget, made durable by checkpoints. The shard's log is its
//! write-ahead log: a checkpoint records the log position it reflects, recovery loads the
//! newest checkpoint and applies the log after it, and log segments wholly before the
//! checkpoint are deleted.
//!
//! This file holds the store's state, opening and recovery. The rest, lowest layer first:
//!
//! - [`page`]: the byte layout of every page.
//! - [`tree`]: the B+tree and the pool (synchronous operations that report a missing page).
//! - `read`: running tree operations with the page reads they miss; point reads and scans.
//! - `write`: the changes to one key that commands are made of.
//! - [`docs`]: document collections and their secondary indexes in the same tree.
//! - `checkpoint`: checkpoints, their policy signals and back-pressure.
//! - `apply`: applying the log's batch entries.
//! - [`verify`]: the read-only checker behind `kvsd --verify`.
//! - [`snapshot`]: copying a durable checkpoint to another node (Raft snapshots).
//!
//! Key spaces: the first byte of every tree key names its space ([`SPACE_KV`],
//! [`SPACE_DOC`], [`SPACE_INDEX`], [`SPACE_CATALOG`], [`SPACE_CLUSTER`]). Key-value commands, reads and scans
//! use the user's keys; the store adds and strips the prefix, so one tree holds both
//! kinds of data and a document write changes its document and its index entries in one
//! atomic apply (ADR 0008).
//!
//! Why shadow paging rather than in-place writes with full-page images: a checkpoint never
//! overwrites a page the previous checkpoint uses, so a torn page write can only hit a page
//! no durable checkpoint refers to, and recovery never reads one. The alternatives (a
//! double-write area, or full-page images in the log) write every page twice. The cost here
//! is that changing a page of an older epoch copies it, and its parent points to the copy;
//! `docs/storage.md` has the whole argument and the arithmetic.
//!
//! Concurrency: the store lives on one shard thread and is shared by `Rc`. Tree operations
//! run synchronously between awaits (see [`tree`]); page reads, extent reads and the
//! checkpoint's writes are the only awaits, so many reads can be in flight while writes and a
//! checkpoint go on.

mod apply;
pub mod backup;
mod checkpoint;
pub mod docs;
pub mod hot;
pub mod key;
pub mod page;
mod read;
mod read_at;
pub mod sessions;
pub mod snapshot;
pub mod tree;
pub mod txn;
pub mod verify;
pub mod versions;
mod walk_memo;
mod write;

#[cfg(test)]
mod read_at_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_crash_tests;
#[cfg(test)]
mod txn_tests;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::log::{LogDisk, LogFile};
use hot::HotCache;
use page::{decode_free_list, decode_meta, Meta, PAGE_SIZE};
use tree::State;

pub use checkpoint::CheckpointPlan;

/// The page file grows in steps of an eighth of its size, within these bounds: a direct
/// write over allocated blocks completes in line, while one that extends the file (or fills
/// a hole) waits for an io_uring worker.
const FILE_GROWTH_MIN: u64 = 1024 * 1024;
const FILE_GROWTH_MAX: u64 = 64 * 1024 * 1024;

/// The tree's key spaces: the first byte of every key.
pub const SPACE_KV: u8 = 1;
pub const SPACE_DOC: u8 = 2;
pub const SPACE_INDEX: u8 = 3;
pub const SPACE_CATALOG: u8 = 4;
/// The shard's own settings as a member of its Raft group (its preferred leader).
pub const SPACE_CLUSTER: u8 = 5;
/// The key (after [`SPACE_CLUSTER`]) of the preferred leader: a node id, 8 bytes LE.
pub const PREFERRED_LEADER: u8 = b'L';

/// The page file's name in the shard's directory.
pub const PAGE_FILE: &str = "pages.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("page file disk full: {op} {path}: {source}")]
    DiskFull {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("page file I/O error: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("corrupt page in shard {shard}, {path}, page {page}: {detail}")]
    Corrupt {
        shard: u32,
        path: String,
        page: u64,
        detail: String,
    },
    #[error("entry {index}: {detail}")]
    Apply { index: u64, detail: String },
    #[error("the store failed earlier and must be reopened")]
    Poisoned,
}

impl StoreError {
    fn io(op: &'static str, path: &str, source: io::Error) -> StoreError {
        if crate::log::is_disk_full(&source) {
            StoreError::DiskFull {
                op,
                path: path.to_string(),
                source,
            }
        } else {
            StoreError::Io {
                op,
                path: path.to_string(),
                source,
            }
        }
    }
}

/// Checkpoint policy. Checkpoints are also forced when dirty pages fill half the pool.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Pages the pool may hold.
    pub cache_pages: usize,
    /// Bytes for the hot-key cache in front of the tree (0: none).
    pub hot_cache_bytes: usize,
}

impl StoreConfig {
    /// Splits a shard's cache budget: an eighth for hot keys, the rest for pages.
    pub fn from_bytes(bytes: u64) -> StoreConfig {
        let hot = (bytes / 8) as usize;
        StoreConfig {
            cache_pages: ((bytes - hot as u64) / PAGE_SIZE as u64) as usize,
            hot_cache_bytes: hot,
        }
    }
}

/// Figures for INFO and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub cached_pages: u64,
    pub dirty_pages: u64,
    pub cache_capacity_pages: u64,
    /// What the resident pages take in memory, as last measured (`tree::State::fit_budget`).
    pub cache_memory_bytes: u64,
    pub page_count: u64,
    pub free_pages: u64,
    pub page_reads: u64,
    pub pool_hits: u64,
    pub pool_misses: u64,
    pub evictions: u64,
    pub checkpoints: u64,
    pub last_checkpoint_index: u64,
    pub tree_height: u32,
    pub hot_hits: u64,
    pub hot_misses: u64,
    /// Writes that went straight to the leaf the hot cache named, without a tree walk.
    pub hinted_writes: u64,
}

/// A durable checkpoint: the log position the page file reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpointed {
    pub seq: u64,
    pub applied_index: u64,
    pub applied_term: u64,
}

/// Wakes tasks waiting for a checkpoint to finish.
#[derive(Default)]
struct Signal {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
    fn wait(&self) -> SignalWait<'_> {
        SignalWait {
            signal: self,
            seen: self.generation.get(),
        }
    }
}

struct SignalWait<'a> {
    signal: &'a Signal,
    seen: u64,
}

impl Future for SignalWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.generation.get() != self.seen {
            return Poll::Ready(());
        }
        self.signal.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// One shard's paged store. See the module documentation.
pub struct PagedStore<F: LogFile> {
    file: F,
    path: String,
    shard: u32,
    state: RefCell<State>,
    hot: RefCell<HotCache>,
    /// A command is between its first and last tree change: no checkpoint may seal now.
    in_command: Cell<bool>,
    /// Commands begun since the store opened: a read that saw it unchanged from before its
    /// first walk to after its last saw no command applied in between.
    commands_begun: Cell<u64>,
    /// The version the command being applied writes at (ADR 0023): all of a command's
    /// writes share it.
    command_version: Cell<u64>,
    checkpoint_running: Cell<bool>,
    checkpoint_done: Signal,
    /// Notified when a command's last tree change is made (`in_command` clears): key-value
    /// reads wait for it rather than walk a tree with a command half applied.
    command_done: Signal,
    /// Set after an error in the middle of a command: the in-memory tree may be half-changed.
    poisoned: Cell<bool>,
    /// Transactions whose commit, decision or resolution this store applied since the shard
    /// loop last asked: their locks go (`take_finished_txns`).
    finished_txns: RefCell<Vec<u64>>,
    /// Transactions this store recorded as prepared since the shard loop last asked: their
    /// keys are locked (`take_prepared_txns`).
    prepared_txns: RefCell<Vec<txn::PreparedTxn>>,
    durable: Cell<Option<Checkpointed>>,
    checkpoints: Cell<u64>,
    raft_state: Cell<(u64, u64)>,
    /// Set while checkpoints fail: (for lack of space, the error).
    checkpoint_failure: RefCell<Option<(bool, String)>>,
    /// Log bytes appended in all, and as of the last seal: the log-size checkpoint trigger.
    log_appended: Cell<u64>,
    log_appended_at_seal: Cell<u64>,
    /// Bytes of the file known to be allocated (written, zeros at least).
    file_len: Cell<u64>,
    growing: Cell<bool>,
    grown: Signal,
    /// Page reads as of the last entry's prefetch, to see whether that entry missed.
    loads_at_last_apply: Cell<u64>,
    /// The document catalogue, read from the tree on first use and kept in step by the
    /// commands that change it.
    catalog: RefCell<Option<docs::Catalog>>,
    /// Snapshots being read out of the durable checkpoint: while any is, no page is
    /// released for reuse ([`snapshot`]).
    snapshot_pins: Cell<u32>,
    /// Backups being read out (`backup`).
    backups: RefCell<backup::Backups>,
    /// The preferred leader recorded in the tree, once read (None: not read yet).
    preferred_leader: Cell<Option<Option<u64>>>,
    /// Entries replaced while snapshots are open (ADR 0023).
    history: RefCell<versions::History>,
    /// Transactions prepared here and not yet resolved: id → the prepare's version (0 when
    /// listed at start). A snapshot read waits for those at or below its timestamp.
    in_doubt: RefCell<std::collections::BTreeMap<u64, u64>>,
}

async fn read_bytes<F: LogFile>(
    file: &F,
    path: &str,
    pos: u64,
    len: usize,
) -> Result<Vec<u8>, StoreError> {
    file.read_at(pos, len)
        .await
        .map_err(|e| StoreError::io("read", path, e))
}

async fn write_bytes<F: LogFile>(
    file: &F,
    path: &str,
    bytes: &[u8],
    pos: u64,
) -> Result<(), StoreError> {
    let mut buffer = file.alloc(bytes.len());
    buffer.as_mut().copy_from_slice(bytes);
    file.write_at(buffer, pos)
        .await
        .map_err(|e| StoreError::io("write", path, e))
}

/// The size to grow a file of `from` bytes to when `needed` bytes are wanted: a whole number
/// of steps of about an eighth of the file, each a whole number of MiB (so every write stays
/// aligned).
fn growth_target(from: u64, needed: u64) -> u64 {
    let step =
        (from / 8).clamp(FILE_GROWTH_MIN, FILE_GROWTH_MAX) / FILE_GROWTH_MIN * FILE_GROWTH_MIN;
    needed.div_ceil(step) * step
}

/// Reads both meta pages; returns the newest valid checkpoint, if any.
pub async fn read_meta<F: LogFile>(file: &F, path: &str) -> Result<Option<Meta>, StoreError> {
    let size = file
        .size()
        .await
        .map_err(|e| StoreError::io("stat", path, e))?;
    let mut best: Option<Meta> = None;
    for slot in 0..2u64 {
        if size < (slot + 1) * PAGE_SIZE as u64 {
            continue;
        }
        let bytes = read_bytes(file, path, slot * PAGE_SIZE as u64, PAGE_SIZE).await?;
        // A torn or never-written slot is not an error: the other slot holds the checkpoint
        // before it.
        if let Ok(meta) = decode_meta(&bytes, slot) {
            if best.as_ref().is_none_or(|b| meta.seq > b.seq) {
                best = Some(meta);
            }
        }
    }
    Ok(best)
}

/// Reads the free-list chain starting at `head`; returns the free ids and the chain's pages.
pub async fn read_free_list<F: LogFile>(
    file: &F,
    path: &str,
    shard: u32,
    head: u64,
    page_count: u64,
) -> Result<(Vec<u64>, Vec<u64>), StoreError> {
    let mut ids = Vec::new();
    let mut pages = Vec::new();
    let mut next = head;
    while next != 0 {
        if next >= page_count || pages.len() as u64 > page_count {
            return Err(StoreError::Corrupt {
                shard,
                path: path.to_string(),
                page: next,
                detail: "free-list chain leaves the file or loops".into(),
            });
        }
        let bytes = read_bytes(file, path, next * PAGE_SIZE as u64, PAGE_SIZE).await?;
        let (chunk, after) = decode_free_list(&bytes, next).map_err(|e| StoreError::Corrupt {
            shard,
            path: path.to_string(),
            page: e.page,
            detail: e.detail,
        })?;
        pages.push(next);
        ids.extend(chunk);
        next = after;
    }
    Ok((ids, pages))
}

impl<F: LogFile> PagedStore<F> {
    /// Opens (or creates) the page file in `disk` and loads its newest checkpoint. The
    /// caller then applies the log from [`PagedStore::applied_index`] on.
    pub async fn open<D: LogDisk<File = F>>(
        disk: &D,
        shard: u32,
        config: StoreConfig,
    ) -> Result<PagedStore<F>, StoreError> {
        let path = disk.path_of(PAGE_FILE);
        let file = disk
            .open(PAGE_FILE, true)
            .await
            .map_err(|e| StoreError::io("open", &path, e))?;
        let size = file
            .size()
            .await
            .map_err(|e| StoreError::io("stat", &path, e))?;
        if size == 0 {
            // A new file: make its name durable before anything relies on it.
            disk.sync_dir()
                .await
                .map_err(|e| StoreError::io("sync dir", &path, e))?;
        }
        let mut state = State::new(config.cache_pages);
        let mut durable = None;
        let mut raft_state = (0, 0);
        if let Some(meta) = read_meta(&file, &path).await? {
            if meta.shard != shard {
                return Err(StoreError::Corrupt {
                    shard,
                    path,
                    page: meta.seq % 2,
                    detail: format!("page file belongs to shard {}", meta.shard),
                });
            }
            let (free, chain) =
                read_free_list(&file, &path, shard, meta.free_head, meta.page_count).await?;
            state.free = free.into_iter().collect::<BTreeSet<u64>>();
            state.epoch = meta.seq + 1;
            // The chain must survive until a newer checkpoint is durable: recovering from
            // this one reads it.
            for id in &chain {
                state.free.remove(id);
            }
            state.pending.insert(state.epoch, chain);
            state.root = meta.root;
            state.height = meta.height;
            state.page_count = meta.page_count;
            state.applied_index = meta.applied_index;
            state.applied_term = meta.applied_term;
            state.partial_commands = meta.partial_commands;
            state.last_version = meta.last_version;
            state.key_count = meta.key_count;
            state.doc_count = meta.doc_count;
            raft_state = (meta.raft_term, meta.raft_vote);
            durable = Some(Checkpointed {
                seq: meta.seq,
                applied_index: meta.applied_index,
                applied_term: meta.applied_term,
            });
        }
        Ok(PagedStore {
            file,
            path,
            shard,
            state: RefCell::new(state),
            hot: RefCell::new(HotCache::new(config.hot_cache_bytes)),
            in_command: Cell::new(false),
            commands_begun: Cell::new(0),
            command_version: Cell::new(0),
            history: RefCell::default(),
            in_doubt: RefCell::default(),
            checkpoint_running: Cell::new(false),
            checkpoint_done: Signal::default(),
            command_done: Signal::default(),
            poisoned: Cell::new(false),
            finished_txns: RefCell::new(Vec::new()),
            prepared_txns: RefCell::new(Vec::new()),
            durable: Cell::new(durable),
            checkpoints: Cell::new(0),
            raft_state: Cell::new(raft_state),
            checkpoint_failure: RefCell::new(None),
            log_appended: Cell::new(0),
            log_appended_at_seal: Cell::new(0),
            file_len: Cell::new(size),
            growing: Cell::new(false),
            grown: Signal::default(),
            // Differs from the pool's count: the first entry after opening prefetches.
            loads_at_last_apply: Cell::new(u64::MAX),
            catalog: RefCell::new(None),
            snapshot_pins: Cell::new(0),
            backups: RefCell::new(backup::Backups::default()),
            preferred_leader: Cell::new(None),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn applied_index(&self) -> u64 {
        self.state.borrow().applied_index
    }

    /// The newest version applied (ADR 0023).
    pub fn last_version(&self) -> u64 {
        self.state.borrow().last_version
    }

    /// Key-value pairs stored (documents and index entries are not counted).
    pub fn key_count(&self) -> u64 {
        self.state.borrow().key_count
    }

    /// Documents stored, or None for a store whose checkpoint predates the count.
    pub fn doc_count(&self) -> Option<u64> {
        self.state.borrow().doc_count
    }

    /// The newest durable checkpoint.
    pub fn durable_checkpoint(&self) -> Option<Checkpointed> {
        self.durable.get()
    }

    /// Raft's term and vote as of the loaded checkpoint (the log holding them may be gone).
    pub fn checkpoint_raft_state(&self) -> (u64, u64) {
        self.raft_state.get()
    }

    /// Raft's current term and vote, recorded by the next checkpoint.
    pub fn set_raft_state(&self, term: u64, vote: u64) {
        self.raft_state.set((term, vote));
    }

    /// Makes the file at least `pages` pages long, growing it by whole steps of written
    /// zeros. One grower at a time: a second would write zeros over pages the first already
    /// handed out.
    async fn grow_to(&self, pages: u64) -> Result<(), StoreError> {
        let needed = pages * PAGE_SIZE as u64;
        loop {
            if self.file_len.get() >= needed {
                return Ok(());
            }
            if !self.growing.get() {
                break;
            }
            self.grown.wait().await;
        }
        self.growing.set(true);
        let from = self.file_len.get();
        let to = growth_target(from, needed);
        let result = crate::log::write_zeros(&self.file, from, to)
            .await
            .map_err(|e| StoreError::io("extend", &self.path, e));
        if result.is_ok() {
            self.file_len.set(to);
        }
        self.growing.set(false);
        self.grown.notify();
        result
    }

    pub fn stats(&self) -> StoreStats {
        let st = self.state.borrow();
        StoreStats {
            cached_pages: st.frames.len() as u64,
            dirty_pages: st.dirty as u64,
            cache_capacity_pages: st.capacity as u64,
            cache_memory_bytes: (st.frames.len() * st.page_memory) as u64,
            page_count: st.page_count,
            free_pages: st.free.len() as u64,
            page_reads: st.loads,
            pool_hits: st.pool_hits,
            pool_misses: st.pool_misses,
            evictions: st.evictions,
            checkpoints: self.checkpoints.get(),
            hot_hits: self.hot.borrow().hits,
            hot_misses: self.hot.borrow().misses,
            hinted_writes: self.state.borrow().hinted_writes,
            last_checkpoint_index: self.durable.get().map_or(0, |c| c.applied_index),
            tree_height: st.height,
        }
    }
}
