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
