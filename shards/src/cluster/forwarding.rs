//! One core's forwarded requests (ADR 0016): those its shard sent to the group's leader on
//! another node, waiting for their answers, and those other nodes sent to its shard.
//!
//! A request sent on waits for its answer for at most [`FORWARD_TIMEOUT`]; then its client
//! gets TIMEOUT (a write's outcome is unknown: the leader may have applied it). A request
//! that arrives from another node is queued for this core's shard with an origin of its own
//! (the forwarding node's member number and the client connection's origin, marked as
//! forwarded), so the requests of one connection keep their order, and a forwarded request
//! is never forwarded again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvs_wire::ErrorCode;

use super::forward::Forwarded;
use super::transport::Links;
use crate::route::ReplyTo;
use crate::shard::{ShardOp, ShardReply, ShardRequest, FORWARDED_ORIGIN};

/// How long a forwarded request waits for its answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Bits of a forwarded origin below the forwarding node's member number.
const ORIGIN_BITS: u32 = 57;

struct Waiting {
    reply: ReplyTo,
    since: Instant,
    node: u64,
    write: bool,
}

pub struct Forwarding {
    links: Rc<Links>,
    /// Each member's number (its place among the members, from 1), for origins.
    member_number: HashMap<u64, u64>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    next_id: Cell<u64>,
}

impl Forwarding {
    pub fn new(links: Rc<Links>, members: &[u64]) -> Forwarding {
        assert!(members.len() < 64, "member numbers fit in six bits");
        let member_number = members
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as u64 + 1))
            .collect();
        Forwarding {
            links,
            member_number,
            waiting: RefCell::new(HashMap::new()),
            // Ids unique to this run of the node: a node that restarts while another still
            // holds answers for its forwarded requests must not take them for its new ones.
            next_id: Cell::new(run_id() << 32),
        }
    }

    /// Sends `request` to node `node`, which leads its shard. Returns the answer to give at
    /// once when it cannot be sent (that node's queue is full): surely not done.
    pub fn send(&self, node: u64, request: ShardRequest<ReplyTo>) -> Option<(ReplyTo, ShardReply)> {
        if !self.links.is_connected(node) {
            let message = format!(
                "the shard's leader, node {node}, is unreachable from this node; nothing was done"
            );
            return Some((
                request.reply,
                ShardReply::Error(ErrorCode::NoQuorum, message),
            ));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let write = matches!(request.op, ShardOp::Write(_));
        let forwarded = Forwarded {
            id,
            origin: request.origin,
            op: request.op,
        };
        match self.links.forward(node, forwarded) {
            Ok(()) => {
                self.waiting.borrow_mut().insert(
                    id,
                    Waiting {
                        reply: request.reply,
                        since: Instant::now(),
                        node,
                        write,
                    },
                );
                None
            }
            Err(_) => Some((
                request.reply,
                ShardReply::Error(
                    ErrorCode::NoQuorum,
                    format!(
                        "the shard's leader, node {node}, is not taking requests from this \
                         node (its queue is full); nothing was done"
                    ),
                ),
            )),
        }
    }

    /// The answers that came back, with where each goes.
    pub fn take_answers(&self) -> Vec<(ReplyTo, ShardReply)> {
        let answers = self.links.take_answers();
        let mut waiting = self.waiting.borrow_mut();
        answers
            .into_iter()
            .filter_map(|(id, reply)| match waiting.remove(&id) {
                Some(w) => Some((w.reply, reply)),
                // Answered already with TIMEOUT: the client has moved on.
                None => None,
            })
            .collect()
    }

    /// The requests other nodes forwarded here, as this core's shard takes them.
    pub fn take_requests(&self) -> Vec<ShardRequest<ReplyTo>> {
        self.links
            .take_requests()
            .into_iter()
            .map(|(node, request)| {
                let number = self.member_number.get(&node).copied().unwrap_or(63);
                ShardRequest {
                    op: request.op,
                    reply: ReplyTo::Peer {
                        node,
                        id: request.id,
                    },
                    origin: FORWARDED_ORIGIN
                        | (number << ORIGIN_BITS)
                        | (request.origin & ((1 << ORIGIN_BITS) - 1)),
                }
            })
            .collect()
    }

    /// The requests sent to a node that no longer leads this core's shard (another was
    /// elected: it was paused or cut off, and may never answer), answered at once and
    /// forgotten: a write TIMEOUT (it may still be committed, if the old leader replicated it
    /// before the election), a read NOT_LEADER (nothing was done: send it again).
    pub fn leader_changed(&self, old: u64) -> Vec<(ReplyTo, ShardReply)> {
        self.fail_waiting(&[old], "which no longer leads it", ErrorCode::NotLeader)
    }

    /// The requests sent to nodes whose link went down, answered and forgotten: a write
    /// TIMEOUT (it may have arrived), a read NO_QUORUM (nothing was done).
    pub fn fail_unreachable(&self) -> Vec<(ReplyTo, ShardReply)> {
        let down = self.links.take_went_down();
        self.fail_waiting(
            &down,
            "whose link went down before it answered",
            ErrorCode::NoQuorum,
        )
    }

    fn fail_waiting(
        &self,
        nodes: &[u64],
        why: &str,
        read_code: ErrorCode,
    ) -> Vec<(ReplyTo, ShardReply)> {
        if nodes.is_empty() {
            return Vec::new();
        }
        let mut waiting = self.waiting.borrow_mut();
        let lost: Vec<u64> = waiting
            .iter()
            .filter(|(_, w)| nodes.contains(&w.node))
            .map(|(&id, _)| id)
            .collect();
        lost.into_iter()
            .filter_map(|id| waiting.remove(&id))
            .map(|w| {
                let message = format!(
                    "forwarded to node {}, the shard's leader then, {why}; {}",
                    w.node,
                    outcome(w.write)
                );
                let code = if w.write {
                    ErrorCode::Timeout
                } else {
                    read_code
                };
                (w.reply, ShardReply::Error(code, message))
            })
            .collect()
    }

    /// The requests that waited too long for their answers: TIMEOUT (unknown outcome for a
    /// write), and forgotten.
    pub fn expire(&self, now: Instant) -> Vec<(ReplyTo, ShardReply)> {
        let mut waiting = self.waiting.borrow_mut();
        let expired: Vec<u64> = waiting
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= FORWARD_TIMEOUT)
            .map(|(&id, _)| id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| waiting.remove(&id))
            .map(|w| {
                let message = format!(
                    "forwarded to node {}, the shard's leader, and no answer came within {}s; {}",
                    w.node,
                    FORWARD_TIMEOUT.as_secs(),
                    outcome(w.write)
                );
                (w.reply, ShardReply::Error(ErrorCode::Timeout, message))
            })
            .collect()
    }
}

fn outcome(write: bool) -> &'static str {
    if write {
        "the write may or may not have been applied"
    } else {
        "nothing was changed"
    }
}

/// A number for this run of the process (its start time in nanoseconds, folded into 31
/// bits), so forwarded request ids of two runs do not meet.
fn run_id() -> u64 {
    use std::sync::OnceLock;
    static RUN: OnceLock<u64> = OnceLock::new();
    *RUN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        (nanos ^ (nanos >> 31) ^ u64::from(std::process::id())) & 0x7fff_ffff
    })
}
