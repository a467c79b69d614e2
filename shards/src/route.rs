//! Routing between a core's connections and the shards: the core's context (its shard's
//! queue, the channels to every other core, the tokens that bring replies back), where a
//! shard's reply goes ([`Target`], [`ReplyTo`]), and the helpers that split a request over
//! shards and merge the parts.
//!
//! A [`Target`] names what receives a reply through the [`Deliver`] trait, so a protocol (the
//! native one, RESP, a document coordinator) adds its own receivers without this module, or
//! any other protocol, knowing it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use kvs_wire::ErrorCode;

use crate::local::Notify;
use crate::runtime::{Sender, TcpListener, TcpStream};
use crate::shard::{Origin, ShardOp, ShardReply, ShardRequest};
use crate::shard_ops::PIPELINE_WHEN_QUEUED;
use crate::spread::ConnectionCounts;

/// Something on this core that takes shard replies: a connection (which encodes them in its
/// protocol), the gathering of a split request, a task waiting for a reply. `tag` and `aux`
/// are what the receiver put in its [`Target`] (a request id, a sequence number, a part).
pub trait Deliver {
    fn deliver(self: Rc<Self>, tag: u64, aux: u32, reply: ShardReply);
}

/// Point reads a connection may answer from this core's shard itself, without queueing
/// them for the shard loop (ADR 0029). Set only on a node that is not in a cluster, once
/// the shard has recovered.
pub trait LocalReads {
    /// Lends the value of `key` (None: not found) in the applied state to `answer` and
    /// returns true, or returns false without calling it when the read must go through the
    /// shard's queue: its pages are not cached, or a command is half applied.
    fn read_with(
        &self,
        key: &[u8],
        answer: &mut dyn FnMut(Option<&kvs_core::state::Versioned>),
    ) -> bool;
}

/// Where a shard's reply goes on the core that asked.
pub struct Target {
    to: Rc<dyn Deliver>,
    tag: u64,
    aux: u32,
    /// The origin whose order the request keeps (see `shard::Origin`).
    pub origin: Origin,
}

impl Target {
    pub fn new(to: Rc<dyn Deliver>, tag: u64, aux: u32, origin: Origin) -> Target {
        Target {
            to,
            tag,
            aux,
            origin,
        }
    }

    /// Hands the reply to its receiver.
    pub fn deliver(self, reply: ShardReply) {
        self.to.deliver(self.tag, self.aux, reply);
    }
}

/// Where a shard sends a reply: to a target on its own core, or back to another core.
pub enum ReplyTo {
    Local(Target),
    Remote {
        core: usize,
        token: u64,
    },
    /// A request another node forwarded to this core's shard: the answer goes back over the
    /// peer link to that node, which matches it by `id`.
    Peer {
        node: u64,
        id: u64,
    },
}

/// Sends the answer to a forwarded request back to its node: (node, request id, answer).
pub type PeerAnswers = Box<dyn Fn(u64, u64, ShardReply)>;

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
    /// Notified on every request.
    pub notify: Notify,
    /// Notified on every request that is not a write, and when the queue grows past
    /// [`PIPELINE_WHEN_QUEUED`]: what the shard loop waits for while a commit group is in
    /// flight (it takes only reads then, or writes for a further group once enough wait;
    /// waking the loop for each write only cost CPU).
    pub read_arrived: Notify,
}

impl ShardQueue {
    pub fn push(&self, request: ShardRequest<ReplyTo>) {
        let write = matches!(request.op, ShardOp::Write(_));
        let queued = {
            let mut items = self.items.borrow_mut();
            items.push_back(request);
            items.len()
        };
        self.notify.notify();
        if !write || queued == PIPELINE_WHEN_QUEUED + 1 {
            self.read_arrived.notify();
        }
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
    /// The node's RESP SCAN cursors, valid on any connection.
    pub scan_cursors: Arc<crate::scan_cursors::ScanCursors>,
    /// This core's open connections, to shut their receiving side when the node stops.
    connections: RefCell<HashMap<u64, Registered>>,
    next_connection: Cell<u64>,
    /// Sends an answer to a forwarded request back to its node (set on a node of a
    /// cluster).
    pub peer_answers: std::cell::OnceCell<PeerAnswers>,
    /// The node's transactions (ADR 0022): ids, timeouts, the wait-for graph.
    pub transactions: Arc<crate::txn_shared::Transactions>,
    /// The node's users and whether they must authenticate (ADR 0025).
    pub auth: Arc<crate::auth::Auth>,
    /// TLS on the client listeners, when configured.
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub limits: crate::config::ConnectionLimits,
    /// This core's share of `--max-request-memory`.
    pub request_memory: Rc<crate::request_memory::RequestMemory>,
    /// Set when this core's shard answers point reads without its queue (ADR 0029).
    pub local_reads: std::cell::OnceCell<Rc<dyn LocalReads>>,
}

/// A registered connection: its socket, and what `--idle-timeout` looks at.
type Registered = (std::os::fd::RawFd, Weak<dyn Activity>);

/// What `--idle-timeout` looks at in a registered connection (`conn::Connection`).
pub trait Activity {
    /// Receives that brought bytes so far.
    fn receives(&self) -> u64;
    /// Whether it waits for replies (then it is not idle).
    fn busy(&self) -> bool;
    /// The client's address, for the log.
    fn peer(&self) -> String;
}

impl CoreContext {
    pub fn new(
        core: usize,
        shard_count: u32,
        queue: Rc<ShardQueue>,
        request_senders: Vec<Option<Sender<RemoteRequest>>>,
        reply_senders: Vec<Option<Sender<RemoteReply>>>,
        connection_counts: Arc<ConnectionCounts>,
        scan_cursors: Arc<crate::scan_cursors::ScanCursors>,
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
            scan_cursors,
            connections: RefCell::new(HashMap::new()),
            next_connection: Cell::new(0),
            peer_answers: std::cell::OnceCell::new(),
            transactions: Arc::new(crate::txn_shared::Transactions::new(
                1,
                crate::txn_shared::LOCK_TIMEOUT_DEFAULT,
                std::time::Duration::from_secs(60),
            )),
            auth: Arc::new(crate::auth::Auth::off()),
            tls: None,
            limits: crate::config::ConnectionLimits::default(),
            request_memory: Rc::new(crate::request_memory::RequestMemory::new(usize::MAX)),
            local_reads: std::cell::OnceCell::new(),
        }
    }

    /// Reads `key` from `shard` right here, lending the value to `answer`, if it is this
    /// core's shard and it allows it now ([`LocalReads`]); false: send the read through the
    /// shard's queue. The caller makes sure its connection has no request still unanswered,
    /// so that the read sees exactly the writes its connection sent before it.
    pub fn read_here(
        &self,
        shard: u32,
        key: &[u8],
        answer: &mut dyn FnMut(Option<&kvs_core::state::Versioned>),
    ) -> bool {
        if shard as usize != self.core {
            return false;
        }
        self.local_reads
            .get()
            .is_some_and(|reads| reads.read_with(key, answer))
    }

    /// Sets the limits on client connections (this core's share of the request memory:
    /// the node's split evenly between its cores).
    pub fn with_limits(mut self, limits: crate::config::ConnectionLimits) -> Self {
        let share = limits.max_request_memory / u64::from(self.shard_count.max(1));
        self.request_memory = Rc::new(crate::request_memory::RequestMemory::new(
            usize::try_from(share).unwrap_or(usize::MAX).max(1),
        ));
        self.limits = limits;
        self
    }

    /// Shares the node's authentication (by default: off).
    pub fn with_auth(mut self, auth: Arc<crate::auth::Auth>) -> Self {
        self.auth = auth;
        self
    }

    /// Makes the client listeners speak TLS.
    pub fn with_tls(mut self, tls: Option<Arc<crate::tls::Tls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Shares the node's transactions (by default a core has its own).
    pub fn with_transactions(mut self, transactions: Arc<crate::txn_shared::Transactions>) -> Self {
        self.transactions = transactions;
        self
    }

    /// Records an open connection; its receive ends once the node stops.
    pub fn register_connection(&self, stream: &TcpStream, conn: Weak<dyn Activity>) -> u64 {
        let id = self.next_connection.get();
        self.next_connection.set(id + 1);
        self.connections
            .borrow_mut()
            .insert(id, (stream.raw_fd(), conn));
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
        for &(fd, _) in self.connections.borrow().values() {
            // SAFETY: a registered descriptor is open: it is deregistered before it closes.
            unsafe { libc::shutdown(fd, how) };
        }
    }

    /// The next connection on `listener`, or None once the node stops (also when it stopped
    /// before this was called: a stop that came earlier has notified no one).
    pub async fn accept_unless_stopping(
        &self,
        listener: &TcpListener,
    ) -> Option<std::io::Result<TcpStream>> {
        if self.stopping.get() {
            return None;
        }
        let stopped = async {
            self.stop.notified().await;
            None
        };
        futures_lite::future::or(async { Some(listener.accept().await) }, stopped).await
    }

    /// Closes the connections that received nothing since the last look (`seen`: each
    /// connection's receive count then, and since when it stood still) for `timeout` and
    /// wait for no reply. Called every so often by `node::idle_sweeper`.
    pub fn close_idle(
        &self,
        seen: &mut HashMap<u64, (u64, std::time::Instant)>,
        timeout: std::time::Duration,
    ) {
        let now = std::time::Instant::now();
        let connections = self.connections.borrow();
        seen.retain(|id, _| connections.contains_key(id));
        for (id, (fd, conn)) in connections.iter() {
            let Some(conn) = conn.upgrade() else { continue };
            let count = conn.receives();
            let entry = seen.entry(*id).or_insert((count, now));
            if entry.0 != count || conn.busy() {
                *entry = (count, now);
            } else if now.duration_since(entry.1) >= timeout {
                tracing::debug!(
                    peer = conn.peer(),
                    "closing an idle connection (--idle-timeout)"
                );
                // SAFETY: a registered descriptor is open: it is deregistered before it closes.
                unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
                *entry = (count, now);
            }
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
        let origin = target.origin;
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
                target.deliver(ShardReply::Error(
                    ErrorCode::ShuttingDown,
                    "shard is shutting down".into(),
                ));
            }
        }
    }

    /// Delivers a reply that came back from another core.
    pub fn deliver_remote(&self, reply: RemoteReply) {
        let target = self.tokens.borrow_mut().remove(&reply.token);
        match target {
            Some(target) => target.deliver(reply.reply),
            None => tracing::error!(token = reply.token, "reply for an unknown token"),
        }
    }

    /// Sends a reply produced by this core's shard to where it belongs.
    pub async fn reply(&self, to: ReplyTo, reply: ShardReply) {
        let (core, token) = match to {
            ReplyTo::Local(target) => return target.deliver(reply),
            ReplyTo::Remote { core, token } => (core, token),
            ReplyTo::Peer { node, id } => {
                let answer = self
                    .peer_answers
                    .get()
                    .expect("only a node of a cluster takes forwarded requests");
                return answer(node, id, reply);
            }
        };
        // A full channel makes this wait for room: replies are never dropped.
        let sent = self
            .reply_sender(core)
            .send(RemoteReply { token, reply })
            .await;
        if sent.is_err() {
            tracing::warn!(core, "reply to a core that has stopped");
        }
    }

    fn reply_sender(&self, core: usize) -> &Sender<RemoteReply> {
        self.reply_senders[core]
            .as_ref()
            .expect("a sender to every other core")
    }
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
    let next = next_start(&pairs, more);
    Ok((pairs, next))
}

/// Where a scan page ending with `pairs` continues when there may be `more`: just after its
/// last key.
pub(crate) fn next_start(pairs: &[(Vec<u8>, Vec<u8>)], more: bool) -> Option<Vec<u8>> {
    match pairs.last() {
        Some((key, _)) if more => {
            let mut next = key.clone();
            next.push(0);
            Some(next)
        }
        _ => None,
    }
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
