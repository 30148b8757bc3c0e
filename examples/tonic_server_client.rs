//! A tonic server and a tonic client, both protected by buttress, talking
//! over 127.0.0.1 (gRPC's standard health service, so no code generation).
//!
//! - The server runs at most one call at once (a bulkhead without a
//!   queue); each call takes a second of work. `error_to_status()` turns
//!   the bulkhead's rejection into `Unavailable` with a generic message:
//!   without it tonic would reset the stream and the client would see a
//!   transport error.
//! - The client puts a circuit breaker around its `Channel`, counting
//!   `Unavailable` answers as failures; after two it opens and rejects
//!   calls locally. `rejection_to_status()` makes that rejection a
//!   `tonic::Status` (`Unavailable` with `grpc-retry-pushback-ms`) rather
//!   than `Unknown`.
//!
//! `cargo run -p buttress-examples --example tonic_server_client`

use std::time::Duration;

use buttress::bulkhead::BulkheadLayer;
use buttress::circuit_breaker::CircuitBreakerLayer;
use buttress::core::error::{kind_of, ErrorKind};
use buttress::core::GrpcClassifier;
use buttress::ServiceBuilderExt;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

#[tokio::main]
// `pub(crate)`: the integration tests run this example as a module.
pub(crate) async fn main() -> Result<(), buttress::BoxError> {
    // ----- the server -----
    let bulkhead = BulkheadLayer::builder()
        .name("health")
        .max_concurrent(1)
        .build()?;
    let server_bulkhead = bulkhead.handle();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .layer(
            ServiceBuilder::new()
                // Outermost: every rejection below becomes a gRPC status.
                .error_to_status()
                .bulkhead_with(bulkhead)
                // Stands for real work: each call holds its permit for 1 s.
                .then(|res| async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    res
                })
                .into_inner(),
        )
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);

    // ----- the client -----
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let breaker = CircuitBreakerLayer::builder()
        .name("health-client")
        .consecutive_failures(2)
        .wait_in_open(Duration::from_secs(5))
        .classifier(GrpcClassifier::new())
        .build()?;
    let client = HealthClient::new(
        ServiceBuilder::new()
            // Outermost: local rejections become a `tonic::Status`.
            .rejection_to_status()
            .layer(breaker)
            .service(channel),
    );
    let check = || {
        let mut client = client.clone();
        async move { client.check(HealthCheckRequest::default()).await }
    };

    // One call takes the server's only permit...
    let first = tokio::spawn(check());
    while server_bulkhead.snapshot().active == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...so the next two are turned away by the server, and the client's
    // breaker opens; the fourth never leaves the client.
    for call in 2..=4 {
        match check().await {
            Ok(res) => println!("call {call}: {:?}", res.get_ref().status()),
            Err(status) => {
                let pushback = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // A local rejection is the status' source; a server's
                // answer has none.
                let origin = match kind_of(&status) {
                    Some(ErrorKind::CircuitOpen) => "local breaker",
                    _ => "server",
                };
                println!(
                    "call {call}: {:?} {:?} (pushback {pushback} ms, from the {origin})",
                    status.code(),
                    status.message(),
                );
            }
        }
    }
    let first = first.await??;
    println!("call 1: {:?}", first.get_ref().status());
    Ok(())
}
