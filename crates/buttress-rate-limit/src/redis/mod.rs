//! A cluster-wide rate limit whose state lives in Redis (feature `redis`).
//!
//! Every replica of a service that uses a [`RedisRateLimitLayer`] with the
//! same name (or [`prefix`](RedisRateLimitBuilder::prefix)) and the same
//! Redis server takes its permits from one limit: the replicas together
//! admit what one in-memory limiter would.
//!
//! **The decision.** One Lua script, run atomically by Redis, makes each
//! decision with the GCRA math of the in-memory limiter: the emission
//! interval *T* = ⌈period / permits⌉ ns, `tat = max(tat, now) + cost × T`,
//! admitted iff `tat − now <= burst × T`. `now` is Redis' `TIME`, read in
//! the script, so replicas with skewed clocks share one clock (Redis 7
//! replicates a script's effects, so its replicas store the same value).
//! The key expires when it would be full again (`PX` of its reset time):
//! an expired key and a full one decide the same, so Redis holds only the
//! keys that are limited. The script is sent by its SHA-1 (`EVALSHA`) and
//! loaded again when Redis answers `NOSCRIPT` (after a restart or a
//! `SCRIPT FLUSH`).
//!
//! **Redis keys.** `{prefix}global` for a global limit, `{prefix}k:{key}`
//! for a keyed one (the key's bytes by [`RedisKey`]), `{prefix}unkeyed` for
//! requests without a key under [`MissingKey::SharedBucket`]. The prefix
//! defaults to `buttress:rl:{name}:`.
//!
//! **The connection.** A [`redis::aio::ConnectionManager`] (one multiplexed
//! connection that reconnects), created at the first decision, inside the
//! runtime that runs it: building the layer needs no runtime and no
//! server. The connection's background work lives on that runtime.
//!
//! **Outages.** A decision that fails (connection refused, dropped, any
//! Redis error) or takes longer than
//! [`decision_timeout`](RedisRateLimitBuilder::decision_timeout) (default
//! 50 ms) is decided by the [`OutagePolicy`] instead, so a hung Redis never
//! hangs a request. For the next
//! [`retry_backoff`](RedisRateLimitBuilder::retry_backoff) (default 1 s)
//! every decision is made by the policy at once, without trying Redis;
//! then one call tries Redis again (the others still decide locally
//! meanwhile), and decisions go back to Redis as soon as it answers. With
//! [`OutagePolicy::FallbackLocal`] (the default) each replica limits
//! alone with the same numbers, so during an outage the cluster admits up
//! to replicas × the limit.
//!
//! **Local pre-check.** When Redis rejects a key it says until when the
//! key is exhausted (`retry_after`); the layer keeps that instant in a small
//! bounded map, and rejects further calls for the key before then without
//! a round trip. That is Redis' own answer replayed: other replicas can
//! only take more permits, never give any back, so it never rejects a call
//! Redis would admit (the instant is counted from before the round trip).
//! [`local_precheck(false)`](RedisRateLimitBuilder::local_precheck) turns
//! it off.
//!
//! **Exactness.** Every decision that reaches Redis is exact across
//! replicas: no replica caches permits. A call whose connection drops
//! after Redis ran the script but before the answer came is tried once
//! more, which may take its permits twice (under-admission, never over).
//!
//! ```
//! use buttress_rate_limit::redis::{OutagePolicy, RedisRateLimitLayer};
//! use buttress_rate_limit::Rate;
//! use std::time::Duration;
//!
//! let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1:6379/", Rate::per_second(100))
//!     .name("api")
//!     .burst(20)
//!     .outage(OutagePolicy::FallbackLocal)
//!     .decision_timeout(Duration::from_millis(50))
//!     .build()
//!     .unwrap();
//! assert_eq!(layer.handle().snapshot().burst, 20);
//! ```

mod key;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, KeyMissing};
use buttress_core::key::{BoundedMap, MissingKey, MissingKeys};
use buttress_core::registry::Component;
use buttress_core::{ConfigError, KeyExtractor, Listeners, RateLimited, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tower_layer::Layer;
use tower_service::Service;

use crate::algorithm::{Algorithm, Levels, Params, Verdict};
use crate::events::{Backend, RateLimitEvent, RejectReason};
use crate::future::nanos;
use crate::limiter::{quota, Limiter, Policy, TimeSource};
use crate::params::ParamCell;
use crate::rate::Rate;
use crate::weigh::{Cost, CostFn, Unit};

pub use key::RedisKey;

const KIND: &str = "redis_rate_limit";
const SCRIPT: &str = include_str!("gcra.lua");
const NANOS: u64 = 1_000_000_000;

/// What a [`RedisRateLimitLayer`] does while Redis cannot be reached (an
/// error, or no answer within the decision timeout).
///
/// ```
/// use buttress_rate_limit::redis::OutagePolicy;
///
/// assert_eq!(OutagePolicy::default(), OutagePolicy::FallbackLocal);
/// assert_eq!(OutagePolicy::FailClosed.as_str(), "fail_closed");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum OutagePolicy {
    /// Admit every call (backend [`Backend::OutagePolicy`]): availability
    /// before the limit.
    FailOpen,
    /// Reject every call with [`RateLimited`] (reason
    /// [`RejectReason::BackendUnavailable`] in the event, `retry_after` the
    /// time until Redis is tried again).
    FailClosed,
    /// Limit with an in-memory GCRA of the same rate and burst in this
    /// process (backend [`Backend::LocalFallback`]); the default.
    #[default]
    FallbackLocal,
}

impl OutagePolicy {
    /// The name in snake case, as in snapshots.
    pub fn as_str(self) -> &'static str {
        match self {
            OutagePolicy::FailOpen => "fail_open",
            OutagePolicy::FailClosed => "fail_closed",
            OutagePolicy::FallbackLocal => "fallback_local",
        }
    }
}

impl fmt::Display for OutagePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key extractor of a global limit: every request has the one key `()`
/// (Redis key `{prefix}global`). The default of [`RedisRateLimitBuilder`];
/// [`keyed`](RedisRateLimitBuilder::keyed) replaces it.
///
/// ```
/// use buttress_core::KeyExtractor;
/// use buttress_rate_limit::redis::Global;
///
/// assert_eq!(Global.extract(&"any request"), Some(()));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl<Req> KeyExtractor<Req> for Global {
    type Key = ();

    fn extract(&self, _: &Req) -> Option<()> {
        Some(())
    }
}

/// Where the layer connects.
enum Target {
    Client(redis::Client),
    Url(String),
}

/// Builds a [`RedisRateLimitLayer`]; from
/// [`RedisRateLimitLayer::builder`] or
/// [`RedisRateLimitLayer::builder_url`].
///
/// ```
/// use buttress_rate_limit::redis::RedisRateLimitLayer;
/// use buttress_rate_limit::Rate;
///
/// let err = RedisRateLimitLayer::builder_url("not a url", Rate::per_second(10)).build().unwrap_err();
/// assert_eq!(err.field(), "url");
/// ```
pub struct RedisRateLimitBuilder<X = Global, C = Unit> {
    target: Target,
    name: Arc<str>,
    rate: Rate,
    burst: Option<u64>,
    extractor: X,
    keyed: bool,
    on_missing_key: MissingKey,
    prefix: Option<String>,
    outage: OutagePolicy,
    decision_timeout: Duration,
    retry_backoff: Duration,
    registry: Option<Registry>,
    listeners: Listeners<RateLimitEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
    local_precheck: bool,
    max_keys: usize,
    idle_timeout: Duration,
    cost: C,
}

impl<X, C> fmt::Debug for RedisRateLimitBuilder<X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitBuilder")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("keyed", &self.keyed)
            .field("outage", &self.outage)
            .finish_non_exhaustive()
    }
}

impl<X, C> RedisRateLimitBuilder<X, C> {
    /// The instance name, used in errors, events, the registry and the
    /// default key prefix (default `"redis_rate_limit"`). Replicas that
    /// share a limit must use the same name (or prefix).
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5))
    ///     .name("login")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.handle().name(), "login");
    /// assert_eq!(layer.handle().snapshot().prefix, "buttress:rl:login:");
    /// ```
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How many permits may be taken at once (default: the rate's
    /// permits); at least 1.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let b = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5));
    /// assert_eq!(b.burst(0).build().unwrap_err().field(), "burst");
    /// ```
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// One limit per key, the key taken from each request by `extractor`
    /// (its key type must implement [`RedisKey`]). A request without a key
    /// follows [`on_missing_key`](Self::on_missing_key).
    ///
    /// ```
    /// use buttress_core::key::Header;
    /// use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    ///
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_minute(60))
    ///     .keyed(Header::new(http::HeaderName::from_static("x-api-key")))
    ///     .build()
    ///     .unwrap();
    /// assert!(layer.handle().snapshot().keyed);
    /// ```
    pub fn keyed<Y>(self, extractor: Y) -> RedisRateLimitBuilder<Y, C> {
        RedisRateLimitBuilder {
            target: self.target,
            name: self.name,
            rate: self.rate,
            burst: self.burst,
            extractor,
            keyed: true,
            on_missing_key: self.on_missing_key,
            prefix: self.prefix,
            outage: self.outage,
            decision_timeout: self.decision_timeout,
            retry_backoff: self.retry_backoff,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
            local_precheck: self.local_precheck,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            cost: self.cost,
        }
    }

    /// What a keyed layer does with a request whose key cannot be
    /// extracted (default [`MissingKey::Reject`]: the call fails with
    /// [`KeyMissing`]; [`MissingKey::SharedBucket`]: such requests share
    /// the Redis key `{prefix}unkeyed`).
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, MissingKey, Rate};
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5))
    ///     .keyed(buttress_core::key::PeerAddr)
    ///     .on_missing_key(MissingKey::SharedBucket)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn on_missing_key(mut self, policy: MissingKey) -> Self {
        self.on_missing_key = policy;
        self
    }

    /// The prefix of every Redis key of this limit (default
    /// `buttress:rl:{name}:`).
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5))
    ///     .prefix("shop:limits:")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.handle().snapshot().prefix, "shop:limits:");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// What to do while Redis cannot be reached (default
    /// [`OutagePolicy::FallbackLocal`]).
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::{OutagePolicy, RedisRateLimitLayer}, Rate};
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5))
    ///     .outage(OutagePolicy::FailClosed)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.handle().snapshot().outage_policy, OutagePolicy::FailClosed);
    /// ```
    pub fn outage(mut self, policy: OutagePolicy) -> Self {
        self.outage = policy;
        self
    }

    /// The longest a decision may wait for Redis (default 50 ms; above
    /// zero, at most 60 s): an answer that takes longer counts as an
    /// outage and the [`OutagePolicy`] decides. It bounds the connection
    /// attempt too.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// # use std::time::Duration;
    /// let b = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5));
    /// assert_eq!(b.decision_timeout(Duration::ZERO).build().unwrap_err().field(), "decision_timeout");
    /// ```
    pub fn decision_timeout(mut self, timeout: Duration) -> Self {
        self.decision_timeout = timeout;
        self
    }

    /// After a failed decision, how long every decision is made by the
    /// outage policy without trying Redis (default 1 s; above zero, at
    /// most 1 h). Then one call tries Redis again.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// # use std::time::Duration;
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5))
    ///     .retry_backoff(Duration::from_millis(200))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Registers the limiter's handle in `registry` under its name.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let registry = buttress_core::Registry::new();
    /// let _layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5))
    ///     .name("cluster")
    ///     .registry(&registry)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(registry.snapshot()["cluster"]["kind"], "redis_rate_limit");
    /// ```
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener; events carry the
    /// [`Backend`] that decided (`Redis`, `LocalFallback`, `OutagePolicy`).
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate, RateLimitEvent};
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5))
    ///     .on_event(|e: &RateLimitEvent| println!("{e:?}"))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn on_event(mut self, listener: impl buttress_core::Listener<RateLimitEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Publishes the limiter's decisions as metrics through the
    /// [`metrics`] facade (feature `metrics`):
    /// `buttress_rate_limit_decisions_total{decision,reason,backend}` (every
    /// backend: `redis`, `local_fallback`, `outage_policy`, `local`) and
    /// `buttress_rate_limit_wait_seconds`, labelled `name` = the instance
    /// name (never by key). A
    /// [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
    /// registry given to [`registry`](Self::registry) does the same.
    ///
    /// The metric handles are resolved once, by `build()`, against the
    /// recorder installed at that time: install the recorder first.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Whether to reject calls for a key Redis said is exhausted, until
    /// the instant it gave, without a round trip (default `true`).
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5))
    ///     .local_precheck(false)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn local_precheck(mut self, on: bool) -> Self {
        self.local_precheck = on;
        self
    }

    /// Keys held in memory at most, by the pre-check's map and by the
    /// local fallback's (default 10 000 each; at least 1). A key is
    /// evicted only when it would decide as a new one; with no room, the
    /// pre-check skips a key and the fallback rejects it
    /// ([`RejectReason::KeysFull`]).
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let b = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5));
    /// assert_eq!(b.max_keys(0).build().unwrap_err().field(), "max_keys");
    /// ```
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    /// Takes the cost of each request (permits, at least 1) from `f`.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(1000))
    ///     .cost(|req: &Vec<u8>| 1 + req.len() as u64 / 1024)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn cost<F>(self, f: F) -> RedisRateLimitBuilder<X, CostFn<F>> {
        RedisRateLimitBuilder {
            target: self.target,
            name: self.name,
            rate: self.rate,
            burst: self.burst,
            extractor: self.extractor,
            keyed: self.keyed,
            on_missing_key: self.on_missing_key,
            prefix: self.prefix,
            outage: self.outage,
            decision_timeout: self.decision_timeout,
            retry_backoff: self.retry_backoff,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
            local_precheck: self.local_precheck,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            cost: CostFn(f),
        }
    }

    /// Validates and builds the layer. Needs neither a runtime nor a
    /// server: the connection is made at the first decision.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let layer = RedisRateLimitLayer::builder(client, Rate::per_second(5)).build().unwrap();
    /// # let _ = layer;
    /// ```
    pub fn build(self) -> Result<RedisRateLimitLayer<X, C>, ConfigError>
    where
        X: Send + Sync + 'static,
    {
        let err = |field, reason: String| ConfigError::new(KIND, field, reason);
        if self.name.is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        let client = match self.target {
            Target::Client(c) => c,
            Target::Url(url) => redis::Client::open(url.as_str())
                .map_err(|e| err("url", format!("not a Redis URL ({url}): {e}")))?,
        };
        let params = Params::new(Algorithm::Gcra, self.rate, self.burst)
            .map_err(|e| err(e.field(), e.reason().to_owned()))?;
        if self.decision_timeout.is_zero() || self.decision_timeout > Duration::from_secs(60) {
            return Err(err(
                "decision_timeout",
                "must be above zero and at most 60 s".into(),
            ));
        }
        if self.retry_backoff.is_zero() || self.retry_backoff > Duration::from_secs(3600) {
            return Err(err(
                "retry_backoff",
                "must be above zero and at most 1 h".into(),
            ));
        }
        if self.max_keys == 0 {
            return Err(err("max_keys", "must be at least 1".into()));
        }
        let prefix = self
            .prefix
            .unwrap_or_else(|| format!("buttress:rl:{}:", self.name));
        #[allow(unused_mut)]
        let mut listeners = self.listeners;
        #[cfg(feature = "metrics")]
        crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
            &[
                crate::Backend::Redis,
                crate::Backend::LocalFallback,
                crate::Backend::OutagePolicy,
                crate::Backend::Local,
            ],
        );
        let policy = Policy::new(self.name.clone(), Duration::ZERO, 0, 0, u8::MAX, listeners);
        let time = TimeSource::new(None);
        let fallback = if self.keyed {
            Fallback::Keyed(BoundedMap::new(self.max_keys, self.idle_timeout))
        } else {
            Fallback::Global(Box::new(Limiter::new(params, time.clone(), policy.clone())))
        };
        let shared = Arc::new(Shared {
            params: ParamCell::new(params),
            rate_generation: AtomicU64::new(0),
            policy,
            time,
            client,
            conn: OnceLock::new(),
            script: redis::Script::new(SCRIPT),
            prefix,
            keyed: self.keyed,
            outage_policy: self.outage,
            decision_timeout: self.decision_timeout,
            retry_backoff: nanos(self.retry_backoff),
            missing: MissingKeys::new(self.on_missing_key, std::any::type_name::<X>()),
            precheck: self
                .local_precheck
                .then(|| BoundedMap::new(self.max_keys, self.idle_timeout)),
            fallback,
            down: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_backend: AtomicU8::new(0),
            counts: Counts::default(),
        });
        let layer = RedisRateLimitLayer {
            extractor: Arc::new(self.extractor),
            shared,
            cost: Arc::new(self.cost),
        };
        if let Some(registry) = &self.registry {
            registry
                .register(layer.handle())
                .map_err(|e| err("name", e.to_string()))?;
        }
        Ok(layer)
    }
}

/// A rate limit shared by every replica through one Redis server, global
/// or per key; see the [module docs](self) for how it decides, what
/// happens during an outage and the local pre-check.
///
/// The service decides in `call`: it reports ready when the inner service
/// is, and its response future first awaits the decision (a boxed future:
/// the round trip to Redis dominates), then calls the inner service, or
/// fails with [`RateLimited`] (with `retry_after` and the quota, when
/// known) without reaching it. The inner service must be `Clone`: the
/// ready instance goes with the call and a clone stays behind.
///
/// ```
/// use buttress_core::RateLimited;
/// use buttress_rate_limit::redis::{OutagePolicy, RedisRateLimitLayer};
/// use buttress_rate_limit::{Backend, Rate};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Nothing listens on port 1: every decision falls back to this
/// // process's memory, with the same numbers.
/// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1:1/", Rate::per_minute(2))
///     .outage(OutagePolicy::FallbackLocal)
///     .build()
///     .unwrap();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|()| async { Ok::<_, std::convert::Infallible>("done") });
/// assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "done");
/// assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "done");
/// let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
/// assert!(err.downcast_ref::<RateLimited>().is_some());
/// let snapshot = layer.handle().snapshot();
/// assert_eq!(snapshot.backend, Some(Backend::LocalFallback));
/// assert_eq!(snapshot.local_fallback_decisions, 3);
/// # }
/// ```
pub struct RedisRateLimitLayer<X = Global, C = Unit> {
    extractor: Arc<X>,
    shared: Arc<Shared>,
    cost: Arc<C>,
}

impl<X, C> Clone for RedisRateLimitLayer<X, C> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
            cost: self.cost.clone(),
        }
    }
}

impl<X, C> fmt::Debug for RedisRateLimitLayer<X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("name", &self.shared.policy.name)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimitLayer {
    /// A builder of a global limit of `rate` in the Redis server of
    /// `client`.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    /// let builder = RedisRateLimitLayer::builder(client, Rate::per_second(100));
    /// # let _ = builder;
    /// ```
    pub fn builder(client: redis::Client, rate: Rate) -> RedisRateLimitBuilder {
        Self::builder_of(Target::Client(client), rate)
    }

    /// A builder of a global limit of `rate` in the Redis server at `url`
    /// (`redis://host:port/db`); a URL that does not parse fails
    /// [`build`](RedisRateLimitBuilder::build) with a [`ConfigError`] on
    /// the field `url`.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let builder = RedisRateLimitLayer::builder_url("redis://127.0.0.1:6379/", Rate::per_second(100));
    /// # let _ = builder;
    /// ```
    pub fn builder_url(url: impl Into<String>, rate: Rate) -> RedisRateLimitBuilder {
        Self::builder_of(Target::Url(url.into()), rate)
    }

    fn builder_of(target: Target, rate: Rate) -> RedisRateLimitBuilder {
        RedisRateLimitBuilder {
            target,
            name: Arc::from(KIND),
            rate,
            burst: None,
            extractor: Global,
            keyed: false,
            on_missing_key: MissingKey::Reject,
            prefix: None,
            outage: OutagePolicy::FallbackLocal,
            decision_timeout: Duration::from_millis(50),
            retry_backoff: Duration::from_secs(1),
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
            local_precheck: true,
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(60),
            cost: Unit,
        }
    }
}

impl<X, C> RedisRateLimitLayer<X, C> {
    /// A handle to observe the limiter.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap();
    /// assert_eq!(layer.handle().snapshot().redis_decisions, 0);
    /// ```
    pub fn handle(&self) -> RedisRateLimitHandle {
        RedisRateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, X, C> Layer<S> for RedisRateLimitLayer<X, C> {
    type Service = RedisRateLimit<S, X, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimit {
            inner,
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
            cost: self.cost.clone(),
        }
    }
}

/// The service of [`RedisRateLimitLayer`].
///
/// ```
/// use buttress_rate_limit::redis::{RedisRateLimit, RedisRateLimitLayer};
/// use buttress_rate_limit::Rate;
/// use tower::Layer;
///
/// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap();
/// let svc: RedisRateLimit<_, _, _> = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
/// # let _ = svc;
/// ```
pub struct RedisRateLimit<S, X, C> {
    inner: S,
    extractor: Arc<X>,
    shared: Arc<Shared>,
    cost: Arc<C>,
}

impl<S, X, C> RedisRateLimit<S, X, C> {
    /// The inner service.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// # use tower::Layer;
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap();
    /// let svc = layer.layer(7u8);
    /// assert_eq!(*svc.get_ref(), 7);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// # use tower::Layer;
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap();
    /// let mut svc = layer.layer(7u8);
    /// *svc.get_mut() = 8;
    /// assert_eq!(svc.into_inner(), 8);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// # use tower::Layer;
    /// let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap();
    /// assert_eq!(layer.layer(7u8).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, X, C> Clone for RedisRateLimit<S, X, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
            cost: self.cost.clone(),
        }
    }
}

impl<S: fmt::Debug, X, C> fmt::Debug for RedisRateLimit<S, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.policy.name)
            .finish()
    }
}

/// The response future of [`RedisRateLimit`]: the decision, then the inner
/// call.
pub type ResponseFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;

impl<S, X, C, Req> Service<Req> for RedisRateLimit<S, X, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    X: KeyExtractor<Req>,
    X::Key: RedisKey,
    C: Cost<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    /// Always ready: the decision (a Redis round trip) comes first, and
    /// the service below is made ready only for an admitted call, in its
    /// response future; so a call over its limit never holds what the
    /// service below would reserve (a bulkhead's permit or queue place)
    /// while Redis answers, and is refused without it.
    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = self.shared.clone();
        let key = match self.extractor.extract(&req) {
            Some(key) => shared.redis_key(Some(&key)),
            None => match shared.missing.note(&shared.policy.name) {
                MissingKey::SharedBucket => shared.redis_key::<()>(None),
                // `Reject`, and any policy added later: the safe one.
                _ => {
                    let err =
                        KeyMissing::new(shared.policy.name.clone(), shared.missing.extractor());
                    return Box::pin(async move { Err(err.into()) });
                }
            },
        };
        let cost = self.cost.cost(&req).max(1);
        let now = shared.time.now();
        if let Some(denied) = shared.before_redis(&key, cost, now) {
            let err = shared.reject(cost, Backend::Redis, denied);
            return Box::pin(async move { Err(err) });
        }
        let mut service = self.inner.clone();
        Box::pin(async move {
            let decided = shared.decide(&key, cost, now).await;
            shared.finish(cost, decided)?;
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            service.call(req).await.map_err(Into::into)
        })
    }
}

/// Observes a [`RedisRateLimitLayer`].
///
/// ```
/// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
/// let handle = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap().handle();
/// let s = handle.snapshot();
/// assert_eq!((s.permitted, s.rejected, s.backend), (0, 0, None));
/// ```
#[derive(Clone)]
pub struct RedisRateLimitHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisRateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitHandle")
            .field("name", &self.shared.policy.name)
            .finish()
    }
}

/// A [`RedisRateLimitLayer`]'s counters, as
/// [`RedisRateLimitHandle::snapshot`] reads them.
///
/// ```
/// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
/// let s = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap().handle().snapshot();
/// assert!(s.redis_available);
/// assert_eq!(s.rate, Rate::per_second(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RedisRateLimitSnapshot {
    /// The instance name.
    pub name: String,
    /// The prefix of its Redis keys.
    pub prefix: String,
    /// The rate (per key when keyed).
    pub rate: Rate,
    /// The burst.
    pub burst: u64,
    /// One limit per key (`true`) or one in all.
    pub keyed: bool,
    /// The outage policy.
    pub outage_policy: OutagePolicy,
    /// Who made the last decision (`None` before the first): `Redis` (the
    /// pre-check included), `LocalFallback` or `OutagePolicy`.
    pub backend: Option<Backend>,
    /// `false` while Redis is deemed unreachable (after a failed decision,
    /// until one succeeds again).
    pub redis_available: bool,
    /// Decisions made by Redis.
    pub redis_decisions: u64,
    /// Calls rejected by the local pre-check, without a round trip.
    pub precheck_rejections: u64,
    /// Decisions made by the local fallback.
    pub local_fallback_decisions: u64,
    /// Decisions made by fail open / fail closed.
    pub outage_policy_decisions: u64,
    /// Decisions Redis failed (errors and timeouts).
    pub redis_errors: u64,
    /// Of those, the ones that took longer than the decision timeout.
    pub redis_timeouts: u64,
    /// Calls admitted.
    pub permitted: u64,
    /// Calls rejected (a missing key not included).
    pub rejected: u64,
    /// Requests without a key.
    pub missing_key: u64,
}

impl RedisRateLimitHandle {
    /// The instance name.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let h = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).name("x").build().unwrap().handle();
    /// assert_eq!(h.name(), "x");
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.policy.name
    }

    /// Changes the rate and the burst (`None`: the rate's permits) for the
    /// next decision, validated as the builder validates them; on an error
    /// nothing changes. The state in Redis (a time) stays valid: permits
    /// already taken stay taken. The local fallback changes with it, and
    /// the pre-check forgets what it learnt under the old numbers.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let h = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap().handle();
    /// h.set_rate(Rate::per_minute(100), Some(10)).unwrap();
    /// assert_eq!((h.snapshot().rate, h.snapshot().burst), (Rate::per_minute(100), 10));
    /// assert_eq!(h.set_rate(Rate::per_second(0), None).unwrap_err().field(), "rate");
    /// ```
    pub fn set_rate(&self, rate: Rate, burst: Option<u64>) -> Result<(), ConfigError> {
        let p = Params::new(Algorithm::Gcra, rate, burst)?;
        self.shared.params.store(p);
        self.shared.rate_generation.fetch_add(1, AcqRel);
        Ok(())
    }

    /// The current counters.
    ///
    /// ```
    /// # use buttress_rate_limit::{redis::RedisRateLimitLayer, Rate};
    /// let h = RedisRateLimitLayer::builder_url("redis://127.0.0.1/", Rate::per_second(5)).build().unwrap().handle();
    /// assert_eq!(h.snapshot().redis_errors, 0);
    /// ```
    pub fn snapshot(&self) -> RedisRateLimitSnapshot {
        let s = &self.shared;
        let c = &s.counts;
        let p = s.params.load_full();
        RedisRateLimitSnapshot {
            name: s.policy.name.to_string(),
            prefix: s.prefix.clone(),
            rate: p.rate,
            burst: p.burst,
            keyed: s.keyed,
            outage_policy: s.outage_policy,
            backend: backend_of(s.last_backend.load(Relaxed)),
            redis_available: !s.down.load(Relaxed),
            redis_decisions: c.redis.load(Relaxed),
            precheck_rejections: c.precheck.load(Relaxed),
            local_fallback_decisions: c.fallback.load(Relaxed),
            outage_policy_decisions: c.policy.load(Relaxed),
            redis_errors: c.errors.load(Relaxed),
            redis_timeouts: c.timeouts.load(Relaxed),
            permitted: c.permitted.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            missing_key: s.missing.count(),
        }
    }
}

impl Component for RedisRateLimitHandle {
    fn name(&self) -> &str {
        &self.shared.policy.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = RedisRateLimitHandle::snapshot(self);
        serde_json::json!({
            "prefix": s.prefix,
            "rate": s.rate.to_string(),
            "burst": s.burst,
            "keyed": s.keyed,
            "outage_policy": s.outage_policy.as_str(),
            "backend": s.backend.map(Backend::as_str),
            "redis_available": s.redis_available,
            "redis_decisions": s.redis_decisions,
            "precheck_rejections": s.precheck_rejections,
            "local_fallback_decisions": s.local_fallback_decisions,
            "outage_policy_decisions": s.outage_policy_decisions,
            "redis_errors": s.redis_errors,
            "redis_timeouts": s.redis_timeouts,
            "permitted": s.permitted,
            "rejected": s.rejected,
            "missing_key": s.missing_key,
        })
    }

    /// Zeroes the counters (not the limits).
    fn reset(&self) {
        let c = &self.shared.counts;
        for n in [
            &c.redis,
            &c.precheck,
            &c.fallback,
            &c.policy,
            &c.errors,
            &c.timeouts,
            &c.permitted,
            &c.rejected,
        ] {
            n.store(0, Relaxed);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

// ---------------------------------------------------------------------------
// The shared state and the decision.

enum Fallback {
    Global(Box<Limiter>),
    /// Theoretical arrival times by Redis key.
    Keyed(BoundedMap<Vec<u8>, u64>),
}

#[derive(Default)]
struct Counts {
    redis: AtomicU64,
    precheck: AtomicU64,
    fallback: AtomicU64,
    policy: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    permitted: AtomicU64,
    rejected: AtomicU64,
}

struct Shared {
    params: ParamCell,
    /// Bumped by each `set_rate`: a pre-check entry made under other
    /// numbers is ignored.
    rate_generation: AtomicU64,
    policy: Policy,
    time: TimeSource,
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    script: redis::Script,
    prefix: String,
    keyed: bool,
    outage_policy: OutagePolicy,
    decision_timeout: Duration,
    retry_backoff: u64,
    missing: MissingKeys,
    /// Redis key → local time until which Redis said it is exhausted (for
    /// a call of cost 1).
    /// (until, the `rate_generation` it was computed under).
    precheck: Option<BoundedMap<Vec<u8>, (u64, u64)>>,
    fallback: Fallback,
    /// Redis is deemed unreachable.
    down: AtomicBool,
    /// While `down`: when (local time) the next call may try Redis.
    retry_at: AtomicU64,
    /// Outages entered so far: a decision that began before the current
    /// outage does not end it by succeeding late.
    generation: AtomicU64,
    /// 0: none yet, else `backend_code`.
    last_backend: AtomicU8,
    counts: Counts,
}

/// A decision and who made it.
struct Decided {
    backend: Backend,
    outcome: Result<Option<Levels>, Denied>,
}

struct Denied {
    reason: RejectReason,
    retry_after: Option<u64>,
    levels: Option<Levels>,
}

fn backend_code(b: Backend) -> u8 {
    match b {
        Backend::Redis => 1,
        Backend::LocalFallback => 2,
        Backend::OutagePolicy => 3,
        _ => 4,
    }
}

fn backend_of(code: u8) -> Option<Backend> {
    match code {
        1 => Some(Backend::Redis),
        2 => Some(Backend::LocalFallback),
        3 => Some(Backend::OutagePolicy),
        4 => Some(Backend::Local),
        _ => None,
    }
}

/// A Redis error, or no answer in time.
enum Failure {
    Redis(redis::RedisError),
    Timeout,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Redis(e) => fmt::Display::fmt(e, f),
            Failure::Timeout => f.write_str("no answer within the decision timeout"),
        }
    }
}

impl Shared {
    fn redis_key<K: RedisKey + ?Sized>(&self, key: Option<&K>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + 24);
        out.extend_from_slice(self.prefix.as_bytes());
        match key {
            None => out.extend_from_slice(b"unkeyed"),
            Some(_) if !self.keyed => out.extend_from_slice(b"global"),
            Some(k) => {
                out.extend_from_slice(b"k:");
                k.write_redis_key(&mut out);
            }
        }
        out
    }

    /// What is decided without Redis: a cost over the burst, and the local
    /// pre-check.
    fn before_redis(&self, key: &[u8], cost: u64, now: u64) -> Option<Denied> {
        let p = &self.params.load();
        if cost > p.burst {
            return Some(Denied {
                reason: RejectReason::OverCapacity,
                retry_after: None,
                levels: None,
            });
        }
        let (until, generation) = self.precheck.as_ref()?.get(&key.to_vec())?;
        if until <= now || generation != self.rate_generation.load(Acquire) {
            return None;
        }
        self.counts.precheck.fetch_add(1, Relaxed);
        Some(Denied {
            reason: RejectReason::Exhausted,
            retry_after: Some((until - now).saturating_add((cost - 1) * p.interval)),
            levels: None,
        })
    }

    /// Decides through Redis, or by the outage policy when Redis fails or
    /// is deemed down. `start` is the local time the call arrived.
    async fn decide(&self, key: &[u8], cost: u64, start: u64) -> Decided {
        if self.down.load(Acquire) {
            let at = self.retry_at.load(Acquire);
            let now = self.time.now();
            // One call tries Redis when the backoff is over; it pushes the
            // next try one backoff away, so the others keep deciding
            // locally meanwhile.
            if now < at
                || self
                    .retry_at
                    .compare_exchange(at, now.saturating_add(self.retry_backoff), AcqRel, Relaxed)
                    .is_err()
            {
                return self.outage(key, cost);
            }
        }
        let generation = self.generation.load(Acquire);
        let result = match tokio::time::timeout(self.decision_timeout, self.eval(key, cost)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(Failure::Redis(e)),
            Err(_) => Err(Failure::Timeout),
        };
        match result {
            Ok(reply) => {
                if self.down.load(Relaxed) && self.generation.load(Acquire) == generation {
                    self.down.store(false, Release);
                    tracing::info!(name = %self.policy.name, "Redis answers again; rate-limit decisions are back on it");
                }
                self.counts.redis.fetch_add(1, Relaxed);
                self.redis_decided(key, cost, start, reply)
            }
            Err(failure) => {
                self.counts.errors.fetch_add(1, Relaxed);
                if matches!(failure, Failure::Timeout) {
                    self.counts.timeouts.fetch_add(1, Relaxed);
                }
                let now = self.time.now();
                self.retry_at
                    .store(now.saturating_add(self.retry_backoff), Release);
                if !self.down.swap(true, AcqRel) {
                    self.generation.fetch_add(1, AcqRel);
                    tracing::warn!(
                        name = %self.policy.name,
                        error = %failure,
                        policy = self.outage_policy.as_str(),
                        "Redis is unreachable; rate-limit decisions follow the outage policy"
                    );
                }
                self.outage(key, cost)
            }
        }
    }

    fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.decision_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let c = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.conn.get_or_init(|| c).clone())
    }

    /// One run of the script; tried once more when the connection failed
    /// (the manager reconnects meanwhile).
    async fn eval(&self, key: &[u8], cost: u64) -> redis::RedisResult<[i64; 6]> {
        match self.eval_once(key, cost).await {
            Err(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() =>
            {
                self.eval_once(key, cost).await
            }
            r => r,
        }
    }

    async fn eval_once(&self, key: &[u8], cost: u64) -> redis::RedisResult<[i64; 6]> {
        let mut conn = self.connection()?;
        let p = &self.params.load();
        // cost <= burst, so cost × interval <= span < 2^62.
        let inc = cost * p.interval;
        let mut call = self.script.prepare_invoke();
        call.key(key)
            .arg(inc / NANOS)
            .arg(inc % NANOS)
            .arg(p.span / NANOS)
            .arg(p.span % NANOS)
            .arg(p.interval);
        let (allowed, retry_s, retry_n, remaining, reset_s, reset_n): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = call.invoke_async(&mut conn).await?;
        Ok([allowed, retry_s, retry_n, remaining, reset_s, reset_n])
    }

    fn redis_decided(&self, key: &[u8], cost: u64, start: u64, r: [i64; 6]) -> Decided {
        let pair = |s: i64, n: i64| {
            u64::try_from(s)
                .unwrap_or(0)
                .saturating_mul(NANOS)
                .saturating_add(u64::try_from(n).unwrap_or(0))
        };
        let levels = Levels {
            remaining: u64::try_from(r[3]).unwrap_or(0),
            reset: pair(r[4], r[5]),
        };
        if r[0] == 1 {
            return Decided {
                backend: Backend::Redis,
                outcome: Ok(Some(levels)),
            };
        }
        let retry = pair(r[1], r[2]);
        if let Some(map) = &self.precheck {
            // When a call of cost 1 could pass, counted from before the
            // round trip: never later than Redis' own instant.
            let free = retry.saturating_sub((cost - 1) * self.params.load().interval);
            let until = start.saturating_add(free);
            let now = self.time.now();
            let generation = self.rate_generation.load(Acquire);
            if until > now {
                map.with_entry(
                    key.to_vec(),
                    self.time.instant(now),
                    |_| (until, generation),
                    |u| u.0 <= now,
                    |u| {
                        if u.1 == generation {
                            u.0 = u.0.max(until);
                        } else {
                            *u = (until, generation);
                        }
                    },
                );
            }
        }
        Decided {
            backend: Backend::Redis,
            outcome: Err(Denied {
                reason: RejectReason::Exhausted,
                retry_after: Some(retry),
                levels: Some(levels),
            }),
        }
    }

    /// The outage policy's decision.
    fn outage(&self, key: &[u8], cost: u64) -> Decided {
        let now = self.time.now();
        let p = &self.params.load();
        match self.outage_policy {
            OutagePolicy::FailOpen => Decided {
                backend: Backend::OutagePolicy,
                outcome: Ok(None),
            },
            OutagePolicy::FailClosed => Decided {
                backend: Backend::OutagePolicy,
                outcome: Err(Denied {
                    reason: RejectReason::BackendUnavailable,
                    retry_after: Some(self.retry_at.load(Acquire).saturating_sub(now).max(1)),
                    levels: None,
                }),
            },
            OutagePolicy::FallbackLocal => {
                let (verdict, levels) = match &self.fallback {
                    Fallback::Global(limiter) => {
                        let v = limiter.acquire(p, now, cost, 0);
                        (Some(v), limiter.levels(p, now))
                    }
                    Fallback::Keyed(map) => {
                        let out = map.with_entry(
                            key.to_vec(),
                            self.time.instant(now),
                            |_| 0,
                            |tat| *tat <= now,
                            |tat| {
                                let v = match p.gcra(*tat, now, cost, 0) {
                                    Ok(new) => {
                                        *tat = new;
                                        Verdict::Allow
                                    }
                                    Err(wait) => Verdict::Deny(wait),
                                };
                                (v, p.gcra_levels(*tat, now))
                            },
                        );
                        match out {
                            Some((v, levels)) => (Some(v), levels),
                            None => (
                                None,
                                Levels {
                                    remaining: 0,
                                    reset: 0,
                                },
                            ),
                        }
                    }
                };
                let outcome = match verdict {
                    Some(Verdict::Allow) => Ok(Some(levels)),
                    Some(Verdict::Deny(wait)) => Err(Denied {
                        reason: if wait.is_some() {
                            RejectReason::Exhausted
                        } else {
                            RejectReason::OverCapacity
                        },
                        retry_after: wait,
                        levels: Some(levels),
                    }),
                    None => Err(Denied {
                        reason: RejectReason::KeysFull,
                        retry_after: None,
                        levels: None,
                    }),
                };
                Decided {
                    backend: Backend::LocalFallback,
                    outcome,
                }
            }
        }
    }

    /// Counts a decision, tells the listeners, and builds the rejection.
    fn finish(&self, cost: u64, d: Decided) -> Result<(), BoxError> {
        self.last_backend.store(backend_code(d.backend), Relaxed);
        let c = &self.counts;
        match d.backend {
            Backend::LocalFallback => c.fallback.fetch_add(1, Relaxed),
            Backend::OutagePolicy => c.policy.fetch_add(1, Relaxed),
            _ => 0,
        };
        match d.outcome {
            Ok(_) => {
                c.permitted.fetch_add(1, Relaxed);
                self.policy.emit_permitted(cost, Duration::ZERO, d.backend);
                Ok(())
            }
            Err(denied) => Err(self.reject(cost, d.backend, denied)),
        }
    }

    /// Counts a rejection, tells the listeners, and builds the error.
    fn reject(&self, cost: u64, backend: Backend, denied: Denied) -> BoxError {
        self.last_backend.store(backend_code(backend), Relaxed);
        self.counts.rejected.fetch_add(1, Relaxed);
        self.policy
            .emit_rejected(cost, denied.reason, denied.retry_after, backend);
        let retry_after = denied.retry_after.map(Duration::from_nanos);
        let mut err = RateLimited::new(self.policy.name.clone(), retry_after);
        if let Some(levels) = denied.levels {
            let mut levels = levels;
            // `t` of the `RateLimit` header says when this client
            // may come back, as `Retry-After` does.
            if let Some(wait) = denied.retry_after {
                levels.reset = wait;
            }
            err = err.with_quota(quota(&self.policy.name, &self.params.load(), levels));
        }
        err.into()
    }
}
