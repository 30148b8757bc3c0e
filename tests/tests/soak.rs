//! Soak: a bounded run of the full client stack under random faults and
//! random cancellation, on a 2-worker runtime, ending with nothing leaked.
//!
//! Two stacks of the same layers (outermost first: a total timeout, retry
//! with a budget, a circuit breaker, a keyed rate limiter, a bulkhead with
//! a wait queue, a per-attempt timeout, a chaos layer with random errors,
//! latencies and hangs): one over a hyper-util client to an axum server on
//! 127.0.0.1, one over an in-process upstream (so that the layers see
//! millions of calls in a run a CI can afford). A storm task raises the
//! chaos' error rate for a moment every few seconds, so the breaker opens,
//! lets probes through half-open and closes, again and again.
//!
//! Callers drop their futures at random points (seeded): while waiting for
//! readiness, right after readiness (a reserved bulkhead permit dropped
//! unused), and at every `Pending` of the response future with a small
//! probability. Counting layers between the patterns record each layer's
//! calls in and out (completed or dropped), so that every counter is
//! checked against them at the end: calls in = outcomes out, per layer.
//!
//! After each part of the run, with every caller stopped: no bulkhead
//! permit held and nobody queued, no rate-limit waiter, the keyed map at
//! or below its cap, every counter consistent. At the end, the breaker's
//! probe slots free (it closes again through its probes), and memory
//! flat: the live heap bytes (a counting global allocator) after the last
//! third of the run are within a bound of those after the second.
//!
//! `BUTTRESS_SOAK_SECS` (default 45) sets the length of the run, in three
//! thirds: both stacks, then the in-process stack alone twice, measured
//! (the hyper-util client and the axum server keep some memory for each
//! request cancelled in flight, buttress or not, which would hide the
//! layers' own figure). The clock is real (a multi-thread
//! runtime cannot be paused), so nothing is timed: every assertion is on
//! counts. One test in its own binary: the counting allocator sees every
//! thread of the process.

use std::alloc::System;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress::bulkhead::{BulkheadHandle, BulkheadLayer};
use buttress::circuit_breaker::{
    CircuitBreakerEvent, CircuitBreakerHandle, CircuitBreakerLayer, State,
};
use buttress::core::error::find;
use buttress::core::key::FnKey;
use buttress::core::{BoxError, BulkheadFull, Outcome, RateLimited};
use buttress::retry::{Backoff, Jitter, ReplayBody, RetryBudget, RetryHandle, RetryLayer};
use buttress::timeout::TimeoutLayer;
use buttress::ServiceBuilderExt;
use buttress_chaos::{ChaosHandle, ChaosLayer, FaultKind, Latency};
use buttress_integration_tests::TestServer;
use buttress_rate_limit::{KeyedRateLimitHandle, KeyedRateLimitLayer, Rate};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::util::{BoxCloneService, BoxCloneSyncService};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A request as the layers below the retry layer see it.
type Req = http::Request<ReplayBody<Full<Bytes>>>;
/// A response with its body read.
type Res = http::Response<Full<Bytes>>;
/// The upstream: the hyper client (its body read) or in-process. `Sync`,
/// as the retry layer keeps the service below it behind an `Arc`.
type Upstream = BoxCloneSyncService<Req, Res, BoxError>;

/// Client keys: a few hot ones, and many cold ones (far more than the
/// keyed rate limiter holds).
const HOT_CLIENTS: u64 = 32;
const COLD_CLIENTS: u64 = 100_000;
/// The keyed rate limiter's cap on keys.
const MAX_KEYS: usize = 64;
/// The bulkhead's permits and queue.
const PERMITS: usize = 4;
const QUEUE: usize = 2;
/// The breaker's wait in the open state and its half-open probes.
const OPEN_WAIT: Duration = Duration::from_millis(100);
const PROBES: u32 = 3;
/// Callers on each stack.
const CALLERS: u64 = 8;
/// A caller's bound on calls per part (the run is bounded by time too).
const MAX_CALLS_PER_PART: u64 = 20_000_000;
/// How far the live heap may grow over the last third of the run: 64 KiB,
/// and at most half a byte per call of that third (a default run makes
/// some 500 000 there), so a leak of anything per call, or of one
/// allocation per thousand calls of any usual size, exceeds it. What
/// stays within it is bounded state settling (timer wheel levels, the
/// keyed map's slots, stdout's buffer): measured, a few hundred bytes
/// either way.
const MEMORY_BOUND: i64 = 64 << 10;

// ---------------------------------------------------------------------------
// A counting layer: calls in, and how each ended (completed or dropped).

#[derive(Debug, Default)]
struct Counts {
    calls: AtomicU64,
    ok: AtomicU64,
    err: AtomicU64,
    dropped: AtomicU64,
}

impl Counts {
    fn get(&self) -> (u64, u64, u64, u64) {
        (
            self.calls.load(SeqCst),
            self.ok.load(SeqCst),
            self.err.load(SeqCst),
            self.dropped.load(SeqCst),
        )
    }

    fn completed(&self) -> u64 {
        self.ok.load(SeqCst) + self.err.load(SeqCst)
    }
}

#[derive(Debug, Clone, Default)]
struct Tally(Arc<Counts>);

impl<S> Layer<S> for Tally {
    type Service = Tallied<S>;

    fn layer(&self, inner: S) -> Tallied<S> {
        Tallied {
            inner,
            counts: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Tallied<S> {
    inner: S,
    counts: Arc<Counts>,
}

impl<S: Service<R>, R> Service<R> for Tallied<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = TallyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.counts.calls.fetch_add(1, SeqCst);
        TallyFuture {
            inner: self.inner.call(req),
            guard: Guard {
                counts: self.counts.clone(),
                done: false,
            },
        }
    }
}

/// Counts a future dropped before it completed.
struct Guard {
    counts: Arc<Counts>,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.counts.dropped.fetch_add(1, SeqCst);
        }
    }
}

pin_project! {
    struct TallyFuture<F> {
        #[pin]
        inner: F,
        guard: Guard,
    }
}

impl<F: Future<Output = Result<T, E>>, T, E> Future for TallyFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        this.guard.done = true;
        let counter = if out.is_ok() {
            &this.guard.counts.ok
        } else {
            &this.guard.counts.err
        };
        counter.fetch_add(1, SeqCst);
        Poll::Ready(out)
    }
}

// ---------------------------------------------------------------------------
// Seeded randomness and cancellation.

/// splitmix64: small, seeded, good enough to pick cancellation points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `true` with a probability of `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

pin_project! {
    /// Polls `inner`; each time it is pending, gives up (drops it, at that
    /// await point) with a probability of `per_mille` / 1000.
    struct Cancel<'r, F> {
        #[pin]
        inner: F,
        rng: &'r mut Rng,
        per_mille: u64,
    }
}

impl<F: Future> Future for Cancel<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending if this.rng.chance(*this.per_mille) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn cancel<F>(inner: F, rng: &mut Rng, per_mille: u64) -> Cancel<'_, F> {
    Cancel {
        inner,
        rng,
        per_mille,
    }
}

// ---------------------------------------------------------------------------
// The stack.

/// One stack's layers, their handles and the counting layers between them.
struct Stack {
    name: &'static str,
    svc: BoxCloneService<http::Request<Full<Bytes>>, Res, BoxError>,
    chaos: ChaosHandle,
    retry: RetryHandle,
    budget: RetryBudget,
    breaker: CircuitBreakerHandle,
    limiter: KeyedRateLimitHandle<u32>,
    bulkhead: BulkheadHandle,
    /// Breaker events: successes, failures, ignored, not permitted.
    events: Arc<[AtomicU64; 4]>,
    /// Above the retry layer; above and below the breaker; below the
    /// rate limiter; below the bulkhead; above the chaos layer.
    above_retry: Tally,
    above_breaker: Tally,
    below_breaker: Tally,
    below_limiter: Tally,
    below_bulkhead: Tally,
    above_chaos: Tally,
}

fn client_key(req: &Req) -> Option<u32> {
    req.headers().get("x-client")?.to_str().ok()?.parse().ok()
}

/// The breaker's classifier: 5xx and errors are failures, except the
/// rejections of the rate limiter and the bulkhead below it (this
/// process shedding its own load says nothing of the upstream's health),
/// which are ignored.
fn classify(res: &Result<Res, BoxError>) -> Outcome {
    match res {
        Ok(r) if r.status().is_server_error() => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(e) if find::<RateLimited>(&**e).is_some() || find::<BulkheadFull>(&**e).is_some() => {
            Outcome::Ignored
        }
        Err(_) => Outcome::Failure,
    }
}

fn stack(name: &'static str, upstream: Upstream, seed: u64) -> Stack {
    let chaos = ChaosLayer::builder()
        .name(format!("{name}-chaos"))
        .seed(seed)
        .error_rate(0.05)
        .latency(
            0.05,
            Latency::Uniform {
                min: Duration::ZERO,
                max: Duration::from_millis(2),
            },
        )
        .hang_rate(0.0005)
        .enabled(true)
        .build()
        .unwrap();
    let budget = RetryBudget::builder()
        .percent(20.0)
        .min_per_sec(10)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let retry = RetryLayer::for_http()
        .name(format!("{name}-retry"))
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(1)))
        .jitter(Jitter::Full)
        .max_delay(Duration::from_millis(5))
        .seed(seed)
        .budget(budget.clone())
        .build()
        .unwrap();
    let events: Arc<[AtomicU64; 4]> = Arc::default();
    let ev = events.clone();
    let breaker = CircuitBreakerLayer::builder()
        .name(format!("{name}-breaker"))
        .window_size(50)
        .minimum_calls(20)
        .failure_rate_threshold(50.0)
        .wait_in_open(OPEN_WAIT)
        .permitted_calls_in_half_open(PROBES)
        .classifier(classify)
        .on_event(move |e: &CircuitBreakerEvent| {
            let i = match e {
                CircuitBreakerEvent::Success { .. } => 0,
                CircuitBreakerEvent::Failure { .. } => 1,
                CircuitBreakerEvent::Ignored { .. } => 2,
                CircuitBreakerEvent::NotPermitted { .. } => 3,
                _ => return,
            };
            ev[i].fetch_add(1, SeqCst);
        })
        .build()
        .unwrap();
    let limiter = KeyedRateLimitLayer::builder(FnKey::new(client_key), Rate::per_second(500))
        .name(format!("{name}-limit"))
        .burst(20)
        .max_keys(MAX_KEYS)
        .idle_timeout(Duration::from_millis(20))
        .build::<u32>()
        .unwrap();
    let bulkhead = BulkheadLayer::builder()
        .name(format!("{name}-bulkhead"))
        .max_concurrent(PERMITS)
        .max_queue(QUEUE)
        .max_wait(Duration::from_millis(20))
        .build()
        .unwrap();
    let tallies: [Tally; 6] = Default::default();
    let (chaos_handle, retry_handle, breaker_handle) =
        (chaos.handle(), retry.handle(), breaker.handle());
    let (limiter_handle, bulkhead_handle) = (limiter.handle(), bulkhead.handle());
    let svc = ServiceBuilder::new()
        .call_timeout(Duration::from_millis(200))
        .unwrap()
        .layer(tallies[0].clone())
        .retry_with(retry)
        .layer(tallies[1].clone())
        .circuit_breaker(breaker)
        .layer(tallies[2].clone())
        .layer(limiter)
        .map_err(Into::<BoxError>::into)
        .layer(tallies[3].clone())
        .layer(bulkhead)
        .layer(tallies[4].clone())
        .layer(TimeoutLayer::new(Duration::from_millis(50)).unwrap())
        .layer(tallies[5].clone())
        .layer(chaos)
        .map_err(Into::<BoxError>::into)
        .service(upstream);
    let [above_retry, above_breaker, below_breaker, below_limiter, below_bulkhead, above_chaos] =
        tallies;
    Stack {
        name,
        svc: BoxCloneService::new(svc),
        chaos: chaos_handle,
        retry: retry_handle,
        budget,
        breaker: breaker_handle,
        limiter: limiter_handle,
        bulkhead: bulkhead_handle,
        events,
        above_retry,
        above_breaker,
        below_breaker,
        below_limiter,
        below_bulkhead,
        above_chaos,
    }
}

/// The in-process upstream: an empty 200.
fn local_upstream() -> Upstream {
    BoxCloneSyncService::new(tower::service_fn(|_req: Req| async {
        Ok::<_, BoxError>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    }))
}

/// The hyper-util client to `server`, its body read within the attempt.
fn http_upstream() -> Upstream {
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    BoxCloneSyncService::new(client.map_err(Into::<BoxError>::into).and_then(
        |res: http::Response<hyper::body::Incoming>| async move {
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok(http::Response::from_parts(parts, Full::new(bytes)))
        },
    ))
}

// ---------------------------------------------------------------------------
// The callers.

/// What the callers of one stack saw.
#[derive(Debug, Default)]
struct Callers {
    started: AtomicU64,
    ok: AtomicU64,
    err: AtomicU64,
    cancelled: AtomicU64,
}

/// Calls `svc` until `stop` or `MAX_CALLS_PER_PART` calls, dropping its
/// futures at random points.
async fn caller(
    svc: BoxCloneService<http::Request<Full<Bytes>>, Res, BoxError>,
    uri: http::Uri,
    seed: u64,
    stop: Arc<AtomicBool>,
    seen: Arc<Callers>,
) {
    let mut rng = Rng(seed);
    for _ in 0..MAX_CALLS_PER_PART {
        if stop.load(SeqCst) {
            return;
        }
        // Nine calls in ten from a few hot clients, the rest from many
        // cold ones, which fill the keyed map and are evicted once idle.
        let client = if rng.chance(900) {
            rng.next() % HOT_CLIENTS
        } else {
            HOT_CLIENTS + rng.next() % COLD_CLIENTS
        };
        let req = http::Request::get(uri.clone())
            .header("x-client", client.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        seen.started.fetch_add(1, SeqCst);
        let mut svc = svc.clone();
        // Cancelled while waiting for readiness (a bulkhead queue slot).
        let ready = match cancel(svc.ready(), &mut rng, 30).await {
            None => {
                seen.cancelled.fetch_add(1, SeqCst);
                continue;
            }
            Some(r) => r,
        };
        let ready = match ready {
            Ok(ready) => ready,
            Err(_) => {
                seen.err.fetch_add(1, SeqCst);
                continue;
            }
        };
        // Cancelled when ready: a reserved permit dropped unused.
        if rng.chance(10) {
            seen.cancelled.fetch_add(1, SeqCst);
            continue;
        }
        let fut = ready.call(req);
        match cancel(fut, &mut rng, 30).await {
            None => seen.cancelled.fetch_add(1, SeqCst),
            Some(Ok(_)) => seen.ok.fetch_add(1, SeqCst),
            Some(Err(_)) => seen.err.fetch_add(1, SeqCst),
        };
        // A caller that never waits would starve the storm and the
        // server on two threads.
        if rng.chance(100) {
            tokio::task::yield_now().await;
        }
    }
}

/// Raises the chaos' error rate of every stack to 90 % for 300 ms every
/// 2 s (the breaker opens, probes, closes), until `stop`.
async fn storm(chaos: Vec<ChaosHandle>, stop: Arc<AtomicBool>) {
    // Bounded: a run of an hour at most.
    for _ in 0..3600 {
        for _ in 0..20 {
            if stop.load(SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for c in &chaos {
            c.set_error_rate(0.9).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for c in &chaos {
            c.set_error_rate(0.05).unwrap();
        }
    }
}

/// Runs every caller of both stacks, and the storm, for `length`.
async fn part(stacks: &[(&Stack, http::Uri, Arc<Callers>)], length: Duration, seed: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (s, uri, seen)) in stacks.iter().enumerate() {
        for c in 0..CALLERS {
            tasks.push(tokio::spawn(caller(
                s.svc.clone(),
                uri.clone(),
                seed ^ ((i as u64) << 32 | c),
                stop.clone(),
                seen.clone(),
            )));
        }
    }
    let chaos = stacks.iter().map(|(s, _, _)| s.chaos.clone()).collect();
    let storm = tokio::spawn(storm(chaos, stop.clone()));
    tokio::time::sleep(length).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("a caller panicked");
    }
    storm.await.expect("the storm panicked");
    for (s, _, _) in stacks {
        s.chaos.set_error_rate(0.05).unwrap();
    }
}

/// Live heap bytes since `region` began.
fn live(region: &Region<'_, System>) -> i64 {
    let c = region.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64
}

// ---------------------------------------------------------------------------
// The checks.

fn check(s: &Stack, seen: &Callers) {
    let name = s.name;
    // Callers: every call started ended one way.
    let started = seen.started.load(SeqCst);
    let (ok, err, cancelled) = (
        seen.ok.load(SeqCst),
        seen.err.load(SeqCst),
        seen.cancelled.load(SeqCst),
    );
    assert_eq!(started, ok + err + cancelled, "{name}: callers");

    // No permit held, nobody queued, no waiter, keys within the cap.
    let b = s.bulkhead.snapshot();
    assert_eq!(
        (b.active, b.queued, b.available),
        (0, 0, PERMITS),
        "{name}: bulkhead {b:?}"
    );
    assert!(s.bulkhead.is_idle());
    let l = s.limiter.snapshot();
    assert_eq!(l.waiting, 0, "{name}: {l:?}");
    assert!(l.keys <= MAX_KEYS, "{name}: {} keys", l.keys);

    // Retry: each call it took deposited once, and each one that completed
    // is counted once by kind; attempts below it are the first attempts
    // plus at most the retries it scheduled.
    let r = s.retry.snapshot();
    let budget = s.budget.snapshot();
    let (retry_calls, ..) = s.above_retry.0.get();
    assert_eq!(budget.deposits, retry_calls, "{name}: deposits");
    assert_eq!(
        r.successful_without_retry
            + r.successful_with_retry
            + r.failed_without_retry
            + r.failed_with_retry,
        s.above_retry.0.completed(),
        "{name}: retry outcomes {r:?}"
    );
    let (attempts, ..) = s.above_breaker.0.get();
    assert!(attempts >= retry_calls - s.above_retry.0.dropped.load(SeqCst));
    assert!(attempts <= retry_calls + r.retries, "{name}: attempts");
    assert!(budget.withdrawals <= r.retries, "{name}: {budget:?}");

    // Breaker: every call in was let through or rejected; every call let
    // through and not dropped reported one outcome.
    let (in_breaker, ..) = s.above_breaker.0.get();
    let (admitted, ..) = s.below_breaker.0.get();
    let bs = s.breaker.snapshot();
    assert_eq!(
        in_breaker,
        admitted + bs.not_permitted_calls,
        "{name}: breaker"
    );
    let ev: Vec<u64> = s.events.iter().map(|e| e.load(SeqCst)).collect();
    assert_eq!(ev[3], bs.not_permitted_calls, "{name}: not permitted");
    assert_eq!(
        ev[0] + ev[1] + ev[2],
        s.below_breaker.0.completed(),
        "{name}: breaker outcomes {ev:?}"
    );
    assert_eq!(
        admitted,
        ev[0] + ev[1] + ev[2] + s.below_breaker.0.dropped.load(SeqCst),
        "{name}: admitted calls in = outcomes out"
    );

    // Rate limiter (no queue): every call in was let through, rejected,
    // or, admitted while the bulkhead below was full, cancelled while it
    // waited for the bulkhead in its response future (the limiter decides
    // before the bulkhead reserves anything): at most the calls dropped
    // above it.
    let (passed_limiter, ..) = s.below_limiter.0.get();
    let decided = passed_limiter + l.rejected;
    assert!(decided <= admitted, "{name}: limiter {l:?}");
    assert!(
        admitted - decided <= s.below_breaker.0.dropped.load(SeqCst),
        "{name}: limiter {l:?}: {} calls neither passed, rejected nor dropped",
        admitted - decided
    );

    // Bulkhead: every call in was let through or rejected.
    let (passed_bulkhead, ..) = s.below_bulkhead.0.get();
    assert_eq!(
        passed_limiter,
        passed_bulkhead + b.rejected,
        "{name}: bulkhead"
    );
    assert!(b.completed >= passed_bulkhead, "{name}: {b:?}");

    // Chaos: every call that reached it was rolled for.
    let (in_chaos, ..) = s.above_chaos.0.get();
    assert_eq!(
        in_chaos, passed_bulkhead,
        "{name}: timeout calls its inner once"
    );
    let c = s.chaos.snapshot();
    assert_eq!(c.calls, in_chaos, "{name}: chaos {c:?}");
    for t in [
        &s.above_retry,
        &s.above_breaker,
        &s.below_breaker,
        &s.below_limiter,
        &s.below_bulkhead,
        &s.above_chaos,
    ] {
        let (calls, ok, err, dropped) = t.0.get();
        assert_eq!(
            calls,
            ok + err + dropped,
            "{name}: a layer's calls in = out"
        );
    }
    println!(
        "{name}: {started} calls ({ok} ok, {err} failed, {cancelled} cancelled); \
         {attempts} attempts, {} retries, {} not permitted, {} rate limited, \
         {} shed by the bulkhead, faults injected {:?} (error, latency, hang, ..); \
         {} keys",
        r.retries, bs.not_permitted_calls, l.rejected, b.rejected, c.injected, l.keys,
    );
    assert!(c.injected(FaultKind::Error) > 0 && c.injected(FaultKind::Latency) > 0);
}

/// After the run, with the faults off: the breaker's probe slots are all
/// free. If it is open, after its wait it lets `PROBES` probes through,
/// which close it; a leaked slot would keep rejecting.
async fn probes_are_free(s: &Stack, uri: &http::Uri) {
    s.chaos.disable();
    tokio::time::sleep(OPEN_WAIT * 2).await;
    let mut svc = s.svc.clone();
    for i in 0..PROBES + 1 {
        let req = http::Request::get(uri.clone())
            .header("x-client", i.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await;
        assert!(res.is_ok(), "{}: probe {i}: {:?}", s.name, res.err());
    }
    assert_eq!(s.breaker.state(), State::Closed, "{}", s.name);
}

/// The length of the run: `BUTTRESS_SOAK_SECS`, default 45 (a CI budget),
/// at least 3.
fn run_length() -> Duration {
    let secs = std::env::var("BUTTRESS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(45)
        .max(3);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_full_client_stack_under_faults_and_cancellation_leaks_nothing() {
    let region = Region::new(GLOBAL);
    let length = run_length();
    let app = Router::new().route("/", get(|| async { "ok" }));
    let server = TestServer::start(app).await;
    let http = stack("http", http_upstream(), 0x5eed_0001);
    let local = stack("local", local_upstream(), 0x5eed_0002);
    let http_seen = Arc::new(Callers::default());
    let local_seen = Arc::new(Callers::default());
    let http_uri: http::Uri = server.url("/").parse().unwrap();
    let stacks = [
        (&http, http_uri, http_seen.clone()),
        (
            &local,
            "http://in-process/".parse().unwrap(),
            local_seen.clone(),
        ),
    ];

    // The first third: both stacks; warms every pool, map and buffer.
    let third = length / 3;
    part(&stacks, third, 1).await;
    check(&http, &http_seen);
    check(&local, &local_seen);

    // Then the in-process stack alone, measured: the live heap after the
    // second third and after the last. (The hyper-util client and the
    // axum server keep memory per request cancelled in flight, with or
    // without buttress, so the HTTP stack is left out of the measure.)
    part(&stacks[1..], third, 2).await;
    check(&local, &local_seen);
    let first = live(&region);
    let calls_first = local_seen.started.load(SeqCst);
    part(&stacks[1..], third, 3).await;
    check(&http, &http_seen);
    check(&local, &local_seen);
    let last = live(&region);
    let calls = local_seen.started.load(SeqCst) - calls_first;
    let growth = last - first;
    println!(
        "live heap: {first} bytes after the second third, {last} after the last \
         ({growth:+} bytes over {calls} calls)"
    );
    // Less than a byte per call of the last third, and never above the
    // fixed bound (a short run, `BUTTRESS_SOAK_SECS` of a few seconds,
    // makes fewer calls than the bound has bytes).
    let bound = MEMORY_BOUND.min(calls as i64 / 2);
    assert!(calls >= 4096, "too few calls ({calls}) to measure anything");
    assert!(
        growth <= bound,
        "the live heap grew by {growth} bytes over {calls} calls (bound {bound})"
    );

    for (s, uri, _) in &stacks {
        probes_are_free(s, uri).await;
    }
    server.shutdown().await;
}
