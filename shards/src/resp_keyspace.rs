//! The RESP door's view of the whole keyspace: SCAN's cursors, glob patterns (SCAN MATCH,
//! KEYS), and the INFO text with its sections.
//!
//! SCAN cursors are the node's, not a connection's: a client pool may continue a scan on
//! another connection, as it can with Redis. A cursor is a number standing for the key the
//! next page starts at (keys are ordered, and a key does not fit in the 64-bit cursor
//! clients parse); the table keeps the newest [`SCAN_CURSORS_MAX`]. A cursor the node does
//! not know (forgotten, or from before a restart) starts the scan over: Redis never refuses
//! a cursor, and starting over still returns every key that stays present (more than once,
//! which SCAN allows). See ADR 0014.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use kvs_core::command::Command;
use kvs_core::state::CommandResult;
use kvs_wire::limits::SCAN_LIMIT_MAX;

use crate::ask::ask_all_from;
use crate::route::{merge_scan, CoreContext};
use crate::shard::{Origin, ShardInfo, ShardOp, ShardReply};

/// Keys FLUSHDB deletes per shard per round.
const FLUSH_PAGE: u32 = 1000;

/// Cursors the node remembers; the oldest is forgotten past this.
pub const SCAN_CURSORS_MAX: usize = 16 * 1024;

/// The node's open SCAN cursors, shared by its cores. Only SCAN takes the lock, once per
/// page; no request on the hot path touches it.
pub struct ScanCursors {
    table: Mutex<CursorTable>,
}

struct CursorTable {
    next: u64,
    keys: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

impl ScanCursors {
    /// `seed` makes the first cursor (a restarted node hands out different numbers).
    pub fn new(seed: u64) -> ScanCursors {
        ScanCursors {
            table: Mutex::new(CursorTable {
                next: (seed % (1 << 40)).max(1),
                keys: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// A cursor standing for `next_key`, where the next page starts.
    pub fn remember(&self, next_key: Vec<u8>) -> u64 {
        let mut table = self
            .table
            .lock()
            .expect("the cursor table is never poisoned");
        let cursor = table.next;
        table.next += 1;
        if table.order.len() >= SCAN_CURSORS_MAX {
            if let Some(oldest) = table.order.pop_front() {
                table.keys.remove(&oldest);
            }
        }
        table.keys.insert(cursor, next_key);
        table.order.push_back(cursor);
        assert_eq!(table.keys.len(), table.order.len());
        cursor
    }

    /// Where the page of `cursor` starts: the first key for 0 and for a cursor not known.
    /// A cursor stays valid after use, so a client may ask for the same page again.
    pub fn resume(&self, cursor: u64) -> Vec<u8> {
        if cursor == 0 {
            return Vec::new();
        }
        let table = self
            .table
            .lock()
            .expect("the cursor table is never poisoned");
        table.keys.get(&cursor).cloned().unwrap_or_default()
    }
}

/// KEYS: every key-value key matching `pattern`, in key order, read page by page as SCAN
/// reads them. Like Redis's KEYS it answers only when the whole keyspace was walked, and the
/// docs say to prefer SCAN.
pub async fn matching_keys(
    ctx: &CoreContext,
    origin: Origin,
    pattern: &[u8],
) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    let mut start = Vec::new();
    loop {
        let ops = (0..ctx.shard_count)
            .map(|shard| {
                let op = ShardOp::Scan {
                    start: start.clone(),
                    end: None,
                    limit: SCAN_LIMIT_MAX,
                };
                (shard, op)
            })
            .collect();
        let replies = ask_all_from(ctx, origin, ops).await;
        let (pairs, next) = merge_scan(replies, SCAN_LIMIT_MAX).map_err(failure)?;
        keys.extend(
            pairs
                .into_iter()
                .map(|(key, _)| key)
                .filter(|key| glob_match(pattern, key)),
        );
        match next {
            Some(next) => start = next,
            None => return Ok(keys),
        }
    }
}

/// FLUSHDB and FLUSHALL: deletes every key-value key, a page per shard at a time, each
/// delete a write like any other (logged, durable before the reply). Not atomic: a key
/// written meanwhile may stay. Documents are not touched. Returns how many keys went.
pub async fn delete_all(ctx: &CoreContext, origin: Origin) -> Result<u64, String> {
    let mut deleted = 0;
    loop {
        let ops = (0..ctx.shard_count)
            .map(|shard| {
                let op = ShardOp::Scan {
                    start: Vec::new(),
                    end: None,
                    limit: FLUSH_PAGE,
                };
                (shard, op)
            })
            .collect();
        let mut deletes = Vec::new();
        for (shard, reply) in (0..ctx.shard_count).zip(ask_all_from(ctx, origin, ops).await) {
            match reply {
                ShardReply::Scanned(pairs) => deletes.extend(
                    pairs
                        .into_iter()
                        .map(|(key, _)| (shard, ShardOp::Write(Command::Delete { key }))),
                ),
                other => return Err(failure(other)),
            }
        }
        if deletes.is_empty() {
            return Ok(deleted);
        }
        for reply in ask_all_from(ctx, origin, deletes).await {
            match reply {
                ShardReply::Written(CommandResult::Deleted { existed }) => {
                    deleted += u64::from(existed)
                }
                other => return Err(failure(other)),
            }
        }
    }
}

/// The error line for a shard reply that is not what was asked for.
fn failure(reply: ShardReply) -> String {
    match reply {
        ShardReply::Error(code, message) => format!("ERR {code}: {message}"),
        other => format!("ERR internal: unexpected shard reply {other:?}"),
    }
}

/// Node-wide figures INFO gives beside the shards': taken when the INFO arrives.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeFigures {
    pub connected_clients: u64,
    pub connections_received: u64,
    pub commands_processed: u64,
    pub used_memory: u64,
}

/// The sections INFO prints, in order.
const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "keyspace",
];

/// Whether INFO with `wanted` (lower-case section names; none: the default set) prints
/// `section`.
fn wanted(wanted: &[String], section: &str) -> bool {
    wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == section || w == "all" || w == "everything" || w == "default")
}

/// The INFO text: Redis's fields that clients and `redis-cli --stat` read, and kvs's own
/// (`kvs_...`), in the sections asked for.
pub fn info_text(shards: &[ShardInfo], node: &NodeFigures, sections: &[String]) -> String {
    fn field(text: &mut String, name: &str, value: impl std::fmt::Display) {
        text.push_str(&format!("{name}:{value}\r\n"));
    }
    let keys: u64 = shards.iter().map(|s| s.keys).sum();
    let mut text = String::new();
    for &section in SECTIONS.iter().filter(|s| wanted(sections, s)) {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        let mut title = section.to_string();
        title[..1].make_ascii_uppercase();
        text.push_str(&format!("# {title}\r\n"));
        let t = &mut text;
        match section {
            "server" => {
                field(t, "redis_version", "7.0.0");
                field(t, "kvs_version", env!("CARGO_PKG_VERSION"));
                field(t, "redis_mode", "standalone");
                field(t, "process_id", std::process::id());
                field(t, "kvs_shards", shards.len());
            }
            "clients" => {
                field(t, "connected_clients", node.connected_clients);
                field(t, "blocked_clients", 0);
            }
            "memory" => {
                field(t, "used_memory", node.used_memory);
                field(t, "used_memory_rss", node.used_memory);
            }
            "persistence" => {
                field(t, "loading", 0);
                field(t, "aof_enabled", 1);
                field(t, "aof_rewrite_in_progress", 0);
                field(t, "rdb_bgsave_in_progress", 0);
                field(t, "kvs_durability", "fdatasync-before-ack");
                let log_bytes: u64 = shards.iter().map(|s| s.log_size_bytes).sum();
                field(t, "kvs_log_size_bytes", log_bytes);
            }
            "stats" => {
                field(t, "total_connections_received", node.connections_received);
                field(t, "total_commands_processed", node.commands_processed);
            }
            "keyspace" => {
                field(t, "db0", format!("keys={keys},expires=0,avg_ttl=0"));
                for shard in shards {
                    field(
                        t,
                        &format!("kvs_shard{}", shard.shard),
                        format!(
                            "keys={},last_index={},applied_index={},log_syncs={}",
                            shard.keys, shard.last_index, shard.applied_index, shard.log_syncs
                        ),
                    );
                }
            }
            _ => unreachable!("SECTIONS lists what is matched"),
        }
    }
    text
}

/// Redis's glob patterns for SCAN MATCH: `*`, `?`, `[abc]`, `[a-z]`, `[^x]`, `\x`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it matched up to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match_class(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match step {
            Some(next) => {
                p = next;
                t += 1;
            }
            None => match star {
                Some((after, matched)) => {
                    p = after;
                    t = matched + 1;
                    star = Some((after, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[at] == b'['`; returns the index after
/// the class when it matches.
fn match_class(pattern: &[u8], at: usize, c: u8) -> Option<usize> {
    let mut i = at + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (low, high) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            matched |= (low..=high).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    // An unterminated class matches like Redis does: up to the end of the pattern.
    (matched != negate).then_some((i + 1).min(pattern.len()))
}
