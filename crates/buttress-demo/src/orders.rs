//! Orders as sagas (buttress-saga): reserve stock (local, compensated by
//! releasing it), charge the payment (the pivot: a `POST` to the flaky
//! upstream), ship (local). A payment that fails, answers 5xx or takes
//! longer than [`CHARGE_TIMEOUT`] compensates the order: its stock is
//! released. Every step is logged, write-ahead, in a SQLite file in a
//! temporary directory that is removed when [`Orders`] is dropped.
//!
//! [`Orders::spawn`] runs [`ORDER_WORKERS`] closed loops of orders until a
//! deadline; the report reads their outcomes from `/metrics`
//! (`buttress_saga_sagas_total{name="order"}`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use buttress_core::{BoxError, Registry};
use buttress_saga::sqlite::SqliteLog;
use buttress_saga::{RetryPolicy, Saga, Step, StepRequest};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tower::{service_fn, ServiceExt};

use crate::prometheus;
use crate::rng::XorShift64;
use crate::DemoError;

/// Orders placed at the same time, each in a closed loop.
pub(crate) const ORDER_WORKERS: usize = 2;
/// Pause between two orders of one loop, in milliseconds.
pub(crate) const ORDER_PAUSE_MS: (u64, u64) = (20, 60);
/// How long the payment may take; a slower one counts as failed.
pub(crate) const CHARGE_TIMEOUT: Duration = Duration::from_millis(150);

/// An order, the saga's context: what each step did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Order {
    /// Which order, counted from 0 by its loop.
    pub(crate) id: u64,
    /// The stock is held for it.
    pub(crate) reserved: bool,
    /// The payment went through.
    pub(crate) charged: bool,
    /// It left the warehouse.
    pub(crate) shipped: bool,
}

/// The warehouse: stock held and orders shipped, by the steps' effects.
#[derive(Debug, Default)]
pub(crate) struct Warehouse {
    reserved: AtomicU64,
    released: AtomicU64,
    shipped: AtomicU64,
}

impl Warehouse {
    /// Reservations made, released (by compensations), and shipments.
    pub(crate) fn get(&self) -> (u64, u64, u64) {
        (
            self.reserved.load(Ordering::Relaxed),
            self.released.load(Ordering::Relaxed),
            self.shipped.load(Ordering::Relaxed),
        )
    }
}

/// A directory removed, with what is in it, when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    /// A new directory under the system's temporary directory, named after
    /// the process and the time.
    fn create() -> Result<Self, DemoError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("buttress-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| DemoError::SagaLog {
            path: path.clone(),
            reason: format!("cannot create the directory: {e}"),
        })?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a directory left behind is in the temporary one.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The order saga, its log and its warehouse.
#[derive(Debug)]
pub(crate) struct Orders {
    // Dropped before `dir`: the log's connection closes with the last
    // clone of the saga.
    saga: Saga<Order>,
    warehouse: Arc<Warehouse>,
    dir: TempDir,
}

type PaymentClient = Client<HttpConnector, Empty<Bytes>>;

/// The payment step: `POST http://{upstream}/charge/{idempotency key}`;
/// anything but a 2xx is a declined payment.
async fn charge(
    client: PaymentClient,
    upstream: SocketAddr,
    r: StepRequest<Order>,
) -> Result<Order, BoxError> {
    let uri = format!("http://{upstream}/charge/{}", r.idempotency_key);
    let req = http::Request::post(uri).body(Empty::new())?;
    let status = client.request(req).await?.status();
    if !status.is_success() {
        return Err(format!("payment declined: HTTP {status}").into());
    }
    Ok(Order {
        charged: true,
        ..r.context
    })
}

impl Orders {
    /// The saga `order`, registered in `registry` (whose metrics it
    /// publishes), logged in a new SQLite file in a temporary directory;
    /// its payment step calls `upstream`. Sagas a previous process left
    /// unfinished in that log would be finished first (the log is new: it
    /// has none, but that is where a service calls it).
    pub(crate) async fn start(
        upstream: SocketAddr,
        registry: &Registry,
    ) -> Result<Self, DemoError> {
        let dir = TempDir::create()?;
        let path = dir.0.join("sagas.db");
        let log = SqliteLog::open(&path)
            .await
            .map_err(|e| log_error(&path, e))?;
        let warehouse = Arc::new(Warehouse::default());
        let client: PaymentClient = Client::builder(TokioExecutor::new()).build_http();

        let (held, released, shipped) = (warehouse.clone(), warehouse.clone(), warehouse.clone());
        let reserve = service_fn(move |r: StepRequest<Order>| {
            held.reserved.fetch_add(1, Ordering::Relaxed);
            let order = Order {
                reserved: true,
                ..r.context
            };
            async move { Ok::<_, BoxError>(order) }
        });
        let release = service_fn(move |_: StepRequest<Order>| {
            released.released.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, BoxError>(()) }
        });
        let pay = service_fn(move |r: StepRequest<Order>| charge(client.clone(), upstream, r));
        let ship = service_fn(move |r: StepRequest<Order>| {
            shipped.shipped.fetch_add(1, Ordering::Relaxed);
            let order = Order {
                shipped: true,
                ..r.context
            };
            async move { Ok::<_, BoxError>(order) }
        });
        let saga = Saga::builder(prometheus::SAGA, 1)
            .log(log)
            .retry(RetryPolicy::never())
            .step(Step::new("reserve", reserve).compensate(release))
            .pivot(Step::new("charge", pay).timeout(CHARGE_TIMEOUT))
            .retriable(Step::new("ship", ship))
            .registry(registry)
            .build()?;
        saga.recover().await.map_err(|e| log_error(&path, e))?;
        Ok(Self {
            saga,
            warehouse,
            dir,
        })
    }

    /// The warehouse the steps act on.
    pub(crate) fn warehouse(&self) -> Arc<Warehouse> {
        self.warehouse.clone()
    }

    /// The directory of the log.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Starts [`ORDER_WORKERS`] loops in `tasks`, each placing an order,
    /// waiting for its saga to end, pausing, and again, until `deadline`.
    pub(crate) fn spawn(&self, tasks: &mut JoinSet<()>, deadline: Instant) {
        for worker in 0..ORDER_WORKERS {
            let saga = self.saga.clone();
            let mut rng = XorShift64::from_clock(1_000 + worker as u64);
            tasks.spawn(async move {
                let mut id = 0;
                while Instant::now() < deadline {
                    let order = Order {
                        id,
                        reserved: false,
                        charged: false,
                        shipped: false,
                    };
                    // Its outcome is counted by the saga's metrics.
                    let _ = saga.clone().oneshot(order).await;
                    id += 1;
                    let pause =
                        Duration::from_millis(rng.between(ORDER_PAUSE_MS.0, ORDER_PAUSE_MS.1));
                    sleep_until((Instant::now() + pause).min(deadline)).await;
                }
            });
        }
    }
}

fn log_error(path: &Path, e: buttress_saga::LogError) -> DemoError {
    DemoError::SagaLog {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;

    use crate::server::Server;

    /// A payment service that answers `status` to every charge.
    async fn payment(status: StatusCode) -> Server {
        let app = Router::new().route("/charge/{key}", post(move || async move { status }));
        Server::start("upstream", app).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_declined_payment_releases_the_stock_and_the_log_is_removed() {
        let registry = Registry::new();
        let ok = payment(StatusCode::OK).await;
        let orders = Orders::start(ok.addr(), &registry).await.unwrap();
        let dir = orders.dir().to_owned();
        assert!(dir.join("sagas.db").exists());
        let order = |id| Order {
            id,
            reserved: false,
            charged: false,
            shipped: false,
        };
        let done = orders.saga.clone().oneshot(order(0)).await.unwrap();
        assert!(done.reserved && done.charged && done.shipped, "{done:?}");
        assert_eq!(orders.warehouse.get(), (1, 0, 1));
        drop(orders);
        assert!(!dir.exists(), "{dir:?} is left");

        let declined = payment(StatusCode::SERVICE_UNAVAILABLE).await;
        // One saga named `order` per registry.
        let orders = Orders::start(declined.addr(), &Registry::new())
            .await
            .unwrap();
        let err = orders.saga.clone().oneshot(order(1)).await.unwrap_err();
        assert!(err.is_compensated(), "{err}");
        assert_eq!(err.step(), Some("charge"));
        assert_eq!(orders.warehouse.get(), (1, 1, 0));
        let handle = orders.saga.handle();
        assert_eq!((handle.started(), handle.compensated()), (1, 1));

        // A loop stops at its deadline.
        let mut tasks = JoinSet::new();
        orders.spawn(&mut tasks, Instant::now() + Duration::from_millis(200));
        while tasks.join_next().await.is_some() {}
        let (reserved, released, shipped) = orders.warehouse.get();
        assert!(reserved > 1, "{reserved}");
        assert_eq!((released, shipped), (reserved, 0));
        assert_eq!(handle.compensated(), handle.started());
        for server in [ok, declined] {
            server.shutdown().await.unwrap();
        }
    }
}
