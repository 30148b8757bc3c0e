//! gRPC health checking: a real tonic server on 127.0.0.1 serving
//! `grpc.health.v1.Health`, a real tonic client `Watch`ing the status flip
//! with readiness (a real circuit breaker), per service name, and on
//! shutdown.

use std::time::Duration;

use buttress_circuit_breaker::CircuitBreakerLayer;
use buttress_core::Registry;
use buttress_health::{BreakersCheck, Check, HealthRegistry, Status, TonicHealth};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

/// The next status the watch stream sends, within 10 s.
async fn next(watch: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let msg = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("no status change within 10s")
        .unwrap()
        .expect("stream ended");
    ServingStatus::try_from(msg.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_client_sees_serving_flip_with_readiness_per_service_and_on_shutdown() {
    let components = Registry::new();
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .registry(&components)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let every = Duration::from_millis(20);
    let registry = HealthRegistry::builder()
        .components(&components)
        .check(
            Check::new("breakers", BreakersCheck::new(&components).all_critical()).interval(every),
        )
        .check(Check::new("db", || async { Status::Healthy }).interval(every))
        .build()
        .unwrap();
    let (reporter, health_server) = tonic_health::server::health_reporter();
    let reporting = TonicHealth::builder(&registry, reporter)
        .service("")
        .service_checks("shop.Orders", ["db"])
        .poll_interval(every)
        .build()
        .unwrap()
        .spawn();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        Server::builder()
            .add_service(health_server)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let mut watch = client.watch(request("")).await.unwrap().into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving);

    handle.force_open();
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing);
    // The other service name follows its own checks only.
    let orders = client
        .check(request("shop.Orders"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(orders.status(), ServingStatus::Serving);

    handle.force_closed();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving);

    let mut orders_watch = client
        .watch(request("shop.Orders"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut orders_watch).await, ServingStatus::Serving);
    registry.shutdown_handle().shut_down();
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing);
    assert_eq!(next(&mut orders_watch).await, ServingStatus::NotServing);

    reporting.abort();
    server.abort();
}

#[tokio::test]
async fn a_service_naming_an_unknown_check_is_refused() {
    let registry = HealthRegistry::builder()
        .check(Check::new("db", || async { Status::Healthy }))
        .build()
        .unwrap();
    let (reporter, _server) = tonic_health::server::health_reporter();
    let err = TonicHealth::builder(&registry, reporter.clone())
        .service_checks("shop.Orders", ["dbb"])
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "service_checks");
    assert_eq!(
        err.reason(),
        "service `shop.Orders` names `dbb`, which is not registered"
    );
    let err = TonicHealth::builder(&registry, reporter)
        .poll_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "poll_interval");
}
