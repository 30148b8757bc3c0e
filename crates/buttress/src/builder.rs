use tower::layer::util::Stack;
use tower::ServiceBuilder;

use buttress_core::response::ErrorToResponseLayer;

mod sealed {
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// One method per buttress pattern on tower's [`ServiceBuilder`].
///
/// The names avoid tower's own inherent `timeout`, `concurrency_limit` and
/// `rate_limit` methods, which would take precedence when tower's features
/// enable them (tonic's `transport` turns on `limit`, which adds
/// `ServiceBuilder::rate_limit(num, per)`): hence [`call_timeout`] and
/// [`rate_limit_to`]. tower's `retry` feature adds an inherent
/// `ServiceBuilder::retry` too: when it is on (in your crate or any
/// dependency), [`retry`] resolves to tower's method, so call
/// [`retry_with`] (or `ServiceBuilderExt::retry(builder, layer)`).
///
/// [`call_timeout`]: ServiceBuilderExt::call_timeout
/// [`rate_limit_to`]: ServiceBuilderExt::rate_limit_to
/// [`retry`]: ServiceBuilderExt::retry
/// [`retry_with`]: ServiceBuilderExt::retry_with
///
/// ```
/// use buttress::ServiceBuilderExt;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), buttress::core::ConfigError> {
/// let breaker = buttress::circuit_breaker::CircuitBreakerLayer::builder()
///     .name("upstream")
///     .build()
///     .unwrap();
/// let retry = buttress::retry::RetryLayer::exponential(
///     3,
///     Duration::from_millis(50),
///     Duration::from_secs(1),
/// )
/// .build()
/// .unwrap();
/// let svc = ServiceBuilder::new()
///     .retry_with(retry)
///     .circuit_breaker(breaker)
///     .bulkhead(8)?
///     .call_timeout(Duration::from_secs(1))?
///     .service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x + 1) });
/// assert_eq!(svc.oneshot(1).await.unwrap(), 2);
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Turns buttress rejections into HTTP responses (503, 504, 429, 500,
    /// with `Retry-After` and `RateLimit-*` headers when known, and an
    /// empty body), making the service `Infallible` for axum; see
    /// [`ErrorToResponseLayer`]. For RFC 9457 problem+json bodies, add
    /// `.layer(ErrorToResponseLayer::new().problem_json())` instead.
    fn error_to_response(self) -> ServiceBuilder<Stack<ErrorToResponseLayer, L>>;

    /// For tonic servers: answers every error of the layers below with a
    /// gRPC status (`Unavailable`, `ResourceExhausted` with
    /// `grpc-retry-pushback-ms`, `DeadlineExceeded`, else `Internal`) and
    /// a generic message, making the service `Infallible`; see
    /// [`ErrorToStatusLayer`](crate::core::grpc::ErrorToStatusLayer) (its
    /// `detailed(true)` keeps instance names and reasons, for internal
    /// services). Put it first (outermost), in
    /// `tonic::transport::Server::builder().layer(...)`: without it tonic
    /// resets the stream on a rejection and the client sees a transport
    /// error.
    ///
    /// ```
    /// use buttress::core::error::{BoxError, BulkheadFull, BulkheadFullReason};
    /// use buttress::ServiceBuilderExt;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // With tonic: `Server::builder().layer(ServiceBuilder::new().error_to_status().bulkhead(64)?.into_inner())`
    /// let svc = ServiceBuilder::new()
    ///     .error_to_status()
    ///     .service_fn(|_req: http::Request<()>| async {
    ///         let full = BulkheadFull::new("db".into(), BulkheadFullReason::QueueFull);
    ///         Err::<http::Response<String>, BoxError>(full.into())
    ///     });
    /// let res = svc.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(res.headers()["grpc-status"], "14"); // Unavailable
    /// assert_eq!(res.headers()["grpc-message"], "service%20unavailable");
    /// # }
    /// ```
    #[cfg(feature = "tonic")]
    fn error_to_status(self) -> ServiceBuilder<Stack<buttress_core::grpc::ErrorToStatusLayer, L>>;

    /// For tonic clients: turns the rejections of the buttress layers below
    /// (around a `tonic::transport::Channel`) into a `tonic::Status`, so
    /// generated clients return `Unavailable` for an open breaker or a full
    /// bulkhead, `DeadlineExceeded` for a timeout and `ResourceExhausted`
    /// with pushback for a rate limit, instead of `Unknown`. Transport
    /// errors pass through to tonic. See
    /// [`RejectionToStatusLayer`](crate::core::grpc::RejectionToStatusLayer).
    ///
    /// ```
    /// use buttress::core::error::{kind_of, BoxError, CircuitOpen, ErrorKind};
    /// use buttress::ServiceBuilderExt;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // With tonic: `HealthClient::new(ServiceBuilder::new().rejection_to_status().circuit_breaker(b).service(channel))`
    /// let svc = ServiceBuilder::new()
    ///     .rejection_to_status()
    ///     .service_fn(|_req: ()| async {
    ///         Err::<(), BoxError>(CircuitOpen::new("db".into(), None).into())
    ///     });
    /// let err = svc.oneshot(()).await.unwrap_err();
    /// // `err` is a `tonic::Status` (code `Unavailable`) whose source is the rejection.
    /// assert_eq!(kind_of(&*err), Some(ErrorKind::CircuitOpen));
    /// # }
    /// ```
    #[cfg(feature = "tonic")]
    fn rejection_to_status(
        self,
    ) -> ServiceBuilder<Stack<buttress_core::grpc::RejectionToStatusLayer, L>>;

    /// A [`TimeoutLayer`](crate::timeout::TimeoutLayer) of `timeout` per
    /// call, validated as its builder validates: a zero timeout is a
    /// [`ConfigError`](crate::core::ConfigError), never a panic.
    ///
    /// ```
    /// use buttress::ServiceBuilderExt;
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    ///
    /// let layers = ServiceBuilder::new().call_timeout(Duration::from_secs(2)).unwrap();
    /// # let _ = layers;
    /// assert!(ServiceBuilder::new().call_timeout(Duration::ZERO).is_err());
    /// ```
    #[cfg(feature = "timeout")]
    fn call_timeout(
        self,
        timeout: std::time::Duration,
    ) -> Result<ServiceBuilder<Stack<buttress_timeout::TimeoutLayer, L>>, buttress_core::ConfigError>;

    /// A configured [`TimeoutLayer`](crate::timeout::TimeoutLayer).
    #[cfg(feature = "timeout")]
    fn timeout_with<P>(
        self,
        layer: buttress_timeout::TimeoutLayer<P>,
    ) -> ServiceBuilder<Stack<buttress_timeout::TimeoutLayer<P>, L>>;

    /// A [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) admitting
    /// `max_concurrent` calls at once and rejecting the rest, validated as
    /// its builder validates: zero (or more than 2^30) is a
    /// [`ConfigError`](crate::core::ConfigError), never a panic.
    ///
    /// ```
    /// use buttress::ServiceBuilderExt;
    /// use tower::ServiceBuilder;
    ///
    /// let layers = ServiceBuilder::new().bulkhead(32).unwrap();
    /// # let _ = layers;
    /// let err = ServiceBuilder::new().bulkhead(0).unwrap_err();
    /// assert_eq!(err.field(), "max_concurrent");
    /// ```
    #[cfg(feature = "bulkhead")]
    fn bulkhead(
        self,
        max_concurrent: usize,
    ) -> Result<
        ServiceBuilder<Stack<buttress_bulkhead::BulkheadLayer, L>>,
        buttress_core::ConfigError,
    >;

    /// A configured [`BulkheadLayer`](crate::bulkhead::BulkheadLayer).
    #[cfg(feature = "bulkhead")]
    fn bulkhead_with(
        self,
        layer: buttress_bulkhead::BulkheadLayer,
    ) -> ServiceBuilder<Stack<buttress_bulkhead::BulkheadLayer, L>>;

    /// A configured [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer).
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C>(
        self,
        layer: buttress_circuit_breaker::CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<buttress_circuit_breaker::CircuitBreakerLayer<C>, L>>;

    /// A configured [`RetryLayer`](crate::retry::RetryLayer). Shadowed by
    /// tower's inherent `ServiceBuilder::retry` when tower's `retry` feature
    /// is on; [`retry_with`](ServiceBuilderExt::retry_with) never is.
    #[cfg(feature = "retry")]
    fn retry<P, R>(
        self,
        layer: buttress_retry::RetryLayer<P, R>,
    ) -> ServiceBuilder<Stack<buttress_retry::RetryLayer<P, R>, L>>;

    /// A configured [`RetryLayer`](crate::retry::RetryLayer).
    #[cfg(feature = "retry")]
    fn retry_with<P, R>(
        self,
        layer: buttress_retry::RetryLayer<P, R>,
    ) -> ServiceBuilder<Stack<buttress_retry::RetryLayer<P, R>, L>>;

    /// A global GCRA [`RateLimitLayer`](crate::rate_limit::RateLimitLayer)
    /// admitting `rate` with a burst of `rate.permits()` and rejecting
    /// what exceeds it with
    /// [`RateLimited`](crate::core::RateLimited) (a 429 with
    /// `Retry-After` through [`error_to_response`](Self::error_to_response)),
    /// validated as its builder validates: a rate of zero, or more than one
    /// permit per nanosecond, is a [`ConfigError`](crate::core::ConfigError),
    /// never a panic. Named `"rate_limit"`; for a name, a burst, another
    /// algorithm, a wait queue or priorities, build the layer and use
    /// [`rate_limit_with`](Self::rate_limit_with).
    ///
    /// Named `rate_limit_to`, not `rate_limit`: tower's `limit` feature
    /// (which tonic's `transport` turns on) adds an inherent
    /// `ServiceBuilder::rate_limit(num, per)` that would shadow it.
    ///
    /// ```
    /// use buttress::rate_limit::Rate;
    /// use buttress::ServiceBuilderExt;
    /// use tower::ServiceBuilder;
    ///
    /// let layers = ServiceBuilder::new().rate_limit_to(Rate::per_second(100)).unwrap();
    /// # let _ = layers;
    /// let err = ServiceBuilder::new().rate_limit_to(Rate::per_second(0)).unwrap_err();
    /// assert_eq!(err.field(), "rate");
    /// ```
    #[cfg(feature = "rate-limit")]
    fn rate_limit_to(
        self,
        rate: buttress_rate_limit::Rate,
    ) -> Result<
        ServiceBuilder<Stack<buttress_rate_limit::RateLimitLayer, L>>,
        buttress_core::ConfigError,
    >;

    /// A configured [`RateLimitLayer`](crate::rate_limit::RateLimitLayer):
    /// one limit shared by every service the stack makes (and every clone,
    /// so one layer on several axum routes gives them one limit).
    ///
    /// ```
    /// use buttress::core::error::{kind_of, ErrorKind};
    /// use buttress::rate_limit::{Rate, RateLimitLayer};
    /// use buttress::ServiceBuilderExt;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), buttress::BoxError> {
    /// let limit = RateLimitLayer::builder(Rate::per_second(50))
    ///     .name("search")
    ///     .burst(2)
    ///     .build()?;
    /// let mut svc = ServiceBuilder::new()
    ///     .rate_limit_with(limit)
    ///     .service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x * 2) });
    /// assert_eq!(svc.ready().await?.call(1).await?, 2);
    /// assert_eq!(svc.ready().await?.call(2).await?, 4);
    /// // The burst of 2 is spent: the third call is rejected at once.
    /// let err = svc.ready().await?.call(3).await.unwrap_err();
    /// assert_eq!(kind_of(&*err), Some(ErrorKind::RateLimited));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "rate-limit")]
    fn rate_limit_with<C, P, H>(
        self,
        layer: buttress_rate_limit::RateLimitLayer<C, P, H>,
    ) -> ServiceBuilder<Stack<buttress_rate_limit::RateLimitLayer<C, P, H>, L>>;

    /// A configured [`KeyedRateLimitLayer`](crate::rate_limit::KeyedRateLimitLayer):
    /// one limit per key (client IP, header, extension, closure), in a
    /// bounded map, optionally with a global limit as well. On a server it
    /// sits right below [`error_to_response`](Self::error_to_response), so
    /// that a client over its limit is answered 429 before it takes a
    /// bulkhead permit.
    ///
    /// ```
    /// use buttress::core::key::Header;
    /// use buttress::rate_limit::{KeyedRateLimitLayer, Rate};
    /// use buttress::ServiceBuilderExt;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), buttress::BoxError> {
    /// let per_client = KeyedRateLimitLayer::builder(
    ///     Header::new(http::HeaderName::from_static("x-client")),
    ///     Rate::per_minute(1),
    /// )
    /// .name("per-client")
    /// .build()?;
    /// let mut svc = ServiceBuilder::new()
    ///     .error_to_response() // a rejection becomes a 429 with Retry-After
    ///     .keyed_rate_limit(per_client)
    ///     .service_fn(|_req: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    ///     });
    /// let req = |client: &str| http::Request::builder().header("x-client", client).body(()).unwrap();
    /// assert_eq!(svc.ready().await?.call(req("alice")).await?.status(), 200);
    /// let limited = svc.ready().await?.call(req("alice")).await?;
    /// assert_eq!(limited.status(), 429);
    /// assert_eq!(limited.headers()["retry-after"], "60");
    /// // Another client has a limit of its own.
    /// assert_eq!(svc.ready().await?.call(req("bob")).await?.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "rate-limit")]
    #[allow(clippy::type_complexity)] // the layer's own five parameters
    fn keyed_rate_limit<X, K, C, P, H>(
        self,
        layer: buttress_rate_limit::KeyedRateLimitLayer<X, K, C, P, H>,
    ) -> ServiceBuilder<Stack<buttress_rate_limit::KeyedRateLimitLayer<X, K, C, P, H>, L>>;

    /// A configured [`FallbackLayer`](crate::fallback::FallbackLayer): a
    /// value, a function or a secondary service answers when the layers
    /// and the service below it fail. Put it outside the layers whose
    /// rejections it answers for (above the retry and the breaker of a
    /// client; see the README's composition order).
    ///
    /// ```
    /// use buttress::core::{BoxError, ErrorKind};
    /// use buttress::fallback::FallbackLayer;
    /// use buttress::ServiceBuilderExt;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = buttress::circuit_breaker::CircuitBreakerLayer::builder()
    ///     .name("prices")
    ///     .build()
    ///     .unwrap();
    /// breaker.handle().force_open();
    /// let svc = ServiceBuilder::new()
    ///     .fallback(
    ///         FallbackLayer::value(0u64)
    ///             .on_kinds([ErrorKind::CircuitOpen])
    ///             .build()
    ///             .unwrap(),
    ///     )
    ///     .circuit_breaker(breaker)
    ///     .service_fn(|x: u64| async move { Ok::<_, BoxError>(x * 100) });
    /// assert_eq!(svc.oneshot(3).await.unwrap(), 0);
    /// # }
    /// ```
    #[cfg(feature = "fallback")]
    fn fallback<Src, T, M>(
        self,
        layer: buttress_fallback::FallbackLayer<Src, T, M>,
    ) -> ServiceBuilder<Stack<buttress_fallback::FallbackLayer<Src, T, M>, L>>;

    /// A configured [`CacheLayer`](crate::cache::CacheLayer), keyed by a
    /// closure or HTTP's method and URI.
    #[cfg(feature = "cache")]
    fn cache<P: buttress_cache::Policy>(
        self,
        layer: buttress_cache::CacheLayer<P>,
    ) -> ServiceBuilder<Stack<buttress_cache::CacheLayer<P>, L>>;

    /// An HTTP cache of `ttl` with the defaults (10 000 entries, bodies up
    /// to 1 MiB, `Cache-Control` respected, never a request with
    /// credentials); a `ttl` of zero is a [`ConfigError`](crate::core::ConfigError).
    ///
    /// ```
    /// use buttress::ServiceBuilderExt;
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    ///
    /// let layers = ServiceBuilder::new().http_cache(Duration::from_secs(5)).unwrap();
    /// # let _ = layers;
    /// ```
    #[cfg(feature = "cache")]
    #[allow(clippy::type_complexity)]
    fn http_cache(
        self,
        ttl: std::time::Duration,
    ) -> Result<
        ServiceBuilder<Stack<buttress_cache::CacheLayer<buttress_cache::HttpPolicy>, L>>,
        buttress_core::ConfigError,
    >;

    /// A configured [`ChaosLayer`](crate::chaos::ChaosLayer): fault
    /// injection, off until switched on.
    #[cfg(feature = "chaos")]
    fn chaos<Sel>(
        self,
        layer: buttress_chaos::ChaosLayer<Sel>,
    ) -> ServiceBuilder<Stack<buttress_chaos::ChaosLayer<Sel>, L>>;

    /// A configured [`HttpChaosLayer`](crate::chaos::HttpChaosLayer):
    /// also aborted and truncated bodies.
    #[cfg(feature = "chaos")]
    fn http_chaos<Sel>(
        self,
        layer: buttress_chaos::HttpChaosLayer<Sel>,
    ) -> ServiceBuilder<Stack<buttress_chaos::HttpChaosLayer<Sel>, L>>;

    /// A built [`Policy`](crate::policy::Policy): its layers, in the
    /// README's order, as one.
    ///
    /// ```
    /// use buttress::policy::Policy;
    /// use buttress::ServiceBuilderExt;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let svc = ServiceBuilder::new()
    ///     .policy(Policy::database().build().unwrap())
    ///     .service_fn(|id: u32| async move { Ok::<_, std::io::Error>(id) });
    /// assert_eq!(svc.oneshot(4).await.unwrap(), 4);
    /// # }
    /// ```
    #[cfg(feature = "policy")]
    fn policy<F: crate::policy::Flavor>(
        self,
        layer: crate::policy::PolicyLayer<F>,
    ) -> ServiceBuilder<Stack<crate::policy::PolicyLayer<F>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn error_to_response(self) -> ServiceBuilder<Stack<ErrorToResponseLayer, L>> {
        self.layer(ErrorToResponseLayer::new())
    }

    #[cfg(feature = "tonic")]
    fn error_to_status(self) -> ServiceBuilder<Stack<buttress_core::grpc::ErrorToStatusLayer, L>> {
        self.layer(buttress_core::grpc::ErrorToStatusLayer::new())
    }

    #[cfg(feature = "tonic")]
    fn rejection_to_status(
        self,
    ) -> ServiceBuilder<Stack<buttress_core::grpc::RejectionToStatusLayer, L>> {
        self.layer(buttress_core::grpc::RejectionToStatusLayer::new())
    }

    #[cfg(feature = "timeout")]
    fn call_timeout(
        self,
        timeout: std::time::Duration,
    ) -> Result<ServiceBuilder<Stack<buttress_timeout::TimeoutLayer, L>>, buttress_core::ConfigError>
    {
        Ok(self.layer(buttress_timeout::TimeoutLayer::new(timeout)?))
    }

    #[cfg(feature = "timeout")]
    fn timeout_with<P>(
        self,
        layer: buttress_timeout::TimeoutLayer<P>,
    ) -> ServiceBuilder<Stack<buttress_timeout::TimeoutLayer<P>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "bulkhead")]
    fn bulkhead(
        self,
        max_concurrent: usize,
    ) -> Result<
        ServiceBuilder<Stack<buttress_bulkhead::BulkheadLayer, L>>,
        buttress_core::ConfigError,
    > {
        Ok(self.layer(buttress_bulkhead::BulkheadLayer::new(max_concurrent)?))
    }

    #[cfg(feature = "bulkhead")]
    fn bulkhead_with(
        self,
        layer: buttress_bulkhead::BulkheadLayer,
    ) -> ServiceBuilder<Stack<buttress_bulkhead::BulkheadLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C>(
        self,
        layer: buttress_circuit_breaker::CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<buttress_circuit_breaker::CircuitBreakerLayer<C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn retry<P, R>(
        self,
        layer: buttress_retry::RetryLayer<P, R>,
    ) -> ServiceBuilder<Stack<buttress_retry::RetryLayer<P, R>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn retry_with<P, R>(
        self,
        layer: buttress_retry::RetryLayer<P, R>,
    ) -> ServiceBuilder<Stack<buttress_retry::RetryLayer<P, R>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "rate-limit")]
    fn rate_limit_to(
        self,
        rate: buttress_rate_limit::Rate,
    ) -> Result<
        ServiceBuilder<Stack<buttress_rate_limit::RateLimitLayer, L>>,
        buttress_core::ConfigError,
    > {
        Ok(self.layer(buttress_rate_limit::RateLimitLayer::new(rate)?))
    }

    #[cfg(feature = "rate-limit")]
    fn rate_limit_with<C, P, H>(
        self,
        layer: buttress_rate_limit::RateLimitLayer<C, P, H>,
    ) -> ServiceBuilder<Stack<buttress_rate_limit::RateLimitLayer<C, P, H>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "rate-limit")]
    #[allow(clippy::type_complexity)] // the layer's own five parameters
    fn keyed_rate_limit<X, K, C, P, H>(
        self,
        layer: buttress_rate_limit::KeyedRateLimitLayer<X, K, C, P, H>,
    ) -> ServiceBuilder<Stack<buttress_rate_limit::KeyedRateLimitLayer<X, K, C, P, H>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "fallback")]
    fn fallback<Src, T, M>(
        self,
        layer: buttress_fallback::FallbackLayer<Src, T, M>,
    ) -> ServiceBuilder<Stack<buttress_fallback::FallbackLayer<Src, T, M>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "cache")]
    fn cache<P: buttress_cache::Policy>(
        self,
        layer: buttress_cache::CacheLayer<P>,
    ) -> ServiceBuilder<Stack<buttress_cache::CacheLayer<P>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "cache")]
    fn http_cache(
        self,
        ttl: std::time::Duration,
    ) -> Result<
        ServiceBuilder<Stack<buttress_cache::CacheLayer<buttress_cache::HttpPolicy>, L>>,
        buttress_core::ConfigError,
    > {
        Ok(self.layer(buttress_cache::CacheLayer::http().ttl(ttl).build()?))
    }

    #[cfg(feature = "chaos")]
    fn chaos<Sel>(
        self,
        layer: buttress_chaos::ChaosLayer<Sel>,
    ) -> ServiceBuilder<Stack<buttress_chaos::ChaosLayer<Sel>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "chaos")]
    fn http_chaos<Sel>(
        self,
        layer: buttress_chaos::HttpChaosLayer<Sel>,
    ) -> ServiceBuilder<Stack<buttress_chaos::HttpChaosLayer<Sel>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "policy")]
    fn policy<F: crate::policy::Flavor>(
        self,
        layer: crate::policy::PolicyLayer<F>,
    ) -> ServiceBuilder<Stack<crate::policy::PolicyLayer<F>, L>> {
        self.layer(layer)
    }
}
