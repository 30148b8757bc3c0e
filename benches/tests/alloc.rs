//! Heap allocations per happy-path call, for every benchmark case.
//!
//! Allocation counts are deterministic, so this is an exact test: every
//! buttress layer must make 0 allocations per happy-path call, and exactly
//! one (the boxed error) per rejected call. The counts of the other
//! implementations are printed for the record (`--nocapture`).

#[path = "../cases.rs"]
mod cases;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CALLS: usize = 1_000;

#[test]
fn buttress_layers_make_no_heap_allocation_per_call() {
    let rt = cases::runtime();
    let _guard = rt.enter();
    let mut failures = Vec::new();
    let mut cases = cases::cases();
    // Warm up: lazily initialised runtime structures (timer wheel levels,
    // thread-locals, the time window's clock ticker, run once) are not
    // per-call costs.
    for case in &mut cases {
        for _ in 0..16 {
            case.run();
        }
    }
    rt.block_on(tokio::task::yield_now());
    for mut case in cases {
        let region = Region::new(GLOBAL);
        for _ in 0..CALLS {
            case.run();
        }
        let stats = region.change();
        let per_call = stats.allocations as f64 / CALLS as f64;
        println!("{:<45} {per_call:>6.2} allocations per call", case.id());
        let allowed = case.allowed_allocations * CALLS;
        if matches!(case.imp, cases::Impl::Buttress | cases::Impl::Bare)
            && stats.allocations != allowed
        {
            failures.push(format!(
                "{}: {} allocations in {CALLS} calls, expected {allowed}",
                case.id(),
                stats.allocations
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "allocating buttress cases: {failures:#?}"
    );
}
