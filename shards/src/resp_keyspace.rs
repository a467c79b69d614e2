//! The RESP door's view of the whole keyspace: KEYS and FLUSHDB, glob patterns (SCAN MATCH,
//! KEYS), and the INFO text with its sections. SCAN's cursors are in `scan_cursors.rs`.

use kvs_core::command::Command;
use kvs_core::state::CommandResult;
use kvs_wire::limits::SCAN_LIMIT_MAX;

use crate::ask::ask_all_from;
use crate::route::{merge_scan, CoreContext};
use crate::shard::{Origin, ShardInfo, ShardOp, ShardReply};

/// Keys FLUSHDB deletes per shard per round.
const FLUSH_PAGE: u32 = 1000;

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
