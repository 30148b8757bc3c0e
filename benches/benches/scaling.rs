//! Two threads on one shared layer against one thread: the per-call time
//! of a breaker, a bulkhead or a global rate limiter (GCRA, exact clock,
//! every call admitted: one compare-and-swap on one word) that both
//! threads share.
//!
//! `cargo bench -p buttress-benches --bench scaling`. The throughput ratio
//! is `time per call on one thread / time per call on two threads`
//! (2.0 is perfect scaling); criterion reports the time per call in each
//! setting.

// criterion_group! and criterion_main! generate undocumented public items.
#![allow(missing_docs)]

#[path = "../cases.rs"]
mod cases;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cases::ReadySvc;
use criterion::{criterion_group, criterion_main, Criterion};
use tower_layer::Layer;
use tower_service::Service;

/// Runs `iters` calls split over `threads` threads, each with its own
/// service made by `make` (sharing the layer's state).
fn run<S, F>(iters: u64, threads: u64, make: &F) -> Duration
where
    S: Service<u64>,
    F: Fn() -> S + Sync,
{
    let per_thread = iters / threads;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut svc = make();
                for _ in 0..per_thread {
                    cases::drive(&mut svc, black_box(1), true);
                }
            });
        }
    });
    start.elapsed()
}

fn scaling(c: &mut Criterion) {
    let breaker = buttress_circuit_breaker::CircuitBreakerLayer::builder()
        .build()
        .expect("a valid breaker");
    let bulkhead = buttress_bulkhead::BulkheadLayer::new(1_000).expect("a valid bulkhead");
    let rate_limit = cases::rate_limit_layer(buttress_rate_limit::Algorithm::Gcra, None);
    for threads in [1u64, 2] {
        let make = || breaker.layer(ReadySvc);
        c.bench_function(&format!("breaker/buttress/{threads}-thread"), |b| {
            b.iter_custom(|iters| run(iters.max(threads), threads, &make))
        });
        let make = || bulkhead.layer(ReadySvc);
        c.bench_function(&format!("bulkhead/buttress/{threads}-thread"), |b| {
            b.iter_custom(|iters| run(iters.max(threads), threads, &make))
        });
        let make = || rate_limit.layer(ReadySvc);
        c.bench_function(&format!("rate-limit/buttress/{threads}-thread"), |b| {
            b.iter_custom(|iters| run(iters.max(threads), threads, &make))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = scaling
}
criterion_main!(benches);
