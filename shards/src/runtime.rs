//! Everything kvsd takes from glommio, in one place, so the runtime could be replaced.
//!
//! Architecture invariant: this is the only module that names glommio. It provides pinned
//! executors, TCP, timers and cross-core channels. (The log's disk I/O is in `log_io`, on
//! io_uring directly.)

use std::future::Future;
use std::io;
use std::time::Duration;

pub use glommio::channels::shared_channel::{
    new_bounded as cross_core_channel, ConnectedReceiver, ConnectedSender, SharedReceiver,
    SharedSender,
};
pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::spawn_local;
pub use glommio::timer::sleep;

/// Memory glommio registers with io_uring per executor. RLIMIT_MEMLOCK is 8 MiB on our
/// machines and registration is charged against it, so keep this small; larger DMA buffers
/// come from the ordinary allocator.
const IO_MEMORY_BYTES: usize = 1024 * 1024;

/// A handle on a running executor thread.
pub struct Executor<T: Send + 'static>(glommio::ExecutorJoinHandle<T>);

impl<T: Send + 'static> Executor<T> {
    pub fn join(self) -> io::Result<T> {
        self.0.join().map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Starts an executor thread pinned to `cpu` and runs `make_future()` on it to completion.
pub fn spawn_executor<G, F, T>(
    name: &str,
    cpu: Option<usize>,
    make_future: G,
) -> io::Result<Executor<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = match cpu {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    glommio::LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        .spawn(make_future)
        .map(Executor)
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Yields to other tasks of this executor.
pub async fn yield_now() {
    glommio::yield_if_needed().await;
}

/// Waits `duration`.
pub async fn wait(duration: Duration) {
    sleep(duration).await;
}
