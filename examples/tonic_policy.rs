//! gRPC with tonic: a server and a client under buttress, with the
//! rejections mapped to gRPC statuses on both sides, and gRPC health
//! checking (`grpc.health.v1`) that follows a critical circuit breaker.
//!
//! Two tonic servers on 127.0.0.1, both serving tonic-health's `Health`
//! service (generated already: no protoc, no code generation here):
//!
//! - **payments**, a dependency. It runs one call at a time (a bulkhead
//!   without a queue, each call taking 500 ms); `error_to_status()` answers
//!   the bulkhead's rejection as `Unavailable` (without it, tonic would
//!   reset the stream and the client would see a transport error).
//! - **the app**, whose client calls payments through a policy,
//!   `Policy::api().build_grpc()` (gRPC's classifier: `Unavailable` and
//!   the like count as failures), no retry (a payment is not retried
//!   blindly), its breaker opening after 2 failures in a row.
//!   `rejection_to_status()` makes the client's own rejections (an open
//!   circuit) a `tonic::Status`, `Unavailable` with
//!   `grpc-retry-pushback-ms`, rather than `Unknown`. The app reports its
//!   own health through `TonicHealth`: `SERVING` until the breaker in front
//!   of payments, declared critical, opens; then `NOT_SERVING`, so that a
//!   load balancer stops sending it traffic it cannot serve.
//!
//! `cargo run -p buttress-examples --example tonic_policy`; its test is
//! `examples/tests/tonic_policy.rs`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use buttress::bulkhead::{BulkheadHandle, BulkheadLayer};
use buttress::core::error::{kind_of, ErrorKind};
use buttress::health::{BreakersCheck, Check, HealthRegistry, TonicHealth};
use buttress::policy::{Grpc, Policy};
use buttress::retry::ReplayBody;
use buttress::{BoxError, Registry, ServiceBuilderExt};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

/// How long payments works on a call.
const WORK: Duration = Duration::from_millis(500);

/// Starts payments: the `Health` service behind `error_to_status()` and a
/// bulkhead of one call. Returns its address, the bulkhead's handle and
/// the server task's abort handle.
async fn start_payments() -> Result<(SocketAddr, BulkheadHandle, AbortHandle), BoxError> {
    let bulkhead = BulkheadLayer::builder()
        .name("payments-server")
        .max_concurrent(1)
        .build()?;
    let handle = bulkhead.handle();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .layer(
            ServiceBuilder::new()
                // Outermost: every rejection below becomes a gRPC status.
                .error_to_status()
                .bulkhead_with(bulkhead)
                // Stands for real work: each call holds its permit.
                .then(|res| async move {
                    tokio::time::sleep(WORK).await;
                    res
                })
                .into_inner(),
        )
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener));
    let task = tokio::spawn(server).abort_handle();
    Ok((addr, handle, task))
}

/// Starts the app's gRPC server, whose health follows `health`'s
/// readiness (`""`: the whole server). Returns its address and the abort
/// handles of its tasks (the server, the health updates).
async fn start_app(health: &HealthRegistry) -> Result<(SocketAddr, [AbortHandle; 2]), BoxError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Sets the serving status from readiness: at once when a check's
    // result changes, and every 50 ms.
    let updates = TonicHealth::builder(health, reporter)
        .service("")
        .poll_interval(Duration::from_millis(50))
        .build()?
        .spawn()
        .abort_handle();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .add_service(health_service)
        .serve_with_incoming(TcpIncoming::from(listener));
    let task = tokio::spawn(server).abort_handle();
    Ok((addr, [task, updates]))
}

async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
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

/// Runs the example; one line per call and health probe, an error if one
/// goes otherwise.
pub(crate) async fn run() -> Result<Vec<String>, BoxError> {
    let (payments_addr, payments_bulkhead, payments_task) = start_payments().await?;

    // ----- the app's client to payments -----
    let registry = Registry::new();
    // The `api` preset without its retry (a payment is not retried
    // blindly), so without a per-attempt timeout either: one 2 s timeout
    // for the call. Its breaker opens after 2 failures in a row here (5 in
    // the preset), and stays open a minute.
    let mut policy = Policy::api()
        .retry(None)
        .timeout(Duration::from_secs(2))
        .attempt_timeout(None);
    if let Some(breaker) = policy.circuit_breaker.as_mut() {
        breaker.consecutive_failures = Some(2);
    }
    // Registered as `payments.<slot>`: the health check finds the breaker
    // by that name.
    let policy = policy.build_named::<Grpc>("payments", Some(&registry))?;
    let payments = HealthClient::new(
        ServiceBuilder::new()
            // Outermost: the client's own rejections become a `tonic::Status`.
            .rejection_to_status()
            .policy(policy)
            // The policy hands on the body in its replayable form; the
            // channel takes tonic's body type.
            .map_request(|req: http::Request<ReplayBody<tonic::body::Body>>| {
                req.map(tonic::body::Body::new)
            })
            .service(connect(payments_addr).await?),
    );
    let pay = |n: u32| {
        let mut payments = payments.clone();
        async move {
            match payments.check(HealthCheckRequest::default()).await {
                Ok(res) => format!("payments call {n}: {:?}", res.get_ref().status()),
                Err(status) => {
                    // A local rejection is the status' source; a server's
                    // answer has none.
                    let origin = match kind_of(&status) {
                        Some(ErrorKind::CircuitOpen) => "the app's breaker",
                        _ => "the payments server",
                    };
                    // `grpc-retry-pushback-ms`: when to come back, from
                    // the server's bulkhead or from the breaker's open time.
                    let pushback = status
                        .metadata()
                        .get("grpc-retry-pushback-ms")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .map_or("no pushback".to_owned(), |ms| {
                            format!("pushback {} s", ms.div_ceil(1000))
                        });
                    format!(
                        "payments call {n}: {:?} {:?} from {origin}, {pushback}",
                        status.code(),
                        status.message(),
                    )
                }
            }
        }
    };

    // ----- the app's health: the breaker in front of payments is critical -----
    let health = HealthRegistry::builder()
        .check(
            Check::new(
                "payments",
                BreakersCheck::new(&registry).critical(["payments.circuit_breaker"]),
            )
            .interval(Duration::from_millis(50)),
        )
        .components(&registry)
        .build()?;
    let (app_addr, app_tasks) = start_app(&health).await?;
    let mut probe = HealthClient::new(connect(app_addr).await?);
    let mut lines = Vec::new();

    // 1. All is well: the app serves, payments answers.
    let status = wait_for_status(&mut probe, ServingStatus::Serving).await?;
    lines.push(format!("app health: {status:?}"));
    let line = pay(1).await;
    ensure(line.ends_with("Serving"), || line.clone())?;
    lines.push(line);

    // 2. Payments is saturated: one call holds its only permit, so the
    //    next two are answered `Unavailable` by its bulkhead (mapped by
    //    `error_to_status()`). The app's breaker counts both and opens;
    //    the fourth call never leaves the app.
    let held = tokio::spawn(pay(2));
    for _ in 0..400 {
        if payments_bulkhead.snapshot().active == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure(payments_bulkhead.snapshot().active == 1, || {
        "the held call never reached payments".to_owned()
    })?;
    for n in 3..=4 {
        let line = pay(n).await;
        ensure(line.contains("from the payments server"), || line.clone())?;
        lines.push(line);
    }
    let line = pay(5).await;
    ensure(line.contains("from the app's breaker, pushback"), || {
        line.clone()
    })?;
    lines.push(line);
    // The held call was admitted before all this, and answers.
    let line = held.await?;
    ensure(line.ends_with("Serving"), || line.clone())?;
    lines.push(line);

    // 3. The critical breaker is open: the app's own health flips.
    let status = wait_for_status(&mut probe, ServingStatus::NotServing).await?;
    lines.push(format!("app health: {status:?}"));

    payments_task.abort();
    for task in app_tasks {
        task.abort();
    }
    Ok(lines)
}

/// Asks the app's health service until it answers `want` (at most 3 s).
async fn wait_for_status(
    probe: &mut HealthClient<Channel>,
    want: ServingStatus,
) -> Result<ServingStatus, BoxError> {
    let mut last = None;
    for _ in 0..150 {
        let status = probe
            .check(HealthCheckRequest::default())
            .await?
            .get_ref()
            .status();
        if status == want {
            return Ok(status);
        }
        last = Some(status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("the app's health stayed {last:?}, expected {want:?}").into())
}
