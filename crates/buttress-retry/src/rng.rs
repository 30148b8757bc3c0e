//! Random numbers for jitter: injectable and seedable, so tests are
//! reproducible.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of uniformly distributed 64-bit random numbers for jitter.
///
/// Implement it to plug in another generator; [`SeededRandom`] gives a
/// reproducible sequence. Without one, each thread uses its own generator
/// seeded from the standard library's per-process random keys.
pub trait RandomSource: Send + Sync + 'static {
    /// The next random number.
    fn next_u64(&self) -> u64;
}

/// A reproducible generator: SplitMix64 over an atomic counter, so one
/// seeded source can be shared by every clone of a layer without a lock.
///
/// ```
/// use buttress_retry::{RandomSource, SeededRandom};
///
/// let a = SeededRandom::new(7);
/// let b = SeededRandom::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert_ne!(a.next_u64(), SeededRandom::new(8).next_u64());
/// ```
pub struct SeededRandom {
    state: AtomicU64,
}

impl SeededRandom {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }
}

impl fmt::Debug for SeededRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeededRandom").finish_non_exhaustive()
    }
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl RandomSource for SeededRandom {
    fn next_u64(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA))
    }
}

thread_local! {
    static THREAD_STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0x5eed_u64));
}

/// The default source: one SplitMix64 state per thread, no shared writes.
pub(crate) fn thread_random() -> u64 {
    THREAD_STATE.with(|s| {
        let next = s.get().wrapping_add(GAMMA);
        s.set(next);
        mix(next)
    })
}

/// A uniform number in `[0, 1)` from 64 random bits.
pub(crate) fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_stays_below_one() {
        assert_eq!(unit(0), 0.0);
        assert!(unit(u64::MAX) < 1.0);
    }

    #[test]
    fn seeded_sequences_repeat_and_look_uniform() {
        let a = SeededRandom::new(42);
        let b = SeededRandom::new(42);
        let xs: Vec<f64> = (0..10_000).map(|_| unit(a.next_u64())).collect();
        let ys: Vec<f64> = (0..10_000).map(|_| unit(b.next_u64())).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let below_tenth = xs.iter().filter(|x| **x < 0.1).count();
        assert!((900..1100).contains(&below_tenth), "{below_tenth}");
    }

    #[test]
    fn thread_random_differs_between_draws() {
        assert_ne!(thread_random(), thread_random());
    }
}
