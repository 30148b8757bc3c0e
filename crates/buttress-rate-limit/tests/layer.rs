//! The global layer on a paused clock: the wait queue (priorities, FIFO,
//! dropped waiters, `max_wait`, `max_queue`), the reserve, events,
//! snapshots, the registry and run-time rate changes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::error::BoxError;
use buttress_core::{Component, RateLimited, Registry};
use buttress_rate_limit::{
    Algorithm, Backend, Rate, RateLimitEvent, RateLimitHandle, RateLimitLayer, RejectReason,
};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A request: an id and a priority.
type Req = (u32, u8);

/// Which ids reached the inner service, and when (since `start`).
#[derive(Clone)]
struct Calls {
    log: Arc<Mutex<Vec<(u32, Duration)>>>,
    start: Instant,
}

impl Calls {
    fn new() -> Self {
        Self {
            log: Arc::default(),
            start: Instant::now(),
        }
    }

    fn ids(&self) -> Vec<u32> {
        self.log.lock().unwrap().iter().map(|c| c.0).collect()
    }

    fn all(&self) -> Vec<(u32, Duration)> {
        self.log.lock().unwrap().clone()
    }

    /// The inner service: records each call.
    fn service(
        &self,
    ) -> impl Service<
        Req,
        Response = u32,
        Error = Infallible,
        Future = impl Future<Output = Result<u32, Infallible>> + Send + 'static,
    > + Clone
           + Send {
        let calls = self.clone();
        tower::service_fn(move |(id, _): Req| {
            calls.log.lock().unwrap().push((id, calls.start.elapsed()));
            std::future::ready(Ok::<_, Infallible>(id))
        })
    }
}

/// Records every event.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<RateLimitEvent>>>);

impl Events {
    fn listener(&self) -> impl Fn(&RateLimitEvent) + Send + Sync + 'static {
        let events = self.0.clone();
        move |e: &RateLimitEvent| events.lock().unwrap().push(e.clone())
    }

    fn take(&self) -> Vec<RateLimitEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Calls admitted so far: the limiter does not count them, its
    /// `Permitted` events do.
    fn permitted(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, RateLimitEvent::Permitted { .. }))
            .count()
    }

    fn reasons(&self) -> Vec<RejectReason> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                RateLimitEvent::Rejected { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }
}

fn limited(err: &BoxError) -> &RateLimited {
    err.downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("not a RateLimited: {err}"))
}

const SEC: Duration = Duration::from_secs(1);

/// One permit per second, a burst of one, a queue of `max_queue` waiting at
/// most `max_wait`, the priority from the request.
fn queued(
    calls: &Calls,
    events: &Events,
    max_wait: Duration,
    max_queue: usize,
) -> (
    impl Service<
            Req,
            Response = u32,
            Error = BoxError,
            Future = impl Future<Output = Result<u32, BoxError>> + Send + 'static,
        > + Clone
        + Send,
    RateLimitHandle,
) {
    let layer = RateLimitLayer::builder(Rate::per_second(1))
        .burst(1)
        .max_wait(max_wait)
        .max_queue(max_queue)
        .priority(|r: &Req| r.1)
        .on_event(events.listener())
        .build()
        .unwrap();
    let handle = layer.handle();
    (
        ServiceBuilder::new().layer(layer).service(calls.service()),
        handle,
    )
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_by_priority_then_in_arrival_order() {
    let (calls, events) = (Calls::new(), Events::default());
    let (mut svc, handle) = queued(&calls, &events, 20 * SEC, 10);
    svc.ready().await.unwrap().call((0, 0)).await.unwrap();
    // The first waiter is of the lowest priority, the others mixed.
    let order = [(1, 0), (2, 1), (3, 5), (4, 1), (5, 5), (6, 3), (7, 0)];
    let mut tasks = Vec::new();
    for req in order {
        let fut = svc.ready().await.unwrap().call(req);
        tasks.push(tokio::spawn(fut));
    }
    assert_eq!(handle.snapshot().waiting, 7);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(calls.ids(), [0, 3, 5, 6, 2, 4, 1, 7]);
    // One per second, each as soon as its permit is there.
    let times: Vec<_> = calls.all().iter().map(|c| c.1).collect();
    assert_eq!(times, (0..8).map(|s| s * SEC).collect::<Vec<_>>());
    let queued: Vec<u8> = events
        .take()
        .iter()
        .filter_map(|e| match e {
            RateLimitEvent::Queued { priority, .. } => Some(*priority),
            _ => None,
        })
        .collect();
    assert_eq!(queued, [0, 1, 5, 1, 5, 3, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_never_takes_a_permit_and_the_next_one_gets_it() {
    let (calls, events) = (Calls::new(), Events::default());
    let (mut svc, handle) = queued(&calls, &events, 20 * SEC, 10);
    svc.ready().await.unwrap().call((0, 0)).await.unwrap();

    // The head, polled once (sleeping until its permit), then dropped.
    let mut head = tokio_test::task::spawn(svc.ready().await.unwrap().call((1, 0)));
    assert_pending!(head.poll());
    // One behind it, polled once too, then dropped.
    let mut behind = tokio_test::task::spawn(svc.ready().await.unwrap().call((2, 0)));
    assert_pending!(behind.poll());
    let next = tokio::spawn(svc.ready().await.unwrap().call((3, 0)));
    let last = tokio::spawn(svc.ready().await.unwrap().call((4, 0)));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().waiting, 4);
    drop(head);
    drop(behind);
    assert_eq!(handle.snapshot().waiting, 2);

    next.await.unwrap().unwrap();
    last.await.unwrap().unwrap();
    tokio::time::sleep(30 * SEC).await;
    // The dropped ones never reached the inner service, and took no
    // permit: 3 got the first one after 0's, 4 the next.
    assert_eq!(calls.all(), [(0, Duration::ZERO), (3, SEC), (4, 2 * SEC)]);
    assert_eq!(events.permitted(), 3, "the dropped ones were not admitted");
    let s = handle.snapshot();
    assert_eq!((s.rejected, s.waiting), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_permit_comes_after_max_wait_is_rejected_at_once() {
    let (calls, events) = (Calls::new(), Events::default());
    let (mut svc, handle) = queued(&calls, &events, Duration::from_millis(500), 10);
    svc.ready().await.unwrap().call((0, 0)).await.unwrap();
    let start = Instant::now();
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call((1, 0)));
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(Instant::now(), start, "no waiting");
    assert_eq!(limited(&err).retry_after(), Some(SEC));
    assert_eq!(events.reasons(), [RejectReason::Exhausted]);
    assert_eq!(handle.snapshot().waiting, 0);
    assert_eq!(calls.ids(), [0]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_within_max_wait_is_served_when_its_permit_comes() {
    let (calls, events) = (Calls::new(), Events::default());
    let (mut svc, _) = queued(&calls, &events, SEC, 10);
    svc.ready().await.unwrap().call((0, 0)).await.unwrap();
    // Exactly max_wait away: it waits.
    svc.ready().await.unwrap().call((1, 0)).await.unwrap();
    assert_eq!(calls.all(), [(0, Duration::ZERO), (1, SEC)]);
    let permitted: Vec<Duration> = events
        .take()
        .iter()
        .filter_map(|e| match e {
            RateLimitEvent::Permitted { waited, .. } => Some(*waited),
            _ => None,
        })
        .collect();
    assert_eq!(permitted, [Duration::ZERO, SEC]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_at_once() {
    let (calls, events) = (Calls::new(), Events::default());
    let (mut svc, handle) = queued(&calls, &events, 20 * SEC, 2);
    svc.ready().await.unwrap().call((0, 0)).await.unwrap();
    let a = tokio::spawn(svc.ready().await.unwrap().call((1, 0)));
    let b = tokio::spawn(svc.ready().await.unwrap().call((2, 9)));
    let start = Instant::now();
    let mut c = tokio_test::task::spawn(svc.ready().await.unwrap().call((3, 9)));
    let err = assert_ready!(c.poll()).unwrap_err();
    assert_eq!(Instant::now(), start);
    limited(&err);
    assert_eq!(events.reasons(), [RejectReason::QueueFull]);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(calls.ids(), [0, 2, 1]);
    assert_eq!(events.permitted(), 3);
    let s = handle.snapshot();
    assert_eq!((s.rejected, s.waiting), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn the_reserve_keeps_half_of_the_burst_for_high_priorities() {
    let calls = Calls::new();
    let layer = RateLimitLayer::builder(Rate::per_minute(4))
        .burst(4)
        .reserve(0.5, 2)
        .priority(|r: &Req| r.1)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(calls.service());
    let mut outcome = Vec::new();
    for (id, p) in [
        (1, 0),
        (2, 1),
        (3, 0),
        (4, 1),
        (5, 2),
        (6, 3),
        (7, 2),
        (8, 0),
    ] {
        outcome.push(svc.ready().await.unwrap().call((id, p)).await.is_ok());
    }
    // Low priorities take 2 of 4 and leave the rest; priority 2 and above
    // may take everything.
    assert_eq!(
        outcome,
        [true, true, false, false, true, true, false, false]
    );
    assert_eq!(calls.ids(), [1, 2, 5, 6]);
}

#[tokio::test(start_paused = true)]
async fn events_carry_what_happened() {
    let events = Events::default();
    let layer = RateLimitLayer::builder(Rate::per_second(2))
        .name("api")
        .max_wait(Duration::from_millis(900))
        .max_queue(1)
        .cost(|c: &u64| *c)
        .on_event(events.listener())
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|c: u64| async move { Ok::<_, Infallible>(c) });
    svc.ready().await.unwrap().call(2).await.unwrap();
    // More than the burst: never.
    let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert_eq!(limited(&err).retry_after(), None);
    let waiter = tokio::spawn(svc.ready().await.unwrap().call(1));
    tokio::task::yield_now().await;
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(limited(&err).name(), "api");
    waiter.await.unwrap().unwrap();
    // Now 2 would come after a second.
    let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(
        limited(&err).retry_after(),
        Some(Duration::from_millis(1000))
    );
    let name: Arc<str> = Arc::from("api");
    let got = events.take();
    let expected = [
        "permitted cost=2 waited=0ns",
        "rejected cost=3 over_capacity retry=None",
        "queued queued=1 priority=0",
        "rejected cost=1 queue_full",
        "permitted cost=1 waited=500ms",
        "rejected cost=2 exhausted retry=Some(1s)",
    ];
    let described: Vec<String> = got
        .iter()
        .map(|e| match e {
            RateLimitEvent::Permitted {
                name: n,
                cost,
                waited,
                backend,
            } => {
                assert_eq!((n, *backend), (&name, Backend::Local));
                format!("permitted cost={cost} waited={waited:?}")
            }
            RateLimitEvent::Queued {
                name: n,
                queued,
                priority,
            } => {
                assert_eq!(n, &name);
                format!("queued queued={queued} priority={priority}")
            }
            RateLimitEvent::Rejected {
                name: n,
                cost,
                reason,
                retry_after,
                backend,
            } => {
                assert_eq!((n, *backend), (&name, Backend::Local));
                if *reason == RejectReason::QueueFull {
                    // The retry hint of a full queue: see
                    // `a_queue_full_rejection_has_no_zero_retry_hint`.
                    format!("rejected cost={cost} {}", reason.as_str())
                } else {
                    format!(
                        "rejected cost={cost} {} retry={retry_after:?}",
                        reason.as_str()
                    )
                }
            }
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(described, expected);
}

#[tokio::test(start_paused = true)]
async fn snapshot_numbers_are_exact_after_a_known_sequence() {
    let events = Events::default();
    let layer = RateLimitLayer::builder(Rate::per_second(10))
        .burst(5)
        .max_wait(Duration::from_secs(10))
        .max_queue(4)
        .on_event(events.listener())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|()| async { Ok::<_, Infallible>(()) });
    let s = handle.snapshot();
    assert_eq!(
        (s.algorithm, s.rate, s.burst, s.available, s.reset),
        (Algorithm::Gcra, Rate::per_second(10), 5, 5, Duration::ZERO)
    );
    for _ in 0..3 {
        svc.ready().await.unwrap().call(()).await.unwrap();
    }
    let s = handle.snapshot();
    assert_eq!(
        (s.available, s.reset, s.rejected, s.waiting),
        (2, Duration::from_millis(300), 0, 0)
    );
    assert_eq!(events.permitted(), 3);
    for _ in 0..2 {
        svc.ready().await.unwrap().call(()).await.unwrap();
    }
    let waiter = tokio::spawn(svc.ready().await.unwrap().call(()));
    tokio::task::yield_now().await;
    let s = handle.snapshot();
    assert_eq!(
        (s.available, s.reset, s.rejected, s.waiting),
        (0, Duration::from_millis(500), 0, 1)
    );
    assert_eq!(events.permitted(), 5, "the waiter is not admitted yet");
    waiter.await.unwrap().unwrap();
    // Served at 100 ms.
    tokio::time::advance(Duration::from_millis(150)).await;
    let s = handle.snapshot();
    assert_eq!(
        (s.available, s.reset, s.rejected, s.waiting),
        (1, Duration::from_millis(350), 0, 0)
    );
    assert_eq!(events.permitted(), 6);
}

#[tokio::test(start_paused = true)]
async fn the_registry_holds_the_handle_and_its_json() {
    let registry = Registry::new();
    let layer = RateLimitLayer::builder(Rate::per_second(10))
        .name("api")
        .burst(5)
        .registry(&registry)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|()| async { Ok::<_, Infallible>(()) });
    let mut admitted = 0;
    for _ in 0..6 {
        admitted += u32::from(svc.ready().await.unwrap().call(()).await.is_ok());
    }
    assert_eq!(admitted, 5);
    assert_eq!(
        registry.snapshot(),
        serde_json::json!({
            "api": {
                "kind": "rate_limit",
                "state": {
                    "algorithm": "gcra",
                    "rate": "10/1s",
                    "burst": 5,
                    "available": 0,
                    "reset_ms": 500,
                    "waiting": 0,
                    "rejected": 1,
                    "backend": "local",
                }
            }
        })
    );
    let handle: RateLimitHandle = registry.get("api").unwrap();
    assert_eq!(handle.name(), "api");
    registry.reset_all();
    assert_eq!(handle.snapshot().rejected, 0);
    // A second limiter of the same name is refused.
    let err = RateLimitLayer::builder(Rate::per_second(1))
        .name("api")
        .registry(&registry)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "name");
    assert_eq!(Component::kind(&handle), "rate_limit");
}

#[tokio::test(start_paused = true)]
async fn set_rate_applies_to_the_next_decision() {
    let layer = RateLimitLayer::builder(Rate::per_second(1))
        .burst(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|()| async { Ok::<_, Infallible>(()) });
    handle.set_rate(Rate::per_second(10), Some(5)).unwrap();
    for _ in 0..5 {
        svc.ready().await.unwrap().call(()).await.unwrap();
    }
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(
        limited(&err).retry_after(),
        Some(Duration::from_millis(100))
    );
    // Back to 1/s with a burst of 1: the 500 ms of debt stay, and one
    // permit takes a second.
    handle.set_rate(Rate::per_second(1), None).unwrap();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(
        limited(&err).retry_after(),
        Some(Duration::from_millis(500))
    );
    let q = limited(&err).quota().unwrap();
    assert_eq!((q.limit(), q.window()), (1, SEC));
    // An invalid change changes nothing.
    assert_eq!(
        handle
            .set_rate(Rate::per_second(0), None)
            .unwrap_err()
            .field(),
        "rate"
    );
    assert_eq!(handle.snapshot().rate, Rate::per_second(1));
    tokio::time::advance(Duration::from_millis(500)).await;
    svc.ready().await.unwrap().call(()).await.unwrap();
}

/// One layer, many services and clones: one limit.
#[tokio::test(start_paused = true)]
async fn every_service_and_clone_of_a_layer_shares_one_limit() {
    let layer = RateLimitLayer::builder(Rate::per_minute(3))
        .build()
        .unwrap();
    let reached = Arc::new(AtomicU64::new(0));
    let inner = || {
        let reached = reached.clone();
        tower::service_fn(move |()| {
            reached.fetch_add(1, Relaxed);
            std::future::ready(Ok::<_, Infallible>(()))
        })
    };
    let mut a = ServiceBuilder::new().layer(layer.clone()).service(inner());
    let mut b = ServiceBuilder::new().layer(layer.clone()).service(inner());
    let mut c = a.clone();
    assert!(a.ready().await.unwrap().call(()).await.is_ok());
    assert!(b.ready().await.unwrap().call(()).await.is_ok());
    assert!(c.ready().await.unwrap().call(()).await.is_ok());
    assert!(a.ready().await.unwrap().call(()).await.is_err());
    assert!(b.ready().await.unwrap().call(()).await.is_err());
    assert_eq!(reached.load(Relaxed), 3);
    assert_eq!(layer.handle().snapshot().rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn the_first_waiter_keeps_its_priority_even_with_nobody_waiting_before_it() {
    let (calls, events) = (Calls::new(), Events::default());
    let (mut svc, _) = queued(&calls, &events, 20 * SEC, 10);
    svc.ready().await.unwrap().call((0, 0)).await.unwrap();
    // The first waiter (queue empty when it arrives) is urgent; a less
    // urgent one arrives after it.
    let urgent = tokio::spawn(svc.ready().await.unwrap().call((1, 5)));
    let lower = tokio::spawn(svc.ready().await.unwrap().call((2, 1)));
    urgent.await.unwrap().unwrap();
    lower.await.unwrap().unwrap();
    assert_eq!(calls.ids(), [0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_queue_full_rejection_never_says_come_back_now() {
    let (calls, events) = (Calls::new(), Events::default());
    let (mut svc, _) = queued(&calls, &events, 20 * SEC, 1);
    svc.ready().await.unwrap().call((0, 0)).await.unwrap();
    let _waiting = tokio::spawn(svc.ready().await.unwrap().call((1, 0)));
    let err = svc.ready().await.unwrap().call((2, 0)).await.unwrap_err();
    assert_eq!(events.reasons(), [RejectReason::QueueFull]);
    let hint = limited(&err).retry_after().expect("a retry hint");
    assert!(hint >= SEC, "retry_after {hint:?}");
}

#[tokio::test(start_paused = true)]
async fn a_window_set_to_a_longer_period_starts_again_within_one_new_period() {
    for algorithm in [Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        let layer = RateLimitLayer::builder(Rate::per_second(2))
            .algorithm(algorithm)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|()| async { Ok::<_, Infallible>(()) });
        tokio::time::advance(Duration::from_secs(30)).await;
        svc.ready().await.unwrap().call(()).await.unwrap();
        svc.ready().await.unwrap().call(()).await.unwrap();
        assert!(svc.ready().await.unwrap().call(()).await.is_err());
        handle.set_rate(Rate::per_minute(2), None).unwrap();
        // The window that started at 30 s now lasts a minute: still full.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(
            svc.ready().await.unwrap().call(()).await.is_err(),
            "{algorithm}: the change must not reset the count"
        );
        tokio::time::advance(Duration::from_secs(120)).await;
        let res = svc.ready().await.unwrap().call(()).await;
        assert!(
            res.is_ok(),
            "{algorithm}: still refused 2 min after the change: {:?}",
            res.unwrap_err()
                .downcast_ref::<RateLimited>()
                .unwrap()
                .retry_after()
        );
    }
}

/// The facade's empty slot: a pass-through limiter admits every call at
/// once and counts nothing.
#[tokio::test(start_paused = true)]
async fn a_pass_through_limiter_admits_every_call_and_counts_nothing() {
    let layer = RateLimitLayer::pass_through();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|x: u32| async move { Ok::<_, Infallible>(x + 1) });
    let start = Instant::now();
    for i in 0..100 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i + 1);
    }
    assert_eq!(Instant::now(), start, "no call waited");
    let snap = layer.handle().snapshot();
    assert_eq!((snap.rejected, snap.waiting), (0, 0));
}
