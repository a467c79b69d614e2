//! Bounded channels between executors on different threads. A receiver waits in its own
//! executor; the sender's push wakes it through that executor's eventfd.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

struct Inner<T> {
    queue: VecDeque<T>,
    receiver_waiting: Option<Waker>,
    senders_waiting: Vec<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared<T> {
    inner: Mutex<Inner<T>>,
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending end; one per channel.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving end; one per channel.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A channel holding at most `capacity` messages; a sender waits for room.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            queue: VecDeque::new(),
            receiver_waiting: None,
            senders_waiting: Vec::new(),
            sender_gone: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Sends `value`, waiting while the channel is full. Gives it back if the receiver is
    /// gone.
    pub async fn send(&self, value: T) -> Result<(), T> {
        let mut value = Some(value);
        poll_fn(|cx| {
            let mut inner = self.shared.lock();
            if inner.receiver_gone {
                return Poll::Ready(Err(value.take().expect("sent once")));
            }
            if inner.queue.len() >= self.shared.capacity {
                inner.senders_waiting.push(cx.waker().clone());
                return Poll::Pending;
            }
            inner.queue.push_back(value.take().expect("sent once"));
            let waiting = inner.receiver_waiting.take();
            drop(inner);
            if let Some(waker) = waiting {
                waker.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

impl<T> Sender<T> {
    /// Sends `value` if the channel has room; gives it back if it is full or the receiver
    /// is gone.
    pub fn try_send(&self, value: T) -> Result<(), T> {
        let mut inner = self.shared.lock();
        if inner.receiver_gone || inner.queue.len() >= self.shared.capacity {
            return Err(value);
        }
        inner.queue.push_back(value);
        let waiting = inner.receiver_waiting.take();
        drop(inner);
        if let Some(waker) = waiting {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.sender_gone = true;
        let waiting = inner.receiver_waiting.take();
        drop(inner);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Takes every message waiting, waiting for one if there is none. Empty once the sender is
    /// gone and the channel drained.
    pub async fn recv_all(&self, into: &mut Vec<T>) {
        poll_fn(|cx| {
            let mut inner = self.shared.lock();
            if inner.queue.is_empty() {
                if inner.sender_gone {
                    return Poll::Ready(());
                }
                inner.receiver_waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            into.extend(inner.queue.drain(..));
            let waiting = std::mem::take(&mut inner.senders_waiting);
            drop(inner);
            for waker in waiting {
                waker.wake();
            }
            Poll::Ready(())
        })
        .await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.receiver_gone = true;
        inner.queue.clear();
        let waiting = std::mem::take(&mut inner.senders_waiting);
        drop(inner);
        for waker in waiting {
            waker.wake();
        }
    }
}
