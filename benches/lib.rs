//! Side-by-side benchmarks of buttress against tower and tower-resilience.
//!
//! The cases live in `cases.rs`, shared by the criterion bench
//! (`benches/layers.rs`) and the allocation test (`tests/alloc.rs`), so
//! every case that is timed is also checked for heap allocations. The
//! comparison crates are dev-dependencies only.
//!
//! ```sh
//! cargo bench -p buttress-benches                      # the timings
//! cargo test -p buttress-benches --test alloc -- --nocapture   # allocations per call
//! cargo test -p buttress-benches --test rate_limit_memory -- --nocapture   # 1M keys' memory
//! ```
