//! A coarse clock: the time in whole periods since a base instant, read
//! from one atomic word that a ticker task keeps current.
//!
//! Reading `tokio::time::Instant::now()` costs 20-30 ns, more than a whole
//! layer may add to a call. A time window that counts in seconds, or a
//! budget that counts in tenths of its ttl, needs the time only to the
//! period it counts in: [`CoarseClock`] gives it for the price of one
//! atomic load, and still follows tokio's paused clock in tests.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

/// The top bit of the word: a ticker task keeps the rest current.
const RUNNING: u64 = 1 << 63;
/// The rest: the latest number of periods published.
const TICKS: u64 = !RUNNING;

/// The time in whole periods since a base instant, kept by a ticker task
/// so that reading it is one atomic load.
///
/// [`now_ticks`](CoarseClock::now_ticks) reads the ticker's value while
/// the ticker runs. When it does not, it reads tokio's clock and, if it is
/// called inside a tokio runtime, starts the ticker: a task that wakes at
/// every `base + k * period` and publishes `k`. The task holds only a weak
/// reference: it ends at its next tick once every clone of the clock has
/// been dropped, so an owner can hold its clock by value. If its runtime
/// shuts down, the task marks itself stopped and the next read outside a
/// runtime falls back to the clock; the next read inside one starts a new
/// ticker.
///
/// # Guarantees
///
/// - **Monotonic:** a read never returns less than a read that happened
///   before it (on any thread), even when the ticker's runtime has a clock
///   of its own (paused) that is behind the one a fallback read saw.
/// - **Follows tokio's clock:** the ticker sleeps on tokio's timer and
///   reads `tokio::time::Instant`, so in a runtime whose clock is paused,
///   `tokio::time::advance` moves it (once the ticker task has run: a
///   read right after `advance` in a current-thread runtime may need one
///   more `tokio::task::yield_now().await`).
/// - **Behind, never ahead:** a read returns at most what the clock says,
///   and lags it by at most the ticker's scheduling delay: the time
///   between a period boundary and the moment the runtime polls the ticker.
///   A runtime that is busy, or not being driven at all (a current-thread
///   runtime outside `block_on`), holds the value back until it polls the
///   ticker again.
/// - **Granularity:** one period.
///
/// The ticker needs a runtime with timers enabled; in a runtime without
/// them, the first read logs tokio's panic once (from the ticker task) and
/// every read of this clock falls back to the clock.
///
/// ```
/// use buttress_core::clock::CoarseClock;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let clock = CoarseClock::new(Instant::now(), Duration::from_millis(100));
/// assert_eq!(clock.now_ticks(), 0); // starts the ticker
/// tokio::time::advance(Duration::from_millis(250)).await;
/// tokio::task::yield_now().await; // let the ticker run
/// assert_eq!(clock.now_ticks(), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct CoarseClock {
    shared: Arc<Shared>,
}

struct Shared {
    base: Instant,
    period: Duration,
    period_nanos: u128,
    /// [`RUNNING`] and the latest ticks returned or published: it only
    /// grows, which makes every read monotonic.
    word: AtomicU64,
    /// Set while a ticker task is spawned and has not ended (or for good,
    /// when the runtime has no timers).
    starting: AtomicBool,
}

impl fmt::Debug for CoarseClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoarseClock")
            .field("period", &self.shared.period)
            .field("ticks", &(self.shared.word.load(Acquire) & TICKS))
            .field("ticking", &self.is_ticking())
            .finish()
    }
}

impl CoarseClock {
    /// A clock counting whole `period`s since `base`. The ticker starts on
    /// the first read made inside a tokio runtime.
    ///
    /// # Panics
    ///
    /// If `period` is zero.
    ///
    /// ```
    /// use buttress_core::clock::CoarseClock;
    /// use std::time::Duration;
    ///
    /// let clock = CoarseClock::new(tokio::time::Instant::now(), Duration::from_secs(1));
    /// assert_eq!(clock.period(), Duration::from_secs(1));
    /// ```
    pub fn new(base: Instant, period: Duration) -> Self {
        assert!(!period.is_zero(), "a coarse clock needs a non-zero period");
        CoarseClock {
            shared: Arc::new(Shared {
                base,
                period,
                period_nanos: period.as_nanos(),
                word: AtomicU64::new(0),
                starting: AtomicBool::new(false),
            }),
        }
    }

    /// Whole periods since the base: the ticker's value when it runs (one
    /// atomic load), else from tokio's clock (and the ticker is started if
    /// a tokio runtime is there to run it). See the type's guarantees.
    ///
    /// ```
    /// use buttress_core::clock::CoarseClock;
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// // No runtime here: the clock is read each time.
    /// let base = Instant::now() - Duration::from_secs(3);
    /// let clock = CoarseClock::new(base, Duration::from_secs(1));
    /// assert!(clock.now_ticks() >= 3);
    /// ```
    #[inline]
    pub fn now_ticks(&self) -> u64 {
        let word = self.shared.word.load(Acquire);
        if word & RUNNING != 0 {
            return word & TICKS;
        }
        self.now_ticks_slow()
    }

    #[cold]
    #[inline(never)]
    fn now_ticks_slow(&self) -> u64 {
        self.start_ticker();
        self.shared
            .publish(self.shared.ticks_at(Instant::now()), false)
    }

    /// The instant the clock counts from.
    ///
    /// ```
    /// use buttress_core::clock::CoarseClock;
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let base = Instant::now();
    /// assert_eq!(CoarseClock::new(base, Duration::from_secs(1)).base(), base);
    /// ```
    pub fn base(&self) -> Instant {
        self.shared.base
    }

    /// The length of one tick.
    ///
    /// ```
    /// use buttress_core::clock::CoarseClock;
    /// use std::time::Duration;
    ///
    /// let clock = CoarseClock::new(tokio::time::Instant::now(), Duration::from_millis(100));
    /// assert_eq!(clock.period(), Duration::from_millis(100));
    /// ```
    pub fn period(&self) -> Duration {
        self.shared.period
    }

    /// Whether a ticker task currently publishes the time (reads are then
    /// one atomic load).
    ///
    /// ```
    /// use buttress_core::clock::CoarseClock;
    /// use std::time::Duration;
    ///
    /// let clock = CoarseClock::new(tokio::time::Instant::now(), Duration::from_secs(1));
    /// clock.now_ticks();
    /// assert!(!clock.is_ticking(), "no runtime, no ticker");
    /// ```
    pub fn is_ticking(&self) -> bool {
        self.shared.word.load(Acquire) & RUNNING != 0
    }

    /// Spawns the ticker if none is spawned and a runtime is there.
    fn start_ticker(&self) {
        let shared = &*self.shared;
        // A load first: reads that find a ticker starting make no write.
        if shared.starting.load(Acquire) || shared.starting.swap(true, AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            shared.starting.store(false, Release);
            return;
        };
        // Made before the task so that it runs however the task ends, even
        // dropped unpolled by a runtime that shuts down.
        let mut stopped = Stopped {
            shared: Arc::downgrade(&self.shared),
            restart: true,
        };
        runtime.spawn(async move {
            let weak = stopped.shared.clone();
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let period = shared.period;
            let first = shared.ticks_at(Instant::now());
            let next = shared.instant_of(first.saturating_add(1));
            let ticks = catch_unwind(AssertUnwindSafe(|| tokio::time::interval_at(next, period)));
            let Ok(mut ticks) = ticks else {
                // No timers in this runtime: read the clock from now on
                // rather than spawn a failing ticker on every read.
                stopped.for_good();
                return;
            };
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            shared.tick();
            // Only the weak reference is held across the wait.
            drop(shared);
            loop {
                ticks.tick().await;
                match weak.upgrade() {
                    Some(shared) => shared.tick(),
                    None => return,
                }
            }
        });
    }
}

/// Marks the ticker stopped however its task ends.
struct Stopped {
    shared: Weak<Shared>,
    /// Whether the next read may start another ticker.
    restart: bool,
}

impl Stopped {
    /// Leaves the clock without a ticker for good: reads fall back to the
    /// clock and start none.
    fn for_good(&mut self) {
        self.restart = false;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.word.fetch_and(!RUNNING, AcqRel);
            if self.restart {
                shared.starting.store(false, Release);
            }
        }
    }
}

impl Shared {
    /// Whole periods from the base to `at` (0 before the base).
    #[inline]
    fn ticks_at(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanos / self.period_nanos)
            .unwrap_or(TICKS)
            .min(TICKS)
    }

    /// When tick `k` begins (far in the future if that overflows).
    fn instant_of(&self, k: u64) -> Instant {
        let nanos = self.period_nanos.saturating_mul(u128::from(k));
        let since = Duration::new(
            u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
            (nanos % 1_000_000_000) as u32,
        );
        self.base
            .checked_add(since)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365 * 30))
    }

    /// Publishes the current time from the ticker.
    fn tick(&self) {
        self.publish(self.ticks_at(Instant::now()), true);
    }

    /// Raises the published ticks to `ticks` (never lowers them), setting
    /// the running bit if `running`; returns the ticks now published.
    fn publish(&self, ticks: u64, running: bool) -> u64 {
        let set = if running { RUNNING } else { 0 };
        let mut word = self.word.load(Acquire);
        loop {
            let now = (word & TICKS).max(ticks);
            let new = (word & RUNNING) | set | now;
            if new == word {
                return now;
            }
            match self.word.compare_exchange_weak(word, new, AcqRel, Acquire) {
                Ok(_) => return now,
                Err(current) => word = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::{Builder, Runtime};

    const PERIOD: Duration = Duration::from_millis(100);

    fn paused() -> Runtime {
        Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn alive_tasks() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    /// Advances the paused clock and lets the ticker run: `advance` yields
    /// once, but the current-thread scheduler polls the test's own task
    /// again before the ticker its timer woke.
    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
        tokio::task::yield_now().await;
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock_period_by_period() {
        let clock = CoarseClock::new(Instant::now(), PERIOD);
        assert_eq!(clock.now_ticks(), 0);
        tokio::task::yield_now().await;
        assert!(clock.is_ticking());
        advance(Duration::from_millis(99)).await;
        assert_eq!(clock.now_ticks(), 0);
        advance(Duration::from_millis(1)).await;
        assert_eq!(clock.now_ticks(), 1);
        advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now_ticks(), 3);
        // A jump over many periods skips the missed ticks.
        advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now_ticks(), 36_003);
        assert!(clock.is_ticking());
        assert_eq!(alive_tasks(), 1, "one ticker");
    }

    #[tokio::test(start_paused = true)]
    async fn while_ticking_a_read_is_the_published_value_not_the_clock() {
        let clock = CoarseClock::new(Instant::now(), PERIOD);
        clock.now_ticks();
        tokio::task::yield_now().await;
        assert!(clock.is_ticking());
        // `advance` yields once: the timer has fired, but the scheduler
        // polls this task again before the ticker it woke.
        tokio::time::advance(PERIOD).await;
        assert_eq!(clock.now_ticks(), 0, "behind by the ticker's delay");
        tokio::task::yield_now().await;
        assert_eq!(clock.now_ticks(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_base_in_the_past_counts_from_the_base() {
        let clock = CoarseClock::new(Instant::now() - Duration::from_millis(1_050), PERIOD);
        assert_eq!(clock.now_ticks(), 10);
        tokio::task::yield_now().await;
        assert!(clock.is_ticking());
        assert_eq!(clock.now_ticks(), 10);
        advance(Duration::from_millis(50)).await;
        assert_eq!(clock.now_ticks(), 11, "ticks align to base + k * period");
    }

    #[test]
    fn without_a_runtime_reads_fall_back_to_the_clock() {
        let clock = CoarseClock::new(Instant::now(), Duration::from_millis(1));
        assert_eq!(clock.now_ticks(), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(clock.now_ticks() >= 5);
        assert!(!clock.is_ticking());
    }

    #[test]
    fn reads_never_go_back_when_the_ticker_runs_on_an_earlier_clock() {
        // The paused runtime's clock stops here; real time goes on.
        let rt = paused();
        let clock = CoarseClock::new(Instant::now(), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        let outside = clock.now_ticks();
        assert!(outside >= 20);
        rt.block_on(async {
            let inside = clock.now_ticks();
            tokio::task::yield_now().await;
            assert!(clock.is_ticking());
            // The ticker publishes its runtime's time, 0 ticks; readers
            // keep the larger value read before.
            assert!(inside >= outside);
            assert_eq!(clock.now_ticks(), inside);
            advance(Duration::from_millis(5)).await;
            assert_eq!(clock.now_ticks(), inside);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_ends_when_the_clock_is_dropped() {
        let clock = CoarseClock::new(Instant::now(), PERIOD);
        let clone = clock.clone();
        clock.now_ticks();
        tokio::task::yield_now().await;
        assert!(clock.is_ticking());
        assert_eq!(alive_tasks(), 1);
        let weak = Arc::downgrade(&clock.shared);
        drop(clock);
        advance(PERIOD).await;
        assert_eq!(alive_tasks(), 1, "a clone still holds the clock");
        drop(clone);
        // The ticker holds no strong reference while it waits.
        assert!(weak.upgrade().is_none());
        advance(PERIOD).await;
        assert_eq!(alive_tasks(), 0, "the ticker ended at its next tick");
    }

    #[test]
    fn a_ticker_stopped_by_its_runtime_shutting_down_restarts_in_the_next() {
        let clock = CoarseClock::new(Instant::now(), PERIOD);
        let first = paused();
        first.block_on(async {
            clock.now_ticks();
            tokio::task::yield_now().await;
            assert!(clock.is_ticking());
        });
        drop(first);
        assert!(!clock.is_ticking(), "marked stopped with its runtime");
        // Outside a runtime: the clock is read, nothing is started.
        clock.now_ticks();
        assert!(!clock.is_ticking());
        let second = paused();
        second.block_on(async {
            clock.now_ticks();
            tokio::task::yield_now().await;
            assert!(clock.is_ticking());
            assert_eq!(alive_tasks(), 1);
            let before = clock.now_ticks();
            advance(PERIOD * 3).await;
            assert_eq!(clock.now_ticks(), before + 3);
        });
    }

    #[test]
    fn a_ticker_dropped_before_its_first_poll_restarts_in_the_next_runtime() {
        let clock = CoarseClock::new(Instant::now(), PERIOD);
        let first = paused();
        // Spawns the ticker; the runtime shuts down before polling it.
        first.block_on(async { clock.now_ticks() });
        drop(first);
        let second = paused();
        second.block_on(async {
            clock.now_ticks();
            tokio::task::yield_now().await;
            assert!(clock.is_ticking());
        });
    }

    #[test]
    fn a_runtime_without_timers_falls_back_to_the_clock_for_good() {
        let rt = Builder::new_current_thread().build().unwrap();
        let clock = CoarseClock::new(Instant::now(), PERIOD);
        rt.block_on(async {
            for _ in 0..5 {
                clock.now_ticks();
                tokio::task::yield_now().await;
            }
            assert!(!clock.is_ticking());
            assert_eq!(alive_tasks(), 0, "one ticker tried, never another");
        });
        assert!(clock.shared.starting.load(Acquire));
    }

    #[test]
    fn reads_on_many_threads_are_monotonic() {
        let rt = Builder::new_multi_thread()
            .worker_threads(3)
            .enable_time()
            .build()
            .unwrap();
        let clock = CoarseClock::new(Instant::now(), Duration::from_millis(1));
        rt.block_on(async {
            let tasks: Vec<_> = (0..6)
                .map(|_| {
                    let clock = clock.clone();
                    tokio::spawn(async move {
                        let mut last = 0;
                        // At least 30 ms, and until the clock has moved
                        // (a loaded machine may not run the ticker that
                        // soon), at most 10 s.
                        let start = Instant::now();
                        let min = start + Duration::from_millis(30);
                        let max = start + Duration::from_secs(10);
                        loop {
                            let t = Instant::now();
                            if (t >= min && last > 0) || t >= max {
                                break;
                            }
                            let now = clock.now_ticks();
                            assert!(now >= last, "{now} after {last}");
                            last = now;
                            tokio::task::yield_now().await;
                        }
                        last
                    })
                })
                .collect();
            for task in tasks {
                assert!(task.await.unwrap() > 0);
            }
        });
        assert!(clock.is_ticking());
    }

    #[test]
    #[should_panic(expected = "non-zero period")]
    fn a_zero_period_is_refused() {
        CoarseClock::new(Instant::now(), Duration::ZERO);
    }
}
