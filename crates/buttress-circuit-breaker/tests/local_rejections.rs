//! A rejection by a buttress layer below the breaker (rate limiter,
//! bulkhead, another breaker) is the caller's choice not to call: it never
//! counts as the dependency failing. A timeout below it does.

use std::time::Duration;

use buttress_circuit_breaker::{CircuitBreakerLayer, State};
use buttress_core::error::{
    BoxError, BulkheadFull, BulkheadFullReason, CircuitOpen, Elapsed, RateLimited,
};
use tower::{service_fn, Layer, ServiceExt};

fn breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name("dep")
        .window_size(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap()
}

async fn run(errors: fn() -> BoxError) -> (State, u64, u64) {
    let layer = breaker();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(
        move |_: ()| async move { Err::<(), _>(errors()) },
    ));
    for _ in 0..8 {
        let _ = svc.clone().oneshot(()).await;
    }
    let s = handle.snapshot();
    (handle.state(), s.buffered_calls, s.failed_calls)
}

#[tokio::test]
async fn local_rejections_below_are_ignored() {
    let rejections: [fn() -> BoxError; 3] = [
        || BulkheadFull::new("pool".into(), BulkheadFullReason::QueueFull).into(),
        || RateLimited::new("quota".into(), Some(Duration::from_secs(1))).into(),
        || CircuitOpen::new("per-host".into(), None).into(),
    ];
    for make in rejections {
        let (state, buffered, failed) = run(make).await;
        assert_eq!(state, State::Closed, "{}", make());
        assert_eq!((buffered, failed), (0, 0), "{}", make());
    }
}

#[tokio::test]
async fn a_timeout_below_is_a_failure() {
    let (state, _, failed) =
        run(|| Elapsed::new("attempt".into(), Duration::from_secs(1)).into()).await;
    assert_eq!(state, State::Open);
    assert_eq!(failed, 4);
}

#[tokio::test]
async fn other_errors_are_failures() {
    let (state, _, failed) = run(|| "connection reset".into()).await;
    assert_eq!(state, State::Open);
    assert_eq!(failed, 4);
}
