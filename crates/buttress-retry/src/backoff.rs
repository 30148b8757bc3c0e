//! Backoff and jitter: how long to wait before the next attempt.
//!
//! A delay is computed in two steps. The [`Backoff`] gives the base delay of
//! retry `n` (1 for the first retry), capped at `max_delay`; the [`Jitter`]
//! then spreads it. Every jitter keeps spreading once the base reaches the
//! cap: Resilience4j adds its `±f` and then clamps to the cap, so at the cap
//! every client waits exactly the same time and they retry in lockstep.
//! Here the spread is taken *below* the cap instead.

use std::time::Duration;

use buttress_core::ConfigError;

use crate::rng::unit;

/// The base delay before each retry, before jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum Backoff {
    /// The same delay before every retry.
    Fixed {
        /// The delay.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        delay: Duration,
    },
    /// `initial + step * (n - 1)` before retry `n`.
    Linear {
        /// The delay before the first retry.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        initial: Duration,
        /// Added for each further retry.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        step: Duration,
    },
    /// `initial * multiplier^(n - 1)` before retry `n`.
    Exponential {
        /// The delay before the first retry.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        initial: Duration,
        /// The growth per retry, at least 1 (2 doubles the delay).
        multiplier: f64,
    },
}

impl Backoff {
    /// A fixed delay.
    pub const fn fixed(delay: Duration) -> Self {
        Backoff::Fixed { delay }
    }

    /// A linear backoff.
    pub const fn linear(initial: Duration, step: Duration) -> Self {
        Backoff::Linear { initial, step }
    }

    /// An exponential backoff doubling from `initial`.
    pub const fn exponential(initial: Duration) -> Self {
        Backoff::Exponential {
            initial,
            multiplier: 2.0,
        }
    }

    /// The delay before the first retry.
    pub fn initial(&self) -> Duration {
        match *self {
            Backoff::Fixed { delay } => delay,
            Backoff::Linear { initial, .. } | Backoff::Exponential { initial, .. } => initial,
        }
    }

    /// The base delay before retry `n` (1-based), capped at `cap`.
    ///
    /// ```
    /// use buttress_retry::Backoff;
    /// use std::time::Duration;
    ///
    /// let b = Backoff::exponential(Duration::from_millis(100));
    /// let cap = Duration::from_secs(1);
    /// assert_eq!(b.base(1, cap), Duration::from_millis(100));
    /// assert_eq!(b.base(3, cap), Duration::from_millis(400));
    /// assert_eq!(b.base(30, cap), cap);
    /// ```
    pub fn base(&self, n: u32, cap: Duration) -> Duration {
        let k = n.saturating_sub(1);
        let d = match *self {
            Backoff::Fixed { delay } => delay,
            Backoff::Linear { initial, step } => step
                .checked_mul(k)
                .and_then(|s| initial.checked_add(s))
                .unwrap_or(Duration::MAX),
            Backoff::Exponential {
                initial,
                multiplier,
            } => {
                // In whole nanoseconds, so that 10 ms * 3 is 30 ms exactly;
                // powi of a multiplier >= 1 is finite or +inf, both clamp.
                let exp = i32::try_from(k).unwrap_or(i32::MAX);
                let nanos = initial.as_nanos() as f64 * multiplier.powi(exp);
                if nanos < u64::MAX as f64 {
                    Duration::from_nanos(nanos.round() as u64)
                } else {
                    Duration::MAX
                }
            }
        };
        d.min(cap)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Backoff::Exponential {
            initial,
            multiplier,
        } = *self
        {
            if !(multiplier.is_finite() && multiplier >= 1.0) {
                return Err(ConfigError::new(
                    "retry",
                    "backoff.multiplier",
                    format!("must be a finite number of at least 1, got {multiplier}"),
                ));
            }
            if initial.is_zero() {
                return Err(ConfigError::new(
                    "retry",
                    "backoff.initial",
                    "must be greater than zero for an exponential backoff",
                ));
            }
        }
        Ok(())
    }
}

/// How the base delay is spread, so that clients do not retry in lockstep
/// (the variants of AWS's "Exponential Backoff And Jitter", plus `±f`).
///
/// With `t` the capped base delay and `cap` the maximum delay:
///
/// | jitter | delay |
/// |---|---|
/// | `None` | `t` |
/// | `Full` | `U(0, t)` |
/// | `Equal` | `t/2 + U(0, t/2)` |
/// | `Decorrelated` | `U(initial, min(cap, 3 * previous))` |
/// | `Proportional(f)` | `c * (1 + U(-f, f))`, `c = min(t, cap / (1 + f))` |
///
/// `Decorrelated` draws below the cap rather than clamping `U(initial,
/// 3 * previous)` to it as AWS's formula does, which would give exactly
/// `cap` two times out of three once the delays reach it. `Proportional`
/// centres its spread below the cap for the same reason: at the cap the
/// delays still spread over `[cap * (1 - f) / (1 + f), cap]`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Jitter {
    /// No jitter: every client waits the same time. Only for tests and
    /// single clients.
    None,
    /// `U(0, t)`: the least total work (AWS's recommendation).
    #[default]
    Full,
    /// `t/2 + U(0, t/2)`: never less than half the base delay.
    Equal,
    /// `U(initial, min(cap, 3 * previous))`: each delay grows from the last
    /// one drawn. It uses only the backoff's initial delay (which must not
    /// be zero) and the cap, not its step or multiplier.
    Decorrelated,
    /// `±f` of the base delay, `f` in `[0, 1]`.
    Proportional(f64),
}

impl Jitter {
    pub(crate) fn validate_with(&self, backoff: &Backoff) -> Result<(), ConfigError> {
        if *self == Jitter::Decorrelated && backoff.initial().is_zero() {
            return Err(ConfigError::new(
                "retry",
                "jitter",
                "a decorrelated jitter needs a backoff whose initial delay is not zero",
            ));
        }
        self.validate()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Jitter::Proportional(f) = *self {
            if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
                return Err(ConfigError::new(
                    "retry",
                    "jitter",
                    format!("a proportional jitter must be within [0, 1], got {f}"),
                ));
            }
        }
        Ok(())
    }

    /// The delay before retry `n` (1-based), given the previous delay drawn
    /// (used by `Decorrelated`) and a uniform random number in `[0, 1)`.
    /// Inputs out of range are clamped (`u` to `[0, 1]`, a proportional
    /// `f` to `[0, 1]`, non-finite values to 0); it never panics.
    ///
    /// ```
    /// use buttress_retry::{Backoff, Jitter};
    /// use std::time::Duration;
    ///
    /// let b = Backoff::fixed(Duration::from_secs(10));
    /// let cap = Duration::from_secs(10);
    /// assert_eq!(Jitter::Full.delay(&b, 1, cap, Duration::ZERO, 0.5), Duration::from_secs(5));
    /// assert_eq!(Jitter::Equal.delay(&b, 1, cap, Duration::ZERO, 0.0), Duration::from_secs(5));
    /// // At the cap, a proportional jitter still spreads below it.
    /// let at_cap = Jitter::Proportional(0.25).delay(&b, 1, cap, Duration::ZERO, 0.9999);
    /// assert!(at_cap <= cap);
    /// ```
    pub fn delay(
        &self,
        backoff: &Backoff,
        n: u32,
        cap: Duration,
        previous: Duration,
        u: f64,
    ) -> Duration {
        // Out-of-range inputs are clamped rather than trusted: `mul_f64`
        // panics on a negative or non-finite factor.
        let u = if u.is_finite() {
            u.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let t = backoff.base(n, cap);
        match *self {
            Jitter::None => t,
            Jitter::Full => t.mul_f64(u),
            Jitter::Equal => t / 2 + (t / 2).mul_f64(u),
            Jitter::Decorrelated => {
                let low = backoff.initial().min(cap);
                let high = previous
                    .max(low)
                    .checked_mul(3)
                    .unwrap_or(Duration::MAX)
                    .min(cap);
                low + (high - low).mul_f64(u)
            }
            Jitter::Proportional(f) => {
                let f = if f.is_finite() {
                    f.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let centre = t.min(cap.div_f64(1.0 + f));
                scale(centre, 1.0 - f + 2.0 * f * u).min(cap)
            }
        }
    }
}

/// `d * x` for a finite `x >= 0`, saturating instead of panicking as
/// `Duration::mul_f64` does on overflow.
fn scale(d: Duration, x: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * x).unwrap_or(Duration::MAX)
}

/// Draws the delay of retry `n` from `backoff` and `jitter` with a random
/// source.
pub(crate) fn draw(
    backoff: &Backoff,
    jitter: &Jitter,
    n: u32,
    cap: Duration,
    previous: Duration,
    random: u64,
) -> Duration {
    jitter.delay(backoff, n, cap, previous, unit(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bases_grow_as_documented_and_stop_at_the_cap() {
        let cap = Duration::from_secs(1);
        let fixed = Backoff::fixed(MS * 7);
        assert_eq!(
            (1..=4).map(|n| fixed.base(n, cap)).collect::<Vec<_>>(),
            [MS * 7; 4]
        );
        let linear = Backoff::linear(MS * 100, MS * 250);
        assert_eq!(
            (1..=5).map(|n| linear.base(n, cap)).collect::<Vec<_>>(),
            [MS * 100, MS * 350, MS * 600, MS * 850, cap]
        );
        let exp = Backoff::Exponential {
            initial: MS * 10,
            multiplier: 3.0,
        };
        assert_eq!(
            (1..=6).map(|n| exp.base(n, cap)).collect::<Vec<_>>(),
            [MS * 10, MS * 30, MS * 90, MS * 270, MS * 810, cap]
        );
        assert_eq!(exp.base(u32::MAX, cap), cap);
        let huge = Backoff::linear(Duration::MAX / 2, Duration::MAX / 2);
        assert_eq!(huge.base(3, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn full_and_equal_jitter_stay_within_their_ranges() {
        let b = Backoff::fixed(MS * 1000);
        let cap = MS * 1000;
        for i in 0..=100 {
            let u = f64::from(i) / 100.0 * 0.999_999;
            let full = Jitter::Full.delay(&b, 1, cap, Duration::ZERO, u);
            assert!(full < cap);
            let equal = Jitter::Equal.delay(&b, 1, cap, Duration::ZERO, u);
            assert!(equal >= cap / 2 && equal < cap);
        }
    }

    #[test]
    fn decorrelated_jitter_keeps_spreading_at_the_cap() {
        let b = Backoff::exponential(MS * 100);
        let cap = Duration::from_secs(2);
        // previous far beyond the cap: the draw still spans [initial, cap].
        let low = Jitter::Decorrelated.delay(&b, 9, cap, cap, 0.0);
        let mid = Jitter::Decorrelated.delay(&b, 9, cap, cap, 0.5);
        let high = Jitter::Decorrelated.delay(&b, 9, cap, cap, 0.999_999);
        assert_eq!(low, MS * 100);
        assert_eq!(mid, MS * 100 + (cap - MS * 100) / 2);
        assert!(high < cap && high > MS * 1999);
        // Below the cap it grows from the previous delay: U(100ms, 300ms).
        assert_eq!(
            Jitter::Decorrelated.delay(&b, 2, cap, MS * 100, 0.5),
            MS * 200
        );
    }

    #[test]
    fn proportional_jitter_is_centred_below_the_cap() {
        let b = Backoff::fixed(Duration::from_secs(10));
        let cap = Duration::from_secs(10);
        let j = Jitter::Proportional(0.25);
        let lo = j.delay(&b, 1, cap, Duration::ZERO, 0.0);
        let hi = j.delay(&b, 1, cap, Duration::ZERO, 0.999_999_999);
        assert_eq!(lo, Duration::from_secs(6));
        assert!(hi <= cap && hi > Duration::from_millis(9_999));
        // Far below the cap: plain ±25 %.
        let b = Backoff::fixed(Duration::from_secs(1));
        assert_eq!(
            j.delay(&b, 1, cap, Duration::ZERO, 0.0),
            Duration::from_millis(750)
        );
        assert_eq!(
            j.delay(&b, 1, cap, Duration::ZERO, 0.5),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn invalid_values_are_config_errors() {
        for f in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            assert_eq!(
                Jitter::Proportional(f).validate().unwrap_err().field(),
                "jitter"
            );
        }
        for m in [f64::NAN, 0.5, f64::INFINITY, -2.0] {
            let b = Backoff::Exponential {
                initial: MS,
                multiplier: m,
            };
            assert_eq!(b.validate().unwrap_err().field(), "backoff.multiplier");
        }
        assert_eq!(
            Backoff::exponential(Duration::ZERO)
                .validate()
                .unwrap_err()
                .field(),
            "backoff.initial"
        );
        assert!(Backoff::fixed(Duration::ZERO).validate().is_ok());
    }
}
