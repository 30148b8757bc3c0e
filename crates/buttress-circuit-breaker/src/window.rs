//! The count-based sliding window: the outcomes of the last `size` calls.
//!
//! Two rings of bits (failed, slow), one bit per call, and a cursor (next
//! slot, calls in the window). Recording a call takes one compare-and-swap
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

const LOW: u64 = 0xFFFF_FFFF;

pub(crate) struct CountWindow {
    size: u64,
    /// Low 32 bits: the slot the next call writes. High 32 bits: calls in
    /// the window, saturating at `size`. One compare-and-swap advances
    /// both, with no division on the hot path.
    cursor: AtomicU64,
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
            cursor: AtomicU64::new(0),
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

    /// Takes the next slot; returns its index.
    #[inline]
    fn advance(&self) -> u64 {
        let mut cur = self.cursor.load(Relaxed);
        loop {
            let (slot, calls) = (cur & LOW, cur >> 32);
            let next_slot = if slot + 1 == self.size { 0 } else { slot + 1 };
            let next = ((calls + u64::from(calls < self.size)) << 32) | next_slot;
            match self
                .cursor
                .compare_exchange_weak(cur, next, AcqRel, Relaxed)
            {
                Ok(_) => return slot,
                Err(actual) => cur = actual,
            }
        }
    }

    pub(crate) fn rates(&self) -> Rates {
        let calls = self.cursor.load(Acquire) >> 32;
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
