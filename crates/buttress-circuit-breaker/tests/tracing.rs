//! The breaker's `tracing` events, as the crate docs list them: a state
//! change at `info`, an opening at `warn`, a rejection at `debug`, and
//! nothing at all from a healthy call.

use std::time::Duration;

use buttress_circuit_breaker::{CircuitBreakerLayer, State};
use buttress_core::BoxError;
use tokio::time;
use tower::{service_fn, Layer, ServiceExt};
use tracing::Level;

use buttress_test_support::capture;
use capture::Capture;

fn layer() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name("cb")
        .window_size(4)
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(1)
        .build()
        .unwrap()
}

/// One call through the breaker: fails when `fail`.
async fn call(layer: &CircuitBreakerLayer, fail: bool) -> Result<(), BoxError> {
    let svc = layer.layer(service_fn(move |()| async move {
        if fail {
            Err::<(), _>("boom")
        } else {
            Ok(())
        }
    }));
    svc.oneshot(()).await
}

async fn open(layer: &CircuitBreakerLayer) {
    for _ in 0..4 {
        let _ = call(layer, true).await;
    }
    assert_eq!(layer.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn opening_is_one_warn_with_the_transition_fields() {
    let (capture, _guard) = Capture::install();
    let layer = layer();
    open(&layer).await;

    let opened = capture.find("circuit breaker opened");
    assert_eq!(opened.len(), 1, "{:#?}", capture.events());
    let e = &opened[0];
    assert_eq!(e.level, Level::WARN);
    assert_eq!(e.field("buttress.pattern"), Some("circuit_breaker"));
    assert_eq!(e.field("buttress.name"), Some("cb"));
    assert_eq!(e.field("circuit.state"), Some("open"));
    assert_eq!(e.field("circuit.from"), Some("closed"));
    assert_eq!(e.field("circuit.to"), Some("open"));
    // The threshold that opened it is a `debug` detail beside the `warn`.
    let exceeded = capture.find("circuit breaker threshold exceeded");
    assert_eq!(exceeded.len(), 1);
    assert_eq!(exceeded[0].level, Level::DEBUG);
    assert_eq!(exceeded[0].field("circuit.failure_rate"), Some("100.0"));
}

#[tokio::test(start_paused = true)]
async fn a_rejection_is_a_debug_event_per_call() {
    let layer = layer();
    open(&layer).await;
    let (capture, _guard) = Capture::install();
    for _ in 0..3 {
        assert!(call(&layer, false).await.is_err());
    }
    let rejected = capture.find("call rejected");
    assert_eq!(rejected.len(), 3, "{:#?}", capture.events());
    for e in &rejected {
        assert_eq!(e.level, Level::DEBUG);
        assert_eq!(e.field("buttress.pattern"), Some("circuit_breaker"));
        assert_eq!(e.field("buttress.name"), Some("cb"));
        assert_eq!(e.field("circuit.state"), Some("open"));
    }
    assert!(capture.events().iter().all(|e| e.level >= Level::DEBUG));
}

#[tokio::test(start_paused = true)]
async fn closing_again_is_info_through_half_open() {
    let layer = layer();
    open(&layer).await;
    let (capture, _guard) = Capture::install();
    time::advance(Duration::from_secs(10)).await;
    call(&layer, false).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);

    let changed = capture.find("circuit breaker changed state");
    assert_eq!(changed.len(), 1, "{:#?}", capture.events());
    assert_eq!(changed[0].level, Level::INFO);
    assert_eq!(changed[0].field("circuit.from"), Some("open"));
    assert_eq!(changed[0].field("circuit.to"), Some("half_open"));
    assert_eq!(changed[0].field("circuit.state"), Some("half_open"));

    let probe = capture.find("half-open probe admitted");
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].level, Level::DEBUG);

    let closed = capture.find("circuit breaker closed");
    assert_eq!(closed.len(), 1);
    let e = &closed[0];
    assert_eq!(e.level, Level::INFO);
    assert_eq!(e.field("buttress.pattern"), Some("circuit_breaker"));
    assert_eq!(e.field("buttress.name"), Some("cb"));
    assert_eq!(e.field("circuit.from"), Some("half_open"));
    assert_eq!(e.field("circuit.to"), Some("closed"));
    assert_eq!(e.field("circuit.state"), Some("closed"));
}

#[tokio::test(start_paused = true)]
async fn a_healthy_call_emits_nothing_above_debug() {
    let (capture, _guard) = Capture::install();
    let layer = layer();
    for _ in 0..20 {
        call(&layer, false).await.unwrap();
    }
    // A failure below the threshold is no decision worth a line either.
    let _ = call(&layer, true).await;
    let loud: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| e.level < Level::DEBUG)
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
}

#[tokio::test(start_paused = true)]
async fn forcing_open_is_info_not_warn() {
    let (capture, _guard) = Capture::install();
    let layer = layer();
    layer.handle().force_open();
    let changed = capture.find("circuit breaker changed state");
    assert_eq!(changed.len(), 1, "{:#?}", capture.events());
    assert_eq!(changed[0].level, Level::INFO);
    assert_eq!(changed[0].field("circuit.to"), Some("forced_open"));
    assert!(capture.find("circuit breaker opened").is_empty());
}
