//! `BulkheadHandle::reconfigure` (and the keyed one) and `config`: live
//! limits for the next calls, calls holding a permit or queued finish
//! under the values they started with, refusals change nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_bulkhead::error::{BulkheadFull, BulkheadFullReason};
use buttress_bulkhead::{BulkheadConfig, KeyedBulkheadLayer};
use buttress_core::key::Header;
use buttress_core::BoxError;
use tokio::time::{self, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(max: usize, queue: usize, wait: Option<Duration>) -> BulkheadConfig {
    BulkheadConfig {
        name: "db".to_owned(),
        max_concurrent: max,
        max_queue: queue,
        max_wait: wait,
        retry_after: Some(Duration::from_secs(1)),
    }
}

fn sleeper() -> impl Service<
    u64,
    Response = u64,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<u64, std::convert::Infallible>> + Send,
> + Clone
       + Send {
    service_fn(|d: u64| async move {
        time::sleep(ms(d)).await;
        Ok::<_, std::convert::Infallible>(d)
    })
}

fn full(err: &BoxError) -> &BulkheadFull {
    err.downcast_ref::<BulkheadFull>().expect("a BulkheadFull")
}

#[tokio::test(start_paused = true)]
async fn a_new_limit_applies_to_the_next_calls_and_permits_held_stay() {
    let layer = config(1, 0, None).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(sleeper());

    let first = tokio::spawn(svc.ready().await.unwrap().call(100));
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(full(&err).reason(), BulkheadFullReason::QueueFull);

    // Raised: the second call runs beside the first. (A check first,
    // which applies nothing.)
    handle.check_reconfigure(&config(2, 0, None)).unwrap();
    assert_eq!(handle.snapshot().max_concurrent, 1);
    handle.reconfigure(&config(2, 0, None)).unwrap();
    let second = tokio::spawn(svc.ready().await.unwrap().call(200));
    assert_eq!(handle.snapshot().active, 2);

    // Lowered below the calls in flight: both keep their permits and
    // finish; new calls wait for the count to drop below the new limit.
    handle.reconfigure(&config(1, 0, None)).unwrap();
    assert_eq!(handle.snapshot().active, 2);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(full(&err).reason(), BulkheadFullReason::QueueFull);
    assert_eq!(first.await.unwrap().unwrap(), 100);
    // One left in flight, at the limit of 1: still full.
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(full(&err).reason(), BulkheadFullReason::QueueFull);
    assert_eq!(second.await.unwrap().unwrap(), 200);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    assert_eq!(handle.snapshot().completed, 3);
}

#[tokio::test(start_paused = true)]
async fn queue_bound_wait_and_hint_apply_to_the_next_callers() {
    let layer = config(1, 0, None).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(sleeper());
    let held = tokio::spawn(svc.clone().oneshot(1_000));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().active, 1);

    let err = svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(full(&err).retry_after(), Some(Duration::from_secs(1)));

    let mut new = config(1, 1, Some(ms(50)));
    new.retry_after = Some(ms(300));
    handle.reconfigure(&new).unwrap();
    let start = Instant::now();
    let err = svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(full(&err).reason(), BulkheadFullReason::WaitTimedOut);
    assert_eq!(start.elapsed(), ms(50));
    assert_eq!(full(&err).retry_after(), Some(ms(300)));

    // A caller already queued keeps the wait it was queued with.
    let queued = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().queued, 1);
    handle.reconfigure(&config(1, 1, Some(ms(5_000)))).unwrap();
    let start = Instant::now();
    let err = queued.await.unwrap().unwrap_err();
    assert_eq!(full(&err).reason(), BulkheadFullReason::WaitTimedOut);
    assert!(start.elapsed() <= ms(50), "{:?}", start.elapsed());
    held.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_with_builds_error_and_nothing_changes() {
    let before = config(4, 2, Some(ms(10)));
    let handle = before.build().unwrap().handle();
    for bad in [
        config(0, 2, Some(ms(10))),
        config(usize::MAX, 2, Some(ms(10))),
        config(4, 0, Some(ms(10))),
        BulkheadConfig {
            name: String::new(),
            ..config(8, 2, None)
        },
    ] {
        let built = bad.build().unwrap_err();
        let checked = handle.check_reconfigure(&bad).unwrap_err();
        let refused = handle.reconfigure(&bad).unwrap_err();
        assert_eq!(checked.to_string(), built.to_string());
        assert_eq!(refused.to_string(), built.to_string());
        assert_eq!(handle.config(), before);
        assert_eq!(handle.snapshot().max_concurrent, 4);
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_name_is_refused_naming_the_field_and_nothing_changes() {
    let before = config(4, 0, None);
    let handle = before.build().unwrap().handle();
    let err = handle
        .reconfigure(&BulkheadConfig {
            name: "other".to_owned(),
            ..config(9, 3, Some(ms(5)))
        })
        .unwrap_err();
    assert_eq!(err.field(), "name");
    assert!(err.reason().contains("live instance"), "{err}");
    assert_eq!(handle.config(), before);
    assert_eq!(handle.snapshot().max_concurrent, 4);
}

#[tokio::test(start_paused = true)]
async fn a_keyed_bulkhead_applies_a_config_to_its_keys_now_and_later() {
    let layer = KeyedBulkheadLayer::builder(Header::new(http::HeaderName::from_static("x-tenant")))
        .name("db")
        .max_concurrent(1)
        .build::<Vec<u8>>()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
        time::sleep(ms(100)).await;
        Ok::<_, std::convert::Infallible>(())
    }));
    let req = |tenant: &str| {
        http::Request::builder()
            .header("x-tenant", tenant)
            .body(())
            .unwrap()
    };
    svc.clone().oneshot(req("a")).await.unwrap();
    assert_eq!(
        handle
            .key(&b"a".to_vec())
            .unwrap()
            .snapshot()
            .max_concurrent,
        1
    );

    let new = config(3, 2, Some(ms(20)));
    handle.reconfigure(&new).unwrap();
    assert_eq!(handle.config(), new);
    assert_eq!(handle.key(&b"a".to_vec()).unwrap().config(), new);
    assert_eq!(handle.unkeyed().config(), new);
    svc.clone().oneshot(req("b")).await.unwrap();
    assert_eq!(handle.key(&b"b".to_vec()).unwrap().config(), new);

    // Three at once for one key now pass.
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(req("c"))))
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }

    let err = handle
        .reconfigure(&BulkheadConfig {
            name: "other".to_owned(),
            ..new.clone()
        })
        .unwrap_err();
    assert_eq!(err.field(), "name");
    let checked = handle.check_reconfigure(&config(0, 0, None)).unwrap_err();
    assert_eq!(checked.field(), "max_concurrent");
    let err = handle.reconfigure(&config(0, 0, None)).unwrap_err();
    assert_eq!(err.field(), "max_concurrent");
    assert_eq!(handle.config(), new);
    assert_eq!(handle.key(&b"a".to_vec()).unwrap().config(), new);
}

/// `CALLERS` tasks making `calls` calls each, one after the other.
fn run<S>(svc: &S, callers: usize, calls: usize) -> Vec<tokio::task::JoinHandle<()>>
where
    S: Service<usize, Response = usize, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    (0..callers)
        .map(|t| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..calls {
                    let n = t * 10_000 + i;
                    let got = svc.ready().await.unwrap().call(n).await.unwrap();
                    assert_eq!(got, n);
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_during_flips_never_exceed_the_limit_they_were_admitted_under() {
    const CALLERS: usize = 16;
    const CALLS: usize = 200;
    let low = config(2, CALLERS, None);
    let high = config(5, CALLERS, None);
    let layer = low.build().unwrap();
    let handle = layer.handle();
    let inflight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let svc = {
        let (inflight, peak) = (inflight.clone(), peak.clone());
        layer.layer(service_fn(move |n: usize| {
            let (inflight, peak) = (inflight.clone(), peak.clone());
            async move {
                let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                inflight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(n)
            }
        }))
    };

    let flipper = {
        let (handle, low, high) = (handle.clone(), low.clone(), high.clone());
        tokio::spawn(async move {
            for i in 0..1_000 {
                handle
                    .reconfigure(if i % 2 == 0 { &high } else { &low })
                    .unwrap();
                let seen = handle.config();
                assert!(seen == low || seen == high, "a mix: {seen:?}");
                tokio::task::yield_now().await;
            }
        })
    };
    for c in run(&svc, CALLERS, CALLS) {
        // Every caller has a place in the queue: no call is rejected or lost.
        c.await.unwrap();
    }
    flipper.await.unwrap();
    assert!(
        peak.load(Ordering::SeqCst) <= 5,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(handle.config(), low);

    // Settled at the low limit: never more than 2 from now on.
    peak.store(0, Ordering::SeqCst);
    for c in run(&svc, CALLERS, 50) {
        c.await.unwrap();
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    let s = handle.snapshot();
    assert_eq!(s.completed, (CALLERS * (CALLS + 50)) as u64);
    assert_eq!((s.active, s.queued, s.rejected), (0, 0, 0));
}
