//! How shard replies become RESP replies: one shard's reply rendered as the command asks
//! ([`RespRender`]), and the replies of a command split over shards put back together
//! ([`RespGather`]).

use std::rc::Rc;
use std::sync::Arc;

use kvs_core::state::CommandResult;
use kvs_wire::resp;
use kvs_wire::ErrorCode;

use crate::conn::Connection;
use crate::resp_keyspace::{glob_match, info_text, NodeFigures};
use crate::route::{merge_scan, Deliver, Parts};
use crate::scan_cursors::ScanCursors;
use crate::shard::{ShardInfo, ShardReply};

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
    /// SETNX: 1 when the key was set, 0 when it existed.
    SetNx,
    /// MEMORY USAGE: the value's bytes and a per-key overhead (an estimate, as Redis's),
    /// null when missing.
    MemoryUsage,
}

impl RespRender {
    const ALL: [RespRender; 9] = [
        RespRender::Get,
        RespRender::Strlen,
        RespRender::Set,
        RespRender::SetConditional,
        RespRender::Integer,
        RespRender::GetSet,
        RespRender::Type,
        RespRender::SetNx,
        RespRender::MemoryUsage,
    ];

    /// A target's aux for a single-shard reply: the rendering, and whether the connection
    /// speaks RESP3.
    pub(crate) fn aux(self, resp3: bool) -> u32 {
        u32::from(self as u8) | u32::from(resp3) << 8
    }

    fn from_aux(aux: u32) -> (RespRender, bool) {
        let render = Self::ALL[(aux & 0xff) as usize];
        debug_assert_eq!(render.aux(false), aux & 0xff);
        (render, aux >> 8 != 0)
    }
}

/// What MEMORY USAGE adds to a value's length: the key, its entry in a leaf and its version,
/// roughly.
const KEY_OVERHEAD_BYTES: i64 = 64;

/// Encodes a shard's reply to one RESP command on its connection (`Connection`'s reply
/// encoder for this protocol): the tag is the command's sequence number, in whose place the
/// reply is written.
pub(crate) fn encode_reply(conn: &Connection, sequence: u64, aux: u32, reply: ShardReply) {
    let (render, resp3) = RespRender::from_aux(aux);
    conn.respond_in_order_with(sequence, |out| render_into(out, render, reply, resp3));
}

/// A missing value: the null bulk string in RESP2, the null type in RESP3.
pub(crate) fn null(out: &mut Vec<u8>, resp3: bool) {
    if resp3 {
        out.extend_from_slice(b"_\r\n");
    } else {
        resp::null(out);
    }
}

/// A shard's typed error as a Redis error line: `-ERR DISK_FULL: ...`.
pub(crate) fn error_line(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    // A cluster's two errors a client must tell apart get prefixes of their own, as Redis
    // gives MOVED or BUSY theirs: NOQUORUM surely did nothing; TIMEOUT may have.
    match code {
        ErrorCode::NoQuorum => resp::error(out, &format!("NOQUORUM {message}")),
        ErrorCode::Timeout => resp::error(out, &format!("TIMEOUT {message}")),
        _ => resp::error(out, &format!("ERR {code}: {message}")),
    }
}

/// Appends the reply of a point read, rendered as `render` (GET, STRLEN, TYPE, MEMORY
/// USAGE), for `value` (None: the key does not exist).
pub(crate) fn render_value_into(
    out: &mut Vec<u8>,
    render: RespRender,
    value: Option<&[u8]>,
    resp3: bool,
) {
    match (render, value) {
        (RespRender::Get, Some(value)) => resp::bulk(out, value),
        (RespRender::Get | RespRender::MemoryUsage, None) => null(out, resp3),
        (RespRender::Strlen, value) => resp::integer(out, value.map_or(0, |v| v.len() as i64)),
        (RespRender::MemoryUsage, Some(value)) => {
            resp::integer(out, value.len() as i64 + KEY_OVERHEAD_BYTES)
        }
        (RespRender::Type, value) => {
            resp::simple(out, if value.is_some() { "string" } else { "none" })
        }
        (render, _) => resp::error(out, &format!("ERR internal: {render:?} got a value")),
    }
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
        (
            render @ (RespRender::Get
            | RespRender::Strlen
            | RespRender::MemoryUsage
            | RespRender::Type),
            ShardReply::Value(v),
        ) => render_value_into(out, render, v.as_ref().map(|v| &v.value[..]), resp3),
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
        (RespRender::SetNx, ShardReply::Written(CommandResult::Written { .. })) => {
            resp::integer(out, 1)
        }
        (RespRender::SetNx, ShardReply::Written(CommandResult::VersionMismatch { .. })) => {
            resp::integer(out, 0)
        }
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
    /// INFO: a Redis-style info text of `sections` (none: the default ones), with the
    /// node's figures taken when the INFO arrived.
    Info {
        sections: Vec<String>,
        node: NodeFigures,
    },
    /// SCAN: a page of keys and the next cursor.
    Scan {
        cursors: Arc<ScanCursors>,
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
    pub(crate) fn new(
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
            RespGatherKind::DbSize | RespGatherKind::Info { .. } => {
                let mut shards: Vec<ShardInfo> = Vec::new();
                for reply in parts {
                    let ShardReply::Info(info) = reply else {
                        return unexpected(out, &reply);
                    };
                    shards.push(*info);
                }
                match &self.kind {
                    RespGatherKind::Info { sections, node } => {
                        resp::bulk(out, info_text(&shards, node, sections).as_bytes())
                    }
                    _ => resp::integer(out, shards.iter().map(|s| s.keys).sum::<u64>() as i64),
                }
            }
            RespGatherKind::Scan {
                cursors,
                count,
                pattern,
            } => {
                let (pairs, next) = match merge_scan(parts, *count) {
                    Ok(page) => page,
                    Err(reply) => return unexpected(out, &reply),
                };
                let cursor = match next {
                    Some(next) => cursors.remember(next),
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
