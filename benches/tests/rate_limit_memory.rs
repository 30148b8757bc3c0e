//! The memory a keyed rate limiter holds for one million keys (DESIGN.md
//! section 6: at most 128 MiB).
//!
//! Counted, not timed: a counting global allocator (`stats_alloc`) sums
//! what is allocated and not freed from before the layer is built to after
//! one million distinct `IpAddr` keys went through it (GCRA, the default
//! algorithm, each key admitted once), with the layer and its service
//! still alive. The figure is printed (`--nocapture`) and asserted.
//!
//! A test binary of its own, with one test: the counting allocator sees
//! every thread of the process, so nothing else may run beside it (the
//! exact per-call counts of `tests/alloc.rs` must not see these either).
//! About 2 s in the debug profile, well under 1 s in release
//! (`cargo test -p buttress-benches --release --test rate_limit_memory`).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use buttress_core::key::FnKey;
use buttress_rate_limit::{KeyedRateLimitLayer, Rate};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use tower_layer::Layer;
use tower_service::Service;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const KEYS: u32 = 1_000_000;
const BUDGET: usize = 128 << 20;

#[test]
fn one_million_keys_fit_in_128_mib() {
    let mut cx = Context::from_waker(Waker::noop());
    let region = Region::new(GLOBAL);
    let layer =
        KeyedRateLimitLayer::builder(FnKey::new(|ip: &IpAddr| Some(*ip)), Rate::per_second(100))
            .max_keys(KEYS as usize)
            .build()
            .expect("a valid keyed rate limiter");
    let mut svc = layer.layer(tower::service_fn(|ip: IpAddr| {
        std::future::ready(Ok::<_, Infallible>(ip))
    }));
    for i in 0..KEYS {
        // 10.0.0.0 upwards: one million distinct IPv4 addresses.
        let key = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = pin!(svc.call(key));
        match fut.poll(&mut cx) {
            Poll::Ready(Ok(_)) => {}
            _ => panic!("key {key} was not admitted at once"),
        }
    }
    let stats = region.change();
    let held = (stats.bytes_allocated as isize + stats.bytes_reallocated
        - stats.bytes_deallocated as isize) as usize;
    let handle = layer.handle();
    assert_eq!(handle.keys(), KEYS as usize, "every key is held");
    println!(
        "keyed rate limiter, {KEYS} IpAddr keys (GCRA): {held} bytes held = {:.1} MiB, \
         {:.1} bytes per key ({} allocations, {} bytes allocated in all)",
        held as f64 / (1 << 20) as f64,
        held as f64 / f64::from(KEYS),
        stats.allocations,
        stats.bytes_allocated,
    );
    assert!(
        held <= BUDGET,
        "{KEYS} keys hold {held} bytes, over the budget of {BUDGET}"
    );
    drop(svc);
    drop(layer);
}
