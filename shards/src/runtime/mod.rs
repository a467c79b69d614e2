//! kvsd's runtime: pinned executor threads, each driven by one io_uring, with TCP, timers and
//! cross-core channels on it.
//!
//! Architecture invariant: this module is the only one that talks to the executor's ring;
//! everything else sees futures. `log_io` puts the shard's file I/O on it through [`disk`].
//!
//! Why our own and not glommio: measured on our machines, a bare glommio TCP loop answered
//! 56–70K requests/s unpipelined where a loop on one io_uring with every completion handled
//! per `io_uring_enter` answered 104–108K (the client's ceiling). kvsd needs only a small
//! part of a runtime — tasks, timers, accept/recv/send, channels — so that part is here, shaped
//! for the hot path: one system call per round of tasks. See
//! docs/adr/0009-own-runtime-on-io-uring.md.

mod channel;
pub mod disk;
mod executor;
mod net;

use std::future::Future;
use std::io;
use std::time::Duration;

pub use channel::{channel as cross_core_channel, Receiver, Sender};
pub use executor::{round_micros, sleep, spawn_local, yield_now, JoinHandle};
pub use net::{TcpListener, TcpStream};

/// A handle on a running executor thread.
pub struct Executor<T: Send + 'static>(std::thread::JoinHandle<io::Result<T>>);

impl<T: Send + 'static> Executor<T> {
    pub fn join(self) -> io::Result<T> {
        match self.0.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("executor thread panicked")),
        }
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it and
    // sched_setaffinity reads size_of::<cpu_set_t>() bytes from it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Some(cpu) = cpu {
                if let Err(error) = pin_to(cpu) {
                    tracing::warn!(cpu, %error, "cannot pin the executor thread");
                }
            }
            executor::block_on(make_future())
        })
        .map(Executor)
}

/// Waits `duration`.
pub async fn wait(duration: Duration) {
    sleep(duration).await;
}
