//! The event-loop client: each worker thread (one per CPU the process may use, pinned) drives
//! many connections with non-blocking sockets and epoll, so the load generator spends its CPU
//! on requests rather than on thread switches. Each connection keeps a window of
//! `--pipeline` requests: it sends the window, waits for all its replies, then sends the next.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::conn::{encode, parse_reply, Protocol, WireOp};
use crate::link::BenchStream;
use crate::report::SecondRecorder;
use crate::workload::{doc_command, key_name, OpKind, Rng};
use crate::{histogram, ClientStats, Shared, SCAN_LENGTH_MAX};

/// Longest an idle worker waits in epoll before looking at the clock again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

struct Op {
    kind: OpKind,
    key: Vec<u8>,
    intended: Instant,
    /// When the reply (for a read-modify-write: of its write) arrived, and whether all went well.
    done: Option<(Instant, bool)>,
}

#[derive(PartialEq, Eq)]
enum Phase {
    /// No window in flight; the next may start at `due`.
    Idle,
    /// Waiting for the replies of the window's first requests.
    Window,
    /// Waiting for the writes of the window's read-modify-writes.
    Writes,
    /// The run is over for this connection.
    Done,
}

struct Client {
    index: u64,
    /// The shard whose leader this connection talks to, when routing (see `--addr`).
    shard: Option<u32>,
    stream: BenchStream,
    rng: Rng,
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    ops: Vec<Op>,
    /// Op index of each request in flight, by request id (native) or in send order (RESP).
    in_flight: HashMap<u64, usize>,
    order: std::collections::VecDeque<usize>,
    next_id: u64,
    sent_at: Instant,
    scheduled: u64,
    phase: Phase,
    wants_write: bool,
}

/// Runs the clients with these global indexes until the run is over.
pub fn run_worker(shared: &Shared, clients: &[u64]) -> anyhow::Result<ClientStats> {
    // SAFETY: epoll_create1 with valid flags; the fd is closed below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error().into());
    }
    let result = drive(shared, clients, epoll);
    // SAFETY: closing the fd we created.
    unsafe { libc::close(epoll) };
    result
}

fn epoll_set(epoll: i32, fd: i32, index: usize, write: bool, add: bool) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | if write { libc::EPOLLOUT } else { 0 }) as u32,
        u64: index as u64,
    };
    let op = if add {
        libc::EPOLL_CTL_ADD
    } else {
        libc::EPOLL_CTL_MOD
    };
    // SAFETY: a valid epoll fd, a valid socket fd and a live event struct.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn drive(shared: &Shared, indexes: &[u64], epoll: i32) -> anyhow::Result<ClientStats> {
    let args = &shared.args;
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.clients as f64 / rate));
    let mut stats = ClientStats {
        latency: OpKind::ALL.iter().map(|_| histogram()).collect(),
        errors: 0,
        first_error: None,
        failed_clients: 0,
        first_client_failure: None,
    };
    let mut second = SecondRecorder::new(&shared.timeline, shared.start);
    let mut clients = Vec::with_capacity(indexes.len());
    for (i, &index) in indexes.iter().enumerate() {
        let shard = shared
            .routes
            .as_ref()
            .map(|routes| (index % u64::from(routes.shard_count)) as u32);
        let addr = match (&shared.routes, shard) {
            (Some(routes), Some(shard)) => routes.leaders[shard as usize]
                .as_deref()
                .expect("routes are used only when every leader is known"),
            _ => crate::nth_addr(&args.addr, index as usize),
        };
        let tls = args.tls();
        let stream = BenchStream::connect(addr, tls.as_ref())
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.tcp().set_nonblocking(true)?;
        epoll_set(epoll, stream.tcp().as_raw_fd(), i, false, true)?;
        clients.push(Client {
            index,
            shard,
            stream,
            rng: Rng::new(args.seed.wrapping_add(index.wrapping_mul(0x9E37_79B9))),
            out: Vec::with_capacity(16 * 1024),
            written: 0,
            input: Vec::with_capacity(64 * 1024),
            ops: Vec::new(),
            in_flight: HashMap::new(),
            order: Default::default(),
            next_id: 1,
            sent_at: Instant::now(),
            scheduled: 0,
            phase: Phase::Idle,
            wants_write: false,
        });
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; clients.len().max(1)];
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        for (i, client) in clients.iter_mut().enumerate() {
            if client.phase != Phase::Idle {
                continue;
            }
            let due = interval.map(|iv| shared.start + iv.mul_f64(client.scheduled as f64));
            match due {
                Some(due) if due > now => {
                    next_due = Some(next_due.map_or(due, |d: Instant| d.min(due)))
                }
                _ => start_window(shared, client, i, epoll, interval)?,
            }
        }
        if clients.iter().all(|c| c.phase == Phase::Done) {
            break;
        }
        let timeout = next_due.map_or(POLL_INTERVAL, |due| {
            due.saturating_duration_since(now).min(POLL_INTERVAL)
        });
        // SAFETY: `events` has room for `events.len()` entries.
        let ready = unsafe {
            libc::epoll_wait(
                epoll,
                events.as_mut_ptr(),
                events.len() as i32,
                timeout.as_millis() as i32,
            )
        };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error.into());
        }
        for event in &events[..ready as usize] {
            let i = event.u64 as usize;
            let client = &mut clients[i];
            if client.phase == Phase::Done {
                continue;
            }
            let mut result = Ok(());
            if event.events & libc::EPOLLOUT as u32 != 0 {
                result = flush(client, i, epoll).map_err(anyhow::Error::from);
            }
            if result.is_ok()
                && event.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
            {
                result = receive(
                    shared,
                    client,
                    i,
                    epoll,
                    &mut chunk,
                    &mut stats,
                    &mut second,
                );
            }
            // A connection that broke leaves the run; the others go on, and the report
            // says how many broke and why.
            if let Err(error) = result {
                stats.failed_clients += 1;
                stats
                    .first_client_failure
                    .get_or_insert_with(|| format!("{error:#}"));
                client.phase = Phase::Done;
                // SAFETY: removing a registered fd from our epoll set.
                unsafe {
                    libc::epoll_ctl(
                        epoll,
                        libc::EPOLL_CTL_DEL,
                        client.stream.tcp().as_raw_fd(),
                        std::ptr::null_mut(),
                    )
                };
            }
        }
    }
    second.flush();
    Ok(stats)
}

fn start_window(
    shared: &Shared,
    client: &mut Client,
    i: usize,
    epoll: i32,
    interval: Option<Duration>,
) -> anyhow::Result<()> {
    let args = &shared.args;
    let n = shared.take(args.pipeline);
    if n == 0 {
        client.phase = Phase::Done;
        return Ok(());
    }
    client.ops.clear();
    let mut wire = Vec::with_capacity(n as usize);
    for k in 0..n {
        let kind = shared.pick_kind(&mut client.rng);
        let mut n = shared.pick(kind, &mut client.rng);
        if let (Some(shard), Some(routes)) = (client.shard, &shared.routes) {
            // Only this connection's shard's keys (a few draws; inserts take the next key).
            for _ in 0..64 {
                if kind == OpKind::Insert
                    || kvs_wire::shard_for_key(&key_name(n), routes.shard_count) == shard
                {
                    break;
                }
                n = shared.pick(kind, &mut client.rng);
            }
        }
        let key = key_name(n);
        let intended = match interval {
            Some(iv) => shared.start + iv.mul_f64((client.scheduled + k) as f64),
            None => Instant::now(),
        };
        let workload = args.workload;
        wire.push(match kind {
            _ if workload.documents() => {
                WireOp::Doc(doc_command(workload, &args.field, n, args.value_size))
            }
            OpKind::Read | OpKind::ReadModifyWrite => WireOp::Get(key.clone()),
            OpKind::Update | OpKind::Insert => WireOp::Put(key.clone(), shared.value.clone()),
            OpKind::Scan => WireOp::Scan(key.clone(), 1 + client.rng.below(SCAN_LENGTH_MAX) as u32),
            OpKind::Find => unreachable!("finds are document operations"),
        });
        client.ops.push(Op {
            kind,
            key,
            intended,
            done: None,
        });
    }
    client.scheduled += n;
    send(shared, client, i, epoll, &wire, (0..n as usize).collect())?;
    client.phase = Phase::Window;
    client.sent_at = Instant::now();
    Ok(())
}

/// Sends `wire`, whose requests belong to ops `targets`.
fn send(
    shared: &Shared,
    client: &mut Client,
    i: usize,
    epoll: i32,
    wire: &[WireOp],
    targets: Vec<usize>,
) -> io::Result<()> {
    encode(shared.args.protocol, wire, client.next_id, &mut client.out)?;
    for (k, target) in targets.into_iter().enumerate() {
        match shared.args.protocol {
            Protocol::Native => {
                client.in_flight.insert(client.next_id + k as u64, target);
            }
            Protocol::Resp => client.order.push_back(target),
        }
    }
    client.next_id += wire.len() as u64;
    flush(client, i, epoll)
}

fn flush(client: &mut Client, i: usize, epoll: i32) -> io::Result<()> {
    match client.stream.send_records() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => other?,
    }
    while client.written < client.out.len() {
        match client.stream.write(&client.out[client.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => client.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if client.written == client.out.len() {
        client.out.clear();
        client.written = 0;
    }
    let pending = !client.out.is_empty() || client.stream.has_pending();
    if pending != client.wants_write {
        epoll_set(epoll, client.stream.tcp().as_raw_fd(), i, pending, false)?;
        client.wants_write = pending;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn receive(
    shared: &Shared,
    client: &mut Client,
    i: usize,
    epoll: i32,
    chunk: &mut [u8],
    stats: &mut ClientStats,
    second: &mut SecondRecorder<'_>,
) -> anyhow::Result<()> {
    loop {
        match client.stream.read(chunk) {
            Ok(0) => anyhow::bail!("server closed connection {}", client.index),
            Ok(n) => client.input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let at = Instant::now();
    let mut used = 0;
    while let Some((id, failure, len)) = parse_reply(shared.args.protocol, &client.input[used..])? {
        let ok = failure.is_none();
        if let Some(failure) = failure {
            stats.first_error.get_or_insert(failure);
        }
        used += len;
        let target = match id {
            Some(id) => client.in_flight.remove(&id),
            None => client.order.pop_front(),
        }
        .ok_or_else(|| anyhow::anyhow!("a reply nobody asked for"))?;
        let op = &mut client.ops[target];
        let earlier_ok = op.done.is_none_or(|(_, ok)| ok);
        op.done = Some((at, ok && earlier_ok));
    }
    client.input.drain(..used);
    if !client.in_flight.is_empty() || !client.order.is_empty() {
        return Ok(());
    }
    // The window's first requests are all answered: send the writes of its read-modify-writes.
    if client.phase == Phase::Window {
        let rmw: Vec<usize> = (0..client.ops.len())
            .filter(|&k| client.ops[k].kind == OpKind::ReadModifyWrite)
            .collect();
        if !rmw.is_empty() {
            let wire: Vec<WireOp> = rmw
                .iter()
                .map(|&k| WireOp::Put(client.ops[k].key.clone(), shared.value.clone()))
                .collect();
            client.phase = Phase::Writes;
            return Ok(send(shared, client, i, epoll, &wire, rmw)?);
        }
    }
    let closed_loop = shared.args.rate.is_none();
    for op in &client.ops {
        let Some((done_at, ok)) = op.done else {
            continue;
        };
        if !ok {
            stats.errors += 1;
            continue;
        }
        let from = if closed_loop {
            client.sent_at
        } else {
            op.intended
        };
        let micros = done_at.saturating_duration_since(from).as_micros().max(1) as u64;
        stats.latency[op.kind.index()].saturating_record(micros);
        second.record(done_at, micros);
    }
    shared.completed.fetch_add(
        client.ops.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    client.phase = Phase::Idle;
    Ok(())
}
