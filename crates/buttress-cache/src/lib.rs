//! Cache-aside for tower services: moka in memory or Redis, single-flight
//! on misses, stale-if-error and stale-while-revalidate, HTTP-aware keys
//! and `Cache-Control`.
//!
//! **Paths.** Applications depend on the facade crate `buttress`, which
//! re-exports this crate as `buttress::cache` (feature `cache`; Redis with
//! `cache-redis`); the examples use those paths. Depending on
//! `buttress-cache` directly, the same items are at `buttress_cache::...`.
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod cache { pub use buttress_cache::*; } }
//! use buttress::cache::{CacheLayer, CacheStatus};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let cache = CacheLayer::builder(|user: &u64| Some(*user))
//!     .name("profiles")
//!     .ttl(Duration::from_secs(30))
//!     .max_stale(Duration::from_secs(300)) // served if the backend fails
//!     .max_entries(10_000)
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new().layer(cache.clone()).service_fn(|user: u64| async move {
//!     Ok::<_, std::convert::Infallible>(format!("profile of {user}"))
//! });
//!
//! assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "profile of 1"); // miss
//! assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "profile of 1"); // hit
//! tokio::time::advance(Duration::from_secs(31)).await;
//! assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "profile of 1"); // expired: miss
//!
//! let s = cache.handle().snapshot();
//! assert_eq!((s.hits, s.misses, s.entries), (1, 2, Some(1)));
//! # }
//! ```
//!
//! How it behaves:
//!
//! - **Keys.** [`CacheLayer::builder`] takes a function of the request
//!   (`None`: the request passes through) and stores the inner service's
//!   responses (`Clone`; wrap large ones in an `Arc`).
//!   [`CacheLayer::http`] keys by method and URI plus chosen `Vary`
//!   headers, never by credentials (a request with `Authorization` or
//!   `Cookie` passes through by default, see [`Credentials`]), and follows
//!   `Cache-Control` and `Expires` (see [`HttpCacheBuilder`]).
//! - **HTTP validation.** A stale HTTP entry (within `max_stale`) with an
//!   `ETag` or `Last-Modified` is revalidated: the inner call carries
//!   `If-None-Match` (or `If-Modified-Since`), and a `304 Not Modified`
//!   refreshes the entry, which answers ([`CacheStatus::Revalidated`]).
//!   A fresh entry answers a matching `If-None-Match` or
//!   `If-Modified-Since` with a `304`, and a `HEAD` request with its
//!   headers; neither calls the inner service. See
//!   [`HttpCacheBuilder`] for the rules and how malformed headers are
//!   read.
//! - **What is stored.** Only successes: a keyed cache stores every `Ok`
//!   (or what [`cache_if`](CacheBuilder::cache_if) accepts); an HTTP cache
//!   what the HTTP rules allow. Errors are never stored.
//! - **Single-flight.** Concurrent misses on one key make one inner call;
//!   the others wait for it and share its result (counted as
//!   `coalesced`). An error is shared too ([`error::SharedError`]) and not
//!   stored. If the caller that leads the call is dropped, a waiter takes
//!   over and calls (it keeps a clone of the inner service for that, and
//!   polls its readiness first).
//! - **Stale answers.** Within [`max_stale`](CacheBuilder::max_stale) past
//!   its ttl, an entry answers when the inner call fails or is rejected (an
//!   open breaker below, a full bulkhead, a timeout) or its response is a
//!   failure (an HTTP 503): stale-if-error. With
//!   [`stale_while_revalidate`](CacheBuilder::stale_while_revalidate) it
//!   answers at once while one background call refreshes it. A stale
//!   answer is marked: [`CacheStatus::Stale`] (an HTTP response
//!   extension, with `Age` and `Warning` headers; a keyed cache's
//!   [`mark`](CacheBuilder::mark) hook), a [`CacheEvent::StaleServed`]
//!   event and the `stale` count.
//! - **Memory.** A [moka](https://docs.rs/moka) cache bounded by entries
//!   and by weight (bytes for HTTP), with its TinyLFU admission and LRU
//!   eviction. moka's sync cache is used: its `get` is a plain call, so a
//!   hit needs no future of its own (the future cache's `get` is an
//!   `async fn` that would have to be boxed on every hit).
//! - **Time.** Freshness follows tokio's clock, so tests with a paused
//!   clock (`start_paused`, `tokio::time::advance`) drive expiry. moka
//!   keeps a clock of its own (the real one), so it is not given the ttl:
//!   each entry holds the tokio instants it is fresh until and stale
//!   until, checked on every read, and moka only bounds the size. An entry
//!   past `max_stale` is removed when it is next read, or evicted by moka
//!   as any cold entry is.
//! - **Hits.** A hit is answered without allocating, from a small table
//!   in front of moka (see below) or from moka itself. Cloning the response
//!   is the only cost that grows with it.
//! - **Redis.** With the `redis` feature, entries can live in Redis and be
//!   shared by replicas; an outage makes the calls go to the inner service,
//!   never fail (see the [`redis`] module).
//! - **Operations.** [`CacheHandle`]: invalidate a key, a prefix or
//!   everything (a call in flight meanwhile does not store its answer),
//!   warm entries, take a [`CacheSnapshot`] (entries, weight, hits,
//!   misses, stale, coalesced, ...). Builders register it in a
//!   [`Registry`](buttress_core::Registry) and take event listeners.
//! - **Readiness.** `poll_ready` is the inner service's. buttress's own
//!   layers report ready and reject in the call, so under them a hit never
//!   waits for capacity the call does not use.
//! - **Errors.** The layer's error is a `BoxError`: the inner error as it
//!   is, or a [`SharedError`](error::SharedError) when several callers
//!   shared it. An HTTP server turns it into a response with buttress's
//!   error-to-response layer.
//!
//! # The front table
//!
//! moka's `get` records each read for its eviction policy and sometimes
//! runs its housekeeping inline: about 120 ns on the project's machines,
//! more than a whole hit should cost. The cache keeps a fixed table of 64
//! slots of lately hit entries in front of it; a hit found there costs one
//! uncontended spin lock and one clock read, and allocates nothing. Its
//! hits are told to moka when another key takes the slot, so that moka's
//! eviction policy still learns which keys are hot. An insert or an
//! invalidation clears the slots concerned (and a fill racing with one is
//! dropped), so the table never answers with a replaced or invalidated
//! entry; it may answer with a fresh entry that moka has just evicted,
//! which is still correct data, and it holds at most 64 entries beyond
//! moka's bounds.
//!
//! # Tracing
//!
//! With `buttress.pattern = "cache"` and `buttress.name` on every event:
//!
//! | event (message) | level | fields |
//! |---|---|---|
//! | `cache miss`, `call coalesced` | `trace` | |
//! | `stale entry served` | `debug` | `cache.age_ms`, `cache.reason` (`error`, `revalidating`) |
//! | `stale entry revalidated` (a `304 Not Modified`) | `debug` | |
//! | `response not stored` | `debug` | `cache.reason` ([`NotStored`]) |
//! | `entries invalidated` | `debug` | `cache.scope` |
//! | `the leading call was dropped; a waiting call takes over` | `debug` | |
//! | `Redis is unreachable; ...` | `warn`, once per outage | `error` |
//! | `Redis answers again; ...` | `info` | |
//!
//! A hit emits nothing. Events have this crate's target
//! (`buttress_cache`).
//!
//! # Metrics
//!
//! With the `metrics` feature, `.metrics()` on a builder (or a
//! [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
//! registry) publishes `buttress_cache_requests_total{name,result}`
//! (`hit`, `miss`, `coalesced`, `stale`, and `revalidated`: the misses a
//! `304 Not Modified` answered),
//! `buttress_cache_stores_total{name,result}` (`stored` or the reason it
//! was not), `buttress_cache_evictions_total{name}`,
//! `buttress_cache_invalidations_total{name,scope}` and
//! `buttress_cache_store_errors_total{name}`.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
pub mod error;
mod events;
pub mod future;
mod http;
mod key;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod service;
mod shared;
mod store;
mod validate;

pub use config::CacheConfig;
pub use events::{CacheEvent, Invalidation, NotStored, StaleReason};
pub use http::{CacheBody, CacheStatus, CachedResponse};
pub use key::{CacheKey, Credentials, HttpKey};
pub use layer::{CacheBuilder, CacheHandle, CacheLayer, HttpCacheBuilder};
pub use service::{ByKey, Cache, HttpPolicy, Policy};
pub use shared::CacheSnapshot;
