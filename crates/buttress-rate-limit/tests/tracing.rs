//! The rate limiter's `tracing`, as the crate docs list it: a rejection
//! is a `debug` event per call (never a `warn`, which would flood the log
//! under exactly the load the limit exists for), with `rate_limit.reason`;
//! an admitted call emits nothing.

use buttress_core::RateLimited;
use buttress_rate_limit::{Rate, RateLimitLayer};
use tower::{service_fn, Layer, ServiceExt};
use tracing::Level;

use buttress_test_support::capture;
use capture::Capture;

#[tokio::test(start_paused = true)]
async fn a_rejection_is_a_debug_event_with_the_reason() {
    let (capture, _guard) = Capture::install();
    let layer = RateLimitLayer::builder(Rate::per_minute(2))
        .name("rl")
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Ok::<_, buttress_core::BoxError>(())
    }));
    svc.clone().oneshot(()).await.unwrap();
    svc.clone().oneshot(()).await.unwrap();
    assert!(capture.events().is_empty(), "{:#?}", capture.events());
    for _ in 0..3 {
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert!(err.is::<RateLimited>());
    }
    let rejected = capture.find("call rejected");
    assert_eq!(rejected.len(), 3, "{:#?}", capture.events());
    for e in &rejected {
        assert_eq!(e.level, Level::DEBUG);
        assert_eq!(e.field("buttress.pattern"), Some("rate_limit"));
        assert_eq!(e.field("buttress.name"), Some("rl"));
        assert_eq!(e.field("rate_limit.reason"), Some("exhausted"));
        assert_eq!(e.field("rate_limit.cost"), Some("1"));
        assert!(e.field("rate_limit.retry_after_ms").is_some());
    }
    assert!(capture.events().iter().all(|e| e.level >= Level::DEBUG));
}
