//! One bulkhead per key: per client, per tenant, per upstream host.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, KeyMissing};
use buttress_core::key::{BoundedMap, MissingKey, MissingKeys};
use buttress_core::registry::Component;
use buttress_core::{BulkheadFullReason, ConfigError, KeyExtractor, Listener, Listeners, Registry};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::BulkheadConfig;
use crate::events::BulkheadEvent;
use crate::layer::{not_live, validate, validate_config, validate_wait, BulkheadHandle, KIND};
use crate::state::{rejection, Acquire, BulkheadSnapshot, Permit, Shared};

const KEYED_KIND: &str = "keyed_bulkhead";

/// What a keyed layer does with a request whose key the extractor cannot
/// find (for example a `ClientIp` key on a server that records no peer
/// address).
///
/// The default is [`Reject`](MissingKey::Reject): a missing key is almost
/// always a misconfiguration, and sharing one bucket silently would make
/// every client wait for every other one. Either way such requests are
/// counted ([`KeyedBulkheadHandle::missing_key`], `"missing_key"` in the
/// registry snapshot) and the first one logs a `tracing` warning.
///
/// ```
/// use buttress_bulkhead::{KeyedBulkheadLayer, MissingKey};
/// use buttress_core::key::ClientIp;
///
/// // Requests without a peer address share one explicit "unknown" bulkhead.
/// let layer = KeyedBulkheadLayer::builder(ClientIp::new(0))
///     .on_missing_key(MissingKey::SharedBucket)
///     .build::<std::net::IpAddr>()
///     .unwrap();
/// # let _ = layer;
/// ```
struct KeyedShared<K> {
    name: Arc<str>,
    /// The limits a new key's bulkhead starts with; changed by
    /// [`KeyedBulkheadHandle::reconfigure`] (read under the map's shard
    /// lock when a key is added, so a change reaches every key).
    template: Mutex<BulkheadConfig>,
    /// Serialises run-time changes.
    reconfig: Mutex<()>,
    listeners: Listeners<BulkheadEvent>,
    map: BoundedMap<K, Arc<Shared>>,
    /// Requests whose key the extractor could not find share this one,
    /// with [`MissingKey::SharedBucket`].
    unkeyed: Arc<Shared>,
    /// The policy for requests without a key, and their count.
    missing: MissingKeys,
    /// Requests with a new key rejected because every key was in use.
    map_full: AtomicU64,
    /// `completed` and `rejected` of evicted keys, so that totals never go
    /// down when a key is evicted.
    retired_completed: AtomicU64,
    retired_rejected: AtomicU64,
}

impl<K> KeyedShared<K> {
    fn template(&self) -> MutexGuard<'_, BulkheadConfig> {
        // Every write leaves a whole config: a poisoned lock is still sound.
        self.template.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Hash + Eq + Clone> KeyedShared<K> {
    fn new_bulkhead(&self) -> Arc<Shared> {
        let t = self.template();
        Arc::new(
            Shared::new(
                self.name.clone(),
                t.max_concurrent,
                t.max_queue,
                t.max_wait,
                self.listeners.clone(),
            )
            .with_retry_after(t.retry_after),
        )
    }

    /// The bulkhead of `key`; `None` when the map is full of keys in use.
    fn get(&self, key: K) -> Option<Arc<Shared>> {
        // Only the map holds an evicted bulkhead: no call, queued caller or
        // handle holds a reference to it and no permit of it is out, so no
        // limit is split in two and its counters are final.
        self.map.get_or_insert(
            key,
            Instant::now(),
            |_| self.new_bulkhead(),
            |shared| {
                if Arc::strong_count(shared) != 1 {
                    return false;
                }
                let s = shared.snapshot();
                if s.active != 0 || s.queued != 0 {
                    return false;
                }
                // The map evicts every idle entry this allows (under its
                // lock): keep the counts of this one.
                self.retired_completed.fetch_add(s.completed, Relaxed);
                self.retired_rejected.fetch_add(s.rejected, Relaxed);
                true
            },
        )
    }
}

/// One bulkhead per key, the key taken from each request by a
/// [`KeyExtractor`] (client IP, header, tenant extension, URI authority...).
///
/// The map of keys is bounded by `max_keys`. When room is needed, a key is
/// evicted if no call of it is running or queued (and no
/// [`BulkheadHandle`] of it is held) and none started for `idle_timeout`;
/// when no key can go, a request with a new key is rejected with
/// [`BulkheadFull`](crate::error::BulkheadFull) (`QueueFull`) rather than growing memory, so a client
/// rotating keys cannot exhaust it.
///
/// A request whose key the extractor cannot find is rejected with
/// [`KeyMissing`] by default, counted, and the first one logs a warning;
/// [`on_missing_key`](KeyedBulkheadBuilder::on_missing_key) with
/// [`MissingKey::SharedBucket`] runs such requests in one extra bulkhead
/// with the same limits instead.
///
/// With a [`ClientIp`](buttress_core::key::ClientIp) or
/// [`PeerAddr`](buttress_core::key::PeerAddr) key behind axum, the peer
/// address is only in the request when the server is started with
/// `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())`
/// *and* buttress's `axum` feature (`buttress-core/axum`) is on, so that
/// the extractor reads axum's `ConnectInfo<SocketAddr>`. Plain
/// `axum::serve(listener, app)` gives no key to any request.
///
/// Because the key is known only in `call`, the wait for a permit happens
/// in the response future: `call` calls the inner service at once and the
/// future polls the inner future only after it got the key's permit. That
/// suits handlers and clients whose futures do the work when polled; an
/// inner service that starts work eagerly in `call` should get one
/// unkeyed [`BulkheadLayer`](crate::BulkheadLayer) per upstream instead.
///
/// ```
/// use buttress_bulkhead::KeyedBulkheadLayer;
/// use buttress_core::key::Header;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = KeyedBulkheadLayer::builder(Header::new(http::HeaderName::from_static("x-tenant")))
///     .name("per-tenant")
///     .max_concurrent(4)
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>("ok") });
/// let req = http::Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(svc.oneshot(req).await.unwrap(), "ok");
/// assert_eq!(layer.handle().keys(), 1);
/// # }
/// ```
pub struct KeyedBulkheadLayer<X, K> {
    extractor: Arc<X>,
    shared: Arc<KeyedShared<K>>,
}

impl<X, K> Clone for KeyedBulkheadLayer<X, K> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<X, K> fmt::Debug for KeyedBulkheadLayer<X, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkheadLayer")
            .field("name", &self.shared.name)
            .field("max_concurrent", &self.shared.template().max_concurrent)
            .field("max_keys", &self.shared.map.max_keys())
            .finish_non_exhaustive()
    }
}

impl<X> KeyedBulkheadLayer<X, ()> {
    /// A builder keyed by `extractor`.
    pub fn builder(extractor: X) -> KeyedBulkheadBuilder<X> {
        KeyedBulkheadBuilder {
            extractor,
            name: Arc::from(KIND),
            max_concurrent: 25,
            max_queue: 0,
            max_wait: None,
            retry_after: Some(crate::layer::DEFAULT_RETRY_AFTER),
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(60),
            on_missing_key: MissingKey::Reject,
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }
}

impl<X, K> KeyedBulkheadLayer<X, K> {
    /// A handle to observe the keyed bulkhead.
    pub fn handle(&self) -> KeyedBulkheadHandle<K> {
        KeyedBulkheadHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, X, K> Layer<S> for KeyedBulkheadLayer<X, K> {
    type Service = KeyedBulkhead<S, X, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBulkhead {
            inner,
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`KeyedBulkheadLayer`].
pub struct KeyedBulkheadBuilder<X> {
    extractor: X,
    name: Arc<str>,
    max_concurrent: usize,
    max_queue: usize,
    max_wait: Option<Duration>,
    retry_after: Option<Duration>,
    max_keys: usize,
    idle_timeout: Duration,
    on_missing_key: MissingKey,
    registry: Option<Registry>,
    listeners: Listeners<BulkheadEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

impl<X> fmt::Debug for KeyedBulkheadBuilder<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkheadBuilder")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<X> KeyedBulkheadBuilder<X> {
    /// The instance name (default `"bulkhead"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls allowed at once per key (default 25; at least 1, at most
    /// 2<sup>30</sup>).
    pub fn max_concurrent(mut self, max: usize) -> Self {
        self.max_concurrent = max;
        self
    }

    /// Callers allowed to wait per key (default 0).
    pub fn max_queue(mut self, max: usize) -> Self {
        self.max_queue = max;
        self
    }

    /// Queue timeout per caller (default none). A non-zero wait needs
    /// [`max_queue`](Self::max_queue) above 0.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// The retry hint of a rejection (default 1 s; `None` for none); see
    /// [`BulkheadBuilder::retry_after`](crate::BulkheadBuilder::retry_after).
    pub fn retry_after(mut self, retry_after: impl Into<Option<Duration>>) -> Self {
        self.retry_after = retry_after.into();
        self
    }

    /// Keys kept at most (default 10 000; at least 1). The map allocates
    /// as keys arrive, not up front.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    /// What to do with a request whose key cannot be extracted (default
    /// [`MissingKey::Reject`]).
    pub fn on_missing_key(mut self, policy: MissingKey) -> Self {
        self.on_missing_key = policy;
        self
    }

    /// How long a key must be unused before it may be evicted (default
    /// 60 s).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Registers the keyed bulkhead's handle in `registry`.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener, shared by every key's bulkhead.
    pub fn on_event(mut self, listener: impl Listener<BulkheadEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Publishes the keyed bulkhead's events as metrics through the [`metrics`]
    /// facade (feature `metrics`): `buttress_bulkhead_calls_total{kind}` and
    /// `buttress_bulkhead_call_duration_seconds` over every key (never
    /// labelled by key; no permit or queue gauges, since each key has its
    /// own), labelled
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

    /// The listeners, with the metrics bridge when it is on.
    fn all_listeners(&self) -> Listeners<BulkheadEvent> {
        #[allow(unused_mut)]
        let mut listeners = self.listeners.clone();
        #[cfg(feature = "metrics")]
        crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
            false,
        );
        listeners
    }

    /// Validates and builds the layer. The key type `K` is the extractor's
    /// key for the request type the layer is used with.
    pub fn build<K>(self) -> Result<KeyedBulkheadLayer<X, K>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        validate(&self.name, self.max_concurrent, self.max_queue)?;
        validate_wait(self.max_queue, self.max_wait)?;
        if self.max_keys == 0 {
            return Err(ConfigError::new(KIND, "max_keys", "must be at least 1"));
        }
        let listeners = self.all_listeners();
        let unkeyed = Arc::new(
            Shared::new(
                self.name.clone(),
                self.max_concurrent,
                self.max_queue,
                self.max_wait,
                listeners.clone(),
            )
            .with_retry_after(self.retry_after),
        );
        let layer = KeyedBulkheadLayer {
            extractor: Arc::new(self.extractor),
            shared: Arc::new(KeyedShared {
                name: self.name.clone(),
                template: Mutex::new(BulkheadConfig {
                    name: self.name.to_string(),
                    max_concurrent: self.max_concurrent,
                    max_queue: self.max_queue,
                    max_wait: self.max_wait,
                    retry_after: self.retry_after,
                }),
                reconfig: Mutex::new(()),
                listeners,
                map: BoundedMap::new(self.max_keys, self.idle_timeout),
                unkeyed,
                missing: MissingKeys::new(self.on_missing_key, std::any::type_name::<X>()),
                map_full: AtomicU64::new(0),
                retired_completed: AtomicU64::new(0),
                retired_rejected: AtomicU64::new(0),
            }),
        };
        if let Some(registry) = &self.registry {
            registry
                .register(layer.handle())
                .map_err(|e| ConfigError::new(KIND, "name", e.to_string()))?;
        }
        Ok(layer)
    }
}

/// The service of [`KeyedBulkheadLayer`].
pub struct KeyedBulkhead<S, X, K> {
    inner: S,
    extractor: Arc<X>,
    shared: Arc<KeyedShared<K>>,
}

impl<S: Clone, X, K> Clone for KeyedBulkhead<S, X, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extractor: self.extractor.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, X, K> fmt::Debug for KeyedBulkhead<S, X, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkhead")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, X, K, Req> Service<Req> for KeyedBulkhead<S, X, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Req, Key = K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let bulkhead = match self.extractor.extract(&req) {
            Some(key) => self.shared.get(key),
            None => {
                let shared = &self.shared;
                match shared.missing.note(&shared.name) {
                    MissingKey::SharedBucket => Some(shared.unkeyed.clone()),
                    // `Reject`, and any policy added later: the safe one.
                    _ => {
                        return KeyedResponseFuture {
                            state: KeyedState::Rejected {
                                error: Some(
                                    KeyMissing::new(
                                        shared.name.clone(),
                                        shared.missing.extractor(),
                                    )
                                    .into(),
                                ),
                            },
                        };
                    }
                }
            }
        };
        let Some(bulkhead) = bulkhead else {
            let shared = &self.shared;
            shared.map_full.fetch_add(1, Relaxed);
            shared.listeners.emit(|| BulkheadEvent::Rejected {
                name: shared.name.clone(),
                reason: BulkheadFullReason::QueueFull,
            });
            tracing::debug!(
                buttress.pattern = crate::state::PATTERN,
                buttress.name = &*self.shared.name,
                bulkhead.reason = "keys_full",
                "every key is in use; request rejected"
            );
            return KeyedResponseFuture {
                state: KeyedState::Rejected {
                    error: Some(
                        rejection(
                            self.shared.name.clone(),
                            BulkheadFullReason::QueueFull,
                            self.shared.template().retry_after,
                        )
                        .into(),
                    ),
                },
            };
        };
        KeyedResponseFuture {
            state: KeyedState::Running {
                inner: self.inner.call(req),
                acquire: Some(Acquire::new(bulkhead)),
                permit: None,
            },
        }
    }
}

pin_project! {
    /// Response future of [`KeyedBulkhead`]: waits for the key's permit,
    /// then drives the inner future while holding it.
    pub struct KeyedResponseFuture<F> {
        #[pin]
        state: KeyedState<F>,
    }
}

pin_project! {
    #[project = KeyedProj]
    enum KeyedState<F> {
        Running {
            #[pin]
            inner: F,
            acquire: Option<Acquire>,
            permit: Option<Permit>,
        },
        Rejected {
            error: Option<BoxError>,
        },
    }
}

impl<F> fmt::Debug for KeyedResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for KeyedResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            KeyedProj::Running {
                inner,
                acquire,
                permit,
            } => {
                if let Some(acq) = acquire {
                    match acq.poll_acquire(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(p)) => {
                            *permit = Some(p);
                            *acquire = None;
                        }
                        Poll::Ready(Err(reason)) => {
                            let error = acq.rejection(reason);
                            *acquire = None;
                            return Poll::Ready(Err(error.into()));
                        }
                    }
                }
                match inner.poll(cx) {
                    Poll::Ready(res) => {
                        drop(permit.take());
                        Poll::Ready(res.map_err(Into::into))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            KeyedProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(error))
            }
        }
    }
}

/// Observes a keyed bulkhead.
pub struct KeyedBulkheadHandle<K> {
    shared: Arc<KeyedShared<K>>,
}

impl<K> Clone for KeyedBulkheadHandle<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedBulkheadHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkheadHandle")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<K: Hash + Eq> KeyedBulkheadHandle<K> {
    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.shared.map.len()
    }

    /// The bulkhead of one key, if it is held.
    pub fn key(&self, key: &K) -> Option<BulkheadHandle> {
        self.shared.map.get(key).map(BulkheadHandle::new)
    }

    /// The bulkhead shared by requests without a key, with
    /// [`MissingKey::SharedBucket`] (unused with the default policy).
    pub fn unkeyed(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.unkeyed.clone())
    }

    /// Requests whose key the extractor could not find, whatever the
    /// [`MissingKey`] policy did with them. Those rejected with
    /// [`KeyMissing`] are not in [`totals`](Self::totals)`().rejected`,
    /// which counts bulkheads that were full.
    pub fn missing_key(&self) -> u64 {
        self.shared.missing.count()
    }

    /// The policy for requests without a key.
    pub fn on_missing_key(&self) -> MissingKey {
        self.shared.missing.policy()
    }

    /// Requests with a new key rejected because every key was in use
    /// (also counted in [`totals`](Self::totals)`().rejected`).
    pub fn map_full_rejections(&self) -> u64 {
        self.shared.map_full.load(Relaxed)
    }

    /// The current per-key settings, as a [`BulkheadConfig`]: what every
    /// key's bulkhead (and the unkeyed one) runs with.
    ///
    /// ```
    /// use buttress_bulkhead::KeyedBulkheadLayer;
    /// use buttress_core::key::Header;
    ///
    /// let layer = KeyedBulkheadLayer::builder(Header::new(http::HeaderName::from_static("x-tenant")))
    ///     .max_concurrent(3)
    ///     .build::<Vec<u8>>()
    ///     .unwrap();
    /// assert_eq!(layer.handle().config().max_concurrent, 3);
    /// ```
    pub fn config(&self) -> BulkheadConfig {
        self.shared.template().clone()
    }

    /// Applies `config` to every key's bulkhead, the ones held now, the
    /// unkeyed one and the ones added later, with the same rules as
    /// [`BulkheadHandle::reconfigure`]: validated as
    /// [`BulkheadConfig::build`] validates it, a different `name` refused
    /// (field `name`), nothing changed on an error; calls holding a permit
    /// and callers already queued finish under the values they started
    /// with. The keyed settings that are not in a `BulkheadConfig`
    /// (`max_keys`, `idle_timeout`, `on_missing_key`) stay as built.
    ///
    /// A key added while the change is under way gets the new limits:
    /// either it is made from the new template, or it is in the map by the
    /// time the change walks it.
    ///
    /// ```
    /// use buttress_bulkhead::{BulkheadConfig, KeyedBulkheadLayer};
    /// use buttress_core::key::Header;
    ///
    /// let layer = KeyedBulkheadLayer::builder(Header::new(http::HeaderName::from_static("x-tenant")))
    ///     .max_concurrent(3)
    ///     .build::<Vec<u8>>()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// let new = BulkheadConfig { max_concurrent: 10, ..handle.config() };
    /// handle.reconfigure(&new).unwrap();
    /// assert_eq!(handle.unkeyed().snapshot().max_concurrent, 10);
    /// assert_eq!(handle.config(), new);
    /// ```
    pub fn reconfigure(&self, config: &BulkheadConfig) -> Result<(), ConfigError> {
        self.check_reconfigure(config)?;
        let _writer = self
            .shared
            .reconfig
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // New keys first: a key made from here on starts with the new
        // limits; one made before is in the map when the walk below
        // reaches its shard (it is made and inserted under that shard's
        // lock).
        *self.shared.template() = config.clone();
        let keys = self.shared.map.values();
        for shared in std::iter::once(&self.shared.unkeyed).chain(keys.iter()) {
            let _key_writer = shared.lock_writer();
            shared.apply(config);
        }
        Ok(())
    }

    /// What [`reconfigure`](Self::reconfigure) would answer, without
    /// applying anything (see [`BulkheadHandle::check_reconfigure`]).
    pub fn check_reconfigure(&self, config: &BulkheadConfig) -> Result<(), ConfigError> {
        validate_config(config)?;
        if *config.name != *self.shared.name {
            return Err(not_live("name"));
        }
        Ok(())
    }

    /// Totals over the keys held now and the unkeyed bulkhead
    /// (`max_concurrent` is the per-key limit). `completed` and `rejected`
    /// also count evicted keys and requests rejected because the map was
    /// full, so they never go down.
    pub fn totals(&self) -> BulkheadSnapshot {
        // The clones pin the keys held now (a referenced bulkhead is never
        // evicted), so reading the retired counts afterwards counts every
        // key exactly once.
        let held = self.shared.map.values();
        let mut total = self.shared.unkeyed.snapshot();
        total.completed += self.shared.retired_completed.load(Relaxed);
        total.rejected +=
            self.shared.retired_rejected.load(Relaxed) + self.shared.map_full.load(Relaxed);
        for shared in held {
            let s = shared.snapshot();
            total.active += s.active;
            total.queued += s.queued;
            total.available += s.available;
            total.completed += s.completed;
            total.rejected += s.rejected;
        }
        total
    }
}

impl<K: Hash + Eq + Send + Sync + 'static> Component for KeyedBulkheadHandle<K> {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        KEYED_KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let t = self.totals();
        serde_json::json!({
            "keys": self.keys(),
            "max_keys": self.shared.map.max_keys(),
            "max_concurrent_per_key": self.shared.template().max_concurrent,
            "active": t.active,
            "queued": t.queued,
            "completed": t.completed,
            "rejected": t.rejected,
            "rejected_map_full": self.map_full_rejections(),
            "missing_key": self.missing_key(),
            "on_missing_key": self.shared.missing.policy().as_str(),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
