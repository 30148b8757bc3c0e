//! Property tests of every algorithm through the layer, on tokio's paused
//! clock: random arrival sequences (times and costs), checked against the
//! bound each `Algorithm` documents and, where the algorithm is exact,
//! against an independent reference model written here.

use std::convert::Infallible;
use std::time::Duration;

use buttress_core::RateLimited;
use buttress_rate_limit::{Algorithm, Rate, RateLimitLayer};
use proptest::prelude::*;
use tower::{Service, ServiceBuilder, ServiceExt};

/// One call of a run: when (nanoseconds since the limiter was built), its
/// cost, whether it was admitted and the retry hint of a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Call {
    t: u64,
    cost: u64,
    admitted: bool,
    retry_after: Option<u64>,
}

/// How long after the previous call the next one comes.
#[derive(Debug, Clone, Copy)]
enum Gap {
    /// At the same instant.
    Zero,
    /// A fraction of the period, in thousandths.
    Permille(u64),
    /// A whole number of intervals (exactly on GCRA's boundaries).
    Intervals(u64),
    /// A few nanoseconds (just after a boundary).
    Nanos(u64),
}

fn gap() -> impl Strategy<Value = Gap> {
    prop_oneof![
        3 => Just(Gap::Zero),
        4 => (0u64..=1500).prop_map(Gap::Permille),
        2 => (1u64..=3).prop_map(Gap::Intervals),
        1 => (1u64..=3).prop_map(Gap::Nanos),
    ]
}

fn gap_nanos(g: Gap, rate: Rate) -> u64 {
    let period = rate.period().as_nanos() as u64;
    let interval = rate.interval().as_nanos() as u64;
    match g {
        Gap::Zero => 0,
        Gap::Permille(m) => period * m / 1000,
        Gap::Intervals(k) => interval * k,
        Gap::Nanos(n) => n,
    }
}

/// A rate of 1 to 5 permits per 1 ms .. 1 s (a period in odd nanoseconds
/// too, so that the interval is rounded up).
fn rate() -> impl Strategy<Value = Rate> {
    (1u64..=5, 1_000_000u64..=1_000_000_000)
        .prop_map(|(n, period)| Rate::new(n, Duration::from_nanos(period)))
}

fn arrivals() -> impl Strategy<Value = Vec<(Gap, u64)>> {
    prop::collection::vec((gap(), 1u64..=3), 1..80)
}

/// Runs `arrivals` through a layer of `algorithm` on a paused clock.
fn run(algorithm: Algorithm, rate: Rate, burst: Option<u64>, arrivals: &[(Gap, u64)]) -> Vec<Call> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut builder = RateLimitLayer::builder(rate).algorithm(algorithm);
        if let Some(b) = burst {
            builder = builder.burst(b);
        }
        // Built right after the clock is paused: the limiter's time base,
        // and its windows, start at `start`.
        let start = tokio::time::Instant::now();
        let layer = builder.cost(|c: &u64| *c).build().unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|c: u64| async move { Ok::<_, Infallible>(c) });
        let mut calls = Vec::with_capacity(arrivals.len());
        for &(g, cost) in arrivals {
            tokio::time::advance(Duration::from_nanos(gap_nanos(g, rate))).await;
            let t = (tokio::time::Instant::now() - start).as_nanos() as u64;
            let res = svc.ready().await.unwrap().call(cost).await;
            let (admitted, retry_after) = match res {
                Ok(c) => {
                    assert_eq!(c, cost);
                    (true, None)
                }
                Err(e) => {
                    let limited = e
                        .downcast_ref::<RateLimited>()
                        .expect("a rejection is a RateLimited");
                    (false, limited.retry_after().map(|d| d.as_nanos() as u64))
                }
            };
            calls.push(Call {
                t,
                cost,
                admitted,
                retry_after,
            });
        }
        calls
    })
}

/// The largest sum of admitted costs over the calls whose times `t_i <=
/// t <= t_j` for admitted `i <= j`, and a bound checked on each such pair.
fn check_pairs(
    calls: &[Call],
    bound: impl Fn(u64, u64) -> Option<u64>,
) -> Result<(), TestCaseError> {
    let admitted: Vec<&Call> = calls.iter().filter(|c| c.admitted).collect();
    for i in 0..admitted.len() {
        let mut sum = 0;
        for j in i..admitted.len() {
            sum += admitted[j].cost;
            let (from, to) = (admitted[i].t, admitted[j].t);
            if let Some(max) = bound(from, to) {
                prop_assert!(
                    sum <= max,
                    "{sum} permits admitted in [{from}, {to}] ns, bound {max}; calls {calls:?}"
                );
            }
        }
    }
    Ok(())
}

/// The sum of admitted costs in each aligned window `[kP, (k+1)P)` is at
/// most `n`.
fn check_aligned(calls: &[Call], period: u64, n: u64) -> Result<(), TestCaseError> {
    let mut per_window = std::collections::BTreeMap::<u64, u64>::new();
    for c in calls.iter().filter(|c| c.admitted) {
        *per_window.entry(c.t / period).or_default() += c.cost;
    }
    for (k, sum) in per_window {
        prop_assert!(sum <= n, "{sum} permits in aligned window {k} (n = {n})");
    }
    Ok(())
}

/// GCRA in its virtual scheduling form, for a call of `cost` permits:
/// the call conforms when `t >= TAT - (b - cost)·T`, and then
/// `TAT = max(TAT, t) + cost·T`. Returns the verdict and the wait of a
/// rejection (`None` when the cost exceeds the burst).
struct Gcra {
    tat: i128,
    t: i128,
    b: i128,
}

impl Gcra {
    fn new(rate: Rate, burst: u64) -> Self {
        Self {
            tat: 0,
            t: rate.interval().as_nanos() as i128,
            b: burst as i128,
        }
    }

    fn offer(&mut self, now: u64, cost: u64) -> (bool, Option<u64>) {
        let (now, cost) = (now as i128, cost as i128);
        if cost > self.b {
            return (false, None);
        }
        let earliest = self.tat - (self.b - cost) * self.t;
        if now >= earliest {
            self.tat = self.tat.max(now) + cost * self.t;
            (true, None)
        } else {
            (false, Some((earliest - now) as u64))
        }
    }
}

/// The exact fixed window: `n` per aligned window.
fn fixed_window_model(calls: &[Call], rate: Rate) -> Vec<bool> {
    let period = rate.period().as_nanos() as u64;
    let n = rate.permits();
    let (mut window, mut count) = (0u64, 0u64);
    calls
        .iter()
        .map(|c| {
            if c.t / period != window {
                window = c.t / period;
                count = 0;
            }
            if count + c.cost <= n {
                count += c.cost;
                true
            } else {
                false
            }
        })
        .collect()
}

/// The exact sliding log: at most `n` in `(t - P, t]`.
fn sliding_log_model(calls: &[Call], rate: Rate) -> Vec<bool> {
    let period = rate.period().as_nanos() as u64;
    let n = rate.permits();
    let mut log: Vec<(u64, u64)> = Vec::new();
    calls
        .iter()
        .map(|c| {
            let live: u64 = log
                .iter()
                .filter(|(t, _)| t + period > c.t)
                .map(|(_, k)| k)
                .sum();
            if live + c.cost <= n {
                log.push((c.t, c.cost));
                true
            } else {
                false
            }
        })
        .collect()
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn gcra_respects_its_bound_and_decides_as_the_reference_model(
        rate in rate(),
        burst in 1u64..=6,
        arrivals in arrivals(),
    ) {
        let calls = run(Algorithm::Gcra, rate, Some(burst), &arrivals);
        let t = rate.interval().as_nanos() as u64;
        check_pairs(&calls, |from, to| Some(burst + (to - from) / t))?;
        let mut model = Gcra::new(rate, burst);
        for (i, c) in calls.iter().enumerate() {
            let (admitted, wait) = model.offer(c.t, c.cost);
            prop_assert_eq!(c.admitted, admitted, "call {} of {:?}", i, calls);
            if !admitted {
                prop_assert_eq!(c.retry_after, wait, "retry hint of call {} of {:?}", i, calls);
            }
        }
    }

    #[test]
    fn token_bucket_decides_exactly_as_gcra(
        rate in rate(),
        burst in 1u64..=6,
        arrivals in arrivals(),
    ) {
        let bucket = run(Algorithm::TokenBucket, rate, Some(burst), &arrivals);
        let gcra = run(Algorithm::Gcra, rate, Some(burst), &arrivals);
        prop_assert_eq!(&bucket, &gcra);
        let t = rate.interval().as_nanos() as u64;
        check_pairs(&bucket, |from, to| Some(burst + (to - from) / t))?;
    }

    #[test]
    fn fixed_window_admits_n_per_aligned_window_and_2n_per_period(
        rate in rate(),
        arrivals in arrivals(),
    ) {
        let calls = run(Algorithm::FixedWindow, rate, None, &arrivals);
        let (p, n) = (rate.period().as_nanos() as u64, rate.permits());
        check_aligned(&calls, p, n)?;
        check_pairs(&calls, |from, to| (to - from <= p).then_some(2 * n))?;
        let model = fixed_window_model(&calls, rate);
        let got: Vec<bool> = calls.iter().map(|c| c.admitted).collect();
        prop_assert_eq!(got, model, "calls {:?}", calls);
        // A rejection says when the next window starts.
        for c in calls.iter().filter(|c| !c.admitted && c.cost <= n) {
            prop_assert_eq!(c.retry_after, Some((c.t / p + 1) * p - c.t));
        }
    }

    #[test]
    fn sliding_log_admits_n_in_any_half_open_period(
        rate in rate(),
        arrivals in arrivals(),
    ) {
        let calls = run(Algorithm::SlidingLog, rate, None, &arrivals);
        let (p, n) = (rate.period().as_nanos() as u64, rate.permits());
        check_pairs(&calls, |from, to| (to - from < p).then_some(n))?;
        let model = sliding_log_model(&calls, rate);
        let got: Vec<bool> = calls.iter().map(|c| c.admitted).collect();
        prop_assert_eq!(got, model, "calls {:?}", calls);
    }

    #[test]
    fn sliding_window_admits_n_per_aligned_window_and_2n_minus_1_per_period(
        rate in rate(),
        arrivals in arrivals(),
    ) {
        let calls = run(Algorithm::SlidingWindow, rate, None, &arrivals);
        let (p, n) = (rate.period().as_nanos() as u64, rate.permits());
        check_aligned(&calls, p, n)?;
        check_pairs(&calls, |from, to| (to - from <= p).then_some(2 * n - 1))?;
    }
}

/// The bounds are tight: a burst at the end of a fixed window and another
/// at the start of the next pass `2n` within a period (so a checker with a
/// wrong bound, or a limiter aligned elsewhere, would be caught).
#[test]
fn fixed_window_passes_2n_across_a_boundary_but_sliding_log_does_not() {
    let rate = Rate::new(3, Duration::from_millis(100));
    let arrivals: Vec<(Gap, u64)> = [(Gap::Permille(990), 3), (Gap::Permille(20), 3)].to_vec();
    let fixed = run(Algorithm::FixedWindow, rate, None, &arrivals);
    assert!(fixed.iter().all(|c| c.admitted), "{fixed:?}");
    let log = run(Algorithm::SlidingLog, rate, None, &arrivals);
    assert_eq!(
        log.iter().map(|c| c.admitted).collect::<Vec<_>>(),
        [true, false]
    );
    let sliding = run(Algorithm::SlidingWindow, rate, None, &arrivals);
    assert_eq!(
        sliding.iter().map(|c| c.admitted).collect::<Vec<_>>(),
        [true, false]
    );
}
