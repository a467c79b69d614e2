//! Snapshots (ADR 0017): a durable checkpoint's pages, copied to another node's store.
//!
//! A follower too far behind for the leader's log gets the leader's newest durable
//! checkpoint. Shadow paging makes that checkpoint a fixed set of pages: no checkpoint
//! overwrites a page the durable one uses, and its pages become reusable only once a newer
//! checkpoint is durable. The leader [pins](PagedStore::pin_checkpoint) the checkpoint, which
//! holds those releases back while the pin lives, so the pages stay what they were while
//! they are read out, however long the transfer takes and however many checkpoints run
//! meanwhile.
//!
//! The image is the checkpoint's meta page and every page it uses: the pages its free list
//! does not name, and the free list's own pages. The follower writes them at the same
//! offsets into a staging file ([`SNAPSHOT_FILE`], sparse where the leader's pages were
//! free), syncs it, and renames it over its page file: a crash before the rename leaves the
//! old store (the staging file is removed at start-up), and one after it leaves the new.

use std::rc::Rc;

use super::page::{decode_meta, Meta, PageError, META_PAGES, PAGE_SIZE};
use super::PAGE_FILE;
use super::{read_bytes, read_free_list, write_bytes, Checkpointed, PagedStore, StoreError};
use crate::log::{LogDisk, LogFile};

/// The staging file a snapshot is received into.
pub const SNAPSHOT_FILE: &str = "pages.snap";

/// Pages read or written in one I/O while copying an image.
pub const SNAPSHOT_RUN_PAGES: usize = 256;

/// Holds a durable checkpoint's pages in place (see the module documentation); released on
/// drop.
pub struct CheckpointPin<F: LogFile> {
    store: Rc<PagedStore<F>>,
    pub checkpoint: Checkpointed,
}

impl<F: LogFile> Drop for CheckpointPin<F> {
    fn drop(&mut self) {
        let pins = self.store.snapshot_pins.get();
        assert!(pins > 0, "a checkpoint pin released twice");
        self.store.snapshot_pins.set(pins - 1);
    }
}

/// What a pinned checkpoint is made of.
#[derive(Debug, Clone)]
pub struct SnapshotImage {
    /// The checkpoint's meta page, as written (it goes to slot `seq % 2`).
    pub meta: Vec<u8>,
    /// Every page the checkpoint uses, ascending.
    pub pages: Vec<u64>,
}

impl<F: LogFile> PagedStore<F> {
    /// Pins the newest durable checkpoint (None before the first).
    pub fn pin_checkpoint(self: &Rc<Self>) -> Option<CheckpointPin<F>> {
        let checkpoint = self.durable.get()?;
        self.snapshot_pins.set(self.snapshot_pins.get() + 1);
        Some(CheckpointPin {
            store: Rc::clone(self),
            checkpoint,
        })
    }

    /// Whether a pin holds page releases back.
    pub(super) fn is_pinned(&self) -> bool {
        self.snapshot_pins.get() > 0
    }

    /// Lists the pinned checkpoint's pages, from its meta page and free list on disk.
    pub async fn snapshot_image(
        &self,
        pin: &CheckpointPin<F>,
    ) -> Result<SnapshotImage, StoreError> {
        assert!(
            std::ptr::eq(Rc::as_ptr(&pin.store), self),
            "a pin of another store"
        );
        self.checkpoint_image(pin.checkpoint).await
    }

    /// Lists a checkpoint's pages, from its meta page and free list on disk. The caller
    /// holds a pin on it (else a later checkpoint may be reusing its pages).
    pub(super) async fn checkpoint_image(
        &self,
        checkpoint: Checkpointed,
    ) -> Result<SnapshotImage, StoreError> {
        assert!(self.is_pinned(), "the image of an unpinned checkpoint");
        let seq = checkpoint.seq;
        let meta_bytes = read_bytes(
            &self.file,
            &self.path,
            (seq % 2) * PAGE_SIZE as u64,
            PAGE_SIZE,
        )
        .await?;
        let meta = decode_meta(&meta_bytes, seq % 2).map_err(|e| self.corrupt(e))?;
        if meta.seq != seq || meta.applied_index != checkpoint.applied_index {
            return Err(self.corrupt(PageError {
                page: seq % 2,
                detail: format!(
                    "the meta page holds checkpoint {} at entry {}, not the pinned {seq} at {}",
                    meta.seq, meta.applied_index, checkpoint.applied_index
                ),
            }));
        }
        let (free, chain) = read_free_list(
            &self.file,
            &self.path,
            self.shard,
            meta.free_head,
            meta.page_count,
        )
        .await?;
        let free: std::collections::BTreeSet<u64> = free.into_iter().collect();
        let mut pages: Vec<u64> = (META_PAGES..meta.page_count)
            .filter(|id| !free.contains(id))
            .collect();
        pages.extend(chain);
        pages.sort_unstable();
        pages.dedup();
        Ok(SnapshotImage {
            meta: meta_bytes,
            pages,
        })
    }

    /// Reads `count` pages from `first` as they are on disk (not through the pool: a pinned
    /// checkpoint's pages are never rewritten in place, so disk and pool agree).
    pub async fn read_pages(&self, first: u64, count: usize) -> Result<Vec<u8>, StoreError> {
        read_bytes(
            &self.file,
            &self.path,
            first * PAGE_SIZE as u64,
            count * PAGE_SIZE,
        )
        .await
    }

    /// Stops this store for good: it waits for a running checkpoint and starts no more (its
    /// page file was replaced by a snapshot; only reads already begun still use it).
    pub async fn retire(&self) {
        self.wait_idle().await;
        self.poisoned.set(true);
    }
}

/// A snapshot being received into [`SNAPSHOT_FILE`].
pub struct SnapshotStaging<F: LogFile> {
    file: F,
    path: String,
    meta: Meta,
    meta_bytes: Vec<u8>,
    /// Pages written so far, and how many the image has.
    pub written: u64,
    pub total: u64,
}

impl<F: LogFile> SnapshotStaging<F> {
    /// Starts receiving the image whose meta page is `meta_bytes` (for shard `shard`), of
    /// `total` pages; any earlier staging file is replaced.
    pub async fn create<D: LogDisk<File = F>>(
        disk: &D,
        shard: u32,
        meta_bytes: Vec<u8>,
        total: u64,
    ) -> Result<SnapshotStaging<F>, StoreError> {
        let path = disk.path_of(SNAPSHOT_FILE);
        let bad = |detail: String| StoreError::Corrupt {
            shard,
            path: path.clone(),
            page: 0,
            detail,
        };
        if meta_bytes.len() != PAGE_SIZE {
            return Err(bad(format!("a meta page of {} bytes", meta_bytes.len())));
        }
        // The slot is not known before decoding: the page names its own id.
        let slot = u64::from_le_bytes(meta_bytes[4..12].try_into().expect("8 bytes"));
        let meta = decode_meta(&meta_bytes, slot).map_err(|e| bad(e.detail))?;
        if meta.shard != shard || slot != meta.seq % 2 {
            return Err(bad(format!(
                "the snapshot is of shard {} (meta slot {slot}, checkpoint {})",
                meta.shard, meta.seq
            )));
        }
        if total > meta.page_count {
            return Err(bad(format!(
                "{total} pages announced in a file of {}",
                meta.page_count
            )));
        }
        let file = disk
            .open(SNAPSHOT_FILE, true)
            .await
            .map_err(|e| StoreError::io("open", &path, e))?;
        file.truncate(0)
            .await
            .map_err(|e| StoreError::io("truncate", &path, e))?;
        Ok(SnapshotStaging {
            file,
            path,
            meta,
            meta_bytes,
            written: 0,
            total,
        })
    }

    /// The log position the image reflects: (index, term).
    pub fn position(&self) -> (u64, u64) {
        (self.meta.applied_index, self.meta.applied_term)
    }

    pub fn is_complete(&self) -> bool {
        self.written == self.total
    }

    /// Writes the run of pages starting at page `first`.
    pub async fn write_run(&mut self, first: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let count = (bytes.len() / PAGE_SIZE) as u64;
        if !bytes.len().is_multiple_of(PAGE_SIZE)
            || count == 0
            || first < META_PAGES
            || first + count > self.meta.page_count
            || self.written + count > self.total
        {
            return Err(StoreError::Corrupt {
                shard: self.meta.shard,
                path: self.path.clone(),
                page: first,
                detail: format!(
                    "a run of {} bytes at page {first} does not fit the image ({} pages, {} of {} written)",
                    bytes.len(),
                    self.meta.page_count,
                    self.written,
                    self.total
                ),
            });
        }
        write_bytes(&self.file, &self.path, bytes, first * PAGE_SIZE as u64).await?;
        self.written += count;
        Ok(())
    }

    /// Writes the meta page, makes the file durable and renames it over the page file (made
    /// durable too). The store must then be opened again.
    pub async fn install<D: LogDisk<File = F>>(self, disk: &D) -> Result<(), StoreError> {
        assert!(self.is_complete(), "an incomplete snapshot installed");
        let slot = self.meta.seq % 2;
        write_bytes(
            &self.file,
            &self.path,
            &self.meta_bytes,
            slot * PAGE_SIZE as u64,
        )
        .await?;
        // The other meta slot stays a hole (zeros): no older checkpoint to fall back to.
        let len = self.meta.page_count * PAGE_SIZE as u64;
        let size = self
            .file
            .size()
            .await
            .map_err(|e| StoreError::io("stat", &self.path, e))?;
        if size < len {
            // The file spans every page the meta counts, holes included.
            let last = self.meta.page_count - 1;
            let zeros = vec![0u8; PAGE_SIZE];
            if last >= META_PAGES {
                write_bytes(&self.file, &self.path, &zeros, last * PAGE_SIZE as u64).await?;
            }
        }
        self.file
            .sync()
            .await
            .map_err(|e| StoreError::io("sync", &self.path, e))?;
        drop(self.file);
        disk.rename(SNAPSHOT_FILE, PAGE_FILE)
            .await
            .map_err(|e| StoreError::io("rename", &self.path, e))?;
        disk.sync_dir()
            .await
            .map_err(|e| StoreError::io("sync dir", &self.path, e))?;
        Ok(())
    }
}

/// Removes a staging file a crash or a broken transfer left behind.
pub async fn remove_staging<D: LogDisk>(disk: &D) -> Result<bool, StoreError> {
    let names = disk
        .list()
        .await
        .map_err(|e| StoreError::io("list", &disk.path_of(SNAPSHOT_FILE), e))?;
    if !names.iter().any(|n| n == SNAPSHOT_FILE) {
        return Ok(false);
    }
    disk.remove(SNAPSHOT_FILE)
        .await
        .map_err(|e| StoreError::io("remove", &disk.path_of(SNAPSHOT_FILE), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use futures_lite::future::block_on;

    use super::*;
    use crate::command::{BatchEncoder, Command};
    use crate::log::sim::SimDisk;
    use crate::store::StoreConfig;

    const CONFIG: StoreConfig = StoreConfig {
        cache_pages: 32,
        hot_cache_bytes: 0,
    };

    fn put_all(store: &PagedStore<crate::log::sim::SimLogFile>, index: u64, round: u32) {
        let mut batch = BatchEncoder::new();
        for k in 0..300 {
            // Some values large enough for extents, so those pages travel too.
            let size = if k % 50 == 0 { 5000 } else { 100 };
            batch.push(&Command::Put {
                key: format!("key-{k:04}").into_bytes(),
                value: format!("{round}-{}", "v".repeat(size)).into_bytes(),
            });
        }
        block_on(store.apply(index, 1, &batch.finish())).unwrap();
    }

    fn checkpoint(store: &PagedStore<crate::log::sim::SimLogFile>) {
        block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap();
    }

    /// A pinned checkpoint keeps its pages while later checkpoints run (which would reuse
    /// them), and its image, installed into another directory, opens as that checkpoint.
    #[test]
    fn a_pinned_checkpoint_is_copied_whole_while_writes_go_on() {
        let leader_disk = SimDisk::new();
        let leader = Rc::new(block_on(PagedStore::open(&leader_disk, 0, CONFIG)).unwrap());
        put_all(&leader, 1, 1);
        checkpoint(&leader);
        let pin = leader.pin_checkpoint().expect("a durable checkpoint");
        assert_eq!(pin.checkpoint.applied_index, 1);
        let image = block_on(leader.snapshot_image(&pin)).unwrap();
        // Every key rewritten, checkpointed again and again: without the pin, the pages of
        // checkpoint 1 would be freed and written over.
        for index in 2..6 {
            put_all(&leader, index, index as u32);
            checkpoint(&leader);
        }
        let follower_disk = SimDisk::new();
        // The follower had a store of its own, which the snapshot replaces.
        let old = block_on(PagedStore::open(&follower_disk, 0, CONFIG)).unwrap();
        put_all(&old, 1, 99);
        checkpoint(&old);
        drop(old);
        let mut staging = block_on(SnapshotStaging::create(
            &follower_disk,
            0,
            image.meta.clone(),
            image.pages.len() as u64,
        ))
        .unwrap();
        assert_eq!(staging.position(), (1, 1));
        let mut at = 0;
        while at < image.pages.len() {
            let first = image.pages[at];
            let mut count = 1;
            while image.pages.get(at + count) == Some(&(first + count as u64)) {
                count += 1;
            }
            let bytes = block_on(leader.read_pages(first, count)).unwrap();
            block_on(staging.write_run(first, &bytes)).unwrap();
            at += count;
        }
        assert!(staging.is_complete());
        block_on(staging.install(&follower_disk)).unwrap();
        drop(pin);
        let installed = block_on(PagedStore::open(&follower_disk, 0, CONFIG)).unwrap();
        assert_eq!(installed.applied_index(), 1);
        for k in 0..300 {
            let value = block_on(installed.get(format!("key-{k:04}").as_bytes()))
                .unwrap()
                .expect("every key of the checkpoint")
                .value;
            assert!(
                value.starts_with(b"1-"),
                "key {k} is not as of the checkpoint"
            );
        }
        let report = block_on(crate::store::verify::verify(&follower_disk, 0)).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.keys, 300);
        assert!(!follower_disk
            .file_names()
            .contains(&SNAPSHOT_FILE.to_string()));
        // Released, the pin lets the leader reuse the pages again.
        put_all(&leader, 6, 6);
        checkpoint(&leader);
        checkpoint(&leader);
        assert!(leader.stats().free_pages > 0);
    }

    /// A run that does not fit the announced image is refused, not written.
    #[test]
    fn a_run_outside_the_image_is_refused() {
        let disk = SimDisk::new();
        let store = Rc::new(block_on(PagedStore::open(&disk, 0, CONFIG)).unwrap());
        put_all(&store, 1, 1);
        checkpoint(&store);
        let pin = store.pin_checkpoint().unwrap();
        let image = block_on(store.snapshot_image(&pin)).unwrap();
        let other = SimDisk::new();
        let mut staging =
            block_on(SnapshotStaging::create(&other, 0, image.meta.clone(), 1)).unwrap();
        let page = vec![0u8; PAGE_SIZE];
        assert!(
            block_on(staging.write_run(0, &page)).is_err(),
            "a meta page as a run"
        );
        assert!(
            block_on(staging.write_run(1 << 40, &page)).is_err(),
            "beyond the file"
        );
        assert!(
            block_on(staging.write_run(2, &page[..100])).is_err(),
            "a partial page"
        );
        assert!(
            block_on(SnapshotStaging::create(&other, 1, image.meta.clone(), 1)).is_err(),
            "another shard's image"
        );
    }
}
