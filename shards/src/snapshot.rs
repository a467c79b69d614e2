//! Raft snapshots between nodes (ADR 0017): the leader's durable checkpoint, cut into
//! chunks, and a follower's side of receiving them.
//!
//! raft-rs decides when a follower needs a snapshot (the entries it needs next were
//! compacted) and emits a `MsgSnapshot` naming a log position; the message itself carries no
//! data. The shard pins its newest durable checkpoint, rewrites the message to name that
//! checkpoint's position, and streams the checkpoint's pages to the follower as
//! [`SnapshotChunk`]s ([`SnapshotSender`]), rate-limited by the caller; the `MsgSnapshot`
//! follows the last chunk on the same link. The follower writes the chunks into a staging
//! file ([`Receiving`]) and steps the `MsgSnapshot` into Raft only once the staging file holds
//! the whole image of that position; Raft's ready then hands the snapshot to
//! `Peer::begin_ready`, which installs it.
//!
//! Each chunk carries a CRC32C of its pages, computed from the bytes the leader read, so a
//! page damaged anywhere between the leader's disk and the follower's is refused.

use std::rc::Rc;

use kvs_core::log::{LogDisk, LogFile};
use kvs_core::store::page::PAGE_SIZE;
use kvs_core::store::snapshot::{
    CheckpointPin, SnapshotImage, SnapshotStaging, SNAPSHOT_RUN_PAGES,
};
use kvs_core::store::{PagedStore, StoreError};
use raft::eraftpb::{Message, MessageType};

/// One piece of a snapshot in transit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The log position of the checkpoint: names the transfer.
    pub index: u64,
    pub term: u64,
    /// 0 for the first chunk, which carries the meta page and the page count.
    pub number: u32,
    /// The checkpoint's meta page (first chunk only; empty after).
    pub meta: Vec<u8>,
    /// How many pages the image has (first chunk only; 0 after).
    pub total_pages: u64,
    /// A run of consecutive pages starting at page `first` (empty in the first chunk).
    pub first: u64,
    pub pages: Vec<u8>,
    /// CRC32C of `meta` and `pages`.
    pub crc: u32,
    /// Whether this is the image's last chunk.
    pub last: bool,
}

impl SnapshotChunk {
    pub fn checksum(meta: &[u8], pages: &[u8]) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(meta), pages)
    }

    /// Bytes the chunk takes on a link, near enough for rate limits and frame sizes.
    pub fn size(&self) -> usize {
        self.meta.len() + self.pages.len() + 64
    }
}

/// Makes a `MsgSnapshot` Raft emitted name the checkpoint that is sent (the newest durable
/// one, which may be newer than when Raft asked for it: the follower then simply jumps
/// further).
pub fn name_checkpoint(message: &mut Message, index: u64, term: u64) {
    assert_eq!(message.get_msg_type(), MessageType::MsgSnapshot);
    let metadata = message.mut_snapshot().mut_metadata();
    assert!(
        index >= metadata.index,
        "a snapshot older than the one Raft asked for"
    );
    metadata.index = index;
    metadata.term = term;
}

/// Reads a pinned checkpoint out as chunks.
pub struct SnapshotSender<F: LogFile> {
    store: Rc<PagedStore<F>>,
    pin: CheckpointPin<F>,
    image: SnapshotImage,
    /// The next page of `image.pages` to send, and the next chunk's number.
    at: usize,
    number: u32,
}

impl<F: LogFile> SnapshotSender<F> {
    /// Pins `store`'s newest durable checkpoint and lists its pages (None before the first
    /// checkpoint).
    pub async fn start(store: &Rc<PagedStore<F>>) -> Result<Option<SnapshotSender<F>>, StoreError> {
        let Some(pin) = store.pin_checkpoint() else {
            return Ok(None);
        };
        let image = store.snapshot_image(&pin).await?;
        Ok(Some(SnapshotSender {
            store: Rc::clone(store),
            pin,
            image,
            at: 0,
            number: 0,
        }))
    }

    /// The log position the snapshot reflects: (index, term).
    pub fn position(&self) -> (u64, u64) {
        (
            self.pin.checkpoint.applied_index,
            self.pin.checkpoint.applied_term.max(1),
        )
    }

    /// Pages the image has.
    pub fn total_pages(&self) -> u64 {
        self.image.pages.len() as u64
    }

    /// The next chunk (None once the last was given).
    pub async fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>, StoreError> {
        let pages = &self.image.pages;
        if self.number > 0 && self.at >= pages.len() {
            return Ok(None);
        }
        let (index, term) = self.position();
        let mut chunk = SnapshotChunk {
            index,
            term,
            number: self.number,
            meta: Vec::new(),
            total_pages: 0,
            first: 0,
            pages: Vec::new(),
            crc: 0,
            last: false,
        };
        if self.number == 0 {
            chunk.meta = self.image.meta.clone();
            chunk.total_pages = self.total_pages();
        } else {
            let first = pages[self.at];
            let mut count = 1;
            while count < SNAPSHOT_RUN_PAGES
                && pages.get(self.at + count) == Some(&(first + count as u64))
            {
                count += 1;
            }
            chunk.first = first;
            chunk.pages = self.store.read_pages(first, count).await?;
            assert_eq!(chunk.pages.len(), count * PAGE_SIZE, "a short page read");
            self.at += count;
        }
        chunk.crc = SnapshotChunk::checksum(&chunk.meta, &chunk.pages);
        chunk.last = self.at >= pages.len();
        self.number += 1;
        Ok(Some(chunk))
    }
}

/// A follower's snapshot in transit: the staging file and what it expects next.
pub struct Receiving<F: LogFile> {
    pub from: u64,
    pub staging: SnapshotStaging<F>,
    next_number: u32,
    done: bool,
}

impl<F: LogFile> Receiving<F> {
    /// Whether the whole image of position (index, term) is staged.
    pub fn holds(&self, index: u64, term: u64) -> bool {
        let (at, of) = self.staging.position();
        self.done && at == index && of.max(1) == term
    }

    /// Takes a chunk from node `from`. Returns the staging state to keep (None: the
    /// transfer is dropped, with the reason in the error) — `current` is the transfer in
    /// progress, if any. A first chunk always starts over.
    pub async fn take<D: LogDisk<File = F>>(
        disk: &D,
        shard: u32,
        current: Option<Receiving<F>>,
        from: u64,
        chunk: SnapshotChunk,
    ) -> Result<Receiving<F>, String> {
        if SnapshotChunk::checksum(&chunk.meta, &chunk.pages) != chunk.crc {
            return Err(format!(
                "chunk {} of the snapshot at entry {} fails its checksum",
                chunk.number, chunk.index
            ));
        }
        let mut receiving = if chunk.number == 0 {
            drop(current);
            let staging = SnapshotStaging::create(disk, shard, chunk.meta, chunk.total_pages)
                .await
                .map_err(|e| e.to_string())?;
            if staging.position().0 != chunk.index {
                return Err(format!(
                    "the snapshot announced at entry {} holds a checkpoint at {}",
                    chunk.index,
                    staging.position().0
                ));
            }
            Receiving {
                from,
                staging,
                next_number: 0,
                done: false,
            }
        } else {
            match current {
                Some(r)
                    if r.from == from
                        && r.next_number == chunk.number
                        && r.staging.position().0 == chunk.index
                        && !r.done =>
                {
                    r
                }
                _ => {
                    return Err(format!(
                    "chunk {} of the snapshot at entry {} from node {from} is not the one expected",
                    chunk.number, chunk.index
                ))
                }
            }
        };
        if chunk.number > 0 {
            receiving
                .staging
                .write_run(chunk.first, &chunk.pages)
                .await
                .map_err(|e| e.to_string())?;
        }
        receiving.next_number += 1;
        if chunk.last {
            if !receiving.staging.is_complete() {
                return Err(format!(
                    "the snapshot at entry {} ended after {} of {} pages",
                    chunk.index, receiving.staging.written, receiving.staging.total
                ));
            }
            receiving.done = true;
        }
        Ok(receiving)
    }
}
