use std::time::Duration;

use buttress_core::ConfigError;

use crate::key::{CacheKey, Credentials};
use crate::layer::{
    CacheBuilder, CacheLayer, HttpCacheBuilder, DEFAULT_MAX_BODY, DEFAULT_TTL, KIND,
};
use crate::service::HttpPolicy;

/// The configuration of a cache, as plain data (serde with the `serde`
/// feature; durations as humantime strings). The HTTP fields apply to
/// [`http_builder`](Self::http_builder) only.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use buttress_cache::CacheConfig;
///
/// let config: CacheConfig = serde_json::from_str(
///     r#"{ "name": "pages", "ttl": "30s", "max_stale": "5m", "max_weight": 67108864,
///          "vary": ["accept-encoding"], "max_body": 262144 }"#,
/// ).unwrap();
/// let layer = config.build_http().unwrap();
/// assert_eq!(layer.handle().name(), "pages");
///
/// let bad: CacheConfig = serde_json::from_str(r#"{ "ttl": "0s" }"#).unwrap();
/// assert_eq!(bad.build_http().unwrap_err().field(), "ttl");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct CacheConfig {
    /// The instance name (default `"cache"`).
    pub name: String,
    /// How long an entry is fresh (default `"1m"`).
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub ttl: Duration,
    /// How long past its ttl an entry may be served stale (default `"0s"`).
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub max_stale: Duration,
    /// Serve stale entries at once while refreshing them (default `false`).
    pub stale_while_revalidate: bool,
    /// At most this many entries (default: 10 000 when no bound is set).
    pub max_entries: Option<u64>,
    /// At most this much weight (bytes for HTTP).
    pub max_weight: Option<u64>,
    /// HTTP: headers whose values are part of the key.
    pub vary: Vec<String>,
    /// HTTP: requests with credentials (`bypass`, `in_key`, `ignore`).
    pub credentials: Credentials,
    /// HTTP: the largest body stored, in bytes (default 1 MiB).
    pub max_body: usize,
    /// HTTP: whether `s-maxage` / `max-age` set the ttl (default `true`).
    pub respect_max_age: bool,
    /// Redis (feature `redis`): the URL of a store shared by replicas;
    /// `null` keeps the entries in memory.
    pub redis_url: Option<String>,
    /// Redis: the timeout of one operation (default `"50ms"`).
    #[cfg_attr(feature = "serde", serde(with = "buttress_core::config::duration"))]
    pub redis_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            name: KIND.to_owned(),
            ttl: DEFAULT_TTL,
            max_stale: Duration::ZERO,
            stale_while_revalidate: false,
            max_entries: None,
            max_weight: None,
            vary: Vec::new(),
            credentials: Credentials::Bypass,
            max_body: DEFAULT_MAX_BODY,
            respect_max_age: true,
            redis_url: None,
            redis_timeout: Duration::from_millis(50),
        }
    }
}

macro_rules! apply_common {
    ($self:ident, $b:expr) => {{
        let mut b = $b
            .name($self.name.as_str())
            .ttl($self.ttl)
            .max_stale($self.max_stale)
            .stale_while_revalidate($self.stale_while_revalidate);
        if let Some(n) = $self.max_entries {
            b = b.max_entries(n);
        }
        if let Some(w) = $self.max_weight {
            b = b.max_weight(w);
        }
        b
    }};
}

impl CacheConfig {
    /// An HTTP builder preset from this config, to add a registry or
    /// listeners. A `redis_url` without the `redis` feature is an error of
    /// [`build_http`](Self::build_http).
    pub fn http_builder(&self) -> HttpCacheBuilder {
        let b = apply_common!(self, CacheLayer::http())
            .vary(&self.vary)
            .credentials(self.credentials)
            .max_body(self.max_body)
            .respect_max_age(self.respect_max_age);
        #[cfg(feature = "redis")]
        if let Some(url) = &self.redis_url {
            return b
                .redis(crate::redis::RedisOptions::url(url.as_str()).timeout(self.redis_timeout));
        }
        b
    }

    /// Validates and builds an HTTP cache layer.
    pub fn build_http(&self) -> Result<CacheLayer<HttpPolicy>, ConfigError> {
        self.check_redis()?;
        self.http_builder().build()
    }

    /// A keyed builder preset from this config (the HTTP fields and
    /// `redis_url` are not used: give Redis with
    /// [`CacheBuilder::redis`]).
    pub fn builder<F, Req, K, V>(&self, key: F) -> CacheBuilder<F, K, V>
    where
        F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
        K: CacheKey,
        V: Clone + Send + Sync + 'static,
    {
        apply_common!(self, CacheLayer::builder(key))
    }

    fn check_redis(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_some() && !cfg!(feature = "redis") {
            return Err(ConfigError::new(
                KIND,
                "redis_url",
                "needs the `redis` feature of buttress-cache (`cache-redis` of buttress)",
            ));
        }
        Ok(())
    }
}
