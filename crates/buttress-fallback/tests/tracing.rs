//! The fallback's `tracing`, as the crate docs list it: a fallback used is
//! a `debug` event, a failed fallback a `warn`, a call answered by the
//! primary emits nothing.

use buttress_core::{BoxError, CircuitOpen};
use buttress_fallback::{Failure, FallbackLayer};
use buttress_test_support::capture::Capture;
use tower::{service_fn, Layer, ServiceExt};
use tracing::Level;

#[tokio::test]
async fn used_is_debug_failed_is_warn_and_the_primary_is_quiet() {
    let (capture, _guard) = Capture::install();
    let layer = FallbackLayer::from_error(|f: &Failure<u64>| match f.error() {
        Some(e) if e.is::<CircuitOpen>() => Ok(0),
        _ => Err("cache miss".into()),
    })
    .name("prices")
    .build()
    .unwrap();
    let svc = layer.layer(service_fn(|x: u64| async move {
        match x {
            0 => Err::<u64, BoxError>(CircuitOpen::new("up".into(), None).into()),
            1 => Err("refused".into()),
            x => Ok(x),
        }
    }));

    svc.clone().oneshot(5).await.unwrap();
    assert!(capture.events().is_empty(), "{:#?}", capture.events());

    svc.clone().oneshot(0).await.unwrap();
    let used = capture.find("fallback used");
    assert_eq!(used.len(), 1, "{:#?}", capture.events());
    assert_eq!(used[0].level, Level::DEBUG);
    assert_eq!(used[0].field("buttress.pattern"), Some("fallback"));
    assert_eq!(used[0].field("buttress.name"), Some("prices"));
    assert_eq!(used[0].field("fallback.reason"), Some("circuit_open"));

    svc.oneshot(1).await.unwrap_err();
    let failed = capture.find("fallback failed");
    assert_eq!(failed.len(), 1, "{:#?}", capture.events());
    assert_eq!(failed[0].level, Level::WARN);
    assert_eq!(failed[0].field("buttress.name"), Some("prices"));
    assert_eq!(failed[0].field("fallback.reason"), Some("error"));
    assert_eq!(failed[0].field("error"), Some("cache miss"));
    assert_eq!(capture.events().len(), 2);
}
