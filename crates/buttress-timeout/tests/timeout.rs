//! Contract tests of the timeout layer, under tokio's paused clock.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::deadline::{Deadline, TimeoutOverride};
use buttress_core::Registry;
use buttress_timeout::error::Elapsed;
use buttress_timeout::{Phase, TimeoutConfig, TimeoutEvent, TimeoutHandle, TimeoutLayer};
use tokio::time::{self, Instant};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_test::mock;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sleeper() -> impl Service<
    u64,
    Response = u64,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<u64, std::convert::Infallible>> + Send,
> + Clone {
    service_fn(|d: u64| async move {
        time::sleep(ms(d)).await;
        Ok::<_, std::convert::Infallible>(d)
    })
}

#[tokio::test(start_paused = true)]
async fn response_before_timeout_passes_through() {
    let svc = TimeoutLayer::new(ms(100)).unwrap().layer(sleeper());
    assert_eq!(svc.oneshot(99).await.unwrap(), 99);
}

#[tokio::test(start_paused = true)]
async fn timeout_fails_with_name_and_duration_exactly_at_deadline() {
    let layer = TimeoutLayer::builder(ms(100))
        .name("inventory")
        .build()
        .unwrap();
    let mut svc = layer.layer(sleeper());
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(1_000).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(100));
    let e = err.downcast_ref::<Elapsed>().expect("an Elapsed");
    assert_eq!(e.name(), "inventory");
    assert_eq!(e.timeout(), ms(100));
}

#[test]
fn ready_at_first_poll_never_touches_the_timer() {
    // No tokio runtime here: creating a timer would panic.
    let svc = TimeoutLayer::new(ms(1))
        .unwrap()
        .layer(service_fn(
            |x: u8| async move { Ok::<_, std::io::Error>(x) },
        ));
    let mut svc = svc;
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(7));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(7)) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn timer_is_measured_from_first_pending_poll() {
    let (svc, mut handle) = mock::pair::<(), ()>();
    let mut svc = TimeoutLayer::new(ms(50)).unwrap().layer(svc);
    handle.allow(1);
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(()));
    // Time passing before the first poll does not count.
    time::advance(ms(200)).await;
    assert_pending!(fut.poll());
    time::advance(ms(49)).await;
    assert_pending!(fut.poll());
    let req = handle.next_request().await.unwrap();
    time::advance(ms(1)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert!(err.is::<Elapsed>());
    drop(req);
}

#[tokio::test(start_paused = true)]
async fn inner_error_passes_through_boxed() {
    let svc = TimeoutLayer::new(ms(10))
        .unwrap()
        .layer(service_fn(|()| async {
            Err::<(), _>(std::io::Error::other("refused"))
        }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.to_string(), "refused");
    assert!(!err.is::<Elapsed>());
}

#[tokio::test(start_paused = true)]
async fn extension_override_replaces_configured_timeout() {
    let inner = service_fn(|req: http::Request<u64>| async move {
        time::sleep(ms(*req.body())).await;
        Ok::<_, std::convert::Infallible>(())
    });
    let svc = TimeoutLayer::new(ms(100)).unwrap().for_http().layer(inner);

    let mut longer = http::Request::new(150);
    longer.extensions_mut().insert(TimeoutOverride(ms(200)));
    svc.clone()
        .oneshot(longer)
        .await
        .expect("200ms override lets 150ms through");

    let mut shorter = http::Request::new(50);
    shorter.extensions_mut().insert(TimeoutOverride(ms(20)));
    let err = svc.oneshot(shorter).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), ms(20));
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_header_shortens_but_never_extends() {
    let inner = service_fn(|req: http::Request<u64>| async move {
        time::sleep(ms(*req.body())).await;
        Ok::<_, std::convert::Infallible>(())
    });
    let svc = TimeoutLayer::new(ms(100)).unwrap().for_http().layer(inner);

    let req = http::Request::builder()
        .header("grpc-timeout", "30m")
        .body(50)
        .unwrap();
    let start = Instant::now();
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(30));
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), ms(30));

    let req = http::Request::builder()
        .header("grpc-timeout", "10S")
        .body(150)
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), ms(100));
}

#[tokio::test(start_paused = true)]
async fn malformed_grpc_timeout_is_ignored() {
    let inner = service_fn(|req: http::Request<u64>| async move {
        time::sleep(ms(*req.body())).await;
        Ok::<_, std::convert::Infallible>(())
    });
    let svc = TimeoutLayer::new(ms(100)).unwrap().for_http().layer(inner);
    for bad in ["-5m", "5", "5x", "123456789m", "1.5S"] {
        let req = http::Request::builder()
            .header("grpc-timeout", bad)
            .body(60)
            .unwrap();
        svc.clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| panic!("{bad}: {e}"));
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_is_propagated_and_an_earlier_outer_one_wins() {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let inner = service_fn(move |req: http::Request<u64>| {
        *s.lock().unwrap() = req.extensions().get::<Deadline>().copied();
        async move {
            time::sleep(ms(*req.body())).await;
            Ok::<_, std::convert::Infallible>(())
        }
    });
    let svc = TimeoutLayer::new(ms(100)).unwrap().for_http().layer(inner);

    let start = Instant::now();
    svc.clone().oneshot(http::Request::new(1)).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(Deadline(start + ms(100))));

    let mut req = http::Request::new(500);
    let outer = Instant::now() + ms(40);
    req.extensions_mut().insert(Deadline(outer));
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(Instant::now(), outer);
    assert_eq!(*seen.lock().unwrap(), Some(Deadline(outer)));
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), ms(40));
}

#[tokio::test(start_paused = true)]
async fn readiness_wait_is_not_counted_by_default() {
    let (svc, mut handle) = mock::pair::<(), ()>();
    let mut svc = mock::Spawn::new(TimeoutLayer::new(ms(10)).unwrap().layer(svc));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    time::advance(ms(1_000)).await;
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn include_ready_times_out_without_calling_inner() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let layer = TimeoutLayer::builder(ms(10))
        .name("ready")
        .include_ready(true)
        .on_event(move |e: &TimeoutEvent| ev.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let (svc, mut handle) = mock::pair::<(), ()>();
    let mut svc = mock::Spawn::new(layer.layer(svc));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    time::advance(ms(9)).await;
    assert_pending!(svc.poll_ready());
    time::advance(ms(1)).await;
    // Not an error from poll_ready: ready, and the call fails.
    assert_ready_ok!(svc.poll_ready());
    let err = svc.call(()).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(handle.poll_request().map(|r| r.is_some()), Poll::Pending);
    assert_eq!(
        *events.lock().unwrap(),
        vec![TimeoutEvent::TimedOut {
            name: "ready".into(),
            timeout: ms(10),
            phase: Phase::Ready
        }]
    );
    // The service is usable again afterwards.
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn include_ready_gives_the_call_what_is_left_of_the_budget() {
    let layer = TimeoutLayer::builder(ms(100))
        .include_ready(true)
        .build()
        .unwrap();
    let (svc, mut handle) = mock::pair::<(), ()>();
    let mut svc = mock::Spawn::new(layer.layer(svc));
    handle.allow(0);
    let start = Instant::now();
    assert_pending!(svc.poll_ready());
    time::advance(ms(70)).await;
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(());
    let _req = handle.next_request().await.unwrap();
    let err = fut.await.unwrap_err();
    assert!(err.is::<Elapsed>());
    assert_eq!(start.elapsed(), ms(100));
}

#[tokio::test(start_paused = true)]
async fn events_and_counter_on_call_timeout_and_runtime_change() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let registry = Registry::new();
    let layer = TimeoutLayer::builder(ms(50))
        .name("up")
        .registry(&registry)
        .on_event(move |e: &TimeoutEvent| ev.lock().unwrap().push(e.clone()))
        .on_event(|_: &TimeoutEvent| panic!("a broken listener"))
        .build()
        .unwrap();
    let svc = layer.layer(sleeper());
    svc.clone().oneshot(10).await.unwrap();
    assert!(svc.clone().oneshot(60).await.is_err());
    let handle: TimeoutHandle = registry.get("up").expect("registered");
    assert_eq!(handle.snapshot().timed_out, 1);
    handle.set_timeout(ms(80)).unwrap();
    svc.clone()
        .oneshot(60)
        .await
        .expect("the new limit applies");
    assert_eq!(
        *events.lock().unwrap(),
        vec![TimeoutEvent::TimedOut {
            name: "up".into(),
            timeout: ms(50),
            phase: Phase::Call
        }]
    );
    let snap = registry.snapshot();
    assert_eq!(snap["up"]["kind"], "timeout");
    assert_eq!(snap["up"]["state"]["timeout_ms"], 80);
    assert_eq!(snap["up"]["state"]["timed_out"], 1);
    registry.reset_all();
    assert_eq!(handle.snapshot().timed_out, 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_future_emits_nothing() {
    let hits = Arc::new(Mutex::new(0));
    let h = hits.clone();
    let layer = TimeoutLayer::builder(ms(5))
        .on_event(move |_: &TimeoutEvent| *h.lock().unwrap() += 1)
        .build()
        .unwrap();
    let mut svc = layer.layer(sleeper());
    let mut fut = task::spawn(svc.ready().await.unwrap().call(100));
    assert_pending!(fut.poll());
    drop(fut);
    time::advance(ms(10)).await;
    assert_eq!(*hits.lock().unwrap(), 0);
    assert_eq!(layer.handle().snapshot().timed_out, 0);
}

#[test]
fn invalid_config_is_a_typed_error() {
    let err = TimeoutLayer::builder(Duration::ZERO).build().unwrap_err();
    assert_eq!(err.field(), "timeout");
    let err = TimeoutLayer::builder(ms(1)).name("").build().unwrap_err();
    assert_eq!(err.field(), "name");
    let registry = Registry::new();
    TimeoutLayer::builder(ms(1))
        .name("a")
        .registry(&registry)
        .build()
        .unwrap();
    let err = TimeoutLayer::builder(ms(1))
        .name("a")
        .registry(&registry)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "name");
    let config: TimeoutConfig =
        serde_json::from_str(r#"{"name":"x","timeout":"1m 30s","include_ready":true}"#).unwrap();
    assert_eq!(config.timeout, Duration::from_secs(90));
    assert!(serde_json::from_str::<TimeoutConfig>(r#"{"timeout":"soon"}"#).is_err());
    assert!(serde_json::from_str::<TimeoutConfig>(r#"{"timout":"1s"}"#).is_err());
}

#[tokio::test(start_paused = true)]
async fn huge_timeout_never_fires_and_never_panics() {
    let svc = TimeoutLayer::new(Duration::MAX).unwrap().layer(sleeper());
    assert_eq!(svc.oneshot(10_000).await.unwrap(), 10_000);
    let inner = service_fn(|req: http::Request<u64>| async move {
        time::sleep(ms(*req.body())).await;
        Ok::<_, std::convert::Infallible>(())
    });
    let svc = TimeoutLayer::new(ms(5)).unwrap().for_http().layer(inner);
    let mut req = http::Request::new(10);
    req.extensions_mut().insert(TimeoutOverride(Duration::MAX));
    svc.oneshot(req).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn unobserved_layer_still_names_its_error_and_counts_once_observed() {
    let layer = TimeoutLayer::new(ms(5)).unwrap();
    let svc = layer.layer(sleeper());
    let err = svc.clone().oneshot(50).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().name(), "timeout");
    // Observing starts the count; services made earlier report to it too.
    let handle = layer.handle();
    assert_eq!(handle.snapshot().timed_out, 0);
    assert!(svc.clone().oneshot(50).await.is_err());
    assert!(svc.oneshot(50).await.is_err());
    assert_eq!(handle.snapshot().timed_out, 2);
}

#[tokio::test(start_paused = true)]
async fn owned_names_are_reported() {
    let name = format!("shard-{}", 7);
    let layer = TimeoutLayer::builder(ms(5)).name(name).build().unwrap();
    let err = layer.layer(sleeper()).oneshot(50).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().name(), "shard-7");
}

#[tokio::test(start_paused = true)]
async fn successive_calls_each_time_out_at_their_own_limit() {
    let long = TimeoutLayer::new(ms(500)).unwrap().layer(sleeper());
    let short = TimeoutLayer::new(ms(20)).unwrap().layer(sleeper());
    for round in 0..5 {
        assert_eq!(long.clone().oneshot(10).await.unwrap(), 10, "{round}");
        let start = Instant::now();
        let err = short.clone().oneshot(1_000).await.unwrap_err();
        assert!(err.is::<Elapsed>());
        assert_eq!(start.elapsed(), ms(20), "round {round}");
        let start = Instant::now();
        let err = long.clone().oneshot(1_000).await.unwrap_err();
        assert!(err.is::<Elapsed>());
        assert_eq!(start.elapsed(), ms(500), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_many_threads_either_complete_or_time_out() {
    // Real time: futures move between the two workers, and their timers
    // with them.
    let svc = TimeoutLayer::new(ms(50)).unwrap().layer(sleeper());
    let calls: Vec<_> = (0..400u64)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                // Every fourth call sleeps far past the limit.
                let d = if i % 4 == 0 { 10_000 } else { i % 3 };
                (d, svc.oneshot(d).await)
            })
        })
        .collect();
    let all = async {
        for call in calls {
            let (d, res) = call.await.unwrap();
            if d == 10_000 {
                assert!(res.unwrap_err().is::<Elapsed>());
            } else {
                assert_eq!(res.unwrap(), d);
            }
        }
    };
    time::timeout(Duration::from_secs(20), all)
        .await
        .expect("every call ends within the bound");
}

/// A future that is pending once (waking its task at once, keeping no
/// waker) and then ready with `value`.
struct PendingOnce {
    value: u64,
    polled: bool,
}

impl Future for PendingOnce {
    type Output = Result<u64, std::convert::Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if std::mem::replace(&mut self.polled, true) {
            Poll::Ready(Ok(self.value))
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn pending_once(
) -> impl Service<u64, Response = u64, Error = std::convert::Infallible, Future = PendingOnce> + Clone
{
    service_fn(|value: u64| PendingOnce {
        value,
        polled: false,
    })
}

/// Counts the clones of a waker that are alive (`Arc::strong_count`).
struct CountedWaker;

impl std::task::Wake for CountedWaker {
    fn wake(self: Arc<Self>) {}
}

#[tokio::test(start_paused = true)]
async fn a_finished_call_keeps_no_timer_nor_waker_while_its_future_is_kept() {
    let counted = Arc::new(CountedWaker);
    let waker = std::task::Waker::from(counted.clone());
    let mut cx = Context::from_waker(&waker);
    let alive = || Arc::strong_count(&counted) - 1;

    // Completed after one pending poll: the timer was armed then.
    let mut svc = TimeoutLayer::new(ms(100)).unwrap().layer(pending_once());
    let mut call = std::pin::pin!(svc.call(7));
    assert!(call.as_mut().poll(&mut cx).is_pending());
    assert_eq!(alive(), 2, "the armed timer holds a clone of the waker");
    assert!(matches!(call.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
    assert_eq!(alive(), 1, "the finished call's timer is gone");
    drop(waker);
}

#[tokio::test(start_paused = true)]
async fn a_paused_clock_stays_put_while_waiting_on_a_thread_after_calls_ended() {
    let svc = TimeoutLayer::new(Duration::from_secs(10))
        .unwrap()
        .layer(sleeper());
    // A call that completed after being pending, one that timed out, one
    // that was dropped while pending, and one with a known deadline.
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
    let short = TimeoutLayer::new(ms(5)).unwrap().layer(sleeper());
    assert!(short.oneshot(1_000).await.is_err());
    let mut dropped = task::spawn(svc.clone().oneshot(1_000));
    assert_pending!(dropped.poll());
    drop(dropped);
    let http = TimeoutLayer::new(Duration::from_secs(10))
        .unwrap()
        .for_http()
        .layer(service_fn(|req: http::Request<u64>| async move {
            time::sleep(ms(*req.body())).await;
            Ok::<_, std::convert::Infallible>(())
        }));
    let mut req = http::Request::new(1);
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(20)));
    http.oneshot(req).await.unwrap();
    // A call that completed after being pending, its future kept.
    let mut kept_svc = TimeoutLayer::new(Duration::from_secs(10))
        .unwrap()
        .layer(pending_once());
    let mut kept = task::spawn(kept_svc.ready().await.unwrap().call(3));
    assert_pending!(kept.poll());
    assert_eq!(assert_ready!(kept.poll()).unwrap(), 3);

    // Nothing is left for the idle paused runtime to advance its clock to
    // while it waits for another thread. (Not `spawn_blocking`: tokio does
    // not auto-advance while a blocking task runs.)
    let start = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(ms(20));
        tx.send(()).unwrap();
    });
    rx.await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    thread.join().unwrap();
    drop(kept);
}

/// An inner service whose call waits for its request, a signal: pending
/// (so the timeout arms its timer) until the signal fires. `produced`
/// counts the responses it produced.
fn on_signal(
    produced: Arc<AtomicUsize>,
) -> impl Service<
    tokio::sync::oneshot::Receiver<u64>,
    Response = u64,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<u64, std::convert::Infallible>> + Send,
> + Clone {
    service_fn(move |signal: tokio::sync::oneshot::Receiver<u64>| {
        let produced = produced.clone();
        async move {
            let value = signal.await.expect("every signal is sent");
            produced.fetch_add(1, Ordering::SeqCst);
            Ok(value)
        }
    })
}

/// `call`, counting into `armed` when its first poll has returned
/// pending: the whole poll, so a timeout's timer is armed by then (the
/// inner future's own first poll comes before the timer is made).
fn count_first_pending<F: Future>(
    call: F,
    armed: Arc<AtomicUsize>,
) -> impl Future<Output = F::Output> {
    let mut call = Box::pin(call);
    let mut counted = false;
    std::future::poll_fn(move |cx| {
        let out = call.as_mut().poll(cx);
        if out.is_pending() && !counted {
            counted = true;
            armed.fetch_add(1, Ordering::SeqCst);
        }
        out
    })
}

/// The output of a future that must already be complete.
fn completed<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("not complete"),
    }
}

#[test]
fn a_runtime_dropped_as_calls_complete_never_panics_nor_loses_a_response() {
    const ROUNDS: usize = 100;
    const SPAWNED: usize = 8;
    const DRIVEN: usize = 2;
    let quick = TimeoutLayer::new(Duration::from_secs(60))
        .unwrap()
        .layer(sleeper());
    for round in 0..ROUNDS {
        let armed = Arc::new(AtomicUsize::new(0));
        let produced = Arc::new(AtomicUsize::new(0));
        let svc = TimeoutLayer::new(Duration::from_secs(60))
            .unwrap()
            .layer(on_signal(produced.clone()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let mut signals = Vec::new();
        let mut signal = || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            signals.push(tx);
            rx
        };
        // Calls on the workers, pending until their signal fires right
        // before the runtime is dropped.
        let spawned: Vec<_> = (0..SPAWNED)
            .map(|_| {
                let call = svc.clone().oneshot(signal());
                rt.spawn(count_first_pending(call, armed.clone()))
            })
            .collect();
        // Calls on threads of their own, through `Handle::block_on`: they
        // complete when their signal fires, possibly while the runtime
        // shuts down.
        let driven: Vec<_> = (0..DRIVEN)
            .map(|_| {
                let call = count_first_pending(svc.clone().oneshot(signal()), armed.clone());
                let handle = rt.handle().clone();
                std::thread::spawn(move || handle.block_on(call))
            })
            .collect();
        // Calls that complete, and calls still pending at the drop.
        let done: Vec<_> = (0..8u64)
            .map(|i| rt.spawn(quick.clone().oneshot(i % 3)))
            .collect();
        let pending: Vec<_> = (0..8)
            .map(|_| rt.spawn(quick.clone().oneshot(100_000)))
            .collect();
        rt.block_on(async {
            for call in done {
                assert!(call.await.unwrap().is_ok(), "round {round}");
            }
        });
        // Every signalled call has been polled and found pending, its
        // timer armed. Counting the inner future's first poll instead let
        // a call driven by `block_on` be between that poll and arming its
        // timer when the runtime shut down: tokio's timer then panics
        // (the call was pending, not complete, as the runtime went away).
        while armed.load(Ordering::SeqCst) < SPAWNED + DRIVEN {
            std::thread::yield_now();
        }

        for (i, signal) in signals.into_iter().enumerate() {
            signal.send(i as u64).unwrap();
        }
        drop(rt);

        let mut delivered = 0;
        for (i, call) in driven.into_iter().enumerate() {
            let res = call.join().expect("a call driven by block_on never panics");
            assert_eq!(res.unwrap(), (SPAWNED + i) as u64, "round {round}");
            delivered += 1;
        }
        for (i, call) in spawned.into_iter().enumerate() {
            match completed(call) {
                Ok(res) => {
                    assert_eq!(res.unwrap(), i as u64, "round {round}");
                    delivered += 1;
                }
                // Shut down before its task ran again: the inner future
                // never produced its response.
                Err(e) => assert!(e.is_cancelled(), "round {round}: {e}"),
            }
        }
        for call in pending {
            let e = completed(call).unwrap_err();
            assert!(e.is_cancelled(), "round {round}: {e}");
        }
        assert_eq!(
            produced.load(Ordering::SeqCst),
            delivered,
            "round {round}: every response the inner service produced was delivered"
        );
    }
}

#[test]
fn new_and_set_timeout_refuse_zero_as_the_builder_does() {
    assert_eq!(
        TimeoutLayer::new(Duration::ZERO).unwrap_err().field(),
        "timeout"
    );
    let handle = TimeoutLayer::new(ms(40)).unwrap().handle();
    assert_eq!(
        handle.set_timeout(Duration::ZERO).unwrap_err().field(),
        "timeout"
    );
    assert_eq!(handle.snapshot().timeout, ms(40));
    handle.set_timeout(Duration::MAX).unwrap();
    assert_eq!(handle.snapshot().timeout.as_nanos(), u128::from(u64::MAX));
}
