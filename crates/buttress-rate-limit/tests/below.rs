//! A limiter over a service that reserves in `poll_ready` (a real
//! bulkhead): a call the limiter refuses or queues never holds the
//! bulkhead's permit or a place in its queue, and an admitted call whose
//! bulkhead is full waits for it in its response future. The README's
//! order puts the limiter above the bulkhead for exactly this.

use std::convert::Infallible;
use std::time::Duration;

use buttress_bulkhead::{BulkheadHandle, BulkheadLayer};
use buttress_core::error::{find, BulkheadFull, RateLimited};
use buttress_core::BoxError;
use buttress_rate_limit::{Rate, RateLimitLayer};
use tokio::sync::oneshot;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

fn bulkhead(permits: usize, queue: usize) -> BulkheadLayer {
    let b = BulkheadLayer::builder()
        .name("below")
        .max_concurrent(permits)
        .max_queue(queue);
    if queue > 0 {
        b.max_wait(Duration::from_secs(60))
    } else {
        b
    }
    .build()
    .unwrap()
}

fn held(b: &BulkheadHandle) -> (usize, usize) {
    let s = b.snapshot();
    (s.active, s.queued)
}

/// A call over the limit, made on a service whose `poll_ready` took the
/// bulkhead's last permit, gives the permit back at once.
#[tokio::test(start_paused = true)]
async fn a_refused_call_gives_back_the_permit_taken_below() {
    let bh = bulkhead(1, 0);
    let limiter = RateLimitLayer::builder(Rate::per_second(1))
        .build()
        .unwrap();
    let mut svc =
        limiter.layer(bh.layer(tower::service_fn(
            |x: u32| async move { Ok::<_, Infallible>(x) },
        )));
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    svc.ready().await.unwrap();
    assert_eq!(held(&bh.handle()), (1, 0), "poll_ready took the permit");
    let err = svc.call(2).await.unwrap_err();
    assert!(find::<RateLimited>(&*err).is_some(), "{err}");
    assert_eq!(held(&bh.handle()), (0, 0), "given back with the refusal");
}

/// The bulkhead is full and has a queue of one: a caller over its limit is
/// refused at once, never queued, and the queue's place stays free for a
/// caller within its limit.
#[tokio::test(start_paused = true)]
async fn a_call_over_the_limit_never_takes_a_queue_place_below() {
    let bh = bulkhead(1, 1);
    let limiter = RateLimitLayer::builder(Rate::per_second(2))
        .build()
        .unwrap();
    let (inner, mut upstream) = mock::pair::<u32, u32>();
    let stack = limiter.layer(bh.layer(inner));

    // Two admitted calls: one holds the bulkhead's permit, one waits in
    // its queue (in its response future).
    let mut a = mock::Spawn::new(stack.clone());
    assert_ready_ok!(a.poll_ready());
    let first = tokio::spawn(a.call(1));
    let req = upstream.next_request().await.unwrap();
    let mut b = mock::Spawn::new(stack.clone());
    assert_ready_ok!(b.poll_ready(), "the limiter decides before the bulkhead");
    let mut second = tokio_test::task::spawn(b.call(2));
    assert_pending!(second.poll());
    assert_eq!(held(&bh.handle()), (1, 1));

    // A third, over the limit: refused at once, with nothing held below.
    let mut c = mock::Spawn::new(stack.clone());
    assert_ready_ok!(c.poll_ready());
    let err = c.call(3).await.unwrap_err();
    assert!(find::<RateLimited>(&*err).is_some(), "{err}");
    assert!(find::<BulkheadFull>(&*err).is_none(), "{err}");
    assert_eq!(held(&bh.handle()), (1, 1), "the queue was never taken");

    // The first ends; the queued call gets the permit and goes through.
    let (x, send) = req;
    send.send_response(x * 10);
    assert_eq!(first.await.unwrap().unwrap(), 10);
    assert!(second.is_woken());
    assert_pending!(second.poll());
    let (x, send) = upstream.next_request().await.unwrap();
    send.send_response(x * 10);
    assert_eq!(second.await.unwrap(), 20);
    assert_eq!(held(&bh.handle()), (0, 0));
}

/// A call waiting in the limiter's own queue holds nothing below while it
/// waits, and is made ready and called when its permits come.
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_permits_holds_nothing_below() {
    let bh = bulkhead(1, 0);
    let limiter = RateLimitLayer::builder(Rate::per_second(1))
        .max_queue(4)
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let mut svc = limiter.layer(bh.layer(tower::service_fn(move |x: u32| {
        let rx = rx.clone();
        async move {
            if x == 0 {
                // The first call holds the bulkhead until told.
                let rx = rx.lock().await.take().unwrap();
                rx.await.ok();
            }
            Ok::<_, BoxError>(x)
        }
    })));
    svc.ready().await.unwrap();
    let first = tokio::spawn(svc.call(0));
    tokio::task::yield_now().await;
    assert_eq!(held(&bh.handle()), (1, 0));
    // The next waits about a second for its permit, holding nothing below
    // (the bulkhead has no queue: a held place would be refused).
    svc.ready().await.unwrap();
    let second = tokio::spawn(svc.call(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(held(&bh.handle()), (1, 0));
    tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 0);
    assert_eq!(second.await.unwrap().unwrap(), 1);
    assert_eq!(held(&bh.handle()), (0, 0));
}

/// The same for a keyed limiter: a client over its limit gives back the
/// permit `poll_ready` took below, and another client goes through.
#[tokio::test(start_paused = true)]
async fn a_keyed_refusal_gives_back_the_permit_taken_below() {
    use buttress_core::key::FnKey;
    use buttress_rate_limit::KeyedRateLimitLayer;
    type Req = (Option<u32>, u32);
    let key: FnKey<fn(&Req) -> Option<u32>, Req> = FnKey::new(|r: &Req| r.0);
    let bh = bulkhead(1, 0);
    let limiter = KeyedRateLimitLayer::builder(key, Rate::per_second(1))
        .build()
        .unwrap();
    let mut svc = limiter.layer(bh.layer(tower::service_fn(|r: Req| async move {
        Ok::<_, Infallible>(r.1)
    })));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call((Some(1), 10))
            .await
            .unwrap(),
        10
    );
    svc.ready().await.unwrap();
    assert_eq!(held(&bh.handle()), (1, 0));
    let err = svc.call((Some(1), 11)).await.unwrap_err();
    assert!(find::<RateLimited>(&*err).is_some(), "{err}");
    assert_eq!(held(&bh.handle()), (0, 0));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call((Some(2), 20))
            .await
            .unwrap(),
        20
    );
}
