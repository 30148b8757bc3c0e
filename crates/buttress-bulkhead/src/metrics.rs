//! The bridge from [`BulkheadEvent`]s to the [`metrics`] facade (feature
//! `metrics`), switched on by [`BulkheadBuilder::metrics`] or a
//! [`Registry::with_metrics`] registry.
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `buttress_bulkhead_calls_total` | counter | `name`, `kind` = `permitted` / `rejected` / `finished` | calls |
//! | `buttress_bulkhead_call_duration_seconds` | histogram | `name` | seconds a permit was held |
//! | `buttress_bulkhead_available_permits` | gauge | `name` | permits (unkeyed only) |
//! | `buttress_bulkhead_queue_depth` | gauge | `name` | callers waiting (unkeyed only) |
//!
//! Every handle is resolved once, when the layer is built, against the
//! recorder installed then (global, or local to the thread): install the
//! recorder first. A call then costs the recorder's atomic adds.
//!
//! [`BulkheadBuilder::metrics`]: crate::BulkheadBuilder::metrics

use std::sync::{Arc, Mutex, OnceLock, Weak};

use buttress_core::{Listener, Listeners, Registry};
use metrics::{Counter, Gauge, Histogram, Unit};

use crate::events::BulkheadEvent;
use crate::state::Shared;

const CALLS: &str = "buttress_bulkhead_calls_total";
const DURATION: &str = "buttress_bulkhead_call_duration_seconds";
const AVAILABLE: &str = "buttress_bulkhead_available_permits";
const QUEUE: &str = "buttress_bulkhead_queue_depth";

/// Adds a bridge to `listeners` when asked for and a recorder is installed
/// ([`should_attach`](buttress_core::bridge::should_attach)); returns it, so that an
/// unkeyed bulkhead can hand it its state for the gauges.
pub(crate) fn attach(
    name: &str,
    on: bool,
    registry: Option<&Registry>,
    listeners: &mut Listeners<BulkheadEvent>,
    gauges: bool,
) -> Option<Arc<MetricsBridge>> {
    if !buttress_core::bridge::should_attach(name, on, registry) {
        return None;
    }
    let bridge = Arc::new(MetricsBridge::new(name, gauges));
    listeners.push(bridge.clone());
    Some(bridge)
}

/// Turns one bulkhead's events into metrics through handles resolved at
/// build time.
pub(crate) struct MetricsBridge {
    permitted: Counter,
    rejected: Counter,
    finished: Counter,
    duration: Histogram,
    /// Available permits and queue depth: an unkeyed bulkhead's only (a
    /// keyed instance has one limit per key, which no single gauge shows).
    gauges: Option<(Gauge, Gauge)>,
    /// The bulkhead, read for the gauges after each event; weak, since the
    /// bulkhead holds the bridge among its listeners.
    source: OnceLock<Weak<Shared>>,
    /// Serialises the gauges' refreshes: each reads the bulkhead's state
    /// and sets both gauges under it, so the last refresh to run sets the
    /// latest state. Without it, a thread that read the state before
    /// another thread's release could set its older value last, and the
    /// gauges would stay wrong while the bulkhead is idle.
    refreshing: Mutex<()>,
}

impl MetricsBridge {
    fn new(name: &str, gauges: bool) -> Self {
        metrics::describe_counter!(
            CALLS,
            "Calls permitted, rejected and finished by a bulkhead."
        );
        metrics::describe_histogram!(
            DURATION,
            Unit::Seconds,
            "How long calls held a bulkhead permit."
        );
        let calls = |kind: &'static str| metrics::counter!(CALLS, "name" => name.to_owned(), "kind" => kind);
        let gauges = gauges.then(|| {
            metrics::describe_gauge!(AVAILABLE, "Permits a bulkhead has free now.");
            metrics::describe_gauge!(QUEUE, "Callers waiting in a bulkhead's queue now.");
            (
                metrics::gauge!(AVAILABLE, "name" => name.to_owned()),
                metrics::gauge!(QUEUE, "name" => name.to_owned()),
            )
        });
        Self {
            permitted: calls("permitted"),
            rejected: calls("rejected"),
            finished: calls("finished"),
            duration: metrics::histogram!(DURATION, "name" => name.to_owned()),
            gauges,
            source: OnceLock::new(),
            refreshing: Mutex::new(()),
        }
    }

    /// Gives the bridge the bulkhead it reads its gauges from, and sets
    /// them.
    pub(crate) fn watch(&self, shared: &Arc<Shared>) {
        let _ = self.source.set(Arc::downgrade(shared));
        self.refresh();
    }

    fn refresh(&self) {
        if let Some((available, queue)) = &self.gauges {
            if let Some(shared) = self.source.get().and_then(Weak::upgrade) {
                let _one_at_a_time = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
                let s = shared.snapshot();
                available.set(s.available as f64);
                queue.set(s.queued as f64);
            }
        }
    }
}

impl Listener<BulkheadEvent> for MetricsBridge {
    fn on_event(&self, event: &BulkheadEvent) {
        match event {
            BulkheadEvent::Permitted { .. } => self.permitted.increment(1),
            BulkheadEvent::Rejected { .. } => self.rejected.increment(1),
            BulkheadEvent::Finished { held, .. } => {
                self.finished.increment(1);
                self.duration.record(held.as_secs_f64());
            }
            BulkheadEvent::Queued { .. } => {}
        }
        self.refresh();
    }
}
