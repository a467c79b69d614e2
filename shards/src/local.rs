//! Single-threaded synchronisation for tasks of one executor: a [`Notify`] that wakes every
//! waiter. Nothing here is `Send`; cross-core traffic goes through channels instead.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes all tasks waiting on it. A waiter that started waiting before a `notify` sees it
/// even if it is polled only afterwards (generations, not flags).
///
/// Waiters are few (one task, or a connection's reader and writer), so they sit in a vector,
/// whose memory is kept from one `notify` to the next: a notify-and-wait cycle, which every
/// request goes through several times, allocates nothing.
#[derive(Default)]
pub struct Notify {
    generation: Cell<u64>,
    next_key: Cell<u64>,
    waiters: RefCell<Vec<(u64, Waker)>>,
    spare: RefCell<Vec<(u64, Waker)>>,
}

impl Notify {
    pub fn new() -> Self {
        Notify::default()
    }

    pub fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        if self.waiters.borrow().is_empty() {
            return;
        }
        // Swap in the spare vector so a waker that waits again while being woken finds
        // room; then keep this one's memory as the next spare.
        let mut waiters = {
            let mut spare = std::mem::take(&mut *self.spare.borrow_mut());
            std::mem::swap(&mut *self.waiters.borrow_mut(), &mut spare);
            spare
        };
        for (_, waker) in waiters.drain(..) {
            waker.wake();
        }
        *self.spare.borrow_mut() = waiters;
    }

    /// A future that completes at the next `notify` after this call.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            generation: self.generation.get(),
            key: None,
        }
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
    generation: u64,
    key: Option<u64>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = self.notify.next_key.get();
                self.notify.next_key.set(key + 1);
                self.key = Some(key);
                key
            }
        };
        let mut waiters = self.notify.waiters.borrow_mut();
        match waiters.iter_mut().find(|(k, _)| *k == key) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => waiters.push((key, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut waiters = self.notify.waiters.borrow_mut();
            if let Some(at) = waiters.iter().position(|(k, _)| *k == key) {
                waiters.swap_remove(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn notify_wakes_a_waiter_created_before_it() {
        let notify = Notify::new();
        let mut waiting = Box::pin(notify.notified());
        assert!(future::block_on(future::poll_once(&mut waiting)).is_none());
        notify.notify();
        assert!(future::block_on(future::poll_once(&mut waiting)).is_some());
        drop(waiting);
        assert!(notify.waiters.borrow().is_empty());
        // A dropped waiter leaves nothing behind.
        let mut other = Box::pin(notify.notified());
        assert!(future::block_on(future::poll_once(&mut other)).is_none());
        drop(other);
        assert!(notify.waiters.borrow().is_empty());
    }
}
