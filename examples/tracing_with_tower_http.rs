//! `tracing` for an axum server: tower-http's `TraceLayer` gives every
//! request its span and logs its response; the buttress layers of the
//! handler's call to a dependency log their decisions inside that span, to
//! `tracing-subscriber`'s fmt output. The dependency is down for a while:
//! the log shows the retry's attempts (each a `buttress.retry.attempt`
//! span inside the request's), the exhausted retry (`warn`), the breaker
//! opening (`warn`), the calls it then rejects (`debug`; the retry does
//! not wait out an open wait longer than its `max_delay`), and the breaker
//! closing again (`info`) once the dependency is back.
//!
//! `cargo run -p buttress-examples --example tracing_with_tower_http`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use buttress::circuit_breaker::CircuitBreakerLayer;
use buttress::retry::{Backoff, Jitter, RetryLayer};
use buttress::BoxError;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Registry;

/// The dependency's client stack: retry (three attempts, 20 ms apart, no
/// wait over 100 ms) around a breaker that opens for a second after four
/// failures in a row.
type Dependency = BoxCloneSyncService<(), &'static str, BoxError>;

/// The subscriber: fmt lines (no colours) to `writer`, the server's spans
/// and responses at `info`, the buttress crates' per-call decisions at
/// `debug`.
pub(crate) fn subscriber<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = Targets::new()
        .with_default(Level::INFO)
        .with_target("buttress_retry", Level::DEBUG)
        .with_target("buttress_circuit_breaker", Level::DEBUG);
    Registry::default().with(filter).with(
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .without_time(),
    )
}

/// A dependency that fails its first `down_for` calls, behind the stack.
fn dependency(down_for: u32) -> Dependency {
    let calls = Arc::new(AtomicU32::new(0));
    let retry = RetryLayer::builder()
        .name("inventory")
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_millis(20)))
        // No jitter, so that the log shows 20 ms; keep it in production.
        .jitter(Jitter::None)
        .max_delay(Duration::from_millis(100))
        .build()
        .expect("valid retry");
    let breaker = CircuitBreakerLayer::builder()
        .name("inventory")
        .consecutive_failures(4)
        .wait_in_open(Duration::from_secs(1))
        .permitted_calls_in_half_open(1)
        .build()
        .expect("valid breaker");
    let svc = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .service(service_fn(move |()| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < down_for {
                    Err::<&'static str, BoxError>("inventory is down".into())
                } else {
                    Ok("12 in stock")
                }
            }
        }));
    BoxCloneSyncService::new(svc)
}

async fn stock(State(dep): State<Dependency>) -> (StatusCode, String) {
    match dep.oneshot(()).await {
        Ok(answer) => (StatusCode::OK, answer.to_string()),
        Err(e) => {
            tracing::info!(error = %e, "answering 503");
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// The server: `TraceLayer` (spans and responses at `info`) around the
/// routes, as tower-http provides it.
pub(crate) fn app(dep: Dependency) -> Router {
    Router::new()
        .route("/stock", get(stock))
        .with_state(dep)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
}

/// Serves on 127.0.0.1, asks for `/stock` four times (the dependency is
/// down for its first four calls; the last request comes after the
/// breaker's open wait) and returns the status codes.
pub(crate) async fn run() -> Result<Vec<u16>, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, app(dependency(4))).await.ok();
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let mut codes = Vec::new();
    for pause in [0, 0, 0, 1100] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let uri = format!("http://{addr}/stock").parse()?;
        let res = client.get(uri).await?;
        codes.push(res.status().as_u16());
        res.into_body().collect().await?;
    }
    server.abort();
    Ok(codes)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing::subscriber::set_global_default(subscriber(std::io::stdout))?;
    let codes = run().await?;
    println!("status codes: {codes:?}");
    Ok(())
}
