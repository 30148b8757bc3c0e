//! The retry layer's `tracing`, as the crate docs list it: every retry is
//! a child span of the request's span, entered while its attempt runs; the
//! wait before it is a `debug` event with `retry.delay_ms`; an exhausted
//! retry is a `warn`; a call that needs no retry emits nothing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_core::{BoxError, RetryExhausted};
use buttress_retry::RetryLayer;
use tower::{service_fn, Layer, ServiceExt};
use tracing::{Instrument, Level};

use buttress_test_support::capture;
use capture::Capture;

/// Calls through a retry layer of at most three attempts, 100 ms apart, to
/// a service that fails its first `fails` calls, inside a `request` span.
/// Each call of the service logs "inner called" with its number.
async fn run(fails: u32) -> Result<u32, BoxError> {
    let layer = RetryLayer::fixed(3, Duration::from_millis(100))
        .name("r")
        .build()
        .unwrap();
    let count = Arc::new(AtomicU32::new(0));
    let svc = layer.layer(service_fn(move |n: u32| {
        let count = count.clone();
        async move {
            let i = count.fetch_add(1, Ordering::SeqCst) + 1;
            tracing::info!(call = i, "inner called");
            if i <= fails {
                Err::<u32, BoxError>(format!("failure {i}").into())
            } else {
                Ok(n)
            }
        }
    }));
    svc.oneshot(7)
        .instrument(tracing::info_span!("request"))
        .await
}

#[tokio::test(start_paused = true)]
async fn each_retry_is_a_child_span_of_the_request_numbered_by_attempt() {
    let (capture, _guard) = Capture::install();
    assert_eq!(run(2).await.unwrap(), 7);

    let attempts: Vec<_> = capture
        .spans()
        .into_iter()
        .filter(|s| s.name == "buttress.retry.attempt")
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    for (span, n) in attempts.iter().zip(["2", "3"]) {
        assert_eq!(span.parent, Some("request"));
        assert_eq!(span.level, Level::INFO);
        assert_eq!(span.field("buttress.pattern"), Some("retry"));
        assert_eq!(span.field("buttress.name"), Some("r"));
        assert_eq!(span.field("retry.attempt"), Some(n));
        assert_eq!(span.field("retry.delay_ms"), Some("100"));
    }

    // The first attempt runs in the request's span, each retry in its own.
    let calls = capture.find("inner called");
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].scope.len(), 1);
    assert_eq!(calls[0].scope[0].name, "request");
    for (call, n) in calls[1..].iter().zip(["2", "3"]) {
        assert_eq!(call.scope[0].name, "buttress.retry.attempt");
        assert_eq!(call.scope[0].field("retry.attempt"), Some(n));
        assert_eq!(call.scope[1].name, "request");
    }

    // The waits, as debug events with the delay and the attempt to come.
    let scheduled = capture.find("retry scheduled");
    assert_eq!(scheduled.len(), 2);
    for (e, n) in scheduled.iter().zip(["2", "3"]) {
        assert_eq!(e.level, Level::DEBUG);
        assert_eq!(e.field("buttress.pattern"), Some("retry"));
        assert_eq!(e.field("buttress.name"), Some("r"));
        assert_eq!(e.field("retry.attempt"), Some(n));
        assert_eq!(e.field("retry.delay_ms"), Some("100"));
        assert_eq!(e.field("retry.cause"), Some("error"));
        assert_eq!(e.scope.last().map(|s| s.name), Some("request"));
    }
    let succeeded = capture.find("succeeded after retries");
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0].level, Level::DEBUG);
    assert_eq!(succeeded[0].field("retry.attempt"), Some("3"));
    assert!(capture.find("retries exhausted").is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_retry_is_one_warn_in_the_last_attempts_span() {
    let (capture, _guard) = Capture::install();
    let err = run(5).await.unwrap_err();
    assert!(err.is::<RetryExhausted>());

    let exhausted = capture.find("retries exhausted");
    assert_eq!(exhausted.len(), 1, "{:#?}", capture.events());
    let e = &exhausted[0];
    assert_eq!(e.level, Level::WARN);
    assert_eq!(e.field("buttress.pattern"), Some("retry"));
    assert_eq!(e.field("buttress.name"), Some("r"));
    assert_eq!(e.field("retry.attempt"), Some("3"));
    assert_eq!(e.field("retry.cause"), Some("error"));
    assert_eq!(e.scope[0].field("retry.attempt"), Some("3"));
    assert_eq!(e.scope[1].name, "request");
    // Nothing else is louder than debug.
    let loud = capture
        .events()
        .into_iter()
        .filter(|e| e.level < Level::DEBUG && e.message() != "inner called")
        .count();
    assert_eq!(loud, 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_without_retry_emits_nothing_and_opens_no_span() {
    let (capture, _guard) = Capture::install();
    assert_eq!(run(0).await.unwrap(), 7);
    let spans: Vec<_> = capture.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(spans, ["request"]);
    let events: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| e.message() != "inner called")
        .collect();
    assert!(events.is_empty(), "{events:#?}");
}

#[tokio::test(start_paused = true)]
async fn no_subscriber_no_span_and_the_same_answer() {
    // Without a subscriber every span is disabled: the retries still run.
    assert_eq!(run(2).await.unwrap(), 7);
    assert!(run(5).await.unwrap_err().is::<RetryExhausted>());
}
