//! What a check says: [`Status`] and [`CheckResult`].

use std::fmt;

/// The health of one check, or of a whole probe.
///
/// Ordered from best to worst, so the worst of several is their `max`.
///
/// ```
/// use buttress_health::Status;
///
/// assert!(Status::Healthy < Status::Degraded && Status::Degraded < Status::Unhealthy);
/// assert_eq!(Status::Degraded.as_str(), "degraded");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Works as it should.
    Healthy,
    /// Works, with reduced capacity or quality (a non-critical dependency is
    /// down, a bulkhead is nearly full): still gets traffic.
    Degraded,
    /// Does not work: a readiness probe with a critical unhealthy check
    /// answers 503.
    Unhealthy,
}

impl Status {
    /// `"healthy"`, `"degraded"` or `"unhealthy"`, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }

    /// The value of the `buttress_health_status` gauge: 1 healthy, 0.5
    /// degraded, 0 unhealthy.
    pub fn gauge(self) -> f64 {
        match self {
            Status::Healthy => 1.0,
            Status::Degraded => 0.5,
            Status::Unhealthy => 0.0,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one run of a check returns: a status, an optional message and
/// details (a JSON object, shown as is in the report).
///
/// ```
/// use buttress_health::{CheckResult, Status};
///
/// let r = CheckResult::degraded("replica lag 4s").with_detail("lag_ms", 4000);
/// assert_eq!(r.status(), Status::Degraded);
/// assert_eq!(r.message(), Some("replica lag 4s"));
/// assert_eq!(r.details()["lag_ms"], 4000);
///
/// // `Result`s convert: `Ok` is healthy, `Err` unhealthy with its message.
/// let r: CheckResult = Err::<(), _>("connection refused").into();
/// assert_eq!(r.status(), Status::Unhealthy);
/// assert_eq!(r.message(), Some("connection refused"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    status: Status,
    message: Option<String>,
    details: serde_json::Map<String, serde_json::Value>,
}

impl CheckResult {
    /// Healthy, no message.
    pub fn healthy() -> Self {
        Self::new(Status::Healthy, None)
    }

    /// Degraded, with a reason.
    pub fn degraded(message: impl Into<String>) -> Self {
        Self::new(Status::Degraded, Some(message.into()))
    }

    /// Unhealthy, with a reason.
    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self::new(Status::Unhealthy, Some(message.into()))
    }

    /// A result of any status.
    pub fn new(status: Status, message: Option<String>) -> Self {
        Self {
            status,
            message,
            details: serde_json::Map::new(),
        }
    }

    /// Adds a detail (builder style).
    pub fn with_detail(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// Sets the message (builder style).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The message, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The details.
    pub fn details(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.details
    }

    pub(crate) fn into_parts(
        self,
    ) -> (
        Status,
        Option<String>,
        serde_json::Map<String, serde_json::Value>,
    ) {
        (self.status, self.message, self.details)
    }
}

impl From<Status> for CheckResult {
    fn from(status: Status) -> Self {
        Self::new(status, None)
    }
}

impl<T, E: fmt::Display> From<Result<T, E>> for CheckResult {
    fn from(r: Result<T, E>) -> Self {
        match r {
            Ok(_) => Self::healthy(),
            Err(e) => Self::unhealthy(e.to_string()),
        }
    }
}
