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
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use buttress_core::error::BulkheadFull;
use buttress_core::{BulkheadFullReason, Listeners};
use tokio::time::{Instant, Sleep};

use crate::events::BulkheadEvent;
use crate::sync::{
    seq_cst_pairing, AtomicBool, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering::*,
};

/// `max_wait` stored as nanoseconds; this value means "no limit".
const NO_LIMIT: u64 = u64::MAX;

/// The largest limit: keeps the biased count of free permits inside the
/// low 32 bits of [`Shared::state`] whatever the resizes.
pub(crate) const MAX_PERMITS: usize = 1 << 30;

/// Free permits are stored plus this bias, so that a negative count (after
/// the limit was lowered below the calls in flight) fits in 32 bits.
const BIAS: i64 = 1 << 31;
const LOW: u64 = 0xFFFF_FFFF;
/// One permit taken, in the high half of [`Shared::state`].
const TAKEN_ONE: u64 = 1 << 32;

#[inline]
fn available_of(state: u64) -> i64 {
    (state & LOW) as i64 - BIAS
}

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// Low 32 bits: free permits plus [`BIAS`] (negative after the limit
    /// was lowered below the calls in flight). High 32 bits: permits ever
    /// taken, wrapping, with the wraps counted in `epochs`. One word, so a
    /// permit costs one compare-and-swap to take and one add to give back,
    /// and the `completed` count comes for free.
    state: AtomicU64,
    epochs: AtomicU64,
    /// `completed` at the last reset.
    completed_base: AtomicU64,
    max_concurrent: AtomicUsize,
    max_queue: AtomicUsize,
    max_wait_nanos: AtomicU64,
    /// Callers in the queue (raised before they look at `available`).
    waiters: AtomicUsize,
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    rejected: AtomicU64,
    pub(crate) listeners: Listeners<BulkheadEvent>,
    /// The origin of [`Permit`]'s timestamps.
    base: Instant,
    /// The hint a rejection carries (`Retry-After`, gRPC pushback), in
    /// nanoseconds; [`NO_LIMIT`] for none.
    retry_after_nanos: AtomicU64,
    /// Serialises run-time changes (the setters and `reconfigure`), so that
    /// two at once never leave a mix of both and a check of one limit
    /// against another sees the value that stays.
    reconfig: Mutex<()>,
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
            state: AtomicU64::new((BIAS + max_concurrent.min(MAX_PERMITS) as i64) as u64),
            epochs: AtomicU64::new(0),
            completed_base: AtomicU64::new(0),
            max_concurrent: AtomicUsize::new(max_concurrent.min(MAX_PERMITS)),
            max_queue: AtomicUsize::new(max_queue),
            max_wait_nanos: AtomicU64::new(wait_to_nanos(max_wait)),
            waiters: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            rejected: AtomicU64::new(0),
            listeners,
            base: Instant::now(),
            retry_after_nanos: AtomicU64::new(NO_LIMIT),
            reconfig: Mutex::new(()),
        }
    }

    /// The hint that rejections carry.
    pub(crate) fn with_retry_after(self, retry_after: Option<Duration>) -> Self {
        self.set_retry_after(retry_after);
        self
    }

    /// The error of a rejection for `reason`, with the retry hint.
    pub(crate) fn rejection(&self, reason: BulkheadFullReason) -> BulkheadFull {
        rejection(self.name.clone(), reason, self.retry_after())
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        nanos_to_wait(self.retry_after_nanos.load(Relaxed))
    }

    pub(crate) fn set_retry_after(&self, retry_after: Option<Duration>) {
        self.retry_after_nanos
            .store(wait_to_nanos(retry_after), Relaxed);
    }

    /// The writers' lock (see `reconfig`).
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, ()> {
        lock(&self.reconfig)
    }

    /// Takes a permit if one is free and nobody queues ahead.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        self.waiters.load(SeqCst) == 0 && self.take_available()
    }

    #[inline]
    fn take_available(&self) -> bool {
        // `SeqCst` loads (also on CAS failure): in `enqueue` this read is the
        // waiter's half of the pairing described at the top of the module,
        // and a weaker load could miss a releaser's increment that, in turn,
        // missed the waiter (store buffering). Costs nothing extra on x86.
        let mut cur = self.state.load(SeqCst);
        loop {
            if available_of(cur) <= 0 {
                return false;
            }
            let next = (cur - 1).wrapping_add(TAKEN_ONE);
            match self.state.compare_exchange_weak(cur, next, SeqCst, SeqCst) {
                Ok(_) => {
                    if cur >> 32 == LOW {
                        self.epochs.fetch_add(1, Relaxed);
                    }
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// The slow path: take a free permit, or join the queue, or be told
    /// it is full.
    pub(crate) fn enqueue(&self) -> Enqueued {
        let mut queue = lock(&self.queue);
        self.waiters.fetch_add(1, SeqCst);
        seq_cst_pairing();
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
        self.state.fetch_add(1, SeqCst);
        seq_cst_pairing();
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

    /// Counts a rejection that reached its caller, and reports it.
    pub(crate) fn count_rejected(&self, reason: BulkheadFullReason) {
        self.rejected.fetch_add(1, Relaxed);
        trace_rejected(&self.name, reason, self.waiters.load(Relaxed));
        self.listeners.emit(|| BulkheadEvent::Rejected {
            name: self.name.clone(),
            reason,
        });
    }

    pub(crate) fn max_wait(&self) -> Option<Duration> {
        nanos_to_wait(self.max_wait_nanos.load(Relaxed))
    }

    pub(crate) fn set_max_concurrent(&self, max: usize) {
        let max = max.min(MAX_PERMITS);
        let old = self.max_concurrent.swap(max, SeqCst);
        let delta = max as i64 - old as i64;
        if delta >= 0 {
            self.state.fetch_add(delta as u64, SeqCst);
        } else {
            self.state.fetch_sub(delta.unsigned_abs(), SeqCst);
        }
        seq_cst_pairing();
        if delta > 0 && self.waiters.load(SeqCst) != 0 {
            self.grant_waiters();
        }
    }

    pub(crate) fn max_queue(&self) -> usize {
        self.max_queue.load(Relaxed)
    }

    pub(crate) fn set_max_queue(&self, max: usize) {
        self.max_queue.store(max, Relaxed);
    }

    pub(crate) fn set_max_wait(&self, max_wait: Option<Duration>) {
        self.max_wait_nanos.store(wait_to_nanos(max_wait), Relaxed);
    }

    /// The settings as a config (the caller holds the writers' lock).
    pub(crate) fn config(&self) -> crate::BulkheadConfig {
        crate::BulkheadConfig {
            name: self.name.to_string(),
            max_concurrent: self.max_concurrent.load(SeqCst),
            max_queue: self.max_queue(),
            max_wait: self.max_wait(),
            retry_after: self.retry_after(),
        }
    }

    /// Applies a validated config's limits (the caller holds the writers'
    /// lock). The queue bound and timeout change first, then the limit,
    /// whose raise admits queued callers at once.
    pub(crate) fn apply(&self, config: &crate::BulkheadConfig) {
        self.set_max_queue(config.max_queue);
        self.set_max_wait(config.max_wait);
        self.set_retry_after(config.retry_after);
        if config.max_concurrent != self.max_concurrent.load(SeqCst) {
            self.set_max_concurrent(config.max_concurrent);
        }
    }

    pub(crate) fn snapshot(&self) -> BulkheadSnapshot {
        let max = self.max_concurrent.load(SeqCst);
        let state = self.state.load(SeqCst);
        let available = available_of(state);
        let active = (max as i64 - available).max(0) as u64;
        BulkheadSnapshot {
            max_concurrent: max,
            active: active as usize,
            queued: self.waiters.load(SeqCst),
            available: available.max(0) as usize,
            completed: self
                .completed_raw(state, active)
                .saturating_sub(self.completed_base.load(Relaxed)),
            rejected: self.rejected.load(Relaxed),
        }
    }

    /// Permits ever released: taken minus held now.
    fn completed_raw(&self, state: u64, active: u64) -> u64 {
        let taken = (self.epochs.load(Relaxed) << 32) | (state >> 32);
        taken.saturating_sub(active)
    }

    pub(crate) fn reset_counters(&self) {
        let max = self.max_concurrent.load(SeqCst);
        let state = self.state.load(SeqCst);
        let active = (max as i64 - available_of(state)).max(0) as u64;
        self.completed_base
            .store(self.completed_raw(state, active), Relaxed);
        self.rejected.store(0, Relaxed);
    }

    /// No call holds a permit and nobody waits.
    pub(crate) fn is_idle(&self) -> bool {
        self.waiters.load(SeqCst) == 0
            && available_of(self.state.load(SeqCst)) >= self.max_concurrent.load(SeqCst) as i64
    }
}

fn nanos_to_wait(n: u64) -> Option<Duration> {
    match n {
        NO_LIMIT => None,
        n => Some(Duration::from_nanos(n)),
    }
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
    /// When it was taken, in nanoseconds after the bulkhead's `base`,
    /// plus one; 0 when nobody listens for `Finished`. A `u64`, not an
    /// `Option<Instant>`: the permit is moved into the response future on
    /// every call, and two words move in registers.
    since: u64,
}

impl Permit {
    #[inline]
    pub(crate) fn new(anchor: &Arc<Shared>, waited: Option<Duration>) -> Self {
        let shared = &**anchor;
        let since = if shared.listeners.is_empty() {
            0
        } else {
            let name = shared.name.clone();
            shared.listeners.emit(|| BulkheadEvent::Permitted {
                name,
                waited: waited.unwrap_or_default(),
            });
            let nanos = Instant::now()
                .saturating_duration_since(shared.base)
                .as_nanos();
            u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
        };
        Self {
            shared: anchor.clone(),
            since,
        }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        let since = self.since;
        let shared = &self.shared;
        shared.release();
        if since != 0 {
            let taken = shared.base + Duration::from_nanos(since - 1);
            shared.listeners.emit(|| BulkheadEvent::Finished {
                name: shared.name.clone(),
                held: taken.elapsed(),
            });
        }
    }
}

/// One caller's wait for a permit: fast path, queue, or rejection.
pub(crate) struct Acquire {
    shared: Arc<Shared>,
    state: AcquireState,
    /// Count and report a rejection here (the keyed future, which hands
    /// it to its caller at once); `false` when the owner does so when it
    /// delivers it (the service, whose `poll_ready` decides and whose
    /// `call` may never come).
    count: bool,
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
            count: true,
        }
    }

    /// An acquisition whose rejection the owner counts when it delivers it
    /// ([`Shared::count_rejected`]).
    pub(crate) fn deferred(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            state: AcquireState::Start,
            count: false,
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
                        return Poll::Ready(Ok(Permit::new(&self.shared, None)));
                    }
                    match self.shared.enqueue() {
                        Enqueued::Acquired => {
                            self.state = AcquireState::Done;
                            return Poll::Ready(Ok(Permit::new(&self.shared, None)));
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
                            tracing::trace!(
                                buttress.pattern = PATTERN,
                                buttress.name = &*shared.name,
                                bulkhead.queued = shared.waiters.load(Relaxed),
                                "call queued"
                            );
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
                        return Poll::Ready(Ok(Permit::new(&self.shared, Some(waited))));
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
                                return Poll::Ready(Ok(Permit::new(&self.shared, Some(waited))));
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

    /// The error of a rejection for `reason`, with the retry hint.
    pub(crate) fn rejection(&self, reason: BulkheadFullReason) -> BulkheadFull {
        self.shared.rejection(reason)
    }

    fn reject(&self, reason: BulkheadFullReason) -> BulkheadFullReason {
        if self.count {
            self.shared.count_rejected(reason);
        }
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

/// The `buttress.pattern` field of this crate's `tracing` events.
pub(crate) const PATTERN: &str = "bulkhead";

/// A reason's name in snake case (as its serde form), for `tracing`.
pub(crate) fn reason_str(reason: BulkheadFullReason) -> &'static str {
    match reason {
        BulkheadFullReason::QueueFull => "queue_full",
        BulkheadFullReason::WaitTimedOut => "wait_timed_out",
    }
}

/// The `tracing` event of a rejection: `debug`, one per rejected call. Not
/// `warn`: a full bulkhead rejects every call beyond its limit, and a
/// `warn` per call would flood the log exactly when the service is
/// busiest. `bulkhead.queued` is the number of calls waiting then.
#[cold]
pub(crate) fn trace_rejected(name: &str, reason: BulkheadFullReason, queued: usize) {
    tracing::debug!(
        buttress.pattern = PATTERN,
        buttress.name = name,
        bulkhead.queued = queued,
        bulkhead.reason = reason_str(reason),
        "call rejected: bulkhead full"
    );
}

/// A rejection's error, with `retry_after` when there is one.
pub(crate) fn rejection(
    name: Arc<str>,
    reason: BulkheadFullReason,
    retry_after: Option<Duration>,
) -> BulkheadFull {
    let error = BulkheadFull::new(name, reason);
    match retry_after {
        Some(after) => error.with_retry_after(after),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max: usize) -> Shared {
        Shared::new(Arc::from("t"), max, 0, None, Listeners::new())
    }

    #[test]
    fn completed_count_survives_the_wrap_of_the_packed_counter() {
        let s = shared(2);
        // Pretend u32::MAX permits were taken and released already.
        s.state.fetch_add(LOW << 32, SeqCst);
        assert_eq!(s.snapshot().completed, u64::from(u32::MAX));
        assert!(s.take_available());
        assert!(s.take_available());
        assert!(!s.take_available());
        assert_eq!(s.snapshot().active, 2);
        s.release();
        s.release();
        let snap = s.snapshot();
        assert_eq!((snap.active, snap.available), (0, 2));
        assert_eq!(snap.completed, u64::from(u32::MAX) + 2);
    }

    #[test]
    fn negative_availability_after_shrinking_is_exact() {
        let s = shared(3);
        for _ in 0..3 {
            assert!(s.take_available());
        }
        s.set_max_concurrent(1);
        let snap = s.snapshot();
        assert_eq!(
            (snap.max_concurrent, snap.active, snap.available),
            (1, 3, 0)
        );
        s.release();
        s.release();
        assert!(!s.take_available(), "still at the new limit");
        s.release();
        assert!(s.take_available());
        s.set_max_concurrent(usize::MAX);
        assert_eq!(s.snapshot().max_concurrent, MAX_PERMITS);
        assert_eq!(s.snapshot().available, MAX_PERMITS - 1);
    }

    #[test]
    fn reset_restarts_completed_and_rejected() {
        let s = shared(1);
        assert!(s.take_available());
        s.release();
        s.count_rejected(BulkheadFullReason::QueueFull);
        s.reset_counters();
        assert_eq!((s.snapshot().completed, s.snapshot().rejected), (0, 0));
        assert!(s.take_available());
        s.release();
        assert_eq!(s.snapshot().completed, 1);
    }
}
