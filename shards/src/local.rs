//! Single-threaded synchronisation for tasks of one executor: a [`Notify`] that wakes every
//! waiter. Nothing here is `Send`; cross-core traffic goes through channels instead.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes all tasks waiting on it. A waiter that started waiting before a `notify` sees it
/// even if it is polled only afterwards (generations, not flags).
#[derive(Default)]
pub struct Notify {
    generation: Cell<u64>,
    next_key: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl Notify {
    pub fn new() -> Self {
        Notify::default()
    }

    pub fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, waker) in waiters {
            waker.wake();
        }
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
        self.notify
            .waiters
            .borrow_mut()
            .insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.notify.waiters.borrow_mut().remove(&key);
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
