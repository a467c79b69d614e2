//! Where transactions meet a shard loop (ADR 0022): the transaction lock table's requests are
//! answered here, and every write taken from the queue is looked at against the table before
//! it reaches the batch — a transaction's commit or prepare entry must still hold its locks,
//! and a write outside transactions breaks the running transactions on its keys, or a
//! document write on its collection (`lock_names`), or is refused when a prepared one holds
//! them. While no transaction holds or waits for a lock, a
//! write outside transactions costs one branch here.

use std::sync::Arc;
use std::time::Duration;

use kvs_core::command::Command;
use kvs_wire::ErrorCode;

use crate::deadlock::WaitGraph;
use crate::lock_names;
use crate::shard::{Output, ShardOp, ShardReply, ShardRequest};
use crate::txn_locks::{Answer, TxnLockOp, TxnLockTable};

fn reply_of(answer: Answer) -> ShardReply {
    match answer {
        Ok(()) => ShardReply::Locked,
        Err((code, message)) => ShardReply::Error(code, message),
    }
}

/// A shard loop's transaction locks, with the node's wait-for graph.
pub struct TxnGate<R> {
    table: TxnLockTable<R>,
    graph: Arc<WaitGraph>,
    lock_timeout: Duration,
    /// The loop's clock at its last tick: when a wait began.
    now: Duration,
    /// Answers to hand out with the next tick's (from `hold_prepared`).
    pending: Vec<(R, ShardReply)>,
}

impl<R> TxnGate<R> {
    pub fn new(shard: u32) -> TxnGate<R> {
        TxnGate {
            table: TxnLockTable::new(shard),
            graph: Arc::new(WaitGraph::new()),
            lock_timeout: crate::txn_shared::LOCK_TIMEOUT_DEFAULT,
            now: Duration::ZERO,
            pending: Vec::new(),
        }
    }

    /// Shares the node's wait-for graph and sets the lock timeout.
    pub fn configure(&mut self, graph: Arc<WaitGraph>, lock_timeout: Duration) {
        self.graph = graph;
        self.lock_timeout = lock_timeout;
    }

    /// Answers the transaction lock requests among `requests` and looks at each write (see
    /// the module documentation); returns the requests that go on to the shard, in order.
    /// `leads`: whether this member leads its group (only a leader keeps locks).
    pub fn filter(
        &mut self,
        requests: Vec<ShardRequest<R>>,
        output: &mut Output<R>,
        leads: bool,
    ) -> Vec<ShardRequest<R>> {
        // The common case, no transaction anywhere near: the requests go on untouched.
        if self.table.is_empty() && !requests.iter().any(|r| concerns_transactions(&r.op)) {
            return requests;
        }
        let mut rest = Vec::with_capacity(requests.len());
        for request in requests {
            match request.op {
                // A member that does not lead forwards these to the leader, which keeps the
                // locks (`ShardCore::take`).
                ShardOp::TxnLock(_) | ShardOp::Write(_) if !leads => rest.push(request),
                ShardOp::TxnLock(op) => self.lock(op, request.reply, output),
                ShardOp::Write(ref command) => match self.admit(command) {
                    Ok(answers) => {
                        output.replies.extend(answers);
                        rest.push(request);
                    }
                    Err((code, message)) => output
                        .replies
                        .push((request.reply, ShardReply::Error(code, message))),
                },
                _ => rest.push(request),
            }
        }
        rest
    }

    fn lock(&mut self, op: TxnLockOp, reply: R, output: &mut Output<R>) {
        let answers = match op {
            TxnLockOp::Lock(ask) => self
                .table
                .acquire(ask, reply, self.now, &self.graph)
                .into_iter()
                .collect(),
            TxnLockOp::Check { txn, locks } => {
                let (answer, mut granted) = self.table.check(txn, locks, &self.graph);
                granted.push((reply, answer));
                granted
            }
            TxnLockOp::Release { txn } => {
                let mut granted = self.table.release(txn, &self.graph);
                granted.push((reply, Ok(())));
                granted
            }
        };
        output.replies.extend(
            answers
                .into_iter()
                .map(|(to, answer)| (to, reply_of(answer))),
        );
    }

    /// Whether a write may go into the batch; the answers it lets go (waiters granted when it
    /// broke a transaction's locks).
    fn admit(&mut self, command: &Command) -> Result<Vec<(R, ShardReply)>, (ErrorCode, String)> {
        let answers = match command.write() {
            // A commit or a prepare entry: proposed only while its locks are intact.
            Command::Txn {
                txn,
                locks,
                commands,
            }
            | Command::TxnPrepare {
                txn,
                locks,
                commands,
                ..
            } => {
                let prepared = matches!(command.write(), Command::TxnPrepare { .. });
                let (writes, reads) = split_steps(commands);
                let writes: Vec<&[u8]> = writes.iter().map(Vec::as_slice).collect();
                let reads: Vec<&[u8]> = reads.iter().map(Vec::as_slice).collect();
                self.table
                    .begin_commit(*txn, &writes, &reads, prepared, *locks)?;
                Vec::new()
            }
            write
                if !self.table.is_empty()
                    && (write.is_key_value_write()
                        || matches!(write, Command::Document { .. })) =>
            {
                let mut answers = Vec::new();
                for (name, _) in lock_names::of_command(write) {
                    answers.extend(self.table.outside_write(&name, &self.graph)?);
                }
                answers
            }
            _ => Vec::new(),
        };
        Ok(answers
            .into_iter()
            .map(|(to, answer)| (to, reply_of(answer)))
            .collect())
    }

    /// A transaction's commit, decision or resolution was applied here: its locks go.
    pub fn release_applied(&mut self, txn: u64, output: &mut Output<R>) {
        let answers = self.table.release(txn, &self.graph);
        output.replies.extend(
            answers
                .into_iter()
                .map(|(to, answer)| (to, reply_of(answer))),
        );
    }

    /// Takes a prepared transaction's locks again (see `TxnLockTable::hold_prepared`).
    pub fn hold_prepared(&mut self, txn: u64, keys: Vec<Vec<u8>>, deadline_ms: u64) {
        let answers = self
            .table
            .hold_prepared(txn, keys, deadline_ms, &self.graph);
        // Waiters refused or granted by it are answered at the next tick's output.
        self.pending
            .extend(answers.into_iter().map(|(to, a)| (to, reply_of(a))));
    }

    /// The loop's tick: lock timeouts, deadlock victims, expired transactions.
    pub fn tick(&mut self, now: Duration, output: &mut Output<R>) {
        self.now = now;
        output.replies.append(&mut self.pending);
        if !self.table.needs_ticks() {
            return;
        }
        let wall_ms = kvs_core::sessions::wall_clock_ms();
        let answers = self
            .table
            .tick(now, wall_ms, self.lock_timeout, &self.graph);
        output.replies.extend(
            answers
                .into_iter()
                .map(|(to, answer)| (to, reply_of(answer))),
        );
    }
}

/// Whether a request is a transaction's (a lock request, a commit or prepare entry).
fn concerns_transactions(op: &ShardOp) -> bool {
    match op {
        ShardOp::TxnLock(_) => true,
        ShardOp::Write(command) => {
            matches!(command, Command::Txn { .. } | Command::TxnPrepare { .. })
        }
        _ => false,
    }
}

/// A transaction's steps' lock names: those it writes, and those it only reads.
fn split_steps(commands: &[Command]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for (name, writes_it) in commands.iter().flat_map(lock_names::of_command) {
        if writes_it {
            writes.push(name);
        } else {
            reads.push(name);
        }
    }
    (writes, reads)
}
