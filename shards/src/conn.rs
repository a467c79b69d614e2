//! What every client connection shares, whichever protocol it speaks: the output buffer and
//! its writer task, the in-flight limit, replies put back in request order when the protocol
//! needs it, the receive buffer, and the orderly end of a connection.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::local::Notify;
use crate::runtime::{spawn_local, TcpStream};
use crate::server::CoreContext;

/// The node's client connections, counted across its cores.
pub struct ConnectionCounts {
    open: AtomicUsize,
    per_core: Vec<AtomicUsize>,
    /// Which cores take connections: set once a core serves, cleared when it stops.
    serving: Vec<AtomicBool>,
}

impl ConnectionCounts {
    pub fn new(cores: usize) -> ConnectionCounts {
        ConnectionCounts {
            open: AtomicUsize::new(0),
            per_core: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
            serving: (0..cores).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Open connections on all cores (including those on their way to a core).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Open connections per core.
    pub fn per_core(&self) -> Vec<usize> {
        self.per_core
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    pub fn set_serving(&self, core: usize, serving: bool) {
        self.serving[core].store(serving, Ordering::SeqCst);
    }

    /// The core that should serve a connection `own` accepted: the serving core with the
    /// fewest connections, `own` when none has fewer (no hop across cores).
    pub fn least_loaded(&self, own: usize) -> usize {
        let mut best = own;
        let mut fewest = self.per_core[own].load(Ordering::SeqCst);
        for (core, count) in self.per_core.iter().enumerate() {
            let count = count.load(Ordering::SeqCst);
            if count < fewest && self.serving[core].load(Ordering::SeqCst) {
                (best, fewest) = (core, count);
            }
        }
        best
    }
}

/// One connection, counted in (on the node and on the core that is to serve it) from when
/// it is accepted; dropping the slot counts it out, however the connection ends: served
/// and closed, refused by a stopping core, or dropped unserved with the queue of a core
/// that stopped.
pub struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    core: usize,
}

impl ConnectionSlot {
    pub fn new(counts: &Arc<ConnectionCounts>, core: usize) -> ConnectionSlot {
        counts.open.fetch_add(1, Ordering::SeqCst);
        counts.per_core[core].fetch_add(1, Ordering::SeqCst);
        ConnectionSlot {
            counts: Arc::clone(counts),
            core,
        }
    }

    /// Counts the connection on `core` instead.
    pub fn move_to(&mut self, core: usize) {
        self.counts.per_core[core].fetch_add(1, Ordering::SeqCst);
        self.counts.per_core[self.core].fetch_sub(1, Ordering::SeqCst);
        self.core = core;
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counts.per_core[self.core].fetch_sub(1, Ordering::SeqCst);
        self.counts.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Requests one connection may have in flight; the reader stops reading past this.
pub const CONNECTION_IN_FLIGHT_MAX: usize = 1024;
/// Size of a connection's receive buffer to begin with.
const RECEIVE_BUFFER_INITIAL_BYTES: usize = 64 * 1024;

/// The output side of a client connection, shared by everything that answers it.
pub struct Connection {
    out: RefCell<Vec<u8>>,
    wake_writer: Notify,
    in_flight: Cell<usize>,
    wake_reader: Notify,
    /// The writer gave up (the peer is gone) or was told to finish.
    writer_done: Cell<bool>,
    finishing: Cell<bool>,
    /// For protocols that answer in request order (RESP): the next sequence number to
    /// hand out, the next to write, and replies that finished early.
    next_sequence: Cell<u64>,
    next_to_write: Cell<u64>,
    early: RefCell<BTreeMap<u64, Vec<u8>>>,
    /// The connection's last document command: the next one waits for it, so a
    /// connection's document commands run one after another, in the order sent.
    pub document_tail: RefCell<Option<crate::runtime::JoinHandle<()>>>,
}

impl Connection {
    pub fn new() -> Connection {
        Connection {
            out: RefCell::new(Vec::with_capacity(16 * 1024)),
            wake_writer: Notify::new(),
            in_flight: Cell::new(0),
            wake_reader: Notify::new(),
            writer_done: Cell::new(false),
            finishing: Cell::new(false),
            next_sequence: Cell::new(0),
            next_to_write: Cell::new(0),
            early: RefCell::new(BTreeMap::new()),
            document_tail: RefCell::new(None),
        }
    }

    /// Counts a request in; every request is answered exactly once with `respond_with` or
    /// `respond_in_order`.
    pub fn start_request(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    /// Like `start_request`, and returns the sequence number its ordered reply will carry.
    pub fn start_ordered_request(&self) -> u64 {
        self.start_request();
        let sequence = self.next_sequence.get();
        self.next_sequence.set(sequence + 1);
        sequence
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Queues the reply to one request; `encode` appends it to the output.
    pub fn respond_with(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        if !self.writer_done.get() {
            encode(&mut self.out.borrow_mut());
            self.wake_writer.notify();
        }
        self.finish_request();
    }

    /// Like `respond_in_order`, with the reply encoded by `encode`: straight into the output
    /// when it is next in line, which is nearly always.
    pub fn respond_in_order_with(&self, sequence: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        if sequence == self.next_to_write.get() && self.early.borrow().is_empty() {
            if !self.writer_done.get() {
                encode(&mut self.out.borrow_mut());
                self.wake_writer.notify();
            }
            self.next_to_write.set(sequence + 1);
            self.finish_request();
            return;
        }
        let mut reply = Vec::new();
        encode(&mut reply);
        self.respond_in_order(sequence, reply);
    }

    /// Queues the reply of request `sequence`; it is written after every earlier one.
    pub fn respond_in_order(&self, sequence: u64, reply: Vec<u8>) {
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
                self.wake_writer.notify();
            }
        } else {
            self.early.borrow_mut().insert(sequence, reply);
        }
        self.finish_request();
    }

    fn finish_request(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.wake_reader.notify();
    }

    /// Whether the writer has stopped (the peer is gone).
    pub fn writer_done(&self) -> bool {
        self.writer_done.get()
    }
}

impl Default for Connection {
    fn default() -> Self {
        Connection::new()
    }
}

/// A connection's receive buffer: bytes in `buf[start..end]` are read and not yet used.
pub struct ReceiveBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReceiveBuffer {
    pub fn new() -> ReceiveBuffer {
        ReceiveBuffer {
            buf: vec![0; RECEIVE_BUFFER_INITIAL_BYTES],
            start: 0,
            end: 0,
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

    /// Makes room to read into at `end`: moves the unread bytes to the front and grows the
    /// buffer to hold at least `wanted` bytes.
    fn make_room(&mut self, wanted: usize) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < wanted {
            self.buf.resize(wanted, 0);
        } else if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        } else if self.buf.len() > RECEIVE_BUFFER_INITIAL_BYTES
            && self.end < RECEIVE_BUFFER_INITIAL_BYTES
            && wanted <= RECEIVE_BUFFER_INITIAL_BYTES
        {
            // Give back the memory of a large request once it is handled.
            self.buf.truncate(RECEIVE_BUFFER_INITIAL_BYTES);
            self.buf.shrink_to_fit();
        }
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
        if conn.in_flight.get() < CONNECTION_IN_FLIGHT_MAX {
            break;
        }
        let woken = conn.wake_reader.notified();
        let stopped = ctx.stop.notified();
        if conn.in_flight.get() >= CONNECTION_IN_FLIGHT_MAX && !ctx.stopping.get() {
            futures_lite::future::or(woken, stopped).await;
        }
    }
    true
}

/// Reads more bytes into `buffer`, which must hold no whole request (grown to at least
/// `wanted` bytes), once the connection may take more requests. Returns false when the
/// connection should end: the peer left, the writer failed, or the node is stopping.
pub async fn fill(
    ctx: &CoreContext,
    stream: &TcpStream,
    conn: &Connection,
    buffer: &mut ReceiveBuffer,
    wanted: usize,
) -> bool {
    if !wait_for_room(ctx, conn).await {
        return false;
    }
    buffer.make_room(wanted);
    // A stopping node shuts the receiving side of every connection, which ends this
    // receive (see `CoreContext::stop_connections`).
    let bytes = std::mem::take(&mut buffer.buf);
    let (result, bytes) = stream.recv(bytes, buffer.end).await;
    buffer.buf = bytes;
    match result {
        Ok(0) => false,
        Ok(n) => {
            buffer.end += n;
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
        let (result, data) = stream.send_all(data).await;
        if let Err(error) = result {
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

/// Runs a connection: starts its writer, runs `read` (the protocol's reader) until it
/// returns, answers everything already accepted, then closes. The connection counts as
/// open until then (`slot`).
pub async fn drive<F, Fut>(ctx: Rc<CoreContext>, stream: TcpStream, slot: ConnectionSlot, read: F)
where
    F: FnOnce(Rc<CoreContext>, Rc<TcpStream>, Rc<Connection>) -> Fut,
    Fut: Future<Output = ()>,
{
    let _ = stream.set_nodelay(true);
    let registration = ctx.register_connection(&stream);
    let stream = Rc::new(stream);
    let conn = Rc::new(Connection::new());
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
    // Dropping the last handle on the stream closes the socket. Replies still in flight
    // (when the peer left first) land in a connection nobody reads.
    ctx.deregister_connection(registration);
    drop(stream);
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_serving_core_with_the_fewest_and_every_slot_counts_out() {
        let counts = Arc::new(ConnectionCounts::new(3));
        counts.set_serving(0, true);
        // Core 2 still recovers: never chosen, however few it has.
        counts.set_serving(1, true);
        let mut slots: Vec<ConnectionSlot> = Vec::new();
        for _ in 0..6 {
            let core = counts.least_loaded(0);
            slots.push(ConnectionSlot::new(&counts, core));
        }
        assert_eq!(counts.per_core(), [3, 3, 0]);
        assert_eq!(counts.open(), 6);
        // A tie keeps the connection on the core that accepted it.
        assert_eq!(counts.least_loaded(1), 1);
        counts.set_serving(2, true);
        assert_eq!(counts.least_loaded(0), 2);
        // A connection handed back (its core stopped) is counted where it is served.
        slots[0].move_to(2);
        assert_eq!(counts.per_core(), [2, 3, 1]);
        // However a connection ends (closed, or dropped unserved with a stopped core's
        // queue), dropping its slot counts it out exactly once.
        let queue: Vec<ConnectionSlot> = slots.drain(3..).collect();
        drop(queue);
        assert_eq!(counts.open(), 3);
        drop(slots);
        assert_eq!(counts.per_core(), [0, 0, 0]);
        assert_eq!(counts.open(), 0);
    }
}
