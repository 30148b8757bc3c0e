//! Runs the `otel_traceparent` example and checks what the server saw.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../otel_traceparent.rs"]
mod otel_traceparent;

/// `traceparent` is `00-<trace id>-<parent span id>-<flags>`.
fn parts(tp: &str) -> (String, String) {
    let fields: Vec<&str> = tp.split('-').collect();
    assert_eq!(fields.len(), 4, "{tp}");
    assert_eq!(fields[0], "00", "{tp}");
    assert_eq!(fields[1].len(), 32, "{tp}");
    assert_eq!(fields[2].len(), 16, "{tp}");
    (fields[1].to_owned(), fields[2].to_owned())
}

// One thread: the subscriber is this thread's default.
#[tokio::test(flavor = "current_thread")]
async fn every_attempt_carries_the_callers_trace_id_and_its_own_span() {
    let (subscriber, provider) = otel_traceparent::subscriber();
    let _guard = tracing::subscriber::set_default(subscriber);
    let outcome = otel_traceparent::run().await.expect("the example runs");
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.traceparents.len(), 2, "{outcome:?}");
    assert_ne!(outcome.trace_id, "00000000000000000000000000000000");
    let (first_trace, first_parent) = parts(&outcome.traceparents[0]);
    let (retry_trace, retry_parent) = parts(&outcome.traceparents[1]);
    assert_eq!(first_trace, outcome.trace_id);
    assert_eq!(retry_trace, outcome.trace_id);
    // The first attempt runs in the caller's span, the retry in its own.
    assert_ne!(first_parent, retry_parent);
    provider.shutdown().unwrap();
}
