//! Health checks for tower services: timeouts, retries, dependencies
//! between checks, liveness and readiness endpoints, tonic-health.
//!
//! - [`HealthCheck`]: an async check (closures implement it), named and
//!   set up by a [`Check`]: its own timeout, optional retries, a cache
//!   interval, critical or not, dependencies, liveness or not.
//! - [`HealthRegistry`]: runs the checks concurrently under their
//!   timeouts, caches each result for its interval (a slow or hanging
//!   check never makes a probe slow: the probe answers from the last result
//!   and the check runs again in the background), and aggregates them into
//!   healthy / degraded / unhealthy, with durations, the last change and
//!   details. Dependencies between checks are a graph: a cycle is refused
//!   at registration with an error that names it, reports follow the
//!   topological order, and a check whose dependency is unhealthy is
//!   reported so without running.
//! - Built-in checks read the core [`Registry`](buttress_core::Registry):
//!   [`BreakersCheck`] (open breakers: degraded, unhealthy when critical),
//!   [`BulkheadsCheck`] (utilisation over a threshold), [`RateLimitersCheck`]
//!   (saturation); `RedisCheck` (feature `redis`) and `PostgresCheck`
//!   (feature `postgres`) check that a server answers.
//! - [Liveness and readiness](Probe): liveness says the process works and
//!   never fails because a dependency is down (a restart would not help);
//!   readiness says whether it should get traffic. [`HealthService`] serves
//!   both as JSON with 200 or 503 ([`HealthReport`] documents the stable
//!   shape), as an axum route or a hyper service.
//! - [Startup](HealthRegistry::startup), for a Kubernetes `startupProbe`:
//!   fails until the startup checks ([`Check::startup`], or the critical
//!   checks when none is marked) have each passed once and the manual gate
//!   ([`StartupHandle`]), if used, is open; then ok for good, without
//!   running checks. [`HealthService`] serves it at `…/startup`.
//! - gRPC: `TonicHealth` (feature `tonic`) keeps a `tonic-health` reporter's
//!   serving status in step with readiness, per service name.
//! - Graceful shutdown: a [`ShutdownHandle`] flips readiness to not-serving
//!   before the server drains, so load balancers stop sending first.
//!
//! Time is tokio's (`tokio::time::Instant`, `sleep`, `timeout`), so
//! `#[tokio::test(start_paused = true)]` drives every timeout, retry delay
//! and cache interval.
//!
//! # Example: an axum server with its probes
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod health { pub use buttress_health::*; } }
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use buttress::core::Registry;
//! use buttress::health::{BreakersCheck, Check, CheckResult, HealthRegistry, Status};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let components = Registry::new(); // give it to the breakers' builders: `.registry(&components)`
//! let health = HealthRegistry::builder()
//!     .components(&components)
//!     .check(Check::new("breakers", BreakersCheck::new(&components).all_critical()))
//!     .check(
//!         Check::new("db", || async { Ok::<_, std::io::Error>(()) })
//!             .timeout(Duration::from_millis(500))
//!             .retries(2),
//!     )
//!     .check(Check::new("event-loop", || async { Status::Healthy }).liveness())
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .nest_service("/health", health.service()); // /health/live, /ready, /startup
//!
//! let ready = health.readiness().await;
//! assert_eq!(ready.http_status(), 200);
//! assert_eq!(ready.to_json()["checks"][1]["name"], "db");
//!
//! // On SIGTERM: flip readiness, let the balancers notice, then drain.
//! let shutdown = health.shutdown_handle();
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! # let server = axum::serve(listener, app).with_graceful_shutdown(async move {
//! #     shutdown.shut_down_and_wait(Duration::ZERO).await;
//! # });
//! # server.await.unwrap();
//! # Ok::<_, buttress::core::ConfigError>(())
//! # }).unwrap();
//! ```
//!
//! # Events, tracing, metrics
//!
//! [`on_event`](HealthRegistryBuilder::on_event) listeners receive
//! [`HealthEvent`]s. `tracing`: a status change and startup completing at
//! `info`, timeouts,
//! retries and skipped runs at `debug`. With the `metrics` feature and
//! [`metrics`](HealthRegistryBuilder::metrics) (or a
//! `Registry::with_metrics()` given to
//! [`components`](HealthRegistryBuilder::components)):
//! `buttress_health_status{check}` (1 healthy, 0.5 degraded, 0 unhealthy),
//! `buttress_health_check_duration_seconds{check}`, `buttress_health_ready`,
//! `buttress_health_started` (0, then 1 once startup completes).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builtin;
mod check;
mod config;
mod events;
mod graph;
mod http;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod registry;
mod report;
mod status;
mod summary;
#[cfg(feature = "tonic")]
mod tonic;

pub use builtin::{BreakersCheck, BulkheadsCheck, RateLimitersCheck};
pub use check::{
    Check, CheckFuture, HealthCheck, DEFAULT_INTERVAL, DEFAULT_RETRY_DELAY, DEFAULT_TIMEOUT,
};
pub use config::{CheckConfig, HealthConfig};
pub use events::HealthEvent;
pub use http::{HealthService, ResponseFuture};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresCheck;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisCheck;
pub use registry::{
    HealthRegistry, HealthRegistryBuilder, RegisterError, ShutdownHandle, StartupHandle,
};
pub use report::{aggregate, CheckReport, HealthReport, Probe};
pub use status::{CheckResult, Status};
pub use summary::{BreakerSummary, BulkheadUsage, RateLimiterUsage, Summary};
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use tonic::{TonicHealth, TonicHealthBuilder};

pub use buttress_core::ConfigError;

/// The component name of this crate's [`ConfigError`]s.
pub(crate) const KIND: &str = "health";
