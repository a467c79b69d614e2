//! Starting and stopping a node: the data directory, one pinned executor per shard, the
//! cross-core channel mesh, the shard loops and the listeners.
//!
//! The data directory's layout and checks are in `data_dir.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Instant;

use anyhow::{bail, Context as _};
use kvs_core::log::GroupWritten;
use kvs_core::store::{PagedStore, StoreConfig};

use crate::cluster::forwarding::Forwarding;
use crate::cluster::node_links::{
    peer_accept_loop, CoreCluster, CoreLinks, LeaderWatch, PeerHandoff,
};
use crate::cluster::snapshot_send::SnapshotTransfers;
use crate::cluster::transport::{Links, LocalNode};
use crate::config::Config;
use crate::data_dir::{allowed_cpus, DataDir};
use crate::driver::{CheckpointPolicy, ShardDriver, Wake};
use crate::log_io::{DmaDisk, DmaLogFile};
use crate::metrics::{self, CoreMetrics, NodeMetrics};
use crate::operate::{self, Operator};
use crate::peer::Membership;
use crate::route::{CoreContext, RemoteReply, RemoteRequest, ReplyTo, ShardQueue};
use crate::runtime::{
    cross_core_channel, round_micros, spawn_executor, spawn_local, wait, JoinHandle, Receiver,
    Sender, TcpListener, TcpStream,
};
use crate::scan_cursors::ScanCursors;
use crate::server::serve_connection;
use crate::shard::{DiskReads, Output, ShardCore, ShardRequest};
use crate::shard_reads::read_from;
use crate::spread::{ConnectionCounts, ConnectionSlot};

/// Capacity of each cross-core channel, in messages.
const CROSS_CORE_CHANNEL_CAPACITY: usize = 16 * 1024;
/// Accepted connections that may wait for another core to take them.
const HANDOFF_CHANNEL_CAPACITY: usize = 1024;
/// How often an executor looks at the process-wide stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How long a stopping node waits for clients to take their last replies.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long start-up waits for a listen address that is still in use.
const BIND_RETRY_FOR: Duration = Duration::from_secs(5);

type Store = PagedStore<DmaLogFile>;

/// Everything one core needs, moved into its executor.
struct CoreSetup {
    core: usize,
    shard_count: u32,
    cpu: Option<usize>,
    shard_dir: PathBuf,
    store: StoreConfig,
    checkpoint: CheckpointPolicy,
    listener: TcpListener,
    resp_listener: Option<TcpListener>,
    request_senders: Vec<Option<Sender<RemoteRequest>>>,
    request_receivers: Vec<Receiver<RemoteRequest>>,
    reply_senders: Vec<Option<Sender<RemoteReply>>>,
    reply_receivers: Vec<Receiver<RemoteReply>>,
    /// Accepted connections handed to every other core, and this core's receivers of them.
    handoff_senders: Vec<Option<Sender<Handoff>>>,
    handoff_receivers: Vec<Receiver<Handoff>>,
    stop: Arc<AtomicBool>,
    metrics: Arc<CoreMetrics>,
    /// `--archive-dir`.
    archive_dir: Option<PathBuf>,
    connection_counts: Arc<ConnectionCounts>,
    scan_cursors: Arc<ScanCursors>,
    transactions: Arc<crate::txn_shared::Transactions>,
    auth: Arc<crate::auth::Auth>,
    tls: Option<Arc<crate::tls::Tls>>,
    limits: crate::config::ConnectionLimits,
    ready: mpsc::Sender<Result<(), String>>,
    /// Whether to serve, once every shard has opened ([`START_SERVE`]), or to stop because
    /// one failed to ([`START_ABORT`]): a node never serves some shards while others failed.
    start: Arc<AtomicU8>,
    /// Raft's tick (the heartbeat interval): election timeouts are counted in these.
    tick: Duration,
    membership: Membership,
    /// Set for a node of a cluster.
    cluster: Option<CoreCluster>,
    /// `--read-consistency stale`.
    stale_reads: bool,
}

const START_WAIT: u8 = 0;
const START_SERVE: u8 = 1;
const START_ABORT: u8 = 2;

/// Runs a node until `stop` is set; returns once every shard has stopped.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    // Each address is bound once, here, and every executor accepts on a duplicate of that
    // socket: the port is this process's alone (see `runtime::net::TcpListener`). Both are
    // bound before either is used, so the two listeners cannot end up on one port.
    // After a kill -9 the old process's io_uring may hold its listening socket for a moment
    // after the process is gone (the ring is torn down asynchronously): retry briefly.
    let bind = |addr: SocketAddr| {
        let deadline = std::time::Instant::now() + BIND_RETRY_FOR;
        loop {
            match TcpListener::bind(addr) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                result => return result.with_context(|| format!("cannot listen on {addr}")),
            }
        }
    };
    if config.resp_listen == Some(config.listen) && config.listen.port() != 0 {
        bail!(
            "cannot listen on {} twice: --listen and --resp-listen must differ",
            config.listen
        );
    }
    let native_listener = bind(config.listen)?;
    let resp_listener = config.resp_listen.map(bind).transpose()?;
    let mut peer_listener = config
        .cluster
        .as_ref()
        .map(|c| bind(c.peer_listen))
        .transpose()?;
    let listen = native_listener.local_addr()?;
    let resp_listen = resp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let metrics_listener = (config.metrics_listen)
        .map(|a| operate::bind(a).with_context(|| format!("cannot listen on {a}")))
        .transpose()?;
    // Only now the data directory: a start that cannot listen leaves nothing behind.
    let data_dir = DataDir::open(&config.data_dir, config.shards, config.cluster.as_ref())?;
    let shard_count = data_dir.shards;
    let n = shard_count as usize;
    // Election timeout in ticks, drawn from [t, 2t) after each reset.
    let ticks = (config.election_timeout.as_millis() / config.heartbeat_interval.as_millis().max(1))
        .max(3) as usize;
    let membership = match &data_dir.cluster {
        None => Membership::single(),
        Some(identity) => {
            if peer_listener.is_none() {
                // Restarted without --initial-cluster: listen where the members list it.
                let (_, addr) = identity
                    .members
                    .iter()
                    .find(|(id, _)| *id == identity.node_id)
                    .expect("a data directory's node is one of its members");
                peer_listener = Some(bind(*addr)?);
            }
            Membership {
                election_ticks: (ticks, 2 * ticks),
                // Half the shortest election timeout (ADR 0019); every member is started
                // with the same timeout.
                read_lease: if config.read_lease {
                    config.heartbeat_interval * ticks as u32 / 2
                } else {
                    Duration::ZERO
                },
                ..Membership::of(
                    identity.node_id,
                    identity.members.iter().map(|(id, _)| *id).collect(),
                )
            }
        }
    };
    let leaders = Arc::new(LeaderWatch {
        known: (0..n).map(|_| AtomicBool::new(false)).collect(),
        announced: AtomicBool::new(false),
    });
    let peer_security = Arc::new(
        crate::cluster::peer_security::PeerSecurity::load(config.peer_security.clone())
            .map_err(anyhow::Error::msg)?,
    );
    let mut core_clusters: Vec<Option<CoreCluster>> = Vec::with_capacity(n);
    for _ in 0..n {
        let cluster = match (&data_dir.cluster, &peer_listener) {
            (Some(identity), Some(listener)) => Some(CoreCluster {
                local: LocalNode {
                    cluster_id: identity.cluster_id,
                    node_id: identity.node_id,
                    shard_count,
                    client_addr: listen.to_string(),
                    resp_addr: resp_listen.map(|a| a.to_string()).unwrap_or_default(),
                    peer_addr: listener.local_addr()?.to_string(),
                },
                members: identity.members.clone(),
                security: Arc::clone(&peer_security),
                peer_listener: listener.try_clone()?,
                handoff_senders: (0..n).map(|_| None).collect(),
                handoff_receivers: Vec::new(),
                leaders: Arc::clone(&leaders),
                snapshot_rate: config.snapshot_rate,
            }),
            _ => None,
        };
        core_clusters.push(cluster);
    }
    drop(peer_listener);
    for from in 0..n {
        for to in 0..n {
            if from != to && core_clusters[from].is_some() {
                let (sender, receiver) = cross_core_channel(HANDOFF_CHANNEL_CAPACITY);
                core_clusters[from]
                    .as_mut()
                    .expect("checked")
                    .handoff_senders[to] = Some(sender);
                core_clusters[to]
                    .as_mut()
                    .expect("every core")
                    .handoff_receivers
                    .push(receiver);
            }
        }
    }

    let cpus = allowed_cpus();
    let connection_counts = Arc::new(ConnectionCounts::new(n));
    let node_metrics = Arc::new(NodeMetrics::new(n));
    let operator = Operator::start(
        metrics_listener,
        Arc::clone(&node_metrics),
        Arc::clone(&stop),
        data_dir.cluster.is_some().then(|| Arc::clone(&leaders)),
        Arc::clone(&connection_counts),
        config.data_dir.clone(),
    )?;
    let metrics_addr = operator.address().map_or("off".into(), |a| a.to_string());
    let scan_cursors = Arc::new(ScanCursors::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    ));
    let transactions = Arc::new(
        crate::txn_shared::Transactions::new(
            data_dir.cluster.as_ref().map_or(1, |c| c.node_id),
            config.lock_timeout,
            config.txn_timeout,
        )
        .with_snapshot_max_age(config.txn_max_age),
    );
    let auth = Arc::new(match &config.users_file {
        Some(path) => crate::auth::Auth::required(path).map_err(anyhow::Error::msg)?,
        None => crate::auth::Auth::off(),
    });
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            crate::tls::Tls::load(files.clone()).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    crate::sighup::reload_on_sighup(Arc::clone(&auth), tls.clone(), peer_security);
    let (ready_sender, ready) = mpsc::channel();
    let start = Arc::new(AtomicU8::new(START_WAIT));
    // Every core gets a handle on each listening socket; the last takes the originals.
    let mut core_listeners = Vec::with_capacity(n);
    for _ in 1..n {
        let resp = resp_listener.as_ref().map(TcpListener::try_clone);
        core_listeners.push((native_listener.try_clone()?, resp.transpose()?));
    }
    core_listeners.push((native_listener, resp_listener));
    let mut setups: Vec<CoreSetup> = (0..n)
        .zip(core_listeners)
        .zip(core_clusters)
        .map(|((core, (listener, resp_listener)), cluster)| CoreSetup {
            tick: config.heartbeat_interval,
            stale_reads: config.stale_reads,
            membership: membership.clone(),
            cluster,
            core,
            shard_count,
            cpu: if cpus.is_empty() {
                None
            } else {
                Some(cpus[core % cpus.len()])
            },
            shard_dir: data_dir.shard_dir(core as u32),
            store: StoreConfig::from_bytes(config.cache_per_shard(shard_count)),
            checkpoint: CheckpointPolicy {
                interval: config.checkpoint_interval,
                log_size: config.checkpoint_log_size,
                rate: config.checkpoint_rate,
            },
            listener,
            resp_listener,
            request_senders: (0..n).map(|_| None).collect(),
            request_receivers: Vec::new(),
            reply_senders: (0..n).map(|_| None).collect(),
            reply_receivers: Vec::new(),
            handoff_senders: (0..n).map(|_| None).collect(),
            handoff_receivers: Vec::new(),
            stop: Arc::clone(&stop),
            metrics: Arc::clone(&node_metrics.cores[core]),
            archive_dir: config.archive_dir.clone(),
            connection_counts: Arc::clone(&connection_counts),
            scan_cursors: Arc::clone(&scan_cursors),
            transactions: Arc::clone(&transactions),
            auth: Arc::clone(&auth),
            tls: tls.clone(),
            limits: config.limits,
            ready: ready_sender.clone(),
            start: Arc::clone(&start),
        })
        .collect();
    drop(ready_sender);
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (sender, receiver) = cross_core_channel(CROSS_CORE_CHANNEL_CAPACITY);
                setups[from].request_senders[to] = Some(sender);
                setups[to].request_receivers.push(receiver);
                let (sender, receiver) = cross_core_channel(CROSS_CORE_CHANNEL_CAPACITY);
                setups[to].reply_senders[from] = Some(sender);
                setups[from].reply_receivers.push(receiver);
                let (sender, receiver) = cross_core_channel(HANDOFF_CHANNEL_CAPACITY);
                setups[from].handoff_senders[to] = Some(sender);
                setups[to].handoff_receivers.push(receiver);
            }
        }
    }

    let mut executors = Vec::with_capacity(n);
    for setup in setups {
        let name = format!("shard-{}", setup.core);
        let cpu = setup.cpu;
        executors.push(spawn_executor(&name, cpu, move || core_main(setup))?);
    }
    let mut failure = None;
    for _ in 0..n {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                failure.get_or_insert(message);
            }
            Err(_) => {
                failure.get_or_insert("a shard executor exited during start-up".into());
            }
        }
        if failure.is_some() {
            break;
        }
    }
    if failure.is_some() {
        // No shard has served: every core waits for all of them to open.
        start.store(START_ABORT, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
    } else {
        start.store(START_SERVE, Ordering::SeqCst);
        let resp = resp_listen.map_or_else(|| "off".to_string(), |a| a.to_string());
        let cache_mib = config.cache_per_shard(shard_count) >> 20;
        tracing::info!(%listen, %resp, metrics = %metrics_addr, shards = shard_count, cache_mib_per_shard = cache_mib, data_dir = %config.data_dir.display(), "kvsd is ready");
        operator.serving(&format!("serving on {listen}, {shard_count} shards"));
    }
    for executor in executors {
        if let Err(e) = executor.join() {
            failure.get_or_insert(format!("shard executor failed: {e}"));
        }
    }
    operator.finish();
    match failure {
        Some(message) => bail!(message),
        None => Ok(()),
    }
}

/// One core: recover its shard, connect to the other cores, serve until stopped.
async fn core_main(setup: CoreSetup) {
    let core = setup.core;
    metrics::set_current(Arc::clone(&setup.metrics));
    let shard = match open_shard(&setup).await {
        Ok(shard) => shard,
        Err(message) => {
            let _ = setup.ready.send(Err(message));
            return;
        }
    };

    let queue = Rc::new(ShardQueue::default());
    let ctx = Rc::new(
        CoreContext::new(
            core,
            setup.shard_count,
            Rc::clone(&queue),
            setup.request_senders,
            setup.reply_senders,
            Arc::clone(&setup.connection_counts),
            Arc::clone(&setup.scan_cursors),
        )
        .with_transactions(Arc::clone(&setup.transactions))
        .with_auth(Arc::clone(&setup.auth))
        .with_tls(setup.tls.clone())
        .with_limits(setup.limits),
    );
    for receiver in setup.request_receivers {
        let queue = Rc::clone(&queue);
        on_each(receiver, move |request: RemoteRequest| {
            let reply = ReplyTo::Remote {
                core: request.from,
                token: request.token,
            };
            queue.push(crate::shard::ShardRequest {
                op: request.op,
                reply,
                origin: request.origin,
            });
        });
    }
    for receiver in setup.reply_receivers {
        let ctx = Rc::clone(&ctx);
        on_each(receiver, move |reply| ctx.deliver_remote(reply));
    }
    for receiver in setup.handoff_receivers {
        let ctx = Rc::clone(&ctx);
        on_each(receiver, move |handoff| serve(&ctx, handoff));
    }
    let cluster = setup.cluster.map(|cluster| {
        let wake = Rc::clone(&queue);
        let links = Rc::new(Links::new(
            core as u32,
            cluster.local,
            &cluster.members,
            cluster.security,
            Box::new(move || {
                wake.notify.notify();
                wake.read_arrived.notify();
            }),
        ));
        for receiver in cluster.handoff_receivers {
            let links = Rc::clone(&links);
            on_each(receiver, move |link: PeerHandoff| {
                let serve = Rc::clone(&links).serve_incoming(
                    link.stream,
                    link.hello,
                    link.buffer,
                    link.filled,
                );
                spawn_local(serve).detach();
            });
        }
        let senders = Rc::new(cluster.handoff_senders);
        let answers = Rc::clone(&links);
        let answer = move |node, id, reply| answers.answer(node, id, reply);
        if ctx.peer_answers.set(Box::new(answer)).is_err() {
            unreachable!("a core's answers are set once");
        }
        let members: Vec<u64> = cluster.members.iter().map(|(id, _)| *id).collect();
        let core_links = CoreLinks {
            forwarding: Forwarding::new(Rc::clone(&links), &members),
            links,
            leaders: cluster.leaders,
            snapshots: Rc::new(SnapshotTransfers::new(cluster.snapshot_rate)),
        };
        (core_links, cluster.peer_listener, senders)
    });
    let handoff_senders = Rc::new(setup.handoff_senders);
    let mut listeners = vec![(setup.listener, Protocol::Native)];
    if let Some(listener) = setup.resp_listener {
        listeners.push((listener, Protocol::Resp));
    }
    {
        let ctx = Rc::clone(&ctx);
        let stop = Arc::clone(&setup.stop);
        spawn_local(async move {
            while !stop.load(Ordering::SeqCst) {
                wait(STOP_POLL).await;
            }
            // Other cores stop handing this one connections (a few may still be on their
            // way: they are closed unserved).
            ctx.connection_counts.set_serving(core, false);
            ctx.stop_connections();
            ctx.queue.notify.notify();
            // Connections whose peers do not read their replies would hold the stop up
            // for ever: after a grace period, cut them.
            wait(STOP_GRACE).await;
            if ctx.connection_counts.open() > 0 {
                tracing::warn!(
                    core,
                    "closing connections whose clients did not take their replies"
                );
                ctx.force_close_connections();
            }
        })
        .detach();
    }
    let tick_due = Rc::new(std::cell::Cell::new(false));
    {
        let tick = setup.tick;
        let (ctx, tick_due) = (Rc::clone(&ctx), Rc::clone(&tick_due));
        spawn_local(async move {
            while !ctx.stopping.get() {
                wait(tick).await;
                tick_due.set(true);
                ctx.queue.notify.notify();
                ctx.queue.read_arrived.notify();
            }
        })
        .detach();
    }
    // Other cores hand this one connections from now on: it has recovered and takes them.
    ctx.connection_counts.set_serving(core, true);
    // No core accepts until every shard has opened.
    let _ = setup.ready.send(Ok(()));
    loop {
        match setup.start.load(Ordering::SeqCst) {
            START_WAIT => wait(STOP_POLL).await,
            START_SERVE => break,
            _ => {
                ctx.connection_counts.set_serving(core, false);
                return;
            }
        }
    }
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|(listener, protocol)| {
            let senders = Rc::clone(&handoff_senders);
            spawn_local(accept_loop(Rc::clone(&ctx), senders, listener, protocol))
        })
        .collect();
    tracing::debug!(core, "shard serving");
    let peer_acceptor = cluster.as_ref().map(|(core_links, listener, senders)| {
        let links = &core_links.links;
        links.start();
        let listener = listener.try_clone().expect("a peer listener handle");
        spawn_local(peer_accept_loop(
            Rc::clone(&ctx),
            Rc::clone(links),
            listener,
            Rc::clone(senders),
        ))
    });

    let current_store = Rc::new(RefCell::new(Rc::clone(shard.store())));
    let failed = Rc::new(Cell::new(false));
    spawn_local(crate::checkpoint_task::checkpoint_loop(
        Rc::clone(&ctx),
        Rc::clone(&current_store),
        Rc::clone(&failed),
        setup.checkpoint,
    ))
    .detach();
    if let Some(timeout) = ctx.limits.idle_timeout {
        spawn_local(idle_sweeper(Rc::clone(&ctx), timeout)).detach();
    }
    spawn_local(crate::documents::build_indexes(
        Rc::clone(&ctx),
        Rc::clone(&current_store),
    ))
    .detach();
    let mut shard = shard;
    shard.set_forwarding(cluster.is_some());
    shard.set_stale_reads(setup.stale_reads);
    let core_links = cluster.as_ref().map(|(core_links, _, _)| core_links);
    shard_loop(&ctx, shard, &tick_due, &current_store, &failed, core_links).await;
    for acceptor in acceptors {
        acceptor.await;
    }
    if let Some((core_links, ..)) = &cluster {
        core_links.links.stop();
    }
    if let Some(acceptor) = peer_acceptor {
        acceptor.await;
    }
    ctx.connection_counts.set_serving(core, false);
    tracing::info!(core, "shard stopped");
}

async fn open_shard(setup: &CoreSetup) -> Result<ShardCore<DmaDisk, ReplyTo>, String> {
    let disk = DmaDisk::new(&setup.shard_dir)
        .map_err(|e| format!("cannot create {}: {e}", setup.shard_dir.display()))?;
    let started = std::time::Instant::now();
    let shard = ShardCore::open_member(
        disk,
        setup.core as u32,
        setup.store,
        setup.membership.clone(),
    )
    .await
    .map_err(|e| format!("shard {} cannot start: {e}", setup.core))?;
    let mut shard = shard;
    shard.set_clock(
        Arc::clone(&setup.transactions.clock),
        setup.transactions.snapshot_max_age,
    );
    if let Some(dir) = &setup.archive_dir {
        let archive = crate::archive::DirArchive::new(dir)
            .map_err(|e| format!("cannot create the archive {}: {e}", dir.display()))?;
        shard.set_archive(Rc::new(archive));
    }
    let info = shard.info();
    tracing::info!(
        shard = setup.core,
        keys = info.keys,
        checkpoint_index = info.checkpoint_index,
        last_index = info.last_index,
        log_bytes = info.log_size_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shard recovered"
    );
    Ok(shard)
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Native,
    Resp,
}

/// Runs `each` on every message another core sends over `receiver`, until that core is gone.
fn on_each<T: 'static>(receiver: Receiver<T>, mut each: impl FnMut(T) + 'static) {
    spawn_local(async move {
        let mut batch = Vec::new();
        loop {
            receiver.recv_all(&mut batch).await;
            if batch.is_empty() {
                break;
            }
            for item in batch.drain(..) {
                each(item);
            }
        }
    })
    .detach();
}

/// An accepted connection on its way to the core that serves it.
struct Handoff {
    stream: TcpStream,
    protocol: Protocol,
    /// Counted on the core it goes to; dropping it (with the stream) counts it out.
    slot: ConnectionSlot,
}

/// Serves a connection this core was chosen for; one that arrives while the node stops is
/// closed instead (dropped, with its slot).
fn serve(ctx: &Rc<CoreContext>, handoff: Handoff) {
    if ctx.stopping.get() {
        return;
    }
    let ctx = Rc::clone(ctx);
    let Handoff {
        stream,
        protocol,
        slot,
    } = handoff;
    match protocol {
        Protocol::Native => spawn_local(serve_connection(ctx, stream, slot)).detach(),
        Protocol::Resp => {
            spawn_local(crate::resp_server::serve_connection(ctx, stream, slot)).detach()
        }
    }
}

/// Accepts connections on this core's handle of a listening socket (every core waits on the
/// same socket) and spreads them: each goes to the core serving the fewest.
async fn accept_loop(
    ctx: Rc<CoreContext>,
    handoff_senders: Rc<Vec<Option<Sender<Handoff>>>>,
    listener: TcpListener,
    protocol: Protocol,
) {
    loop {
        match ctx.accept_unless_stopping(&listener).await {
            None => break,
            Some(Ok(stream)) => {
                let counts = &ctx.connection_counts;
                if counts.open() >= ctx.limits.max_connections {
                    let resp = matches!(protocol, Protocol::Resp);
                    spawn_local(crate::server::refuse_connection(stream, resp)).detach();
                    continue;
                }
                let core = counts.least_loaded(ctx.core);
                let slot = ConnectionSlot::new(counts, core);
                let handoff = Handoff {
                    stream,
                    protocol,
                    slot,
                };
                match handoff_senders.get(core).and_then(Option::as_ref) {
                    None => serve(&ctx, handoff),
                    Some(sender) => {
                        if let Err(mut handoff) = sender.send(handoff).await {
                            // That core has stopped: serve here instead.
                            handoff.slot.move_to(ctx.core);
                            serve(&ctx, handoff);
                        }
                    }
                }
            }
            Some(Err(error)) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                wait(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Closes this core's client connections that stood still past `--idle-timeout`, looking a
/// few times per timeout, until the node stops.
async fn idle_sweeper(ctx: Rc<CoreContext>, timeout: Duration) {
    let mut seen = std::collections::HashMap::new();
    let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    while !ctx.stopping.get() {
        wait(every).await;
        ctx.close_idle(&mut seen, timeout);
    }
}

/// Drives the shard: an event loop over arriving requests, completed group writes and Raft
/// ticks, with no step that waits for the disk; the decisions are `driver::ShardDriver`'s.
/// Group writes run as tasks of their own and are reported in log order.
async fn shard_loop(
    ctx: &Rc<CoreContext>,
    shard: ShardCore<DmaDisk, ReplyTo>,
    tick_due: &Cell<bool>,
    current_store: &Rc<RefCell<Rc<Store>>>,
    failed: &Cell<bool>,
    cluster: Option<&CoreLinks>,
) {
    let forwarding = cluster.map(|c| &c.forwarding);
    let started = Instant::now();
    let mut last_leader: Option<u64> = None;
    let mut last_gossip = Instant::now();
    let overdue = crate::txn_commit::Overdue::default();
    let disk_reads = shard.disk_reads();
    let mut driver = ShardDriver::new(shard);
    crate::txn_commit::hold_and_recover(ctx, &mut driver).await;
    if cluster.is_none() {
        crate::local_reads::serve(ctx, current_store, driver.shard().is_replicated());
    }
    // Group writes in flight, oldest first: reported to the driver in this order.
    let mut in_flight: VecDeque<JoinHandle<GroupWritten>> = VecDeque::new();
    loop {
        let ticked = tick_due.replace(false);
        if ticked {
            metrics::with_current(|m| m.publish_if_wanted(|| driver.shard().info()));
        }
        if ticked && driver.tick(started.elapsed()).await {
            *current_store.borrow_mut() = Rc::clone(driver.shard().store());
        }
        if ticked {
            overdue.look(ctx, &driver).await;
        }
        if let Some(cluster) = cluster {
            let links = &cluster.links;
            for (node, addr) in links.take_learned() {
                driver.shard_mut().set_node_addr(node, addr);
            }
            for (from, chunk) in links.take_snapshot_chunks() {
                driver.shard_mut().receive_snapshot_chunk(from, chunk).await;
            }
            for (to, whole) in cluster.snapshots.take_ended() {
                driver.shard_mut().snapshot_ended(to, whole);
            }
            if ticked {
                crate::txn_commit::gossip_waits(ctx, links, &mut last_gossip);
            }
            let inbox = links.take_inbox();
            if !inbox.is_empty() {
                let out = driver.step(inbox);
                deliver(ctx, current_store, &disk_reads, out, forwarding).await;
            }
            let requests = cluster.forwarding.take_requests();
            if !requests.is_empty() {
                ctx.queue.items.borrow_mut().extend(requests);
            }
            let mut answers = cluster.forwarding.take_answers();
            answers.extend(cluster.forwarding.fail_unreachable());
            if ticked {
                answers.extend(cluster.forwarding.expire(Instant::now()));
                let (cluster_id, nodes) = links.view();
                driver.shard_mut().set_cluster_view(cluster_id, nodes);
            }
            for (to, reply) in answers {
                ctx.reply(to, reply).await;
            }
        }
        // Groups already written, in log order (a busy loop must not wait to see them).
        while let Some(oldest) = in_flight.front_mut() {
            let Some(written) = futures_lite::future::poll_once(oldest).await else {
                break;
            };
            in_flight.pop_front();
            group_written(
                ctx,
                current_store,
                &mut driver,
                &mut in_flight,
                written,
                forwarding,
            )
            .await;
        }
        if driver.shard().wants_entries() {
            // A follower needs entries no longer in memory: read back before the ready that
            // sends them.
            driver.shard_mut().fetch_entries().await;
        }
        let ready = driver.run_ready().await;
        for write in ready.writes {
            in_flight.push_back(spawn_local(async move {
                let issued = round_micros();
                let written = write.write().await;
                let micros = round_micros().wrapping_sub(issued);
                metrics::with_current(|m| m.log_sync.record(micros.into()));
                written
            }));
        }
        if !Rc::ptr_eq(&current_store.borrow(), driver.shard().store()) {
            // A snapshot was installed: the shard has a new store.
            *current_store.borrow_mut() = Rc::clone(driver.shard().store());
        }
        if let Some(CoreLinks {
            links,
            leaders,
            snapshots,
            ..
        }) = cluster
        {
            // A leader's appends leave before its own write completes; a follower's replies
            // once what they answer is persisted (the peer holds them until then).
            let group = u64::from(ctx.core as u32);
            for message in driver.shard_mut().take_messages() {
                if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                    // Its checkpoint goes first, in chunks (ADR 0017).
                    snapshots.start(links, group, driver.shard().store(), message);
                } else {
                    links.send(group, message);
                }
            }
            let leader = driver.shard().leader();
            if leader != last_leader {
                metrics::with_current(|m| m.leader_changes.add(1));
                if let Some(old) = last_leader {
                    for (to, reply) in forwarding.map_or_else(Vec::new, |f| f.leader_changed(old)) {
                        ctx.reply(to, reply).await;
                    }
                }
                last_leader = leader;
                leaders.set(ctx.core, leader.is_some());
                if leader == Some(ctx.transactions.node_id) {
                    crate::txn_commit::hold_prepared_on_leading(&mut driver).await;
                }
            }
        }
        deliver(ctx, current_store, &disk_reads, ready.output, forwarding).await;
        // The queue is shared with this core's connections: borrowed only while nothing waits.
        let taken = driver.take_requests(&mut ctx.queue.items.borrow_mut());
        deliver(ctx, current_store, &disk_reads, taken.output, forwarding).await;
        failed.set(driver.shard().failed());
        if taken.took {
            continue;
        }
        if ctx.stopping.get()
            && ctx.connection_counts.open() == 0
            && driver.is_idle()
            && ctx.queue.items.borrow().is_empty()
        {
            break;
        }
        // Wait for a request (only a read while writes wait for the group in flight), a
        // group's write, or a tick.
        let arrived = match driver.wake() {
            Wake::AnyRequest => ctx.queue.notify.notified(),
            Wake::Read => ctx.queue.read_arrived.notified(),
        };
        if driver.has_work(&ctx.queue.items.borrow())
            || tick_due.get()
            || cluster.is_some_and(|c| c.links.has_inbox())
            || driver.shard().wants_entries()
        {
            continue;
        }
        let written = match in_flight.front_mut() {
            Some(oldest) => {
                let request = async {
                    arrived.await;
                    None
                };
                futures_lite::future::or(async { Some(oldest.await) }, request).await
            }
            None if ctx.stopping.get() => {
                // Other cores' connections may still send work: look again shortly.
                futures_lite::future::or(arrived, wait(STOP_POLL)).await;
                None
            }
            None => {
                arrived.await;
                None
            }
        };
        driver.woken();
        if let Some(written) = written {
            in_flight.pop_front();
            group_written(
                ctx,
                current_store,
                &mut driver,
                &mut in_flight,
                written,
                forwarding,
            )
            .await;
        }
    }
    // A checkpoint on the way out makes the next start-up quick.
    let shard = driver.shard_mut();
    if !shard.failed() {
        match shard
            .store()
            .checkpoint(None::<fn(usize) -> std::future::Ready<()>>)
            .await
        {
            Ok(_) => shard.trim_log().await,
            Err(error) => tracing::warn!(core = ctx.core, %error, "final checkpoint failed"),
        }
    }
}

/// Reports the oldest group's write to the driver. If the write path failed, the failed
/// peer's later groups are waited for (their outcome no longer matters) before the shard may
/// reopen its log.
async fn group_written(
    ctx: &Rc<CoreContext>,
    current_store: &RefCell<Rc<Store>>,
    driver: &mut ShardDriver<DmaDisk, ReplyTo>,
    in_flight: &mut VecDeque<JoinHandle<GroupWritten>>,
    written: GroupWritten,
    forwarding: Option<&Forwarding>,
) {
    let out = driver.written(written);
    deliver(
        ctx,
        current_store,
        &driver.shard().disk_reads(),
        out,
        forwarding,
    )
    .await;
    if driver.shard().failed() {
        while let Some(oldest) = in_flight.pop_front() {
            let written = oldest.await;
            let _ = driver.written(written);
        }
    }
}

/// Sends a step's replies, and starts its deferred reads in tasks of their own.
async fn deliver(
    ctx: &Rc<CoreContext>,
    current_store: &RefCell<Rc<Store>>,
    disk_reads: &DiskReads,
    output: Output<ReplyTo>,
    forwarding: Option<&Forwarding>,
) {
    for request in output.deferred {
        read_in_task(ctx, &current_store.borrow(), disk_reads, request);
    }
    for (to, reply) in output.replies {
        ctx.reply(to, reply).await;
    }
    for (node, request) in output.forwards {
        let forwarding = forwarding.expect("only a node of a cluster forwards");
        if let Some((to, reply)) = forwarding.send(node, request) {
            ctx.reply(to, reply).await;
        }
    }
}

/// Answers a read in a task of its own, from the disk if need be; then reports it finished to
/// `disk_reads` (the shard counted it) and wakes the shard loop, whose connection's next write
/// may be waiting for it.
fn read_in_task(
    ctx: &Rc<CoreContext>,
    store: &Rc<Store>,
    disk_reads: &DiskReads,
    request: ShardRequest<ReplyTo>,
) {
    let store = Rc::clone(store);
    let ctx = Rc::clone(ctx);
    let disk_reads = disk_reads.clone();
    spawn_local(async move {
        let reply = read_from(&store, ctx.core as u32, &request.op).await;
        disk_reads.finish(request.origin);
        ctx.queue.notify.notify();
        ctx.reply(request.reply, reply).await;
    })
    .detach();
}
