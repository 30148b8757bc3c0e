//! Runs the `tracing_with_tower_http` example and checks its log.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../tracing_with_tower_http.rs"]
mod tracing_with_tower_http;

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A writer into a shared buffer, for the fmt layer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'w self) -> Buffer {
        self.clone()
    }
}

// One thread: the subscriber is this thread's default, and the server's
// tasks run on it too.
#[tokio::test(flavor = "current_thread")]
async fn the_log_shows_the_retries_and_the_breaker_inside_the_request_spans() {
    let buffer = Buffer::default();
    let _guard =
        tracing::subscriber::set_default(tracing_with_tower_http::subscriber(buffer.clone()));
    let codes = tracing_with_tower_http::run()
        .await
        .expect("the example runs");
    assert_eq!(codes, [503, 503, 503, 200]);
    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let find = |needle: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| l.contains(needle))
            .collect()
    };

    // The first request: three attempts, the 2nd and 3rd in their spans,
    // inside the request's span; then the retry is exhausted.
    let scheduled = find("retry scheduled");
    assert!(scheduled.len() >= 2, "{log}");
    assert!(
        scheduled[0].starts_with("DEBUG request{method=GET uri=/stock"),
        "{log}"
    );
    assert!(scheduled[0].contains("retry.attempt=2"), "{log}");
    assert!(scheduled[0].contains("retry.delay_ms=20"), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("request{method=GET uri=/stock")
                && l.contains("buttress.retry.attempt{")
                && l.contains("retry.attempt=3")),
        "{log}"
    );
    let exhausted = find("retries exhausted");
    assert_eq!(exhausted.len(), 1, "{log}");
    assert!(exhausted[0].starts_with(" WARN request{"), "{log}");

    // The second request's first attempt is the 4th failure: the breaker
    // opens; it rejects the third request, whose retry would have to wait
    // longer than its `max_delay`.
    let opened = find("circuit breaker opened");
    assert_eq!(opened.len(), 1, "{log}");
    assert!(opened[0].starts_with(" WARN request{"), "{log}");
    assert!(opened[0].contains("circuit.from=\"closed\""), "{log}");
    assert!(opened[0].contains("buttress.name=\"inventory\""), "{log}");
    assert!(!find("call rejected: circuit open").is_empty(), "{log}");

    // The fourth, after the open wait: a probe that succeeds closes it.
    let closed = find("circuit breaker closed");
    assert_eq!(closed.len(), 1, "{log}");
    assert!(closed[0].starts_with(" INFO request{"), "{log}");

    // tower-http's own lines, untouched.
    assert_eq!(find("finished processing request").len(), 4, "{log}");
}
