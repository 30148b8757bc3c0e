//! The reports: [`HealthReport`], [`CheckReport`], and their JSON.

use std::time::{Duration, SystemTime};

use crate::status::Status;
use crate::summary::Summary;

/// Which probe a report answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// Does the process work? Only [`Check::liveness`](crate::Check::liveness)
    /// checks; never fails because a dependency is down.
    Liveness,
    /// Should it get traffic? Every check, and not-serving once shutdown
    /// started.
    Readiness,
    /// Has the app finished starting? The startup checks (see
    /// [`Check::startup`](crate::Check::startup)) and the manual gate, if
    /// any; once started, ok for the life of the registry (see
    /// [`HealthRegistry::startup`](crate::HealthRegistry::startup)).
    Startup,
}

impl Probe {
    /// `"liveness"`, `"readiness"` or `"startup"`, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Liveness => "liveness",
            Probe::Readiness => "readiness",
            Probe::Startup => "startup",
        }
    }
}

/// The last result of one check, as a probe reports it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The check's name.
    pub name: String,
    /// Its status.
    pub status: Status,
    /// Whether its being unhealthy makes the probe unhealthy.
    pub critical: bool,
    /// Why it is not healthy, or what it said.
    pub message: Option<String>,
    /// What the check added (a JSON object).
    pub details: serde_json::Map<String, serde_json::Value>,
    /// How long its last run took, retries included.
    pub duration: Duration,
    /// Attempts of the last run (0 when skipped).
    pub attempts: u32,
    /// `true` when the last run did not call the check because a
    /// dependency was unhealthy.
    pub skipped: bool,
    /// The checks it depends on.
    pub depends_on: Vec<String>,
    /// How old the result is.
    pub age: Duration,
    /// How long the status has been what it is.
    pub since_change: Duration,
    /// Wall-clock time of the last run (`None`: never ran).
    pub checked_at: Option<SystemTime>,
    /// Wall-clock time the status last changed (`None`: never ran).
    pub last_change: Option<SystemTime>,
}

/// The answer of a probe: the aggregate status, every check in dependency
/// order, and the summary of the core registry.
///
/// # The JSON shape (stable)
///
/// [`to_json`](HealthReport::to_json) gives, and the HTTP endpoint serves,
/// this shape. Within a major version keys are only ever added, never
/// renamed, removed or retyped:
///
/// ```json
/// {
///   "status": "healthy" | "degraded" | "unhealthy",
///   "probe": "readiness" | "liveness" | "startup",
///   "shutting_down": false,
///   "started": true,
///   "checks": [
///     {
///       "name": "db",
///       "status": "healthy" | "degraded" | "unhealthy",
///       "critical": true,
///       "message": "connection refused" | null,
///       "details": { },
///       "duration_ms": 1.25,
///       "attempts": 1,
///       "skipped": false,
///       "depends_on": ["network"],
///       "age_ms": 820.0,
///       "since_change_ms": 60000.0,
///       "checked_at": "2026-12-01T18:00:00.123456789Z" | null,
///       "last_change": "2026-12-01T17:59:00.000000000Z" | null
///     }
///   ],
///   "circuit_breakers": { "total": 2, "by_state": { "closed": 1, "open": 1 } },
///   "bulkheads": [
///     { "name": "db-pool", "active": 8, "max_concurrent": 10, "queued": 0, "utilization": 0.8 }
///   ],
///   "rate_limiters": [
///     { "name": "api", "burst": 100, "available": 4, "saturation": 0.96 }
///   ],
///   "issues": ["circuit breaker `payments` is open", "check `db` is unhealthy: connection refused"]
/// }
/// ```
///
/// `checks` is in dependency order (a check after the ones it depends
/// on). Durations are milliseconds as numbers. `circuit_breakers`,
/// `bulkheads` and `rate_limiters` describe the core registry given to
/// [`components`](crate::HealthRegistryBuilder::components) (empty without
/// one, and in liveness reports); keyed breakers count once per key.
/// `issues` lists in words what is not healthy: checks, open or half-open
/// breakers, shutdown, a startup gate still closed. `started` says whether
/// startup has completed (in every probe's report). A startup report lists
/// the startup checks until startup completes, and no checks after (it no
/// longer runs them).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The probe answered.
    pub probe: Probe,
    /// The aggregate status (unhealthy while shutting down, for readiness).
    pub status: Status,
    /// Readiness only: shutdown started.
    pub shutting_down: bool,
    /// Startup has completed (see
    /// [`HealthRegistry::startup`](crate::HealthRegistry::startup)).
    pub started: bool,
    /// Every check of the probe, in dependency order.
    pub checks: Vec<CheckReport>,
    /// Breakers, bulkheads, rate limiters and issues.
    pub summary: Summary,
}

impl HealthReport {
    /// `false` when the probe fails: unhealthy (or shutting down).
    pub fn is_ok(&self) -> bool {
        self.status != Status::Unhealthy
    }

    /// 200 when [`is_ok`](HealthReport::is_ok), 503 otherwise.
    pub fn http_status(&self) -> http::StatusCode {
        if self.is_ok() {
            http::StatusCode::OK
        } else {
            http::StatusCode::SERVICE_UNAVAILABLE
        }
    }

    /// The check `name`.
    pub fn check(&self, name: &str) -> Option<&CheckReport> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The report in its stable JSON shape (see the type's docs).
    pub fn to_json(&self) -> serde_json::Value {
        let checks: Vec<serde_json::Value> = self.checks.iter().map(check_json).collect();
        let mut v = serde_json::json!({
            "status": self.status.as_str(),
            "probe": self.probe.as_str(),
            "shutting_down": self.shutting_down,
            "started": self.started,
            "checks": checks,
        });
        if let serde_json::Value::Object(map) = &mut v {
            if let serde_json::Value::Object(summary) = self.summary.to_json() {
                map.extend(summary);
            }
        }
        v
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rfc3339(t: Option<SystemTime>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| {
        humantime::format_rfc3339_nanos(t).to_string().into()
    })
}

fn check_json(c: &CheckReport) -> serde_json::Value {
    serde_json::json!({
        "name": c.name,
        "status": c.status.as_str(),
        "critical": c.critical,
        "message": c.message,
        "details": c.details,
        "duration_ms": ms(c.duration),
        "attempts": c.attempts,
        "skipped": c.skipped,
        "depends_on": c.depends_on,
        "age_ms": ms(c.age),
        "since_change_ms": ms(c.since_change),
        "checked_at": rfc3339(c.checked_at),
        "last_change": rfc3339(c.last_change),
    })
}

/// The aggregate of some check results: unhealthy if a critical check is
/// unhealthy; else degraded if any check is degraded or a non-critical one
/// unhealthy; else healthy (also when there are none).
///
/// ```
/// use buttress_health::{aggregate, Status};
///
/// assert_eq!(aggregate([]), Status::Healthy);
/// assert_eq!(aggregate([(Status::Healthy, true), (Status::Degraded, true)]), Status::Degraded);
/// assert_eq!(aggregate([(Status::Unhealthy, false)]), Status::Degraded);
/// assert_eq!(aggregate([(Status::Unhealthy, true), (Status::Healthy, false)]), Status::Unhealthy);
/// ```
pub fn aggregate(checks: impl IntoIterator<Item = (Status, bool)>) -> Status {
    checks
        .into_iter()
        .map(|(status, critical)| match status {
            Status::Unhealthy if !critical => Status::Degraded,
            s => s,
        })
        .max()
        .unwrap_or(Status::Healthy)
}

pub(crate) fn aggregate_reports(checks: &[CheckReport]) -> Status {
    aggregate(checks.iter().map(|c| (c.status, c.critical)))
}
