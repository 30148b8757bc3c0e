//! The breaker's state machine, shared by the layer, its services, their
//! futures and the handle.
//!
//! The state and a generation counter share one atomic word, so admission
//! is a single load while calls pass. Everything that decides (the window,
//! the consecutive counters, the half-open probe slots) lives under one
//! short lock together with the right to change that word: recording a
//! call, computing the verdict and making the transition it calls for are
//! one critical section, so a verdict is computed over exactly the calls
//! recorded before it, in the order they took the lock, and a probe slot
//! can never be counted against another generation than its own. Every
//! admitted call carries the generation it was admitted in; a result from
//! an earlier generation (a call admitted before the breaker opened) is
//! reported to listeners but never recorded.
//!
//! Transition and threshold events are queued under the lock, in the order
//! of the transitions, and delivered after it by one thread at a time: a
//! listener sees them in order and may call back into the breaker.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::AtomicU64 as StdAtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use buttress_core::clock::CoarseClock;
use buttress_core::{Listeners, Outcome};
use tokio::time::Instant;

use buttress_core::ConfigError;

use crate::config::{CircuitBreakerConfig, KIND};
use crate::events::CircuitBreakerEvent;
use crate::sync::{AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering::*};
use crate::window::{percent, CountWindow, Rates, TimeWindow};

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum State {
    /// Calls pass; outcomes are recorded and may trip the breaker.
    Closed,
    /// Calls are rejected until the open wait has passed.
    Open,
    /// A limited number of probe calls pass; their outcomes decide.
    HalfOpen,
    /// Calls pass and nothing is recorded (forced by an operator).
    Disabled,
    /// Calls are rejected until an operator changes the state.
    ForcedOpen,
    /// Calls pass, outcomes are recorded and events emitted, but the breaker
    /// never trips (forced by an operator).
    MetricsOnly,
}

impl State {
    const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::Disabled,
        State::ForcedOpen,
        State::MetricsOnly,
    ];

    fn code(self) -> u64 {
        self as u64
    }

    fn from_code(code: u64) -> State {
        Self::ALL[(code as usize) % Self::ALL.len()]
    }

    /// The state's name in snake case, as in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced_open",
            State::MetricsOnly => "metrics_only",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Spreads a small seed over all bits (xorshift needs a well-mixed state).
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn state_of(word: u64) -> State {
    State::from_code(word & 0xff)
}

#[inline]
fn gen_of(word: u64) -> u64 {
    word >> 8
}

/// How long the breaker stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OpenWait {
    pub(crate) base: Duration,
    /// Growth factor per consecutive opening (1.0: fixed).
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
    /// Fraction of the wait drawn at random, in `[0, 1]`: the wait is
    /// `w * (1 - jitter * u)` for `u` uniform in `[0, 1)`.
    pub(crate) jitter: f64,
}

impl OpenWait {
    /// The wait after `opens` consecutive openings (1 for the first).
    pub(crate) fn wait(&self, opens: u32, unit: f64) -> Duration {
        let exp = i32::try_from(opens.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = self.base.as_secs_f64() * self.multiplier.powi(exp);
        let capped = grown.min(self.max.as_secs_f64()).max(0.0);
        let jittered = capped * (1.0 - self.jitter * unit);
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max)
    }
}

/// Everything the state machine needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) window_size: u32,
    /// A time-based window of this many seconds instead of the count one.
    pub(crate) time_window_secs: Option<u32>,
    pub(crate) minimum_calls: u32,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) half_open_calls: u32,
    pub(crate) open_wait: OpenWait,
    pub(crate) automatic_half_open: bool,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    pub(crate) seed: u64,
    /// The config these settings came from, as given (for
    /// [`CircuitBreakerHandle::config`](crate::CircuitBreakerHandle::config)).
    pub(crate) config: CircuitBreakerConfig,
}

/// What can change on a live breaker, under its lock: every decision reads
/// it in the same critical section that records, so a verdict never mixes
/// two settings.
#[derive(Debug, Clone)]
struct Live {
    failure_rate_threshold: f64,
    slow_call_rate_threshold: f64,
    minimum_calls: u32,
    /// The limit of the consecutive-failure mode (the mode itself is
    /// fixed: its counter and the window are not kept together).
    consecutive_failures: Option<u32>,
    half_open_calls: u32,
    open_wait: OpenWait,
    automatic_half_open: bool,
    max_wait_in_half_open: Option<Duration>,
    /// The failed (and slow) calls of a full count window at which a
    /// threshold is reached: the smallest `n` with `n * 100 / size >=
    /// threshold`, so that the usual verdict compares integers and agrees
    /// with the percentage to the last bit.
    full_trip: (u64, u64),
    /// As given, for `config()`; boxed, out of the lines that decide.
    config: Box<CircuitBreakerConfig>,
}

impl Live {
    fn new(settings: &Settings) -> Self {
        let size = u64::from(settings.window_size);
        Self {
            failure_rate_threshold: settings.failure_rate_threshold,
            slow_call_rate_threshold: settings.slow_call_rate_threshold,
            minimum_calls: settings.minimum_calls,
            consecutive_failures: settings.consecutive_failures,
            half_open_calls: settings.half_open_calls,
            open_wait: settings.open_wait,
            automatic_half_open: settings.automatic_half_open,
            max_wait_in_half_open: settings.max_wait_in_half_open,
            full_trip: (
                first_reaching(size, settings.failure_rate_threshold),
                first_reaching(size, settings.slow_call_rate_threshold),
            ),
            config: Box::new(settings.config.clone()),
        }
    }
}

/// A slow-call duration as nanoseconds; 0 (never a valid duration) for
/// none.
fn slow_nanos(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
    })
}

// One per breaker: the count window's ring is boxed, the enum stays small.
enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    #[inline]
    fn rates(&mut self, second: u64) -> Rates {
        match self {
            Window::Count(w) => w.rates(),
            Window::Time(w) => w.rates(second),
        }
    }

    fn reset(&mut self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

/// What admission decided for one call.
pub(crate) enum Admission {
    /// Go ahead; `probe` when the call is a half-open probe, `recording`
    /// unless the breaker is disabled (the call is then neither recorded
    /// nor reported).
    Permit {
        gen: u64,
        probe: bool,
        recording: bool,
    },
    /// Rejected; the time left until the breaker lets probes through.
    Reject(Option<Duration>),
}

/// The slots of the current half-open state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Probes {
    /// Admitted and not yet freed: in flight, or done with a verdict.
    taken: u32,
    /// Recorded.
    done: u32,
    failed: u32,
    slow: u32,
}

/// Everything that decides, under one lock: the window, the counters and
/// the probe slots change together with the state word, so a decision
/// never sees half of another.
struct Inner {
    window: Window,
    consecutive: u32,
    consecutive_opens: u32,
    half_open_since: u64,
    probes: Probes,
    rng: u64,
    /// In `MetricsOnly`: whether the last verdict reached a threshold, so
    /// that `ThresholdExceeded` is reported once per crossing.
    exceeded: bool,
    /// Transition and threshold events, in the order of the transitions,
    /// delivered once the lock is released (see [`Shared::deliver`]).
    /// Events and log records of the critical sections, delivered in
    /// order once the lock is released.
    events: VecDeque<Queued>,
    /// A timer for an automatic transition, started once the lock is
    /// released: its deadline and the generation it applies to.
    timer: Option<(Instant, u64)>,
    /// Whether `events` or `timer` hold something for [`Shared::unlock`]:
    /// one flag for the common case, where they hold nothing.
    post: bool,
    /// The settings that can change at run time.
    live: Live,
}

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// The count window's size (fixed: the ring is allocated with it).
    window_size: u32,
    /// The seconds of a time window instead (fixed).
    time_window_secs: Option<u32>,
    /// `slow_call_duration` in nanoseconds, 0 for none: read without the
    /// lock when a call starts and when it ends.
    slow_call_nanos: AtomicU64,
    /// Report `Pending` from `poll_ready` while open.
    backpressure: AtomicBool,
    pub(crate) listeners: Listeners<CircuitBreakerEvent>,
    /// The state (low byte) and its generation, which every transition
    /// increments. Written only under `inner`'s lock; admission reads it
    /// without the lock.
    ///
    /// On a cache line of its own, apart from the lock and from the
    /// `Arc`'s reference counts (which this alignment also moves to a line
    /// of their own), so that recording calls does not evict it from the
    /// cores that admit calls.
    word: Padded<AtomicU64>,
    /// When an open breaker lets probes through, in nanoseconds since
    /// `base`. Written under the lock before the word that publishes the
    /// open state.
    open_until: AtomicU64,
    inner: Padded<Mutex<Inner>>,
    /// Whether a thread is delivering the queued events.
    delivering: AtomicBool,
    base: Instant,
    not_permitted: StdAtomicU64,
    /// The seconds of a time window (none for a count window): every call
    /// and every snapshot reads this one source.
    coarse: Option<CoarseClock>,
    /// Told the window's rates after every change, under the lock (the
    /// metrics bridge's live rate gauges).
    rates: Option<RateSink>,
    this: Weak<Shared>,
}

/// Receives a breaker's failure and slow-call rates, in percent, or -1
/// and -1 when they are unknown (fewer calls than the minimum, or a new
/// window). Called under the breaker's lock after every recorded call and
/// every transition, so the last value it was given is the current one.
pub(crate) type RateSink = Box<dyn Fn(f64, f64) + Send + Sync>;

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Whether `n` of `calls` reaches `threshold` percent.
#[inline]
fn reaches(n: u64, calls: u64, threshold: f64) -> bool {
    percent(n, calls) >= threshold
}

/// The smallest `n` of `calls` that [`reaches`] `threshold` (`calls + 1`
/// when none does). `reaches` grows with `n`, so a binary search finds it.
fn first_reaching(calls: u64, threshold: f64) -> u64 {
    let (mut lo, mut hi) = (0, calls + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if mid <= calls && reaches(mid, calls, threshold) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// A value alone on its cache line (two lines: adjacent-line prefetch
/// pairs them on x86).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        settings: Settings,
        listeners: Listeners<CircuitBreakerEvent>,
        rates: Option<RateSink>,
    ) -> Arc<Self> {
        let base = Instant::now();
        let coarse = settings
            .time_window_secs
            .map(|_| CoarseClock::new(base, Duration::from_secs(1)));
        Arc::new_cyclic(|this| Shared {
            name,
            window_size: settings.window_size,
            time_window_secs: settings.time_window_secs,
            slow_call_nanos: AtomicU64::new(slow_nanos(settings.slow_call_duration)),
            backpressure: AtomicBool::new(settings.config.backpressure),
            inner: Padded(Mutex::new(Inner {
                window: match settings.time_window_secs {
                    Some(secs) => Window::Time(TimeWindow::new(secs)),
                    None => Window::Count(CountWindow::new(settings.window_size)),
                },
                consecutive: 0,
                consecutive_opens: 0,
                half_open_since: 0,
                probes: Probes::default(),
                rng: splitmix64(settings.seed) | 1,
                exceeded: false,
                events: VecDeque::new(),
                timer: None,
                post: false,
                live: Live::new(&settings),
            })),
            listeners,
            word: Padded(AtomicU64::new(State::Closed.code())),
            open_until: AtomicU64::new(0),
            delivering: AtomicBool::new(false),
            base,
            not_permitted: StdAtomicU64::new(0),
            coarse,
            rates,
            this: this.clone(),
        })
    }

    #[inline]
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Releases the lock, then starts the timer and delivers the events
    /// that the critical section left.
    #[inline]
    fn unlock(&self, inner: MutexGuard<'_, Inner>) {
        if inner.post {
            self.unlock_and_post(inner);
        }
    }

    #[cold]
    #[inline(never)]
    fn unlock_and_post(&self, mut inner: MutexGuard<'_, Inner>) {
        inner.post = false;
        let timer = inner.timer.take();
        let events = !inner.events.is_empty();
        drop(inner);
        if let Some((at, gen)) = timer {
            self.start_timer(at, gen);
        }
        if events {
            self.deliver();
        }
    }

    /// Delivers the queued transition events, one thread at a time and in
    /// queue order, outside the lock: a listener may call back into the
    /// breaker (its event is then delivered after the current one, by the
    /// same loop).
    #[cold]
    fn deliver(&self) {
        loop {
            if self.delivering.swap(true, AcqRel) {
                // The thread delivering now will find our events: it
                // checks the queue again after it lets go of the flag.
                return;
            }
            loop {
                let next = self.lock().events.pop_front();
                match next {
                    Some(Queued::Event(event)) => self.listeners.emit(|| event),
                    Some(Queued::Transition(from, to)) => trace_transition(&self.name, from, to),
                    Some(Queued::Exceeded(state, failure_rate, slow_call_rate)) => {
                        trace_exceeded(&self.name, state, failure_rate, slow_call_rate)
                    }
                    None => break,
                }
            }
            self.delivering.store(false, Release);
            if self.lock().events.is_empty() {
                return;
            }
        }
    }

    /// The start of a call for the slow-call check: nanoseconds after the
    /// base instant, plus one; 0 (and no clock read) when no slow-call
    /// duration is configured.
    #[inline]
    pub(crate) fn call_start(&self) -> u64 {
        if self.slow_call_nanos.load(Relaxed) == 0 {
            return 0;
        }
        self.now_nanos().saturating_add(1)
    }

    /// Records the outcome of a call admitted in generation `gen` that
    /// started at `start` (see [`call_start`](Self::call_start)). Returns
    /// `true` when the outcome was recorded (a probe's slot is then used
    /// up).
    #[inline]
    pub(crate) fn complete(&self, gen: u64, probe: bool, start: u64, outcome: Outcome) -> bool {
        let elapsed = (start != 0)
            .then(|| Instant::now().saturating_duration_since(self.instant_at(start - 1)));
        self.record(gen, probe, outcome, elapsed)
    }

    pub(crate) fn state(&self) -> State {
        state_of(self.word.load(Acquire))
    }

    fn nanos_since_base(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn now_nanos(&self) -> u64 {
        self.nanos_since_base(Instant::now())
    }

    fn instant_at(&self, nanos: u64) -> Instant {
        self.base
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or(self.base)
    }

    /// Admission of one call: one atomic load while calls pass.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let word = self.word.load(Acquire);
        match state_of(word) {
            State::Closed | State::MetricsOnly => Admission::Permit {
                gen: gen_of(word),
                probe: false,
                recording: true,
            },
            _ => self.admit_slow(word),
        }
    }

    #[cold]
    fn admit_slow(&self, mut word: u64) -> Admission {
        loop {
            match state_of(word) {
                State::Closed | State::MetricsOnly => {
                    return Admission::Permit {
                        gen: gen_of(word),
                        probe: false,
                        recording: true,
                    }
                }
                State::Disabled => {
                    return Admission::Permit {
                        gen: gen_of(word),
                        probe: false,
                        recording: false,
                    }
                }
                State::ForcedOpen => return self.not_permitted(None),
                State::Open => {
                    let now = self.now_nanos();
                    let until = self.open_until.load(Acquire);
                    if now < until {
                        return self.not_permitted(Some(Duration::from_nanos(until - now)));
                    }
                    let mut inner = self.lock();
                    if self.word.load(Acquire) == word {
                        self.transition(&mut inner, word, State::HalfOpen);
                    }
                    self.unlock(inner);
                }
                State::HalfOpen => {
                    let mut inner = self.lock();
                    if self.word.load(Acquire) != word {
                        drop(inner);
                    } else if self.half_open_expired(&inner) {
                        self.transition(&mut inner, word, State::Open);
                        self.unlock(inner);
                    } else if inner.probes.taken < inner.live.half_open_calls {
                        inner.probes.taken += 1;
                        tracing::debug!(
                            buttress.pattern = PATTERN,
                            buttress.name = &*self.name,
                            circuit.state = State::HalfOpen.as_str(),
                            circuit.probe = inner.probes.taken,
                            "half-open probe admitted"
                        );
                        return Admission::Permit {
                            gen: gen_of(word),
                            probe: true,
                            recording: true,
                        };
                    } else {
                        drop(inner);
                        return self.not_permitted(None);
                    }
                }
            }
            word = self.word.load(Acquire);
        }
    }

    /// Whether the half-open state has lasted `max_wait_in_half_open`.
    fn half_open_expired(&self, inner: &Inner) -> bool {
        match inner.live.max_wait_in_half_open {
            Some(max) => {
                let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
                self.now_nanos().saturating_sub(inner.half_open_since) >= max
            }
            None => false,
        }
    }

    fn not_permitted(&self, retry_after: Option<Duration>) -> Admission {
        Admission::Reject(retry_after)
    }

    /// Counts a rejection that reached its caller, and reports it. Not
    /// counted at admission: a rejection decided in `poll_ready` may never
    /// be delivered (an outer layer can answer that request itself, and
    /// the next `poll_ready` decides again), and the count is of calls the
    /// breaker refused, not of decisions.
    pub(crate) fn count_not_permitted(&self) {
        self.not_permitted.fetch_add(1, Relaxed);
        // Per call, so `debug`: an open breaker rejects every call, and its
        // opening was logged once already, at `warn`.
        tracing::debug!(
            buttress.pattern = PATTERN,
            buttress.name = &*self.name,
            circuit.state = self.state().as_str(),
            "call rejected: circuit open"
        );
        self.listeners.emit(|| CircuitBreakerEvent::NotPermitted {
            name: self.name.clone(),
        });
    }

    /// A probe admitted in generation `gen` ended without a verdict
    /// (dropped, cancelled, ignored): its slot is free again, if its
    /// half-open state still is.
    pub(crate) fn release_probe(&self, gen: u64) {
        let mut inner = self.lock();
        let word = self.word.load(Acquire);
        if gen_of(word) == gen && state_of(word) == State::HalfOpen {
            inner.probes.taken = inner.probes.taken.saturating_sub(1);
        }
    }

    /// Records the outcome of a call admitted in generation `gen`. Returns
    /// `true` when the outcome was recorded (a probe's slot is then used
    /// up).
    pub(crate) fn record(
        &self,
        gen: u64,
        probe: bool,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) -> bool {
        let slow = match (self.slow_call_nanos.load(Relaxed), elapsed) {
            (0, _) | (_, None) => false,
            (limit, Some(e)) => e > Duration::from_nanos(limit),
        };
        if !self.listeners.is_empty() {
            self.emit_outcome(outcome, slow, elapsed);
        }
        if outcome == Outcome::Ignored {
            return false;
        }
        let failed = outcome.is_failure();
        // Read before the lock: it may start the ticker.
        let second = self.window_second();
        let mut inner = self.lock();
        let word = self.word.load(Acquire);
        if gen_of(word) != gen {
            // Admitted in an earlier state: reported, never recorded.
            return false;
        }
        let recorded = match state_of(word) {
            State::Closed | State::MetricsOnly => {
                self.record_closed(&mut inner, word, failed, slow, second);
                true
            }
            State::HalfOpen if probe => {
                self.record_probe(&mut inner, word, failed, slow);
                true
            }
            _ => false,
        };
        self.unlock(inner);
        recorded
    }

    #[cold]
    fn emit_outcome(&self, outcome: Outcome, slow: bool, elapsed: Option<Duration>) {
        let name = || self.name.clone();
        self.listeners.emit(|| match outcome {
            Outcome::Success => CircuitBreakerEvent::Success { name: name() },
            Outcome::Failure => CircuitBreakerEvent::Failure { name: name() },
            Outcome::Ignored => CircuitBreakerEvent::Ignored { name: name() },
        });
        if slow {
            self.listeners.emit(|| CircuitBreakerEvent::SlowCall {
                name: name(),
                elapsed: elapsed.unwrap_or_default(),
            });
        }
    }

    /// Records a call in the closed (or metrics-only) state and checks the
    /// thresholds, after every call as Resilience4j does: a success
    /// changes the rates too.
    #[inline]
    fn record_closed(&self, inner: &mut Inner, word: u64, failed: bool, slow: bool, second: u64) {
        if let Some(limit) = inner.live.consecutive_failures {
            if failed {
                inner.consecutive = inner.consecutive.saturating_add(1);
                if inner.consecutive >= limit {
                    self.exceeded(inner, word, 100.0, 0.0);
                }
            } else {
                inner.consecutive = 0;
            }
            return;
        }
        let (rates, full) = match &mut inner.window {
            Window::Count(w) => {
                w.record(failed, slow);
                let rates = w.rates();
                (rates, rates.calls == u64::from(self.window_size))
            }
            Window::Time(w) => {
                w.record(second, failed, slow);
                (w.rates(second), false)
            }
        };
        if let Some(sink) = &self.rates {
            if rates.calls >= self.minimum_calls(&inner.live) {
                sink(rates.failure_rate(), rates.slow_rate());
            } else {
                sink(-1.0, -1.0);
            }
        }
        let trips = if full {
            // The usual case: integers, the same verdict as the rates.
            rates.failed >= inner.live.full_trip.0 || rates.slow >= inner.live.full_trip.1
        } else {
            rates.calls >= self.minimum_calls(&inner.live)
                && (reaches(rates.failed, rates.calls, inner.live.failure_rate_threshold)
                    || reaches(rates.slow, rates.calls, inner.live.slow_call_rate_threshold))
        };
        if trips {
            self.exceeded(inner, word, rates.failure_rate(), rates.slow_rate());
        } else if inner.exceeded {
            inner.exceeded = false;
        }
    }

    /// A threshold is reached in the closed or metrics-only state: the
    /// first opens (one event, one transition), the second reports it once
    /// per crossing.
    fn exceeded(&self, inner: &mut Inner, word: u64, failure_rate: f64, slow_call_rate: f64) {
        if state_of(word) == State::MetricsOnly {
            if inner.exceeded {
                return;
            }
            inner.exceeded = true;
        }
        self.log(
            inner,
            Queued::Exceeded(state_of(word), failure_rate, slow_call_rate),
        );
        self.queue(inner, || CircuitBreakerEvent::ThresholdExceeded {
            name: self.name.clone(),
            failure_rate,
            slow_call_rate,
        });
        if state_of(word) == State::Closed {
            self.transition(inner, word, State::Open);
        }
    }

    fn record_probe(&self, inner: &mut Inner, word: u64, failed: bool, slow: bool) {
        let p = &mut inner.probes;
        p.done += 1;
        p.failed += u32::from(failed);
        p.slow += u32::from(slow);
        if p.done < inner.live.half_open_calls {
            return;
        }
        self.probe_verdict(inner, word);
    }

    /// The verdict of the probes recorded in the half-open state `word`:
    /// as many as permitted (or more, when a run-time change lowered the
    /// number below the probes already recorded).
    fn probe_verdict(&self, inner: &mut Inner, word: u64) {
        let p = &inner.probes;
        let (failed, slow, n) = (u64::from(p.failed), u64::from(p.slow), u64::from(p.done));
        if let Some(sink) = &self.rates {
            sink(percent(failed, n), percent(slow, n));
        }
        if reaches(failed, n, inner.live.failure_rate_threshold)
            || reaches(slow, n, inner.live.slow_call_rate_threshold)
        {
            self.log(
                inner,
                Queued::Exceeded(State::HalfOpen, percent(failed, n), percent(slow, n)),
            );
            self.queue(inner, || CircuitBreakerEvent::ThresholdExceeded {
                name: self.name.clone(),
                failure_rate: percent(failed, n),
                slow_call_rate: percent(slow, n),
            });
            self.transition(inner, word, State::Open);
        } else {
            self.transition(inner, word, State::Closed);
        }
    }

    /// Queues an event for delivery once the lock is released.
    #[inline]
    fn queue(&self, inner: &mut Inner, make: impl FnOnce() -> CircuitBreakerEvent) {
        if !self.listeners.is_empty() {
            inner.events.push_back(Queued::Event(make()));
            inner.post = true;
        }
    }

    /// Queues a `tracing` record (a state change, a threshold reached) for
    /// the same ordered delivery: a subscriber is user code (it may write
    /// to a file or a socket) and never runs under the breaker's lock.
    /// Both are rare, so they are queued whether or not a subscriber is
    /// interested.
    #[cold]
    fn log(&self, inner: &mut Inner, record: Queued) {
        inner.events.push_back(record);
        inner.post = true;
    }

    /// Moves from the state word `from`, which must be the current one
    /// (the caller holds the lock and checked it), to `to`.
    fn transition(&self, inner: &mut Inner, from: u64, to: State) {
        debug_assert_eq!(self.word.load(Acquire), from);
        let gen = gen_of(from) + 1;
        self.enter(inner, state_of(from), to, gen);
        self.word.store((gen << 8) | to.code(), Release);
        self.log(inner, Queued::Transition(state_of(from), to));
        self.queue(inner, || CircuitBreakerEvent::StateTransition {
            name: self.name.clone(),
            from: state_of(from),
            to,
        });
    }

    /// Prepares the data of `to` before the new state is published.
    fn enter(&self, inner: &mut Inner, from: State, to: State, gen: u64) {
        if let Some(sink) = &self.rates {
            // Opening keeps the verdict's rates; any other state starts a
            // new window (or round of probes).
            if !matches!(to, State::Open | State::ForcedOpen) {
                sink(-1.0, -1.0);
            }
        }
        match to {
            State::Closed | State::MetricsOnly | State::Disabled => {
                inner.window.reset();
                inner.consecutive = 0;
                inner.exceeded = false;
                if to == State::Closed {
                    inner.consecutive_opens = 0;
                }
            }
            State::Open => {
                let opens = if matches!(from, State::Closed | State::HalfOpen | State::Open) {
                    inner.consecutive_opens = inner.consecutive_opens.saturating_add(1);
                    inner.consecutive_opens
                } else {
                    1
                };
                let unit = unit(&mut inner.rng);
                let wait = inner.live.open_wait.wait(opens, unit);
                let until = self
                    .now_nanos()
                    .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
                self.open_until.store(until, Release);
                if inner.live.automatic_half_open {
                    inner.timer = Some((self.instant_at(until), gen));
                    inner.post = true;
                }
            }
            State::HalfOpen => {
                inner.probes = Probes::default();
                let now = self.now_nanos();
                inner.half_open_since = now;
                if let Some(max) = inner.live.max_wait_in_half_open {
                    let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
                    inner.timer = Some((self.instant_at(now.saturating_add(max)), gen));
                    inner.post = true;
                }
            }
            State::ForcedOpen => {}
        }
    }

    /// Starts the timer of an automatic transition (open to half-open,
    /// half-open to open), if a tokio runtime is there to run it.
    fn start_timer(&self, at: Instant, gen: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                buttress.pattern = PATTERN,
                buttress.name = &*self.name,
                "no tokio runtime: the breaker changes state on the next call instead"
            );
            return;
        };
        let this = self.this.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(shared) = this.upgrade() {
                shared.on_timer(gen);
            }
        });
    }

    fn on_timer(&self, gen: u64) {
        let mut inner = self.lock();
        let word = self.word.load(Acquire);
        if gen_of(word) != gen {
            return;
        }
        match state_of(word) {
            State::Open => self.transition(&mut inner, word, State::HalfOpen),
            // Against the limit in force now: a run-time change may have
            // raised it (a later timer then decides) or removed it.
            State::HalfOpen if self.half_open_expired(&inner) => {
                self.transition(&mut inner, word, State::Open)
            }
            _ => {}
        }
        self.unlock(inner);
    }

    /// Forces a state, whatever the current one (operator controls). No
    /// transition and no event when the breaker is in that state already.
    pub(crate) fn force(&self, to: State) {
        let mut inner = self.lock();
        let word = self.word.load(Acquire);
        if state_of(word) != to {
            self.transition(&mut inner, word, to);
        }
        self.unlock(inner);
    }

    /// Back to closed with an empty window and no rejection counted: one
    /// transition event if the state changes, then a `Reset` event. Calls
    /// admitted before the reset are not recorded.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        self.not_permitted.store(0, Relaxed);
        let word = self.word.load(Acquire);
        if state_of(word) == State::Closed {
            // A new generation of the closed state: no transition.
            let gen = gen_of(word) + 1;
            self.enter(&mut inner, State::Closed, State::Closed, gen);
            self.word.store((gen << 8) | State::Closed.code(), Release);
        } else {
            self.transition(&mut inner, word, State::Closed);
        }
        self.queue(&mut inner, || CircuitBreakerEvent::Reset {
            name: self.name.clone(),
        });
        self.unlock(inner);
    }

    /// Whether `poll_ready` reports `Pending` while open.
    #[inline]
    pub(crate) fn backpressure(&self) -> bool {
        self.backpressure.load(Relaxed)
    }

    /// The settings in force, as a config.
    pub(crate) fn config(&self) -> CircuitBreakerConfig {
        CircuitBreakerConfig::clone(&self.lock().live.config)
    }

    /// Applies validated `settings` to the live breaker, or refuses them
    /// (and changes nothing) when a setting that is fixed at build time
    /// differs. Everything changes in one critical section of the lock
    /// that every decision takes.
    pub(crate) fn reconfigure(&self, settings: &Settings) -> Result<(), ConfigError> {
        let live = Live::new(settings);
        let mut inner = self.lock();
        if let Err(e) = self.check_fixed(&inner.live, settings) {
            drop(inner);
            return Err(e);
        }
        let old = &inner.live;
        let reseed = settings.seed != old.config.seed;
        let half_open_limit_changed = settings.max_wait_in_half_open != old.max_wait_in_half_open;
        let automatic_now = settings.automatic_half_open && !old.automatic_half_open;
        inner.live = live;
        if reseed {
            inner.rng = splitmix64(settings.seed) | 1;
        }
        self.slow_call_nanos
            .store(slow_nanos(settings.slow_call_duration), Relaxed);
        self.backpressure
            .store(settings.config.backpressure, Relaxed);
        let word = self.word.load(Acquire);
        match state_of(word) {
            // The probes recorded may already be as many as now permitted:
            // decide with them rather than wait for probes that will never
            // be admitted.
            State::HalfOpen
                if inner.probes.done > 0 && inner.probes.done >= inner.live.half_open_calls =>
            {
                self.probe_verdict(&mut inner, word);
            }
            // A new limit on the half-open state counts from its start.
            State::HalfOpen if half_open_limit_changed => {
                if let Some(max) = inner.live.max_wait_in_half_open {
                    let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
                    let at = self.instant_at(inner.half_open_since.saturating_add(max));
                    inner.timer = Some((at, gen_of(word)));
                    inner.post = true;
                }
            }
            // Newly automatic: the open wait ends by timer too.
            State::Open if automatic_now => {
                let at = self.instant_at(self.open_until.load(Acquire));
                inner.timer = Some((at, gen_of(word)));
                inner.post = true;
            }
            _ => {}
        }
        self.unlock(inner);
        Ok(())
    }

    /// Whether `settings` keep what is fixed at build time.
    pub(crate) fn check(&self, settings: &Settings) -> Result<(), ConfigError> {
        let inner = self.lock();
        let checked = self.check_fixed(&inner.live, settings);
        drop(inner);
        checked
    }

    fn check_fixed(&self, live: &Live, settings: &Settings) -> Result<(), ConfigError> {
        let fixed = if settings.config.name != live.config.name {
            Some("name")
        } else if settings.time_window_secs != self.time_window_secs {
            Some("time_window")
        } else if settings.window_size != self.window_size {
            Some("window_size")
        } else if settings.consecutive_failures.is_some() != live.consecutive_failures.is_some() {
            Some("consecutive_failures")
        } else {
            None
        };
        match fixed {
            Some(field) => Err(ConfigError::new(
                KIND,
                field,
                "cannot change on a live instance: build a new layer instead",
            )),
            None => Ok(()),
        }
    }

    /// The second a time window records and reads at (0 for a count
    /// window), from the coarse clock: one atomic load while its ticker
    /// runs (the ticker follows tokio's paused clock), else the clock. One
    /// source for every call and every reader; it never moves back.
    #[inline]
    fn window_second(&self) -> u64 {
        match &self.coarse {
            Some(clock) => clock.now_ticks(),
            None => 0,
        }
    }

    /// Calls needed before a rate is computed: clamped to the size of a
    /// count window; as configured for a time window, which has no size.
    fn minimum_calls(&self, live: &Live) -> u64 {
        match self.time_window_secs {
            None => u64::from(live.minimum_calls.min(self.window_size)),
            Some(_) => u64::from(live.minimum_calls),
        }
    }

    /// The breaker's numbers now: exact, every recorded call counted.
    pub(crate) fn snapshot(&self) -> crate::CircuitBreakerSnapshot {
        let second = self.window_second();
        let mut inner = self.lock();
        let word = self.word.load(Acquire);
        let state = state_of(word);
        let (calls, failed, slow) = match state {
            State::HalfOpen => (
                u64::from(inner.probes.done),
                u64::from(inner.probes.failed),
                u64::from(inner.probes.slow),
            ),
            _ if inner.live.consecutive_failures.is_some() => {
                let c = u64::from(inner.consecutive);
                (c, c, 0)
            }
            _ => {
                let r = inner.window.rates(second);
                (r.calls, r.failed, r.slow)
            }
        };
        let minimum = match state {
            State::HalfOpen => u64::from(inner.live.half_open_calls),
            _ => self.minimum_calls(&inner.live),
        };
        let by_rate = inner.live.consecutive_failures.is_none();
        drop(inner);
        let rate = |n: u64| (calls >= minimum && calls > 0 && by_rate).then(|| percent(n, calls));
        let retry_after = (state == State::Open).then(|| {
            let until = self.open_until.load(Acquire);
            Duration::from_nanos(until.saturating_sub(self.now_nanos()))
        });
        crate::CircuitBreakerSnapshot {
            state,
            failure_rate: rate(failed),
            slow_call_rate: rate(slow),
            buffered_calls: calls,
            failed_calls: failed,
            slow_calls: slow,
            not_permitted_calls: self.not_permitted.load(Relaxed),
            retry_after,
        }
    }
}

/// The `buttress.pattern` field of this crate's `tracing` events.
pub(crate) const PATTERN: &str = "circuit_breaker";

/// What a critical section leaves for delivery after the lock.
#[derive(Debug)]
enum Queued {
    /// An event for the listeners.
    Event(CircuitBreakerEvent),
    /// A state change to log.
    Transition(State, State),
    /// A threshold reached in a state, with the failure and slow-call
    /// rates, to log.
    Exceeded(State, f64, f64),
}

/// The `tracing` event of a state change: `warn` when the breaker opens
/// (calls fail fast from now on), `info` for every other change. Queued
/// under the breaker's lock and emitted after it, by the thread that
/// delivers the listeners' events, so records come in the order of the
/// transitions and no subscriber runs under the lock.
#[cold]
fn trace_transition(name: &str, from: State, to: State) {
    macro_rules! transition {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                buttress.pattern = PATTERN,
                buttress.name = name,
                circuit.state = to.as_str(),
                circuit.from = from.as_str(),
                circuit.to = to.as_str(),
                $message
            )
        };
    }
    match to {
        State::Open => transition!(warn, "circuit breaker opened"),
        State::Closed => transition!(info, "circuit breaker closed"),
        _ => transition!(info, "circuit breaker changed state"),
    }
}

/// The `tracing` event of a threshold reached in `state`: `info` in the
/// metrics-only state, where it stands for the opening that does not
/// happen (once per crossing), `debug` otherwise, where the opening's
/// `warn` follows.
#[cold]
fn trace_exceeded(name: &str, state: State, failure_rate: f64, slow_call_rate: f64) {
    macro_rules! exceeded {
        ($level:ident) => {
            tracing::$level!(
                buttress.pattern = PATTERN,
                buttress.name = name,
                circuit.state = state.as_str(),
                circuit.failure_rate = failure_rate,
                circuit.slow_call_rate = slow_call_rate,
                "circuit breaker threshold exceeded"
            )
        };
    }
    if state == State::MetricsOnly {
        exceeded!(info);
    } else {
        exceeded!(debug);
    }
}

/// A uniform number in `[0, 1)` from a xorshift state.
fn unit(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_wait_grows_caps_and_jitters_below_the_cap() {
        let w = OpenWait {
            base: Duration::from_secs(5),
            multiplier: 2.0,
            max: Duration::from_secs(300),
            jitter: 0.0,
        };
        assert_eq!(w.wait(1, 0.5), Duration::from_secs(5));
        assert_eq!(w.wait(2, 0.5), Duration::from_secs(10));
        assert_eq!(w.wait(4, 0.5), Duration::from_secs(40));
        assert_eq!(w.wait(20, 0.5), Duration::from_secs(300));
        let j = OpenWait { jitter: 0.5, ..w };
        // At the cap the spread remains: 150 s to 300 s.
        assert_eq!(j.wait(20, 0.0), Duration::from_secs(300));
        assert_eq!(j.wait(20, 0.5), Duration::from_secs(225));
        assert!(j.wait(20, 0.999) > Duration::from_secs(150));
    }

    proptest::proptest! {
        /// The integer verdict of a full count window is the percentage's,
        /// for every count, at every threshold.
        #[test]
        fn first_reaching_agrees_with_the_percentage(
            size in 1u64..2_000,
            threshold in 0.0001f64..=100.0,
        ) {
            let first = first_reaching(size, threshold);
            for n in 0..=size {
                proptest::prop_assert_eq!(n >= first, reaches(n, size, threshold), "n = {}", n);
            }
        }
    }

    #[test]
    fn first_reaching_at_round_thresholds() {
        assert_eq!(first_reaching(100, 50.0), 50);
        assert_eq!(first_reaching(3, 100.0 / 3.0), 1);
        assert_eq!(first_reaching(7, 100.0), 7);
        assert_eq!(first_reaching(1, 0.0001), 1);
    }

    #[test]
    fn state_codes_round_trip() {
        for s in State::ALL {
            assert_eq!(state_of((7 << 8) | s.code()), s);
            assert_eq!(gen_of((7 << 8) | s.code()), 7);
        }
    }
}

/// Model tests of the half-open probe slots and the transitions, run by
/// `RUSTFLAGS="--cfg buttress_loom" cargo test -p buttress-circuit-breaker
/// --lib loom` (the test command does): every interleaving of the threads
/// below is explored.
#[cfg(all(test, buttress_loom))]
mod loom_models {
    use super::*;
    use loom::thread;

    fn breaker(half_open_calls: u32) -> Arc<Shared> {
        let settings = Settings {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: None,
            window_size: 4,
            time_window_secs: None,
            minimum_calls: 2,
            consecutive_failures: None,
            half_open_calls,
            open_wait: OpenWait {
                base: Duration::from_secs(3600),
                multiplier: 1.0,
                max: Duration::from_secs(3600),
                jitter: 0.0,
            },
            automatic_half_open: false,
            max_wait_in_half_open: None,
            seed: 1,
            config: crate::CircuitBreakerConfig::default(),
        };
        let shared = Shared::new("model".into(), settings, Listeners::new(), None);
        shared.force_to(State::HalfOpen);
        shared
    }

    impl Shared {
        /// Moves to any state, as the timers and the verdicts do.
        fn force_to(&self, to: State) {
            let mut inner = self.lock();
            let word = self.word.load(Acquire);
            self.transition(&mut inner, word, to);
            self.unlock(inner);
        }

        fn probes(&self) -> Probes {
            self.lock().probes
        }
    }

    /// A probe that ends: recorded with `outcome`, or dropped without a
    /// verdict when `outcome` is `None`. Returns whether it was admitted.
    fn probe(shared: &Shared, outcome: Option<Outcome>) -> bool {
        match shared.admit() {
            Admission::Permit { gen, probe, .. } => {
                assert!(probe, "a half-open breaker admits only probes");
                let recorded = outcome.is_some_and(|o| shared.record(gen, probe, o, None));
                if !recorded {
                    shared.release_probe(gen);
                }
                true
            }
            Admission::Reject(_) => false,
        }
    }

    #[test]
    fn loom_probe_slots_never_exceed_the_limit_and_never_leak() {
        loom::model(|| {
            let shared = breaker(1);
            let a = {
                let s = shared.clone();
                thread::spawn(move || probe(&s, None))
            };
            let b = {
                let s = shared.clone();
                thread::spawn(move || probe(&s, Some(Outcome::Ignored)))
            };
            let first = a.join().unwrap();
            let second = b.join().unwrap();
            assert!(first || second, "one probe at least finds the slot free");
            // Both ended without a verdict: the slot is free again.
            assert_eq!(shared.state(), State::HalfOpen);
            assert_eq!(shared.probes().taken, 0);
            assert!(probe(&shared, Some(Outcome::Success)));
            assert_eq!(shared.state(), State::Closed);
        });
    }

    #[test]
    fn loom_a_slot_released_across_a_reopening_never_counts_in_the_new_half_open_state() {
        loom::model(|| {
            let shared = breaker(1);
            let Admission::Permit { gen, .. } = shared.admit() else {
                panic!("the first probe is admitted");
            };
            let releaser = {
                let s = shared.clone();
                thread::spawn(move || s.release_probe(gen))
            };
            let reopener = {
                let s = shared.clone();
                thread::spawn(move || {
                    s.force_to(State::Open);
                    s.force_to(State::HalfOpen);
                    // The new half-open state's probe takes its slot.
                    matches!(s.admit(), Admission::Permit { .. })
                })
            };
            releaser.join().unwrap();
            let admitted = reopener.join().unwrap();
            assert!(admitted, "a fresh half-open state has a free slot");
            // Exactly that probe holds a slot: the old release never took
            // it away, and nothing else leaked.
            assert_eq!(shared.probes().taken, 1);
            assert!(!probe(&shared, Some(Outcome::Success)), "the limit is 1");
        });
    }

    #[test]
    fn loom_the_last_probe_verdict_makes_one_transition() {
        loom::model(|| {
            let shared = breaker(2);
            let admit = |s: &Shared| match s.admit() {
                Admission::Permit { gen, probe, .. } => (gen, probe),
                Admission::Reject(_) => panic!("two slots"),
            };
            let (g1, p1) = admit(&shared);
            let (g2, p2) = admit(&shared);
            let t1 = {
                let s = shared.clone();
                thread::spawn(move || s.record(g1, p1, Outcome::Failure, None))
            };
            let t2 = {
                let s = shared.clone();
                thread::spawn(move || s.record(g2, p2, Outcome::Success, None))
            };
            assert!(t1.join().unwrap() && t2.join().unwrap());
            // One failure in two probes reaches 50 %: open, once.
            assert_eq!(shared.state(), State::Open);
            assert_eq!(gen_of(shared.word.load(Acquire)), g1 + 1);
        });
    }
}
