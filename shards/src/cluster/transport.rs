//! The links between nodes (ADR 0015), one core's side of them: core i of each node dials
//! core i of every other node, so a shard's Raft traffic goes from its core to the same core
//! elsewhere without a hop between cores.
//!
//! A link is one-way. The dialing core sends a hello (cluster id, node id, shard count, its
//! core, where it serves clients), reads the answer (welcome, or refused with a reason), and
//! from then on only sends: each round's messages for that node in one frame. The answering
//! node checks the hello, hands the link to its core of the same index, and from then on
//! only reads, putting each message into that core's inbox for the shard loop. Messages from
//! B to A travel on B's own link to A. A link that fails is dialled again with a growing
//! pause (backoff); messages queued for a node that does not take them are bounded, and the
//! newest beyond the bound are dropped: Raft resends what a peer did not acknowledge.
//!
//! Links are authenticated as ADR 0027 says: through mutual TLS when peer TLS is on (the
//! handshake before the hello), and by proofs of the cluster secret in the welcome and the
//! frame after it when the cluster has a secret.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::Message;

use super::codec::{decode_frame, encode_frame, PeerFrame, PEER_BODY_SIZE_MAX, PEER_HEADER_SIZE};
use super::forward::{answer_len, forwarded_len, Forwarded};
use super::peer_security::{nonce, LinkStart, PeerSecurity, Side};
use super::peer_stream::PeerStream;
use crate::local::Notify;
use crate::runtime::{spawn_local, wait, TcpStream};
use crate::shard::{NodeView, ShardReply};
use crate::snapshot::SnapshotChunk;

/// Messages queued for one node beyond which new ones are dropped.
const QUEUE_MAX: usize = 16 * 1024;
/// Bytes of log entries queued for one node beyond which further appends are dropped. A
/// follower that is probed resends nothing itself, but every heartbeat it answers (and
/// ReadIndex sends one per read round) makes the leader send it the same up-to-1 MiB
/// append again: on a link that drains slowly, a count alone bounds nothing.
const ENTRY_BYTES_QUEUED_MAX: usize = 32 << 20;
/// A link whose sent data stays unacknowledged this long is dropped by the kernel and
/// dialled afresh (TCP_USER_TIMEOUT). Without it a link cut by a partition resumes only at
/// TCP's next retransmission, whose backoff doubles each time: seconds to minutes after
/// the partition heals.
const LINK_STALL: Duration = Duration::from_secs(3);
/// An incoming link over which nothing arrived for this long is taken for dead (the other
/// side sends at least a keepalive every [`KEEPALIVE`]), and closed: its dialler has been
/// cut off and dials again.
const INCOMING_IDLE: Duration = Duration::from_secs(3);
/// First pause before dialling a failed link again, and the longest.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a dial, or the hello's answer, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// A frame is cut after messages of about this many bytes (a round's appends to a node that
/// fell behind can be many).
const FRAME_BYTES_TARGET: usize = 8 << 20;
/// A link that sent nothing for this long sends an empty frame, so the other node hears
/// from this one (`cluster status`'s last heard) even when none of its groups has anything
/// to say to that node (followers of the same leader, say).
const KEEPALIVE: Duration = Duration::from_millis(250);
/// The receive buffer a link starts with.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// Who this node is, as its hellos say.
#[derive(Debug, Clone)]
pub struct LocalNode {
    pub cluster_id: u64,
    pub node_id: u64,
    pub shard_count: u32,
    pub client_addr: String,
    /// Empty when the node has no RESP listener.
    pub resp_addr: String,
    pub peer_addr: String,
}

/// Another node, as one core sees it.
pub struct PeerNode {
    pub id: u64,
    pub peer_addr: SocketAddr,
    /// Where it serves clients, from its hello (None until it has called).
    pub client_addr: RefCell<Option<String>>,
    pub resp_addr: RefCell<Option<String>>,
    /// When a frame from it last arrived on this core.
    pub last_heard: Cell<Option<Instant>>,
    /// Whether this core's link to it is up.
    pub connected: Cell<bool>,
    /// Bytes this core's link sent it.
    pub bytes_sent: Cell<u64>,
    /// How many times this core's link to it came up: a snapshot whose link went down
    /// meanwhile (its queued chunks dropped) is started again.
    pub link_generation: Cell<u64>,
    queue: RefCell<Outgoing>,
    queued: Notify,
}

/// What waits to go to one node.
#[derive(Default)]
struct Outgoing {
    raft: Vec<(u64, Message)>,
    forwards: Vec<Forwarded>,
    answers: Vec<(u64, ShardReply)>,
    /// Snapshot chunks: sent before a round's Raft messages, so a `MsgSnapshot` queued
    /// after its last chunk follows it.
    snapshot: Vec<(u64, SnapshotChunk)>,
    /// The size of the entries in `raft`, by [`message_bytes`].
    entry_bytes: usize,
    /// This node's transactions' lock waits, newest only (`deadlock.rs`).
    waits: Option<crate::deadlock::Edges>,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.raft.is_empty()
            && self.forwards.is_empty()
            && self.answers.is_empty()
            && self.snapshot.is_empty()
            && self.waits.is_none()
    }
}

/// One core's links: to every other node, and the inbox of what they sent it.
pub struct Links {
    pub core: u32,
    pub local: LocalNode,
    pub peers: Vec<Rc<PeerNode>>,
    /// What links must prove (shared by the node's cores, reloaded on SIGHUP).
    security: Arc<PeerSecurity>,
    inbox: RefCell<Vec<Message>>,
    /// Requests other nodes forwarded to this core's shard: (node, request).
    requests: RefCell<Vec<(u64, Forwarded)>>,
    /// Answers to the requests this core forwarded.
    answers: RefCell<Vec<(u64, ShardReply)>>,
    /// Snapshot chunks other nodes sent: (node, chunk).
    chunks: RefCell<Vec<(u64, SnapshotChunk)>>,
    /// Transactions' lock waits other nodes sent: (node, edges).
    waits: RefCell<Vec<(u64, crate::deadlock::Edges)>>,
    /// Wakes the shard loop: a message arrived.
    wake: Box<dyn Fn()>,
    /// Addresses learned from hellos and not yet taken by the shard loop.
    learned: RefCell<Vec<(u64, String)>>,
    /// Nodes whose link went down since the shard loop last looked.
    went_down: RefCell<Vec<u64>>,
    stopping: Cell<bool>,
    stopped: Notify,
}

/// Why a hello is refused (also sent back to the caller).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Links {
    pub fn new(
        core: u32,
        local: LocalNode,
        members: &[(u64, SocketAddr)],
        security: Arc<PeerSecurity>,
        wake: Box<dyn Fn()>,
    ) -> Links {
        let peers = members
            .iter()
            .filter(|(id, _)| *id != local.node_id)
            .map(|&(id, peer_addr)| {
                Rc::new(PeerNode {
                    id,
                    peer_addr,
                    client_addr: RefCell::new(None),
                    resp_addr: RefCell::new(None),
                    last_heard: Cell::new(None),
                    connected: Cell::new(false),
                    bytes_sent: Cell::new(0),
                    link_generation: Cell::new(0),
                    queue: RefCell::new(Outgoing::default()),
                    queued: Notify::new(),
                })
            })
            .collect();
        Links {
            core,
            local,
            peers,
            security,
            inbox: RefCell::new(Vec::new()),
            requests: RefCell::new(Vec::new()),
            answers: RefCell::new(Vec::new()),
            chunks: RefCell::new(Vec::new()),
            waits: RefCell::new(Vec::new()),
            wake,
            learned: RefCell::new(Vec::new()),
            went_down: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
            stopped: Notify::new(),
        }
    }

    fn peer(&self, id: u64) -> Option<&Rc<PeerNode>> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// Queues `message` (of group `group`) for its node.
    pub fn send(&self, group: u64, message: Message) {
        let Some(peer) = self.peer(message.to) else {
            tracing::warn!(
                to = message.to,
                "raft message for a node that is not a member"
            );
            return;
        };
        let mut queue = peer.queue.borrow_mut();
        if queue.raft.len() >= QUEUE_MAX {
            return;
        }
        if !message.entries.is_empty() {
            let bytes = message_bytes(&message);
            if queue.entry_bytes + bytes > ENTRY_BYTES_QUEUED_MAX {
                return;
            }
            queue.entry_bytes += bytes;
        }
        queue.raft.push((group, message));
        drop(queue);
        peer.queued.notify();
    }

    /// Queues a snapshot chunk of group `group` for node `to`.
    pub fn send_snapshot_chunk(&self, group: u64, to: u64, chunk: SnapshotChunk) {
        if let Some(peer) = self.peer(to) {
            peer.queue.borrow_mut().snapshot.push((group, chunk));
            peer.queued.notify();
        }
    }

    /// Snapshot chunks queued for `to` and not yet sent.
    pub fn snapshot_chunks_queued(&self, to: u64) -> usize {
        self.peer(to).map_or(0, |p| p.queue.borrow().snapshot.len())
    }

    /// Which coming-up of the link to `to` is current (None: the link is down).
    pub fn link_generation(&self, to: u64) -> Option<u64> {
        self.peer(to)
            .filter(|p| p.connected.get())
            .map(|p| p.link_generation.get())
    }

    /// Queues a request for node `node`, which leads its shard; hands it back when that
    /// node's queue is full (it has not taken what was sent for a while).
    pub fn forward(&self, node: u64, request: Forwarded) -> Result<(), Forwarded> {
        let Some(peer) = self.peer(node) else {
            return Err(request);
        };
        let mut queue = peer.queue.borrow_mut();
        if queue.forwards.len() >= QUEUE_MAX {
            return Err(request);
        }
        queue.forwards.push(request);
        drop(queue);
        peer.queued.notify();
        Ok(())
    }

    /// Queues the answer to request `id` that node `node` forwarded here.
    pub fn answer(&self, node: u64, id: u64, reply: ShardReply) {
        // A frame's body is bounded: an answer that would not fit says so instead.
        let reply = if answer_len(&reply) > PEER_BODY_SIZE_MAX - 4096 {
            ShardReply::Error(
                kvs_wire::ErrorCode::TooLarge,
                "the answer is too large to forward; ask the shard's leader directly".into(),
            )
        } else {
            reply
        };
        if let Some(peer) = self.peer(node) {
            peer.queue.borrow_mut().answers.push((id, reply));
            peer.queued.notify();
        }
    }

    /// The Raft messages that arrived since the last call, in arrival order.
    pub fn take_inbox(&self) -> Vec<Message> {
        std::mem::take(&mut *self.inbox.borrow_mut())
    }

    /// The requests forwarded here since the last call: (node, request), in arrival order.
    pub fn take_requests(&self) -> Vec<(u64, Forwarded)> {
        std::mem::take(&mut *self.requests.borrow_mut())
    }

    /// The answers to this core's forwarded requests since the last call.
    pub fn take_answers(&self) -> Vec<(u64, ShardReply)> {
        std::mem::take(&mut *self.answers.borrow_mut())
    }

    /// Sends this node's transactions' lock waits to every other node (replacing what was
    /// queued and not yet sent).
    pub fn send_waits(&self, edges: &crate::deadlock::Edges) {
        for peer in &self.peers {
            peer.queue.borrow_mut().waits = Some(edges.clone());
            peer.queued.notify();
        }
    }

    /// The lock waits other nodes sent since the last call: (node, edges).
    pub fn take_waits(&self) -> Vec<(u64, crate::deadlock::Edges)> {
        std::mem::take(&mut *self.waits.borrow_mut())
    }

    /// The snapshot chunks that arrived since the last call: (node, chunk), in order.
    pub fn take_snapshot_chunks(&self) -> Vec<(u64, SnapshotChunk)> {
        std::mem::take(&mut *self.chunks.borrow_mut())
    }

    pub fn has_inbox(&self) -> bool {
        !self.inbox.borrow().is_empty()
            || !self.chunks.borrow().is_empty()
            || !self.requests.borrow().is_empty()
            || !self.answers.borrow().is_empty()
    }

    /// Whether this core's link to `node` is up.
    pub fn is_connected(&self, node: u64) -> bool {
        self.peer(node).is_some_and(|p| p.connected.get())
    }

    /// The nodes whose link went down since the last call.
    pub fn take_went_down(&self) -> Vec<u64> {
        std::mem::take(&mut *self.went_down.borrow_mut())
    }

    /// Client addresses learned since the last call: (node, native address).
    pub fn take_learned(&self) -> Vec<(u64, String)> {
        std::mem::take(&mut *self.learned.borrow_mut())
    }

    /// The cluster's id and every member as this core sees it, this node first.
    pub fn view(&self) -> (String, Vec<NodeView>) {
        let now = Instant::now();
        let local = &self.local;
        let mut nodes = vec![NodeView {
            id: local.node_id,
            addr: Some(local.client_addr.clone()),
            peer_addr: local.peer_addr.clone(),
            resp_addr: (!local.resp_addr.is_empty()).then(|| local.resp_addr.clone()),
            reachable: true,
            last_heard_ms: Some(0),
            bytes_sent: 0,
        }];
        nodes.extend(self.peers.iter().map(|peer| {
            NodeView {
                id: peer.id,
                addr: peer.client_addr.borrow().clone(),
                peer_addr: peer.peer_addr.to_string(),
                resp_addr: peer.resp_addr.borrow().clone(),
                reachable: peer.connected.get(),
                last_heard_ms: peer
                    .last_heard
                    .get()
                    .map(|at| now.duration_since(at).as_millis() as u64),
                bytes_sent: peer.bytes_sent.get(),
            }
        }));
        (format!("{:016x}", local.cluster_id), nodes)
    }

    /// Ends every link task of this core.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.stopped.notify();
        for peer in &self.peers {
            peer.queued.notify();
        }
    }

    /// Starts dialling every other node.
    pub fn start(self: &Rc<Self>) {
        for peer in &self.peers {
            spawn_local(dial_loop(Rc::clone(self), Rc::clone(peer))).detach();
        }
    }

    /// Checks a caller's hello against this node: the same cluster and shard count, a
    /// member other than this node, a core this node has. Returns the core the link is for.
    pub fn check_hello(&self, hello: &PeerFrame) -> Result<u32, Refusal> {
        let PeerFrame::Hello {
            cluster_id,
            node_id,
            shard_count,
            core,
            ..
        } = hello
        else {
            return Err(Refusal("the first frame is not a hello".into()));
        };
        if *cluster_id != self.local.cluster_id {
            return Err(Refusal(format!(
                "node {node_id} is of cluster {cluster_id:016x}; this node is of {:016x}",
                self.local.cluster_id
            )));
        }
        if *node_id == self.local.node_id || self.peer(*node_id).is_none() {
            return Err(Refusal(format!(
                "node {node_id} is not another member of this cluster"
            )));
        }
        if *shard_count != self.local.shard_count || *core >= *shard_count {
            return Err(Refusal(format!(
                "node {node_id} has {shard_count} shards (core {core}); this node has {}",
                self.local.shard_count
            )));
        }
        Ok(*core)
    }

    /// Reads what a node that called this core sends, into the inbox, until the link ends.
    pub async fn serve_incoming(
        self: Rc<Self>,
        stream: PeerStream,
        hello: PeerFrame,
        mut buffer: Vec<u8>,
        mut filled: usize,
    ) {
        let PeerFrame::Hello {
            node_id,
            client_addr,
            resp_addr,
            ..
        } = hello
        else {
            return;
        };
        let Some(peer) = self.peer(node_id).cloned() else {
            return;
        };
        *peer.client_addr.borrow_mut() = Some(client_addr.clone());
        *peer.resp_addr.borrow_mut() = (!resp_addr.is_empty()).then_some(resp_addr);
        self.learned.borrow_mut().push((node_id, client_addr));
        peer.last_heard.set(Some(Instant::now()));
        (self.wake)();
        loop {
            let stopped = async {
                self.stopped.notified().await;
                Err(io::Error::other("stopping"))
            };
            if self.stopping.get() {
                break;
            }
            let frame = futures_lite::future::or(
                read_frame_idle(&stream, &mut buffer, &mut filled, Some(INCOMING_IDLE)),
                stopped,
            )
            .await;
            let messages = match frame {
                Ok(PeerFrame::Raft(messages)) => messages,
                Ok(PeerFrame::Forward(requests)) => {
                    peer.last_heard.set(Some(Instant::now()));
                    let mut inbox = self.requests.borrow_mut();
                    inbox.extend(requests.into_iter().map(|r| (node_id, r)));
                    drop(inbox);
                    (self.wake)();
                    continue;
                }
                Ok(PeerFrame::Answers(answers)) => {
                    peer.last_heard.set(Some(Instant::now()));
                    self.answers.borrow_mut().extend(answers);
                    (self.wake)();
                    continue;
                }
                Ok(PeerFrame::WaitsFor(edges)) => {
                    peer.last_heard.set(Some(Instant::now()));
                    self.waits.borrow_mut().push((node_id, edges));
                    continue;
                }
                Ok(PeerFrame::Snapshot(chunks)) => {
                    peer.last_heard.set(Some(Instant::now()));
                    let mut inbox = self.chunks.borrow_mut();
                    for (group, chunk) in chunks {
                        if group == u64::from(self.core) {
                            inbox.push((node_id, chunk));
                        }
                    }
                    drop(inbox);
                    (self.wake)();
                    continue;
                }
                Ok(other) => {
                    tracing::warn!(node = node_id, ?other, "unexpected peer frame; link closed");
                    break;
                }
                Err(error) => {
                    tracing::debug!(node = node_id, %error, "incoming peer link ended");
                    break;
                }
            };
            peer.last_heard.set(Some(Instant::now()));
            let mut inbox = self.inbox.borrow_mut();
            for (group, message) in messages {
                if group != u64::from(self.core) || message.to != self.local.node_id {
                    tracing::warn!(
                        node = node_id,
                        group,
                        to = message.to,
                        core = self.core,
                        "raft message for a group or node not here dropped"
                    );
                    continue;
                }
                inbox.push(message);
            }
            drop(inbox);
            (self.wake)();
        }
        // The answers to what this core forwarded to that node travel on this link: those
        // not in yet will not come (that node drops what it queued for a failed link).
        if !self.stopping.get() {
            self.went_down.borrow_mut().push(node_id);
            (self.wake)();
        }
    }
}

/// Answers a node that called this one: runs the TLS handshake if peer TLS is on, reads its
/// hello, checks it, sends a welcome (with this node's proof of the cluster secret, if any)
/// and reads the caller's proof; returns the link, the hello, the core it is for, and the
/// bytes read after it. A refusal is logged and sent back (None).
pub async fn answer_hello(
    links: &Links,
    tcp: TcpStream,
) -> Option<(PeerStream, PeerFrame, u32, Vec<u8>, usize)> {
    let from = tcp.peer_addr().ok();
    let stream = match links.security.tls() {
        None => PeerStream::plain(tcp),
        Some(tls) => {
            match with_timeout(
                HANDSHAKE_TIMEOUT,
                PeerStream::accept(tcp, Arc::clone(&tls.server)),
            )
            .await
            {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(?from, %error, "peer link refused: the TLS handshake failed");
                    return None;
                }
            }
        }
    };
    let mut buffer = vec![0; 4096];
    let mut filled = 0;
    let hello = match with_timeout(
        HANDSHAKE_TIMEOUT,
        read_frame(&stream, &mut buffer, &mut filled),
    )
    .await
    {
        Ok(hello) => hello,
        Err(error) => {
            tracing::warn!(?from, %error, "peer link closed before its hello");
            return None;
        }
    };
    let secrets = links.security.secrets();
    // What the proofs of both sides cover (check_hello refuses what is not a hello).
    let (dialer, dialer_nonce) = match &hello {
        PeerFrame::Hello { node_id, nonce, .. } => (*node_id, nonce.as_slice()),
        _ => (0, &[][..]),
    };
    let my_nonce = nonce();
    let start = LinkStart {
        dialer,
        dialer_nonce,
        answerer: links.local.node_id,
        answerer_nonce: &my_nonce,
    };
    let mut out = Vec::new();
    let core = match links.check_hello(&hello) {
        Ok(core) => {
            let proof = secrets
                .as_deref()
                .map_or_else(Vec::new, |s| s.prove(Side::Answering, start));
            encode_frame(
                &PeerFrame::Welcome {
                    node_id: links.local.node_id,
                    nonce: my_nonce.clone(),
                    proof,
                },
                &mut out,
            );
            Some(core)
        }
        Err(Refusal(reason)) => {
            tracing::warn!(?from, %reason, "peer link refused");
            encode_frame(&PeerFrame::Refused { reason }, &mut out);
            None
        }
    };
    with_timeout(HANDSHAKE_TIMEOUT, async { stream.send_all(out).await.0 })
        .await
        .ok()?;
    let core = core?;
    if let Some(secrets) = secrets {
        let answer = with_timeout(
            HANDSHAKE_TIMEOUT,
            read_frame(&stream, &mut buffer, &mut filled),
        )
        .await;
        match answer {
            Ok(PeerFrame::Proof { proof }) if secrets.accepts(Side::Dialing, start, &proof) => {}
            Ok(_) => {
                tracing::warn!(
                    ?from,
                    node = dialer,
                    "peer link refused: the caller did not prove the cluster secret"
                );
                return None;
            }
            Err(error) => {
                tracing::warn!(?from, node = dialer, %error, "peer link closed before its proof of the cluster secret");
                return None;
            }
        }
    }
    Some((stream, hello, core, buffer, filled))
}

/// Reads the next frame from `stream` into `buffer` (holding `filled` bytes already).
pub async fn read_frame(
    stream: &PeerStream,
    buffer: &mut Vec<u8>,
    filled: &mut usize,
) -> io::Result<PeerFrame> {
    read_frame_idle(stream, buffer, filled, None).await
}

/// Like [`read_frame`], failing with TimedOut when no byte arrives for `idle`, if given (a
/// large frame that keeps arriving may take longer).
async fn read_frame_idle(
    stream: &PeerStream,
    buffer: &mut Vec<u8>,
    filled: &mut usize,
    idle: Option<Duration>,
) -> io::Result<PeerFrame> {
    loop {
        match decode_frame(&buffer[..*filled]) {
            Ok(Some((frame, len))) => {
                buffer.copy_within(len..*filled, 0);
                *filled -= len;
                return Ok(frame);
            }
            Ok(None) => {}
            Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
        }
        if *filled == buffer.len() {
            let grown =
                (buffer.len() * 2).clamp(RECEIVE_BUFFER, PEER_HEADER_SIZE + PEER_BODY_SIZE_MAX);
            buffer.resize(grown, 0);
        }
        let received = async { Ok(stream.recv(std::mem::take(buffer), *filled).await) };
        let (result, back) = match idle {
            None => received.await?,
            Some(idle) => with_timeout(idle, received).await?,
        };
        *buffer = back;
        match result? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => *filled += n,
        }
    }
}

/// Runs `future`, failing with TimedOut after `limit`.
pub async fn with_timeout<T>(
    limit: Duration,
    future: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    futures_lite::future::or(future, async {
        wait(limit).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}

/// Keeps this core's link to `peer` up: dials, greets, sends what is queued; on failure,
/// waits (doubling up to [`BACKOFF_MAX`]) and dials again.
async fn dial_loop(links: Rc<Links>, peer: Rc<PeerNode>) {
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    while !links.stopping.get() {
        match with_timeout(HANDSHAKE_TIMEOUT, greet(&links, &peer)).await {
            Ok(stream) => {
                tracing::info!(node = peer.id, addr = %peer.peer_addr, core = links.core, "peer link up");
                last_error.clear();
                backoff = BACKOFF_MIN;
                peer.link_generation.set(peer.link_generation.get() + 1);
                peer.connected.set(true);
                let error = send_loop(&links, &peer, &stream).await;
                peer.connected.set(false);
                // What was queued for it is dropped (Raft resends; forwarded requests are
                // answered by the shard loop, told here).
                *peer.queue.borrow_mut() = Outgoing::default();
                links.went_down.borrow_mut().push(peer.id);
                (links.wake)();
                if !links.stopping.get() {
                    tracing::info!(node = peer.id, core = links.core, %error, "peer link down");
                }
            }
            Err(error) => {
                // Said once per kind of failure, not once per dial.
                let text = error.to_string();
                if text != last_error {
                    tracing::info!(node = peer.id, addr = %peer.peer_addr, core = links.core, error = %text, "cannot reach peer; retrying");
                    last_error = text;
                }
            }
        }
        let stopped = links.stopped.notified();
        if links.stopping.get() {
            break;
        }
        futures_lite::future::or(wait(backoff), stopped).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Dials `peer`, runs the TLS handshake if peer TLS is on, and exchanges hello and welcome
/// (and the proofs of the cluster secret, if the cluster has one).
async fn greet(links: &Links, peer: &PeerNode) -> io::Result<PeerStream> {
    // From this node's peer address, unless it listens on every address.
    let local = links
        .local
        .peer_addr
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == peer.peer_addr.is_ipv4());
    let tcp = TcpStream::connect_from(local, peer.peer_addr).await?;
    tcp.set_nodelay(true)?;
    tcp.set_user_timeout(LINK_STALL)?;
    let stream = match links.security.tls() {
        None => PeerStream::plain(tcp),
        Some(tls) => {
            // The other node's certificate must name the address it is dialled on.
            let name = rustls::pki_types::ServerName::IpAddress(peer.peer_addr.ip().into());
            PeerStream::connect(tcp, Arc::clone(&tls.client), name)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS: {e}")))?
        }
    };
    let local = &links.local;
    let my_nonce = nonce();
    let mut out = Vec::new();
    encode_frame(
        &PeerFrame::Hello {
            cluster_id: local.cluster_id,
            node_id: local.node_id,
            shard_count: local.shard_count,
            core: links.core,
            client_addr: local.client_addr.clone(),
            resp_addr: local.resp_addr.clone(),
            nonce: my_nonce.clone(),
        },
        &mut out,
    );
    let (sent, _) = stream.send_all(out).await;
    sent?;
    let mut buffer = vec![0; 4096];
    let mut filled = 0;
    let (their_nonce, their_proof) = match read_frame(&stream, &mut buffer, &mut filled).await? {
        PeerFrame::Welcome {
            node_id,
            nonce,
            proof,
        } if node_id == peer.id => (nonce, proof),
        PeerFrame::Welcome { node_id, .. } => {
            return Err(io::Error::other(format!(
                "{} answered as node {node_id}, not {}",
                peer.peer_addr, peer.id
            )))
        }
        PeerFrame::Refused { reason } => {
            return Err(io::Error::other(format!("refused: {reason}")))
        }
        other => return Err(io::Error::other(format!("unexpected answer {other:?}"))),
    };
    if let Some(secrets) = links.security.secrets() {
        let start = LinkStart {
            dialer: local.node_id,
            dialer_nonce: &my_nonce,
            answerer: peer.id,
            answerer_nonce: &their_nonce,
        };
        if !secrets.accepts(Side::Answering, start, &their_proof) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "node {} did not prove the cluster secret (another secret, or none)",
                    peer.id
                ),
            ));
        }
        let mut out = Vec::new();
        encode_frame(
            &PeerFrame::Proof {
                proof: secrets.prove(Side::Dialing, start),
            },
            &mut out,
        );
        stream.send_all(out).await.0?;
    }
    Ok(stream)
}

/// About how many bytes `message` takes in a frame.
fn message_bytes(message: &Message) -> usize {
    64 + message
        .entries
        .iter()
        .map(|e| e.data.len() + 32)
        .sum::<usize>()
}

/// Cuts `items` into runs of about [`FRAME_BYTES_TARGET`] bytes by `len`, each well under
/// a frame's limit (a single item is bounded by the value and batch limits).
fn cut<T>(items: Vec<T>, len: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = len(&item);
        if !run.is_empty() && bytes + size > FRAME_BYTES_TARGET {
            runs.push(std::mem::take(&mut run));
            bytes = 0;
        }
        bytes += size;
        run.push(item);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Sends what is queued for `peer`, a frame per round, until the link fails or the node
/// stops; returns why it ended.
async fn send_loop(links: &Links, peer: &PeerNode, stream: &PeerStream) -> io::Error {
    let mut out = Vec::new();
    let mut batch = Outgoing::default();
    loop {
        let queued = peer.queued.notified();
        if links.stopping.get() {
            return io::Error::other("stopping");
        }
        {
            let mut queue = peer.queue.borrow_mut();
            std::mem::swap(&mut batch, &mut *queue);
            queue.entry_bytes = 0;
        }
        out.clear();
        if batch.is_empty() {
            let idle = futures_lite::future::or(
                async {
                    queued.await;
                    false
                },
                async {
                    wait(KEEPALIVE).await;
                    true
                },
            )
            .await;
            if !idle {
                continue;
            }
            encode_frame(&PeerFrame::Raft(Vec::new()), &mut out);
        }
        for answers in cut(std::mem::take(&mut batch.answers), |(_, reply)| {
            answer_len(reply)
        }) {
            encode_frame(&PeerFrame::Answers(answers), &mut out);
        }
        for forwards in cut(std::mem::take(&mut batch.forwards), forwarded_len) {
            encode_frame(&PeerFrame::Forward(forwards), &mut out);
        }
        for chunks in cut(std::mem::take(&mut batch.snapshot), |(_, c)| c.size()) {
            encode_frame(&PeerFrame::Snapshot(chunks), &mut out);
        }
        if let Some(edges) = batch.waits.take() {
            encode_frame(&PeerFrame::WaitsFor(edges), &mut out);
        }
        let mut frame = Vec::new();
        let mut bytes = 0;
        for (group, message) in batch.raft.drain(..) {
            bytes += message_bytes(&message);
            frame.push((group, message));
            if bytes >= FRAME_BYTES_TARGET {
                encode_frame(&PeerFrame::Raft(std::mem::take(&mut frame)), &mut out);
                bytes = 0;
            }
        }
        if !frame.is_empty() {
            encode_frame(&PeerFrame::Raft(frame), &mut out);
        }
        let (sent, back) = stream.send_all(std::mem::take(&mut out)).await;
        out = back;
        if let Err(error) = sent {
            return error;
        }
        peer.bytes_sent
            .set(peer.bytes_sent.get() + out.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{Entry, MessageType};

    use super::*;

    fn links() -> Links {
        let local = LocalNode {
            cluster_id: 7,
            node_id: 1,
            shard_count: 1,
            client_addr: "127.0.0.1:1".into(),
            resp_addr: String::new(),
            peer_addr: "127.0.0.1:2".into(),
        };
        let members = [
            (1, "127.0.0.1:2".parse().unwrap()),
            (2, "127.0.0.1:3".parse().unwrap()),
        ];
        Links::new(
            0,
            local,
            &members,
            Arc::new(PeerSecurity::none()),
            Box::new(|| {}),
        )
    }

    fn append(entry_bytes: usize) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = 2;
        let entry = Entry {
            data: vec![0; entry_bytes].into(),
            ..Default::default()
        };
        message.entries = vec![entry].into();
        message
    }

    #[test]
    fn appends_queued_for_a_slow_node_are_bounded_by_bytes_and_small_messages_still_go() {
        let links = links();
        for _ in 0..200 {
            links.send(0, append(1 << 20));
        }
        let peer = links.peer(2).unwrap();
        let queued = peer.queue.borrow().raft.len();
        assert!(
            queued * (1 << 20) <= ENTRY_BYTES_QUEUED_MAX && queued >= 16,
            "{queued} appends of 1 MiB queued"
        );
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        heartbeat.to = 2;
        links.send(0, heartbeat);
        assert_eq!(peer.queue.borrow().raft.len(), queued + 1);
    }
}
