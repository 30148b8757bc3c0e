//! The gateway: forwards `GET /` to the upstream, protected by buttress in
//! the server order of the design (section 4): errors to responses, then a
//! rate limit per client, then the bulkhead, then a fallback (a canned
//! answer while the breaker is open), then the circuit breaker, then the
//! timeout, then the handler. The handler calls the upstream through a
//! hyper-util client wrapped in a retry layer (the client side of the
//! design: retry with a budget around the client, inside a total timeout).
//!
//! `GET /hot` is the same call behind a cache (above the bulkhead, below
//! the rate limit): fresh for [`HOT_TTL`], then served stale for up to
//! [`HOT_MAX_STALE`] whenever the call below fails or is rejected.
//! `/health/live` and `/health/ready` are served from a health registry
//! that reads the layers' registry: readiness is 503 while the breaker is
//! open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use axum::routing::get;
use axum::Router;
use buttress_bulkhead::{BulkheadEvent, BulkheadHandle, BulkheadLayer};
use buttress_cache::{CacheBody, CacheLayer, CacheStatus, HttpPolicy};
use buttress_circuit_breaker::CircuitBreakerLayer;
use buttress_core::deadline::Deadline;
use buttress_core::error::chain;
use buttress_core::key::Header;
use buttress_core::response::{error_response, ErrorToResponseLayer};
use buttress_core::{
    BoxError, BulkheadFull, BulkheadFullReason, CircuitOpen, ConfigError, ErrorKind,
    HttpClassifier, Registry,
};
use buttress_fallback::{Failure, FallbackLayer, FromError, HttpMarker, Kinds, FALLBACK_HEADER};
use buttress_health::{BreakersCheck, BulkheadsCheck, Check, HealthRegistry, Status};
use buttress_metrics::{HttpServer, MetricsLayer};
use buttress_rate_limit::{KeyedRateLimitLayer, Rate, Unit, WithHeaders};
use buttress_retry::{
    Backoff, HttpReplay, HttpRetry, NotRetried, ReplayBody, Retry, RetryBudget, RetryEvent,
    RetryHandle, RetryLayer,
};
use buttress_timeout::TimeoutLayer;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::prometheus;
use crate::server::Server;
use crate::DemoError;

/// The header that names the client, by which the rate limit is kept.
pub(crate) const CLIENT: HeaderName = HeaderName::from_static("x-client");
/// Requests per second each client may send on average...
pub(crate) const RATE_PER_CLIENT: u64 = 40;
/// ...and at once, after a pause (GCRA's burst). A steady client sends
/// about 20 a second at most (one every 20-80 ms after a 503, more slowly
/// otherwise): to go over, it would need 5 more than the 40 a second
/// allow, which its pauses make vanishingly unlikely. The bursting client
/// gets 5 of each burst through, few enough not to crowd the bulkhead.
pub(crate) const RATE_BURST: u64 = 5;

/// Requests forwarded at the same time.
pub(crate) const MAX_CONCURRENT: usize = 16;
/// Requests allowed to wait for a slot, first in first out.
pub(crate) const MAX_QUEUE: usize = 16;
/// How long a request may wait for a slot before it is shed.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(50);
/// How long a forwarded call may take, body included.
pub(crate) const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(150);
/// The breaker judges the outcomes of the last this many calls (and only
/// once that many are in). At the healthy ~13 % failures (slow calls and
/// 500s; the retries turn nearly every 503 around) a window of 20 would
/// still reach 50 % by chance now and then; at 40 that is far rarer, and
/// the degraded phase (~60 %) still fills it in a tenth of a second.
pub(crate) const BREAKER_WINDOW: u32 = 40;
/// Failure rate, in percent, at which the breaker opens.
pub(crate) const BREAKER_THRESHOLD: f64 = 50.0;
/// How long the breaker stays open before it lets probes through.
pub(crate) const BREAKER_OPEN: Duration = Duration::from_secs(1);
/// Probe calls in the half-open state; it closes when fewer than
/// [`BREAKER_THRESHOLD`] percent of them fail.
pub(crate) const BREAKER_PROBES: u32 = 5;

/// What the fallback answers (200, `text/plain`) while the breaker is open,
/// instead of a 503: a degraded but useful page.
pub(crate) const FALLBACK_BODY: &str = "the catalogue is busy: here is yesterday's selection\n";
/// How long an answer of `/hot` is served from the cache without asking
/// the upstream.
pub(crate) const HOT_TTL: Duration = Duration::from_secs(1);
/// How long past [`HOT_TTL`] an answer of `/hot` is still served when the
/// call to refresh it fails or is rejected (stale-if-error).
pub(crate) const HOT_MAX_STALE: Duration = Duration::from_secs(30);
/// The header with which the gateway says how the cache answered a `/hot`
/// request (`hit`, `miss`, `coalesced` or `stale`), from the response's
/// [`CacheStatus`] extension, so that the clients can count them.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache");
/// How long a health check's result is served before it runs again.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// Bulkhead utilisation from which readiness says `degraded` (still 200).
pub(crate) const HEALTH_BULKHEAD_THRESHOLD: f64 = 0.9;

/// Attempts per forwarded call, the first one included.
pub(crate) const RETRY_ATTEMPTS: u32 = 3;
/// Base delay before the first retry, doubling for each further one; full
/// jitter draws the actual wait between zero and it.
pub(crate) const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two attempts. A `Retry-After` beyond it would
/// end the retries (the upstream says `0`).
pub(crate) const RETRY_MAX_DELAY: Duration = Duration::from_millis(50);
/// Retries allowed, as a share of the calls made in the last
/// [`RETRY_BUDGET_TTL`]...
pub(crate) const RETRY_BUDGET_PERCENT: f64 = 20.0;
/// ...plus this many per second, so that a quiet gateway can still retry.
pub(crate) const RETRY_BUDGET_FLOOR: u32 = 5;
/// How long a call counts towards the budget (Finagle's default).
pub(crate) const RETRY_BUDGET_TTL: Duration = Duration::from_secs(10);

/// The client the gateway forwards with: a hyper-util client, whose
/// request bodies the retry layer keeps for replay.
type UpstreamClient = Client<HttpConnector, ReplayBody<Empty<Bytes>>>;
/// The upstream client with its retry layer.
type Upstream = Retry<UpstreamClient, HttpRetry, HttpReplay>;
/// The client of the health check, which is not retried.
type HealthClient = Client<HttpConnector, Empty<Bytes>>;

/// The header with which the gateway says which layer answered a request
/// with 503, so that the load generator counts each 503 by its cause in
/// the same place, and at the same moment, as every other answer.
pub(crate) const REJECTED_BY: HeaderName = HeaderName::from_static("x-rejected-by");

/// Which layer rejected a request with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The bulkhead: every slot and the queue were taken.
    QueueFull,
    /// The bulkhead: waited `MAX_WAIT` in the queue in vain.
    WaitTimedOut,
    /// The circuit breaker: open, or half-open with every probe slot taken.
    CircuitOpen,
}

impl Rejection {
    /// The rejection in `err`'s `source()` chain, if any.
    fn of(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        chain(err).find_map(|e| {
            if let Some(full) = e.downcast_ref::<BulkheadFull>() {
                Some(match full.reason() {
                    BulkheadFullReason::QueueFull => Rejection::QueueFull,
                    BulkheadFullReason::WaitTimedOut => Rejection::WaitTimedOut,
                })
            } else if e.is::<CircuitOpen>() {
                Some(Rejection::CircuitOpen)
            } else {
                None
            }
        })
    }

    /// The value of the [`REJECTED_BY`] header.
    pub(crate) fn as_header(self) -> &'static str {
        match self {
            Rejection::QueueFull => "bulkhead-queue-full",
            Rejection::WaitTimedOut => "bulkhead-wait-timed-out",
            Rejection::CircuitOpen => "circuit-open",
        }
    }

    /// The rejection a [`REJECTED_BY`] header names.
    pub(crate) fn from_header(value: &[u8]) -> Option<Self> {
        [
            Rejection::QueueFull,
            Rejection::WaitTimedOut,
            Rejection::CircuitOpen,
        ]
        .into_iter()
        .find(|r| r.as_header().as_bytes() == value)
    }
}

/// Answers the gateway's own rejections (bulkhead, open circuit) as
/// [`ErrorToResponseLayer`] does, with the same `error_response`, plus the
/// [`REJECTED_BY`] header; other errors (timeouts) go on to it.
fn tag_rejection<B: Default>(
    result: Result<Response<B>, BoxError>,
) -> Result<Response<B>, BoxError> {
    let err = match result {
        Ok(res) => return Ok(res),
        Err(err) => err,
    };
    let Some(rejection) = Rejection::of(&*err) else {
        return Err(err);
    };
    let mut res: Response<B> = error_response(&*err, StatusCode::GATEWAY_TIMEOUT);
    res.headers_mut()
        .insert(REJECTED_BY, HeaderValue::from_static(rejection.as_header()));
    Ok(res)
}

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

/// What the retry layer did, counted from its events.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    scheduled: AtomicU64,
    retried_calls: AtomicU64,
    succeeded: AtomicU64,
    exhausted: AtomicU64,
    budget_spent: AtomicU64,
    deadline: AtomicU64,
    gave_up_after_retry: AtomicU64,
}

/// A reading of [`Retries`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RetryCounts {
    /// Retries made (each one more call to the upstream).
    pub(crate) retries: u64,
    /// Calls retried at least once.
    pub(crate) retried_calls: u64,
    /// Calls whose answer after one retry or more was no longer retryable:
    /// a 200, or now and then a 500.
    pub(crate) succeeded: u64,
    /// Calls that got a 503 at every one of their attempts.
    pub(crate) exhausted: u64,
    /// Retries refused because the budget was spent: the 503 went back.
    pub(crate) budget_spent: u64,
    /// Retries not made because they could not start before the gateway's
    /// deadline: the 503 went back.
    pub(crate) deadline: u64,
    /// Among `budget_spent` and `deadline`, those of calls already retried.
    pub(crate) gave_up_after_retry: u64,
}

impl RetryCounts {
    /// What happened since `before`.
    pub(crate) fn since(self, before: RetryCounts) -> RetryCounts {
        RetryCounts {
            retries: self.retries - before.retries,
            retried_calls: self.retried_calls - before.retried_calls,
            succeeded: self.succeeded - before.succeeded,
            exhausted: self.exhausted - before.exhausted,
            budget_spent: self.budget_spent - before.budget_spent,
            deadline: self.deadline - before.deadline,
            gave_up_after_retry: self.gave_up_after_retry - before.gave_up_after_retry,
        }
    }

    /// Adds `other`.
    pub(crate) fn merge(&mut self, other: RetryCounts) {
        self.retries += other.retries;
        self.retried_calls += other.retried_calls;
        self.succeeded += other.succeeded;
        self.exhausted += other.exhausted;
        self.budget_spent += other.budget_spent;
        self.deadline += other.deadline;
        self.gave_up_after_retry += other.gave_up_after_retry;
    }

    /// Calls retried at least once whose last attempt the gateway's timeout
    /// cut (a 504): every other retried call ends with an event. Exact once
    /// no call is in flight.
    pub(crate) fn timed_out_after_retry(&self) -> u64 {
        self.retried_calls
            .saturating_sub(self.succeeded + self.exhausted + self.gave_up_after_retry)
    }
}

impl Retries {
    fn on_event(&self, event: &RetryEvent) {
        let add = |counter: &AtomicU64| {
            counter.fetch_add(1, Ordering::Relaxed);
        };
        match event {
            RetryEvent::Scheduled { attempt, .. } => {
                add(&self.scheduled);
                if *attempt == 2 {
                    add(&self.retried_calls);
                }
            }
            RetryEvent::Succeeded { .. } => add(&self.succeeded),
            RetryEvent::Exhausted { .. } => add(&self.exhausted),
            RetryEvent::BudgetExhausted { attempts, .. } => {
                add(&self.budget_spent);
                if *attempts > 1 {
                    add(&self.gave_up_after_retry);
                }
            }
            RetryEvent::NotRetried {
                reason: NotRetried::Deadline,
                attempts,
                ..
            } => {
                add(&self.deadline);
                if *attempts > 1 {
                    add(&self.gave_up_after_retry);
                }
            }
            _ => {}
        }
    }

    /// The counts so far.
    pub(crate) fn get(&self) -> RetryCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RetryCounts {
            retries: load(&self.scheduled),
            retried_calls: load(&self.retried_calls),
            succeeded: load(&self.succeeded),
            exhausted: load(&self.exhausted),
            budget_spent: load(&self.budget_spent),
            deadline: load(&self.deadline),
            gave_up_after_retry: load(&self.gave_up_after_retry),
        }
    }
}

/// What the report reads from the gateway's layers besides `/metrics`
/// (which has the rate limit's decisions, the bulkhead's rejections, the
/// breaker's state, transitions and rejections, the timeouts and the
/// retries by outcome): what no metric has.
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    /// Occupancy of the bulkhead (its gauges change on events only).
    pub(crate) bulkhead: BulkheadHandle,
    /// Bulkhead rejections by reason (the metric has no reason).
    pub(crate) rejections: Arc<Rejections>,
    /// Counters and budget of the retry layer.
    pub(crate) retry: RetryHandle,
    /// Retries by outcome: budget spent, deadline, calls retried.
    pub(crate) retries: Arc<Retries>,
    /// Liveness and readiness, served at `/health/live` and `/health/ready`.
    pub(crate) health: HealthRegistry,
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

    /// Stops it gracefully: readiness says not-serving first, so that a
    /// load balancer would stop sending before the server drains.
    pub(crate) async fn shutdown(self) -> Result<(), DemoError> {
        self.observer.health.shutdown_handle().shut_down();
        self.server.shutdown().await
    }
}

/// The retry layer around the upstream client, registered in `registry`
/// as `upstream-retry`; its events go to `retries`.
///
/// HTTP-aware: it retries 502, 503, 504, 429 and transport errors, GETs
/// only (they are idempotent), honours `Retry-After`, and starts no attempt
/// after the [`Deadline`] that the gateway's timeout puts on the request.
/// A budget of [`RETRY_BUDGET_PERCENT`] % of the calls plus
/// [`RETRY_BUDGET_FLOOR`] per second caps the retries, so that an upstream
/// that sheds everything sees at most that much more load.
pub(crate) fn retry_layer(
    registry: &Registry,
    retries: Arc<Retries>,
) -> Result<RetryLayer<HttpRetry, HttpReplay>, ConfigError> {
    let budget = RetryBudget::builder()
        .percent(RETRY_BUDGET_PERCENT)
        .min_per_sec(RETRY_BUDGET_FLOOR)
        .ttl(RETRY_BUDGET_TTL)
        .build()?;
    RetryLayer::for_http()
        .name(prometheus::RETRY)
        .max_attempts(RETRY_ATTEMPTS)
        .backoff(Backoff::exponential(RETRY_BACKOFF))
        .max_delay(RETRY_MAX_DELAY)
        .budget(budget)
        .registry(registry)
        .on_event(move |e: &RetryEvent| retries.on_event(e))
        .build()
}

/// The gateway's rate limit: keyed by a header, one unit per request,
/// headers on every response.
type PerClientLimit = KeyedRateLimitLayer<Header, Vec<u8>, Unit, Unit, WithHeaders>;

/// The rate limit per client, keyed by the [`CLIENT`] header and
/// registered in `registry` as `per-client`: [`RATE_PER_CLIENT`] a second
/// with a burst of [`RATE_BURST`] (GCRA). Every response carries the
/// client's `RateLimit-Policy` and `RateLimit` headers; a request over the
/// limit fails with `RateLimited`, which the error-to-response layer
/// answers 429 with `Retry-After`. A request without the header is
/// rejected (500): every client of the demo sends it. Its decisions are
/// counted in `/metrics` (`buttress_rate_limit_decisions_total`).
pub(crate) fn rate_limit_layer(registry: &Registry) -> Result<PerClientLimit, ConfigError> {
    KeyedRateLimitLayer::builder(Header::new(CLIENT), Rate::per_second(RATE_PER_CLIENT))
        .name(prometheus::RATE_LIMIT)
        .burst(RATE_BURST)
        .max_keys(10_000)
        .registry(registry)
        .response_headers()
        .build()
}

/// The fallback's source: a function of the failure (a fn pointer, so that
/// the layer has a type to name).
type FallbackAnswer = fn(&Failure<Response<Body>>) -> Result<Response<Body>, BoxError>;
/// The fallback of `GET /`.
type UpstreamFallback = FallbackLayer<FromError<FallbackAnswer, Response<Body>>, Kinds, HttpMarker>;

/// What the fallback answers: 200 with [`FALLBACK_BODY`]; the layer adds
/// the [`FALLBACK_HEADER`] (`x-fallback: upstream-fallback;
/// reason=circuit_open`).
fn fallback_answer(_: &Failure<Response<Body>>) -> Result<Response<Body>, BoxError> {
    let mut res = Response::new(Body::from(FALLBACK_BODY));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(res)
}

/// The fallback of `GET /`, registered in `registry` as
/// `upstream-fallback`: a call the breaker refuses (open, or half-open
/// with every probe slot taken) is answered 200 with [`FALLBACK_BODY`],
/// marked with the [`FALLBACK_HEADER`]. Nothing else triggers it: a
/// bulkhead rejection is still a 503 (it sits outside the fallback), and a
/// timeout or an upstream error still reaches the client as such.
pub(crate) fn fallback_layer(registry: &Registry) -> Result<UpstreamFallback, ConfigError> {
    FallbackLayer::from_error(fallback_answer as FallbackAnswer)
        .name(prometheus::FALLBACK)
        .on_kinds([ErrorKind::CircuitOpen])
        .marker_header(FALLBACK_HEADER)
        .registry(registry)
        .build()
}

/// The cache of `GET /hot`, registered in `registry` as `hot`: keyed by
/// method and URI (the `x-client` header is not part of the key, so every
/// client shares the entry), fresh for [`HOT_TTL`], then served stale for
/// up to [`HOT_MAX_STALE`] when the call that would refresh it fails, is
/// rejected (an open breaker, a full bulkhead) or answers 5xx.
/// Concurrent misses make one call.
pub(crate) fn cache_layer(registry: &Registry) -> Result<CacheLayer<HttpPolicy>, ConfigError> {
    CacheLayer::http()
        .name(prometheus::CACHE)
        .ttl(HOT_TTL)
        .max_stale(HOT_MAX_STALE)
        .max_entries(1_000)
        .max_weight(8 << 20)
        .registry(registry)
        .build()
}

/// Puts the cache's answer ([`CacheStatus`]) in the [`CACHE_STATUS`]
/// header.
fn mark_cache_status<B>(mut res: Response<B>) -> Response<B> {
    if let Some(status) = res.extensions().get::<CacheStatus>().copied() {
        res.headers_mut()
            .insert(CACHE_STATUS, HeaderValue::from_static(status.as_str()));
    }
    res
}

/// The gateway's health, read from the registry its layers are in:
/// readiness is unhealthy (503) while the breaker to the upstream is open,
/// since the gateway then answers `/` from its fallback only, and degraded
/// (still 200) while the bulkhead is at least
/// [`HEALTH_BULKHEAD_THRESHOLD`] full; liveness only asks whether the
/// process answers. Every check has run once when this returns, and runs
/// again every [`HEALTH_INTERVAL`] in the background (the task ends with
/// the registry).
pub(crate) async fn health_registry(registry: &Registry) -> Result<HealthRegistry, ConfigError> {
    let health = HealthRegistry::builder()
        .components(registry)
        .check(
            Check::new(
                "upstream",
                BreakersCheck::new(registry).critical([prometheus::BREAKER]),
            )
            .interval(HEALTH_INTERVAL),
        )
        .check(
            Check::new(
                "capacity",
                BulkheadsCheck::new(registry, HEALTH_BULKHEAD_THRESHOLD)?,
            )
            .interval(HEALTH_INTERVAL)
            .critical(false),
        )
        .check(Check::new("process", || async { Status::Healthy }).liveness())
        .build()?;
    health.readiness().await;
    health.spawn_refresher();
    Ok(health)
}

/// Starts the gateway on 127.0.0.1, forwarding to `upstream`; the rate
/// limit, the bulkhead, the breaker, the timeout and the retry layer are
/// registered in `registry`, and publish their metrics if it was made
/// `with_metrics()` (and a recorder is installed: they resolve their
/// handles now). A [`MetricsLayer`] named `gateway` records every request
/// (`http_server_*`, by route).
pub(crate) async fn start(upstream: SocketAddr, registry: &Registry) -> Result<Gateway, DemoError> {
    // Right below error-to-response, above the bulkhead: a client over its
    // limit is answered 429 before it takes a bulkhead slot.
    let rate_limit = rate_limit_layer(registry)?;
    let rejections = Arc::new(Rejections::default());
    let counter = rejections.clone();
    let bulkhead = BulkheadLayer::builder()
        .name(prometheus::BULKHEAD)
        .max_concurrent(MAX_CONCURRENT)
        .max_queue(MAX_QUEUE)
        .max_wait(MAX_WAIT)
        .registry(registry)
        .on_event(move |e: &BulkheadEvent| counter.on_event(e))
        .build()?;
    // Inside the bulkhead, so that its rejections are never taken for
    // upstream failures; outside the timeout, so that a cut call is one.
    // 5xx answers and every error (timeouts included) are failures. The
    // retries happen inside the handler: the breaker judges each call's
    // final answer, so a 503 that a retry turned into a 200 is a success.
    let breaker = CircuitBreakerLayer::builder()
        .name(prometheus::BREAKER)
        .window_size(BREAKER_WINDOW)
        .minimum_calls(BREAKER_WINDOW)
        .failure_rate_threshold(BREAKER_THRESHOLD)
        .wait_in_open(BREAKER_OPEN)
        .permitted_calls_in_half_open(BREAKER_PROBES)
        .classifier(HttpClassifier::new())
        .registry(registry)
        .build()?;
    let timeout = TimeoutLayer::builder(UPSTREAM_TIMEOUT)
        .name(prometheus::TIMEOUT)
        .registry(registry)
        .build()?
        .for_http();
    let retries = Arc::new(Retries::default());
    let retry = retry_layer(registry, retries.clone())?;
    // Outside the breaker (and the retries inside it): it answers what the
    // breaker refuses. Inside the bulkhead: a shed request stays a 503.
    let fallback = fallback_layer(registry)?;
    let cache = cache_layer(registry)?;
    let probes = health_registry(registry).await?;
    let observer = Observer {
        bulkhead: bulkhead.handle(),
        rejections,
        retry: retry.handle(),
        retries,
        health: probes.clone(),
    };

    // The client side: the retry layer wraps the hyper-util client (which
    // it clones to make each retry), inside the server stack's timeout,
    // which is thus the total time for every attempt and wait.
    let client: UpstreamClient = Client::builder(TokioExecutor::new()).build_http();
    let upstream_svc = retry.layer(client);
    let work_uri = upstream_uri(upstream, "/");
    let health_uri = upstream_uri(upstream, "/healthz");
    let health_client: HealthClient = Client::builder(TokioExecutor::new()).build_http();

    let forward =
        move |req: axum::extract::Request| forward(upstream_svc.clone(), work_uri.clone(), req);
    // Outermost first. Every request goes through the same layers: their
    // state lives in the layers' `Arc`s, so the per-request clones axum
    // makes, and the clones `/hot` uses, share one rate limit, one
    // bulkhead and one breaker.
    let protected = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(rate_limit.clone())
        .map_result(tag_rejection::<Body>)
        .layer(bulkhead.clone())
        .layer(fallback)
        .layer(breaker.clone())
        .layer(timeout.clone())
        .service_fn(forward.clone());
    // `/hot`: the same call below a cache, which sits below the rate limit
    // (a client over its limit gets its 429 for cached content too) and
    // above the bulkhead, so that a hit takes no slot. The layers under it
    // are reached through `oneshot`: the bulkhead takes its slot in
    // `poll_ready`, and the cache's readiness is its inner service's, so
    // without it every hit would take a slot (or queue for one). A miss
    // the bulkhead or the breaker rejects, or that fails, is answered
    // from the stale entry: the tag below the cache only sees what the
    // cache could not answer.
    let refresh = ServiceBuilder::new()
        .layer(bulkhead)
        .layer(breaker)
        .layer(timeout)
        .service_fn(forward);
    let hot = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(rate_limit)
        .map_result(tag_rejection::<CacheBody<Body>>)
        .map_response(mark_cache_status)
        .layer(cache)
        .service_fn(move |req: axum::extract::Request| refresh.clone().oneshot(req));

    // `Router::layer` wraps each route after routing, so the layer sees
    // the matched route (`http.route`). Outermost: it counts every answer,
    // the 429s and 503s of the layers inside included.
    let metrics = MetricsLayer::builder_for(HttpServer)
        .name(prometheus::HTTP)
        .build()?;
    let app = Router::new()
        .route_service("/", protected)
        .route_service("/hot", hot)
        .route(
            "/healthz",
            get(move || health(health_client.clone(), health_uri.clone())),
        )
        .nest_service("/health", probes.service())
        .layer(metrics);
    let server = Server::start("gateway", app).await?;
    Ok(Gateway { server, observer })
}

/// Starts, on 127.0.0.1, the gateway without buttress: the same forwarding
/// to `upstream` with no bulkhead, no breaker, no timeout and no retry, for
/// the comparison run.
pub(crate) async fn start_unprotected(upstream: SocketAddr) -> Result<Server, DemoError> {
    let client: HealthClient = Client::builder(TokioExecutor::new()).build_http();
    let uri = upstream_uri(upstream, "/");
    let handler = get(move || forward_unprotected(client.clone(), uri.clone()));
    // `/hot` too, uncached: the load sends part of its requests there.
    let app = Router::new()
        .route("/", handler.clone())
        .route("/hot", handler);
    Server::start("unprotected gateway", app).await
}

/// Forwards one request as [`forward`] does, with nothing around it: the
/// upstream's status passes through, its 503s included.
async fn forward_unprotected(client: HealthClient, uri: Uri) -> Response<Body> {
    let res = match client.get(uri).await {
        Ok(res) => res,
        Err(_) => return bad_gateway(),
    };
    let (parts, body) = res.into_parts();
    match body.collect().await {
        Ok(body) => Response::from_parts(parts, Body::from(body.to_bytes())),
        Err(_) => bad_gateway(),
    }
}

fn upstream_uri(upstream: SocketAddr, path: &str) -> Uri {
    format!("http://{upstream}{path}")
        .parse()
        .expect("a socket address and a path form a valid URI")
}

/// Forwards one request through the retry layer and reads the whole
/// answer, so that the timeout covers the body too.
///
/// The upstream's status passes through, except a 503 that outlived the
/// retries: that one becomes a 502, like an upstream that cannot be
/// reached, because the gateway's own 503 means "shed here, come back after
/// Retry-After" (and the report counts every 503 as a bulkhead or circuit
/// rejection).
async fn forward(
    upstream: Upstream,
    uri: Uri,
    req: axum::extract::Request,
) -> Result<Response<Body>, Infallible> {
    let mut call = Request::get(uri)
        .body(Empty::new())
        .expect("a GET of a valid URI is a valid request");
    // The gateway's timeout put its deadline on the request: no retry
    // starts after it.
    if let Some(deadline) = req.extensions().get::<Deadline>() {
        call.extensions_mut().insert(*deadline);
    }
    let res = match upstream.oneshot(call).await {
        Ok(res) if res.status() != StatusCode::SERVICE_UNAVAILABLE => res,
        _ => return Ok(bad_gateway()),
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
async fn health(client: HealthClient, uri: Uri) -> StatusCode {
    match client.get(uri).await {
        Ok(res) if res.status().is_success() => StatusCode::OK,
        _ => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_tagged_with_the_layer_that_made_them() {
        let full: BoxError =
            BulkheadFull::new("gateway".into(), BulkheadFullReason::WaitTimedOut).into();
        let res = tag_rejection::<Body>(Err(full)).unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[REJECTED_BY], "bulkhead-wait-timed-out");
        let timeout: BoxError =
            buttress_core::Elapsed::new("upstream-timeout".into(), UPSTREAM_TIMEOUT).into();
        assert!(tag_rejection::<Body>(Err(timeout)).is_err());
        for r in [
            Rejection::QueueFull,
            Rejection::WaitTimedOut,
            Rejection::CircuitOpen,
        ] {
            assert_eq!(Rejection::from_header(r.as_header().as_bytes()), Some(r));
        }
    }

    #[test]
    fn retry_events_are_counted_by_kind() {
        let retries = Retries::default();
        let name: Arc<str> = "upstream-retry".into();
        for event in [
            RetryEvent::Scheduled {
                name: name.clone(),
                attempt: 2,
                delay: Duration::from_millis(3),
                cause: buttress_retry::Cause::Response,
                hint: Some(Duration::ZERO),
            },
            RetryEvent::Succeeded {
                name: name.clone(),
                retries: 1,
            },
            RetryEvent::Exhausted {
                name: name.clone(),
                attempts: 3,
            },
            RetryEvent::BudgetExhausted {
                name: name.clone(),
                attempts: 1,
            },
            RetryEvent::NotRetried {
                name: name.clone(),
                attempts: 2,
                reason: NotRetried::Deadline,
            },
            RetryEvent::NotRetried {
                name,
                attempts: 1,
                reason: NotRetried::NonIdempotent,
            },
        ] {
            retries.on_event(&event);
        }
        let counts = retries.get();
        assert_eq!(
            counts,
            RetryCounts {
                retries: 1,
                retried_calls: 1,
                succeeded: 1,
                exhausted: 1,
                budget_spent: 1,
                deadline: 1,
                gave_up_after_retry: 1,
            }
        );
        // These events are no single run's: more endings than retried
        // calls, and the difference stays at zero.
        assert_eq!(counts.timed_out_after_retry(), 0);
        assert_eq!(counts.since(counts), RetryCounts::default());
    }

    /// An upstream that answers the `n`-th call (from 0) with
    /// `status(n)`, and the number of calls it got.
    async fn scripted(status: fn(u64) -> StatusCode) -> (Server, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let seen = calls.clone();
        let app = Router::new().route(
            "/",
            get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move { status(n) }
            }),
        );
        (Server::start("upstream", app).await.unwrap(), calls)
    }

    fn client(registry: &Registry) -> (Upstream, Arc<Retries>) {
        let retries = Arc::new(Retries::default());
        let layer = retry_layer(registry, retries.clone()).unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        (layer.layer(client), retries)
    }

    async fn get_via(upstream: &Upstream, server: &Server) -> StatusCode {
        let uri = upstream_uri(server.addr(), "/");
        let req = axum::extract::Request::new(Body::empty());
        forward(upstream.clone(), uri, req).await.unwrap().status()
    }

    #[tokio::test]
    async fn shed_calls_are_retried_and_a_persistent_503_becomes_a_502() {
        let registry = Registry::new();
        let (upstream, retries) = client(&registry);

        // Shed twice, then served: the third attempt answers.
        let (flaky, calls) = scripted(|n| match n {
            0 | 1 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        })
        .await;
        assert_eq!(get_via(&upstream, &flaky).await, StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let counts = retries.get();
        assert_eq!((counts.retries, counts.succeeded), (2, 1), "{counts:?}");

        // Shed every time: three attempts, then a 502 for the client.
        let (down, calls) = scripted(|_| StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(get_via(&upstream, &down).await, StatusCode::BAD_GATEWAY);
        assert_eq!(calls.load(Ordering::SeqCst), u64::from(RETRY_ATTEMPTS));
        assert_eq!(retries.get().exhausted, 1);

        // A 500 is not retried and passes through.
        let (broken, calls) = scripted(|_| StatusCode::INTERNAL_SERVER_ERROR).await;
        assert_eq!(
            get_via(&upstream, &broken).await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // The registry sees the layer's counters.
        let snapshot = registry.snapshot();
        assert_eq!(snapshot["upstream-retry"]["kind"], "retry");
        assert_eq!(snapshot["upstream-retry"]["state"]["retries"], 4);
        for server in [flaky, down, broken] {
            server.shutdown().await.unwrap();
        }
    }

    /// `GET http://{addr}{path}` as client `who`: status, headers, body.
    async fn get_as(
        addr: SocketAddr,
        path: &str,
        who: &str,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let client: HealthClient = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::get(upstream_uri(addr, path))
            .header(CLIENT, who)
            .body(Empty::new())
            .unwrap();
        let res = client.request(req).await.unwrap();
        let (parts, body) = res.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fallback_answers_while_the_breaker_is_open_and_hot_is_cached() {
        // Serves the first call (the `/hot` miss), then fails every one.
        let (upstream, calls) = scripted(|n| match n {
            0 => StatusCode::OK,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        })
        .await;
        let registry = Registry::new();
        let gateway = start(upstream.addr(), &registry).await.unwrap();
        let addr = gateway.addr();

        let (status, headers, _) = get_as(addr, "/hot", "t").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CACHE_STATUS], "miss");
        let (status, headers, _) = get_as(addr, "/hot", "t").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CACHE_STATUS], "hit");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Every call fails: once the breaker's window is full it opens, and
        // the fallback answers (each request from its own client, under
        // its rate limit).
        let mut failed = 0;
        let fallback = loop {
            assert!(
                failed <= BREAKER_WINDOW,
                "no fallback after {failed} failures"
            );
            let (status, headers, body) = get_as(addr, "/", &format!("c{failed}")).await;
            if headers.contains_key(FALLBACK_HEADER) {
                break (status, headers, body);
            }
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            failed += 1;
        };
        // The window holds the `/hot` call's success too.
        assert_eq!(failed, BREAKER_WINDOW - 1);
        let (status, headers, body) = fallback;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers[FALLBACK_HEADER],
            "upstream-fallback; reason=circuit_open"
        );
        assert_eq!(&body[..], FALLBACK_BODY.as_bytes());
        // The fallback did not call the upstream.
        assert_eq!(calls.load(Ordering::SeqCst), 1 + u64::from(failed));
        let snapshot = registry.snapshot();
        assert_eq!(snapshot["upstream-fallback"]["kind"], "fallback");

        // `/hot` still answers: fresh, or (on a slow machine, past its
        // ttl) from the stale entry, since the breaker refuses the call.
        let (status, headers, body) = get_as(addr, "/hot", "t").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            matches!(headers[CACHE_STATUS].to_str().unwrap(), "hit" | "stale"),
            "{headers:?}"
        );
        assert_eq!(&body[..], b"");
        assert_eq!(calls.load(Ordering::SeqCst), 1 + u64::from(failed));

        let (status, ..) = get_as(addr, "/health/live", "t").await;
        assert_eq!(status, StatusCode::OK);
        // Once stopping, readiness says so.
        let health = gateway.observer().health;
        gateway.shutdown().await.unwrap();
        assert_eq!(
            health.readiness().await.http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(health.liveness().await.http_status(), StatusCode::OK);
        upstream.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_the_breaker_and_liveness_does_not() {
        let registry = Registry::new();
        let breaker = CircuitBreakerLayer::builder()
            .name(prometheus::BREAKER)
            .registry(&registry)
            .build()
            .unwrap();
        let health = health_registry(&registry).await.unwrap();
        // The refresher runs the checks again once their results are a
        // [`HEALTH_INTERVAL`] old; a probe answers from the last result.
        let settle = || async {
            tokio::time::advance(HEALTH_INTERVAL).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let ready = || async { health.readiness().await.http_status() };
        let live = || async { health.liveness().await.http_status() };
        assert_eq!(
            (ready().await, live().await),
            (StatusCode::OK, StatusCode::OK)
        );

        breaker.handle().force_open();
        settle().await;
        assert_eq!(ready().await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(live().await, StatusCode::OK);
        let report = health.readiness().await.to_json();
        assert_eq!(report["checks"][0]["name"], "upstream", "{report}");

        breaker.handle().reset();
        settle().await;
        assert_eq!(ready().await, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_budget_caps_the_retries_of_an_upstream_that_sheds_everything() {
        let (upstream, retries) = client(&Registry::new());
        let (down, calls) = scripted(|_| StatusCode::SERVICE_UNAVAILABLE).await;
        let n = 100u64;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (upstream, uri) = (upstream.clone(), upstream_uri(down.addr(), "/"));
            set.spawn(async move {
                let req = axum::extract::Request::new(Body::empty());
                forward(upstream, uri, req).await.unwrap().status()
            });
        }
        while let Some(status) = set.join_next().await {
            assert_eq!(status.unwrap(), StatusCode::BAD_GATEWAY);
        }
        // Without a budget, 200 retries; with it, 20 % of the 100 calls
        // plus the floor of 5 per second over the 10 s window.
        let allowed = n * RETRY_BUDGET_PERCENT as u64 / 100
            + u64::from(RETRY_BUDGET_FLOOR) * RETRY_BUDGET_TTL.as_secs();
        let counts = retries.get();
        assert!(counts.retries <= allowed, "{counts:?}");
        assert!(counts.budget_spent > 0, "{counts:?}");
        assert_eq!(calls.load(Ordering::SeqCst), n + counts.retries);
        down.shutdown().await.unwrap();
    }
}
