//! How long an injected delay lasts.

use std::time::Duration;

use buttress_core::ConfigError;

use crate::layer::KIND;
use crate::rng::SplitMix64;

/// The longest duration a [`Latency`] accepts in any of its parameters
/// (one day): a delay read from a config file with a unit typo (`"5000h"`)
/// is an error, not a call that hangs for months.
pub const MAX_LATENCY: Duration = Duration::from_secs(24 * 60 * 60);

/// The distribution an injected delay is drawn from.
///
/// Every sample uses the call's own draws (see the crate docs on
/// seeding), so a seeded instance injects the same delays in the same
/// order.
///
/// ```
/// use buttress_chaos::Latency;
/// use std::time::Duration;
///
/// let fixed = Latency::Fixed(Duration::from_millis(50));
/// let uniform = Latency::Uniform { min: Duration::from_millis(10), max: Duration::from_millis(90) };
/// let exp = Latency::Exponential { mean: Duration::from_millis(20) };
/// let normal = Latency::Normal { mean: Duration::from_millis(50), std_dev: Duration::from_millis(5) };
/// for l in [fixed, uniform, exp, normal] {
///     l.validate().unwrap();
/// }
/// let bad = Latency::Uniform { min: Duration::from_secs(2), max: Duration::from_secs(1) };
/// assert_eq!(bad.validate().unwrap_err().field(), "latency");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum Latency {
    /// Always the same delay.
    Fixed(#[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))] Duration),
    /// Uniform in `[min, max]`: `min + u * (max - min)`.
    Uniform {
        /// The shortest delay.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        min: Duration,
        /// The longest delay.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        max: Duration,
    },
    /// Exponential with the given mean, by inversion: `-mean * ln(1 - u)`.
    /// Most delays are short and a few are long, like the service times
    /// of a loaded server. With 53-bit draws the longest possible delay is
    /// about 36.7 times the mean.
    Exponential {
        /// The mean delay.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        mean: Duration,
    },
    /// Approximately normal (Irwin–Hall): `mean + std_dev * (u1 + ... +
    /// u12 - 6)`, the sum of twelve uniform draws, which has variance 1.
    /// Bounded to `mean ± 6 std_dev` by construction, and clamped at zero
    /// below. Cheap, and close enough to a bell curve for fault
    /// injection; not for statistics.
    Normal {
        /// The mean delay.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        mean: Duration,
        /// The standard deviation.
        #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
        std_dev: Duration,
    },
}

impl Default for Latency {
    /// `Fixed(0)`: no delay until one is configured.
    fn default() -> Self {
        Latency::Fixed(Duration::ZERO)
    }
}

impl Latency {
    /// Checks the parameters: every duration at most [`MAX_LATENCY`], and
    /// `min <= max` for [`Uniform`](Latency::Uniform). The error names the
    /// field `latency`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations: &[Duration] = match self {
            Latency::Fixed(d) => &[*d],
            Latency::Uniform { min, max } => {
                if min > max {
                    return Err(ConfigError::new(
                        KIND,
                        "latency",
                        format!("uniform min ({min:?}) must not exceed max ({max:?})"),
                    ));
                }
                &[*min, *max]
            }
            Latency::Exponential { mean } => &[*mean],
            Latency::Normal { mean, std_dev } => &[*mean, *std_dev],
        };
        if let Some(d) = durations.iter().find(|d| **d > MAX_LATENCY) {
            return Err(ConfigError::new(
                KIND,
                "latency",
                format!("{d:?} is longer than the maximum of {MAX_LATENCY:?}"),
            ));
        }
        Ok(())
    }

    /// One delay, drawn from `rng`.
    pub(crate) fn sample(&self, rng: &mut SplitMix64) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                let span = (max - min).as_nanos() as f64;
                min + nanos(rng.unit() * span)
            }
            Latency::Exponential { mean } => {
                // 1 - u is in (0, 1]: the logarithm is finite.
                nanos(-(1.0 - rng.unit()).ln() * mean.as_nanos() as f64)
            }
            Latency::Normal { mean, std_dev } => {
                let z: f64 = (0..12).map(|_| rng.unit()).sum::<f64>() - 6.0;
                nanos(mean.as_nanos() as f64 + z * std_dev.as_nanos() as f64)
            }
        }
    }
}

/// Nanoseconds as a `Duration`, clamped at zero below (never a panic).
fn nanos(n: f64) -> Duration {
    if n.is_nan() || n <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(n.min(u64::MAX as f64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(l: Latency, n: u64) -> Vec<Duration> {
        (0..n)
            .map(|i| l.sample(&mut SplitMix64::for_call(42, i)))
            .collect()
    }

    #[test]
    fn fixed_is_fixed() {
        let d = Duration::from_millis(7);
        assert!(samples(Latency::Fixed(d), 100).iter().all(|s| *s == d));
    }

    #[test]
    fn uniform_stays_in_its_bounds_and_spreads() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(20));
        let s = samples(Latency::Uniform { min, max }, 10_000);
        assert!(s.iter().all(|d| *d >= min && *d <= max));
        let mean = s.iter().sum::<Duration>() / s.len() as u32;
        // The mean of U(10, 20) ms is 15 ms; its standard error over 10 000
        // draws is 2.9 ms / 100 = 0.029 ms: allow 10 of them.
        assert!(mean.abs_diff(Duration::from_millis(15)) < Duration::from_micros(290));
    }

    #[test]
    fn exponential_has_its_mean() {
        let mean = Duration::from_millis(20);
        let s = samples(Latency::Exponential { mean }, 10_000);
        let m = s.iter().sum::<Duration>() / s.len() as u32;
        // Standard error: 20 ms / 100 = 0.2 ms; allow 5 of them.
        assert!(m.abs_diff(mean) < Duration::from_millis(1), "{m:?}");
        assert!(s.iter().all(|d| *d < mean * 37));
    }

    #[test]
    fn normal_is_bounded_and_centred() {
        let (mean, std_dev) = (Duration::from_millis(50), Duration::from_millis(5));
        let s = samples(Latency::Normal { mean, std_dev }, 10_000);
        assert!(s.iter().all(|d| d.abs_diff(mean) <= std_dev * 6));
        let m = s.iter().sum::<Duration>() / s.len() as u32;
        // Standard error: 5 ms / 100 = 0.05 ms; allow 5 of them.
        assert!(m.abs_diff(mean) < Duration::from_micros(250), "{m:?}");
        // About 68 % within one standard deviation.
        let within = s.iter().filter(|d| d.abs_diff(mean) <= std_dev).count();
        assert!((6500..7100).contains(&within), "{within}");
    }

    #[test]
    fn normal_never_goes_below_zero() {
        let l = Latency::Normal {
            mean: Duration::from_millis(1),
            std_dev: Duration::from_millis(10),
        };
        assert!(samples(l, 1000).contains(&Duration::ZERO));
    }

    #[test]
    fn validation_names_the_field() {
        let too_long = Latency::Exponential {
            mean: MAX_LATENCY + Duration::from_secs(1),
        };
        let e = too_long.validate().unwrap_err();
        assert_eq!((e.component(), e.field()), ("chaos", "latency"));
        assert!(Latency::Fixed(MAX_LATENCY).validate().is_ok());
    }
}
