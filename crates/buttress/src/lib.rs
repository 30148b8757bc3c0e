//! Resilience middleware for [tower]: every pattern is a [`Layer`], so it
//! stacks in a [`ServiceBuilder`] in front of axum, hyper and tonic servers
//! and clients.
//!
//! | pattern | module | feature |
//! |---|---|---|
//! | per-call timeout, per-request deadlines | [`timeout`] | `timeout` (default) |
//! | bulkhead: concurrency limit, bounded queue, queue timeout | [`bulkhead`] | `bulkhead` (default) |
//! | circuit breaker: rate windows, slow calls, RAII half-open probes | [`circuit_breaker`] | `circuit-breaker` (default) |
//! | retry: backoff with jitter, budgets, Retry-After, HTTP body replay | [`retry`] | `retry` (default) |
//! | rate limiting: GCRA, token bucket, windows, per key, priorities, `RateLimit` headers | [`rate_limit`] | `rate-limit` (default) |
//! | request metrics: requests by outcome, duration, in flight; HTTP and gRPC presets | `metrics` | `metrics` |
//! | fallback: a value, a function or a secondary service; chains; marked answers | `fallback` | `fallback` |
//! | cache-aside: single-flight, stale-if-error, HTTP `Cache-Control`, Redis | `cache` | `cache` |
//! | health checks, liveness and readiness endpoints, tonic-health | `health` | `health` |
//! | sagas over a write-ahead log (memory, SQLite, PostgreSQL), outbox | `saga` | `saga` |
//! | fault injection, off until switched on | `chaos` | `chaos` |
//! | presets and policies as one layer, from files, reloaded live; `execute`, `#[resilient]` | [`policy`] | `policy` (default), `config`, `macros` |
//! | classification, events, registry, keys, errors to responses | [`core`] | always |
//!
//! # Install
//!
//! buttress is not on crates.io yet: depend on the repository (or on a
//! checkout, with `path = ".../crates/buttress"`). The examples below also
//! use tower's `util` feature (`ServiceExt::oneshot`), and the client ones
//! a hyper-util client, `http`, `http-body-util` and `bytes`:
//!
//! ```toml
//! [dependencies]
//! buttress = { git = "https://github.com/buttress-rs/buttress" }
//! tower = { version = "0.5", features = ["util"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread", "net"] }
//! axum = "0.8"
//! hyper-util = { version = "0.1", features = ["client-legacy", "http1", "tokio"] }
//! http = "1"
//! http-body-util = "0.1"
//! bytes = "1"
//! ```
//!
//! # Features
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `timeout` | yes | [`timeout`], [`ServiceBuilderExt::call_timeout`], [`ServiceBuilderExt::timeout_with`] |
//! | `bulkhead` | yes | [`bulkhead`], [`ServiceBuilderExt::bulkhead`], [`ServiceBuilderExt::bulkhead_with`] |
//! | `circuit-breaker` | yes | [`circuit_breaker`], [`ServiceBuilderExt::circuit_breaker`] |
//! | `retry` | yes | [`retry`], [`ServiceBuilderExt::retry_with`] |
//! | `rate-limit` | yes | [`rate_limit`], [`ServiceBuilderExt::rate_limit_with`], [`ServiceBuilderExt::rate_limit_to`], [`ServiceBuilderExt::keyed_rate_limit`] |
//! | `rate-limit-redis` | no | `rate_limit::redis`: the limiter's state in Redis, shared by every replica |
//! | `metrics` | no | `metrics`: `MetricsLayer`, request metrics through the `metrics` facade |
//! | `policy` | yes | [`policy`]: `Policy` presets built into one layer, `execute`, [`ServiceBuilderExt::policy`] |
//! | `config` | no | `policy::PolicySet`: named policies from TOML, YAML or JSON, reloaded live |
//! | `config-watch` | no | `PolicySet::watch`: reload on file change |
//! | `macros` | no | `#[resilient(policy = "...")]` on async fns |
//! | `fallback`, `cache`, `cache-redis` | no | `fallback`, `cache`, their `ServiceBuilderExt` methods |
//! | `health`, `health-redis`, `health-postgres`, `health-tonic` | no | `health` and its checks |
//! | `saga`, `saga-sqlite`, `saga-postgres` | no | `saga` and its durable logs |
//! | `chaos` | no | `chaos`, `ServiceBuilderExt::chaos`, `http_chaos` |
//! | `serde` | yes | `Serialize`/`Deserialize` on the configuration structs, durations as `"30s"` |
//! | `tonic` | no | rejections to `tonic::Status` (`core::grpc`), a classifier for `tonic::Status` results |
//! | `axum` | no | axum's `ConnectInfo` as the peer address in the client-IP key extractors |
//! | `full` | no | all of the above |
//!
//! Every layer:
//! - keeps its state in the layer's `Arc`, so axum's per-route `layer()`
//!   calls and service clones share one instance;
//! - allocates nothing and takes no lock on the happy path (a retry's
//!   HTTP body replay allocates its buffer's state per request, and a retry
//!   budget takes a short lock once per 32 requests);
//! - rejects through the response future with a small error struct that
//!   [`core::response::ErrorToResponseLayer`] turns into 503/504/429
//!   (servers) and callers can downcast (clients), never through an error
//!   from `poll_ready`;
//! - has a name, events (`.on_event`), a handle with a serde snapshot and
//!   run-time controls, and an optional [`Registry`] entry. Names are unique
//!   across kinds within one registry: a bulkhead and a timeout both named
//!   `"api"` cannot both register, and the second `build()` fails.
//!
//! # Protecting a client call
//!
//! Around a hyper-util client, in the order of a client stack (breaker,
//! bulkhead, per-call timeout), acting on the typed rejections:
//!
//! ```
//! use buttress::circuit_breaker::CircuitBreakerLayer;
//! use buttress::core::error::kind_of;
//! use buttress::core::HttpClassifier;
//! use buttress::{BoxError, ErrorKind, ServiceBuilderExt};
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // `BoxError`, not `Box<dyn Error>`: the stack fails with a `BoxError`
//! // (`Send + Sync`), which `?` cannot turn into a `Box<dyn Error>` (E0277,
//! // "the size for values of type `dyn Error + Send + Sync` cannot be known").
//! #[tokio::main]
//! async fn main() -> Result<(), BoxError> {
//!     // A stand-in for the dependency, on loopback.
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     let catalog = axum::Router::new().route("/items/7", axum::routing::get(|| async { "seven" }));
//!     tokio::spawn(async move { axum::serve(listener, catalog).await });
//!
//!     let breaker = CircuitBreakerLayer::builder()
//!         .name("catalog")
//!         .classifier(HttpClassifier::new()) // 5xx and 429 are failures
//!         .build()?;
//!     let client = ServiceBuilder::new()
//!         .circuit_breaker(breaker)
//!         .bulkhead(32)? // at most 32 calls in flight, the rest rejected
//!         .call_timeout(Duration::from_secs(2))? // zero would be a ConfigError
//!         .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
//!
//!     let req = http::Request::get(format!("http://{addr}/items/7")).body(Empty::new())?;
//!     match client.oneshot(req).await {
//!         Ok(res) => assert_eq!(res.status(), 200),
//!         Err(err) => match kind_of(&*err) {
//!             Some(ErrorKind::CircuitOpen) => eprintln!("catalog is failing, not called"),
//!             Some(ErrorKind::BulkheadFull) => eprintln!("too many calls to catalog"),
//!             Some(ErrorKind::Timeout) => eprintln!("catalog took too long"),
//!             _ => return Err(err), // the client's own error
//!         },
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Protecting an axum server
//!
//! ```
//! use buttress::ServiceBuilderExt;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! let registry = buttress::Registry::new();
//! let bulkhead = buttress::bulkhead::BulkheadLayer::builder()
//!     .name("api")
//!     .max_concurrent(64)
//!     .max_queue(128)
//!     .max_wait(Duration::from_millis(100))
//!     .registry(&registry)
//!     .build()
//!     .expect("valid bulkhead config");
//!
//! // 20 requests a second per client IP (peer address: no proxy in front;
//! // serve with `into_make_service_with_connect_info::<SocketAddr>()` and
//! // the `axum` feature), and 1000 a second for all clients together.
//! let per_client = buttress::rate_limit::KeyedRateLimitLayer::builder(
//!     buttress::core::key::ClientIp::new(0),
//!     buttress::rate_limit::Rate::per_second(20),
//! )
//! .name("per-client")
//! .global(buttress::rate_limit::Rate::per_second(1000), None)
//! .registry(&registry)
//! .build::<std::net::IpAddr>()
//! .expect("valid rate limit config");
//!
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .error_to_response() // 429 + Retry-After, 503, 504
//!             .keyed_rate_limit(per_client)
//!             .bulkhead_with(bulkhead)
//!             .call_timeout(Duration::from_secs(5))
//!             .expect("a valid timeout"),
//!     );
//! # let _ = app;
//! ```
//!
//! The [README](https://github.com/buttress-rs/buttress#readme) explains
//! the composition order and the retry layer in detail.
//!
//! [tower]: https://docs.rs/tower
//! [`Layer`]: tower_layer::Layer
//! [`ServiceBuilder`]: tower::ServiceBuilder
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use buttress_core as core;
pub use buttress_core::{
    BoxError, Classifier, ConfigError, ErrorKind, Listener, Outcome, Registry,
};

// The pattern crates are re-exported whole and inlined, so that their front
// pages (with facade paths in their examples) are these modules' pages.
#[cfg(feature = "timeout")]
#[doc(inline)]
pub use buttress_timeout as timeout;

#[cfg(feature = "bulkhead")]
#[doc(inline)]
pub use buttress_bulkhead as bulkhead;

#[cfg(feature = "circuit-breaker")]
#[doc(inline)]
pub use buttress_circuit_breaker as circuit_breaker;

#[cfg(feature = "retry")]
#[doc(inline)]
pub use buttress_retry as retry;

#[cfg(feature = "rate-limit")]
#[doc(inline)]
pub use buttress_rate_limit as rate_limit;

#[cfg(feature = "metrics")]
#[doc(inline)]
pub use buttress_metrics as metrics;

#[cfg(feature = "fallback")]
#[cfg_attr(docsrs, doc(cfg(feature = "fallback")))]
#[doc(inline)]
pub use buttress_fallback as fallback;

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
#[doc(inline)]
pub use buttress_cache as cache;

#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
#[doc(inline)]
pub use buttress_health as health;

#[cfg(feature = "saga")]
#[cfg_attr(docsrs, doc(cfg(feature = "saga")))]
#[doc(inline)]
pub use buttress_saga as saga;

#[cfg(feature = "chaos")]
#[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
#[doc(inline)]
pub use buttress_chaos as chaos;

#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub mod policy;

#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use buttress_macros::resilient;

mod builder;
pub use builder::ServiceBuilderExt;

/// Every ```` ```rust ```` block of README.md, compiled (and run, unless
/// marked `no_run`) as a doctest, so the README's snippets stay true. They
/// use the gRPC and axum integrations, hence all features.
#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
