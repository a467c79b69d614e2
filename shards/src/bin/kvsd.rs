//! `kvsd`: the kvs server. Runs with no configuration; see `kvsd --help`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use kvs_shards::config::{Config, Flags};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: requests and replies allocate on the hot path, and
/// with glibc malloc and free took a fifth of kvsd's CPU on pipelined SETs (perf, see
/// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::from_flags(Flags::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kvsd: {e}");
            return ExitCode::from(2);
        }
    };
    // Raft reports every election at info; at the default level keep only its warnings.
    let directive = match config.log_level.as_str() {
        "info" => "info,raft=warn".to_string(),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|e| {
        eprintln!(
            "kvsd: bad --log-level {:?} ({e}); using info",
            config.log_level
        );
        EnvFilter::new("info")
    });
    // Colour codes only for a person at a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    if config.verify {
        return match kvs_shards::node::verify(&config) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("kvsd: {e:#}");
                ExitCode::from(2)
            }
        };
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("kvsd: cannot install a signal handler: {e}");
            return ExitCode::from(2);
        }
    }
    let watcher_stop = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !watcher_stop.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::info!("stop requested: finishing in-flight requests");
    });
    match kvs_shards::node::run(&config, stop) {
        Ok(()) => {
            tracing::info!("kvsd stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kvsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
