//! The server preset: drop-in protection for an HTTP server.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use buttress_bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer};
use buttress_core::key::{ClientIp, MissingKey};
use buttress_core::response::{ErrorToResponse, ErrorToResponseLayer};
use buttress_core::{ConfigError, Registry};
use buttress_rate_limit::{KeyedRateLimitLayer, Rate};
use buttress_timeout::{Timeout, TimeoutConfig, TimeoutLayer};
use tower_layer::Layer;

use super::layer::{in_slot, slot_field, Maybe, SlotError};

/// The server preset ([`Policy::server`](super::Policy::server)):
/// outermost first, rejections answered as HTTP responses (429 with
/// `Retry-After`, 503, 504), a rate limit per client IP, a bulkhead with a
/// short queue that sheds the excess load at once, and a timeout.
///
/// | slot | preset |
/// |---|---|
/// | [`per_client`](ServerPolicy::per_client) | 100 requests a second per client IP, bursts of 200, the peer address (no proxy trusted), at most 100 000 clients tracked |
/// | [`bulkhead`](ServerPolicy::bulkhead) | 256 requests in flight, 512 queued for at most 100 ms; beyond that 503 at once |
/// | [`timeout`](ServerPolicy::timeout) | 30 s per request, then 504 |
///
/// The client IP is the peer address: serve with axum's
/// `into_make_service_with_connect_info::<SocketAddr>()` and the `axum`
/// feature, or set [`PerClient::trusted_proxies`] behind a proxy (the
/// right-most untrusted `X-Forwarded-For` hop). A request whose address is
/// unknown shares one bucket with the others like it (and a warning is
/// logged once), rather than being refused.
///
/// ```
/// use buttress::policy::Policy;
///
/// let protection = Policy::server().build().unwrap();
/// let app: axum::Router = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello" }))
///     .layer(protection);
/// # let _ = app;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct ServerPolicy {
    /// The rate limit per client.
    pub per_client: Option<PerClient>,
    /// The bulkhead (concurrency limit, queue, load shedding).
    pub bulkhead: Option<BulkheadConfig>,
    /// The timeout of each request.
    pub timeout: Option<TimeoutConfig>,
}

/// A rate limit per client IP.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct PerClient {
    /// Requests per period for each client (`"100/1s"` in a file).
    pub rate: Rate,
    /// The burst each client may send at once (default: the rate's
    /// permits).
    #[cfg_attr(feature = "serde", serde(default))]
    pub burst: Option<u64>,
    /// Proxies in front of the server whose `X-Forwarded-For` entries are
    /// trusted (0: the peer address).
    #[cfg_attr(feature = "serde", serde(default))]
    pub trusted_proxies: usize,
    /// Clients tracked at most; a new client beyond that is refused until
    /// an idle one can go.
    #[cfg_attr(feature = "serde", serde(default = "default_max_keys"))]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    100_000
}

impl PerClient {
    /// `rate` per client, the other settings at their defaults.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            burst: None,
            trusted_proxies: 0,
            max_keys: default_max_keys(),
        }
    }

    /// The burst.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Proxies trusted in front of the server.
    pub fn trusted_proxies(mut self, n: usize) -> Self {
        self.trusted_proxies = n;
        self
    }

    /// Clients tracked at most.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }
}

impl Default for ServerPolicy {
    fn default() -> Self {
        Self {
            per_client: Some(PerClient::new(Rate::per_second(100)).burst(200)),
            bulkhead: Some(BulkheadConfig {
                max_concurrent: 256,
                max_queue: 512,
                max_wait: Some(Duration::from_millis(100)),
                ..BulkheadConfig::default()
            }),
            timeout: Some(TimeoutConfig {
                timeout: Duration::from_secs(30),
                ..TimeoutConfig::default()
            }),
        }
    }
}

impl ServerPolicy {
    /// Sets (or removes) the rate limit per client.
    pub fn per_client(mut self, per_client: impl Into<Option<PerClient>>) -> Self {
        self.per_client = per_client.into();
        self
    }

    /// Sets (or removes) the bulkhead.
    pub fn bulkhead(mut self, config: impl Into<Option<BulkheadConfig>>) -> Self {
        self.bulkhead = config.into();
        self
    }

    /// Sets (or, with `None`, removes) the timeout.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into().map(|timeout| TimeoutConfig {
            timeout,
            ..TimeoutConfig::default()
        });
        self
    }

    /// Builds the layer, its instances named `"server.<slot>"`.
    pub fn build(&self) -> Result<ServerPolicyLayer, ConfigError> {
        self.build_named("server", None)
    }

    /// Builds the layer, its instances named `"<name>.<slot>"` and, with a
    /// registry, registered in it.
    pub fn build_named(
        &self,
        name: &str,
        registry: Option<&Registry>,
    ) -> Result<ServerPolicyLayer, ConfigError> {
        self.build_slots(name, registry).map_err(|e| {
            ConfigError::new(
                e.error.component(),
                slot_field(e.slot, e.error.field()),
                e.error.reason(),
            )
        })
    }

    pub(crate) fn build_slots(
        &self,
        name: &str,
        registry: Option<&Registry>,
    ) -> Result<ServerPolicyLayer, SlotError> {
        let per_client = self
            .per_client
            .as_ref()
            .map(|p| {
                let mut b = KeyedRateLimitLayer::builder(ClientIp::new(p.trusted_proxies), p.rate)
                    .name(format!("{name}.per_client"))
                    .max_keys(p.max_keys)
                    .on_missing_key(MissingKey::SharedBucket);
                if let Some(burst) = p.burst {
                    b = b.burst(burst);
                }
                if let Some(r) = registry {
                    b = b.registry(r);
                }
                b.build::<IpAddr>().map_err(|e| in_slot("per_client", e))
            })
            .transpose()?;
        let bulkhead = self
            .bulkhead
            .as_ref()
            .map(|c| {
                let mut b = c.builder().name(format!("{name}.bulkhead"));
                if let Some(r) = registry {
                    b = b.registry(r);
                }
                b.build().map_err(|e| in_slot("bulkhead", e))
            })
            .transpose()?;
        let timeout = self
            .timeout
            .as_ref()
            .map(|c| {
                let mut b = c.builder().name(format!("{name}.timeout"));
                if let Some(r) = registry {
                    b = b.registry(r);
                }
                b.build().map_err(|e| in_slot("timeout", e))
            })
            .transpose()?;
        Ok(ServerPolicyLayer {
            per_client,
            bulkhead,
            timeout,
        })
    }
}

/// The layer of a built [`ServerPolicy`]; its services never fail (every
/// rejection is a response).
#[derive(Clone)]
pub struct ServerPolicyLayer {
    per_client: Option<KeyedRateLimitLayer<ClientIp, IpAddr>>,
    bulkhead: Option<BulkheadLayer>,
    timeout: Option<TimeoutLayer>,
}

impl fmt::Debug for ServerPolicyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPolicyLayer")
            .field("per_client", &self.per_client.is_some())
            .field("bulkhead", &self.bulkhead.is_some())
            .field("timeout", &self.timeout.is_some())
            .finish()
    }
}

impl ServerPolicyLayer {
    /// The per-client rate limiter's layer, for its handle.
    pub fn per_client(&self) -> Option<&KeyedRateLimitLayer<ClientIp, IpAddr>> {
        self.per_client.as_ref()
    }

    /// The bulkhead's layer, for its handle.
    pub fn bulkhead(&self) -> Option<&BulkheadLayer> {
        self.bulkhead.as_ref()
    }

    /// The timeout's layer, for its handle.
    pub fn timeout(&self) -> Option<&TimeoutLayer> {
        self.timeout.as_ref()
    }
}

type Timed<S> = Maybe<Timeout<S>, S>;
type Bulk<S> = Maybe<Bulkhead<Timed<S>>, Timed<S>>;
type PerClientT<S> =
    Maybe<<KeyedRateLimitLayer<ClientIp, IpAddr> as Layer<Bulk<S>>>::Service, Bulk<S>>;

/// The service a [`ServerPolicyLayer`] makes.
pub type ServerPolicyService<S> = ErrorToResponse<PerClientT<S>>;

impl<S> Layer<S> for ServerPolicyLayer {
    type Service = ServerPolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let s = match &self.timeout {
            Some(l) => Maybe::On {
                service: l.layer(inner),
            },
            None => Maybe::Off { service: inner },
        };
        let s = match &self.bulkhead {
            Some(l) => Maybe::On {
                service: l.layer(s),
            },
            None => Maybe::Off { service: s },
        };
        let s = match &self.per_client {
            Some(l) => Maybe::On {
                service: l.layer(s),
            },
            None => Maybe::Off { service: s },
        };
        ErrorToResponseLayer::new().layer(s)
    }
}
