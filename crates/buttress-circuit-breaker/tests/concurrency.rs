//! The breaker under two worker threads and under cancellation, and its
//! trip decisions against a plain reference model. Every loop is bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_circuit_breaker::error::CircuitOpen;
use buttress_circuit_breaker::{CircuitBreakerLayer, State};
use tokio::sync::Semaphore;
use tokio_test::{assert_pending, task};
use tower::{service_fn, Layer, Service, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_never_exceed_the_permitted_number() {
    const PROBES: u32 = 3;
    let layer = CircuitBreakerLayer::builder()
        .window_size(10)
        .minimum_calls(10)
        .permitted_calls_in_half_open(PROBES)
        .wait_in_open(Duration::from_millis(5))
        .build()
        .unwrap();
    let admitted = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (a, g) = (admitted.clone(), gate.clone());
    let svc = layer.layer(service_fn(move |fail: bool| {
        let (a, g) = (a.clone(), g.clone());
        async move {
            if fail {
                return Err("down");
            }
            a.fetch_add(1, Ordering::SeqCst);
            g.acquire().await.unwrap().forget();
            Ok(())
        }
    }));
    for _ in 0..10 {
        let _ = svc.clone().oneshot(true).await;
    }
    assert_eq!(layer.handle().state(), State::Open);
    tokio::time::sleep(Duration::from_millis(10)).await;

    // Eight tasks try, 200 times each, to get a call through.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                for _ in 0..200 {
                    let mut s = svc.clone();
                    let fut = s.ready().await.unwrap().call(false);
                    let mut fut = Box::pin(fut);
                    match futures_poll_once(&mut fut).await {
                        Some(Err(e)) => assert!(e.is::<CircuitOpen>()),
                        Some(Ok(())) => unreachable!("the gate is closed"),
                        None => held.push(fut),
                    }
                }
                held
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        held.extend(t.await.unwrap());
    }
    assert_eq!(admitted.load(Ordering::SeqCst), PROBES as usize);
    assert_eq!(held.len(), PROBES as usize);
    gate.add_permits(PROBES as usize);
    for fut in held {
        fut.await.unwrap();
    }
    assert_eq!(layer.handle().state(), State::Closed);
}

/// Polls a future once; `None` if it is pending (and keeps it for later).
async fn futures_poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Every call is in the window as soon as it completed: a snapshot taken
/// while the runtime still runs, with no call in flight, counts them all.
#[test]
fn no_outcome_is_lost_under_two_threads() {
    const TASKS: usize = 8;
    const CALLS: usize = 1_000;
    const WORKERS: u64 = 2;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS as usize)
        .enable_all()
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::builder()
        .window_size((TASKS * CALLS) as u32)
        .build()
        .unwrap();
    let handle = layer.handle();
    handle.metrics_only();
    let svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err("down")
        } else {
            Ok(())
        }
    }));
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..CALLS {
                        let _ = svc.clone().oneshot((t + i) % 3 == 0).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let expected_failures = (0..TASKS)
        .flat_map(|t| (0..CALLS).map(move |i| (t + i) % 3 == 0))
        .filter(|f| *f)
        .count() as u64;
    let total = (TASKS * CALLS) as u64;
    let running = handle.snapshot();
    assert_eq!(running.buffered_calls, total, "{running:?}");
    assert_eq!(running.failed_calls, expected_failures);
    drop(rt);
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::MetricsOnly);
    assert_eq!(snap.buffered_calls, total);
    assert_eq!(snap.failed_calls, expected_failures);
}

#[tokio::test(start_paused = true)]
async fn dropping_at_every_point_frees_the_probe_slot() {
    let layer = CircuitBreakerLayer::builder()
        .window_size(1)
        .minimum_calls(1)
        .permitted_calls_in_half_open(1)
        .wait_in_open(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|ms: u64| async move {
        if ms == 0 {
            return Err("down");
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }));
    let _ = svc.clone().oneshot(0).await;
    tokio::time::advance(Duration::from_secs(1)).await;

    // 1. Reserved in poll_ready, service dropped.
    let mut s = svc.clone();
    s.ready().await.unwrap();
    drop(s);
    // 2. Called, future dropped before its first poll.
    let mut s = svc.clone();
    let fut = s.ready().await.unwrap().call(10);
    drop(fut);
    // 3. Polled once (pending), then dropped.
    let mut s = svc.clone();
    let mut fut = task::spawn(s.ready().await.unwrap().call(10));
    assert_pending!(fut.poll());
    drop(fut);

    assert_eq!(layer.handle().state(), State::HalfOpen);
    assert_eq!(
        layer.handle().snapshot().buffered_calls,
        0,
        "nothing counted"
    );
    svc.clone().oneshot(10).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
}

/// The reference: trip when, after any call (a success too), with at
/// least `min` of the last `size` outcomes recorded, the failure rate or the slow-call rate (a call is
/// slow when it takes strictly longer than `slow_ms`) reaches its threshold.
fn model_trips(
    outcomes: &[(bool, u64)],
    size: usize,
    min: usize,
    threshold: f64,
    slow_ms: u64,
    slow_threshold: f64,
) -> Option<usize> {
    let mut window = VecDeque::new();
    for (i, (failed, ms)) in outcomes.iter().enumerate() {
        if window.len() == size {
            window.pop_front();
        }
        let slow = *ms > slow_ms;
        window.push_back((*failed, slow));
        let calls = window.len();
        let failures = window.iter().filter(|o| o.0).count();
        let slows = window.iter().filter(|o| o.1).count();
        let rate = |n: usize| n as f64 * 100.0 / calls as f64;
        if calls >= min.min(size) && (rate(failures) >= threshold || rate(slows) >= slow_threshold)
        {
            return Some(i);
        }
    }
    None
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn trip_decisions_match_the_reference_model(
        size in 1u32..40,
        min in 1u32..50,
        threshold in 1u32..=100,
        slow_threshold in 1u32..=100,
        outcomes in proptest::collection::vec((proptest::bool::ANY, 0u64..20), 0..120),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = CircuitBreakerLayer::builder()
                .window_size(size)
                .minimum_calls(min)
                .failure_rate_threshold(f64::from(threshold))
                .slow_call_duration(Duration::from_millis(10))
                .slow_call_rate_threshold(f64::from(slow_threshold))
                .build()
                .unwrap();
            let svc = layer.layer(service_fn(|(fail, ms): (bool, u64)| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if fail { Err("down") } else { Ok(()) }
            }));
            let expected = model_trips(
                &outcomes,
                size as usize,
                min as usize,
                f64::from(threshold),
                10,
                f64::from(slow_threshold),
            );
            let mut tripped = None;
            for (i, call) in outcomes.iter().enumerate() {
                let _ = svc.clone().oneshot(*call).await;
                if layer.handle().state() == State::Open {
                    tripped = Some(i);
                    break;
                }
            }
            proptest::prop_assert_eq!(tripped, expected);
            Ok(())
        })?;
    }
}
