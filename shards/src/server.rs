//! The native protocol's connections: frames in, requests routed to shards, replies out.
//!
//! Every core accepts on the node's one listening socket and hands each connection to the
//! core serving the fewest (see `node::accept_loop`). A connection has a reader, which decodes frames and routes each request to
//! the shard that owns its key — the local shard's queue directly, another core's shard over
//! a cross-core channel — and a writer, which sends replies as they complete, matched by
//! request id. Requests that touch several shards (MGET, MPUT, SCAN, INFO) are split, and a
//! [`Gather`] merges the parts into one reply.
//!
//! A client's mistake costs at most its own connection: a bad frame whose length is intact is
//! answered with an error and skipped; a stream that is not kvs protocol, or an oversized
//! frame, is answered with an error and the connection is closed. Nothing else is affected.

use std::rc::Rc;

use kvs_core::command::Command;
use kvs_core::sessions::wall_clock_ms;
use kvs_core::state::CommandResult;
use kvs_wire::frame::{frame_len, Decoded, FrameDecoder, FrameError, Header};
use kvs_wire::limits::{FRAME_BODY_SIZE_MAX, FRAME_HEADER_SIZE};
use kvs_wire::{shard_for_key, ErrorCode, Opcode, Request, Response};

use crate::auth;
use crate::conn::{self, Connection, ReceiveBuffer};
use crate::metrics::{self, Protocol};
use crate::route::{merge_scan, split_by_shard, CoreContext, Deliver, Parts, Target};
use crate::runtime::TcpStream;
use crate::shard::{ShardInfo, ShardOp, ShardReply};
use crate::snapshot_read;
use crate::spread::ConnectionSlot;

/// Queues the native-protocol reply to one request.
fn respond(conn: &Connection, opcode: u8, request_id: u64, response: &Response) {
    let error = match response {
        Response::Error { code, .. } => Some(metrics::native_error_slot(*code)),
        _ => None,
    };
    conn.respond_with(request_id, error, |out| {
        response.encode(opcode, request_id, out)
    });
}

/// Encodes a shard's reply to one native request on its connection (`Connection`'s reply
/// encoder for this protocol): the target's tag is the request id, its aux the opcode.
fn encode_reply(conn: &Connection, request_id: u64, opcode: u32, reply: ShardReply) {
    let opcode = opcode as u8;
    respond(conn, opcode, request_id, &single_response(opcode, reply));
}

/// Converts a single-shard reply to the wire reply for `opcode`.
fn single_response(opcode: u8, reply: ShardReply) -> Response {
    use CommandResult as R;
    match (Opcode::from_u8(opcode), reply) {
        (_, ShardReply::Error(code, message)) => Response::error(code, message),
        (_, ShardReply::Written(R::OutcomeUnknown { reason })) => {
            Response::error(ErrorCode::OutcomeUnknown, reason)
        }
        (Some(Opcode::Get | Opcode::GetStale), ShardReply::Value(Some(v))) => Response::Value {
            version: v.version,
            value: v.value,
        },
        (Some(Opcode::Get | Opcode::GetStale), ShardReply::Value(None)) => {
            Response::error(ErrorCode::NotFound, "key not found")
        }
        (
            Some(Opcode::Put | Opcode::Cas | Opcode::TransferLeader),
            ShardReply::Written(R::Written { version }),
        ) => Response::Written { version },
        (Some(Opcode::Cas), ShardReply::Written(R::VersionMismatch { current })) => {
            Response::error(
                ErrorCode::VersionMismatch,
                if current == 0 {
                    "version mismatch: the key does not exist".to_string()
                } else {
                    format!("version mismatch: the key is at version {current}")
                },
            )
        }
        (Some(Opcode::Delete), ShardReply::Written(R::Deleted { existed })) => {
            Response::Deleted { existed }
        }
        (Some(Opcode::Backup), ShardReply::Backup(chunk)) => Response::BackupChunk(*chunk),
        (_, other) => Response::error(
            ErrorCode::Internal,
            format!("unexpected shard reply {other:?}"),
        ),
    }
}

/// How the parts of a split request are put back together.
enum GatherKind {
    /// positions[part] lists where each key of that part sits in the request.
    MGet {
        positions: Vec<Vec<usize>>,
        total: usize,
    },
    MPut {
        positions: Vec<Vec<usize>>,
        total: usize,
    },
    Scan {
        limit: u32,
    },
    Info {
        shard_count: u32,
        /// Open connections per core when the request arrived.
        connections: Vec<usize>,
        limits: crate::config::ConnectionLimits,
    },
}

/// Collects the parts of a request split over shards and answers once all are in.
pub struct Gather {
    conn: Rc<Connection>,
    request_id: u64,
    opcode: u8,
    kind: GatherKind,
    parts: Parts,
}

impl Deliver for Gather {
    /// The tag is the part.
    fn deliver(self: Rc<Self>, part: u64, _: u32, reply: ShardReply) {
        self.add(part as usize, reply);
    }
}

impl Gather {
    fn add(&self, part: usize, reply: ShardReply) {
        if let Some(parts) = self.parts.add(part, reply) {
            let response = self.combine(parts);
            respond(&self.conn, self.opcode, self.request_id, &response);
        }
    }

    fn combine(&self, parts: Vec<ShardReply>) -> Response {
        if let Some(ShardReply::Error(code, message)) =
            parts.iter().find(|p| matches!(p, ShardReply::Error(..)))
        {
            return Response::error(*code, message.clone());
        }
        match &self.kind {
            GatherKind::MGet { positions, total } => {
                let mut values = vec![None; *total];
                for (part, reply) in parts.into_iter().enumerate() {
                    let ShardReply::Values(found) = reply else {
                        return unexpected(&reply);
                    };
                    for (&at, value) in positions[part].iter().zip(found) {
                        values[at] = value.map(|v| (v.version, v.value));
                    }
                }
                Response::Values(values)
            }
            GatherKind::MPut { positions, total } => {
                let mut versions = vec![0; *total];
                for (part, reply) in parts.into_iter().enumerate() {
                    let ShardReply::Written(CommandResult::WrittenMany { versions: written }) =
                        reply
                    else {
                        return unexpected(&reply);
                    };
                    for (&at, version) in positions[part].iter().zip(written) {
                        versions[at] = version;
                    }
                }
                Response::Versions(versions)
            }
            GatherKind::Scan { limit } => match merge_scan(parts, *limit) {
                Ok((pairs, next)) => Response::Scanned { pairs, next },
                Err(reply) => unexpected(&reply),
            },
            GatherKind::Info {
                shard_count,
                connections,
                limits,
            } => {
                let mut shards: Vec<ShardInfo> = Vec::new();
                for reply in parts {
                    let ShardReply::Info(info) = reply else {
                        return unexpected(&reply);
                    };
                    shards.push(*info);
                }
                let info = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "shards": shard_count,
                    "keys": shards.iter().map(|s| s.keys).sum::<u64>(),
                    "log_size_bytes": shards.iter().map(|s| s.log_size_bytes).sum::<u64>(),
                    "connections": connections.iter().sum::<usize>(),
                    "max_connections": limits.max_connections,
                    "idle_timeout_ms": limits.idle_timeout.map(|t| t.as_millis() as u64),
                    "max_request_memory": limits.max_request_memory,
                    "core_connections": connections,
                    "shard": shards,
                });
                Response::Info(info.to_string())
            }
        }
    }
}

fn unexpected(reply: &ShardReply) -> Response {
    Response::error(
        ErrorCode::Internal,
        format!("unexpected shard reply {reply:?}"),
    )
}

/// Routes one decoded request.
async fn dispatch(ctx: &Rc<CoreContext>, conn: &Rc<Connection>, header: Header, request: Request) {
    ctx.connection_counts.count_command(ctx.core);
    let request_id = header.request_id;
    // A ONCE is its inner write, each command tagged with the session (ADR 0018); the
    // reply is the inner request's, under its opcode.
    let (request, once) = match request {
        Request::Once {
            session,
            seq,
            acked_below,
            request,
        } => (*request, Some((session, seq, acked_below, wall_clock_ms()))),
        request => (request, None),
    };
    let tagged = |command: Command| match once {
        Some((session, seq, acked_below, at_ms)) => Command::Once {
            session,
            seq,
            acked_below,
            at_ms,
            command: Box::new(command),
        },
        None => command,
    };
    let opcode = request.opcode() as u8;
    if ctx.auth.required {
        let what = format!("{:?}", request.opcode()).to_ascii_uppercase();
        if let Err((code, message)) = conn.auth.permits(auth::native_role(&request), &what) {
            return respond(conn, opcode, request_id, &Response::error(code, message));
        }
    }
    let shard_of = |key: &[u8]| shard_for_key(key, ctx.shard_count);
    let origin = conn.origin();
    let to_conn = || {
        Target::new(
            Rc::clone(conn) as Rc<dyn Deliver>,
            request_id,
            opcode.into(),
            origin,
        )
    };
    let gather = |kind: GatherKind, parts: usize| {
        Rc::new(Gather {
            conn: Rc::clone(conn),
            request_id,
            opcode,
            kind,
            parts: Parts::new(parts),
        })
    };
    match request {
        Request::Once { .. } => respond(
            conn,
            opcode,
            request_id,
            &Response::error(ErrorCode::BadRequest, "a ONCE carries a write, not a ONCE"),
        ),
        Request::Ping => respond(conn, opcode, request_id, &Response::Pong),
        Request::AuthStart { user, nonce } => {
            let response = if ctx.auth.required {
                conn.auth.start(&ctx.auth, user, nonce)
            } else {
                Response::error(ErrorCode::BadRequest, "this node runs with --auth off")
            };
            respond(conn, opcode, request_id, &response)
        }
        Request::AuthFinish { proof } => {
            let response = conn.auth.finish(&proof, &conn.peer_name()).await;
            respond(conn, opcode, request_id, &response)
        }
        Request::Begin { isolation } => {
            let response = crate::txn::begin(ctx, &conn.txns, isolation, origin).await;
            respond(conn, opcode, request_id, &response);
        }
        Request::InTxn { .. } | Request::Commit { .. } | Request::Rollback { .. } => {
            // A task of its own: a lock may take a while, and the connection's other
            // requests (another transaction's ROLLBACK, say) go on meanwhile.
            let (task_ctx, task_conn) = (Rc::clone(ctx), Rc::clone(conn));
            // Answered under the inner request's opcode, as a ONCE is.
            let opcode = request.reply_opcode() as u8;
            crate::runtime::spawn_local(async move {
                let (ctx, open) = (&task_ctx, &task_conn.txns);
                let response = match request {
                    Request::InTxn {
                        txn,
                        for_update,
                        request,
                    } => crate::txn::run(ctx, open, txn, *request, for_update).await,
                    Request::Commit { txn } => crate::txn::commit(ctx, open, txn).await,
                    Request::Rollback { txn } => crate::txn::rollback(ctx, open, txn).await,
                    _ => unreachable!("matched above"),
                };
                respond(&task_conn, opcode, request_id, &response);
            })
            .detach();
        }
        Request::Get { key } => {
            let shard = shard_of(&key);
            // This request is the connection's only one unanswered, so the shard's state
            // holds every write it sent before: answered here when the shard allows it,
            // without the trip through its queue (ADR 0029).
            if conn.in_flight() == 1 {
                let mut found = None;
                if ctx.read_here(shard, &key, &mut |value| found = Some(value.cloned())) {
                    let found = found.expect("read_here answered");
                    return to_conn().deliver(ShardReply::Value(found));
                }
            }
            ctx.send(shard, ShardOp::Get { key }, to_conn()).await
        }
        Request::GetStale { key } => {
            ctx.send(shard_of(&key), ShardOp::GetStale { key }, to_conn())
                .await
        }
        Request::Backup { shard, id, number } => {
            if shard >= ctx.shard_count {
                let message = format!("no shard {shard}: this node has {}", ctx.shard_count);
                let error = Response::error(ErrorCode::BadRequest, message);
                return respond(conn, opcode, request_id, &error);
            }
            ctx.send(shard, ShardOp::Backup { id, number }, to_conn())
                .await
        }
        Request::TransferLeader { shard, node } => {
            if shard >= ctx.shard_count {
                let message = format!(
                    "no shard {shard}: this node has {} (0 to {})",
                    ctx.shard_count,
                    ctx.shard_count - 1
                );
                return respond(
                    conn,
                    opcode,
                    request_id,
                    &Response::error(ErrorCode::BadRequest, message),
                );
            }
            let op = ShardOp::Write(Command::SetPreferredLeader { node });
            ctx.send(shard, op, to_conn()).await
        }
        Request::Put { key, value } => {
            let shard = shard_of(&key);
            ctx.send(
                shard,
                ShardOp::Write(tagged(Command::Put { key, value })),
                to_conn(),
            )
            .await
        }
        Request::Delete { key } => {
            let shard = shard_of(&key);
            let op = ShardOp::Write(tagged(Command::Delete { key }));
            ctx.send(shard, op, to_conn()).await
        }
        Request::Cas {
            key,
            expected_version,
            value,
        } => {
            let shard = shard_of(&key);
            let command = tagged(Command::Cas {
                key,
                expected_version,
                value,
            });
            ctx.send(shard, ShardOp::Write(command), to_conn()).await
        }
        Request::MGet { keys } => {
            let total = keys.len();
            let parts = split_by_shard(keys, |key| shard_of(key));
            if parts.is_empty() {
                return respond(conn, opcode, request_id, &Response::Values(Vec::new()));
            }
            let positions = parts.iter().map(|(_, p, _)| p.clone()).collect();
            // Keys on several shards are read at one timestamp (ADR 0023).
            let shards: Vec<u32> = parts.iter().map(|(shard, ..)| *shard).collect();
            let begun = match snapshot_read::begin_if_several(ctx, origin, &shards).await {
                Ok(begun) => begun,
                Err((code, message)) => {
                    return respond(conn, opcode, request_id, &Response::error(code, message))
                }
            };
            let g = gather(GatherKind::MGet { positions, total }, parts.len());
            for (part, (shard, _, keys)) in parts.into_iter().enumerate() {
                let op = snapshot_read::maybe_at(begun.as_ref(), part, ShardOp::MGet { keys });
                ctx.send(
                    shard,
                    op,
                    Target::new(Rc::clone(&g) as Rc<dyn Deliver>, part as u64, 0, origin),
                )
                .await;
            }
        }
        Request::MPut { pairs } => {
            let total = pairs.len();
            let parts = split_by_shard(pairs, |(key, _)| shard_of(key));
            if parts.is_empty() {
                return respond(conn, opcode, request_id, &Response::Versions(Vec::new()));
            }
            let positions = parts.iter().map(|(_, p, _)| p.clone()).collect();
            let g = gather(GatherKind::MPut { positions, total }, parts.len());
            for (part, (shard, _, pairs)) in parts.into_iter().enumerate() {
                let op = ShardOp::Write(tagged(Command::PutMany { pairs }));
                ctx.send(
                    shard,
                    op,
                    Target::new(Rc::clone(&g) as Rc<dyn Deliver>, part as u64, 0, origin),
                )
                .await;
            }
        }
        Request::Scan { start, end, limit } => {
            // Every shard is read at one timestamp (ADR 0023).
            let shards: Vec<u32> = (0..ctx.shard_count).collect();
            let begun = match snapshot_read::begin_if_several(ctx, origin, &shards).await {
                Ok(begun) => begun,
                Err((code, message)) => {
                    return respond(conn, opcode, request_id, &Response::error(code, message))
                }
            };
            let g = gather(GatherKind::Scan { limit }, ctx.shard_count as usize);
            for shard in 0..ctx.shard_count {
                let scan = ShardOp::Scan {
                    start: start.clone(),
                    end: end.clone(),
                    limit,
                };
                let op = snapshot_read::maybe_at(begun.as_ref(), shard as usize, scan);
                ctx.send(
                    shard,
                    op,
                    Target::new(Rc::clone(&g) as Rc<dyn Deliver>, shard.into(), 0, origin),
                )
                .await;
            }
        }
        Request::Document { command } => {
            // A task of its own: a document command may take several rounds of shard
            // requests, and the connection's key-value requests go on meanwhile. It
            // starts once the connection's previous document command is answered.
            let previous = conn.document_tail.borrow_mut().take();
            let (task_ctx, task_conn) = (Rc::clone(ctx), Rc::clone(conn));
            let task = crate::runtime::spawn_local(async move {
                if let Some(previous) = previous {
                    previous.await;
                }
                let response = crate::documents::handle(&task_ctx, &command).await;
                respond(&task_conn, opcode, request_id, &response);
            });
            *conn.document_tail.borrow_mut() = Some(task);
        }
        Request::Info => {
            let g = gather(
                GatherKind::Info {
                    shard_count: ctx.shard_count,
                    connections: ctx.connection_counts.per_core(),
                    limits: ctx.limits,
                },
                ctx.shard_count as usize,
            );
            for shard in 0..ctx.shard_count {
                ctx.send(
                    shard,
                    ShardOp::Info,
                    Target::new(Rc::clone(&g) as Rc<dyn Deliver>, shard.into(), 0, origin),
                )
                .await;
            }
        }
    }
}

/// Tells a client beyond `--max-connections` so, in its protocol, and closes the
/// connection (it is not counted, and sends nothing first).
pub async fn refuse_connection(stream: TcpStream, resp: bool) {
    const WHY: &str = "max number of clients reached (--max-connections)";
    let mut out = Vec::new();
    if resp {
        out.extend_from_slice(format!("-ERR {WHY}\r\n").as_bytes());
    } else {
        Response::error(ErrorCode::ShuttingDown, WHY).encode(Opcode::Ping as u8, 0, &mut out);
    }
    tracing::debug!("refused a connection: {WHY}");
    let _ = stream.send_all(out).await;
}

/// Serves one native-protocol connection until the client leaves, the stream breaks or the
/// node stops.
pub async fn serve_connection(ctx: Rc<CoreContext>, stream: TcpStream, slot: ConnectionSlot) {
    conn::drive(
        ctx,
        stream,
        slot,
        encode_reply,
        Protocol::Native,
        |ctx, stream, conn| async move {
            read_loop(&ctx, &stream, &conn).await;
            // What the client left open is rolled back: its locks go now.
            conn.txns.close(&ctx).await;
        },
    )
    .await;
}

/// The metrics slot of a native opcode (`metrics::NATIVE_COMMANDS`).
fn native_command_slot(opcode: u8) -> u8 {
    if usize::from(opcode) < metrics::NATIVE_COMMANDS.len() {
        opcode
    } else {
        0
    }
}

/// Reads and dispatches requests until the peer leaves, framing is lost or the node stops.
async fn read_loop(ctx: &Rc<CoreContext>, stream: &TcpStream, conn: &Rc<Connection>) {
    let mut buffer = ReceiveBuffer::new();
    let mut wanted = FRAME_HEADER_SIZE;
    loop {
        // Handle every whole frame in the buffer, while the in-flight limit allows.
        let mut need_bytes = false;
        while conn.may_take_request() {
            match FrameDecoder.decode(buffer.data()) {
                Ok(Decoded::Frame { header, len }) => {
                    let body = &buffer.data()[FRAME_HEADER_SIZE..len];
                    conn.start_request(header.request_id, native_command_slot(header.opcode));
                    if header.flags != 0 {
                        let response = Response::error(
                            ErrorCode::BadRequest,
                            "a request must not carry reply flags",
                        );
                        respond(conn, header.opcode, header.request_id, &response);
                    } else {
                        match Request::decode_body(header.opcode, body) {
                            Ok(request) => {
                                dispatch(ctx, conn, header, request).await;
                                if conn.auth.exhausted() {
                                    tracing::warn!(
                                        peer = conn.peer_name(),
                                        "closing a connection after failed logins"
                                    );
                                    return;
                                }
                            }
                            Err(error) => {
                                let response = Response::error(error.code(), error.to_string());
                                respond(conn, header.opcode, header.request_id, &response);
                            }
                        }
                    }
                    buffer.consume(len);
                    wanted = FRAME_HEADER_SIZE;
                }
                Ok(Decoded::Incomplete { wanted: w }) => {
                    wanted = w.min(FRAME_HEADER_SIZE + FRAME_BODY_SIZE_MAX);
                    need_bytes = true;
                    break;
                }
                Err(error) => {
                    let request_id = match error {
                        FrameError::BadChecksum { request_id }
                        | FrameError::TooLarge { request_id, .. } => request_id,
                        _ => 0,
                    };
                    let code = match error {
                        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                        FrameError::BadChecksum { .. } => ErrorCode::Checksum,
                        _ => ErrorCode::BadRequest,
                    };
                    let opcode = buffer.data().get(3).copied().unwrap_or(0);
                    conn.start_request(request_id, native_command_slot(opcode));
                    respond(
                        conn,
                        opcode,
                        request_id,
                        &Response::error(code, error.to_string()),
                    );
                    if !error.framing_intact() {
                        tracing::debug!(%error, "closing a connection that lost framing");
                        return;
                    }
                    let len = frame_len(buffer.data()).expect("intact framing has a length");
                    buffer.consume(len);
                }
            }
        }
        // At the in-flight limit, whole frames may still wait in the buffer: read no more
        // until there is room for them.
        let more = if need_bytes {
            conn::fill(ctx, stream, conn, &mut buffer, wanted, wanted).await
        } else {
            conn::wait_for_room(ctx, conn).await
        };
        if !more {
            return;
        }
    }
}
