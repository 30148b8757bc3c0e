//! The saga's options as plain data (feature `serde`): from a file, with
//! durations as humantime strings.

use std::time::Duration;

use buttress_core::ConfigError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::saga::{OnCompensationFailure, OnCrash, RetryPolicy, SagaBuilder};

/// A [`RetryPolicy`] as plain data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait after the first try.
    #[serde(with = "buttress_core::config::duration")]
    pub initial: Duration,
    /// The factor between waits (at least 1).
    pub multiplier: f64,
    /// The longest wait.
    #[serde(with = "buttress_core::config::duration")]
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    /// The saga's default: 3 tries, 100 ms then 1.5x, at most 30 s.
    fn default() -> Self {
        Self {
            attempts: 3,
            initial: Duration::from_millis(100),
            multiplier: 1.5,
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    /// The policy.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::backoff(self.attempts, self.initial, self.multiplier).max_delay(self.max_delay)
    }
}

/// The options of a saga, as a file gives them; [`SagaBuilder::config`]
/// applies them (the steps and the log stay in code).
///
/// ```
/// use buttress_saga::SagaConfig;
/// use std::time::Duration;
///
/// let config: SagaConfig = serde_json::from_str(r#"{
///     "deadline": "5m",
///     "retry": { "attempts": 3, "initial": "200ms", "multiplier": 1.5 },
///     "on_compensation_failure": "stop",
///     "on_crash": "resume"
/// }"#).unwrap();
/// assert_eq!(config.deadline, Some(Duration::from_secs(300)));
/// assert_eq!(config.retry.attempts, 3);
/// assert_eq!(config.compensation_retry, SagaConfig::default().compensation_retry);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaConfig {
    /// Every step's retry, unless the step has its own.
    pub retry: RetryConfig,
    /// The compensations' retry (default 5 tries, 100 ms then 2x).
    pub compensation_retry: RetryConfig,
    /// What a compensation that fails past its retries does to the rest.
    pub on_compensation_failure: OnCompensationFailure,
    /// Whether the compensations run at once rather than in reverse order.
    pub parallel_compensation: bool,
    /// What recovery does with a saga a crash interrupted before its pivot.
    pub on_crash: OnCrash,
    /// The whole saga's deadline.
    #[serde(with = "buttress_core::config::option_duration")]
    pub deadline: Option<Duration>,
    /// How long a process owns a saga it runs without renewing its lease.
    #[serde(with = "buttress_core::config::duration")]
    pub lease: Duration,
}

impl Default for SagaConfig {
    /// The builder's defaults.
    fn default() -> Self {
        Self {
            retry: RetryConfig::default(),
            compensation_retry: RetryConfig {
                attempts: 5,
                multiplier: 2.0,
                ..RetryConfig::default()
            },
            on_compensation_failure: OnCompensationFailure::default(),
            parallel_compensation: false,
            on_crash: OnCrash::default(),
            deadline: None,
            lease: Duration::from_secs(60),
        }
    }
}

impl<C> SagaBuilder<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Applies `config`'s options; `build` validates them, with errors
    /// naming the field (`retry`, `compensation_retry`, `lease`,
    /// `deadline`).
    pub fn config(self, config: &SagaConfig) -> Self {
        let mut b = self
            .retry(config.retry.policy())
            .compensation_retry(config.compensation_retry.policy())
            .on_compensation_failure(config.on_compensation_failure)
            .parallel_compensation(config.parallel_compensation)
            .on_crash(config.on_crash)
            .lease(config.lease);
        if let Some(deadline) = config.deadline {
            b = b.deadline(deadline);
        }
        b
    }
}

/// Validates a config alone, as `build` would (without steps or a log).
impl SagaConfig {
    /// The first invalid setting, named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.retry.policy().check("retry")?;
        self.compensation_retry
            .policy()
            .check("compensation_retry")?;
        if self.lease.is_zero() {
            return Err(ConfigError::new(
                "saga",
                "lease",
                "must be longer than zero",
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "saga",
                "deadline",
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}
