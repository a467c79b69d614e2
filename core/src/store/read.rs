//! Reads: running a tree operation, with the page reads it misses, until it completes, and
//! the point reads and scans of key-value pairs built on it. Writes and document commands
//! reach the tree through `run` too, so page loading lives in one place below them.

use super::page::{decode_extent, decode_node, Entry, Value, PAGE_SIZE};
use super::tree::{Miss, State};
use super::{page, read_bytes, PagedStore, StoreError, PREFERRED_LEADER, SPACE_CLUSTER, SPACE_KV};
use crate::log::LogFile;
use crate::state::Versioned;

/// Pages an MGET reads from the disk at once.
const LOADS_IN_FLIGHT: usize = 128;

/// The tree key of the key-value key `key`.
pub(super) fn kv_tree_key(key: &[u8]) -> Vec<u8> {
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

/// Whether a tree walk waits until no command is half applied ([`PagedStore::run_in`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Any time: the walks of applying, and reads that need no more.
    Any,
    /// Only with no command half applied: the key-value reads clients make.
    Settled,
}

impl<F: LogFile> PagedStore<F> {
    pub(super) fn corrupt(&self, e: page::PageError) -> StoreError {
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
        // Decoded where the disk put the bytes (no copy), before knowing whether it is
        // still wanted: rarely not.
        let read = self
            .file
            .read_with(id * PAGE_SIZE as u64, PAGE_SIZE, |bytes| {
                decode_node(bytes, id)
            })
            .await
            .map_err(|e| StoreError::io("read", &self.path, e));
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
        let decoded = read?;
        st.loads += 1;
        if stale || st.frames.contains_key(&id) {
            return Ok(());
        }
        let (node, header) = decoded.map_err(|e| self.corrupt(e))?;
        st.insert_loaded(id, node, header.lsn, header.epoch);
        Ok(())
    }

    /// Runs a tree operation, loading what it misses, until it completes. Pages it loaded
    /// stay pinned until then, so each retry gets further.
    pub(super) async fn run<T>(
        &self,
        op: impl FnMut(&mut State) -> Result<T, Miss>,
    ) -> Result<T, StoreError> {
        self.run_in(Walk::Any, op).await
    }

    /// Waits until no command is half applied. A read that walks the tree after this with no
    /// await in between sees every command whole or not at all: a command that waits for a
    /// page in the middle (an MSET whose leaves left the pool) lets other tasks run then.
    pub(super) async fn settled(&self) {
        while self.in_command.get() {
            self.command_done.wait().await;
        }
    }

    /// `run`, each attempt made when no command is half applied if `walk` says so. Only
    /// reads outside applying may wait: a command's own walks run half applied.
    async fn run_in<T>(
        &self,
        walk: Walk,
        mut op: impl FnMut(&mut State) -> Result<T, Miss>,
    ) -> Result<T, StoreError> {
        self.run_loading(walk, |st, missed| match op(st) {
            Ok(value) => Some(value),
            Err(Miss(id)) => {
                missed.push(id);
                None
            }
        })
        .await
    }

    /// Runs `op` until it completes (Some). Each time it does not, it has named the pages it
    /// missed: they are loaded, up to [`LOADS_IN_FLIGHT`] at once, and stay pinned until
    /// then, so each retry gets further.
    async fn run_loading<T>(
        &self,
        walk: Walk,
        mut op: impl FnMut(&mut State, &mut Vec<u64>) -> Option<T>,
    ) -> Result<T, StoreError> {
        let mut pinned: Vec<u64> = Vec::new();
        let mut missed: Vec<u64> = Vec::new();
        let result = 'run: loop {
            if walk == Walk::Settled {
                self.settled().await;
            }
            missed.clear();
            if let Some(value) = op(&mut self.state.borrow_mut(), &mut missed) {
                break Ok(value);
            }
            assert!(
                !missed.is_empty(),
                "an operation that did not finish missed a page"
            );
            missed.sort_unstable();
            missed.dedup();
            for chunk in missed.chunks(LOADS_IN_FLIGHT) {
                let loads = chunk
                    .iter()
                    .map(|&id| async move { (id, self.load(id).await) });
                for (id, loaded) in futures_util::future::join_all(loads).await {
                    if let Err(e) = loaded {
                        break 'run Err(e);
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
    pub(super) async fn value_of(
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
    /// The shard's preferred leader as `Command::SetPreferredLeader` recorded it (None:
    /// never set). Read from the tree once, then kept in step by the command.
    pub async fn preferred_leader(&self) -> Result<Option<u64>, StoreError> {
        if let Some(known) = self.preferred_leader.get() {
            return Ok(known);
        }
        let found = self
            .lookup_value(&[SPACE_CLUSTER, PREFERRED_LEADER])
            .await?
            .map(|(_, value)| {
                value
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .ok_or_else(|| StoreError::Corrupt {
                        shard: self.shard,
                        path: self.path.clone(),
                        page: 0,
                        detail: format!("a preferred leader of {} bytes", value.len()),
                    })
            })
            .transpose()?;
        // A command applied while the tree was read is newer than what was read.
        if self.preferred_leader.get().is_none() {
            self.preferred_leader.set(Some(found));
        }
        Ok(self.preferred_leader.get().flatten())
    }

    pub(super) async fn lookup_value(
        &self,
        key: &[u8],
    ) -> Result<Option<(Entry, Vec<u8>)>, StoreError> {
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

    /// Whether a command is between its first and last change of the tree: a read now
    /// could see a multi-key write half done.
    pub fn is_applying_command(&self) -> bool {
        self.in_command.get()
    }

    /// Answers a point read from the pool alone: None when it needs the disk (a page that is
    /// not cached, or a value in an extent).
    pub fn try_get(&self, key: &[u8]) -> Option<Option<Versioned>> {
        with_kv_key(key, |key| self.try_get_tree(key))
    }

    /// Like `try_get`, lending the value to `f` (None: not found) instead of copying it out
    /// of the hot-key cache; None when the read needs the disk (`f` is then not called).
    pub fn try_get_with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Versioned>) -> R,
    ) -> Option<R> {
        with_kv_key(key, |key| self.try_get_tree_with(key, f))
    }

    pub(super) fn try_get_tree(&self, key: &[u8]) -> Option<Option<Versioned>> {
        self.try_get_tree_with(key, |found| found.cloned())
    }

    fn try_get_tree_with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Versioned>) -> R,
    ) -> Option<R> {
        let mut hot = self.hot.borrow_mut();
        let mut f = Some(f);
        let lend = |value: &Versioned| (f.take().expect("called once"))(Some(value));
        if let Some(out) = hot.get_with(key, lend) {
            return Some(out);
        }
        let f = f.expect("not called on a miss");
        let mut st = self.state.borrow_mut();
        match st.lookup(key) {
            Ok(None) => Some(f(None)),
            Ok(Some(Entry {
                version,
                value: Value::Inline(value),
                ..
            })) => {
                let found = Versioned { version, value };
                hot.put(key, &found, st.last_place);
                Some(f(Some(&found)))
            }
            Ok(Some(_)) | Err(Miss(_)) => None,
        }
    }

    /// A key's value, reading pages as needed; never from the middle of a command.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.get_tree_in(&kv_tree_key(key), Walk::Settled).await
    }

    pub(super) async fn get_tree(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.get_tree_in(key, Walk::Any).await
    }

    async fn get_tree_in(&self, key: &[u8], walk: Walk) -> Result<Option<Versioned>, StoreError> {
        if walk == Walk::Settled {
            self.settled().await;
        }
        if let Some(value) = self.hot.borrow_mut().get(key) {
            return Ok(Some(value));
        }
        // An inline value moves out of the entry the lookup copied (`lookup_value` would
        // copy it once more).
        match self.run_in(walk, |st| st.lookup(key)).await? {
            None => return Ok(None),
            Some(Entry {
                version,
                value: Value::Inline(value),
                ..
            }) => return Ok(Some(Versioned { version, value })),
            Some(_) => {}
        }
        // In an extent: read it, looking the key up again if it is rewritten meanwhile.
        Ok(self
            .lookup_value(key)
            .await?
            .map(|(entry, value)| Versioned {
                version: entry.version,
                value,
            }))
    }

    /// Several keys' values as of one moment (an MGET): never from the middle of a command,
    /// and no command applied between reading the first key and the last. The pages the
    /// keys need are loaded, many at once, and pinned, until one pass over all the keys with
    /// no await finds every one in the pool. A value in an extent is read after that pass,
    /// and the whole read starts again if the extent was rewritten meanwhile.
    pub async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Versioned>>, StoreError> {
        let tree_keys: Vec<Vec<u8>> = keys.iter().map(|k| kv_tree_key(k)).collect();
        let mut last_error = None;
        for _ in 0..3 {
            let found = self.find_many(&tree_keys).await?;
            let mut values = Vec::with_capacity(found.len());
            for found in found {
                match found {
                    Ok(value) => values.push(value),
                    Err(entry) => match self.value_of(&entry).await? {
                        Ok(value) => values.push(Some(Versioned {
                            version: entry.version,
                            value,
                        })),
                        Err(e) => {
                            last_error = Some(e);
                            break;
                        }
                    },
                }
            }
            if values.len() == tree_keys.len() {
                return Ok(values);
            }
        }
        Err(self.corrupt(last_error.expect("three failed attempts")))
    }

    /// The one pass of `get_many`: each key's value, or its entry when the value is in an
    /// extent.
    async fn find_many(
        &self,
        tree_keys: &[Vec<u8>],
    ) -> Result<Vec<Result<Option<Versioned>, Entry>>, StoreError> {
        self.run_loading(Walk::Settled, |st, missed| {
            let mut hot = self.hot.borrow_mut();
            let mut found = Vec::with_capacity(tree_keys.len());
            for key in tree_keys {
                if let Some(value) = hot.get(key) {
                    found.push(Ok(Some(value)));
                    continue;
                }
                match st.lookup(key) {
                    Ok(None) => found.push(Ok(None)),
                    Ok(Some(Entry {
                        version,
                        value: Value::Inline(value),
                        ..
                    })) => found.push(Ok(Some(Versioned { version, value }))),
                    Ok(Some(entry)) => found.push(Err(entry)),
                    Err(Miss(id)) => missed.push(id),
                }
            }
            missed.is_empty().then_some(found)
        })
        .await
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
            .scan_tree_in(&kv_tree_key(start), Some(&end), limit, Walk::Settled)
            .await?;
        for (key, _) in &mut pairs {
            key.remove(0);
        }
        Ok(pairs)
    }

    /// Up to `limit` entries of the tree with keys in `[start, end)`, in key order.
    pub(super) async fn scan_tree(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.scan_tree_in(start, end, limit, Walk::Any).await
    }

    /// `scan_tree`, each leaf read when no command is half applied if `walk` says so. A
    /// scan reads leaf by leaf, so it is not one moment's view: like Redis's SCAN, a write
    /// applied while it runs may show in its later leaves only (docs/protocol.md).
    async fn scan_tree_in(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        walk: Walk,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut from = start.to_vec();
        while out.len() < limit {
            let want = limit - out.len();
            let (entries, next) = self
                .run_in(walk, |st| st.scan_leaf(&from, end, want))
                .await?;
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
}
