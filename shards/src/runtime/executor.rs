//! A single-threaded executor driven by one io_uring: tasks, wakers, timers and the ring.
//!
//! Each executor thread owns one ring. Tasks push submission entries while they run; the loop
//! runs every ready task (and, up to two more passes, the tasks those woke), then makes one
//! `io_uring_enter` for everything they queued, waiting for a completion only when no task is
//! ready. So a round of fifty connections costs one system call, not fifty. An operation may
//! ask to be entered at once instead ([`Op::enter_now`]; page reads do).
//!
//! Wakers are `Send`: a wake from the executor's own thread goes straight onto the ready
//! queue; a wake from another thread (the log's I/O thread, another core) goes onto a locked
//! queue and writes an eventfd whose read is always armed in the ring.
//!
//! Buffers handed to the kernel belong to the operation's slot, not to the future: a future
//! dropped before its completion leaves the buffer in the slot, asks the kernel to cancel,
//! and the slot is freed only when the kernel has answered.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

/// Submission queue entries per ring; the completion queue is four times larger.
const RING_ENTRIES: u32 = 1024;
/// user_data of the eventfd read that wakes the executor for wakes from other threads.
const WAKE_TAG: u64 = u64::MAX;
/// user_data of cancellation requests, whose completions need no handling.
const CANCEL_TAG: u64 = u64::MAX - 1;
/// How long shutdown waits for the kernel to give back buffers of cancelled operations.
const DRAIN_FOR: Duration = Duration::from_secs(2);

static NEXT_EXECUTOR_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The executor running on this thread, if any.
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
    /// Its id (0: none), checked by wakers to take the fast path.
    static CURRENT_ID: Cell<usize> = const { Cell::new(0) };
    /// When this executor's current round began (its completions were reaped), in
    /// microseconds since the process's clock epoch; see [`round_micros`].
    static ROUND_MICROS: Cell<u32> = const { Cell::new(0) };
}

/// The moment all executors' round clocks count from.
static CLOCK_EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn micros_since_epoch(now: Instant) -> u32 {
    let epoch = *CLOCK_EPOCH.get_or_init(Instant::now);
    // Wraps every ~71 minutes: readers take differences with `wrapping_sub`.
    now.saturating_duration_since(epoch).as_micros() as u32
}

/// When the calling executor's current round of tasks began, in microseconds (wrapping at
/// 2^32) since a process-wide epoch: read from the clock the executor reads anyway to fire
/// its timers, so taking it costs nothing. Work done within one round all sees one value.
/// Request latencies are measured with it (`metrics`). Off an executor it stays 0.
#[inline]
pub fn round_micros() -> u32 {
    ROUND_MICROS.with(Cell::get)
}

/// What other threads can reach: ids of tasks they woke, and the eventfd that says so.
struct Remote {
    executor_id: usize,
    woken: Mutex<Vec<usize>>,
    eventfd: OwnedFd,
}

impl Remote {
    fn wake(&self, task: usize) {
        let first = {
            let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
            woken.push(task);
            woken.len() == 1
        };
        if first {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to an eventfd we own. A failure
            // (the counter is saturated) still leaves it readable, which is all we need.
            unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }
}

/// A task's waker: its slot and whether it is already queued.
struct TaskWaker {
    task: usize,
    queued: AtomicBool,
    remote: Arc<Remote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if CURRENT_ID.with(Cell::get) == self.remote.executor_id {
            let queued = CURRENT.with(|current| match &*current.borrow() {
                Some(core) => {
                    core.ready.borrow_mut().push_back(self.task);
                    true
                }
                None => false,
            });
            if queued {
                return;
            }
        }
        self.remote.wake(self.task);
    }
}

struct Task {
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    waker: Arc<TaskWaker>,
}

/// What an operation in the ring is waiting for, and the buffer the kernel may be using.
enum OpState {
    Waiting(Option<Waker>),
    Done(i32),
    /// Its future was dropped; the slot goes when the completion comes.
    Orphaned,
}

struct OpSlot {
    state: OpState,
    /// The result is a new file descriptor (accept): closed if nobody takes it.
    makes_fd: bool,
    buffer: Option<Vec<u8>>,
    /// Anything else the kernel may be using until the completion (disk buffers).
    keep: Option<Box<dyn Any>>,
}

/// A slab: values at stable indexes, freed indexes reused.
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    fn new() -> Slab<T> {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(at) => {
                self.items[at] = Some(value);
                at
            }
            None => {
                self.items.push(Some(value));
                self.items.len() - 1
            }
        }
    }

    fn vacant_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.items.len())
    }

    fn get_mut(&mut self, at: usize) -> Option<&mut T> {
        self.items.get_mut(at).and_then(Option::as_mut)
    }

    fn remove(&mut self, at: usize) -> Option<T> {
        let value = self.items.get_mut(at).and_then(Option::take);
        if value.is_some() {
            self.len -= 1;
            self.free.push(at);
        }
        value
    }

    fn drain(&mut self) -> Vec<T> {
        self.free.clear();
        self.len = 0;
        self.items.drain(..).flatten().collect()
    }
}

/// One executor's state, reachable from its tasks through the thread-local `CURRENT`.
struct Core {
    ring: RefCell<IoUring>,
    ready: RefCell<VecDeque<usize>>,
    tasks: RefCell<Slab<Task>>,
    ops: RefCell<Slab<OpSlot>>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
    remote: Arc<Remote>,
    /// Where the eventfd read lands. Leaked on purpose (8 bytes per executor): the read is
    /// in flight until the ring is torn down, which the kernel finishes asynchronously, so
    /// no moment after which freeing it would be safe is known.
    wake_buffer: *mut [u8; 8],
}

fn with_core<R>(f: impl FnOnce(&Rc<Core>) -> R) -> R {
    CURRENT.with(|current| {
        let current = current.borrow();
        let core = current
            .as_ref()
            .expect("runtime functions are called on an executor thread");
        f(core)
    })
}

impl Core {
    fn push_entry(&self, entry: &squeue::Entry) {
        self.push_entries(std::slice::from_ref(entry));
    }

    /// Queues `entries` next to each other (a linked chain must not be split by a submit).
    fn push_entries(&self, entries: &[squeue::Entry]) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: every entry's buffers are owned by its op slot (or by the core, for the
            // wake read) until its completion has been reaped.
            if unsafe { ring.submission().push_multiple(entries) }.is_ok() {
                return;
            }
            // The queue is full: hand what is there to the kernel and try again.
            if let Err(error) = ring.submit() {
                if error.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!(%error, "io_uring submit failed");
                }
                drop(ring);
                self.reap();
                ring = self.ring.borrow_mut();
            }
        }
    }

    fn arm_wake(&self) {
        let entry = opcode::Read::new(
            types::Fd(self.remote.eventfd.as_raw_fd()),
            self.wake_buffer.cast::<u8>(),
            8,
        )
        .build()
        .user_data(WAKE_TAG);
        self.push_entry(&entry);
    }

    /// Handles every completion in the queue.
    fn reap(&self) {
        let mut rearm = false;
        loop {
            let completed: Vec<(u64, i32)> = {
                let mut ring = self.ring.borrow_mut();
                ring.completion()
                    .map(|cqe| (cqe.user_data(), cqe.result()))
                    .collect()
            };
            if completed.is_empty() {
                break;
            }
            let mut ops = self.ops.borrow_mut();
            for (user_data, result) in completed {
                match user_data {
                    WAKE_TAG => rearm = true,
                    CANCEL_TAG => {}
                    id => {
                        let id = id as usize;
                        let Some(slot) = ops.get_mut(id) else {
                            continue;
                        };
                        match std::mem::replace(&mut slot.state, OpState::Done(result)) {
                            OpState::Waiting(waker) => {
                                if let Some(waker) = waker {
                                    waker.wake();
                                }
                            }
                            OpState::Orphaned => {
                                if let Some(slot) = ops.remove(id) {
                                    if slot.makes_fd && result >= 0 {
                                        // SAFETY: the kernel made this descriptor for an
                                        // operation nobody waits for; nothing else has it.
                                        unsafe { libc::close(result) };
                                    }
                                }
                            }
                            OpState::Done(_) => {}
                        }
                    }
                }
            }
        }
        if rearm {
            self.arm_wake();
        }
        self.take_remote_wakes();
    }

    fn take_remote_wakes(&self) {
        let woken =
            std::mem::take(&mut *self.remote.woken.lock().unwrap_or_else(|e| e.into_inner()));
        if !woken.is_empty() {
            self.ready.borrow_mut().extend(woken);
        }
    }

    fn fire_timers(&self) -> Option<Instant> {
        let now = Instant::now();
        ROUND_MICROS.with(|round| round.set(micros_since_epoch(now)));
        let mut timers = self.timers.borrow_mut();
        while let Some(entry) = timers.first_entry() {
            if entry.key().0 > now {
                return Some(entry.key().0);
            }
            entry.remove().wake();
        }
        None
    }

    /// Polls every task queued when the round began.
    fn run_ready(&self) {
        let count = self.ready.borrow().len();
        for _ in 0..count {
            let Some(id) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            let (future, waker) = {
                let mut tasks = self.tasks.borrow_mut();
                let Some(task) = tasks.get_mut(id) else {
                    continue;
                };
                task.waker.queued.store(false, Ordering::Release);
                let Some(future) = task.future.take() else {
                    continue;
                };
                (future, Arc::clone(&task.waker))
            };
            let mut future = future;
            let waker = Waker::from(waker);
            let mut cx = Context::from_waker(&waker);
            if future.as_mut().poll(&mut cx).is_ready() {
                // Dropped before the slot is borrowed: dropping may touch the executor.
                drop(future);
                let task = self.tasks.borrow_mut().remove(id);
                drop(task);
            } else if let Some(task) = self.tasks.borrow_mut().get_mut(id) {
                task.future = Some(future);
            }
        }
    }

    /// Submits what the tasks queued and waits for completions: not at all if a task is ready,
    /// else until one completes or the next timer is due.
    fn submit_and_wait(&self, next_timer: Option<Instant>) {
        let ready = !self.ready.borrow().is_empty();
        let ring = self.ring.borrow();
        let result = if ready {
            ring.submit()
        } else {
            match next_timer {
                None => ring.submit_and_wait(1),
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    let timespec = types::Timespec::from(wait);
                    let args = types::SubmitArgs::new().timespec(&timespec);
                    ring.submitter().submit_with_args(1, &args)
                }
            }
        };
        match result {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(error) => tracing::error!(%error, "io_uring wait failed"),
        }
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()>>>) {
        let mut tasks = self.tasks.borrow_mut();
        let id = tasks.vacant_key();
        let waker = Arc::new(TaskWaker {
            task: id,
            queued: AtomicBool::new(true),
            remote: Arc::clone(&self.remote),
        });
        let at = tasks.insert(Task {
            future: Some(future),
            waker,
        });
        debug_assert_eq!(at, id);
        self.ready.borrow_mut().push_back(id);
    }

    /// Cancels what is still in flight and waits (a bounded time) for the kernel to let go of
    /// the buffers. Buffers it still holds then are leaked rather than freed under it.
    fn drain(&self) {
        let in_flight: Vec<usize> = {
            let mut ops = self.ops.borrow_mut();
            let ids: Vec<usize> = ops
                .items
                .iter()
                .enumerate()
                .filter(|(_, slot)| {
                    matches!(
                        slot,
                        Some(OpSlot {
                            state: OpState::Waiting(_) | OpState::Orphaned,
                            ..
                        })
                    )
                })
                .map(|(id, _)| id)
                .collect();
            for &id in &ids {
                if let Some(slot) = ops.get_mut(id) {
                    slot.state = OpState::Orphaned;
                }
            }
            ids
        };
        for id in in_flight {
            self.push_entry(
                &opcode::AsyncCancel::new(id as u64)
                    .build()
                    .user_data(CANCEL_TAG),
            );
        }
        let deadline = Instant::now() + DRAIN_FOR;
        while self.orphans() > 0 && Instant::now() < deadline {
            self.submit_and_wait(Some(Instant::now() + Duration::from_millis(50)));
            self.reap();
        }
        let mut ops = self.ops.borrow_mut();
        for slot in ops.drain() {
            if matches!(slot.state, OpState::Orphaned) {
                std::mem::forget(slot.buffer);
                std::mem::forget(slot.keep);
            }
        }
    }

    fn orphans(&self) -> usize {
        self.ops
            .borrow()
            .items
            .iter()
            .filter(|slot| {
                matches!(
                    slot,
                    Some(OpSlot {
                        state: OpState::Orphaned,
                        ..
                    })
                )
            })
            .count()
    }
}

/// Extra passes over the tasks woken during a round's run before the ring is entered.
const SAME_ROUND_PASSES: usize = 2;

/// Runs `future` on this thread, with an executor of its own, until it completes. Tasks it
/// spawned that are still running then are dropped.
pub fn block_on<T: 'static>(future: impl Future<Output = T> + 'static) -> io::Result<T> {
    let ring = IoUring::builder()
        .setup_cqsize(RING_ENTRIES * 4)
        .setup_single_issuer()
        .setup_coop_taskrun()
        // With DEFER_TASKRUN the kernel posts completions only when an enter asks for
        // events; the TASKRUN flag tells `submit` when some are waiting, so a round with
        // ready tasks still collects them (else a busy core could starve its own I/O).
        .setup_taskrun_flag()
        .setup_defer_taskrun()
        .build(RING_ENTRIES)?;
    // SAFETY: plain eventfd creation; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let executor_id = NEXT_EXECUTOR_ID.fetch_add(1, Ordering::Relaxed);
    let core = Rc::new(Core {
        ring: RefCell::new(ring),
        ready: RefCell::new(VecDeque::new()),
        tasks: RefCell::new(Slab::new()),
        ops: RefCell::new(Slab::new()),
        timers: RefCell::new(BTreeMap::new()),
        next_timer: Cell::new(0),
        remote: Arc::new(Remote {
            executor_id,
            woken: Mutex::new(Vec::new()),
            eventfd,
        }),
        wake_buffer: Box::leak(Box::new([0u8; 8])),
    });
    CURRENT.with(|current| *current.borrow_mut() = Some(Rc::clone(&core)));
    CURRENT_ID.with(|id| id.set(executor_id));
    core.arm_wake();

    let output = Rc::new(RefCell::new(None));
    {
        let output = Rc::clone(&output);
        core.spawn(Box::pin(async move {
            let value = future.await;
            *output.borrow_mut() = Some(value);
        }));
    }
    while output.borrow().is_none() {
        core.run_ready();
        // Tasks woken by the ones just run (a connection's writer, woken by its reader) run
        // in the same round, so that their operations reach the kernel with the round's one
        // enter instead of costing an enter of their own. Bounded: a task that keeps waking
        // itself cannot hold the ring's completions back.
        for _ in 0..SAME_ROUND_PASSES {
            if core.ready.borrow().is_empty() || output.borrow().is_some() {
                break;
            }
            core.run_ready();
        }
        if output.borrow().is_some() {
            break;
        }
        let next_timer = core.fire_timers();
        core.submit_and_wait(next_timer);
        core.reap();
        core.fire_timers();
    }
    // Drop the remaining tasks while the executor is still reachable: their operations
    // are orphaned and cancelled.
    let tasks = core.tasks.borrow_mut().drain();
    drop(tasks);
    core.timers.borrow_mut().clear();
    core.drain();
    CURRENT.with(|current| current.borrow_mut().take());
    CURRENT_ID.with(|id| id.set(0));
    let value = output
        .borrow_mut()
        .take()
        .expect("the main future finished");
    Ok(value)
}

/// A spawned task's result, awaited through this handle. Dropping the handle lets the task
/// run on (detached).
pub struct JoinHandle<T> {
    state: Rc<JoinState<T>>,
}

struct JoinState<T> {
    value: RefCell<Option<T>>,
    waiter: RefCell<Option<Waker>>,
}

impl<T> JoinHandle<T> {
    /// Lets the task run on without anyone waiting for it.
    pub fn detach(self) {}
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.state.value.borrow_mut().take() {
            return Poll::Ready(value);
        }
        *self.state.waiter.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Starts `future` as a task of this thread's executor.
pub fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    let state = Rc::new(JoinState {
        value: RefCell::new(None),
        waiter: RefCell::new(None),
    });
    let task = Joined {
        future,
        state: Rc::clone(&state),
    };
    with_core(|core| core.spawn(Box::pin(task)));
    JoinHandle { state }
}

/// A task's future with the slot its value goes to. A plain struct rather than an `async`
/// block around the future: such a block holds the future twice over (before and while it
/// is awaited), which doubled the memory of every task (a connection's reader took 2.7 KiB
/// instead of 1.4).
struct Joined<F: Future> {
    future: F,
    state: Rc<JoinState<F::Output>>,
}

impl<F: Future> Future for Joined<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `future` is structurally pinned: it is never moved out of `self`, and
        // `Joined` has no Drop of its own and is not Unpin unless `F` is.
        let (future, state) = unsafe {
            let this = self.get_unchecked_mut();
            (Pin::new_unchecked(&mut this.future), &this.state)
        };
        match future.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(value) => {
                *state.value.borrow_mut() = Some(value);
                if let Some(waker) = state.waiter.borrow_mut().take() {
                    waker.wake();
                }
                Poll::Ready(())
            }
        }
    }
}

/// Completes once, after `duration`.
pub struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(key) = self.key.take() {
                with_core(|core| core.timers.borrow_mut().remove(&key));
            }
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let key = *self.key.get_or_insert_with(|| {
            with_core(|core| {
                let seq = core.next_timer.get();
                core.next_timer.set(seq + 1);
                (deadline, seq)
            })
        });
        with_core(|core| core.timers.borrow_mut().insert(key, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = CURRENT.try_with(|current| {
                if let Some(core) = &*current.borrow() {
                    core.timers.borrow_mut().remove(&key);
                }
            });
        }
    }
}

/// A future that completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + duration,
        key: None,
    }
}

/// Lets every other ready task run once before this one goes on.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// An operation in the ring. Owns nothing itself: its slot holds the buffer.
pub(crate) struct Op {
    id: Option<usize>,
}

impl OpSlot {
    fn new(buffer: Option<Vec<u8>>, keep: Option<Box<dyn Any>>, makes_fd: bool) -> OpSlot {
        OpSlot {
            state: OpState::Waiting(None),
            makes_fd,
            buffer,
            keep,
        }
    }
}

impl Op {
    /// Queues `entry`, whose buffer (if any) is `buffer`, moved into the slot first so its
    /// address stays fixed while the kernel uses it. `make` builds the entry from the
    /// buffer's final place.
    pub(crate) fn submit(
        buffer: Option<Vec<u8>>,
        make: impl FnOnce(Option<&mut Vec<u8>>) -> squeue::Entry,
    ) -> Op {
        Op::submit_with(OpSlot::new(buffer, None, false), make)
    }

    /// Like `submit`, for an operation whose result is a new file descriptor: if the
    /// future is dropped before the completion, the descriptor is closed when it comes.
    pub(crate) fn submit_fd(make: impl FnOnce() -> squeue::Entry) -> Op {
        Op::submit_with(OpSlot::new(None, None, true), |_| make())
    }

    /// Queues `entry`, whose memory `keep` owns, and keeps it until the completion.
    pub(crate) fn submit_keeping(keep: Box<dyn Any>, entry: squeue::Entry) -> Op {
        Op::submit_with(OpSlot::new(None, Some(keep), false), |_| entry)
    }

    fn submit_with(slot: OpSlot, make: impl FnOnce(Option<&mut Vec<u8>>) -> squeue::Entry) -> Op {
        with_core(|core| {
            let (id, entry) = {
                let mut ops = core.ops.borrow_mut();
                let id = ops.insert(slot);
                let slot = ops.get_mut(id).expect("just inserted");
                let entry = make(slot.buffer.as_mut()).user_data(id as u64);
                (id, entry)
            };
            core.push_entry(&entry);
            Op { id: Some(id) }
        })
    }

    /// Hands every entry queued so far to the kernel now, instead of at the end of the round.
    /// For operations whose latency someone waits on and which the device serves better one
    /// at a time than in a burst: page reads (see `disk::read`).
    pub(crate) fn enter_now() {
        with_core(|core| {
            if let Err(error) = core.ring.borrow_mut().submit() {
                // Left queued: the round's own enter submits them (and reports a lasting
                // failure).
                if error.raw_os_error() != Some(libc::EBUSY) {
                    tracing::warn!(%error, "io_uring submit failed");
                }
            }
        })
    }

    /// Entries queued on this executor's ring and not yet handed to the kernel.
    #[cfg(test)]
    pub(crate) fn queued() -> usize {
        with_core(|core| core.ring.borrow_mut().submission().len())
    }

    /// The completion's result and the slot (with what it kept), once the kernel is done.
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<(i32, OpSlot)> {
        let id = self.id.expect("an Op is not polled after it completed");
        let done = with_core(|core| {
            let mut ops = core.ops.borrow_mut();
            let slot = ops.get_mut(id).expect("a live op has a slot");
            match &mut slot.state {
                OpState::Done(result) => {
                    let result = *result;
                    Some((result, ops.remove(id).expect("a live op has a slot")))
                }
                OpState::Waiting(waker) => {
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    None
                }
                OpState::Orphaned => unreachable!("a live op is not orphaned"),
            }
        });
        match done {
            Some(output) => {
                self.id = None;
                Poll::Ready(output)
            }
            None => Poll::Pending,
        }
    }

    /// Like awaiting the op, but also hands back what `submit_keeping` kept.
    pub(crate) async fn finish_keeping(mut self) -> (i32, Option<Box<dyn Any>>) {
        let (result, slot) = std::future::poll_fn(|cx| self.poll_done(cx)).await;
        (result, slot.keep)
    }
}

/// Whether this thread runs an executor (whose ring can take disk operations).
pub fn on_executor() -> bool {
    CURRENT_ID.with(Cell::get) != 0
}

impl Future for Op {
    /// The completion's result and the buffer back.
    type Output = (i32, Option<Vec<u8>>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_done(cx)
            .map(|(result, slot)| (result, slot.buffer))
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let _ = CURRENT.try_with(|current| {
            let current = current.borrow();
            let Some(core) = &*current else { return };
            let cancel = {
                let mut ops = core.ops.borrow_mut();
                let Some(slot) = ops.get_mut(id) else { return };
                if matches!(slot.state, OpState::Done(_)) {
                    ops.remove(id);
                    false
                } else {
                    slot.state = OpState::Orphaned;
                    true
                }
            };
            if cancel {
                core.push_entry(
                    &opcode::AsyncCancel::new(id as u64)
                        .build()
                        .user_data(CANCEL_TAG),
                );
            }
        });
    }
}

/// A result from the ring as an `io::Result`.
pub(crate) fn io_result(result: i32) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::from_raw_os_error(-result))
    } else {
        Ok(result as usize)
    }
}

/// The raw descriptor type the ring's entries name.
pub(crate) fn fd(raw: RawFd) -> types::Fd {
    types::Fd(raw)
}
