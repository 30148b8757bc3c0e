//! [`Summary`]: the breakers, bulkheads and rate limiters of a core
//! [`Registry`], read from their serde snapshots (seed 004's shape).

use std::collections::BTreeMap;

use buttress_core::Registry;

use crate::report::CheckReport;
use crate::status::Status;

/// Circuit breakers counted by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerSummary {
    /// Breakers (one per key for keyed breakers).
    pub total: usize,
    /// Count per state: `"closed"`, `"open"`, `"half_open"`,
    /// `"forced_open"`, `"disabled"`, `"metrics_only"`.
    pub by_state: BTreeMap<String, usize>,
}

/// The utilisation of one bulkhead.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BulkheadUsage {
    /// The bulkhead's name.
    pub name: String,
    /// Calls running.
    pub active: u64,
    /// Its concurrency limit.
    pub max_concurrent: u64,
    /// Callers waiting.
    pub queued: u64,
    /// `active / max_concurrent`, from 0 to 1.
    pub utilization: f64,
}

/// The saturation of one rate limiter.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RateLimiterUsage {
    /// The limiter's name.
    pub name: String,
    /// Its burst.
    pub burst: u64,
    /// Permits available now.
    pub available: u64,
    /// `1 - available / burst`, from 0 (idle) to 1 (no permit left).
    pub saturation: f64,
}

/// What a readiness report says about the core registry, and the issues
/// found (see [`HealthReport`](crate::HealthReport) for the JSON).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Summary {
    /// Breakers by state.
    pub circuit_breakers: BreakerSummary,
    /// Bulkhead utilisation, by name.
    pub bulkheads: Vec<BulkheadUsage>,
    /// Rate limiter saturation, by name.
    pub rate_limiters: Vec<RateLimiterUsage>,
    /// What is not healthy, in words.
    pub issues: Vec<String>,
}

/// A breaker's state, or a keyed breaker's count of keys per state.
pub(crate) enum BreakerState {
    Single(String),
    Keyed(BTreeMap<String, u64>),
}

pub(crate) const OPEN_STATES: [&str; 2] = ["open", "forced_open"];

/// Every breaker of the registry, by name.
pub(crate) fn breakers(registry: &Registry) -> Vec<(String, BreakerState)> {
    let mut out = Vec::new();
    for name in registry.names() {
        let Some(c) = registry.component(&name) else {
            continue;
        };
        match c.kind() {
            "circuit_breaker" => {
                let snap = c.snapshot();
                if let Some(state) = snap.get("state").and_then(|s| s.as_str()) {
                    out.push((name, BreakerState::Single(state.to_owned())));
                }
            }
            "keyed_circuit_breaker" => {
                let snap = c.snapshot();
                let states = snap
                    .get("states")
                    .and_then(|s| s.as_object())
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((name, BreakerState::Keyed(states)));
            }
            _ => {}
        }
    }
    out
}

fn u64_of(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key).and_then(serde_json::Value::as_u64)
}

/// Every (unkeyed) bulkhead of the registry.
pub(crate) fn bulkheads(registry: &Registry) -> Vec<BulkheadUsage> {
    let mut out = Vec::new();
    for name in registry.names() {
        let Some(c) = registry.component(&name) else {
            continue;
        };
        if c.kind() != "bulkhead" {
            continue;
        }
        let snap = c.snapshot();
        let (Some(active), Some(max)) = (u64_of(&snap, "active"), u64_of(&snap, "max_concurrent"))
        else {
            continue;
        };
        let utilization = if max == 0 {
            1.0
        } else {
            (active as f64 / max as f64).min(1.0)
        };
        out.push(BulkheadUsage {
            name,
            active,
            max_concurrent: max,
            queued: u64_of(&snap, "queued").unwrap_or(0),
            utilization,
        });
    }
    out
}

/// Every (unkeyed, local) rate limiter of the registry.
pub(crate) fn rate_limiters(registry: &Registry) -> Vec<RateLimiterUsage> {
    let mut out = Vec::new();
    for name in registry.names() {
        let Some(c) = registry.component(&name) else {
            continue;
        };
        if c.kind() != "rate_limit" {
            continue;
        }
        let snap = c.snapshot();
        let (Some(burst), Some(available)) = (u64_of(&snap, "burst"), u64_of(&snap, "available"))
        else {
            continue;
        };
        let saturation = if burst == 0 {
            1.0
        } else {
            1.0 - (available.min(burst) as f64 / burst as f64)
        };
        out.push(RateLimiterUsage {
            name,
            burst,
            available,
            saturation,
        });
    }
    out
}

impl Summary {
    /// Reads the registry's breakers, bulkheads and rate limiters; no
    /// issues yet.
    pub fn of(registry: &Registry) -> Self {
        let mut cb = BreakerSummary::default();
        let mut issues = Vec::new();
        for (name, state) in breakers(registry) {
            match state {
                BreakerState::Single(s) => {
                    cb.total += 1;
                    if OPEN_STATES.contains(&s.as_str()) || s == "half_open" {
                        issues.push(format!(
                            "circuit breaker `{name}` is {}",
                            s.replace('_', " ")
                        ));
                    }
                    *cb.by_state.entry(s).or_default() += 1;
                }
                BreakerState::Keyed(states) => {
                    for (s, n) in states {
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        cb.total = cb.total.saturating_add(n);
                        if n > 0 && (OPEN_STATES.contains(&s.as_str()) || s == "half_open") {
                            issues.push(format!(
                                "keyed circuit breaker `{name}` has {n} {} key(s)",
                                s.replace('_', " ")
                            ));
                        }
                        let e = cb.by_state.entry(s).or_default();
                        *e = e.saturating_add(n);
                    }
                }
            }
        }
        Self {
            circuit_breakers: cb,
            bulkheads: bulkheads(registry),
            rate_limiters: rate_limiters(registry),
            issues,
        }
    }

    pub(crate) fn with_issues(mut self, checks: &[CheckReport], shutting_down: bool) -> Self {
        let mut issues = Vec::new();
        if shutting_down {
            issues.push("shutting down: not accepting new traffic".to_owned());
        }
        for c in checks.iter().filter(|c| c.status != Status::Healthy) {
            issues.push(match &c.message {
                Some(m) => format!("check `{}` is {}: {m}", c.name, c.status),
                None => format!("check `{}` is {}", c.name, c.status),
            });
        }
        issues.append(&mut self.issues);
        self.issues = issues;
        self
    }

    /// The summary's part of the report JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "circuit_breakers": {
                "total": self.circuit_breakers.total,
                "by_state": self.circuit_breakers.by_state,
            },
            "bulkheads": self.bulkheads.iter().map(|b| serde_json::json!({
                "name": b.name,
                "active": b.active,
                "max_concurrent": b.max_concurrent,
                "queued": b.queued,
                "utilization": b.utilization,
            })).collect::<Vec<_>>(),
            "rate_limiters": self.rate_limiters.iter().map(|r| serde_json::json!({
                "name": r.name,
                "burst": r.burst,
                "available": r.available,
                "saturation": r.saturation,
            })).collect::<Vec<_>>(),
            "issues": self.issues,
        })
    }
}
