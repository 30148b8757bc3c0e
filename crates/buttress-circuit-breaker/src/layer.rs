use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::registry::Component;
use buttress_core::{ConfigError, ErrorsAsFailures, IgnoreIf, Listener, Listeners, Registry};
use tower_layer::Layer;

use crate::config::{CircuitBreakerConfig, KIND};
use crate::events::CircuitBreakerEvent;
use crate::service::CircuitBreaker;
use crate::state::{Shared, State};

/// A circuit breaker in front of the wrapped service.
///
/// Every service made by one layer (and every clone of them) shares one
/// breaker. `C` classifies results: [`ErrorsAsFailures`] by default; see
/// [`CircuitBreakerBuilder::classifier`] for HTTP, gRPC and closures.
///
/// ```
/// use buttress_circuit_breaker::{CircuitBreakerLayer, State};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::builder()
///     .name("inventory")
///     .window_size(4)
///     .minimum_calls(4)
///     .failure_rate_threshold(50.0)
///     .wait_in_open(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(|ok: bool| async move {
///     if ok { Ok(()) } else { Err("upstream down") }
/// });
/// for ok in [true, false, true, false] {
///     let _ = svc.clone().oneshot(ok).await;
/// }
/// assert_eq!(layer.handle().state(), State::Open);
/// let err = svc.oneshot(true).await.unwrap_err();
/// let open = err.downcast_ref::<buttress_circuit_breaker::error::CircuitOpen>().unwrap();
/// assert_eq!(open.retry_after(), Some(Duration::from_secs(10)));
/// # }
/// ```
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    shared: Arc<Shared>,
    classifier: C,
    /// See [`CircuitBreakerLayer::pass_through`].
    pass_through: bool,
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
            pass_through: self.pass_through,
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl CircuitBreakerLayer {
    /// A builder with Resilience4j's defaults.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::from_config(CircuitBreakerConfig::default())
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A breaker that is not there: its services admit every call and
    /// record nothing, at the cost of one branch, with the type of a real
    /// one (`classifier` only gives the type). The facade's policies fill
    /// an empty slot with it, so that a policy's service has one type
    /// whichever slots a configuration fills, without a wrapper around
    /// every slot's future. Its handle sees no call. Not part of the
    /// stable API.
    #[doc(hidden)]
    pub fn pass_through(classifier: C) -> Self {
        let settings = CircuitBreakerConfig::default()
            .validate()
            .expect("the default breaker is valid");
        Self {
            shared: Shared::new(
                Arc::from("pass_through"),
                settings,
                Listeners::default(),
                None,
            ),
            classifier,
            pass_through: true,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A handle to observe and control the breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            self.shared.clone(),
            self.classifier.clone(),
            self.pass_through,
        )
    }
}

/// Builds a [`CircuitBreakerLayer`]; every setting of
/// [`CircuitBreakerConfig`] has a method.
pub struct CircuitBreakerBuilder<C = ErrorsAsFailures> {
    config: CircuitBreakerConfig,
    classifier: C,
    registry: Option<Registry>,
    listeners: Listeners<CircuitBreakerEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

impl<C> fmt::Debug for CircuitBreakerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("config", &self.config)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerBuilder {
    pub(crate) fn from_config(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            classifier: ErrorsAsFailures,
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, value: $ty) -> Self {
                self.config.$field = value;
                self
            }
        )*
    };
}

impl<C> CircuitBreakerBuilder<C> {
    /// The instance name, used in errors, events and the registry.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    setters! {
        /// Failure rate, in percent, at which the breaker opens.
        failure_rate_threshold: f64,
        /// Slow-call rate, in percent, at which the breaker opens.
        slow_call_rate_threshold: f64,
        /// The window: outcomes of the last N calls.
        window_size: u32,
        /// Calls needed before a rate is computed.
        minimum_calls: u32,
        /// Probe calls in the half-open state.
        permitted_calls_in_half_open: u32,
        /// How long the breaker stays open the first time.
        wait_in_open: Duration,
        /// Growth of the open wait per consecutive opening.
        open_wait_multiplier: f64,
        /// Random fraction of the open wait, in `[0, 1]`.
        open_wait_jitter: f64,
        /// Move to half-open by timer rather than on the next call.
        automatic_half_open: bool,
        /// Report `Pending` while open instead of failing calls.
        backpressure: bool,
        /// Seed of the jitter.
        seed: u64,
    }

    /// Calls slower than this count as slow (turns on timing).
    pub fn slow_call_duration(mut self, limit: Duration) -> Self {
        self.config.slow_call_duration = Some(limit);
        self
    }

    /// Open after `n` failures in a row instead of by rate.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.config.consecutive_failures = Some(n);
        self
    }

    /// Cap of the growing open wait.
    pub fn max_wait_in_open(mut self, max: Duration) -> Self {
        self.config.max_wait_in_open = Some(max);
        self
    }

    /// Use a time window of `window` (whole seconds) instead of the count
    /// window.
    pub fn time_window(mut self, window: Duration) -> Self {
        self.config.time_window = Some(window);
        self
    }

    /// Reopen a half-open breaker that gets no verdict for this long.
    pub fn max_wait_in_half_open(mut self, max: Duration) -> Self {
        self.config.max_wait_in_half_open = Some(max);
        self
    }

    /// How results are classified: any [`buttress_core::Classifier`], for
    /// example `HttpClassifier`, `GrpcClassifier` or a closure. Results
    /// classified [`Ignored`](buttress_core::Outcome::Ignored) free their
    /// probe slot and are not counted.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder {
            config: self.config,
            classifier,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Results matching `pred` are not counted (and free their probe
    /// slot); the others go to the current classifier.
    ///
    /// ```
    /// use buttress_circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .ignore_if(|r: &Result<(), std::io::Error>| {
    ///         matches!(r, Err(e) if e.kind() == std::io::ErrorKind::Interrupted)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn ignore_if<F>(self, pred: F) -> CircuitBreakerBuilder<IgnoreIf<C, F>> {
        CircuitBreakerBuilder {
            config: self.config,
            classifier: IgnoreIf::new(self.classifier, pred),
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Registers the breaker's handle in `registry` under its name.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener.
    pub fn on_event(mut self, listener: impl Listener<CircuitBreakerEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Publishes the breaker's events as metrics through the [`metrics`]
    /// facade (feature `metrics`): `buttress_circuit_breaker_state{state}`,
    /// `buttress_circuit_breaker_transitions_total{from,to}`,
    /// `buttress_circuit_breaker_calls_total{kind}`,
    /// `buttress_circuit_breaker_failure_rate` and
    /// `buttress_circuit_breaker_slow_call_rate`, labelled
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
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Validates and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let settings = self.config.validate()?;
        #[allow(unused_mut)]
        let mut listeners = self.listeners;
        #[cfg(feature = "metrics")]
        let rates = crate::metrics::attach(
            &self.config.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
            Some(State::Closed),
        );
        #[cfg(not(feature = "metrics"))]
        let rates = None;
        let layer = CircuitBreakerLayer {
            shared: Shared::new(
                Arc::from(self.config.name.as_str()),
                settings,
                listeners,
                rates,
            ),
            classifier: self.classifier,
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

/// The state of a breaker at one instant.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CircuitBreakerSnapshot {
    /// The state.
    pub state: State,
    /// Failure rate of the window (or of the probes when half-open), in
    /// percent; `None` below the minimum of calls.
    pub failure_rate: Option<f64>,
    /// Slow-call rate, in percent; `None` below the minimum of calls.
    pub slow_call_rate: Option<f64>,
    /// Calls in the window (probes done when half-open; the current run of
    /// failures in consecutive mode).
    pub buffered_calls: u64,
    /// Failed calls among them.
    pub failed_calls: u64,
    /// Slow calls among them.
    pub slow_calls: u64,
    /// Calls rejected since the start or the last reset.
    pub not_permitted_calls: u64,
    /// Time left before probes are let through, when open.
    pub retry_after: Option<Duration>,
}

/// Observes and controls a circuit breaker.
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl CircuitBreakerHandle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// The current state and window, exact: every call whose response
    /// future has completed is counted (see "Exactness" in the crate docs).
    pub fn snapshot(&self) -> CircuitBreakerSnapshot {
        self.shared.snapshot()
    }

    /// Rejects every call until another control changes the state. Each
    /// control makes one transition and emits one event when the breaker
    /// is in another state, and does nothing when it is in that state
    /// already.
    pub fn force_open(&self) {
        self.shared.force(State::ForcedOpen);
    }

    /// Closes the breaker with a fresh window.
    pub fn force_closed(&self) {
        self.shared.force(State::Closed);
    }

    /// Lets every call through and records nothing.
    pub fn disable(&self) {
        self.shared.force(State::Disabled);
    }

    /// Lets every call through, records and emits events, never trips.
    pub fn metrics_only(&self) {
        self.shared.force(State::MetricsOnly);
    }

    /// Back to the initial state: closed, empty window, counters at zero.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// The current settings, as a [`CircuitBreakerConfig`]: what
    /// [`reconfigure`](Self::reconfigure) compares a new config with, and
    /// what a dashboard shows.
    ///
    /// ```
    /// use buttress_circuit_breaker::CircuitBreakerConfig;
    ///
    /// let config = CircuitBreakerConfig { window_size: 20, ..CircuitBreakerConfig::default() };
    /// let handle = config.build().unwrap().handle();
    /// assert_eq!(handle.config(), config);
    /// ```
    pub fn config(&self) -> CircuitBreakerConfig {
        self.shared.config()
    }

    /// Applies `config` to this live breaker.
    ///
    /// The whole config is validated first, as
    /// [`CircuitBreakerConfig::build`] validates it (the same errors).
    /// Fixed at build time, refused with a [`ConfigError`] naming the
    /// field when different (build a new layer instead): `name`, the
    /// window (`time_window`, and `window_size`: the count window's ring
    /// is allocated with it, and resizing it would drop or invent
    /// outcomes), and the mode (`consecutive_failures` set or unset; its
    /// limit is live). On any error nothing changes.
    ///
    /// Everything else is live, applied in one critical section of the
    /// lock under which every outcome is recorded and every verdict made,
    /// so no verdict mixes two settings:
    /// - the thresholds, `minimum_calls` and the consecutive-failure
    ///   limit: the next recorded outcome is judged by them, together
    ///   with the window as it is (a call already admitted is recorded
    ///   under the new values; a window that already reaches a lower
    ///   threshold trips at that next outcome).
    /// - `permitted_calls_in_half_open`: probes are admitted up to the new
    ///   number; when the probes already recorded reach it, the verdict is
    ///   made at once over them. A probe in flight beyond a lowered number
    ///   finishes, and is not recorded once the verdict is made.
    /// - `slow_call_duration`: a call is judged slow by the duration in
    ///   force when it ends (a call that started with detection off is
    ///   not timed).
    /// - the open wait (`wait_in_open`, `open_wait_multiplier`,
    ///   `max_wait_in_open`, `open_wait_jitter`): from the next opening; an
    ///   open breaker keeps the wait it opened with. `automatic_half_open`
    ///   turned on while open also ends the current wait by timer.
    /// - `max_wait_in_half_open`: a half-open state in progress is held to
    ///   the new limit, counted from when it began.
    /// - `backpressure`: from the next `poll_ready` of every service.
    /// - `seed`: the jitter's generator starts again from the new seed.
    ///
    /// The state, the window and the counters are kept.
    ///
    /// ```
    /// use buttress_circuit_breaker::CircuitBreakerConfig;
    ///
    /// let handle = CircuitBreakerConfig::default().build().unwrap().handle();
    /// let new = CircuitBreakerConfig {
    ///     failure_rate_threshold: 25.0,
    ///     minimum_calls: 10,
    ///     ..handle.config()
    /// };
    /// handle.reconfigure(&new).unwrap();
    /// assert_eq!(handle.config(), new);
    ///
    /// let bad = CircuitBreakerConfig { failure_rate_threshold: 0.0, ..new.clone() };
    /// assert_eq!(handle.reconfigure(&bad).unwrap_err().field(), "failure_rate_threshold");
    /// let count_to_time = CircuitBreakerConfig {
    ///     time_window: Some(std::time::Duration::from_secs(10)),
    ///     ..new.clone()
    /// };
    /// assert_eq!(handle.reconfigure(&count_to_time).unwrap_err().field(), "time_window");
    /// assert_eq!(handle.config(), new);
    /// ```
    pub fn reconfigure(&self, config: &CircuitBreakerConfig) -> Result<(), ConfigError> {
        let settings = config.validate()?;
        self.shared.reconfigure(&settings)
    }

    /// What [`reconfigure`](Self::reconfigure) would answer, without
    /// applying anything: a caller changing several layers at once checks
    /// them all first, so that a refusal leaves every one unchanged.
    ///
    /// ```
    /// use buttress_circuit_breaker::CircuitBreakerConfig;
    ///
    /// let handle = CircuitBreakerConfig::default().build().unwrap().handle();
    /// let bigger = CircuitBreakerConfig { window_size: 500, ..handle.config() };
    /// assert_eq!(handle.check_reconfigure(&bigger).unwrap_err().field(), "window_size");
    /// assert!(handle.check_reconfigure(&handle.config()).is_ok());
    /// ```
    pub fn check_reconfigure(&self, config: &CircuitBreakerConfig) -> Result<(), ConfigError> {
        let settings = config.validate()?;
        self.shared.check(&settings)
    }
}

impl Component for CircuitBreakerHandle {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = CircuitBreakerHandle::snapshot(self);
        serde_json::json!({
            "state": s.state.as_str(),
            "failure_rate": s.failure_rate,
            "slow_call_rate": s.slow_call_rate,
            "buffered_calls": s.buffered_calls,
            "failed_calls": s.failed_calls,
            "slow_calls": s.slow_calls,
            "not_permitted_calls": s.not_permitted_calls,
            "retry_after_ms": s.retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
    }

    fn reset(&self) {
        self.shared.reset();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
