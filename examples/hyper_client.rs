//! A hyper-util client whose calls are bounded: at most 4 in flight (the
//! rest rejected at once) and 300 ms each. It starts its own slow server on
//! 127.0.0.1, fires 8 calls at once, and sorts the outcomes by their typed
//! errors: 2 answered, 2 timed out, 4 rejected because 4 were in flight.
//!
//! `cargo run -p buttress-examples --example hyper_client`

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress::bulkhead::BulkheadLayer;
use buttress::core::error::kind_of;
use buttress::timeout::TimeoutLayer;
use buttress::{BoxError, ErrorKind, ServiceBuilderExt};
use futures_util::future::join_all;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

/// How long the server takes to answer call `n`: the first two within the
/// 300 ms limit, the next two beyond it, the rest never sent.
const DELAYS_MS: [u64; 8] = [50, 150, 500, 600, 50, 50, 50, 50];

// `BoxError`, not `Box<dyn Error>`: the stack's errors are `Send + Sync`
// boxes, which `?` cannot turn into a `Box<dyn Error>` (E0277).
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// Runs the example and returns what it prints: one line per call, in call
/// order, then a summary line.
pub(crate) async fn run() -> Result<Vec<String>, BoxError> {
    // A server whose answer to `/{ms}` takes `ms` milliseconds.
    let app = Router::new().route(
        "/{ms}",
        get(
            |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("{ms}")
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let bulkhead = BulkheadLayer::builder()
        .name("upstream")
        .max_concurrent(4) // no queue: the 5th call in flight is rejected
        .build()?;
    let timeout = TimeoutLayer::builder(Duration::from_millis(300))
        .name("upstream-timeout")
        .build()?;
    let client = ServiceBuilder::new()
        .bulkhead_with(bulkhead)
        .timeout_with(timeout)
        .service(Client::builder(TokioExecutor::new()).build_http::<String>());

    // All eight at once, polled together in this task: the first four take
    // the bulkhead's permits and hold them while their calls are pending,
    // so the other four are rejected without reaching the server.
    let mut calls = Vec::new();
    for (n, ms) in DELAYS_MS.iter().enumerate() {
        let req = http::Request::get(format!("http://{addr}/{ms}")).body(String::new())?;
        let client = client.clone(); // a clone starts without a permit
        calls.push(async move { (n, client.oneshot(req).await) });
    }
    let mut lines = Vec::new();
    let (mut ok, mut timed_out, mut rejected) = (0, 0, 0);
    for (n, result) in join_all(calls).await {
        let line = match result {
            Ok(res) => {
                ok += 1;
                format!("call {n}: {}", res.status())
            }
            Err(err) => match kind_of(&*err) {
                Some(ErrorKind::BulkheadFull) => {
                    rejected += 1;
                    format!("call {n}: rejected, 4 calls in flight already")
                }
                Some(ErrorKind::Timeout) => {
                    timed_out += 1;
                    format!("call {n}: timed out ({err})")
                }
                _ => format!("call {n}: failed: {err}"),
            },
        };
        lines.push(line);
    }
    lines.push(format!(
        "{ok} answered, {timed_out} timed out, {rejected} rejected"
    ));
    server.abort();
    Ok(lines)
}
