//! Checks that read the core [`Registry`]: open circuit breakers, bulkhead
//! utilisation, rate limiter saturation.

use std::collections::BTreeSet;

use buttress_core::{ConfigError, Registry};

use crate::check::{CheckFuture, HealthCheck};
use crate::status::CheckResult;
use crate::summary::{breakers, bulkheads, rate_limiters, BreakerState, OPEN_STATES};
use crate::KIND;

/// Open circuit breakers of a core [`Registry`].
///
/// A breaker open (or forced open) makes the check degraded, or unhealthy
/// when the breaker is critical ([`critical`](BreakersCheck::critical),
/// [`all_critical`](BreakersCheck::all_critical)). Half-open breakers are
/// healthy here: a half-open breaker needs calls to close, and a readiness
/// probe that took the instance out of the load balancer would starve it
/// (only listed in the details and the report's issues). Keyed breakers
/// with open keys make it degraded: one upstream host down is not the
/// whole service down. The details list the breakers by state.
///
/// ```
/// use buttress_core::Registry;
/// use buttress_health::{BreakersCheck, Check};
///
/// let components = Registry::new();
/// let check = Check::new("breakers", BreakersCheck::new(&components).critical(["payments"]));
/// # drop(check);
/// ```
#[derive(Debug, Clone)]
pub struct BreakersCheck {
    registry: Registry,
    critical: BTreeSet<String>,
    all_critical: bool,
}

impl BreakersCheck {
    /// Watches every breaker of `registry`, none critical.
    pub fn new(registry: &Registry) -> Self {
        Self {
            registry: registry.clone(),
            critical: BTreeSet::new(),
            all_critical: false,
        }
    }

    /// The breakers (by name) whose opening makes the check unhealthy.
    pub fn critical<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.critical.extend(names.into_iter().map(Into::into));
        self
    }

    /// Every unkeyed breaker is critical.
    pub fn all_critical(mut self) -> Self {
        self.all_critical = true;
        self
    }

    fn evaluate(&self) -> CheckResult {
        let mut open_critical = Vec::new();
        let mut open = Vec::new();
        let mut half_open = Vec::new();
        let mut keyed_open = Vec::new();
        for (name, state) in breakers(&self.registry) {
            match state {
                BreakerState::Single(s) if OPEN_STATES.contains(&s.as_str()) => {
                    if self.all_critical || self.critical.contains(&name) {
                        open_critical.push(name);
                    } else {
                        open.push(name);
                    }
                }
                BreakerState::Single(s) if s == "half_open" => half_open.push(name),
                BreakerState::Single(_) => {}
                BreakerState::Keyed(states) => {
                    let n: u64 = OPEN_STATES
                        .iter()
                        .filter_map(|s| states.get(*s))
                        .fold(0, |a, b| a.saturating_add(*b));
                    if n > 0 {
                        keyed_open.push(serde_json::json!({ "name": name, "open_keys": n }));
                    }
                }
            }
        }
        let mut all_open = open_critical.clone();
        all_open.extend(open.iter().cloned());
        let result = if !open_critical.is_empty() {
            CheckResult::unhealthy(format!(
                "critical circuit breaker(s) open: {}",
                open_critical.join(", ")
            ))
        } else if !open.is_empty() || !keyed_open.is_empty() {
            let mut names = open.clone();
            names.extend(
                keyed_open
                    .iter()
                    .filter_map(|k| k["name"].as_str().map(str::to_owned)),
            );
            CheckResult::degraded(format!("circuit breaker(s) open: {}", names.join(", ")))
        } else {
            CheckResult::healthy()
        };
        result
            .with_detail("open", all_open)
            .with_detail("half_open", half_open)
            .with_detail("keyed_open", keyed_open)
    }
}

impl HealthCheck for BreakersCheck {
    fn check(&self) -> CheckFuture {
        let r = self.evaluate();
        Box::pin(async move { r })
    }
}

fn threshold(field: &'static str, t: f64) -> Result<f64, ConfigError> {
    if t.is_finite() && t > 0.0 && t <= 1.0 {
        Ok(t)
    } else {
        Err(ConfigError::new(
            KIND,
            field,
            format!("must be a number in (0, 1], got {t}"),
        ))
    }
}

/// Bulkheads of a core [`Registry`] whose utilisation (`active /
/// max_concurrent`) is at or over a threshold: degraded, the details list
/// them.
///
/// ```
/// use buttress_core::Registry;
/// use buttress_health::BulkheadsCheck;
///
/// let components = Registry::new();
/// assert!(BulkheadsCheck::new(&components, 0.9).is_ok());
/// assert_eq!(BulkheadsCheck::new(&components, f64::NAN).unwrap_err().field(), "utilization_threshold");
/// ```
#[derive(Debug, Clone)]
pub struct BulkheadsCheck {
    registry: Registry,
    threshold: f64,
}

impl BulkheadsCheck {
    /// Degraded when a bulkhead's utilisation reaches `threshold`, a number
    /// in (0, 1].
    pub fn new(registry: &Registry, threshold: f64) -> Result<Self, ConfigError> {
        Ok(Self {
            registry: registry.clone(),
            threshold: self::threshold("utilization_threshold", threshold)?,
        })
    }

    fn evaluate(&self) -> CheckResult {
        let over: Vec<_> = bulkheads(&self.registry)
            .into_iter()
            .filter(|b| b.utilization >= self.threshold)
            .collect();
        if over.is_empty() {
            return CheckResult::healthy().with_detail("over_threshold", Vec::<String>::new());
        }
        let names: Vec<&str> = over.iter().map(|b| b.name.as_str()).collect();
        let msg = format!(
            "bulkhead(s) at or over {}% utilisation: {}",
            self.threshold * 100.0,
            names.join(", ")
        );
        let list: Vec<serde_json::Value> = over
            .iter()
            .map(|b| serde_json::json!({ "name": b.name, "utilization": b.utilization, "queued": b.queued }))
            .collect();
        CheckResult::degraded(msg).with_detail("over_threshold", list)
    }
}

impl HealthCheck for BulkheadsCheck {
    fn check(&self) -> CheckFuture {
        let r = self.evaluate();
        Box::pin(async move { r })
    }
}

/// Rate limiters of a core [`Registry`] whose saturation (`1 - available
/// / burst`) is at or over a threshold: degraded, the details list them.
///
/// ```
/// use buttress_core::Registry;
/// use buttress_health::RateLimitersCheck;
///
/// let components = Registry::new();
/// assert!(RateLimitersCheck::new(&components, 0.95).is_ok());
/// assert!(RateLimitersCheck::new(&components, 1.5).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitersCheck {
    registry: Registry,
    threshold: f64,
}

impl RateLimitersCheck {
    /// Degraded when a limiter's saturation reaches `threshold`, a number
    /// in (0, 1].
    pub fn new(registry: &Registry, threshold: f64) -> Result<Self, ConfigError> {
        Ok(Self {
            registry: registry.clone(),
            threshold: self::threshold("saturation_threshold", threshold)?,
        })
    }

    fn evaluate(&self) -> CheckResult {
        let over: Vec<_> = rate_limiters(&self.registry)
            .into_iter()
            .filter(|r| r.saturation >= self.threshold)
            .collect();
        if over.is_empty() {
            return CheckResult::healthy().with_detail("over_threshold", Vec::<String>::new());
        }
        let names: Vec<&str> = over.iter().map(|r| r.name.as_str()).collect();
        let msg = format!(
            "rate limiter(s) at or over {}% saturation: {}",
            self.threshold * 100.0,
            names.join(", ")
        );
        let list: Vec<serde_json::Value> = over
            .iter()
            .map(|r| serde_json::json!({ "name": r.name, "saturation": r.saturation }))
            .collect();
        CheckResult::degraded(msg).with_detail("over_threshold", list)
    }
}

impl HealthCheck for RateLimitersCheck {
    fn check(&self) -> CheckFuture {
        let r = self.evaluate();
        Box::pin(async move { r })
    }
}
