use std::time::Duration;

use buttress_core::ConfigError;

use crate::layer::{TimeoutBuilder, TimeoutLayer};

/// The configuration of a timeout layer, as plain data (serde with the
/// `serde` feature; durations as humantime strings).
///
/// ```
/// use buttress_timeout::TimeoutConfig;
///
/// let config: TimeoutConfig =
///     serde_json::from_str(r#"{ "name": "upstream", "timeout": "250ms" }"#).unwrap();
/// let layer = config.build().unwrap();
/// assert_eq!(layer.handle().snapshot().timeout, std::time::Duration::from_millis(250));
///
/// let bad: TimeoutConfig = serde_json::from_str(r#"{ "timeout": "0s" }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "timeout");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct TimeoutConfig {
    /// The instance name (default `"timeout"`).
    pub name: String,
    /// The time limit of each call (default 30 s).
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub timeout: Duration,
    /// Count the wait for readiness against the limit (default `false`).
    pub include_ready: bool,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            name: "timeout".to_owned(),
            timeout: Duration::from_secs(30),
            include_ready: false,
        }
    }
}

impl TimeoutConfig {
    /// A builder preset from this config, to add a registry or listeners.
    pub fn builder(&self) -> TimeoutBuilder {
        TimeoutLayer::builder(self.timeout)
            .name(self.name.clone())
            .include_ready(self.include_ready)
    }

    /// Validates and builds the layer.
    pub fn build(&self) -> Result<TimeoutLayer, ConfigError> {
        self.builder().build()
    }
}
