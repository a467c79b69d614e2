//! Client connections: frames in, requests routed to shards, replies out.
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

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use kvs_core::command::Command;
use kvs_core::state::CommandResult;
use kvs_wire::frame::{frame_len, Decoded, FrameDecoder, FrameError, Header};
use kvs_wire::limits::{FRAME_BODY_SIZE_MAX, FRAME_HEADER_SIZE};
use kvs_wire::{shard_for_key, ErrorCode, Opcode, Request, Response};

use crate::conn::{self, Connection, ConnectionCounts, ConnectionSlot, ReceiveBuffer};
use crate::local::Notify;
use crate::resp_server::{RespGather, RespRender};
use crate::runtime::{Sender, TcpStream};
use crate::shard::{Origin, ShardInfo, ShardOp, ShardReply, ShardRequest, NO_ORIGIN};

/// Where a shard's reply goes on the core that asked.
pub enum Target {
    /// Straight to a connection, as the reply to one request.
    Connection {
        conn: Rc<Connection>,
        request_id: u64,
        opcode: u8,
    },
    /// One part of a request split over shards.
    Part { gather: Rc<Gather>, part: usize },
    /// A RESP connection, as the reply to the command with sequence number `sequence`.
    /// `resp3`: the connection switched to RESP3 with HELLO 3 (nulls are encoded as `_`).
    Resp {
        conn: Rc<Connection>,
        sequence: u64,
        render: RespRender,
        resp3: bool,
    },
    /// One part of a RESP command split over shards.
    RespPart { gather: Rc<RespGather>, part: usize },
    /// A task on this core waiting for the reply (a document command's coordinator).
    Task(Rc<crate::documents::ReplySlot>),
}

impl Target {
    /// The origin whose order the request keeps: the connection it came from.
    fn origin(&self) -> Origin {
        match self {
            Target::Connection { conn, .. } | Target::Resp { conn, .. } => conn.origin(),
            Target::Part { gather, .. } => gather.conn.origin(),
            Target::RespPart { gather, .. } => gather.origin(),
            Target::Task(_) => NO_ORIGIN,
        }
    }
}

/// Where a shard sends a reply: to a target on its own core, or back to another core.
pub enum ReplyTo {
    Local(Target),
    Remote { core: usize, token: u64 },
}

/// A request from another core's connection.
pub struct RemoteRequest {
    pub op: ShardOp,
    pub token: u64,
    pub from: usize,
    pub origin: Origin,
}

/// A reply going back to the core that sent the request.
pub struct RemoteReply {
    pub token: u64,
    pub reply: ShardReply,
}

/// The local shard's inbox.
#[derive(Default)]
pub struct ShardQueue {
    pub items: RefCell<VecDeque<ShardRequest<ReplyTo>>>,
    pub notify: Notify,
}

impl ShardQueue {
    pub fn push(&self, request: ShardRequest<ReplyTo>) {
        self.items.borrow_mut().push_back(request);
        self.notify.notify();
    }
}

/// What the connections of one core share.
pub struct CoreContext {
    pub core: usize,
    pub shard_count: u32,
    pub queue: Rc<ShardQueue>,
    /// Request senders to every other core's shard, indexed by core (None for this core).
    pub request_senders: Vec<Option<Sender<RemoteRequest>>>,
    /// Reply senders back to every other core.
    pub reply_senders: Vec<Option<Sender<RemoteReply>>>,
    tokens: RefCell<HashMap<u64, Target>>,
    next_token: Cell<u64>,
    /// Set when the node is shutting down; `stop` is notified then.
    pub stopping: Cell<bool>,
    pub stop: Notify,
    /// Client connections of all cores, by which accepted ones are spread over the cores.
    pub connection_counts: Arc<ConnectionCounts>,
    /// This core's open connections, to shut their receiving side when the node stops.
    connections: RefCell<HashMap<u64, std::os::fd::RawFd>>,
    next_connection: Cell<u64>,
}

impl CoreContext {
    pub fn new(
        core: usize,
        shard_count: u32,
        queue: Rc<ShardQueue>,
        request_senders: Vec<Option<Sender<RemoteRequest>>>,
        reply_senders: Vec<Option<Sender<RemoteReply>>>,
        connection_counts: Arc<ConnectionCounts>,
    ) -> CoreContext {
        CoreContext {
            core,
            shard_count,
            queue,
            request_senders,
            reply_senders,
            tokens: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            stopping: Cell::new(false),
            stop: Notify::new(),
            connection_counts,
            connections: RefCell::new(HashMap::new()),
            next_connection: Cell::new(0),
        }
    }

    /// Records an open connection; its receive ends once the node stops.
    pub fn register_connection(&self, stream: &TcpStream) -> u64 {
        let id = self.next_connection.get();
        self.next_connection.set(id + 1);
        self.connections.borrow_mut().insert(id, stream.raw_fd());
        if self.stopping.get() {
            stream.shutdown_read();
        }
        id
    }

    /// Forgets a connection, before its socket closes.
    pub fn deregister_connection(&self, id: u64) {
        self.connections.borrow_mut().remove(&id);
    }

    /// Ends both directions of every connection still open: for peers that stopped reading
    /// their replies, whose writers would otherwise wait for room for ever.
    pub fn force_close_connections(&self) {
        self.shutdown_connections(libc::SHUT_RDWR);
    }

    /// `shutdown(2)` with `how` on every registered connection.
    fn shutdown_connections(&self, how: libc::c_int) {
        for &fd in self.connections.borrow().values() {
            // SAFETY: a registered descriptor is open: it is deregistered before it closes.
            unsafe { libc::shutdown(fd, how) };
        }
    }

    /// Marks the node as stopping and ends every connection's receive: readers see the end
    /// of their stream, answer what they accepted, and close.
    pub fn stop_connections(&self) {
        self.stopping.set(true);
        self.stop.notify();
        self.shutdown_connections(libc::SHUT_RD);
    }

    /// Sends `op` to `shard`; its reply will be delivered to `target` on this core.
    pub(crate) async fn send(&self, shard: u32, op: ShardOp, target: Target) {
        let shard = shard as usize;
        let origin = target.origin();
        if shard == self.core {
            self.queue.push(ShardRequest {
                op,
                reply: ReplyTo::Local(target),
                origin,
            });
            return;
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.tokens.borrow_mut().insert(token, target);
        let sender = self.request_senders[shard]
            .as_ref()
            .expect("a sender to every other core");
        let request = RemoteRequest {
            op,
            token,
            from: self.core,
            origin,
        };
        if sender.send(request).await.is_err() {
            // The other core is gone (only during shutdown): answer here instead.
            if let Some(target) = self.tokens.borrow_mut().remove(&token) {
                deliver(
                    target,
                    ShardReply::Error(ErrorCode::ShuttingDown, "shard is shutting down".into()),
                );
            }
        }
    }

    /// Delivers a reply that came back from another core.
    pub fn deliver_remote(&self, reply: RemoteReply) {
        let target = self.tokens.borrow_mut().remove(&reply.token);
        match target {
            Some(target) => deliver(target, reply.reply),
            None => tracing::error!(token = reply.token, "reply for an unknown token"),
        }
    }

    /// Like `reply`, without waiting: a reply to another core whose channel is full goes in
    /// a task of its own.
    pub fn reply_now(self: &Rc<Self>, to: ReplyTo, reply: ShardReply) {
        match to {
            ReplyTo::Local(target) => deliver(target, reply),
            ReplyTo::Remote { core, token } => {
                let sender = self.reply_senders[core]
                    .as_ref()
                    .expect("a sender to every other core");
                if let Err(reply) = sender.try_send(RemoteReply { token, reply }) {
                    let ctx = Rc::clone(self);
                    crate::runtime::spawn_local(async move {
                        ctx.reply(ReplyTo::Remote { core, token }, reply.reply)
                            .await;
                    })
                    .detach();
                }
            }
        }
    }

    /// Sends a reply produced by this core's shard to where it belongs.
    pub async fn reply(&self, to: ReplyTo, reply: ShardReply) {
        match to {
            ReplyTo::Local(target) => deliver(target, reply),
            ReplyTo::Remote { core, token } => {
                let sender = self.reply_senders[core]
                    .as_ref()
                    .expect("a sender to every other core");
                // A full channel makes this wait for room: replies are never dropped.
                if sender.send(RemoteReply { token, reply }).await.is_err() {
                    tracing::warn!(core, "reply to a core that has stopped");
                }
            }
        }
    }
}

/// Queues the native-protocol reply to one request.
fn respond(conn: &Connection, opcode: u8, request_id: u64, response: &Response) {
    conn.respond_with(|out| response.encode(opcode, request_id, out));
}

/// Converts a single-shard reply to the wire reply for `opcode`.
fn single_response(opcode: u8, reply: ShardReply) -> Response {
    use CommandResult as R;
    match (Opcode::from_u8(opcode), reply) {
        (_, ShardReply::Error(code, message)) => Response::error(code, message),
        (Some(Opcode::Get), ShardReply::Value(Some(v))) => Response::Value {
            version: v.version,
            value: v.value,
        },
        (Some(Opcode::Get), ShardReply::Value(None)) => {
            Response::error(ErrorCode::NotFound, "key not found")
        }
        (Some(Opcode::Put | Opcode::Cas), ShardReply::Written(R::Written { version })) => {
            Response::Written { version }
        }
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
        (_, other) => Response::error(
            ErrorCode::Internal,
            format!("unexpected shard reply {other:?}"),
        ),
    }
}

/// Hands a reply to its target on this core.
pub fn deliver(target: Target, reply: ShardReply) {
    match target {
        Target::Connection {
            conn,
            request_id,
            opcode,
        } => {
            respond(&conn, opcode, request_id, &single_response(opcode, reply));
        }
        Target::Part { gather, part } => gather.add(part, reply),
        Target::Resp {
            conn,
            sequence,
            render,
            resp3,
        } => conn.respond_in_order_with(sequence, |out| {
            crate::resp_server::render_into(out, render, reply, resp3)
        }),
        Target::RespPart { gather, part } => gather.add(part, reply),
        Target::Task(slot) => slot.fill(reply),
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

/// The replies of a request's parts as they arrive, one per shard it was split over.
pub(crate) struct Parts {
    replies: RefCell<Vec<Option<ShardReply>>>,
    remaining: Cell<usize>,
}

impl Parts {
    pub(crate) fn new(count: usize) -> Parts {
        Parts {
            replies: RefCell::new((0..count).map(|_| None).collect()),
            remaining: Cell::new(count),
        }
    }

    /// Stores one part's reply; returns all of them, in part order, once the last arrived.
    pub(crate) fn add(&self, part: usize, reply: ShardReply) -> Option<Vec<ShardReply>> {
        self.replies.borrow_mut()[part] = Some(reply);
        self.remaining.set(self.remaining.get() - 1);
        (self.remaining.get() == 0).then(|| {
            self.replies
                .borrow_mut()
                .drain(..)
                .map(|p| p.expect("every part arrived"))
                .collect()
        })
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
                    "core_connections": connections,
                    "shard": shards,
                });
                Response::Info(info.to_string())
            }
        }
    }
}

/// A merged SCAN page: pairs in key order, and where to continue when there may be more.
pub(crate) type ScanPage = (Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

/// Merges the shards' SCAN replies into one page of at most `limit` pairs. Each shard sent its
/// first `limit` keys from the start key, so the merged first `limit` are exact. Returns the
/// offending reply if a part is not a SCAN reply.
pub(crate) fn merge_scan(parts: Vec<ShardReply>, limit: u32) -> Result<ScanPage, ShardReply> {
    let limit = limit as usize;
    let mut more = false;
    let mut pairs = Vec::new();
    for reply in parts {
        let ShardReply::Scanned(found) = reply else {
            return Err(reply);
        };
        // A shard that filled the limit may hold more.
        more |= found.len() >= limit;
        pairs.extend(found);
    }
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    more |= pairs.len() > limit;
    pairs.truncate(limit);
    let next = match pairs.last() {
        Some((key, _)) if more => {
            let mut next = key.clone();
            next.push(0);
            Some(next)
        }
        _ => None,
    };
    Ok((pairs, next))
}

fn unexpected(reply: &ShardReply) -> Response {
    Response::error(
        ErrorCode::Internal,
        format!("unexpected shard reply {reply:?}"),
    )
}

/// Items of a multi-key request grouped by shard: (shard, positions in the request, items).
pub(crate) type ShardParts<T> = Vec<(u32, Vec<usize>, Vec<T>)>;

pub(crate) fn split_by_shard<T>(items: Vec<T>, shard_of: impl Fn(&T) -> u32) -> ShardParts<T> {
    let mut parts: ShardParts<T> = Vec::new();
    for (at, item) in items.into_iter().enumerate() {
        let shard = shard_of(&item);
        match parts.iter_mut().find(|(s, _, _)| *s == shard) {
            Some((_, positions, items)) => {
                positions.push(at);
                items.push(item);
            }
            None => parts.push((shard, vec![at], vec![item])),
        }
    }
    parts
}

/// Routes one decoded request.
async fn dispatch(ctx: &Rc<CoreContext>, conn: &Rc<Connection>, header: Header, request: Request) {
    let request_id = header.request_id;
    let opcode = header.opcode;
    let shard_of = |key: &[u8]| shard_for_key(key, ctx.shard_count);
    let to_conn = || Target::Connection {
        conn: Rc::clone(conn),
        request_id,
        opcode,
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
        Request::Ping => respond(conn, opcode, request_id, &Response::Pong),
        Request::Get { key } => {
            ctx.send(shard_of(&key), ShardOp::Get { key }, to_conn())
                .await
        }
        Request::Put { key, value } => {
            let shard = shard_of(&key);
            ctx.send(
                shard,
                ShardOp::Write(Command::Put { key, value }),
                to_conn(),
            )
            .await
        }
        Request::Delete { key } => {
            let shard = shard_of(&key);
            ctx.send(shard, ShardOp::Write(Command::Delete { key }), to_conn())
                .await
        }
        Request::Cas {
            key,
            expected_version,
            value,
        } => {
            let shard = shard_of(&key);
            let command = Command::Cas {
                key,
                expected_version,
                value,
            };
            ctx.send(shard, ShardOp::Write(command), to_conn()).await
        }
        Request::MGet { keys } => {
            let total = keys.len();
            let parts = split_by_shard(keys, |key| shard_of(key));
            if parts.is_empty() {
                return respond(conn, opcode, request_id, &Response::Values(Vec::new()));
            }
            let positions = parts.iter().map(|(_, p, _)| p.clone()).collect();
            let g = gather(GatherKind::MGet { positions, total }, parts.len());
            for (part, (shard, _, keys)) in parts.into_iter().enumerate() {
                ctx.send(
                    shard,
                    ShardOp::MGet { keys },
                    Target::Part {
                        gather: Rc::clone(&g),
                        part,
                    },
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
                let op = ShardOp::Write(Command::PutMany { pairs });
                ctx.send(
                    shard,
                    op,
                    Target::Part {
                        gather: Rc::clone(&g),
                        part,
                    },
                )
                .await;
            }
        }
        Request::Scan { start, end, limit } => {
            let g = gather(GatherKind::Scan { limit }, ctx.shard_count as usize);
            for shard in 0..ctx.shard_count {
                let op = ShardOp::Scan {
                    start: start.clone(),
                    end: end.clone(),
                    limit,
                };
                ctx.send(
                    shard,
                    op,
                    Target::Part {
                        gather: Rc::clone(&g),
                        part: shard as usize,
                    },
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
                },
                ctx.shard_count as usize,
            );
            for shard in 0..ctx.shard_count {
                ctx.send(
                    shard,
                    ShardOp::Info,
                    Target::Part {
                        gather: Rc::clone(&g),
                        part: shard as usize,
                    },
                )
                .await;
            }
        }
    }
}

/// Serves one native-protocol connection until the client leaves, the stream breaks or the
/// node stops.
pub async fn serve_connection(ctx: Rc<CoreContext>, stream: TcpStream, slot: ConnectionSlot) {
    conn::drive(ctx, stream, slot, |ctx, stream, conn| async move {
        read_loop(&ctx, &stream, &conn).await
    })
    .await;
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
                    conn.start_request();
                    if header.flags != 0 {
                        let response = Response::error(
                            ErrorCode::BadRequest,
                            "a request must not carry reply flags",
                        );
                        respond(conn, header.opcode, header.request_id, &response);
                    } else {
                        match Request::decode_body(header.opcode, body) {
                            Ok(request) => dispatch(ctx, conn, header, request).await,
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
                    conn.start_request();
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
            conn::fill(ctx, stream, conn, &mut buffer, wanted).await
        } else {
            conn::wait_for_room(ctx, conn).await
        };
        if !more {
            return;
        }
    }
}
