//! Tests that pin behaviour which `cargo mutants -p buttress-bulkhead`
//! found unchecked: each one fails under at least one mutant of
//! `src/state.rs` that the other tests of the crate let through.

use buttress_bulkhead::BulkheadLayer;

#[test]
fn debug_shows_the_name_and_the_snapshot() {
    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(3)
        .build()
        .unwrap();
    let text = format!("{:?}", layer.handle());
    assert!(
        text.starts_with(
            r#"Bulkhead { name: "db", snapshot: BulkheadSnapshot { max_concurrent: 3,"#
        ),
        "{text}"
    );
    assert_eq!(format!("{layer:?}"), text);
}

#[tokio::test(start_paused = true)]
async fn idle_only_with_no_permit_held_and_nobody_queued() {
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower::Layer;
    use tower_test::{assert_request_eq, mock};

    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(1)
        .max_queue(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    assert!(handle.is_idle(), "a new bulkhead is idle");

    let (inner, mut upstream) = mock::pair::<&'static str, &'static str>();
    let mut first = mock::Spawn::new(layer.layer(inner.clone()));
    let mut second = mock::Spawn::new(layer.layer(inner));
    assert_ready_ok!(first.poll_ready());
    let a = first.call("a");
    assert!(!handle.is_idle(), "a permit is held");

    // The second caller waits in the queue.
    assert_pending!(second.poll_ready());
    assert_eq!(handle.snapshot().queued, 1);
    assert!(!handle.is_idle(), "a caller waits");

    assert_request_eq!(upstream, "a").send_response("A");
    assert_eq!(a.await.unwrap(), "A");
    // The permit went to the waiter, which holds it now.
    assert!(!handle.is_idle(), "the waiter holds the permit");
    assert_ready_ok!(second.poll_ready());
    drop(second);
    assert!(handle.is_idle(), "every permit is back");
}

#[test]
fn the_longest_wait_reads_back_as_set() {
    use std::time::Duration;

    let longest = Duration::from_nanos(u64::MAX);
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(1)
        .max_wait(longest)
        .build()
        .unwrap();
    // One nanosecond less: `u64::MAX` nanoseconds stands for "no limit".
    assert_eq!(
        layer.handle().config().max_wait,
        Some(longest - Duration::from_nanos(1))
    );
}

/// A waker that records whether it was woken.
struct Flag(std::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_caller_polled_from_another_task_wakes_that_task() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use tower::{Layer, Service};
    use tower_test::{assert_request_eq, mock};

    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(1)
        .build()
        .unwrap();
    let (inner, mut upstream) = mock::pair::<&'static str, &'static str>();
    let mut holder = layer.layer(inner.clone());
    let mut waiter = layer.layer(inner);

    let first = Arc::new(Flag(AtomicBool::new(false)));
    let second = Arc::new(Flag(AtomicBool::new(false)));
    let noop = Waker::from(Arc::new(Flag(AtomicBool::new(false))));

    assert!(holder
        .poll_ready(&mut Context::from_waker(&noop))
        .is_ready());
    let call = holder.call("a");

    // The waiter queues under one task, then is polled by another one (a
    // future moved between tasks): the second task must be the one woken.
    let first_waker = Waker::from(first.clone());
    let second_waker = Waker::from(second.clone());
    assert!(waiter
        .poll_ready(&mut Context::from_waker(&first_waker))
        .is_pending());
    assert!(waiter
        .poll_ready(&mut Context::from_waker(&second_waker))
        .is_pending());

    assert_request_eq!(upstream, "a").send_response("A");
    assert_eq!(call.await.unwrap(), "A");
    assert!(
        second.0.load(Ordering::SeqCst),
        "the last task was not woken"
    );
    assert!(!first.0.load(Ordering::SeqCst), "a stale task was woken");
    assert!(matches!(
        waiter.poll_ready(&mut Context::from_waker(&second_waker)),
        Poll::Ready(Ok(()))
    ));
}
