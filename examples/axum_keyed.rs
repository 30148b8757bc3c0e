//! An axum server that gives every client IP its own bulkhead.
//!
//! `ClientIp` reads the peer address from the request, which axum records
//! only when the server is started with
//! `into_make_service_with_connect_info::<SocketAddr>()` and buttress's
//! `axum` feature is on (so the extractor knows axum's
//! `ConnectInfo<SocketAddr>`). With plain `axum::serve(listener, app)` no
//! request has a key, and the keyed bulkhead rejects them all with
//! `KeyMissing`, mapped to a 500 below, rather than silently making every
//! client share one bulkhead.
//!
//! Run it with `cargo run -p buttress-examples --example axum_keyed`, then
//! `curl -i http://127.0.0.1:<port>/work` twice at once: the second call
//! from the same IP gets a 503. The bulkhead crate's `axum_keyed` test
//! runs this file's server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use buttress_bulkhead::error::BulkheadFull;
use buttress_bulkhead::KeyedBulkheadLayer;
use buttress_core::error::{BoxError, KeyMissing};
use buttress_core::key::ClientIp;
use tower::ServiceBuilder;

/// One call at a time per client IP; no proxy in front (the peer is the
/// client).
pub(crate) fn per_client_bulkhead() -> KeyedBulkheadLayer<ClientIp, IpAddr> {
    KeyedBulkheadLayer::builder(ClientIp::new(0))
        .name("per-client")
        .max_concurrent(1)
        .max_keys(10_000)
        .build()
        .expect("valid bulkhead config")
}

/// The app: `/work` takes `work` to answer, one call per client IP at once.
pub(crate) fn app(bulkhead: KeyedBulkheadLayer<ClientIp, IpAddr>, work: Duration) -> Router {
    Router::new()
        .route(
            "/work",
            get(move || async move {
                tokio::time::sleep(work).await;
                "done\n"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(rejection_to_response))
                .layer(bulkhead),
        )
}

/// A full bulkhead is the client's problem to retry later (503); a
/// missing key is the server's misconfiguration (500).
async fn rejection_to_response(err: BoxError) -> (StatusCode, String) {
    if err.is::<BulkheadFull>() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n"))
    } else if err.is::<KeyMissing>() {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n"))
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into())
    }
}

#[tokio::main]
async fn main() {
    let bulkhead = per_client_bulkhead();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!(
        "listening on http://{}/work",
        listener.local_addr().unwrap()
    );
    // The connect info is what gives each request its client IP.
    axum::serve(
        listener,
        app(bulkhead, Duration::from_secs(1)).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
