//! A hyper-util client that retries: idempotent calls that get a 503 are
//! sent again after the server's `Retry-After` (or a jittered backoff),
//! under a budget shared by the whole client, while a `POST` without an
//! `Idempotency-Key` is never sent twice. It starts its own flaky server on
//! 127.0.0.1, makes a few calls and prints what the retry layer did.
//!
//! `cargo run -p buttress-examples --example retry_client`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use buttress::retry::{Backoff, ReplayBody, RetryBudget, RetryEvent, RetryLayer};
use buttress::ServiceBuilderExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), buttress::BoxError> {
    // `/item` sheds every other request with 503 and asks for a 1 s pause;
    // `/orders` sheds two requests out of three.
    let (h1, h2) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let app = Router::new()
        .route(
            "/item",
            get(move || async move {
                if h1.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "1")],
                        "busy",
                    )
                        .into_response()
                } else {
                    "item".into_response()
                }
            }),
        )
        .route(
            "/orders",
            post(move |body: String| async move {
                if h2.fetch_add(1, Ordering::SeqCst) % 3 != 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
                } else {
                    format!("order {body} placed").into_response()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let budget = RetryBudget::builder()
        .percent(20.0)
        .min_per_sec(5)
        .build()?;
    let retry = RetryLayer::for_http()
        .name("shop")
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(50)))
        .max_delay(Duration::from_secs(2))
        .budget(budget.clone())
        .on_event(|e: &RetryEvent| match e {
            RetryEvent::Scheduled {
                attempt,
                delay,
                hint,
                ..
            } => println!("  retry: attempt {attempt} in {delay:?} (server hint {hint:?})"),
            RetryEvent::NotRetried { reason, .. } => println!("  retry: not retried: {reason}"),
            RetryEvent::Succeeded { retries, .. } => println!("  retry: ok after {retries} retry"),
            other => println!("  retry: {other:?}"),
        })
        .build()?;
    let handle = retry.handle();
    let client = ServiceBuilder::new()
        .retry_with(retry)
        .call_timeout(Duration::from_millis(500))? // one attempt
        .service(
            Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<bytes::Bytes>>>(),
        );

    for (method, path, key) in [
        ("GET", "/item", None),
        ("POST", "/orders", None),
        ("POST", "/orders", Some("order-7")),
    ] {
        println!(
            "{method} {path}{}",
            key.map_or(String::new(), |k| format!(" (Idempotency-Key: {k})"))
        );
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let req = req.body(Full::new(bytes::Bytes::from_static(b"42")))?;
        let res = client.clone().oneshot(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        println!("  -> {status} {}", String::from_utf8_lossy(&body));
    }
    let s = handle.snapshot();
    println!(
        "retries {}, ok after a retry {}, ok at once {}, failed {}; budget: {} deposits, {} withdrawals",
        s.retries,
        s.successful_with_retry,
        s.successful_without_retry,
        s.failed_without_retry + s.failed_with_retry,
        budget.snapshot().deposits,
        budget.snapshot().withdrawals,
    );
    Ok(())
}
