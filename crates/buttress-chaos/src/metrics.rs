//! The bridge from [`ChaosEvent`]s to the [`metrics`] facade (feature
//! `metrics`), switched on by [`ChaosBuilder::metrics`] or a
//! [`Registry::with_metrics`] registry.
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `buttress_chaos_faults_total` | counter | `name`, `kind` = `error` / `latency` / `hang` / `aborted_body` / `truncated_body` | faults |
//!
//! The handles are resolved once, when the layer is built, against the
//! recorder installed then: install the recorder first.
//!
//! [`ChaosBuilder::metrics`]: crate::ChaosBuilder::metrics

use std::sync::Arc;

use buttress_core::{Listener, Listeners, Registry};
use metrics::Counter;

use crate::events::{ChaosEvent, FaultKind};

const FAULTS: &str = "buttress_chaos_faults_total";

/// Adds a bridge to `listeners` when asked for and a recorder is
/// installed.
pub(crate) fn attach(
    name: &str,
    on: bool,
    registry: Option<&Registry>,
    listeners: &mut Listeners<ChaosEvent>,
) {
    if buttress_core::bridge::should_attach(name, on, registry) {
        listeners.push(Arc::new(MetricsBridge::new(name)));
    }
}

/// One counter per fault kind, resolved at build time.
struct MetricsBridge {
    faults: [Counter; 5],
}

impl MetricsBridge {
    fn new(name: &str) -> Self {
        metrics::describe_counter!(FAULTS, "Faults injected by a chaos layer, by kind.");
        Self {
            faults: FaultKind::ALL.map(|kind| {
                metrics::counter!(FAULTS, "name" => name.to_owned(), "kind" => kind.as_str())
            }),
        }
    }
}

impl Listener<ChaosEvent> for MetricsBridge {
    fn on_event(&self, event: &ChaosEvent) {
        if let ChaosEvent::FaultInjected { kind, .. } = event {
            self.faults[kind.index()].increment(1);
        }
    }
}
