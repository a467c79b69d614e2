//! Redis's transactions on the RESP listener (ADR 0022, docs/resp.md): MULTI queues
//! commands, EXEC runs them atomically and in isolation — across shards — and DISCARD drops
//! them; WATCH makes the next EXEC do nothing (a null reply) if a watched key changed since.
//!
//! EXEC is one serializable transaction: it locks the watched keys (shared) and every key the
//! queued commands touch (exclusive) shard by shard, checks the watched keys' versions, then
//! commits every shard's commands at once (one entry on one shard, two-phase commit over
//! several). The commands run in the shards' apply, in order, so a GET after a SET in the same
//! EXEC sees it. Like Redis, a command that fails when run (INCR of a non-number) answers its
//! error in EXEC's array and the others still apply; a command refused when queued (unknown,
//! wrong arity) makes EXEC answer EXECABORT and run nothing. A deadlock or a write outside
//! transactions that aborted the EXEC is retried here, since nothing of it was applied.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use kvs_core::command::Command;
use kvs_core::state::{CommandResult, Versioned};
use kvs_wire::limits::{KEY_SIZE_MAX, VALUE_SIZE_MAX};
use kvs_wire::{resp, shard_for_key, ErrorCode};

use crate::ask::ask;
use crate::lock_names;
use crate::resp_reply::{error_line, null, render_into, RespRender};
use crate::route::CoreContext;
use crate::shard::{ShardOp, ShardReply};
use crate::txn_commit::{self, Refusal};
use crate::txn_locks::{LockAsk, Mode};

/// Commands a connection may queue between MULTI and EXEC.
pub const QUEUEABLE: &[&str] = &[
    "get", "set", "setnx", "getset", "append", "incr", "decr", "incrby", "decrby", "del", "unlink",
    "exists", "mget", "mset", "strlen", "type", "ping", "echo",
];

/// How often EXEC runs again after a deadlock or a conflict before it answers the error.
const EXEC_ATTEMPTS: u32 = 20;

/// A connection's MULTI and WATCH state.
#[derive(Debug, Default)]
pub struct MultiState {
    /// Set between MULTI and EXEC/DISCARD: the queued commands (name, arguments).
    queued: RefCell<Option<Vec<Planned>>>,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    refused: Cell<bool>,
    /// WATCHed keys and the version each had then (0: absent).
    watched: RefCell<Vec<(Vec<u8>, u64)>>,
}

/// How a queued command's results become its reply.
#[derive(Debug, Clone)]
enum Shape {
    Single(RespRender),
    Deleted,
    Exists,
    MGet,
    MSet,
    Pong,
    Echo(Vec<u8>),
}

/// A queued command: its steps (one per key) and how its reply is made.
#[derive(Debug, Clone)]
struct Planned {
    steps: Vec<Command>,
    shape: Shape,
}

fn arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

/// The steps of a queueable command, or the error Redis would give when queueing it.
fn plan(name: &str, args: &[Vec<u8>]) -> Result<Planned, String> {
    let too_long = args.iter().any(|a| a.len() > VALUE_SIZE_MAX)
        || args.first().is_some_and(|k| k.len() > KEY_SIZE_MAX);
    if too_long {
        return Err("ERR key or value over kvs's size limits".into());
    }
    let key = || args[0].clone();
    let single = |steps: Vec<Command>, render| Planned {
        steps,
        shape: Shape::Single(render),
    };
    Ok(match (name, args.len()) {
        ("ping", 0) => Planned {
            steps: Vec::new(),
            shape: Shape::Pong,
        },
        ("echo", 1) => Planned {
            steps: Vec::new(),
            shape: Shape::Echo(args[0].clone()),
        },
        ("get", 1) => single(vec![Command::Read { key: key() }], RespRender::Get),
        ("strlen", 1) => single(vec![Command::Read { key: key() }], RespRender::Strlen),
        ("type", 1) => single(vec![Command::Read { key: key() }], RespRender::Type),
        ("set", 2) => single(
            vec![Command::Put {
                key: key(),
                value: args[1].clone(),
            }],
            RespRender::Set,
        ),
        ("set", 3) => {
            let (key, value) = (key(), args[1].clone());
            match args[2].to_ascii_lowercase().as_slice() {
                b"nx" => single(
                    vec![Command::Cas {
                        key,
                        expected_version: 0,
                        value: Some(value),
                    }],
                    RespRender::SetConditional,
                ),
                b"xx" => single(
                    vec![Command::PutIfExists { key, value }],
                    RespRender::SetConditional,
                ),
                _ => return Err("ERR syntax error (kvs queues SET with NX or XX only)".into()),
            }
        }
        ("setnx", 2) => single(
            vec![Command::Cas {
                key: key(),
                expected_version: 0,
                value: Some(args[1].clone()),
            }],
            RespRender::SetNx,
        ),
        ("getset", 2) => single(
            vec![Command::GetAndPut {
                key: key(),
                value: args[1].clone(),
            }],
            RespRender::GetSet,
        ),
        ("append", 2) => single(
            vec![Command::Append {
                key: key(),
                value: args[1].clone(),
            }],
            RespRender::Integer,
        ),
        ("incr" | "decr", 1) | ("incrby" | "decrby", 2) => {
            let delta = match name {
                "incr" => Some(1),
                "decr" => Some(-1),
                _ => std::str::from_utf8(&args[1])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|n| {
                        if name == "decrby" {
                            n.checked_neg()
                        } else {
                            Some(n)
                        }
                    }),
            };
            let delta = delta.ok_or("ERR value is not an integer or out of range")?;
            single(
                vec![Command::Increment { key: key(), delta }],
                RespRender::Integer,
            )
        }
        ("del" | "unlink", n) if n >= 1 => Planned {
            steps: args
                .iter()
                .map(|k| Command::Delete { key: k.clone() })
                .collect(),
            shape: Shape::Deleted,
        },
        ("exists" | "mget", n) if n >= 1 => Planned {
            steps: args
                .iter()
                .map(|k| Command::Read { key: k.clone() })
                .collect(),
            shape: if name == "exists" {
                Shape::Exists
            } else {
                Shape::MGet
            },
        },
        ("mset", n) if n >= 2 && n % 2 == 0 => Planned {
            steps: args
                .chunks(2)
                .map(|pair| Command::Put {
                    key: pair[0].clone(),
                    value: pair[1].clone(),
                })
                .collect(),
            shape: Shape::MSet,
        },
        _ => return Err(arity(name)),
    })
}

impl MultiState {
    pub fn in_multi(&self) -> bool {
        self.queued.borrow().is_some()
    }

    /// MULTI, DISCARD, UNWATCH, and any command while in MULTI (queued, or refused): answers
    /// into `out` and returns true; false for a command this does not handle.
    pub fn intercept(&self, name: &str, args: &[Vec<u8>], out: &mut Vec<u8>) -> bool {
        match name {
            "multi" if self.in_multi() => resp::error(out, "ERR MULTI calls can not be nested"),
            "multi" => {
                *self.queued.borrow_mut() = Some(Vec::new());
                self.refused.set(false);
                resp::simple(out, "OK");
            }
            "discard" if self.in_multi() => {
                self.end();
                resp::simple(out, "OK");
            }
            "discard" => resp::error(out, "ERR DISCARD without MULTI"),
            "exec" if !self.in_multi() => resp::error(out, "ERR EXEC without MULTI"),
            "watch" if self.in_multi() => resp::error(out, "ERR WATCH inside MULTI is not allowed"),
            "unwatch" if !self.in_multi() => {
                self.watched.borrow_mut().clear();
                resp::simple(out, "OK");
            }
            "exec" | "watch" => return false,
            _ if self.in_multi() => {
                if !QUEUEABLE.contains(&name) {
                    self.refused.set(true);
                    let name: String = name.chars().take(64).collect();
                    resp::error(
                        out,
                        &format!(
                            "ERR '{name}' cannot be queued in a transaction by kvs \
                             (docs/resp.md lists what can)"
                        ),
                    );
                    return true;
                }
                match plan(name, args) {
                    Ok(planned) => {
                        if let Some(queued) = self.queued.borrow_mut().as_mut() {
                            queued.push(planned);
                        }
                        resp::simple(out, "QUEUED");
                    }
                    Err(message) => {
                        self.refused.set(true);
                        resp::error(out, &message);
                    }
                }
            }
            _ => return false,
        }
        true
    }

    fn end(&self) {
        *self.queued.borrow_mut() = None;
        self.refused.set(false);
        self.watched.borrow_mut().clear();
    }

    /// WATCH: records each key's version now.
    pub async fn watch(&self, ctx: &CoreContext, keys: Vec<Vec<u8>>) -> Result<(), String> {
        for key in keys {
            let shard = shard_for_key(&key, ctx.shard_count);
            let version = match ask(ctx, shard, ShardOp::Get { key: key.clone() }).await {
                ShardReply::Value(found) => found.map_or(0, |v| v.version),
                ShardReply::Error(code, message) => return Err(format!("ERR {code}: {message}")),
                other => return Err(format!("ERR internal: unexpected reply {other:?}")),
            };
            self.watched.borrow_mut().push((key, version));
        }
        Ok(())
    }

    /// EXEC: runs the queued commands as one transaction; the reply into `out`.
    pub async fn exec(&self, ctx: &CoreContext, resp3: bool, out: &mut Vec<u8>) {
        let queued = self.queued.borrow_mut().take().unwrap_or_default();
        let refused = self.refused.get();
        let watched = std::mem::take(&mut *self.watched.borrow_mut());
        self.end();
        if refused {
            resp::error(
                out,
                "EXECABORT Transaction discarded because of previous errors.",
            );
            return;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match run(ctx, &queued, &watched).await {
                Ok(Some(results)) => return render(out, &queued, results, resp3),
                Ok(None) => {
                    // A watched key changed: nothing ran.
                    if resp3 {
                        out.extend_from_slice(b"_\r\n");
                    } else {
                        out.extend_from_slice(b"*-1\r\n");
                    }
                    return;
                }
                Err((code, _))
                    if matches!(code, ErrorCode::Deadlock | ErrorCode::TxnConflict)
                        && attempt < EXEC_ATTEMPTS =>
                {
                    crate::runtime::sleep(std::time::Duration::from_millis(u64::from(attempt)))
                        .await;
                }
                Err((code, message)) => return error_line(out, code, &message),
            }
        }
    }
}

/// One attempt at EXEC: `None` when a watched key changed, else each step's result in the
/// order of the queued commands' steps.
async fn run(
    ctx: &CoreContext,
    queued: &[Planned],
    watched: &[(Vec<u8>, u64)],
) -> Result<Option<Vec<CommandResult>>, Refusal> {
    let txns = &ctx.transactions;
    let txn = txns.new_id();
    let deadline_ms = kvs_core::sessions::wall_clock_ms() + txns.txn_timeout.as_millis() as u64;
    let shard_of = |key: &[u8]| shard_for_key(key, ctx.shard_count);
    // Every key's strongest mode, by shard.
    let mut wanted: BTreeMap<u32, BTreeMap<Vec<u8>, Mode>> = BTreeMap::new();
    for (key, _) in watched {
        wanted
            .entry(shard_of(key))
            .or_default()
            .entry(lock_names::key(key))
            .or_insert(Mode::Shared);
    }
    for step in queued.iter().flat_map(|p| &p.steps) {
        for key in step.step_keys() {
            wanted
                .entry(shard_of(key))
                .or_default()
                .insert(lock_names::key(key), Mode::Exclusive);
        }
    }
    let mut locked = BTreeSet::new();
    let mut counts = BTreeMap::new();
    for (shard, keys) in wanted {
        locked.insert(shard);
        counts.insert(shard, keys.len() as u32);
        let ask_lock = LockAsk {
            txn,
            deadline_ms,
            held: 0,
            keys: keys.into_iter().collect(),
            range: None,
        };
        if let Err(refusal) = txn_commit::lock(ctx, shard, ask_lock).await {
            txn_commit::release(ctx, txn, locked).await;
            return Err(refusal);
        }
    }
    for (key, version) in watched {
        let get = ShardOp::Fenced(Box::new(ShardOp::Get { key: key.clone() }));
        let now = match ask(ctx, shard_of(key), get).await {
            ShardReply::Value(found) => found.map_or(0, |v| v.version),
            ShardReply::Error(code, message) => {
                txn_commit::release(ctx, txn, locked).await;
                return Err((code, message));
            }
            other => {
                txn_commit::release(ctx, txn, locked).await;
                return Err((ErrorCode::Internal, format!("unexpected reply {other:?}")));
            }
        };
        if now != *version {
            txn_commit::release(ctx, txn, locked).await;
            return Ok(None);
        }
    }
    // Each shard's steps in order, and where each step's result comes from.
    let mut parts: BTreeMap<u32, Vec<Command>> = BTreeMap::new();
    let mut from: Vec<(u32, usize)> = Vec::new();
    for step in queued.iter().flat_map(|p| &p.steps) {
        let shard = shard_of(step.step_keys()[0]);
        let part = parts.entry(shard).or_default();
        from.push((shard, part.len()));
        part.push(step.clone());
    }
    let commit = txn_commit::Commit {
        txn,
        deadline_ms,
        node_id: txns.node_id,
        locks: &counts,
        parts,
    };
    let results = txn_commit::commit(ctx, commit).await?;
    Ok(Some(
        from.into_iter()
            .map(|(shard, at)| {
                results
                    .get(&shard)
                    .and_then(|part| part.get(at))
                    .cloned()
                    .unwrap_or(CommandResult::Refused {
                        reason: format!("no result from shard {shard}"),
                    })
            })
            .collect(),
    ))
}

/// A step's result as a shard reply, for `render_into`.
fn as_reply(result: CommandResult) -> ShardReply {
    match result {
        CommandResult::Value { found } => {
            ShardReply::Value(found.map(|(version, value)| Versioned { version, value }))
        }
        other => ShardReply::Written(other),
    }
}

fn render(out: &mut Vec<u8>, queued: &[Planned], results: Vec<CommandResult>, resp3: bool) {
    let mut results = results.into_iter();
    resp::array_header(out, queued.len());
    for planned in queued {
        let mine: Vec<CommandResult> = results.by_ref().take(planned.steps.len()).collect();
        match &planned.shape {
            Shape::Single(how) => {
                let result = mine.into_iter().next().expect("one step");
                render_into(out, *how, as_reply(result), resp3);
            }
            Shape::Pong => resp::simple(out, "PONG"),
            Shape::Echo(text) => resp::bulk(out, text),
            Shape::Deleted => {
                let n = mine
                    .iter()
                    .filter(|r| matches!(r, CommandResult::Deleted { existed: true }))
                    .count();
                resp::integer(out, n as i64);
            }
            Shape::Exists => {
                let n = mine
                    .iter()
                    .filter(|r| matches!(r, CommandResult::Value { found: Some(_) }))
                    .count();
                resp::integer(out, n as i64);
            }
            Shape::MGet => {
                resp::array_header(out, mine.len());
                for result in mine {
                    match result {
                        CommandResult::Value {
                            found: Some((_, value)),
                        } => resp::bulk(out, &value),
                        _ => null(out, resp3),
                    }
                }
            }
            Shape::MSet => resp::simple(out, "OK"),
        }
    }
}
