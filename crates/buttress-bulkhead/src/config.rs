use std::time::Duration;

use buttress_core::ConfigError;

use crate::layer::{BulkheadBuilder, BulkheadLayer};

/// The configuration of a bulkhead, as plain data (serde with the `serde`
/// feature; durations as humantime strings).
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use buttress_bulkhead::BulkheadConfig;
///
/// let config: BulkheadConfig = serde_json::from_str(
///     r#"{ "name": "db", "max_concurrent": 10, "max_queue": 50, "max_wait": "25ms" }"#,
/// ).unwrap();
/// let layer = config.build().unwrap();
/// assert_eq!(layer.handle().snapshot().max_concurrent, 10);
///
/// let bad: BulkheadConfig = serde_json::from_str(r#"{ "max_concurrent": 0 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "max_concurrent");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BulkheadConfig {
    /// The instance name (default `"bulkhead"`).
    pub name: String,
    /// Calls allowed at once (default 25).
    pub max_concurrent: usize,
    /// Callers allowed to wait (default 0).
    pub max_queue: usize,
    /// Queue timeout (default none).
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub max_wait: Option<Duration>,
    /// The retry hint of a rejection (default `"1s"`; `null` for none),
    /// sent as `Retry-After` / gRPC pushback.
    #[cfg_attr(
        feature = "serde",
        serde(with = "buttress_core::config::option_duration")
    )]
    pub retry_after: Option<Duration>,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            name: crate::layer::KIND.to_owned(),
            max_concurrent: 25,
            max_queue: 0,
            max_wait: None,
            retry_after: Some(crate::layer::DEFAULT_RETRY_AFTER),
        }
    }
}

impl BulkheadConfig {
    /// A builder preset from this config, to add a registry or listeners.
    pub fn builder(&self) -> BulkheadBuilder {
        let b = BulkheadLayer::builder()
            .name(self.name.as_str())
            .max_concurrent(self.max_concurrent)
            .max_queue(self.max_queue)
            .retry_after(self.retry_after);
        match self.max_wait {
            Some(w) => b.max_wait(w),
            None => b,
        }
    }

    /// Validates and builds the layer.
    pub fn build(&self) -> Result<BulkheadLayer, ConfigError> {
        self.builder().build()
    }
}
