//! Many tasks on two worker threads through one small bulkhead: the limit
//! always holds and every permit comes back. Bounded in calls and time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_bulkhead::error::BulkheadFull;
use buttress_bulkhead::BulkheadLayer;
use tower::{service_fn, Layer, Service, ServiceExt};

const TASKS: usize = 8;
const CALLS_PER_TASK: usize = 10_000;
const LIMIT: usize = 4;

async fn hammer(queue: usize, max_wait: Option<Duration>) -> (usize, usize) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let builder = BulkheadLayer::builder()
        .name("stress")
        .max_concurrent(LIMIT)
        .max_queue(queue);
    let layer = match max_wait {
        Some(w) => builder.max_wait(w),
        None => builder,
    }
    .build()
    .unwrap();
    let handle = layer.handle();

    let (fl, pk) = (in_flight.clone(), peak.clone());
    let svc = layer.layer(service_fn(move |i: usize| {
        let (fl, pk) = (fl.clone(), pk.clone());
        async move {
            let now = fl.fetch_add(1, Ordering::SeqCst) + 1;
            pk.fetch_max(now, Ordering::SeqCst);
            // Interleave with the other tasks while holding the permit.
            for _ in 0..(i % 3) {
                tokio::task::yield_now().await;
            }
            fl.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(())
        }
    }));

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let (mut ok, mut rejected) = (0, 0);
                for i in 0..CALLS_PER_TASK {
                    let call = svc.ready().await.unwrap().call(t + i);
                    // Drop a few futures unpolled: they must release too.
                    if i % 97 == 0 {
                        drop(call);
                        continue;
                    }
                    match call.await {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            assert!(e.is::<BulkheadFull>(), "unexpected error {e}");
                            rejected += 1;
                        }
                    }
                }
                (ok, rejected)
            })
        })
        .collect();

    let (mut ok, mut rejected) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.unwrap();
        ok += o;
        rejected += r;
    }
    assert!(
        peak.load(Ordering::SeqCst) <= LIMIT,
        "the limit was exceeded: {} calls at once",
        peak.load(Ordering::SeqCst)
    );
    let snap = handle.snapshot();
    assert_eq!(
        (snap.active, snap.queued, snap.available),
        (0, 0, LIMIT),
        "every permit came back: {snap:?}"
    );
    // Futures dropped unpolled may have been rejections too.
    let dropped = TASKS * CALLS_PER_TASK.div_ceil(97);
    let counted = snap.rejected as usize;
    assert!(
        (rejected..=rejected + dropped).contains(&counted),
        "rejections: {counted} counted, {rejected} seen, {dropped} dropped"
    );
    (ok, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_holds_and_permits_return_with_a_queue() {
    let (ok, rejected) = tokio::time::timeout(Duration::from_secs(60), hammer(64, None))
        .await
        .expect("bounded in time");
    // With a queue deep enough for every task, nobody is rejected.
    assert_eq!(rejected, 0);
    let dropped = TASKS * CALLS_PER_TASK.div_ceil(97);
    assert_eq!(ok, TASKS * CALLS_PER_TASK - dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_holds_and_permits_return_without_a_queue() {
    let (ok, rejected) = tokio::time::timeout(Duration::from_secs(60), hammer(0, None))
        .await
        .expect("bounded in time");
    let dropped = TASKS * CALLS_PER_TASK.div_ceil(97);
    assert_eq!(ok + rejected, TASKS * CALLS_PER_TASK - dropped);
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_holds_with_a_short_queue_timeout() {
    let (ok, _rejected) = tokio::time::timeout(
        Duration::from_secs(60),
        hammer(2, Some(Duration::from_micros(50))),
    )
    .await
    .expect("bounded in time");
    assert!(ok > 0);
}

/// Queued callers that give up (their service is dropped while it waits)
/// race with releases on the other thread, while the limit is resized: the
/// limit still holds, no permit is lost to a cancelled waiter, and the
/// queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_and_resizing_lose_no_permit() {
    const CALLS: usize = 5_000;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let layer = BulkheadLayer::builder()
        .name("cancel")
        .max_concurrent(LIMIT)
        .max_queue(64)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (fl, pk) = (in_flight.clone(), peak.clone());
    let svc = layer.layer(service_fn(move |i: usize| {
        let (fl, pk) = (fl.clone(), pk.clone());
        async move {
            let now = fl.fetch_add(1, Ordering::SeqCst) + 1;
            pk.fetch_max(now, Ordering::SeqCst);
            for _ in 0..(i % 4) {
                tokio::task::yield_now().await;
            }
            fl.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(())
        }
    }));

    let run = async {
        let resizer = {
            let handle = handle.clone();
            tokio::spawn(async move {
                for i in 0..2_000 {
                    handle
                        .set_max_concurrent(if i % 2 == 0 { 2 } else { LIMIT })
                        .unwrap();
                    tokio::task::yield_now().await;
                }
                handle.set_max_concurrent(LIMIT).unwrap();
            })
        };
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let (mut ok, mut cancelled) = (0, 0);
                    for i in 0..CALLS {
                        // A fresh clone per call: dropping it while it waits
                        // cancels its place in the queue.
                        let mut probe = svc.clone();
                        let call = tokio::select! {
                            biased;
                            ready = probe.ready() => Some(ready.unwrap().call(t + i)),
                            // Gives up after one round of the scheduler.
                            () = tokio::task::yield_now(), if i % 3 == 0 => None,
                        };
                        match call {
                            Some(call) => {
                                call.await.unwrap();
                                ok += 1;
                            }
                            None => cancelled += 1,
                        }
                    }
                    (ok, cancelled)
                })
            })
            .collect();
        let (mut ok, mut cancelled) = (0, 0);
        for t in tasks {
            let (o, c) = t.await.unwrap();
            ok += o;
            cancelled += c;
        }
        resizer.await.unwrap();
        (ok, cancelled)
    };
    let (ok, cancelled) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("bounded in time");

    assert_eq!(ok + cancelled, TASKS * CALLS);
    assert!(ok > 0);
    assert!(
        peak.load(Ordering::SeqCst) <= LIMIT,
        "the limit was exceeded: {} calls at once",
        peak.load(Ordering::SeqCst)
    );
    let snap = handle.snapshot();
    assert_eq!(
        (
            snap.max_concurrent,
            snap.active,
            snap.queued,
            snap.available
        ),
        (LIMIT, 0, 0, LIMIT),
        "every permit came back: {snap:?}"
    );
    // Nothing was rejected: the queue is deep enough for every task.
    assert_eq!(snap.rejected, 0);
    // Every call that ran released its permit; a permit granted to a
    // waiter cancelled in the same instant is passed on and counted as
    // released too, at most once per cancellation.
    let passed_on = snap.completed - ok as u64;
    assert!(
        passed_on <= cancelled as u64,
        "{passed_on} permits passed on, {cancelled} cancellations"
    );
}
