//! The benchmark cases of buttress, side by side with tower and
//! tower-resilience.
//!
//! One list, `cases()`, feeds both the criterion bench (`benches/layers.rs`)
//! and the allocation test (`tests/alloc.rs`), so every case that is timed is
//! also checked for heap allocations. Each case is a layer built once,
//! outside the timed loop, over a bare service; one run is `poll_ready`,
//! `call` and polling the response future to completion with a no-op waker.
//!
//! The cases must run inside a tokio runtime context (see `runtime()`):
//! timers need its time driver.
//!
//! One case is not a layer: governor's `RateLimiter::check()`, called
//! directly (no service, no future), the floor a rate limiter's decision
//! is compared with.

// Included by both the bench and the allocation test, which use
// different parts of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

/// Who wrote the layer of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Impl {
    /// No layer: the baseline.
    Bare,
    /// buttress.
    Buttress,
    /// tower's own middleware.
    Tower,
    /// tower-resilience.
    TowerResilience,
    /// governor, called directly (not a tower layer).
    Governor,
}

impl Impl {
    /// A short label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Impl::Bare => "bare",
            Impl::Buttress => "buttress",
            Impl::Tower => "tower",
            Impl::TowerResilience => "tower-resilience",
            Impl::Governor => "governor",
        }
    }
}

/// One benchmark case: a layer over a bare service, built once.
pub(crate) struct Case {
    /// The pattern (`"timeout"`, `"bulkhead"`, ...) or `"baseline"`.
    pub(crate) group: &'static str,
    /// The inner service: `"ready"` or `"pending_once"`.
    pub(crate) inner: &'static str,
    /// Who wrote the layer.
    pub(crate) imp: Impl,
    /// Heap allocations a buttress case may make per call: 0 on every happy
    /// path; 1 where the call is a rejection (the boxed error).
    pub(crate) allowed_allocations: usize,
    run: Box<dyn FnMut()>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("id", &self.id()).finish()
    }
}

impl Case {
    /// `group/impl/inner`, the criterion id.
    pub(crate) fn id(&self) -> String {
        format!("{}/{}/{}", self.group, self.imp.label(), self.inner)
    }

    /// One happy-path call.
    #[inline]
    pub(crate) fn run(&mut self) {
        (self.run)()
    }

    fn new<S>(group: &'static str, inner: &'static str, imp: Impl, mut svc: S) -> Self
    where
        S: Service<u64> + 'static,
    {
        Case {
            group,
            inner,
            imp,
            allowed_allocations: 0,
            run: Box::new(move || drive(&mut svc, black_box(1), true)),
        }
    }

    /// A case that is a plain closure rather than a service (governor's
    /// direct `check()`).
    fn direct(
        group: &'static str,
        inner: &'static str,
        imp: Impl,
        run: impl FnMut() + 'static,
    ) -> Self {
        Case {
            group,
            inner,
            imp,
            allowed_allocations: 0,
            run: Box::new(run),
        }
    }

    /// A case whose every call is rejected by the layer.
    fn rejecting<S>(group: &'static str, imp: Impl, mut svc: S) -> Self
    where
        S: Service<u64> + 'static,
    {
        Case {
            group,
            inner: "rejected",
            imp,
            allowed_allocations: 1,
            run: Box::new(move || drive(&mut svc, black_box(1), false)),
        }
    }
}

/// `poll_ready`, `call`, poll to completion.
#[inline]
pub(crate) fn drive<S: Service<u64>>(svc: &mut S, req: u64, expect_ok: bool) {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("a benchmark service must be ready"),
    }
    let mut fut = pin!(svc.call(req));
    loop {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            assert_eq!(
                res.is_ok(),
                expect_ok,
                "a benchmark call must end as expected"
            );
            black_box(res.ok());
            return;
        }
    }
}

/// A bare service whose future is `std::future::Ready`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReadySvc;

impl Service<u64> for ReadySvc {
    type Response = u64;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

/// The floor of any layer whose response future must reach shared state (to
/// record an outcome, release a permit): a bare service whose future holds a
/// clone of an `Arc`, so each call pays one reference-count increment and
/// one decrement, nothing else. Not a layer: a measure of this machine.
#[derive(Debug, Clone, Default)]
pub(crate) struct ArcPerCallSvc(std::sync::Arc<()>);

impl Service<u64> for ArcPerCallSvc {
    type Response = u64;
    type Error = Infallible;
    type Future = ArcReady;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ArcReady {
            _shared: black_box(self.0.clone()),
            value: req,
        }
    }
}

/// The future of [`ArcPerCallSvc`]: ready at once, holding its `Arc`.
#[derive(Debug)]
pub(crate) struct ArcReady {
    _shared: std::sync::Arc<()>,
    value: u64,
}

impl Future for ArcReady {
    type Output = Result<u64, Infallible>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(self.value))
    }
}

/// The floor of any layer that reads the time once per call: a bare
/// service that reads tokio's clock (`tokio::time::Instant::now()`, what
/// tower's `RateLimit` and an exact buttress rate limiter read) in `call`.
/// Not a layer: a measure of this machine.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClockPerCallSvc;

impl Service<u64> for ClockPerCallSvc {
    type Response = u64;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        black_box(tokio::time::Instant::now());
        std::future::ready(Ok(req))
    }
}

/// A bare service whose future is pending once (waking itself) before it
/// completes: the case where a timeout must arm its timer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PendingOnceSvc;

/// The future of [`PendingOnceSvc`].
#[derive(Debug)]
pub(crate) struct PendingOnce {
    value: u64,
    polled: bool,
}

impl Future for PendingOnce {
    type Output = Result<u64, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polled {
            Poll::Ready(Ok(self.value))
        } else {
            self.polled = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Service<u64> for PendingOnceSvc {
    type Response = u64;
    type Error = Infallible;
    type Future = PendingOnce;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        PendingOnce {
            value: req,
            polled: false,
        }
    }
}

/// The runtime the cases run in: current-thread, time enabled. Enter it
/// (`let _guard = rt.enter();`) before calling [`cases`].
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

const TIMEOUT: Duration = Duration::from_secs(30);
const PERMITS: usize = 1_000;
const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(100);
/// The rate (per second) and burst of every rate-limiter case: high
/// enough that every call is admitted (one permit every nanosecond, a
/// second's worth of burst), so the happy path is what is measured.
pub(crate) const RATE_HUGE: u64 = 1_000_000_000;

/// buttress's global rate limiter admitting every call, with `algorithm`
/// and an optional coarse clock of `resolution`.
pub(crate) fn rate_limit_layer(
    algorithm: buttress_rate_limit::Algorithm,
    resolution: Option<Duration>,
) -> buttress_rate_limit::RateLimitLayer {
    use buttress_rate_limit::{Algorithm, Rate, RateLimitLayer};
    let mut builder = RateLimitLayer::builder(Rate::per_second(RATE_HUGE)).algorithm(algorithm);
    // The window algorithms take no burst: they admit the rate's permits
    // per window.
    if matches!(algorithm, Algorithm::Gcra | Algorithm::TokenBucket) {
        builder = builder.burst(RATE_HUGE);
    }
    if let Some(resolution) = resolution {
        builder = builder.resolution(resolution);
    }
    builder.build().expect("a valid rate limiter")
}

/// tower-resilience's rate limiter admitting every call (its default
/// fixed window, `RATE_HUGE` permits per second).
fn rez_rate_limit() -> tower_resilience::ratelimiter::RateLimiterLayer {
    tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(RATE_HUGE as usize)
        .refresh_period(Duration::from_secs(1))
        .build()
        .expect("a valid tower-resilience rate limiter")
}

/// governor's direct limiter of the same quota: `RATE_HUGE` per second,
/// a burst of `RATE_HUGE`.
fn governor_quota() -> governor::Quota {
    let n = std::num::NonZeroU32::new(RATE_HUGE as u32).expect("a non-zero rate");
    governor::Quota::per_second(n).allow_burst(n)
}

/// A minimal `tower::retry::Policy`: clones the `u64` request, retries an
/// error up to `ATTEMPTS` attempts in all with no backoff, never retries a
/// success. tower has no backoff of its own in `Retry`; the happy path is
/// what is measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TowerRetryErrors {
    retries_left: u32,
}

impl Default for TowerRetryErrors {
    fn default() -> Self {
        TowerRetryErrors {
            retries_left: ATTEMPTS - 1,
        }
    }
}

impl<E> tower::retry::Policy<u64, u64, E> for TowerRetryErrors {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut u64, result: &mut Result<u64, E>) -> Option<Self::Future> {
        if result.is_err() && self.retries_left > 0 {
            self.retries_left -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// tower-resilience's retry, the equivalent of buttress's default: 3
/// attempts in all, exponential backoff from 100 ms. Its error type is the
/// inner service's, inferred where the layer is applied.
fn rez_retry<E>() -> tower_resilience::retry::RetryLayer<u64, u64, E> {
    tower_resilience::retry::RetryLayer::builder()
        .max_attempts(ATTEMPTS as usize)
        .exponential_backoff(BACKOFF)
        .build()
}

/// Every case, in report order. Must be called inside a runtime context.
pub(crate) fn cases() -> Vec<Case> {
    let mut cases = vec![
        Case::new("baseline", "ready", Impl::Bare, ReadySvc),
        Case::new("baseline", "pending_once", Impl::Bare, PendingOnceSvc),
        Case::new(
            "baseline",
            "arc_per_call",
            Impl::Bare,
            ArcPerCallSvc::default(),
        ),
        Case::new("baseline", "clock_per_call", Impl::Bare, ClockPerCallSvc),
    ];

    // Timeout.
    let ours = buttress_timeout::TimeoutLayer::new(TIMEOUT).expect("a valid timeout");
    let rez = tower_resilience::timelimiter::TimeLimiterLayer::builder()
        .timeout_duration(TIMEOUT)
        .build();
    cases.push(Case::new(
        "timeout",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    cases.push(Case::new(
        "timeout",
        "ready",
        Impl::Tower,
        tower::timeout::Timeout::new(ReadySvc, TIMEOUT),
    ));
    cases.push(Case::new(
        "timeout",
        "ready",
        Impl::TowerResilience,
        rez.layer(ReadySvc),
    ));
    cases.push(Case::new(
        "timeout",
        "pending_once",
        Impl::Buttress,
        ours.layer(PendingOnceSvc),
    ));
    cases.push(Case::new(
        "timeout",
        "pending_once",
        Impl::Tower,
        tower::timeout::Timeout::new(PendingOnceSvc, TIMEOUT),
    ));
    cases.push(Case::new(
        "timeout",
        "pending_once",
        Impl::TowerResilience,
        rez.layer(PendingOnceSvc),
    ));

    // Bulkhead.
    let ours = buttress_bulkhead::BulkheadLayer::new(PERMITS).expect("a valid bulkhead");
    let rez = tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(PERMITS)
        .build()
        .expect("a valid tower-resilience bulkhead");
    cases.push(Case::new(
        "bulkhead",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    cases.push(Case::new(
        "bulkhead",
        "ready",
        Impl::Tower,
        tower::limit::ConcurrencyLimit::new(ReadySvc, PERMITS),
    ));
    cases.push(Case::new(
        "bulkhead",
        "ready",
        Impl::TowerResilience,
        rez.layer(ReadySvc),
    ));

    // Circuit breaker, closed: Resilience4j's defaults (count window of 100).
    let ours = buttress_circuit_breaker::CircuitBreakerLayer::builder()
        .build()
        .expect("a valid breaker");
    let rez = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .expect("a valid tower-resilience breaker");
    cases.push(Case::new(
        "breaker",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    cases.push(Case::new(
        "breaker",
        "ready",
        Impl::TowerResilience,
        rez.layer(ReadySvc),
    ));

    // Circuit breaker, closed, time window of 60 s (the second comes from
    // the breaker's ticker, not the clock).
    let timed = buttress_circuit_breaker::CircuitBreakerLayer::builder()
        .time_window(std::time::Duration::from_secs(60))
        .build()
        .expect("a valid breaker");
    cases.push(Case::new(
        "breaker-time-window",
        "ready",
        Impl::Buttress,
        timed.layer(ReadySvc),
    ));

    // Circuit breaker, forced open: every call is rejected.
    let open = buttress_circuit_breaker::CircuitBreakerLayer::builder()
        .build()
        .expect("a valid breaker");
    open.handle().force_open();
    cases.push(Case::rejecting(
        "breaker",
        Impl::Buttress,
        open.layer(ReadySvc),
    ));

    // Retry: the happy path, where the first attempt succeeds and nothing
    // is retried. buttress's default (3 attempts, exponential from 100 ms,
    // every error retried).
    let ours = buttress_retry::RetryLayer::builder()
        .build()
        .expect("a valid retry layer");
    cases.push(Case::new(
        "retry",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    cases.push(Case::new(
        "retry",
        "ready",
        Impl::Tower,
        tower::retry::Retry::new(TowerRetryErrors::default(), ReadySvc),
    ));
    cases.push(Case::new(
        "retry",
        "ready",
        Impl::TowerResilience,
        rez_retry().layer(ReadySvc),
    ));

    // Retry with a budget (Finagle's defaults): every call deposits in the
    // slot of its own time.
    let budgeted = buttress_retry::RetryLayer::builder()
        .budget(
            buttress_retry::RetryBudget::builder()
                .build()
                .expect("a valid retry budget"),
        )
        .build()
        .expect("a valid retry layer");
    cases.push(Case::new(
        "retry-budget",
        "ready",
        Impl::Buttress,
        budgeted.layer(ReadySvc),
    ));

    // Rate limiter, global, every call admitted. buttress: GCRA with the
    // exact clock (tokio's, read once per call), then with a coarse clock
    // of 1 ms (one atomic load), then the token bucket and the sliding
    // window once each.
    use buttress_rate_limit::Algorithm;
    let ours = rate_limit_layer(Algorithm::Gcra, None);
    cases.push(Case::new(
        "rate-limit",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    let coarse = rate_limit_layer(Algorithm::Gcra, Some(Duration::from_millis(1)));
    cases.push(Case::new(
        "rate-limit-coarse",
        "ready",
        Impl::Buttress,
        coarse.layer(ReadySvc),
    ));
    let bucket = rate_limit_layer(Algorithm::TokenBucket, None);
    cases.push(Case::new(
        "rate-limit-token-bucket",
        "ready",
        Impl::Buttress,
        bucket.layer(ReadySvc),
    ));
    let sliding = rate_limit_layer(Algorithm::SlidingWindow, None);
    cases.push(Case::new(
        "rate-limit-sliding-window",
        "ready",
        Impl::Buttress,
        sliding.layer(ReadySvc),
    ));
    // tower's `RateLimit` keeps its count per service (per clone), and
    // turns not ready once the count is spent; here it never is.
    cases.push(Case::new(
        "rate-limit",
        "ready",
        Impl::Tower,
        tower::limit::RateLimit::new(
            ReadySvc,
            tower::limit::rate::Rate::new(RATE_HUGE, Duration::from_secs(1)),
        ),
    ));
    cases.push(Case::new(
        "rate-limit",
        "ready",
        Impl::TowerResilience,
        rez_rate_limit().layer(ReadySvc),
    ));
    // governor's `check()` on a direct limiter, called as is: no service
    // around it. With its default clock (quanta, the CPU's time-stamp
    // counter), then with std's `Instant`, the clock buttress reads
    // (through tokio).
    let quanta = governor::RateLimiter::direct(governor_quota());
    cases.push(Case::direct(
        "rate-limit",
        "check",
        Impl::Governor,
        move || {
            assert!(black_box(&quanta).check().is_ok(), "governor admits");
        },
    ));
    let std_clock =
        governor::RateLimiter::direct_with_clock(governor_quota(), governor::clock::MonotonicClock);
    cases.push(Case::direct(
        "rate-limit",
        "check_std_clock",
        Impl::Governor,
        move || {
            assert!(black_box(&std_clock).check().is_ok(), "governor admits");
        },
    ));

    // Rate limiter with a spent burst and no refill worth a call: every
    // call is rejected.
    let spent = buttress_rate_limit::RateLimitLayer::builder(buttress_rate_limit::Rate::new(
        1,
        Duration::from_secs(3600),
    ))
    .build()
    .expect("a valid rate limiter");
    let mut spent_svc = spent.layer(ReadySvc);
    drive(&mut spent_svc, 1, true);
    cases.push(Case::rejecting("rate-limit", Impl::Buttress, spent_svc));

    // A stack in the client order of the README (retry, circuit breaker,
    // rate limiter, bulkhead, per-attempt timeout), outermost first: retry,
    // bulkhead, timeout.
    let stack = tower::ServiceBuilder::new()
        .layer(
            buttress_retry::RetryLayer::builder()
                .build()
                .expect("a valid retry layer"),
        )
        .layer(buttress_bulkhead::BulkheadLayer::new(PERMITS).expect("a valid bulkhead"))
        .layer(buttress_timeout::TimeoutLayer::new(TIMEOUT).expect("a valid timeout"))
        .service(ReadySvc);
    cases.push(Case::new("stack", "ready", Impl::Buttress, stack));
    let stack = tower::ServiceBuilder::new()
        .layer(rez_retry())
        .layer(
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(PERMITS)
                .build()
                .expect("a valid tower-resilience bulkhead"),
        )
        .layer(
            tower_resilience::timelimiter::TimeLimiterLayer::builder()
                .timeout_duration(TIMEOUT)
                .build(),
        )
        .service(ReadySvc);
    cases.push(Case::new("stack", "ready", Impl::TowerResilience, stack));

    // The same with the circuit breaker (default builder) between retry
    // and bulkhead.
    let stack = tower::ServiceBuilder::new()
        .layer(
            buttress_retry::RetryLayer::builder()
                .build()
                .expect("a valid retry layer"),
        )
        .layer(
            buttress_circuit_breaker::CircuitBreakerLayer::builder()
                .build()
                .expect("a valid breaker"),
        )
        .layer(buttress_bulkhead::BulkheadLayer::new(PERMITS).expect("a valid bulkhead"))
        .layer(buttress_timeout::TimeoutLayer::new(TIMEOUT).expect("a valid timeout"))
        .service(ReadySvc);
    cases.push(Case::new("stack-breaker", "ready", Impl::Buttress, stack));
    let stack = tower::ServiceBuilder::new()
        .layer(rez_retry())
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .build()
                .expect("a valid tower-resilience breaker"),
        )
        .layer(
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(PERMITS)
                .build()
                .expect("a valid tower-resilience bulkhead"),
        )
        .layer(
            tower_resilience::timelimiter::TimeLimiterLayer::builder()
                .timeout_duration(TIMEOUT)
                .build(),
        )
        .service(ReadySvc);
    cases.push(Case::new(
        "stack-breaker",
        "ready",
        Impl::TowerResilience,
        stack,
    ));

    // The full client order of DESIGN.md section 4 (retry, circuit
    // breaker, rate limiter, bulkhead, per-attempt timeout): the stack
    // above with the global rate limiter (GCRA, exact clock, every call
    // admitted) between breaker and bulkhead.
    let stack = tower::ServiceBuilder::new()
        .layer(
            buttress_retry::RetryLayer::builder()
                .build()
                .expect("a valid retry layer"),
        )
        .layer(
            buttress_circuit_breaker::CircuitBreakerLayer::builder()
                .build()
                .expect("a valid breaker"),
        )
        .layer(rate_limit_layer(Algorithm::Gcra, None))
        .layer(buttress_bulkhead::BulkheadLayer::new(PERMITS).expect("a valid bulkhead"))
        .layer(buttress_timeout::TimeoutLayer::new(TIMEOUT).expect("a valid timeout"))
        .service(ReadySvc);
    cases.push(Case::new(
        "stack-rate-limit",
        "ready",
        Impl::Buttress,
        stack,
    ));
    let stack = tower::ServiceBuilder::new()
        .layer(rez_retry())
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .build()
                .expect("a valid tower-resilience breaker"),
        )
        .layer(rez_rate_limit())
        .layer(
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(PERMITS)
                .build()
                .expect("a valid tower-resilience bulkhead"),
        )
        .layer(
            tower_resilience::timelimiter::TimeLimiterLayer::builder()
                .timeout_duration(TIMEOUT)
                .build(),
        )
        .service(ReadySvc);
    cases.push(Case::new(
        "stack-rate-limit",
        "ready",
        Impl::TowerResilience,
        stack,
    ));

    // Metrics, with no recorder installed (the no-op recorder): the cost
    // of the layer itself. Generic (outcome only) and HTTP server (a
    // request and a response with an empty body, which ends the call at
    // once).
    cases.push(Case::new(
        "metrics",
        "ready",
        Impl::Buttress,
        buttress_metrics::MetricsLayer::new().layer(ReadySvc),
    ));
    cases.push(Case::new(
        "metrics",
        "http_ready",
        Impl::Buttress,
        HttpAdapter(buttress_metrics::MetricsLayer::http_server().layer(HttpReadySvc)),
    ));
    cases.push(Case::new(
        "metrics",
        "http_ready",
        Impl::Bare,
        HttpAdapter(HttpReadySvc),
    ));

    fallback_cases(&mut cases);
    chaos_cases(&mut cases);
    cache_cases(&mut cases);
    policy_api_cases(&mut cases);

    cases
}

/// Chaos, switched off (as it ships): the cost a fault-injection layer
/// left in a stack adds to every call. buttress's layer has an error rate
/// set, so only the switch keeps it quiet; tower-resilience's has its
/// rates at 0 (it has no switch).
fn chaos_cases(cases: &mut Vec<Case>) {
    let ours = buttress_chaos::ChaosLayer::builder()
        .error_rate(0.5)
        .build()
        .expect("a valid chaos layer");
    let rez = tower_resilience::chaos::ChaosLayer::builder()
        .name("chaos")
        .build();
    cases.push(Case::new("chaos", "ready", Impl::Bare, ReadySvc));
    cases.push(Case::new(
        "chaos",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    cases.push(Case::new(
        "chaos",
        "ready",
        Impl::TowerResilience,
        rez.layer(ReadySvc),
    ));
}

/// Fallback, never triggered (the primary succeeds): a value fallback
/// beside tower-resilience's, a service fallback (which keeps a clone of
/// the request), and the HTTP server preset (503 on failure, classified by
/// status) beside the bare HTTP service.
fn fallback_cases(cases: &mut Vec<Case>) {
    cases.push(Case::new("fallback", "ready", Impl::Bare, ReadySvc));
    let ours = buttress_fallback::FallbackLayer::value(0u64)
        .build()
        .expect("a valid fallback");
    cases.push(Case::new(
        "fallback",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    // The same with a name that is not `&'static`: the response future
    // holds a reference count on the layer, what a value that is not a
    // plain copy (a `String`, a response) costs too.
    let ours = buttress_fallback::FallbackLayer::value(0u64)
        .name(String::from("owned-name"))
        .build()
        .expect("a valid fallback");
    cases.push(Case::new(
        "fallback",
        "ready_shared",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    let rez = tower_resilience::fallback::FallbackLayer::<u64, u64, Infallible>::value(0);
    cases.push(Case::new(
        "fallback",
        "ready",
        Impl::TowerResilience,
        rez.layer(ReadySvc),
    ));
    let ours = buttress_fallback::FallbackLayer::service(ReadySvc)
        .build()
        .expect("a valid fallback");
    cases.push(Case::new(
        "fallback",
        "service_ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    let rez =
        tower_resilience::fallback::FallbackLayer::<u64, u64, Infallible>::tower_service(ReadySvc);
    cases.push(Case::new(
        "fallback",
        "service_ready",
        Impl::TowerResilience,
        rez.layer(ReadySvc),
    ));
    cases.push(Case::new(
        "fallback",
        "http_ready",
        Impl::Bare,
        HttpAdapter(HttpReadySvc),
    ));
    let ours = buttress_fallback::FallbackLayer::http_unavailable::<String>()
        .build()
        .expect("a valid fallback");
    cases.push(Case::new(
        "fallback",
        "http_ready",
        Impl::Buttress,
        HttpAdapter(ours.layer(HttpReadySvc)),
    ));
}

/// A bare HTTP service: an empty `200 OK` at once, allocating nothing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HttpReadySvc;

impl Service<http::Request<()>> for HttpReadySvc {
    type Response = http::Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(String::new())))
    }
}

/// Drives an HTTP service as a `Service<u64>`: a `GET /` request with no
/// headers (no allocation), the response's status as the result; the
/// response (and its body) is dropped inside the call.
#[derive(Debug, Clone)]
pub(crate) struct HttpAdapter<S>(S);

impl<S, B> Service<u64> for HttpAdapter<S>
where
    S: Service<http::Request<()>, Response = http::Response<B>>,
    S::Future: Unpin,
{
    type Response = u64;
    type Error = S::Error;
    type Future = HttpStatus<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, _: u64) -> Self::Future {
        HttpStatus(self.0.call(http::Request::new(())))
    }
}

/// The future of [`HttpAdapter`].
pub(crate) struct HttpStatus<F>(F);

impl<F, B, E> Future for HttpStatus<F>
where
    F: Future + Unpin,
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<u64, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Structural pinning by hand is unsafe; the futures used here are
        // `Unpin`.
        let this = self.get_mut();
        match Pin::new(&mut this.0).poll(cx) {
            Poll::Ready(res) => Poll::Ready(res.map(|r| u64::from(r.status().as_u16()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A cache hit in memory, the same key every call (the first call, a
/// miss, is made by the warm-up), beside tower-resilience's cache and the
/// bare service. The response is a `u64`: cloning it allocates nothing,
/// so what is counted is the layer's own cost.
fn cache_cases(cases: &mut Vec<Case>) {
    cases.push(Case::new("cache", "ready", Impl::Bare, ReadySvc));
    let ours = buttress_cache::CacheLayer::builder(|req: &u64| Some(*req))
        .ttl(Duration::from_secs(3600))
        .max_entries(10_000)
        .build()
        .expect("a valid cache");
    cases.push(Case::new(
        "cache",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    let rez = tower_resilience::cache::CacheLayer::<u64, u64>::builder()
        .max_size(10_000)
        .ttl(Duration::from_secs(3600))
        .key_extractor(|req: &u64| *req)
        .build()
        .expect("a valid tower-resilience cache");
    cases.push(Case::new(
        "cache",
        "ready",
        Impl::TowerResilience,
        rez.layer(ReadySvc),
    ));
}

/// The `api()` preset of the facade, `Policy::api().build()` (generic
/// flavor): total timeout (30 s), retry (3 attempts, exponential from
/// 100 ms, with a retry budget), circuit breaker (5 consecutive failures,
/// 1 min open), bulkhead (50 calls, 100 queued for at most 1 s) and
/// per-attempt timeout (10 s), built as one layer. Beside it,
/// tower-resilience's 4-layer stack of the same values (time limiter,
/// retry, circuit breaker, bulkhead: it has no retry budget and no second
/// time limiter here), and the bare service in the same group.
fn policy_api_cases(cases: &mut Vec<Case>) {
    let ours = buttress::policy::Policy::api()
        .build()
        .expect("a valid api policy");
    cases.push(Case::new("policy-api", "ready", Impl::Bare, ReadySvc));
    cases.push(Case::new(
        "policy-api",
        "ready",
        Impl::Buttress,
        ours.layer(ReadySvc),
    ));
    let rez = tower::ServiceBuilder::new()
        .layer(
            tower_resilience::timelimiter::TimeLimiterLayer::builder()
                .timeout_duration(TIMEOUT)
                .build(),
        )
        .layer(rez_retry())
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .consecutive_failures(5)
                .wait_duration_in_open(Duration::from_secs(60))
                .build()
                .expect("a valid tower-resilience breaker"),
        )
        .layer(
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(50)
                .max_wait_duration(Duration::from_secs(1))
                .build()
                .expect("a valid tower-resilience bulkhead"),
        )
        .service(ReadySvc);
    cases.push(Case::new("policy-api", "ready", Impl::TowerResilience, rez));
}
