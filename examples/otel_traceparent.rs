//! W3C `traceparent` propagation for a hyper-util client stack with
//! buttress layers: `tracing` spans become OpenTelemetry spans through
//! `tracing-opentelemetry`, and a small layer under the retry injects the
//! current span's context into each outgoing request's headers with
//! OpenTelemetry's `TraceContextPropagator`. Because the retry enters each
//! retry's span (`buttress.retry.attempt`) while it sends that attempt,
//! every attempt carries the caller's trace id and its own parent span id,
//! so the server's trace shows which attempt it served.
//!
//! The server here only records the `traceparent` headers it receives; a
//! real one would extract them into its own spans
//! (`OpenTelemetrySpanExt::set_parent`).
//!
//! `cargo run -p buttress-examples --example otel_traceparent`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use buttress::circuit_breaker::CircuitBreakerLayer;
use buttress::retry::{Backoff, ReplayBody, RetryLayer};
use buttress::timeout::TimeoutLayer;
use buttress::BoxError;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Writes OpenTelemetry's text-map fields as HTTP headers.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Injects the current span's OpenTelemetry context (`traceparent`, and
/// `tracestate` when there is one) into a request.
fn inject<B>(mut req: http::Request<B>) -> http::Request<B> {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
    req
}

/// A subscriber that turns spans into OpenTelemetry spans (no exporter:
/// this example only propagates; add an OTLP exporter to the provider to
/// ship them).
pub(crate) fn subscriber() -> (impl tracing::Subscriber + Send + Sync, SdkTracerProvider) {
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer("buttress-example");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    (subscriber, provider)
}

/// What the server saw.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The trace id of the client's span, as 32 hex digits.
    pub(crate) trace_id: String,
    /// The `traceparent` header of every request the server received.
    pub(crate) traceparents: Vec<String>,
    /// The status the client finally got.
    pub(crate) status: u16,
}

/// Serves on 127.0.0.1 an endpoint that answers 503 to its first request
/// and records every `traceparent`; calls it once through timeout, retry,
/// breaker and the propagation layer, inside a `checkout` span.
pub(crate) async fn run() -> Result<Outcome, BoxError> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU32::new(0));
    let app = {
        let seen = seen.clone();
        Router::new().route(
            "/price",
            get(move |headers: HeaderMap| async move {
                let tp = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(none)")
                    .to_owned();
                seen.lock().unwrap().push(tp);
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    (StatusCode::SERVICE_UNAVAILABLE, "warming up")
                } else {
                    (StatusCode::OK, "42")
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });

    let client =
        Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<bytes::Bytes>>>();
    let stack = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5))?)
        .layer(
            RetryLayer::for_http()
                .name("pricing")
                .backoff(Backoff::fixed(Duration::from_millis(10)))
                .build()?,
        )
        .layer(CircuitBreakerLayer::builder().name("pricing").build()?)
        // Under the retry: each attempt injects its own span's context.
        .map_request(inject)
        .service(client);

    let span = tracing::info_span!("checkout");
    let trace_id = span.context().span().span_context().trace_id().to_string();
    let req =
        http::Request::get(format!("http://{addr}/price")).body(Full::new(bytes::Bytes::new()))?;
    let res = stack.oneshot(req).instrument(span).await?;
    let status = res.status().as_u16();
    res.into_body().collect().await?;
    server.abort();
    let traceparents = seen.lock().unwrap().clone();
    Ok(Outcome {
        trace_id,
        traceparents,
        status,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (subscriber, provider) = subscriber();
    tracing::subscriber::set_global_default(subscriber)?;
    let outcome = run().await?;
    println!("client trace id: {}", outcome.trace_id);
    for (n, tp) in outcome.traceparents.iter().enumerate() {
        println!("attempt {}: traceparent {tp}", n + 1);
    }
    println!("status: {}", outcome.status);
    provider.shutdown()?;
    Ok(())
}
