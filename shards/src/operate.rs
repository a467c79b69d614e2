//! What a running node tells its operator besides logs: the metrics and health endpoint
//! (`metrics_http`) and systemd's notifications (`Type=notify`, docs/operations.md):
//! `READY=1` once every shard serves, `STATUS=` lines, `STOPPING=1` when a stop begins, and
//! the watchdog. A `WATCHDOG=1` is sent only while every shard loop keeps ticking
//! (`CoreMetrics::loop_ticks`), so a core stuck in a loop or a system call stops the pings
//! and systemd restarts the node (`WatchdogSec=` in the unit). Outside systemd
//! (`NOTIFY_SOCKET` unset) no notification is sent.

use crate::cluster::node_links::LeaderWatch;
use crate::metrics::NodeMetrics;
use crate::metrics_http::{self, EndpointState};
use crate::spread::ConnectionCounts;
use sd_notify::NotifyState;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the operator's thread looks at the stop flag and the shard loops.
const POLL: Duration = Duration::from_millis(20);

/// The node's side of its operator's tools, from start-up to its end.
pub struct Operator {
    state: Arc<EndpointState>,
    endpoint: Option<JoinHandle<()>>,
    address: Option<SocketAddr>,
    watcher: Option<JoinHandle<()>>,
}

/// Binds the metrics endpoint's address (before anything else starts, so a bad address
/// fails the start cleanly).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

impl Operator {
    /// Starts the endpoint (if `listener`) and the thread that tells systemd of the stop
    /// and feeds its watchdog. `leaders`, on a node of a cluster, says which shards know
    /// their leader (the node is not ready until all do).
    pub fn start(
        listener: Option<TcpListener>,
        metrics: Arc<NodeMetrics>,
        stop: Arc<AtomicBool>,
        leaders: Option<Arc<LeaderWatch>>,
        connection_counts: Arc<ConnectionCounts>,
        data_dir: PathBuf,
    ) -> std::io::Result<Operator> {
        let address = listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let state = Arc::new(EndpointState {
            metrics,
            serving: AtomicBool::new(false),
            stop,
            finished: AtomicBool::new(false),
            readiness: Box::new(move || {
                let known = leaders.as_ref().map_or(&[][..], |l| &l.known[..]);
                match known.iter().position(|k| !k.load(Ordering::SeqCst)) {
                    Some(shard) => Err(format!("shard {shard} knows no leader")),
                    None => Ok(()),
                }
            }),
            connections: Box::new(move || connection_counts.open() as u64),
            data_dir,
        });
        let endpoint = listener
            .map(|listener| metrics_http::spawn(listener, Arc::clone(&state)))
            .transpose()?;
        let watched = Arc::clone(&state);
        let watcher = std::thread::Builder::new()
            .name("kvs-systemd".into())
            .spawn(move || watch(&watched))?;
        Ok(Operator {
            state,
            endpoint,
            address,
            watcher: Some(watcher),
        })
    }

    /// Where the metrics endpoint listens, if it does.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Every shard has recovered and the node serves: ready, for the endpoint and systemd.
    pub fn serving(&self, status: &str) {
        self.state.serving.store(true, Ordering::SeqCst);
        notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The node has stopped: the endpoint and the watcher end.
    pub fn finish(mut self) {
        self.state.serving.store(false, Ordering::SeqCst);
        self.state.finished.store(true, Ordering::SeqCst);
        for thread in [self.endpoint.take(), self.watcher.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Sends `STOPPING=1` when the stop flag is set, and `WATCHDOG=1` at half the watchdog's
/// interval while the node is healthy: starting up, stopping, or serving with every shard
/// loop having ticked since the last ping.
fn watch(state: &EndpointState) {
    let mut interval = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut interval)
        .then(|| Duration::from_micros(interval / 2));
    let cores = &state.metrics.cores;
    let ticks = || -> Vec<u64> { cores.iter().map(|c| c.loop_ticks.get()).collect() };
    let mut last_ticks = ticks();
    let mut last_ping = Instant::now();
    let mut stopping = false;
    let mut reported = false;
    while !state.finished.load(Ordering::SeqCst) {
        std::thread::sleep(POLL);
        if !stopping && state.stop.load(Ordering::SeqCst) {
            stopping = true;
            notify(&[
                NotifyState::Stopping,
                NotifyState::Status("stopping: answering requests in flight"),
            ]);
        }
        let Some(every) = watchdog else {
            continue;
        };
        if last_ping.elapsed() < every {
            continue;
        }
        let now = ticks();
        let serving = state.serving.load(Ordering::SeqCst) && !stopping;
        if let Err(stuck) = watchdog_verdict(serving, &last_ticks, &now) {
            if !reported {
                reported = true;
                tracing::error!(
                    cores = ?stuck,
                    "a shard loop has not ticked within half the watchdog interval; not feeding systemd's watchdog"
                );
            }
            continue;
        }
        reported = false;
        last_ticks = now;
        last_ping = Instant::now();
        notify(&[NotifyState::Watchdog]);
    }
}

/// Whether to feed the watchdog: yes while starting up or stopping (`serving` false), and
/// while serving only if every shard loop ticked since the last ping; else the stuck cores.
fn watchdog_verdict(serving: bool, last: &[u64], now: &[u64]) -> Result<(), Vec<usize>> {
    let stuck: Vec<usize> = (0..now.len())
        .filter(|&core| now[core] == last[core])
        .collect();
    if serving && !stuck.is_empty() {
        Err(stuck)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::watchdog_verdict;

    #[test]
    fn the_watchdog_is_fed_only_while_every_shard_loop_ticks() {
        assert_eq!(watchdog_verdict(true, &[5, 9], &[6, 10]), Ok(()));
        assert_eq!(watchdog_verdict(true, &[5, 9], &[6, 9]), Err(vec![1]));
        assert_eq!(watchdog_verdict(true, &[5, 9], &[5, 9]), Err(vec![0, 1]));
        // Recovery and the stop may take long without ticks: fed regardless.
        assert_eq!(watchdog_verdict(false, &[5, 9], &[5, 9]), Ok(()));
    }
}
