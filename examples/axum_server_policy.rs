//! An axum server protected by `Policy::server()`: one layer that answers
//! every rejection as an HTTP response, limits each client IP, bounds the
//! requests in flight (with a short queue) and times out slow handlers.
//!
//! The preset's values suit a real server (100 requests a second per
//! client, 256 in flight); this example shrinks them so that a handful of
//! requests shows each protection at work:
//!
//! | slot | here | past it |
//! |---|---|---|
//! | per client | 3 a second, bursts of 3 | 429 with `Retry-After` |
//! | bulkhead | 1 in flight, 1 queued for up to 2 s | 503 with `Retry-After` |
//! | timeout | 1 s per handler | 504 |
//!
//! The clients stand behind one reverse proxy (the example's own HTTP
//! client plays it): the server trusts one proxy hop, so each client is
//! the address the proxy wrote in `X-Forwarded-For`. Without a proxy,
//! leave `trusted_proxies` at 0 and serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`, as here: the key
//! is then the peer address.
//!
//! `cargo run -p buttress-examples --example axum_server_policy` starts the
//! server on 127.0.0.1, sends it the requests below, checks each answer and
//! prints one line per request. Its test is
//! `examples/tests/axum_server_policy.rs`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress::bulkhead::{BulkheadConfig, BulkheadHandle};
use buttress::policy::{PerClient, Policy};
use buttress::rate_limit::Rate;
use buttress::BoxError;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// How long `/slow` works: long enough for the next requests to find the
/// bulkhead busy.
const SLOW: Duration = Duration::from_millis(600);

/// The app: `/` answers at once, `/slow` works for [`SLOW`], `/stuck`
/// would take 10 s, all behind the server policy's single layer.
pub(crate) fn app() -> Result<(Router, BulkheadHandle), BoxError> {
    // The server preset (`ServerPolicy`), shrunk slot by slot.
    let layer = Policy::server()
        .per_client(
            PerClient::new(Rate::per_second(3))
                .burst(3)
                // One reverse proxy in front: the client is the hop it
                // appended to `X-Forwarded-For`.
                .trusted_proxies(1),
        )
        .bulkhead(BulkheadConfig {
            max_concurrent: 1,
            max_queue: 1,
            max_wait: Some(Duration::from_secs(2)),
            ..BulkheadConfig::default()
        })
        .timeout(Duration::from_secs(1))
        .build()?;
    // The bulkhead's handle, to see requests in flight and queued.
    let bulkhead = layer
        .bulkhead()
        .ok_or("the policy has a bulkhead")?
        .handle();
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(SLOW).await;
                "done\n"
            }),
        )
        .route(
            "/stuck",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "too late\n"
            }),
        )
        // One layer: errors to responses, per-client limit, bulkhead,
        // timeout (outermost first).
        .layer(layer);
    Ok((app, bulkhead))
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

/// Runs the example: the server on 127.0.0.1, then a normal request, one
/// client past its limit (another one still served), three requests at
/// once against a bulkhead of one with a queue of one, and a stuck
/// handler. Returns one line per answer; fails if an answer is not the
/// one expected.
pub(crate) async fn run() -> Result<Vec<String>, BoxError> {
    let (app, bulkhead) = app()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut lines = Vec::new();

    // 1. A normal request passes.
    let (status, line) = request(&client, addr, "/", "203.0.113.1").await?;
    ensure(status == StatusCode::OK, || line.clone())?;
    lines.push(line);

    // 2. One client sends four requests in a row: three fit its burst, the
    //    fourth is limited (429, come back in a second). Another client is
    //    not affected.
    for n in 1..=4 {
        let (status, line) = request(&client, addr, "/", "203.0.113.2").await?;
        let expected = if n <= 3 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        ensure(status == expected, || line.clone())?;
        lines.push(line);
    }
    let (status, line) = request(&client, addr, "/", "203.0.113.3").await?;
    ensure(status == StatusCode::OK, || line.clone())?;
    lines.push(line);

    // 3. Three clients call `/slow` at once. The first takes the only
    //    permit, the second waits in the queue, the third finds the queue
    //    full and is turned away at once (503): load shed, not piled up.
    let first = tokio::spawn(request(client.clone(), addr, "/slow", "203.0.113.10"));
    wait_until(&bulkhead, |s| s.active == 1).await?;
    let second = tokio::spawn(request(client.clone(), addr, "/slow", "203.0.113.11"));
    wait_until(&bulkhead, |s| s.queued == 1).await?;
    let (status, line) = request(&client, addr, "/slow", "203.0.113.12").await?;
    ensure(status == StatusCode::SERVICE_UNAVAILABLE, || line.clone())?;
    let shed = line;
    for task in [first, second] {
        let (status, line) = task.await??;
        ensure(status == StatusCode::OK, || line.clone())?;
        lines.push(line);
    }
    lines.push(shed);

    // 4. A handler that hangs is cut at the timeout (504).
    let (status, line) = request(&client, addr, "/stuck", "203.0.113.20").await?;
    ensure(status == StatusCode::GATEWAY_TIMEOUT, || line.clone())?;
    lines.push(line);

    server.abort();
    Ok(lines)
}

/// Waits (at most 2 s) until the bulkhead's snapshot satisfies `cond`.
async fn wait_until(
    bulkhead: &BulkheadHandle,
    cond: impl Fn(&buttress::bulkhead::BulkheadSnapshot) -> bool,
) -> Result<(), BoxError> {
    for _ in 0..400 {
        if cond(&bulkhead.snapshot()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!(
        "bulkhead never reached the state: {:?}",
        bulkhead.snapshot()
    )
    .into())
}

/// `GET path` as the client `client_ip` behind the proxy; the status and
/// a line: `203.0.113.2 GET / -> 429 Too Many Requests, Retry-After: 1`.
async fn request(
    client: impl std::borrow::Borrow<HttpClient>,
    addr: SocketAddr,
    path: &'static str,
    client_ip: &'static str,
) -> Result<(StatusCode, String), BoxError> {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header("x-forwarded-for", client_ip)
        .body(Empty::new())?;
    let res = client.borrow().request(req).await?;
    let status = res.status();
    let mut line = format!("{client_ip} GET {path} -> {status}");
    if let Some(after) = res.headers().get(http::header::RETRY_AFTER) {
        line += &format!(", Retry-After: {}", after.to_str()?);
    }
    Ok((status, line))
}
