//! Backups (`kvs backup`, docs/operations.md): a shard's checkpoint, read out chunk by chunk
//! by a client that asks for one chunk at a time.
//!
//! A backup starts by writing a checkpoint (so it holds every write applied when it began)
//! and pins it the way a snapshot for a follower does (`snapshot`): no later checkpoint
//! reuses its pages while the backup reads them, however long it takes and whatever writes
//! go on. The chunks are the snapshot's: first the meta page and the page count, then runs
//! of consecutive pages, fixed when the backup starts, so a client may keep several chunks
//! in flight and ask again for one it lost. The pin is released once every run was read, or
//! when the client has not asked for [`BACKUP_IDLE_MS`] (a client that went away must not
//! hold pages forever: a pinned checkpoint keeps the page file from reusing what later
//! checkpoints free).
//!
//! The store has no clock: callers pass the time (any millisecond clock that moves forward).

use std::collections::BTreeMap;

use super::page::PAGE_SIZE;
use super::snapshot::SNAPSHOT_RUN_PAGES;
use super::{Checkpointed, PagedStore, StoreError};
use crate::log::LogFile;

/// A backup no one asked for this long (ms) is dropped and its checkpoint unpinned.
pub const BACKUP_IDLE_MS: u64 = 60_000;

/// One chunk of a backup, as the store hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPiece {
    pub id: u64,
    /// The log position the checkpoint reflects.
    pub index: u64,
    pub term: u64,
    pub number: u32,
    /// How many pages the image has (first chunk only; 0 after).
    pub total_pages: u64,
    /// The first page of `pages` (0 in the first chunk).
    pub first: u64,
    /// The checkpoint's meta page (first chunk only).
    pub meta: Vec<u8>,
    pub pages: Vec<u8>,
    /// CRC32C of `meta` then `pages`.
    pub crc: u32,
    pub last: bool,
}

/// A backup being read out. Its chunks are fixed when it starts (chunk 0 the meta page,
/// chunk k the k-th run of consecutive pages), so a client may ask for several at once and
/// in any order, and ask again for one whose answer it lost.
#[derive(Debug)]
pub(super) struct BackupSession {
    checkpoint: Checkpointed,
    meta: Vec<u8>,
    total_pages: u64,
    /// The image's runs of consecutive pages: (first page, pages).
    runs: Vec<(u64, usize)>,
    /// Which runs were handed out; the pin goes once all were.
    sent: Vec<bool>,
    unsent: usize,
    pinned: bool,
    last_used_ms: u64,
}

/// Why a chunk could not be handed out.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup {0} is not known here (finished long ago, idle for over a minute, or the shard was replaced): start the shard's backup again")]
    Unknown(u64),
    #[error("backup {id}: chunk {asked} asked, but it has {chunks}")]
    OutOfRange { id: u64, asked: u32, chunks: u32 },
    #[error("the shard has no checkpoint to back up")]
    NoCheckpoint,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The sessions of one store, by id.
#[derive(Debug, Default)]
pub(super) struct Backups {
    sessions: BTreeMap<u64, BackupSession>,
    next_id: u64,
}

impl<F: LogFile> PagedStore<F> {
    /// Chunk `number` of backup `id`; id 0 (with number 0) starts a backup: a checkpoint is
    /// written and pinned, and its first chunk returned under the new backup's id.
    pub async fn backup_chunk(
        &self,
        id: u64,
        number: u32,
        now_ms: u64,
    ) -> Result<BackupPiece, BackupError> {
        self.expire_backups(now_ms);
        let id = if id == 0 {
            self.start_backup(now_ms).await?
        } else {
            id
        };
        let (checkpoint, first, count, last) = {
            let mut backups = self.backups.borrow_mut();
            let session = backups
                .sessions
                .get_mut(&id)
                .ok_or(BackupError::Unknown(id))?;
            session.last_used_ms = now_ms;
            if number == 0 {
                return Ok(BackupPiece {
                    id,
                    index: session.checkpoint.applied_index,
                    term: session.checkpoint.applied_term,
                    number,
                    total_pages: session.total_pages,
                    first: 0,
                    crc: crc32c::crc32c(&session.meta),
                    meta: session.meta.clone(),
                    pages: Vec::new(),
                    last: session.runs.is_empty(),
                });
            }
            let run = number as usize - 1;
            let Some(&(first, count)) = session.runs.get(run) else {
                return Err(BackupError::OutOfRange {
                    id,
                    asked: number,
                    chunks: session.runs.len() as u32 + 1,
                });
            };
            if !session.pinned {
                // Every run was handed out and the pages may be reused by now.
                return Err(BackupError::Unknown(id));
            }
            (
                session.checkpoint,
                first,
                count,
                run + 1 == session.runs.len(),
            )
        };
        // The pin keeps these pages as the checkpoint wrote them while they are read.
        let pages = self.read_pages(first, count).await?;
        debug_assert_eq!(pages.len(), count * PAGE_SIZE);
        if let Some(session) = self.backups.borrow_mut().sessions.get_mut(&id) {
            let run = number as usize - 1;
            if !session.sent[run] {
                session.sent[run] = true;
                session.unsent -= 1;
                if session.unsent == 0 && session.pinned {
                    session.pinned = false;
                    self.unpin();
                }
            }
        }
        Ok(BackupPiece {
            id,
            index: checkpoint.applied_index,
            term: checkpoint.applied_term,
            number,
            total_pages: 0,
            first,
            meta: Vec::new(),
            crc: crc32c::crc32c(&pages),
            pages,
            last,
        })
    }

    async fn start_backup(&self, now_ms: u64) -> Result<u64, BackupError> {
        // Every write applied now is in the checkpoint the backup holds.
        self.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)
            .await?;
        let checkpoint = self.durable.get().ok_or(BackupError::NoCheckpoint)?;
        self.snapshot_pins.set(self.snapshot_pins.get() + 1);
        let image = match self.checkpoint_image(checkpoint).await {
            Ok(image) => image,
            Err(e) => {
                self.unpin();
                return Err(e.into());
            }
        };
        let mut runs: Vec<(u64, usize)> = Vec::new();
        for &page in &image.pages {
            match runs.last_mut() {
                Some((first, count))
                    if *first + *count as u64 == page && *count < SNAPSHOT_RUN_PAGES =>
                {
                    *count += 1
                }
                _ => runs.push((page, 1)),
            }
        }
        let pinned = !runs.is_empty();
        if !pinned {
            self.unpin();
        }
        let mut backups = self.backups.borrow_mut();
        backups.next_id += 1;
        let id = backups.next_id;
        backups.sessions.insert(
            id,
            BackupSession {
                checkpoint,
                meta: image.meta,
                total_pages: image.pages.len() as u64,
                sent: vec![false; runs.len()],
                unsent: runs.len(),
                runs,
                pinned,
                last_used_ms: now_ms,
            },
        );
        Ok(id)
    }

    fn unpin(&self) {
        let pins = self.snapshot_pins.get();
        assert!(pins > 0, "a backup unpinned a checkpoint it did not pin");
        self.snapshot_pins.set(pins - 1);
    }

    /// Drops the backups idle for [`BACKUP_IDLE_MS`], unpinning their checkpoints.
    pub fn expire_backups(&self, now_ms: u64) {
        let mut backups = self.backups.borrow_mut();
        let idle: Vec<u64> = backups
            .sessions
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_used_ms) >= BACKUP_IDLE_MS)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            let session = backups.sessions.remove(&id).expect("listed above");
            if session.pinned {
                self.unpin();
            }
        }
    }

    /// Backups being read out (for tests and INFO).
    pub fn backups_open(&self) -> usize {
        self.backups.borrow().sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;

    use super::super::tests::open;
    use super::*;
    use crate::command::{BatchEncoder, Command};
    use crate::log::sim::SimDisk;

    fn put_all(store: &PagedStore<crate::log::sim::SimLogFile>, index: u64, fill: u8) {
        let mut batch = BatchEncoder::new();
        for k in 0..300u32 {
            batch.push(&Command::Put {
                key: format!("key{k:03}").into_bytes(),
                value: vec![fill; 6000],
            });
        }
        block_on(store.apply(index, 1, &batch.finish())).unwrap();
    }

    fn checkpoint(store: &PagedStore<crate::log::sim::SimLogFile>) {
        block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap();
    }

    #[test]
    fn a_backup_keeps_its_checkpoint_while_writes_go_on_and_lets_go_once_read() {
        let disk = SimDisk::new();
        let store = open(&disk, 256);
        put_all(&store, 1, 1);
        let first = block_on(store.backup_chunk(0, 0, 0)).unwrap();
        assert_eq!((first.number, first.index), (0, 1));
        assert!(store.is_pinned());
        assert!(!first.last && first.total_pages > 300);
        let runs = store.backups.borrow().sessions[&first.id].runs.clone();
        let before: Vec<Vec<u8>> = runs
            .iter()
            .map(|&(page, count)| block_on(store.read_pages(page, count)).unwrap())
            .collect();
        // Writes and checkpoints go on: the pinned pages are not reused.
        for (index, fill) in [(2, 2), (3, 3)] {
            put_all(&store, index, fill);
            checkpoint(&store);
        }
        // Chunks in any order, one of them twice.
        assert!(runs.len() >= 3, "{runs:?}");
        let mut got = vec![None; runs.len()];
        for number in [1, 1].into_iter().chain((2..=runs.len() as u32).rev()) {
            let piece = block_on(store.backup_chunk(first.id, number, 1)).unwrap();
            assert_eq!(piece.crc, crc32c::crc32c(&piece.pages));
            assert_eq!(piece.last, number as usize == runs.len());
            got[number as usize - 1] = Some(piece.pages);
        }
        for (at, pages) in got.iter().enumerate() {
            assert_eq!(
                pages.as_ref(),
                Some(&before[at]),
                "run {at} as it was when pinned"
            );
        }
        let pages: usize = runs.iter().map(|&(_, count)| count).sum();
        assert_eq!(pages as u64, first.total_pages);
        assert!(!store.is_pinned(), "every run was read: the pin is gone");
        assert!(matches!(
            block_on(store.backup_chunk(first.id, 1, 2)),
            Err(BackupError::Unknown(_))
        ));
        assert!(matches!(
            block_on(store.backup_chunk(first.id, runs.len() as u32 + 1, 2)),
            Err(BackupError::OutOfRange { .. })
        ));
    }

    #[test]
    fn an_abandoned_backup_is_dropped_after_its_idle_time() {
        let disk = SimDisk::new();
        let store = open(&disk, 256);
        put_all(&store, 1, 1);
        let first = block_on(store.backup_chunk(0, 0, 1000)).unwrap();
        assert!(store.is_pinned());
        store.expire_backups(1000 + BACKUP_IDLE_MS - 1);
        assert!(store.is_pinned(), "not idle long enough yet");
        store.expire_backups(1000 + BACKUP_IDLE_MS);
        assert!(!store.is_pinned());
        assert_eq!(store.backups_open(), 0);
        assert!(matches!(
            block_on(store.backup_chunk(first.id, 1, 1000 + BACKUP_IDLE_MS)),
            Err(BackupError::Unknown(_))
        ));
    }
}
