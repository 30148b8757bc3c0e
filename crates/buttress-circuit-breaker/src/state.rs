//! The breaker's state machine, shared by the layer, its services, their
//! futures and the handle.
//!
//! The state and a generation counter share one atomic word: admission is a
//! single load in the closed state. Transitions are rare; they take a small
//! mutex, re-check the word, prepare the data of the state they enter and
//! only then publish the new word, so a transition happens once and emits
//! exactly one event however many callers race for it. Every admitted call
//! carries the generation it was admitted in; a result from an earlier
//! generation (a call admitted before the breaker opened) updates the
//! counters and events but never the window or the verdict of a later
//! state.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use std::cell::Cell;

use buttress_core::local::{Anchor, Cache, Home, Local};
use buttress_core::{Listeners, Outcome};
use tokio::time::Instant;

use crate::events::CircuitBreakerEvent;
use crate::window::{CountWindow, Rates, TimeWindow};

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
}

// One per breaker: the count window's size is its padded cursor.
#[allow(clippy::large_enum_variant)]
enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

#[derive(Default)]
struct CoarseSecond {
    second: AtomicU64,
    running: std::sync::atomic::AtomicBool,
    starting: std::sync::atomic::AtomicBool,
}

/// What admission decided for one call.
pub(crate) enum Admission {
    /// Go ahead; `probe` when the call is a half-open probe.
    Permit { gen: u64, probe: bool },
    /// Rejected; the time left until the breaker lets probes through.
    Reject(Option<Duration>),
}

thread_local! {
    static CACHE: Cache<Shared> = const { Cache::new() };
}

/// Where breakers live: response futures hold a token, not an `Arc` (see
/// [`buttress_core::local`]).
static HOME: Home<Shared> = Home::new(&CACHE);

impl Local for Shared {
    fn home() -> &'static Home<Self> {
        &HOME
    }

    /// A thread's batch of successes (see [`Shared::batch_success`]).
    fn flush(&self, local: u64) {
        self.flush_batch(local);
    }
}

/// The largest batch of successes a thread keeps before it moves them to
/// a count window.
const MAX_BATCH: u64 = 32;
/// The batch of successes a thread keeps for one second of a time window.
const TIME_BATCH: u64 = 16;

/// A time window's batch tag: the low 24 bits of the generation above the
/// low 32 bits of the second. A batch is mistaken for a current one only if
/// the breaker changed state a multiple of 2^24 times, or 2^32 seconds
/// passed, while one thread held it.
const TAG_SECOND_BITS: u32 = 32;
const TAG_SECOND_MASK: u64 = (1 << TAG_SECOND_BITS) - 1;
const TAG_GEN_MASK: u64 = (1 << 24) - 1;

#[inline]
fn time_tag(gen: u64, second: u64) -> u64 {
    ((gen & TAG_GEN_MASK) << TAG_SECOND_BITS) | (second & TAG_SECOND_MASK)
}

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) settings: Settings,
    pub(crate) listeners: Listeners<CircuitBreakerEvent>,
    word: AtomicU64,
    transition: Mutex<()>,
    base: Instant,
    window: Window,
    consecutive: AtomicU32,
    consecutive_opens: AtomicU32,
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    probes_taken: AtomicU32,
    probes_done: AtomicU32,
    probes_failed: AtomicU32,
    probes_slow: AtomicU32,
    not_permitted: AtomicU64,
    rng: AtomicU64,
    /// Calls of a keyed breaker admitted and not yet dropped.
    pub(crate) in_flight: AtomicU64,
    /// Successes a thread may count before it moves them to the count
    /// window; 1 when successes are not batched.
    batch: u64,
    /// The current second for a time window, kept by a ticker task so that
    /// recording reads an atomic instead of the clock.
    coarse: CoarseSecond,
    this: Weak<Shared>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        settings: Settings,
        listeners: Listeners<CircuitBreakerEvent>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Shared {
            name,
            window: match settings.time_window_secs {
                Some(secs) => Window::Time(TimeWindow::new(secs)),
                None => Window::Count(CountWindow::new(settings.window_size)),
            },
            rng: AtomicU64::new(splitmix64(settings.seed) | 1),
            in_flight: AtomicU64::new(0),
            batch: match (settings.time_window_secs, settings.consecutive_failures) {
                (None, None) => (u64::from(settings.window_size) / 8).clamp(1, MAX_BATCH),
                (Some(_), None) => TIME_BATCH,
                (_, Some(_)) => 1,
            },
            coarse: CoarseSecond::default(),
            settings,
            listeners,
            word: AtomicU64::new(State::Closed.code()),
            transition: Mutex::new(()),
            base: Instant::now(),
            consecutive: AtomicU32::new(0),
            consecutive_opens: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            probes_taken: AtomicU32::new(0),
            probes_done: AtomicU32::new(0),
            probes_failed: AtomicU32::new(0),
            probes_slow: AtomicU32::new(0),
            not_permitted: AtomicU64::new(0),
            this: this.clone(),
        })
    }

    /// A new breaker, anchored for its services and handles.
    pub(crate) fn anchor(
        name: Arc<str>,
        settings: Settings,
        listeners: Listeners<CircuitBreakerEvent>,
    ) -> Anchor<Shared> {
        Anchor::new(Shared::new(name, settings, listeners))
    }

    /// The start of a call for the slow-call check: nanoseconds after the
    /// base instant, plus one; 0 (and no clock read) when no slow-call
    /// duration is configured.
    #[inline]
    pub(crate) fn call_start(&self) -> u64 {
        if self.settings.slow_call_duration.is_none() {
            return 0;
        }
        self.now_nanos().saturating_add(1)
    }

    /// Records the outcome of a call that started at `start` (see
    /// [`call_start`](Self::call_start)), on the thread's local word of
    /// this breaker.
    #[inline]
    pub(crate) fn complete(
        &self,
        gen: u64,
        probe: bool,
        start: u64,
        outcome: Outcome,
        local: &Cell<u64>,
    ) -> bool {
        // One clock read serves both the slow-call check and the time
        // window; none when neither is configured.
        let end = (start != 0 || self.needs_clock()).then(Instant::now);
        let elapsed = match end {
            Some(end) if start != 0 => {
                Some(end.saturating_duration_since(self.instant_at(start - 1)))
            }
            _ => None,
        };
        self.record(gen, probe, outcome, elapsed, end, local)
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

    /// A uniform number in `[0, 1)` from a shared xorshift state.
    fn unit(&self) -> f64 {
        let mut x = self.rng.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Admission of one call.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        loop {
            let word = self.word.load(Acquire);
            match state_of(word) {
                State::Closed | State::Disabled | State::MetricsOnly => {
                    return Admission::Permit {
                        gen: gen_of(word),
                        probe: false,
                    }
                }
                State::ForcedOpen => return self.not_permitted(None),
                State::Open => {
                    let now = self.now_nanos();
                    let until = self.open_until.load(Acquire);
                    if now < until {
                        return self.not_permitted(Some(Duration::from_nanos(until - now)));
                    }
                    self.transition_from(word, State::HalfOpen);
                }
                State::HalfOpen => {
                    if let Some(max) = self.settings.max_wait_in_half_open {
                        let since = self.half_open_since.load(Acquire);
                        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
                        if self.now_nanos().saturating_sub(since) >= max {
                            self.transition_from(word, State::Open);
                            continue;
                        }
                    }
                    let taken = self.probes_taken.fetch_add(1, AcqRel);
                    if taken < self.settings.half_open_calls && self.word.load(Acquire) == word {
                        return Admission::Permit {
                            gen: gen_of(word),
                            probe: true,
                        };
                    }
                    self.probes_taken.fetch_sub(1, AcqRel);
                    if self.word.load(Acquire) != word {
                        continue;
                    }
                    return self.not_permitted(None);
                }
            }
        }
    }

    fn not_permitted(&self, retry_after: Option<Duration>) -> Admission {
        self.not_permitted.fetch_add(1, Relaxed);
        self.listeners.emit(|| CircuitBreakerEvent::NotPermitted {
            name: self.name.clone(),
        });
        Admission::Reject(retry_after)
    }

    /// A probe admitted in generation `gen` ended without a verdict
    /// (dropped, cancelled, ignored): its slot is free again.
    pub(crate) fn release_probe(&self, gen: u64) {
        if gen_of(self.word.load(Acquire)) == gen {
            self.probes_taken.fetch_sub(1, AcqRel);
        }
    }

    /// Records the outcome of a call admitted in generation `gen`.
    /// Returns `true` when the outcome was recorded (a probe's slot is then
    /// used up).
    pub(crate) fn record(
        &self,
        gen: u64,
        probe: bool,
        outcome: Outcome,
        elapsed: Option<Duration>,
        end: Option<Instant>,
        local: &Cell<u64>,
    ) -> bool {
        let slow = match (self.settings.slow_call_duration, elapsed) {
            (Some(limit), Some(e)) => e > limit,
            _ => false,
        };
        let failed = outcome.is_failure();
        self.emit_outcome(outcome, slow, elapsed);
        if outcome == Outcome::Ignored {
            return false;
        }
        let word = self.word.load(Acquire);
        if gen_of(word) != gen {
            // Admitted in an earlier state: counted in the events only.
            return false;
        }
        match state_of(word) {
            State::Closed | State::MetricsOnly => {
                if self.batch > 1 && !failed && !slow {
                    let tag = match &self.window {
                        Window::Count(_) => gen,
                        Window::Time(_) => time_tag(gen, self.second_of(end)),
                    };
                    self.batch_success(tag, local);
                } else {
                    // This thread's earlier successes go first.
                    self.flush_local(local);
                    self.record_closed(word, failed, slow, end);
                }
                true
            }
            State::HalfOpen if probe => {
                self.record_probe(word, failed, slow);
                true
            }
            _ => false,
        }
    }

    fn emit_outcome(&self, outcome: Outcome, slow: bool, elapsed: Option<Duration>) {
        if self.listeners.is_empty() {
            return;
        }
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

    #[inline]
    fn record_closed(&self, word: u64, failed: bool, slow: bool, end: Option<Instant>) {
        if let Some(limit) = self.settings.consecutive_failures {
            if failed {
                let n = self.consecutive.fetch_add(1, AcqRel) + 1;
                if n >= limit {
                    self.exceeded(word, 100.0, 0.0);
                }
            } else if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
            return;
        }
        let second = match &self.window {
            Window::Count(w) => {
                w.record(failed, slow);
                0
            }
            Window::Time(w) => {
                let second = self.second_of(end);
                w.record(second, failed, slow);
                second
            }
        };
        if failed || slow {
            let rates = self.window_rates(second);
            if rates.calls >= self.minimum_calls() {
                let (fr, sr) = (rates.failure_rate(), rates.slow_rate());
                if fr >= self.settings.failure_rate_threshold
                    || sr >= self.settings.slow_call_rate_threshold
                {
                    self.exceeded(word, fr, sr);
                }
            }
        }
    }

    /// The second a call ended in: from its end time when the clock was
    /// read anyway, else the ticker's.
    #[inline]
    fn second_of(&self, end: Option<Instant>) -> u64 {
        match end {
            Some(end) => self.second(end),
            None => self.current_second(),
        }
    }

    /// Counts a success in the thread's local word (a tag above, the count
    /// in the low byte) and moves a full batch to the window with one
    /// atomic operation. The tag is the generation for a count window, and
    /// the generation and the second for a time window (see
    /// [`time_tag`]): a success of another tag moves the batch first.
    ///
    /// A success cannot trip a breaker, so it may wait; a failure or a slow
    /// call on the same thread moves the batch first, so a thread's calls
    /// reach the window in order. Successes from another generation are
    /// dropped, as a single late result would be.
    #[inline]
    fn batch_success(&self, tag: u64, local: &Cell<u64>) {
        let word = local.get();
        let n = if word != 0 && word >> 8 == tag {
            (word & 0xff) + 1
        } else {
            if word != 0 {
                self.flush_batch(word);
            }
            1
        };
        if n >= self.batch {
            local.set(0);
            self.flush_batch((tag << 8) | n);
        } else {
            local.set((tag << 8) | n);
        }
    }

    /// Moves the thread's batch of successes to the window.
    #[inline]
    pub(crate) fn flush_local(&self, local: &Cell<u64>) {
        let word = local.replace(0);
        if word != 0 {
            self.flush_batch(word);
        }
    }

    #[cold]
    fn flush_batch(&self, local: u64) {
        let (tag, n) = (local >> 8, local & 0xff);
        let word = self.word.load(Acquire);
        if n == 0 || !matches!(state_of(word), State::Closed | State::MetricsOnly) {
            return;
        }
        match &self.window {
            Window::Count(w) if tag == gen_of(word) => w.record_successes(n),
            Window::Time(w) if tag >> TAG_SECOND_BITS == gen_of(word) & TAG_GEN_MASK => {
                // Not `current_second`: this may run in a thread's exit,
                // where no ticker should be started.
                let now = if self.coarse.running.load(Acquire) {
                    self.coarse.second.load(Acquire)
                } else {
                    self.second(Instant::now())
                };
                // The full second: the latest one at or before `now` with
                // the tag's low bits.
                let low = tag & TAG_SECOND_MASK;
                let mut second = (now & !TAG_SECOND_MASK) | low;
                if second > now {
                    second = second.wrapping_sub(TAG_SECOND_MASK + 1);
                }
                w.record_successes(second, now, n);
            }
            _ => {}
        }
    }

    /// Whether recording needs the time a call ended.
    #[inline]
    pub(crate) fn needs_clock(&self) -> bool {
        // A time window reads the ticker's second instead.
        false
    }

    /// The current second since the base instant: the ticker's when it
    /// runs, else from the clock (and the ticker is started if a tokio
    /// runtime is there to run it).
    fn current_second(&self) -> u64 {
        if self.coarse.running.load(Acquire) {
            return self.coarse.second.load(Acquire);
        }
        self.start_ticker();
        self.second(Instant::now())
    }

    /// Starts the task that keeps `coarse.second` current: it ticks at each
    /// whole second after the base instant, follows tokio's paused clock in
    /// tests, ends when the breaker is dropped, and marks itself stopped if
    /// its runtime shuts down (the next call then starts another).
    fn start_ticker(&self) {
        // A load first: calls that find a ticker starting make no write.
        if self.coarse.starting.load(Acquire) || self.coarse.starting.swap(true, AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.coarse.starting.store(false, Release);
            return;
        };
        let this = self.this.clone();
        runtime.spawn(async move {
            /// Marks the ticker stopped however its task ends.
            struct Stopped(Weak<Shared>);
            impl Drop for Stopped {
                fn drop(&mut self) {
                    if let Some(shared) = self.0.upgrade() {
                        shared.coarse.running.store(false, Release);
                        shared.coarse.starting.store(false, Release);
                    }
                }
            }
            let _stopped = Stopped(this.clone());
            let Some(first) = this.upgrade().map(|s| s.tick()) else {
                return;
            };
            let base = match this.upgrade() {
                Some(s) => s.base,
                None => return,
            };
            let next = base + Duration::from_secs(first + 1);
            let mut ticks = tokio::time::interval_at(next, Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                match this.upgrade() {
                    Some(shared) => {
                        shared.tick();
                    }
                    None => return,
                }
            }
        });
    }

    /// Publishes the current second; returns it.
    fn tick(&self) -> u64 {
        let second = self.second(Instant::now());
        self.coarse.second.store(second, Release);
        self.coarse.running.store(true, Release);
        second
    }

    fn second(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_secs()
    }

    fn window_rates(&self, second: u64) -> Rates {
        match &self.window {
            Window::Count(w) => w.rates(),
            Window::Time(w) => w.rates(second),
        }
    }

    fn window_reset(&self) {
        match &self.window {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }

    /// Calls needed before a rate is computed: clamped to the size of a
    /// count window; as configured for a time window, which has no size.
    fn minimum_calls(&self) -> u64 {
        match &self.window {
            Window::Count(_) => {
                u64::from(self.settings.minimum_calls.min(self.settings.window_size))
            }
            Window::Time(_) => u64::from(self.settings.minimum_calls),
        }
    }

    fn exceeded(&self, word: u64, failure_rate: f64, slow_call_rate: f64) {
        self.listeners
            .emit(|| CircuitBreakerEvent::ThresholdExceeded {
                name: self.name.clone(),
                failure_rate,
                slow_call_rate,
            });
        if state_of(word) == State::Closed {
            self.transition_from(word, State::Open);
        }
    }

    fn record_probe(&self, word: u64, failed: bool, slow: bool) {
        if failed {
            self.probes_failed.fetch_add(1, AcqRel);
        }
        if slow {
            self.probes_slow.fetch_add(1, AcqRel);
        }
        let done = self.probes_done.fetch_add(1, AcqRel) + 1;
        let n = self.settings.half_open_calls;
        if done < n {
            return;
        }
        let calls = f64::from(n);
        let fr = f64::from(self.probes_failed.load(Acquire)) * 100.0 / calls;
        let sr = f64::from(self.probes_slow.load(Acquire)) * 100.0 / calls;
        if fr >= self.settings.failure_rate_threshold
            || sr >= self.settings.slow_call_rate_threshold
        {
            self.exceeded_in_half_open(word, fr, sr);
        } else {
            self.transition_from(word, State::Closed);
        }
    }

    fn exceeded_in_half_open(&self, word: u64, fr: f64, sr: f64) {
        self.listeners
            .emit(|| CircuitBreakerEvent::ThresholdExceeded {
                name: self.name.clone(),
                failure_rate: fr,
                slow_call_rate: sr,
            });
        self.transition_from(word, State::Open);
    }

    /// Moves from the exact state word `from` to `to`; does nothing if
    /// another caller changed the state first.
    pub(crate) fn transition_from(&self, from: u64, to: State) -> bool {
        let guard = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        if self.word.load(Acquire) != from {
            return false;
        }
        self.enter(state_of(from), to);
        self.word
            .store(((gen_of(from) + 1) << 8) | to.code(), Release);
        drop(guard);
        self.after_enter(to, gen_of(from) + 1);
        self.listeners
            .emit(|| CircuitBreakerEvent::StateTransition {
                name: self.name.clone(),
                from: state_of(from),
                to,
            });
        true
    }

    /// Forces a state, whatever the current one (operator controls).
    pub(crate) fn force(&self, to: State) {
        loop {
            let word = self.word.load(Acquire);
            if state_of(word) == to && to != State::Closed {
                return;
            }
            if self.transition_from(word, to) {
                return;
            }
        }
    }

    /// Prepares the data of `to` before the new state is published.
    fn enter(&self, from: State, to: State) {
        match to {
            State::Closed | State::MetricsOnly | State::Disabled => {
                self.window_reset();
                self.consecutive.store(0, Release);
                if to == State::Closed {
                    self.consecutive_opens.store(0, Release);
                }
            }
            State::Open => {
                let opens = if matches!(from, State::Closed | State::HalfOpen | State::Open) {
                    self.consecutive_opens.fetch_add(1, AcqRel) + 1
                } else {
                    1
                };
                let wait = self.settings.open_wait.wait(opens, self.unit());
                let until = self
                    .now_nanos()
                    .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
                self.open_until.store(until, Release);
            }
            State::HalfOpen => {
                self.probes_taken.store(0, Release);
                self.probes_done.store(0, Release);
                self.probes_failed.store(0, Release);
                self.probes_slow.store(0, Release);
                self.half_open_since.store(self.now_nanos(), Release);
            }
            State::ForcedOpen => {}
        }
    }

    /// Timers for automatic transitions, after the new state is published.
    fn after_enter(&self, to: State, gen: u64) {
        let at = match to {
            State::Open if self.settings.automatic_half_open => {
                self.instant_at(self.open_until.load(Acquire))
            }
            State::HalfOpen => match self.settings.max_wait_in_half_open {
                Some(max) => Instant::now() + max,
                None => return,
            },
            _ => return,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                name = %self.name,
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
        let word = self.word.load(Acquire);
        if gen_of(word) != gen {
            return;
        }
        match state_of(word) {
            State::Open => {
                self.transition_from(word, State::HalfOpen);
            }
            State::HalfOpen => {
                self.transition_from(word, State::Open);
            }
            _ => {}
        }
    }

    /// Rates of the current window, `None` below the minimum of calls.
    pub(crate) fn snapshot(&self) -> crate::CircuitBreakerSnapshot {
        let word = self.word.load(Acquire);
        let state = state_of(word);
        let (calls, failed, slow) = match state {
            State::HalfOpen => (
                u64::from(self.probes_done.load(Acquire)),
                u64::from(self.probes_failed.load(Acquire)),
                u64::from(self.probes_slow.load(Acquire)),
            ),
            _ if self.settings.consecutive_failures.is_some() => {
                let c = u64::from(self.consecutive.load(Acquire));
                (c, c, 0)
            }
            _ => {
                let second = match self.window {
                    Window::Time(_) => self.current_second(),
                    Window::Count(_) => 0,
                };
                let r = self.window_rates(second);
                (r.calls, r.failed, r.slow)
            }
        };
        let minimum = match state {
            State::HalfOpen => u64::from(self.settings.half_open_calls),
            _ => self.minimum_calls(),
        };
        let rate = |n: u64| {
            (calls >= minimum && calls > 0 && self.settings.consecutive_failures.is_none())
                .then(|| n as f64 * 100.0 / calls as f64)
        };
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

    pub(crate) fn reset(&self) {
        self.not_permitted.store(0, Relaxed);
        self.force(State::Closed);
    }
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

    #[test]
    fn state_codes_round_trip() {
        for s in State::ALL {
            assert_eq!(state_of((7 << 8) | s.code()), s);
            assert_eq!(gen_of((7 << 8) | s.code()), 7);
        }
    }
}
