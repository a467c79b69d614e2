//! `kvsd`: the kvs server. Runs with no configuration; see `kvsd --help`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use kvs_shards::config::{Config, Flags};
use mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

/// Small allocations from mimalloc, large ones from the system allocator.
///
/// mimalloc: requests and replies allocate on the hot path, and with glibc malloc and free
/// took a fifth of kvsd's CPU on pipelined SETs (perf, see docs/benchmarks.md).
///
/// The system allocator for blocks of 1 MiB and more (log segments read at recovery, large
/// values): glibc maps them and unmaps them on free, while mimalloc kept freed huge blocks
/// for later and kvsd's RSS after a restart went from ~80 to ~330 MiB with a 64 MiB cache
/// (`../shared/check/larger-than-memory`).
struct Allocator;

const LARGE_BLOCK: usize = 1 << 20;

// SAFETY: every block is freed (or resized) by the allocator that made it, chosen by its
// size, which the layout passed back always carries.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if layout.size() >= LARGE_BLOCK {
                System.alloc(layout)
            } else {
                MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if layout.size() >= LARGE_BLOCK {
                System.alloc_zeroed(layout)
            } else {
                MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the block came from the allocator its size selects.
        unsafe {
            if layout.size() >= LARGE_BLOCK {
                System.dealloc(ptr, layout)
            } else {
                MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (was_large, is_large) = (layout.size() >= LARGE_BLOCK, new_size >= LARGE_BLOCK);
        // SAFETY: forwarded with the caller's guarantees; across the threshold the block
        // moves: allocated anew (same alignment, checked by the caller's layout), copied,
        // and freed by the allocator that made it.
        unsafe {
            match (was_large, is_large) {
                (true, true) => System.realloc(ptr, layout, new_size),
                (false, false) => MiMalloc.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        logs.json().init();
    } else {
        logs.with_ansi(ansi).init();
    }

    if let Some(backup) = &config.restore_from {
        let cluster = config.cluster.as_ref();
        let archive = match (&config.archive_dir, config.until) {
            (Some(dir), until) => Some((
                dir.as_path(),
                until.unwrap_or(kvs_shards::archive::Until::End),
            )),
            (None, Some(_)) => {
                eprintln!("kvsd: --until and --until-index need --archive-dir");
                return ExitCode::from(2);
            }
            (None, None) => None,
        };
        return match kvs_shards::restore::restore(backup, &config.data_dir, cluster, archive) {
            Ok(()) => ExitCode::SUCCESS,
            Err(kvs_shards::restore::RestoreError::Refused(message)) => {
                eprintln!("kvsd: refusing to restore: {message}");
                ExitCode::from(1)
            }
            Err(kvs_shards::restore::RestoreError::Failed(e)) => {
                eprintln!("kvsd: restore failed: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if config.verify {
        return match kvs_shards::data_dir::verify(&config.data_dir) {
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
