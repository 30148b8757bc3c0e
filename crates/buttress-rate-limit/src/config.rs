use std::time::Duration;

use buttress_core::ConfigError;

use crate::algorithm::{Algorithm, Params};
use crate::layer::{Common, RateLimitBuilder, RateLimitLayer};
use crate::limiter::{Policy, TimeSource};
use crate::params::ParamCell;
use crate::rate::Rate;

/// The configuration of a (global) rate limiter, as plain data (serde with
/// the `serde` feature: the rate as `"100/1s"`, durations as humantime
/// strings, unknown fields refused). A keyed limiter takes the same
/// numbers through [`RateLimitConfig::apply_keyed`].
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use buttress_rate_limit::{Algorithm, RateLimitConfig};
///
/// let config: RateLimitConfig = serde_json::from_str(
///     r#"{ "name": "api", "rate": "100/1s", "burst": 20, "max_wait": "50ms", "max_queue": 64 }"#,
/// ).unwrap();
/// assert_eq!(config.algorithm, Algorithm::Gcra);
/// let layer = config.build().unwrap();
/// assert_eq!(layer.handle().snapshot().available, 20);
///
/// let bad: RateLimitConfig = serde_json::from_str(r#"{ "rate": "10/s", "burst": 0 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "burst");
/// assert!(serde_json::from_str::<RateLimitConfig>(r#"{ "rate": "10 per second" }"#).is_err());
/// assert!(serde_json::from_str::<RateLimitConfig>(r#"{ "rate": "10/s", "brust": 5 }"#).is_err());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RateLimitConfig {
    /// The instance name (default `"rate_limit"`).
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// The algorithm (default `gcra`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub algorithm: Algorithm,
    /// The rate (required), e.g. `"100/1s"`.
    pub rate: Rate,
    /// The burst (default: the rate's permits).
    #[cfg_attr(feature = "serde", serde(default))]
    pub burst: Option<u64>,
    /// How long a call may wait for its permits (default: never).
    #[cfg_attr(
        feature = "serde",
        serde(default, with = "buttress_core::config::option_duration")
    )]
    pub max_wait: Option<Duration>,
    /// Callers allowed to wait (default 0).
    #[cfg_attr(feature = "serde", serde(default))]
    pub max_queue: usize,
    /// The clock's resolution (default: exact).
    #[cfg_attr(
        feature = "serde",
        serde(default, with = "buttress_core::config::option_duration")
    )]
    pub resolution: Option<Duration>,
}

#[cfg(feature = "serde")]
fn default_name() -> String {
    crate::KIND.to_owned()
}

impl RateLimitConfig {
    /// A config of `rate` with every other setting at its default.
    ///
    /// ```
    /// use buttress_rate_limit::{Rate, RateLimitConfig};
    ///
    /// let layer = RateLimitConfig::new(Rate::per_second(5)).build().unwrap();
    /// assert_eq!(layer.handle().name(), "rate_limit");
    /// ```
    pub fn new(rate: Rate) -> Self {
        Self {
            name: crate::KIND.to_owned(),
            algorithm: Algorithm::Gcra,
            rate,
            burst: None,
            max_wait: None,
            max_queue: 0,
            resolution: None,
        }
    }

    /// A builder preset from this config, to add a registry, listeners, a
    /// cost or a priority extractor.
    pub fn builder(&self) -> RateLimitBuilder {
        let mut b = RateLimitLayer::builder(self.rate);
        self.apply(b.common_mut());
        b
    }

    fn apply(&self, c: &mut Common) {
        c.name = self.name.as_str().into();
        c.algorithm = self.algorithm;
        c.max_queue = self.max_queue;
        c.burst = self.burst;
        c.max_wait = self.max_wait.unwrap_or_default();
        c.resolution = self.resolution;
    }

    /// The same numbers on a keyed builder (made with the same rate).
    ///
    /// ```
    /// use buttress_rate_limit::{KeyedRateLimitLayer, Rate, RateLimitConfig};
    /// use buttress_core::key::PeerAddr;
    ///
    /// let config = RateLimitConfig { burst: Some(5), ..RateLimitConfig::new(Rate::per_second(1)) };
    /// let layer = config
    ///     .apply_keyed(KeyedRateLimitLayer::builder(PeerAddr, config.rate))
    ///     .build::<std::net::IpAddr>()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn apply_keyed<X>(
        &self,
        mut b: crate::KeyedRateLimitBuilder<X>,
    ) -> crate::KeyedRateLimitBuilder<X> {
        self.apply(b.common_mut());
        b
    }

    /// Validates and builds the layer.
    pub fn build(&self) -> Result<RateLimitLayer, ConfigError> {
        self.builder().build()
    }
}

impl RateLimitConfig {
    /// The checks of [`build`](Self::build), in its order; the numbers.
    fn validate(&self) -> Result<Params, ConfigError> {
        let mut c = Common::new(self.rate);
        self.apply(&mut c);
        c.validate().map(|(params, _)| params)
    }
}

/// The settings of a running limiter (the global one or a keyed one's per
/// key numbers) as a config. `burst` is `None` when it is the rate's
/// permits (the default), `max_wait` and `resolution` when they are zero.
pub(crate) fn current(params: &ParamCell, policy: &Policy, time: &TimeSource) -> RateLimitConfig {
    let p = params.load_full();
    RateLimitConfig {
        name: policy.name.to_string(),
        algorithm: params.algorithm(),
        rate: p.rate,
        burst: (p.burst != p.rate.permits()).then_some(p.burst),
        max_wait: Some(policy.max_wait).filter(|w| !w.is_zero()),
        max_queue: policy.max_queue,
        resolution: time.resolution(),
    }
}

/// Applies `config` to a running limiter: validated as `build` validates
/// it; refused, with nothing changed, when a setting that is fixed at
/// build time differs; otherwise the rate and the burst are swapped as one
/// value for the next decision.
pub(crate) fn reconfigure(
    config: &RateLimitConfig,
    params: &ParamCell,
    policy: &Policy,
    time: &TimeSource,
) -> Result<(), ConfigError> {
    let new = check(config, params, policy, time)?;
    params.store(new);
    Ok(())
}

/// What [`reconfigure`] would answer, without applying anything: the new
/// numbers, or why not.
pub(crate) fn check(
    config: &RateLimitConfig,
    params: &ParamCell,
    policy: &Policy,
    time: &TimeSource,
) -> Result<Params, ConfigError> {
    let new = config.validate()?;
    let zero_is_none = |d: Option<Duration>| d.filter(|d| !d.is_zero());
    let fixed: [(&'static str, bool); 5] = [
        ("name", *config.name == *policy.name),
        ("algorithm", config.algorithm == params.algorithm()),
        (
            "max_wait",
            config.max_wait.unwrap_or_default() == policy.max_wait,
        ),
        ("max_queue", config.max_queue == policy.max_queue),
        (
            "resolution",
            zero_is_none(config.resolution) == time.resolution(),
        ),
    ];
    if let Some((field, _)) = fixed.into_iter().find(|(_, same)| !same) {
        return Err(ConfigError::new(
            crate::KIND,
            field,
            "cannot change on a live instance: build a new layer instead",
        ));
    }
    Ok(new)
}
