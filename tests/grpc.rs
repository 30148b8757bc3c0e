//! buttress in a real tonic server and a real tonic client on 127.0.0.1
//! (gRPC's health service): the statuses a client sees for rejections on
//! either side.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buttress::bulkhead::{BulkheadHandle, BulkheadLayer};
use buttress::circuit_breaker::CircuitBreakerLayer;
use buttress::core::error::{find, kind_of, CircuitOpen, Elapsed, ErrorKind};
use buttress::core::grpc::ErrorToStatusLayer;
use buttress::core::GrpcClassifier;
use buttress::timeout::TimeoutLayer;
use buttress::{BoxError, ServiceBuilderExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::ServiceBuilder;

#[path = "../examples/tonic_server_client.rs"]
mod example;

/// A health server on 127.0.0.1 behind `error_to_status` (when given), a
/// bulkhead of one and a gate that holds every call it lets through until
/// the test adds permits.
struct GrpcServer {
    addr: SocketAddr,
    bulkhead: BulkheadHandle,
    gate: Arc<Semaphore>,
    task: JoinHandle<()>,
}

impl GrpcServer {
    async fn start(error_to_status: Option<ErrorToStatusLayer>) -> GrpcServer {
        let bulkhead = BulkheadLayer::builder()
            .name("health")
            .max_concurrent(1)
            .build()
            .expect("bulkhead config");
        let handle = bulkhead.handle();
        let gate = Arc::new(Semaphore::new(0));
        let held = gate.clone();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        // Both branches of `option_layer` need one error type.
        let error_to_status = error_to_status.map(|layer| {
            ServiceBuilder::new()
                .map_err(|never: Infallible| -> BoxError { match never {} })
                .layer(layer)
                .into_inner()
        });
        let stack = ServiceBuilder::new()
            .option_layer(error_to_status)
            .bulkhead_with(bulkhead)
            .then(move |res| {
                let gate = held.clone();
                async move {
                    let _permit = gate.acquire().await;
                    res
                }
            })
            .into_inner();
        let server = Server::builder()
            .layer(stack)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener));
        let task = tokio::spawn(async move {
            server.await.expect("server error");
        });
        GrpcServer {
            addr,
            bulkhead: handle,
            gate,
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// Starts a call that takes the bulkhead's only permit and is held by
    /// the gate; returns once the server runs it.
    async fn occupy(&self) -> JoinHandle<Result<tonic::Response<HealthCheckResponse>, Status>> {
        let mut client = HealthClient::new(self.channel().await);
        let call = tokio::spawn(async move { client.check(HealthCheckRequest::default()).await });
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.bulkhead.snapshot().active == 0 {
            assert!(
                Instant::now() < deadline,
                "the first call never reached the server"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        call
    }

    /// Lets the held call finish and checks that it was served.
    async fn release(self, held: JoinHandle<Result<tonic::Response<HealthCheckResponse>, Status>>) {
        self.gate.add_permits(1000);
        let res = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("the held call ends")
            .expect("task")
            .expect("the held call is served");
        assert_eq!(res.get_ref().status(), ServingStatus::Serving);
        self.task.abort();
    }
}

async fn check<T>(client: &mut HealthClient<T>) -> Result<ServingStatus, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        client.check(HealthCheckRequest::default()),
    )
    .await
    .expect("an answer within 10 s")?;
    Ok(res.get_ref().status())
}

fn pushback_ms(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .map(|v| v.to_str().expect("ascii").parse().expect("a number"))
}

#[tokio::test]
async fn server_bulkhead_rejection_reaches_the_client_as_unavailable_with_a_generic_message() {
    let server = GrpcServer::start(Some(ErrorToStatusLayer::new())).await;
    let held = server.occupy().await;

    let mut client = HealthClient::new(server.channel().await);
    let status = check(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "service unavailable");
    assert_eq!(server.bulkhead.snapshot().rejected, 1);

    server.release(held).await;
}

#[tokio::test]
async fn detailed_server_sends_the_rejection_text() {
    let server = GrpcServer::start(Some(ErrorToStatusLayer::new().detailed(true))).await;
    let held = server.occupy().await;

    let mut client = HealthClient::new(server.channel().await);
    let status = check(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "bulkhead `health` is full: no free permit and no room to wait"
    );

    server.release(held).await;
}

#[tokio::test]
async fn without_error_to_status_the_client_gets_no_unavailable() {
    // What `error_to_status` is for: tonic cannot map a buttress rejection
    // and resets the stream.
    let server = GrpcServer::start(None).await;
    let held = server.occupy().await;

    let mut client = HealthClient::new(server.channel().await);
    let status = check(&mut client).await.unwrap_err();
    // The stream is reset with INTERNAL_ERROR, which tonic reports as
    // `Internal` "h2 protocol error": nothing a client would retry on.
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("h2 protocol error"), "{status:?}");

    server.release(held).await;
}

#[tokio::test]
async fn client_breaker_opened_by_server_rejections_answers_unavailable_with_pushback() {
    let server = GrpcServer::start(Some(ErrorToStatusLayer::new())).await;
    let held = server.occupy().await;

    let breaker = CircuitBreakerLayer::builder()
        .name("health-client")
        .consecutive_failures(2)
        .wait_in_open(Duration::from_secs(5))
        .classifier(GrpcClassifier::new())
        .build()
        .expect("breaker config");
    let breaker_handle = breaker.handle();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .rejection_to_status()
            .layer(breaker)
            .service(server.channel().await),
    );

    // Two answers from the server...
    for _ in 0..2 {
        let status = check(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            find::<CircuitOpen>(&status).is_none(),
            "the server's answer"
        );
    }
    assert_eq!(server.bulkhead.snapshot().rejected, 2);
    // ...open the client's breaker, which rejects the third locally.
    let status = check(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "service unavailable");
    let pushback = pushback_ms(&status).expect("pushback from the open breaker");
    assert!(
        (4_000..=5_000).contains(&pushback),
        "pushback {pushback} ms"
    );
    assert_eq!(kind_of(&status), Some(ErrorKind::CircuitOpen));
    assert_eq!(
        find::<CircuitOpen>(&status).unwrap().name(),
        "health-client"
    );
    assert_eq!(server.bulkhead.snapshot().rejected, 2, "never sent");
    assert_eq!(breaker_handle.name(), "health-client");

    server.release(held).await;
}

#[tokio::test]
async fn client_timeout_is_deadline_exceeded() {
    let server = GrpcServer::start(Some(ErrorToStatusLayer::new())).await;
    let timeout = TimeoutLayer::builder(Duration::from_millis(100))
        .name("health-call")
        .build()
        .expect("timeout config");
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .rejection_to_status()
            .timeout_with(timeout)
            .service(server.channel().await),
    );

    // The gate holds the call on the server until the timeout fires.
    let status = check(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(status.message(), "deadline exceeded");
    assert_eq!(find::<Elapsed>(&status).unwrap().name(), "health-call");

    server.gate.add_permits(1000);
    server.task.abort();
}

#[tokio::test]
async fn client_without_rejection_to_status_gets_unknown() {
    // What `rejection_to_status` is for: tonic maps an error it does not
    // know to `Unknown`, with the rejection's text as the message.
    let server = GrpcServer::start(Some(ErrorToStatusLayer::new())).await;
    let breaker = CircuitBreakerLayer::builder()
        .build()
        .expect("breaker config");
    breaker.handle().force_open();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(breaker)
            .service(server.channel().await),
    );
    let status = check(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(status.message(), "circuit breaker is open");
    server.task.abort();
}

#[test]
fn the_tonic_example_runs() {
    example::main().expect("the example runs to the end");
}
