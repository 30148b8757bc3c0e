//! Heap allocations per call: none while off, none while on for calls
//! not selected or drawn no fault.

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use buttress_chaos::ChaosLayer;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceBuilder};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CALLS: usize = 1_000;

fn call<S: Service<u64>>(svc: &mut S, n: u64) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let fut = pin!(svc.call(n));
    matches!(fut.poll(&mut cx), Poll::Ready(Ok(_)))
}

fn allocations(mut f: impl FnMut()) -> usize {
    for _ in 0..16 {
        f();
    }
    let region = Region::new(GLOBAL);
    for _ in 0..CALLS {
        f();
    }
    region.change().allocations
}

#[test]
fn passing_calls_allocate_nothing() {
    let ready = tower::service_fn(|n: u64| std::future::ready(Ok::<_, Infallible>(n)));

    // Off, with a rate set.
    let off = ChaosLayer::builder().error_rate(0.5).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(off).service(ready);
    assert_eq!(allocations(|| assert!(call(&mut svc, 1))), 0);

    // On, every rate 0.
    let zero = ChaosLayer::builder().enabled(true).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(zero).service(ready);
    assert_eq!(allocations(|| assert!(call(&mut svc, 1))), 0);

    // On, but the request is not selected.
    let unselected = ChaosLayer::builder()
        .select_fn(|n: &u64| *n > 100)
        .error_rate(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(unselected).service(ready);
    assert_eq!(allocations(|| assert!(call(&mut svc, 1))), 0);

    // On, selected, rolled for, and drawn no fault: a rate of 1e-12,
    // which none of these calls (default seed) hits; `call` would see
    // the hang.
    let rolled = ChaosLayer::builder()
        .error_rate(0.0)
        .hang_rate(1e-12)
        .enabled(true)
        .build()
        .unwrap();
    let handle = rolled.handle();
    let mut svc = ServiceBuilder::new().layer(rolled).service(ready);
    assert_eq!(allocations(|| assert!(call(&mut svc, 1))), 0);
    assert_eq!(handle.snapshot().calls, (16 + CALLS) as u64);
}
