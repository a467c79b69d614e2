//! What every client connection shares, whichever protocol it speaks: the output buffer and
//! its writer task, the in-flight limit, replies put back in request order when the protocol
//! needs it, the receive buffer, and the orderly end of a connection.

use crate::local::Notify;
use crate::metrics::{self, Protocol};
use crate::route::{CoreContext, Deliver};
use crate::runtime::{spawn_local, TcpStream};
use crate::shard::ShardReply;
use crate::spread::ConnectionSlot;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::Rc;

/// How a protocol encodes a shard's reply on a connection: the target's tag and aux say to
/// which request (a request id and opcode, a sequence number and rendering).
pub type ReplyEncoder = fn(&Connection, u64, u32, ShardReply);

/// Requests one connection may have in flight; the reader stops reading past this.
pub const CONNECTION_IN_FLIGHT_MAX: usize = 1024;
/// Size of a connection's receive buffer while it holds no partial request: what an idle
/// connection costs. It grows (doubling) only as the bytes of a larger request arrive, and
/// goes back to this size once that request is used.
const RECEIVE_BUFFER_IDLE_BYTES: usize = 2 * 1024;
/// A receive buffer that a burst filled grows up to this for the bursts that follow.
const RECEIVE_BUFFER_BURST_BYTES: usize = 64 * 1024;
/// Unsent output at which a connection's reader stops taking requests until the client reads
/// (as Redis's client-output-buffer-limit soft limit): a client that pipelines reads and
/// never takes the replies holds at most this plus the replies of what it already sent.
pub const OUTPUT_PAUSE_BYTES: usize = 1024 * 1024;
/// Unsent output at which a connection is closed: one that goes past it has stopped reading
/// while replies as large as this are already on their way to it.
pub const OUTPUT_HARD_LIMIT_BYTES: usize = 256 * 1024 * 1024;
/// A writer keeps a send buffer this large for its next replies; a larger one is given back
/// when the connection goes quiet.
const SEND_BUFFER_KEPT_BYTES: usize = 64 * 1024;
/// The reply size a connection's reader assumes before its first reply.
const REPLY_BYTES_ASSUMED: usize = 16 * 1024;
/// The largest request a connection may send before it authenticates (when the node asks
/// for authentication): AUTH's frames are far smaller.
const UNAUTHENTICATED_REQUEST_MAX: usize = 64 * 1024;
const _: () = assert!(OUTPUT_PAUSE_BYTES < OUTPUT_HARD_LIMIT_BYTES);
const _: () = assert!(RECEIVE_BUFFER_IDLE_BYTES >= kvs_wire::limits::FRAME_HEADER_SIZE);

/// The output side of a client connection, shared by everything that answers it.
pub struct Connection {
    encode_reply: ReplyEncoder,
    out: RefCell<Vec<u8>>,
    /// Bytes the writer has taken from `out` and not yet sent.
    sending: Cell<usize>,
    /// The socket, to cut a connection whose output went past the hard limit. Set while the
    /// socket is open: `drive` sets it, and the writer is done before the socket closes.
    fd: Cell<Option<std::os::fd::RawFd>>,
    wake_writer: Notify,
    in_flight: Cell<usize>,
    /// The size of this connection's recent replies (it rises at once, falls slowly): the
    /// reader lets only as many requests be in flight as their replies fit under the pause
    /// limit, so a pipeline of reads of a large value cannot pile up unbounded output.
    reply_bytes_recent: Cell<usize>,
    wake_reader: Notify,
    /// The writer gave up (the peer is gone) or was told to finish.
    writer_done: Cell<bool>,
    finishing: Cell<bool>,
    /// For protocols that answer in request order (RESP): the next sequence number to
    /// hand out, the next to write, and replies that finished early.
    next_sequence: Cell<u64>,
    next_to_write: Cell<u64>,
    early: RefCell<BTreeMap<u64, Vec<u8>>>,
    /// Names the connection as the origin of its requests, whose order shards keep
    /// (see `shard::Origin`): unique in the node, set when the connection is registered.
    origin: Cell<crate::shard::Origin>,
    /// The connection's last document command: the next one waits for it, so a
    /// connection's document commands run one after another, in the order sent.
    pub document_tail: RefCell<Option<crate::runtime::JoinHandle<()>>>,
    /// The connection's open transactions (native protocol; ADR 0022).
    pub txns: crate::txn::OpenTxns,
    /// Who it authenticated as, if anyone (ADR 0025).
    pub auth: crate::auth::ConnAuth,
    /// The client's address, for the log.
    peer: Option<std::net::SocketAddr>,
    /// The TLS session, on a listener that speaks TLS.
    tls: Option<Box<crate::tls::Session>>,
    /// Receives that brought bytes: `--idle-timeout` closes a connection where it stands
    /// still.
    receives: Cell<u64>,
    /// The protocol the connection speaks, a label of its requests' metrics.
    protocol: Protocol,
    /// The requests in flight, oldest first, for their metrics (see [`Arrival`]).
    arrivals: RefCell<VecDeque<Arrival>>,
    /// Its core's share of `--max-request-memory` (`request_memory.rs`), set by `drive`,
    /// and what is reserved of it for the large request being received (0: none). Once
    /// the request is whole its reservation goes with it ([`Arrival`]) until it is answered.
    memory: std::cell::OnceCell<Rc<crate::request_memory::RequestMemory>>,
    receiving: Cell<usize>,
    /// The reader waits for request memory (then the connection is not idle).
    waiting_for_memory: Cell<bool>,
}

/// A request in flight: its id (the native request id, or the RESP sequence number), the
/// executor round it arrived in (`runtime::round_micros`) and its command's metrics slot.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    id: u64,
    at: u32,
    command: u8,
    /// Request memory reserved for it, given back when it is answered.
    reserved: u32,
}

impl Deliver for Connection {
    fn deliver(self: Rc<Self>, tag: u64, aux: u32, reply: ShardReply) {
        (self.encode_reply)(&self, tag, aux, reply);
    }
}

impl Connection {
    pub fn new(
        encode_reply: ReplyEncoder,
        protocol: Protocol,
        auth: crate::auth::ConnAuth,
        peer: Option<std::net::SocketAddr>,
        tls: Option<Box<crate::tls::Session>>,
    ) -> Connection {
        Connection {
            encode_reply,
            out: RefCell::new(Vec::new()),
            sending: Cell::new(0),
            fd: Cell::new(None),
            wake_writer: Notify::new(),
            in_flight: Cell::new(0),
            // Until the first reply says otherwise, replies are taken to be large.
            reply_bytes_recent: Cell::new(REPLY_BYTES_ASSUMED),
            wake_reader: Notify::new(),
            writer_done: Cell::new(false),
            finishing: Cell::new(false),
            next_sequence: Cell::new(0),
            next_to_write: Cell::new(0),
            early: RefCell::new(BTreeMap::new()),
            origin: Cell::new(crate::shard::NO_ORIGIN),
            document_tail: RefCell::new(None),
            txns: crate::txn::OpenTxns::default(),
            auth,
            peer,
            tls,
            receives: Cell::new(0),
            protocol,
            arrivals: RefCell::new(VecDeque::new()),
            memory: std::cell::OnceCell::new(),
            receiving: Cell::new(0),
            waiting_for_memory: Cell::new(false),
        }
    }

    /// Gives back `bytes` of request memory.
    fn release_request_memory(&self, bytes: usize) {
        if let (true, Some(memory)) = (bytes > 0, self.memory.get()) {
            memory.release(bytes);
        }
    }

    /// Reserves request memory for a request of `declared` bytes being received (see
    /// `request_memory.rs`): a new large one waits for room; one whose receipt has begun
    /// only grows its reservation. Returns false when the connection should end.
    async fn reserve_request_memory(&self, ctx: &CoreContext, declared: usize) -> bool {
        let receiving = self.receiving.get();
        if declared <= RECEIVE_BUFFER_IDLE_BYTES {
            // A large request left unfinished (a RESP argument over its limit, read past).
            self.release_request_memory(self.receiving.replace(0));
            return true;
        }
        let Some(memory) = self.memory.get() else {
            return true;
        };
        if receiving > 0 {
            if declared > receiving {
                memory.grow(declared - receiving);
                self.receiving.set(declared);
            }
            return true;
        }
        if self.auth.role().is_none() && declared > UNAUTHENTICATED_REQUEST_MAX {
            // Nothing but AUTH is taken before a login, and AUTH is small: a large request
            // from a stranger would only hold memory others need.
            tracing::warn!(
                peer = self.peer_name(),
                declared,
                "closing an unauthenticated connection that sent a large request"
            );
            return false;
        }
        let mut waited = false;
        while !memory.try_reserve(declared) {
            if !waited {
                memory.waited();
                waited = true;
            }
            let freed = memory.freed();
            let stopped = ctx.stop.notified();
            let ending = self.wake_reader.notified();
            if ctx.stopping.get() || self.writer_done.get() {
                self.waiting_for_memory.set(false);
                return false;
            }
            self.waiting_for_memory.set(true);
            futures_lite::future::or(freed, futures_lite::future::or(stopped, ending)).await;
        }
        self.waiting_for_memory.set(false);
        self.receiving.set(declared);
        true
    }

    /// The client's address as text, for the log ("?" when unknown).
    pub fn peer_name(&self) -> String {
        self.peer
            .map_or_else(|| "?".into(), |addr| addr.to_string())
    }

    pub fn origin(&self) -> crate::shard::Origin {
        self.origin.get()
    }

    /// Counts request `id` in, for command slot `command` (`metrics`); every request is
    /// answered exactly once with `respond_with` or `respond_in_order`, under its id.
    pub fn start_request(&self, id: u64, command: u8) {
        self.in_flight.set(self.in_flight.get() + 1);
        // A request whole in the buffer takes the reservation made while it arrived.
        let reserved = self.receiving.replace(0);
        self.arrivals.borrow_mut().push_back(Arrival {
            id,
            at: crate::runtime::round_micros(),
            command,
            reserved: u32::try_from(reserved).expect("a request is under 4 GiB"),
        });
    }

    /// Like `start_request`, and returns the sequence number its ordered reply will carry
    /// (the request's id).
    pub fn start_ordered_request(&self, command: u8) -> u64 {
        let sequence = self.next_sequence.get();
        self.next_sequence.set(sequence + 1);
        self.start_request(sequence, command);
        sequence
    }

    /// Whether every ordered request before `sequence` has been answered (its reply queued).
    pub fn answered_before(&self, sequence: u64) -> bool {
        self.next_to_write.get() == sequence
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Output queued or being sent, not yet taken by the kernel.
    pub fn unsent_bytes(&self) -> usize {
        self.out.borrow().len() + self.sending.get()
    }

    /// Whether the reader may take another request: fewer than the in-flight limit are
    /// unanswered, and the client has taken its replies down to the pause limit.
    pub fn may_take_request(&self) -> bool {
        let in_flight = self.in_flight.get();
        if in_flight >= CONNECTION_IN_FLIGHT_MAX {
            return false;
        }
        let expected = in_flight.saturating_mul(self.reply_bytes_recent.get());
        self.unsent_bytes().saturating_add(expected) < OUTPUT_PAUSE_BYTES
    }

    /// Wakes the writer for new output, or cuts the connection when its unsent output went
    /// past the hard limit: its client has not read while replies piled up. `reply_bytes`
    /// is the size of the reply just added.
    fn output_added(&self, out: &mut Vec<u8>, reply_bytes: usize) {
        let recent = self.reply_bytes_recent.get();
        self.reply_bytes_recent.set(if reply_bytes >= recent {
            reply_bytes
        } else {
            recent - (recent - reply_bytes) / 16
        });
        let unsent = out.len() + self.sending.get();
        if unsent <= OUTPUT_HARD_LIMIT_BYTES {
            self.wake_writer.notify();
            return;
        }
        tracing::warn!(
            unsent_bytes = unsent,
            limit_bytes = OUTPUT_HARD_LIMIT_BYTES,
            "closing a connection whose client does not read its replies"
        );
        *out = Vec::new();
        self.writer_done.set(true);
        if let Some(fd) = self.fd.take() {
            // SAFETY: `fd` is set only while the socket is open (see the field). Shutting
            // both directions ends the reader's receive and the writer's send.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        self.wake_writer.notify();
        self.wake_reader.notify();
    }

    /// Queues the reply to request `id`; `encode` appends it to the output. `error` is the
    /// error slot of a failure (`metrics`).
    pub fn respond_with(&self, id: u64, error: Option<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
        if !self.writer_done.get() {
            let mut out = self.out.borrow_mut();
            let before = out.len();
            encode(&mut out);
            let reply_bytes = out.len() - before;
            self.output_added(&mut out, reply_bytes);
        }
        self.finish_request(id, error);
    }

    /// Like `respond_in_order`, with the reply encoded by `encode`: straight into the output
    /// when it is next in line, which is nearly always.
    pub fn respond_in_order_with(&self, sequence: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        if sequence == self.next_to_write.get() && self.early.borrow().is_empty() {
            let mut error = None;
            if !self.writer_done.get() {
                let mut out = self.out.borrow_mut();
                let before = out.len();
                encode(&mut out);
                let reply = &out[before..];
                if reply.first() == Some(&b'-') {
                    error = Some(metrics::resp_error_slot(reply));
                }
                let reply_bytes = reply.len();
                self.output_added(&mut out, reply_bytes);
            }
            self.next_to_write.set(sequence + 1);
            self.finish_request(sequence, error);
            return;
        }
        let mut reply = Vec::new();
        encode(&mut reply);
        self.respond_in_order(sequence, reply);
    }

    /// Queues the reply of request `sequence`; it is written after every earlier one.
    pub fn respond_in_order(&self, sequence: u64, reply: Vec<u8>) {
        let error = (reply.first() == Some(&b'-')).then(|| metrics::resp_error_slot(&reply));
        if sequence == self.next_to_write.get() {
            let mut out = self.out.borrow_mut();
            out.extend_from_slice(&reply);
            let mut next = sequence + 1;
            let mut early = self.early.borrow_mut();
            while let Some(reply) = early.remove(&next) {
                out.extend_from_slice(&reply);
                next += 1;
            }
            self.next_to_write.set(next);
            if self.writer_done.get() {
                out.clear();
            } else {
                self.output_added(&mut out, reply.len());
            }
        } else {
            self.early.borrow_mut().insert(sequence, reply);
        }
        self.finish_request(sequence, error);
    }

    /// Counts request `id` out, and into this core's metrics (see [`Arrival`]).
    fn finish_request(&self, id: u64, error: Option<u8>) {
        self.in_flight.set(self.in_flight.get() - 1);
        let mut arrivals = self.arrivals.borrow_mut();
        // Replies nearly always come in arrival order: the oldest is the one.
        let at = if arrivals.front().is_some_and(|a| a.id == id) {
            Some(0)
        } else {
            arrivals.iter().position(|a| a.id == id)
        };
        let arrival = at.and_then(|at| arrivals.remove(at));
        debug_assert!(arrival.is_some(), "request {id} answered but never started");
        drop(arrivals);
        if let Some(arrival) = arrival {
            let micros = crate::runtime::round_micros().wrapping_sub(arrival.at);
            metrics::with_current(|m| {
                m.request_done(self.protocol, arrival.command, micros.into(), error)
            });
            self.release_request_memory(arrival.reserved as usize);
        }
        self.wake_reader.notify();
    }

    /// Whether the writer has stopped (the peer is gone).
    pub fn writer_done(&self) -> bool {
        self.writer_done.get()
    }
}

/// A connection's receive buffer: bytes in `buf[start..end]` are read and not yet used.
pub struct ReceiveBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last receive filled all the room it had: the client sends more at once than the
    /// buffer holds, and it doubles (up to the burst size) for the next receive.
    filled: bool,
    /// Bytes the last receive brought: while they are few, an empty buffer goes back to the
    /// idle size; while they are many (a pipelining client), it keeps its size.
    last_received: usize,
}

impl ReceiveBuffer {
    pub fn new() -> ReceiveBuffer {
        ReceiveBuffer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            filled: false,
            last_received: 0,
        }
    }

    /// The unread bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` bytes at the front as used.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Makes room to read into at `end`: moves the unread bytes to the front, and grows the
    /// buffer (doubling) when it is full and a request of `wanted` bytes is not yet whole.
    /// The buffer grows as bytes arrive, never by what a header declares: a peer that
    /// announces a large body and sends nothing costs no more than an idle connection.
    fn make_room(&mut self, wanted: usize) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; RECEIVE_BUFFER_IDLE_BYTES];
        } else if self.filled && self.buf.len() < RECEIVE_BUFFER_BURST_BYTES {
            // The last receive took all the room it had: take the next burst whole.
            let grown = (self.buf.len() * 2).min(RECEIVE_BUFFER_BURST_BYTES);
            self.buf.resize(grown, 0);
        } else if self.end == 0
            && self.last_received < RECEIVE_BUFFER_IDLE_BYTES / 2
            && self.buf.len() > RECEIVE_BUFFER_IDLE_BYTES
        {
            // Nothing is pending and the traffic is small: give back what a large request
            // or a burst grew the buffer to.
            self.buf = vec![0; RECEIVE_BUFFER_IDLE_BYTES];
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(wanted.max(self.end + 1));
            self.buf.resize(grown.max(self.end + 1), 0);
        }
        debug_assert!(self.end < self.buf.len(), "room to receive into");
    }
}

impl Default for ReceiveBuffer {
    fn default() -> Self {
        ReceiveBuffer::new()
    }
}

/// Waits until the connection may take more requests. Returns false when the connection
/// should end: the writer failed or the node is stopping.
pub async fn wait_for_room(ctx: &CoreContext, conn: &Connection) -> bool {
    loop {
        if ctx.stopping.get() || conn.writer_done.get() {
            return false;
        }
        if conn.may_take_request() {
            break;
        }
        let woken = conn.wake_reader.notified();
        let stopped = ctx.stop.notified();
        if !conn.may_take_request() && !ctx.stopping.get() && !conn.writer_done.get() {
            futures_lite::future::or(woken, stopped).await;
        }
    }
    true
}

/// Reads more bytes into `buffer`, which must hold no whole request (grown to at least
/// `wanted` bytes), once the connection may take more requests and the node's request
/// memory has room for the request being received, `declared` bytes as far as its headers
/// say. Returns false when the connection should end: the peer left, the writer failed, or
/// the node is stopping.
pub async fn fill(
    ctx: &CoreContext,
    stream: &TcpStream,
    conn: &Connection,
    buffer: &mut ReceiveBuffer,
    wanted: usize,
    declared: usize,
) -> bool {
    if !wait_for_room(ctx, conn).await || !conn.reserve_request_memory(ctx, declared).await {
        return false;
    }
    buffer.make_room(wanted);
    // A stopping node shuts the receiving side of every connection, which ends this
    // receive (see `CoreContext::stop_connections`).
    let result = match &conn.tls {
        Some(tls) => {
            let room = &mut buffer.buf[buffer.end..];
            tls.recv(stream, room, || conn.wake_writer.notify()).await
        }
        None => {
            let bytes = std::mem::take(&mut buffer.buf);
            let (result, bytes) = stream.recv(bytes, buffer.end).await;
            buffer.buf = bytes;
            result
        }
    };
    match result {
        Ok(0) => false,
        Ok(n) => {
            conn.receives.set(conn.receives.get() + 1);
            buffer.end += n;
            buffer.filled = buffer.end == buffer.buf.len();
            buffer.last_received = n;
            true
        }
        Err(error) => {
            if !ctx.stopping.get() {
                tracing::debug!(%error, "connection read failed");
            }
            false
        }
    }
}

async fn write_loop(stream: Rc<TcpStream>, conn: Rc<Connection>) {
    let mut spare = Vec::new();
    loop {
        let woken = conn.wake_writer.notified();
        if conn.writer_done.get() {
            break;
        }
        let tls_wants = conn.tls.as_ref().is_some_and(|tls| tls.wants_write());
        if conn.out.borrow().is_empty() && !tls_wants {
            if conn.finishing.get() {
                break;
            }
            // Quiet: keep no large buffer while nothing is sent.
            if spare.capacity() > SEND_BUFFER_KEPT_BYTES {
                spare = Vec::new();
            }
            woken.await;
            continue;
        }
        let mut data = std::mem::replace(&mut *conn.out.borrow_mut(), std::mem::take(&mut spare));
        conn.sending.set(data.len());
        if let Some(tls) = &conn.tls {
            // The plaintext goes into records, and the records' buffer is kept for the next
            // replies once sent.
            let mut records = Vec::new();
            if let Err(error) = tls.seal(&data, &mut records) {
                tracing::debug!(%error, "TLS refused a reply");
                break;
            }
            data = records;
        }
        let (result, data) = stream.send_all(data).await;
        conn.sending.set(0);
        // The reader may be waiting for the client to take its replies.
        conn.wake_reader.notify();
        if let Err(error) = result {
            tracing::debug!(%error, "connection write failed");
            break;
        }
        spare = data;
        spare.clear();
    }
    conn.writer_done.set(true);
    conn.fd.set(None);
    *conn.out.borrow_mut() = Vec::new();
    conn.wake_reader.notify();
}

impl crate::route::Activity for Connection {
    fn receives(&self) -> u64 {
        self.receives.get()
    }

    fn busy(&self) -> bool {
        self.in_flight.get() > 0 || self.sending.get() > 0 || self.waiting_for_memory.get()
    }

    fn peer(&self) -> String {
        self.peer_name()
    }
}

/// Runs a connection: starts its writer, runs `read` (the protocol's reader) until it
/// returns, answers everything already accepted, then closes. The connection counts as
/// open until then (`slot`).
pub async fn drive<F, Fut>(
    ctx: Rc<CoreContext>,
    stream: TcpStream,
    slot: ConnectionSlot,
    encode_reply: ReplyEncoder,
    protocol: Protocol,
    read: F,
) where
    F: FnOnce(Rc<CoreContext>, Rc<TcpStream>, Rc<Connection>) -> Fut,
    Fut: Future<Output = ()>,
{
    let _ = stream.set_nodelay(true);
    let tls = match ctx
        .tls
        .as_ref()
        .map(|tls| tls.accept().map(Box::new))
        .transpose()
    {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "cannot start a TLS session; closing the connection");
            return;
        }
    };
    let peer = stream.peer_addr().ok();
    let auth = crate::auth::ConnAuth::new(&ctx.auth);
    let conn = Rc::new(Connection::new(encode_reply, protocol, auth, peer, tls));
    let _ = conn.memory.set(Rc::clone(&ctx.request_memory));
    let activity: Rc<dyn crate::route::Activity> = Rc::clone(&conn) as _;
    let registration = ctx.register_connection(&stream, Rc::downgrade(&activity));
    let stream = Rc::new(stream);
    conn.fd.set(Some(stream.raw_fd()));
    // Core and registration together name the connection in the node; never NO_ORIGIN.
    conn.origin
        .set(((ctx.core as u64 + 1) << 48) | (registration & ((1 << 48) - 1)));
    let writer = spawn_local(write_loop(Rc::clone(&stream), Rc::clone(&conn)));
    read(Rc::clone(&ctx), Rc::clone(&stream), Rc::clone(&conn)).await;
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
    // A request cut off while being received holds nothing any more; what requests still
    // in flight hold goes back as their replies land (`finish_request`).
    conn.release_request_memory(conn.receiving.replace(0));
    // Dropping the last handle on the stream closes the socket. Replies still in flight
    // (when the peer left first) land in a connection nobody reads.
    ctx.deregister_connection(registration);
    drop(stream);
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receives `bytes` into the buffer as `fill` would.
    fn arrive(buffer: &mut ReceiveBuffer, wanted: usize, bytes: &[u8]) -> usize {
        buffer.make_room(wanted);
        let n = bytes.len().min(buffer.buf.len() - buffer.end);
        buffer.buf[buffer.end..buffer.end + n].copy_from_slice(&bytes[..n]);
        buffer.end += n;
        buffer.filled = buffer.end == buffer.buf.len();
        buffer.last_received = n;
        n
    }

    #[test]
    fn a_receive_buffer_grows_as_bytes_arrive_not_as_a_header_declares() {
        let mut buffer = ReceiveBuffer::new();
        assert_eq!(buffer.buf.capacity(), 0, "nothing before the first receive");
        // A header that announces a 64 MiB body: the buffer stays small until bytes come.
        arrive(&mut buffer, 64 << 20, &[7; 100]);
        assert_eq!(buffer.buf.len(), RECEIVE_BUFFER_IDLE_BYTES);
        // The body arrives: the buffer doubles as it fills, never past what arrived by 2x.
        let body = vec![1u8; 300_000];
        let mut sent = 0;
        while sent < body.len() {
            sent += arrive(&mut buffer, 64 << 20, &body[sent..]);
            assert!(buffer.buf.len() <= 2 * (buffer.end + RECEIVE_BUFFER_IDLE_BYTES));
        }
        assert_eq!(buffer.data().len(), 300_100);
        // Used up: the next receive gets the idle size back.
        buffer.consume(300_100);
        buffer.filled = false;
        buffer.last_received = 10;
        buffer.make_room(24);
        assert_eq!(buffer.buf.len(), RECEIVE_BUFFER_IDLE_BYTES);
    }

    #[test]
    fn replies_in_flight_are_bounded_by_their_size() {
        let auth = crate::auth::ConnAuth::new(&crate::auth::Auth::off());
        let conn = Connection::new(|_, _, _, _| {}, Protocol::Native, auth, None, None);
        // Large replies: few requests may be in flight.
        let mut taken = 0;
        while conn.may_take_request() {
            conn.start_request(0, 0);
            taken += 1;
        }
        assert_eq!(taken, OUTPUT_PAUSE_BYTES / REPLY_BYTES_ASSUMED);
        for _ in 0..taken {
            conn.respond_with(0, None, |out| out.extend_from_slice(&[0; 100_000]));
        }
        assert!(
            !conn.may_take_request(),
            "the client has not taken its replies"
        );
        conn.out.borrow_mut().clear(); // as if the writer sent them
        assert!(conn.reply_bytes_recent.get() >= 100_000);
        assert!(conn.may_take_request());
        for _ in 0..20 {
            conn.start_request(0, 0);
        }
        assert!(
            !conn.may_take_request(),
            "20 replies of 100 KB are past the pause limit"
        );
        // Small replies: the estimate comes down and the in-flight limit is the count.
        for _ in 0..20 {
            conn.respond_with(0, None, |out| out.extend_from_slice(b"+OK"));
        }
        for _ in 0..200 {
            conn.start_request(0, 0);
            conn.respond_with(0, None, |out| out.extend_from_slice(b"+OK"));
        }
        conn.out.borrow_mut().clear();
        assert!(conn.reply_bytes_recent.get() < 100);
        for _ in 0..CONNECTION_IN_FLIGHT_MAX - 1 {
            conn.start_request(0, 0);
        }
        assert!(conn.may_take_request());
        conn.start_request(0, 0);
        assert!(!conn.may_take_request());
    }
}
