//! `kvsd --restore-from BACKUP --data-dir NEW` (docs/operations.md, "Backup and restore"):
//! builds a data directory from a backup (`kvs backup`) and exits. With the cluster flags
//! (`--node-id`, `--initial-cluster`) it builds that member's directory: every member of a
//! new cluster is restored from the same backup, so all start from the same checkpoint at
//! the same log position (what Raft requires of a group's first state), and elect leaders
//! in the terms after the backup's.
//!
//! Nothing is trusted before it is checked: the manifest and every shard file's size and
//! CRC32C first (a damaged or incomplete backup is refused, naming the file), then each
//! shard file's meta page against the manifest. The directory is built beside NEW
//! (`NEW.restoring`): each shard gets an empty log and the backup's checkpoint as its page
//! file (the backup's shard file is a page file: the meta page in its slot, every page the
//! checkpoint uses at its offset). The result is checked as `kvsd --verify` checks a data
//! directory (pages, tree, free list, documents against indexes, the log against the
//! checkpoint), made durable, and only then renamed to NEW. A restore that fails or is
//! killed leaves no NEW, only `NEW.restoring`, which the next restore removes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kvs_core::log::format::{Record, RecordKind};
use kvs_core::log::Log;
use kvs_core::store::page::{decode_meta, encode_meta, Meta, PAGE_SIZE};
use kvs_core::store::PAGE_FILE;
use serde_json::Value;

use crate::archive::{replay, ReplayError, Until};
use crate::config::ClusterConfig;
use crate::data_dir::{self, DataDir};
use crate::log_io::DmaDisk;

/// Why a restore did not happen.
#[derive(Debug)]
pub enum RestoreError {
    /// The backup is damaged or incomplete, or NEW is in the way: nothing was written.
    Refused(String),
    /// Reading or writing failed.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for RestoreError {
    fn from(e: anyhow::Error) -> RestoreError {
        RestoreError::Failed(e)
    }
}

/// Restores the backup in `backup` into a new data directory `target`: a single node's, or
/// with `cluster`, that member's of a new cluster.
pub fn restore(
    backup: &Path,
    target: &Path,
    cluster: Option<&ClusterConfig>,
    archive: Option<(&Path, Until)>,
) -> Result<(), RestoreError> {
    let (manifest, problems) = kvs_wire::backup::verify(backup)
        .with_context(|| format!("cannot read the backup {}", backup.display()))?;
    if !problems.is_empty() {
        return Err(RestoreError::Refused(problems.join("; ")));
    }
    let manifest = manifest.expect("a whole backup has a manifest");
    if target.exists()
        && fs::read_dir(target)
            .with_context(|| format!("cannot read {}", target.display()))?
            .next()
            .is_some()
    {
        return Err(RestoreError::Refused(format!(
            "{} is not empty: a restore builds a new data directory",
            target.display()
        )));
    }
    let building = PathBuf::from(format!("{}.restoring", target.display()));
    if building.exists() {
        fs::remove_dir_all(&building)
            .with_context(|| format!("cannot remove {}", building.display()))?;
    }
    let result = build(backup, &manifest, &building, cluster, archive);
    if result.is_err() {
        let _ = fs::remove_dir_all(&building);
        return result;
    }
    if target.exists() {
        fs::remove_dir(target).with_context(|| format!("cannot replace {}", target.display()))?;
    }
    fs::rename(&building, target).with_context(|| {
        format!(
            "cannot rename {} to {}",
            building.display(),
            target.display()
        )
    })?;
    sync_dir(
        target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    let shards = manifest["shards"].as_u64().unwrap_or(0);
    let member = cluster.map_or(String::new(), |c| {
        format!(" as node {} of the cluster {}", c.node_id, c.members_text())
    });
    eprintln!(
        "kvsd: restored {shards} shards from {} (backup of {}, {}) into {}{member}",
        backup.display(),
        manifest["source"].as_str().unwrap_or("?"),
        manifest["created"].as_str().unwrap_or("?"),
        target.display()
    );
    Ok(())
}

fn build(
    backup: &Path,
    manifest: &Value,
    building: &Path,
    cluster: Option<&ClusterConfig>,
    archive: Option<(&Path, Until)>,
) -> Result<(), RestoreError> {
    let shards = manifest["shards"].as_u64().unwrap_or(0) as u32;
    let data = DataDir::open(building, Some(shards), cluster)?;
    for (shard, entry) in manifest["files"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let shard = shard as u32;
        let image = backup.join(entry["file"].as_str().unwrap_or_default());
        restore_shard(&data.shard_dir(shard), shard, &image, entry, archive)?;
    }
    drop(data);
    // The same checks start-up and `kvsd --verify` make, on what was built.
    if !data_dir::verify(building)? {
        return Err(RestoreError::Refused(format!(
            "the data directory built from {} does not check (problems above)",
            backup.display()
        )));
    }
    sync_dir(building)?;
    Ok(())
}

/// Gives shard `shard` (its directory `dir`) the backup's checkpoint, the archive's entries
/// after it up to the moment asked (if an archive is given), and a log that goes on from
/// there.
fn restore_shard(
    dir: &Path,
    shard: u32,
    image: &Path,
    entry: &Value,
    archive: Option<(&Path, Until)>,
) -> Result<(), RestoreError> {
    let mut source =
        File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let mut head = vec![0u8; 2 * PAGE_SIZE];
    source
        .read_exact(&mut head)
        .with_context(|| format!("{}: shorter than its meta pages", image.display()))?;
    let (_, meta) = newest_meta(&head)
        .ok_or_else(|| RestoreError::Refused(format!("{}: no valid meta page", image.display())))?;
    if meta.shard != shard || Some(meta.applied_index) != entry["index"].as_u64() {
        return Err(RestoreError::Refused(format!(
            "{}: holds shard {} at log index {}, the manifest says shard {shard} at {}",
            image.display(),
            meta.shard,
            meta.applied_index,
            entry["index"]
        )));
    }
    let pages = dir.join(PAGE_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pages)
        .with_context(|| format!("cannot create {}", pages.display()))?;
    file.write_all(&head)
        .and_then(|()| std::io::copy(&mut source, &mut file).map(drop))
        .and_then(|()| {
            let len = file.metadata()?.len();
            file.set_len(len.max(meta.page_count * PAGE_SIZE as u64))
        })
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", pages.display()))?;
    drop(file);
    sync_dir(dir)?;
    match archive {
        None => {}
        Some((archive, until)) => {
            let replayed = replay(dir, archive, shard, until).map_err(|e| match e {
                ReplayError::Refused(message) => RestoreError::Refused(message),
                ReplayError::Failed(message) => RestoreError::Failed(anyhow::anyhow!(message)),
            })?;
            let time = replayed.time.map_or("no commit time".to_string(), |ms| {
                format!("last commit at {ms} ms")
            });
            eprintln!(
                "kvsd: shard {shard}: {} entries replayed from the archive: now at entry {} ({time}); the archive holds up to entry {}",
                replayed.entries, replayed.index, replayed.archive_end
            );
        }
    }
    let meta = close_partial_entry(&pages)?;
    let (index, term) = (meta.applied_index, meta.applied_term);
    // A log holding only Raft's hard state at that position (its term, vote and commit
    // index): the shard goes on from the checkpoint, as after a restart whose log before it
    // was trimmed.
    let disk = DmaDisk::new(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let term = term.max(meta.raft_term);
    let vote = if term == meta.raft_term {
        meta.raft_vote
    } else {
        0
    };
    let vote = vote.to_le_bytes();
    let hard_state = Record {
        kind: RecordKind::HardState,
        entry_type: 0,
        index,
        term,
        payload: &vote,
    };
    futures_lite::future::block_on(async {
        let (mut log, _) = Log::open(disk, shard).await?;
        log.append(&[hard_state]).await
    })
    .with_context(|| format!("cannot create shard {shard}'s log"))?;
    Ok(())
}

/// Reads the page file's newest checkpoint and, when it holds only the first commands of its
/// next entry (a checkpoint may fall between two commands of one batch; start-up applies the
/// rest from the log), makes it hold that entry as applied: the restored log does not have
/// the entry, and a new entry at that index would otherwise have its first commands skipped
/// as already applied. The rest of the batch was not yet acknowledged to anyone when the
/// checkpoint was written, so the restored state is the log's state up to a point inside
/// that batch, as a crash there would leave it. Returns the checkpoint's meta.
fn close_partial_entry(pages: &Path) -> anyhow::Result<Meta> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(pages)
        .with_context(|| format!("cannot open {}", pages.display()))?;
    let mut head = vec![0u8; 2 * PAGE_SIZE];
    file.read_exact(&mut head)
        .with_context(|| format!("cannot read {}", pages.display()))?;
    let (slot, mut meta) =
        newest_meta(&head).with_context(|| format!("{}: no valid meta page", pages.display()))?;
    if meta.partial_commands == 0 {
        return Ok(meta);
    }
    meta = closed(meta);
    let mut page = vec![0u8; PAGE_SIZE];
    encode_meta(&meta, &mut page);
    file.seek(SeekFrom::Start(slot * PAGE_SIZE as u64))
        .and_then(|_| file.write_all(&page))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", pages.display()))?;
    Ok(meta)
}

/// The newest valid checkpoint of a page file's two meta pages (`head`, its first two
/// pages), and its slot.
fn newest_meta(head: &[u8]) -> Option<(u64, Meta)> {
    (0..2u64)
        .filter_map(|slot| {
            let at = slot as usize * PAGE_SIZE;
            decode_meta(&head[at..at + PAGE_SIZE], slot)
                .ok()
                .map(|meta| (slot, meta))
        })
        .max_by_key(|(_, meta)| meta.seq)
}

/// `meta` with its partly applied next entry counted as applied (see
/// [`close_partial_entry`]).
fn closed(mut meta: Meta) -> Meta {
    if meta.partial_commands > 0 {
        meta.applied_index += 1;
        // The entry's term is at least the checkpoint's and at most Raft's then.
        meta.applied_term = meta.applied_term.max(meta.raft_term);
        meta.partial_commands = 0;
    }
    meta
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_inside_a_batch_is_restored_with_that_batch_counted_applied() {
        let meta = Meta {
            shard: 1,
            seq: 7,
            applied_index: 40,
            applied_term: 2,
            partial_commands: 3,
            raft_term: 3,
            raft_vote: 1,
            page_count: 10,
            ..Meta::default()
        };
        let fixed = closed(meta.clone());
        assert_eq!(
            (
                fixed.applied_index,
                fixed.applied_term,
                fixed.partial_commands
            ),
            (41, 3, 0)
        );
        let whole = Meta {
            partial_commands: 0,
            ..meta
        };
        assert_eq!(
            closed(whole.clone()),
            whole,
            "a whole checkpoint is kept as it is"
        );
        // Written back, the page reads as the fixed checkpoint.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.db");
        let mut file = vec![0u8; 2 * PAGE_SIZE];
        let slot = meta_slot(&meta);
        encode_meta(
            &meta_with_partial(),
            &mut file[slot * PAGE_SIZE..(slot + 1) * PAGE_SIZE],
        );
        std::fs::write(&path, &file).unwrap();
        let restored = close_partial_entry(&path).unwrap();
        assert_eq!((restored.applied_index, restored.partial_commands), (41, 0));
        let again = close_partial_entry(&path).unwrap();
        assert_eq!(again, restored, "the page file holds the fixed checkpoint");
    }

    fn meta_with_partial() -> Meta {
        Meta {
            shard: 1,
            seq: 7,
            applied_index: 40,
            applied_term: 2,
            partial_commands: 3,
            raft_term: 3,
            raft_vote: 1,
            page_count: 10,
            ..Meta::default()
        }
    }

    fn meta_slot(meta: &Meta) -> usize {
        (meta.seq % 2) as usize
    }
}
