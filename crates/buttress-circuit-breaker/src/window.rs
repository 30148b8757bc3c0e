//! The count-based sliding window: the outcomes of the last `size` calls.
//!
//! Two rings of bits (failed, slow), one bit per call, and a cursor (calls
//! recorded since the last reset). Recording a call takes one atomic add
//! for its slot and touches a bit only when it changes, so a success that
//! replaces a success costs one read-modify-write. Rates are counted (popcount) only
//! when a verdict is needed, which is after a failure or a slow call: a
//! plain success can never trip a breaker.
//!
//! Under concurrency two calls never share a slot unless more than `size`
//! calls record at the same instant; a verdict computed while others record
//! sees each of their bits either before or after the change, as a lock
//! would have ordered them.

use std::sync::atomic::{AtomicU64, Ordering::*};

/// A value alone on its cache line (two lines: adjacent-line prefetch
/// pairs them on x86).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

pub(crate) struct CountWindow {
    size: u64,
    /// Calls recorded since the last reset: the next slot is this modulo
    /// `size`, the calls in the window this capped at `size`. An atomic add
    /// takes slots, so threads that record at once never retry.
    ///
    /// On a cache line of its own: the threads that move batches of
    /// successes write it, while every call reads the breaker's state word,
    /// which must not share its line.
    cursor: Padded<AtomicU64>,
    failed: Box<[AtomicU64]>,
    slow: Box<[AtomicU64]>,
}

/// Rates over the window, in percent; `None` below the minimum of calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rates {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
}

impl Rates {
    pub(crate) fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failed as f64 * 100.0 / self.calls as f64
        }
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.slow as f64 * 100.0 / self.calls as f64
        }
    }
}

fn words(size: u64) -> Box<[AtomicU64]> {
    (0..size.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = u64::from(size.max(1));
        Self {
            size,
            cursor: Padded(AtomicU64::new(0)),
            failed: words(size),
            slow: words(size),
        }
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool) {
        let slot = self.advance();
        let (word, mask) = ((slot / 64) as usize, 1u64 << (slot % 64));
        set_bit(&self.failed[word], mask, failed);
        set_bit(&self.slow[word], mask, slow);
    }

    /// Records `n` successes (at most the window's size) with one atomic
    /// add.
    pub(crate) fn record_successes(&self, n: u64) {
        let n = n.min(self.size);
        let first = self.cursor.fetch_add(n, AcqRel);
        for i in 0..n {
            let slot = (first + i) % self.size;
            let (word, mask) = ((slot / 64) as usize, 1u64 << (slot % 64));
            set_bit(&self.failed[word], mask, false);
            set_bit(&self.slow[word], mask, false);
        }
    }

    /// Takes the next slot; returns its index.
    #[inline]
    fn advance(&self) -> u64 {
        self.cursor.fetch_add(1, AcqRel) % self.size
    }

    pub(crate) fn rates(&self) -> Rates {
        let calls = self.cursor.load(Acquire).min(self.size);
        let count = |bits: &[AtomicU64]| -> u64 {
            bits.iter()
                .map(|w| u64::from(w.load(Acquire).count_ones()))
                .sum()
        };
        Rates {
            calls,
            failed: count(&self.failed).min(calls),
            slow: count(&self.slow).min(calls),
        }
    }

    pub(crate) fn reset(&self) {
        self.cursor.store(0, Release);
        for w in self.failed.iter().chain(self.slow.iter()) {
            w.store(0, Release);
        }
    }
}

#[inline]
fn set_bit(word: &AtomicU64, mask: u64, on: bool) {
    let was_on = word.load(Relaxed) & mask != 0;
    if on && !was_on {
        word.fetch_or(mask, AcqRel);
    } else if !on && was_on {
        word.fetch_and(!mask, AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// The reference: a plain queue of the last `size` outcomes.
    struct Model {
        size: usize,
        last: VecDeque<(bool, bool)>,
    }

    impl Model {
        fn record(&mut self, failed: bool, slow: bool) {
            if self.last.len() == self.size {
                self.last.pop_front();
            }
            self.last.push_back((failed, slow));
        }

        fn rates(&self) -> Rates {
            Rates {
                calls: self.last.len() as u64,
                failed: self.last.iter().filter(|o| o.0).count() as u64,
                slow: self.last.iter().filter(|o| o.1).count() as u64,
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn window_matches_the_reference_model(
            size in 1u32..200,
            outcomes in proptest::collection::vec((proptest::bool::ANY, proptest::bool::ANY), 0..600),
        ) {
            let w = CountWindow::new(size);
            let mut m = Model { size: size as usize, last: VecDeque::new() };
            for (failed, slow) in outcomes {
                w.record(failed, slow);
                m.record(failed, slow);
                proptest::prop_assert_eq!(w.rates(), m.rates());
            }
            w.reset();
            proptest::prop_assert_eq!(w.rates(), Rates { calls: 0, failed: 0, slow: 0 });
        }
    }

    #[test]
    fn rates_in_percent() {
        let w = CountWindow::new(4);
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
}

/// The time-based sliding window: the outcomes of the last `secs` whole
/// seconds, one bucket per second.
///
/// A bucket is one atomic word per pair of counts, stamped with the second
/// it holds: recording is one compare-and-swap (two for a slow call), and a
/// bucket left over from an earlier lap is reset by the first call that
/// lands in it. Rates sum the buckets whose stamp lies in the window, only
/// when a verdict is needed.
pub(crate) struct TimeWindow {
    secs: u64,
    /// Stamp, calls, failed.
    calls: Box<[AtomicU64]>,
    /// Stamp, slow calls.
    slow: Box<[AtomicU64]>,
}

// A bucket word: valid (1 bit) | stamp (21 bits) | two counts (21 bits
// each). The stamp is the second modulo 2^21 (about 24 days): a bucket is
// only read for the seconds of the current window, so an old bucket could
// be mistaken for a current one only if it was last written a multiple of
// 24 days ago to the day, to the second.
const STAMP_BITS: u32 = 21;
const COUNT_BITS: u32 = 21;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const VALID: u64 = 1 << 63;
const EMPTY: u64 = 0;

/// The stamp of a bucket word, `None` for an empty bucket.
#[inline]
fn stamp_of(word: u64) -> Option<u64> {
    (word & VALID != 0).then_some((word >> (2 * COUNT_BITS)) & STAMP_MASK)
}

#[inline]
fn lo(word: u64) -> u64 {
    word & COUNT_MAX
}

#[inline]
fn hi(word: u64) -> u64 {
    (word >> COUNT_BITS) & COUNT_MAX
}

/// Adds `(add_lo, add_hi)` to the counts of `word` for second `stamp`,
/// resetting counts left from another second; counts saturate.
#[inline]
fn bump(word: &AtomicU64, stamp: u64, add_lo: u64, add_hi: u64) {
    let mut cur = word.load(Relaxed);
    loop {
        let (l, h) = if stamp_of(cur) == Some(stamp) {
            (lo(cur), hi(cur))
        } else {
            (0, 0)
        };
        let next = VALID
            | (stamp << (2 * COUNT_BITS))
            | ((h + add_hi).min(COUNT_MAX) << COUNT_BITS)
            | (l + add_lo).min(COUNT_MAX);
        match word.compare_exchange_weak(cur, next, AcqRel, Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

impl TimeWindow {
    pub(crate) fn new(secs: u32) -> Self {
        let secs = u64::from(secs.max(1));
        let buckets = || (0..secs).map(|_| AtomicU64::new(EMPTY)).collect();
        Self {
            secs,
            calls: buckets(),
            slow: buckets(),
        }
    }

    /// Records one call at `second` (whole seconds since the breaker's
    /// base instant).
    #[inline]
    pub(crate) fn record(&self, second: u64, failed: bool, slow: bool) {
        let i = (second % self.secs) as usize;
        let stamp = second & STAMP_MASK;
        bump(&self.calls[i], stamp, 1, u64::from(failed));
        if slow {
            bump(&self.slow[i], stamp, 1, 0);
        }
    }

    /// Records `n` successes of `second`, unless that second has left the
    /// window by `now` (its bucket may hold a later lap then).
    pub(crate) fn record_successes(&self, second: u64, now: u64, n: u64) {
        if second > now || now - second >= self.secs {
            return;
        }
        let i = (second % self.secs) as usize;
        bump(&self.calls[i], second & STAMP_MASK, n, 0);
    }

    pub(crate) fn rates(&self, second: u64) -> Rates {
        let mut r = Rates {
            calls: 0,
            failed: 0,
            slow: 0,
        };
        for back in 0..self.secs.min(second + 1) {
            let s = second - back;
            let (i, stamp) = ((s % self.secs) as usize, s & STAMP_MASK);
            let c = self.calls[i].load(Acquire);
            if stamp_of(c) == Some(stamp) {
                r.calls += lo(c);
                r.failed += hi(c);
            }
            let w = self.slow[i].load(Acquire);
            if stamp_of(w) == Some(stamp) {
                r.slow += lo(w);
            }
        }
        r
    }

    pub(crate) fn reset(&self) {
        for w in self.calls.iter().chain(self.slow.iter()) {
            w.store(EMPTY, Release);
        }
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;
    use std::collections::VecDeque;

    proptest::proptest! {
        #[test]
        fn time_window_matches_the_reference_model(
            secs in 1u32..10,
            steps in proptest::collection::vec((0u64..4, proptest::bool::ANY, proptest::bool::ANY), 0..300),
        ) {
            let w = TimeWindow::new(secs);
            // The reference: every (second, failed, slow) ever recorded.
            let mut all: VecDeque<(u64, bool, bool)> = VecDeque::new();
            let mut now = 0u64;
            for (advance, failed, slow) in steps {
                now += advance;
                w.record(now, failed, slow);
                all.push_back((now, failed, slow));
                let live: Vec<_> = all
                    .iter()
                    .filter(|(s, _, _)| now - s < u64::from(secs))
                    .collect();
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
    fn a_bucket_from_an_earlier_lap_is_reset() {
        let w = TimeWindow::new(2);
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
        w.record(2, false, false); // lands in second 0's bucket
        assert_eq!(
            w.rates(2),
            Rates {
                calls: 2,
                failed: 0,
                slow: 0
            }
        );
        assert_eq!(
            w.rates(10),
            Rates {
                calls: 0,
                failed: 0,
                slow: 0
            }
        );
        // An empty bucket is never read as counts, whatever the second.
        let fresh = TimeWindow::new(3);
        assert_eq!(
            fresh.rates(STAMP_MASK),
            Rates {
                calls: 0,
                failed: 0,
                slow: 0
            }
        );
        w.reset();
        assert_eq!(
            w.rates(2),
            Rates {
                calls: 0,
                failed: 0,
                slow: 0
            }
        );
    }
}
