//! [`HealthConfig`]: check intervals, timeouts and retries as plain data.

use std::collections::BTreeMap;
use std::time::Duration;

use buttress_core::ConfigError;

use crate::check::{Check, Settings, DEFAULT_INTERVAL, DEFAULT_RETRY_DELAY, DEFAULT_TIMEOUT};
use crate::KIND;

/// The settings of one check, or the defaults of every check; each unset
/// field falls back (see [`Check`] for the order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct CheckConfig {
    /// Timeout of one attempt, e.g. `"500ms"`.
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub timeout: Option<Duration>,
    /// How long a result is served from cache, e.g. `"10s"`.
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub interval: Option<Duration>,
    /// Attempts after the first.
    pub retries: Option<u32>,
    /// Pause between attempts, e.g. `"100ms"`.
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub retry_delay: Option<Duration>,
    /// Whether an unhealthy result makes readiness unhealthy.
    pub critical: Option<bool>,
    /// Whether the check gates the startup probe (see
    /// [`Check::startup`]): `true` marks it. When no check of a registry is
    /// marked, its critical checks gate startup.
    pub startup: Option<bool>,
}

/// The configuration of a [`HealthRegistry`](crate::HealthRegistry): the
/// defaults of every check and the settings of checks by name (serde with
/// the `serde` feature; durations as humantime strings).
///
/// A name in `checks` that no check of the registry has is an error of
/// [`HealthRegistryBuilder::build`](crate::HealthRegistryBuilder::build)
/// (a misspelt name would otherwise be ignored silently).
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use buttress_health::{Check, HealthConfig, HealthRegistry, Status};
///
/// let config: HealthConfig = serde_json::from_str(r#"{
///     "defaults": { "timeout": "1s", "interval": "10s" },
///     "checks": { "db": { "timeout": "250ms", "retries": 2 } }
/// }"#).unwrap();
/// let registry = HealthRegistry::builder()
///     .config(config)
///     .check(Check::new("db", || async { Status::Healthy }))
///     .build()
///     .unwrap();
/// assert_eq!(registry.names(), ["db"]);
///
/// let bad: HealthConfig = serde_json::from_str(r#"{ "defaults": { "timeout": "0s" } }"#).unwrap();
/// let err = HealthRegistry::builder().config(bad).build().unwrap_err();
/// assert_eq!(err.field(), "timeout");
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct HealthConfig {
    /// Defaults for every check.
    pub defaults: CheckConfig,
    /// Settings by check name; they win over the code's.
    pub checks: BTreeMap<String, CheckConfig>,
}

impl HealthConfig {
    /// Validates the defaults and every named entry on its own (each
    /// completed with the crate defaults).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let base = Settings {
            timeout: DEFAULT_TIMEOUT,
            interval: DEFAULT_INTERVAL,
            retries: 0,
            retry_delay: DEFAULT_RETRY_DELAY,
            critical: true,
            startup: false,
        };
        let defaults = apply(base, &self.defaults);
        defaults.validate()?;
        for (name, c) in &self.checks {
            if name.is_empty() {
                return Err(ConfigError::new(KIND, "checks", "a check name is empty"));
            }
            apply(defaults, c).validate()?;
        }
        Ok(())
    }

    /// The settings of `check`: the config's entry for its name, then the
    /// check's own settings, then the config's defaults, then the crate's.
    pub(crate) fn resolve(&self, check: &Check) -> Settings {
        let mut s = Settings {
            timeout: self.defaults.timeout.unwrap_or(DEFAULT_TIMEOUT),
            interval: self.defaults.interval.unwrap_or(DEFAULT_INTERVAL),
            retries: self.defaults.retries.unwrap_or(0),
            retry_delay: self.defaults.retry_delay.unwrap_or(DEFAULT_RETRY_DELAY),
            critical: self.defaults.critical.unwrap_or(true),
            startup: self.defaults.startup.unwrap_or(false),
        };
        let own = CheckConfig {
            timeout: check.timeout,
            interval: check.interval,
            retries: check.retries,
            retry_delay: check.retry_delay,
            critical: check.critical,
            startup: check.startup,
        };
        s = apply(s, &own);
        if let Some(c) = self.checks.get(&check.name) {
            s = apply(s, c);
        }
        s
    }
}

fn apply(mut s: Settings, c: &CheckConfig) -> Settings {
    if let Some(t) = c.timeout {
        s.timeout = t;
    }
    if let Some(i) = c.interval {
        s.interval = i;
    }
    if let Some(r) = c.retries {
        s.retries = r;
    }
    if let Some(d) = c.retry_delay {
        s.retry_delay = d;
    }
    if let Some(c) = c.critical {
        s.critical = c;
    }
    if let Some(m) = c.startup {
        s.startup = m;
    }
    s
}
