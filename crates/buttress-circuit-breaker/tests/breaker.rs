//! One test per rule of the breaker, under tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_circuit_breaker::error::CircuitOpen;
use buttress_circuit_breaker::{
    CircuitBreakerBuilder, CircuitBreakerConfig, CircuitBreakerEvent, CircuitBreakerHandle,
    CircuitBreakerLayer, State,
};
use buttress_core::{BoxError, HttpClassifier, Outcome, Registry};
use tokio::time;
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{service_fn, Layer, Service, ServiceExt};

/// What the inner service does with a request.
#[derive(Debug, Clone, Copy)]
enum Call {
    Ok,
    Fail,
    /// Succeeds after this many milliseconds.
    SlowOk(u64),
    /// Fails after this many milliseconds.
    SlowFail(u64),
}

use Call::*;

type Svc = buttress_circuit_breaker::CircuitBreaker<
    tower::util::ServiceFn<fn(Call) -> futures_like::Fut>,
    buttress_core::ErrorsAsFailures,
>;

mod futures_like {
    use super::Call;
    use std::future::Future;
    use std::pin::Pin;

    pub(crate) type Fut = Pin<Box<dyn Future<Output = Result<u8, &'static str>> + Send>>;

    pub(crate) fn run(call: Call) -> Fut {
        Box::pin(async move {
            match call {
                Call::Ok => Ok(1),
                Call::Fail => Err("boom"),
                Call::SlowOk(ms) => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    Ok(1)
                }
                Call::SlowFail(ms) => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    Err("boom")
                }
            }
        })
    }
}

fn svc(layer: &CircuitBreakerLayer) -> Svc {
    layer.layer(service_fn(
        futures_like::run as fn(Call) -> futures_like::Fut,
    ))
}

fn builder() -> CircuitBreakerBuilder {
    CircuitBreakerLayer::builder()
        .name("cb")
        .window_size(4)
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(2)
}

async fn call(s: &Svc, c: Call) -> Result<u8, BoxError> {
    s.clone().oneshot(c).await
}

async fn calls(s: &Svc, cs: &[Call]) {
    for c in cs {
        let _ = call(s, *c).await;
    }
}

fn is_open_err(r: &Result<u8, BoxError>) -> bool {
    matches!(r, Err(e) if e.is::<CircuitOpen>())
}

fn recorder(events: &Arc<Mutex<Vec<(State, State)>>>) -> impl Fn(&CircuitBreakerEvent) {
    let events = events.clone();
    move |e: &CircuitBreakerEvent| {
        if let CircuitBreakerEvent::StateTransition { from, to, .. } = e {
            events.lock().unwrap().push((*from, *to));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn opens_when_the_failure_rate_reaches_the_threshold() {
    let l = builder().failure_rate_threshold(50.0).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Ok, Fail, Ok]).await;
    assert_eq!(l.handle().state(), State::Closed, "below minimum_calls");
    calls(&s, &[Fail]).await; // 2 of 4 = 50 %: >= trips
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_just_below_the_threshold() {
    let l = builder().failure_rate_threshold(51.0).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Ok, Fail, Ok, Fail]).await;
    assert_eq!(l.handle().state(), State::Closed);
    let snap = l.handle().snapshot();
    assert_eq!(snap.failure_rate, Some(50.0));
    assert_eq!((snap.buffered_calls, snap.failed_calls), (4, 2));
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_is_clamped_to_the_window_size() {
    let l = builder().minimum_calls(1_000).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_window_slides_over_the_last_calls() {
    let l = builder().failure_rate_threshold(75.0).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Ok, Ok, Ok, Fail, Fail]).await;
    // Window: Ok Ok Fail Fail = 50 %.
    assert_eq!(l.handle().state(), State::Closed);
    calls(&s, &[Fail]).await; // Ok Fail Fail Fail = 75 %
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_and_slow_failures_count_in_both_rates() {
    let l = builder()
        .slow_call_duration(Duration::from_millis(100))
        .slow_call_rate_threshold(50.0)
        .failure_rate_threshold(100.0)
        .build()
        .unwrap();
    let s = svc(&l);
    // Exactly 100 ms is not slow: strictly greater is.
    calls(&s, &[SlowOk(100), SlowFail(101), Ok]).await;
    let snap = l.handle().snapshot();
    assert_eq!((snap.failed_calls, snap.slow_calls), (1, 1));
    calls(&s, &[SlowOk(150)]).await;
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_mode_trips_on_a_run_and_resets_on_success() {
    let l = builder().consecutive_failures(3).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Ok, Fail, Fail]).await;
    assert_eq!(l.handle().state(), State::Closed);
    assert_eq!(l.handle().snapshot().failed_calls, 2);
    calls(&s, &[Fail]).await;
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_through_the_call_with_the_exact_retry_hint() {
    let l = builder().build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(Duration::from_millis(2_500)).await;
    let mut ready = s.clone();
    // Not an error from poll_ready.
    let fut = ready.ready().await.expect("ready even when open").call(Ok);
    let err = fut.await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(open.name(), "cb");
    assert_eq!(open.retry_after(), Some(Duration::from_millis(7_500)));
    assert_eq!(
        buttress_core::error::retry_after(&*err),
        Some(Duration::from_millis(7_500))
    );
    assert_eq!(l.handle().snapshot().not_permitted_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn half_open_on_the_next_call_after_the_wait_then_closes_on_good_probes() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let l = builder().on_event(recorder(&events)).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(Duration::from_secs(10)).await;
    assert_eq!(l.handle().state(), State::Open, "lazy: no call yet");
    assert!(call(&s, Ok).await.is_ok());
    assert_eq!(l.handle().state(), State::HalfOpen);
    assert!(call(&s, Ok).await.is_ok());
    assert_eq!(l.handle().state(), State::Closed);
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
    // A fresh window after closing.
    assert_eq!(l.handle().snapshot().buffered_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_when_probes_fail() {
    let l = builder().build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(Duration::from_secs(10)).await;
    calls(&s, &[Ok, Fail]).await; // 50 % of the probes
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn automatic_half_open_by_timer() {
    let l = builder().automatic_half_open(true).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::sleep(Duration::from_secs(10)).await;
    tokio::task::yield_now().await;
    assert_eq!(l.handle().state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_the_permitted_probes() {
    let l = builder().build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(Duration::from_secs(10)).await;
    let mut p1 = task::spawn(call(&s, SlowOk(50)));
    let mut p2 = task::spawn(call(&s, SlowOk(50)));
    assert_pending!(p1.poll());
    assert_pending!(p2.poll());
    let third = call(&s, Ok).await;
    assert!(is_open_err(&third), "the probe slots are taken");
    assert_eq!(
        third
            .unwrap_err()
            .downcast_ref::<CircuitOpen>()
            .unwrap()
            .retry_after(),
        None
    );
    time::advance(Duration::from_millis(50)).await;
    assert!(p1.await.is_ok());
    assert!(p2.await.is_ok());
    assert_eq!(l.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot_so_half_open_cannot_get_stuck() {
    let l = builder().permitted_calls_in_half_open(1).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(Duration::from_secs(10)).await;
    let mut probe = task::spawn(call(&s, SlowOk(1_000)));
    assert_pending!(probe.poll());
    assert!(is_open_err(&call(&s, Ok).await), "the only slot is taken");
    drop(probe); // cancelled: not counted, slot freed
    assert_eq!(l.handle().state(), State::HalfOpen);
    assert!(call(&s, Ok).await.is_ok());
    assert_eq!(l.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_service_dropped_with_a_reserved_probe_frees_the_slot() {
    let l = builder().permitted_calls_in_half_open(1).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(Duration::from_secs(10)).await;
    let mut holder = s.clone();
    holder.ready().await.unwrap(); // reserved the only probe
    drop(holder);
    assert!(call(&s, Ok).await.is_ok());
    assert_eq!(l.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_free_the_probe_and_are_not_counted() {
    let classify = |r: &Result<u8, &'static str>| match r {
        Err(_) => Outcome::Failure,
        Result::Ok(1) => Outcome::Success,
        Result::Ok(_) => Outcome::Ignored,
    };
    let l = builder()
        .permitted_calls_in_half_open(1)
        .classifier(classify)
        .build()
        .unwrap();
    let inner = service_fn(|n: u8| async move {
        if n == 0 {
            Err("boom")
        } else {
            Result::Ok(n)
        }
    });
    let s = l.layer(inner);
    for _ in 0..4 {
        let _ = s.clone().oneshot(0).await;
    }
    assert_eq!(l.handle().state(), State::Open);
    time::advance(Duration::from_secs(10)).await;
    s.clone().oneshot(2).await.unwrap(); // ignored
    assert_eq!(l.handle().state(), State::HalfOpen);
    assert_eq!(l.handle().snapshot().buffered_calls, 0);
    s.clone().oneshot(1).await.unwrap(); // the slot was free again
    assert_eq!(l.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_late_result_from_an_earlier_state_does_not_decide_half_open() {
    let l = builder().permitted_calls_in_half_open(1).build().unwrap();
    let s = svc(&l);
    // A call admitted while closed, still running.
    let mut late = task::spawn(call(&s, SlowFail(20_000)));
    assert_pending!(late.poll());
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(Duration::from_secs(10)).await;
    let mut probe = task::spawn(call(&s, SlowOk(15_000)));
    assert_pending!(probe.poll());
    assert_eq!(l.handle().state(), State::HalfOpen);
    time::advance(Duration::from_secs(10)).await;
    assert!(late.await.is_err()); // finishes during half-open
    assert_eq!(
        l.handle().state(),
        State::HalfOpen,
        "the late failure decided nothing"
    );
    time::advance(Duration::from_secs(5)).await;
    assert!(probe.await.is_ok());
    assert_eq!(l.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn max_wait_in_half_open_reopens_without_a_verdict() {
    let l = builder()
        .max_wait_in_half_open(Duration::from_secs(3))
        .permitted_calls_in_half_open(1)
        .build()
        .unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(Duration::from_secs(10)).await;
    let mut probe = task::spawn(call(&s, SlowOk(60_000)));
    assert_pending!(probe.poll());
    time::sleep(Duration::from_secs(3)).await;
    tokio::task::yield_now().await;
    assert_eq!(l.handle().state(), State::Open);
    drop(probe);
}

#[tokio::test(start_paused = true)]
async fn open_wait_grows_with_consecutive_openings_up_to_the_cap() {
    let l = builder()
        .wait_in_open(Duration::from_secs(10))
        .open_wait_multiplier(2.0)
        .max_wait_in_open(Duration::from_secs(30))
        .permitted_calls_in_half_open(1)
        .build()
        .unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    let mut waits = Vec::new();
    for _ in 0..3 {
        waits.push(l.handle().snapshot().retry_after.unwrap());
        time::advance(*waits.last().unwrap()).await;
        calls(&s, &[Fail]).await; // the probe fails: open again
    }
    assert_eq!(
        waits,
        vec![
            Duration::from_secs(10),
            Duration::from_secs(20),
            Duration::from_secs(30)
        ]
    );
    // Closing resets the growth.
    time::advance(Duration::from_secs(30)).await;
    calls(&s, &[Ok]).await;
    assert_eq!(l.handle().state(), State::Closed);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    assert_eq!(
        l.handle().snapshot().retry_after,
        Some(Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_the_open_wait_below_the_cap() {
    let mut waits = Vec::new();
    for seed in 1..=20u64 {
        let l = builder().open_wait_jitter(0.5).seed(seed).build().unwrap();
        let s = svc(&l);
        calls(&s, &[Fail, Fail, Fail, Fail]).await;
        let w = l.handle().snapshot().retry_after.unwrap();
        assert!(
            w > Duration::from_secs(5) && w <= Duration::from_secs(10),
            "{w:?}"
        );
        waits.push(w);
    }
    waits.sort();
    waits.dedup();
    assert!(
        waits.len() > 10,
        "replicas do not share one wait: {waits:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn operator_states_and_reset() {
    let l = builder().build().unwrap();
    let h: CircuitBreakerHandle = l.handle();
    let s = svc(&l);

    h.force_open();
    let r = call(&s, Ok).await;
    assert!(is_open_err(&r));
    assert_eq!(
        r.unwrap_err()
            .downcast_ref::<CircuitOpen>()
            .unwrap()
            .retry_after(),
        None
    );
    time::advance(Duration::from_secs(3_600)).await;
    assert_eq!(h.state(), State::ForcedOpen, "forced open does not expire");

    h.disable();
    calls(&s, &[Fail, Fail, Fail, Fail, Fail]).await;
    assert_eq!(h.state(), State::Disabled);
    assert_eq!(h.snapshot().buffered_calls, 0, "disabled records nothing");

    h.metrics_only();
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    assert_eq!(h.state(), State::MetricsOnly, "never trips");
    assert_eq!(h.snapshot().failure_rate, Some(100.0));

    h.force_closed();
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.snapshot().buffered_calls, 0);

    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    let _ = call(&s, Ok).await;
    assert_eq!(h.snapshot().not_permitted_calls, 2);
    h.reset();
    let snap = h.snapshot();
    assert_eq!((snap.state, snap.not_permitted_calls), (State::Closed, 0));
}

#[tokio::test(start_paused = true)]
async fn http_classifier_counts_5xx_and_429_only() {
    let l = builder().classifier(HttpClassifier::new()).build().unwrap();
    let inner = service_fn(|status: u16| async move {
        Result::<_, std::convert::Infallible>::Ok(
            http::Response::builder().status(status).body(()).unwrap(),
        )
    });
    let s = l.layer(inner);
    for status in [404, 400, 429, 503] {
        let _ = s.clone().oneshot(status).await;
    }
    assert_eq!(l.handle().snapshot().failed_calls, 2);
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_waits_in_poll_ready_while_open() {
    let l = builder().backpressure(true).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    let mut waiting = tower_test::mock::Spawn::new(s.clone());
    assert_pending!(waiting.poll_ready());
    time::advance(Duration::from_secs(10)).await;
    assert_ready_ok!(waiting.poll_ready());
    assert_eq!(l.handle().state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn panicking_listener_does_not_break_calls() {
    let l = builder()
        .on_event(|_: &CircuitBreakerEvent| panic!("listener bug"))
        .build()
        .unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn registered_with_a_snapshot() {
    let registry = Registry::new();
    let l = builder().name("db").registry(&registry).build().unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    let snap = registry.snapshot();
    assert_eq!(snap["db"]["kind"], "circuit_breaker");
    assert_eq!(snap["db"]["state"]["state"], "open");
    assert_eq!(snap["db"]["state"]["retry_after_ms"], 10_000);
    let h: CircuitBreakerHandle = registry.get("db").unwrap();
    h.force_closed();
    assert_eq!(l.handle().state(), State::Closed);
}

#[test]
fn invalid_config_is_a_typed_error() {
    let field = |b: CircuitBreakerBuilder| b.build().unwrap_err().field();
    assert_eq!(
        field(builder().failure_rate_threshold(0.0)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(builder().failure_rate_threshold(f64::NAN)),
        "failure_rate_threshold"
    );
    assert_eq!(
        field(builder().slow_call_rate_threshold(101.0)),
        "slow_call_rate_threshold"
    );
    assert_eq!(field(builder().window_size(0)), "window_size");
    // Sizes that allocate are bounded.
    assert_eq!(field(builder().window_size(1_000_001)), "window_size");
    assert_eq!(field(builder().window_size(u32::MAX)), "window_size");
    builder().window_size(1_000_000).build().unwrap();
    assert_eq!(
        field(builder().time_window(Duration::from_secs(86_401))),
        "time_window"
    );
    builder()
        .time_window(Duration::from_secs(86_400))
        .build()
        .unwrap();
    assert_eq!(
        field(builder().max_wait_in_half_open(Duration::ZERO)),
        "max_wait_in_half_open"
    );
    assert_eq!(field(builder().minimum_calls(0)), "minimum_calls");
    assert_eq!(
        field(builder().consecutive_failures(0)),
        "consecutive_failures"
    );
    assert_eq!(
        field(builder().permitted_calls_in_half_open(0)),
        "permitted_calls_in_half_open"
    );
    assert_eq!(
        field(builder().wait_in_open(Duration::ZERO)),
        "wait_in_open"
    );
    assert_eq!(
        field(builder().open_wait_multiplier(0.5)),
        "open_wait_multiplier"
    );
    assert_eq!(field(builder().open_wait_jitter(-0.1)), "open_wait_jitter");
    assert_eq!(
        field(builder().max_wait_in_open(Duration::from_secs(1))),
        "max_wait_in_open"
    );
    assert_eq!(field(builder().name("")), "name");
    let registry = Registry::new();
    builder().registry(&registry).build().unwrap();
    assert_eq!(field(builder().registry(&registry)), "name");

    let c: CircuitBreakerConfig = serde_json::from_str(
        r#"{"name":"x","slow_call_duration":"2s","max_wait_in_half_open":"1m","consecutive_failures":5}"#,
    )
    .unwrap();
    assert_eq!(c.slow_call_duration, Some(Duration::from_secs(2)));
    assert_eq!(c.max_wait_in_half_open, Some(Duration::from_secs(60)));
    c.build().unwrap();
    assert!(serde_json::from_str::<CircuitBreakerConfig>(r#"{"window":3}"#).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transition_event_per_transition_under_concurrency() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let l = CircuitBreakerLayer::builder()
        .window_size(20)
        .minimum_calls(20)
        .wait_in_open(Duration::from_secs(3_600))
        .on_event(recorder(&events))
        .build()
        .unwrap();
    let s = svc(&l);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..500 {
                    let _ = s.clone().oneshot(Fail).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(l.handle().state(), State::Open);
    assert_eq!(*events.lock().unwrap(), vec![(State::Closed, State::Open)]);
}

#[tokio::test(start_paused = true)]
async fn time_window_counts_the_last_seconds_and_forgets_older_ones() {
    let l = builder()
        .time_window(Duration::from_secs(10))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    let s = svc(&l);
    calls(&s, &[Fail, Fail]).await;
    time::advance(Duration::from_secs(10)).await;
    // The two failures of second 0 have left the window.
    calls(&s, &[Ok, Ok, Fail]).await;
    assert_eq!(l.handle().state(), State::Closed);
    assert_eq!(l.handle().snapshot().buffered_calls, 3);
    calls(&s, &[Fail]).await; // 2 of 4 in the last 10 s
    assert_eq!(l.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_does_not_clamp_minimum_calls() {
    let l = builder()
        .time_window(Duration::from_secs(1))
        .minimum_calls(1_000)
        .build()
        .unwrap();
    let s = svc(&l);
    calls(&s, &[Fail; 20]).await;
    assert_eq!(l.handle().state(), State::Closed);
    assert_eq!(l.handle().snapshot().failure_rate, None);
}

/// A time window's successes wait in a per-thread batch of their second;
/// a success of a later second, a failure or a snapshot moves it into the
/// bucket of the second it belongs to, and a batch whose second has left
/// the window is dropped.
#[tokio::test(start_paused = true)]
async fn time_window_batches_successes_by_their_second() {
    let l = builder()
        .time_window(Duration::from_secs(3))
        .minimum_calls(1_000)
        .build()
        .unwrap();
    let s = svc(&l);
    calls(&s, &[Ok, Ok, Ok]).await;
    time::advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await; // the ticker's second moves
    calls(&s, &[Ok]).await; // moves second 0's three
    time::advance(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    // Second 0 has left the window; second 1's success is still in it.
    calls(&s, &[Fail]).await;
    let snap = l.handle().snapshot();
    assert_eq!((snap.buffered_calls, snap.failed_calls), (2, 1));
    calls(&s, &[Ok, Ok]).await;
    time::advance(Duration::from_secs(5)).await;
    tokio::task::yield_now().await;
    // The batch of second 3 is too old when the snapshot moves it.
    assert_eq!(l.handle().snapshot().buffered_calls, 0);
}

#[test]
fn time_window_must_be_whole_seconds() {
    let err = builder()
        .time_window(Duration::from_millis(1_500))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "time_window");
    assert!(builder().time_window(Duration::ZERO).build().is_err());
}

#[tokio::test(start_paused = true)]
async fn ignore_if_leaves_matching_results_out_of_the_window() {
    let l = builder()
        .ignore_if(|r: &Result<u8, &'static str>| r.is_err())
        .build()
        .unwrap();
    let s = l.layer(service_fn(
        futures_like::run as fn(Call) -> futures_like::Fut,
    ));
    for _ in 0..10 {
        let _ = s.clone().oneshot(Fail).await;
    }
    assert_eq!(l.handle().state(), State::Closed);
    assert_eq!(l.handle().snapshot().buffered_calls, 0);
    s.clone().oneshot(Ok).await.unwrap();
    assert_eq!(l.handle().snapshot().buffered_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn time_window_follows_the_clock_ticker_across_seconds() {
    let l = builder()
        .time_window(Duration::from_secs(3))
        .minimum_calls(1_000)
        .build()
        .unwrap();
    let s = svc(&l);
    // One call per second for 6 s: the window only ever holds the last 3.
    for _ in 0..6 {
        calls(&s, &[Fail]).await;
        time::sleep(Duration::from_secs(1)).await;
    }
    calls(&s, &[Fail]).await;
    assert_eq!(l.handle().snapshot().buffered_calls, 3);
}

#[test]
fn time_window_outlives_the_runtime_of_its_clock_ticker() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let first = paused();
    let l = first.block_on(async {
        let l = builder()
            .time_window(Duration::from_secs(60))
            .minimum_calls(1_000)
            .build()
            .unwrap();
        calls(&svc(&l), &[Fail, Ok]).await;
        tokio::task::yield_now().await; // the ticker has run
        l
    });
    drop(first); // and is gone with its runtime
    paused().block_on(async {
        time::advance(Duration::from_secs(120)).await;
        // A stale ticker would still say second 0 and count the first two.
        calls(&svc(&l), &[Fail, Ok]).await;
        assert_eq!(l.handle().snapshot().buffered_calls, 2);
    });
}

/// An outer layer (a rate limiter, a load shedder) may answer a request
/// itself after the breaker's `poll_ready`, never calling it. The rejection
/// decided then is neither counted nor handed to the next request: the next
/// `poll_ready` decides again.
#[tokio::test(start_paused = true)]
async fn a_rejection_no_call_consumed_is_neither_counted_nor_handed_on() {
    let layer = builder().build().unwrap();
    let handle = layer.handle();
    let mut svc = svc(&layer);
    handle.force_open();
    // Ready with a rejection in hand; the outer layer drops the request.
    svc.ready().await.unwrap();
    assert_eq!(handle.snapshot().not_permitted_calls, 0);
    handle.reset();
    // The breaker is closed now: the next request goes through.
    assert_eq!(svc.ready().await.unwrap().call(Ok).await.unwrap(), 1);
    // A rejection that is delivered is counted once.
    handle.force_open();
    let err = svc.ready().await.unwrap().call(Ok).await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some());
    assert_eq!(handle.snapshot().not_permitted_calls, 1);
}

/// The facade's empty slot: a pass-through breaker lets every call reach
/// the inner service, failures included, records nothing and never opens.
#[tokio::test]
async fn a_pass_through_breaker_admits_every_call_and_never_opens() {
    let layer = CircuitBreakerLayer::pass_through(buttress_core::ErrorsAsFailures);
    let reached = Arc::new(Mutex::new(0u32));
    let seen = reached.clone();
    let mut svc = layer.layer(service_fn(move |fail: bool| {
        *seen.lock().unwrap() += 1;
        async move {
            if fail {
                Err::<u32, BoxError>("down".into())
            } else {
                Result::<u32, BoxError>::Ok(7)
            }
        }
    }));
    for _ in 0..200 {
        let err = svc.ready().await.unwrap().call(true).await.unwrap_err();
        assert_eq!(err.to_string(), "down", "the inner error, not a rejection");
    }
    assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), 7);
    assert_eq!(*reached.lock().unwrap(), 201);
    let snap = layer.handle().snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!(
        (
            snap.buffered_calls,
            snap.failed_calls,
            snap.not_permitted_calls
        ),
        (0, 0, 0)
    );
}
