//! An axum server that limits each client IP to 2 requests a second (2 at
//! once at most) and all clients together to 100 a second, with the quota
//! on every answer (`RateLimit-Policy`, `RateLimit`) and a 429 with
//! `Retry-After` for a client over its limit.
//!
//! The client IP is the peer address, which axum records only when the
//! server is started with `into_make_service_with_connect_info::<SocketAddr>()`
//! and buttress's `axum` feature is on; behind a proxy, give `ClientIp`
//! the number of trusted proxies instead of 0.
//!
//! `cargo run -p buttress-examples --example axum_rate_limit` starts the
//! server on 127.0.0.1, sends it 3 requests in a row, waits a second,
//! sends one more, and prints what came back: 2 answered, 1 limited, then
//! one answered again. Its test is `examples/tests/axum_rate_limit.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress::core::key::ClientIp;
use buttress::rate_limit::{KeyedRateLimitLayer, Rate, RateLimitEvent, Unit, WithHeaders};
use buttress::{BoxError, Registry, ServiceBuilderExt};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;

/// The per-client limit, with the global one beside it.
pub(crate) type PerClient = KeyedRateLimitLayer<ClientIp, IpAddr, Unit, Unit, WithHeaders>;

/// 2 requests a second per client IP (no proxy in front: the peer is the
/// client), 100 a second for everyone together, registered as `api`. The
/// limiter counts its rejections; the requests it admits are counted in
/// `admitted` by a listener of its events.
pub(crate) fn per_client(
    registry: &Registry,
    admitted: Arc<AtomicU64>,
) -> Result<PerClient, BoxError> {
    Ok(
        KeyedRateLimitLayer::builder(ClientIp::new(0), Rate::per_second(2))
            .name("api")
            .global(Rate::per_second(100), None) // taken with the client's: both or neither
            .max_keys(100_000) // bounded memory, whatever addresses come
            .registry(registry)
            .on_event(move |e: &RateLimitEvent| {
                if let RateLimitEvent::Permitted { .. } = e {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .response_headers() // RateLimit-Policy / RateLimit on every answer
            .build()?,
    )
}

/// The app: `GET /` answers "hello", within the limits. The error mapping
/// comes first (outermost): it turns the limiter's `RateLimited` into a
/// 429 with `Retry-After` and the quota headers, and a request without a
/// client IP (served without connect info) into a 500.
pub(crate) fn app(limit: PerClient) -> Router {
    Router::new().route("/", get(|| async { "hello\n" })).layer(
        ServiceBuilder::new()
            .error_to_response()
            .keyed_rate_limit(limit),
    )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// Runs the example: a server on 127.0.0.1, 3 requests in a row, one more
/// a second later. Returns one line per request, then the counts: the
/// admitted requests from the listener, the rest from the registry.
pub(crate) async fn run() -> Result<Vec<String>, BoxError> {
    let registry = Registry::new();
    let admitted = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = app(per_client(&registry, admitted.clone())?);
    let server = tokio::spawn(async move {
        // The connect info is what gives each request its client IP.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}/").parse()?;
    let mut lines = Vec::new();
    for _ in 0..3 {
        let res = client.get(uri.clone()).await?;
        lines.push(describe(&res));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let res = client.get(uri).await?;
    lines.push(describe(&res));

    let snapshot = registry.snapshot();
    let state = &snapshot["api"]["state"];
    lines.push(format!(
        "per-client limit `api`: {} admitted, {} rejected, {} client",
        admitted.load(Ordering::Relaxed),
        state["rejected"],
        state["keys"]
    ));
    server.abort();
    Ok(lines)
}

/// `200 OK, RateLimit: "api";r=1;t=1`, with `Retry-After` on a 429.
fn describe<B>(res: &http::Response<B>) -> String {
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let mut line = format!("{}, RateLimit: {}", res.status(), header("ratelimit"));
    if res.status() == http::StatusCode::TOO_MANY_REQUESTS {
        line += &format!(", Retry-After: {}", header("retry-after"));
    }
    line
}
