//! The bridge from [`RateLimitEvent`]s to the [`metrics`] facade (feature
//! `metrics`), switched on by `.metrics()` on the builders or a
//! [`Registry::with_metrics`] registry.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `buttress_rate_limit_decisions_total` | counter | `name`, `decision`, `reason`, `backend` |
//! | `buttress_rate_limit_wait_seconds` | histogram | `name` |
//!
//! `decision` is `permitted` (with `reason` = `none`) or `rejected` (with
//! the [`RejectReason`] in snake case); `backend` is the [`Backend`] in
//! snake case. The wait histogram has one sample per admitted call (0
//! when its permits were there at once). No queue gauge: the events tell
//! when a call joins the queue, not when it leaves.
//!
//! The handles are resolved once, when the layer is built, against the
//! recorder installed then (for every reason, and for the backends the
//! limiter can use): install the recorder first.

use std::sync::Arc;

use buttress_core::{Listener, Listeners, Registry};
use metrics::{Counter, Histogram, Unit};

use crate::events::{Backend, RateLimitEvent, RejectReason};

const DECISIONS: &str = "buttress_rate_limit_decisions_total";
const WAIT: &str = "buttress_rate_limit_wait_seconds";

const BACKENDS: [Backend; 4] = [
    Backend::Local,
    Backend::Redis,
    Backend::LocalFallback,
    Backend::OutagePolicy,
];

const REASONS: [RejectReason; 6] = [
    RejectReason::Exhausted,
    RejectReason::QueueFull,
    RejectReason::WaitTimedOut,
    RejectReason::OverCapacity,
    RejectReason::KeysFull,
    RejectReason::BackendUnavailable,
];

fn backend_index(backend: Backend) -> usize {
    match backend {
        Backend::Local => 0,
        Backend::Redis => 1,
        Backend::LocalFallback => 2,
        Backend::OutagePolicy => 3,
    }
}

fn reason_index(reason: RejectReason) -> usize {
    match reason {
        RejectReason::Exhausted => 0,
        RejectReason::QueueFull => 1,
        RejectReason::WaitTimedOut => 2,
        RejectReason::OverCapacity => 3,
        RejectReason::KeysFull => 4,
        RejectReason::BackendUnavailable => 5,
    }
}

/// Adds a bridge to `listeners` when `.metrics()` was called or the
/// registry has metrics on. `backends` are those the limiter decides with:
/// their series are resolved (and exported, at 0) from the start.
pub(crate) fn attach(
    name: &Arc<str>,
    on: bool,
    registry: Option<&Registry>,
    listeners: &mut Listeners<RateLimitEvent>,
    backends: &[Backend],
) {
    if buttress_core::bridge::should_attach(name, on, registry) {
        listeners.push(Arc::new(MetricsBridge::new(name, backends)));
    }
}

/// The counters of one backend: permitted, then one per reason.
struct PerBackend {
    permitted: Counter,
    rejected: [Counter; 6],
}

impl PerBackend {
    fn new(name: &str, backend: Backend) -> Self {
        let counter = |decision: &'static str, reason: &'static str| {
            metrics::counter!(
                DECISIONS,
                "name" => name.to_owned(),
                "decision" => decision,
                "reason" => reason,
                "backend" => backend.as_str()
            )
        };
        Self {
            permitted: counter("permitted", "none"),
            rejected: REASONS.map(|r| counter("rejected", r.as_str())),
        }
    }
}

/// Turns one limiter's events into metrics through handles resolved at
/// build time.
struct MetricsBridge {
    name: Arc<str>,
    /// By backend; `None` for a backend this limiter was not expected to
    /// use (resolved per event then, which never happens as built).
    backends: [Option<PerBackend>; 4],
    wait: Histogram,
}

impl MetricsBridge {
    fn new(name: &Arc<str>, backends: &[Backend]) -> Self {
        metrics::describe_counter!(DECISIONS, "Decisions of a rate limiter.");
        metrics::describe_histogram!(
            WAIT,
            Unit::Seconds,
            "How long admitted calls waited for their permits."
        );
        Self {
            name: name.clone(),
            backends: BACKENDS.map(|b| backends.contains(&b).then(|| PerBackend::new(name, b))),
            wait: metrics::histogram!(WAIT, "name" => name.to_string()),
        }
    }

    fn count(&self, backend: Backend, pick: impl Fn(&PerBackend) -> &Counter) {
        match &self.backends[backend_index(backend)] {
            Some(b) => pick(b).increment(1),
            None => pick(&PerBackend::new(&self.name, backend)).increment(1),
        }
    }
}

impl Listener<RateLimitEvent> for MetricsBridge {
    fn on_event(&self, event: &RateLimitEvent) {
        match event {
            RateLimitEvent::Permitted {
                waited, backend, ..
            } => {
                self.count(*backend, |b| &b.permitted);
                self.wait.record(waited.as_secs_f64());
            }
            RateLimitEvent::Rejected {
                reason, backend, ..
            } => {
                let i = reason_index(*reason);
                self.count(*backend, |b| &b.rejected[i]);
            }
            RateLimitEvent::Queued { .. } => {}
        }
    }
}
