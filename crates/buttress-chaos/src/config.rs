use std::time::Duration;

use buttress_core::ConfigError;
use http::Method;

use crate::latency::Latency;
use crate::layer::{ChaosBuilder, ChaosLayer, HttpChaosLayer, KIND};
use crate::select::Routes;

/// The configuration of a chaos layer, as plain data (serde with the
/// `serde` feature; durations as humantime strings, rates as numbers in
/// [0, 1]).
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use buttress_chaos::{ChaosConfig, Latency};
/// use std::time::Duration;
///
/// let config: ChaosConfig = serde_json::from_str(r#"{
///     "name": "upstream",
///     "enabled": true,
///     "seed": 7,
///     "error_rate": 0.1,
///     "latency_rate": 0.2,
///     "latency": { "uniform": { "min": "10ms", "max": "250ms" } },
///     "routes": [{ "method": "GET", "path": "/search/*" }],
///     "truncate_body_rate": 0.01
/// }"#).unwrap();
/// let layer = config.build_http().unwrap();
/// let s = layer.handle().snapshot();
/// assert_eq!((s.enabled, s.seed, s.error_rate), (true, 7, 0.1));
/// assert_eq!(s.latency, Latency::Uniform {
///     min: Duration::from_millis(10),
///     max: Duration::from_millis(250),
/// });
///
/// let bad: ChaosConfig = serde_json::from_str(r#"{ "error_rate": 1.5 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "error_rate");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ChaosConfig {
    /// The instance name (default `"chaos"`).
    pub name: String,
    /// Switched on from the start (default `false`).
    pub enabled: bool,
    /// The seed of the draws (default: derived from the name).
    pub seed: Option<u64>,
    /// Share of calls failed (default 0).
    pub error_rate: f64,
    /// Share of calls delayed (default 0).
    pub latency_rate: f64,
    /// The delay's distribution (default `{ "fixed": "0s" }`).
    pub latency: Latency,
    /// Share of calls that hang until dropped (default 0).
    pub hang_rate: f64,
    /// HTTP only: share of response bodies aborted (default 0).
    pub abort_body_rate: f64,
    /// HTTP only: share of response bodies truncated (default 0).
    pub truncate_body_rate: f64,
    /// Body bytes let through before a body fault (default 0).
    pub body_fault_after: u64,
    /// HTTP only: the routes faulted (default none: every request).
    pub routes: Vec<RouteConfig>,
}

/// One route of [`ChaosConfig::routes`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RouteConfig {
    /// The method (`"GET"`, ...); none for every method.
    pub method: Option<String>,
    /// The path, exact, or a prefix ending in `/*`.
    pub path: String,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            name: KIND.to_owned(),
            enabled: false,
            seed: None,
            error_rate: 0.0,
            latency_rate: 0.0,
            latency: Latency::Fixed(Duration::ZERO),
            hang_rate: 0.0,
            abort_body_rate: 0.0,
            truncate_body_rate: 0.0,
            body_fault_after: 0,
            routes: Vec::new(),
        }
    }
}

impl ChaosConfig {
    /// A builder preset from this config (routes aside), to add a
    /// registry, listeners or another selector.
    pub fn builder(&self) -> ChaosBuilder {
        let b = ChaosLayer::builder()
            .name(self.name.as_str())
            .enabled(self.enabled)
            .error_rate(self.error_rate)
            .latency(self.latency_rate, self.latency)
            .hang_rate(self.hang_rate)
            .abort_body_rate(self.abort_body_rate)
            .truncate_body_rate(self.truncate_body_rate)
            .body_fault_after(self.body_fault_after);
        match self.seed {
            Some(seed) => b.seed(seed),
            None => b,
        }
    }

    /// The [`Routes`] of [`routes`](Self::routes), validated.
    pub fn routes(&self) -> Result<Routes, ConfigError> {
        self.routes
            .iter()
            .try_fold(Routes::new(), |routes, r| match &r.method {
                None => routes.any_method(&r.path),
                Some(m) => {
                    let method = Method::from_bytes(m.as_bytes()).map_err(|_| {
                        ConfigError::new(KIND, "routes", format!("`{m}` is not an HTTP method"))
                    })?;
                    routes.route(method, &r.path)
                }
            })
    }

    /// Validates and builds a layer for any request type. Routes and body
    /// faults need [`build_http`](Self::build_http): either is an error
    /// here.
    pub fn build(&self) -> Result<ChaosLayer, ConfigError> {
        if !self.routes.is_empty() {
            return Err(ConfigError::new(
                KIND,
                "routes",
                "route selection needs an HTTP layer: build it with `build_http()`",
            ));
        }
        self.builder().build()
    }

    /// Validates and builds a layer for HTTP services, selecting the
    /// configured routes.
    pub fn build_http(&self) -> Result<HttpChaosLayer<Routes>, ConfigError> {
        let routes = self.routes()?;
        self.builder().select(routes).build_http()
    }
}
