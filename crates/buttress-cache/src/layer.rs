use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::registry::Component;
use buttress_core::{ConfigError, HttpClassifier, Listener, Listeners, Registry};
use http::HeaderName;
use tower_layer::Layer;

use crate::error::StoreError;
use crate::events::CacheEvent;
use crate::http::{CacheStatus, CachedResponse, Markers, Rules};
use crate::key::{CacheKey, Credentials, HttpKeyer};
use crate::service::{ByKey, Cache, HttpPolicy, Policy};
use crate::shared::{Backend, CacheSnapshot, Counters, Shared, Weigher};
use crate::store::{Entry, Memory};

pub(crate) const KIND: &str = "cache";
/// The default ttl.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// The default entry bound when no bound is given.
pub(crate) const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// The default largest HTTP body stored.
pub(crate) const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Cache-aside for a tower service. Every service made by one layer (and
/// every clone of them) shares one store, one set of calls in flight and
/// one handle.
///
/// Two kinds: [`CacheLayer::builder`] keys requests with a function and
/// stores the inner service's responses themselves (they must be
/// `Clone`); [`CacheLayer::http`] caches HTTP responses by method, URI
/// and chosen headers, following `Cache-Control`.
///
/// ```
/// use buttress_cache::CacheLayer;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CacheLayer::builder(|id: &u32| Some(*id))
///     .name("users")
///     .ttl(Duration::from_secs(30))
///     .max_entries(1_000)
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|id: u32| async move { Ok::<_, std::convert::Infallible>(format!("user {id}")) });
/// assert_eq!(svc.clone().oneshot(7).await.unwrap(), "user 7");
/// assert_eq!(svc.oneshot(7).await.unwrap(), "user 7"); // from the cache
/// let s = layer.handle().snapshot();
/// assert_eq!((s.hits, s.misses), (1, 1));
/// # }
/// ```
pub struct CacheLayer<P: Policy> {
    shared: Arc<Shared<P::Key, P::Value>>,
    policy: Arc<P>,
}

impl<P: Policy> Clone for CacheLayer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<P: Policy + fmt::Debug> fmt::Debug for CacheLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("shared", &self.shared)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<P: Policy> CacheLayer<P> {
    /// The handle: snapshot, invalidation, warming.
    pub fn handle(&self) -> CacheHandle<P::Key, P::Value> {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<F, K, V> CacheLayer<ByKey<F, K, V>>
where
    F: Send + Sync + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    /// A builder for a cache keyed by `key`: a request for which it
    /// returns `None` passes through (not looked up, not stored).
    pub fn builder<Req>(key: F) -> CacheBuilder<F, K, V>
    where
        F: Fn(&Req) -> Option<K>,
    {
        CacheBuilder {
            common: Common::default(),
            key,
            cache_if: None,
            ttl_of: None,
            mark: None,
            weigher: None,
            #[cfg(feature = "redis")]
            codec: None,
            _types: PhantomData,
        }
    }
}

impl CacheLayer<HttpPolicy> {
    /// A builder for an HTTP cache (see [`HttpCacheBuilder`]).
    pub fn http() -> HttpCacheBuilder {
        HttpCacheBuilder {
            common: Common::default(),
            vary: Vec::new(),
            credentials: Credentials::Bypass,
            classifier: HttpClassifier::new(),
            max_body: DEFAULT_MAX_BODY,
            respect_max_age: true,
            markers: Markers {
                age: true,
                warning: true,
            },
            invalidate_on_unsafe: true,
            invalid_vary: None,
        }
    }
}

impl<S, P: Policy> Layer<S> for CacheLayer<P> {
    type Service = Cache<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::new(inner, self.shared.clone(), self.policy.clone())
    }
}

/// What both builders share.
pub(crate) struct Common {
    pub(crate) name: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) max_stale: Duration,
    pub(crate) revalidate: bool,
    pub(crate) max_entries: Option<u64>,
    pub(crate) max_weight: Option<u64>,
    pub(crate) registry: Option<Registry>,
    pub(crate) listeners: Listeners<CacheEvent>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: bool,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::redis::RedisOptions>,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            name: Arc::from(KIND),
            ttl: DEFAULT_TTL,
            max_stale: Duration::ZERO,
            revalidate: false,
            max_entries: None,
            max_weight: None,
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("max_stale", &self.max_stale)
            .field("revalidate", &self.revalidate)
            .field("max_entries", &self.max_entries)
            .field("max_weight", &self.max_weight)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

/// A redis store's value codec, fixed when the builder is given Redis.
pub(crate) type Codec<V> = (fn(&V, &mut Vec<u8>), fn(&[u8]) -> Option<V>);

impl Common {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(KIND, "name", "must not be empty"));
        }
        if self.ttl.is_zero() {
            return Err(ConfigError::new(
                KIND,
                "ttl",
                "must be above zero (a cache that stores nothing is no cache)",
            ));
        }
        if self.max_entries == Some(0) {
            return Err(ConfigError::new(KIND, "max_entries", "must be at least 1"));
        }
        if self.max_weight == Some(0) {
            return Err(ConfigError::new(KIND, "max_weight", "must be at least 1"));
        }
        if self.revalidate && self.max_stale.is_zero() {
            return Err(ConfigError::new(
                KIND,
                "stale_while_revalidate",
                "needs a max_stale above zero: no entry is ever stale otherwise",
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(r) = &self.redis {
            r.validate()?;
        }
        Ok(())
    }

    #[allow(unused_variables)]
    fn build<K: CacheKey, V: Clone + Send + Sync + 'static>(
        self,
        weigher: Weigher<K, V>,
        codec: Option<Codec<V>>,
    ) -> Result<Arc<Shared<K, V>>, ConfigError> {
        self.validate()?;
        #[allow(unused_mut)]
        let mut listeners = self.listeners;
        #[cfg(feature = "metrics")]
        crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
        );
        let counters = Arc::new(Counters::default());
        #[cfg(feature = "redis")]
        let backend = match (self.redis, codec) {
            (Some(options), Some((encode, decode))) => Backend::Redis(
                crate::redis::RedisStore::new(options, &self.name, encode, decode)
                    .map_err(|e| ConfigError::new(KIND, "redis", e))?,
            ),
            _ => Backend::Memory(memory(
                &self.name,
                self.max_entries,
                self.max_weight,
                weigher.clone(),
                counters.clone(),
                listeners.clone(),
            )),
        };
        #[cfg(not(feature = "redis"))]
        let backend = Backend::Memory(memory(
            &self.name,
            self.max_entries,
            self.max_weight,
            weigher.clone(),
            counters.clone(),
            listeners.clone(),
        ));
        let shared = Arc::new(Shared::new(
            self.name,
            self.ttl,
            self.max_stale,
            self.revalidate,
            self.max_weight,
            backend,
            weigher,
            counters,
            listeners,
        ));
        if let Some(registry) = &self.registry {
            registry
                .register(CacheHandle {
                    shared: shared.clone(),
                })
                .map_err(|e| ConfigError::new(KIND, "name", e.to_string()))?;
        }
        Ok(shared)
    }
}

fn memory<K: CacheKey, V: Clone + Send + Sync + 'static>(
    name: &Arc<str>,
    max_entries: Option<u64>,
    max_weight: Option<u64>,
    weigher: Weigher<K, V>,
    counters: Arc<Counters>,
    listeners: Listeners<CacheEvent>,
) -> Memory<K, V> {
    let mut b = moka::sync::Cache::builder()
        .name(name)
        .support_invalidation_closures();
    match (max_entries, max_weight) {
        (Some(entries), Some(weight)) => {
            // One bound in moka: the weight. Charging every entry at least
            // an average slot (weight / entries) keeps the entry count
            // within its bound too.
            let floor = u32::try_from(weight.div_ceil(entries))
                .unwrap_or(u32::MAX)
                .max(1);
            b = b
                .max_capacity(weight)
                .weigher(move |_k: &K, e: &Arc<Entry<V>>| e.weight.max(floor));
        }
        (None, Some(weight)) => {
            b = b
                .max_capacity(weight)
                .weigher(|_k: &K, e: &Arc<Entry<V>>| e.weight);
        }
        (entries, None) => {
            b = b.max_capacity(entries.unwrap_or(DEFAULT_MAX_ENTRIES));
        }
    }
    let _ = weigher;
    let name = name.clone();
    let b = b.eviction_listener(move |_k, _v, cause| {
        if cause == moka::notification::RemovalCause::Size {
            counters.evicted.fetch_add(1, Relaxed);
            listeners.emit(|| CacheEvent::Evicted { name: name.clone() });
        }
    });
    Memory::new(b.build())
}

macro_rules! common_methods {
    () => {
        /// The instance name, used in events, metrics, the registry and the
        /// Redis keys (default `"cache"`).
        pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
            self.common.name = name.into();
            self
        }

        /// How long an entry is fresh (default 60 s; above zero). A
        /// per-entry ttl (`max-age`, [`ttl_of`](CacheBuilder::ttl_of))
        /// overrides it.
        pub fn ttl(mut self, ttl: Duration) -> Self {
            self.common.ttl = ttl;
            self
        }

        /// How long past its ttl an entry may still be served when the
        /// inner call fails or is rejected (stale-if-error), or while it
        /// is refreshed ([`stale_while_revalidate`](Self::stale_while_revalidate));
        /// an HTTP entry with a validator is revalidated within it.
        /// Default zero: an entry is dropped at its ttl.
        pub fn max_stale(mut self, max_stale: Duration) -> Self {
            self.common.max_stale = max_stale;
            self
        }

        /// Stale-while-revalidate: a stale entry (within `max_stale`) is
        /// served at once, marked stale, while one background call
        /// refreshes it (default off; needs `max_stale` above zero and a
        /// tokio runtime to spawn the refresh on).
        pub fn stale_while_revalidate(mut self, on: bool) -> Self {
            self.common.revalidate = on;
            self
        }

        /// At most this many entries (default 10 000 when no bound is
        /// given; at least 1).
        pub fn max_entries(mut self, max: u64) -> Self {
            self.common.max_entries = Some(max);
            self
        }

        /// At most this much weight (bytes for HTTP; see the weigher of a
        /// keyed cache); at least 1. With [`max_entries`](Self::max_entries)
        /// too, each entry is charged at least `max_weight / max_entries`,
        /// so that neither bound is passed. An entry heavier than the whole
        /// bound is not stored.
        pub fn max_weight(mut self, max: u64) -> Self {
            self.common.max_weight = Some(max);
            self
        }

        /// Registers the cache's handle in `registry` under its name.
        pub fn registry(mut self, registry: &Registry) -> Self {
            self.common.registry = Some(registry.clone());
            self
        }

        /// Adds an event listener.
        pub fn on_event(mut self, listener: impl Listener<CacheEvent>) -> Self {
            self.common.listeners = self.common.listeners.with(listener);
            self
        }

        /// Publishes the events as metrics through the [`metrics`] facade
        /// (feature `metrics`): `buttress_cache_requests_total{name,result}`
        /// and the others listed in the crate docs. Install the recorder
        /// before building the layer.
        #[cfg(feature = "metrics")]
        #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
        pub fn metrics(mut self) -> Self {
            self.common.metrics = true;
            self
        }
    };
}

/// Builds a [`CacheLayer`] keyed by a function of the request.
pub struct CacheBuilder<F, K, V> {
    common: Common,
    key: F,
    cache_if: Option<crate::service::Hook<V, bool>>,
    ttl_of: Option<crate::service::Hook<V, Option<Duration>>>,
    mark: Option<crate::service::MarkHook<V>>,
    weigher: Option<Weigher<K, V>>,
    #[cfg(feature = "redis")]
    codec: Option<Codec<V>>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<F, K, V> fmt::Debug for CacheBuilder<F, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("common", &self.common)
            .finish_non_exhaustive()
    }
}

impl<F, K, V> CacheBuilder<F, K, V>
where
    F: Send + Sync + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    common_methods!();

    /// Stores only the responses for which `pred` is `true` (default:
    /// every `Ok`); the others are failures: not stored, and answered with
    /// a stale entry when there is one (stale-if-error).
    ///
    /// ```
    /// # use buttress_cache::CacheLayer;
    /// let layer = CacheLayer::builder(|q: &String| Some(q.clone()))
    ///     .cache_if(|res: &Result<u32, String>| res.is_ok())
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn cache_if(mut self, pred: impl Fn(&V) -> bool + Send + Sync + 'static) -> Self {
        self.cache_if = Some(Arc::new(pred));
        self
    }

    /// A ttl per entry: `Some(ttl)` overrides the layer's, `None` keeps
    /// it; a zero ttl stores nothing.
    pub fn ttl_of(mut self, ttl: impl Fn(&V) -> Option<Duration> + Send + Sync + 'static) -> Self {
        self.ttl_of = Some(Arc::new(ttl));
        self
    }

    /// Marks each answer with how it was made ([`CacheStatus`]): for
    /// response types that can carry it (an extension, a field). A stale
    /// answer is `CacheStatus::Stale`.
    pub fn mark(mut self, mark: impl Fn(&mut V, CacheStatus) + Send + Sync + 'static) -> Self {
        self.mark = Some(Arc::new(mark));
        self
    }

    /// An entry's weight, for [`max_weight`](Self::max_weight) (default:
    /// the size of the key and value types, `size_of::<K>() +
    /// size_of::<V>()`, which does not see their heap parts).
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> usize + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(move |k: &K, v: &V| {
            u32::try_from(weigher(k, v)).unwrap_or(u32::MAX)
        }));
        self
    }

    /// Keeps the entries in Redis, shared by every replica (feature
    /// `redis`; see the [`redis`](crate::redis) module). The values are
    /// encoded by their [`RedisValue`](crate::redis::RedisValue) impl.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, options: crate::redis::RedisOptions) -> Self
    where
        V: crate::redis::RedisValue,
    {
        self.common.redis = Some(options);
        self.codec = Some(crate::redis::RedisOptions::codec::<V>());
        self
    }

    /// Validates and builds the layer.
    pub fn build(self) -> Result<CacheLayer<ByKey<F, K, V>>, ConfigError> {
        let weigher = self.weigher.unwrap_or_else(|| {
            let w = u32::try_from(std::mem::size_of::<K>() + std::mem::size_of::<V>())
                .unwrap_or(u32::MAX);
            Arc::new(move |_: &K, _: &V| w.max(1))
        });
        #[cfg(feature = "redis")]
        let codec = self.codec;
        #[cfg(not(feature = "redis"))]
        let codec = None;
        let shared = self.common.build(weigher, codec)?;
        Ok(CacheLayer {
            shared,
            policy: Arc::new(ByKey {
                key: self.key,
                cache_if: self.cache_if,
                ttl_of: self.ttl_of,
                mark: self.mark,
                _types: PhantomData,
            }),
        })
    }
}

/// Builds an HTTP [`CacheLayer`].
///
/// - **Keys.** Method and URI, and the value of each header named by
///   [`vary`](Self::vary). Only `GET` and `HEAD` are cached; a request
///   with `Authorization` or `Cookie` passes through unless
///   [`credentials`](Self::credentials) says otherwise. A successful
///   unsafe request (`POST`, `PUT`, `DELETE`, ...) drops the entries of
///   its URI (in memory).
/// - **What is stored.** A response the classifier calls a success
///   (not 5xx or 429), with a status a shared cache may store (200, 203,
///   204, 300, 301, 308, 404, 405, 410, 414), without `Cache-Control:
///   no-store`, `no-cache` or `private`, without `Set-Cookie`, whose `Vary`
///   names only headers of the key, and whose whole body (no trailers)
///   fits in [`max_body`](Self::max_body). `s-maxage`, else `max-age`,
///   else `Expires` minus `Date` (minus the time received without a
///   valid `Date`) sets its ttl; an invalid `Expires` (`0` included)
///   means already expired, so the response is not stored (RFC 9111
///   §5.3). Request directives are ignored (a client could otherwise
///   empty the cache for everyone).
/// - **Revalidation.** A stale entry (past its ttl, within
///   [`max_stale`](Self::max_stale)) with a validator is revalidated
///   (RFC 9111 §4.3): the inner call carries `If-None-Match` with its
///   `ETag`, else `If-Modified-Since` with its `Last-Modified`, unless the
///   request has a precondition of its own (`If-Match`, `If-None-Match`,
///   `If-Modified-Since`, `If-Unmodified-Since`, `If-Range`), which then
///   goes as it is and whose `304` answers that caller only. A `304 Not
///   Modified` to the cache's revalidation updates the stored headers
///   with its own (all but `Content-Length` and hop-by-hop fields), keeps
///   the body, stores the entry again for the freshness the updated
///   headers give, and the caller gets the stored status (a 200) marked
///   [`CacheStatus::Revalidated`]. A 304 naming another `ETag` (or
///   `Last-Modified`) than the stored one is a failure
///   ([`ValidatorMismatch`](crate::error::ValidatorMismatch)); like a
///   5xx or an error, it is answered with the stale entry when there is
///   one. A 200 replaces the entry. The background refresh of
///   [`stale_while_revalidate`](Self::stale_while_revalidate) is
///   conditional too.
/// - **Conditional requests and `HEAD`.** A fresh stored 2xx answers
///   `304 Not Modified` (its `Cache-Control`, `Content-Location`, `Date`,
///   `ETag`, `Expires`, `Vary` and `Last-Modified`, no body) to a request
///   whose `If-None-Match` matches its `ETag` (weak comparison, lists,
///   `*`) or, without `If-None-Match`, whose `If-Modified-Since` is not
///   before its `Last-Modified`; a request with `If-Match`,
///   `If-Unmodified-Since` or `If-Range` gets the full response. A `HEAD`
///   request is answered from a fresh stored `GET` response (its status
///   and headers, no body); otherwise it is a call of its own. Neither
///   calls the inner service.
/// - **Malformed headers.** They never fail a call: a malformed
///   `If-None-Match` or `If-Modified-Since` is ignored (the full response
///   answers); a malformed or repeated stored `ETag` or `Last-Modified` is
///   no validator; a malformed `Expires` means expired; a malformed
///   `Date` is read as absent; a malformed `max-age` means stale at once;
///   an unreadable `Cache-Control` means `no-store`.
/// - **Large bodies.** A body over `max_body` is not stored: the caller
///   gets the part already read and the rest of the stream, untouched; it
///   is never requested twice.
/// - **Markers.** Every response carries a [`CacheStatus`] extension;
///   answers from the cache get an `Age` header, stale ones a `Warning`
///   (`110 - "Response is Stale"` while revalidating, `111 -
///   "Revalidation Failed"` after an error), unless turned off.
///
/// ```
/// use buttress_cache::{CacheLayer, CacheStatus};
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CacheLayer::http().name("pages").vary(["accept"]).build().unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
///     let res = http::Response::builder()
///         .header("cache-control", "max-age=30")
///         .body(Full::new(Bytes::from_static(b"hello")))
///         .unwrap();
///     Ok::<_, std::convert::Infallible>(res)
/// });
/// let get = || http::Request::get("/hello").body(()).unwrap();
/// let first = svc.clone().oneshot(get()).await.unwrap();
/// assert_eq!(first.extensions().get::<CacheStatus>(), Some(&CacheStatus::Miss));
/// let second = svc.oneshot(get()).await.unwrap();
/// assert!(matches!(second.extensions().get::<CacheStatus>(), Some(CacheStatus::Hit { .. })));
/// assert_eq!(second.headers()["age"], "0");
/// # }
/// ```
pub struct HttpCacheBuilder {
    common: Common,
    vary: Vec<HeaderName>,
    credentials: Credentials,
    classifier: HttpClassifier,
    max_body: usize,
    respect_max_age: bool,
    markers: Markers,
    invalidate_on_unsafe: bool,
    invalid_vary: Option<String>,
}

impl fmt::Debug for HttpCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheBuilder")
            .field("common", &self.common)
            .field("vary", &self.vary)
            .field("credentials", &self.credentials)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl HttpCacheBuilder {
    common_methods!();

    /// Headers whose values are part of the key (`Accept`,
    /// `Accept-Encoding`, `Accept-Language`, ...). A response whose `Vary`
    /// names any other header is not stored. Names that are not valid
    /// header names are rejected by [`build`](Self::build).
    pub fn vary<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        for n in names {
            match HeaderName::try_from(n.as_ref().to_ascii_lowercase()) {
                Ok(h) => self.vary.push(h),
                Err(_) => {
                    self.invalid_vary
                        .get_or_insert_with(|| format!("{:?} is not a header name", n.as_ref()));
                }
            }
        }
        self
    }

    /// What to do with requests that carry `Authorization` or `Cookie`
    /// (default [`Credentials::Bypass`]).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Which statuses are failures (default: 5xx and 429): never stored,
    /// answered with a stale entry when there is one.
    pub fn classifier(mut self, classifier: HttpClassifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// The largest body stored (default 1 MiB); larger ones stream through.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Whether `s-maxage` / `max-age`, else `Expires`, set an entry's ttl
    /// (default `true`); otherwise every entry has the layer's ttl.
    pub fn respect_max_age(mut self, on: bool) -> Self {
        self.respect_max_age = on;
        self
    }

    /// Whether answers from the cache get an `Age` header (default `true`).
    pub fn age_header(mut self, on: bool) -> Self {
        self.markers.age = on;
        self
    }

    /// Whether stale answers get a `Warning` header (default `true`).
    pub fn warning_header(mut self, on: bool) -> Self {
        self.markers.warning = on;
        self
    }

    /// Whether a successful unsafe request drops its URI's entries
    /// (default `true`; in memory only).
    pub fn invalidate_on_unsafe(mut self, on: bool) -> Self {
        self.invalidate_on_unsafe = on;
        self
    }

    /// Keeps the entries in Redis, shared by every replica (feature
    /// `redis`; see the [`redis`](crate::redis) module).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, options: crate::redis::RedisOptions) -> Self {
        self.common.redis = Some(options);
        self
    }

    /// Validates and builds the layer.
    pub fn build(self) -> Result<CacheLayer<HttpPolicy>, ConfigError> {
        if let Some(bad) = self.invalid_vary {
            return Err(ConfigError::new(KIND, "vary", bad));
        }
        let vary: Arc<[HeaderName]> = self.vary.into();
        let weigher: Weigher<crate::HttpKey, CachedResponse> =
            Arc::new(|k: &crate::HttpKey, v: &CachedResponse| {
                u32::try_from(k.text().len() + v.weight()).unwrap_or(u32::MAX)
            });
        #[cfg(feature = "redis")]
        let codec = Some(crate::redis::RedisOptions::codec::<CachedResponse>());
        #[cfg(not(feature = "redis"))]
        let codec = None;
        let ttl = self.common.ttl;
        let shared = self.common.build(weigher, codec)?;
        let name = shared.name.clone();
        Ok(CacheLayer {
            shared,
            policy: Arc::new(HttpPolicy {
                keyer: HttpKeyer {
                    vary: vary.clone(),
                    credentials: self.credentials,
                },
                rules: Rules {
                    classifier: self.classifier,
                    vary,
                    respect_max_age: self.respect_max_age,
                    ttl,
                },
                markers: self.markers,
                max_body: self.max_body,
                invalidate_on_unsafe: self.invalidate_on_unsafe,
                name,
            }),
        })
    }
}

/// Observes a cache, invalidates and preloads its entries.
///
/// The operations are `async` because a Redis store answers over the
/// network; on a memory store they complete at once and never fail.
pub struct CacheHandle<K, V> {
    shared: Arc<Shared<K, V>>,
}

impl<K, V> Clone for CacheHandle<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, V> fmt::Debug for CacheHandle<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> CacheHandle<K, V> {
    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The counters and sizes. The sizes are moka's after its pending
    /// work is done, exact when no call is in flight.
    pub fn snapshot(&self) -> CacheSnapshot {
        self.shared.snapshot()
    }

    /// Drops the entry of `key`. A call in flight when it runs does not
    /// store its answer (it may predate the change that made you
    /// invalidate).
    ///
    /// ```
    /// # use buttress_cache::CacheLayer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CacheLayer::builder(|k: &String| Some(k.clone())).build().unwrap();
    /// let handle = layer.handle();
    /// handle.warm([("a".to_owned(), 1u32), ("b".to_owned(), 2)]).await.unwrap();
    /// handle.invalidate(&"a".to_owned()).await.unwrap();
    /// assert_eq!(handle.snapshot().entries, Some(1));
    /// # }
    /// ```
    pub async fn invalidate(&self, key: &K) -> Result<(), StoreError> {
        self.shared.invalidate(key).await
    }

    /// Drops every entry whose key text ([`CacheKey::text`]) starts with
    /// `prefix`.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.shared.invalidate_prefix(prefix).await
    }

    /// Drops every entry.
    pub async fn invalidate_all(&self) -> Result<(), StoreError> {
        self.shared.invalidate_all().await
    }

    /// Preloads entries with the layer's ttl; returns how many were
    /// stored (an entry heavier than `max_weight` is not).
    pub async fn warm(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<usize, StoreError> {
        self.shared.warm(entries, None).await
    }

    /// Preloads entries with their own ttl.
    pub async fn warm_for(
        &self,
        ttl: Duration,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<usize, StoreError> {
        self.shared.warm(entries, Some(ttl)).await
    }

    /// Sets every counter back to zero (the entries stay).
    pub fn reset_counters(&self) {
        self.shared.reset_counters();
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Component for CacheHandle<K, V> {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = self.shared.snapshot();
        serde_json::json!({
            "backend": s.backend,
            "entries": s.entries,
            "weight": s.weight,
            "hits": s.hits,
            "misses": s.misses,
            "stale": s.stale,
            "coalesced": s.coalesced,
            "revalidated": s.revalidated,
            "stored": s.stored,
            "evicted": s.evicted,
            "store_errors": s.store_errors,
            "in_flight": s.in_flight,
        })
    }

    fn reset(&self) {
        self.shared.reset_counters();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
