//! The gateway: forwards `GET /` to the upstream, protected by buttress in
//! the server order of the design (section 4): errors to responses, then
//! the bulkhead, then the timeout, then the handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Response, StatusCode, Uri};
use axum::routing::get;
use axum::Router;
use buttress_bulkhead::{BulkheadEvent, BulkheadHandle, BulkheadLayer};
use buttress_core::response::ErrorToResponseLayer;
use buttress_core::{BulkheadFullReason, Registry};
use buttress_timeout::{TimeoutHandle, TimeoutLayer};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;

use crate::server::Server;
use crate::DemoError;

/// Requests forwarded at the same time.
pub(crate) const MAX_CONCURRENT: usize = 16;
/// Requests allowed to wait for a slot, first in first out.
pub(crate) const MAX_QUEUE: usize = 16;
/// How long a request may wait for a slot before it is shed.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(50);
/// How long a forwarded call may take, body included.
pub(crate) const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(150);

/// The client the gateway forwards with.
type UpstreamClient = Client<HttpConnector, Empty<Bytes>>;

/// Bulkhead rejections by reason, counted from the bulkhead's events.
#[derive(Debug, Default)]
pub(crate) struct Rejections {
    queue_full: AtomicU64,
    wait_timed_out: AtomicU64,
}

impl Rejections {
    fn on_event(&self, event: &BulkheadEvent) {
        if let BulkheadEvent::Rejected { reason, .. } = event {
            self.count(*reason);
        }
    }

    fn count(&self, reason: BulkheadFullReason) {
        let counter = match reason {
            BulkheadFullReason::QueueFull => &self.queue_full,
            BulkheadFullReason::WaitTimedOut => &self.wait_timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Rejections so far: (queue full, wait timed out).
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.queue_full.load(Ordering::Relaxed),
            self.wait_timed_out.load(Ordering::Relaxed),
        )
    }
}

/// What the report reads from the gateway's layers.
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    /// Occupancy and counters of the bulkhead.
    pub(crate) bulkhead: BulkheadHandle,
    /// Counters of the timeout.
    pub(crate) timeout: TimeoutHandle,
    /// Rejections by reason.
    pub(crate) rejections: Arc<Rejections>,
}

/// The running gateway.
#[derive(Debug)]
pub(crate) struct Gateway {
    server: Server,
    observer: Observer,
}

impl Gateway {
    /// Where the gateway listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A view of its resilience layers.
    pub(crate) fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// Stops it gracefully.
    pub(crate) async fn shutdown(self) -> Result<(), DemoError> {
        self.server.shutdown().await
    }
}

/// Starts the gateway on 127.0.0.1, forwarding to `upstream`; both layers
/// are registered in `registry`.
pub(crate) async fn start(upstream: SocketAddr, registry: &Registry) -> Result<Gateway, DemoError> {
    let rejections = Arc::new(Rejections::default());
    let counter = rejections.clone();
    let bulkhead = BulkheadLayer::builder()
        .name("gateway")
        .max_concurrent(MAX_CONCURRENT)
        .max_queue(MAX_QUEUE)
        .max_wait(MAX_WAIT)
        .registry(registry)
        .on_event(move |e: &BulkheadEvent| counter.on_event(e))
        .build()?;
    let timeout = TimeoutLayer::builder(UPSTREAM_TIMEOUT)
        .name("upstream")
        .registry(registry)
        .build()?
        .for_http();
    let observer = Observer {
        bulkhead: bulkhead.handle(),
        timeout: timeout.handle(),
        rejections,
    };

    let client: UpstreamClient = Client::builder(TokioExecutor::new()).build_http();
    let work_uri = upstream_uri(upstream, "/");
    let health_uri = upstream_uri(upstream, "/healthz");

    let forward = {
        let client = client.clone();
        move |_req: axum::extract::Request| forward(client.clone(), work_uri.clone())
    };
    // Outermost first. Every request goes through the same layers: their
    // state lives in the layers' `Arc`s, so the per-request clones axum
    // makes share one bulkhead.
    let protected = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(bulkhead)
        .layer(timeout)
        .service_fn(forward);

    let app = Router::new().route_service("/", protected).route(
        "/healthz",
        get(move || health(client.clone(), health_uri.clone())),
    );
    let server = Server::start("gateway", app).await?;
    Ok(Gateway { server, observer })
}

fn upstream_uri(upstream: SocketAddr, path: &str) -> Uri {
    format!("http://{upstream}{path}")
        .parse()
        .expect("a socket address and a path form a valid URI")
}

/// Forwards one request and reads the whole answer, so that the timeout
/// covers the body too. The upstream's status passes through; an upstream
/// that cannot be reached is a 502.
async fn forward(client: UpstreamClient, uri: Uri) -> Result<Response<Body>, Infallible> {
    let Ok(res) = client.get(uri).await else {
        return Ok(bad_gateway());
    };
    let (parts, body) = res.into_parts();
    Ok(match body.collect().await {
        Ok(body) => Response::from_parts(parts, Body::from(body.to_bytes())),
        Err(_) => bad_gateway(),
    })
}

fn bad_gateway() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// `GET /healthz`: 200 when the upstream answers its own health check,
/// outside the protection of `GET /`.
async fn health(client: UpstreamClient, uri: Uri) -> StatusCode {
    match client.get(uri).await {
        Ok(res) if res.status().is_success() => StatusCode::OK,
        _ => StatusCode::BAD_GATEWAY,
    }
}
