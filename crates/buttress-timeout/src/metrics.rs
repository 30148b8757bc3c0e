//! The bridge from [`TimeoutEvent`]s to the [`metrics`] facade (feature
//! `metrics`), switched on by [`TimeoutBuilder::metrics`] or a
//! [`Registry::with_metrics`] registry.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `buttress_timeout_calls_total` | counter | `name`, `kind` = `timed_out` |
//!
//! Only time-outs are counted: a call that completes in time sends no
//! event (the happy path stays free of them), so successful and failed
//! calls are left to the request metrics of `buttress-metrics`.
//!
//! The handle is resolved once, when the layer is built, against the
//! recorder installed then: install the recorder first.
//!
//! [`TimeoutBuilder::metrics`]: crate::TimeoutBuilder::metrics

use std::sync::Arc;

use buttress_core::{Listener, Listeners, Registry};
use metrics::Counter;

use crate::events::TimeoutEvent;

const CALLS: &str = "buttress_timeout_calls_total";

/// Adds a bridge to `listeners` when `.metrics()` was called or the
/// registry has metrics on.
pub(crate) fn attach(
    name: &str,
    on: bool,
    registry: Option<&Registry>,
    listeners: &mut Listeners<TimeoutEvent>,
) {
    if buttress_core::bridge::should_attach(name, on, registry) {
        metrics::describe_counter!(CALLS, "Calls a timeout layer ended, by kind.");
        listeners.push(Arc::new(MetricsBridge {
            timed_out: metrics::counter!(CALLS, "name" => name.to_owned(), "kind" => "timed_out"),
        }));
    }
}

/// Turns one layer's events into metrics through a handle resolved at
/// build time.
struct MetricsBridge {
    timed_out: Counter,
}

impl Listener<TimeoutEvent> for MetricsBridge {
    fn on_event(&self, event: &TimeoutEvent) {
        match event {
            TimeoutEvent::TimedOut { .. } => self.timed_out.increment(1),
        }
    }
}
