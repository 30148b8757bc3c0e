//! The timeout's `tracing`, as the crate docs list it: a timeout that
//! fires is a `debug` event with `timeout.elapsed_ms`; a call in time
//! emits nothing.

use std::time::Duration;

use buttress_timeout::error::Elapsed;
use buttress_timeout::TimeoutLayer;
use tower::{service_fn, Layer, ServiceExt};
use tracing::Level;

use buttress_test_support::capture;
use capture::Capture;

async fn call(layer: &TimeoutLayer, takes: Duration) -> Result<(), buttress_core::BoxError> {
    let svc = layer.layer(service_fn(move |()| async move {
        tokio::time::sleep(takes).await;
        Ok::<_, buttress_core::BoxError>(())
    }));
    svc.oneshot(()).await
}

fn layer() -> TimeoutLayer {
    TimeoutLayer::builder(Duration::from_millis(250))
        .name("t")
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_timeout_that_fires_is_a_debug_event_with_the_elapsed_time() {
    let (capture, _guard) = Capture::install();
    let err = call(&layer(), Duration::from_secs(1)).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    let fired = capture.find("call timed out");
    assert_eq!(fired.len(), 1, "{:#?}", capture.events());
    let e = &fired[0];
    assert_eq!(e.level, Level::DEBUG);
    assert_eq!(e.field("buttress.pattern"), Some("timeout"));
    assert_eq!(e.field("buttress.name"), Some("t"));
    assert_eq!(e.field("timeout.elapsed_ms"), Some("250"));
    assert_eq!(e.field("timeout.phase"), Some("call"));
}

#[tokio::test(start_paused = true)]
async fn the_readiness_budget_firing_says_so() {
    let (capture, _guard) = Capture::install();
    let layer = TimeoutLayer::builder(Duration::from_millis(40))
        .name("t")
        .include_ready(true)
        .build()
        .unwrap();
    let (mock, mut handle) = tower_test::mock::pair::<(), ()>();
    handle.allow(0);
    let err = layer.layer(mock).oneshot(()).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    let fired = capture.find("call timed out");
    assert_eq!(fired.len(), 1, "{:#?}", capture.events());
    assert_eq!(fired[0].field("timeout.phase"), Some("ready"));
    assert_eq!(fired[0].field("timeout.elapsed_ms"), Some("40"));
}

#[tokio::test(start_paused = true)]
async fn a_call_in_time_emits_nothing() {
    let (capture, _guard) = Capture::install();
    let layer = layer();
    for _ in 0..5 {
        call(&layer, Duration::from_millis(100)).await.unwrap();
        call(&layer, Duration::ZERO).await.unwrap();
    }
    let events = capture.events();
    assert!(events.is_empty(), "{events:#?}");
}
