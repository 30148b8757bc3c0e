//! Policies: a set of patterns as one value, with presets, built into one
//! [`Layer`](tower_layer::Layer) in the composition order of the README.
//!
//! A [`Policy`] says which patterns a call goes through and with which
//! settings; it is plain data (`Clone`, `Debug`, `PartialEq`, serde), so
//! it can come from a preset, from code or from a file
//! (`PolicySet`, feature `config`). [`Policy::build`] turns it into a
//! [`PolicyLayer`]: the instances, built once, shared by every service the
//! layer wraps. Outermost first:
//!
//! | slot | pattern | why there |
//! |---|---|---|
//! | [`timeout`](Policy::timeout) | total timeout | bounds what the caller waits, retries and their waits included |
//! | [`retry`](Policy::retry) | retry (with an optional budget) | retries what the layers below reject or fail |
//! | [`circuit_breaker`](Policy::circuit_breaker) | circuit breaker | sees every attempt, so a failing dependency opens it and retries stop at once |
//! | [`rate_limit`](Policy::rate_limit) | rate limiter | spends a permit per attempt that the breaker let through |
//! | [`bulkhead`](Policy::bulkhead) | bulkhead | bounds the attempts in flight |
//! | [`attempt_timeout`](Policy::attempt_timeout) | per-attempt timeout | one slow attempt fails (and is retried) instead of using up the total |
//!
//! A fallback and a cache need your request and response types (a
//! fallback value, a cache key): add them in front of the policy's layer,
//! outermost, in a `ServiceBuilder`.
//!
//! # Presets
//!
//! The client presets carry the values of the project's seed documents.
//! The "timeout" of each is the total; the per-attempt timeout is the
//! total divided by the attempts, so that every attempt can use its share.
//! Each retry has a budget (20 % of requests, at least 10 retries a
//! second, over 10 s), so that an outage does not triple the load.
//!
//! | preset | breaker | retry | total timeout | per attempt | bulkhead |
//! |---|---|---|---|---|---|
//! | [`api`](Policy::api) | opens after 5 consecutive failures, 1 min open | 3 attempts, exponential from 100 ms | 30 s | 10 s | 50 calls, 100 queued |
//! | [`ai`](Policy::ai) | 3 consecutive failures, 2 min open | 3 attempts, exponential from 1 s up to 30 s | 2 min | 40 s | 10 calls, 50 queued |
//! | [`database`](Policy::database) | 10 consecutive failures, 30 s open | 3 attempts, exponential from 50 ms | 30 s | 10 s | 100 calls, 200 queued |
//! | [`external`](Policy::external) | 5 consecutive failures, 1 min open | 3 attempts, exponential from 200 ms | 15 s | 5 s | 20 calls, 50 queued |
//! | [`critical`](Policy::critical) | none | 5 attempts, exponential from 100 ms | 1 min | 12 s | 5 calls, 10 queued |
//!
//! Queued calls wait at most 1 s for a permit ([`BulkheadConfig::max_wait`]).
//! With [`Policy::build_http`], the retry follows HTTP's rules (502, 503,
//! 504 and 429 retried, idempotent methods only, `Retry-After` honoured)
//! and the breaker counts 5xx and 429 responses as failures; with
//! [`Policy::build_grpc`], gRPC's.
//!
//! ```
//! use buttress::policy::Policy;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), buttress::BoxError> {
//! // The `api` preset with a shorter total timeout and no rate limiter.
//! let policy = Policy::api()
//!     .timeout(Duration::from_secs(5))
//!     .rate_limit(None)
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(policy)
//!     .service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x * 2) });
//! assert_eq!(svc.oneshot(21).await?, 42);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use buttress_bulkhead::BulkheadConfig;
use buttress_circuit_breaker::CircuitBreakerConfig;
use buttress_rate_limit::RateLimitConfig;
use buttress_retry::{Backoff, BudgetConfig, RetryConfig};
use buttress_timeout::TimeoutConfig;

mod execute;
mod layer;
mod server;
#[cfg(feature = "config")]
mod set;

/// What `#[resilient]`'s expansion calls; not a public API.
#[cfg(feature = "macros")]
#[doc(hidden)]
pub mod __private {
    use buttress_core::BoxError;

    /// The policy's error, as the function's error type.
    #[inline]
    pub fn finish<T, E: From<BoxError>>(result: Result<T, BoxError>) -> Result<T, E> {
        result.map_err(E::from)
    }
}

pub use layer::{
    Flavor, FlavorKind, Generic, Grpc, Http, Maybe, MaybeFuture, PolicyLayer, PolicyService,
    SlotTimeout,
};
pub use server::{PerClient, ServerPolicy, ServerPolicyLayer, ServerPolicyService};
#[cfg(feature = "config-watch")]
#[cfg_attr(docsrs, doc(cfg(feature = "config-watch")))]
pub use set::PolicyWatcher;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub use set::{global, PolicyError, PolicyErrorKind, PolicySet, PolicySpec, ReloadReport};

/// Which patterns a call goes through, and their settings: a value.
///
/// Every slot is optional; an empty slot adds no layer (a `None` costs one
/// branch per call, no allocation). The presets fill them (see the [module
/// docs](self) for the table); the setters replace or remove one:
/// `Policy::api().retry(None)`.
///
/// With the `serde` feature (default), a policy reads from and writes to
/// any serde format, durations as humantime strings, unknown fields
/// refused; a total or per-attempt timeout may be written as a bare
/// duration:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use buttress::policy::Policy;
/// use std::time::Duration;
///
/// let policy: Policy = serde_json::from_str(r#"{
///     "timeout": "10s",
///     "retry": { "max_attempts": 2 },
///     "bulkhead": { "max_concurrent": 8, "max_queue": 16, "max_wait": "100ms" }
/// }"#).unwrap();
/// assert_eq!(policy.timeout.as_ref().unwrap().timeout, Duration::from_secs(10));
/// assert_eq!(policy.retry.as_ref().unwrap().max_attempts, 2);
/// assert!(policy.circuit_breaker.is_none());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct Policy {
    /// The total timeout: the whole call, retries and the waits between
    /// them included.
    #[cfg_attr(
        feature = "serde",
        serde(
            skip_serializing_if = "Option::is_none",
            deserialize_with = "timeout_slot::deserialize"
        )
    )]
    pub timeout: Option<TimeoutConfig>,
    /// The retry (and its budget).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub retry: Option<RetryConfig>,
    /// The circuit breaker.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// The rate limiter (one limit for every call through the layer).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub rate_limit: Option<RateLimitConfig>,
    /// The bulkhead.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub bulkhead: Option<BulkheadConfig>,
    /// The timeout of each attempt.
    #[cfg_attr(
        feature = "serde",
        serde(
            skip_serializing_if = "Option::is_none",
            deserialize_with = "timeout_slot::deserialize"
        )
    )]
    pub attempt_timeout: Option<TimeoutConfig>,
}

fn timeout(d: Duration) -> TimeoutConfig {
    TimeoutConfig {
        timeout: d,
        ..TimeoutConfig::default()
    }
}

fn consecutive_breaker(failures: u32, open: Duration) -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        consecutive_failures: Some(failures),
        wait_in_open: open,
        permitted_calls_in_half_open: 1,
        automatic_half_open: true,
        ..CircuitBreakerConfig::default()
    }
}

fn exponential_retry(attempts: u32, initial: Duration, max_delay: Duration) -> RetryConfig {
    RetryConfig {
        max_attempts: attempts,
        backoff: Backoff::exponential(initial),
        max_delay,
        budget: Some(BudgetConfig::default()),
        ..RetryConfig::default()
    }
}

fn bulkhead(max_concurrent: usize, max_queue: usize) -> BulkheadConfig {
    BulkheadConfig {
        max_concurrent,
        max_queue,
        max_wait: Some(Duration::from_secs(1)),
        ..BulkheadConfig::default()
    }
}

impl Policy {
    /// An empty policy: no layer at all. Fill it with the setters.
    pub fn new() -> Self {
        Self::default()
    }

    /// HTTP and RPC APIs: breaker after 5 consecutive failures (1 min
    /// open), 3 attempts with exponential backoff from 100 ms, 30 s in all
    /// (10 s per attempt), 50 calls in flight and 100 queued.
    pub fn api() -> Self {
        Self {
            timeout: Some(timeout(Duration::from_secs(30))),
            retry: Some(exponential_retry(
                3,
                Duration::from_millis(100),
                Duration::from_secs(5),
            )),
            circuit_breaker: Some(consecutive_breaker(5, Duration::from_secs(60))),
            rate_limit: None,
            bulkhead: Some(bulkhead(50, 100)),
            attempt_timeout: Some(timeout(Duration::from_secs(10))),
        }
    }

    /// Model inference and other slow, rate-limited services: breaker after
    /// 3 consecutive failures (2 min open), 3 attempts from 1 s up to 30 s,
    /// 2 min in all (40 s per attempt), 10 calls in flight and 50 queued.
    /// With [`build_http`](Policy::build_http), the retry waits as long as
    /// a `Retry-After` says (up to 30 s).
    pub fn ai() -> Self {
        Self {
            timeout: Some(timeout(Duration::from_secs(120))),
            retry: Some(exponential_retry(
                3,
                Duration::from_secs(1),
                Duration::from_secs(30),
            )),
            circuit_breaker: Some(consecutive_breaker(3, Duration::from_secs(120))),
            rate_limit: None,
            bulkhead: Some(bulkhead(10, 50)),
            attempt_timeout: Some(timeout(Duration::from_secs(40))),
        }
    }

    /// Databases: breaker after 10 consecutive failures (30 s open), 3
    /// attempts from 50 ms, 30 s in all (10 s per attempt), 100 calls in
    /// flight and 200 queued.
    pub fn database() -> Self {
        Self {
            timeout: Some(timeout(Duration::from_secs(30))),
            retry: Some(exponential_retry(
                3,
                Duration::from_millis(50),
                Duration::from_secs(2),
            )),
            circuit_breaker: Some(consecutive_breaker(10, Duration::from_secs(30))),
            rate_limit: None,
            bulkhead: Some(bulkhead(100, 200)),
            attempt_timeout: Some(timeout(Duration::from_secs(10))),
        }
    }

    /// Third-party services: breaker after 5 consecutive failures (1 min
    /// open), 3 attempts from 200 ms, 15 s in all (5 s per attempt), 20
    /// calls in flight and 50 queued.
    pub fn external() -> Self {
        Self {
            timeout: Some(timeout(Duration::from_secs(15))),
            retry: Some(exponential_retry(
                3,
                Duration::from_millis(200),
                Duration::from_secs(5),
            )),
            circuit_breaker: Some(consecutive_breaker(5, Duration::from_secs(60))),
            rate_limit: None,
            bulkhead: Some(bulkhead(20, 50)),
            attempt_timeout: Some(timeout(Duration::from_secs(5))),
        }
    }

    /// Calls that must not be cut off by a breaker: no breaker, 5 attempts
    /// from 100 ms, 1 min in all (12 s per attempt), 5 calls in flight and
    /// 10 queued.
    pub fn critical() -> Self {
        Self {
            timeout: Some(timeout(Duration::from_secs(60))),
            retry: Some(exponential_retry(
                5,
                Duration::from_millis(100),
                Duration::from_secs(10),
            )),
            circuit_breaker: None,
            rate_limit: None,
            bulkhead: Some(bulkhead(5, 10)),
            attempt_timeout: Some(timeout(Duration::from_secs(12))),
        }
    }

    /// The server preset: see [`ServerPolicy`].
    pub fn server() -> ServerPolicy {
        ServerPolicy::default()
    }

    /// Sets (or, with `None`, removes) the total timeout.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into().map(self::timeout);
        self
    }

    /// Sets (or removes) the total timeout from a full config.
    pub fn timeout_config(mut self, config: impl Into<Option<TimeoutConfig>>) -> Self {
        self.timeout = config.into();
        self
    }

    /// Sets (or, with `None`, removes) the timeout of each attempt.
    pub fn attempt_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.attempt_timeout = timeout.into().map(self::timeout);
        self
    }

    /// Sets (or removes) the timeout of each attempt from a full config.
    pub fn attempt_timeout_config(mut self, config: impl Into<Option<TimeoutConfig>>) -> Self {
        self.attempt_timeout = config.into();
        self
    }

    /// Sets (or removes) the retry.
    pub fn retry(mut self, config: impl Into<Option<RetryConfig>>) -> Self {
        self.retry = config.into();
        self
    }

    /// Sets (or removes) the circuit breaker.
    pub fn circuit_breaker(mut self, config: impl Into<Option<CircuitBreakerConfig>>) -> Self {
        self.circuit_breaker = config.into();
        self
    }

    /// Sets (or removes) the rate limiter.
    pub fn rate_limit(mut self, config: impl Into<Option<RateLimitConfig>>) -> Self {
        self.rate_limit = config.into();
        self
    }

    /// Sets (or removes) the bulkhead.
    pub fn bulkhead(mut self, config: impl Into<Option<BulkheadConfig>>) -> Self {
        self.bulkhead = config.into();
        self
    }
}

/// A timeout slot reads from a full `TimeoutConfig` table or from a bare
/// humantime string (`timeout = "30s"`).
#[cfg(feature = "serde")]
mod timeout_slot {
    use std::fmt;

    use buttress_timeout::TimeoutConfig;
    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<TimeoutConfig>, D::Error> {
        d.deserialize_any(Slot).map(Some)
    }

    struct Slot;

    impl<'de> Visitor<'de> for Slot {
        type Value = TimeoutConfig;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\", or a timeout table")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<TimeoutConfig, E> {
            let timeout = humantime::parse_duration(s).map_err(E::custom)?;
            Ok(super::timeout(timeout))
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TimeoutConfig, A::Error> {
            TimeoutConfig::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_fill_the_slots_of_their_table() {
        let api = Policy::api();
        assert_eq!(api.timeout.unwrap().timeout, Duration::from_secs(30));
        assert_eq!(
            api.attempt_timeout.unwrap().timeout,
            Duration::from_secs(10)
        );
        assert_eq!(api.retry.as_ref().unwrap().max_attempts, 3);
        assert!(api.retry.unwrap().budget.is_some());
        let cb = api.circuit_breaker.unwrap();
        assert_eq!(cb.consecutive_failures, Some(5));
        assert_eq!(cb.wait_in_open, Duration::from_secs(60));
        let b = api.bulkhead.unwrap();
        assert_eq!((b.max_concurrent, b.max_queue), (50, 100));
        assert!(api.rate_limit.is_none());

        let ai = Policy::ai();
        assert_eq!(ai.timeout.unwrap().timeout, Duration::from_secs(120));
        assert_eq!(ai.circuit_breaker.unwrap().consecutive_failures, Some(3));
        assert_eq!(ai.bulkhead.unwrap().max_concurrent, 10);

        let db = Policy::database();
        assert_eq!(db.circuit_breaker.unwrap().consecutive_failures, Some(10));
        assert_eq!(db.bulkhead.unwrap().max_queue, 200);

        let ext = Policy::external();
        assert_eq!(ext.timeout.unwrap().timeout, Duration::from_secs(15));
        assert_eq!(ext.bulkhead.unwrap().max_concurrent, 20);

        let critical = Policy::critical();
        assert!(critical.circuit_breaker.is_none());
        assert_eq!(critical.retry.unwrap().max_attempts, 5);
        assert_eq!(critical.bulkhead.unwrap().max_concurrent, 5);
    }

    #[test]
    fn setters_replace_and_remove() {
        let p = Policy::api()
            .retry(None)
            .timeout(Duration::from_secs(3))
            .attempt_timeout(None);
        assert!(p.retry.is_none());
        assert!(p.attempt_timeout.is_none());
        assert_eq!(p.timeout.unwrap().timeout, Duration::from_secs(3));
        assert_eq!(Policy::new(), Policy::default());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn a_policy_round_trips_through_serde() {
        for p in [
            Policy::api(),
            Policy::ai(),
            Policy::database(),
            Policy::external(),
            Policy::critical(),
        ] {
            let json = serde_json::to_string(&p).unwrap();
            let back: Policy = serde_json::from_str(&json).unwrap();
            assert_eq!(back, p, "{json}");
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn unknown_fields_and_bad_durations_are_errors() {
        let err = serde_json::from_str::<Policy>(r#"{ "retyr": {} }"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `retyr`"), "{err}");
        let err = serde_json::from_str::<Policy>(r#"{ "timeout": "soon" }"#).unwrap_err();
        assert!(err.to_string().contains("expected number"), "{err}");
        let err = serde_json::from_str::<Policy>(r#"{ "timeout": 5 }"#).unwrap_err();
        assert!(err.to_string().contains("a duration"), "{err}");
        let p: Policy =
            serde_json::from_str(r#"{ "attempt_timeout": { "timeout": "2s" } }"#).unwrap();
        assert_eq!(p.attempt_timeout.unwrap().timeout, Duration::from_secs(2));
    }
}
