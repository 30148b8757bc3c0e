//! The sliding windows: plain data, changed only under the breaker's lock.
//!
//! Both keep running totals, so recording a call and reading the rates are
//! O(1) (a time window also moves over the seconds that passed since its
//! last use, at most its length). Counts are `u64`: they cannot saturate,
//! so no load can raise a rate.

/// The counts over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Rates {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
}

/// `n` of `calls` in percent, as Resilience4j computes it.
#[inline]
pub(crate) fn percent(n: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        n as f64 * 100.0 / calls as f64
    }
}

impl Rates {
    pub(crate) fn failure_rate(&self) -> f64 {
        percent(self.failed, self.calls)
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        percent(self.slow, self.calls)
    }
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// The count-based sliding window: the outcomes of the last `size` calls,
/// one byte each in a ring.
pub(crate) struct CountWindow {
    outcomes: Box<[u8]>,
    /// The slot the next call takes.
    next: usize,
    totals: Rates,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = (size as usize).max(1);
        Self {
            outcomes: vec![0; size].into_boxed_slice(),
            next: 0,
            totals: Rates::default(),
        }
    }

    #[inline]
    pub(crate) fn record(&mut self, failed: bool, slow: bool) {
        let size = self.outcomes.len();
        let slot = &mut self.outcomes[self.next];
        if self.totals.calls == size as u64 {
            // The oldest call leaves the window.
            self.totals.failed -= u64::from(*slot & FAILED);
            self.totals.slow -= u64::from((*slot & SLOW) >> 1);
        } else {
            self.totals.calls += 1;
        }
        *slot = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        self.totals.failed += u64::from(failed);
        self.totals.slow += u64::from(slow);
        self.next += 1;
        if self.next == size {
            self.next = 0;
        }
    }

    #[inline]
    pub(crate) fn rates(&self) -> Rates {
        self.totals
    }

    pub(crate) fn reset(&mut self) {
        self.next = 0;
        self.totals = Rates::default();
    }
}

/// The time-based sliding window: the outcomes of the last `secs` whole
/// seconds, one bucket per second, in a ring.
pub(crate) struct TimeWindow {
    buckets: Box<[Rates]>,
    /// The latest second the window has reached (seconds since the
    /// breaker's base instant); the bucket of `second - i` is
    /// `buckets[(second - i) % secs]` for `i < secs`.
    second: u64,
    totals: Rates,
}

impl TimeWindow {
    pub(crate) fn new(secs: u32) -> Self {
        let secs = (secs as usize).max(1);
        Self {
            buckets: vec![Rates::default(); secs].into_boxed_slice(),
            second: 0,
            totals: Rates::default(),
        }
    }

    /// Moves the window to `now`: the buckets of seconds that left it are
    /// emptied and subtracted. A `now` before the window's second (a reader
    /// whose clock reading is older) leaves it where it is.
    #[inline]
    fn advance(&mut self, now: u64) {
        if now <= self.second {
            return;
        }
        let secs = self.buckets.len() as u64;
        let steps = (now - self.second).min(secs);
        for s in now - steps + 1..=now {
            let bucket = &mut self.buckets[(s % secs) as usize];
            self.totals.calls -= bucket.calls;
            self.totals.failed -= bucket.failed;
            self.totals.slow -= bucket.slow;
            *bucket = Rates::default();
        }
        self.second = now;
    }

    /// Records one call that ended at `now` (whole seconds since the
    /// breaker's base instant).
    #[inline]
    pub(crate) fn record(&mut self, now: u64, failed: bool, slow: bool) {
        self.advance(now);
        let secs = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(self.second % secs) as usize];
        bucket.calls += 1;
        bucket.failed += u64::from(failed);
        bucket.slow += u64::from(slow);
        self.totals.calls += 1;
        self.totals.failed += u64::from(failed);
        self.totals.slow += u64::from(slow);
    }

    /// The counts of the window ending at `now`.
    #[inline]
    pub(crate) fn rates(&mut self, now: u64) -> Rates {
        self.advance(now);
        self.totals
    }

    pub(crate) fn reset(&mut self) {
        self.buckets.fill(Rates::default());
        self.totals = Rates::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    proptest::proptest! {
        /// The reference: a plain queue of the last `size` outcomes.
        #[test]
        fn count_window_matches_the_reference_model(
            size in 1u32..200,
            outcomes in proptest::collection::vec((proptest::bool::ANY, proptest::bool::ANY), 0..600),
        ) {
            let mut w = CountWindow::new(size);
            let mut last: VecDeque<(bool, bool)> = VecDeque::new();
            for (failed, slow) in outcomes {
                w.record(failed, slow);
                if last.len() == size as usize {
                    last.pop_front();
                }
                last.push_back((failed, slow));
                let expected = Rates {
                    calls: last.len() as u64,
                    failed: last.iter().filter(|o| o.0).count() as u64,
                    slow: last.iter().filter(|o| o.1).count() as u64,
                };
                proptest::prop_assert_eq!(w.rates(), expected);
            }
            w.reset();
            proptest::prop_assert_eq!(w.rates(), Rates::default());
        }

        /// The reference: every (second, failed, slow) ever recorded,
        /// filtered by age.
        #[test]
        fn time_window_matches_the_reference_model(
            secs in 1u32..10,
            steps in proptest::collection::vec((0u64..4, proptest::bool::ANY, proptest::bool::ANY), 0..300),
        ) {
            let mut w = TimeWindow::new(secs);
            let mut all: Vec<(u64, bool, bool)> = Vec::new();
            let mut now = 0u64;
            for (advance, failed, slow) in steps {
                now += advance;
                w.record(now, failed, slow);
                all.push((now, failed, slow));
                let live: Vec<_> = all.iter().filter(|(s, _, _)| now - s < u64::from(secs)).collect();
                let expected = Rates {
                    calls: live.len() as u64,
                    failed: live.iter().filter(|o| o.1).count() as u64,
                    slow: live.iter().filter(|o| o.2).count() as u64,
                };
                proptest::prop_assert_eq!(w.rates(now), expected);
            }
        }
    }

    #[test]
    fn rates_in_percent() {
        let mut w = CountWindow::new(4);
        w.record(true, false);
        w.record(false, true);
        w.record(true, true);
        let r = w.rates();
        assert_eq!((r.calls, r.failed, r.slow), (3, 2, 2));
        assert!((r.failure_rate() - 66.666).abs() < 0.01);
        w.record(false, false);
        w.record(false, false); // pushes out the first failure
        let r = w.rates();
        assert_eq!((r.calls, r.failed, r.slow), (4, 1, 2));
        assert_eq!(r.failure_rate(), 25.0);
        assert_eq!(r.slow_rate(), 50.0);
    }

    #[test]
    fn time_window_counts_never_saturate() {
        // Far more calls in one second than a packed 21-bit count holds:
        // the rate stays the true one.
        let mut w = TimeWindow::new(1);
        for i in 0..3_000_000u64 {
            w.record(5, i % 3 == 0, false);
        }
        let r = w.rates(5);
        assert_eq!((r.calls, r.failed), (3_000_000, 1_000_000));
        assert!((r.failure_rate() - 33.333).abs() < 0.001);
    }

    #[test]
    fn time_window_empties_the_seconds_that_left_it() {
        let mut w = TimeWindow::new(2);
        w.record(0, true, true);
        w.record(1, false, false);
        assert_eq!(
            w.rates(1),
            Rates {
                calls: 2,
                failed: 1,
                slow: 1
            }
        );
        w.record(2, false, false); // second 0 leaves the window
        assert_eq!(
            w.rates(2),
            Rates {
                calls: 2,
                failed: 0,
                slow: 0
            }
        );
        // An older reading does not move it back.
        assert_eq!(w.rates(1).calls, 2);
        assert_eq!(w.rates(10), Rates::default());
        w.record(11, true, false);
        w.reset();
        assert_eq!(w.rates(11), Rates::default());
    }
}
