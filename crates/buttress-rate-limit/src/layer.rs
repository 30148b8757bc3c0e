//! The global limiter's layer, builder and handle.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::registry::Component;
use buttress_core::{ConfigError, Listeners, Registry};
use tower_layer::Layer;

use crate::algorithm::{Algorithm, Params};
use crate::config::RateLimitConfig;
use crate::events::{Backend, RateLimitEvent};
use crate::headers::{NoHeaders, WithHeaders};
use crate::limiter::{Limiter, Policy, TimeSource};
use crate::rate::Rate;
use crate::service::{RateLimit, Weigh};
use crate::weigh::{CostFn, PriorityFn, Unit};
use crate::KIND;

/// Limits the rate of calls, shared by every service it makes.
///
/// Every service made by one layer (and every clone of them) takes from
/// the same limiter, so one layer applied to several axum routes gives
/// them one common limit (tower's own `RateLimit` keeps one per clone).
///
/// ```
/// use buttress_rate_limit::{Rate, RateLimitLayer};
/// use buttress_core::RateLimited;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = RateLimitLayer::builder(Rate::per_second(2)).name("search").build().unwrap();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|q: &'static str| async move { Ok::<_, std::convert::Infallible>(q.len()) });
///
/// assert_eq!(svc.ready().await.unwrap().call("a").await.unwrap(), 1);
/// assert_eq!(svc.ready().await.unwrap().call("bb").await.unwrap(), 2);
/// // The burst (2 by default, the rate's permits) is spent.
/// let err = svc.ready().await.unwrap().call("ccc").await.unwrap_err();
/// let limited = err.downcast_ref::<RateLimited>().unwrap();
/// assert_eq!(limited.name(), "search");
/// assert!(limited.retry_after().unwrap() <= std::time::Duration::from_millis(500));
/// assert_eq!(layer.handle().snapshot().rejected, 1);
/// # }
/// ```
pub struct RateLimitLayer<C = Unit, P = Unit, H = NoHeaders> {
    shared: Arc<Limiter>,
    weigh: Arc<Weigh<C, P>>,
    /// See [`RateLimitLayer::pass_through`].
    pass_through: bool,
    _headers: PhantomData<fn() -> H>,
}

impl<C, P, H> Clone for RateLimitLayer<C, P, H> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            weigh: self.weigh.clone(),
            pass_through: self.pass_through,
            _headers: PhantomData,
        }
    }
}

impl<C, P, H> fmt::Debug for RateLimitLayer<C, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl RateLimitLayer {
    /// A GCRA limiter admitting `rate`, with a burst of `rate.permits()`,
    /// rejecting at once what exceeds it. Named `"rate_limit"`.
    ///
    /// ```
    /// use buttress_rate_limit::{Rate, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new(Rate::per_second(100)).unwrap();
    /// assert_eq!(layer.handle().snapshot().available, 100);
    /// assert_eq!(RateLimitLayer::new(Rate::per_second(0)).unwrap_err().field(), "rate");
    /// ```
    pub fn new(rate: Rate) -> Result<Self, ConfigError> {
        Self::builder(rate).build()
    }

    /// A limiter that is not there: its services admit every call and
    /// count nothing, at the cost of one branch, with the type of a real
    /// one. The facade's policies fill an empty slot with it, so that a
    /// policy's service has one type whichever slots a configuration
    /// fills, without a wrapper around every slot's future. Its handle
    /// sees no call. Not part of the stable API.
    #[doc(hidden)]
    pub fn pass_through() -> Self {
        let mut layer = Self::builder(Rate::per_second(1))
            .name("pass_through")
            .build()
            .expect("one call a second is a valid rate");
        layer.pass_through = true;
        layer
    }

    /// A builder for a limiter of `rate`.
    pub fn builder(rate: Rate) -> RateLimitBuilder {
        RateLimitBuilder {
            common: Common::new(rate),
            weigh: Weigh {
                cost: Unit,
                priority: Unit,
            },
            _headers: PhantomData,
        }
    }
}

impl<C, P, H> RateLimitLayer<C, P, H> {
    /// A handle to observe the limiter and change its rate at run time.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, C: Clone, P: Clone, H> Layer<S> for RateLimitLayer<C, P, H> {
    type Service = RateLimit<S, C, P, H>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
            weigh: Weigh::clone(&self.weigh),
            pass_through: self.pass_through,
            ready: false,
            _headers: PhantomData,
        }
    }
}

/// The settings the global and the keyed builders share.
pub(crate) struct Common {
    pub(crate) name: Arc<str>,
    pub(crate) algorithm: Algorithm,
    pub(crate) rate: Rate,
    pub(crate) burst: Option<u64>,
    pub(crate) max_wait: Duration,
    pub(crate) max_queue: usize,
    pub(crate) reserve: Option<(f64, u8)>,
    pub(crate) resolution: Option<Duration>,
    pub(crate) registry: Option<Registry>,
    pub(crate) listeners: Listeners<RateLimitEvent>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: bool,
}

/// The longest `max_wait` accepted.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

impl Common {
    pub(crate) fn new(rate: Rate) -> Self {
        Self {
            name: Arc::from(KIND),
            algorithm: Algorithm::Gcra,
            rate,
            burst: None,
            max_wait: Duration::ZERO,
            max_queue: 0,
            reserve: None,
            resolution: None,
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }

    /// Validates everything; the numbers and the policy.
    pub(crate) fn validate(&self) -> Result<(Params, Policy), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(KIND, "name", "must not be empty"));
        }
        let params = Params::new(self.algorithm, self.rate, self.burst)?;
        if self.max_wait > MAX_WAIT {
            return Err(ConfigError::new(KIND, "max_wait", "must be at most 1 day"));
        }
        if !self.max_wait.is_zero() && self.max_queue == 0 {
            return Err(ConfigError::new(
                KIND,
                "max_wait",
                "has no effect without a wait queue: set max_queue above 0, or leave max_wait unset",
            ));
        }
        if self.max_queue > 0 && self.max_wait.is_zero() {
            return Err(ConfigError::new(
                KIND,
                "max_queue",
                "has no effect without max_wait: nobody would wait",
            ));
        }
        if self.max_queue > isize::MAX as usize {
            return Err(ConfigError::new(KIND, "max_queue", "is too large"));
        }
        let (reserve_ppm, reserve_priority) = match self.reserve {
            None => (0, u8::MAX),
            Some((fraction, priority)) => {
                if !(0.0..1.0).contains(&fraction) {
                    return Err(ConfigError::new(
                        KIND,
                        "reserve",
                        format!("the fraction must be at least 0 and below 1, got {fraction}"),
                    ));
                }
                if priority == 0 {
                    return Err(ConfigError::new(
                        KIND,
                        "reserve",
                        "a reserve for priority 0 and above would be kept for every call: use a priority of at least 1",
                    ));
                }
                ((fraction * 1_000_000.0).round() as u32, priority)
            }
        };
        if let Some(r) = self.resolution {
            if r > Duration::from_secs(1) {
                return Err(ConfigError::new(
                    KIND,
                    "resolution",
                    "must be at most 1 s (0 reads the clock at every decision)",
                ));
            }
        }
        Ok((
            params,
            Policy::new(
                self.name.clone(),
                self.max_wait,
                self.max_queue,
                reserve_ppm,
                reserve_priority,
                self.all_listeners(),
            ),
        ))
    }

    /// The listeners, with the metrics bridge when it is on.
    fn all_listeners(&self) -> Listeners<RateLimitEvent> {
        #[allow(unused_mut)]
        let mut listeners = self.listeners.clone();
        #[cfg(feature = "metrics")]
        crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
            &[crate::Backend::Local],
        );
        listeners
    }

    pub(crate) fn register(&self, component: impl Component) -> Result<(), ConfigError> {
        if let Some(registry) = &self.registry {
            registry
                .register(component)
                .map_err(|e| ConfigError::new(KIND, "name", e.to_string()))?;
        }
        Ok(())
    }
}

/// Builds a [`RateLimitLayer`].
pub struct RateLimitBuilder<C = Unit, P = Unit, H = NoHeaders> {
    common: Common,
    weigh: Weigh<C, P>,
    _headers: PhantomData<fn() -> H>,
}

impl<C, P, H> fmt::Debug for RateLimitBuilder<C, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("name", &self.common.name)
            .field("algorithm", &self.common.algorithm)
            .field("rate", &self.common.rate)
            .field("burst", &self.common.burst)
            .finish_non_exhaustive()
    }
}

/// The builder methods shared by [`RateLimitBuilder`] and
/// [`KeyedRateLimitBuilder`](crate::KeyedRateLimitBuilder).
macro_rules! common_setters {
    () => {
        /// The instance name, used in errors, events, headers and the
        /// registry (default `"rate_limit"`).
        pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
            self.common.name = name.into();
            self
        }

        /// The algorithm (default [`Algorithm::Gcra`](crate::Algorithm::Gcra)); see its
        /// table for what each one guarantees.
        pub fn algorithm(mut self, algorithm: crate::Algorithm) -> Self {
            self.common.algorithm = algorithm;
            self
        }

        /// How many permits may be taken at once, for GCRA and the token
        /// bucket (default: the rate's permits, so `Rate::per_second(100)`
        /// admits 100 at once, then one every 10 ms). At least 1; the
        /// window algorithms take none.
        pub fn burst(mut self, burst: u64) -> Self {
            self.common.burst = Some(burst);
            self
        }

        /// How long a call may wait for its permits (default 0: reject at
        /// once). A call that finds nobody waiting and whose permits would
        /// come later than this is rejected at once rather than after
        /// waiting; a call that queues behind others is rejected as soon as
        /// its turn shows it cannot be served in time, at the latest after
        /// `max_wait`. Needs [`max_queue`](Self::max_queue).
        pub fn max_wait(mut self, max_wait: std::time::Duration) -> Self {
            self.common.max_wait = max_wait;
            self
        }

        /// Callers allowed to wait at once (default 0). Waiters are served
        /// by priority, then in arrival order; while anyone waits, new
        /// calls queue behind them rather than take permits first.
        pub fn max_queue(mut self, max_queue: usize) -> Self {
            self.common.max_queue = max_queue;
            self
        }

        /// Keeps `fraction` of the capacity (the burst, or a window's
        /// permits) for calls of priority `priority` and above: lower
        /// priorities are admitted only while more than that is left, so a
        /// flood of them cannot starve the urgent ones. `fraction` is in
        /// `[0, 1)`, `priority` at least 1. Needs a priority extractor
        /// ([`priority`](Self::priority)).
        pub fn reserve(mut self, fraction: f64, priority: u8) -> Self {
            self.common.reserve = Some((fraction, priority));
            self
        }

        /// The resolution of the clock decisions read (default zero: tokio's
        /// clock is read at every decision, about 17 ns on a typical x86
        /// VM). A non-zero resolution reads a coarse clock kept by a ticker
        /// task instead (one atomic load), at the price of exactness in real
        /// time: decisions see time up to one resolution (plus the ticker's
        /// scheduling delay) late, so in any interval the limiter may admit
        /// what the rate refills in that much more time. At most 1 s.
        pub fn resolution(mut self, resolution: std::time::Duration) -> Self {
            self.common.resolution = Some(resolution);
            self
        }

        /// Registers the limiter's handle in `registry` under its name.
        pub fn registry(mut self, registry: &buttress_core::Registry) -> Self {
            self.common.registry = Some(registry.clone());
            self
        }

        /// Adds an event listener.
        pub fn on_event(
            mut self,
            listener: impl buttress_core::Listener<crate::RateLimitEvent>,
        ) -> Self {
            self.common.listeners = self.common.listeners.with(listener);
            self
        }

        /// Publishes the limiter's decisions as metrics through the
        /// [`metrics`] facade (feature `metrics`):
        /// `buttress_rate_limit_decisions_total{decision,reason,backend}` and
        /// `buttress_rate_limit_wait_seconds`, labelled `name` = the
        /// instance name (a keyed limiter: never by key). A
        /// [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
        /// registry given to [`registry`](Self::registry) does the same for
        /// every instance.
        ///
        /// The metric handles are resolved once, by `build()`, against the
        /// recorder installed at that time: install the recorder (an
        /// exporter) before building the layer. The README's "Metrics"
        /// section lists every name.
        #[cfg(feature = "metrics")]
        #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
        pub fn metrics(mut self) -> Self {
            self.common.metrics = true;
            self
        }
    };
}
pub(crate) use common_setters;

impl<C, P, H> RateLimitBuilder<C, P, H> {
    common_setters!();

    pub(crate) fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }

    /// Takes the cost of each request (permits, at least 1) from `f`: by
    /// body size, by a gRPC method's weight...
    ///
    /// ```
    /// use buttress_rate_limit::{Rate, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder(Rate::per_second(1000))
    ///     .cost(|req: &http::Request<()>| {
    ///         req.headers()
    ///             .get(http::header::CONTENT_LENGTH)
    ///             .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    ///             .map_or(1, |len| 1 + len / 1024)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn cost<F>(self, f: F) -> RateLimitBuilder<CostFn<F>, P, H> {
        RateLimitBuilder {
            common: self.common,
            weigh: Weigh {
                cost: CostFn(f),
                priority: self.weigh.priority,
            },
            _headers: PhantomData,
        }
    }

    /// Takes the priority of each request from `f` (default 0 for all).
    pub fn priority<F>(self, f: F) -> RateLimitBuilder<C, PriorityFn<F>, H> {
        RateLimitBuilder {
            common: self.common,
            weigh: Weigh {
                cost: self.weigh.cost,
                priority: PriorityFn(f),
            },
            _headers: PhantomData,
        }
    }

    /// Adds the `RateLimit-Policy` and `RateLimit` headers to every
    /// `http::Response` (not only to 429s).
    pub fn response_headers(self) -> RateLimitBuilder<C, P, WithHeaders> {
        RateLimitBuilder {
            common: self.common,
            weigh: self.weigh,
            _headers: PhantomData,
        }
    }

    /// Validates and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer<C, P, H>, ConfigError> {
        let (params, policy) = self.common.validate()?;
        let time = TimeSource::new(self.common.resolution);
        let layer = RateLimitLayer {
            shared: Arc::new(Limiter::new(params, time, policy)),
            weigh: Arc::new(self.weigh),
            pass_through: false,
            _headers: PhantomData,
        };
        self.common.register(layer.handle())?;
        Ok(layer)
    }
}

/// A limiter's state, as [`RateLimitHandle::snapshot`] reads it.
///
/// Rejections are counted; admitted calls are not, since that would cost
/// every call a second atomic read-modify-write (as in Resilience4j, whose
/// rate limiter reports available permits and waiting threads). A listener
/// of [`Permitted`](crate::RateLimitEvent::Permitted) events counts them
/// when wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RateLimitSnapshot {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The rate.
    pub rate: Rate,
    /// The burst (the rate's permits for the window algorithms).
    pub burst: u64,
    /// Permits that could be taken now (per key: a key's).
    pub available: u64,
    /// Time until the limiter is back to full.
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub reset: Duration,
    /// Calls waiting for permits.
    pub waiting: usize,
    /// Calls rejected since creation (or the last reset).
    pub rejected: u64,
    /// Which store decides.
    pub backend: Backend,
}

/// Observes a limiter and changes its rate at run time.
#[derive(Clone)]
pub struct RateLimitHandle {
    shared: Arc<Limiter>,
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl RateLimitHandle {
    pub(crate) fn from_shared(shared: Arc<Limiter>) -> Self {
        Self { shared }
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.policy.name
    }

    /// The current state.
    pub fn snapshot(&self) -> RateLimitSnapshot {
        let s = &self.shared;
        let p = s.params.load_full();
        let levels = s.levels(&p, s.time.now());
        let rejected = s.rejected();
        RateLimitSnapshot {
            algorithm: s.algorithm(),
            rate: p.rate,
            burst: p.burst,
            available: levels.remaining,
            reset: Duration::from_nanos(levels.reset),
            waiting: s.queue.len(),
            rejected,
            backend: Backend::Local,
        }
    }

    /// Changes the rate and the burst (`None`: the rate's permits) for the
    /// next decision, validated as the builder validates them; on an error
    /// nothing changes. What was taken is kept: a window keeps its count;
    /// GCRA and the token bucket keep it as time (the debt, or the level),
    /// which the new numbers read from then on. A change that keeps the
    /// bucket's span (`burst` × the rate's interval; with the default
    /// burst, the rate's period) leaves every client as full as it was; a
    /// change of the span moves them: from 10 a second (burst 10, a span
    /// of 1 s) to 10 a minute (burst 10, a span of 60 s), a client that had
    /// used its whole burst owes 1 s of a 60 s bucket and may make 9 calls
    /// at once; the other way (10 a minute to 10 a second), a client that
    /// had used its whole burst owes 60 s against a span of 1 s, and waits
    /// about 59 s for its next call, where at the new rate it would owe
    /// 1 s. Keeping the span (or raising the burst with the rate) avoids
    /// both.
    ///
    /// ```
    /// use buttress_rate_limit::{Rate, RateLimitLayer};
    ///
    /// let handle = RateLimitLayer::new(Rate::per_second(10)).unwrap().handle();
    /// handle.set_rate(Rate::per_minute(30), Some(5)).unwrap();
    /// assert_eq!(handle.snapshot().rate, Rate::per_minute(30));
    /// assert_eq!(handle.snapshot().burst, 5);
    /// assert_eq!(handle.set_rate(Rate::per_second(0), None).unwrap_err().field(), "rate");
    /// ```
    pub fn set_rate(&self, rate: Rate, burst: Option<u64>) -> Result<(), ConfigError> {
        let p = Params::new(self.shared.algorithm(), rate, burst)?;
        self.shared.params.store(p);
        Ok(())
    }

    /// Applies `config` to this live limiter.
    ///
    /// The whole config is validated first, as [`RateLimitConfig::build`]
    /// validates it (the same errors). What is live: `rate` and `burst`,
    /// swapped as one value (readers never see the new rate with the old
    /// burst) and used by the next decision, as with
    /// [`set_rate`](Self::set_rate), which says how what was taken is
    /// kept (as time, by GCRA and the token bucket: a change of the
    /// bucket's span moves how full each client is); a call waiting in the
    /// queue keeps the deadline it joined
    /// with, and its permits are decided under the numbers in force when
    /// its turn comes.
    ///
    /// Fixed at build time, refused with a [`ConfigError`] naming the
    /// field when different (build a new layer instead): `name`,
    /// `algorithm` (its state has another shape), `max_wait` and
    /// `max_queue` (the wait queue is sized and flagged with them), and
    /// `resolution` (the clock). `None` and zero are the same value for
    /// `max_wait` and `resolution`. On any error nothing changes.
    ///
    /// ```
    /// use buttress_rate_limit::{Algorithm, Rate, RateLimitConfig};
    ///
    /// let handle = RateLimitConfig::new(Rate::per_second(10)).build().unwrap().handle();
    /// let new = RateLimitConfig { burst: Some(50), ..RateLimitConfig::new(Rate::per_second(100)) };
    /// handle.reconfigure(&new).unwrap();
    /// assert_eq!(handle.config(), new);
    /// assert_eq!(handle.snapshot().burst, 50);
    ///
    /// let bad = RateLimitConfig { burst: Some(0), ..new.clone() };
    /// assert_eq!(handle.reconfigure(&bad).unwrap_err().field(), "burst");
    /// let other = RateLimitConfig { algorithm: Algorithm::FixedWindow, burst: None, ..new.clone() };
    /// assert_eq!(handle.reconfigure(&other).unwrap_err().field(), "algorithm");
    /// assert_eq!(handle.config(), new);
    /// ```
    pub fn reconfigure(&self, config: &RateLimitConfig) -> Result<(), ConfigError> {
        let s = &self.shared;
        crate::config::reconfigure(config, &s.params, &s.policy, &s.time)
    }

    /// What [`reconfigure`](Self::reconfigure) would answer, without
    /// applying anything: a caller changing several layers at once checks
    /// them all first, so that a refusal leaves every one unchanged.
    ///
    /// ```
    /// use buttress_rate_limit::{Algorithm, Rate, RateLimitConfig};
    ///
    /// let handle = RateLimitConfig::new(Rate::per_second(10)).build().unwrap().handle();
    /// let other = RateLimitConfig { algorithm: Algorithm::TokenBucket, ..handle.config() };
    /// assert_eq!(handle.check_reconfigure(&other).unwrap_err().field(), "algorithm");
    /// ```
    pub fn check_reconfigure(&self, config: &RateLimitConfig) -> Result<(), ConfigError> {
        let s = &self.shared;
        crate::config::check(config, &s.params, &s.policy, &s.time).map(|_| ())
    }

    /// The current settings, as a [`RateLimitConfig`]: what
    /// [`reconfigure`](Self::reconfigure) compares a new config with, and
    /// what a dashboard shows. `burst` is `None` when it is the rate's
    /// permits, `max_wait` and `resolution` when they are zero.
    ///
    /// ```
    /// use buttress_rate_limit::{Rate, RateLimitConfig};
    ///
    /// let config = RateLimitConfig { burst: Some(3), ..RateLimitConfig::new(Rate::per_second(10)) };
    /// assert_eq!(config.build().unwrap().handle().config(), config);
    /// ```
    pub fn config(&self) -> RateLimitConfig {
        let s = &self.shared;
        crate::config::current(&s.params, &s.policy, &s.time)
    }
}

impl Component for RateLimitHandle {
    fn name(&self) -> &str {
        &self.shared.policy.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = RateLimitHandle::snapshot(self);
        serde_json::json!({
            "algorithm": s.algorithm.as_str(),
            "rate": s.rate.to_string(),
            "burst": s.burst,
            "available": s.available,
            "reset_ms": s.reset.as_millis() as u64,
            "waiting": s.waiting,
            "rejected": s.rejected,
            "backend": s.backend.as_str(),
        })
    }

    fn reset(&self) {
        self.shared.reset_counts();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
