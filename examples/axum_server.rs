//! An axum server protecting itself: at most 32 requests run at once, 64
//! more may wait up to 100 ms, and no handler runs longer than 2 s. Shed
//! requests get 503, slow ones 504. `GET /admin/resilience` shows the state.
//!
//! `cargo run -p buttress-examples --example axum_server`, then
//! `curl -i localhost:3000/work?ms=2500` (504) or `localhost:3000/admin/resilience`.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::{Json, Router};
use buttress::bulkhead::BulkheadLayer;
use buttress::timeout::TimeoutLayer;
use buttress::{Registry, ServiceBuilderExt};
use tower::ServiceBuilder;

async fn work(Query(q): Query<HashMap<String, u64>>) -> String {
    let ms = q.get("ms").copied().unwrap_or(20);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("worked {ms} ms\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new();
    let bulkhead = BulkheadLayer::builder()
        .name("api")
        .max_concurrent(32)
        .max_queue(64)
        .max_wait(Duration::from_millis(100))
        .registry(&registry)
        .build()?;
    let timeout = TimeoutLayer::builder(Duration::from_secs(2))
        .name("handlers")
        .registry(&registry)
        .build()?
        .for_http();

    let admin = registry.clone();
    let app = Router::new()
        .route("/work", get(work))
        .layer(
            // Outermost first: errors become responses, then the bulkhead
            // bounds concurrency, then each admitted request gets 2 s.
            ServiceBuilder::new()
                .error_to_response()
                .bulkhead_with(bulkhead)
                .timeout_with(timeout),
        )
        .route(
            "/admin/resilience",
            get(move || async move { Json(admin.snapshot()) }),
        );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
