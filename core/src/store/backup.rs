//! Backups (`kvs backup`, docs/operations.md): a shard's checkpoint, read out chunk by chunk
//! by a client that asks for one chunk at a time.
//!
//! A backup starts by writing a checkpoint (so it holds every write applied when it began)
//! and pins it the way a snapshot for a follower does (`snapshot`): no later checkpoint
//! reuses its pages while the backup reads them, however long it takes and whatever writes
//! go on. The chunks are the snapshot's: first the meta page and the page count, then runs
//! of consecutive pages. The pin is released after the last chunk, or when the client has
//! not asked for [`BACKUP_IDLE_MS`] (a client that went away must not hold pages forever: a
//! pinned checkpoint keeps the page file from reusing what later checkpoints free). The last
//! chunk handed out is kept, so a client that lost an answer may ask for it again.
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

/// A backup being read out.
#[derive(Debug)]
pub(super) struct BackupSession {
    checkpoint: Checkpointed,
    meta: Vec<u8>,
    /// The image's pages, ascending, and how many were handed out.
    pages: Vec<u64>,
    sent: usize,
    /// The number of the next chunk, and the chunk before it.
    next: u32,
    previous: Option<BackupPiece>,
    /// Whether the session still pins its checkpoint (until its last chunk).
    pinned: bool,
    last_used_ms: u64,
}

/// Why a chunk could not be handed out.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup {0} is not known here (finished long ago, idle for over a minute, or the shard was replaced): start the shard's backup again")]
    Unknown(u64),
    #[error("backup {id}: chunk {asked} asked, but the next is {next}")]
    OutOfOrder { id: u64, asked: u32, next: u32 },
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
        let (checkpoint, first, count) = {
            let mut backups = self.backups.borrow_mut();
            let session = backups
                .sessions
                .get_mut(&id)
                .ok_or(BackupError::Unknown(id))?;
            session.last_used_ms = now_ms;
            if number + 1 == session.next {
                if let Some(previous) = &session.previous {
                    return Ok(previous.clone());
                }
            }
            if number != session.next {
                return Err(BackupError::OutOfOrder {
                    id,
                    asked: number,
                    next: session.next,
                });
            }
            if number == 0 {
                let piece = BackupPiece {
                    id,
                    index: session.checkpoint.applied_index,
                    term: session.checkpoint.applied_term,
                    number,
                    total_pages: session.pages.len() as u64,
                    first: 0,
                    crc: crc32c::crc32c(&session.meta),
                    meta: session.meta.clone(),
                    pages: Vec::new(),
                    last: session.pages.is_empty(),
                };
                return Ok(self.handed_out(session, piece));
            }
            // A run of consecutive pages, at most a chunk's worth.
            let start = session.sent;
            let first = session.pages[start];
            let mut count = 1;
            while start + count < session.pages.len()
                && count < SNAPSHOT_RUN_PAGES
                && session.pages[start + count] == first + count as u64
            {
                count += 1;
            }
            (session.checkpoint, first, count)
        };
        // The pin keeps these pages as the checkpoint wrote them while they are read.
        let pages = self.read_pages(first, count).await?;
        debug_assert_eq!(pages.len(), count * PAGE_SIZE);
        let mut backups = self.backups.borrow_mut();
        let session = backups
            .sessions
            .get_mut(&id)
            .ok_or(BackupError::Unknown(id))?;
        session.sent += count;
        let piece = BackupPiece {
            id,
            index: checkpoint.applied_index,
            term: checkpoint.applied_term,
            number,
            total_pages: 0,
            first,
            meta: Vec::new(),
            crc: crc32c::crc32c(&pages),
            pages,
            last: session.sent == session.pages.len(),
        };
        Ok(self.handed_out(session, piece))
    }

    /// Records `piece` as handed out; after the last, the checkpoint is unpinned.
    fn handed_out(&self, session: &mut BackupSession, piece: BackupPiece) -> BackupPiece {
        session.next = piece.number + 1;
        session.previous = Some(piece.clone());
        if piece.last && session.pinned {
            session.pinned = false;
            self.unpin();
        }
        piece
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
        let mut backups = self.backups.borrow_mut();
        backups.next_id += 1;
        let id = backups.next_id;
        backups.sessions.insert(
            id,
            BackupSession {
                checkpoint,
                meta: image.meta,
                pages: image.pages,
                sent: 0,
                next: 0,
                previous: None,
                pinned: true,
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
