use std::time::Duration;

use buttress_core::ConfigError;

use crate::backoff::{Backoff, Jitter};
use crate::budget::RetryBudget;
use crate::layer::{RetryBuilder, RetryLayer};

/// The configuration of a retry layer, as plain data (serde with the
/// `serde` feature; durations as humantime strings).
///
/// ```
/// use buttress_retry::{RetryConfig, RetryLayer};
///
/// let config: RetryConfig = serde_json::from_str(r#"{
///     "name": "payments",
///     "max_attempts": 4,
///     "backoff": { "kind": "exponential", "initial": "50ms", "multiplier": 3.0 },
///     "jitter": { "proportional": 0.2 },
///     "max_delay": "2s",
///     "budget": { "percent": 10.0, "min_per_sec": 5, "ttl": "10s" }
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// // Or on top of a preset:
/// let http = config.apply(RetryLayer::for_http()).unwrap().build().unwrap();
/// # let _ = (layer, http);
///
/// let bad: RetryConfig = serde_json::from_str(r#"{ "max_attempts": 0 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "max_attempts");
/// let nan: Result<RetryConfig, _> = serde_json::from_str(r#"{ "jitter": { "proportional": -1.0 } }"#);
/// assert_eq!(nan.unwrap().build().unwrap_err().field(), "jitter");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RetryConfig {
    /// The instance name (default `"retry"`).
    pub name: String,
    /// Attempts in all, the first included (default 3).
    pub max_attempts: u32,
    /// The base delays (default exponential from 100 ms, doubling).
    pub backoff: Backoff,
    /// How delays are spread (default full jitter).
    pub jitter: Jitter,
    /// The longest wait between attempts (default 10 s).
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub max_delay: Duration,
    /// No attempt starts later than this after the first (default none).
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub max_elapsed: Option<Duration>,
    /// A retry budget of this layer's own (default none). To share one
    /// budget between layers, build it once and give it to each builder.
    pub budget: Option<BudgetConfig>,
    /// A seed for reproducible jitter (default: a per-thread generator).
    pub seed: Option<u64>,
    /// Allow more than 10 attempts without a budget or a `max_elapsed`
    /// (default `false`); see [`RetryBuilder::unbounded_retries`].
    pub unbounded_retries: bool,
}

/// A [`RetryBudget`] as plain data.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BudgetConfig {
    /// Retries as a percentage of requests (default 20).
    pub percent: f64,
    /// Retries per second always allowed (default 10).
    pub min_per_sec: u32,
    /// How long deposits count (default 10 s).
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl BudgetConfig {
    /// Validates and builds the budget.
    pub fn build(&self) -> Result<RetryBudget, ConfigError> {
        RetryBudget::builder()
            .percent(self.percent)
            .min_per_sec(self.min_per_sec)
            .ttl(self.ttl)
            .build()
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            name: "retry".to_owned(),
            max_attempts: 3,
            backoff: Backoff::exponential(Duration::from_millis(100)),
            jitter: Jitter::Full,
            max_delay: Duration::from_secs(10),
            max_elapsed: None,
            budget: None,
            seed: None,
            unbounded_retries: false,
        }
    }
}

impl RetryConfig {
    /// Sets every value of this config on `builder` (a preset such as
    /// [`RetryLayer::for_http`], whose policy and request handling stay).
    pub fn apply<P, R>(
        &self,
        builder: RetryBuilder<P, R>,
    ) -> Result<RetryBuilder<P, R>, ConfigError> {
        let mut b = builder
            .name(self.name.clone())
            .max_attempts(self.max_attempts)
            .backoff(self.backoff)
            .jitter(self.jitter)
            .max_delay(self.max_delay);
        if let Some(max) = self.max_elapsed {
            b = b.max_elapsed(max);
        }
        if let Some(budget) = &self.budget {
            b = b.budget(budget.build()?);
        }
        if let Some(seed) = self.seed {
            b = b.seed(seed);
        }
        if self.unbounded_retries {
            b = b.unbounded_retries();
        }
        Ok(b)
    }

    /// Validates and builds a layer that retries every error of `Req:
    /// Clone` requests.
    pub fn build(&self) -> Result<RetryLayer, ConfigError> {
        self.apply(RetryLayer::builder())?.build()
    }
}
