use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use buttress_core::registry::Component;
use buttress_core::{BoxError, ConfigError, Listener, Listeners, Registry};
use tower_layer::Layer;
use tower_service::Service;

use crate::events::FallbackEvent;
use crate::marker::{FallbackReason, HttpMarker, Mark, NoMark};
use crate::service::Fallback;
use crate::source::{Failure, FromError, FromRequest, ToService, Unavailable, Value, WithoutBody};
use crate::trigger::{AnyError, Classified, Kinds, Predicate};

pub(crate) const KIND: &str = "fallback";

// ===== Shared =====

/// What the layer, its services, futures and handles share: the name, the
/// listeners and the counters.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    listeners: Listeners<FallbackEvent>,
    /// Whether a call answered by the primary is counted and reported:
    /// set by listeners, a registry or a handle. Until then the happy path
    /// touches no shared counter.
    observed: AtomicBool,
    primary: AtomicU64,
    used: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// The primary's result went back.
    #[inline]
    pub(crate) fn primary(&self) {
        if self.observed.load(Ordering::Relaxed) {
            self.primary_observed();
        }
    }

    #[cold]
    fn primary_observed(&self) {
        self.primary.fetch_add(1, Ordering::Relaxed);
        self.listeners.emit(|| FallbackEvent::Primary {
            name: self.name.clone(),
        });
    }

    #[cold]
    pub(crate) fn used(&self, reason: FallbackReason) {
        self.used.fetch_add(1, Ordering::Relaxed);
        trace_used(&self.name, reason);
        self.listeners.emit(|| FallbackEvent::Used {
            name: self.name.clone(),
            reason,
        });
    }

    #[cold]
    pub(crate) fn failed(&self, reason: FallbackReason, error: &(dyn std::error::Error + 'static)) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        trace_failed(&self.name, reason, error);
        self.listeners.emit(|| FallbackEvent::Failed {
            name: self.name.clone(),
            reason,
            error: error.to_string(),
        });
    }

    fn snapshot(&self) -> FallbackSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (primary, used, failed) = (load(&self.primary), load(&self.used), load(&self.failed));
        FallbackSnapshot {
            calls: primary + used + failed,
            primary,
            fallbacks_used: used,
            fallback_failures: failed,
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("name", &self.name)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

fn trace_used(name: &str, reason: FallbackReason) {
    tracing::debug!(
        buttress.pattern = KIND,
        buttress.name = name,
        fallback.reason = reason.as_str(),
        "fallback used"
    );
}

fn trace_failed(name: &str, reason: FallbackReason, error: &(dyn std::error::Error + 'static)) {
    tracing::warn!(
        buttress.pattern = KIND,
        buttress.name = name,
        fallback.reason = reason.as_str(),
        error = %error,
        "fallback failed"
    );
}

/// The source, the trigger and the marker, with the shared state: one
/// allocation per layer.
pub(crate) struct Inner<Src, T, M> {
    pub(crate) source: Src,
    pub(crate) trigger: T,
    pub(crate) marker: M,
    /// The name when it is a `&'static str`: a quiet future carries it
    /// instead of a reference to this state.
    static_name: Option<&'static str>,
    pub(crate) shared: Arc<Shared>,
}

/// Whether a value of type `X` is a plain copy to clone: no drop glue (so
/// it owns no heap memory) and at most 32 bytes. A unit struct, a
/// non-capturing closure, a `u64`, a `&'static str`, the HTTP classifier.
pub(crate) const fn is_plain<X>() -> bool {
    !std::mem::needs_drop::<X>() && std::mem::size_of::<X>() <= 32
}

impl<Src: Clone, T: Clone, M: Clone> Inner<Src, T, M> {
    /// What a response future carries: copies of the source, trigger and
    /// marker when they are plain and nobody observes the layer (no
    /// reference count per call), else a reference to this state.
    #[inline]
    pub(crate) fn link<Res>(self: &Arc<Self>) -> Link<Src, T, M>
    where
        M: Mark<Res>,
    {
        match self.static_name {
            Some(name)
                if is_plain::<Src>()
                    && is_plain::<T>()
                    && self.marker.clone_is_plain()
                    && !self.shared.observed.load(Ordering::Relaxed) =>
            {
                Link::Quiet {
                    source: self.source.clone(),
                    trigger: self.trigger.clone(),
                    marker: self.marker.clone(),
                    name,
                }
            }
            _ => Link::Observed(self.clone()),
        }
    }
}

/// A response future's way to the source, the trigger, the marker and the
/// counters.
pub(crate) enum Link<Src, T, M> {
    /// Nobody observes the layer and its parts are plain copies: the
    /// future carries its own, and the static name for logs and errors.
    Quiet {
        source: Src,
        trigger: T,
        marker: M,
        name: &'static str,
    },
    /// Listeners, a registry or a handle, or parts that are not plain.
    Observed(Arc<Inner<Src, T, M>>),
}

impl<Src, T, M> Link<Src, T, M> {
    #[inline]
    pub(crate) fn source(&self) -> &Src {
        match self {
            Link::Quiet { source, .. } => source,
            Link::Observed(inner) => &inner.source,
        }
    }

    #[inline]
    pub(crate) fn trigger(&self) -> &T {
        match self {
            Link::Quiet { trigger, .. } => trigger,
            Link::Observed(inner) => &inner.trigger,
        }
    }

    #[inline]
    pub(crate) fn marker(&self) -> &M {
        match self {
            Link::Quiet { marker, .. } => marker,
            Link::Observed(inner) => &inner.marker,
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Link::Quiet { name, .. } => name,
            Link::Observed(inner) => &inner.shared.name,
        }
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        match self {
            Link::Quiet { name, .. } => Arc::from(*name),
            Link::Observed(inner) => inner.shared.name.clone(),
        }
    }

    /// The primary's result went back.
    #[inline]
    pub(crate) fn primary(&self) {
        if let Link::Observed(inner) = self {
            inner.shared.primary();
        }
    }

    #[cold]
    pub(crate) fn used(&self, reason: FallbackReason) {
        match self {
            Link::Quiet { name, .. } => trace_used(name, reason),
            Link::Observed(inner) => inner.shared.used(reason),
        }
    }

    #[cold]
    pub(crate) fn failed(&self, reason: FallbackReason, error: &(dyn std::error::Error + 'static)) {
        match self {
            Link::Quiet { name, .. } => trace_failed(name, reason, error),
            Link::Observed(inner) => inner.shared.failed(reason, error),
        }
    }
}

// ===== FallbackLayer =====

/// Answers from a fallback when the service below fails, is rejected, or
/// returns a response the trigger calls a failure.
///
/// `Src` is the [`FallbackSource`](crate::FallbackSource), `T` the [`Trigger`](crate::Trigger) (default: any
/// error), `M` the [`Mark`](crate::Mark)er of fallback responses (default: none; HTTP
/// responses take [`HttpMarker`](crate::HttpMarker)). Every service made by one layer shares
/// its source, trigger and counters. Start from one of the sources:
///
/// ```
/// use buttress_fallback::FallbackLayer;
/// use buttress_core::{BoxError, ErrorKind};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = FallbackLayer::value(Vec::<u32>::new())
///     .name("recommendations")
///     .on_kinds([ErrorKind::CircuitOpen, ErrorKind::Timeout])
///     .build()
///     .unwrap();
/// let svc = layer.layer(service_fn(|user: u64| async move {
///     Err::<Vec<u32>, BoxError>(buttress_core::Elapsed::new("ml".into(), std::time::Duration::from_secs(1)).into())
/// }));
/// assert_eq!(svc.oneshot(7).await.unwrap(), Vec::<u32>::new());
/// assert_eq!(layer.handle().snapshot().fallbacks_used, 1);
/// # }
/// ```
pub struct FallbackLayer<Src, T = AnyError, M = NoMark> {
    inner: Arc<Inner<Src, T, M>>,
}

impl<Src, T, M> Clone for FallbackLayer<Src, T, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<Src, T, M> fmt::Debug for FallbackLayer<Src, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.inner.shared.name)
            .field("source", &std::any::type_name::<Src>())
            .field("trigger", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl FallbackLayer<()> {
    /// A fixed response, cloned for each fallback. The request is not
    /// kept: any `Req` works, and the happy path clones nothing.
    ///
    /// An `http::Response` is `Clone` only when its body is (`String`,
    /// `Bytes`, `Full<Bytes>`); for a body that is not (axum's `Body`),
    /// build the response in [`from_error`](Self::from_error).
    pub fn value<V: Clone>(value: V) -> FallbackBuilder<Value<V>> {
        FallbackBuilder::new(Value(value))
    }

    /// A function of the failure (the primary's error, or its failed
    /// response). The request is not kept.
    ///
    /// ```
    /// use buttress_fallback::{FallbackLayer, Failure};
    ///
    /// let layer = FallbackLayer::from_error(|failure: &Failure<String>| {
    ///     Ok(format!("degraded: {}", failure.reason()))
    /// })
    /// .build()
    /// .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn from_error<F, Res>(f: F) -> FallbackBuilder<FromError<F, Res>>
    where
        F: Fn(&Failure<Res>) -> Result<Res, BoxError>,
    {
        FallbackBuilder::new(FromError::new(f))
    }

    /// A function of the request and the failure. Needs `Req: Clone`: the
    /// request is cloned before the primary takes it, on every call.
    ///
    /// ```
    /// use buttress_fallback::{FallbackLayer, Failure};
    ///
    /// let layer = FallbackLayer::from_request(|user: u64, _: &Failure<String>| {
    ///     Ok(format!("guest view for {user}"))
    /// })
    /// .build()
    /// .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn from_request<F, Req, Res>(f: F) -> FallbackBuilder<FromRequest<F, Res>>
    where
        Req: Clone,
        F: Fn(Req, &Failure<Res>) -> Result<Res, BoxError>,
    {
        FallbackBuilder::new(FromRequest::new(f))
    }

    /// Another service, a secondary upstream, called with a clone of the
    /// request (`Req: Clone`, cloned before the primary takes it, on every
    /// call). See [`ToService`](crate::ToService).
    pub fn service<S>(service: S) -> FallbackBuilder<ToService<S>>
    where
        S: Clone,
    {
        FallbackBuilder::new(ToService(service))
    }

    /// A secondary HTTP service that gets the request's head and an empty
    /// body `B2`: for requests whose body cannot be cloned. See
    /// [`WithoutBody`](crate::WithoutBody) for what is and is not replayed.
    pub fn service_without_body<S, B2>(service: S) -> FallbackBuilder<WithoutBody<S, B2>>
    where
        S: Service<http::Request<B2>> + Clone,
        B2: Default,
    {
        FallbackBuilder::new(WithoutBody::new(service))
    }

    /// A custom [`FallbackSource`](crate::FallbackSource).
    pub fn builder<Src>(source: Src) -> FallbackBuilder<Src> {
        FallbackBuilder::new(source)
    }

    /// The ready-made fallback of an HTTP server: a 503 with a small JSON
    /// body and `Retry-After` when the cause has one ([`Unavailable`](crate::Unavailable)),
    /// for every error and every response buttress's `HttpClassifier`
    /// calls a failure (`5xx`, `429`), marked with the [`FallbackUsed`]
    /// extension ([`HttpMarker`](crate::HttpMarker); add a header with
    /// [`FallbackBuilder::marker_header`]).
    ///
    /// It answers for every failure of the stack below, as
    /// `ErrorToResponseLayer` does, but with a body that says why and a
    /// marker on the response. Its error type is still `BoxError` (the
    /// 503 never fails, and with the HTTP classifier every error triggers
    /// it, so none comes out); axum wants `Infallible`, so keep
    /// `ErrorToResponseLayer` (or axum's `HandleErrorLayer`) above it. For
    /// an axum body: `http_unavailable::<axum::body::Body>()`.
    ///
    /// [`FallbackUsed`]: crate::FallbackUsed
    ///
    /// ```
    /// use buttress_fallback::FallbackLayer;
    /// use buttress_core::{BoxError, CircuitOpen};
    /// use std::time::Duration;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FallbackLayer::http_unavailable::<String>().name("api").build().unwrap();
    /// let svc = layer.layer(service_fn(|_: http::Request<()>| async {
    ///     let open = CircuitOpen::new("db".into(), Some(Duration::from_millis(1500)));
    ///     Err::<http::Response<String>, BoxError>(open.into())
    /// }));
    /// let res = svc.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(res.status(), 503);
    /// assert_eq!(res.headers()["retry-after"], "2");
    /// assert_eq!(res.body(), r#"{"error":"service_unavailable","reason":"circuit_open","retry_after":2}"#);
    /// # }
    /// ```
    pub fn http_unavailable<B>(
    ) -> FallbackBuilder<Unavailable<B>, Classified<buttress_core::HttpClassifier>, HttpMarker>
    {
        FallbackBuilder::new(Unavailable::new())
            .classify(buttress_core::HttpClassifier::new())
            .mark(HttpMarker::new())
    }
}

impl<Src, T, M> FallbackLayer<Src, T, M> {
    /// A handle to observe the layer.
    ///
    /// The counters start when the first handle is taken (or at build
    /// time, for a layer with listeners, a registry or metrics): until a
    /// layer is observed, a call whose source, trigger and marker are
    /// plain copies (a `u64` value, the ready-made 503, a non-capturing
    /// closure) carries its own copies and touches no shared state at all.
    pub fn handle(&self) -> FallbackHandle {
        self.inner.shared.observed.store(true, Ordering::Relaxed);
        FallbackHandle {
            shared: self.inner.shared.clone(),
        }
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }
}

impl<S, Src, T, M> Layer<S> for FallbackLayer<Src, T, M> {
    type Service = Fallback<S, Src, T, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.inner.clone())
    }
}

// ===== FallbackBuilder =====

/// Builds a [`FallbackLayer`]; made by its constructors
/// ([`FallbackLayer::value`], ...).
pub struct FallbackBuilder<Src, T = AnyError, M = NoMark> {
    source: Src,
    trigger: T,
    marker: M,
    name: Cow<'static, str>,
    registry: Option<Registry>,
    listeners: Listeners<FallbackEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

impl<Src, T, M> fmt::Debug for FallbackBuilder<Src, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackBuilder")
            .field("name", &self.name)
            .field("source", &std::any::type_name::<Src>())
            .field("trigger", &std::any::type_name::<T>())
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl<Src> FallbackBuilder<Src> {
    fn new(source: Src) -> Self {
        Self {
            source,
            trigger: AnyError,
            marker: NoMark,
            name: Cow::Borrowed(KIND),
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }
}

impl<Src, T, M> FallbackBuilder<Src, T, M> {
    /// The instance name, used in errors, events, logs, metrics, the
    /// marker and the registry (default `"fallback"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Replaces the trigger (default [`AnyError`](crate::AnyError)): any [`Trigger`](crate::Trigger), such
    /// as a closure over the whole result.
    pub fn on<T2>(self, trigger: T2) -> FallbackBuilder<Src, T2, M> {
        FallbackBuilder {
            source: self.source,
            trigger,
            marker: self.marker,
            name: self.name,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Only errors with one of these buttress rejection kinds anywhere in
    /// their `source()` chain ([`Kinds`](crate::Kinds)): an open circuit, a timeout, a
    /// full bulkhead, a rate limit... Other errors go back to the caller.
    pub fn on_kinds(self, kinds: impl Into<Kinds>) -> FallbackBuilder<Src, Kinds, M> {
        self.on(kinds.into())
    }

    /// Only errors for which `pred` is `true`.
    ///
    /// ```
    /// use buttress_fallback::FallbackLayer;
    ///
    /// let layer = FallbackLayer::value(0u64)
    ///     .when(|e: &buttress_core::BoxError| e.is::<std::io::Error>())
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn when<F>(self, pred: F) -> FallbackBuilder<Src, Predicate<F>, M>
    where
        F: Fn(&BoxError) -> bool,
    {
        self.on(Predicate(pred))
    }

    /// Errors and responses `classifier` calls a failure: with
    /// `buttress_core::HttpClassifier`, every error and the `5xx` and
    /// `429` responses.
    pub fn classify<C>(self, classifier: C) -> FallbackBuilder<Src, Classified<C>, M> {
        self.on(Classified(classifier))
    }

    /// Replaces the marker (default [`NoMark`](crate::NoMark)): [`HttpMarker`](crate::HttpMarker) for HTTP
    /// responses, or any `Fn(&mut Res, &FallbackUsed)`.
    pub fn mark<M2>(self, marker: M2) -> FallbackBuilder<Src, T, M2> {
        FallbackBuilder {
            source: self.source,
            trigger: self.trigger,
            marker,
            name: self.name,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Marks HTTP fallback responses with the extension and the header
    /// `name` (replacing the marker with an [`HttpMarker`](crate::HttpMarker)).
    pub fn marker_header(self, name: http::HeaderName) -> FallbackBuilder<Src, T, HttpMarker> {
        self.mark(HttpMarker::new().with_header(name))
    }

    /// Registers the layer's handle in `registry` under its name.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener.
    pub fn on_event(mut self, listener: impl Listener<FallbackEvent>) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Publishes the events as metrics through the `metrics` facade
    /// (feature `metrics`): `buttress_fallback_calls_total{name,kind}`,
    /// `kind` = `primary`, `fallback_used` or `fallback_failed`. Install
    /// the recorder before building the layer.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Builds the layer. Fails only when a registry already holds a
    /// component of the same name (a [`ConfigError`] on `name`) or the
    /// name is empty.
    pub fn build(self) -> Result<FallbackLayer<Src, T, M>, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::new(KIND, "name", "must not be empty"));
        }
        #[allow(unused_mut)]
        let mut listeners = self.listeners;
        #[cfg(feature = "metrics")]
        crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
        );
        let observed = !listeners.is_empty() || self.registry.is_some();
        let static_name = match self.name {
            Cow::Borrowed(name) => Some(name),
            Cow::Owned(_) => None,
        };
        let shared = Arc::new(Shared {
            name: Arc::from(self.name.as_ref()),
            listeners,
            observed: AtomicBool::new(observed),
            primary: AtomicU64::new(0),
            used: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let layer = FallbackLayer {
            inner: Arc::new(Inner {
                source: self.source,
                trigger: self.trigger,
                marker: self.marker,
                static_name,
                shared,
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

// ===== FallbackHandle =====

/// Observes a fallback layer: its counters, in the registry too.
#[derive(Clone)]
pub struct FallbackHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for FallbackHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackHandle")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// The counters of a fallback layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FallbackSnapshot {
    /// Calls that completed: `primary + fallbacks_used + fallback_failures`.
    pub calls: u64,
    /// Calls answered by the primary (the trigger did not fire), counted
    /// once the layer is observed (see [`FallbackLayer::handle`]).
    pub primary: u64,
    /// Calls answered by the fallback.
    pub fallbacks_used: u64,
    /// Calls whose fallback failed too.
    pub fallback_failures: u64,
}

impl FallbackHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current counters.
    pub fn snapshot(&self) -> FallbackSnapshot {
        self.shared.snapshot()
    }
}

impl Component for FallbackHandle {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = self.shared.snapshot();
        serde_json::json!({
            "calls": s.calls,
            "primary": s.primary,
            "fallbacks_used": s.fallbacks_used,
            "fallback_failures": s.fallback_failures,
        })
    }

    fn reset(&self) {
        for a in [&self.shared.primary, &self.shared.used, &self.shared.failed] {
            a.store(0, Ordering::Relaxed);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
