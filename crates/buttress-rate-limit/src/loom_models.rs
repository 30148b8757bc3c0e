//! Models of the lock-free state under loom: every interleaving of the
//! model threads, within loom's preemption bound. Run with
//! `RUSTFLAGS="--cfg buttress_loom" cargo test -p buttress-rate-limit --lib loom`
//! (the test command does).
//!
//! The threads drive the crate's own [`Limiter`] (its GCRA word, one
//! compare-and-swap per decision) and [`ParamCell`] (the sequence lock the
//! handle's run-time changes write through). The time of each decision is
//! an argument, as the service passes it, so a model also covers threads
//! whose clock reads land in a different order than their updates.

use std::sync::Arc;
use std::time::Duration;

use buttress_core::Listeners;
use loom::thread;

use crate::algorithm::{Algorithm, Params, Verdict};
use crate::limiter::{Limiter, Policy, TimeSource};
use crate::params::ParamCell;
use crate::rate::Rate;

const MS: u64 = 1_000_000;

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

/// `permits` per second (an interval of `1000 / permits` ms) with `burst`.
fn gcra(permits: u64, burst: u64) -> (Arc<Limiter>, Params) {
    let params = Params::new(Algorithm::Gcra, Rate::per_second(permits), Some(burst))
        .expect("valid parameters");
    let policy = Policy::new(
        Arc::from("model"),
        Duration::ZERO,
        0,
        0,
        0,
        Listeners::new(),
    );
    let limiter = Limiter::new(params, TimeSource::new(None), policy);
    (Arc::new(limiter), params)
}

/// Decides `cost` permits at `now` on another thread; whether admitted.
fn decide(limiter: &Arc<Limiter>, p: Params, now: u64, cost: u64) -> thread::JoinHandle<bool> {
    let limiter = limiter.clone();
    thread::spawn(move || limiter.acquire(&p, now, cost, 0) == Verdict::Allow)
}

#[test]
fn loom_gcra_admits_exactly_the_burst_to_concurrent_callers() {
    model(|| {
        let (limiter, p) = gcra(10, 2);
        let calls = [
            decide(&limiter, p, 0, 1),
            decide(&limiter, p, 0, 1),
            decide(&limiter, p, 0, 1),
        ];
        let admitted = calls
            .into_iter()
            .filter_map(|c| c.join().unwrap().then_some(()))
            .count();
        // Never more than the burst, and no admission lost to a failed
        // compare-and-swap: exactly the burst.
        assert_eq!(admitted, 2);
        let levels = limiter.levels(&p, 0);
        assert_eq!(levels.remaining, 0);
        assert_eq!(levels.reset, 200 * MS, "two intervals of debt");
    });
}

#[test]
fn loom_gcra_weighted_calls_never_take_more_than_the_burst() {
    model(|| {
        let (limiter, p) = gcra(10, 3);
        let costs = [2, 2, 1];
        let calls = costs.map(|cost| decide(&limiter, p, 0, cost));
        let taken: u64 = calls
            .into_iter()
            .zip(costs)
            .filter_map(|(c, cost)| c.join().unwrap().then_some(cost))
            .sum();
        // 2 + 1 in either order; 2 + 2 never.
        assert_eq!(taken, 3, "the bucket of 3 is filled whatever the order");
        // What is left is exactly what was not taken: every admitted
        // cost is in the word.
        assert_eq!(limiter.levels(&p, 0).remaining, 0);
        assert_eq!(limiter.levels(&p, 0).reset, 300 * MS);
    });
}

#[test]
fn loom_gcra_clock_reads_out_of_order_stay_within_the_bound() {
    model(|| {
        // One permit per 100 ms, no burst beyond it: over [0, 100 ms] at
        // most two calls pass, whatever order the three threads' clock
        // reads and updates land in.
        let (limiter, p) = gcra(10, 1);
        let calls = [
            decide(&limiter, p, 0, 1),
            decide(&limiter, p, 50 * MS, 1),
            decide(&limiter, p, 100 * MS, 1),
        ];
        let admitted: Vec<bool> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        let count = admitted.iter().filter(|a| **a).count();
        assert!((1..=2).contains(&count), "{admitted:?}");
        // The 50 ms call can pass only when the 0 ms one did not, since
        // the two are less than one interval apart.
        assert!(!(admitted[0] && admitted[1]), "{admitted:?}");
        // The word holds every admission: one interval of debt per call
        // past the latest time any of them saw.
        let debt = limiter.levels(&p, 100 * MS).reset;
        assert!(debt <= 100 * MS, "a debt of {debt} ns over a burst of one");
    });
}

#[test]
fn loom_params_readers_never_see_a_mix_of_two_settings() {
    model(|| {
        let a = Params::new(Algorithm::Gcra, Rate::per_second(10), Some(5)).unwrap();
        let b = Params::new(
            Algorithm::Gcra,
            Rate::new(7, Duration::from_millis(3)),
            Some(900),
        )
        .unwrap();
        let cell = Arc::new(ParamCell::new(a));
        let writer = {
            let cell = cell.clone();
            thread::spawn(move || cell.store(b))
        };
        let fields = |p: &Params| (p.permits, p.period, p.burst, p.interval, p.span);
        let seen = fields(&cell.load());
        assert!(
            seen == fields(&a) || seen == fields(&b),
            "torn read: {seen:?}"
        );
        writer.join().unwrap();
        assert_eq!(
            fields(&cell.load()),
            fields(&b),
            "the write is seen once done"
        );
    });
}
