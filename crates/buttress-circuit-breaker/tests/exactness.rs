//! The breaker's decisions and numbers are exact across threads: one test
//! per behaviour, on OS threads and on multi-thread tokio runtimes whose
//! tasks move between workers, checked against a sequential model. Every
//! loop is bounded in count, and the runtimes in time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use buttress_circuit_breaker::error::CircuitOpen;
use buttress_circuit_breaker::{CircuitBreakerEvent, CircuitBreakerLayer, State};
use tower::{service_fn, Layer, Service, ServiceExt};

type Events = Arc<Mutex<Vec<CircuitBreakerEvent>>>;

fn recorder() -> (
    Events,
    impl Fn(&CircuitBreakerEvent) + Send + Sync + 'static,
) {
    let events: Events = Arc::default();
    let sink = events.clone();
    (events, move |e: &CircuitBreakerEvent| {
        sink.lock().unwrap().push(e.clone())
    })
}

fn transitions(events: &Events) -> Vec<(State, State)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            CircuitBreakerEvent::StateTransition { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

fn count(events: &Events, pred: impl Fn(&CircuitBreakerEvent) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|e| pred(e)).count()
}

/// A service that fails when asked to.
fn outcome_service(
) -> impl Service<bool, Response = (), Error = &'static str, Future: Send> + Clone + Send {
    service_fn(|fail: bool| async move {
        if fail {
            Err("down")
        } else {
            Ok(())
        }
    })
}

/// A multi-thread runtime of `workers` threads.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `calls` on the breaker from one OS thread, in order.
fn call_from_a_thread<S>(svc: S, calls: Vec<bool>) -> std::thread::JoinHandle<()>
where
    S: Service<bool, Response = ()> + Clone + Send + 'static,
    S::Future: Send,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            for fail in calls {
                let _ = svc.clone().oneshot(fail).await;
            }
        });
    })
}

// ===== 1. Half-open probes =====

fn ignored(r: &Result<(), std::io::Error>) -> bool {
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::Interrupted)
}

/// Six workers race for two probe slots through hundreds of
/// half-open -> open -> half-open rounds (until 1,200 calls reached the
/// inner service, or 20,000 attempts per worker) (every probe fails, some are
/// ignored, some are dropped in flight): never more than two probes in
/// the inner service at once, and afterwards the breaker still admits a
/// probe once its wait is over: it is never stuck half-open.
#[test]
fn half_open_never_admits_more_probes_than_permitted_and_never_sticks() {
    const PROBES: usize = 2;
    let rt = runtime(6);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder()
        .window_size(2)
        .minimum_calls(2)
        .permitted_calls_in_half_open(PROBES as u32)
        .wait_in_open(Duration::from_micros(50))
        .ignore_if(ignored)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (f, m, r) = (in_flight.clone(), most.clone(), reached.clone());
    let svc = layer.layer(service_fn(move |kind: u8| {
        let (f, m, r) = (f.clone(), m.clone(), r.clone());
        async move {
            /// Counts the call in the inner service until it ends or is
            /// dropped.
            struct InFlight(Arc<AtomicUsize>);
            impl Drop for InFlight {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, SeqCst);
                }
            }
            r.fetch_add(1, SeqCst);
            let now = f.fetch_add(1, SeqCst) + 1;
            m.fetch_max(now, SeqCst);
            let _guard = InFlight(f);
            tokio::task::yield_now().await;
            Err::<(), _>(match kind {
                0 => std::io::Error::other("down"),
                _ => std::io::ErrorKind::Interrupted.into(),
            })
        }
    }));
    rt.block_on(async {
        // Opened before the workers start: from then on, every call that
        // reaches the inner service is a probe.
        for _ in 0..2 {
            let _ = svc.clone().oneshot(0).await;
        }
        assert_eq!(handle.state(), State::Open);
        reached.store(0, SeqCst);
        let tasks: Vec<_> = (0..6)
            .map(|t| {
                let (svc, reached) = (svc.clone(), reached.clone());
                tokio::spawn(async move {
                    for i in 0..20_000u32 {
                        if reached.load(SeqCst) >= 1_200 {
                            break;
                        }
                        let kind = u8::from((t + i) % 5 == 0);
                        let fut = svc.clone().oneshot(kind);
                        if (t + i) % 7 == 0 {
                            // Dropped after its first poll: a cancelled probe.
                            let _ = tokio::time::timeout(Duration::ZERO, fut).await;
                        } else {
                            let _ = fut.await;
                        }
                        if i % 16 == 0 {
                            tokio::time::sleep(Duration::from_micros(100)).await;
                        }
                    }
                })
            })
            .collect();
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("bounded");
    });
    assert!(
        reached.load(SeqCst) > 100,
        "the rounds reached the inner service {} times",
        reached.load(SeqCst)
    );
    assert!(
        most.load(SeqCst) <= PROBES,
        "at most {PROBES} probes at once, saw {}",
        most.load(SeqCst)
    );
    assert_eq!(in_flight.load(SeqCst), 0);
    // Not stuck: once the open wait is over, the next call is a probe.
    std::thread::sleep(Duration::from_millis(2));
    let before = reached.load(SeqCst);
    let result = rt.block_on(svc.clone().oneshot(0));
    assert!(
        !result.unwrap_err().is::<CircuitOpen>(),
        "state {:?}",
        handle.state()
    );
    assert_eq!(reached.load(SeqCst), before + 1);
}

// ===== 2. Successes are never held back =====

/// Window 100, minimum 10: 11 successes on one thread, then 10 failures
/// on another (47.6 %) leave a 50 % breaker closed, and the snapshot
/// counts all 21 calls.
#[test]
fn a_success_on_another_thread_is_never_missing_from_a_verdict() {
    let layer = CircuitBreakerLayer::builder()
        .window_size(100)
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    let svc = layer.layer(outcome_service());
    call_from_a_thread(svc.clone(), vec![false; 11])
        .join()
        .unwrap();
    call_from_a_thread(svc, vec![true; 10]).join().unwrap();
    let snap = layer.handle().snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!((snap.buffered_calls, snap.failed_calls), (21, 10));
    assert!((snap.failure_rate.unwrap() - 47.619).abs() < 0.001);
}

/// One worker fails while seven others succeed, on a multi-thread runtime:
/// at no moment does the true failure rate of completed calls reach 50 %
/// (each succeeding task completed 100 calls before the failures start),
/// so the breaker never opens, and every call is counted.
#[test]
fn one_failing_worker_among_seven_succeeding_never_opens_the_breaker() {
    let rt = runtime(4);
    let (events, listener) = recorder();
    let layer = CircuitBreakerLayer::builder()
        .window_size(2_000)
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .on_event(listener)
        .build()
        .unwrap();
    let svc = layer.layer(outcome_service());
    rt.block_on(async {
        let warm: Vec<_> = (0..7)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..100 {
                        let _ = svc.clone().oneshot(false).await;
                    }
                })
            })
            .collect();
        for t in warm {
            t.await.unwrap();
        }
        let mut tasks: Vec<_> = (0..7)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..100 {
                        let _ = svc.clone().oneshot(false).await;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let failing = svc.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let _ = failing.clone().oneshot(true).await;
                tokio::task::yield_now().await;
            }
        }));
        for t in tasks {
            t.await.unwrap();
        }
    });
    let snap = layer.handle().snapshot();
    assert_eq!(snap.state, State::Closed, "{snap:?}");
    assert_eq!((snap.buffered_calls, snap.failed_calls), (1_500, 100));
    assert!(transitions(&events).is_empty());
}

// ===== 3. Every call gets a verdict =====

/// Count window, minimum 5, threshold 50 %: F, F, F, S, S opens at the
/// fifth call (60 % of 5), with the threshold event at that call.
#[tokio::test]
async fn a_success_that_reaches_the_minimum_at_a_high_rate_opens_the_breaker() {
    let (events, listener) = recorder();
    let layer = CircuitBreakerLayer::builder()
        .window_size(10)
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .on_event(listener)
        .build()
        .unwrap();
    let svc = layer.layer(outcome_service());
    for (i, fail) in [true, true, true, false].into_iter().enumerate() {
        let _ = svc.clone().oneshot(fail).await;
        assert_eq!(layer.handle().state(), State::Closed, "after call {i}");
    }
    let _ = svc.clone().oneshot(false).await;
    assert_eq!(layer.handle().state(), State::Open);
    let exceeded: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            CircuitBreakerEvent::ThresholdExceeded { failure_rate, .. } => Some(*failure_rate),
            _ => None,
        })
        .collect();
    assert_eq!(exceeded, vec![60.0]);
    assert_eq!(transitions(&events), vec![(State::Closed, State::Open)]);
}

// ===== 4. Snapshots after quiescence =====

/// 500 calls from tasks that move between four workers: once they have
/// completed, the snapshot counts each of them, in a count window and in
/// a time window.
#[test]
fn snapshots_count_every_completed_call_after_quiescence() {
    for time_window in [false, true] {
        let rt = runtime(4);
        let builder = CircuitBreakerLayer::builder()
            .window_size(1_000)
            .minimum_calls(1_000);
        let builder = if time_window {
            builder.time_window(Duration::from_secs(600))
        } else {
            builder
        };
        let layer = builder.build().unwrap();
        let svc = layer.layer(outcome_service());
        rt.block_on(async {
            let tasks: Vec<_> = (0..10)
                .map(|t| {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        for i in 0..50 {
                            let _ = svc.clone().oneshot((t + i) % 7 == 0).await;
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let failures = (0..10)
            .flat_map(|t| (0..50).map(move |i| (t + i) % 7 == 0))
            .filter(|f| *f)
            .count() as u64;
        // Read while the runtime still runs (no thread has exited).
        let snap = layer.handle().snapshot();
        assert_eq!(snap.buffered_calls, 500, "time window: {time_window}");
        assert_eq!(snap.failed_calls, failures, "time window: {time_window}");
    }
}

// ===== 5. Counts never saturate (see also the window's unit tests) =====

/// Far more calls in one second of a time window than a 21-bit packed
/// count holds: the rate stays the true one (the clock is paused, so all
/// land in one second).
#[tokio::test(start_paused = true)]
async fn a_time_window_never_raises_the_rate_under_millions_of_calls() {
    let layer = CircuitBreakerLayer::builder()
        .time_window(Duration::from_secs(1))
        .minimum_calls(10)
        .failure_rate_threshold(40.0)
        .build()
        .unwrap();
    let mut svc = layer.layer(outcome_service());
    const CALLS: u64 = 2_200_000;
    for i in 0..CALLS {
        // One failure in three, never first: at most 33.4 %, below 40 %.
        let _ = svc.ready().await.unwrap().call(i % 3 == 2).await;
    }
    let snap = layer.handle().snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!(snap.buffered_calls, CALLS);
    assert_eq!(
        snap.failed_calls,
        (0..CALLS).filter(|i| i % 3 == 2).count() as u64
    );
}

// ===== 6. One time source =====

/// Slow-call timing on and a time window: a call that ends just after a
/// second boundary, and a snapshot read on the boundary, count in the
/// same second as the window's other readers, and the breaker opens at
/// the call that brings the window to its threshold.
#[tokio::test(start_paused = true)]
async fn a_time_window_with_slow_call_timing_reads_one_clock() {
    let layer = CircuitBreakerLayer::builder()
        .time_window(Duration::from_secs(2))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .slow_call_duration(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|(fail, ms): (bool, u64)| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if fail {
            Err("down")
        } else {
            Ok(())
        }
    }));
    let settle = || async {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    };
    let _ = svc.clone().oneshot((false, 0)).await; // second 0
    settle().await;
    tokio::time::advance(Duration::from_millis(990)).await;
    let _ = svc.clone().oneshot((false, 0)).await; // second 0
                                                   // Ends at 1.010 s, after the boundary.
    let _ = svc.clone().oneshot((true, 20)).await;
    settle().await;
    let snap = handle.snapshot();
    assert_eq!((snap.buffered_calls, snap.failed_calls), (3, 1));
    // Exactly on the next boundary (2.000 s): second 0 has left the window.
    tokio::time::advance(Duration::from_millis(990)).await;
    settle().await;
    let snap = handle.snapshot();
    assert_eq!((snap.buffered_calls, snap.failed_calls), (1, 1));
    // Three more in second 2: F S F -> 4 calls, 3 failed: opens at the
    // call that reaches the minimum, not before.
    let _ = svc.clone().oneshot((true, 0)).await;
    let _ = svc.clone().oneshot((false, 0)).await;
    assert_eq!(handle.state(), State::Closed);
    let _ = svc.clone().oneshot((true, 0)).await;
    assert_eq!(handle.state(), State::Open);
    let snap = handle.snapshot();
    assert_eq!((snap.buffered_calls, snap.failed_calls), (4, 3));
}

// ===== 7. max_wait_in_half_open(0) =====

#[test]
fn a_zero_max_wait_in_half_open_is_rejected() {
    let err = CircuitBreakerLayer::builder()
        .max_wait_in_half_open(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_wait_in_half_open");
    assert!(err.to_string().contains("unset for no limit"), "{err}");
}

// ===== 8. Events =====

#[tokio::test]
async fn a_disabled_breaker_reports_no_outcomes() {
    let (events, listener) = recorder();
    let layer = CircuitBreakerLayer::builder()
        .on_event(listener)
        .build()
        .unwrap();
    layer.handle().disable();
    let svc = layer.layer(outcome_service());
    for fail in [true, false, true] {
        let _ = svc.clone().oneshot(fail).await;
    }
    let seen = events.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "only the transition: {seen:?}");
    assert_eq!(transitions(&events), vec![(State::Closed, State::Disabled)]);
    assert_eq!(layer.handle().snapshot().buffered_calls, 0);
}

#[tokio::test]
async fn forcing_the_state_a_breaker_is_in_reports_nothing() {
    let (events, listener) = recorder();
    let layer = CircuitBreakerLayer::builder()
        .on_event(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    handle.force_closed();
    handle.force_open();
    handle.force_open();
    assert_eq!(
        transitions(&events),
        vec![(State::Closed, State::ForcedOpen)]
    );
}

#[tokio::test]
async fn reset_reports_a_reset_and_a_transition_only_when_the_state_changes() {
    let (events, listener) = recorder();
    let layer = CircuitBreakerLayer::builder()
        .window_size(10)
        .minimum_calls(10)
        .on_event(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(outcome_service());
    let _ = svc.clone().oneshot(true).await;
    handle.reset();
    assert_eq!(handle.snapshot().buffered_calls, 0, "the window is emptied");
    assert!(transitions(&events).is_empty());
    assert_eq!(
        count(&events, |e| matches!(e, CircuitBreakerEvent::Reset { .. })),
        1
    );
    handle.force_open();
    handle.reset();
    assert_eq!(
        transitions(&events),
        vec![
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Closed)
        ]
    );
    let last = events.lock().unwrap().last().cloned();
    assert!(matches!(last, Some(CircuitBreakerEvent::Reset { .. })));
}

/// Eight OS threads fail at once on a closed breaker: one threshold event,
/// one transition.
#[test]
fn one_opening_reports_one_threshold_event_and_one_transition() {
    for _ in 0..20 {
        let (events, listener) = recorder();
        let layer = CircuitBreakerLayer::builder()
            .window_size(8)
            .minimum_calls(2)
            .on_event(listener)
            .build()
            .unwrap();
        let svc = layer.layer(outcome_service());
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (svc, barrier) = (svc.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    barrier.wait();
                    for _ in 0..4 {
                        let _ = rt.block_on(svc.clone().oneshot(true));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(transitions(&events), vec![(State::Closed, State::Open)]);
        assert_eq!(
            count(&events, |e| matches!(
                e,
                CircuitBreakerEvent::ThresholdExceeded { .. }
            )),
            1
        );
    }
}

/// Under a stress of openings, probes and closings on four workers, the
/// transition events form one chain (each starts where the previous one
/// ended) and a listener that tracks the state ends on the breaker's
/// state.
#[test]
fn transition_events_arrive_in_order_and_chain() {
    let rt = runtime(4);
    let (events, listener) = recorder();
    let tracked = Arc::new(Mutex::new(State::Closed));
    let t = tracked.clone();
    let layer = CircuitBreakerLayer::builder()
        .window_size(4)
        .minimum_calls(4)
        .permitted_calls_in_half_open(2)
        .wait_in_open(Duration::from_micros(200))
        .on_event(listener)
        .on_event(move |e: &CircuitBreakerEvent| {
            if let CircuitBreakerEvent::StateTransition { to, .. } = e {
                *t.lock().unwrap() = *to;
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(outcome_service());
    rt.block_on(async {
        let tasks: Vec<_> = (0..8u32)
            .map(|task| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..600u32 {
                        let _ = svc.clone().oneshot((task * 7 + i) % 3 == 0).await;
                        if i % 8 == 0 {
                            tokio::time::sleep(Duration::from_micros(150)).await;
                        }
                    }
                })
            })
            .collect();
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("bounded");
    });
    let chain = transitions(&events);
    assert!(chain.len() > 3, "the stress changed state: {chain:?}");
    assert_eq!(chain[0].0, State::Closed);
    for pair in chain.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "out of order: {chain:?}");
    }
    assert_eq!(chain.last().unwrap().1, handle.state());
    assert_eq!(*tracked.lock().unwrap(), handle.state());
}

// ===== The sequential model =====

/// Every (calls, failures) that a prefix of each thread's sequence can
/// add up to: the states of the window that some interleaving reaches.
fn reachable(threads: &[Vec<bool>]) -> BTreeSet<(usize, usize)> {
    let mut states = BTreeSet::from([(0, 0)]);
    for calls in threads {
        let mut next = BTreeSet::new();
        for &(c, f) in &states {
            let mut failed = 0;
            next.insert((c, f));
            for (i, fail) in calls.iter().enumerate() {
                failed += usize::from(*fail);
                next.insert((c + i + 1, f + failed));
            }
        }
        states = next;
    }
    states
}

fn trips(calls: usize, failed: usize, minimum: usize, threshold: f64) -> bool {
    calls >= minimum && failed as f64 * 100.0 / calls as f64 >= threshold
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Random outcome sequences from three OS threads, a window that holds
    /// every call: the breaker's final numbers are a state the sequential
    /// model reaches in some interleaving. Closed: every call is counted
    /// and the totals do not trip. Open: the window stopped at a state
    /// that trips, reached from one that did not.
    #[test]
    fn concurrent_verdicts_match_the_sequential_model(
        threads in proptest::collection::vec(proptest::collection::vec(proptest::bool::ANY, 0..25), 3),
        minimum in 1usize..20,
        threshold in 10u32..=100,
    ) {
        let threshold = f64::from(threshold);
        let layer = CircuitBreakerLayer::builder()
            .window_size(100)
            .minimum_calls(minimum as u32)
            .failure_rate_threshold(threshold)
            .build()
            .unwrap();
        let svc = layer.layer(outcome_service());
        let handles: Vec<_> = threads
            .iter()
            .map(|calls| call_from_a_thread(svc.clone(), calls.clone()))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let snap = layer.handle().snapshot();
        let (c, f) = (snap.buffered_calls as usize, snap.failed_calls as usize);
        let total = threads.iter().map(Vec::len).sum::<usize>();
        let failures = threads.iter().flatten().filter(|f| **f).count();
        match snap.state {
            State::Closed => {
                proptest::prop_assert_eq!((c, f), (total, failures));
                proptest::prop_assert!(!trips(c, f, minimum, threshold));
            }
            State::Open => {
                let states = reachable(&threads);
                proptest::prop_assert!(states.contains(&(c, f)), "({}, {}) unreachable", c, f);
                proptest::prop_assert!(trips(c, f, minimum, threshold));
                // The call before: a success or a failure of some thread.
                let before_ok = states.contains(&(c - 1, f)) && !trips(c - 1, f, minimum, threshold);
                let before_fail = f > 0
                    && states.contains(&(c - 1, f - 1))
                    && !trips(c - 1, f - 1, minimum, threshold);
                proptest::prop_assert!(before_ok || before_fail, "opened late at ({}, {})", c, f);
            }
            other => proptest::prop_assert!(false, "unexpected state {:?}", other),
        }
    }
}
