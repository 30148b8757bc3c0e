//! The shared state of one (global) limiter, and what every limiter shares:
//! its clock, its waiting policy and how a rejection is built.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::clock::CoarseClock;
use buttress_core::{Listeners, Quota};
use tokio::time::Instant;

use crate::algorithm::{Algorithm, Levels, Params, State, Verdict};
use crate::events::{Backend, RateLimitEvent, RejectReason};
use crate::params::ParamCell;
use crate::queue::Queue;
use crate::sync::{AtomicU64, Ordering::*};

/// Where decisions read the time, in nanoseconds since the limiter's base.
#[derive(Clone)]
pub struct TimeSource {
    base: Instant,
    coarse: Option<(CoarseClock, u64)>,
}

impl fmt::Debug for TimeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeSource")
            .field("resolution", &self.coarse.as_ref().map(|c| c.1))
            .finish()
    }
}

impl TimeSource {
    pub(crate) fn new(resolution: Option<Duration>) -> Self {
        Self::with_base(Instant::now(), resolution)
    }

    /// Counts from `base` (a keyed map's, so that the map takes this time
    /// as it is).
    pub(crate) fn with_base(base: Instant, resolution: Option<Duration>) -> Self {
        let coarse = resolution.filter(|r| !r.is_zero()).map(|r| {
            let nanos = u64::try_from(r.as_nanos()).unwrap_or(u64::MAX);
            (CoarseClock::new(base, r), nanos)
        });
        Self { base, coarse }
    }

    /// Nanoseconds since the base.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match &self.coarse {
            None => {
                let d = Instant::now().saturating_duration_since(self.base);
                d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
            }
            Some((clock, nanos)) => clock.now_ticks().saturating_mul(*nanos),
        }
    }

    /// The resolution, `None` when every decision reads the clock.
    pub(crate) fn resolution(&self) -> Option<Duration> {
        self.coarse.as_ref().map(|c| Duration::from_nanos(c.1))
    }

    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }
}

/// What limiters share besides their counting: the waiting policy, the
/// reserve for high priorities, the retry hint and the listeners.
#[derive(Clone)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    /// Zero: never wait.
    pub(crate) max_wait: Duration,
    pub(crate) max_queue: usize,
    /// Millionths of the capacity kept for priorities at or above
    /// `reserve_priority`.
    pub(crate) reserve_ppm: u32,
    pub(crate) reserve_priority: u8,
    /// `max_wait` and `max_queue` both above zero.
    pub(crate) can_wait: bool,
    /// A call's priority matters: for the reserve, or for its place in the
    /// queue.
    pub(crate) uses_priority: bool,
    pub(crate) listeners: Listeners<RateLimitEvent>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("max_wait", &self.max_wait)
            .field("max_queue", &self.max_queue)
            .field("reserve_ppm", &self.reserve_ppm)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Permits a call of `priority` must leave untouched.
    #[inline]
    pub(crate) fn keep(&self, priority: u8, p: &Params) -> u64 {
        if self.reserve_ppm == 0 || priority >= self.reserve_priority {
            0
        } else {
            let capacity = u128::from(p.capacity());
            (capacity * u128::from(self.reserve_ppm) / 1_000_000) as u64
        }
    }

    /// `Policy` with its derived flags set.
    pub(crate) fn new(
        name: Arc<str>,
        max_wait: Duration,
        max_queue: usize,
        reserve_ppm: u32,
        reserve_priority: u8,
        listeners: Listeners<RateLimitEvent>,
    ) -> Self {
        let can_wait = !max_wait.is_zero() && max_queue > 0;
        Self {
            name,
            max_wait,
            max_queue,
            reserve_ppm,
            reserve_priority,
            can_wait,
            uses_priority: can_wait || reserve_ppm != 0,
            listeners,
        }
    }

    pub(crate) fn emit_rejected(
        &self,
        cost: u64,
        reason: RejectReason,
        retry_after: Option<u64>,
        backend: Backend,
    ) {
        // `debug`, one per rejected call: a limit that is reached rejects
        // every call beyond it, and a `warn` each would flood the log.
        tracing::debug!(
            buttress.pattern = "rate_limit",
            buttress.name = &*self.name,
            rate_limit.reason = reason.as_str(),
            rate_limit.cost = cost,
            rate_limit.retry_after_ms = retry_after.map(|n| n / 1_000_000),
            "call rejected: rate limited"
        );
        self.listeners.emit(|| RateLimitEvent::Rejected {
            name: self.name.clone(),
            cost,
            reason,
            retry_after: retry_after.map(Duration::from_nanos),
            backend,
        });
    }

    #[inline]
    pub(crate) fn emit_permitted(&self, cost: u64, waited: Duration, backend: Backend) {
        self.listeners.emit(|| RateLimitEvent::Permitted {
            name: self.name.clone(),
            cost,
            waited,
            backend,
        });
    }
}

/// The quota of the IETF `RateLimit-Policy` / `RateLimit` headers: the
/// rate as `q` permits per `w` whole seconds (a period under a second, or
/// not a whole number of seconds, is scaled to the next whole second and
/// `q` rounded down, so the advertised quota is never more than the real
/// one), what is left and when the limiter is full again.
pub(crate) fn quota(name: &Arc<str>, p: &Params, levels: Levels) -> Quota {
    const SEC: u64 = 1_000_000_000;
    let window = p.period.div_ceil(SEC).max(1);
    let q = (u128::from(p.permits) * u128::from(window * SEC) / u128::from(p.period)) as u64;
    Quota::new(
        name.clone(),
        q,
        Duration::from_secs(window),
        levels.remaining,
        Duration::from_nanos(levels.reset),
    )
}

/// Keeps the GCRA word on a cache line of its own, away from the read-mostly
/// parameters.
#[repr(align(128))]
struct Padded<T>(T);

/// The word every decision writes, on a cache line of its own, away from
/// the read-mostly parameters; and the count of rejections (the cold path).
///
/// Admitted calls are not counted: that would be a second atomic
/// read-modify-write on every call (about 4 ns, and a cache line the
/// threads fight over), for a number Resilience4j's rate limiter does not
/// keep either. A listener counts them when wanted (`Permitted` events).
#[derive(Default)]
struct Hot {
    /// GCRA: the theoretical arrival time, one compare-and-swap per
    /// decision.
    tat: AtomicU64,
    rejected: AtomicU64,
}

enum Store {
    Gcra,
    /// The other algorithms, under a short spin lock that never runs user
    /// code.
    Locked(Padded<spin::mutex::SpinMutex<State, spin::relax::Yield>>),
}

/// One global limiter: its numbers, its state, its counters and its queue.
pub struct Limiter {
    pub(crate) params: ParamCell,
    store: Store,
    pub(crate) time: TimeSource,
    pub(crate) policy: Policy,
    pub(crate) queue: Arc<Queue<()>>,
    hot: Padded<Hot>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.policy.name)
            .field("params", &self.params.load_full())
            .field("waiting", &self.queue.len())
            .finish()
    }
}

impl Limiter {
    pub(crate) fn new(params: Params, time: TimeSource, policy: Policy) -> Self {
        let now = time.now();
        let store = match params.algorithm {
            Algorithm::Gcra => Store::Gcra,
            _ => Store::Locked(Padded(spin::mutex::SpinMutex::new(State::new(
                &params, now,
            )))),
        };
        Self {
            params: ParamCell::new(params),
            store,
            time,
            policy,
            queue: Arc::new(Queue::new()),
            hot: Padded(Hot::default()),
        }
    }

    /// Takes `cost` permits at `now` leaving `keep`.
    #[inline]
    pub(crate) fn acquire(&self, p: &Params, now: u64, cost: u64, keep: u64) -> Verdict {
        match &self.store {
            Store::Gcra => {
                let word = &self.hot.0.tat;
                let mut tat = word.load(Relaxed);
                loop {
                    match p.gcra(tat, now, cost, keep) {
                        Ok(new) => match word.compare_exchange_weak(tat, new, Relaxed, Relaxed) {
                            Ok(_) => return Verdict::Allow,
                            Err(actual) => tat = actual,
                        },
                        Err(wait) => return Verdict::Deny(wait),
                    }
                }
            }
            Store::Locked(state) => state.0.lock().acquire(p, now, cost, keep),
        }
    }

    /// What is left at `now`.
    pub(crate) fn levels(&self, p: &Params, now: u64) -> Levels {
        match &self.store {
            Store::Gcra => p.gcra_levels(self.hot.0.tat.load(Relaxed), now),
            Store::Locked(state) => state.0.lock().levels(p, now),
        }
    }

    pub(crate) fn count_rejected(&self) {
        self.hot.0.rejected.fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.hot.0.rejected.load(Relaxed)
    }

    pub(crate) fn reset_counts(&self) {
        self.hot.0.rejected.store(0, Relaxed);
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        self.params.algorithm()
    }
}
