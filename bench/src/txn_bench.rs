//! The transactional workloads (docs/transactions.md): one client thread per connection, each
//! running transactions one after another through the client library's `transact` (which
//! runs a transaction again when the server aborts it with TXN_CONFLICT or DEADLOCK).
//!
//! - `txn-transfer`: move 1 from one account to another (two reads for update, two writes),
//!   accounts drawn uniformly.
//! - `txn-ycsb`: four operations per transaction, each a read (50%) or a read-modify-write
//!   (50%, the read for update) of a zipfian key.
//!
//! `--txn-span single-shard` draws every key of a transaction from one shard (the one-entry
//! commit), `cross-shard` (the default) makes the keys of a transfer live on two shards (two
//! phase commit). Reported: commits per second, the abort rate (aborted attempts over all
//! attempts) and the latency of committed transactions, retries included.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use kvs_wire::{shard_for_key, Client, ClientError, Isolation, Transaction};

use crate::workload::{Rng, TxnWorkload, Zipfian};

/// Whether a transaction's keys share a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Span {
    SingleShard,
    CrossShard,
}

/// What a transactional run needs from the command line.
pub struct TxnRun<'a> {
    pub addr: &'a str,
    /// How clients connect (TLS).
    pub options: kvs_wire::ClientOptions,
    pub workload: TxnWorkload,
    pub span: Span,
    pub clients: u64,
    pub duration: Option<f64>,
    pub ops: u64,
    pub records: u64,
    pub seed: u64,
    pub no_load: bool,
    pub json: Option<&'a Path>,
}

fn account(i: u64) -> Vec<u8> {
    format!("account{i:010}").into_bytes()
}

fn number(value: Option<Vec<u8>>) -> i64 {
    value
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A key drawn by `draw` whose shard is (or is not) `shard`.
fn key_on(draw: &mut impl FnMut() -> u64, shards: u32, shard: u32, same: bool) -> u64 {
    for _ in 0..10_000 {
        let k = draw();
        if (shard_for_key(&account(k), shards) == shard) == same {
            return k;
        }
    }
    draw()
}

struct Stats {
    latency: Histogram<u64>,
    commits: u64,
    aborts: u64,
    errors: u64,
    first_error: Option<String>,
}

fn read_for_update(txn: &Transaction<'_>, k: u64) -> Result<i64, ClientError> {
    Ok(number(txn.get_for_update(&account(k))?.map(|(_, v)| v)))
}

fn transfer(txn: &Transaction<'_>, from: u64, to: u64) -> Result<(), ClientError> {
    let have = read_for_update(txn, from)?;
    let theirs = read_for_update(txn, to)?;
    txn.put(&account(from), (have - 1).to_string().as_bytes())?;
    txn.put(&account(to), (theirs + 1).to_string().as_bytes())
}

fn ycsb(txn: &Transaction<'_>, keys: &[(u64, bool)]) -> Result<(), ClientError> {
    for &(k, write) in keys {
        if write {
            let n = read_for_update(txn, k)?;
            txn.put(&account(k), (n + 1).to_string().as_bytes())?;
        } else {
            txn.get(&account(k))?;
        }
    }
    Ok(())
}

fn client_loop(
    run: &TxnRun<'_>,
    client: &Client,
    shards: u32,
    seed: u64,
    stop: &AtomicBool,
    budget: &AtomicU64,
    deadline: Option<Instant>,
) -> Stats {
    let mut rng = Rng::new(seed);
    let zipfian = Zipfian::new(run.records);
    let mut stats = Stats {
        latency: crate::histogram(),
        commits: 0,
        aborts: 0,
        errors: 0,
        first_error: None,
    };
    let same = run.span == Span::SingleShard;
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        if deadline.is_none()
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let mut attempts = 0u64;
        let started = Instant::now();
        let outcome = match run.workload {
            TxnWorkload::Transfer => {
                let from = rng.below(run.records);
                let shard = shard_for_key(&account(from), shards);
                let mut draw = || rng.below(run.records);
                let mut to = key_on(&mut draw, shards, shard, same);
                while to == from {
                    to = key_on(&mut draw, shards, shard, same);
                }
                client.transact(Isolation::Serializable, 100, |txn| {
                    attempts += 1;
                    transfer(txn, from, to)
                })
            }
            TxnWorkload::Ycsb => {
                let first = zipfian.next_rank(&mut rng) % run.records;
                let shard = shard_for_key(&account(first), shards);
                let mut keys = vec![(first, rng.below(2) == 0)];
                for _ in 1..4 {
                    let write = rng.below(2) == 0;
                    let k = if same {
                        let mut draw = || zipfian.next_rank(&mut rng) % run.records;
                        key_on(&mut draw, shards, shard, true)
                    } else {
                        zipfian.next_rank(&mut rng) % run.records
                    };
                    keys.push((k, write));
                }
                client.transact(Isolation::Serializable, 100, |txn| {
                    attempts += 1;
                    ycsb(txn, &keys)
                })
            }
        };
        match outcome {
            Ok(()) => {
                stats.commits += 1;
                stats.aborts += attempts - 1;
                let micros = started.elapsed().as_micros() as u64;
                let _ = stats.latency.record(micros.max(1));
            }
            Err(e) => {
                stats.aborts += attempts;
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    stats
}

fn load(client: &Client, records: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut i = 0;
    while i < records {
        let end = (i + 1000).min(records);
        let keys: Vec<Vec<u8>> = (i..end).map(account).collect();
        let pairs: Vec<(&[u8], &[u8])> =
            keys.iter().map(|k| (k.as_slice(), &b"1000"[..])).collect();
        client.mput(&pairs).context("loading the accounts")?;
        i = end;
    }
    eprintln!(
        "loaded {records} accounts in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs a transactional workload and prints its report.
pub fn run(run: &TxnRun<'_>) -> anyhow::Result<()> {
    let client = Client::connect_with(crate::nth_addr(run.addr, 0), run.options.clone())?;
    let info: serde_json::Value = serde_json::from_str(&client.info()?)?;
    let shards = info
        .get("shards")
        .and_then(serde_json::Value::as_u64)
        .context("INFO names no shard count")? as u32;
    if run.span == Span::CrossShard && shards < 2 {
        bail!("--txn-span cross-shard needs a node with two shards or more");
    }
    if !run.no_load {
        load(&client, run.records)?;
    }
    let stop = AtomicBool::new(false);
    let budget = AtomicU64::new(run.ops);
    let start = Instant::now();
    let deadline = run.duration.map(|d| start + Duration::from_secs_f64(d));
    let results: Vec<anyhow::Result<Stats>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..run.clients)
            .map(|c| {
                let (stop, budget) = (&stop, &budget);
                s.spawn(move || {
                    let client = Client::connect_with(
                        crate::nth_addr(run.addr, c as usize),
                        run.options.clone(),
                    )?;
                    let seed = run.seed.wrapping_mul(1_000_003).wrapping_add(c);
                    Ok(client_loop(
                        run, &client, shards, seed, stop, budget, deadline,
                    ))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut latency = crate::histogram();
    let (mut commits, mut aborts, mut errors, mut first_error) = (0, 0, 0, None);
    for result in results {
        let stats = result?;
        latency.add(&stats.latency)?;
        commits += stats.commits;
        aborts += stats.aborts;
        errors += stats.errors;
        first_error = first_error.or(stats.first_error);
    }
    let attempts = commits + aborts;
    let abort_rate = if attempts == 0 {
        0.0
    } else {
        aborts as f64 / attempts as f64
    };
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let name = match run.workload {
        TxnWorkload::Transfer => "txn-transfer",
        TxnWorkload::Ycsb => "txn-ycsb",
    };
    let span = match run.span {
        Span::SingleShard => "single-shard",
        Span::CrossShard => "cross-shard",
    };
    println!(
        "{name} {span} clients={} shards={shards}: {commits} commits in {elapsed:.1}s = \
         {:.0} commits/s; abort rate {:.1}% ({aborts} aborted attempts); latency ms p50 {:.2} \
         p99 {:.2} p99.9 {:.2} max {:.2}; {errors} failed",
        run.clients,
        commits as f64 / elapsed,
        abort_rate * 100.0,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latency.max() as f64 / 1000.0,
    );
    if let Some(path) = run.json {
        let json = serde_json::json!({
            "workload": name, "span": span, "clients": run.clients, "shards": shards,
            "seconds": elapsed, "commits": commits, "commits_per_sec": commits as f64 / elapsed,
            "aborted_attempts": aborts, "abort_rate": abort_rate, "failed": errors,
            "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999),
                           "max": latency.max() as f64 / 1000.0},
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    if errors > 0 {
        bail!(
            "{errors} transactions failed; the first: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(())
}
