//! A hyper-util client whose calls are bounded: at most 4 in flight (the
//! rest rejected at once) and 300 ms each. It starts its own slow server on
//! 127.0.0.1, fires 8 concurrent calls, and sorts the outcomes by their
//! typed errors.
//!
//! `cargo run -p buttress-examples --example hyper_client`

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress::bulkhead::BulkheadLayer;
use buttress::core::error::kind_of;
use buttress::timeout::TimeoutLayer;
use buttress::{ErrorKind, ServiceBuilderExt};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A server whose answer takes 100 ms per `n`.
    let app = Router::new().route(
        "/{n}",
        get(
            |axum::extract::Path(n): axum::extract::Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(100 * n)).await;
                format!("{n}")
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let bulkhead = BulkheadLayer::builder()
        .name("upstream")
        .max_concurrent(4)
        .build()?;
    let timeout = TimeoutLayer::builder(Duration::from_millis(300))
        .name("upstream")
        .build()?;
    let client = ServiceBuilder::new()
        .bulkhead_with(bulkhead)
        .timeout_with(timeout)
        .service(Client::builder(TokioExecutor::new()).build_http::<String>());

    let calls = (0..8u64).map(|n| {
        let client = client.clone();
        let uri = format!("http://{addr}/{}", n % 5);
        tokio::spawn(async move {
            let req = http::Request::get(uri)
                .body(String::new())
                .expect("request");
            (n, client.oneshot(req).await)
        })
    });
    for call in calls {
        let (n, result) = call.await?;
        match result {
            Ok(res) => println!("call {n}: {}", res.status()),
            Err(err) => match kind_of(&*err) {
                Some(ErrorKind::BulkheadFull) => println!("call {n}: rejected, too many in flight"),
                Some(ErrorKind::Timeout) => println!("call {n}: timed out ({err})"),
                _ => println!("call {n}: failed: {err}"),
            },
        }
    }
    Ok(())
}
