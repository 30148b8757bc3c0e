use std::time::Duration;

use buttress_core::ConfigError;

use crate::state::{OpenWait, Settings};

pub(crate) const KIND: &str = "circuit_breaker";

/// The cap of a growing open wait when none is configured.
const MAX_OPEN_WAIT: Duration = Duration::from_secs(24 * 3600);
/// The largest count window: a byte per call, so at most 1 MB.
const MAX_WINDOW_SIZE: u32 = 1_000_000;
/// The longest time window: a bucket of 24 bytes per second, about 2 MB.
const MAX_TIME_WINDOW_SECS: u64 = 24 * 3600;

/// The configuration of a circuit breaker, as plain data (serde with the
/// `serde` feature; durations as humantime strings).
///
/// Defaults, beside Resilience4j's:
///
/// | field | buttress | Resilience4j |
/// |---|---|---|
/// | `failure_rate_threshold` | 50 % | 50 % |
/// | `slow_call_rate_threshold` | 100 % | 100 % |
/// | `slow_call_duration` | none (no clock read per call) | 60 s |
/// | `window_size` (last N calls) | 100 | 100 |
/// | `time_window` (last N seconds, instead) | none | (a window type) |
/// | `minimum_calls` (clamped to the window) | 100 | 100 |
/// | `permitted_calls_in_half_open` | 10 | 10 |
/// | `wait_in_open` | 60 s | 60 s |
/// | `open_wait_multiplier`, `max_wait_in_open`, `open_wait_jitter` | 1, one day, 0 (fixed) | fixed |
/// | `automatic_half_open` | false (on the next call) | false |
/// | `max_wait_in_half_open` | none | none |
/// | `consecutive_failures` | none (rate mode) | (not offered) |
///
/// Rules: a call is slow when it takes strictly longer than
/// `slow_call_duration`; slow failures count in both rates. Below
/// `minimum_calls` no rate is computed and nothing trips; at or above it the
/// breaker opens when a rate reaches (`>=`) its threshold. In
/// `consecutive_failures` mode the window is not used: N failures in a row
/// open the breaker, any success resets the count.
///
/// ```
/// use buttress_circuit_breaker::CircuitBreakerConfig;
///
/// let config: CircuitBreakerConfig = serde_json::from_str(
///     r#"{ "name": "payments", "window_size": 20, "minimum_calls": 10, "wait_in_open": "30s" }"#,
/// ).unwrap();
/// let layer = config.build().unwrap();
/// assert_eq!(layer.handle().state(), buttress_circuit_breaker::State::Closed);
///
/// let bad: CircuitBreakerConfig = serde_json::from_str(r#"{ "failure_rate_threshold": 0 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "failure_rate_threshold");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct CircuitBreakerConfig {
    /// The instance name (default `"circuit_breaker"`).
    pub name: String,
    /// Failure rate, in percent, at which the breaker opens (0, 100].
    pub failure_rate_threshold: f64,
    /// Slow-call rate, in percent, at which the breaker opens (0, 100].
    pub slow_call_rate_threshold: f64,
    /// A call taking longer than this is slow; `None` turns slow-call
    /// detection (and its two clock reads per call) off.
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub slow_call_duration: Option<Duration>,
    /// The count window: the outcomes of the last `window_size` calls, at
    /// most 1,000,000 (one byte each).
    pub window_size: u32,
    /// A time window instead: the outcomes of the last N whole seconds
    /// (per-second buckets), at most one day. `minimum_calls` is then not
    /// clamped: size it to the traffic one window sees.
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub time_window: Option<Duration>,
    /// Calls needed in the window before a rate is computed.
    pub minimum_calls: u32,
    /// Open after this many failures in a row instead of by rate.
    pub consecutive_failures: Option<u32>,
    /// Probe calls let through in the half-open state.
    pub permitted_calls_in_half_open: u32,
    /// How long the breaker stays open (the first time).
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub wait_in_open: Duration,
    /// Growth of the open wait for each consecutive opening (1: fixed).
    pub open_wait_multiplier: f64,
    /// The cap of the growing open wait (`None`: one day).
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub max_wait_in_open: Option<Duration>,
    /// Fraction of the open wait drawn at random, in `[0, 1]`, so that
    /// replicas do not probe in lockstep (kept below the cap too).
    pub open_wait_jitter: f64,
    /// Move to half-open by timer when the wait is over, rather than on the
    /// next call.
    pub automatic_half_open: bool,
    /// A half-open breaker that gets no verdict for this long opens again;
    /// `None` waits for the verdict however long it takes (probes that are
    /// dropped or cancelled free their slot, so it cannot get stuck). Zero
    /// is rejected: it would reopen the breaker before any probe.
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub max_wait_in_half_open: Option<Duration>,
    /// Report `Pending` from `poll_ready` while open instead of failing
    /// calls (backpressure for callers that wait on readiness).
    pub backpressure: bool,
    /// Seed of the jitter's random numbers (reproducible tests).
    pub seed: u64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            name: KIND.to_owned(),
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: None,
            window_size: 100,
            time_window: None,
            minimum_calls: 100,
            consecutive_failures: None,
            permitted_calls_in_half_open: 10,
            wait_in_open: Duration::from_secs(60),
            open_wait_multiplier: 1.0,
            max_wait_in_open: None,
            open_wait_jitter: 0.0,
            automatic_half_open: false,
            max_wait_in_half_open: None,
            backpressure: false,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

fn err(field: &'static str, reason: &str) -> ConfigError {
    ConfigError::new(KIND, field, reason)
}

fn percent(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 100.0 {
        Ok(())
    } else {
        Err(err(field, "must be a percentage in (0, 100]"))
    }
}

impl CircuitBreakerConfig {
    pub(crate) fn validate(&self) -> Result<Settings, ConfigError> {
        if self.name.is_empty() {
            return Err(err("name", "must not be empty"));
        }
        percent("failure_rate_threshold", self.failure_rate_threshold)?;
        percent("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if !(1..=MAX_WINDOW_SIZE).contains(&self.window_size) {
            return Err(err(
                "window_size",
                "must be from 1 to 1000000 (the window takes one byte per call)",
            ));
        }
        let time_window_secs = match self.time_window {
            None => None,
            Some(w)
                if w.subsec_nanos() == 0 && (1..=MAX_TIME_WINDOW_SECS).contains(&w.as_secs()) =>
            {
                Some(w.as_secs() as u32)
            }
            Some(_) => {
                return Err(err(
                    "time_window",
                    "must be a whole number of seconds, from 1 to 86400 (one bucket per second)",
                ))
            }
        };
        if self.minimum_calls == 0 {
            return Err(err("minimum_calls", "must be at least 1"));
        }
        if self.consecutive_failures == Some(0) {
            return Err(err("consecutive_failures", "must be at least 1"));
        }
        if self.permitted_calls_in_half_open == 0 {
            return Err(err("permitted_calls_in_half_open", "must be at least 1"));
        }
        if self.wait_in_open.is_zero() {
            return Err(err("wait_in_open", "must be greater than zero"));
        }
        if !(self.open_wait_multiplier.is_finite() && self.open_wait_multiplier >= 1.0) {
            return Err(err("open_wait_multiplier", "must be a number >= 1"));
        }
        if matches!(self.max_wait_in_open, Some(max) if max < self.wait_in_open) {
            return Err(err("max_wait_in_open", "must not be below wait_in_open"));
        }
        if !(self.open_wait_jitter.is_finite() && (0.0..=1.0).contains(&self.open_wait_jitter)) {
            return Err(err("open_wait_jitter", "must be a fraction in [0, 1]"));
        }
        if self.max_wait_in_half_open == Some(Duration::ZERO) {
            return Err(err(
                "max_wait_in_half_open",
                "must be greater than zero (leave it unset for no limit)",
            ));
        }
        if self.slow_call_duration == Some(Duration::ZERO) {
            return Err(err("slow_call_duration", "must be greater than zero"));
        }
        Ok(Settings {
            failure_rate_threshold: self.failure_rate_threshold,
            slow_call_rate_threshold: self.slow_call_rate_threshold,
            slow_call_duration: self.slow_call_duration,
            window_size: self.window_size,
            time_window_secs,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            half_open_calls: self.permitted_calls_in_half_open,
            open_wait: OpenWait {
                base: self.wait_in_open,
                multiplier: self.open_wait_multiplier,
                max: self
                    .max_wait_in_open
                    .unwrap_or(MAX_OPEN_WAIT)
                    .max(self.wait_in_open),
                jitter: self.open_wait_jitter,
            },
            automatic_half_open: self.automatic_half_open,
            max_wait_in_half_open: self.max_wait_in_half_open,
            seed: self.seed,
            config: self.clone(),
        })
    }

    /// A builder preset from this config, to add a classifier, a registry
    /// or listeners.
    pub fn builder(&self) -> crate::CircuitBreakerBuilder {
        crate::CircuitBreakerBuilder::from_config(self.clone())
    }

    /// Validates and builds the layer (errors count as failures).
    pub fn build(&self) -> Result<crate::CircuitBreakerLayer, ConfigError> {
        self.builder().build()
    }
}
