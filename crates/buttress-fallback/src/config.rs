use buttress_core::ConfigError;
use http::HeaderName;

use crate::layer::{FallbackBuilder, FallbackLayer, KIND};
use crate::marker::HttpMarker;
use crate::source::Unavailable;
use crate::trigger::{Kinds, Rules};

/// The triggers and the marker of an HTTP fallback, as plain data (serde
/// with the `serde` feature). The source is code (a value, a function, a
/// service), so the config makes a builder for one:
/// [`http_unavailable`](Self::http_unavailable) for the ready-made 503,
/// [`builder`](Self::builder) for any other.
///
/// - `kinds`: which errors trigger the fallback: absent or `null` for
///   every error, a list of rejection kinds (`circuit_open`, `timeout`
///   (or `elapsed`), `bulkhead_full`, `rate_limited`, `retry_exhausted`,
///   `key_missing`) for only those, `[]` for none.
/// - `statuses`: the response statuses that trigger it too (`[502, 503]`).
/// - `header`: the marker header, if any (`"x-fallback"`); the
///   `FallbackUsed` extension is always set.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use buttress_fallback::FallbackConfig;
///
/// let config: FallbackConfig = serde_json::from_str(r#"{
///     "name": "catalog",
///     "kinds": ["circuit_open", "timeout"],
///     "statuses": [502, 503],
///     "header": "x-fallback"
/// }"#).unwrap();
/// let layer = config.http_unavailable::<String>().unwrap().build().unwrap();
/// assert_eq!(layer.name(), "catalog");
///
/// let bad: FallbackConfig = serde_json::from_str(r#"{ "kinds": ["teapot"] }"#).unwrap();
/// assert_eq!(bad.rules().unwrap_err().field(), "kinds");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct FallbackConfig {
    /// The instance name (default `"fallback"`).
    pub name: String,
    /// The rejection kinds that trigger the fallback; `None` (the default):
    /// every error.
    pub kinds: Option<Vec<String>>,
    /// Response statuses that trigger the fallback (default none).
    pub statuses: Vec<u16>,
    /// The marker header (default none).
    pub header: Option<String>,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            name: KIND.to_owned(),
            kinds: None,
            statuses: Vec::new(),
            header: None,
        }
    }
}

impl FallbackConfig {
    /// The rejection kinds, validated; `None` for every error.
    pub fn error_kinds(&self) -> Result<Option<Kinds>, ConfigError> {
        let Some(labels) = &self.kinds else {
            return Ok(None);
        };
        let mut kinds = Kinds::none();
        for label in labels {
            let one = Kinds::parse(label).ok_or_else(|| {
                ConfigError::new(
                    KIND,
                    "kinds",
                    format!(
                        "`{label}` is not a rejection kind (circuit_open, timeout, \
                         bulkhead_full, rate_limited, retry_exhausted, key_missing)"
                    ),
                )
            })?;
            kinds = kinds.union(one);
        }
        Ok(Some(kinds))
    }

    /// The trigger, validated.
    pub fn rules(&self) -> Result<Rules, ConfigError> {
        let rules = match self.error_kinds()? {
            None => Rules::new(),
            Some(kinds) => Rules::new().kinds(kinds),
        };
        rules.statuses(self.statuses.iter().copied())
    }

    /// The marker, validated.
    pub fn marker(&self) -> Result<HttpMarker, ConfigError> {
        match &self.header {
            None => Ok(HttpMarker::new()),
            Some(name) => HeaderName::try_from(name.as_str())
                .map(|h| HttpMarker::new().with_header(h))
                .map_err(|_| {
                    ConfigError::new(KIND, "header", format!("`{name}` is not a header name"))
                }),
        }
    }

    /// A builder for `source`, with this config's name, trigger and
    /// marker, to add listeners or a registry.
    pub fn builder<Src>(
        &self,
        source: Src,
    ) -> Result<FallbackBuilder<Src, Rules, HttpMarker>, ConfigError> {
        Ok(FallbackLayer::builder(source)
            .name(self.name.clone())
            .on(self.rules()?)
            .mark(self.marker()?))
    }

    /// The ready-made 503 ([`FallbackLayer::http_unavailable`]) with this
    /// config's name, trigger and marker.
    pub fn http_unavailable<B>(
        &self,
    ) -> Result<FallbackBuilder<Unavailable<B>, Rules, HttpMarker>, ConfigError> {
        self.builder(Unavailable::new())
    }
}
