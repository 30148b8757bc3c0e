//! One breaker per key: per upstream host, per tenant, per gRPC method.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, CircuitOpen, KeyMissing};
use buttress_core::key::{BoundedMap, MissingKey, MissingKeys};
use buttress_core::registry::Component;
use buttress_core::{
    Classifier, ConfigError, ErrorsAsFailures, KeyExtractor, Listener, Listeners, Registry,
};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{CircuitBreakerConfig, KIND};
use crate::events::CircuitBreakerEvent;
use crate::future::ResponseFuture;
use crate::layer::CircuitBreakerHandle;
use crate::service::Admitted;
use crate::state::{Admission, Settings, Shared, State};

const KEYED_KIND: &str = "keyed_circuit_breaker";

/// What a keyed breaker does with a request whose key the extractor cannot
/// find (for example a `ClientIp` key on a server that records no peer
/// address). The same choice, with the same names, as the keyed
/// bulkhead's.
///
/// The default is [`Reject`](MissingKey::Reject): a missing key is almost
/// always a misconfiguration, and one breaker shared by every such request
/// would let one upstream's failures open the circuit for all of them.
/// Either way such requests are counted
/// ([`KeyedCircuitBreakerHandle::missing_key`], `"missing_key"` in the
/// registry snapshot) and the first one logs a `tracing` warning.
///
/// ```
/// use buttress_circuit_breaker::{KeyedCircuitBreakerLayer, MissingKey};
/// use buttress_core::key::UriAuthority;
///
/// let layer = KeyedCircuitBreakerLayer::builder(UriAuthority)
///     .on_missing_key(MissingKey::SharedBucket)
///     .build::<String>()
///     .unwrap();
/// assert_eq!(layer.handle().on_missing_key(), MissingKey::SharedBucket);
/// ```
struct Keyed<K> {
    name: Arc<str>,
    /// The settings a new key's breaker starts with; changed by
    /// [`KeyedCircuitBreakerHandle::reconfigure`] (read under the map's
    /// shard lock when a key is added, so a change reaches every key).
    settings: Mutex<Settings>,
    /// Serialises run-time changes.
    reconfig: Mutex<()>,
    listeners: Listeners<CircuitBreakerEvent>,
    map: BoundedMap<K, Arc<Shared>>,
    /// Requests with a new key while the map is full of keys in use share
    /// this breaker, and requests without a key with
    /// [`MissingKey::SharedBucket`].
    unkeyed: Arc<Shared>,
    /// The policy for requests without a key, and their count.
    missing: MissingKeys,
}

impl<K> Keyed<K> {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        // Every write leaves whole settings: a poisoned lock is still sound.
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug> Keyed<K> {
    /// The breaker of `key`, or the shared one when the map is full.
    fn breaker(&self, key: K) -> Arc<Shared> {
        // Only closed breakers that nothing refers to go: forgetting an
        // open breaker would let traffic through to a failing upstream.
        let found = self.map.get_or_insert(
            key,
            Instant::now(),
            |key| {
                let name = Arc::from(format!("{}[{key:?}]", self.name));
                let settings = self.settings().clone();
                Shared::new(name, settings, self.listeners.clone(), None)
            },
            |shared| {
                // Calls in flight and handles hold a clone.
                Arc::strong_count(shared) == 1 && shared.state() == State::Closed
            },
        );
        found.unwrap_or_else(|| {
            tracing::debug!(
                buttress.pattern = crate::state::PATTERN,
                buttress.name = &*self.name,
                "every key is in use; the shared breaker applies"
            );
            self.unkeyed.clone()
        })
    }
}

/// One circuit breaker per key, the key taken from each request by a
/// [`KeyExtractor`] (for example `UriAuthority`: one breaker per upstream).
///
/// Every key's breaker has the same configuration. The map holds at most
/// `max_keys` breakers; a breaker that is closed, unused for
/// `idle_timeout` and referred to by no call is evicted when room is
/// needed. Requests with a new key while every slot holds a breaker in use
/// share one more breaker (logged at debug level): an open breaker is
/// never forgotten to make room.
///
/// A request whose key the extractor cannot find is rejected with
/// [`KeyMissing`] by default, counted, and the first one logs a warning;
/// [`on_missing_key`](KeyedCircuitBreakerBuilder::on_missing_key) with
/// [`MissingKey::SharedBucket`] sends such requests through the shared
/// breaker instead. With a
/// [`ClientIp`](buttress_core::key::ClientIp) or
/// [`PeerAddr`](buttress_core::key::PeerAddr) key behind axum, serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` and enable
/// buttress's `axum` feature, or no request has a key.
///
/// Admission happens in `call`, since the key is in the request.
///
/// ```
/// use buttress_circuit_breaker::KeyedCircuitBreakerLayer;
/// use buttress_core::key::UriAuthority;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = KeyedCircuitBreakerLayer::builder(UriAuthority)
///     .name("upstreams")
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, std::io::Error>("ok") });
/// let req = http::Request::get("http://a.example/").body(()).unwrap();
/// svc.oneshot(req).await.unwrap();
/// assert_eq!(layer.handle().keys(), 1);
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<X, K, C = ErrorsAsFailures> {
    extractor: Arc<X>,
    keyed: Arc<Keyed<K>>,
    classifier: C,
}

impl<X, K, C: Clone> Clone for KeyedCircuitBreakerLayer<X, K, C> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
            keyed: self.keyed.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<X, K, C> fmt::Debug for KeyedCircuitBreakerLayer<X, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.keyed.name)
            .field("max_keys", &self.keyed.map.max_keys())
            .finish_non_exhaustive()
    }
}

impl<X> KeyedCircuitBreakerLayer<X, ()> {
    /// A builder keyed by `extractor`, with the defaults of
    /// [`CircuitBreakerConfig`].
    pub fn builder(extractor: X) -> KeyedCircuitBreakerBuilder<X> {
        KeyedCircuitBreakerBuilder {
            extractor,
            config: CircuitBreakerConfig::default(),
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(300),
            on_missing_key: MissingKey::Reject,
            classifier: ErrorsAsFailures,
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }
}

impl<X, K, C> KeyedCircuitBreakerLayer<X, K, C> {
    /// A handle to observe the keyed breakers.
    pub fn handle(&self) -> KeyedCircuitBreakerHandle<K> {
        KeyedCircuitBreakerHandle {
            keyed: self.keyed.clone(),
        }
    }
}

impl<S, X, K, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<X, K, C> {
    type Service = KeyedCircuitBreaker<S, X, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            extractor: self.extractor.clone(),
            keyed: self.keyed.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// Builds a [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreakerBuilder<X, C = ErrorsAsFailures> {
    extractor: X,
    config: CircuitBreakerConfig,
    max_keys: usize,
    idle_timeout: Duration,
    on_missing_key: MissingKey,
    classifier: C,
    registry: Option<Registry>,
    listeners: Listeners<CircuitBreakerEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

impl<X, C> fmt::Debug for KeyedCircuitBreakerBuilder<X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerBuilder")
            .field("config", &self.config)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<X, C> KeyedCircuitBreakerBuilder<X, C> {
    /// The instance name; each key's breaker is named `name[key]`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The configuration of every key's breaker (its name is ignored).
    pub fn config(mut self, config: CircuitBreakerConfig) -> Self {
        let name = std::mem::take(&mut self.config.name);
        self.config = CircuitBreakerConfig { name, ..config };
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

    /// How long a closed key must be unused before it may be evicted
    /// (default 5 minutes).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// How results are classified.
    pub fn classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerBuilder<X, C2> {
        KeyedCircuitBreakerBuilder {
            extractor: self.extractor,
            config: self.config,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            on_missing_key: self.on_missing_key,
            classifier,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Registers the keyed breaker's handle in `registry`.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener, shared by every key's breaker.
    pub fn on_event(mut self, listener: impl Listener<CircuitBreakerEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Publishes the keyed breaker's events as metrics through the [`metrics`]
    /// facade (feature `metrics`): `buttress_circuit_breaker_transitions_total{from,to}`
    /// and `buttress_circuit_breaker_calls_total{kind}` over every key
    /// (never labelled by key; no state or rate gauges, since each key has
    /// its own), labelled
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

    /// The listeners, with the metrics bridge when it is on.
    fn all_listeners(&self) -> Listeners<CircuitBreakerEvent> {
        #[allow(unused_mut)]
        let mut listeners = self.listeners.clone();
        #[cfg(feature = "metrics")]
        let _no_rates = crate::metrics::attach(
            &self.config.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
            None,
        );
        listeners
    }

    /// Validates and builds the layer. `K` is the extractor's key type for
    /// the request type the layer is used with.
    pub fn build<K>(self) -> Result<KeyedCircuitBreakerLayer<X, K, C>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    {
        let settings = self.config.validate()?;
        if self.max_keys == 0 {
            return Err(ConfigError::new(KIND, "max_keys", "must be at least 1"));
        }
        let listeners = self.all_listeners();
        let name: Arc<str> = Arc::from(self.config.name.as_str());
        let layer = KeyedCircuitBreakerLayer {
            extractor: Arc::new(self.extractor),
            keyed: Arc::new(Keyed {
                unkeyed: Shared::new(name.clone(), settings.clone(), listeners.clone(), None),
                name,
                settings: Mutex::new(settings),
                reconfig: Mutex::new(()),
                listeners,
                map: BoundedMap::new(self.max_keys, self.idle_timeout),
                missing: MissingKeys::new(self.on_missing_key, std::any::type_name::<X>()),
            }),
            classifier: self.classifier,
        };
        if let Some(registry) = &self.registry {
            registry
                .register(layer.handle())
                .map_err(|e| ConfigError::new(KIND, "name", e.to_string()))?;
        }
        Ok(layer)
    }
}

/// The service of [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreaker<S, X, K, C> {
    inner: S,
    extractor: Arc<X>,
    keyed: Arc<Keyed<K>>,
    classifier: C,
}

impl<S: Clone, X, K, C: Clone> Clone for KeyedCircuitBreaker<S, X, K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extractor: self.extractor.clone(),
            keyed: self.keyed.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, X, K, C> fmt::Debug for KeyedCircuitBreaker<S, X, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.keyed.name)
            .finish()
    }
}

impl<S, X, K, C, Req> Service<Req> for KeyedCircuitBreaker<S, X, K, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Req, Key = K>,
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    C: Classifier<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let keyed = &self.keyed;
        let shared = match self.extractor.extract(&req) {
            Some(key) => keyed.breaker(key),
            None => {
                match keyed.missing.note(&keyed.name) {
                    MissingKey::SharedBucket => keyed.unkeyed.clone(),
                    // `Reject`, and any policy added later: the safe one.
                    _ => {
                        return KeyedResponseFuture {
                            kind: KeyedKind::KeyMissing {
                                error: Some(KeyMissing::new(
                                    keyed.name.clone(),
                                    keyed.missing.extractor(),
                                )),
                            },
                        };
                    }
                }
            }
        };
        let inner = match shared.admit() {
            Admission::Reject(retry_after) => {
                shared.count_not_permitted();
                ResponseFuture::rejected(CircuitOpen::new(shared.name.clone(), retry_after))
            }
            Admission::Permit {
                gen,
                probe,
                recording,
            } => {
                let admitted = Admitted::new(&shared, gen, probe, recording);
                let start = shared.call_start();
                ResponseFuture::called(
                    self.inner.call(req),
                    self.classifier.clone(),
                    admitted,
                    start,
                )
            }
        };
        KeyedResponseFuture {
            kind: KeyedKind::Breaker { inner },
        }
    }
}

pin_project! {
    /// Response future of [`KeyedCircuitBreaker`]: the breaker's own
    /// future, or a [`KeyMissing`] rejection.
    pub struct KeyedResponseFuture<F, C> {
        #[pin]
        kind: KeyedKind<F, C>,
    }
}

pin_project! {
    #[project = KeyedKindProj]
    enum KeyedKind<F, C> {
        Breaker {
            #[pin]
            inner: ResponseFuture<F, C>,
        },
        KeyMissing {
            error: Option<KeyMissing>,
        },
    }
}

impl<F, C> fmt::Debug for KeyedResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for KeyedResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KeyedKindProj::Breaker { inner } => inner.poll(cx),
            KeyedKindProj::KeyMissing { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(error.into()))
            }
        }
    }
}

/// Observes the breakers of a [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreakerHandle<K> {
    keyed: Arc<Keyed<K>>,
}

impl<K> Clone for KeyedCircuitBreakerHandle<K> {
    fn clone(&self) -> Self {
        Self {
            keyed: self.keyed.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedCircuitBreakerHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerHandle")
            .field("name", &self.keyed.name)
            .finish()
    }
}

impl<K: Hash + Eq> KeyedCircuitBreakerHandle<K> {
    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.keyed.map.len()
    }

    /// The breaker of one key, if it is held.
    pub fn key(&self, key: &K) -> Option<CircuitBreakerHandle> {
        self.keyed
            .map
            .get(key)
            .map(CircuitBreakerHandle::from_shared)
    }

    /// The breaker shared by requests with a new key while the map is
    /// full, and by requests without a key with
    /// [`MissingKey::SharedBucket`].
    pub fn unkeyed(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::from_shared(self.keyed.unkeyed.clone())
    }

    /// Requests whose key the extractor could not find, whatever the
    /// [`MissingKey`] policy did with them.
    pub fn missing_key(&self) -> u64 {
        self.keyed.missing.count()
    }

    /// The policy for requests without a key.
    pub fn on_missing_key(&self) -> MissingKey {
        self.keyed.missing.policy()
    }

    /// The current per-key settings, as a [`CircuitBreakerConfig`]: what
    /// every key's breaker (and the shared one) runs with.
    ///
    /// ```
    /// use buttress_circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
    /// use buttress_core::key::UriAuthority;
    ///
    /// let layer = KeyedCircuitBreakerLayer::builder(UriAuthority)
    ///     .config(CircuitBreakerConfig { minimum_calls: 5, ..CircuitBreakerConfig::default() })
    ///     .build::<String>()
    ///     .unwrap();
    /// assert_eq!(layer.handle().config().minimum_calls, 5);
    /// ```
    pub fn config(&self) -> CircuitBreakerConfig {
        self.keyed.settings().config.clone()
    }

    /// Applies `config` to every key's breaker, the ones held now, the
    /// shared one and the ones added later, with the rules of
    /// [`CircuitBreakerHandle::reconfigure`]: validated as
    /// [`CircuitBreakerConfig::build`] validates it; `name`, the window
    /// and the mode refused when different, with nothing changed; the
    /// rest live, each breaker keeping its state and window. The keyed
    /// settings that are not in a `CircuitBreakerConfig` (`max_keys`,
    /// `idle_timeout`, `on_missing_key`) stay as built.
    ///
    /// A key added while the change is under way gets the new settings:
    /// either it is made from them, or it is in the map by the time the
    /// change walks it.
    ///
    /// ```
    /// use buttress_circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
    /// use buttress_core::key::UriAuthority;
    ///
    /// let layer = KeyedCircuitBreakerLayer::builder(UriAuthority).build::<String>().unwrap();
    /// let handle = layer.handle();
    /// let new = CircuitBreakerConfig { failure_rate_threshold: 20.0, ..handle.config() };
    /// handle.reconfigure(&new).unwrap();
    /// assert_eq!(handle.config(), new);
    /// assert_eq!(handle.unkeyed().config(), new);
    /// ```
    pub fn reconfigure(&self, config: &CircuitBreakerConfig) -> Result<(), ConfigError> {
        let settings = config.validate()?;
        let _writer = self
            .keyed
            .reconfig
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Every breaker of the map was made with the same fixed settings:
        // if the shared one takes the change, every key does.
        self.keyed.unkeyed.reconfigure(&settings)?;
        // New keys next: a key made from here on starts with the new
        // settings; one made before is in the map when the walk below
        // reaches its shard (it is made and inserted under that shard's
        // lock).
        *self.keyed.settings() = settings.clone();
        for shared in self.keyed.map.values() {
            shared.reconfigure(&settings)?;
        }
        Ok(())
    }

    /// What [`reconfigure`](Self::reconfigure) would answer, without
    /// applying anything (see [`CircuitBreakerHandle::check_reconfigure`]).
    pub fn check_reconfigure(&self, config: &CircuitBreakerConfig) -> Result<(), ConfigError> {
        let settings = config.validate()?;
        self.keyed.unkeyed.check(&settings)
    }

    /// How many held keys are in each state.
    pub fn states(&self) -> HashMap<State, usize> {
        let mut counts = HashMap::new();
        for shared in self.keyed.map.values() {
            *counts.entry(shared.state()).or_insert(0) += 1;
        }
        counts
    }
}

impl<K: Hash + Eq + Send + Sync + 'static> Component for KeyedCircuitBreakerHandle<K> {
    fn name(&self) -> &str {
        &self.keyed.name
    }

    fn kind(&self) -> &'static str {
        KEYED_KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let states: serde_json::Map<String, serde_json::Value> = self
            .states()
            .into_iter()
            .map(|(s, n)| (s.as_str().to_owned(), n.into()))
            .collect();
        serde_json::json!({
            "keys": self.keys(),
            "max_keys": self.keyed.map.max_keys(),
            "states": states,
            "unkeyed": self.keyed.unkeyed.state().as_str(),
            "missing_key": self.missing_key(),
            "on_missing_key": self.keyed.missing.policy().as_str(),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
