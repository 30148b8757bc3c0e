//! A hyper-util client under `Policy::api().build_http()` (total and
//! per-attempt timeouts, retry with a budget, circuit breaker, bulkhead),
//! with a fallback in front that answers while the breaker is open.
//!
//! The stack, outermost first:
//!
//! ```text
//! FallbackLayer      a last known price, only for an open circuit
//! map_response       the upstream's body or the fallback's, one type
//! PolicyLayer<Http>  timeout, retry, breaker, bulkhead, attempt timeout
//! hyper-util Client
//! ```
//!
//! `build_http()` makes the policy speak HTTP: 502, 503, 504 and 429 are
//! retried (idempotent methods only, `Retry-After` honoured), 5xx and 429
//! count as failures for the breaker, and the request body is kept for the
//! next attempt (`ReplayBody`, the client's body type).
//!
//! The preset's values (30 s in all, 10 s per attempt, breaker after 5
//! failures in a row) are shortened so that the example runs in a second:
//! 500 ms per attempt, breaker after 3 failures in a row.
//!
//! Against a price service on 127.0.0.1 that the example breaks on
//! purpose, it shows:
//! 1. a transient failure (two 503s) recovered by the retry;
//! 2. a hung answer cut by the per-attempt timeout and retried;
//! 3. an outage: three failed attempts open the breaker;
//! 4. while the breaker is open, the fallback answers at once, marked
//!    `x-fallback`, and the price service sees no call at all.
//!
//! `cargo run -p buttress-examples --example hyper_client_policy`; its test
//! is `examples/tests/hyper_client_policy.rs`.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use buttress::core::ErrorKind;
use buttress::fallback::FallbackLayer;
use buttress::policy::Policy;
use buttress::retry::ReplayBody;
use buttress::{BoxError, ServiceBuilderExt};
use bytes::Bytes;
use http::{HeaderName, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The price service's switches, set by the example, and its call count.
#[derive(Default)]
pub(crate) struct Upstream {
    /// Calls received.
    hits: AtomicU32,
    /// The next calls to answer 503.
    fail_next: AtomicU32,
    /// The next calls to hang (for 5 s, longer than any attempt may take).
    hang_next: AtomicU32,
    /// Every call answers 503.
    down: AtomicBool,
}

/// Takes one from `n` if it is above zero.
fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

async fn price(State(up): State<Arc<Upstream>>) -> (StatusCode, &'static str) {
    up.hits.fetch_add(1, Ordering::SeqCst);
    if up.down.load(Ordering::SeqCst) || take_one(&up.fail_next) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down\n");
    }
    if take_one(&up.hang_next) {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    (StatusCode::OK, "42")
}

/// The client's policy: the `api` preset, shortened (see above).
pub(crate) fn policy() -> Policy {
    let mut policy = Policy::api()
        .timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_millis(500));
    if let Some(breaker) = policy.circuit_breaker.as_mut() {
        // Opens after 3 failed attempts in a row; stays open a minute,
        // longer than the retry waits for (`max_delay`), so an open
        // circuit is not waited out but answered by the fallback.
        breaker.consecutive_failures = Some(3);
    }
    policy
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// Fails with `what` unless `ok`: the example checks what it shows.
fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// Runs the example; returns one line per step and fails if a step does
/// not go as described.
pub(crate) async fn run() -> Result<Vec<String>, BoxError> {
    let upstream = Arc::new(Upstream::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/price", get(price))
        .with_state(upstream.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let policy = policy().build_http()?;
    let breaker = policy
        .circuit_breaker()
        .ok_or("the policy has a breaker")?
        .handle();
    // The fallback: a last known price, for an open circuit only (a 503
    // or a timeout after the retries is the caller's to see). Its
    // response is marked, as the `FallbackUsed` extension and the
    // `x-fallback` header.
    let fallback = FallbackLayer::from_error(|_failure| {
        Ok(Response::new(Either::Right(Full::new(Bytes::from_static(
            b"40 (last known)",
        )))))
    })
    .name("last-known-price")
    .on_kinds([ErrorKind::CircuitOpen])
    .marker_header(HeaderName::from_static("x-fallback"))
    .build()?;
    let client = ServiceBuilder::new()
        .fallback(fallback)
        // The upstream's body (`Incoming`) and the fallback's (`Full`) as
        // one type.
        .map_response(|res: Response<hyper::body::Incoming>| res.map(Either::Left))
        .policy(policy)
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());

    let mut lines = Vec::new();
    let uri = format!("http://{addr}/price");
    let call = |label: &'static str| {
        let mut client = client.clone();
        let uri = uri.clone();
        let upstream = upstream.clone();
        async move {
            let before = upstream.hits.load(Ordering::SeqCst);
            let req = http::Request::get(uri).body(Full::new(Bytes::new()))?;
            let res = client.ready().await?.call(req).await?;
            let status = res.status();
            let marker = res
                .headers()
                .get("x-fallback")
                .map(|v| format!(", x-fallback: {}", v.to_str().unwrap_or("?")))
                .unwrap_or_default();
            let body = res.into_body().collect().await?.to_bytes();
            let attempts = upstream.hits.load(Ordering::SeqCst) - before;
            let line = format!(
                "{label}: {status} {:?}{marker}, {attempts} call(s) to the price service",
                String::from_utf8_lossy(&body)
            );
            Ok::<_, BoxError>((status, body, attempts, line))
        }
    };

    // 1. Two 503s, then an answer: the retry gets there on its third try.
    upstream.fail_next.store(2, Ordering::SeqCst);
    let (status, body, attempts, line) = call("transient").await?;
    ensure(status == 200 && &body[..] == b"42" && attempts == 3, || {
        line.clone()
    })?;
    lines.push(line);

    // 2. A hung answer: the per-attempt timeout cuts it at 500 ms and the
    //    retry's second try answers (a GET is idempotent).
    upstream.hang_next.store(1, Ordering::SeqCst);
    let (status, body, attempts, line) = call("hung").await?;
    ensure(status == 200 && &body[..] == b"42" && attempts == 2, || {
        line.clone()
    })?;
    lines.push(line);

    // 3. The outage: three attempts, three 503s. The caller gets the last
    //    503 (retries exhausted), and the breaker, which counted every
    //    attempt, is open.
    upstream.down.store(true, Ordering::SeqCst);
    let (status, _, attempts, line) = call("outage").await?;
    ensure(status == 503 && attempts == 3, || line.clone())?;
    lines.push(line);
    let state = breaker.state();
    lines.push(format!("breaker `{}`: {state:?}", breaker.name()));
    ensure(format!("{state:?}") == "Open", || {
        format!("breaker {state:?}")
    })?;

    // 4. While it is open, calls never leave the client: the fallback
    //    answers, marked.
    for _ in 0..3 {
        let (status, body, attempts, line) = call("while open").await?;
        ensure(
            status == 200 && &body[..] == b"40 (last known)" && attempts == 0,
            || line.clone(),
        )?;
        lines.push(line);
    }

    server.abort();
    Ok(lines)
}
