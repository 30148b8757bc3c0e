//! A small xorshift generator: the demo needs noise, not cryptography.

use std::time::{SystemTime, UNIX_EPOCH};

/// Marsaglia's xorshift64, seeded from the clock.
#[derive(Debug, Clone)]
pub(crate) struct XorShift64(u64);

impl XorShift64 {
    /// A generator seeded from the wall clock and `salt`, so that
    /// generators made in the same instant (one per client) differ.
    pub(crate) fn from_clock(salt: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::seeded(nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// A generator with a fixed seed, for reproducible tests.
    pub(crate) fn seeded(seed: u64) -> Self {
        // One splitmix64 step spreads close seeds apart; xorshift must not
        // start at zero, where it would stay.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `lo..=hi` (the modulo bias is far below what the demo
    /// could show).
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// `true` with a probability of `percent` %.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_range_and_hits_both_ends() {
        let mut rng = XorShift64::seeded(7);
        let draws: Vec<u64> = (0..10_000).map(|_| rng.between(5, 40)).collect();
        assert!(draws.iter().all(|d| (5..=40).contains(d)));
        assert!(draws.contains(&5) && draws.contains(&40));
    }

    #[test]
    fn percent_is_roughly_right() {
        let mut rng = XorShift64::seeded(42);
        let hits = (0..100_000).filter(|_| rng.percent(10)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
    }

    #[test]
    fn zero_seed_does_not_get_stuck() {
        let mut rng = XorShift64::seeded(0);
        assert_ne!(rng.next_u64(), rng.next_u64());
    }
}
