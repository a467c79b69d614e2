//! Changes to one key of the tree: the primitives key-value and document commands are made
//! of. Each keeps the hot-key cache, the key count and the extents' pages in step with the
//! tree, so neither a reader nor the next checkpoint sees them disagree.

use super::page::{encode_extent, extent_pages, Entry, Key, Value, PAGE_SIZE};
use super::tree::needs_extent;
use super::{hot, PagedStore, StoreError, SPACE_DOC, SPACE_KV};
use crate::log::LogFile;
use crate::state::Versioned;

impl<F: LogFile> PagedStore<F> {
    /// The version a write of the current command takes: the command's own (ADR 0023).
    fn next_version(&self) -> u64 {
        let version = self.command_version.get();
        assert!(version != 0, "writes happen inside a command being applied");
        version
    }

    /// Moves the current command (or transaction part) to `version`, which may lie below
    /// the last one (a participant's part of a transaction decided elsewhere).
    pub(super) fn fix_version(&self, version: u64) {
        assert!(version != 0);
        let mut st = self.state.borrow_mut();
        st.last_version = st.last_version.max(version);
        self.command_version.set(version);
    }

    /// The version of the command being applied.
    pub(super) fn command_version(&self) -> u64 {
        self.command_version.get()
    }

    /// Stores `value` under `key` with a new version; returns the version and the value it
    /// replaced (read only when `want_previous`).
    pub(super) async fn put(
        &self,
        index: u64,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(u64, Option<Entry>), StoreError> {
        self.put_stored(index, key, value, None).await
    }

    /// Like `put`, with the value's extent already written when `stored` is given.
    pub(super) async fn put_stored(
        &self,
        index: u64,
        key: Vec<u8>,
        value: Vec<u8>,
        stored: Option<Value>,
    ) -> Result<(u64, Option<Entry>), StoreError> {
        let version = self.next_version();
        // What the hot-key cache must say once the tree does, on the usual path: a copy of
        // the value (a write through the cache copies it into the cached value instead).
        let mut cached = None;
        let mut value = value;
        // A key the hot cache knows: write to the place it names, without walking the tree.
        // No await on this path, so the cache and the tree change together.
        if value.len() <= hot::HOT_VALUE_MAX && !needs_extent(&key, &value) {
            let mut st = self.state.borrow_mut();
            let mut hot = self.hot.borrow_mut();
            if let Some(place) = hot.place_of(&key) {
                // The cache takes the bytes first (into its own allocation), the leaf the
                // value itself; if the leaf cannot take it here the key leaves the cache
                // at once, so that the cache never disagrees with the tree.
                hot.write_young(&key, version, &value);
                let entry = Entry {
                    key: Key::new(&key),
                    version,
                    value: Value::Inline(value),
                };
                match st.replace_in_leaf(place, entry, index) {
                    Ok(old) => {
                        let place = st.last_place;
                        hot.set_place(&key, place);
                        drop(hot);
                        self.let_go(&mut st, &key, &old);
                        return Ok((version, Some(old)));
                    }
                    Err(entry) => {
                        hot.remove(&key);
                        let Value::Inline(back) = entry.value else {
                            unreachable!("an inline entry comes back inline")
                        };
                        value = back;
                    }
                }
            }
            drop((st, hot));
            cached = Some(value.clone());
        } else if value.len() <= hot::HOT_VALUE_MAX {
            cached = Some(value.clone());
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
            None if key[0] == SPACE_DOC => st.doc_count = st.doc_count.map(|n| n + 1),
            None => {}
            Some(old) => self.let_go(&mut st, &key, old),
        }
        Ok((version, old))
    }

    /// Lets go of an entry a write replaced or deleted: into the version history while a
    /// snapshot is open (its extent kept from reuse until the history drops it), else its
    /// extent's pages are freed.
    fn let_go(&self, st: &mut super::tree::State, key: &[u8], old: &Entry) {
        let mut history = self.history.borrow_mut();
        let kept = if history.recording() && key[0] != super::SPACE_CLUSTER {
            history.record(
                key,
                super::versions::Old {
                    version: old.version,
                    replaced_at: self.command_version.get(),
                    value: old.value.clone(),
                },
            )
        } else {
            super::versions::Kept::No
        };
        if let Value::Extent { first, pages, .. } = old.value {
            match kept {
                // A checkpoint records it as free (after a crash no snapshot needs it).
                super::versions::Kept::Yes => {
                    st.reserved.insert(first, pages);
                }
                super::versions::Kept::No => st.free_extent(first, pages),
            }
        }
    }

    pub(super) async fn delete(&self, index: u64, key: &[u8]) -> Result<bool, StoreError> {
        let old = self.run(|st| st.remove(key, index)).await?;
        self.hot.borrow_mut().remove(key);
        let mut st = self.state.borrow_mut();
        match old {
            None => Ok(false),
            Some(old) => {
                if key[0] == SPACE_KV {
                    st.key_count -= 1;
                }
                if key[0] == SPACE_DOC {
                    st.doc_count = st.doc_count.map(|n| n - 1);
                }
                self.let_go(&mut st, key, &old);
                Ok(true)
            }
        }
    }

    pub(super) async fn current(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .lookup_value(key)
            .await?
            .map(|(entry, value)| (entry.version, value)))
    }
}
