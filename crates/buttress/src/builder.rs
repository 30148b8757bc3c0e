use tower::layer::util::Stack;
use tower::ServiceBuilder;

use buttress_core::response::ErrorToResponseLayer;

mod sealed {
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// One method per buttress pattern on tower's [`ServiceBuilder`].
///
/// The names avoid tower's own inherent `timeout` and `concurrency_limit`
/// methods, which would take precedence when tower's features enable them.
/// tower's `retry` feature adds an inherent `ServiceBuilder::retry` too:
/// when it is on (in your crate or any dependency), [`retry`] resolves to
/// tower's method, so call [`retry_with`] (or
/// `ServiceBuilderExt::retry(builder, layer)`).
///
/// [`retry`]: ServiceBuilderExt::retry
/// [`retry_with`]: ServiceBuilderExt::retry_with
///
/// ```
/// use buttress::ServiceBuilderExt;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
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
///     .bulkhead(8)
///     .call_timeout(Duration::from_secs(1))
///     .service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x + 1) });
/// assert_eq!(svc.oneshot(1).await.unwrap(), 2);
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Turns buttress rejections into HTTP responses (503, 504, 429, 500),
    /// making the service `Infallible` for axum; see
    /// [`ErrorToResponseLayer`].
    fn error_to_response(self) -> ServiceBuilder<Stack<ErrorToResponseLayer, L>>;

    /// A [`TimeoutLayer`](crate::timeout::TimeoutLayer) of `timeout` per call.
    #[cfg(feature = "timeout")]
    fn call_timeout(
        self,
        timeout: std::time::Duration,
    ) -> ServiceBuilder<Stack<buttress_timeout::TimeoutLayer, L>>;

    /// A configured [`TimeoutLayer`](crate::timeout::TimeoutLayer).
    #[cfg(feature = "timeout")]
    fn timeout_with<P>(
        self,
        layer: buttress_timeout::TimeoutLayer<P>,
    ) -> ServiceBuilder<Stack<buttress_timeout::TimeoutLayer<P>, L>>;

    /// A [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) admitting
    /// `max_concurrent` calls at once and rejecting the rest.
    #[cfg(feature = "bulkhead")]
    fn bulkhead(
        self,
        max_concurrent: usize,
    ) -> ServiceBuilder<Stack<buttress_bulkhead::BulkheadLayer, L>>;

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
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn error_to_response(self) -> ServiceBuilder<Stack<ErrorToResponseLayer, L>> {
        self.layer(ErrorToResponseLayer::new())
    }

    #[cfg(feature = "timeout")]
    fn call_timeout(
        self,
        timeout: std::time::Duration,
    ) -> ServiceBuilder<Stack<buttress_timeout::TimeoutLayer, L>> {
        self.layer(buttress_timeout::TimeoutLayer::new(timeout))
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
    ) -> ServiceBuilder<Stack<buttress_bulkhead::BulkheadLayer, L>> {
        self.layer(buttress_bulkhead::BulkheadLayer::new(max_concurrent))
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
}
