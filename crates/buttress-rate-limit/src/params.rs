//! A limiter's numbers, changeable at run time and read consistently
//! without a lock.

use std::sync::Mutex;

use crate::algorithm::{Algorithm, Params};
use crate::rate::Rate;
use crate::sync::{fence, spin_loop, AtomicU64, Ordering::*};

/// [`Params`] behind a sequence lock: readers load a few atomics and never
/// write, so a decision on many threads shares the cache line instead of
/// bouncing it; a writer (a run-time change through the handle) makes
/// every reader that overlaps it retry, so no decision ever mixes an old
/// number with a new one.
pub(crate) struct ParamCell {
    /// Even when stable, odd while a writer is at work.
    seq: AtomicU64,
    permits: AtomicU64,
    period: AtomicU64,
    burst: AtomicU64,
    interval: AtomicU64,
    span: AtomicU64,
    algorithm: Algorithm,
    /// Serialises writers; `Rate` for the snapshot.
    write: Mutex<Rate>,
}

impl ParamCell {
    pub(crate) fn new(p: Params) -> Self {
        Self {
            seq: AtomicU64::new(0),
            permits: AtomicU64::new(p.permits),
            period: AtomicU64::new(p.period),
            burst: AtomicU64::new(p.burst),
            interval: AtomicU64::new(p.interval),
            span: AtomicU64::new(p.span),
            algorithm: p.algorithm,
            write: Mutex::new(p.rate),
        }
    }

    #[inline]
    pub(crate) fn load(&self) -> Params {
        loop {
            let s1 = self.seq.load(Acquire);
            let p = Params {
                algorithm: self.algorithm,
                rate: Rate::new(0, std::time::Duration::ZERO),
                permits: self.permits.load(Relaxed),
                period: self.period.load(Relaxed),
                burst: self.burst.load(Relaxed),
                interval: self.interval.load(Relaxed),
                span: self.span.load(Relaxed),
            };
            fence(Acquire);
            let s2 = self.seq.load(Relaxed);
            if s1 == s2 && s1 & 1 == 0 {
                return p;
            }
            spin_loop();
        }
    }

    /// The numbers with their `Rate` (for snapshots; takes the writers'
    /// lock).
    pub(crate) fn load_full(&self) -> Params {
        let rate = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.load();
        p.rate = *rate;
        p
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub(crate) fn store(&self, p: Params) {
        let mut rate = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.seq.fetch_add(1, Relaxed);
        fence(Release);
        self.permits.store(p.permits, Relaxed);
        self.period.store(p.period, Relaxed);
        self.burst.store(p.burst, Relaxed);
        self.interval.store(p.interval, Relaxed);
        self.span.store(p.span, Relaxed);
        self.seq.fetch_add(1, Release);
        *rate = p.rate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn readers_never_see_a_mix_of_two_settings() {
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
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    cell.store(if i % 2 == 0 { b } else { a });
                }
            })
        };
        for _ in 0..200_000 {
            let p = cell.load();
            let same = |q: &Params| {
                (p.permits, p.period, p.burst, p.interval, p.span)
                    == (q.permits, q.period, q.burst, q.interval, q.span)
            };
            assert!(same(&a) || same(&b), "torn read: {p:?}");
        }
        writer.join().unwrap();
    }
}
