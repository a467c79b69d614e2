//! `kvs dump --to FILE` and `kvs load FILE`: a node's whole content in a binary-safe,
//! checksummed, versioned file, streamed both ways so the data may be far larger than
//! memory. Moving to another shard count is a dump from the old node and a load into the new
//! one: keys are placed by the loading node. Format: docs/dump-format.md.
//!
//! A file is a 16-byte header (`KVSDUMP1`, format version, zero) and records, each
//! `kind (u8) | length (u32 LE) | payload | crc32c (u32 LE) of kind, length and payload`:
//!
//! - `PAIR` (1): key length (u32 LE), key, value: a key-value pair, bytes as they are;
//! - `COLLECTION` (2): a collection's name;
//! - `DOCUMENT` (3): collection name length (u32 LE), name, the document as JSON;
//! - `INDEX` (4): collection name length (u32 LE), name, the index definition as JSON
//!   (written after the collection's documents, so a load builds each index once);
//! - `END` (255): the counts of pairs, collections, documents and indexes (u64 LE each). A
//!   file without it was cut short.
//!
//! Versions are not carried: a version is the node's own write counter, and a load writes
//! every pair anew (a client using `cas` reads the version again after a load).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use kvs_wire::{Client, ClientError};
use serde_json::{json, Value as Json};

const MAGIC: &[u8; 8] = b"KVSDUMP1";
const FORMAT_VERSION: u32 = 1;
const PAIR: u8 = 1;
const COLLECTION: u8 = 2;
const DOCUMENT: u8 = 3;
const INDEX: u8 = 4;
const END: u8 = 255;
/// Largest record payload a load accepts: a largest document and its collection's name.
const RECORD_SIZE_MAX: usize = 64 * 1024 * 1024;
/// Pairs one scan page asks for.
const SCAN_PAGE: u32 = 1000;
/// A load sends pairs in MPUTs of at most this many pairs or bytes.
const PUT_BATCH_PAIRS: usize = 1000;
const PUT_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Documents per insert while loading.
const INSERT_BATCH_DOCUMENTS: usize = 500;
const INSERT_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What a dump holds, counted as it is written or read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub pairs: u64,
    pub collections: u64,
    pub documents: u64,
    pub indexes: u64,
}

/// Why a dump or load stopped.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: {detail} (at byte {offset}); what came before it was loaded")]
    Bad {
        path: String,
        offset: u64,
        detail: String,
    },
}

/// A progress line on stderr when it is a terminal, at most twice a second.
struct Progress {
    verb: &'static str,
    shown: Instant,
    terminal: bool,
}

impl Progress {
    fn new(verb: &'static str) -> Progress {
        Progress {
            verb,
            shown: Instant::now(),
            terminal: io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, counts: &Counts, bytes: u64) {
        if self.terminal && self.shown.elapsed() >= Duration::from_millis(500) {
            self.shown = Instant::now();
            eprint!("\r{}", self.line(counts, bytes));
        }
    }

    fn line(&self, counts: &Counts, bytes: u64) -> String {
        format!(
            "{} {} pairs, {} documents in {} collections, {} indexes ({:.1} MiB)",
            self.verb,
            counts.pairs,
            counts.documents,
            counts.collections,
            counts.indexes,
            bytes as f64 / (1024.0 * 1024.0)
        )
    }

    fn done(&self, counts: &Counts, bytes: u64) {
        let end = if self.terminal { "\r" } else { "" };
        eprintln!("{end}{}", self.line(counts, bytes));
    }
}

fn record(out: &mut impl Write, kind: u8, parts: &[&[u8]]) -> io::Result<u64> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| io::Error::other("record over 4 GiB"))?;
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, &len.to_le_bytes());
    out.write_all(&[kind])?;
    out.write_all(&len.to_le_bytes())?;
    for part in parts {
        crc = crc32c::crc32c_append(crc, part);
        out.write_all(part)?;
    }
    out.write_all(&crc.to_le_bytes())?;
    Ok(u64::from(len) + 9)
}

fn named(name: &str) -> [u8; 4] {
    (name.len() as u32).to_le_bytes()
}

/// Writes everything the node at `client` holds to `path`; returns what it wrote.
pub fn dump(client: &Client, path: &str) -> Result<Counts, DumpError> {
    let io_error = |source| DumpError::Io {
        path: path.to_string(),
        source,
    };
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io_error)?);
    let mut counts = Counts::default();
    let mut bytes = 16u64;
    let mut progress = Progress::new("dumped");
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    out.write_all(&header).map_err(io_error)?;
    let mut start = Vec::new();
    loop {
        let (pairs, next) = client.scan(&start, None, SCAN_PAGE)?;
        for (key, value) in &pairs {
            let key_len = (key.len() as u32).to_le_bytes();
            bytes += record(&mut out, PAIR, &[&key_len, key, value]).map_err(io_error)?;
            counts.pairs += 1;
        }
        progress.tick(&counts, bytes);
        match next {
            Some(next) => start = next,
            None => break,
        }
    }
    for name in client.collections()? {
        bytes += record(&mut out, COLLECTION, &[name.as_bytes()]).map_err(io_error)?;
        counts.collections += 1;
        let mut failed = None;
        client
            .find_each(&name, &json!({}), |doc| {
                let text = doc.to_string();
                match record(
                    &mut out,
                    DOCUMENT,
                    &[&named(&name), name.as_bytes(), text.as_bytes()],
                ) {
                    Ok(n) => {
                        bytes += n;
                        counts.documents += 1;
                        progress.tick(&counts, bytes);
                        Ok(())
                    }
                    Err(e) => {
                        failed = Some(e);
                        Err(ClientError::Protocol(
                            "stopped: the dump file failed".into(),
                        ))
                    }
                }
            })
            .map_err(|e| match failed.take() {
                Some(io) => io_error(io),
                None => DumpError::Client(e),
            })?;
        for index in client.list_indexes(&name)? {
            if index["name"] == "_id_" {
                continue;
            }
            let text = index.to_string();
            bytes += record(
                &mut out,
                INDEX,
                &[&named(&name), name.as_bytes(), text.as_bytes()],
            )
            .map_err(io_error)?;
            counts.indexes += 1;
        }
    }
    let mut end = Vec::with_capacity(32);
    for n in [
        counts.pairs,
        counts.collections,
        counts.documents,
        counts.indexes,
    ] {
        end.extend_from_slice(&n.to_le_bytes());
    }
    bytes += record(&mut out, END, &[&end]).map_err(io_error)?;
    out.flush().map_err(io_error)?;
    out.get_ref().sync_all().map_err(io_error)?;
    progress.done(&counts, bytes);
    Ok(counts)
}

/// Reads records from a dump file, checking each.
struct Reader {
    input: BufReader<File>,
    path: String,
    offset: u64,
}

impl Reader {
    fn bad(&self, detail: impl Into<String>) -> DumpError {
        DumpError::Bad {
            path: self.path.clone(),
            offset: self.offset,
            detail: detail.into(),
        }
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), DumpError> {
        match self.input.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.bad(format!("the file ends inside {what}: it was cut short")))
            }
            Err(source) => Err(DumpError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn header(&mut self) -> Result<(), DumpError> {
        let mut header = [0u8; 16];
        self.exact(&mut header, "the header")?;
        if &header[..8] != MAGIC {
            return Err(self.bad("not a kvs dump (no KVSDUMP1 header)"));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(self.bad(format!(
                "dump format {version}; this kvs reads format {FORMAT_VERSION}"
            )));
        }
        self.offset = 16;
        Ok(())
    }

    /// The next record: (kind, payload).
    fn next(&mut self) -> Result<(u8, Vec<u8>), DumpError> {
        let mut head = [0u8; 5];
        self.exact(&mut head, "a record header (no END record)")?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        if len > RECORD_SIZE_MAX {
            return Err(self.bad(format!("a record of {len} bytes: the file is damaged")));
        }
        let mut payload = vec![0u8; len];
        self.exact(&mut payload, "a record")?;
        let mut crc = [0u8; 4];
        self.exact(&mut crc, "a record's checksum")?;
        let want = crc32c::crc32c_append(crc32c::crc32c(&head), &payload);
        if u32::from_le_bytes(crc) != want {
            return Err(self.bad("a record fails its checksum: the file is damaged"));
        }
        self.offset += len as u64 + 9;
        Ok((head[0], payload))
    }
}

/// A collection name and what follows it in a DOCUMENT or INDEX payload.
fn split_named(payload: &[u8]) -> Option<(String, &[u8])> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(payload.get(4..4 + len)?).ok()?;
    Some((name.to_string(), &payload[4 + len..]))
}

/// Loads the dump at `path` into the node at `client`; returns what it loaded. Pairs
/// overwrite keys the node has; a document whose `_id` the collection has fails the load.
pub fn load(client: &Client, path: &str) -> Result<Counts, DumpError> {
    let file = File::open(path).map_err(|source| DumpError::Io {
        path: path.to_string(),
        source,
    })?;
    let mut reader = Reader {
        input: BufReader::with_capacity(1 << 20, file),
        path: path.to_string(),
        offset: 0,
    };
    reader.header()?;
    let mut counts = Counts::default();
    let mut progress = Progress::new("loaded");
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut pair_bytes = 0;
    let mut documents: Vec<Json> = Vec::new();
    let mut document_bytes = 0;
    let mut collection = String::new();
    let flush_pairs = |pairs: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<(), DumpError> {
        if !pairs.is_empty() {
            let refs: Vec<(&[u8], &[u8])> = pairs
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            client.mput(&refs)?;
            pairs.clear();
        }
        Ok(())
    };
    let flush_documents = |collection: &str, documents: &mut Vec<Json>| -> Result<(), DumpError> {
        if !documents.is_empty() {
            client.insert(collection, documents)?;
            documents.clear();
        }
        Ok(())
    };
    loop {
        let (kind, payload) = reader.next()?;
        match kind {
            PAIR => {
                let key_len = payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                    .filter(|&n| n + 4 <= payload.len())
                    .ok_or_else(|| reader.bad("a pair record without its key"))?;
                let key = payload[4..4 + key_len].to_vec();
                let value = payload[4 + key_len..].to_vec();
                pair_bytes += key.len() + value.len();
                pairs.push((key, value));
                counts.pairs += 1;
                if pairs.len() >= PUT_BATCH_PAIRS || pair_bytes >= PUT_BATCH_BYTES {
                    flush_pairs(&mut pairs)?;
                    pair_bytes = 0;
                }
            }
            COLLECTION => {
                flush_documents(&collection, &mut documents)?;
                collection = String::from_utf8(payload)
                    .map_err(|_| reader.bad("a collection name that is not UTF-8"))?;
                counts.collections += 1;
            }
            DOCUMENT | INDEX => {
                let (name, json) =
                    split_named(&payload).ok_or_else(|| reader.bad("a malformed record"))?;
                let json: Json = serde_json::from_slice(json)
                    .map_err(|e| reader.bad(format!("a record that is not JSON: {e}")))?;
                if name != collection {
                    return Err(reader.bad(format!(
                        "a record of collection {name:?} outside it (in {collection:?})"
                    )));
                }
                if kind == DOCUMENT {
                    document_bytes += payload.len();
                    documents.push(json);
                    counts.documents += 1;
                    if documents.len() >= INSERT_BATCH_DOCUMENTS
                        || document_bytes >= INSERT_BATCH_BYTES
                    {
                        flush_documents(&collection, &mut documents)?;
                        document_bytes = 0;
                    }
                } else {
                    flush_documents(&collection, &mut documents)?;
                    let key = &json["key"];
                    let unique = json["unique"].as_bool().unwrap_or(false);
                    client.create_index(&collection, key, json["name"].as_str(), unique)?;
                    counts.indexes += 1;
                }
            }
            END => {
                flush_pairs(&mut pairs)?;
                flush_documents(&collection, &mut documents)?;
                let field = |i: usize| {
                    payload
                        .get(i * 8..i * 8 + 8)
                        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                };
                let written = Counts {
                    pairs: field(0).unwrap_or(u64::MAX),
                    collections: field(1).unwrap_or(u64::MAX),
                    documents: field(2).unwrap_or(u64::MAX),
                    indexes: field(3).unwrap_or(u64::MAX),
                };
                if written != counts {
                    return Err(reader.bad(format!(
                        "the END record counts {written:?} but the file held {counts:?}"
                    )));
                }
                progress.done(&counts, reader.offset);
                return Ok(counts);
            }
            other => return Err(reader.bad(format!("an unknown record kind {other}"))),
        }
        progress.tick(&counts, reader.offset);
    }
}
