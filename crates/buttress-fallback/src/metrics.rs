//! The bridge from [`FallbackEvent`]s to the [`metrics`] facade (feature
//! `metrics`), switched on by [`FallbackBuilder::metrics`] or a
//! [`Registry::with_metrics`] registry.
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `buttress_fallback_calls_total` | counter | `name`, `kind` = `primary` / `fallback_used` / `fallback_failed` | calls |
//!
//! Every handle is resolved once, when the layer is built, against the
//! recorder installed then (global, or local to the thread): install the
//! recorder first. A call then costs the recorder's atomic add.
//!
//! [`FallbackBuilder::metrics`]: crate::FallbackBuilder::metrics

use std::sync::Arc;

use buttress_core::{Listener, Listeners, Registry};
use metrics::Counter;

use crate::events::FallbackEvent;

const CALLS: &str = "buttress_fallback_calls_total";

/// Adds a bridge to `listeners` when asked for and a recorder is installed
/// ([`should_attach`](buttress_core::bridge::should_attach)).
pub(crate) fn attach(
    name: &str,
    on: bool,
    registry: Option<&Registry>,
    listeners: &mut Listeners<FallbackEvent>,
) {
    if buttress_core::bridge::should_attach(name, on, registry) {
        listeners.push(Arc::new(MetricsBridge::new(name)));
    }
}

/// Turns one layer's events into metrics through handles resolved at build
/// time.
struct MetricsBridge {
    primary: Counter,
    used: Counter,
    failed: Counter,
}

impl MetricsBridge {
    fn new(name: &str) -> Self {
        metrics::describe_counter!(
            CALLS,
            "Calls through a fallback layer: answered by the primary, by the fallback, or failed in both."
        );
        let calls = |kind: &'static str| metrics::counter!(CALLS, "name" => name.to_owned(), "kind" => kind);
        Self {
            primary: calls("primary"),
            used: calls("fallback_used"),
            failed: calls("fallback_failed"),
        }
    }
}

impl Listener<FallbackEvent> for MetricsBridge {
    fn on_event(&self, event: &FallbackEvent) {
        match event {
            FallbackEvent::Primary { .. } => self.primary.increment(1),
            FallbackEvent::Used { .. } => self.used.increment(1),
            FallbackEvent::Failed { .. } => self.failed.increment(1),
        }
    }
}
