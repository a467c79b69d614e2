//! `kvs-bench`: a load generator for kvsd and any Redis-protocol server.
//!
//! Clients are connections driven by event-loop workers, one per CPU the process may use and
//! pinned to it (so `taskset -c 1 kvs-bench ...` keeps the whole client on core 1). Each
//! connection sends a window of `--pipeline` requests in one write and waits for their
//! replies before the next window. Closed loop by default; with `--rate` an open loop, where every request has an
//! intended send time and its latency is measured from that time, so a stalled server shows
//! up in the latencies instead of silently slowing the client (no coordinated omission).
//!
//! It talks to kvsd only through `kvs-wire` (the native codec or RESP).

mod conn;
mod driver;
mod link;
mod report;
mod txn_bench;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;

use conn::{BenchConn, Protocol, WireOp};
use report::{Report, Timeline};
use workload::{doc_json, key_name, Distribution, OpKind, Rng, Workload, Zipfian, DOC_COLLECTION};

/// Longest scan a scan operation asks for (YCSB's default maximum scan length).
pub(crate) const SCAN_LENGTH_MAX: u64 = 100;
/// Pipeline depth of the load phase, whatever `--pipeline` says.
const LOAD_PIPELINE: usize = 64;
/// Documents the load phase inserts per request, and per round trip.
const LOAD_DOCS_PER_INSERT: usize = 128;
const LOAD_DOCS_PER_ROUND_TRIP: usize = 1024;

#[derive(Parser, Debug)]
#[command(
    name = "kvs-bench",
    about = "Load generator for kvsd and Redis-protocol servers",
    version
)]
struct Args {
    /// The server, or several nodes of a cluster, comma-separated. With several, the
    /// native protocol's connections each serve one shard and go to its leader (learned
    /// from INFO), drawing only that shard's keys, as a cluster-aware client sends each key
    /// to its leader (inserts and document workloads excepted); otherwise connection i goes
    /// to the i-th address modulo their count.
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: String,
    #[arg(long, value_enum, default_value = "native")]
    protocol: Protocol,
    #[arg(long, value_enum, default_value = "ycsb-a")]
    workload: Workload,
    /// Keys loaded before the run, and the key space the run draws from.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Concurrent connections (one thread each).
    #[arg(long, default_value_t = 16)]
    clients: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: u64,
    /// Run for this many seconds...
    #[arg(long, conflicts_with = "ops")]
    duration: Option<f64>,
    /// ...or for this many operations (default: 100000 when neither is given).
    #[arg(long)]
    ops: Option<u64>,
    /// Open loop at this many operations per second in total.
    #[arg(long)]
    rate: Option<f64>,
    /// Key distribution (default: the workload's own).
    #[arg(long, value_enum)]
    distribution: Option<Distribution>,
    /// The field the document finds query: `n` or `m` hold the same values, so indexing
    /// one of them (`kvs index create bench n`) compares indexed and unindexed queries.
    #[arg(long, default_value = "n")]
    field: String,
    /// Skip the load phase (the keys are already there).
    #[arg(long)]
    no_load: bool,
    /// Seed for the key choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG plot (throughput and latency percentiles over time) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The transactional workloads: whether a transaction's keys share a shard.
    #[arg(long, value_enum, default_value = "cross-shard")]
    txn_span: txn_bench::Span,
    /// Connect over TLS, trusting the authorities (PEM) in this file (kvsd --tls-cert, or
    /// redis-server --tls-port with --protocol resp).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// With --tls-ca: the name the server's certificate must carry. Default: the host of
    /// the address.
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
}

impl Args {
    /// TLS as --tls-ca and --tls-server-name say.
    fn tls(&self) -> Option<kvs_wire::tls::TlsOptions> {
        self.tls_ca.as_ref().map(|ca| kvs_wire::tls::TlsOptions {
            ca_file: ca.clone(),
            server_name: self.tls_server_name.clone(),
            client_cert: None,
        })
    }

    /// Options of the library client (INFO, transactions).
    fn client_options(&self) -> kvs_wire::ClientOptions {
        kvs_wire::ClientOptions {
            tls: self.tls(),
            ..kvs_wire::ClientOptions::default()
        }
    }
}

/// What every client thread shares.
pub(crate) struct Shared {
    args: Args,
    distribution: Distribution,
    zipfian: Zipfian,
    value: Vec<u8>,
    /// Operations left when running for `--ops`.
    budget: AtomicU64,
    deadline: Option<Instant>,
    stop: AtomicBool,
    /// Next key to insert; keys below it exist.
    next_insert: AtomicU64,
    /// Next key for the sequential workloads.
    next_sequential: AtomicU64,
    timeline: Timeline,
    completed: AtomicU64,
    start: Instant,
    /// A cluster's leaders by shard, when connections go to them (see `--addr`).
    routes: Option<kvs_wire::routes::Routes>,
}

/// Per-thread results.
pub(crate) struct ClientStats {
    latency: Vec<Histogram<u64>>,
    errors: u64,
    /// Why the first failed operation failed.
    first_error: Option<String>,
    /// Connections that broke (the run went on without them), and why the first did.
    failed_clients: u64,
    first_client_failure: Option<String>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: sets this thread's affinity from a zeroed cpu_set_t with one CPU set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }
}

impl Shared {
    fn pick(&self, kind: OpKind, rng: &mut Rng) -> u64 {
        let existing = self.next_insert.load(Ordering::Relaxed).max(1);
        if kind == OpKind::Insert {
            return self.next_insert.fetch_add(1, Ordering::Relaxed);
        }
        if self.args.workload.sequential() {
            return self.next_sequential.fetch_add(1, Ordering::Relaxed) % self.args.records.max(1);
        }
        match self.distribution {
            Distribution::Uniform => rng.below(existing),
            Distribution::Zipfian => self.zipfian.next_scrambled(rng, self.args.records.max(1)),
            Distribution::Latest => (existing - 1).saturating_sub(self.zipfian.next_rank(rng)),
        }
    }

    fn pick_kind(&self, rng: &mut Rng) -> OpKind {
        let mut roll = rng.below(100) as u32;
        for &(kind, weight) in self.args.workload.mix() {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        unreachable!("a mix adds up to 100")
    }

    /// Takes up to `want` operations from the budget; 0 when the run is over.
    fn take(&self, want: u64) -> u64 {
        if self.stop.load(Ordering::Relaxed) {
            return 0;
        }
        if let Some(deadline) = self.deadline {
            if Instant::now() >= deadline {
                self.stop.store(true, Ordering::Relaxed);
                return 0;
            }
            return want;
        }
        let mut left = self.budget.load(Ordering::Relaxed);
        loop {
            if left == 0 {
                return 0;
            }
            let n = want.min(left);
            match self.budget.compare_exchange_weak(
                left,
                left - n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return n,
                Err(now) => left = now,
            }
        }
    }
}

/// Inserts keys 0..records, split over the clients.
fn load(args: &Args, value: &[u8]) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let clients = args.clients.min(args.records).max(1);
    let per_client = args.records.div_ceil(clients);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let addr = nth_addr(&args.addr, c as usize).to_string();
            let (protocol, value, tls) = (args.protocol, value.to_vec(), args.tls());
            let documents = args.workload.documents();
            let (from, to) = (c * per_client, ((c + 1) * per_client).min(args.records));
            std::thread::spawn(move || -> anyhow::Result<(u64, Option<String>)> {
                let mut conn = BenchConn::connect(&addr, protocol, tls.as_ref())?;
                let mut failed = 0;
                let mut first: Option<String> = None;
                let keys: Vec<u64> = (from..to).collect();
                let step = if documents {
                    LOAD_DOCS_PER_ROUND_TRIP
                } else {
                    LOAD_PIPELINE
                };
                for chunk in keys.chunks(step) {
                    let ops: Vec<WireOp> = if documents {
                        // Documents go in batches: one insert of many per request.
                        chunk
                            .chunks(LOAD_DOCS_PER_INSERT)
                            .map(|docs| {
                                let docs: Vec<String> =
                                    docs.iter().map(|&k| doc_json(k, value.len())).collect();
                                WireOp::Doc(
                                    format!(
                                        r#"{{"insert":"{DOC_COLLECTION}","documents":[{}]}}"#,
                                        docs.join(",")
                                    )
                                    .into_bytes(),
                                )
                            })
                            .collect()
                    } else {
                        chunk
                            .iter()
                            .map(|&k| WireOp::Put(key_name(k), value.clone()))
                            .collect()
                    };
                    for failure in conn.round_trip(&ops)?.into_iter().flatten() {
                        failed += 1;
                        first.get_or_insert(failure);
                    }
                }
                Ok((failed, first))
            })
        })
        .collect();
    let mut failed = 0;
    let mut first = None;
    for thread in threads {
        let (n, why) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?
            .context("the load phase failed")?;
        failed += n;
        first = first.or(why);
    }
    if failed > 0 {
        bail!(
            "{failed} inserts failed during the load phase; the first: {}",
            first.unwrap_or_default()
        );
    }
    Ok((args.records, started.elapsed()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.pipeline == 0 || args.records == 0 {
        bail!("--clients, --pipeline and --records must be at least 1");
    }
    if args.protocol == Protocol::Resp && args.workload.documents() {
        bail!(
            "workload {} works on documents: use --protocol native against kvsd",
            args.workload.name()
        );
    }
    if args.protocol == Protocol::Resp
        && args.workload.mix().iter().any(|(k, _)| *k == OpKind::Scan)
    {
        bail!(
            "workload {} scans by key range, which RESP has no command for: use --protocol native",
            args.workload.name()
        );
    }
    if args.rate.is_some_and(|r| r <= 0.0) {
        bail!("--rate must be positive");
    }
    if let Some(workload) = args.workload.transactional() {
        if args.protocol != Protocol::Native {
            bail!("the transactional workloads use the native protocol");
        }
        return txn_bench::run(&txn_bench::TxnRun {
            addr: &args.addr,
            options: args.client_options(),
            workload,
            span: args.txn_span,
            clients: args.clients,
            duration: args.duration,
            ops: args.ops.unwrap_or(10_000),
            records: args.records,
            seed: args.seed,
            no_load: args.no_load,
            json: args.json.as_deref(),
        });
    }
    let value = vec![b'x'; args.value_size];
    if !args.no_load {
        let (records, took) = load(&args, &value)?;
        eprintln!(
            "loaded {records} records in {:.2}s ({:.0}/s)",
            took.as_secs_f64(),
            records as f64 / took.as_secs_f64()
        );
    }
    let ops = match (args.duration, args.ops) {
        (Some(_), _) => 0,
        (None, Some(ops)) => ops,
        (None, None) => 100_000,
    };
    let routes = leader_routes(&args);
    if let Some(routes) = &routes {
        eprintln!(
            "routing each connection to one shard's leader: {:?}",
            routes.leaders
        );
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        routes,
        distribution: args
            .distribution
            .unwrap_or(args.workload.default_distribution()),
        zipfian: Zipfian::new(args.records),
        value,
        budget: AtomicU64::new(ops),
        deadline: args.duration.map(|d| start + Duration::from_secs_f64(d)),
        stop: AtomicBool::new(false),
        next_insert: AtomicU64::new(args.records),
        next_sequential: AtomicU64::new(0),
        timeline: Timeline::default(),
        completed: AtomicU64::new(0),
        start,
        args,
    });
    let cpu_before = cpu_seconds();
    let cpus = allowed_cpus();
    // One pinned worker per CPU the process may use, each driving its share of the clients.
    let workers = (cpus.len().max(1) as u64).min(shared.args.clients);
    let threads: Vec<_> = (0..workers)
        .map(|worker| {
            let shared = Arc::clone(&shared);
            let cpu = (!cpus.is_empty()).then(|| cpus[worker as usize % cpus.len()]);
            let clients: Vec<u64> = (worker..shared.args.clients)
                .step_by(workers as usize)
                .collect();
            std::thread::spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                let result = driver::run_worker(&shared, &clients);
                if result.is_err() {
                    shared.stop.store(true, Ordering::Relaxed);
                }
                result
            })
        })
        .collect();
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| report::progress(&shared.args, Arc::clone(&shared)));
    let mut latency: Vec<Histogram<u64>> = OpKind::ALL.iter().map(|_| histogram()).collect();
    let mut errors = 0;
    let mut first_error = None;
    let mut failed_clients = 0;
    let mut first_client_failure = None;
    let mut failure = None;
    for thread in threads {
        match thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
        {
            Ok(stats) => {
                for (total, part) in latency.iter_mut().zip(&stats.latency) {
                    total.add(part).context("merging histograms")?;
                }
                errors += stats.errors;
                first_error = first_error.or(stats.first_error);
                failed_clients += stats.failed_clients;
                first_client_failure = first_client_failure.or(stats.first_client_failure);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        progress.join().ok();
    }
    if let Some(e) = failure {
        return Err(e.context("a client failed"));
    }
    let report = Report::new(
        &shared.args,
        shared.distribution,
        elapsed,
        latency,
        errors,
        &shared.timeline,
        cpu_seconds() - cpu_before,
        cpus.len(),
    );
    print!("{}", report.table());
    if let Some(path) = &shared.args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &shared.args.plot {
        std::fs::write(path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if failed_clients > 0 {
        bail!(
            "{failed_clients} of {} connections broke and the run went on without them; the \
             first: {}",
            shared.args.clients,
            first_client_failure.unwrap_or_default()
        );
    }
    if errors > 0 {
        bail!(
            "{errors} operations failed; the first: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// The address connection `index` uses: `--addr` lists one or several, comma-separated.
pub fn nth_addr(addrs: &str, index: usize) -> &str {
    let count = addrs.split(',').count();
    addrs.split(',').nth(index % count).unwrap_or(addrs).trim()
}

/// A cluster's leaders, when `--addr` lists several nodes, the protocol is native and the
/// workload draws existing keys, and every shard's leader is known.
fn leader_routes(args: &Args) -> Option<kvs_wire::routes::Routes> {
    if !args.addr.contains(',') || args.protocol != Protocol::Native || args.workload.documents() {
        return None;
    }
    let client =
        kvs_wire::Client::connect_with(nth_addr(&args.addr, 0), args.client_options()).ok()?;
    let routes = kvs_wire::routes::Routes::from_info(&client.info().ok()?)?;
    routes.leaders.iter().all(Option::is_some).then_some(routes)
}
