//! One limit per key: per client IP, per API key, per tenant.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, KeyMissing};
use buttress_core::key::{BoundedMap, MissingKey, MissingKeys};
use buttress_core::registry::Component;
use buttress_core::{ConfigError, KeyExtractor, Quota};
use tower_layer::Layer;
use tower_service::Service;

use crate::algorithm::{Algorithm, Levels, Params, State, Verdict};
use crate::config::RateLimitConfig;
use crate::events::{Backend, RejectReason};
use crate::future::{
    poll_below, reject, release, wait_or_reject, Decide, Decision, ResponseFuture,
};
use crate::headers::{Headers, NoHeaders, WithHeaders};
use crate::layer::{common_setters, Common, RateLimitSnapshot};
use crate::limiter::{quota, Limiter, Policy, TimeSource};
use crate::params::ParamCell;
use crate::queue::Queue;
use crate::rate::Rate;
use crate::service::Weigh;
use crate::weigh::{Cost, CostFn, Priority, PriorityFn, Unit};
use crate::KIND;

const KEYED_KIND: &str = "keyed_rate_limit";

/// The keys' states: GCRA keeps one `u64` per key, the others a small
/// enum.
enum Store<K> {
    Gcra(BoundedMap<K, u64>),
    Other(BoundedMap<K, State>),
}

/// A key of the keyed limiter: a request's key, or the one shared by
/// requests without a key (with [`MissingKey::SharedBucket`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Slot<K> {
    Key(K),
    Unkeyed,
}

pub struct KeyedShared<K> {
    params: ParamCell,
    store: Store<K>,
    /// The state of requests without a key, with `SharedBucket`.
    unkeyed: spin::mutex::SpinMutex<State, spin::relax::Yield>,
    time: TimeSource,
    policy: Policy,
    queue: Arc<Queue<Slot<K>>>,
    missing: MissingKeys,
    /// A limit on every request together, checked with the key's.
    global: Option<Arc<Limiter>>,
    rejected: AtomicU64,
    keys_full: AtomicU64,
}

/// Limiter time (nanoseconds since the map's base) as the map takes it.
fn nanos_i64(now: u64) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX)
}

impl<K> fmt::Debug for KeyedShared<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("name", &self.policy.name)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedShared<K> {
    /// Takes `cost` permits of `slot` (and of the global limit, if any: both
    /// or neither).
    fn acquire(&self, slot: &Slot<K>, now: u64, cost: u64, priority: u8) -> Decision {
        let p = self.params.load();
        let keep = self.policy.keep(priority, &p);
        let global = self.global.as_deref().map(|g| {
            let gp = g.params.load();
            (g, gp, g.policy.keep(priority, &gp))
        });
        // Takes the global permits once the key's are known to be there;
        // the key's state is only changed if they are.
        let take_global = |verdict: Verdict| -> Verdict {
            match (&verdict, &global) {
                (Verdict::Allow, Some((g, gp, gkeep))) => {
                    let v = g.acquire(gp, now, cost, *gkeep);
                    // The global limit's own counts (its snapshot and
                    // registry entry) see every call it decided.
                    if v != Verdict::Allow {
                        g.count_rejected();
                    }
                    v
                }
                _ => verdict,
            }
        };
        let key = match slot {
            Slot::Key(k) => k,
            Slot::Unkeyed => {
                let mut state = self.unkeyed.lock();
                let mut next = state.clone();
                let v = take_global(next.acquire(&p, now, cost, keep));
                if v == Verdict::Allow {
                    *state = next;
                }
                return v.into();
            }
        };
        let out = match &self.store {
            Store::Gcra(map) => map.with_entry_nanos(
                key.clone(),
                nanos_i64(now),
                |_| 0,
                |tat| *tat <= now,
                |tat| match p.gcra(*tat, now, cost, keep) {
                    Ok(new) => {
                        let v = take_global(Verdict::Allow);
                        if v == Verdict::Allow {
                            *tat = new;
                        }
                        v
                    }
                    Err(wait) => Verdict::Deny(wait),
                },
            ),
            Store::Other(map) => map.with_entry_nanos(
                key.clone(),
                nanos_i64(now),
                |_| State::new(&p, now),
                |s| s.is_full(&p, now),
                |s| {
                    if global.is_none() {
                        return s.acquire(&p, now, cost, keep);
                    }
                    let mut next = s.clone();
                    let v = take_global(next.acquire(&p, now, cost, keep));
                    if v == Verdict::Allow {
                        *s = next;
                    }
                    v
                },
            ),
        };
        match out {
            Some(v) => v.into(),
            None => Decision::KeysFull,
        }
    }

    fn levels(&self, slot: &Slot<K>, p: &Params, now: u64) -> Levels {
        let full = Levels {
            remaining: p.capacity(),
            reset: 0,
        };
        match slot {
            Slot::Unkeyed => self.unkeyed.lock().levels(p, now),
            Slot::Key(k) => match &self.store {
                Store::Gcra(map) => map.get(k).map_or(full, |tat| p.gcra_levels(tat, now)),
                Store::Other(map) => map.get(k).map_or(full, |s| s.levels(p, now)),
            },
        }
    }

    fn len(&self) -> usize {
        match &self.store {
            Store::Gcra(map) => map.len(),
            Store::Other(map) => map.len(),
        }
    }

    fn max_keys(&self) -> usize {
        match &self.store {
            Store::Gcra(map) => map.max_keys(),
            Store::Other(map) => map.max_keys(),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Decide for KeyedShared<K> {
    type Key = Slot<K>;

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn time(&self) -> &TimeSource {
        &self.time
    }

    fn queue(&self) -> &Arc<Queue<Slot<K>>> {
        &self.queue
    }

    #[inline]
    fn decide(&self, key: &Slot<K>, now: u64, cost: u64, priority: u8) -> Decision {
        self.acquire(key, now, cost, priority)
    }

    fn quota(&self, key: &Slot<K>, now: u64) -> Quota {
        let p = self.params.load();
        quota(&self.policy.name, &p, self.levels(key, &p, now))
    }

    fn count_rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }
}

/// One limit per key, the key taken from each request by a
/// [`KeyExtractor`] (client IP behind trusted proxies, header, extension,
/// closure), optionally with a global limit on all requests together.
///
/// **Memory.** Keys live in a bounded map ([`max_keys`](KeyedRateLimitBuilder::max_keys),
/// default 100 000). A key is evicted only to make room for a new one, and
/// only once its state is back to full (its limiter would decide exactly
/// as a new one) and it has been unused for
/// [`idle_timeout`](KeyedRateLimitBuilder::idle_timeout): eviction never
/// resets a key that is still limited. When no key can go, a request with
/// a new key is rejected ([`RejectReason::KeysFull`]) rather than growing
/// memory, so a client rotating keys cannot exhaust it. With GCRA, a key
/// costs its key, 8 bytes of state and 8 of last use, in a table at most
/// half empty.
///
/// **Missing keys.** A request whose key the extractor cannot find is
/// rejected with [`KeyMissing`] by default ([`MissingKey`]): never a
/// silent shared bucket. With [`MissingKey::SharedBucket`] such requests
/// share one explicit limit with the per-key numbers.
///
/// **Global and per key at once.** With
/// [`global`](KeyedRateLimitBuilder::global), a call takes its permits
/// from its key and from the global limit, both or neither: a request the
/// global limit refuses leaves its key's permits untouched.
///
/// ```
/// use buttress_rate_limit::{KeyedRateLimitLayer, Rate};
/// use buttress_core::key::Header;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = KeyedRateLimitLayer::builder(Header::new(http::HeaderName::from_static("x-api-key")), Rate::per_minute(1))
///     .name("per-key")
///     .build()
///     .unwrap();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>("ok") });
/// let req = |key: &str| http::Request::builder().header("x-api-key", key).body(()).unwrap();
/// assert_eq!(svc.ready().await.unwrap().call(req("alice")).await.unwrap(), "ok");
/// assert!(svc.ready().await.unwrap().call(req("alice")).await.is_err());
/// // Another key has its own limit.
/// assert_eq!(svc.ready().await.unwrap().call(req("bob")).await.unwrap(), "ok");
/// assert_eq!(layer.handle().keys(), 2);
/// # }
/// ```
pub struct KeyedRateLimitLayer<X, K, C = Unit, P = Unit, H = NoHeaders> {
    extractor: Arc<X>,
    shared: Arc<KeyedShared<K>>,
    weigh: Arc<Weigh<C, P>>,
    _headers: PhantomData<fn() -> H>,
}

impl<X, K, C, P, H> Clone for KeyedRateLimitLayer<X, K, C, P, H> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
            weigh: self.weigh.clone(),
            _headers: PhantomData,
        }
    }
}

impl<X, K, C, P, H> fmt::Debug for KeyedRateLimitLayer<X, K, C, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("name", &self.shared.policy.name)
            .field("algorithm", &self.shared.params.algorithm())
            .finish_non_exhaustive()
    }
}

impl<X> KeyedRateLimitLayer<X, ()> {
    /// A builder keyed by `extractor`, each key limited to `rate`.
    pub fn builder(extractor: X, rate: Rate) -> KeyedRateLimitBuilder<X> {
        KeyedRateLimitBuilder {
            extractor,
            common: Common::new(rate),
            max_keys: 100_000,
            idle_timeout: Duration::from_secs(60),
            on_missing_key: MissingKey::Reject,
            global: None,
            weigh: Weigh {
                cost: Unit,
                priority: Unit,
            },
            _headers: PhantomData,
        }
    }
}

impl<X, K, C, P, H> KeyedRateLimitLayer<X, K, C, P, H> {
    /// A handle to observe the keyed limiter and change its rate.
    pub fn handle(&self) -> KeyedRateLimitHandle<K> {
        KeyedRateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, X, K, C, P, H> Layer<S> for KeyedRateLimitLayer<X, K, C, P, H> {
    type Service = KeyedRateLimit<S, X, K, C, P, H>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
            weigh: self.weigh.clone(),
            ready: false,
            _headers: PhantomData,
        }
    }
}

/// Builds a [`KeyedRateLimitLayer`].
pub struct KeyedRateLimitBuilder<X, C = Unit, P = Unit, H = NoHeaders> {
    extractor: X,
    common: Common,
    max_keys: usize,
    idle_timeout: Duration,
    on_missing_key: MissingKey,
    global: Option<(Rate, Option<u64>)>,
    weigh: Weigh<C, P>,
    _headers: PhantomData<fn() -> H>,
}

impl<X, C, P, H> fmt::Debug for KeyedRateLimitBuilder<X, C, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitBuilder")
            .field("name", &self.common.name)
            .field("rate", &self.common.rate)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<X, C, P, H> KeyedRateLimitBuilder<X, C, P, H> {
    common_setters!();

    pub(crate) fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }

    /// Keys kept at most (default 100 000; at least 1).
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    /// How long a key must be unused before it may be evicted (default
    /// 60 s); a key is evicted only when its state is back to full anyway.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// What to do with a request whose key cannot be extracted (default
    /// [`MissingKey::Reject`]).
    pub fn on_missing_key(mut self, policy: MissingKey) -> Self {
        self.on_missing_key = policy;
        self
    }

    /// Also limits all requests together to `rate` (with `burst`, `None`
    /// for the rate's permits), with the same algorithm: a call takes its
    /// key's permits and the global ones, both or neither.
    pub fn global(mut self, rate: Rate, burst: Option<u64>) -> Self {
        self.global = Some((rate, burst));
        self
    }

    /// Takes the cost of each request from `f` (see
    /// [`RateLimitBuilder::cost`](crate::RateLimitBuilder::cost)).
    pub fn cost<F>(self, f: F) -> KeyedRateLimitBuilder<X, CostFn<F>, P, H> {
        KeyedRateLimitBuilder {
            extractor: self.extractor,
            common: self.common,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            on_missing_key: self.on_missing_key,
            global: self.global,
            weigh: Weigh {
                cost: CostFn(f),
                priority: self.weigh.priority,
            },
            _headers: PhantomData,
        }
    }

    /// Takes the priority of each request from `f`.
    pub fn priority<F>(self, f: F) -> KeyedRateLimitBuilder<X, C, PriorityFn<F>, H> {
        KeyedRateLimitBuilder {
            extractor: self.extractor,
            common: self.common,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            on_missing_key: self.on_missing_key,
            global: self.global,
            weigh: Weigh {
                cost: self.weigh.cost,
                priority: PriorityFn(f),
            },
            _headers: PhantomData,
        }
    }

    /// Adds the `RateLimit-Policy` and `RateLimit` headers (of the
    /// request's key) to every `http::Response`.
    pub fn response_headers(self) -> KeyedRateLimitBuilder<X, C, P, WithHeaders> {
        KeyedRateLimitBuilder {
            extractor: self.extractor,
            common: self.common,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            on_missing_key: self.on_missing_key,
            global: self.global,
            weigh: self.weigh,
            _headers: PhantomData,
        }
    }

    /// Validates and builds the layer. The key type `K` is the extractor's
    /// key for the request type the layer is used with.
    pub fn build<K>(self) -> Result<KeyedRateLimitLayer<X, K, C, P, H>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        let (params, policy) = self.common.validate()?;
        if self.max_keys == 0 {
            return Err(ConfigError::new(KIND, "max_keys", "must be at least 1"));
        }
        let store = match params.algorithm {
            Algorithm::Gcra => Store::Gcra(BoundedMap::new(self.max_keys, self.idle_timeout)),
            _ => Store::Other(BoundedMap::new(self.max_keys, self.idle_timeout)),
        };
        // The map's time is the limiter's: no conversion per call.
        let base = match &store {
            Store::Gcra(map) => map.base(),
            Store::Other(map) => map.base(),
        };
        let time = TimeSource::with_base(base, self.common.resolution);
        let global = match self.global {
            None => None,
            Some((rate, burst)) => {
                let gp = Params::new(params.algorithm, rate, burst)
                    .map_err(|e| ConfigError::new(KIND, "global", e.reason().to_owned()))?;
                Some(Arc::new(Limiter::new(gp, time.clone(), policy.clone())))
            }
        };
        let now = time.now();
        let layer = KeyedRateLimitLayer {
            extractor: Arc::new(self.extractor),
            shared: Arc::new(KeyedShared {
                unkeyed: spin::mutex::SpinMutex::new(State::new(&params, now)),
                params: ParamCell::new(params),
                store,
                time,
                policy,
                queue: Arc::new(Queue::new()),
                missing: MissingKeys::new(self.on_missing_key, std::any::type_name::<X>()),
                global,
                rejected: AtomicU64::new(0),
                keys_full: AtomicU64::new(0),
            }),
            weigh: Arc::new(self.weigh),
            _headers: PhantomData,
        };
        self.common.register(layer.handle())?;
        Ok(layer)
    }
}

/// The service of [`KeyedRateLimitLayer`]; see
/// [`RateLimit`](crate::RateLimit) for how it decides and waits.
pub struct KeyedRateLimit<S, X, K, C, P, H> {
    inner: S,
    extractor: Arc<X>,
    shared: Arc<KeyedShared<K>>,
    weigh: Arc<Weigh<C, P>>,
    /// Whether `poll_ready` left `inner` ready (see
    /// `future::poll_below`).
    ready: bool,
    _headers: PhantomData<fn() -> H>,
}

impl<S: Clone, X, K, C, P, H> Clone for KeyedRateLimit<S, X, K, C, P, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
            weigh: self.weigh.clone(),
            ready: false,
            _headers: PhantomData,
        }
    }
}

impl<S: fmt::Debug, X, K, C, P, H> fmt::Debug for KeyedRateLimit<S, X, K, C, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.policy.name)
            .finish()
    }
}

impl<S, X, K, C, P, H, Req> Service<Req> for KeyedRateLimit<S, X, K, C, P, H>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Req, Key = K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Cost<Req>,
    P: Priority<Req>,
    H: Headers<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, KeyedShared<K>, H>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        poll_below(&mut self.inner, &mut self.ready, cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let future = self.decide(req);
        // Refused or queued: nothing reserved below is held meanwhile.
        if self.ready {
            release(&mut self.inner, &mut self.ready);
        }
        future
    }
}

impl<S, X, K, C, P, H> KeyedRateLimit<S, X, K, C, P, H> {
    /// The call's future: made on the ready service below when admitted
    /// (which clears `ready`), else refused or queued.
    #[inline]
    fn decide<Req>(&mut self, req: Req) -> ResponseFuture<S, Req, KeyedShared<K>, H>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
        X: KeyExtractor<Req, Key = K>,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        C: Cost<Req>,
        P: Priority<Req>,
        H: Headers<S::Response>,
    {
        let shared = &*self.shared;
        let slot = match self.extractor.extract(&req) {
            Some(key) => Slot::Key(key),
            None => match shared.missing.note(&shared.policy.name) {
                MissingKey::SharedBucket => Slot::Unkeyed,
                // `Reject`, and any policy added later: the safe one.
                _ => {
                    return ResponseFuture::rejected(
                        KeyMissing::new(shared.policy.name.clone(), shared.missing.extractor())
                            .into(),
                    )
                }
            },
        };
        let cost = self.weigh.cost.cost(&req);
        let policy = &shared.policy;
        let mut priority = 0;
        if policy.uses_priority {
            priority = self.weigh.priority.priority(&req);
        }
        let now = shared.time.now();
        // Nobody can wait without a queue: no need to look at it.
        let denied = if !policy.can_wait || shared.queue.len() == 0 {
            match shared.acquire(&slot, now, cost, priority) {
                Decision::Allow => {
                    policy.emit_permitted(cost, Duration::ZERO, Backend::Local);
                    let quota = H::keep(|| shared.quota(&slot, now));
                    if std::mem::take(&mut self.ready) {
                        return ResponseFuture::called(self.inner.call(req), quota);
                    }
                    return ResponseFuture::readying(self.inner.clone(), req, quota);
                }
                Decision::Deny(wait) => wait,
                Decision::KeysFull => {
                    shared.keys_full.fetch_add(1, Relaxed);
                    return ResponseFuture::rejected(reject(
                        shared,
                        &slot,
                        now,
                        cost,
                        RejectReason::KeysFull,
                        None,
                    ));
                }
            }
        } else {
            Some(0)
        };
        wait_or_reject(
            &self.shared,
            &mut self.inner,
            req,
            slot,
            now,
            cost,
            priority,
            denied,
        )
    }
}

/// A keyed limiter's state, as [`KeyedRateLimitHandle::snapshot`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct KeyedRateLimitSnapshot {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Each key's rate.
    pub rate_per_key: Rate,
    /// Each key's burst.
    pub burst_per_key: u64,
    /// Keys held now.
    pub keys: usize,
    /// The most keys held.
    pub max_keys: usize,
    /// Calls waiting, over every key.
    pub waiting: usize,
    /// Calls rejected, over every key (those without a key excepted).
    pub rejected: u64,
    /// Calls with a new key rejected because no key could be evicted
    /// (also in `rejected`).
    pub rejected_keys_full: u64,
    /// Requests without a key, whatever the policy did with them.
    pub missing_key: u64,
    /// The global limit, if one is set.
    pub global: Option<RateLimitSnapshot>,
}

/// Observes a keyed limiter and changes its rate at run time.
pub struct KeyedRateLimitHandle<K> {
    shared: Arc<KeyedShared<K>>,
}

impl<K> Clone for KeyedRateLimitHandle<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedRateLimitHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitHandle")
            .field("name", &self.shared.policy.name)
            .finish()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedRateLimitHandle<K> {
    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.policy.name
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.shared.len()
    }

    /// The most keys held.
    pub fn max_keys(&self) -> usize {
        self.shared.max_keys()
    }

    /// The state of one key (a key not held is full).
    pub fn key(&self, key: &K) -> RateLimitSnapshot {
        self.snapshot_of(&Slot::Key(key.clone()))
    }

    /// The state of the limit shared by requests without a key (with
    /// [`MissingKey::SharedBucket`]).
    pub fn unkeyed(&self) -> RateLimitSnapshot {
        self.snapshot_of(&Slot::Unkeyed)
    }

    fn snapshot_of(&self, slot: &Slot<K>) -> RateLimitSnapshot {
        let s = &self.shared;
        let p = s.params.load_full();
        let levels = s.levels(slot, &p, s.time.now());
        RateLimitSnapshot {
            algorithm: p.algorithm,
            rate: p.rate,
            burst: p.burst,
            available: levels.remaining,
            reset: Duration::from_nanos(levels.reset),
            waiting: s.queue.len_of(slot),
            rejected: s.rejected.load(Relaxed),
            backend: Backend::Local,
        }
    }

    /// The global limit's handle, if one is set.
    pub fn global(&self) -> Option<crate::RateLimitHandle> {
        self.shared
            .global
            .clone()
            .map(crate::RateLimitHandle::from_shared)
    }

    /// The whole keyed limiter at a glance (serde-serializable).
    ///
    /// ```
    /// use buttress_rate_limit::{KeyedRateLimitLayer, Rate};
    /// use buttress_core::key::FnKey;
    ///
    /// let by_id: FnKey<_, u32> = FnKey::new(|r: &u32| Some(*r));
    /// let layer = KeyedRateLimitLayer::builder(by_id, Rate::per_second(5))
    ///     .max_keys(1000)
    ///     .build::<u32>()
    ///     .unwrap();
    /// let s = layer.handle().snapshot();
    /// assert_eq!((s.keys, s.max_keys, s.burst_per_key), (0, 1000, 5));
    /// ```
    pub fn snapshot(&self) -> KeyedRateLimitSnapshot {
        let p = self.shared.params.load_full();
        let rejected = self.rejected();
        KeyedRateLimitSnapshot {
            algorithm: p.algorithm,
            rate_per_key: p.rate,
            burst_per_key: p.burst,
            keys: self.keys(),
            max_keys: self.max_keys(),
            waiting: self.waiting(),
            rejected,
            rejected_keys_full: self.keys_full_rejections(),
            missing_key: self.missing_key(),
            global: self.global().map(|g| g.snapshot()),
        }
    }

    /// Calls rejected, over every key (those without a key excepted).
    /// Admitted calls are not counted (see
    /// [`RateLimitSnapshot`]): a listener of `Permitted` events counts
    /// them when wanted.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Relaxed)
    }

    /// Calls waiting, over every key.
    pub fn waiting(&self) -> usize {
        self.shared.queue.len()
    }

    /// Requests without a key, whatever the policy did with them.
    pub fn missing_key(&self) -> u64 {
        self.shared.missing.count()
    }

    /// Requests with a new key rejected because no key could be evicted.
    pub fn keys_full_rejections(&self) -> u64 {
        self.shared.keys_full.load(Relaxed)
    }

    /// Changes every key's rate and burst for its next decision (see
    /// [`RateLimitHandle::set_rate`](crate::RateLimitHandle::set_rate)).
    pub fn set_rate(&self, rate: Rate, burst: Option<u64>) -> Result<(), ConfigError> {
        let p = Params::new(self.shared.params.algorithm(), rate, burst)?;
        self.shared.params.store(p);
        Ok(())
    }

    /// Applies `config` to every key's numbers, the keys held now and the
    /// ones added later (they share one set of numbers), with the rules of
    /// [`RateLimitHandle::reconfigure`](crate::RateLimitHandle::reconfigure):
    /// validated as [`RateLimitConfig::build`] validates it; `rate` and
    /// `burst` live; `name`, `algorithm`, `max_wait`, `max_queue` and
    /// `resolution` refused when different; nothing changed on an error.
    /// The optional global limit
    /// ([`KeyedRateLimitBuilder::global`]) is not part of a
    /// `RateLimitConfig`: change it through [`global`](Self::global).
    ///
    /// ```
    /// use buttress_rate_limit::{KeyedRateLimitLayer, Rate, RateLimitConfig};
    /// use buttress_core::key::PeerAddr;
    ///
    /// let config = RateLimitConfig::new(Rate::per_second(5));
    /// let layer = config
    ///     .apply_keyed(KeyedRateLimitLayer::builder(PeerAddr, config.rate))
    ///     .build::<std::net::IpAddr>()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// let new = RateLimitConfig { burst: Some(20), ..config.clone() };
    /// handle.reconfigure(&new).unwrap();
    /// assert_eq!(handle.config(), new);
    /// ```
    pub fn reconfigure(&self, config: &RateLimitConfig) -> Result<(), ConfigError> {
        let s = &self.shared;
        crate::config::reconfigure(config, &s.params, &s.policy, &s.time)
    }

    /// What [`reconfigure`](Self::reconfigure) would answer, without
    /// applying anything (see
    /// [`RateLimitHandle::check_reconfigure`](crate::RateLimitHandle::check_reconfigure)).
    pub fn check_reconfigure(&self, config: &RateLimitConfig) -> Result<(), ConfigError> {
        let s = &self.shared;
        crate::config::check(config, &s.params, &s.policy, &s.time).map(|_| ())
    }

    /// The current per-key settings, as a [`RateLimitConfig`] (see
    /// [`RateLimitHandle::config`](crate::RateLimitHandle::config)).
    pub fn config(&self) -> RateLimitConfig {
        let s = &self.shared;
        crate::config::current(&s.params, &s.policy, &s.time)
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Component for KeyedRateLimitHandle<K> {
    fn name(&self) -> &str {
        &self.shared.policy.name
    }

    fn kind(&self) -> &'static str {
        KEYED_KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = KeyedRateLimitHandle::snapshot(self);
        serde_json::json!({
            "algorithm": s.algorithm.as_str(),
            "rate_per_key": s.rate_per_key.to_string(),
            "burst_per_key": s.burst_per_key,
            "keys": s.keys,
            "max_keys": s.max_keys,
            "waiting": s.waiting,
            "rejected": s.rejected,
            "rejected_keys_full": s.rejected_keys_full,
            "missing_key": s.missing_key,
            "on_missing_key": self.shared.missing.policy().as_str(),
            "backend": Backend::Local.as_str(),
            "global": self.global().map(|g| Component::snapshot(&g)),
        })
    }

    fn reset(&self) {
        self.shared.rejected.store(0, Relaxed);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
