//! The retry layer's contract, under tokio's paused clock: exact delays,
//! hints, limits, budgets, readiness before every attempt, cancellation,
//! events and counters.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::deadline::Deadline;
use buttress_core::{BoxError, CircuitOpen, RateLimited, Registry, RetryExhausted};
use buttress_retry::{
    Backoff, Cause, HttpReplay, HttpRetry, Jitter, NotRetried, RetryBudget, RetryEvent, RetryLayer,
    RetryPolicy, Verdict,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A service answering from a script (then `Ok` forever), recording the
/// instant of each call.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Result<u32, BoxError>>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Scripted {
    fn new(script: Vec<Result<u32, BoxError>>) -> Self {
        Self {
            script: Arc::new(Mutex::new(script.into())),
            calls: Arc::default(),
        }
    }

    fn failing(n: usize) -> Self {
        Self::new((0..n).map(|i| Err(format!("failure {i}").into())).collect())
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }

    fn gaps(&self) -> Vec<Duration> {
        self.calls().windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl Service<u32> for Scripted {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        self.calls.lock().unwrap().push(Instant::now());
        let next = self.script.lock().unwrap().pop_front().unwrap_or(Ok(req));
        std::future::ready(next)
    }
}

type Events = Arc<Mutex<Vec<RetryEvent>>>;

fn recorder() -> (Events, impl Fn(&RetryEvent) + Send + Sync + 'static) {
    let events: Events = Arc::default();
    let sink = events.clone();
    (events, move |e: &RetryEvent| {
        sink.lock().unwrap().push(e.clone())
    })
}

fn not_retried(events: &Events) -> Vec<NotRetried> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RetryEvent::NotRetried { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// The `Scheduled` events seen: (attempt, delay, cause).
fn scheduled(events: &Events) -> Vec<(u32, Duration, Cause)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RetryEvent::Scheduled {
                attempt,
                delay,
                cause,
                ..
            } => Some((*attempt, *delay, *cause)),
            _ => None,
        })
        .collect()
}

/// The delays of the `Scheduled` events seen.
fn delays(events: &Events) -> Vec<Duration> {
    scheduled(events).into_iter().map(|(_, d, _)| d).collect()
}

#[tokio::test(start_paused = true)]
async fn fixed_linear_and_exponential_delays_are_exact_without_jitter() {
    for (backoff, expected) in [
        (Backoff::fixed(MS * 250), vec![MS * 250; 4]),
        (
            Backoff::linear(MS * 100, MS * 50),
            vec![MS * 100, MS * 150, MS * 200, MS * 250],
        ),
        (
            Backoff::exponential(MS * 100),
            vec![MS * 100, MS * 200, MS * 400, MS * 800],
        ),
        (
            Backoff::Exponential {
                initial: MS * 100,
                multiplier: 3.0,
            },
            // 100, 300, 900, then the 1 s cap.
            vec![MS * 100, MS * 300, MS * 900, MS * 1000],
        ),
    ] {
        let svc = Scripted::failing(4);
        let layer = RetryLayer::builder()
            .max_attempts(5)
            .backoff(backoff)
            .jitter(Jitter::None)
            .max_delay(Duration::from_secs(1))
            .build()
            .unwrap();
        let res = layer.layer(svc.clone()).oneshot(7).await.unwrap();
        assert_eq!(res, 7);
        assert_eq!(svc.gaps(), expected, "{backoff:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn seeded_full_jitter_is_reproducible_and_uniform_below_the_base() {
    async fn seeded(seed: u64) -> Vec<Duration> {
        let (events, listener) = recorder();
        let layer = RetryLayer::builder()
            .max_attempts(2)
            .backoff(Backoff::fixed(MS * 100))
            .jitter(Jitter::Full)
            .seed(seed)
            .on_event(listener)
            .build()
            .unwrap();
        for _ in 0..2000 {
            let svc = layer.layer(Scripted::failing(1));
            svc.oneshot(1).await.unwrap();
        }
        delays(&events)
    }
    let a = seeded(11).await;
    assert_eq!(a.len(), 2000);
    assert_eq!(a, seeded(11).await, "the same seed gives the same delays");
    assert_ne!(a, seeded(12).await);
    assert!(a.iter().all(|d| *d < MS * 100));
    let mean = a.iter().sum::<Duration>() / a.len() as u32;
    assert!(
        (MS * 48..=MS * 52).contains(&mean),
        "mean {mean:?} of U(0, 100ms)"
    );
    // Each tenth of the range holds about a tenth of the draws.
    for tenth in 0..10u32 {
        let n = a
            .iter()
            .filter(|d| **d >= MS * (10 * tenth) && **d < MS * (10 * tenth + 10))
            .count();
        assert!((140..=260).contains(&n), "tenth {tenth}: {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn equal_jitter_at_the_cap_still_spreads() {
    let (events, listener) = recorder();
    let layer = RetryLayer::builder()
        .max_attempts(8)
        .backoff(Backoff::exponential(MS * 100))
        .jitter(Jitter::Equal)
        .max_delay(MS * 400)
        .seed(3)
        .on_event(listener)
        .build()
        .unwrap();
    for _ in 0..50 {
        layer.layer(Scripted::failing(7)).oneshot(1).await.unwrap();
    }
    let at_cap: Vec<Duration> = scheduled(&events)
        .into_iter()
        .filter_map(|(attempt, delay, _)| (attempt >= 5).then_some(delay))
        .collect();
    assert_eq!(at_cap.len(), 50 * 4);
    assert!(at_cap.iter().all(|d| *d >= MS * 200 && *d < MS * 400));
    let distinct: std::collections::BTreeSet<_> = at_cap.iter().collect();
    assert!(distinct.len() > 150, "no lockstep at the cap");
}

#[tokio::test(start_paused = true)]
async fn a_hint_is_obeyed_to_the_millisecond_and_never_undercut() {
    let open: BoxError = CircuitOpen::new("b".into(), Some(MS * 1234)).into();
    let limited: BoxError = RateLimited::new("r".into(), Some(MS * 5)).into();
    let svc = Scripted::new(vec![Err(open), Err(limited)]);
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(MS * 40))
        .jitter(Jitter::None)
        .max_delay(Duration::from_secs(5))
        .build()
        .unwrap();
    assert_eq!(layer.layer(svc.clone()).oneshot(1).await.unwrap(), 1);
    // The hint when it is longer than the backoff; the backoff when the
    // hint is shorter.
    assert_eq!(svc.gaps(), [MS * 1234, MS * 40]);
}

#[tokio::test(start_paused = true)]
async fn a_hint_beyond_max_delay_ends_the_retries() {
    let open: BoxError = CircuitOpen::new("b".into(), Some(Duration::from_secs(30))).into();
    let svc = Scripted::new(vec![Err(open)]);
    let (events, listener) = recorder();
    let layer = RetryLayer::builder()
        .max_delay(Duration::from_secs(10))
        .on_event(listener)
        .build()
        .unwrap();
    let err = layer.layer(svc.clone()).oneshot(1).await.unwrap_err();
    // One attempt only: the error is the original one, not wrapped.
    assert!(err.is::<CircuitOpen>());
    assert_eq!(svc.calls().len(), 1);
    assert_eq!(not_retried(&events), [NotRetried::HintTooLong]);
}

#[tokio::test(start_paused = true)]
async fn exhaustion_wraps_the_last_error_and_counts_the_attempts() {
    let svc = Scripted::failing(10);
    let (events, listener) = recorder();
    let layer = RetryLayer::fixed(4, MS * 10)
        .name("upstream")
        .on_event(listener)
        .build()
        .unwrap();
    let err = layer.layer(svc.clone()).oneshot(1).await.unwrap_err();
    let exhausted = err
        .downcast_ref::<RetryExhausted>()
        .expect("RetryExhausted");
    assert_eq!(exhausted.attempts(), 4);
    assert_eq!(exhausted.name(), "upstream");
    assert_eq!(exhausted.last_error().to_string(), "failure 3");
    let source = std::error::Error::source(exhausted).unwrap();
    assert_eq!(source.to_string(), "failure 3");
    assert_eq!(svc.calls().len(), 4);
    let events = events.lock().unwrap();
    let scheduled: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            RetryEvent::Scheduled { attempt, cause, .. } => {
                assert_eq!(*cause, Cause::Error);
                Some(*attempt)
            }
            _ => None,
        })
        .collect();
    assert_eq!(scheduled, [2, 3, 4]);
    assert!(events.contains(&RetryEvent::Exhausted {
        name: "upstream".into(),
        attempts: 4
    }));
}

#[tokio::test(start_paused = true)]
async fn accepted_results_are_returned_at_once_and_unwrapped() {
    // Only errors saying "retry" are retried.
    let policy = |res: &Result<u32, BoxError>| match res {
        Err(e) if e.to_string() == "transient" => Verdict::RETRY,
        _ => Verdict::Accept,
    };
    let svc = Scripted::new(vec![Err("fatal".into())]);
    let layer = RetryLayer::builder().policy(policy).build().unwrap();
    let err = layer.layer(svc.clone()).oneshot(1).await.unwrap_err();
    assert_eq!(err.to_string(), "fatal");
    assert_eq!(svc.calls().len(), 1);

    let svc = Scripted::new(vec![Err("transient".into()), Err("fatal".into())]);
    let err = layer.layer(svc.clone()).oneshot(1).await.unwrap_err();
    assert_eq!(err.to_string(), "fatal", "an accepted error is not wrapped");
    assert_eq!(svc.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn success_after_retries_is_reported_and_counted() {
    let (events, listener) = recorder();
    let registry = Registry::new();
    let layer = RetryLayer::fixed(3, MS)
        .name("counted")
        .registry(&registry)
        .on_event(listener)
        .build()
        .unwrap();
    layer.layer(Scripted::failing(2)).oneshot(1).await.unwrap();
    layer.layer(Scripted::failing(0)).oneshot(1).await.unwrap();
    layer
        .layer(Scripted::failing(9))
        .oneshot(1)
        .await
        .unwrap_err();
    assert!(events.lock().unwrap().contains(&RetryEvent::Succeeded {
        name: "counted".into(),
        retries: 2
    }));
    let handle = registry
        .get::<buttress_retry::RetryHandle>("counted")
        .unwrap();
    let s = handle.snapshot();
    assert_eq!(
        (
            s.successful_without_retry,
            s.successful_with_retry,
            s.failed_with_retry,
            s.failed_without_retry,
            s.retries
        ),
        (1, 1, 1, 0, 4)
    );
    let json = registry.snapshot();
    assert_eq!(json["counted"]["kind"], "retry");
    assert_eq!(json["counted"]["state"]["retries"], 4);
    registry.reset_all();
    assert_eq!(handle.snapshot().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_returns_the_last_result_without_retry() {
    let budget = RetryBudget::builder()
        .percent(0.0)
        .min_per_sec(1)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let (events, listener) = recorder();
    let layer = RetryLayer::fixed(5, MS)
        .budget(budget.clone())
        .on_event(listener)
        .build()
        .unwrap();
    // The floor allows one retry in the window.
    let svc = Scripted::failing(9);
    let err = layer.layer(svc.clone()).oneshot(1).await.unwrap_err();
    assert_eq!(svc.calls().len(), 2);
    assert_eq!(err.downcast_ref::<RetryExhausted>().unwrap().attempts(), 2);
    let svc = Scripted::failing(9);
    let err = layer.layer(svc.clone()).oneshot(1).await.unwrap_err();
    assert_eq!(svc.calls().len(), 1);
    assert_eq!(err.to_string(), "failure 0");
    let spent = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, RetryEvent::BudgetExhausted { .. }))
        .count();
    assert_eq!(spent, 2);
    let b = budget.snapshot();
    assert_eq!((b.deposits, b.withdrawals, b.refusals), (2, 1, 2));
    // A second later the floor allows one retry again. The budget's slots
    // come from a clock ticker task: `advance` yields once, but the
    // scheduler polls this task again before the ticker, so yield again.
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    let svc = Scripted::failing(1);
    assert_eq!(layer.layer(svc.clone()).oneshot(1).await.unwrap(), 1);
    assert_eq!(svc.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_an_attempt_that_would_start_too_late() {
    let (events, listener) = recorder();
    let layer = RetryLayer::fixed(10, MS * 100)
        .max_elapsed(MS * 250)
        .on_event(listener)
        .build()
        .unwrap();
    let svc = Scripted::failing(10);
    let err = layer.layer(svc.clone()).oneshot(1).await.unwrap_err();
    // Attempts at 0, 100 and 200 ms; the next would start at 300 > 250.
    assert_eq!(svc.calls().len(), 3);
    assert_eq!(err.downcast_ref::<RetryExhausted>().unwrap().attempts(), 3);
    assert_eq!(not_retried(&events), [NotRetried::MaxElapsed]);
}

fn http_503() -> http::Response<()> {
    http::Response::builder().status(503).body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_after_the_callers_deadline() {
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let inner = tower::service_fn(
        move |req: http::Request<buttress_retry::ReplayBody<Full<Bytes>>>| {
            *seen.lock().unwrap() += 1;
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                assert_eq!(body, "payload");
                Ok::<_, BoxError>(http_503())
            }
        },
    );
    let (events, listener) = recorder();
    let layer = RetryLayer::for_http()
        .max_attempts(10)
        .backoff(Backoff::fixed(MS * 100))
        .jitter(Jitter::None)
        .on_event(listener)
        .build()
        .unwrap();
    let mut req = http::Request::put("/item")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    req.extensions_mut()
        .insert(Deadline(Instant::now() + MS * 250));
    let res = layer.layer(inner).oneshot(req).await.unwrap();
    // The last response comes back as it is.
    assert_eq!(res.status(), 503);
    // Attempts at 0, 100 and 200 ms; one at 300 would be past the deadline.
    assert_eq!(*calls.lock().unwrap(), 3);
    assert_eq!(not_retried(&events), [NotRetried::Deadline]);
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_sets_the_deadline() {
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let inner = tower::service_fn(
        move |_req: http::Request<buttress_retry::ReplayBody<Full<Bytes>>>| {
            *seen.lock().unwrap() += 1;
            async {
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .header("grpc-status", "14")
                        .body(())
                        .unwrap(),
                )
            }
        },
    );
    let layer = RetryLayer::for_grpc()
        .max_attempts(10)
        .backoff(Backoff::fixed(MS * 30))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let req = http::Request::post("/pkg.Svc/Method")
        .header("grpc-timeout", "100m")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = layer.layer(inner).oneshot(req).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    // 0, 30, 60, 90 ms; 120 ms is past the 100 ms grpc-timeout.
    assert_eq!(*calls.lock().unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn grpc_pushback_refusal_is_not_retried() {
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let inner = tower::service_fn(
        move |_req: http::Request<buttress_retry::ReplayBody<Full<Bytes>>>| {
            *seen.lock().unwrap() += 1;
            async {
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .header("grpc-status", "14")
                        .header("grpc-retry-pushback-ms", "-1")
                        .body(())
                        .unwrap(),
                )
            }
        },
    );
    let (events, listener) = recorder();
    let layer = RetryLayer::for_grpc().on_event(listener).build().unwrap();
    let req = http::Request::post("/pkg.Svc/Method")
        .body(Full::new(Bytes::new()))
        .unwrap();
    layer.layer(inner).oneshot(req).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 1);
    assert_eq!(not_retried(&events), [NotRetried::Refused]);
}

#[tokio::test(start_paused = true)]
async fn a_post_without_idempotency_key_is_not_retried_but_with_one_it_is() {
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let inner = tower::service_fn(
        move |_req: http::Request<buttress_retry::ReplayBody<Full<Bytes>>>| {
            *seen.lock().unwrap() += 1;
            async { Ok::<_, BoxError>(http_503()) }
        },
    );
    let (events, listener) = recorder();
    let layer = RetryLayer::for_http()
        .max_attempts(3)
        .on_event(listener)
        .build()
        .unwrap();
    let post = || http::Request::post("/orders").body(Full::new(Bytes::from_static(b"{}")));
    let res = layer
        .layer(inner.clone())
        .oneshot(post().unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(*calls.lock().unwrap(), 1);
    // A POST without a key cannot be sent again after a response: the 503
    // goes back as it is, without asking the policy about it.
    assert_eq!(not_retried(&events), []);
    assert!(scheduled(&events).is_empty());

    let keyed = http::Request::post("/orders")
        .header("idempotency-key", "7f3a")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    layer.layer(inner).oneshot(keyed).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 1 + 3);
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_is_made_ready_before_every_retry() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let layer = RetryLayer::fixed(3, MS * 10).build().unwrap();
    let mut svc = layer.layer(mock);
    handle.allow(1);
    assert_ready_ok!(tokio_test::task::spawn(()).enter(|cx, _| svc.poll_ready(cx)));
    let mut fut = tokio_test::task::spawn(svc.call(5));
    assert_pending!(fut.poll());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 5);
    send.send_error("boom");
    // The retry waits its 10 ms, then for readiness: no capacity is given.
    assert_pending!(fut.poll());
    tokio::time::advance(MS * 10).await;
    assert_pending!(fut.poll());
    assert!(
        handle.poll_request().is_pending(),
        "sent to an unready service"
    );
    handle.allow(1);
    assert!(fut.is_woken());
    assert_pending!(fut.poll());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 5);
    send.send_response(9);
    assert_eq!(fut.await.unwrap(), 9);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_while_it_waits_cancels_the_retries() {
    let svc = Scripted::failing(5);
    let layer = RetryLayer::fixed(5, MS * 100).build().unwrap();
    let mut retry = layer.layer(svc.clone());
    let mut fut = tokio_test::task::spawn(retry.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    assert_eq!(svc.calls().len(), 1);
    drop(fut);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(svc.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn zero_delay_retries_do_not_sleep() {
    let svc = Scripted::failing(2);
    let layer = RetryLayer::fixed(3, Duration::ZERO).build().unwrap();
    let mut retry = layer.layer(svc.clone());
    let mut fut = tokio_test::task::spawn(retry.ready().await.unwrap().call(4));
    // No timer: each retry only yields its turn (it wakes itself at once,
    // so the runtime's other tasks run between attempts), and the clock
    // does not move.
    for attempt in 1..=2 {
        assert_pending!(fut.poll());
        assert!(fut.is_woken(), "attempt {attempt} did not wake itself");
    }
    assert_eq!(assert_ready_ok!(fut.poll()), 4);
    assert_eq!(svc.gaps(), [Duration::ZERO; 2]);
}

#[test]
fn invalid_configs_are_config_errors() {
    let field = |r: Result<RetryLayer, buttress_core::ConfigError>| r.unwrap_err().field();
    assert_eq!(
        field(RetryLayer::builder().max_attempts(0).build()),
        "max_attempts"
    );
    assert_eq!(
        field(RetryLayer::builder().max_delay(Duration::ZERO).build()),
        "max_delay"
    );
    assert_eq!(
        field(RetryLayer::builder().max_elapsed(Duration::ZERO).build()),
        "max_elapsed"
    );
    assert_eq!(
        field(
            RetryLayer::builder()
                .jitter(Jitter::Proportional(f64::NAN))
                .build()
        ),
        "jitter"
    );
    assert_eq!(
        field(
            RetryLayer::builder()
                .jitter(Jitter::Proportional(-0.5))
                .build()
        ),
        "jitter"
    );
    assert_eq!(field(RetryLayer::builder().name("").build()), "name");
    let registry = Registry::new();
    RetryLayer::builder()
        .name("dup")
        .registry(&registry)
        .build()
        .unwrap();
    assert_eq!(
        field(
            RetryLayer::builder()
                .name("dup")
                .registry(&registry)
                .build()
        ),
        "name"
    );
}

#[test]
fn services_futures_and_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    type Svc = buttress_retry::Retry<tower::util::BoxCloneSyncService<u32, u32, BoxError>>;
    send_sync::<Svc>();
    send_sync::<RetryLayer>();
    send_sync::<buttress_retry::RetryHandle>();
    send_sync::<RetryBudget>();
    fn send<T: Send>(_: &T) {}
    let svc: Svc =
        RetryLayer::builder()
            .build()
            .unwrap()
            .layer(tower::util::BoxCloneSyncService::new(tower::service_fn(
                |x: u32| async move { Ok::<_, BoxError>(x) },
            )));
    let mut svc = svc;
    let fut = svc.call(1);
    send(&fut);
}

#[test]
fn http_policy_and_replay_are_usable_as_plain_values() {
    // The presets' parts are public, for custom stacks.
    let policy = HttpRetry::new();
    let res: Result<http::Response<()>, BoxError> = Ok(http_503());
    assert_eq!(policy.check(&res), Verdict::RETRY);
    assert_eq!(HttpReplay::new().limit(), 64 * 1024);
}

/// One scripted attempt result for the property test.
#[derive(Debug, Clone, Copy)]
enum Step {
    Ok,
    Fail,
    /// A failure with a server hint of this many milliseconds.
    Hint(u64),
}

proptest::proptest! {
    /// For any script of results, the number of attempts, the time they
    /// take and what the caller gets equal a plain model of the rules:
    /// stop at the first success, after `max_attempts`, or at a hint beyond
    /// `max_delay`; otherwise wait max(backoff, hint).
    #[test]
    fn attempts_delays_and_results_follow_the_model(
        script in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(Step::Ok),
                proptest::strategy::Just(Step::Fail),
                proptest::strategy::Strategy::prop_map(0u64..800, Step::Hint),
            ],
            1..8,
        ),
        max_attempts in 1u32..7,
    ) {
        const BACKOFF: u64 = 50;
        const MAX_DELAY: u64 = 500;
        // The model.
        let mut model_calls = 0u32;
        let mut model_elapsed = 0u64;
        let mut model_result: Result<u32, (u32, bool)> = Ok(1); // Err((attempts, wrapped))
        for (i, step) in script.iter().chain(std::iter::repeat(&Step::Ok)).enumerate() {
            let attempt = i as u32 + 1;
            model_calls = attempt;
            let hint = match step {
                Step::Ok => { model_result = Ok(1); break; }
                Step::Fail => 0,
                Step::Hint(h) => *h,
            };
            if attempt >= max_attempts || hint > MAX_DELAY {
                model_result = Err((attempt, attempt > 1));
                break;
            }
            model_elapsed += BACKOFF.max(hint);
        }

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let results = script
                .iter()
                .map(|s| match s {
                    Step::Ok => Ok(1),
                    Step::Fail => Err::<u32, BoxError>("fail".into()),
                    Step::Hint(h) => Err(CircuitOpen::new("b".into(), Some(MS * *h as u32)).into()),
                })
                .collect();
            let svc = Scripted::new(results);
            let layer = RetryLayer::builder()
                .max_attempts(max_attempts)
                .backoff(Backoff::fixed(MS * BACKOFF as u32))
                .jitter(Jitter::None)
                .max_delay(MS * MAX_DELAY as u32)
                .build()
                .unwrap();
            let start = Instant::now();
            let got = layer.layer(svc.clone()).oneshot(1).await;
            assert_eq!(svc.calls().len() as u32, model_calls, "{script:?}");
            assert_eq!(start.elapsed(), MS * model_elapsed as u32, "{script:?}");
            match (got, model_result) {
                (Ok(v), Ok(m)) => assert_eq!(v, m),
                (Err(e), Err((attempts, true))) => {
                    let e = e.downcast_ref::<RetryExhausted>().expect("wrapped");
                    assert_eq!(e.attempts(), attempts);
                }
                (Err(e), Err((_, false))) => assert!(!e.is::<RetryExhausted>()),
                (got, want) => panic!("got {got:?}, model {want:?} for {script:?}"),
            }
        });
    }
}

type HttpReq = http::Request<buttress_retry::ReplayBody<Chunks>>;

/// A streaming request body: its chunks, one frame each.
struct Chunks(VecDeque<Bytes>);

impl Chunks {
    fn of(parts: &[&'static str]) -> Self {
        Chunks(
            parts
                .iter()
                .map(|p| Bytes::from_static(p.as_bytes()))
                .collect(),
        )
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Reads the first frame of the body only, and answers 503.
async fn first_frame(req: HttpReq) -> Bytes {
    let mut body = req.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    frame.into_data().unwrap()
}

/// A hand-written response future that keeps the request body, half read,
/// in its own field after it has completed.
struct HoldsBody {
    body: buttress_retry::ReplayBody<Chunks>,
    seen: Arc<Mutex<Vec<Bytes>>>,
}

impl std::future::Future for HoldsBody {
    type Output = Result<http::Response<()>, BoxError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let frame = std::task::ready!(http_body::Body::poll_frame(
            std::pin::Pin::new(&mut self.body),
            cx
        ));
        let data = frame.unwrap().unwrap().into_data().unwrap();
        self.seen.lock().unwrap().push(data);
        std::task::Poll::Ready(Ok(http_503()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_held_by_the_finished_attempt_is_replayed() {
    // The finished attempt's future still owns the body: the retry must
    // replay it once that future is dropped, not fail with BodyInUse.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let inner = tower::service_fn(move |req: HttpReq| HoldsBody {
        body: req.into_body(),
        seen: record.clone(),
    });
    let (events, listener) = recorder();
    let layer = RetryLayer::for_http()
        .max_attempts(3)
        .on_event(listener)
        .build()
        .unwrap();
    let req = http::Request::put("/x")
        .body(Chunks::of(&["ab", "cd"]))
        .unwrap();
    let res = layer.layer(inner).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(*seen.lock().unwrap(), ["ab", "ab", "ab"]);
    assert_eq!(not_retried(&events), []);
}

#[tokio::test(start_paused = true)]
async fn a_body_released_during_the_delay_is_replayed_and_one_never_released_is_not() {
    // The service hands the half-read body to a task (as a connection task
    // does) that drops it after `hold`.
    async fn run(hold: Duration) -> (u32, Vec<NotRetried>, buttress_retry::BudgetSnapshot) {
        let calls = Arc::new(Mutex::new(0u32));
        let counter = calls.clone();
        let inner = tower::service_fn(move |req: HttpReq| {
            *counter.lock().unwrap() += 1;
            async move {
                let mut body = req.into_body();
                let _ = body.frame().await;
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    drop(body);
                });
                Ok::<_, BoxError>(http_503())
            }
        });
        let budget = RetryBudget::builder().build().unwrap();
        let (events, listener) = recorder();
        let layer = RetryLayer::for_http()
            .max_attempts(2)
            .backoff(Backoff::fixed(MS * 100))
            .jitter(Jitter::None)
            .budget(budget.clone())
            .on_event(listener)
            .build()
            .unwrap();
        let req = http::Request::put("/x")
            .body(Chunks::of(&["ab", "cd"]))
            .unwrap();
        let res = layer.layer(inner).oneshot(req).await.unwrap();
        assert_eq!(res.status(), 503);
        let calls = *calls.lock().unwrap();
        (calls, not_retried(&events), budget.snapshot())
    }
    let (calls, reasons, budget) = run(MS * 5).await;
    assert_eq!((calls, reasons, budget.withdrawals), (2, vec![], 1));
    // Still held when the delay is over: not retried, the 503 comes back,
    // and the retry taken from the budget is given back.
    let (calls, reasons, budget) = run(Duration::from_secs(60)).await;
    assert_eq!(calls, 1);
    assert_eq!(reasons, [NotRetried::BodyInUse]);
    assert_eq!(budget.withdrawals, 0);
}

#[tokio::test(start_paused = true)]
async fn a_post_is_retried_only_when_it_provably_never_left() {
    let errors: Arc<Mutex<VecDeque<BoxError>>> = Arc::default();
    let script = errors.clone();
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let inner = tower::service_fn(move |req: HttpReq| {
        *counter.lock().unwrap() += 1;
        let next = script.lock().unwrap().pop_front();
        async move {
            let _ = first_frame(req).await;
            match next {
                Some(e) => Err(e),
                None => Ok(http::Response::new(())),
            }
        }
    });
    let (events, listener) = recorder();
    let layer = RetryLayer::for_http()
        .max_attempts(3)
        .on_event(listener)
        .build()
        .unwrap();
    let post = || {
        http::Request::post("/orders")
            .body(Chunks::of(&["{}"]))
            .unwrap()
    };
    let refused =
        || -> BoxError { std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into() };
    let open = || -> BoxError { CircuitOpen::new("b".into(), Some(MS)).into() };
    let reset = || -> BoxError { std::io::Error::from(std::io::ErrorKind::ConnectionReset).into() };

    errors.lock().unwrap().extend([refused(), open()]);
    layer.layer(inner.clone()).oneshot(post()).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 3);
    let causes: Vec<Cause> = scheduled(&events).into_iter().map(|(_, _, c)| c).collect();
    assert_eq!(causes, [Cause::ConnectError, Cause::Rejected]);

    // A reset may come after the server processed the POST.
    errors.lock().unwrap().push_back(reset());
    let err = layer
        .layer(inner.clone())
        .oneshot(post())
        .await
        .unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 4);
    assert!(err.is::<std::io::Error>());
    assert_eq!(not_retried(&events), [NotRetried::NonIdempotent]);

    // The gRPC preset: the same rule for errors, any method for statuses.
    let grpc = RetryLayer::for_grpc().max_attempts(3).build().unwrap();
    errors.lock().unwrap().push_back(reset());
    grpc.layer(inner.clone()).oneshot(post()).await.unwrap_err();
    assert_eq!(
        *calls.lock().unwrap(),
        5,
        "a reset gRPC call is not retried"
    );
    errors.lock().unwrap().push_back(refused());
    grpc.layer(inner).oneshot(post()).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 7, "a refused gRPC call is");
}

#[tokio::test(start_paused = true)]
async fn decorrelated_and_proportional_jitter_through_the_layer() {
    let (events, listener) = recorder();
    let layer = RetryLayer::builder()
        .max_attempts(6)
        .backoff(Backoff::exponential(MS * 10))
        .jitter(Jitter::Decorrelated)
        .max_delay(MS * 200)
        .seed(5)
        .on_event(listener)
        .build()
        .unwrap();
    for _ in 0..100 {
        layer.layer(Scripted::failing(5)).oneshot(1).await.unwrap();
    }
    let d = delays(&events);
    assert_eq!(d.len(), 500);
    assert!(d.iter().all(|d| *d >= MS * 10 && *d <= MS * 200));
    // Each delay is at most three times the one before, within a call.
    for call in d.chunks(5) {
        for w in call.windows(2) {
            assert!(w[1] <= (w[0] * 3).max(MS * 10), "{w:?}");
        }
    }

    let (events, listener) = recorder();
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::fixed(MS * 100))
        .jitter(Jitter::Proportional(0.2))
        .seed(6)
        .on_event(listener)
        .build()
        .unwrap();
    for _ in 0..200 {
        layer.layer(Scripted::failing(1)).oneshot(1).await.unwrap();
    }
    let d = delays(&events);
    assert!(d.iter().all(|d| *d >= MS * 80 && *d <= MS * 120));
    assert!(d.iter().any(|d| *d < MS * 90) && d.iter().any(|d| *d > MS * 110));

    let zero = RetryLayer::builder()
        .backoff(Backoff::fixed(Duration::ZERO))
        .jitter(Jitter::Decorrelated)
        .build();
    assert_eq!(zero.unwrap_err().field(), "jitter");
}

#[derive(Clone)]
struct FailsReadyAfterFirstCall {
    called: Arc<Mutex<bool>>,
}

impl Service<u32> for FailsReadyAfterFirstCall {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if *self.called.lock().unwrap() {
            std::task::Poll::Ready(Err("pool closed".into()))
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _: u32) -> Self::Future {
        *self.called.lock().unwrap() = true;
        std::future::ready(Err("first attempt failed".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_before_a_retry_ends_the_call_wrapped_and_counted() {
    let (events, listener) = recorder();
    let layer = RetryLayer::fixed(3, MS).on_event(listener).build().unwrap();
    let handle = layer.handle();
    let svc = FailsReadyAfterFirstCall {
        called: Arc::default(),
    };
    let err = layer.layer(svc).oneshot(1).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetryExhausted>().unwrap();
    assert_eq!(exhausted.attempts(), 1);
    assert_eq!(exhausted.last_error().to_string(), "pool closed");
    assert_eq!(not_retried(&events), [NotRetried::NotReady]);
    assert_eq!(handle.snapshot().failed_with_retry, 1);
}

#[tokio::test(start_paused = true)]
async fn a_config_applied_to_a_preset_keeps_the_presets_policy() {
    let config: buttress_retry::RetryConfig = serde_json::from_str(
        r#"{ "max_attempts": 2, "backoff": { "kind": "fixed", "delay": "10ms" }, "jitter": "none" }"#,
    )
    .unwrap();
    let layer = config
        .apply(RetryLayer::for_http())
        .unwrap()
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_req: HttpReq| {
        seen.lock().unwrap().push(Instant::now());
        // A 500 is not retried by the HTTP preset; a 503 is.
        let status = if seen.lock().unwrap().len() == 1 {
            503
        } else {
            500
        };
        async move { Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap()) }
    });
    let req = http::Request::get("/").body(Chunks::of(&[])).unwrap();
    let res = layer.layer(inner).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 500);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1] - calls[0], MS * 10);
}

#[tokio::test(start_paused = true)]
async fn the_fixed_preset_leaves_room_for_server_hints() {
    let open: BoxError = CircuitOpen::new("b".into(), Some(MS * 150)).into();
    let svc = Scripted::new(vec![Err(open)]);
    let layer = RetryLayer::fixed(3, MS * 100).build().unwrap();
    assert_eq!(layer.layer(svc.clone()).oneshot(1).await.unwrap(), 1);
    assert_eq!(svc.gaps(), [MS * 150]);
}

/// A policy that counts how often it is asked, and retries every result.
#[derive(Clone, Default)]
struct CountingPolicy(Arc<Mutex<u32>>);

impl CountingPolicy {
    fn asked(&self) -> u32 {
        *self.0.lock().unwrap()
    }
}

impl<Res> RetryPolicy<Res> for CountingPolicy {
    fn check(&self, _: &Result<Res, BoxError>) -> Verdict {
        *self.0.lock().unwrap() += 1;
        Verdict::RETRY
    }
}

/// Requests that are never kept: every retry is refused up front.
#[derive(Debug, Clone, Copy)]
struct NeverKept;

impl buttress_retry::ReplayRequest<u32> for NeverKept {
    type Request = u32;
    type Replay = buttress_retry::Cloned<u32>;

    fn first(&self, req: u32) -> (u32, Result<Self::Replay, NotRetried>) {
        (req, Err(NotRetried::BodyTooLarge))
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_replayed_is_not_put_to_the_policy_or_the_budget() {
    let policy = CountingPolicy::default();
    let budget = RetryBudget::builder()
        .percent(100.0)
        .min_per_sec(0)
        .build()
        .unwrap();
    let (events, listener) = recorder();
    let layer = RetryLayer::fixed(3, MS)
        .policy(policy.clone())
        .replay(NeverKept)
        .budget(budget.clone())
        .on_event(listener)
        .build()
        .unwrap();
    let inner = Scripted::failing(3);
    let err = layer.layer(inner.clone()).oneshot(1).await.unwrap_err();
    assert!(!err.is::<RetryExhausted>(), "one attempt, unwrapped");
    assert_eq!(inner.calls().len(), 1);
    assert_eq!(policy.asked(), 0, "the policy is not asked");
    assert_eq!(not_retried(&events), [NotRetried::BodyTooLarge]);
    assert!(scheduled(&events).is_empty());
    let b = budget.snapshot();
    assert_eq!((b.deposits, b.withdrawals, b.refusals), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_body_too_large_to_replay_is_not_put_to_the_policy_or_the_budget() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let inner = tower::service_fn(move |req: HttpReq| {
        *counter.lock().unwrap() += 1;
        async move {
            // The server reads the whole body, then answers 503.
            let _ = req.into_body().collect().await;
            Ok::<_, BoxError>(http_503())
        }
    });
    let policy = CountingPolicy::default();
    // A spent budget: asking it would count a refusal and emit
    // `BudgetExhausted`.
    let budget = RetryBudget::builder()
        .percent(0.0)
        .min_per_sec(0)
        .build()
        .unwrap();
    let (events, listener) = recorder();
    let layer = RetryLayer::for_http()
        .body_limit(3)
        .policy(policy.clone())
        .budget(budget.clone())
        .on_event(listener)
        .build()
        .unwrap();
    let req = http::Request::put("/x")
        .body(Chunks::of(&["ab", "cd"]))
        .unwrap();
    let res = layer.layer(inner.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(*calls.lock().unwrap(), 1);
    assert_eq!(policy.asked(), 0, "the policy is not asked");
    // Only the end of the call is reported: no retry, refusal or
    // `BudgetExhausted`.
    assert_eq!(
        *events.lock().unwrap(),
        [RetryEvent::Finished {
            name: "retry".into(),
            succeeded: true,
            retried: false,
            exhausted: false,
        }]
    );
    let b = budget.snapshot();
    assert_eq!((b.deposits, b.withdrawals, b.refusals), (1, 0, 0));

    // The same request within the limit is put to the policy, and to the
    // spent budget, which refuses the retry.
    let req = http::Request::put("/x").body(Chunks::of(&["ab"])).unwrap();
    layer.layer(inner).oneshot(req).await.unwrap();
    assert_eq!(policy.asked(), 1);
    let b = budget.snapshot();
    assert_eq!((b.deposits, b.withdrawals, b.refusals), (2, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn an_error_of_a_post_that_may_have_left_is_not_put_to_the_policy_or_the_budget() {
    let inner = tower::service_fn(move |req: HttpReq| async move {
        let _ = first_frame(req).await;
        Err::<http::Response<()>, BoxError>(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
        )
    });
    let policy = CountingPolicy::default();
    let budget = RetryBudget::builder()
        .percent(100.0)
        .min_per_sec(0)
        .build()
        .unwrap();
    let (events, listener) = recorder();
    let layer = RetryLayer::for_http()
        .policy(policy.clone())
        .budget(budget.clone())
        .on_event(listener)
        .build()
        .unwrap();
    let req = http::Request::post("/orders")
        .body(Chunks::of(&["{}"]))
        .unwrap();
    let err = layer.layer(inner).oneshot(req).await.unwrap_err();
    assert!(err.is::<std::io::Error>());
    assert_eq!(policy.asked(), 0, "the policy is not asked");
    assert_eq!(not_retried(&events), [NotRetried::NonIdempotent]);
    assert!(scheduled(&events).is_empty());
    let b = budget.snapshot();
    assert_eq!((b.deposits, b.withdrawals, b.refusals), (1, 0, 0));
}

#[test]
fn delays_beyond_an_hour_are_refused_instead_of_waiting_for_ever() {
    let err = RetryLayer::exponential(3, Duration::MAX, Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_delay");
    let err = RetryLayer::fixed(3, Duration::MAX).build().unwrap_err();
    assert_eq!(err.field(), "max_delay");
    let err = RetryLayer::builder()
        .max_elapsed(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_elapsed");
    // A huge initial delay is capped by max_delay: allowed, and bounded.
    RetryLayer::exponential(3, Duration::MAX, Duration::from_secs(1))
        .build()
        .unwrap();
}

#[test]
fn many_attempts_need_a_budget_a_deadline_or_an_explicit_opt_in() {
    let err = RetryLayer::builder()
        .max_attempts(u32::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_attempts");
    assert!(err.reason().contains("unbounded_retries"), "{err}");
    RetryLayer::builder().max_attempts(10).build().unwrap();
    RetryLayer::builder()
        .max_attempts(u32::MAX)
        .budget(RetryBudget::builder().build().unwrap())
        .build()
        .unwrap();
    RetryLayer::builder()
        .max_attempts(u32::MAX)
        .max_elapsed(Duration::from_secs(10))
        .build()
        .unwrap();
    RetryLayer::builder()
        .max_attempts(u32::MAX)
        .unbounded_retries()
        .build()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn huge_initial_delay_waits_max_delay_not_for_ever() {
    let svc = Scripted::failing(1);
    let layer = RetryLayer::exponential(2, Duration::MAX, Duration::from_secs(1))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let start = Instant::now();
    assert_eq!(layer.layer(svc.clone()).oneshot(7).await.unwrap(), 7);
    assert_eq!(svc.gaps(), vec![Duration::from_secs(1)]);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

/// A retry over a service that is `Send` but not `Sync` (tower's
/// `BoxCloneService`) is `Send`, and so is its future: it can be boxed and
/// spawned.
#[tokio::test]
async fn a_send_but_not_sync_service_makes_a_send_retry() {
    fn assert_send<T: Send>(_: &T) {}
    let inner = tower::util::BoxCloneService::new(tower::service_fn(|x: u32| async move {
        Ok::<_, buttress_core::BoxError>(x)
    }));
    let svc = buttress_retry::RetryLayer::fixed(2, std::time::Duration::ZERO)
        .build()
        .unwrap()
        .layer(inner);
    assert_send(&svc);
    let fut = svc.clone().oneshot(7);
    assert_send(&fut);
    assert_eq!(tokio::spawn(fut).await.unwrap().unwrap(), 7);
}

/// A request that counts its clones.
#[derive(Debug)]
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(self.0.clone())
    }
}

/// The facade's empty slot: a pass-through retry sends each request once,
/// failures included, never clones it, and counts nothing; events and
/// the budget are untouched.
#[tokio::test(start_paused = true)]
async fn a_pass_through_retry_sends_each_request_once_and_counts_nothing() {
    let (events, sink) = recorder();
    let layer = RetryLayer::builder()
        .max_attempts(5)
        .on_event(sink)
        .build()
        .unwrap()
        .into_pass_through();
    let svc = Scripted::failing(3);
    let mut retrying = layer.layer(svc.clone());
    for i in 0..3 {
        let err = retrying.ready().await.unwrap().call(i).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("failure {i}"),
            "the inner error as it is"
        );
    }
    assert_eq!(retrying.ready().await.unwrap().call(9).await.unwrap(), 9);
    assert_eq!(svc.calls().len(), 4, "one attempt per call");

    let clones = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut once = RetryLayer::builder()
        .build()
        .unwrap()
        .into_pass_through()
        .layer(tower::service_fn(|_: Counted| async {
            Ok::<_, BoxError>(1)
        }));
    let req = Counted(clones.clone());
    assert_eq!(once.ready().await.unwrap().call(req).await.unwrap(), 1);
    assert_eq!(
        clones.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "never cloned"
    );

    let snap = layer.handle().snapshot();
    assert_eq!(
        (
            snap.successful_without_retry,
            snap.failed_without_retry,
            snap.retries
        ),
        (0, 0, 0)
    );
    assert!(events.lock().unwrap().is_empty());
}
