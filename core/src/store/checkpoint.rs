//! Checkpoints: sealing an epoch, writing its dirty pages, free list and meta page, and the
//! policy's signals (dirty pages, log growth, changes). Back-pressure lives here too, as it
//! is a checkpoint forced before the pool overflows.

use std::future::Future;

use super::page::{encode_free_list, encode_meta, encode_node, Meta, FREE_IDS_PER_PAGE, PAGE_SIZE};
use super::{write_bytes, Checkpointed, PagedStore, StoreError};
use crate::log::LogFile;

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

impl<F: LogFile> PagedStore<F> {
    /// Records that the log grew by `bytes`.
    pub fn note_log_appended(&self, bytes: u64) {
        self.log_appended.set(self.log_appended.get() + bytes);
    }

    /// Log bytes appended since the last checkpoint was sealed.
    pub fn log_since_checkpoint(&self) -> u64 {
        self.log_appended.get() - self.log_appended_at_seal.get()
    }

    /// Waits until no checkpoint is being written.
    pub async fn wait_idle(&self) {
        while self.checkpoint_running.get() {
            self.checkpoint_done.wait().await;
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

    /// Back-pressure: when dirty pages fill three quarters of the pool, write a checkpoint
    /// (or wait for the running one) before changing more.
    ///
    /// The command being applied is already durable in the log, so a checkpoint that fails
    /// (a full disk) must not fail it: the pool then runs over its budget, and the shard
    /// refuses new writes ([`PagedStore::write_refusal`]) until a checkpoint succeeds.
    pub(super) async fn make_room_for_writes(&self) -> Result<(), StoreError> {
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
            doc_count: st.doc_count,
            root: st.root,
            height: st.height,
            page_count: st.page_count,
            free_head: free_pages.first().copied().unwrap_or(0),
            free_count: free_ids.len() as u64,
            raft_term,
            raft_vote,
        };
        st.epoch = seq + 1;
        st.moved.clear();
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
        // While a snapshot reads the durable checkpoint's pages, none is released: they
        // stay pending, and the first checkpoint after the last pin goes releases them all.
        if !self.is_pinned() {
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
            for result in futures_util::future::join_all(writes).await {
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
