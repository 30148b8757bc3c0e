//! The `metrics` bridge (feature `metrics`).

use std::time::Duration;

use crate::Status;

/// The series of one check, resolved once at registration.
pub(crate) struct CheckMetrics {
    status: metrics::Gauge,
    duration: metrics::Histogram,
}

impl CheckMetrics {
    pub(crate) fn new(check: &str) -> Self {
        Self {
            status: metrics::gauge!("buttress_health_status", "check" => check.to_owned()),
            duration: metrics::histogram!(
                "buttress_health_check_duration_seconds",
                "check" => check.to_owned()
            ),
        }
    }

    pub(crate) fn record(&self, status: Status, duration: Duration) {
        self.status.set(status.gauge());
        self.duration.record(duration.as_secs_f64());
    }
}

/// `buttress_health_ready`: 1 when the last readiness report was ok.
pub(crate) fn ready_gauge() -> metrics::Gauge {
    metrics::gauge!("buttress_health_ready")
}

/// `buttress_health_started`: 0 until startup completes, then 1.
pub(crate) fn started_gauge() -> metrics::Gauge {
    metrics::gauge!("buttress_health_started")
}
