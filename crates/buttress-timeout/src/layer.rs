use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::registry::Component;
use buttress_core::{ConfigError, Listener, Listeners, Registry};
use tower_layer::Layer;

use crate::config::TimeoutConfig;
use crate::events::TimeoutEvent;
use crate::policy::{FixedTimeout, HttpDeadlines};
use crate::service::Timeout;

const KIND: &str = "timeout";

/// State shared by a layer and every service and future it makes.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// The name when it is a `&'static str`: a future can then carry it
    /// instead of a clone of this `Arc`.
    static_name: Option<&'static str>,
    /// Whether anyone can observe this layer beyond the error: listeners,
    /// a registry entry or a handle. Until then futures carry no `Arc` and
    /// the call path touches no shared reference count.
    observed: AtomicBool,
    timeout_nanos: AtomicU64,
    include_ready: AtomicBool,
    /// Serialises run-time changes, so that two `reconfigure` calls at once
    /// never leave a mix of both.
    reconfig: Mutex<()>,
    pub(crate) listeners: Listeners<TimeoutEvent>,
    timed_out: AtomicU64,
}

impl Shared {
    #[inline]
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_nanos())
    }

    /// The limit in nanoseconds: one relaxed load, no division.
    #[inline]
    pub(crate) fn timeout_nanos(&self) -> u64 {
        self.timeout_nanos.load(Ordering::Relaxed)
    }

    /// Whether the wait for readiness counts against the limit: one
    /// relaxed load.
    #[inline]
    pub(crate) fn include_ready(&self) -> bool {
        self.include_ready.load(Ordering::Relaxed)
    }

    /// What a response future needs to report a timeout.
    #[inline]
    pub(crate) fn link(self: &Arc<Self>) -> Link {
        match self.static_name {
            Some(name) if !self.observed.load(Ordering::Relaxed) => Link::Quiet(name),
            _ => Link::Observed(self.clone()),
        }
    }

    pub(crate) fn record_timeout(&self, event: impl FnOnce() -> TimeoutEvent) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        self.listeners.emit(event);
    }
}

/// A response future's way back to its layer, for the timeout path only.
pub(crate) enum Link {
    /// Nobody observes the layer: the static name is all the error needs.
    Quiet(&'static str),
    /// Listeners, a registry or a handle: count and emit.
    Observed(Arc<Shared>),
}

fn to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Applies a timeout to every call of the wrapped service.
///
/// The type parameter `P` decides per-request limits: [`FixedTimeout`] (the
/// default) or [`HttpDeadlines`] (through [`TimeoutLayer::for_http`]).
///
/// ```
/// use buttress_timeout::TimeoutLayer;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_millis(10)).unwrap())
///     .service_fn(|()| async {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Ok::<_, std::convert::Infallible>(())
///     });
/// let err = svc.oneshot(()).await.unwrap_err();
/// assert!(err.is::<buttress_timeout::error::Elapsed>());
/// # }
/// ```
pub struct TimeoutLayer<P = FixedTimeout> {
    shared: Arc<Shared>,
    policy: P,
}

impl<P: Clone> Clone for TimeoutLayer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for TimeoutLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("name", &self.shared.name)
            .field("timeout", &self.shared.timeout())
            .field("include_ready", &self.shared.include_ready())
            .field("policy", &self.policy)
            .finish()
    }
}

impl TimeoutLayer {
    /// A timeout of `timeout` per call, named `"timeout"`.
    ///
    /// Validated as [`TimeoutBuilder::build`] validates: a zero timeout,
    /// which would fail every call not ready at its first poll, is an
    /// error. Use [`TimeoutLayer::builder`] for a named, observable layer.
    ///
    /// ```
    /// use buttress_timeout::TimeoutLayer;
    /// use std::time::Duration;
    ///
    /// let layer = TimeoutLayer::new(Duration::from_secs(2)).unwrap();
    /// # let _ = layer;
    /// assert_eq!(TimeoutLayer::new(Duration::ZERO).unwrap_err().field(), "timeout");
    /// ```
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        validate_timeout(timeout)?;
        Ok(Self::from_parts(
            Cow::Borrowed(KIND),
            timeout,
            false,
            Listeners::new(),
        ))
    }

    /// A builder for a named, validated layer.
    pub fn builder(timeout: Duration) -> TimeoutBuilder {
        TimeoutBuilder {
            name: Cow::Borrowed(KIND),
            timeout,
            include_ready: false,
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }

    fn from_parts(
        name: Cow<'static, str>,
        timeout: Duration,
        include_ready: bool,
        listeners: Listeners<TimeoutEvent>,
    ) -> Self {
        let static_name = match name {
            Cow::Borrowed(s) => Some(s),
            Cow::Owned(_) => None,
        };
        Self {
            shared: Arc::new(Shared {
                name: Arc::from(name.as_ref()),
                static_name,
                observed: AtomicBool::new(!listeners.is_empty()),
                timeout_nanos: AtomicU64::new(to_nanos(timeout)),
                include_ready: AtomicBool::new(include_ready),
                reconfig: Mutex::new(()),
                listeners,
                timed_out: AtomicU64::new(0),
            }),
            policy: FixedTimeout,
        }
    }
}

impl<P> TimeoutLayer<P> {
    /// Per-request deadlines for `http::Request`s: a
    /// [`TimeoutOverride`](buttress_core::deadline::TimeoutOverride)
    /// extension, the `grpc-timeout` header and an outer
    /// [`Deadline`](buttress_core::deadline::Deadline); see
    /// [`HttpDeadlines`].
    pub fn for_http(self) -> TimeoutLayer<HttpDeadlines> {
        self.with_policy(HttpDeadlines::new())
    }

    /// Uses `policy` to decide per-request limits.
    pub fn with_policy<P2>(self, policy: P2) -> TimeoutLayer<P2> {
        TimeoutLayer {
            shared: self.shared,
            policy,
        }
    }

    /// The policy that decides per-request limits.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// A handle to observe the layer and change its timeout at run time.
    ///
    /// The timeout count of the snapshot starts when the first handle is
    /// taken (or at build time for a registered layer): until a layer is
    /// observed, its futures do not touch the shared state at all.
    pub fn handle(&self) -> TimeoutHandle {
        self.shared.observed.store(true, Ordering::Relaxed);
        TimeoutHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, P: Clone> Layer<S> for TimeoutLayer<P> {
    type Service = Timeout<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::from_shared(inner, self.shared.clone(), self.policy.clone())
    }
}

/// Builds a [`TimeoutLayer`].
pub struct TimeoutBuilder {
    name: Cow<'static, str>,
    timeout: Duration,
    include_ready: bool,
    registry: Option<Registry>,
    listeners: Listeners<TimeoutEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

impl fmt::Debug for TimeoutBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBuilder")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("include_ready", &self.include_ready)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl TimeoutBuilder {
    /// The instance name, used in errors, events and the registry.
    ///
    /// A `&'static str` costs nothing per call; a `String` name makes every
    /// call carry a reference to the layer.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The time limit of each call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Counts the wait for the inner service's readiness against the
    /// timeout too (default `false`, like tower's `Timeout`).
    ///
    /// When the inner service is still not ready at the deadline,
    /// `poll_ready` reports ready (an error there would make the service
    /// unusable) and the next call fails at once with
    /// [`Elapsed`](crate::error::Elapsed), without reaching the inner
    /// service. When it becomes ready in time, the call gets what is left
    /// of the same budget.
    pub fn include_ready(mut self, yes: bool) -> Self {
        self.include_ready = yes;
        self
    }

    /// Registers the layer in `registry` under its name.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener.
    pub fn on_event(mut self, listener: impl Listener<TimeoutEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Publishes the timeout layer's events as metrics through the [`metrics`]
    /// facade (feature `metrics`): `buttress_timeout_calls_total{kind="timed_out"}`, labelled
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
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(KIND, "name", "must not be empty"));
        }
        validate_timeout(self.timeout)?;
        #[allow(unused_mut)]
        let mut listeners = self.listeners;
        #[cfg(feature = "metrics")]
        crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
        );
        let layer =
            TimeoutLayer::from_parts(self.name, self.timeout, self.include_ready, listeners);
        if let Some(registry) = &self.registry {
            registry
                .register(layer.handle())
                .map_err(|e| ConfigError::new(KIND, "name", e.to_string()))?;
        }
        Ok(layer)
    }
}

fn validate_timeout(timeout: Duration) -> Result<(), ConfigError> {
    if timeout.is_zero() {
        return Err(ConfigError::new(
            KIND,
            "timeout",
            "must be greater than zero",
        ));
    }
    Ok(())
}

/// Observes a timeout layer and changes its limit at run time.
#[derive(Clone)]
pub struct TimeoutHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for TimeoutHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutHandle")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// The state of a timeout layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TimeoutSnapshot {
    /// The current time limit.
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub timeout: Duration,
    /// Whether readiness counts against the limit.
    pub include_ready: bool,
    /// Calls that ran out of time since the start (or the last reset).
    pub timed_out: u64,
}

impl TimeoutHandle {
    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state.
    pub fn snapshot(&self) -> TimeoutSnapshot {
        TimeoutSnapshot {
            timeout: self.shared.timeout(),
            include_ready: self.shared.include_ready(),
            timed_out: self.shared.timed_out.load(Ordering::Relaxed),
        }
    }

    /// Changes the time limit for calls made from now on, validated as the
    /// builder validates it: zero is refused and the limit is unchanged.
    ///
    /// ```
    /// use buttress_timeout::TimeoutLayer;
    /// use std::time::Duration;
    ///
    /// let handle = TimeoutLayer::new(Duration::from_secs(1)).unwrap().handle();
    /// handle.set_timeout(Duration::from_millis(300)).unwrap();
    /// assert_eq!(handle.set_timeout(Duration::ZERO).unwrap_err().field(), "timeout");
    /// assert_eq!(handle.snapshot().timeout, Duration::from_millis(300));
    /// ```
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), ConfigError> {
        validate_timeout(timeout)?;
        let _writer = self.lock_writer();
        self.shared
            .timeout_nanos
            .store(to_nanos(timeout), Ordering::Relaxed);
        Ok(())
    }

    /// The current settings, as a [`TimeoutConfig`]: what
    /// [`reconfigure`](Self::reconfigure) compares a new config with, and
    /// what a dashboard shows.
    ///
    /// ```
    /// use buttress_timeout::TimeoutConfig;
    /// use std::time::Duration;
    ///
    /// let config = TimeoutConfig { timeout: Duration::from_secs(2), ..TimeoutConfig::default() };
    /// let handle = config.build().unwrap().handle();
    /// assert_eq!(handle.config(), config);
    /// ```
    pub fn config(&self) -> TimeoutConfig {
        let _writer = self.lock_writer();
        TimeoutConfig {
            name: self.shared.name.to_string(),
            timeout: self.shared.timeout(),
            include_ready: self.shared.include_ready(),
        }
    }

    /// Applies `config` to this live layer, for the calls made from now on.
    ///
    /// The whole config is validated first, as
    /// [`TimeoutConfig::build`] validates it (the same errors). The name
    /// cannot change on a live instance: a different `name` is refused
    /// with a [`ConfigError`] for the field `name` (rebuild the layer
    /// instead). On any error nothing changes.
    ///
    /// What is live:
    /// - `timeout`: calls made from now on get the new limit. A call
    ///   already made keeps the deadline it started with (its timer is
    ///   armed once, from the limit read when it was made).
    /// - `include_ready`: a wait for readiness that starts from now on
    ///   follows the new value; a wait already counting keeps its
    ///   deadline, and the call that follows it gets what is left of it.
    ///
    /// ```
    /// use buttress_timeout::TimeoutConfig;
    /// use std::time::Duration;
    ///
    /// let handle = TimeoutConfig::default().build().unwrap().handle();
    /// let mut new = handle.config();
    /// new.timeout = Duration::from_millis(250);
    /// new.include_ready = true;
    /// handle.reconfigure(&new).unwrap();
    /// assert_eq!(handle.config(), new);
    ///
    /// // Invalid or not live: refused, nothing changes.
    /// let zero = buttress_timeout::TimeoutConfig { timeout: Duration::ZERO, ..new.clone() };
    /// assert_eq!(handle.reconfigure(&zero).unwrap_err().field(), "timeout");
    /// let renamed = buttress_timeout::TimeoutConfig { name: "other".into(), ..new.clone() };
    /// assert_eq!(handle.reconfigure(&renamed).unwrap_err().field(), "name");
    /// assert_eq!(handle.config(), new);
    /// ```
    pub fn reconfigure(&self, config: &TimeoutConfig) -> Result<(), ConfigError> {
        let _writer = self.lock_writer();
        self.check_reconfigure(config)?;
        self.shared
            .timeout_nanos
            .store(to_nanos(config.timeout), Ordering::Relaxed);
        self.shared
            .include_ready
            .store(config.include_ready, Ordering::Relaxed);
        Ok(())
    }

    /// What [`reconfigure`](Self::reconfigure) would answer, without
    /// applying anything: a caller changing several layers at once checks
    /// them all first, so that a refusal leaves every one unchanged.
    ///
    /// ```
    /// use buttress_timeout::TimeoutConfig;
    ///
    /// let handle = TimeoutConfig::default().build().unwrap().handle();
    /// let renamed = TimeoutConfig { name: "other".into(), ..handle.config() };
    /// assert_eq!(handle.check_reconfigure(&renamed).unwrap_err().field(), "name");
    /// assert!(handle.check_reconfigure(&handle.config()).is_ok());
    /// ```
    pub fn check_reconfigure(&self, config: &TimeoutConfig) -> Result<(), ConfigError> {
        validate_config(config)?;
        if *config.name != *self.shared.name {
            return Err(not_live("name"));
        }
        Ok(())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a poisoned lock is still sound to use.
        self.shared
            .reconfig
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The checks of [`TimeoutBuilder::build`] on a config.
fn validate_config(config: &TimeoutConfig) -> Result<(), ConfigError> {
    if config.name.is_empty() {
        return Err(ConfigError::new(KIND, "name", "must not be empty"));
    }
    validate_timeout(config.timeout)
}

/// The error of a change that cannot apply to a live layer.
fn not_live(field: &'static str) -> ConfigError {
    ConfigError::new(
        KIND,
        field,
        "cannot change on a live instance: build a new layer instead",
    )
}

impl Component for TimeoutHandle {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = TimeoutHandle::snapshot(self);
        serde_json::json!({
            "timeout_ms": u64::try_from(s.timeout.as_millis()).unwrap_or(u64::MAX),
            "include_ready": s.include_ready,
            "timed_out": s.timed_out,
        })
    }

    fn reset(&self) {
        self.shared.timed_out.store(0, Ordering::Relaxed);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
