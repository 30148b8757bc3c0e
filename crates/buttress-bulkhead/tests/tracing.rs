//! The bulkhead's `tracing`, as the crate docs list it: a rejection is a
//! `debug` event per call (never a `warn`, which would flood the log when
//! the service is busiest), with `bulkhead.queued`; a call that gets a
//! permit emits nothing.

use std::time::Duration;

use buttress_bulkhead::error::BulkheadFull;
use buttress_bulkhead::BulkheadLayer;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracing::Level;

use buttress_test_support::capture;
use capture::Capture;

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_rejects_with_a_debug_event_per_call() {
    let (capture, _guard) = Capture::install();
    let layer = BulkheadLayer::builder()
        .name("b")
        .max_concurrent(1)
        .max_queue(1)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, buttress_core::BoxError>(())
    }));
    // One call holds the permit, one waits: the third finds no room.
    let running = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let waiting = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let mut third = svc.clone();
    let err = third.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<BulkheadFull>());

    let queued = capture.find("call queued");
    assert_eq!(queued.len(), 1, "{:#?}", capture.events());
    assert_eq!(queued[0].level, Level::TRACE);
    assert_eq!(queued[0].field("bulkhead.queued"), Some("1"));

    let rejected = capture.find("call rejected");
    assert_eq!(rejected.len(), 1, "{:#?}", capture.events());
    let e = &rejected[0];
    assert_eq!(e.level, Level::DEBUG);
    assert_eq!(e.field("buttress.pattern"), Some("bulkhead"));
    assert_eq!(e.field("buttress.name"), Some("b"));
    assert_eq!(e.field("bulkhead.queued"), Some("1"));
    assert_eq!(e.field("bulkhead.reason"), Some("queue_full"));

    // The waiting call times out in the queue: rejected too, for that.
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.is::<BulkheadFull>());
    let rejected = capture.find("call rejected");
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[1].field("bulkhead.reason"), Some("wait_timed_out"));
    assert_eq!(rejected[1].field("bulkhead.queued"), Some("0"));
    running.await.unwrap().unwrap();
    assert!(capture.events().iter().all(|e| e.level >= Level::DEBUG));
}

#[tokio::test(start_paused = true)]
async fn a_call_with_a_permit_emits_nothing() {
    let (capture, _guard) = Capture::install();
    let layer = BulkheadLayer::builder()
        .name("b")
        .max_concurrent(2)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Ok::<_, buttress_core::BoxError>(())
    }));
    for _ in 0..10 {
        svc.clone().oneshot(()).await.unwrap();
    }
    let events = capture.events();
    assert!(events.is_empty(), "{events:#?}");
}
