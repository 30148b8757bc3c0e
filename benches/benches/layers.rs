//! Criterion timings of every case in `cases::cases()`.
//!
//! `cargo bench -p buttress-benches` (add `-- timeout/` to filter).

// criterion_group! and criterion_main! generate undocumented public items.
#![allow(missing_docs)]

#[path = "../cases.rs"]
mod cases;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

fn layers(c: &mut Criterion) {
    let rt = cases::runtime();
    let _guard = rt.enter();
    let mut cases = cases::cases();
    // One call each, then let the runtime run what they spawned once (the
    // time window's clock ticker), as a running service would have.
    for case in &mut cases {
        case.run();
    }
    rt.block_on(tokio::task::yield_now());
    for mut case in cases {
        c.bench_function(&case.id(), |b| b.iter(|| case.run()));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = layers
}
criterion_main!(benches);
