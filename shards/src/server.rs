//! Client connections: frames in, requests routed to shards, replies out.
//!
//! Each core accepts connections (the kernel spreads them over the cores' listeners with
//! SO_REUSEPORT). A connection has a reader, which decodes frames and routes each request to
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
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_lite::{AsyncRead, AsyncWrite};
use kvs_core::command::Command;
use kvs_core::state::CommandResult;
use kvs_wire::frame::{frame_len, Decoded, FrameDecoder, FrameError, Header};
use kvs_wire::limits::{FRAME_BODY_SIZE_MAX, FRAME_HEADER_SIZE};
use kvs_wire::{shard_for_key, ErrorCode, Opcode, Request, Response};

use crate::local::Notify;
use crate::runtime::{spawn_local, ConnectedSender, TcpStream};
use crate::shard::{ShardInfo, ShardOp, ShardReply, ShardRequest};

/// Requests one connection may have in flight; the reader stops reading past this.
pub const CONNECTION_IN_FLIGHT_MAX: usize = 1024;
/// Size of a connection's receive buffer to begin with.
const RECEIVE_BUFFER_INITIAL_BYTES: usize = 64 * 1024;

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
    pub request_senders: Vec<Option<ConnectedSender<RemoteRequest>>>,
    /// Reply senders back to every other core.
    pub reply_senders: Vec<Option<ConnectedSender<RemoteReply>>>,
    tokens: RefCell<HashMap<u64, Target>>,
    next_token: Cell<u64>,
    /// Set when the node is shutting down; `stop` is notified then.
    pub stopping: Cell<bool>,
    pub stop: Notify,
    /// Open client connections on all cores.
    pub open_connections: Arc<AtomicUsize>,
}

impl CoreContext {
    pub fn new(
        core: usize,
        shard_count: u32,
        queue: Rc<ShardQueue>,
        request_senders: Vec<Option<ConnectedSender<RemoteRequest>>>,
        reply_senders: Vec<Option<ConnectedSender<RemoteReply>>>,
        open_connections: Arc<AtomicUsize>,
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
            open_connections,
        }
    }

    /// Sends `op` to `shard`; its reply will be delivered to `target` on this core.
    async fn send(&self, shard: u32, op: ShardOp, target: Target) {
        let shard = shard as usize;
        if shard == self.core {
            self.queue.push(ShardRequest {
                op,
                reply: ReplyTo::Local(target),
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

/// The output side of a client connection, shared by everything that answers it.
pub struct Connection {
    out: RefCell<Vec<u8>>,
    wake_writer: Notify,
    in_flight: Cell<usize>,
    wake_reader: Notify,
    /// The writer gave up (the peer is gone) or was told to finish.
    writer_done: Cell<bool>,
    finishing: Cell<bool>,
}

impl Connection {
    fn new() -> Connection {
        Connection {
            out: RefCell::new(Vec::with_capacity(16 * 1024)),
            wake_writer: Notify::new(),
            in_flight: Cell::new(0),
            wake_reader: Notify::new(),
            writer_done: Cell::new(false),
            finishing: Cell::new(false),
        }
    }

    fn start_request(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    /// Queues the reply to one request for the writer.
    fn respond(&self, opcode: u8, request_id: u64, response: &Response) {
        if !self.writer_done.get() {
            response.encode(opcode, request_id, &mut self.out.borrow_mut());
            self.wake_writer.notify();
        }
        self.in_flight.set(self.in_flight.get() - 1);
        self.wake_reader.notify();
    }
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
            conn.respond(opcode, request_id, &single_response(opcode, reply));
        }
        Target::Part { gather, part } => gather.add(part, reply),
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
    },
}

/// Collects the parts of a request split over shards and answers once all are in.
pub struct Gather {
    conn: Rc<Connection>,
    request_id: u64,
    opcode: u8,
    kind: GatherKind,
    parts: RefCell<Vec<Option<ShardReply>>>,
    remaining: Cell<usize>,
}

impl Gather {
    fn add(&self, part: usize, reply: ShardReply) {
        self.parts.borrow_mut()[part] = Some(reply);
        self.remaining.set(self.remaining.get() - 1);
        if self.remaining.get() == 0 {
            let parts: Vec<ShardReply> = self
                .parts
                .borrow_mut()
                .drain(..)
                .map(|p| p.expect("every part arrived"))
                .collect();
            let response = self.combine(parts);
            self.conn.respond(self.opcode, self.request_id, &response);
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
            GatherKind::Scan { limit } => {
                let limit = *limit as usize;
                let mut more = false;
                let mut pairs = Vec::new();
                for reply in parts {
                    let ShardReply::Scanned(found) = reply else {
                        return unexpected(&reply);
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
                Response::Scanned { pairs, next }
            }
            GatherKind::Info { shard_count } => {
                let mut shards: Vec<ShardInfo> = Vec::new();
                for reply in parts {
                    let ShardReply::Info(info) = reply else {
                        return unexpected(&reply);
                    };
                    shards.push(info);
                }
                let info = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "shards": shard_count,
                    "keys": shards.iter().map(|s| s.keys).sum::<u64>(),
                    "log_size_bytes": shards.iter().map(|s| s.log_size_bytes).sum::<u64>(),
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

/// Items of a multi-key request grouped by shard: (shard, positions in the request, items).
type ShardParts<T> = Vec<(u32, Vec<usize>, Vec<T>)>;

fn split_by_shard<T>(items: Vec<T>, shard_of: impl Fn(&T) -> u32) -> ShardParts<T> {
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
async fn dispatch(ctx: &CoreContext, conn: &Rc<Connection>, header: Header, request: Request) {
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
            parts: RefCell::new((0..parts).map(|_| None).collect()),
            remaining: Cell::new(parts),
        })
    };
    match request {
        Request::Ping => conn.respond(opcode, request_id, &Response::Pong),
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
                return conn.respond(opcode, request_id, &Response::Values(Vec::new()));
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
                return conn.respond(opcode, request_id, &Response::Versions(Vec::new()));
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
        Request::Info => {
            let g = gather(
                GatherKind::Info {
                    shard_count: ctx.shard_count,
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

async fn read_some(stream: &RefCell<TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf)).await
}

async fn write_all(stream: &RefCell<TcpStream>, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

async fn write_loop(stream: Rc<RefCell<TcpStream>>, conn: Rc<Connection>) {
    let mut spare = Vec::with_capacity(16 * 1024);
    loop {
        let woken = conn.wake_writer.notified();
        if conn.out.borrow().is_empty() {
            if conn.finishing.get() {
                break;
            }
            woken.await;
            continue;
        }
        let data = std::mem::replace(&mut *conn.out.borrow_mut(), std::mem::take(&mut spare));
        if let Err(error) = write_all(&stream, &data).await {
            tracing::debug!(%error, "connection write failed");
            break;
        }
        spare = data;
        spare.clear();
    }
    conn.writer_done.set(true);
    conn.out.borrow_mut().clear();
    conn.wake_reader.notify();
}

/// Serves one client connection until the client leaves, the stream breaks or the node stops.
pub async fn serve_connection(ctx: Rc<CoreContext>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(RefCell::new(stream));
    let conn = Rc::new(Connection::new());
    let writer = spawn_local(write_loop(Rc::clone(&stream), Rc::clone(&conn)));
    read_loop(&ctx, &stream, &conn).await;
    // Answer everything already accepted before closing, so no acknowledged write goes
    // unanswered on a graceful stop.
    while conn.in_flight.get() > 0 && !conn.writer_done.get() {
        let woken = conn.wake_reader.notified();
        if conn.in_flight.get() == 0 || conn.writer_done.get() {
            break;
        }
        woken.await;
    }
    conn.finishing.set(true);
    conn.wake_writer.notify();
    writer.await;
    // Dropping the last handle on the stream closes the socket. Replies still in flight
    // (when the peer left first) land in a connection nobody reads.
    drop(stream);
    ctx.open_connections.fetch_sub(1, Ordering::SeqCst);
}

/// Reads and dispatches requests until the peer leaves, framing is lost or the node stops.
async fn read_loop(ctx: &CoreContext, stream: &RefCell<TcpStream>, conn: &Rc<Connection>) {
    let mut buf = vec![0u8; RECEIVE_BUFFER_INITIAL_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    let mut wanted = FRAME_HEADER_SIZE;
    loop {
        // Handle every whole frame in the buffer, while the in-flight limit allows.
        while conn.in_flight.get() < CONNECTION_IN_FLIGHT_MAX {
            match FrameDecoder.decode(&buf[start..end]) {
                Ok(Decoded::Frame { header, len }) => {
                    let body = &buf[start + FRAME_HEADER_SIZE..start + len];
                    conn.start_request();
                    if header.flags != 0 {
                        let response = Response::error(
                            ErrorCode::BadRequest,
                            "a request must not carry reply flags",
                        );
                        conn.respond(header.opcode, header.request_id, &response);
                    } else {
                        match Request::decode_body(header.opcode, body) {
                            Ok(request) => dispatch(ctx, conn, header, request).await,
                            Err(error) => {
                                let response = Response::error(error.code(), error.to_string());
                                conn.respond(header.opcode, header.request_id, &response);
                            }
                        }
                    }
                    start += len;
                    wanted = FRAME_HEADER_SIZE;
                }
                Ok(Decoded::Incomplete { wanted: w }) => {
                    wanted = w;
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
                    let opcode = buf.get(start + 3).copied().unwrap_or(0);
                    conn.start_request();
                    conn.respond(
                        opcode,
                        request_id,
                        &Response::error(code, error.to_string()),
                    );
                    if !error.framing_intact() {
                        tracing::debug!(%error, "closing a connection that lost framing");
                        return;
                    }
                    start += frame_len(&buf[start..end]).expect("intact framing has a length");
                }
            }
        }
        if ctx.stopping.get() {
            return;
        }
        if conn.writer_done.get() {
            return;
        }
        if conn.in_flight.get() >= CONNECTION_IN_FLIGHT_MAX {
            let woken = conn.wake_reader.notified();
            let stopped = ctx.stop.notified();
            if conn.in_flight.get() >= CONNECTION_IN_FLIGHT_MAX && !ctx.stopping.get() {
                futures_lite::future::or(woken, stopped).await;
            }
            continue;
        }
        // Make room: move the unread bytes to the front, grow for a large frame.
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let needed = wanted.min(FRAME_HEADER_SIZE + FRAME_BODY_SIZE_MAX);
        if buf.len() < needed {
            buf.resize(needed, 0);
        } else if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        } else if buf.len() > RECEIVE_BUFFER_INITIAL_BYTES
            && end < RECEIVE_BUFFER_INITIAL_BYTES
            && needed <= RECEIVE_BUFFER_INITIAL_BYTES
        {
            // Give back the memory of a large frame once it is handled.
            buf.truncate(RECEIVE_BUFFER_INITIAL_BYTES);
            buf.shrink_to_fit();
        }
        let stopped = async {
            ctx.stop.notified().await;
            Err(std::io::Error::other("stopping"))
        };
        let read = futures_lite::future::or(read_some(stream, &mut buf[end..]), stopped).await;
        match read {
            Ok(0) => return,
            Ok(n) => end += n,
            Err(_) if ctx.stopping.get() => return,
            Err(error) => {
                tracing::debug!(%error, "connection read failed");
                return;
            }
        }
    }
}
