//! Contract tests of the bulkhead, in the style of tower's concurrency
//! limit tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_bulkhead::error::{BulkheadFull, BulkheadFullReason};
use buttress_bulkhead::{
    BulkheadConfig, BulkheadEvent, BulkheadHandle, BulkheadLayer, BulkheadSnapshot,
};
use buttress_core::Registry;
use tokio::time;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::Layer;
use tower_test::{assert_request_eq, mock};

fn layer(max: usize, queue: usize, wait: Option<Duration>) -> BulkheadLayer {
    let b = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(max)
        .max_queue(queue);
    match wait {
        Some(w) => b.max_wait(w),
        None => b,
    }
    .build()
    .unwrap()
}

fn reason(err: &buttress_core::BoxError) -> BulkheadFullReason {
    err.downcast_ref::<BulkheadFull>()
        .expect("a BulkheadFull")
        .reason()
}

/// (active, queued, available)
fn snap(h: &BulkheadHandle) -> (usize, usize, usize) {
    let s = h.snapshot();
    (s.active, s.queued, s.available)
}

#[tokio::test(start_paused = true)]
async fn permits_up_to_max_concurrent_then_rejects_when_no_queue() {
    let l = layer(2, 0, None);
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s3 = mock::Spawn::new(l.layer(inner));

    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("a");
    assert_ready_ok!(s2.poll_ready());
    let r2 = s2.call("b");
    // Full: ready, and the call fails without reaching the inner service.
    assert_ready_ok!(s3.poll_ready());
    let err = s3.call("c").await.unwrap_err();
    assert_eq!(reason(&err), BulkheadFullReason::QueueFull);

    assert_request_eq!(handle, "a").send_response("A");
    assert_request_eq!(handle, "b").send_response("B");
    assert_eq!(r1.await.unwrap(), "A");
    assert_eq!(r2.await.unwrap(), "B");
    assert!(
        handle.poll_request().is_pending(),
        "the rejected call never reached the inner service"
    );
}

#[tokio::test(start_paused = true)]
async fn rejection_is_not_an_error_from_poll_ready() {
    let l = layer(1, 0, None);
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let _held = s1.call("a");
    for _ in 0..3 {
        assert_ready_ok!(s2.poll_ready());
        assert!(s2.call("b").await.is_err());
    }
    assert_eq!(l.handle().snapshot().rejected, 3);
}

#[tokio::test(start_paused = true)]
async fn queued_callers_are_served_fifo() {
    let l = layer(1, 3, None);
    let h = l.handle();
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s3 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s4 = mock::Spawn::new(l.layer(inner));

    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("1");
    assert_pending!(s2.poll_ready());
    assert_pending!(s3.poll_ready());
    assert_pending!(s4.poll_ready());
    assert_eq!(snap(&h), (1, 3, 0));

    assert_request_eq!(handle, "1").send_response("one");
    assert_eq!(r1.await.unwrap(), "one");
    // Only the first waiter is served.
    assert!(s2.is_woken());
    assert!(!s3.is_woken());
    assert_ready_ok!(s2.poll_ready());
    assert_pending!(s3.poll_ready());
    assert_pending!(s4.poll_ready());
    let r2 = s2.call("2");
    assert_request_eq!(handle, "2").send_response("two");
    r2.await.unwrap();
    assert_ready_ok!(s3.poll_ready());
    assert_pending!(s4.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn queue_full_rejects_with_reason() {
    let l = layer(1, 1, None);
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s3 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let _held = s1.call("1");
    assert_pending!(s2.poll_ready());
    assert_ready_ok!(s3.poll_ready());
    let err = s3.call("3").await.unwrap_err();
    assert_eq!(reason(&err), BulkheadFullReason::QueueFull);
    assert_eq!(
        err.to_string(),
        "bulkhead `db` is full: no free permit and no room to wait"
    );
}

#[tokio::test(start_paused = true)]
async fn wait_timeout_rejects_with_reason_and_leaves_queue() {
    let l = layer(1, 4, Some(Duration::from_millis(50)));
    let h = l.handle();
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let _held = s1.call("1");
    assert_pending!(s2.poll_ready());
    time::advance(Duration::from_millis(49)).await;
    assert_pending!(s2.poll_ready());
    assert_eq!(h.snapshot().queued, 1);
    time::advance(Duration::from_millis(1)).await;
    assert_ready_ok!(s2.poll_ready());
    assert_eq!(h.snapshot().queued, 0);
    let err = s2.call("2").await.unwrap_err();
    assert_eq!(reason(&err), BulkheadFullReason::WaitTimedOut);
    assert_eq!(h.snapshot().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn zero_max_wait_disables_the_queue() {
    let l = layer(1, 4, Some(Duration::ZERO));
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let _held = s1.call("1");
    assert_ready_ok!(s2.poll_ready());
    assert_eq!(
        reason(&s2.call("2").await.unwrap_err()),
        BulkheadFullReason::QueueFull
    );
}

#[tokio::test(start_paused = true)]
async fn response_future_drop_releases_capacity() {
    let l = layer(1, 0, None);
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("1");
    assert_eq!(snap(&l.handle()), (1, 0, 0));
    drop(r1);
    assert_eq!(snap(&l.handle()), (0, 0, 1));
    assert_ready_ok!(s2.poll_ready());
    let _r2 = s2.call("2");
}

#[tokio::test(start_paused = true)]
async fn inner_error_releases_capacity() {
    let l = layer(1, 0, None);
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("1");
    assert_request_eq!(handle, "1").send_error("boom");
    assert_eq!(r1.await.unwrap_err().to_string(), "boom");
    assert_eq!(
        l.handle().snapshot(),
        BulkheadSnapshot {
            max_concurrent: 1,
            active: 0,
            queued: 0,
            available: 1,
            completed: 1,
            rejected: 0,
        }
    );
    assert_ready_ok!(s1.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn service_drop_frees_capacity() {
    let l = layer(1, 0, None);
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    assert_ready_ok!(s1.poll_ready());
    assert_eq!(l.handle().snapshot().active, 1);
    drop(s1);
    assert_eq!(l.handle().snapshot().active, 0);
    let mut s2 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s2.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn reserve_capacity_without_sending_request() {
    let l = layer(1, 0, None);
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner));
    // s1 reserves and keeps its permit across polls.
    assert_ready_ok!(s1.poll_ready());
    assert_ready_ok!(s1.poll_ready());
    assert_ready_ok!(s2.poll_ready());
    assert!(s2.call("2").await.is_err());
    let r1 = s1.call("1");
    assert_request_eq!(handle, "1").send_response("ok");
    assert_eq!(r1.await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn permit_is_kept_while_inner_is_not_ready() {
    let l = layer(1, 0, None);
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner));
    handle.allow(0);
    assert_pending!(s1.poll_ready());
    assert_eq!(l.handle().snapshot().active, 1);
    handle.allow(1);
    assert_ready_ok!(s1.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn clone_starts_without_permit() {
    let l = layer(1, 0, None);
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let mut s2 = mock::Spawn::new(s1.get_ref().clone());
    assert_eq!(l.handle().snapshot().active, 1, "the clone took nothing");
    assert_ready_ok!(s2.poll_ready());
    assert!(s2.call("x").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn service_drop_while_queued_leaves_queue_at_once() {
    let l = layer(1, 2, None);
    let h = l.handle();
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("1");
    assert_pending!(s2.poll_ready());
    assert_eq!(h.snapshot().queued, 1);
    drop(s2);
    assert_eq!(h.snapshot().queued, 0);
    drop(r1);
    assert_eq!(snap(&h), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_never_takes_a_permit_later() {
    let l = layer(1, 2, None);
    let h = l.handle();
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s3 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("1");
    assert_pending!(s2.poll_ready());
    assert_pending!(s3.poll_ready());
    drop(s2);
    drop(r1);
    // The permit went to s3, the live waiter behind the cancelled one.
    assert_eq!(snap(&h), (1, 0, 0));
    assert_ready_ok!(s3.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn granted_waiter_dropped_passes_the_permit_on() {
    let l = layer(1, 2, None);
    let h = l.handle();
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s3 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("1");
    assert_pending!(s2.poll_ready());
    assert_pending!(s3.poll_ready());
    drop(r1); // granted to s2, which has not been polled since
    assert_eq!(snap(&h), (1, 1, 0));
    drop(s2);
    assert_eq!(snap(&h), (1, 0, 0));
    assert!(s3.is_woken());
    assert_ready_ok!(s3.poll_ready());
    drop(s3);
    assert_eq!(snap(&h), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn resize_up_grants_waiters_and_resize_down_keeps_in_flight() {
    let l = layer(2, 4, None);
    let h = l.handle();
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s0 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s3 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s0.poll_ready());
    let r0 = s0.call("0");
    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("1");
    assert_pending!(s2.poll_ready());
    assert_pending!(s3.poll_ready());

    h.set_max_concurrent(3).unwrap();
    assert_eq!(snap(&h), (3, 1, 0));
    assert_ready_ok!(s2.poll_ready());
    assert_pending!(s3.poll_ready());

    h.set_max_concurrent(1).unwrap();
    // In-flight calls are untouched; the limit binds as they finish.
    let s = h.snapshot();
    assert_eq!((s.max_concurrent, s.active, s.available), (1, 3, 0));
    assert_request_eq!(handle, "0").send_response("a");
    r0.await.unwrap();
    assert_pending!(s3.poll_ready());
    assert_request_eq!(handle, "1").send_response("b");
    r1.await.unwrap();
    assert_pending!(s3.poll_ready());
    drop(s2); // gives back the permit it held
    assert_ready_ok!(s3.poll_ready());
    assert_eq!(snap(&h), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn set_max_queue_and_max_wait_apply_to_new_arrivals() {
    let l = layer(1, 0, None);
    let h = l.handle();
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let _held = s1.call("1");
    h.set_max_queue(1).unwrap();
    h.set_max_wait(Some(Duration::from_millis(10))).unwrap();
    assert_pending!(s2.poll_ready());
    time::advance(Duration::from_millis(10)).await;
    assert_ready_ok!(s2.poll_ready());
    assert_eq!(
        reason(&s2.call("2").await.unwrap_err()),
        BulkheadFullReason::WaitTimedOut
    );
}

#[tokio::test(start_paused = true)]
async fn snapshot_counts_active_queued_completed_rejected() {
    let l = layer(2, 1, Some(Duration::from_millis(10)));
    let h = l.handle();
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s: Vec<_> = (0..5)
        .map(|_| mock::Spawn::new(l.layer(inner.clone())))
        .collect();
    let snapshot = |active, queued, available, completed, rejected| BulkheadSnapshot {
        max_concurrent: 2,
        active,
        queued,
        available,
        completed,
        rejected,
    };
    assert_eq!(h.snapshot(), snapshot(0, 0, 2, 0, 0));

    assert_ready_ok!(s[0].poll_ready());
    let r0 = s[0].call("0");
    assert_eq!(h.snapshot(), snapshot(1, 0, 1, 0, 0));
    assert_ready_ok!(s[1].poll_ready());
    let r1 = s[1].call("1");
    assert_eq!(h.snapshot(), snapshot(2, 0, 0, 0, 0));
    assert_pending!(s[2].poll_ready());
    assert_eq!(h.snapshot(), snapshot(2, 1, 0, 0, 0));
    // The queue is full: rejected at once.
    assert_ready_ok!(s[3].poll_ready());
    assert!(s[3].call("3").await.is_err());
    assert_eq!(h.snapshot(), snapshot(2, 1, 0, 0, 1));

    // One call completes: its permit goes straight to the waiter.
    assert_request_eq!(handle, "0").send_response("a");
    r0.await.unwrap();
    assert_eq!(h.snapshot(), snapshot(2, 0, 0, 1, 1));
    assert_ready_ok!(s[2].poll_ready());
    let r2 = s[2].call("2");

    // A waiter that times out is a rejection, not a completion.
    assert_pending!(s[4].poll_ready());
    time::advance(Duration::from_millis(10)).await;
    assert_ready_ok!(s[4].poll_ready());
    assert!(s[4].call("4").await.is_err());
    assert_eq!(h.snapshot(), snapshot(2, 0, 0, 1, 2));

    // A dropped call is released and counted as completed.
    let _unanswered = assert_request_eq!(handle, "1");
    drop(r1);
    assert_eq!(h.snapshot(), snapshot(1, 0, 1, 2, 2));
    assert_request_eq!(handle, "2").send_response("c");
    r2.await.unwrap();
    assert_eq!(h.snapshot(), snapshot(0, 0, 2, 3, 2));
}

#[tokio::test(start_paused = true)]
async fn events_are_emitted_in_order() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let l = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(1)
        .max_queue(1)
        .on_event(move |e: &BulkheadEvent| ev.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s3 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("1");
    assert_pending!(s2.poll_ready());
    assert_ready_ok!(s3.poll_ready());
    let _ = s3.call("3").await;
    time::advance(Duration::from_millis(7)).await;
    assert_request_eq!(handle, "1").send_response("x");
    r1.await.unwrap();
    assert_ready_ok!(s2.poll_ready());
    drop(s2);

    let name: Arc<str> = "db".into();
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            BulkheadEvent::Permitted {
                name: name.clone(),
                waited: Duration::ZERO
            },
            BulkheadEvent::Queued {
                name: name.clone(),
                queued: 1
            },
            BulkheadEvent::Rejected {
                name: name.clone(),
                reason: BulkheadFullReason::QueueFull
            },
            BulkheadEvent::Finished {
                name: name.clone(),
                held: Duration::from_millis(7)
            },
            BulkheadEvent::Permitted {
                name: name.clone(),
                waited: Duration::from_millis(7)
            },
            BulkheadEvent::Finished {
                name,
                held: Duration::ZERO
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn panicking_listener_does_not_break_calls() {
    let l = BulkheadLayer::builder()
        .max_concurrent(1)
        .on_event(|_: &BulkheadEvent| panic!("listener bug"))
        .build()
        .unwrap();
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut s = mock::Spawn::new(l.layer(inner));
    for _ in 0..2 {
        assert_ready_ok!(s.poll_ready());
        let r = s.call("x");
        assert_request_eq!(handle, "x").send_response("y");
        assert_eq!(r.await.unwrap(), "y");
    }
    assert_eq!(l.handle().snapshot().completed, 2);
    assert_eq!(l.handle().snapshot().active, 0);
}

#[tokio::test(start_paused = true)]
async fn registered_in_registry_with_snapshot() {
    let registry = Registry::new();
    let l = BulkheadLayer::builder()
        .name("payments")
        .max_concurrent(3)
        .registry(&registry)
        .build()
        .unwrap();
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s.poll_ready());
    let snap = registry.snapshot();
    assert_eq!(snap["payments"]["kind"], "bulkhead");
    assert_eq!(snap["payments"]["state"]["active"], 1);
    assert_eq!(snap["payments"]["state"]["available"], 2);
    let handle: BulkheadHandle = registry.get("payments").unwrap();
    handle.set_max_concurrent(5).unwrap();
    assert_eq!(l.handle().snapshot().max_concurrent, 5);
}

#[test]
fn duplicate_name_is_a_config_error() {
    let registry = Registry::new();
    let first = BulkheadLayer::builder()
        .name("a")
        .registry(&registry)
        .build()
        .unwrap();
    let err = BulkheadLayer::builder()
        .name("a")
        .registry(&registry)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "name");
    assert!(err.to_string().contains("name"), "{err}");
    // The first registration is untouched.
    let kept: BulkheadHandle = registry.get("a").unwrap();
    kept.set_max_concurrent(7).unwrap();
    assert_eq!(first.handle().snapshot().max_concurrent, 7);
    assert_eq!(registry.names(), vec!["a".to_owned()]);
}

#[test]
fn invalid_config_is_a_typed_error() {
    assert_eq!(
        BulkheadLayer::builder()
            .max_concurrent(0)
            .build()
            .unwrap_err()
            .field(),
        "max_concurrent"
    );
    assert_eq!(
        BulkheadLayer::builder()
            .name("")
            .build()
            .unwrap_err()
            .field(),
        "name"
    );
    assert_eq!(
        BulkheadLayer::builder()
            .max_concurrent(usize::MAX)
            .build()
            .unwrap_err()
            .field(),
        "max_concurrent"
    );
}

#[test]
fn config_defaults_and_validation() {
    let c = BulkheadConfig::default();
    assert_eq!(
        c,
        BulkheadConfig {
            name: "bulkhead".to_owned(),
            max_concurrent: 25,
            max_queue: 0,
            max_wait: None,
            retry_after: Some(Duration::from_secs(1)),
        }
    );
    let registry = Registry::new();
    let l = BulkheadConfig {
        name: "cfg".to_owned(),
        max_concurrent: 3,
        max_queue: 2,
        max_wait: Some(Duration::from_millis(5)),
        retry_after: None,
    }
    .builder()
    .registry(&registry)
    .build()
    .unwrap();
    assert_eq!(l.handle().name(), "cfg");
    assert_eq!(l.handle().snapshot().available, 3);
    assert!(registry.get::<BulkheadHandle>("cfg").is_some());
    let empty = BulkheadConfig {
        name: String::new(),
        ..BulkheadConfig::default()
    };
    assert_eq!(empty.build().unwrap_err().field(), "name");
}

#[cfg(feature = "serde")]
#[test]
fn config_from_serde_with_humantime() {
    let c: BulkheadConfig = serde_json::from_str(
        r#"{"name":"db","max_concurrent":8,"max_queue":16,"max_wait":"1s 500ms"}"#,
    )
    .unwrap();
    assert_eq!(c.max_wait, Some(Duration::from_millis(1500)));
    let s = c.build().unwrap().handle().snapshot();
    assert_eq!((s.max_concurrent, s.available), (8, 8));
    assert_eq!(BulkheadConfig::default().max_concurrent, 25);
    assert!(serde_json::from_str::<BulkheadConfig>(r#"{"max_wait":"forever"}"#).is_err());
    assert!(serde_json::from_str::<BulkheadConfig>(r#"{"max_concurent":1}"#).is_err());
}

#[tokio::test(start_paused = true)]
async fn new_without_builder_rejects_at_once_when_full() {
    let l = BulkheadLayer::new(1).unwrap();
    let (inner, _handle) = mock::pair::<&'static str, &'static str>();
    let mut s1 = mock::Spawn::new(l.layer(inner.clone()));
    let mut s2 = mock::Spawn::new(l.layer(inner));
    assert_ready_ok!(s1.poll_ready());
    assert_ready_ok!(s2.poll_ready());
    let err = s2.call("x").await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<BulkheadFull>().unwrap().name(),
        "bulkhead"
    );
    drop(s1);
    assert_ready_ok!(s2.poll_ready());
}

/// Servers (axum, hyper) need `Send + Sync` services and `Send` futures.
#[test]
fn services_futures_and_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    type Inner = mock::Mock<&'static str, &'static str>;
    send_sync::<BulkheadLayer>();
    send_sync::<BulkheadHandle>();
    send_sync::<buttress_bulkhead::Bulkhead<Inner>>();
    send::<
        buttress_bulkhead::future::ResponseFuture<<Inner as tower::Service<&'static str>>::Future>,
    >();
    send_sync::<buttress_bulkhead::KeyedBulkheadHandle<String>>();
    send::<buttress_bulkhead::KeyedResponseFuture<<Inner as tower::Service<&'static str>>::Future>>(
    );
}

#[test]
fn new_and_setters_validate_as_the_builder_does() {
    assert_eq!(BulkheadLayer::new(0).unwrap_err().field(), "max_concurrent");
    assert_eq!(
        BulkheadLayer::new(buttress_bulkhead::MAX_CONCURRENT + 1)
            .unwrap_err()
            .field(),
        "max_concurrent"
    );
    let h = BulkheadLayer::new(2).unwrap().handle();
    assert_eq!(
        h.set_max_concurrent(0).unwrap_err().field(),
        "max_concurrent"
    );
    assert_eq!(
        h.set_max_concurrent(usize::MAX).unwrap_err().field(),
        "max_concurrent"
    );
    assert_eq!(h.snapshot().max_concurrent, 2);
    // A wait without a queue would never apply.
    let err = h.set_max_wait(Some(Duration::from_millis(5))).unwrap_err();
    assert_eq!(err.field(), "max_wait");
    h.set_max_wait(Some(Duration::ZERO)).unwrap();
    h.set_max_queue(3).unwrap();
    h.set_max_wait(Some(Duration::from_millis(5))).unwrap();
    assert_eq!(h.set_max_queue(0).unwrap_err().field(), "max_wait");
    h.set_max_wait(None).unwrap();
    h.set_max_queue(0).unwrap();
}

#[test]
fn max_wait_without_a_queue_is_rejected_by_build() {
    let err = BulkheadLayer::builder()
        .max_wait(Duration::from_millis(10))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_wait");
    assert!(err.reason().contains("max_queue"), "{err}");
    BulkheadLayer::builder()
        .max_queue(1)
        .max_wait(Duration::from_millis(10))
        .build()
        .unwrap();
}

/// A rejection carries the configured retry hint (1 s by default), which
/// the HTTP mapping sends as `Retry-After`; `None` sends none.
#[tokio::test]
async fn a_rejection_carries_the_retry_hint() {
    use tower::{Service, ServiceExt};
    for (hint, expected) in [
        (
            Some(Duration::from_millis(1_500)),
            Some(Duration::from_millis(1_500)),
        ),
        (None, None),
    ] {
        let layer = BulkheadLayer::builder()
            .max_concurrent(1)
            .retry_after(hint)
            .build()
            .unwrap();
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let svc = layer.layer(tower::service_fn(move |_: ()| {
            let g = g.clone();
            async move {
                g.notified().await;
                Ok::<_, std::convert::Infallible>(())
            }
        }));
        let mut held = svc.clone();
        let held = tokio::spawn(async move { held.ready().await.unwrap().call(()).await });
        tokio::task::yield_now().await;
        let err = svc.clone().oneshot(()).await.unwrap_err();
        let full = err
            .downcast_ref::<BulkheadFull>()
            .expect("a bulkhead rejection");
        assert_eq!(full.retry_after(), expected);
        assert_eq!(buttress_core::error::retry_after(&*err), expected);
        gate.notify_one();
        held.await.unwrap().unwrap();
    }
    assert_eq!(
        BulkheadConfig::default().retry_after,
        Some(Duration::from_secs(1))
    );
}

/// An outer layer (a rate limiter, a load shedder) may answer a request
/// itself after the bulkhead's `poll_ready`, never calling it. The rejection
/// decided then is neither counted nor handed to the next request: the next
/// `poll_ready` decides again.
#[tokio::test]
async fn a_rejection_no_call_consumed_is_neither_counted_nor_handed_on() {
    use tower::{Service, ServiceExt};
    let layer = buttress_bulkhead::BulkheadLayer::new(1).unwrap();
    let handle = layer.handle();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(|()| async { Ok::<_, std::convert::Infallible>("ok") });
    let mut holder = svc.clone();
    let running = holder.ready().await.unwrap().call(());
    let mut other = svc.clone();
    // Ready with a rejection in hand; the outer layer drops the request.
    other.ready().await.unwrap();
    assert_eq!(handle.snapshot().rejected, 0);
    assert_eq!(running.await.unwrap(), "ok");
    // The permit is free now: the next request goes through.
    let res = other.ready().await.unwrap().call(()).await;
    assert_eq!(res.unwrap(), "ok");
    // A rejection that is delivered is counted once.
    let held = holder.ready().await.unwrap().call(());
    let err = other.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<buttress_core::BulkheadFull>());
    assert_eq!(handle.snapshot().rejected, 1);
    drop(held);
}

/// The facade's empty slot: a pass-through bulkhead admits every call, its
/// inner service's readiness included, and counts nothing.
#[tokio::test]
async fn a_pass_through_bulkhead_admits_every_call_and_counts_nothing() {
    let l = BulkheadLayer::pass_through();
    let (inner, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut services: Vec<_> = (0..5)
        .map(|_| mock::Spawn::new(l.layer(inner.clone())))
        .collect();
    let mut responses = Vec::new();
    for s in &mut services {
        assert_ready_ok!(s.poll_ready());
        responses.push(s.call("a"));
    }
    for _ in 0..5 {
        assert_request_eq!(handle, "a").send_response("A");
    }
    for r in responses {
        assert_eq!(r.await.unwrap(), "A");
    }
    // The inner service's backpressure still reaches the caller.
    handle.allow(0);
    assert_pending!(services[0].poll_ready());
    handle.allow(1);
    assert_ready_ok!(services[0].poll_ready());
    let snap = l.handle().snapshot();
    assert_eq!((snap.active, snap.completed, snap.rejected), (0, 0, 0));
}
