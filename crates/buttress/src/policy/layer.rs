//! The layer a [`Policy`](super::Policy) builds.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_bulkhead::{Bulkhead, BulkheadLayer};
use buttress_circuit_breaker::{CircuitBreaker, CircuitBreakerBuilder, CircuitBreakerLayer};
use buttress_core::{BoxError, ErrorsAsFailures, GrpcClassifier, HttpClassifier, Registry};
use buttress_rate_limit::RateLimitLayer;
use buttress_retry::{
    CloneRequest, GrpcRetry, HttpReplay, HttpRetry, Retry, RetryBuilder, RetryErrors, RetryLayer,
};
use buttress_timeout::{Prepared, RequestTimeout, Timeout, TimeoutLayer};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::Policy;
use buttress_core::ConfigError;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Generic {}
    impl Sealed for super::Http {}
    impl Sealed for super::Grpc {}
}

/// How a policy classifies outcomes and replays requests: [`Generic`]
/// (every error is a failure and is retried, requests are cloned),
/// [`Http`] or [`Grpc`]. Sealed: pick one of the three.
pub trait Flavor: sealed::Sealed + Send + Sync + 'static {
    /// The circuit breaker's classifier.
    type Classifier: Clone + Send + Sync + 'static;
    /// The retry's policy.
    type RetryPolicy: Clone + Send + Sync + 'static;
    /// How the retry keeps the request for the next attempt.
    type Replay: Clone + Send + Sync + 'static;

    /// The classifier.
    fn classifier() -> Self::Classifier;

    /// The retry builder the policy's retry config is applied to.
    fn retry() -> RetryBuilder<Self::RetryPolicy, Self::Replay>;

    /// Which flavor this is, as data.
    fn kind() -> FlavorKind;
}

/// A [`Flavor`] as data: how a policy file names it (`flavor = "http"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum FlavorKind {
    /// [`Generic`].
    #[default]
    Generic,
    /// [`Http`].
    Http,
    /// [`Grpc`].
    Grpc,
}

impl fmt::Display for FlavorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlavorKind::Generic => "generic",
            FlavorKind::Http => "http",
            FlavorKind::Grpc => "grpc",
        })
    }
}

/// Any request and response: every error is a failure and is retried;
/// requests are cloned for a retry (`Req: Clone`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Generic;

/// HTTP clients: 5xx and 429 responses are failures; 502, 503, 504 and
/// 429 are retried, idempotent methods only, with `Retry-After`
/// honoured; bodies up to 64 KiB are kept for a retry
/// ([`RetryLayer::for_http`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

/// gRPC clients over HTTP: the gRPC status decides
/// ([`GrpcClassifier`], [`RetryLayer::for_grpc`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Grpc;

impl Flavor for Generic {
    type Classifier = ErrorsAsFailures;
    type RetryPolicy = RetryErrors;
    type Replay = CloneRequest;

    fn classifier() -> ErrorsAsFailures {
        ErrorsAsFailures
    }

    fn retry() -> RetryBuilder<RetryErrors, CloneRequest> {
        RetryLayer::builder()
    }

    fn kind() -> FlavorKind {
        FlavorKind::Generic
    }
}

impl Flavor for Http {
    type Classifier = HttpClassifier;
    type RetryPolicy = HttpRetry;
    type Replay = HttpReplay;

    fn classifier() -> HttpClassifier {
        HttpClassifier::new()
    }

    fn retry() -> RetryBuilder<HttpRetry, HttpReplay> {
        RetryLayer::for_http()
    }

    fn kind() -> FlavorKind {
        FlavorKind::Http
    }
}

impl Flavor for Grpc {
    type Classifier = GrpcClassifier;
    type RetryPolicy = GrpcRetry;
    type Replay = HttpReplay;

    fn classifier() -> GrpcClassifier {
        GrpcClassifier::new()
    }

    fn retry() -> RetryBuilder<GrpcRetry, HttpReplay> {
        RetryLayer::for_grpc()
    }

    fn kind() -> FlavorKind {
        FlavorKind::Grpc
    }
}

/// The layer of a built [`Policy`]: the instances it names, built once and
/// shared by every service it wraps (and every clone of those).
///
/// Made by [`Policy::build`] (or `build_http`, `build_grpc`,
/// `build_named`); a [`Layer`] whose services fail with a
/// [`BoxError`]: the inner service's error, or a buttress rejection that
/// [`kind_of`](buttress_core::error::kind_of) names.
pub struct PolicyLayer<F: Flavor = Generic> {
    pub(crate) name: Arc<str>,
    /// Always there: an empty slot is a timeout that never arms its timer
    /// (one branch), which costs less than a slot of another type.
    pub(crate) timeout: TimeoutLayer<SlotTimeout>,
    pub(crate) retry: Slot<RetryLayer<F::RetryPolicy, F::Replay>>,
    /// An empty slot of these three holds the layer's pass-through form
    /// (one branch, the same type), not a wrapper of another type around
    /// the layers below.
    pub(crate) circuit_breaker: Slot<CircuitBreakerLayer<F::Classifier>>,
    pub(crate) rate_limit: Slot<RateLimitLayer>,
    pub(crate) bulkhead: Slot<BulkheadLayer>,
    pub(crate) attempt_timeout: TimeoutLayer<SlotTimeout>,
}

impl<F: Flavor> Clone for PolicyLayer<F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            timeout: self.timeout.clone(),
            retry: self.retry.clone(),
            circuit_breaker: self.circuit_breaker.clone(),
            rate_limit: self.rate_limit.clone(),
            bulkhead: self.bulkhead.clone(),
            attempt_timeout: self.attempt_timeout.clone(),
        }
    }
}

impl<F: Flavor> fmt::Debug for PolicyLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |present: bool, slot: &'static str| present.then_some(slot);
        let slots: Vec<&str> = [
            on(self.timeout.policy().0, "timeout"),
            on(self.retry.filled, "retry"),
            on(self.circuit_breaker.filled, "circuit_breaker"),
            on(self.rate_limit.filled, "rate_limit"),
            on(self.bulkhead.filled, "bulkhead"),
            on(self.attempt_timeout.policy().0, "attempt_timeout"),
        ]
        .into_iter()
        .flatten()
        .collect();
        f.debug_struct("PolicyLayer")
            .field("name", &self.name)
            .field("layers", &slots)
            .finish()
    }
}

impl<F: Flavor> PolicyLayer<F> {
    /// The policy's name (`"policy"` unless built with
    /// [`Policy::build_named`]); its instances are named
    /// `"<name>.<slot>"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The total timeout's layer, for its handle (`None` when the slot
    /// is empty).
    pub fn timeout(&self) -> Option<&TimeoutLayer<SlotTimeout>> {
        self.timeout.policy().0.then_some(&self.timeout)
    }

    /// The retry's layer, for its handle.
    pub fn retry(&self) -> Option<&RetryLayer<F::RetryPolicy, F::Replay>> {
        self.retry.get()
    }

    /// The circuit breaker's layer, for its handle.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerLayer<F::Classifier>> {
        self.circuit_breaker.get()
    }

    /// The rate limiter's layer, for its handle.
    pub fn rate_limit(&self) -> Option<&RateLimitLayer> {
        self.rate_limit.get()
    }

    /// The bulkhead's layer, for its handle.
    pub fn bulkhead(&self) -> Option<&BulkheadLayer> {
        self.bulkhead.get()
    }

    /// The per-attempt timeout's layer, for its handle (`None` when the
    /// slot is empty).
    pub fn attempt_timeout(&self) -> Option<&TimeoutLayer<SlotTimeout>> {
        self.attempt_timeout
            .policy()
            .0
            .then_some(&self.attempt_timeout)
    }

    /// The names of the instances the policy built.
    pub fn instance_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if let Some(l) = self.timeout() {
            names.push(l.handle().name().to_owned());
        }
        if let Some(l) = self.retry.get() {
            names.push(l.handle().name().to_owned());
        }
        if let Some(l) = self.circuit_breaker.get() {
            names.push(l.handle().name().to_owned());
        }
        if let Some(l) = self.rate_limit.get() {
            names.push(l.handle().name().to_owned());
        }
        if let Some(l) = self.bulkhead.get() {
            names.push(l.handle().name().to_owned());
        }
        if let Some(l) = self.attempt_timeout() {
            names.push(l.handle().name().to_owned());
        }
        names
    }
}

/// A slot of a policy: the layer the policy names when `filled`, else the
/// layer's pass-through form.
#[derive(Clone)]
pub(crate) struct Slot<L> {
    pub(crate) layer: L,
    pub(crate) filled: bool,
}

impl<L> Slot<L> {
    fn new(filled: Option<L>, empty: impl FnOnce() -> L) -> Self {
        match filled {
            Some(layer) => Self {
                layer,
                filled: true,
            },
            None => Self {
                layer: empty(),
                filled: false,
            },
        }
    }

    /// The layer, when the policy names one.
    pub(crate) fn get(&self) -> Option<&L> {
        self.filled.then_some(&self.layer)
    }
}

/// The policy of a timeout slot: the configured timeout when the slot is
/// filled, none when it is empty (the timer is never armed).
#[derive(Debug, Clone, Copy)]
pub struct SlotTimeout(bool);

impl SlotTimeout {
    /// Whether the slot is filled.
    pub fn is_filled(&self) -> bool {
        self.0
    }
}

impl<Req> RequestTimeout<Req> for SlotTimeout {
    #[inline]
    fn prepare(&self, _req: &mut Req, _configured: Duration) -> Prepared {
        if self.0 {
            Prepared::Configured
        } else {
            Prepared::Unlimited
        }
    }
}

/// An empty timeout slot: not named after the policy, not registered.
fn disabled_timeout() -> TimeoutLayer<SlotTimeout> {
    TimeoutLayer::builder(Duration::from_secs(1))
        .build()
        .expect("one second is a valid timeout")
        .with_policy(SlotTimeout(false))
}

/// `"<policy>.<slot>"` for a config that kept its default name, else the
/// config's own name.
fn instance_name(config_name: &str, default_name: &str, policy: &str, slot: &str) -> String {
    if config_name == default_name {
        format!("{policy}.{slot}")
    } else {
        config_name.to_owned()
    }
}

/// A validation error of one slot, with the slot in its field:
/// `retry.max_attempts`.
pub(crate) fn in_slot(slot: &'static str, e: ConfigError) -> SlotError {
    SlotError { slot, error: e }
}

/// A [`ConfigError`] of one slot of a policy.
#[derive(Debug, Clone)]
pub(crate) struct SlotError {
    pub(crate) slot: &'static str,
    pub(crate) error: ConfigError,
}

impl Policy {
    /// Builds the policy for any request and response ([`Generic`]):
    /// every error is a failure and is retried; a retry needs `Req:
    /// Clone`. The instances are named `"policy.<slot>"`.
    pub fn build(&self) -> Result<PolicyLayer<Generic>, ConfigError> {
        self.build_with::<Generic>("policy", None)
    }

    /// Builds the policy for HTTP clients ([`Http`]).
    pub fn build_http(&self) -> Result<PolicyLayer<Http>, ConfigError> {
        self.build_with::<Http>("policy", None)
    }

    /// Builds the policy for gRPC clients ([`Grpc`]).
    pub fn build_grpc(&self) -> Result<PolicyLayer<Grpc>, ConfigError> {
        self.build_with::<Grpc>("policy", None)
    }

    /// Builds the policy with its instances named `"<name>.<slot>"`
    /// (`"orders.circuit_breaker"`; a slot whose config has a name of its
    /// own keeps it) and, with a registry, registered in it.
    ///
    /// ```
    /// use buttress::policy::{Generic, Policy};
    /// use buttress::circuit_breaker::CircuitBreakerHandle;
    ///
    /// let registry = buttress::Registry::new();
    /// let layer = Policy::database()
    ///     .build_named::<Generic>("orders", Some(&registry))
    ///     .unwrap();
    /// assert_eq!(layer.name(), "orders");
    /// let breaker: CircuitBreakerHandle = registry.get("orders.circuit_breaker").unwrap();
    /// assert_eq!(breaker.name(), "orders.circuit_breaker");
    /// ```
    pub fn build_named<F: Flavor>(
        &self,
        name: &str,
        registry: Option<&Registry>,
    ) -> Result<PolicyLayer<F>, ConfigError> {
        self.build_with::<F>(name, registry)
    }

    pub(crate) fn build_with<F: Flavor>(
        &self,
        name: &str,
        registry: Option<&Registry>,
    ) -> Result<PolicyLayer<F>, ConfigError> {
        self.build_slots::<F>(name, registry)
            .map_err(|e| prefixed(e.slot, e.error))
    }

    pub(crate) fn build_slots<F: Flavor>(
        &self,
        name: &str,
        registry: Option<&Registry>,
    ) -> Result<PolicyLayer<F>, SlotError> {
        let timeout_default = buttress_timeout::TimeoutConfig::default().name;
        let timeout_layer = |slot: &'static str, c: &buttress_timeout::TimeoutConfig| {
            let mut b = c
                .builder()
                .name(instance_name(&c.name, &timeout_default, name, slot));
            if let Some(r) = registry {
                b = b.registry(r);
            }
            b.build().map_err(|e| in_slot(slot, e))
        };
        let slot = |slot: &'static str, c: &Option<buttress_timeout::TimeoutConfig>| match c {
            Some(c) => Ok(timeout_layer(slot, c)?.with_policy(SlotTimeout(true))),
            None => Ok(disabled_timeout()),
        };
        let timeout = slot("timeout", &self.timeout)?;
        let attempt_timeout = slot("attempt_timeout", &self.attempt_timeout)?;
        let retry = self
            .retry
            .as_ref()
            .map(|c| {
                let default = buttress_retry::RetryConfig::default().name;
                let mut b = c
                    .apply(F::retry())
                    .map_err(|e| in_slot("retry", e))?
                    .name(instance_name(&c.name, &default, name, "retry"));
                if let Some(r) = registry {
                    b = b.registry(r);
                }
                b.build().map_err(|e| in_slot("retry", e))
            })
            .transpose()?;
        let circuit_breaker = self
            .circuit_breaker
            .as_ref()
            .map(|c| {
                let default = buttress_circuit_breaker::CircuitBreakerConfig::default().name;
                let mut b: CircuitBreakerBuilder = c.builder();
                b = b.name(instance_name(&c.name, &default, name, "circuit_breaker"));
                if let Some(r) = registry {
                    b = b.registry(r);
                }
                b.classifier(F::classifier())
                    .build()
                    .map_err(|e| in_slot("circuit_breaker", e))
            })
            .transpose()?;
        let rate_limit = self
            .rate_limit
            .as_ref()
            .map(|c| {
                let default = buttress_rate_limit::RateLimitConfig::new(
                    buttress_rate_limit::Rate::per_second(1),
                )
                .name;
                let mut b = c
                    .builder()
                    .name(instance_name(&c.name, &default, name, "rate_limit"));
                if let Some(r) = registry {
                    b = b.registry(r);
                }
                b.build().map_err(|e| in_slot("rate_limit", e))
            })
            .transpose()?;
        let bulkhead = self
            .bulkhead
            .as_ref()
            .map(|c| {
                let default = buttress_bulkhead::BulkheadConfig::default().name;
                let mut b = c
                    .builder()
                    .name(instance_name(&c.name, &default, name, "bulkhead"));
                if let Some(r) = registry {
                    b = b.registry(r);
                }
                b.build().map_err(|e| in_slot("bulkhead", e))
            })
            .transpose()?;
        Ok(PolicyLayer {
            name: Arc::from(name),
            timeout,
            retry: Slot::new(retry, || {
                F::retry()
                    .name("pass_through")
                    .build()
                    .expect("the default retry is valid")
                    .into_pass_through()
            }),
            circuit_breaker: Slot::new(circuit_breaker, || {
                CircuitBreakerLayer::pass_through(F::classifier())
            }),
            rate_limit: Slot::new(rate_limit, RateLimitLayer::pass_through),
            bulkhead: Slot::new(bulkhead, BulkheadLayer::pass_through),
            attempt_timeout,
        })
    }
}

/// `ConfigError` of `slot` with the slot before its field: the error of
/// `retry.max_attempts`.
fn prefixed(slot: &'static str, e: ConfigError) -> ConfigError {
    ConfigError::new(e.component(), slot_field(slot, e.field()), e.reason())
}

/// `"<slot>.<field>"` as a `&'static str`: the few combinations that occur
/// are leaked once each and reused.
pub(crate) fn slot_field(slot: &'static str, field: &'static str) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashMap<(&'static str, &'static str), &'static str>>> =
        OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    names
        .entry((slot, field))
        .or_insert_with(|| Box::leak(format!("{slot}.{field}").into_boxed_str()))
}

/// The service of the bulkhead slot and below.
type Attempt<S> = Timeout<S, SlotTimeout>;
type Bulk<S> = Bulkhead<Attempt<S>>;
type Rate<S> = <RateLimitLayer as Layer<Bulk<S>>>::Service;
type Breaker<S, F> = CircuitBreaker<Rate<S>, <F as Flavor>::Classifier>;
type Retrying<S, F> = Retry<Breaker<S, F>, <F as Flavor>::RetryPolicy, <F as Flavor>::Replay>;

/// The service a [`PolicyLayer`] makes: the slots' services nested in
/// the policy's order, each present or not.
pub type PolicyService<S, F = Generic> = Timeout<Retrying<S, F>, SlotTimeout>;

impl<S: Clone, F: Flavor> Layer<S> for PolicyLayer<F> {
    type Service = PolicyService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        let s = self.attempt_timeout.layer(inner);
        let s = self.bulkhead.layer.layer(s);
        let s = self.rate_limit.layer.layer(s);
        let s = self.circuit_breaker.layer.layer(s);
        let s = self.retry.layer.layer(s);
        self.timeout.layer(s)
    }
}

/// A slot of a policy: the slot's service (`On`) or the service below it
/// (`Off`). Both answer with the same response; errors become
/// [`BoxError`]s.
#[derive(Clone, Debug)]
pub enum Maybe<A, B> {
    /// The slot is filled.
    On {
        /// The slot's service.
        service: A,
    },
    /// The slot is empty.
    Off {
        /// The service below.
        service: B,
    },
}

impl<A, B, Req> Service<Req> for Maybe<A, B>
where
    A: Service<Req>,
    A::Error: Into<BoxError>,
    B: Service<Req, Response = A::Response>,
    B::Error: Into<BoxError>,
{
    type Response = A::Response;
    type Error = BoxError;
    type Future = MaybeFuture<A::Future, B::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Maybe::On { service } => service.poll_ready(cx).map_err(Into::into),
            Maybe::Off { service } => service.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            Maybe::On { service } => MaybeFuture {
                kind: Kind::On {
                    future: service.call(req),
                },
            },
            Maybe::Off { service } => MaybeFuture {
                kind: Kind::Off {
                    future: service.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`Maybe`].
    pub struct MaybeFuture<A, B> {
        #[pin]
        kind: Kind<A, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<A, B> {
        On { #[pin] future: A },
        Off { #[pin] future: B },
    }
}

impl<A, B> fmt::Debug for MaybeFuture<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaybeFuture").finish_non_exhaustive()
    }
}

impl<A, B, T, EA, EB> Future for MaybeFuture<A, B>
where
    A: Future<Output = Result<T, EA>>,
    B: Future<Output = Result<T, EB>>,
    EA: Into<BoxError>,
    EB: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::On { future } => future.poll(cx).map_err(Into::into),
            KindProj::Off { future } => future.poll(cx).map_err(Into::into),
        }
    }
}
