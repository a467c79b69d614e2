//! The B+tree over the buffer pool's pages, and the pool itself.
//!
//! Every operation here is synchronous and runs on [`State`] alone. An operation that needs a
//! page that is not resident returns [`Miss`] *before it changes anything*; the store loads
//! the page and runs the operation again from the root. So on the shard's single thread each
//! tree operation is atomic: a reader never sees a half-done split, and no latch is needed.
//!
//! Copy-on-write: a page written by an earlier epoch (and so part of a checkpoint that is on
//! disk or being written) is never changed in place. Changing it allocates a new page, which
//! the parent then points to; the old page is freed once a checkpoint that no longer needs it
//! is durable. Pages of the current epoch change in place.

use std::collections::{BTreeMap, BTreeSet};

use super::hot::{IdMap, Place};

use super::page::{node_memory, node_size, Entry, Key, Node, PAGE_SIZE, UNDERFLOW_BYTES};
use super::walk_memo::WalkMemo;

/// Levels a root-to-leaf path is made room for at once (a tree of 4 KiB pages is rarely
/// deeper than five).
const PATH_CAPACITY: usize = 8;

/// Pages sampled to measure what a resident page costs in memory.
const POOL_SAMPLE: usize = 256;
/// The pool measures its pages again after this many calls to make room.
const POOL_MEASURE_EVERY: u32 = 1024;

/// What a resident page costs beyond its node: its frame in the map and its clock slot.
const FRAME_OVERHEAD: usize =
    std::mem::size_of::<(u64, Frame)>() - std::mem::size_of::<Node>() + std::mem::size_of::<u64>();

/// A page the operation needs that is not in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Miss(pub u64);

pub struct Frame {
    pub node: Node,
    pub lsn: u64,
    pub epoch: u64,
    pub dirty: bool,
    pub pins: u32,
    pub referenced: bool,
}

/// Everything a shard's store keeps in memory: the pool, the tree's root, the allocator.
pub struct State {
    pub frames: IdMap<Frame>,
    clock: Vec<u64>,
    hand: usize,
    /// Pages the pool holds: its memory budget over what a resident page was last
    /// measured to cost ([`State::fit_budget`]).
    pub capacity: usize,
    /// The pool's memory budget, in bytes.
    pub budget_bytes: usize,
    /// What a resident page costs in memory, as last measured (bytes).
    pub page_memory: usize,
    room_calls: u32,
    pub dirty: usize,
    /// Pages being read, and whether their id was handed out again meanwhile (the read then
    /// returns old bytes and must be dropped).
    pub loading: IdMap<(u32, bool)>,
    pub root: u64,
    pub height: u32,
    /// The epoch pages change in; every page of an earlier epoch is copy-on-write.
    pub epoch: u64,
    pub free: BTreeSet<u64>,
    /// Pages freed in epoch `e`, reusable once checkpoint `e` is durable.
    pub pending: BTreeMap<u64, Vec<u64>>,
    pub page_count: u64,
    pub applied_index: u64,
    pub applied_term: u64,
    pub partial_commands: u32,
    pub last_version: u64,
    pub key_count: u64,
    /// Documents in the tree; None when the checkpoint loaded did not record it.
    pub doc_count: Option<u64>,
    pub evictions: u64,
    pub loads: u64,
    /// Page lookups the pool answered, and those that missed (the operation then waits for
    /// the page and runs again).
    pub pool_hits: u64,
    pub pool_misses: u64,
    /// Where the last `lookup` found its key, or the last `insert` or `replace_in_leaf` put
    /// its entry (leaf 0: not known), for the hot cache's hints.
    pub last_place: Place,
    /// Writes `replace_in_leaf` made.
    pub hinted_writes: u64,
    /// Pages copied in this epoch: the old id → its copy. A hint naming a leaf that a
    /// checkpoint sealed and a later write copied is followed to the copy, so after a
    /// checkpoint each leaf takes one walk down the tree, not one per key (measured: a
    /// quarter of SETs took the walk before). Emptied when the epoch changes.
    pub moved: IdMap<u64>,
    /// Extents written ahead for a batch's puts and not yet in the tree (first page →
    /// pages). A checkpoint records them as free: after a crash nothing refers to them.
    pub reserved: BTreeMap<u64, u32>,
    /// Changes of the tree's shape: pages allocated or freed, entries moved between
    /// siblings. While it holds, a page on a key's path stays on it ([`WalkMemo`]).
    shape: u64,
    /// Where recent lookups stopped for want of a page.
    walk_memo: WalkMemo,
}

fn child_index(keys: &[Key], key: &Key) -> usize {
    keys.partition_point(|k| k <= key)
}

/// The split point of `sizes` that makes the larger half smallest; both halves non-empty.
fn best_split(sizes: &[usize]) -> usize {
    let total: usize = sizes.iter().sum();
    let mut left = 0;
    let mut best = (usize::MAX, 1);
    for (i, s) in sizes.iter().enumerate().take(sizes.len() - 1) {
        left += s;
        let worst = left.max(total - left);
        if worst < best.0 {
            best = (worst, i + 1);
        }
    }
    best.1
}

impl State {
    pub fn new(capacity: usize) -> State {
        State {
            frames: IdMap::default(),
            clock: Vec::new(),
            hand: 0,
            capacity: capacity.max(16),
            budget_bytes: capacity.max(16) * PAGE_SIZE,
            page_memory: PAGE_SIZE,
            room_calls: 0,
            dirty: 0,
            loading: IdMap::default(),
            root: 0,
            height: 0,
            epoch: 1,
            free: BTreeSet::new(),
            pending: BTreeMap::new(),
            page_count: super::page::META_PAGES,
            applied_index: 0,
            applied_term: 0,
            partial_commands: 0,
            last_version: 0,
            key_count: 0,
            doc_count: Some(0),
            evictions: 0,
            loads: 0,
            pool_hits: 0,
            pool_misses: 0,
            last_place: Place::default(),
            hinted_writes: 0,
            moved: IdMap::default(),
            reserved: BTreeMap::new(),
            shape: 0,
            walk_memo: WalkMemo::default(),
        }
    }

    // ---- the pool ----

    pub fn node(&mut self, id: u64) -> Result<&Node, Miss> {
        match self.frames.get_mut(&id) {
            Some(frame) => {
                frame.referenced = true;
                self.pool_hits += 1;
                Ok(&frame.node)
            }
            None => {
                self.pool_misses += 1;
                Err(Miss(id))
            }
        }
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self
            .frames
            .get_mut(&id)
            .expect("a mutable page is resident")
            .node
    }

    /// Adds a page read from disk, unless it is resident already.
    pub fn insert_loaded(&mut self, id: u64, node: Node, lsn: u64, epoch: u64) {
        if self.frames.contains_key(&id) {
            return;
        }
        self.make_room();
        self.insert_frame(id, node, lsn, epoch, false);
    }

    fn insert_frame(&mut self, id: u64, node: Node, lsn: u64, epoch: u64, dirty: bool) {
        if dirty {
            self.dirty += 1;
        }
        let old = self.frames.insert(
            id,
            Frame {
                node,
                lsn,
                epoch,
                dirty,
                pins: 0,
                referenced: true,
            },
        );
        match old {
            Some(old) if old.dirty => self.dirty -= 1,
            Some(_) => {}
            None => self.clock.push(id),
        }
    }

    pub fn pin(&mut self, id: u64) -> bool {
        match self.frames.get_mut(&id) {
            Some(frame) => {
                frame.pins += 1;
                true
            }
            None => false,
        }
    }

    pub fn unpin(&mut self, id: u64) {
        if let Some(frame) = self.frames.get_mut(&id) {
            frame.pins = frame.pins.saturating_sub(1);
        }
    }

    /// Evicts clean, unpinned pages (CLOCK) until the pool is within its budget. Dirty pages
    /// stay until a checkpoint writes them; if every page is dirty or pinned the pool runs
    /// over its budget and the store asks for a checkpoint.
    pub fn make_room(&mut self) {
        self.room_calls = self.room_calls.wrapping_add(1);
        if self.room_calls.is_multiple_of(POOL_MEASURE_EVERY) {
            self.fit_budget();
        }
        let mut budget = self.clock.len() * 2 + 2;
        while self.frames.len() > self.capacity && budget > 0 && !self.clock.is_empty() {
            budget -= 1;
            if self.hand >= self.clock.len() {
                self.hand = 0;
            }
            let id = self.clock[self.hand];
            let evict = match self.frames.get_mut(&id) {
                None => {
                    self.clock.swap_remove(self.hand);
                    continue;
                }
                Some(frame) if frame.dirty || frame.pins > 0 => false,
                Some(frame) if frame.referenced => {
                    frame.referenced = false;
                    false
                }
                Some(_) => true,
            };
            if evict {
                self.frames.remove(&id);
                self.clock.swap_remove(self.hand);
                self.evictions += 1;
            } else {
                self.hand += 1;
            }
        }
        // Ids of frames dropped elsewhere are cleaned out lazily above; keep the vector
        // from growing without bound when that is rare.
        if self.clock.len() > self.frames.len() * 2 + 64 {
            let frames = &self.frames;
            self.clock.retain(|id| frames.contains_key(id));
            self.clock.sort_unstable();
            self.clock.dedup();
            self.hand = 0;
        }
    }

    /// Sets how many pages the pool holds so that their memory fits its budget: measures a
    /// sample of resident pages (their decoded entries, keys and values, and the frame) and
    /// divides. A page costs 0.6-1.9 times its 4 KiB in memory depending on its entries, so
    /// a count of pages alone let the soak's pool (documents and an index) hold ~170 MiB
    /// more than `--cache-size` (docs/benchmarks.md). At most twice the pages the budget
    /// holds at 4 KiB each, never fewer than 16, and an eighth more or less per measure.
    pub fn fit_budget(&mut self) {
        let sample = self.clock.len().min(POOL_SAMPLE);
        if sample == 0 {
            return;
        }
        let step = self.clock.len() / sample;
        let offset = self.room_calls as usize;
        let (mut bytes, mut seen) = (0, 0);
        for i in 0..sample {
            let id = self.clock[(i * step + offset) % self.clock.len()];
            if let Some(frame) = self.frames.get(&id) {
                bytes += node_memory(&frame.node) + FRAME_OVERHEAD;
                seen += 1;
            }
        }
        if seen == 0 {
            return;
        }
        self.page_memory = (bytes / seen).max(1);
        let nominal = self.budget_bytes / PAGE_SIZE;
        let fitted = (self.budget_bytes / self.page_memory).clamp(16, nominal.max(16) * 2);
        // An eighth at a time: a sample that swings (the mix of pages changing) moves the
        // pool gradually, not by half in one step, which would evict at once and, with
        // dirty pages over the lowered thresholds, stall writes behind a checkpoint.
        let step = (self.capacity / 8).max(1);
        self.capacity = fitted.clamp(self.capacity.saturating_sub(step), self.capacity + step);
    }

    // ---- the allocator ----

    fn taken(&mut self, id: u64) {
        if let Some(loading) = self.loading.get_mut(&id) {
            loading.1 = true;
        }
    }

    pub fn alloc_page(&mut self) -> u64 {
        self.shape += 1;
        let id = match self.free.pop_first() {
            Some(id) => id,
            None => {
                self.page_count += 1;
                self.page_count - 1
            }
        };
        self.taken(id);
        id
    }

    /// `n` contiguous pages: a run from the free set if there is one, else the file's end.
    pub fn alloc_extent(&mut self, n: u32) -> u64 {
        let n = u64::from(n);
        let mut run_start = 0;
        let mut run_len = 0;
        let mut found = None;
        for &id in self.free.iter() {
            if run_len > 0 && id == run_start + run_len {
                run_len += 1;
            } else {
                run_start = id;
                run_len = 1;
            }
            if run_len == n {
                found = Some(run_start);
                break;
            }
        }
        let first = match found {
            Some(first) => {
                for id in first..first + n {
                    self.free.remove(&id);
                }
                first
            }
            None => {
                self.page_count += n;
                self.page_count - n
            }
        };
        for id in first..first + n {
            self.taken(id);
        }
        first
    }

    /// Frees a tree page. A page of the current epoch is in no checkpoint and is reusable at
    /// once; an older one waits for the next durable checkpoint. A dirty older page stays in
    /// the pool: the checkpoint being written still needs it.
    pub fn free_page(&mut self, id: u64) {
        self.shape += 1;
        let (epoch, dirty) = match self.frames.get(&id) {
            Some(frame) => (frame.epoch, frame.dirty),
            None => (0, false),
        };
        if epoch == self.epoch {
            if let Some(frame) = self.frames.remove(&id) {
                if frame.dirty {
                    self.dirty -= 1;
                }
            }
            self.free.insert(id);
        } else {
            if !dirty {
                self.frames.remove(&id);
            }
            self.pending.entry(self.epoch).or_default().push(id);
        }
    }

    pub fn free_extent(&mut self, first: u64, pages: u32) {
        let bucket = self.pending.entry(self.epoch).or_default();
        bucket.extend(first..first + u64::from(pages));
    }

    /// Makes page `id` changeable in this epoch and records `lsn` on it; returns its id, new
    /// if the page had to be copied.
    fn make_mut(&mut self, id: u64, lsn: u64) -> u64 {
        let epoch = self.epoch;
        let frame = self.frames.get_mut(&id).expect("the page is resident");
        if frame.epoch == epoch {
            if !frame.dirty {
                frame.dirty = true;
                self.dirty += 1;
            }
            frame.lsn = lsn;
            return id;
        }
        let node = frame.node.clone();
        let copy = self.alloc_page();
        self.insert_frame(copy, node, lsn, epoch, true);
        self.free_page(id);
        self.moved.insert(id, copy);
        copy
    }

    fn new_page(&mut self, node: Node, lsn: u64) -> u64 {
        let id = self.alloc_page();
        self.insert_frame(id, node, lsn, self.epoch, true);
        id
    }

    // ---- reads ----

    /// The entry for `key`. The walk starts where this key's last walk stopped for want of a page, if the tree has
    /// kept its shape since ([`WalkMemo`]); a walk that stops now is remembered.
    pub fn lookup(&mut self, key: &[u8]) -> Result<Option<Entry>, Miss> {
        if self.root == 0 {
            return Ok(None);
        }
        let bytes = key;
        let key = &Key::new(key);
        let mut id = self
            .walk_memo
            .start(bytes, self.shape, self.root)
            .unwrap_or(self.root);
        loop {
            let node = match self.node(id) {
                Ok(node) => node,
                Err(miss) => {
                    self.walk_memo.record(bytes, id, self.shape, self.root);
                    return Err(miss);
                }
            };
            match node {
                Node::Inner { keys, children } => id = children[child_index(keys, key)],
                Node::Leaf(entries) => {
                    let found = entries.binary_search_by(|e| e.key.cmp(key)).ok();
                    let entry = found.map(|i| entries[i].clone());
                    self.last_place = Place {
                        leaf: found.map_or(0, |_| id),
                        slot: found.unwrap_or(0) as u32,
                    };
                    return Ok(entry);
                }
            }
        }
    }

    /// Replaces the entry for `entry.key` in the leaf `place` names, if that is a leaf of this
    /// epoch holding the key and the new entry keeps it within its size bounds: then nothing
    /// above the leaf changes, and the walk down the tree is not needed. The slot is tried
    /// first, then the leaf is searched. Hands the entry back when any of that does not hold
    /// (the caller then inserts the usual way).
    ///
    /// Why the checks suffice: keys are unique in the tree, and every resident page of the
    /// current epoch is in the tree (a page freed in this epoch leaves the pool at once, see
    /// `free_page`), so a current-epoch leaf that holds the key is the key's leaf. The same
    /// checks make following `moved` safe, however stale the forward.
    pub fn replace_in_leaf(
        &mut self,
        place: Place,
        entry: Entry,
        lsn: u64,
    ) -> Result<Entry, Entry> {
        let leaf = self.moved.get(&place.leaf).copied().unwrap_or(place.leaf);
        let epoch = self.epoch;
        let Some(frame) = self.frames.get_mut(&leaf) else {
            return Err(entry);
        };
        if frame.epoch != epoch {
            return Err(entry);
        }
        let Node::Leaf(entries) = &mut frame.node else {
            return Err(entry);
        };
        let slot = place.slot as usize;
        let i = if entries.get(slot).is_some_and(|e| e.key == entry.key) {
            slot
        } else {
            match entries.binary_search_by(|e| e.key.cmp(&entry.key)) {
                Ok(i) => i,
                Err(_) => return Err(entry),
            }
        };
        let (old_len, new_len) = (entries[i].encoded_len(), entry.encoded_len());
        if old_len != new_len {
            let after = node_size(&frame.node) - old_len + new_len;
            let root = leaf == self.root;
            if after > PAGE_SIZE || after < UNDERFLOW_BYTES && !root {
                return Err(entry);
            }
        }
        let Node::Leaf(entries) = &mut frame.node else {
            unreachable!("checked above");
        };
        let old = std::mem::replace(&mut entries[i], entry);
        frame.lsn = lsn;
        frame.referenced = true;
        if !frame.dirty {
            frame.dirty = true;
            self.dirty += 1;
        }
        self.last_place = Place {
            leaf,
            slot: i as u32,
        };
        self.hinted_writes += 1;
        Ok(old)
    }

    /// The entries of the leaf holding `start` from `start` on (at most `limit`, and only
    /// those below `end`), and the first key of the next leaf, if there is one.
    pub fn scan_leaf(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<Vec<u8>>), Miss> {
        if self.root == 0 {
            return Ok((Vec::new(), None));
        }
        let mut id = self.root;
        let mut fence: Option<Vec<u8>> = None;
        loop {
            match self.node(id)? {
                Node::Inner { keys, children } => {
                    let i = child_index(keys, &Key::new(start));
                    if i < keys.len() {
                        fence = Some(keys[i].to_vec());
                    }
                    id = children[i];
                }
                Node::Leaf(entries) => {
                    let from = entries.partition_point(|e| e.key.as_slice() < start);
                    let out: Vec<Entry> = entries[from..]
                        .iter()
                        .take(limit)
                        .take_while(|e| end.is_none_or(|end| e.key.as_slice() < end))
                        .cloned()
                        .collect();
                    return Ok((out, fence));
                }
            }
        }
    }

    /// Root-to-leaf page ids and the child index taken at each inner level.
    fn descend(&mut self, key: &Key) -> Result<(Vec<u64>, Vec<usize>), Miss> {
        // Room for the whole path up front: growing it was 40% of the reallocations of a
        // SET at pipeline 1 (perf probe on mi_realloc_aligned).
        let mut ids = Vec::with_capacity(PATH_CAPACITY);
        ids.push(self.root);
        let mut slots = Vec::with_capacity(PATH_CAPACITY);
        loop {
            let id = *ids.last().expect("the path is never empty");
            match self.node(id)? {
                Node::Inner { keys, children } => {
                    let i = child_index(keys, key);
                    slots.push(i);
                    ids.push(children[i]);
                }
                Node::Leaf(_) => return Ok((ids, slots)),
            }
        }
    }

    /// Copies the path top-down into this epoch; returns the new ids.
    fn cow_path(&mut self, ids: &[u64], slots: &[usize], lsn: u64) -> Vec<u64> {
        let mut out = Vec::with_capacity(ids.len());
        let root = self.make_mut(ids[0], lsn);
        self.root = root;
        out.push(root);
        for (level, &id) in ids.iter().enumerate().skip(1) {
            let new = self.make_mut(id, lsn);
            let parent = out[level - 1];
            if let Node::Inner { children, .. } = self.node_mut(parent) {
                children[slots[level - 1]] = new;
            }
            out.push(new);
        }
        out
    }

    // ---- writes ----

    /// Inserts or replaces `entry`; returns the entry it replaced. On a miss the entry is
    /// handed back with it, for the retry.
    pub fn insert(&mut self, entry: Entry, lsn: u64) -> Result<Option<Entry>, (Miss, Entry)> {
        if self.root == 0 {
            self.root = self.new_page(Node::Leaf(vec![entry]), lsn);
            self.height = 1;
            self.last_place = Place {
                leaf: self.root,
                slot: 0,
            };
            return Ok(None);
        }
        let key = entry.key.clone();
        let (ids, slots) = match self.descend(&entry.key) {
            Ok(path) => path,
            Err(miss) => return Err((miss, entry)),
        };
        let leaf = *ids.last().expect("a leaf");
        let (found, after) = match self.node(leaf) {
            Ok(node @ Node::Leaf(entries)) => {
                let found = entries.binary_search_by(|e| e.key.cmp(&entry.key));
                let replaced = found.map_or(0, |i| entries[i].encoded_len());
                (found, node_size(node) - replaced + entry.encoded_len())
            }
            Ok(Node::Inner { .. }) => unreachable!("descend ends at a leaf"),
            Err(miss) => return Err((miss, entry)),
        };
        if after < UNDERFLOW_BYTES {
            // A smaller value can leave the leaf underfull.
            if let Err(miss) = self.ensure_siblings(&ids, &slots) {
                return Err((miss, entry));
            }
        }
        // Nothing can miss from here on: the path is resident and nothing is evicted while
        // the operation runs.
        let path = self.cow_path(&ids, &slots, lsn);
        let leaf = *path.last().expect("a leaf");
        // The copy holds the same entries in the same order: `found` still holds.
        let old = match self.node_mut(leaf) {
            Node::Leaf(entries) => match found {
                Ok(i) => Some(std::mem::replace(&mut entries[i], entry)),
                Err(i) => {
                    entries.insert(i, entry);
                    None
                }
            },
            Node::Inner { .. } => unreachable!("descend ends at a leaf"),
        };
        self.fix_upwards(&path, &slots, lsn, Some(after));
        // Where the entry ended up, for the hot cache: the leaf, unless it split or merged.
        self.last_place = match self.frames.get(&leaf).map(|frame| &frame.node) {
            Some(Node::Leaf(entries)) => match entries.binary_search_by(|e| e.key.cmp(&key)) {
                Ok(slot) => Place {
                    leaf,
                    slot: slot as u32,
                },
                Err(_) => Place::default(),
            },
            _ => Place::default(),
        };
        Ok(old)
    }

    /// Removes `key`; returns its entry.
    pub fn remove(&mut self, key: &[u8], lsn: u64) -> Result<Option<Entry>, Miss> {
        if self.root == 0 {
            return Ok(None);
        }
        let key = &Key::new(key);
        let (ids, slots) = self.descend(key)?;
        let leaf = *ids.last().expect("a leaf");
        let (found, underflows) = match self.node(leaf)? {
            node @ Node::Leaf(entries) => {
                let Ok(i) = entries.binary_search_by(|e| e.key.cmp(key)) else {
                    return Ok(None);
                };
                (
                    i,
                    node_size(node) - entries[i].encoded_len() < UNDERFLOW_BYTES,
                )
            }
            Node::Inner { .. } => unreachable!("descend ends at a leaf"),
        };
        if underflows {
            self.ensure_siblings(&ids, &slots)?;
        }
        let path = self.cow_path(&ids, &slots, lsn);
        let leaf = *path.last().expect("a leaf");
        // The copy holds the same entries in the same order: `found` still holds.
        let old = match self.node_mut(leaf) {
            Node::Leaf(entries) => entries.remove(found),
            Node::Inner { .. } => unreachable!(),
        };
        self.fix_upwards(&path, &slots, lsn, None);
        Ok(Some(old))
    }

    /// A rebalance may climb to the root; it needs the sibling at every level resident.
    fn ensure_siblings(&mut self, ids: &[u64], slots: &[usize]) -> Result<(), Miss> {
        for level in 1..ids.len() {
            let sibling = match self.node(ids[level - 1])? {
                Node::Inner { children, .. } => {
                    let slot = slots[level - 1];
                    if slot > 0 {
                        children[slot - 1]
                    } else {
                        children[slot + 1]
                    }
                }
                Node::Leaf(_) => unreachable!("inner levels are inner"),
            };
            self.node(sibling)?;
        }
        Ok(())
    }

    /// Splits overfull and rebalances underfull nodes from the leaf up, then shrinks or
    /// grows the root.
    /// `leaf_size`: the leaf's size when the caller knows it (it is the path's last node).
    fn fix_upwards(&mut self, path: &[u64], slots: &[usize], lsn: u64, leaf_size: Option<usize>) {
        for level in (0..path.len()).rev() {
            let id = path[level];
            let Some(frame) = self.frames.get(&id) else {
                continue; // merged into its left sibling below
            };
            let size = match leaf_size {
                Some(size) if level == path.len() - 1 => {
                    debug_assert_eq!(size, node_size(&frame.node));
                    size
                }
                _ => node_size(&frame.node),
            };
            if (UNDERFLOW_BYTES..=PAGE_SIZE).contains(&size) || level == 0 && size <= PAGE_SIZE {
                // Nothing to fix here, so nothing changed above (copy-on-write only
                // repointed the parents): stop climbing.
                break;
            }
            if size > PAGE_SIZE {
                let (separator, right) = self.split(id, lsn);
                if level == 0 {
                    self.root = self.new_page(
                        Node::Inner {
                            keys: vec![separator],
                            children: vec![id, right],
                        },
                        lsn,
                    );
                    self.height += 1;
                } else if let Node::Inner { keys, children } = self.node_mut(path[level - 1]) {
                    let slot = slots[level - 1];
                    keys.insert(slot, separator);
                    children.insert(slot + 1, right);
                }
            } else if size < UNDERFLOW_BYTES && level > 0 {
                self.rebalance(path[level - 1], slots[level - 1], lsn);
            }
        }
        self.shrink_root();
    }

    /// Splits page `id` in two; returns the separator and the new right page.
    fn split(&mut self, id: u64, lsn: u64) -> (Key, u64) {
        let (separator, right) = split_in_two(self.node_mut(id));
        (separator, self.new_page(right, lsn))
    }

    /// Merges the child at `slot` of `parent` with a sibling, or moves entries over from
    /// it when both do not fit one page.
    fn rebalance(&mut self, parent: u64, slot: usize, lsn: u64) {
        let (left_slot, child_count) = match self.node_mut(parent) {
            Node::Inner { children, .. } => {
                (if slot > 0 { slot - 1 } else { slot }, children.len())
            }
            Node::Leaf(_) => unreachable!("parents are inner nodes"),
        };
        if child_count < 2 {
            return;
        }
        let (left_id, right_id, separator) = match self.node_mut(parent) {
            Node::Inner { keys, children } => (
                children[left_slot],
                children[left_slot + 1],
                keys[left_slot].clone(),
            ),
            Node::Leaf(_) => unreachable!(),
        };
        let left = self.make_mut(left_id, lsn);
        let right = self.make_mut(right_id, lsn);
        let right_node = std::mem::replace(self.node_mut(right), Node::Leaf(Vec::new()));
        let merged = match (self.node_mut(left), right_node) {
            (Node::Leaf(l), Node::Leaf(r)) => {
                l.extend(r);
                true
            }
            (
                Node::Inner { keys, children },
                Node::Inner {
                    keys: rk,
                    children: rc,
                },
            ) => {
                keys.push(separator);
                keys.extend(rk);
                children.extend(rc);
                true
            }
            _ => false,
        };
        debug_assert!(merged, "siblings are at the same level");
        if node_size(self.node_mut(left)) <= PAGE_SIZE {
            // One page holds both: drop the right one.
            self.free_page(right);
            if let Node::Inner { keys, children } = self.node_mut(parent) {
                keys.remove(left_slot);
                children.remove(left_slot + 1);
                children[left_slot] = left;
            }
            return;
        }
        // Too big for one page: split the combined node at its best point instead. Entries
        // move between two pages that stay: a change of shape.
        self.shape += 1;
        let (new_separator, moved) = split_in_two(self.node_mut(left));
        *self.node_mut(right) = moved;
        if let Node::Inner { keys, children } = self.node_mut(parent) {
            keys[left_slot] = new_separator;
            children[left_slot] = left;
            children[left_slot + 1] = right;
        }
    }

    fn shrink_root(&mut self) {
        loop {
            let root = self.root;
            let replacement = match self.frames.get(&root).map(|f| &f.node) {
                Some(Node::Inner { keys, children }) if keys.is_empty() => children[0],
                Some(Node::Leaf(entries)) if entries.is_empty() => 0,
                _ => return,
            };
            self.free_page(root);
            self.root = replacement;
            self.height -= 1;
            if replacement == 0 {
                return;
            }
        }
    }
}

/// Splits `node` at the point that makes the larger half smallest: the left half stays in
/// `node`; returns the separator and the right half. An inner node's middle key moves up.
fn split_in_two(node: &mut Node) -> (Key, Node) {
    match node {
        Node::Leaf(entries) => {
            let sizes: Vec<usize> = entries.iter().map(Entry::encoded_len).collect();
            let right = entries.split_off(best_split(&sizes));
            (right[0].key.clone(), Node::Leaf(right))
        }
        Node::Inner { keys, children } => {
            let sizes: Vec<usize> = keys.iter().map(|k| k.len() + 10).collect();
            let at = best_split(&sizes);
            let mut right_keys = keys.split_off(at);
            let separator = right_keys.remove(0);
            let right = Node::Inner {
                keys: right_keys,
                children: children.split_off(at + 1),
            };
            (separator, right)
        }
    }
}

/// Whether `value` must go to an extent.
pub fn needs_extent(key: &[u8], value: &[u8]) -> bool {
    // The encoded length of an inline entry (see `Entry::encoded_len`).
    2 + 1 + 8 + key.len() + 4 + value.len() > super::page::INLINE_ENTRY_MAX
}
