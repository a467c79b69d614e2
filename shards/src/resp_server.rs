//! The Redis-protocol (RESP2, and RESP3 after HELLO 3) listener: the key-value subset of
//! Redis on top of the same shards, with the same durability (a SET is answered after its
//! log record is fdatasync'ed and applied).
//!
//! Supported: PING, ECHO, GET, SET (with NX or XX; EX/PX/EXAT/PXAT are refused because kvs
//! has no key expiry), SETNX, DEL, UNLINK, EXISTS, MGET, MSET, INCR, DECR, INCRBY, DECRBY,
//! APPEND, STRLEN, GETSET, TYPE, DBSIZE, SCAN (cursor, MATCH, COUNT, TYPE), KEYS, FLUSHDB,
//! FLUSHALL, MEMORY USAGE, INFO (with sections), COMMAND, QUIT, MULTI/EXEC/DISCARD/WATCH/
//! UNWATCH (`resp_multi.rs`: transactions across shards), plus SELECT 0 and the CLIENT and
//! CONFIG GET calls client libraries make when they connect. Anything else gets a
//! Redis-style `-ERR unknown command`. Replies are rendered in `resp_reply.rs`; the
//! whole-keyspace commands and INFO's text are in `resp_keyspace.rs`.
//!
//! Redis clients expect replies in command order, so every command takes a sequence number
//! and replies that finish early wait for the ones before them (`Connection::respond_in_order`).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use kvs_core::command::Command;
use kvs_core::state::Versioned;
use kvs_wire::limits::{bytes_limit, KEY_SIZE_MAX, SCAN_LIMIT_MAX, VALUE_SIZE_MAX};
use kvs_wire::resp::{self, Parsed};
use kvs_wire::shard_for_key;

use crate::conn::{self, Connection, ReceiveBuffer};
use crate::resp_keyspace::{delete_all, glob_match, matching_keys, NodeFigures};
use crate::resp_reply::{
    encode_reply, null, render_value_into, RespGather, RespGatherKind, RespRender,
};
use crate::route::{split_by_shard, CoreContext, Deliver, Target};
use crate::runtime::TcpStream;
use crate::shard::ShardOp;
use crate::spread::ConnectionSlot;

/// SCAN's COUNT when none is given (Redis's default).
const SCAN_COUNT_DEFAULT: u32 = 10;

/// Per-connection state.
#[derive(Default)]
pub struct Session {
    /// Set by HELLO 3: the client speaks RESP3.
    resp3: Cell<bool>,
    /// MULTI's queue and WATCH's keys (`resp_multi`).
    multi: crate::resp_multi::MultiState,
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
            "ERR key of {} bytes exceeds the {} limit",
            key.len(),
            bytes_limit(KEY_SIZE_MAX)
        ));
    }
    if let Some(value) = values.iter().find(|v| v.len() > VALUE_SIZE_MAX) {
        return Err(format!(
            "ERR value of {} bytes exceeds the {} limit",
            value.len(),
            bytes_limit(VALUE_SIZE_MAX)
        ));
    }
    Ok(())
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

/// The process's resident memory, for INFO's used_memory (0 if /proc cannot tell).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// AUTH's check of `user`'s `password` (RESP sends the password itself; ADR 0025); the
/// error line when it fails. With authentication off, AUTH with a user passes (as Redis's
/// default user without a password), and AUTH with only a password is refused as Redis
/// refuses it.
async fn authenticate(
    ctx: &CoreContext,
    conn: &Connection,
    user: &[u8],
    password: Vec<u8>,
    named: bool,
) -> Result<(), String> {
    if !ctx.auth.required {
        return if named {
            Ok(())
        } else {
            Err(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?"
                    .into(),
            )
        };
    }
    let user = String::from_utf8_lossy(user);
    conn.auth
        .with_password(&ctx.auth, &user, password, &conn.peer_name())
        .await
        .map(|_| ())
        .map_err(|()| "WRONGPASS invalid username-password pair or user is disabled.".into())
}

/// Runs one command. Every path answers the command exactly once, in order.
async fn execute(
    ctx: &CoreContext,
    conn: &Rc<Connection>,
    session: &Rc<Session>,
    args: Vec<Vec<u8>>,
) -> After {
    ctx.connection_counts.count_command(ctx.core);
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
    let sequence = conn.start_ordered_request(crate::metrics::resp_command_slot(name));
    let argc = args.len();
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
    if name == "hello" && argc >= 5 && args[1].eq_ignore_ascii_case(b"auth") {
        // HELLO ver AUTH user pass [SETNAME name]: authenticated first, then the handshake.
        if let Err(message) = authenticate(ctx, conn, &args[2], args[3].clone(), true).await {
            resp::error(&mut out, &message);
            let close = conn.auth.exhausted();
            conn.respond_in_order(sequence, out);
            return if close { After::Close } else { After::Continue };
        }
    }
    if ctx.auth.required {
        if let Err((code, _)) = conn.auth.permits(crate::auth::resp_role(name), name) {
            let message = match code {
                kvs_wire::ErrorCode::NoAuth => "NOAUTH Authentication required.".to_string(),
                _ => format!("NOPERM this user has no permissions to run the '{name}' command"),
            };
            resp::error(&mut out, &message);
            conn.respond_in_order(sequence, out);
            return After::Continue;
        }
    }
    if session.multi.intercept(name, &args, &mut out) {
        conn.respond_in_order(sequence, out);
        return After::Continue;
    }

    match name {
        "exec" => session.multi.exec(ctx, resp3, &mut out).await,
        "watch" if argc >= 2 => match sizes(&args.iter().collect::<Vec<_>>(), &[]) {
            Err(e) => resp::error(&mut out, &e),
            Ok(()) => match session.multi.watch(ctx, args).await {
                Ok(()) => resp::simple(&mut out, "OK"),
                Err(message) => resp::error(&mut out, &message),
            },
        },
        "ping" => match argc {
            1 => resp::simple(&mut out, "PONG"),
            2 => resp::bulk(&mut out, &args[0]),
            _ => wrong_arity(&mut out, "ping"),
        },
        "echo" if argc == 2 => resp::bulk(&mut out, &args[0]),
        "auth" if argc == 2 || argc == 3 => {
            let (user, password) = match args.as_slice() {
                [password] => (&b"default"[..], password.clone()),
                [user, password] => (user.as_slice(), password.clone()),
                _ => unreachable!("two or three arguments"),
            };
            let checked = authenticate(ctx, conn, user, password, argc == 3).await;
            match checked {
                Ok(()) => resp::simple(&mut out, "OK"),
                Err(message) => resp::error(&mut out, &message),
            }
            if conn.auth.exhausted() {
                conn.respond_in_order(sequence, out);
                return After::Close;
            }
        }

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
                let shard = shard_of(&key);
                // Nothing of this connection's is still in flight, so the shard's state now
                // holds every write it sent before this read: answered here when the shard
                // allows it, without the trip through its queue (ADR 0029).
                if conn.answered_before(sequence) {
                    // Rendered straight from the cache, without copying the value out.
                    let mut answer = |found: Option<&Versioned>| {
                        let value = found.map(|v| &v.value[..]);
                        conn.respond_in_order_with(sequence, |out| {
                            render_value_into(out, render, value, resp3)
                        });
                    };
                    if ctx.read_here(shard, &key, &mut answer) {
                        return After::Continue;
                    }
                }
                ctx.send(shard, ShardOp::Get { key }, single(render)).await;
                return After::Continue;
            }
        }
        "memory"
            if argc >= 3
                && args[0].eq_ignore_ascii_case(b"usage")
                && (argc == 3 || argc == 5 && args[2].eq_ignore_ascii_case(b"samples")) =>
        {
            let key = args.into_iter().nth(1).unwrap_or_default();
            if let Err(e) = sizes(&[&key], &[]) {
                resp::error(&mut out, &e);
            } else {
                ctx.send(
                    shard_of(&key),
                    ShardOp::Get { key },
                    single(RespRender::MemoryUsage),
                )
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
        "setnx" | "getset" | "append" if argc == 3 => match sizes(&[&args[0]], &[&args[1]]) {
            Err(e) => resp::error(&mut out, &e),
            Ok(()) => {
                let mut args = args.into_iter();
                let key = args.next().unwrap_or_default();
                let value = args.next().unwrap_or_default();
                let shard = shard_of(&key);
                let (command, render) = match name {
                    "setnx" => (
                        Command::Cas {
                            key,
                            expected_version: 0,
                            value: Some(value),
                        },
                        RespRender::SetNx,
                    ),
                    "getset" => (Command::GetAndPut { key, value }, RespRender::GetSet),
                    _ => (Command::Append { key, value }, RespRender::Integer),
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
        // UNLINK frees memory in the background in Redis; here it is DEL.
        "del" | "unlink" if argc >= 2 => match sizes(&args.iter().collect::<Vec<_>>(), &[]) {
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
                // Keys on several shards are read at one timestamp (ADR 0023).
                let shards: Vec<u32> = parts.iter().map(|(shard, ..)| *shard).collect();
                match crate::snapshot_read::begin_if_several(ctx, origin, &shards).await {
                    Err((code, message)) => crate::resp_reply::error_line(&mut out, code, &message),
                    Ok(begun) => {
                        let g = RespGather::new(conn, sequence, resp3, kind, parts.len());
                        for (part, (shard, _, keys)) in parts.into_iter().enumerate() {
                            let target = Target::new(
                                Rc::clone(&g) as Rc<dyn Deliver>,
                                part as u64,
                                0,
                                origin,
                            );
                            let mget = ShardOp::MGet { keys };
                            let op = crate::snapshot_read::maybe_at(begun.as_ref(), part, mget);
                            ctx.send(shard, op, target).await;
                        }
                        return After::Continue;
                    }
                }
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
        "keys" if argc == 2 => match matching_keys(ctx, origin, &args[0]).await {
            Ok(keys) => {
                resp::array_header(&mut out, keys.len());
                for key in keys {
                    resp::bulk(&mut out, &key);
                }
            }
            Err(message) => resp::error(&mut out, &message),
        },
        // ASYNC and SYNC are accepted; the deletes are done before the reply either way.
        "flushdb" | "flushall"
            if argc == 1
                || argc == 2
                    && (args[0].eq_ignore_ascii_case(b"async")
                        || args[0].eq_ignore_ascii_case(b"sync")) =>
        {
            match delete_all(ctx, origin).await {
                Ok(_) => resp::simple(&mut out, "OK"),
                Err(message) => resp::error(&mut out, &message),
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" | "ttl" | "pttl" | "persist" | "setex"
        | "psetex" | "getex" => resp::error(
            &mut out,
            &format!(
                "ERR '{name}' is not supported: kvs has no key expiry yet (docs/resp.md, ADR 0014)"
            ),
        ),
        "dbsize" if argc == 1 => {
            for (shard, target) in all_shards(RespGatherKind::DbSize) {
                ctx.send(shard, ShardOp::Info, target).await;
            }
            return After::Continue;
        }
        "info" => {
            let counts = &ctx.connection_counts;
            let node = NodeFigures {
                connected_clients: counts.open() as u64,
                connections_received: counts.received(),
                commands_processed: counts.commands(),
                used_memory: resident_bytes(),
            };
            let sections = args
                .iter()
                .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
                .collect();
            for (shard, target) in all_shards(RespGatherKind::Info { sections, node }) {
                ctx.send(shard, ShardOp::Info, target).await;
            }
            return After::Continue;
        }
        "scan" if argc >= 2 => {
            let mut count = SCAN_COUNT_DEFAULT;
            let mut pattern = None;
            let mut problem = None;
            let (mut typed, mut strings) = (false, false);
            let mut options = args[1..].iter();
            while let Some(option) = options.next() {
                match (option.to_ascii_lowercase().as_slice(), options.next()) {
                    (b"match", Some(p)) => pattern = Some(p.clone()),
                    (b"count", Some(n)) => match parse_i64(n) {
                        Some(n) if n >= 1 => count = n.min(i64::from(SCAN_LIMIT_MAX)) as u32,
                        _ => problem = Some("ERR value is not an integer or out of range"),
                    },
                    (b"type", Some(t)) => strings |= t.eq_ignore_ascii_case(b"string"),
                    _ => problem = Some("ERR syntax error"),
                }
                if option.eq_ignore_ascii_case(b"type") {
                    typed = true;
                }
            }
            let cursor = std::str::from_utf8(&args[0])
                .ok()
                .and_then(|c| c.parse::<u64>().ok());
            match (problem, cursor) {
                (Some(message), _) => resp::error(&mut out, message),
                (None, None) => resp::error(&mut out, "ERR invalid cursor"),
                // Only strings are stored: a scan for another type finds nothing.
                (None, Some(_)) if typed && !strings => {
                    resp::array_header(&mut out, 2);
                    resp::bulk(&mut out, b"0");
                    resp::array_header(&mut out, 0);
                }
                (None, Some(cursor)) => {
                    let start = ctx.scan_cursors.resume(cursor);
                    let kind = RespGatherKind::Scan {
                        cursors: Arc::clone(&ctx.scan_cursors),
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
        | "decrby" | "del" | "exists" | "mget" | "mset" | "dbsize" | "scan" | "echo" | "select"
        | "setnx" | "unlink" | "keys" | "flushdb" | "flushall" => wrong_arity(&mut out, name),
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

/// Answers input that is not RESP (in a command, or in the rest of one being read past)
/// with the error; the caller then closes the connection.
fn refuse_stream(conn: &Connection, error: &resp::RespError) {
    let sequence = conn.start_ordered_request(crate::metrics::resp_command_slot("other"));
    let mut out = Vec::new();
    resp::error(&mut out, &format!("ERR {error}"));
    conn.respond_in_order(sequence, out);
    tracing::debug!(%error, "closing a RESP connection after a protocol error");
}

/// Serves one RESP connection.
pub async fn serve_connection(ctx: Rc<CoreContext>, stream: TcpStream, slot: ConnectionSlot) {
    conn::drive(
        ctx,
        stream,
        slot,
        encode_reply,
        crate::metrics::Protocol::Resp,
        |ctx, stream, conn| async move { read_loop(&ctx, &stream, &conn).await },
    )
    .await;
}

async fn read_loop(ctx: &CoreContext, stream: &TcpStream, conn: &Rc<Connection>) {
    let session = Rc::new(Session::default());
    let mut buffer = ReceiveBuffer::new();
    // The rest of a command refused for a bulk string over the limit, being read past.
    let mut discarding: Option<resp::Discard> = None;
    loop {
        let mut need_bytes = false;
        // The size of the command being received, as far as its headers say.
        let mut declared = 0;
        while conn.may_take_request() {
            if let Some(discard) = discarding.as_mut() {
                match discard.advance(buffer.data()) {
                    Ok((skipped, done)) => {
                        buffer.consume(skipped);
                        if !done {
                            need_bytes = true;
                            break;
                        }
                        discarding = None;
                    }
                    Err(error) => return refuse_stream(conn, &error),
                }
            }
            match resp::parse_command(buffer.data()) {
                Ok(Parsed::TooLarge {
                    len,
                    consumed,
                    discard,
                }) => {
                    buffer.consume(consumed);
                    discarding = Some(discard);
                    let sequence =
                        conn.start_ordered_request(crate::metrics::resp_command_slot("other"));
                    let mut out = Vec::new();
                    resp::error(
                        &mut out,
                        &format!(
                            "ERR argument of {len} bytes exceeds the {} limit",
                            bytes_limit(VALUE_SIZE_MAX)
                        ),
                    );
                    conn.respond_in_order(sequence, out);
                }
                Ok(Parsed::Command { args, len }) => {
                    buffer.consume(len);
                    if args.is_empty() {
                        continue;
                    }
                    if let After::Close = execute(ctx, conn, &session, args).await {
                        return;
                    }
                }
                Ok(Parsed::Incomplete { declared: d }) => {
                    declared = d;
                    need_bytes = true;
                    break;
                }
                Err(error) => return refuse_stream(conn, &error),
            }
        }
        // At the in-flight limit, whole commands may still wait in the buffer: read no more
        // until there is room for them. A bulk string may be up to 16 MiB: let the buffer grow
        // to hold what is pending.
        let more = if need_bytes {
            let wanted = buffer.data().len() + 64 * 1024;
            conn::fill(ctx, stream, conn, &mut buffer, wanted, declared).await
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
