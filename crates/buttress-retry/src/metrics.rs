//! The bridge from [`RetryEvent`]s to the [`metrics`] facade (feature
//! `metrics`), switched on by [`RetryBuilder::metrics`] or a
//! [`Registry::with_metrics`] registry.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `buttress_retry_calls_total` | counter | `name`, `kind` |
//! | `buttress_retry_attempts_total` | counter | `name` |
//!
//! `kind` is one of `successful_without_retry`, `successful_with_retry`,
//! `failed_without_retry`, `failed_with_retry` and `exhausted` (every
//! allowed attempt failed; not counted again as `failed_*`): the kinds
//! are disjoint and add up to the completed calls. Attempts are the
//! completed calls plus the retries scheduled.
//!
//! The handles are resolved once, when the layer is built, against the
//! recorder installed then: install the recorder first.
//!
//! [`RetryBuilder::metrics`]: crate::RetryBuilder::metrics

use std::sync::Arc;

use buttress_core::{Listener, Listeners, Registry};
use metrics::Counter;

use crate::events::RetryEvent;

const CALLS: &str = "buttress_retry_calls_total";
const ATTEMPTS: &str = "buttress_retry_attempts_total";

/// Adds a bridge to `listeners` when `.metrics()` was called or the
/// registry has metrics on.
pub(crate) fn attach(
    name: &str,
    on: bool,
    registry: Option<&Registry>,
    listeners: &mut Listeners<RetryEvent>,
) {
    if buttress_core::bridge::should_attach(name, on, registry) {
        listeners.push(Arc::new(MetricsBridge::new(name)));
    }
}

/// Turns one layer's events into metrics through handles resolved at
/// build time.
struct MetricsBridge {
    successful_without_retry: Counter,
    successful_with_retry: Counter,
    failed_without_retry: Counter,
    failed_with_retry: Counter,
    exhausted: Counter,
    attempts: Counter,
}

impl MetricsBridge {
    fn new(name: &str) -> Self {
        metrics::describe_counter!(CALLS, "Calls a retry layer completed, by kind.");
        metrics::describe_counter!(
            ATTEMPTS,
            "Attempts of a retry layer: completed calls plus retries scheduled."
        );
        let calls = |kind: &'static str| metrics::counter!(CALLS, "name" => name.to_owned(), "kind" => kind);
        Self {
            successful_without_retry: calls("successful_without_retry"),
            successful_with_retry: calls("successful_with_retry"),
            failed_without_retry: calls("failed_without_retry"),
            failed_with_retry: calls("failed_with_retry"),
            exhausted: calls("exhausted"),
            attempts: metrics::counter!(ATTEMPTS, "name" => name.to_owned()),
        }
    }
}

impl Listener<RetryEvent> for MetricsBridge {
    fn on_event(&self, event: &RetryEvent) {
        match event {
            RetryEvent::Scheduled { .. } => self.attempts.increment(1),
            RetryEvent::Finished {
                succeeded,
                retried,
                exhausted,
                ..
            } => {
                self.attempts.increment(1);
                let counter = match (succeeded, retried) {
                    (true, false) => &self.successful_without_retry,
                    (true, true) => &self.successful_with_retry,
                    (false, _) if *exhausted => &self.exhausted,
                    (false, false) => &self.failed_without_retry,
                    (false, true) => &self.failed_with_retry,
                };
                counter.increment(1);
            }
            RetryEvent::Succeeded { .. }
            | RetryEvent::Exhausted { .. }
            | RetryEvent::BudgetExhausted { .. }
            | RetryEvent::NotRetried { .. } => {}
        }
    }
}
