//! Timers reused across calls, one small pool per thread.
//!
//! A fresh `tokio::time::Sleep` per call costs a timer-wheel insertion and
//! a removal, each under the time driver's lock, plus two clones of the
//! runtime handle. A call that is pending for a moment (the common case
//! this layer arms a timer for) pays all of that although its timer never
//! fires. So a call that completes hands its boxed `Sleep` to a pool of the
//! thread it completes on, still registered, and the next call on that
//! thread resets it: tokio moves a registered deadline later with one
//! compare-and-swap, with no lock and no wheel operation.
//!
//! Before a timer enters the pool it lets go of the last task's waker (it
//! is polled once with a no-op waker), so a pooled timer whose old deadline
//! passes wakes nobody and keeps no task alive. A timer that fired, or
//! whose call was cancelled, is not pooled: it is dropped, as a `Sleep`
//! would be.
//!
//! Timers belong to the runtime whose driver they are registered with: a
//! pool holds the timers of one runtime, the one current when they were
//! made, and is emptied when the thread arms a timer in another runtime.
//! A pooled timer that has fired (while pooled, or because its runtime shut
//! down, whose driver fires every timer) is dropped when found, never
//! reset, so a runtime id that tokio reused could not hand out a dead
//! runtime's timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use tokio::runtime::{Handle, Id};
use tokio::task::coop::unconstrained;
use tokio::time::{sleep_until, Instant, Sleep};

/// Most timers a thread keeps for reuse.
pub(crate) const CAPACITY: usize = 64;

/// The timer of one call: a boxed `Sleep`, and the runtime it was made in
/// when it may be pooled.
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// `None`: the layer does not reuse timers, or there was no runtime.
    runtime: Option<Id>,
}

struct Pool {
    /// The runtime every timer in `timers` belongs to.
    runtime: Option<Id>,
    timers: Vec<Pin<Box<Sleep>>>,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { runtime: None, timers: Vec::new() })
    };
}

impl Timer {
    /// A timer that goes off at `deadline`; with `reuse`, taken from this
    /// thread's pool when it holds one of the current runtime.
    ///
    /// Panics outside a tokio runtime with the time driver enabled, as
    /// `tokio::time::sleep_until` does.
    pub(crate) fn at(deadline: Instant, reuse: bool) -> Self {
        let runtime = if reuse {
            Handle::try_current().ok().map(|handle| handle.id())
        } else {
            None
        };
        let sleep = match runtime.and_then(take) {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(sleep_until(deadline)),
        };
        Timer { sleep, runtime }
    }

    /// Polls the timer: ready once its deadline has passed.
    #[inline]
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }

    /// The call completed before the deadline: hands the timer to this
    /// thread's pool, or drops it.
    pub(crate) fn release(mut self) {
        let Some(runtime) = self.runtime else {
            return;
        };
        // Only a timer the pool will take is polled again; any other is
        // dropped as it is, as a `Sleep` would be. A timer that fired is
        // dropped too: it may have fired because its runtime shut down,
        // and must not be polled then.
        if !fits(runtime) || self.sleep.is_elapsed() {
            return;
        }
        // Let go of the last task's waker, whatever the task's cooperative
        // budget (out of budget, `Sleep` would not register the no-op).
        let mut cx = Context::from_waker(Waker::noop());
        if pin!(unconstrained(self.sleep.as_mut()))
            .poll(&mut cx)
            .is_ready()
        {
            return;
        }
        let sleep = self.sleep;
        let _ = POOL.try_with(move |pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.accepts(runtime) {
                    pool.timers.push(sleep);
                }
            }
        });
    }

    /// The address of the boxed `Sleep`, to tell in tests whether a timer
    /// was reused.
    #[cfg(test)]
    fn addr(&self) -> *const Sleep {
        &*self.sleep
    }
}

impl Pool {
    fn accepts(&self, runtime: Id) -> bool {
        self.runtime == Some(runtime) && self.timers.len() < CAPACITY
    }
}

/// Whether this thread's pool has room for a timer of `runtime` (not when
/// it is another runtime's, full, in use, or the thread is exiting).
fn fits(runtime: Id) -> bool {
    POOL.try_with(|pool| pool.try_borrow().is_ok_and(|pool| pool.accepts(runtime)))
        .unwrap_or(false)
}

/// A live timer of `runtime` from this thread's pool, if it has one. A pool
/// of another runtime is emptied; fired timers found on top are dropped.
fn take(runtime: Id) -> Option<Pin<Box<Sleep>>> {
    let mut stale = Vec::new();
    let taken = POOL
        .try_with(|pool| {
            let mut pool = pool.try_borrow_mut().ok()?;
            if pool.runtime != Some(runtime) {
                // Dropped below, outside the borrow.
                stale = std::mem::take(&mut pool.timers);
                pool.runtime = Some(runtime);
                return None;
            }
            while let Some(sleep) = pool.timers.pop() {
                if !sleep.is_elapsed() {
                    return Some(sleep);
                }
                // Fired: it holds no waker, and its runtime may be gone.
                stale.push(sleep);
            }
            None
        })
        .ok()
        .flatten();
    drop(stale);
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    fn pooled() -> usize {
        POOL.with(|pool| pool.borrow().timers.len())
    }

    /// Polls `timer` once, registering it with the driver.
    fn arm(timer: &mut Timer) {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(timer.poll_elapsed(&mut cx).is_pending());
    }

    /// Arms a timer for `after` from now and releases it to the pool.
    fn pool_one(after: Duration) {
        let mut timer = Timer::at(Instant::now() + after, true);
        arm(&mut timer);
        timer.release();
    }

    fn runtime(paused: bool) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(paused)
            .build()
            .unwrap()
    }

    async fn elapsed(timer: &mut Timer) {
        std::future::poll_fn(|cx| timer.poll_elapsed(cx)).await
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_released_timer_is_reused_and_goes_off_at_its_new_deadline() {
        let start = Instant::now();
        let mut first = Timer::at(start + Duration::from_secs(30), true);
        arm(&mut first);
        let addr = first.addr();
        first.release();
        assert_eq!(pooled(), 1);
        // Later than the registered deadline: moved with one CAS.
        let mut second = Timer::at(start + Duration::from_secs(40), true);
        assert_eq!(second.addr(), addr, "the pooled timer was reused");
        assert_eq!(pooled(), 0);
        elapsed(&mut second).await;
        assert_eq!(start.elapsed(), Duration::from_secs(40), "not at 30 s");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_reused_timer_can_go_off_earlier_than_its_old_deadline() {
        let start = Instant::now();
        let mut first = Timer::at(start + Duration::from_secs(30), true);
        arm(&mut first);
        first.release();
        let mut second = Timer::at(start + Duration::from_millis(10), true);
        assert_eq!(pooled(), 0);
        elapsed(&mut second).await;
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_pooled_timer_keeps_no_waker_and_wakes_nobody() {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut timer = Timer::at(Instant::now() + Duration::from_millis(5), true);
        assert!(timer
            .poll_elapsed(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(Arc::strong_count(&counter), 3, "registered: a clone");
        timer.release();
        assert_eq!(pooled(), 1);
        assert_eq!(Arc::strong_count(&counter), 2, "the clone was let go");
        // Its old deadline passes in the pool.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "nobody was woken");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_timer_that_fired_in_the_pool_is_dropped_not_reset() {
        let mut live = Timer::at(Instant::now() + Duration::from_secs(30), true);
        let mut fired = Timer::at(Instant::now() + Duration::from_millis(5), true);
        arm(&mut live);
        arm(&mut fired);
        let live_addr = live.addr();
        live.release();
        fired.release();
        assert_eq!(pooled(), 2);
        // The timer on top of the pool fires there.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let start = Instant::now();
        let mut timer = Timer::at(start + Duration::from_secs(40), true);
        assert_eq!(timer.addr(), live_addr, "the fired one was skipped");
        assert_eq!(pooled(), 0, "and dropped");
        elapsed(&mut timer).await;
        assert_eq!(start.elapsed(), Duration::from_secs(40));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_fired_timer_is_not_pooled() {
        let mut timer = Timer::at(Instant::now() + Duration::from_millis(5), true);
        elapsed(&mut timer).await;
        timer.release();
        assert_eq!(pooled(), 0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn without_reuse_nothing_is_pooled() {
        let mut timer = Timer::at(Instant::now() + Duration::from_secs(5), false);
        arm(&mut timer);
        timer.release();
        assert_eq!(pooled(), 0);
    }

    #[test]
    fn a_pool_never_serves_another_runtime() {
        let first = runtime(false);
        first.block_on(async { pool_one(Duration::from_secs(5)) });
        assert_eq!(pooled(), 1);
        // The first runtime is gone; its timer must not be reset on a
        // driver that has shut down.
        drop(first);
        runtime(true).block_on(async {
            let start = Instant::now();
            let mut timer = Timer::at(start + Duration::from_millis(10), true);
            elapsed(&mut timer).await;
            assert_eq!(start.elapsed(), Duration::from_millis(10));
            pool_one(Duration::from_secs(5));
        });
        // The first runtime's timer was dropped, the second's kept.
        assert_eq!(pooled(), 1);
    }

    #[test]
    fn the_pool_is_bounded() {
        runtime(false).block_on(async {
            let mut timers: Vec<_> = (0..CAPACITY + 10)
                .map(|_| Timer::at(Instant::now() + Duration::from_secs(5), true))
                .collect();
            timers.iter_mut().for_each(arm);
            timers.into_iter().for_each(Timer::release);
            assert_eq!(pooled(), CAPACITY);
        });
    }
}
