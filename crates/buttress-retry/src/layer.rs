use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use buttress_core::registry::Component;
use buttress_core::{ConfigError, Listener, Listeners, Registry};
use tower_layer::Layer;

use crate::backoff::{Backoff, Jitter};
use crate::budget::{BudgetSnapshot, RetryBudget, Withdrawal};
use crate::config::{BudgetConfig, RetryConfig};
use crate::events::RetryEvent;
use crate::policy::{Classified, GrpcRetry, HttpRetry, NetworkErrors, RetryErrors};
use crate::request::{CloneRequest, HttpReplay};
use crate::rng::{thread_random, RandomSource, SeededRandom};
use crate::service::Retry;

pub(crate) const KIND: &str = "retry";

/// The longest `max_delay` a builder accepts: one hour. A longer wait
/// between two attempts looks like a hang, not a retry.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60 * 60);

/// The longest `max_elapsed` a builder accepts: one day.
pub(crate) const MAX_ELAPSED: Duration = Duration::from_secs(24 * 60 * 60);

/// More attempts than this need a bound: a budget, a `max_elapsed`, or
/// an explicit [`unbounded_retries`](RetryBuilder::unbounded_retries).
pub(crate) const MAX_UNGUARDED_ATTEMPTS: u32 = 10;

/// The limits of one layer, copied into every response future so that the
/// happy path reads no shared state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Settings {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) jitter: Jitter,
    pub(crate) max_delay: Duration,
    pub(crate) max_elapsed: Option<Duration>,
}

#[derive(Debug, Default)]
struct Counters {
    successful_without_retry: AtomicU64,
    successful_with_retry: AtomicU64,
    failed_without_retry: AtomicU64,
    failed_with_retry: AtomicU64,
    retries: AtomicU64,
}

/// State shared by a layer and every service and future it makes.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// The name when it is a `&'static str`: a quiet future carries it
    /// instead of a clone of this `Arc`.
    static_name: Option<&'static str>,
    /// Whether futures must reach this state: listeners, a budget, a
    /// random source, a registry entry or a handle (or a name that is not
    /// `&'static`, which makes every future carry the `Arc` anyway). Until then they
    /// carry no `Arc` and the call path touches no shared reference count.
    observed: AtomicBool,
    listeners: Listeners<RetryEvent>,
    budget: Option<RetryBudget>,
    random: Option<Arc<dyn RandomSource>>,
    /// The seed of `random`, when it is a [`SeededRandom`] made by
    /// [`RetryBuilder::seed`].
    seed: Option<u64>,
    counters: Counters,
    /// The limits in force, swapped as one value by
    /// [`RetryHandle::reconfigure`].
    live: Mutex<Live>,
    /// Bumped (under `live`'s lock) by every change of `live`: a service
    /// compares it with the generation of its copy, one relaxed load per
    /// call, and takes the lock only when they differ.
    generation: AtomicU64,
}

/// The limits of a layer that a run-time change swaps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Live {
    pub(crate) settings: Settings,
    unbounded_retries: bool,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, Live> {
        // Every write stores a whole value: a poisoned lock is still sound.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings in force and their generation.
    pub(crate) fn settings(&self) -> (Settings, u64) {
        let live = self.live();
        (live.settings, self.generation.load(Ordering::Relaxed))
    }

    /// The generation of the settings in force.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn link(self: &Arc<Self>) -> Link {
        match self.static_name {
            Some(name) if !self.observed.load(Ordering::Relaxed) => Link::Quiet(name),
            _ => Link::Observed(self.clone()),
        }
    }
}

/// A retry the budget allowed: what was taken from it, if the layer has
/// one, so that a retry not made after all is given back where it was
/// taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allowed(Option<Withdrawal>);

/// A response future's way back to its layer.
pub(crate) enum Link {
    /// Nobody observes the layer: the static name is all an error needs.
    Quiet(&'static str),
    /// Listeners, a budget, a random source, a registry or a handle.
    Observed(Arc<Shared>),
}

impl Link {
    #[inline]
    pub(crate) fn deposit(&self) {
        if let Link::Observed(shared) = self {
            if let Some(budget) = &shared.budget {
                budget.deposit();
            }
        }
    }

    /// Takes a retry from the budget: `None` when it is spent; always
    /// allowed without a budget.
    pub(crate) fn withdraw(&self) -> Option<Allowed> {
        match self {
            Link::Observed(shared) => match &shared.budget {
                Some(budget) => budget.withdraw().map(|w| Allowed(Some(w))),
                None => Some(Allowed(None)),
            },
            Link::Quiet(_) => Some(Allowed(None)),
        }
    }

    /// Gives back a retry taken from the budget for a retry that was not
    /// made after all.
    pub(crate) fn refund(&self, allowed: Allowed) {
        if let (Link::Observed(shared), Allowed(Some(withdrawal))) = (self, allowed) {
            if let Some(budget) = &shared.budget {
                budget.refund(withdrawal);
            }
        }
    }

    pub(crate) fn random(&self) -> u64 {
        match self {
            Link::Observed(shared) => match &shared.random {
                Some(random) => random.next_u64(),
                None => thread_random(),
            },
            Link::Quiet(_) => thread_random(),
        }
    }

    pub(crate) fn name(&self) -> Arc<str> {
        match self {
            Link::Quiet(name) => Arc::from(*name),
            Link::Observed(shared) => shared.name.clone(),
        }
    }

    #[inline]
    pub(crate) fn emit(&self, event: impl FnOnce(Arc<str>) -> RetryEvent) {
        if let Link::Observed(shared) = self {
            shared.listeners.emit(|| event(shared.name.clone()));
        }
    }

    /// Counts a call that ended in success (`ok`) or failure, after
    /// retries (`retried`) or not.
    #[inline]
    pub(crate) fn finish(&self, ok: bool, retried: bool, exhausted: bool) {
        if let Link::Observed(shared) = self {
            let c = &shared.counters;
            let counter = match (ok, retried) {
                (true, false) => &c.successful_without_retry,
                (true, true) => &c.successful_with_retry,
                (false, false) => &c.failed_without_retry,
                (false, true) => &c.failed_with_retry,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            shared.listeners.emit(|| RetryEvent::Finished {
                name: shared.name.clone(),
                succeeded: ok,
                retried,
                exhausted,
            });
        }
    }

    pub(crate) fn retried(&self) {
        if let Link::Observed(shared) = self {
            shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Retries failed calls of the wrapped service.
///
/// `P` decides what is retried ([`RetryErrors`] by default; see
/// [`RetryBuilder::policy`]); `R` keeps each request for the next attempt
/// ([`CloneRequest`] by default, [`HttpReplay`] for HTTP bodies). Every
/// service made by one layer shares its budget, counters and listeners.
///
/// After each attempt, the layer first asks `R` whether the request can be
/// sent again ([`Replay::replayable`](crate::Replay::replayable): a body over the limit, a
/// non-idempotent request that may have reached the server). If it
/// cannot, the result goes back as it is: the policy is not asked about
/// it, nothing is taken from the budget and no retry is scheduled; a
/// response is counted as accepted, an error as not retried
/// ([`RetryEvent::NotRetried`](crate::RetryEvent::NotRetried) with the
/// reason). Only a body that the previous attempt still holds is known
/// late: that retry is scheduled, and given back to the budget if the body
/// is not free when the delay is over.
///
/// ```
/// use buttress_retry::{error::RetryExhausted, RetryLayer};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = RetryLayer::exponential(3, Duration::from_millis(100), Duration::from_secs(2))
///     .name("inventory")
///     .build()
///     .unwrap();
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(move |x: u32| {
///     let n = seen.fetch_add(1, Ordering::SeqCst);
///     async move { if n < 2 { Err("flaky") } else { Ok(x) } }
/// });
/// assert_eq!(svc.clone().oneshot(7).await.unwrap(), 7);
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
///
/// // Three more failures: the caller gets the last error, wrapped.
/// let always = ServiceBuilder::new()
///     .layer(RetryLayer::fixed(3, Duration::from_millis(10)).build().unwrap())
///     .service_fn(|_: u32| async { Err::<u32, _>("down") });
/// let err = always.oneshot(1).await.unwrap_err();
/// let exhausted = err.downcast_ref::<RetryExhausted>().unwrap();
/// assert_eq!(exhausted.attempts(), 3);
/// assert_eq!(exhausted.last_error().to_string(), "down");
/// # }
/// ```
pub struct RetryLayer<P = RetryErrors, R = CloneRequest> {
    shared: Arc<Shared>,
    policy: P,
    replay: R,
    /// See [`RetryLayer::pass_through`].
    pass_through: bool,
}

impl<P: Clone, R: Clone> Clone for RetryLayer<P, R> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            policy: self.policy.clone(),
            replay: self.replay.clone(),
            pass_through: self.pass_through,
        }
    }
}

impl<P, R> fmt::Debug for RetryLayer<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (settings, _) = self.shared.settings();
        f.debug_struct("RetryLayer")
            .field("name", &self.shared.name)
            .field("max_attempts", &settings.max_attempts)
            .field("backoff", &settings.backoff)
            .field("jitter", &settings.jitter)
            .field("max_delay", &settings.max_delay)
            .field("max_elapsed", &settings.max_elapsed)
            .field("budget", &self.shared.budget)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, P: Clone, R: Clone> Layer<S> for RetryLayer<P, R> {
    type Service = Retry<S, P, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(
            inner,
            self.shared.clone(),
            self.policy.clone(),
            self.replay.clone(),
            self.pass_through,
        )
    }
}

impl<P, R> RetryLayer<P, R> {
    /// This retry, made not there: its services send each request once,
    /// as the replay strategy gives the first attempt's request (without
    /// keeping anything for a retry), and count nothing, at the cost of
    /// one branch, with the type of a real one. The facade's policies
    /// fill an empty slot with it, so that a policy's service has one
    /// type whichever slots a configuration fills, without a wrapper
    /// around every slot's future. Not part of the stable API.
    #[doc(hidden)]
    pub fn into_pass_through(mut self) -> Self {
        self.pass_through = true;
        self
    }
}

impl RetryLayer {
    /// A builder with the defaults: 3 attempts, exponential backoff from
    /// 100 ms doubling, full jitter, at most 10 s between attempts, every
    /// error retried, `Req: Clone` requests.
    pub fn builder() -> RetryBuilder {
        RetryBuilder {
            name: Cow::Borrowed(KIND),
            unbounded_retries: false,
            settings: Settings {
                max_attempts: 3,
                backoff: Backoff::exponential(Duration::from_millis(100)),
                jitter: Jitter::Full,
                max_delay: Duration::from_secs(10),
                max_elapsed: None,
            },
            policy: RetryErrors,
            replay: CloneRequest,
            budget: None,
            random: None,
            seed: None,
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }

    /// `max_attempts` attempts in all, `delay` apart, without jitter.
    pub fn fixed(max_attempts: u32, delay: Duration) -> RetryBuilder {
        Self::builder()
            .max_attempts(max_attempts)
            .backoff(Backoff::fixed(delay))
            .jitter(Jitter::None)
            // The cap also bounds server hints: keep room for them.
            .max_delay(delay.max(Duration::from_secs(10)))
    }

    /// `max_attempts` attempts in all, waiting a full-jittered exponential
    /// delay from `initial`, doubling, capped at `max_delay` (at most one
    /// hour: `build` refuses `Duration::MAX`, which waited for ever).
    pub fn exponential(max_attempts: u32, initial: Duration, max_delay: Duration) -> RetryBuilder {
        Self::builder()
            .max_attempts(max_attempts)
            .backoff(Backoff::exponential(initial))
            .max_delay(max_delay)
    }

    /// Network errors only ([`NetworkErrors`]): 3 attempts, exponential
    /// from 100 ms, full jitter.
    pub fn network() -> RetryBuilder<NetworkErrors> {
        Self::builder().policy(NetworkErrors)
    }

    /// HTTP ([`HttpRetry`] and [`HttpReplay`]): 502, 503, 504, 429 and
    /// transport errors are retried, idempotent requests only (or any after
    /// a connect error or a local buttress rejection), bodies up to 64 KiB
    /// kept for replay,
    /// `Retry-After` honoured.
    pub fn for_http() -> RetryBuilder<HttpRetry, HttpReplay> {
        Self::builder()
            .policy(HttpRetry::new())
            .replay(HttpReplay::new())
    }

    /// gRPC over HTTP ([`GrpcRetry`]): `UNAVAILABLE`, and
    /// `RESOURCE_EXHAUSTED` with pushback, for every method (the status says
    /// the call was not processed); `grpc-retry-pushback-ms` honoured;
    /// errors only when the call never left (a connect error or a local
    /// buttress rejection).
    pub fn for_grpc() -> RetryBuilder<GrpcRetry, HttpReplay> {
        Self::builder()
            .policy(GrpcRetry::new())
            .replay(HttpReplay::new().responses_any_method(true))
    }

    /// An HTTP API that rate limits: responses 429 and 503 only (errors as
    /// with [`for_http`](RetryLayer::for_http)), 5 attempts,
    /// exponential from 1 s to 60 s with full jitter, and `Retry-After`
    /// honoured (a hint beyond 60 s ends the retries).
    pub fn api_rate_limit() -> RetryBuilder<HttpRetry, HttpReplay> {
        Self::builder()
            .policy(HttpRetry::statuses([
                http::StatusCode::TOO_MANY_REQUESTS,
                http::StatusCode::SERVICE_UNAVAILABLE,
            ]))
            .replay(HttpReplay::new())
            .max_attempts(5)
            .backoff(Backoff::exponential(Duration::from_secs(1)))
            .max_delay(Duration::from_secs(60))
    }
}

impl<P, R> RetryLayer<P, R> {
    /// A handle to observe the layer.
    ///
    /// The counters of the snapshot start when the first handle is taken
    /// (or at build time for a registered layer, one with listeners, a
    /// budget or a random source, or one whose name is not `&'static`):
    /// until a layer is observed, its futures do not touch the shared state
    /// at all.
    pub fn handle(&self) -> RetryHandle {
        self.shared.observed.store(true, Ordering::Relaxed);
        RetryHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`RetryLayer`].
pub struct RetryBuilder<P = RetryErrors, R = CloneRequest> {
    name: Cow<'static, str>,
    settings: Settings,
    unbounded_retries: bool,
    policy: P,
    replay: R,
    budget: Option<RetryBudget>,
    random: Option<Arc<dyn RandomSource>>,
    seed: Option<u64>,
    registry: Option<Registry>,
    listeners: Listeners<RetryEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

impl<P, R> fmt::Debug for RetryBuilder<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("budget", &self.budget)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl<P, R> RetryBuilder<P, R> {
    /// The instance name, used in errors, events and the registry.
    ///
    /// A `&'static str` costs nothing per call; a `String` name makes every
    /// call carry a reference to the layer.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Attempts in all, the first one included (default 3; at least 1).
    ///
    /// More than 10 attempts need something else that ends the retries: a
    /// [`budget`](Self::budget), a [`max_elapsed`](Self::max_elapsed), or
    /// an explicit [`unbounded_retries`](Self::unbounded_retries);
    /// otherwise [`build`](Self::build) refuses them, since `u32::MAX`
    /// attempts against a service that stays down would retry for ever.
    /// A budget bounds the load the retries put on the upstream, not how
    /// long one call retries (its minimum rate refills): pair it with
    /// `max_elapsed` to bound both.
    ///
    /// ```
    /// use buttress_retry::RetryLayer;
    /// use std::time::Duration;
    ///
    /// let err = RetryLayer::builder().max_attempts(u32::MAX).build().unwrap_err();
    /// assert_eq!(err.field(), "max_attempts");
    /// RetryLayer::builder()
    ///     .max_attempts(u32::MAX)
    ///     .max_elapsed(Duration::from_secs(30))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n;
        self
    }

    /// The base delays (default exponential from 100 ms, doubling).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// How delays are spread (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// The longest wait between two attempts (default 10 s; more than zero,
    /// at most one hour). A server hint beyond it ends the retries instead
    /// of being shortened. Every backoff delay is capped at it, so a huge
    /// initial delay waits this long, not for ever.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.settings.max_delay = max;
        self
    }

    /// No attempt starts later than this after the call began (default
    /// none; more than zero, at most one day). Costs one clock read per
    /// call.
    pub fn max_elapsed(mut self, max: Duration) -> Self {
        self.settings.max_elapsed = Some(max);
        self
    }

    /// Allows more than 10 [`max_attempts`](Self::max_attempts) without a
    /// budget or a `max_elapsed`: the retries of a call against a service
    /// that stays down then end only with the attempts. An explicit
    /// choice, for callers that bound them some other way (an outer
    /// timeout, a cancelled future).
    pub fn unbounded_retries(mut self) -> Self {
        self.unbounded_retries = true;
        self
    }

    /// Governs retries with `budget` (shared by every layer given a clone
    /// of it). Each call deposits in it, each retry withdraws.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Draws jitter from `random` instead of a per-thread generator.
    pub fn random(mut self, random: impl RandomSource) -> Self {
        self.random = Some(Arc::new(random));
        self.seed = None;
        self
    }

    /// Draws jitter from a [`SeededRandom`] started at `seed`: the same
    /// calls get the same delays, run after run.
    pub fn seed(self, seed: u64) -> Self {
        let mut b = self.random(SeededRandom::new(seed));
        b.seed = Some(seed);
        b
    }

    /// Registers the layer in `registry` under its name.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener.
    pub fn on_event(mut self, listener: impl Listener<RetryEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Decides what is retried with `policy` (a preset, or a closure
    /// `Fn(&Result<Res, BoxError>) -> Verdict`).
    pub fn policy<P2>(self, policy: P2) -> RetryBuilder<P2, R> {
        RetryBuilder {
            name: self.name,
            settings: self.settings,
            unbounded_retries: self.unbounded_retries,
            policy,
            replay: self.replay,
            budget: self.budget,
            random: self.random,
            seed: self.seed,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Retries what a core classifier calls a failure.
    pub fn classifier<C>(self, classifier: C) -> RetryBuilder<Classified<C>, R> {
        self.policy(Classified(classifier))
    }

    /// Keeps requests for retries with `replay`.
    pub fn replay<R2>(self, replay: R2) -> RetryBuilder<P, R2> {
        RetryBuilder {
            name: self.name,
            settings: self.settings,
            unbounded_retries: self.unbounded_retries,
            policy: self.policy,
            replay,
            budget: self.budget,
            random: self.random,
            seed: self.seed,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Publishes the retry layer's events as metrics through the [`metrics`]
    /// facade (feature `metrics`): `buttress_retry_calls_total{kind}` and
    /// `buttress_retry_attempts_total`, labelled
    /// `name` = the instance name. A
    /// [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
    /// registry given to [`registry`](Self::registry) does the same for
    /// every instance.
    ///
    /// The metric handles are resolved once, by `build()`, against the
    /// recorder installed at that time: install the recorder (an exporter)
    /// before building the layer. The README's "Metrics" section lists
    /// every name.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Validates and builds the layer.
    pub fn build(self) -> Result<RetryLayer<P, R>, ConfigError> {
        validate(
            &self.name,
            &self.settings,
            self.budget.is_some(),
            self.unbounded_retries,
        )?;
        let static_name = match self.name {
            Cow::Borrowed(s) => Some(s),
            Cow::Owned(_) => None,
        };
        #[allow(unused_mut)]
        let mut listeners = self.listeners;
        #[cfg(feature = "metrics")]
        crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
        );
        let observed = !listeners.is_empty() || self.budget.is_some() || self.random.is_some();
        let layer = RetryLayer {
            shared: Arc::new(Shared {
                name: Arc::from(self.name.as_ref()),
                static_name,
                observed: AtomicBool::new(observed),
                listeners,
                budget: self.budget,
                random: self.random,
                seed: self.seed,
                counters: Counters::default(),
                live: Mutex::new(Live {
                    settings: self.settings,
                    unbounded_retries: self.unbounded_retries,
                }),
                generation: AtomicU64::new(0),
            }),
            policy: self.policy,
            replay: self.replay,
            pass_through: false,
        };
        if let Some(registry) = &self.registry {
            registry
                .register(layer.handle())
                .map_err(|e| ConfigError::new(KIND, "name", e.to_string()))?;
        }
        Ok(layer)
    }
}

/// The checks of [`RetryBuilder::build`], in its order.
fn validate(
    name: &str,
    s: &Settings,
    has_budget: bool,
    unbounded_retries: bool,
) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(KIND, "name", "must not be empty"));
    }
    if s.max_attempts == 0 {
        return Err(ConfigError::new(
            KIND,
            "max_attempts",
            "must be at least 1 (the first attempt counts)",
        ));
    }
    if s.max_delay.is_zero() {
        return Err(ConfigError::new(
            KIND,
            "max_delay",
            "must be greater than zero",
        ));
    }
    if s.max_delay > MAX_DELAY {
        return Err(ConfigError::new(
            KIND,
            "max_delay",
            format!("must be at most one hour, got {:?}", s.max_delay),
        ));
    }
    if s.max_elapsed.is_some_and(|d| d.is_zero()) {
        return Err(ConfigError::new(
            KIND,
            "max_elapsed",
            "must be greater than zero",
        ));
    }
    if let Some(max) = s.max_elapsed.filter(|d| *d > MAX_ELAPSED) {
        return Err(ConfigError::new(
            KIND,
            "max_elapsed",
            format!("must be at most one day, got {max:?}"),
        ));
    }
    if s.max_attempts > MAX_UNGUARDED_ATTEMPTS
        && !has_budget
        && s.max_elapsed.is_none()
        && !unbounded_retries
    {
        return Err(ConfigError::new(
            KIND,
            "max_attempts",
            format!(
                "{} attempts need a bound: a budget, a max_elapsed, or an explicit \
                 unbounded_retries() (at most {MAX_UNGUARDED_ATTEMPTS} without one)",
                s.max_attempts
            ),
        ));
    }
    s.backoff.validate()?;
    s.jitter.validate_with(&s.backoff)?;
    Ok(())
}

impl<P> RetryBuilder<P, HttpReplay> {
    /// The most request-body bytes kept for a retry (default 64 KiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.replay = self.replay.body_limit(bytes);
        self
    }
}

/// Observes a retry layer.
#[derive(Clone)]
pub struct RetryHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for RetryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryHandle")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// The counters of a retry layer (Resilience4j's names).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RetrySnapshot {
    /// Calls that succeeded at the first attempt.
    pub successful_without_retry: u64,
    /// Calls that succeeded after at least one retry.
    pub successful_with_retry: u64,
    /// Calls that failed without a retry (not retryable, budget spent,
    /// not idempotent, ...).
    pub failed_without_retry: u64,
    /// Calls that failed after at least one retry.
    pub failed_with_retry: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// The budget's state, when the layer has one.
    pub budget: Option<BudgetSnapshot>,
}

impl RetryHandle {
    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current counters.
    pub fn snapshot(&self) -> RetrySnapshot {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RetrySnapshot {
            successful_without_retry: load(&c.successful_without_retry),
            successful_with_retry: load(&c.successful_with_retry),
            failed_without_retry: load(&c.failed_without_retry),
            failed_with_retry: load(&c.failed_with_retry),
            retries: load(&c.retries),
            budget: self.shared.budget.as_ref().map(RetryBudget::snapshot),
        }
    }

    /// The layer's budget, if it has one.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.shared.budget.as_ref()
    }

    /// The current settings, as a [`RetryConfig`]: what
    /// [`reconfigure`](Self::reconfigure) compares a new config with, and
    /// what a dashboard shows. `budget` has the numbers of the layer's
    /// budget (shared or not); `seed` is the one given to
    /// [`RetryBuilder::seed`] (`None` with another random source).
    ///
    /// ```
    /// use buttress_retry::RetryConfig;
    ///
    /// let config = RetryConfig { max_attempts: 5, ..RetryConfig::default() };
    /// let handle = config.build().unwrap().handle();
    /// assert_eq!(handle.config(), config);
    /// ```
    pub fn config(&self) -> RetryConfig {
        let live = *self.shared.live();
        let s = live.settings;
        RetryConfig {
            name: self.shared.name.to_string(),
            max_attempts: s.max_attempts,
            backoff: s.backoff,
            jitter: s.jitter,
            max_delay: s.max_delay,
            max_elapsed: s.max_elapsed,
            budget: self.budget_config(),
            seed: self.shared.seed,
            unbounded_retries: live.unbounded_retries,
        }
    }

    fn budget_config(&self) -> Option<BudgetConfig> {
        self.shared.budget.as_ref().map(|b| BudgetConfig {
            percent: b.percent(),
            min_per_sec: b.min_per_sec(),
            ttl: b.ttl(),
        })
    }

    /// Applies `config` to this live layer, for the calls made from now on.
    ///
    /// The whole config is validated first, as [`RetryConfig::build`]
    /// validates it (the same errors). Fixed at build time, refused with a
    /// [`ConfigError`] naming the field when different (build a new layer
    /// instead): `name`; `budget` (a budget may be shared by several
    /// layers, and its window is kept with its numbers); `seed` (the
    /// random source). On any error nothing changes.
    ///
    /// Live: `max_attempts`, `backoff`, `jitter`, `max_delay`,
    /// `max_elapsed` and `unbounded_retries`, swapped as one value. A
    /// call takes the settings in force when it is made and keeps them to
    /// its end: a retry in progress keeps its attempt budget, its backoff
    /// and its `max_elapsed`. The policy (what is retried) and the replay
    /// of requests are types, not config, and stay as built.
    ///
    /// Each service copies the settings and checks a generation counter
    /// per call (one relaxed load; the lock only after a change), so a
    /// call allocates nothing and takes no lock.
    ///
    /// ```
    /// use buttress_retry::{Backoff, RetryConfig};
    /// use std::time::Duration;
    ///
    /// let handle = RetryConfig::default().build().unwrap().handle();
    /// let new = RetryConfig {
    ///     max_attempts: 5,
    ///     backoff: Backoff::fixed(Duration::from_millis(20)),
    ///     ..handle.config()
    /// };
    /// handle.reconfigure(&new).unwrap();
    /// assert_eq!(handle.config(), new);
    ///
    /// let bad = RetryConfig { max_attempts: 0, ..new.clone() };
    /// assert_eq!(handle.reconfigure(&bad).unwrap_err().field(), "max_attempts");
    /// let renamed = RetryConfig { name: "other".into(), ..new.clone() };
    /// assert_eq!(handle.reconfigure(&renamed).unwrap_err().field(), "name");
    /// assert_eq!(handle.config(), new);
    /// ```
    pub fn reconfigure(&self, config: &RetryConfig) -> Result<(), ConfigError> {
        let new = self.checked(config)?;
        let mut live = self.shared.live();
        *live = new;
        self.shared.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// What [`reconfigure`](Self::reconfigure) would answer, without
    /// applying anything: a caller changing several layers at once checks
    /// them all first, so that a refusal leaves every one unchanged.
    ///
    /// ```
    /// use buttress_retry::RetryConfig;
    ///
    /// let handle = RetryConfig::default().build().unwrap().handle();
    /// let seeded = RetryConfig { seed: Some(1), ..handle.config() };
    /// assert_eq!(handle.check_reconfigure(&seeded).unwrap_err().field(), "seed");
    /// ```
    pub fn check_reconfigure(&self, config: &RetryConfig) -> Result<(), ConfigError> {
        self.checked(config).map(|_| ())
    }

    /// The checks of `reconfigure`; the settings to apply.
    fn checked(&self, config: &RetryConfig) -> Result<Live, ConfigError> {
        // Exactly `build`'s checks, in its order: the budget's first.
        let b = config.apply(RetryLayer::builder())?;
        validate(
            &b.name,
            &b.settings,
            b.budget.is_some(),
            b.unbounded_retries,
        )?;
        let fixed = if *config.name != *self.shared.name {
            Some("name")
        } else if config.budget != self.budget_config() {
            Some("budget")
        } else if config.seed != self.shared.seed {
            Some("seed")
        } else {
            None
        };
        if let Some(field) = fixed {
            return Err(ConfigError::new(
                KIND,
                field,
                "cannot change on a live instance: build a new layer instead",
            ));
        }
        Ok(Live {
            settings: b.settings,
            unbounded_retries: b.unbounded_retries,
        })
    }
}

impl Component for RetryHandle {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = RetryHandle::snapshot(self);
        serde_json::json!({
            "successful_without_retry": s.successful_without_retry,
            "successful_with_retry": s.successful_with_retry,
            "failed_without_retry": s.failed_without_retry,
            "failed_with_retry": s.failed_with_retry,
            "retries": s.retries,
            "budget": s.budget.map(|b| serde_json::json!({
                "available": b.available,
                "deposits": b.deposits,
                "withdrawals": b.withdrawals,
                "refusals": b.refusals,
            })),
        })
    }

    fn reset(&self) {
        let c = &self.shared.counters;
        for a in [
            &c.successful_without_retry,
            &c.successful_with_retry,
            &c.failed_without_retry,
            &c.failed_with_retry,
            &c.retries,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
