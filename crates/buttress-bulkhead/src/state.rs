//! The shared state of one bulkhead: a counting semaphore whose fast path is
//! one compare-and-swap, with a bounded FIFO wait queue behind a mutex for
//! the slow path.
//!
//! Lost wake-ups are ruled out by the classic store-then-load pairing on two
//! `SeqCst` atomics: a would-be waiter raises `waiters` before it looks at
//! `available` (under the queue lock); a releaser raises `available` before
//! it looks at `waiters`. One of the two always sees the other, so either
//! the waiter takes the permit itself or the releaser hands it over.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use buttress_core::{BulkheadFullReason, Listeners};
use tokio::time::{Instant, Sleep};

use crate::events::BulkheadEvent;

/// `max_wait` stored as nanoseconds; this value means "no limit".
const NO_LIMIT: u64 = u64::MAX;

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// Free permits; negative after the limit was lowered below the calls
    /// in flight.
    available: AtomicIsize,
    max_concurrent: AtomicUsize,
    max_queue: AtomicUsize,
    max_wait_nanos: AtomicU64,
    /// Callers in the queue (raised before they look at `available`).
    waiters: AtomicUsize,
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    completed: AtomicU64,
    rejected: AtomicU64,
    pub(crate) listeners: Listeners<BulkheadEvent>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.name)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// The state of a bulkhead at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BulkheadSnapshot {
    /// The limit of concurrent calls.
    pub max_concurrent: usize,
    /// Calls holding a permit now.
    pub active: usize,
    /// Callers waiting in the queue now.
    pub queued: usize,
    /// Permits free now.
    pub available: usize,
    /// Calls that held a permit and released it.
    pub completed: u64,
    /// Calls rejected (queue full or wait timed out).
    pub rejected: u64,
}

pub(crate) struct Waiter {
    granted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before it can
    // panic, so a poisoned lock is still sound to use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) enum Enqueued {
    /// A permit was free after all.
    Acquired,
    /// In the queue.
    Queued(Arc<Waiter>),
    /// The queue is full (or disabled).
    Full,
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        max_concurrent: usize,
        max_queue: usize,
        max_wait: Option<Duration>,
        listeners: Listeners<BulkheadEvent>,
    ) -> Self {
        Self {
            name,
            available: AtomicIsize::new(to_isize(max_concurrent)),
            max_concurrent: AtomicUsize::new(max_concurrent),
            max_queue: AtomicUsize::new(max_queue),
            max_wait_nanos: AtomicU64::new(wait_to_nanos(max_wait)),
            waiters: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            completed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            listeners,
        }
    }

    /// Takes a permit if one is free and nobody queues ahead.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        self.waiters.load(SeqCst) == 0 && self.take_available()
    }

    #[inline]
    fn take_available(&self) -> bool {
        let mut cur = self.available.load(Relaxed);
        loop {
            if cur <= 0 {
                return false;
            }
            match self
                .available
                .compare_exchange_weak(cur, cur - 1, SeqCst, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The slow path: take a free permit, or join the queue, or be told
    /// it is full.
    pub(crate) fn enqueue(&self) -> Enqueued {
        let mut queue = lock(&self.queue);
        self.waiters.fetch_add(1, SeqCst);
        if queue.is_empty() && self.take_available() {
            self.waiters.fetch_sub(1, SeqCst);
            return Enqueued::Acquired;
        }
        let max_queue = self.max_queue.load(Relaxed);
        if queue.len() >= max_queue || self.max_wait() == Some(Duration::ZERO) {
            self.waiters.fetch_sub(1, SeqCst);
            return Enqueued::Full;
        }
        let waiter = Arc::new(Waiter {
            granted: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        queue.push_back(waiter.clone());
        Enqueued::Queued(waiter)
    }

    /// Gives a permit back (a call finished, or a granted permit was never
    /// used) and hands free permits to waiters, front first.
    pub(crate) fn release(&self) {
        self.available.fetch_add(1, SeqCst);
        if self.waiters.load(SeqCst) != 0 {
            self.grant_waiters();
        }
    }

    #[cold]
    fn grant_waiters(&self) {
        loop {
            let mut queue = lock(&self.queue);
            if queue.is_empty() || !self.take_available() {
                return;
            }
            let waiter = queue.pop_front().expect("checked non-empty");
            self.waiters.fetch_sub(1, SeqCst);
            waiter.granted.store(true, SeqCst);
            let waker = lock(&waiter.waker).take();
            drop(queue);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// A waiter gives up (dropped or timed out). Returns `true` if it had
    /// been granted a permit meanwhile, which the caller now owns.
    pub(crate) fn leave(&self, waiter: &Arc<Waiter>) -> bool {
        let mut queue = lock(&self.queue);
        if let Some(pos) = queue.iter().position(|w| Arc::ptr_eq(w, waiter)) {
            queue.remove(pos);
            self.waiters.fetch_sub(1, SeqCst);
            return false;
        }
        // Not in the queue: it was granted (under this same lock).
        waiter.granted.load(SeqCst)
    }

    pub(crate) fn record_completed(&self) {
        self.completed.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }

    pub(crate) fn max_wait(&self) -> Option<Duration> {
        match self.max_wait_nanos.load(Relaxed) {
            NO_LIMIT => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    pub(crate) fn set_max_concurrent(&self, max: usize) {
        let old = self.max_concurrent.swap(max, SeqCst);
        let delta = to_isize(max) - to_isize(old);
        self.available.fetch_add(delta, SeqCst);
        if delta > 0 && self.waiters.load(SeqCst) != 0 {
            self.grant_waiters();
        }
    }

    pub(crate) fn set_max_queue(&self, max: usize) {
        self.max_queue.store(max, Relaxed);
    }

    pub(crate) fn set_max_wait(&self, max_wait: Option<Duration>) {
        self.max_wait_nanos.store(wait_to_nanos(max_wait), Relaxed);
    }

    pub(crate) fn snapshot(&self) -> BulkheadSnapshot {
        let max = self.max_concurrent.load(SeqCst);
        let available = self.available.load(SeqCst);
        BulkheadSnapshot {
            max_concurrent: max,
            active: (to_isize(max) - available).max(0) as usize,
            queued: self.waiters.load(SeqCst),
            available: available.max(0) as usize,
            completed: self.completed.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }

    pub(crate) fn reset_counters(&self) {
        self.completed.store(0, Relaxed);
        self.rejected.store(0, Relaxed);
    }

    /// No call holds a permit and nobody waits.
    pub(crate) fn is_idle(&self) -> bool {
        self.waiters.load(SeqCst) == 0
            && self.available.load(SeqCst) >= to_isize(self.max_concurrent.load(SeqCst))
    }
}

fn to_isize(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

fn wait_to_nanos(d: Option<Duration>) -> u64 {
    match d {
        None => NO_LIMIT,
        Some(d) => u64::try_from(d.as_nanos())
            .unwrap_or(NO_LIMIT - 1)
            .min(NO_LIMIT - 1),
    }
}

/// A permit: released on drop, whatever happens to the call.
pub(crate) struct Permit {
    shared: Arc<Shared>,
    /// When it was taken, only when someone listens for `Finished`.
    since: Option<Instant>,
}

impl Permit {
    #[inline]
    pub(crate) fn new(shared: Arc<Shared>, waited: Option<Duration>) -> Self {
        let since = if shared.listeners.is_empty() {
            None
        } else {
            let name = shared.name.clone();
            shared.listeners.emit(|| BulkheadEvent::Permitted {
                name,
                waited: waited.unwrap_or_default(),
            });
            Some(Instant::now())
        };
        Self { shared, since }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.shared.record_completed();
        self.shared.release();
        if let Some(since) = self.since {
            let shared = &self.shared;
            shared.listeners.emit(|| BulkheadEvent::Finished {
                name: shared.name.clone(),
                held: since.elapsed(),
            });
        }
    }
}

/// One caller's wait for a permit: fast path, queue, or rejection.
pub(crate) struct Acquire {
    shared: Arc<Shared>,
    state: AcquireState,
}

enum AcquireState {
    Start,
    Waiting {
        waiter: Arc<Waiter>,
        /// The queue timeout; boxed because the owner may not be pinned.
        sleep: Option<Pin<Box<Sleep>>>,
        since: Instant,
    },
    Done,
}

impl Acquire {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            state: AcquireState::Start,
        }
    }

    pub(crate) fn poll_acquire(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Permit, BulkheadFullReason>> {
        loop {
            match &mut self.state {
                AcquireState::Start => {
                    if self.shared.try_acquire() {
                        self.state = AcquireState::Done;
                        return Poll::Ready(Ok(Permit::new(self.shared.clone(), None)));
                    }
                    match self.shared.enqueue() {
                        Enqueued::Acquired => {
                            self.state = AcquireState::Done;
                            return Poll::Ready(Ok(Permit::new(self.shared.clone(), None)));
                        }
                        Enqueued::Full => {
                            self.state = AcquireState::Done;
                            return Poll::Ready(Err(self.reject(BulkheadFullReason::QueueFull)));
                        }
                        Enqueued::Queued(waiter) => {
                            let since = Instant::now();
                            let sleep = self
                                .shared
                                .max_wait()
                                .and_then(|d| since.checked_add(d))
                                .map(|at| Box::pin(tokio::time::sleep_until(at)));
                            let shared = &self.shared;
                            shared.listeners.emit(|| BulkheadEvent::Queued {
                                name: shared.name.clone(),
                                queued: shared.waiters.load(Relaxed),
                            });
                            self.state = AcquireState::Waiting {
                                waiter,
                                sleep,
                                since,
                            };
                        }
                    }
                }
                AcquireState::Waiting {
                    waiter,
                    sleep,
                    since,
                } => {
                    if waiter.granted.load(SeqCst) {
                        let waited = since.elapsed();
                        self.state = AcquireState::Done;
                        return Poll::Ready(Ok(Permit::new(self.shared.clone(), Some(waited))));
                    }
                    {
                        let mut slot = lock(&waiter.waker);
                        match &*slot {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => *slot = Some(cx.waker().clone()),
                        }
                    }
                    if waiter.granted.load(SeqCst) {
                        continue;
                    }
                    if let Some(sleep) = sleep {
                        if sleep.as_mut().poll(cx).is_ready() {
                            let waiter = waiter.clone();
                            let granted = self.shared.leave(&waiter);
                            let waited = since.elapsed();
                            self.state = AcquireState::Done;
                            if granted {
                                return Poll::Ready(Ok(Permit::new(
                                    self.shared.clone(),
                                    Some(waited),
                                )));
                            }
                            return Poll::Ready(Err(self.reject(BulkheadFullReason::WaitTimedOut)));
                        }
                    }
                    return Poll::Pending;
                }
                AcquireState::Done => panic!("Acquire polled after completion"),
            }
        }
    }

    /// The bulkhead's name.
    pub(crate) fn name(&self) -> Arc<str> {
        self.shared.name.clone()
    }

    fn reject(&self, reason: BulkheadFullReason) -> BulkheadFullReason {
        self.shared.record_rejected();
        let shared = &self.shared;
        shared.listeners.emit(|| BulkheadEvent::Rejected {
            name: shared.name.clone(),
            reason,
        });
        reason
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let AcquireState::Waiting { waiter, .. } = &self.state {
            if self.shared.leave(waiter) {
                // Granted just before we gave up: pass it on.
                self.shared.release();
            }
        }
    }
}
