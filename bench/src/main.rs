//! `kvs-bench`: a closed-loop load generator for kvsd over the native protocol.
//!
//! Each client is a thread with its own connection that keeps `--pipeline` requests in
//! flight: it sends a window of requests in one write and waits for all their replies. The
//! latency of a request runs from the window's send to the request's reply. It talks to kvsd
//! only through the `kvs-wire` client library.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use kvs_wire::{Client, Request, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// PUT keys 0..records in order.
    Write,
    /// GET keys 0..records in order (load them first, or run `write` before).
    Read,
}

#[derive(Parser, Debug)]
#[command(name = "kvs-bench", about = "Load generator for kvsd")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: String,
    #[arg(long, value_enum, default_value = "write")]
    workload: Workload,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Concurrent connections, one thread each.
    #[arg(long, default_value_t = 50)]
    clients: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: u64,
    /// Total operations across all clients.
    #[arg(long, default_value_t = 1_000_000)]
    ops: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn key(i: u64) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

/// Runs one client until the shared operation budget is spent.
fn run_client(
    args: &Args,
    budget: &AtomicU64,
    errors: &AtomicU64,
) -> anyhow::Result<Histogram<u64>> {
    let client = Client::connect(&args.addr)?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let value = vec![b'v'; args.value_size];
    loop {
        let taken = budget.fetch_sub(args.pipeline, Ordering::Relaxed);
        if taken == 0 || taken > args.ops {
            budget.store(0, Ordering::Relaxed);
            break;
        }
        let n = args.pipeline.min(taken);
        let start = taken - n;
        let requests: Vec<Request> = (start..taken)
            .map(|i| {
                let k = key(i % args.records);
                match args.workload {
                    Workload::Write => Request::Put {
                        key: k,
                        value: value.clone(),
                    },
                    Workload::Read => Request::Get { key: k },
                }
            })
            .collect();
        let sent = Instant::now();
        for pending in client.submit_many(&requests)? {
            match pending.wait() {
                Ok(Response::Written { .. } | Response::Value { .. }) => {
                    histogram.saturating_record(sent.elapsed().as_micros() as u64);
                }
                Ok(_) | Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(histogram)
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if args.clients == 0 || args.pipeline == 0 || args.records == 0 {
        bail!("--clients, --pipeline and --records must be at least 1");
    }
    let budget = Arc::new(AtomicU64::new(args.ops));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|_| {
            let (args, budget, errors) =
                (Arc::clone(&args), Arc::clone(&budget), Arc::clone(&errors));
            std::thread::spawn(move || run_client(&args, &budget, &errors))
        })
        .collect();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for thread in threads {
        let histogram = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        total.add(&histogram).context("merging histograms")?;
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    let throughput = total.len() as f64 / elapsed.as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "{:?}: {} ops in {:.2}s = {:.0} ops/s; latency us p50 {} p99 {} p999 {} max {}; errors {}",
        args.workload,
        total.len(),
        elapsed.as_secs_f64(),
        throughput,
        total.value_at_quantile(0.5),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
        total.max(),
        errors
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "clients": args.clients,
            "pipeline": args.pipeline,
            "value_size": args.value_size,
            "ops": total.len(),
            "seconds": elapsed.as_secs_f64(),
            "throughput_ops_per_sec": throughput,
            "latency_us": {
                "p50": total.value_at_quantile(0.5),
                "p99": total.value_at_quantile(0.99),
                "p999": total.value_at_quantile(0.999),
                "max": total.max(),
            },
            "errors": errors,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
