//! An order saga against three HTTP services on 127.0.0.1: reserve
//! inventory (compensated by a release), charge payment (the pivot), confirm
//! shipping (retried to completion). The payment service declines every
//! third order, so those orders are compensated: their stock is released.
//! The saga log is a SQLite file; each call carries the step's idempotency
//! key, which the services use to ignore repeats.
//!
//! `cargo run -p buttress-saga --features sqlite --example order_saga`

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use buttress_core::BoxError;
use buttress_saga::sqlite::SqliteLog;
use buttress_saga::{RetryPolicy, Saga, Step, StepRequest};
use buttress_timeout::TimeoutLayer;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tower::{service_fn, Layer, ServiceExt};

/// The saga's context: what each step learned.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    reserved: bool,
    charged: bool,
    shipped: bool,
}

/// A service's state: the idempotency keys it has applied, by kind.
#[derive(Default)]
struct Ledger {
    applied: Mutex<HashSet<String>>,
    calls: AtomicU64,
}

/// Applies `key` once; a repeat is a no-op that answers the same.
fn apply(ledger: &Ledger, key: String) -> StatusCode {
    ledger.calls.fetch_add(1, Ordering::Relaxed);
    ledger.applied.lock().unwrap().insert(key);
    StatusCode::OK
}

async fn serve(app: Router) -> Result<String, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>;

/// A step service: POSTs to `{base}/{path}/{idempotency key}`; anything but
/// 2xx is an error.
fn http_step(
    client: HttpClient,
    base: String,
    path: &'static str,
) -> impl tower::Service<
    StepRequest<Order>,
    Response = StepRequest<Order>,
    Error = BoxError,
    Future: Send,
> + Clone
       + Send
       + Sync
       + 'static {
    service_fn(move |r: StepRequest<Order>| {
        let client = client.clone();
        let uri = format!("{base}/{path}/{}", r.idempotency_key);
        async move {
            let req = http::Request::post(uri).body(Empty::new())?;
            let status = client.request(req).await?.status();
            if !status.is_success() {
                return Err(format!("{path}: HTTP {status}").into());
            }
            Ok(r)
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let inventory = Arc::new(Ledger::default());
    let payment = Arc::new(Ledger::default());
    let shipping = Arc::new(Ledger::default());

    let inventory_url =
        serve(
            Router::new()
                .route(
                    "/reserve/{key}",
                    post(
                        |State(l): State<Arc<Ledger>>, Path(k): Path<String>| async move {
                            apply(&l, k)
                        },
                    ),
                )
                .route(
                    "/release/{key}",
                    post(
                        |State(l): State<Arc<Ledger>>, Path(k): Path<String>| async move {
                            // Releasing undoes the reservation of the same order.
                            let reserve = k.replace(":compensation", ":action");
                            l.applied.lock().unwrap().remove(&reserve);
                            StatusCode::OK
                        },
                    ),
                )
                .with_state(inventory.clone()),
        )
        .await?;
    let payment_url = serve(
        Router::new()
            .route(
                "/charge/{key}",
                post(
                    |State(l): State<Arc<Ledger>>, Path(k): Path<String>| async move {
                        // Declines every third order: its id is the saga id's suffix.
                        let order: u64 = k
                            .split(':')
                            .next()
                            .and_then(|s| s.rsplit('-').next())
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        if order % 3 == 2 {
                            l.calls.fetch_add(1, Ordering::Relaxed);
                            return StatusCode::PAYMENT_REQUIRED;
                        }
                        apply(&l, k)
                    },
                ),
            )
            .with_state(payment.clone()),
    )
    .await?;
    let shipping_url =
        serve(
            Router::new()
                .route(
                    "/ship/{key}",
                    post(
                        |State(l): State<Arc<Ledger>>, Path(k): Path<String>| async move {
                            apply(&l, k)
                        },
                    ),
                )
                .with_state(shipping.clone()),
        )
        .await?;

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Any layer wraps a step: here each payment try is cut at 2 s.
    let payment_timeout = TimeoutLayer::builder(Duration::from_secs(2))
        .name("payment")
        .build()?;

    let dir = std::env::temp_dir().join(format!("order-saga-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = SqliteLog::open(dir.join("sagas.db")).await?;

    let saga = Saga::builder("order", 1)
        .log(log)
        .deadline(Duration::from_secs(300))
        .retry(RetryPolicy::backoff(3, Duration::from_millis(50), 1.5))
        .step(
            Step::new(
                "reserve",
                http_step(client.clone(), inventory_url.clone(), "reserve").map_response(
                    |r: StepRequest<Order>| Order {
                        reserved: true,
                        ..r.context
                    },
                ),
            )
            .compensate(http_step(client.clone(), inventory_url, "release")),
        )
        .pivot(
            Step::new(
                "charge",
                payment_timeout
                    .layer(http_step(client.clone(), payment_url, "charge"))
                    .map_response(|r: StepRequest<Order>| Order {
                        charged: true,
                        ..r.context
                    }),
            )
            .retry(RetryPolicy::never()),
        )
        .retriable(Step::new(
            "ship",
            http_step(client.clone(), shipping_url, "ship").map_response(
                |r: StepRequest<Order>| Order {
                    shipped: true,
                    ..r.context
                },
            ),
        ))
        .build()?;

    // A previous run killed mid-way would be finished here.
    let recovered = saga.recover().await?;
    println!("recovered on start: {recovered:?}");

    let (mut completed, mut compensated) = (0, 0);
    for id in 0..12u64 {
        let order = Order {
            id,
            reserved: false,
            charged: false,
            shipped: false,
        };
        match saga.run_with_id(format!("order-{id}"), order).await {
            Ok(o) => {
                completed += 1;
                println!(
                    "order {id}: completed (reserved {}, charged {}, shipped {})",
                    o.reserved, o.charged, o.shipped
                );
            }
            Err(e) => {
                compensated += usize::from(e.is_compensated());
                let undone: Vec<_> = e.compensations().iter().map(|c| c.step).collect();
                println!("order {id}: {e}; compensated {undone:?}");
            }
        }
    }
    let still_reserved = inventory.applied.lock().unwrap().len();
    println!(
        "completed {completed}, compensated {compensated}; reservations held {still_reserved}; \
         payment calls {}, shipments {}",
        payment.calls.load(Ordering::Relaxed),
        shipping.applied.lock().unwrap().len()
    );
    assert_eq!(
        still_reserved, completed,
        "every failed order released its stock"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
