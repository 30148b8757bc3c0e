//! The gateway: forwards `GET /` to the upstream, protected by buttress in
//! the server order of the design (section 4): errors to responses, then
//! the bulkhead, then the circuit breaker, then the timeout, then the
//! handler.

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
use buttress_circuit_breaker::{
    CircuitBreakerEvent, CircuitBreakerHandle, CircuitBreakerLayer, State,
};
use buttress_core::response::ErrorToResponseLayer;
use buttress_core::{BulkheadFullReason, HttpClassifier, Registry};
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
/// The breaker judges the outcomes of the last this many calls (and only
/// once that many are in). At the healthy ~17 % failures a window of 20
/// still reaches 50 % by chance about once per 5,000 calls (one false trip
/// per run); at 40 that is about once per 1,000,000 calls, and the degraded
/// phase (~65 %) still fills it in a tenth of a second.
pub(crate) const BREAKER_WINDOW: u32 = 40;
/// Failure rate, in percent, at which the breaker opens.
pub(crate) const BREAKER_THRESHOLD: f64 = 50.0;
/// How long the breaker stays open before it lets probes through.
pub(crate) const BREAKER_OPEN: Duration = Duration::from_secs(1);
/// Probe calls in the half-open state; it closes when fewer than
/// [`BREAKER_THRESHOLD`] percent of them fail.
pub(crate) const BREAKER_PROBES: u32 = 5;

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

/// What the circuit breaker did, counted from its events.
#[derive(Debug, Default)]
pub(crate) struct Breaks {
    not_permitted: AtomicU64,
    opened: AtomicU64,
    reopened: AtomicU64,
    closed: AtomicU64,
}

/// A reading of [`Breaks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BreakCounts {
    /// Calls rejected because the breaker was open (or half-open with every
    /// probe slot taken).
    pub(crate) not_permitted: u64,
    /// Transitions to open, from closed or from half-open.
    pub(crate) opened: u64,
    /// Among them, from half-open: the probes failed.
    pub(crate) reopened: u64,
    /// Transitions to closed: the probes passed.
    pub(crate) closed: u64,
}

impl BreakCounts {
    /// What happened since `before`.
    pub(crate) fn since(self, before: BreakCounts) -> BreakCounts {
        BreakCounts {
            not_permitted: self.not_permitted - before.not_permitted,
            opened: self.opened - before.opened,
            reopened: self.reopened - before.reopened,
            closed: self.closed - before.closed,
        }
    }

    /// Adds `other`.
    pub(crate) fn merge(&mut self, other: BreakCounts) {
        self.not_permitted += other.not_permitted;
        self.opened += other.opened;
        self.reopened += other.reopened;
        self.closed += other.closed;
    }
}

impl Breaks {
    fn on_event(&self, event: &CircuitBreakerEvent) {
        let counter = match event {
            CircuitBreakerEvent::NotPermitted { .. } => &self.not_permitted,
            CircuitBreakerEvent::StateTransition { from, to, .. } => match to {
                State::Open => {
                    if *from == State::HalfOpen {
                        self.reopened.fetch_add(1, Ordering::Relaxed);
                    }
                    &self.opened
                }
                State::Closed => &self.closed,
                _ => return,
            },
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn get(&self) -> BreakCounts {
        BreakCounts {
            not_permitted: self.not_permitted.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            reopened: self.reopened.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
        }
    }
}

/// What the report reads from the gateway's layers.
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    /// Occupancy and counters of the bulkhead.
    pub(crate) bulkhead: BulkheadHandle,
    /// State of the circuit breaker.
    pub(crate) breaker: CircuitBreakerHandle,
    /// Counters of the timeout.
    pub(crate) timeout: TimeoutHandle,
    /// Bulkhead rejections by reason.
    pub(crate) rejections: Arc<Rejections>,
    /// Circuit breaker rejections and transitions.
    pub(crate) breaks: Arc<Breaks>,
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

/// Starts the gateway on 127.0.0.1, forwarding to `upstream`; the
/// bulkhead, the breaker and the timeout are registered in `registry`.
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
    let breaks = Arc::new(Breaks::default());
    let counter = breaks.clone();
    // Inside the bulkhead, so that its rejections are never taken for
    // upstream failures; outside the timeout, so that a cut call is one.
    // 5xx answers and every error (timeouts included) are failures.
    let breaker = CircuitBreakerLayer::builder()
        .name("upstream")
        .window_size(BREAKER_WINDOW)
        .minimum_calls(BREAKER_WINDOW)
        .failure_rate_threshold(BREAKER_THRESHOLD)
        .wait_in_open(BREAKER_OPEN)
        .permitted_calls_in_half_open(BREAKER_PROBES)
        .classifier(HttpClassifier::new())
        .registry(registry)
        .on_event(move |e: &CircuitBreakerEvent| counter.on_event(e))
        .build()?;
    let timeout = TimeoutLayer::builder(UPSTREAM_TIMEOUT)
        .name("upstream-timeout")
        .registry(registry)
        .build()?
        .for_http();
    let observer = Observer {
        bulkhead: bulkhead.handle(),
        breaker: breaker.handle(),
        timeout: timeout.handle(),
        rejections,
        breaks,
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
        .layer(breaker)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(from: State, to: State) -> CircuitBreakerEvent {
        CircuitBreakerEvent::StateTransition {
            name: "upstream".into(),
            from,
            to,
        }
    }

    #[test]
    fn breaker_events_are_counted_by_kind() {
        let breaks = Breaks::default();
        for event in [
            transition(State::Closed, State::Open),
            CircuitBreakerEvent::NotPermitted {
                name: "upstream".into(),
            },
            transition(State::Open, State::HalfOpen),
            transition(State::HalfOpen, State::Open),
            transition(State::Open, State::HalfOpen),
            transition(State::HalfOpen, State::Closed),
            CircuitBreakerEvent::Failure {
                name: "upstream".into(),
            },
        ] {
            breaks.on_event(&event);
        }
        let counts = breaks.get();
        assert_eq!(
            counts,
            BreakCounts {
                not_permitted: 1,
                opened: 2,
                reopened: 1,
                closed: 1,
            }
        );
        assert_eq!(counts.since(counts), BreakCounts::default());
    }
}
