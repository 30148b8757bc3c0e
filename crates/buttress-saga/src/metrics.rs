//! The bridge from [`SagaEvent`]s to the [`metrics`] facade (feature
//! `metrics`), switched on by [`SagaBuilder::metrics`] or a
//! [`Registry::with_metrics`](buttress_core::Registry::with_metrics) registry.
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `buttress_saga_sagas_total` | counter | `name`, `outcome` = `started` / `completed` / `compensated` / `needs_attention` | sagas |
//! | `buttress_saga_steps_total` | counter | `name`, `step`, `kind` = `action` / `compensation`, `outcome` = `succeeded` / `failed` | steps |
//! | `buttress_saga_step_duration_seconds` | histogram | `name`, `step`, `kind` | seconds from the first try to the outcome |
//! | `buttress_saga_step_attempts` | histogram | `name`, `step`, `kind` | tries |
//!
//! Handles are resolved once, when the saga is built, against the recorder
//! installed then: install the recorder first.
//!
//! [`SagaBuilder::metrics`]: crate::SagaBuilder::metrics

use std::collections::HashMap;

use buttress_core::Listener;
use metrics::{Counter, Histogram, Unit};

use crate::saga::SagaEvent;
use crate::state::Kind;

const SAGAS: &str = "buttress_saga_sagas_total";
const STEPS: &str = "buttress_saga_steps_total";
const DURATION: &str = "buttress_saga_step_duration_seconds";
const ATTEMPTS: &str = "buttress_saga_step_attempts";

struct StepHandles {
    succeeded: Counter,
    failed: Counter,
    duration: Histogram,
    attempts: Histogram,
}

/// Turns one saga definition's events into metrics.
pub(crate) struct MetricsBridge {
    started: Counter,
    completed: Counter,
    compensated: Counter,
    needs_attention: Counter,
    steps: HashMap<(&'static str, Kind), StepHandles>,
}

impl MetricsBridge {
    pub(crate) fn new(name: &'static str, steps: &[(&'static str, bool)]) -> Self {
        metrics::describe_counter!(SAGAS, Unit::Count, "Sagas by outcome");
        metrics::describe_counter!(STEPS, Unit::Count, "Saga steps by kind and outcome");
        metrics::describe_histogram!(DURATION, Unit::Seconds, "Saga step duration, all tries");
        metrics::describe_histogram!(ATTEMPTS, Unit::Count, "Saga step tries");
        let saga =
            |outcome: &'static str| metrics::counter!(SAGAS, "name" => name, "outcome" => outcome);
        let mut handles = HashMap::new();
        for (step, compensable) in steps {
            let kinds: &[Kind] = if *compensable {
                &[Kind::Action, Kind::Compensation]
            } else {
                &[Kind::Action]
            };
            for kind in kinds {
                let k = kind.as_str();
                let counter = |outcome: &'static str| metrics::counter!(STEPS, "name" => name, "step" => *step, "kind" => k, "outcome" => outcome);
                handles.insert(
                    (*step, *kind),
                    StepHandles {
                        succeeded: counter("succeeded"),
                        failed: counter("failed"),
                        duration: metrics::histogram!(DURATION, "name" => name, "step" => *step, "kind" => k),
                        attempts: metrics::histogram!(ATTEMPTS, "name" => name, "step" => *step, "kind" => k),
                    },
                );
            }
        }
        Self {
            started: saga("started"),
            completed: saga("completed"),
            compensated: saga("compensated"),
            needs_attention: saga("needs_attention"),
            steps: handles,
        }
    }
}

impl Listener<SagaEvent> for MetricsBridge {
    fn on_event(&self, event: &SagaEvent) {
        match event {
            SagaEvent::Started { .. } => self.started.increment(1),
            SagaEvent::Completed { .. } => self.completed.increment(1),
            SagaEvent::Compensated { .. } => self.compensated.increment(1),
            SagaEvent::NeedsAttention { .. } => self.needs_attention.increment(1),
            SagaEvent::StepSucceeded {
                step,
                kind,
                attempts,
                duration,
                ..
            }
            | SagaEvent::StepFailed {
                step,
                kind,
                attempts,
                duration,
                ..
            } => {
                if let Some(h) = self.steps.get(&(*step, *kind)) {
                    if matches!(event, SagaEvent::StepSucceeded { .. }) {
                        h.succeeded.increment(1);
                    } else {
                        h.failed.increment(1);
                    }
                    h.duration.record(duration.as_secs_f64());
                    h.attempts.record(f64::from(*attempts));
                }
            }
        }
    }
}
