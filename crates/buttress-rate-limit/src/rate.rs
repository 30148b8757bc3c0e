//! Rates: how many permits per how long.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use buttress_core::ConfigError;

use crate::KIND;

/// The longest period a rate may have (one year): longer ones are almost
/// certainly a unit mistake.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// The most permits a rate (or a burst) may have: 2<sup>32</sup>.
pub const MAX_PERMITS: u64 = 1 << 32;

/// A rate: `permits` per `period`, with no ambiguity about the unit.
///
/// `Rate::per_second(100)` admits 100 calls per second (one every 10 ms
/// on average), not one call every 100 seconds. The burst (how many may
/// come at once) is a separate setting of the limiter.
///
/// A rate parses from and prints as `"<permits>/<period>"`, the period a
/// humantime duration (`"100/1s"`, `"5/1m"`, `"1000/1h 30m"`); a bare unit
/// means one of it (`"100/s"`, `"5/min"`).
///
/// ```
/// use buttress_rate_limit::Rate;
/// use std::time::Duration;
///
/// let r = Rate::per_second(100);
/// assert_eq!(r.permits(), 100);
/// assert_eq!(r.period(), Duration::from_secs(1));
/// assert_eq!(r.to_string(), "100/1s");
/// assert_eq!("100/s".parse::<Rate>().unwrap(), r);
/// assert_eq!("5/1m".parse::<Rate>().unwrap(), Rate::per_minute(5));
/// assert_eq!(Rate::new(3, Duration::from_millis(10)).to_string(), "3/10ms");
/// assert!("0/s".parse::<Rate>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    permits: u64,
    period: Duration,
}

impl Rate {
    /// `permits` per `period`. Validated when a limiter is built (at
    /// least one permit, a period above zero and at most a year).
    pub const fn new(permits: u64, period: Duration) -> Self {
        Self { permits, period }
    }

    /// `permits` per second.
    pub const fn per_second(permits: u64) -> Self {
        Self::new(permits, Duration::from_secs(1))
    }

    /// `permits` per minute.
    pub const fn per_minute(permits: u64) -> Self {
        Self::new(permits, Duration::from_secs(60))
    }

    /// `permits` per hour.
    pub const fn per_hour(permits: u64) -> Self {
        Self::new(permits, Duration::from_secs(3600))
    }

    /// Permits per period.
    pub const fn permits(&self) -> u64 {
        self.permits
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The average time between two permits, rounded up to the nanosecond
    /// (so that the limiter never admits faster than the rate).
    ///
    /// ```
    /// use buttress_rate_limit::Rate;
    /// use std::time::Duration;
    ///
    /// assert_eq!(Rate::per_second(100).interval(), Duration::from_millis(10));
    /// assert_eq!(Rate::per_second(3).interval(), Duration::from_nanos(333_333_334));
    /// ```
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos())
    }

    pub(crate) fn period_nanos(&self) -> u64 {
        // Validated: at most a year, which fits.
        u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn interval_nanos(&self) -> u64 {
        self.period_nanos().div_ceil(self.permits.max(1))
    }

    pub(crate) fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        if self.permits == 0 {
            return Err(ConfigError::new(
                KIND,
                field,
                "must admit at least 1 permit per period",
            ));
        }
        if self.permits > MAX_PERMITS {
            return Err(ConfigError::new(
                KIND,
                field,
                format!(
                    "must have at most {MAX_PERMITS} permits per period, got {}",
                    self.permits
                ),
            ));
        }
        if self.period.is_zero() {
            return Err(ConfigError::new(KIND, field, "the period must not be zero"));
        }
        if self.period > MAX_PERIOD {
            return Err(ConfigError::new(
                KIND,
                field,
                format!(
                    "the period must be at most a year, got {}",
                    humantime::format_duration(self.period)
                ),
            ));
        }
        if self.period.as_nanos() < u128::from(self.permits) {
            return Err(ConfigError::new(
                KIND,
                field,
                format!("{self} is more than one permit per nanosecond; use a longer period"),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rate({self})")
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.permits,
            humantime::format_duration(self.period)
        )
    }
}

/// Why a string is not a [`Rate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRateError(String);

impl fmt::Display for ParseRateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseRateError {}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| {
            ParseRateError(format!(
                "invalid rate `{s}`: {why} (expected e.g. \"100/1s\")"
            ))
        };
        let (permits, period) = s.split_once('/').ok_or_else(|| err("no `/`"))?;
        let permits: u64 = permits
            .trim()
            .parse()
            .map_err(|_| err("the permits are not a whole number"))?;
        let period = period.trim();
        // A bare unit ("s", "min") means one of it.
        let starts_with_digit = period.starts_with(|c: char| c.is_ascii_digit());
        let period = if starts_with_digit {
            humantime::parse_duration(period)
        } else {
            humantime::parse_duration(&format!("1{period}"))
        }
        .map_err(|e| err(&e.to_string()))?;
        let rate = Rate::new(permits, period);
        rate.validate("rate").map_err(|e| err(e.reason()))?;
        Ok(rate)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_nonsense() {
        assert_eq!(
            "10/ms".parse::<Rate>().unwrap(),
            Rate::new(10, Duration::from_millis(1))
        );
        assert_eq!(
            " 7 / 2s ".parse::<Rate>().unwrap(),
            Rate::new(7, Duration::from_secs(2))
        );
        assert_eq!("1/h".parse::<Rate>().unwrap(), Rate::per_hour(1));
        for bad in [
            "",
            "10",
            "x/s",
            "-1/s",
            "10/",
            "10/0s",
            "10/parsec",
            "5/400days",
            "2/1ns",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn interval_rounds_up() {
        assert_eq!(Rate::per_second(1).interval_nanos(), 1_000_000_000);
        assert_eq!(Rate::per_second(7).interval_nanos(), 142_857_143);
        assert!(Rate::per_second(7).interval_nanos() * 7 >= 1_000_000_000);
    }

    #[test]
    fn display_round_trips() {
        for r in [
            Rate::per_second(5),
            Rate::per_minute(90),
            Rate::new(3, Duration::from_millis(1500)),
        ] {
            assert_eq!(r.to_string().parse::<Rate>().unwrap(), r);
        }
    }
}
