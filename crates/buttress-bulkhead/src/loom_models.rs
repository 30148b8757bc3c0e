//! Models of the permit state under loom: every interleaving of the model
//! threads, within loom's preemption bound. Run with
//! `RUSTFLAGS="--cfg buttress_loom" cargo test -p buttress-bulkhead --lib loom`
//! (the test command does).
//!
//! The threads drive the crate's own [`Shared`] and [`Acquire`]: the
//! compare-and-swap fast path, the queue, the hand-over to waiters and the
//! waker of a queued caller (`loom::future::block_on` parks on it, so a lost
//! wake-up is reported as a deadlock).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use buttress_core::{BulkheadFullReason, Listeners};
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::thread;

use crate::state::{Acquire, BulkheadSnapshot, Permit, Shared};

/// Checks `f` under loom with at most two preemptions per execution
/// (`LOOM_MAX_PREEMPTIONS` overrides it), which keeps each model to
/// seconds; the bugs loom finds in practice need one or two.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

fn bulkhead(max_concurrent: usize, max_queue: usize) -> Arc<Shared> {
    Arc::new(Shared::new(
        Arc::from("model"),
        max_concurrent,
        max_queue,
        None,
        Listeners::new(),
    ))
}

/// Waits for a permit as the service does: fast path, else the queue.
fn acquire(shared: &Arc<Shared>) -> Result<Permit, BulkheadFullReason> {
    let mut acquire = Acquire::new(shared.clone());
    loom::future::block_on(poll_fn(|cx| acquire.poll_acquire(cx)))
}

/// Polls one acquisition once, then gives up (drops it) if it is queued.
/// Returns whether it was admitted on that poll.
fn try_once_then_leave(shared: &Arc<Shared>) -> bool {
    let mut acquire = Acquire::new(shared.clone());
    let mut cx = Context::from_waker(Waker::noop());
    match acquire.poll_acquire(&mut cx) {
        Poll::Ready(Ok(permit)) => {
            drop(permit);
            true
        }
        Poll::Ready(Err(reason)) => panic!("rejected ({reason:?}) with room in the queue"),
        Poll::Pending => false,
    }
}

fn assert_idle(snapshot: BulkheadSnapshot, max: usize) {
    assert_eq!(snapshot.active, 0, "a permit leaked: {snapshot:?}");
    assert_eq!(snapshot.queued, 0, "a waiter stayed queued: {snapshot:?}");
    assert_eq!(snapshot.available, max, "permits lost: {snapshot:?}");
}

#[test]
fn loom_permits_never_exceed_the_limit_and_queued_callers_are_woken() {
    model(|| {
        let shared = bulkhead(1, 1);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let caller = |shared: Arc<Shared>, in_flight: Arc<AtomicUsize>| {
            move || {
                let permit = acquire(&shared).expect("the queue has room");
                let now = in_flight.fetch_add(1, SeqCst) + 1;
                assert!(now <= 1, "{now} calls in flight over a limit of 1");
                in_flight.fetch_sub(1, SeqCst);
                drop(permit);
            }
        };
        let a = thread::spawn(caller(shared.clone(), in_flight.clone()));
        let b = thread::spawn(caller(shared.clone(), in_flight.clone()));
        a.join().unwrap();
        b.join().unwrap();
        let snapshot = shared.snapshot();
        assert_idle(snapshot, 1);
        assert_eq!(snapshot.completed, 2);
    });
}

#[test]
fn loom_a_waiter_that_leaves_passes_a_granted_permit_on() {
    model(|| {
        let shared = bulkhead(1, 2);
        assert!(shared.try_acquire());
        let held = Permit::new(&shared, None);
        // The holder finishes while one waiter gives up and another waits:
        // whichever of the two the released permit goes to, the one that
        // waits gets it (passed on by the one that left, if it was granted
        // it just before leaving).
        let releaser = thread::spawn(move || drop(held));
        let leaver = {
            let shared = shared.clone();
            thread::spawn(move || try_once_then_leave(&shared))
        };
        let waiter = {
            let shared = shared.clone();
            thread::spawn(move || drop(acquire(&shared).expect("the queue has room")))
        };
        releaser.join().unwrap();
        let leaver_admitted = leaver.join().unwrap();
        waiter.join().unwrap();
        let snapshot = shared.snapshot();
        assert_idle(snapshot, 1);
        // The holder's and the waiter's permits, the leaver's if it got
        // one on its poll, and one more if it was granted a permit in the
        // queue and passed it on as it left.
        let at_least = 2 + u64::from(leaver_admitted);
        assert!((at_least..=3).contains(&snapshot.completed), "{snapshot:?}");
    });
}

#[test]
fn loom_a_raised_limit_admits_a_queued_caller() {
    model(|| {
        let shared = bulkhead(1, 1);
        assert!(shared.try_acquire());
        let held = Permit::new(&shared, None);
        let waiter = {
            let shared = shared.clone();
            thread::spawn(move || drop(acquire(&shared).expect("the queue has room")))
        };
        let resizer = {
            let shared = shared.clone();
            thread::spawn(move || shared.set_max_concurrent(2))
        };
        // The held permit is released only after the waiter is through:
        // the waiter can be admitted by the raise alone.
        waiter.join().unwrap();
        resizer.join().unwrap();
        drop(held);
        let snapshot = shared.snapshot();
        assert_idle(snapshot, 2);
        assert_eq!(snapshot.max_concurrent, 2);
    });
}
