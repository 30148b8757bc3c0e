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
//! # The outbox relay
//!
//! An outbox [`Relay`] publishes its own series when [`Relay::metrics`] is
//! called, labelled `name` = its [`name`](crate::outbox::Relay::name) (`"outbox"` unless
//! set), resolved when `metrics` (or a later `name`) is called:
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `buttress_outbox_messages_total` | counter | `name`, `outcome` = `published` / `deferred` | messages |
//! | `buttress_outbox_publish_failures_total` | counter | `name`, `kind` | failed publisher calls |
//! | `buttress_outbox_retries_total` | counter | `name` | publisher calls after a failed one |
//! | `buttress_outbox_store_errors_total` | counter | `name` | failed batches and backlog reads |
//! | `buttress_outbox_publish_duration_seconds` | histogram | `name` | seconds per publisher call, failed or not |
//! | `buttress_outbox_pending_messages` | gauge | `name` | unpublished messages in the outbox |
//! | `buttress_outbox_oldest_pending_age_seconds` | gauge | `name` | seconds since the first unpublished message was written |
//!
//! `published` counts messages published and marked; `deferred` a message
//! whose every try failed, so that its key waits for a later batch (which
//! publishes it again). `kind` is the buttress rejection the publisher
//! returned (`timeout`, `circuit_open`, `bulkhead_full`, `rate_limited`,
//! `retry_exhausted`, `key_missing`, `rejected`) or `error` for any other
//! error; every failed call is counted, retried or not. A store error is a
//! [`Relay::run_once`] that returned an error (claim, read, mark or release
//! failed, a lost lease included) or a failed read of the backlog.
//!
//! The two gauges are set after each batch from
//! [`OutboxStore::backlog`](crate::outbox::OutboxStore::backlog): the whole
//! outbox, every key, so replicas of one relay report the same value (take
//! their max, not their sum); the age is 0 when nothing is pending.
//!
//! [`SagaBuilder::metrics`]: crate::SagaBuilder::metrics
//! [`Relay`]: crate::outbox::Relay
//! [`Relay::metrics`]: crate::outbox::Relay::metrics
//! [`Relay::run_once`]: crate::outbox::Relay::run_once

use std::collections::HashMap;
use std::time::Duration;

use buttress_core::Listener;
use metrics::{Counter, Gauge, Histogram, Unit};

use crate::outbox::{Backlog, FAILURE_KINDS};
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

const MESSAGES: &str = "buttress_outbox_messages_total";
const FAILURES: &str = "buttress_outbox_publish_failures_total";
const RETRIES: &str = "buttress_outbox_retries_total";
const STORE_ERRORS: &str = "buttress_outbox_store_errors_total";
const PUBLISH_DURATION: &str = "buttress_outbox_publish_duration_seconds";
const PENDING: &str = "buttress_outbox_pending_messages";
const OLDEST_AGE: &str = "buttress_outbox_oldest_pending_age_seconds";

/// One outbox relay's series, resolved when metrics are switched on.
pub(crate) struct RelayMetrics {
    published: Counter,
    deferred: Counter,
    failures: [Counter; FAILURE_KINDS.len()],
    retries: Counter,
    store_errors: Counter,
    duration: Histogram,
    pending: Gauge,
    oldest_age: Gauge,
}

impl RelayMetrics {
    /// The handles for relay `name`, if a recorder is installed
    /// ([`should_attach`](buttress_core::bridge::should_attach)).
    pub(crate) fn attach(name: &str) -> Option<Self> {
        if !buttress_core::bridge::should_attach(name, true, None) {
            return None;
        }
        metrics::describe_counter!(MESSAGES, Unit::Count, "Outbox messages by outcome");
        metrics::describe_counter!(
            FAILURES,
            Unit::Count,
            "Failed outbox publisher calls by kind"
        );
        metrics::describe_counter!(
            RETRIES,
            Unit::Count,
            "Outbox publisher calls after a failed one"
        );
        metrics::describe_counter!(
            STORE_ERRORS,
            Unit::Count,
            "Outbox relay batches and backlog reads the store failed"
        );
        metrics::describe_histogram!(
            PUBLISH_DURATION,
            Unit::Seconds,
            "Outbox publisher call duration"
        );
        metrics::describe_gauge!(PENDING, Unit::Count, "Unpublished outbox messages");
        metrics::describe_gauge!(
            OLDEST_AGE,
            Unit::Seconds,
            "Age of the first unpublished outbox message"
        );
        let name = name.to_owned();
        let messages = |outcome: &'static str| metrics::counter!(MESSAGES, "name" => name.clone(), "outcome" => outcome);
        Some(Self {
            published: messages("published"),
            deferred: messages("deferred"),
            failures: FAILURE_KINDS
                .map(|kind| metrics::counter!(FAILURES, "name" => name.clone(), "kind" => kind)),
            retries: metrics::counter!(RETRIES, "name" => name.clone()),
            store_errors: metrics::counter!(STORE_ERRORS, "name" => name.clone()),
            duration: metrics::histogram!(PUBLISH_DURATION, "name" => name.clone()),
            pending: metrics::gauge!(PENDING, "name" => name.clone()),
            oldest_age: metrics::gauge!(OLDEST_AGE, "name" => name),
        })
    }

    pub(crate) fn published(&self) {
        self.published.increment(1);
    }

    pub(crate) fn deferred(&self) {
        self.deferred.increment(1);
    }

    /// A failed publisher call, `kind` an index in [`FAILURE_KINDS`].
    pub(crate) fn failed(&self, kind: usize) {
        self.failures[kind].increment(1);
    }

    pub(crate) fn retried(&self) {
        self.retries.increment(1);
    }

    pub(crate) fn store_error(&self) {
        self.store_errors.increment(1);
    }

    pub(crate) fn publish_duration(&self, duration: Duration) {
        self.duration.record(duration.as_secs_f64());
    }

    pub(crate) fn backlog(&self, backlog: &Backlog) {
        self.pending.set(backlog.messages as f64);
        self.oldest_age
            .set(backlog.oldest_age.unwrap_or_default().as_secs_f64());
    }
}
