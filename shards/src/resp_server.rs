//! The Redis-protocol (RESP2) listener: the key-value subset of Redis on top of the same
//! shards, with the same durability (a SET is answered after its log record is fdatasync'ed
//! and applied).
//!
//! Supported: PING, ECHO, GET, SET (with NX or XX; EX/PX/EXAT/PXAT are refused because kvs
//! has no key expiry), DEL, EXISTS, MGET, MSET, INCR, DECR, INCRBY, DECRBY, APPEND, STRLEN,
//! GETSET, DBSIZE, SCAN (cursor, MATCH, COUNT), INFO, COMMAND, QUIT, plus SELECT 0 and the
//! CLIENT and CONFIG GET calls client libraries make when they connect. Anything else gets a
//! Redis-style `-ERR unknown command`.
//!
//! Redis clients expect replies in command order, so every command takes a sequence number
//! and replies that finish early wait for the ones before them (`Connection::respond_in_order`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use kvs_core::command::Command;
use kvs_core::state::CommandResult;
use kvs_wire::limits::{KEY_SIZE_MAX, SCAN_LIMIT_MAX, VALUE_SIZE_MAX};
use kvs_wire::resp::{self, Parsed};
use kvs_wire::{shard_for_key, ErrorCode};

use crate::conn::{self, Connection, ReceiveBuffer};
use crate::route::{merge_scan, split_by_shard, CoreContext, Deliver, Parts, Target};
use crate::runtime::TcpStream;
use crate::shard::{ShardInfo, ShardOp, ShardReply};
use crate::spread::ConnectionSlot;

/// Open SCAN cursors one connection may hold; the oldest is forgotten past this.
const SCAN_CURSORS_MAX: usize = 1024;
/// SCAN's COUNT when none is given (Redis's default).
const SCAN_COUNT_DEFAULT: u32 = 10;

/// How a single-shard reply becomes a RESP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RespRender {
    /// GET: the value or a null bulk string.
    Get,
    /// STRLEN: the value's length, 0 when missing.
    Strlen,
    /// SET: +OK.
    Set,
    /// SET NX / SET XX: +OK, or a null bulk string when the condition failed.
    SetConditional,
    /// INCR family and APPEND: an integer.
    Integer,
    /// GETSET: the previous value or a null bulk string.
    GetSet,
    /// TYPE: `string` for a key that exists (kvs keeps strings only), `none` otherwise.
    Type,
}

impl RespRender {
    const ALL: [RespRender; 7] = [
        RespRender::Get,
        RespRender::Strlen,
        RespRender::Set,
        RespRender::SetConditional,
        RespRender::Integer,
        RespRender::GetSet,
        RespRender::Type,
    ];

    /// A target's aux for a single-shard reply: the rendering, and whether the connection
    /// speaks RESP3.
    fn aux(self, resp3: bool) -> u32 {
        u32::from(self as u8) | u32::from(resp3) << 8
    }

    fn from_aux(aux: u32) -> (RespRender, bool) {
        let render = Self::ALL[(aux & 0xff) as usize];
        debug_assert_eq!(render.aux(false), aux & 0xff);
        (render, aux >> 8 != 0)
    }
}

/// Encodes a shard's reply to one RESP command on its connection (`Connection`'s reply
/// encoder for this protocol): the tag is the command's sequence number, in whose place the
/// reply is written.
fn encode_reply(conn: &Connection, sequence: u64, aux: u32, reply: ShardReply) {
    let (render, resp3) = RespRender::from_aux(aux);
    conn.respond_in_order_with(sequence, |out| render_into(out, render, reply, resp3));
}

/// A missing value: the null bulk string in RESP2, the null type in RESP3.
fn null(out: &mut Vec<u8>, resp3: bool) {
    if resp3 {
        out.extend_from_slice(b"_\r\n");
    } else {
        resp::null(out);
    }
}

/// A shard's typed error as a Redis error line: `-ERR DISK_FULL: ...`.
fn error_line(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    resp::error(out, &format!("ERR {code}: {message}"));
}

/// Renders a single-shard reply.
pub fn render(render: RespRender, reply: ShardReply, resp3: bool) -> Vec<u8> {
    let mut out = Vec::new();
    render_into(&mut out, render, reply, resp3);
    out
}

/// Appends the RESP reply for `reply` to `out`.
pub fn render_into(out: &mut Vec<u8>, render: RespRender, reply: ShardReply, resp3: bool) {
    match (render, reply) {
        (_, ShardReply::Error(code, message)) => error_line(out, code, &message),
        (RespRender::Get, ShardReply::Value(Some(v))) => resp::bulk(out, &v.value),
        (RespRender::Get, ShardReply::Value(None)) => null(out, resp3),
        (RespRender::Strlen, ShardReply::Value(v)) => {
            resp::integer(out, v.map_or(0, |v| v.value.len() as i64))
        }
        (RespRender::Type, ShardReply::Value(v)) => {
            resp::simple(out, if v.is_some() { "string" } else { "none" })
        }
        (RespRender::Set, ShardReply::Written(CommandResult::Written { .. })) => {
            resp::simple(out, "OK")
        }
        (RespRender::SetConditional, ShardReply::Written(CommandResult::Written { .. })) => {
            resp::simple(out, "OK")
        }
        (
            RespRender::SetConditional,
            ShardReply::Written(CommandResult::VersionMismatch { .. } | CommandResult::Skipped),
        ) => null(out, resp3),
        (RespRender::Integer, ShardReply::Written(CommandResult::Integer { value })) => {
            resp::integer(out, value)
        }
        (_, ShardReply::Written(CommandResult::Refused { reason })) => {
            resp::error(out, &format!("ERR {reason}"))
        }
        (RespRender::GetSet, ShardReply::Written(CommandResult::Replaced { previous })) => {
            match previous {
                Some(value) => resp::bulk(out, &value),
                None => null(out, resp3),
            }
        }
        (render, other) => resp::error(out, &format!("ERR internal: {render:?} got {other:?}")),
    }
}

/// How the parts of a command split over shards are put back together.
pub enum RespGatherKind {
    /// DEL: how many keys existed.
    Deleted,
    /// EXISTS: how many of the keys (counted with repeats) exist.
    Exists,
    /// MGET: values in request order; positions[part] are the places of that part's keys.
    MGet {
        positions: Vec<Vec<usize>>,
        total: usize,
    },
    /// MSET: +OK.
    MSet,
    /// DBSIZE: keys over all shards.
    DbSize,
    /// INFO: a Redis-style info text.
    Info,
    /// SCAN: a page of keys and the next cursor.
    Scan {
        session: Rc<Session>,
        count: u32,
        pattern: Option<Vec<u8>>,
    },
}

/// Collects the parts of a RESP command split over shards and answers once all are in.
pub struct RespGather {
    conn: Rc<Connection>,
    sequence: u64,
    resp3: bool,
    kind: RespGatherKind,
    parts: Parts,
}

impl Deliver for RespGather {
    /// The tag is the part.
    fn deliver(self: Rc<Self>, part: u64, _: u32, reply: ShardReply) {
        self.add(part as usize, reply);
    }
}

impl RespGather {
    fn new(
        conn: &Rc<Connection>,
        sequence: u64,
        resp3: bool,
        kind: RespGatherKind,
        parts: usize,
    ) -> Rc<RespGather> {
        Rc::new(RespGather {
            conn: Rc::clone(conn),
            sequence,
            resp3,
            kind,
            parts: Parts::new(parts),
        })
    }

    pub fn add(&self, part: usize, reply: ShardReply) {
        if let Some(parts) = self.parts.add(part, reply) {
            let mut out = Vec::new();
            self.combine(parts, &mut out);
            self.conn.respond_in_order(self.sequence, out);
        }
    }

    fn combine(&self, parts: Vec<ShardReply>, out: &mut Vec<u8>) {
        if let Some(ShardReply::Error(code, message)) =
            parts.iter().find(|p| matches!(p, ShardReply::Error(..)))
        {
            return error_line(out, *code, message);
        }
        let unexpected = |out: &mut Vec<u8>, reply: &ShardReply| {
            resp::error(
                out,
                &format!("ERR internal: unexpected shard reply {reply:?}"),
            )
        };
        match &self.kind {
            RespGatherKind::Deleted => {
                let mut count = 0;
                for reply in &parts {
                    match reply {
                        ShardReply::Written(CommandResult::Deleted { existed }) => {
                            count += i64::from(*existed)
                        }
                        other => return unexpected(out, other),
                    }
                }
                resp::integer(out, count);
            }
            RespGatherKind::Exists => {
                let mut count = 0;
                for reply in &parts {
                    match reply {
                        ShardReply::Values(values) => {
                            count += values.iter().filter(|v| v.is_some()).count() as i64
                        }
                        other => return unexpected(out, other),
                    }
                }
                resp::integer(out, count);
            }
            RespGatherKind::MGet { positions, total } => {
                let mut values: Vec<Option<Vec<u8>>> = vec![None; *total];
                for (part, reply) in parts.into_iter().enumerate() {
                    let ShardReply::Values(found) = reply else {
                        return unexpected(out, &reply);
                    };
                    for (&at, value) in positions[part].iter().zip(found) {
                        values[at] = value.map(|v| v.value);
                    }
                }
                resp::array_header(out, values.len());
                for value in values {
                    match value {
                        Some(value) => resp::bulk(out, &value),
                        None => null(out, self.resp3),
                    }
                }
            }
            RespGatherKind::MSet => {
                for reply in &parts {
                    if !matches!(
                        reply,
                        ShardReply::Written(CommandResult::WrittenMany { .. })
                    ) {
                        return unexpected(out, reply);
                    }
                }
                resp::simple(out, "OK");
            }
            RespGatherKind::DbSize | RespGatherKind::Info => {
                let mut shards: Vec<ShardInfo> = Vec::new();
                for reply in parts {
                    let ShardReply::Info(info) = reply else {
                        return unexpected(out, &reply);
                    };
                    shards.push(*info);
                }
                let keys: u64 = shards.iter().map(|s| s.keys).sum();
                if matches!(self.kind, RespGatherKind::DbSize) {
                    return resp::integer(out, keys as i64);
                }
                resp::bulk(out, info_text(&shards, keys).as_bytes());
            }
            RespGatherKind::Scan {
                session,
                count,
                pattern,
            } => {
                let (pairs, next) = match merge_scan(parts, *count) {
                    Ok(page) => page,
                    Err(reply) => return unexpected(out, &reply),
                };
                let cursor = match next {
                    Some(next) => session.remember(next),
                    None => 0,
                };
                let keys: Vec<&Vec<u8>> = pairs
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| pattern.as_ref().is_none_or(|p| glob_match(p, k)))
                    .collect();
                resp::array_header(out, 2);
                resp::bulk(out, cursor.to_string().as_bytes());
                resp::array_header(out, keys.len());
                for key in keys {
                    resp::bulk(out, key);
                }
            }
        }
    }
}

fn info_text(shards: &[ShardInfo], keys: u64) -> String {
    let mut text = String::new();
    text.push_str("# Server\r\n");
    text.push_str("redis_version:7.0.0\r\n");
    text.push_str(&format!("kvs_version:{}\r\n", env!("CARGO_PKG_VERSION")));
    text.push_str("redis_mode:standalone\r\n");
    text.push_str(&format!("kvs_shards:{}\r\n", shards.len()));
    text.push_str("\r\n# Persistence\r\n");
    text.push_str("aof_enabled:1\r\n");
    text.push_str("kvs_durability:fdatasync-before-ack\r\n");
    let log_bytes: u64 = shards.iter().map(|s| s.log_size_bytes).sum();
    text.push_str(&format!("kvs_log_size_bytes:{log_bytes}\r\n"));
    text.push_str("\r\n# Keyspace\r\n");
    text.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\r\n"));
    for shard in shards {
        text.push_str(&format!(
            "kvs_shard{}:keys={},last_index={},applied_index={},log_syncs={}\r\n",
            shard.shard, shard.keys, shard.last_index, shard.applied_index, shard.log_syncs
        ));
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

/// Per-connection state: SCAN cursors (Redis clients expect decimal cursors, so kvs hands out
/// small numbers standing for continuation keys).
#[derive(Default)]
pub struct Session {
    cursors: RefCell<HashMap<u64, Vec<u8>>>,
    next_cursor: Cell<u64>,
    /// Set by HELLO 3: the client speaks RESP3.
    resp3: Cell<bool>,
    /// Set by MULTI, which kvs refuses: until EXEC or DISCARD nothing the client sends runs
    /// (a client that queued a transaction must not see half of it applied).
    in_refused_multi: Cell<bool>,
}

impl Session {
    fn remember(&self, next_key: Vec<u8>) -> u64 {
        let cursor = self.next_cursor.get().max(1);
        self.next_cursor.set(cursor + 1);
        let mut cursors = self.cursors.borrow_mut();
        if cursors.len() >= SCAN_CURSORS_MAX {
            if let Some(&oldest) = cursors.keys().min() {
                cursors.remove(&oldest);
            }
        }
        cursors.insert(cursor, next_key);
        cursor
    }

    fn resume(&self, cursor: u64) -> Option<Vec<u8>> {
        if cursor == 0 {
            return Some(Vec::new());
        }
        self.cursors.borrow_mut().remove(&cursor)
    }
}

/// What the reader does after a command.
enum After {
    Continue,
    /// QUIT: answer, then close.
    Close,
}

fn wrong_arity(out: &mut Vec<u8>, name: &str) {
    resp::error(
        out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
}

fn parse_i64(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// Checks key and value sizes; the error reply when one is too large.
fn check_sizes(keys: &[&Vec<u8>], values: &[&Vec<u8>]) -> Result<(), String> {
    if let Some(key) = keys.iter().find(|k| k.len() > KEY_SIZE_MAX) {
        return Err(format!(
            "ERR key of {} bytes exceeds the {KEY_SIZE_MAX}-byte limit",
            key.len()
        ));
    }
    if let Some(value) = values.iter().find(|v| v.len() > VALUE_SIZE_MAX) {
        return Err(format!(
            "ERR value of {} bytes exceeds the {VALUE_SIZE_MAX}-byte limit",
            value.len()
        ));
    }
    Ok(())
}

/// MULTI, EXEC and DISCARD, and what a connection sends between them: kvs has no
/// transactions on this listener yet, so MULTI is refused, and every command after it is
/// refused (not run) until EXEC (answered EXECABORT) or DISCARD ends it. Returns whether it
/// answered the command.
fn refuse_transaction(session: &Session, name: &str, out: &mut Vec<u8>) -> bool {
    let in_multi = session.in_refused_multi.get();
    match name {
        "multi" if in_multi => resp::error(out, "ERR MULTI calls can not be nested"),
        "multi" => {
            session.in_refused_multi.set(true);
            resp::error(
                out,
                "ERR MULTI is not supported by kvs: nothing sent on this connection runs until \
                 EXEC or DISCARD",
            );
        }
        "exec" if in_multi => {
            session.in_refused_multi.set(false);
            resp::error(
                out,
                "EXECABORT Transaction discarded: MULTI is not supported by kvs, nothing was run",
            );
        }
        "discard" if in_multi => {
            session.in_refused_multi.set(false);
            resp::simple(out, "OK");
        }
        "exec" => resp::error(out, "ERR EXEC without MULTI"),
        "discard" => resp::error(out, "ERR DISCARD without MULTI"),
        _ if in_multi => resp::error(
            out,
            &format!(
                "ERR '{}' not run: MULTI is not supported by kvs; send DISCARD or EXEC",
                name.chars().take(64).collect::<String>()
            ),
        ),
        _ => return false,
    }
    true
}

/// `name` in ASCII lower case, written into `buffer` when it fits and is ASCII (every command
/// kvs knows does): one allocation per command fewer on the hot path.
fn lowercase_on_stack<'a>(name: &[u8], buffer: &'a mut [u8; 16]) -> Option<&'a str> {
    if name.len() > buffer.len() || !name.is_ascii() {
        return None;
    }
    let out = &mut buffer[..name.len()];
    out.copy_from_slice(name);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// Runs one command. Every path answers the command exactly once, in order.
async fn execute(
    ctx: &CoreContext,
    conn: &Rc<Connection>,
    session: &Rc<Session>,
    args: Vec<Vec<u8>>,
) -> After {
    let sequence = conn.start_ordered_request();
    let mut out = Vec::new();
    let mut short = [0u8; 16];
    let long;
    let name: &str = match lowercase_on_stack(&args[0], &mut short) {
        Some(name) => name,
        None => {
            long = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
            &long
        }
    };
    let argc = args.len();
    if refuse_transaction(session, name, &mut out) {
        conn.respond_in_order(sequence, out);
        return After::Continue;
    }
    let shard_of = |key: &[u8]| shard_for_key(key, ctx.shard_count);
    let resp3 = session.resp3.get();
    let origin = conn.origin();
    let single = |render: RespRender| {
        Target::new(
            Rc::clone(conn) as Rc<dyn Deliver>,
            sequence,
            render.aux(resp3),
            origin,
        )
    };
    let all_shards = |kind| {
        let g = RespGather::new(conn, sequence, resp3, kind, ctx.shard_count as usize);
        (0..ctx.shard_count).map(move |shard| {
            (
                shard,
                Target::new(Rc::clone(&g) as Rc<dyn Deliver>, shard.into(), 0, origin),
            )
        })
    };
    let mut args = args.into_iter();
    args.next();
    let args: Vec<Vec<u8>> = args.collect();
    let sizes = |keys: &[&Vec<u8>], values: &[&Vec<u8>]| check_sizes(keys, values);

    match name {
        "ping" => match argc {
            1 => resp::simple(&mut out, "PONG"),
            2 => resp::bulk(&mut out, &args[0]),
            _ => wrong_arity(&mut out, "ping"),
        },
        "echo" if argc == 2 => resp::bulk(&mut out, &args[0]),
        "hello" => match args.first().map(|v| parse_i64(v)) {
            Some(Some(version)) if version != 2 && version != 3 => {
                resp::error(&mut out, "NOPROTO unsupported protocol version")
            }
            Some(None) => resp::error(
                &mut out,
                "ERR Protocol version is not an integer or out of range",
            ),
            requested => {
                let version = requested.flatten().unwrap_or(if resp3 { 3 } else { 2 });
                session.resp3.set(version == 3);
                // The handshake reply: a map in RESP3, a flat array in RESP2.
                let fields: [(&str, &[u8]); 5] = [
                    ("server", b"redis"),
                    ("version", b"7.0.0"),
                    ("id", b"1"),
                    ("mode", b"standalone"),
                    ("role", b"master"),
                ];
                if version == 3 {
                    out.extend_from_slice(format!("%{}\r\n", fields.len() + 2).as_bytes());
                } else {
                    resp::array_header(&mut out, (fields.len() + 2) * 2);
                }
                for (name, value) in fields {
                    resp::bulk(&mut out, name.as_bytes());
                    resp::bulk(&mut out, value);
                }
                resp::bulk(&mut out, b"proto");
                resp::integer(&mut out, version);
                resp::bulk(&mut out, b"modules");
                resp::array_header(&mut out, 0);
            }
        },
        "quit" => {
            resp::simple(&mut out, "OK");
            conn.respond_in_order(sequence, out);
            return After::Close;
        }
        "select" if argc == 2 => {
            if args[0] == b"0" {
                resp::simple(&mut out, "OK")
            } else {
                resp::error(&mut out, "ERR kvs has one database: only SELECT 0")
            }
        }
        "command" => {
            // Enough for clients that ask what the server supports: an empty table.
            match args.first().map(|a| a.to_ascii_lowercase()) {
                Some(sub) if sub == b"count" => resp::integer(&mut out, 0),
                _ => resp::array_header(&mut out, 0),
            }
        }
        "client" => match args.first().map(|a| a.to_ascii_lowercase()) {
            Some(sub) if sub == b"setname" || sub == b"setinfo" => resp::simple(&mut out, "OK"),
            Some(sub) if sub == b"getname" => null(&mut out, resp3),
            Some(sub) if sub == b"id" => resp::integer(&mut out, 1),
            _ => resp::error(&mut out, "ERR unsupported CLIENT subcommand"),
        },
        "config" => match args.first().map(|a| a.to_ascii_lowercase()) {
            // Tools read settings at start (redis-benchmark asks for save and appendonly).
            // Answer with kvs's equivalents: no snapshots, every write logged and synced.
            Some(sub) if sub == b"get" && argc == 3 => {
                let wanted = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
                let settings = [
                    ("save", ""),
                    ("appendonly", "yes"),
                    ("appendfsync", "always"),
                    ("databases", "1"),
                ];
                let matching: Vec<_> = settings
                    .iter()
                    .filter(|(name, _)| glob_match(wanted.as_bytes(), name.as_bytes()))
                    .collect();
                resp::array_header(&mut out, matching.len() * 2);
                for (name, value) in matching {
                    resp::bulk(&mut out, name.as_bytes());
                    resp::bulk(&mut out, value.as_bytes());
                }
            }
            _ => resp::error(
                &mut out,
                "ERR CONFIG is not supported by kvs except CONFIG GET",
            ),
        },
        "get" | "strlen" | "type" if argc == 2 => {
            if let Err(e) = sizes(&[&args[0]], &[]) {
                resp::error(&mut out, &e);
            } else {
                let render = match name {
                    "get" => RespRender::Get,
                    "strlen" => RespRender::Strlen,
                    _ => RespRender::Type,
                };
                let key = args.into_iter().next().unwrap_or_default();
                ctx.send(shard_of(&key), ShardOp::Get { key }, single(render))
                    .await;
                return After::Continue;
            }
        }
        "set" if argc >= 3 => {
            let mut nx = false;
            let mut xx = false;
            let mut problem = None;
            let mut options = args[2..].iter();
            while let Some(option) = options.next() {
                match option.to_ascii_lowercase().as_slice() {
                    b"nx" => nx = true,
                    b"xx" => xx = true,
                    b"keepttl" => {}
                    b"ex" | b"px" | b"exat" | b"pxat" => {
                        let expiry =
                            "ERR kvs has no key expiry: EX, PX, EXAT and PXAT are not supported";
                        let message = if options.next().is_some() {
                            expiry
                        } else {
                            "ERR syntax error"
                        };
                        problem.get_or_insert_with(|| message.to_string());
                    }
                    b"get" => {
                        problem.get_or_insert_with(|| {
                            "ERR SET ... GET is not supported; use GETSET".into()
                        });
                    }
                    _ => {
                        problem.get_or_insert_with(|| "ERR syntax error".into());
                    }
                }
            }
            if nx && xx {
                problem = Some("ERR syntax error".into());
            }
            if problem.is_none() {
                problem = sizes(&[&args[0]], &[&args[1]]).err();
            }
            match problem {
                Some(message) => resp::error(&mut out, &message),
                None => {
                    let mut args = args.into_iter();
                    let key = args.next().unwrap_or_default();
                    let value = args.next().unwrap_or_default();
                    let shard = shard_of(&key);
                    let (command, render) = if nx {
                        (
                            Command::Cas {
                                key,
                                expected_version: 0,
                                value: Some(value),
                            },
                            RespRender::SetConditional,
                        )
                    } else if xx {
                        (
                            Command::PutIfExists { key, value },
                            RespRender::SetConditional,
                        )
                    } else {
                        (Command::Put { key, value }, RespRender::Set)
                    };
                    ctx.send(shard, ShardOp::Write(command), single(render))
                        .await;
                    return After::Continue;
                }
            }
        }
        "getset" | "append" if argc == 3 => match sizes(&[&args[0]], &[&args[1]]) {
            Err(e) => resp::error(&mut out, &e),
            Ok(()) => {
                let mut args = args.into_iter();
                let key = args.next().unwrap_or_default();
                let value = args.next().unwrap_or_default();
                let shard = shard_of(&key);
                let (command, render) = if name == "getset" {
                    (Command::GetAndPut { key, value }, RespRender::GetSet)
                } else {
                    (Command::Append { key, value }, RespRender::Integer)
                };
                ctx.send(shard, ShardOp::Write(command), single(render))
                    .await;
                return After::Continue;
            }
        },
        "incr" | "decr" | "incrby" | "decrby"
            if argc == if name.ends_with("by") { 3 } else { 2 } =>
        {
            let delta = match name {
                "incr" => Some(1),
                "decr" => Some(-1),
                "incrby" => parse_i64(&args[1]),
                _ => parse_i64(&args[1]).and_then(i64::checked_neg),
            };
            match (delta, sizes(&[&args[0]], &[])) {
                (None, _) => resp::error(&mut out, "ERR value is not an integer or out of range"),
                (_, Err(e)) => resp::error(&mut out, &e),
                (Some(delta), Ok(())) => {
                    let key = args.into_iter().next().unwrap_or_default();
                    let shard = shard_of(&key);
                    ctx.send(
                        shard,
                        ShardOp::Write(Command::Increment { key, delta }),
                        single(RespRender::Integer),
                    )
                    .await;
                    return After::Continue;
                }
            }
        }
        "del" if argc >= 2 => match sizes(&args.iter().collect::<Vec<_>>(), &[]) {
            Err(e) => resp::error(&mut out, &e),
            Ok(()) => {
                let g = RespGather::new(conn, sequence, resp3, RespGatherKind::Deleted, args.len());
                for (part, key) in args.into_iter().enumerate() {
                    let shard = shard_of(&key);
                    let target =
                        Target::new(Rc::clone(&g) as Rc<dyn Deliver>, part as u64, 0, origin);
                    ctx.send(shard, ShardOp::Write(Command::Delete { key }), target)
                        .await;
                }
                return After::Continue;
            }
        },
        "exists" | "mget" if argc >= 2 => match sizes(&args.iter().collect::<Vec<_>>(), &[]) {
            Err(e) => resp::error(&mut out, &e),
            Ok(()) => {
                let total = args.len();
                let parts = split_by_shard(args, |key| shard_of(key));
                let kind = if name == "exists" {
                    RespGatherKind::Exists
                } else {
                    RespGatherKind::MGet {
                        positions: parts.iter().map(|(_, p, _)| p.clone()).collect(),
                        total,
                    }
                };
                let g = RespGather::new(conn, sequence, resp3, kind, parts.len());
                for (part, (shard, _, keys)) in parts.into_iter().enumerate() {
                    let target =
                        Target::new(Rc::clone(&g) as Rc<dyn Deliver>, part as u64, 0, origin);
                    ctx.send(shard, ShardOp::MGet { keys }, target).await;
                }
                return After::Continue;
            }
        },
        "mset" if argc >= 3 && argc % 2 == 1 => {
            let keys: Vec<&Vec<u8>> = args.iter().step_by(2).collect();
            let values: Vec<&Vec<u8>> = args.iter().skip(1).step_by(2).collect();
            match sizes(&keys, &values) {
                Err(e) => resp::error(&mut out, &e),
                Ok(()) => {
                    let mut pairs = Vec::with_capacity(args.len() / 2);
                    let mut args = args.into_iter();
                    while let (Some(key), Some(value)) = (args.next(), args.next()) {
                        pairs.push((key, value));
                    }
                    let parts = split_by_shard(pairs, |(key, _)| shard_of(key));
                    let g =
                        RespGather::new(conn, sequence, resp3, RespGatherKind::MSet, parts.len());
                    for (part, (shard, _, pairs)) in parts.into_iter().enumerate() {
                        let target =
                            Target::new(Rc::clone(&g) as Rc<dyn Deliver>, part as u64, 0, origin);
                        ctx.send(shard, ShardOp::Write(Command::PutMany { pairs }), target)
                            .await;
                    }
                    return After::Continue;
                }
            }
        }
        "dbsize" if argc == 1 => {
            for (shard, target) in all_shards(RespGatherKind::DbSize) {
                ctx.send(shard, ShardOp::Info, target).await;
            }
            return After::Continue;
        }
        "info" if argc <= 2 => {
            for (shard, target) in all_shards(RespGatherKind::Info) {
                ctx.send(shard, ShardOp::Info, target).await;
            }
            return After::Continue;
        }
        "scan" if argc >= 2 => {
            let mut count = SCAN_COUNT_DEFAULT;
            let mut pattern = None;
            let mut problem = None;
            let mut options = args[1..].iter();
            while let Some(option) = options.next() {
                match (option.to_ascii_lowercase().as_slice(), options.next()) {
                    (b"match", Some(p)) => pattern = Some(p.clone()),
                    (b"count", Some(n)) => match parse_i64(n) {
                        Some(n) if n >= 1 => count = n.min(i64::from(SCAN_LIMIT_MAX)) as u32,
                        _ => problem = Some("ERR value is not an integer or out of range"),
                    },
                    (b"type", Some(t)) if t.eq_ignore_ascii_case(b"string") => {}
                    (b"type", Some(_)) => problem = Some("ERR kvs stores only strings"),
                    _ => problem = Some("ERR syntax error"),
                }
            }
            let start = std::str::from_utf8(&args[0])
                .ok()
                .and_then(|c| c.parse::<u64>().ok())
                .and_then(|c| session.resume(c));
            match (problem, start) {
                (Some(message), _) => resp::error(&mut out, message),
                (None, None) => resp::error(&mut out, "ERR invalid cursor"),
                (None, Some(start)) => {
                    let kind = RespGatherKind::Scan {
                        session: Rc::clone(session),
                        count,
                        pattern,
                    };
                    for (shard, target) in all_shards(kind) {
                        let op = ShardOp::Scan {
                            start: start.clone(),
                            end: None,
                            limit: count,
                        };
                        ctx.send(shard, op, target).await;
                    }
                    return After::Continue;
                }
            }
        }
        "get" | "strlen" | "type" | "set" | "getset" | "append" | "incr" | "decr" | "incrby"
        | "decrby" | "del" | "exists" | "mget" | "mset" | "dbsize" | "info" | "scan" | "echo"
        | "select" => wrong_arity(&mut out, name),
        _ => {
            let mut shown = String::new();
            for arg in args.iter().take(3) {
                shown.push_str(&format!(
                    "'{}' ",
                    String::from_utf8_lossy(arg)
                        .chars()
                        .take(64)
                        .collect::<String>()
                ));
            }
            let original = name.chars().take(64).collect::<String>();
            resp::error(
                &mut out,
                &format!("ERR unknown command '{original}', with args beginning with: {shown}"),
            );
        }
    }
    conn.respond_in_order(sequence, out);
    After::Continue
}

/// Serves one RESP connection.
pub async fn serve_connection(ctx: Rc<CoreContext>, stream: TcpStream, slot: ConnectionSlot) {
    conn::drive(
        ctx,
        stream,
        slot,
        encode_reply,
        |ctx, stream, conn| async move { read_loop(&ctx, &stream, &conn).await },
    )
    .await;
}

async fn read_loop(ctx: &CoreContext, stream: &TcpStream, conn: &Rc<Connection>) {
    let session = Rc::new(Session::default());
    let mut buffer = ReceiveBuffer::new();
    loop {
        let mut need_bytes = false;
        while conn.may_take_request() {
            match resp::parse_command(buffer.data()) {
                Ok(Parsed::Command { args, len }) => {
                    buffer.consume(len);
                    if args.is_empty() {
                        continue;
                    }
                    if let After::Close = execute(ctx, conn, &session, args).await {
                        return;
                    }
                }
                Ok(Parsed::Incomplete) => {
                    need_bytes = true;
                    break;
                }
                Err(error) => {
                    let sequence = conn.start_ordered_request();
                    let mut out = Vec::new();
                    resp::error(&mut out, &format!("ERR {error}"));
                    conn.respond_in_order(sequence, out);
                    tracing::debug!(%error, "closing a RESP connection after a protocol error");
                    return;
                }
            }
        }
        // At the in-flight limit, whole commands may still wait in the buffer: read no more
        // until there is room for them. A bulk string may be up to 16 MiB: let the buffer grow
        // to hold what is pending.
        let more = if need_bytes {
            let wanted = buffer.data().len() + 64 * 1024;
            conn::fill(ctx, stream, conn, &mut buffer, wanted).await
        } else {
            conn::wait_for_room(ctx, conn).await
        };
        if !more {
            return;
        }
    }
}

#[cfg(test)]
#[path = "resp_server_tests.rs"]
mod tests;
