use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::registry::Component;
use buttress_core::{ConfigError, Listener, Listeners, Registry};
use tower_layer::Layer;

use crate::config::BulkheadConfig;
use crate::events::BulkheadEvent;
use crate::service::Bulkhead;
use crate::state::{BulkheadSnapshot, Shared};

pub(crate) const KIND: &str = "bulkhead";

/// Limits how many calls run at once, with an optional bounded wait queue.
///
/// Every service made by one layer (and every clone of them) shares the
/// same permits, so applying one layer to several axum routes gives them
/// one common limit.
///
/// ```
/// use buttress_bulkhead::BulkheadLayer;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = BulkheadLayer::builder()
///     .name("db")
///     .max_concurrent(10)
///     .max_queue(100)
///     .max_wait(Duration::from_millis(50))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|q: &'static str| async move { Ok::<_, std::convert::Infallible>(q.len()) });
/// assert_eq!(svc.oneshot("select 1").await.unwrap(), 8);
/// assert_eq!(layer.handle().snapshot().completed, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct BulkheadLayer {
    shared: Arc<Shared>,
    /// See [`BulkheadLayer::pass_through`].
    pass_through: bool,
}

impl fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl BulkheadLayer {
    /// At most `max_concurrent` calls at once, no queue: a call that finds
    /// no free permit is rejected at once (Resilience4j's default wait of
    /// zero). Named `"bulkhead"`.
    ///
    /// Validated as [`BulkheadBuilder::build`] validates: 0 and values
    /// above 2<sup>30</sup> are an error, not a layer that rejects (or
    /// admits) every call. Unlike tower's infallible
    /// `ConcurrencyLimitLayer::new`, a limit here often comes from
    /// configuration, where a zero is a mistake to report. Use
    /// [`BulkheadLayer::builder`] for a queue, a name, events and a
    /// registry entry.
    ///
    /// ```
    /// use buttress_bulkhead::BulkheadLayer;
    ///
    /// let layer = BulkheadLayer::new(8).unwrap();
    /// assert_eq!(layer.handle().snapshot().max_concurrent, 8);
    /// assert_eq!(BulkheadLayer::new(0).unwrap_err().field(), "max_concurrent");
    /// ```
    pub fn new(max_concurrent: usize) -> Result<Self, ConfigError> {
        Self::builder().max_concurrent(max_concurrent).build()
    }

    /// A builder.
    pub fn builder() -> BulkheadBuilder {
        BulkheadBuilder::default()
    }

    fn from_shared(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
            pass_through: false,
        }
    }

    /// A bulkhead that is not there: its services admit every call and
    /// count nothing, at the cost of one branch, with the type of a real
    /// one. The facade's policies fill an empty slot with it, so that a
    /// policy's service has one type whichever slots a configuration
    /// fills, without a wrapper around every slot's future. Its handle
    /// sees no call. Not part of the stable API.
    #[doc(hidden)]
    pub fn pass_through() -> Self {
        let mut layer = Self::from_shared(Shared::new(
            Arc::from("pass_through"),
            1,
            0,
            None,
            Listeners::default(),
        ));
        layer.pass_through = true;
        layer
    }

    /// A handle to observe the bulkhead and change its limits at run time.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::from_shared(inner, self.shared.clone(), self.pass_through)
    }
}

/// Builds a [`BulkheadLayer`].
pub struct BulkheadBuilder {
    name: Arc<str>,
    max_concurrent: usize,
    max_queue: usize,
    max_wait: Option<Duration>,
    retry_after: Option<Duration>,
    registry: Option<Registry>,
    listeners: Listeners<BulkheadEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

/// The retry hint a rejection carries unless configured otherwise.
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Default for BulkheadBuilder {
    fn default() -> Self {
        Self {
            name: Arc::from(KIND),
            max_concurrent: 25,
            max_queue: 0,
            max_wait: None,
            retry_after: Some(DEFAULT_RETRY_AFTER),
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }
}

impl fmt::Debug for BulkheadBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadBuilder")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl BulkheadBuilder {
    /// The instance name, used in errors, events and the registry
    /// (default `"bulkhead"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls allowed to run at once (default 25, as Resilience4j).
    /// [`build`](Self::build) rejects 0 and values above 2<sup>30</sup>
    /// ([`MAX_CONCURRENT`](crate::MAX_CONCURRENT)).
    pub fn max_concurrent(mut self, max: usize) -> Self {
        self.max_concurrent = max;
        self
    }

    /// Callers allowed to wait for a permit, in FIFO order (default 0: no
    /// queue, reject at once). The queue grows with its waiters only:
    /// nothing is allocated up front, whatever the bound.
    pub fn max_queue(mut self, max: usize) -> Self {
        self.max_queue = max;
        self
    }

    /// How long a caller may wait in the queue before it is rejected with
    /// [`WaitTimedOut`](crate::error::BulkheadFullReason::WaitTimedOut)
    /// (default: no limit while queued). Zero disables the queue.
    ///
    /// A non-zero wait needs a queue: [`build`](Self::build) rejects it
    /// when [`max_queue`](Self::max_queue) is 0, since nobody would ever
    /// wait.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// The retry hint of a rejection (default 1 s): sent as `Retry-After`
    /// by the HTTP mapping and as `grpc-retry-pushback-ms` by the gRPC one,
    /// and honoured by buttress's retry layer. A bulkhead cannot know when
    /// a permit will be free, so this is a hint to set from the calls'
    /// usual duration; `None` sends none.
    ///
    /// ```
    /// use buttress_bulkhead::BulkheadLayer;
    /// use std::time::Duration;
    ///
    /// let layer = BulkheadLayer::builder()
    ///     .max_concurrent(10)
    ///     .retry_after(Duration::from_millis(200))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// let quiet = BulkheadLayer::builder().retry_after(None).build().unwrap();
    /// # let _ = quiet;
    /// ```
    pub fn retry_after(mut self, retry_after: impl Into<Option<Duration>>) -> Self {
        self.retry_after = retry_after.into();
        self
    }

    /// Registers the bulkhead's handle in `registry` under its name.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener.
    pub fn on_event(mut self, listener: impl Listener<BulkheadEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Publishes the bulkhead's events as metrics through the [`metrics`]
    /// facade (feature `metrics`): `buttress_bulkhead_calls_total{kind}`,
    /// `buttress_bulkhead_call_duration_seconds`,
    /// `buttress_bulkhead_available_permits` and
    /// `buttress_bulkhead_queue_depth`, labelled
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
    pub fn build(self) -> Result<BulkheadLayer, ConfigError> {
        validate(&self.name, self.max_concurrent, self.max_queue)?;
        validate_wait(self.max_queue, self.max_wait)?;
        #[allow(unused_mut)]
        let mut listeners = self.listeners;
        #[cfg(feature = "metrics")]
        let bridge = crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
            true,
        );
        let layer = BulkheadLayer::from_shared(
            Shared::new(
                self.name,
                self.max_concurrent,
                self.max_queue,
                self.max_wait,
                listeners,
            )
            .with_retry_after(self.retry_after),
        );
        if let Some(registry) = &self.registry {
            registry
                .register(layer.handle())
                .map_err(|e| ConfigError::new(KIND, "name", e.to_string()))?;
        }
        #[cfg(feature = "metrics")]
        if let Some(bridge) = bridge {
            bridge.watch(&layer.shared);
        }
        Ok(layer)
    }
}

pub(crate) fn validate(
    name: &str,
    max_concurrent: usize,
    max_queue: usize,
) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(KIND, "name", "must not be empty"));
    }
    validate_max_concurrent(max_concurrent)?;
    validate_max_queue(max_queue)
}

fn validate_max_concurrent(max: usize) -> Result<(), ConfigError> {
    if max == 0 {
        return Err(ConfigError::new(
            KIND,
            "max_concurrent",
            "must be at least 1",
        ));
    }
    if max > crate::MAX_CONCURRENT {
        return Err(ConfigError::new(
            KIND,
            "max_concurrent",
            format!(
                "must be at most {} (2^30), got {max}",
                crate::MAX_CONCURRENT
            ),
        ));
    }
    Ok(())
}

fn validate_max_queue(max: usize) -> Result<(), ConfigError> {
    if max > isize::MAX as usize {
        return Err(ConfigError::new(
            KIND,
            "max_queue",
            format!("must be at most {}, got {max}", isize::MAX),
        ));
    }
    Ok(())
}

/// The checks of [`BulkheadBuilder::build`] on a config, in its order.
pub(crate) fn validate_config(config: &BulkheadConfig) -> Result<(), ConfigError> {
    validate(&config.name, config.max_concurrent, config.max_queue)?;
    validate_wait(config.max_queue, config.max_wait)
}

/// The error of a change that cannot apply to a live bulkhead.
pub(crate) fn not_live(field: &'static str) -> ConfigError {
    ConfigError::new(
        KIND,
        field,
        "cannot change on a live instance: build a new layer instead",
    )
}

/// A non-zero `max_wait` without a queue would never apply: nobody waits.
pub(crate) fn validate_wait(
    max_queue: usize,
    max_wait: Option<Duration>,
) -> Result<(), ConfigError> {
    if max_queue == 0 && max_wait.is_some_and(|w| !w.is_zero()) {
        return Err(ConfigError::new(
            KIND,
            "max_wait",
            "has no effect without a wait queue: set max_queue above 0, or leave max_wait unset",
        ));
    }
    Ok(())
}

/// Observes a bulkhead and changes its limits at run time.
#[derive(Clone)]
pub struct BulkheadHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl BulkheadHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state.
    pub fn snapshot(&self) -> BulkheadSnapshot {
        self.shared.snapshot()
    }

    /// Changes the limit of concurrent calls, validated as the builder
    /// validates it (at least 1, at most 2<sup>30</sup>); on an error the
    /// limit is unchanged. Calls in flight are not touched: lowering the
    /// limit below them only delays new calls until enough have finished;
    /// raising it admits queued callers at once.
    ///
    /// ```
    /// use buttress_bulkhead::BulkheadLayer;
    ///
    /// let handle = BulkheadLayer::new(4).unwrap().handle();
    /// handle.set_max_concurrent(16).unwrap();
    /// assert_eq!(handle.set_max_concurrent(0).unwrap_err().field(), "max_concurrent");
    /// assert_eq!(handle.snapshot().max_concurrent, 16);
    /// ```
    pub fn set_max_concurrent(&self, max: usize) -> Result<(), ConfigError> {
        validate_max_concurrent(max)?;
        let _writer = self.shared.lock_writer();
        self.shared.set_max_concurrent(max);
        Ok(())
    }

    /// Changes the queue bound for callers arriving from now on; callers
    /// already waiting keep their place. A bound of 0 is refused while a
    /// non-zero `max_wait` is set (clear it first with
    /// [`set_max_wait(None)`](Self::set_max_wait)); on an error nothing
    /// changes.
    pub fn set_max_queue(&self, max: usize) -> Result<(), ConfigError> {
        validate_max_queue(max)?;
        let _writer = self.shared.lock_writer();
        validate_wait(max, self.shared.max_wait())?;
        self.shared.set_max_queue(max);
        Ok(())
    }

    /// Changes the queue timeout for callers queued from now on. A
    /// non-zero wait is refused while the queue bound is 0 (raise it first
    /// with [`set_max_queue`](Self::set_max_queue)); on an error nothing
    /// changes.
    pub fn set_max_wait(&self, max_wait: Option<Duration>) -> Result<(), ConfigError> {
        let _writer = self.shared.lock_writer();
        validate_wait(self.shared.max_queue(), max_wait)?;
        self.shared.set_max_wait(max_wait);
        Ok(())
    }

    /// The current settings, as a [`BulkheadConfig`]: what
    /// [`reconfigure`](Self::reconfigure) compares a new config with, and
    /// what a dashboard shows.
    ///
    /// ```
    /// use buttress_bulkhead::BulkheadConfig;
    ///
    /// let config = BulkheadConfig { max_concurrent: 8, ..BulkheadConfig::default() };
    /// let handle = config.build().unwrap().handle();
    /// assert_eq!(handle.config(), config);
    /// ```
    pub fn config(&self) -> BulkheadConfig {
        let _writer = self.shared.lock_writer();
        self.shared.config()
    }

    /// Applies `config` to this live bulkhead.
    ///
    /// The whole config is validated first, as [`BulkheadConfig::build`]
    /// validates it (the same errors). The name cannot change on a live
    /// instance: a different `name` is refused with a [`ConfigError`] for
    /// the field `name` (build a new layer instead). On any error nothing
    /// changes.
    ///
    /// Every other field is live, applied under the bulkhead's writers'
    /// lock (concurrent changes never mix):
    /// - `max_concurrent`, as
    ///   [`set_max_concurrent`](Self::set_max_concurrent): calls holding a
    ///   permit keep it and finish; a lower limit admits new calls only
    ///   once enough of them have finished, a higher one admits queued
    ///   callers at once. A call is never admitted beyond the limit in
    ///   force when it was admitted.
    /// - `max_queue`: callers arriving from now on; callers already queued
    ///   keep their place, even above a lower bound.
    /// - `max_wait`: callers queued from now on; a caller already queued
    ///   keeps the deadline it was queued with.
    /// - `retry_after`: the hint of rejections from now on.
    ///
    /// ```
    /// use buttress_bulkhead::BulkheadConfig;
    /// use std::time::Duration;
    ///
    /// let handle = BulkheadConfig::default().build().unwrap().handle();
    /// let new = BulkheadConfig {
    ///     max_concurrent: 4,
    ///     max_queue: 16,
    ///     max_wait: Some(Duration::from_millis(50)),
    ///     ..handle.config()
    /// };
    /// handle.reconfigure(&new).unwrap();
    /// assert_eq!(handle.config(), new);
    /// assert_eq!(handle.snapshot().max_concurrent, 4);
    ///
    /// let bad = BulkheadConfig { max_concurrent: 0, ..new.clone() };
    /// assert_eq!(handle.reconfigure(&bad).unwrap_err().field(), "max_concurrent");
    /// let renamed = BulkheadConfig { name: "other".into(), ..new.clone() };
    /// assert_eq!(handle.reconfigure(&renamed).unwrap_err().field(), "name");
    /// assert_eq!(handle.config(), new);
    /// ```
    pub fn reconfigure(&self, config: &BulkheadConfig) -> Result<(), ConfigError> {
        self.check_reconfigure(config)?;
        let _writer = self.shared.lock_writer();
        self.shared.apply(config);
        Ok(())
    }

    /// What [`reconfigure`](Self::reconfigure) would answer, without
    /// applying anything: a caller changing several layers at once checks
    /// them all first, so that a refusal leaves every one unchanged.
    ///
    /// ```
    /// use buttress_bulkhead::BulkheadConfig;
    ///
    /// let handle = BulkheadConfig::default().build().unwrap().handle();
    /// let renamed = BulkheadConfig { name: "other".into(), ..handle.config() };
    /// assert_eq!(handle.check_reconfigure(&renamed).unwrap_err().field(), "name");
    /// ```
    pub fn check_reconfigure(&self, config: &BulkheadConfig) -> Result<(), ConfigError> {
        validate_config(config)?;
        if *config.name != *self.shared.name {
            return Err(not_live("name"));
        }
        Ok(())
    }

    /// `true` when no call holds a permit and nobody waits.
    pub fn is_idle(&self) -> bool {
        self.shared.is_idle()
    }
}

impl Component for BulkheadHandle {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = self.shared.snapshot();
        serde_json::json!({
            "max_concurrent": s.max_concurrent,
            "active": s.active,
            "queued": s.queued,
            "available": s.available,
            "completed": s.completed,
            "rejected": s.rejected,
        })
    }

    fn reset(&self) {
        self.shared.reset_counters();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
