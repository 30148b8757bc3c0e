//! The pseudo-random numbers behind every fault: SplitMix64 (Steele, Lea
//! and Flood, "Fast splittable pseudorandom number generators", 2014; the
//! generator `java.util.SplittableRandom` and the seeding step of the
//! xoshiro family use), with no dependency.
//!
//! A chaos instance keeps a seed and a count of the calls it has rolled
//! for. Call `n` (counting from 0) draws from its own SplitMix64 stream,
//! seeded with `mix(seed ^ mix(n + 1))`, so the faults depend only on the
//! seed and the order of the calls: the same seed and the same call order
//! give the same faults, on any thread, and taking a call number is one
//! atomic add.

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mixer.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The default seed of an instance: FNV-1a of its name, mixed, so that
/// an unseeded instance is still reproducible and two differently named
/// ones draw different faults.
pub(crate) fn seed_of_name(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(h)
}

/// 2<sup>53</sup>: draws are 53-bit, the precision of an `f64` in [0, 1).
pub(crate) const SCALE: u64 = 1 << 53;

/// One call's stream.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The stream of call `n` of an instance seeded with `seed`.
    pub(crate) fn for_call(seed: u64, n: u64) -> Self {
        Self {
            state: mix(seed ^ mix(n.wrapping_add(1))),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 2^53)`.
    pub(crate) fn next_53(&mut self) -> u64 {
        self.next_u64() >> 11
    }

    /// Uniform in `[0, 1)`, in steps of 2<sup>-53</sup>.
    pub(crate) fn unit(&mut self) -> f64 {
        self.next_53() as f64 / SCALE as f64
    }
}

/// A rate in [0, 1] as a threshold on 53-bit draws: a draw `d` hits when
/// `d < threshold(rate)`, so 0 never hits and 1 always does.
pub(crate) fn threshold(rate: f64) -> u64 {
    (rate * SCALE as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_output() {
        // The reference implementation (Vigna's splitmix64.c) seeded with
        // 1234567 starts with these outputs.
        let mut r = SplitMix64 { state: 1234567 };
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        assert_eq!(r.next_u64(), 9817491932198370423);
    }

    #[test]
    fn thresholds_are_exact_at_the_ends() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), SCALE);
        let mut r = SplitMix64::for_call(7, 0);
        for _ in 0..1000 {
            let d = r.next_53();
            assert!(d < threshold(1.0));
            assert!(d >= threshold(0.0));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn each_call_has_its_own_stream() {
        let a = SplitMix64::for_call(1, 0).next_u64();
        let b = SplitMix64::for_call(1, 1).next_u64();
        let c = SplitMix64::for_call(2, 0).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, SplitMix64::for_call(1, 0).next_u64());
    }
}
