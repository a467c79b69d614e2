//! A shard's paged store: a copy-on-write B+tree in a file of 4 KiB pages, cached in a
//! buffer pool with a fixed budget, made durable by checkpoints. The shard's log is its
//! write-ahead log: a checkpoint records the log position it reflects, recovery loads the
//! newest checkpoint and applies the log after it, and log segments wholly before the
//! checkpoint are deleted.
//!
//! - [`page`]: the byte layout of every page.
//! - [`tree`]: the B+tree and the pool (synchronous operations that report a missing page).
//! - [`verify`]: the read-only checker behind `kvsd --verify`.
//! - [`docs`]: document collections and their secondary indexes in the same tree.
//!
//! Key spaces: the first byte of every tree key names its space ([`SPACE_KV`],
//! [`SPACE_DOC`], [`SPACE_INDEX`], [`SPACE_CATALOG`]). Key-value commands, reads and scans
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

pub mod docs;
pub mod hot;
pub mod key;
pub mod page;
pub mod tree;
pub mod verify;

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::command::{decode_batch, Command};
use crate::log::{LogDisk, LogFile};
use crate::state::{CommandResult, Versioned};
use hot::HotCache;
use page::{
    decode_extent, decode_free_list, decode_meta, decode_node, encode_extent, encode_free_list,
    encode_meta, encode_node, extent_pages, Entry, Key, Meta, Value, FREE_IDS_PER_PAGE, PAGE_SIZE,
};
use tree::{needs_extent, Miss, State};

/// Page reads one prefetch keeps in flight.
const PREFETCH_IN_FLIGHT: usize = 128;

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

/// The tree key of the key-value key `key`.
fn kv_tree_key(key: &[u8]) -> Vec<u8> {
    let mut tree_key = Vec::with_capacity(key.len() + 1);
    tree_key.push(SPACE_KV);
    tree_key.extend_from_slice(key);
    tree_key
}

/// Calls `f` with the tree key of the key-value key `key` (on the stack when short).
fn with_kv_key<T>(key: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    const SHORT: usize = 63;
    if key.len() <= SHORT {
        let mut buffer = [0u8; SHORT + 1];
        buffer[0] = SPACE_KV;
        buffer[1..=key.len()].copy_from_slice(key);
        f(&buffer[..=key.len()])
    } else {
        f(&kv_tree_key(key))
    }
}

/// Moves a key-value command's keys into the key-value space.
fn into_tree_keys(command: &mut Command) {
    fn prefix(key: &mut Vec<u8>) {
        key.insert(0, SPACE_KV);
    }
    match command {
        Command::Put { key, .. }
        | Command::Delete { key }
        | Command::Cas { key, .. }
        | Command::Increment { key, .. }
        | Command::Append { key, .. }
        | Command::GetAndPut { key, .. }
        | Command::PutIfExists { key, .. } => prefix(key),
        Command::PutMany { pairs } => pairs.iter_mut().for_each(|(key, _)| prefix(key)),
        Command::Document { .. } => {}
    }
}

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
    pub page_count: u64,
    pub free_pages: u64,
    pub page_reads: u64,
    pub evictions: u64,
    pub checkpoints: u64,
    pub last_checkpoint_index: u64,
    pub tree_height: u32,
    pub hot_hits: u64,
    pub hot_misses: u64,
    /// Writes that went straight to the leaf the hot cache named, without a tree walk.
    pub hinted_writes: u64,
}

/// What a sealed checkpoint will write.
#[derive(Debug)]
pub struct CheckpointPlan {
    meta: Meta,
    pages: Vec<u64>,
    free_ids: Vec<u64>,
    free_pages: Vec<u64>,
}

impl CheckpointPlan {
    pub fn pages(&self) -> usize {
        self.pages.len() + self.free_pages.len()
    }
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
    checkpoint_running: Cell<bool>,
    checkpoint_done: Signal,
    /// Set after an error in the middle of a command: the in-memory tree may be half-changed.
    poisoned: Cell<bool>,
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
            checkpoint_running: Cell::new(false),
            checkpoint_done: Signal::default(),
            poisoned: Cell::new(false),
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
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn applied_index(&self) -> u64 {
        self.state.borrow().applied_index
    }

    /// Key-value pairs stored (documents and index entries are not counted).
    pub fn key_count(&self) -> u64 {
        self.state.borrow().key_count
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

    /// Records that the log grew by `bytes`.
    pub fn note_log_appended(&self, bytes: u64) {
        self.log_appended.set(self.log_appended.get() + bytes);
    }

    /// Log bytes appended since the last checkpoint was sealed.
    pub fn log_since_checkpoint(&self) -> u64 {
        self.log_appended.get() - self.log_appended_at_seal.get()
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

    /// Waits until no checkpoint is being written.
    pub async fn wait_idle(&self) {
        while self.checkpoint_running.get() {
            self.checkpoint_done.wait().await;
        }
    }

    pub fn stats(&self) -> StoreStats {
        let st = self.state.borrow();
        StoreStats {
            cached_pages: st.frames.len() as u64,
            dirty_pages: st.dirty as u64,
            cache_capacity_pages: st.capacity as u64,
            page_count: st.page_count,
            free_pages: st.free.len() as u64,
            page_reads: st.loads,
            evictions: st.evictions,
            checkpoints: self.checkpoints.get(),
            hot_hits: self.hot.borrow().hits,
            hot_misses: self.hot.borrow().misses,
            hinted_writes: self.state.borrow().hinted_writes,
            last_checkpoint_index: self.durable.get().map_or(0, |c| c.applied_index),
            tree_height: st.height,
        }
    }

    /// Whether dirty pages fill half the pool: time for a checkpoint regardless of policy.
    pub fn dirty_pressure(&self) -> bool {
        let st = self.state.borrow();
        st.dirty * 2 >= st.capacity
    }

    /// Whether anything changed since the last durable checkpoint.
    pub fn has_changes(&self) -> bool {
        let st = self.state.borrow();
        st.applied_index != self.durable.get().map_or(0, |c| c.applied_index)
            || st.partial_commands != 0
    }

    fn corrupt(&self, e: page::PageError) -> StoreError {
        StoreError::Corrupt {
            shard: self.shard,
            path: self.path.clone(),
            page: e.page,
            detail: e.detail,
        }
    }

    /// Reads page `id` into the pool.
    async fn load(&self, id: u64) -> Result<(), StoreError> {
        {
            let mut st = self.state.borrow_mut();
            if id < page::META_PAGES || id >= st.page_count {
                return Err(StoreError::Corrupt {
                    shard: self.shard,
                    path: self.path.clone(),
                    page: id,
                    detail: format!("reference outside the file ({} pages)", st.page_count),
                });
            }
            st.loading.entry(id).or_insert((0, false)).0 += 1;
        }
        let read = read_bytes(&self.file, &self.path, id * PAGE_SIZE as u64, PAGE_SIZE).await;
        let mut st = self.state.borrow_mut();
        let stale = match st.loading.get_mut(&id) {
            Some(entry) => {
                entry.0 -= 1;
                let stale = entry.1;
                if entry.0 == 0 {
                    st.loading.remove(&id);
                }
                stale
            }
            None => true,
        };
        let bytes = read?;
        st.loads += 1;
        if stale || st.frames.contains_key(&id) {
            return Ok(());
        }
        let (node, header) = decode_node(&bytes, id).map_err(|e| self.corrupt(e))?;
        st.insert_loaded(id, node, header.lsn, header.epoch);
        Ok(())
    }

    /// Runs a tree operation, loading what it misses, until it completes. Pages it loaded
    /// stay pinned until then, so each retry gets further.
    async fn run<T>(
        &self,
        mut op: impl FnMut(&mut State) -> Result<T, Miss>,
    ) -> Result<T, StoreError> {
        let mut pinned: Vec<u64> = Vec::new();
        let result = loop {
            let attempt = op(&mut self.state.borrow_mut());
            match attempt {
                Ok(value) => break Ok(value),
                Err(Miss(id)) => {
                    if let Err(e) = self.load(id).await {
                        break Err(e);
                    }
                    if self.state.borrow_mut().pin(id) {
                        pinned.push(id);
                    }
                }
            }
        };
        let mut st = self.state.borrow_mut();
        for id in pinned {
            st.unpin(id);
        }
        // Copies and splits add pages without evicting (nothing may move under a running
        // operation): trim back to the budget now.
        st.make_room();
        result
    }

    /// The value an entry holds, reading its extent if it has one.
    async fn value_of(
        &self,
        entry: &Entry,
    ) -> Result<Result<Vec<u8>, page::PageError>, StoreError> {
        match &entry.value {
            Value::Inline(v) => Ok(Ok(v.clone())),
            Value::Extent {
                first,
                pages,
                len,
                lsn,
            } => {
                let bytes = read_bytes(
                    &self.file,
                    &self.path,
                    first * PAGE_SIZE as u64,
                    *pages as usize * PAGE_SIZE,
                )
                .await?;
                Ok(decode_extent(&bytes, *first, *len, *lsn))
            }
        }
    }

    /// Looks `key` up and reads its value. An extent rewritten while it was being read (its
    /// key was overwritten meanwhile) is looked up again.
    async fn lookup_value(&self, key: &[u8]) -> Result<Option<(Entry, Vec<u8>)>, StoreError> {
        let mut last_error = None;
        for _ in 0..3 {
            let Some(entry) = self.run(|st| st.lookup(key)).await? else {
                return Ok(None);
            };
            match self.value_of(&entry).await? {
                Ok(value) => return Ok(Some((entry, value))),
                Err(e) => last_error = Some(e),
            }
        }
        Err(self.corrupt(last_error.expect("three failed attempts")))
    }

    /// Whether a command is being applied and waits (for a page, or for room in the cache)
    /// part-way: a read now could see it half done.
    pub fn is_applying_command(&self) -> bool {
        self.in_command.get()
    }

    /// Answers a point read from the pool alone: None when it needs the disk (a page that is
    /// not cached, or a value in an extent).
    pub fn try_get(&self, key: &[u8]) -> Option<Option<Versioned>> {
        with_kv_key(key, |key| self.try_get_tree(key))
    }

    fn try_get_tree(&self, key: &[u8]) -> Option<Option<Versioned>> {
        let mut hot = self.hot.borrow_mut();
        if let Some(value) = hot.get(key) {
            return Some(Some(value));
        }
        let mut st = self.state.borrow_mut();
        match st.lookup(key) {
            Ok(None) => Some(None),
            Ok(Some(Entry {
                version,
                value: Value::Inline(value),
                ..
            })) => {
                let found = Versioned { version, value };
                hot.put(key, &found, st.last_place);
                Some(Some(found))
            }
            Ok(Some(_)) | Err(Miss(_)) => None,
        }
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.get_tree(&kv_tree_key(key)).await
    }

    async fn get_tree(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        if let Some(value) = self.hot.borrow_mut().get(key) {
            return Ok(Some(value));
        }
        Ok(self
            .lookup_value(key)
            .await?
            .map(|(entry, value)| Versioned {
                version: entry.version,
                value,
            }))
    }

    /// Up to `limit` key-value pairs with keys in `[start, end)`, in key order.
    pub async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let end = match end {
            Some(end) => kv_tree_key(end),
            None => vec![SPACE_KV + 1],
        };
        let mut pairs = self
            .scan_tree(&kv_tree_key(start), Some(&end), limit)
            .await?;
        for (key, _) in &mut pairs {
            key.remove(0);
        }
        Ok(pairs)
    }

    /// Up to `limit` entries of the tree with keys in `[start, end)`, in key order.
    async fn scan_tree(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut from = start.to_vec();
        while out.len() < limit {
            let want = limit - out.len();
            let (entries, next) = self.run(|st| st.scan_leaf(&from, end, want)).await?;
            for entry in entries {
                let value = match self.value_of(&entry).await? {
                    Ok(value) => value,
                    // Rewritten while we read it: take the key's current value.
                    Err(_) => match self.lookup_value(&entry.key).await? {
                        Some((_, value)) => value,
                        None => continue,
                    },
                };
                out.push((entry.key.into(), value));
            }
            match next {
                // The next leaf starts at or past the end: nothing more is in range.
                Some(next) if end.is_none_or(|end| next.as_slice() < end) => from = next,
                _ => break,
            }
        }
        Ok(out)
    }

    // ---- applying the log ----

    /// Records that `index` (an entry with no commands) is applied.
    pub fn skip(&self, index: u64, term: u64) {
        let mut st = self.state.borrow_mut();
        if index > st.applied_index {
            st.applied_index = index;
            st.applied_term = term;
            st.partial_commands = 0;
        }
    }

    /// Applies the batch entry at `index`. Entries at or below the checkpoint are already in
    /// the tree and return no results; the entry just after it skips the commands the
    /// checkpoint already holds.
    pub async fn apply(
        &self,
        index: u64,
        term: u64,
        batch: &[u8],
    ) -> Result<Vec<CommandResult>, StoreError> {
        if self.poisoned.get() {
            return Err(StoreError::Poisoned);
        }
        let (applied, partial) = {
            let st = self.state.borrow();
            (st.applied_index, st.partial_commands)
        };
        if index <= applied {
            return Ok(Vec::new());
        }
        let mut commands = decode_batch(batch).map_err(|e| StoreError::Apply {
            index,
            detail: e.to_string(),
        })?;
        commands.iter_mut().for_each(into_tree_keys);
        let skip = if index == applied + 1 {
            partial as usize
        } else {
            0
        };
        self.prefetch(&commands[skip.min(commands.len())..]).await?;
        let mut extents = match self.write_extents(index, &commands, skip).await {
            Ok(extents) => extents.into_iter(),
            Err(e) => {
                self.poisoned.set(true);
                return Err(e);
            }
        };
        let mut results = Vec::with_capacity(commands.len());
        for (i, command) in commands.into_iter().enumerate() {
            let written = extents.next().unwrap_or_default();
            if i < skip {
                results.push(CommandResult::Skipped);
                continue;
            }
            self.make_room_for_writes().await?;
            self.in_command.set(true);
            let result = self.apply_command(index, command, written).await;
            self.in_command.set(false);
            match result {
                Ok(result) => results.push(result),
                Err(e) => {
                    self.poisoned.set(true);
                    return Err(e);
                }
            }
            self.state.borrow_mut().partial_commands = i as u32 + 1;
        }
        let mut st = self.state.borrow_mut();
        st.applied_index = index;
        st.applied_term = term;
        st.partial_commands = 0;
        Ok(results)
    }

    /// Writes the extents of a batch's unconditional puts (`Put`, `PutMany`) all at once;
    /// returns, per command, the stored value of each of its pairs that got one. Each put
    /// would otherwise wait for its own extent's page write in turn (measured: YCSB-A with
    /// 4 KiB values ran at a third of the 1 KiB rate). The log holds the values, so a crash
    /// before the entries are applied loses nothing: the extents are unreferenced and the
    /// allocator, rebuilt from the checkpoint, has their pages free again.
    async fn write_extents(
        &self,
        index: u64,
        commands: &[Command],
        skip: usize,
    ) -> Result<Vec<Vec<Option<Value>>>, StoreError> {
        // Most batches have no large value: then allocate nothing per command (an empty
        // result means "no extents", as the apply loop reads it).
        let has_extent = commands.iter().skip(skip).any(|command| match command {
            Command::Put { key, value } => needs_extent(key, value),
            Command::PutMany { pairs } => pairs.iter().any(|(k, v)| needs_extent(k, v)),
            _ => false,
        });
        if !has_extent {
            return Ok(Vec::new());
        }
        let mut stored: Vec<Vec<Option<Value>>> = Vec::with_capacity(commands.len());
        let mut writes = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            let pairs: Vec<(&[u8], &[u8])> = match command {
                _ if i < skip => Vec::new(),
                Command::Put { key, value } => vec![(key, value)],
                Command::PutMany { pairs } => pairs
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_slice()))
                    .collect(),
                _ => Vec::new(),
            };
            let mut of_command = Vec::with_capacity(pairs.len());
            for (key, value) in pairs {
                if !needs_extent(key, value) {
                    of_command.push(None);
                    continue;
                }
                let pages = extent_pages(value.len());
                let (first, epoch) = {
                    let mut st = self.state.borrow_mut();
                    let first = st.alloc_extent(pages);
                    st.reserved.insert(first, pages);
                    (first, st.epoch)
                };
                let mut bytes = self.file.alloc(pages as usize * PAGE_SIZE);
                encode_extent(value, first, index, epoch, bytes.as_mut());
                writes.push((first, bytes));
                of_command.push(Some(Value::Extent {
                    first,
                    pages,
                    len: value.len() as u32,
                    lsn: index,
                }));
            }
            stored.push(of_command);
        }
        if writes.is_empty() {
            return Ok(stored);
        }
        let page_count = self.state.borrow().page_count;
        self.grow_to(page_count).await?;
        // At most this many in flight, as for checkpoint writes.
        const CHUNK: usize = 64;
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let pending: Vec<_> = writes
                .by_ref()
                .take(CHUNK)
                .map(|(first, bytes)| self.file.write_at(bytes, first * PAGE_SIZE as u64))
                .collect();
            for result in crate::join::join_all(pending).await {
                result.map_err(|e| StoreError::io("write", &self.path, e))?;
            }
        }
        Ok(stored)
    }

    /// Reads the pages the commands' keys lead to, many at once, so that applying them
    /// (one at a time, in order) mostly finds them cached instead of waiting for each miss.
    ///
    /// When the previous entry read no page at all, the working set is cached and the walk
    /// would only double the tree lookups of the apply: skip it (measured: the prefetch's
    /// lookups were a third of kvsd's CPU on cached SETs).
    async fn prefetch(&self, commands: &[Command]) -> Result<(), StoreError> {
        let loads = self.state.borrow().loads;
        let missed_last_time = loads != self.loads_at_last_apply.replace(loads);
        if !missed_last_time {
            return Ok(());
        }
        let room = self.state.borrow().capacity / 4;
        let mut keys: Vec<&[u8]> = Vec::new();
        for command in commands {
            match command {
                Command::Put { key, .. }
                | Command::Delete { key }
                | Command::Cas { key, .. }
                | Command::Increment { key, .. }
                | Command::Append { key, .. }
                | Command::GetAndPut { key, .. }
                | Command::PutIfExists { key, .. } => keys.push(key),
                Command::PutMany { pairs } => keys.extend(pairs.iter().map(|(k, _)| k.as_slice())),
                Command::Document { .. } => {}
            }
            if keys.len() >= room {
                break;
            }
        }
        if keys.len() < 2 {
            return Ok(());
        }
        keys.sort_unstable();
        keys.dedup();
        for chunk in keys.chunks(PREFETCH_IN_FLIGHT) {
            let lookups = chunk
                .iter()
                .map(|key| self.run(move |st| st.lookup(key).map(|_| ())))
                .collect();
            for result in crate::join::join_all(lookups).await {
                result?;
            }
        }
        Ok(())
    }

    /// Back-pressure: when dirty pages fill three quarters of the pool, write a checkpoint
    /// (or wait for the running one) before changing more.
    ///
    /// The command being applied is already durable in the log, so a checkpoint that fails
    /// (a full disk) must not fail it: the pool then runs over its budget, and the shard
    /// refuses new writes ([`PagedStore::write_refusal`]) until a checkpoint succeeds.
    async fn make_room_for_writes(&self) -> Result<(), StoreError> {
        loop {
            let full = {
                let st = self.state.borrow();
                st.dirty * 4 >= st.capacity * 3
            };
            if !full || self.checkpoint_failure.borrow().is_some() {
                return Ok(());
            }
            if self.checkpoint_running.get() {
                self.checkpoint_done.wait().await;
            } else if let Err(error) = self
                .checkpoint(None::<fn(usize) -> std::future::Ready<()>>)
                .await
            {
                // Recorded by `write_checkpoint`; the shard reports it on new writes.
                let _ = error;
                return Ok(());
            }
        }
    }

    /// Why new writes must be refused, if they must: the last checkpoint failed (true when
    /// for lack of space), so dirty pages cannot be written out.
    pub fn write_refusal(&self) -> Option<(bool, String)> {
        self.checkpoint_failure.borrow().clone()
    }

    fn next_version(&self) -> u64 {
        let mut st = self.state.borrow_mut();
        st.last_version += 1;
        st.last_version
    }

    /// Stores `value` under `key` with a new version; returns the version and the value it
    /// replaced (read only when `want_previous`).
    async fn put(
        &self,
        index: u64,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(u64, Option<Entry>), StoreError> {
        self.put_stored(index, key, value, None).await
    }

    /// Like `put`, with the value's extent already written when `stored` is given.
    async fn put_stored(
        &self,
        index: u64,
        key: Vec<u8>,
        value: Vec<u8>,
        stored: Option<Value>,
    ) -> Result<(u64, Option<Entry>), StoreError> {
        let version = self.next_version();
        // What the hot-key cache must say once the tree does (if it holds the key then).
        let cached = (value.len() <= hot::HOT_VALUE_MAX).then(|| value.clone());
        // A key the hot cache knows: write to the place it names, without walking the tree.
        // No await on this path, so the cache and the tree change together.
        let mut value = value;
        if let Some(cached) = cached.as_ref().filter(|_| !needs_extent(&key, &value)) {
            let mut pending = Some(Entry {
                key: Key::new(&key),
                version,
                value: Value::Inline(value),
            });
            let mut replaced = None;
            let fresh = Versioned {
                version,
                value: cached.clone(),
            };
            let mut st = self.state.borrow_mut();
            self.hot.borrow_mut().write_through(&key, fresh, |place| {
                let entry = pending.take().expect("one write");
                match st.replace_in_leaf(place, entry, index) {
                    Ok(old) => {
                        replaced = Some(old);
                        Some(st.last_place)
                    }
                    Err(entry) => {
                        pending = Some(entry);
                        None
                    }
                }
            });
            if let Some(old) = replaced {
                if let Value::Extent { first, pages, .. } = old.value {
                    st.free_extent(first, pages);
                }
                return Ok((version, Some(old)));
            }
            drop(st);
            let Some(Entry {
                value: Value::Inline(back),
                ..
            }) = pending
            else {
                unreachable!("an inline entry comes back inline")
            };
            value = back;
        }
        let reserved_first = match &stored {
            Some(Value::Extent { first, .. }) => Some(*first),
            _ => None,
        };
        let stored = if let Some(stored) = stored {
            stored
        } else if needs_extent(&key, &value) {
            let pages = extent_pages(value.len());
            let (first, epoch) = {
                let mut st = self.state.borrow_mut();
                (st.alloc_extent(pages), st.epoch)
            };
            let page_count = self.state.borrow().page_count;
            self.grow_to(page_count).await?;
            let mut bytes = self.file.alloc(pages as usize * PAGE_SIZE);
            encode_extent(&value, first, index, epoch, bytes.as_mut());
            self.file
                .write_at(bytes, first * PAGE_SIZE as u64)
                .await
                .map_err(|e| StoreError::io("write", &self.path, e))?;
            Value::Extent {
                first,
                pages,
                len: value.len() as u32,
                lsn: index,
            }
        } else {
            Value::Inline(value)
        };
        let mut slot = Some(Entry {
            key: Key::new(&key),
            version,
            value: stored,
        });
        let old = self
            .run(|st| {
                let entry = slot.take().expect("an entry until it is inserted");
                st.insert(entry, index).map_err(|(miss, entry)| {
                    slot = Some(entry);
                    miss
                })
            })
            .await?;
        if let Some(first) = reserved_first {
            self.state.borrow_mut().reserved.remove(&first);
        }
        // No await since the insert: readers see the tree and the cache change together.
        let place = self.state.borrow().last_place;
        match cached {
            Some(value) => self
                .hot
                .borrow_mut()
                .update(&key, Versioned { version, value }, place),
            None => self.hot.borrow_mut().remove(&key),
        }
        let mut st = self.state.borrow_mut();
        match &old {
            None if key[0] == SPACE_KV => st.key_count += 1,
            None => {}
            Some(old) => {
                if let Value::Extent { first, pages, .. } = old.value {
                    st.free_extent(first, pages);
                }
            }
        }
        Ok((version, old))
    }

    async fn delete(&self, index: u64, key: &[u8]) -> Result<bool, StoreError> {
        let old = self.run(|st| st.remove(key, index)).await?;
        self.hot.borrow_mut().remove(key);
        let mut st = self.state.borrow_mut();
        match old {
            None => Ok(false),
            Some(old) => {
                if key[0] == SPACE_KV {
                    st.key_count -= 1;
                }
                if let Value::Extent { first, pages, .. } = old.value {
                    st.free_extent(first, pages);
                }
                Ok(true)
            }
        }
    }

    async fn current(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .lookup_value(key)
            .await?
            .map(|(entry, value)| (entry.version, value)))
    }

    /// `written`: the extents `write_extents` wrote for this command's pairs.
    async fn apply_command(
        &self,
        index: u64,
        command: Command,
        written: Vec<Option<Value>>,
    ) -> Result<CommandResult, StoreError> {
        let mut written = written.into_iter();
        Ok(match command {
            Command::Put { key, value } => {
                let stored = written.next().flatten();
                let (version, _) = self.put_stored(index, key, value, stored).await?;
                CommandResult::Written { version }
            }
            Command::Delete { key } => CommandResult::Deleted {
                existed: self.delete(index, &key).await?,
            },
            Command::Cas {
                key,
                expected_version,
                value,
            } => {
                let current = self
                    .run(|st| st.lookup(&key))
                    .await?
                    .map_or(0, |e| e.version);
                if current != expected_version {
                    return Ok(CommandResult::VersionMismatch { current });
                }
                match value {
                    Some(value) => {
                        let (version, _) = self.put(index, key, value).await?;
                        CommandResult::Written { version }
                    }
                    None => {
                        self.delete(index, &key).await?;
                        CommandResult::Written { version: 0 }
                    }
                }
            }
            Command::PutMany { pairs } => {
                let mut versions = Vec::with_capacity(pairs.len());
                for (key, value) in pairs {
                    let stored = written.next().flatten();
                    versions.push(self.put_stored(index, key, value, stored).await?.0);
                }
                CommandResult::WrittenMany { versions }
            }
            Command::Increment { key, delta } => {
                let current = match self.current(&key).await? {
                    None => 0,
                    Some((_, value)) => match std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => {
                            return Ok(CommandResult::Refused {
                                reason: "value is not an integer or out of range".into(),
                            })
                        }
                    },
                };
                let Some(value) = current.checked_add(delta) else {
                    return Ok(CommandResult::Refused {
                        reason: "increment or decrement would overflow".into(),
                    });
                };
                self.put(index, key, value.to_string().into_bytes()).await?;
                CommandResult::Integer { value }
            }
            Command::Append { key, value } => {
                let mut joined = self
                    .current(&key)
                    .await?
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                if joined.len() + value.len() > crate::limits::VALUE_SIZE_MAX {
                    return Ok(CommandResult::Refused {
                        reason: "the value would exceed 16 MiB".into(),
                    });
                }
                joined.extend_from_slice(&value);
                let length = joined.len() as i64;
                self.put(index, key, joined).await?;
                CommandResult::Integer { value: length }
            }
            Command::GetAndPut { key, value } => {
                let previous = self.current(&key).await?.map(|(_, v)| v);
                self.put(index, key, value).await?;
                CommandResult::Replaced { previous }
            }
            Command::PutIfExists { key, value } => {
                if self.run(|st| st.lookup(&key)).await?.is_none() {
                    return Ok(CommandResult::Skipped);
                }
                let (version, _) = self.put(index, key, value).await?;
                CommandResult::Written { version }
            }
            Command::Document { body } => self.apply_document(index, &body).await?,
        })
    }

    // ---- checkpoints ----

    /// Seals the current epoch: from now on its pages are copy-on-write, and the plan lists
    /// what the checkpoint must write. Returns None when a checkpoint is already running, a
    /// command is half-applied, or the store is poisoned.
    pub fn seal(&self) -> Option<CheckpointPlan> {
        if self.checkpoint_running.get() || self.in_command.get() || self.poisoned.get() {
            return None;
        }
        let mut st = self.state.borrow_mut();
        // The meta page goes to slot seq % 2, which must not be the slot of the newest
        // durable checkpoint (a torn meta write falls back to it). After a failed checkpoint
        // the next epoch has that parity: skip one (epochs only need to grow).
        let mut seq = st.epoch;
        if let Some(durable) = self.durable.get() {
            if seq % 2 == durable.seq % 2 {
                seq += 1;
            }
        }
        let mut pages: Vec<u64> = st
            .frames
            .iter()
            .filter(|(_, f)| f.dirty)
            .map(|(&id, _)| id)
            .collect();
        pages.sort_unstable();
        // The free list this checkpoint records: what is free now, what waits for a
        // checkpoint, and the pages that will hold the list (free as far as this checkpoint
        // is concerned; kept unused until a newer one is durable).
        let mut free_ids: Vec<u64> = st.free.iter().copied().collect();
        free_ids.extend(st.pending.values().flatten().copied());
        let reserved: Vec<u64> = st
            .reserved
            .iter()
            .flat_map(|(&first, &pages)| first..first + u64::from(pages))
            .collect();
        free_ids.extend(reserved);
        let mut free_pages = Vec::new();
        while free_pages.len() * FREE_IDS_PER_PAGE < free_ids.len() {
            let id = match st.free.pop_first() {
                Some(id) => id,
                None => {
                    st.page_count += 1;
                    let id = st.page_count - 1;
                    free_ids.push(id);
                    id
                }
            };
            free_pages.push(id);
        }
        free_ids.sort_unstable();
        free_ids.dedup();
        let (raft_term, raft_vote) = self.raft_state.get();
        let meta = Meta {
            shard: self.shard,
            seq,
            applied_index: st.applied_index,
            applied_term: st.applied_term,
            partial_commands: st.partial_commands,
            last_version: st.last_version,
            key_count: st.key_count,
            root: st.root,
            height: st.height,
            page_count: st.page_count,
            free_head: free_pages.first().copied().unwrap_or(0),
            free_count: free_ids.len() as u64,
            raft_term,
            raft_vote,
        };
        st.epoch = seq + 1;
        let next_epoch = st.epoch;
        st.pending
            .entry(next_epoch)
            .or_default()
            .extend(free_pages.iter().copied());
        self.checkpoint_running.set(true);
        self.log_appended_at_seal.set(self.log_appended.get());
        Some(CheckpointPlan {
            meta,
            pages,
            free_ids,
            free_pages,
        })
    }

    /// Writes a sealed checkpoint: its pages, its free list, an fdatasync, the meta page and
    /// another fdatasync. `pace` is awaited after each chunk of pages with the count written
    /// so far, to bound the I/O rate. On success the log up to the returned index may go.
    pub async fn write_checkpoint<P, Fut>(
        &self,
        plan: CheckpointPlan,
        mut pace: Option<P>,
    ) -> Result<Checkpointed, StoreError>
    where
        P: FnMut(usize) -> Fut,
        Fut: Future<Output = ()>,
    {
        let result = self.write_plan(&plan, &mut pace).await;
        self.checkpoint_running.set(false);
        self.checkpoint_done.notify();
        if let Err(error) = &result {
            let disk_full = matches!(error, StoreError::DiskFull { .. });
            *self.checkpoint_failure.borrow_mut() = Some((disk_full, error.to_string()));
        }
        result?;
        *self.checkpoint_failure.borrow_mut() = None;
        let seq = plan.meta.seq;
        {
            let mut st = self.state.borrow_mut();
            let released: Vec<u64> = st.pending.range(..=seq).map(|(&e, _)| e).collect();
            for epoch in released {
                if let Some(ids) = st.pending.remove(&epoch) {
                    st.free.extend(ids);
                }
            }
        }
        let done = Checkpointed {
            seq,
            applied_index: plan.meta.applied_index,
            applied_term: plan.meta.applied_term,
        };
        self.durable.set(Some(done));
        self.checkpoints.set(self.checkpoints.get() + 1);
        Ok(done)
    }

    async fn write_plan<P, Fut>(
        &self,
        plan: &CheckpointPlan,
        pace: &mut Option<P>,
    ) -> Result<(), StoreError>
    where
        P: FnMut(usize) -> Fut,
        Fut: Future<Output = ()>,
    {
        const CHUNK: usize = 64;
        let seq = plan.meta.seq;
        self.grow_to(plan.meta.page_count).await?;
        let mut written = 0;
        for chunk in plan.pages.chunks(CHUNK) {
            let mut writes = Vec::with_capacity(chunk.len());
            for &id in chunk {
                let encoded = {
                    let st = self.state.borrow();
                    match st.frames.get(&id) {
                        // Pages of this checkpoint no longer change (copy-on-write), and
                        // nothing evicts a dirty page; a page dropped meanwhile was freed
                        // in the epoch it was made and belongs to no checkpoint.
                        Some(frame) if frame.dirty && frame.epoch <= seq => {
                            let mut bytes = self.file.alloc(PAGE_SIZE);
                            encode_node(&frame.node, id, frame.lsn, frame.epoch, bytes.as_mut());
                            Some(bytes)
                        }
                        _ => None,
                    }
                };
                let Some(bytes) = encoded else { continue };
                writes.push(async move {
                    self.file
                        .write_at(bytes, id * PAGE_SIZE as u64)
                        .await
                        .map_err(|e| StoreError::io("write", &self.path, e))?;
                    let mut st = self.state.borrow_mut();
                    if let Some(frame) = st.frames.get_mut(&id) {
                        if frame.dirty && frame.epoch <= seq {
                            frame.dirty = false;
                            st.dirty -= 1;
                        }
                    }
                    Ok::<(), StoreError>(())
                });
            }
            written += writes.len();
            for result in crate::join::join_all(writes).await {
                result?;
            }
            self.checkpoint_done.notify();
            if let Some(pace) = pace.as_mut() {
                pace(written).await;
            }
        }
        let mut page = vec![0u8; PAGE_SIZE];
        for (i, &id) in plan.free_pages.iter().enumerate() {
            let from = i * FREE_IDS_PER_PAGE;
            let ids = &plan.free_ids[from..(from + FREE_IDS_PER_PAGE).min(plan.free_ids.len())];
            let next = plan.free_pages.get(i + 1).copied().unwrap_or(0);
            encode_free_list(ids, id, next, seq, &mut page);
            write_bytes(&self.file, &self.path, &page, id * PAGE_SIZE as u64).await?;
        }
        self.file
            .sync()
            .await
            .map_err(|e| StoreError::io("fdatasync", &self.path, e))?;
        encode_meta(&plan.meta, &mut page);
        write_bytes(&self.file, &self.path, &page, (seq % 2) * PAGE_SIZE as u64).await?;
        self.file
            .sync()
            .await
            .map_err(|e| StoreError::io("fdatasync", &self.path, e))?;
        Ok(())
    }

    /// Seals and writes a checkpoint at full speed; waits for a running one first.
    pub async fn checkpoint<P, Fut>(
        &self,
        pace: Option<P>,
    ) -> Result<Option<Checkpointed>, StoreError>
    where
        P: FnMut(usize) -> Fut,
        Fut: Future<Output = ()>,
    {
        while self.checkpoint_running.get() {
            self.checkpoint_done.wait().await;
        }
        match self.seal() {
            Some(plan) => self.write_checkpoint(plan, pace).await.map(Some),
            None => Ok(None),
        }
    }
}
