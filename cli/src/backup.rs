//! `kvs backup --to DIR` and `kvs backup verify DIR` (docs/operations.md, "Backup and
//! restore"; the format is in docs/backup-format.md).
//!
//! A backup is one file per shard, the shard's checkpoint as its page file holds it (the
//! meta page in its slot, every page the checkpoint uses at its offset, holes where pages
//! were free), streamed from the node chunk by chunk (each checked against its CRC32C), and
//! `MANIFEST.json`, written last and made durable after every shard file: a directory without
//! it is an incomplete backup that restore refuses. In a cluster each shard is read from its
//! leader, whose checkpoint holds every write acknowledged before the shard's backup began.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kvs_wire::auth::Credentials;
use kvs_wire::backup::{file_crc, FORMAT, MANIFEST};
use kvs_wire::message::BackupChunk;
use kvs_wire::tls::TlsOptions;
use kvs_wire::{Client, ClientError, ClientOptions, Request, Response};
use serde_json::{json, Value};

const PAGE_SIZE: u64 = 4096;
/// Chunks of a shard asked for before the first of them is answered.
const CHUNKS_IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Bad(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Progress on stderr when it is a terminal, at most twice a second.
struct Progress {
    terminal: bool,
    shown: Instant,
    started: Instant,
}

impl Progress {
    fn show(&mut self, shard: u32, shards: u32, done: u64, total: u64, bytes: u64) {
        if self.terminal && self.shown.elapsed() >= Duration::from_millis(500) {
            self.shown = Instant::now();
            let width = 30;
            let filled = (done * width / total.max(1)) as usize;
            eprint!(
                "\rbackup [{}{}] shard {}/{shards} {:.1} MiB ",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                shard + 1,
                bytes as f64 / 1048576.0
            );
        }
    }
}

/// Backs up the node at `addr` (every shard; in a cluster, each from its leader) to `dir`,
/// which must be empty or absent.
pub fn backup(
    addr: &str,
    dir: &str,
    credentials: Option<Credentials>,
    tls: Option<TlsOptions>,
) -> Result<(), BackupError> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(120),
        credentials,
        tls,
        ..ClientOptions::default()
    };
    let client = &connect(addr, &options)?;
    let dir = PathBuf::from(dir);
    if dir.exists() {
        let mut entries = fs::read_dir(&dir).map_err(io_error(&dir))?;
        if entries.next().is_some() {
            return Err(BackupError::Bad(format!(
                "{} is not empty: a backup goes into a new directory",
                dir.display()
            )));
        }
    }
    fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let info: Value = match client.call(&Request::Info)? {
        Response::Info(text) => serde_json::from_str(&text)
            .map_err(|e| BackupError::Bad(format!("the node's INFO is not JSON: {e}")))?,
        other => {
            return Err(BackupError::Bad(format!(
                "unexpected reply to INFO: {other:?}"
            )))
        }
    };
    let shards = info["shards"].as_u64().unwrap_or(0) as u32;
    let collections = client
        .collections()
        .unwrap_or_default()
        .into_iter()
        .map(|name| {
            let indexes: Vec<Value> = client
                .list_indexes(&name)
                .unwrap_or_default()
                .into_iter()
                .map(|index| index["name"].clone())
                .collect();
            json!({ "name": name, "indexes": indexes })
        })
        .collect::<Vec<_>>();
    let started = SystemTime::now();
    let mut progress = Progress {
        terminal: io::stderr().is_terminal(),
        shown: Instant::now(),
        started: Instant::now(),
    };
    let mut files = Vec::new();
    let mut bytes = 0;
    for shard in 0..shards {
        let addr = leader_address(&info, shard).unwrap_or_else(|| client.addr().to_string());
        let from = if addr == client.addr() {
            None
        } else {
            Some(connect(&addr, &options)?)
        };
        let source = from.as_ref().unwrap_or(client);
        let file = backup_shard(source, &dir, shard, shards, &mut progress, bytes)?;
        bytes += file["bytes"].as_u64().unwrap_or(0);
        files.push(file);
    }
    let cluster_id = info["shard"][0]["cluster"]["cluster_id"].clone();
    let manifest = json!({
        "format": FORMAT,
        "created": rfc3339(started),
        "source": client.addr(),
        "cluster_id": cluster_id,
        "shards": shards,
        "consistency": "each shard file is that shard's checkpoint at its log index: every write \
                        acknowledged before the shard's backup began is in it. Shards were \
                        backed up one after another, so a write made during the backup may be \
                        in one shard's file and not another's.",
        "collections": collections,
        "files": files,
    });
    write_durably(
        &dir,
        MANIFEST,
        serde_json::to_string_pretty(&manifest).unwrap().as_bytes(),
    )?;
    if progress.terminal {
        eprint!("\r");
    }
    eprintln!(
        "backup: {shards} shards, {:.1} MiB in {:.1} s to {}",
        bytes as f64 / 1048576.0,
        progress.started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

fn connect(addr: &str, options: &ClientOptions) -> Result<Client, BackupError> {
    Ok(Client::connect_with(addr, options.clone())?)
}

/// The client address of shard `shard`'s leader, as the node asked knows it (None: that
/// node itself, or no cluster).
fn leader_address(info: &Value, shard: u32) -> Option<String> {
    let cluster = &info["shard"][shard as usize]["cluster"];
    let leader = cluster["leader"].as_u64()?;
    if Some(leader) == cluster["node_id"].as_u64() {
        return None;
    }
    cluster["nodes"]
        .as_array()?
        .iter()
        .find(|node| node["id"].as_u64() == Some(leader))?["addr"]
        .as_str()
        .map(str::to_string)
}

/// Streams one shard's checkpoint into `shard-NNN.pages`; returns its manifest entry.
fn backup_shard(
    client: &Client,
    dir: &Path,
    shard: u32,
    shards: u32,
    progress: &mut Progress,
    bytes_before: u64,
) -> Result<Value, BackupError> {
    let name = format!("shard-{shard:03}.pages");
    let partial = dir.join(format!("{name}.partial"));
    let mut file = File::create(&partial).map_err(io_error(&partial))?;
    let check = |number: u32, reply: Response| -> Result<BackupChunk, BackupError> {
        match reply {
            Response::BackupChunk(chunk) => {
                let crc = crc32c::crc32c_append(crc32c::crc32c(&chunk.meta), &chunk.pages);
                if crc != chunk.crc || chunk.number != number {
                    return Err(BackupError::Bad(format!(
                        "shard {shard}: chunk {number} arrived damaged (CRC32C {crc:08x}, sent {:08x})",
                        chunk.crc
                    )));
                }
                Ok(chunk)
            }
            Response::Error { code, message } => Err(BackupError::Bad(format!(
                "shard {shard}: {code}: {message}"
            ))),
            other => Err(BackupError::Bad(format!(
                "unexpected reply to BACKUP: {other:?}"
            ))),
        }
    };
    let ask = |id: u64, number: u32| client.submit(&Request::Backup { shard, id, number });
    let first = check(0, ask(0, 0)?.wait()?)?;
    if first.meta.len() != PAGE_SIZE as usize {
        return Err(BackupError::Bad(format!(
            "shard {shard}: a meta page of {} bytes",
            first.meta.len()
        )));
    }
    // The meta page names its own slot (0 or 1) in its header.
    let slot = u64::from_le_bytes(first.meta[4..12].try_into().expect("8 bytes"));
    if slot > 1 {
        return Err(BackupError::Bad(format!(
            "shard {shard}: meta page names slot {slot}"
        )));
    }
    write_at(&mut file, &partial, slot * PAGE_SIZE, &first.meta)?;
    let mut end = 2 * PAGE_SIZE;
    let (id, total) = (first.id, first.total_pages);
    let mut pages = 0u64;
    let mut last = first.last;
    // Chunks are asked for CHUNKS_IN_FLIGHT ahead, so the node reads the next runs while
    // this one travels and is written; asks past the last chunk are answered with an error
    // that is dropped.
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 1;
    while !last {
        while in_flight.len() < CHUNKS_IN_FLIGHT {
            in_flight.push_back((next, ask(id, next)?));
            next += 1;
        }
        let (number, pending) = in_flight.pop_front().expect("filled above");
        let piece = check(number, pending.wait()?)?;
        if !(piece.pages.len() as u64).is_multiple_of(PAGE_SIZE) || piece.first < 2 {
            return Err(BackupError::Bad(format!(
                "shard {shard}: chunk {number} is not a run of pages"
            )));
        }
        write_at(&mut file, &partial, piece.first * PAGE_SIZE, &piece.pages)?;
        end = end.max(piece.first * PAGE_SIZE + piece.pages.len() as u64);
        pages += piece.pages.len() as u64 / PAGE_SIZE;
        last = piece.last;
        progress.show(
            shard,
            shards,
            pages,
            total,
            bytes_before + pages * PAGE_SIZE,
        );
    }
    for (_, pending) in in_flight {
        let _ = pending.wait();
    }
    if pages != total {
        return Err(BackupError::Bad(format!(
            "shard {shard}: {pages} pages arrived of the {total} announced"
        )));
    }
    file.set_len(end).map_err(io_error(&partial))?;
    file.sync_all().map_err(io_error(&partial))?;
    drop(file);
    let (bytes, crc) = file_crc(&partial).map_err(io_error(&partial))?;
    let path = dir.join(&name);
    fs::rename(&partial, &path).map_err(io_error(&path))?;
    Ok(json!({
        "shard": shard,
        "file": name,
        "index": first.index,
        "term": first.term,
        "pages": total,
        "bytes": bytes,
        "crc32c": format!("{crc:08x}"),
    }))
}

fn write_at(file: &mut File, path: &Path, offset: u64, bytes: &[u8]) -> Result<(), BackupError> {
    file.seek(SeekFrom::Start(offset)).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))
}

/// Writes `name` in `dir` so that it is there whole or not at all after a crash.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BackupError> {
    let partial = dir.join(format!("{name}.partial"));
    let mut file = File::create(&partial).map_err(io_error(&partial))?;
    file.write_all(bytes).map_err(io_error(&partial))?;
    file.sync_all().map_err(io_error(&partial))?;
    let path = dir.join(name);
    fs::rename(&partial, &path).map_err(io_error(&path))?;
    OpenOptions::new()
        .read(true)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// `time` as RFC 3339 in UTC, to the second.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let with_ms = kvs_wire::backup::rfc3339_ms(secs * 1000);
    format!("{}Z", with_ms.trim_end_matches(".000Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc3339() {
        let at = |secs| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_458_245), "2026-12-05T08:10:45Z");
    }
}
