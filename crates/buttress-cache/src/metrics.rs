//! The bridge from [`CacheEvent`]s to the [`metrics`] facade (feature
//! `metrics`), switched on by `.metrics()` on the builders or a
//! [`Registry::with_metrics`] registry.
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `buttress_cache_requests_total` | counter | `name`, `result` = `hit` / `miss` / `coalesced` / `stale` / `revalidated` | calls |
//! | `buttress_cache_stores_total` | counter | `name`, `result` = `stored` / the [`NotStored`](crate::NotStored) reason | responses |
//! | `buttress_cache_evictions_total` | counter | `name` | entries |
//! | `buttress_cache_invalidations_total` | counter | `name`, `scope` = `key` / `prefix` / `all` | invalidations |
//! | `buttress_cache_store_errors_total` | counter | `name` | outages of the Redis store (one per outage) |
//!
//! `hit`, `miss` and `coalesced` are disjoint; `stale` counts the stale
//! answers, given to a miss or a coalesced call whose inner call failed,
//! or at once while revalidating (then neither hit nor miss);
//! `revalidated` counts the misses answered by a stale HTTP entry that a
//! `304 Not Modified` refreshed.
//!
//! Every handle is resolved once, when the layer is built, against the
//! recorder installed then: install the recorder first.

use std::sync::Arc;

use buttress_core::{Listener, Listeners, Registry};
use metrics::Counter;

use crate::events::{CacheEvent, Invalidation, NotStored};

const REQUESTS: &str = "buttress_cache_requests_total";
const STORES: &str = "buttress_cache_stores_total";
const EVICTIONS: &str = "buttress_cache_evictions_total";
const INVALIDATIONS: &str = "buttress_cache_invalidations_total";
const STORE_ERRORS: &str = "buttress_cache_store_errors_total";

/// Adds a bridge to `listeners` when asked for and a recorder is installed.
pub(crate) fn attach(
    name: &str,
    on: bool,
    registry: Option<&Registry>,
    listeners: &mut Listeners<CacheEvent>,
) {
    if buttress_core::bridge::should_attach(name, on, registry) {
        listeners.push(Arc::new(MetricsBridge::new(name)));
    }
}

struct MetricsBridge {
    name: String,
    hit: Counter,
    miss: Counter,
    coalesced: Counter,
    stale: Counter,
    revalidated: Counter,
    stored: Counter,
    evicted: Counter,
    store_errors: Counter,
}

impl MetricsBridge {
    fn new(name: &str) -> Self {
        metrics::describe_counter!(REQUESTS, "Calls a cache answered, by how.");
        metrics::describe_counter!(STORES, "Responses a cache stored, or why it did not.");
        metrics::describe_counter!(
            EVICTIONS,
            "Entries a cache evicted to stay within its bounds."
        );
        metrics::describe_counter!(INVALIDATIONS, "Invalidations of a cache's entries.");
        metrics::describe_counter!(STORE_ERRORS, "Outages of a cache's Redis store.");
        let requests = |result: &'static str| metrics::counter!(REQUESTS, "name" => name.to_owned(), "result" => result);
        MetricsBridge {
            name: name.to_owned(),
            hit: requests("hit"),
            miss: requests("miss"),
            coalesced: requests("coalesced"),
            stale: requests("stale"),
            revalidated: requests("revalidated"),
            stored: metrics::counter!(STORES, "name" => name.to_owned(), "result" => "stored"),
            evicted: metrics::counter!(EVICTIONS, "name" => name.to_owned()),
            store_errors: metrics::counter!(STORE_ERRORS, "name" => name.to_owned()),
        }
    }

    #[cold]
    fn not_stored(&self, reason: NotStored) {
        metrics::counter!(STORES, "name" => self.name.clone(), "result" => reason.as_str())
            .increment(1);
    }

    #[cold]
    fn invalidated(&self, scope: &Invalidation) {
        let scope = match scope {
            Invalidation::Key(_) => "key",
            Invalidation::Prefix(_) => "prefix",
            _ => "all",
        };
        metrics::counter!(INVALIDATIONS, "name" => self.name.clone(), "scope" => scope)
            .increment(1);
    }
}

impl Listener<CacheEvent> for MetricsBridge {
    fn on_event(&self, event: &CacheEvent) {
        match event {
            CacheEvent::Hit { .. } => self.hit.increment(1),
            CacheEvent::Miss { .. } => self.miss.increment(1),
            CacheEvent::Coalesced { .. } => self.coalesced.increment(1),
            CacheEvent::StaleServed { .. } => self.stale.increment(1),
            CacheEvent::Revalidated { .. } => self.revalidated.increment(1),
            CacheEvent::Stored { .. } => self.stored.increment(1),
            CacheEvent::NotStored { reason, .. } => self.not_stored(*reason),
            CacheEvent::Evicted { .. } => self.evicted.increment(1),
            CacheEvent::Invalidated { scope, .. } => self.invalidated(scope),
            CacheEvent::StoreUnavailable { .. } => self.store_errors.increment(1),
            _ => {}
        }
    }
}
