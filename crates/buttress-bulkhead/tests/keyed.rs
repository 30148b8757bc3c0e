//! Keyed bulkheads: one bulkhead per key in a bounded map.

use std::time::Duration;

use buttress_bulkhead::error::{BulkheadFull, BulkheadFullReason};
use buttress_bulkhead::{KeyedBulkheadHandle, KeyedBulkheadLayer, MissingKey};
use buttress_core::error::KeyMissing;
use buttress_core::key::FnKey;
use buttress_core::Registry;
use tokio::sync::oneshot;
use tokio::time;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{service_fn, Layer, Service, ServiceExt};

/// A request: its key (if any) and a channel the handler waits on.
struct Req {
    key: Option<&'static str>,
    done: oneshot::Receiver<()>,
}

fn req(key: Option<&'static str>) -> (Req, oneshot::Sender<()>) {
    let (tx, done) = oneshot::channel();
    (Req { key, done }, tx)
}

type Layered = KeyedBulkheadLayer<FnKey<fn(&Req) -> Option<&'static str>, Req>, &'static str>;

fn key_of(r: &Req) -> Option<&'static str> {
    r.key
}

fn layer(max_keys: usize, queue: usize) -> Layered {
    KeyedBulkheadLayer::builder(FnKey::new(key_of as fn(&Req) -> Option<&'static str>))
        .name("tenants")
        .max_concurrent(1)
        .max_queue(queue)
        .max_keys(max_keys)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn service(
    l: &Layered,
) -> impl Service<Req, Response = (), Error = buttress_core::BoxError, Future = impl Send> + Clone {
    l.layer(service_fn(|r: Req| async move {
        let _ = r.done.await;
        Ok::<_, std::convert::Infallible>(())
    }))
}

fn reason(err: &buttress_core::BoxError) -> BulkheadFullReason {
    err.downcast_ref::<BulkheadFull>().unwrap().reason()
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_bulkhead() {
    let l = layer(100, 0);
    let svc = service(&l);
    let (a1, a1_done) = req(Some("a"));
    let mut a1 = task::spawn(svc.clone().oneshot(a1));
    assert_pending!(a1.poll());

    // Another key is not affected by `a` being full.
    let (b1, b1_done) = req(Some("b"));
    let mut b1 = task::spawn(svc.clone().oneshot(b1));
    assert_pending!(b1.poll());

    // A second call for `a` is rejected.
    let (a2, _a2_done) = req(Some("a"));
    let err = svc.clone().oneshot(a2).await.unwrap_err();
    assert_eq!(reason(&err), BulkheadFullReason::QueueFull);

    let handle: KeyedBulkheadHandle<&'static str> = l.handle();
    assert_eq!(handle.keys(), 2);
    assert_eq!(handle.key(&"a").unwrap().snapshot().active, 1);
    assert_eq!(handle.key(&"a").unwrap().snapshot().rejected, 1);

    a1_done.send(()).unwrap();
    b1_done.send(()).unwrap();
    assert_ready!(a1.poll()).unwrap();
    assert_ready!(b1.poll()).unwrap();
    assert_eq!(handle.totals().active, 0);
    assert_eq!(handle.totals().completed, 2);
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_are_rejected_with_key_missing_and_counted() {
    let l = layer(100, 0);
    let svc = service(&l);
    for _ in 0..3 {
        let (r, _done) = req(None);
        let err = svc.clone().oneshot(r).await.unwrap_err();
        let missing = err.downcast_ref::<KeyMissing>().expect("KeyMissing");
        assert_eq!(missing.name(), "tenants");
        assert!(err
            .to_string()
            .contains("into_make_service_with_connect_info"));
    }
    let h = l.handle();
    assert_eq!(h.on_missing_key(), MissingKey::Reject);
    assert_eq!(h.missing_key(), 3);
    assert_eq!(h.keys(), 0);
    assert_eq!(h.unkeyed().snapshot().completed, 0);
    // Not a full bulkhead: the rejected count stays at zero.
    assert_eq!(h.totals().rejected, 0);
    let json = buttress_core::Component::snapshot(&h);
    assert_eq!(json["missing_key"], 3);
    assert_eq!(json["on_missing_key"], "reject");
}

#[tokio::test(start_paused = true)]
async fn shared_bucket_policy_runs_requests_without_a_key_in_one_bulkhead() {
    let l: Layered =
        KeyedBulkheadLayer::builder(FnKey::new(key_of as fn(&Req) -> Option<&'static str>))
            .name("tenants")
            .max_concurrent(1)
            .on_missing_key(MissingKey::SharedBucket)
            .build()
            .unwrap();
    let svc = service(&l);
    let (r1, done) = req(None);
    let mut r1 = task::spawn(svc.clone().oneshot(r1));
    assert_pending!(r1.poll());
    let (r2, _d2) = req(None);
    let err = svc.clone().oneshot(r2).await.unwrap_err();
    assert!(err.is::<BulkheadFull>());
    assert_eq!(l.handle().unkeyed().snapshot().active, 1);
    assert_eq!(l.handle().keys(), 0);
    assert_eq!(l.handle().missing_key(), 2);
    done.send(()).unwrap();
    assert_ready!(r1.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn keyed_waiter_queues_and_the_inner_future_waits_for_the_permit() {
    let l = layer(100, 1);
    let svc = service(&l);
    let (a1, a1_done) = req(Some("a"));
    let mut a1 = task::spawn(svc.clone().oneshot(a1));
    assert_pending!(a1.poll());
    let (a2, a2_done) = req(Some("a"));
    let mut a2 = task::spawn(svc.clone().oneshot(a2));
    assert_pending!(a2.poll());
    assert_eq!(l.handle().key(&"a").unwrap().snapshot().queued, 1);
    a2_done.send(()).unwrap();
    // Its handler could finish, but it must wait for the permit first.
    assert_pending!(a2.poll());
    a1_done.send(()).unwrap();
    assert_ready!(a1.poll()).unwrap();
    assert!(a2.is_woken());
    assert_ready!(a2.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn keyed_map_is_bounded_and_evicts_idle_keys() {
    let l = layer(2, 0);
    let svc = service(&l);
    let handle = l.handle();

    // Two keys in use fill the map: a third key is rejected, not stored.
    let (a, a_done) = req(Some("a"));
    let mut a = task::spawn(svc.clone().oneshot(a));
    assert_pending!(a.poll());
    let (b, b_done) = req(Some("b"));
    let mut b = task::spawn(svc.clone().oneshot(b));
    assert_pending!(b.poll());
    let (c, _c_done) = req(Some("c"));
    let err = svc.clone().oneshot(c).await.unwrap_err();
    assert_eq!(reason(&err), BulkheadFullReason::QueueFull);
    assert_eq!(handle.keys(), 2);

    // Finished but not yet idle for 10 s: still not evictable.
    a_done.send(()).unwrap();
    assert_ready!(a.poll()).unwrap();
    let (c, _c_done) = req(Some("c"));
    assert!(svc.clone().oneshot(c).await.is_err());
    // Counted as map-full rejections, not against the unkeyed bulkhead.
    assert_eq!(handle.map_full_rejections(), 2);
    assert_eq!(handle.unkeyed().snapshot().rejected, 0);
    assert_eq!(
        (handle.totals().completed, handle.totals().rejected),
        (1, 2)
    );

    // Idle long enough: `a` is evicted to make room; `b` (in use) stays.
    time::advance(Duration::from_secs(10)).await;
    let (c, c_done) = req(Some("c"));
    c_done.send(()).unwrap();
    svc.clone().oneshot(c).await.unwrap();
    assert_eq!(handle.keys(), 2);
    assert!(handle.key(&"a").is_none());
    assert!(handle.key(&"b").is_some());
    b_done.send(()).unwrap();
    assert_ready!(b.poll()).unwrap();
    // The evicted key's completed call still counts: totals never go down.
    let totals = handle.totals();
    assert_eq!((totals.active, totals.queued), (0, 0));
    assert_eq!((totals.completed, totals.rejected), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_keyed_future_releases_its_permit() {
    let l = layer(100, 0);
    let svc = service(&l);
    let (a1, _keep) = req(Some("a"));
    let mut a1 = task::spawn(svc.clone().oneshot(a1));
    assert_pending!(a1.poll());
    assert_eq!(l.handle().key(&"a").unwrap().snapshot().active, 1);
    drop(a1);
    assert_eq!(l.handle().key(&"a").unwrap().snapshot().active, 0);
}

#[test]
fn keyed_registry_and_config_errors() {
    let registry = Registry::new();
    let l: Layered =
        KeyedBulkheadLayer::builder(FnKey::new(key_of as fn(&Req) -> Option<&'static str>))
            .name("per-client")
            .registry(&registry)
            .build()
            .unwrap();
    assert_eq!(registry.snapshot()["per-client"]["kind"], "keyed_bulkhead");
    assert_eq!(registry.snapshot()["per-client"]["state"]["keys"], 0);
    assert_eq!(
        registry.snapshot()["per-client"]["state"]["rejected_map_full"],
        0
    );
    drop(l);
    let err = KeyedBulkheadLayer::builder(FnKey::<_, Req>::new(
        key_of as fn(&Req) -> Option<&'static str>,
    ))
    .max_keys(0)
    .build::<&'static str>()
    .unwrap_err();
    assert_eq!(err.field(), "max_keys");
}
