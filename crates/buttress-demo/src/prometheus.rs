//! `/metrics`: the Prometheus recorder, installed globally before any
//! layer is built, and a small listener on 127.0.0.1 that serves its
//! exposition; and the counters the report reads from that exposition,
//! so that what it prints is what Prometheus scrapes.

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::exposition::Exposition;
use crate::server::Server;
use crate::DemoError;

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The recorder's handle, once it is installed: a process has one global
/// recorder, so a second run in the same process shares it.
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder as the global `metrics` recorder, the
/// first time; returns its handle. Fails if another recorder was installed
/// before.
fn install() -> Result<PrometheusHandle, DemoError> {
    let mut handle = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = &*handle {
        return Ok(handle.clone());
    }
    let installed = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| DemoError::Metrics(format!("cannot install the Prometheus recorder: {e}")))?;
    *handle = Some(installed.clone());
    Ok(installed)
}

/// The `/metrics` endpoint: the Prometheus recorder, installed globally,
/// and a listener on 127.0.0.1 (a port chosen by the OS) that serves
/// `GET /metrics` in the Prometheus text format.
///
/// [`run`](crate::run) starts one for its run and stops it at the end;
/// [`run_with`](crate::run_with) uses one the caller started, which can
/// then be scraped after the run.
#[derive(Debug)]
pub struct MetricsEndpoint {
    handle: PrometheusHandle,
    server: Server,
}

impl MetricsEndpoint {
    /// Installs the recorder (once per process; a later call shares it)
    /// and starts serving `/metrics`. Fails if another `metrics` recorder
    /// is installed, or if the port cannot be bound.
    pub async fn start() -> Result<Self, DemoError> {
        let handle = install()?;
        let served = handle.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let text = served.render();
                async move { ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response() }
            }),
        );
        let server = Server::start("metrics endpoint", app).await?;
        Ok(Self { handle, server })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:<port>/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr())
    }

    /// What `GET /metrics` answers now.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// A handle that renders what `/metrics` serves.
    pub(crate) fn handle(&self) -> PrometheusHandle {
        self.handle.clone()
    }

    /// Stops serving (the recorder stays installed).
    pub async fn shutdown(self) -> Result<(), DemoError> {
        self.server.shutdown().await
    }
}

/// What `/metrics` serves now, parsed.
pub(crate) fn scrape(handle: &PrometheusHandle) -> Result<Exposition, DemoError> {
    Exposition::parse(&handle.render())
        .map_err(|e| DemoError::Metrics(format!("/metrics does not parse: {e}")))
}

/// The counters of the gateway's layers as `/metrics` serves them: sums of
/// `buttress_*` and `http_server_requests` series for the gateway's
/// instance names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsCounts {
    /// `buttress_rate_limit_decisions_total{name="per-client",decision="permitted"}`.
    pub rate_limit_permitted: u64,
    /// `buttress_rate_limit_decisions_total{name="per-client",decision="rejected"}`.
    pub rate_limit_rejected: u64,
    /// `buttress_bulkhead_calls_total{name="gateway",kind="rejected"}`.
    pub bulkhead_rejected: u64,
    /// `buttress_circuit_breaker_calls_total{name="upstream",kind="not_permitted"}`.
    pub circuit_not_permitted: u64,
    /// `buttress_circuit_breaker_transitions_total{name="upstream",to="open"}`.
    pub circuit_opened: u64,
    /// `buttress_circuit_breaker_transitions_total{name="upstream",from="half_open",to="open"}`.
    pub circuit_reopened: u64,
    /// `buttress_circuit_breaker_transitions_total{name="upstream",to="closed"}`.
    pub circuit_closed: u64,
    /// `buttress_timeout_calls_total{name="upstream-timeout",kind="timed_out"}`.
    pub timed_out: u64,
    /// `buttress_retry_attempts_total{name="upstream-retry"}`: completed
    /// calls plus retries scheduled.
    pub retry_attempts: u64,
    /// `buttress_retry_calls_total{name="upstream-retry"}`, every kind:
    /// completed calls.
    pub retry_calls: u64,
    /// `buttress_retry_calls_total{name="upstream-retry",kind="successful_with_retry"}`.
    pub retry_succeeded: u64,
    /// `buttress_retry_calls_total{name="upstream-retry",kind="exhausted"}`.
    pub retry_exhausted: u64,
    /// `http_server_requests{name="gateway",http_route="/"}`, every
    /// label value: requests the gateway's `MetricsLayer` recorded on `/`.
    pub http_requests: u64,
    /// `http_server_requests{name="gateway",http_route="/hot"}`.
    pub http_requests_hot: u64,
    /// `buttress_fallback_calls_total{name="upstream-fallback",kind="fallback_used"}`:
    /// calls on `/` the breaker refused, answered by the fallback.
    pub fallback_used: u64,
    /// `buttress_cache_requests_total{name="hot",result="hit"}`.
    pub cache_hits: u64,
    /// `buttress_cache_requests_total{name="hot",result="miss"}`.
    pub cache_misses: u64,
    /// `buttress_cache_requests_total{name="hot",result="coalesced"}`:
    /// misses that waited for another call to the upstream.
    pub cache_coalesced: u64,
    /// `buttress_cache_requests_total{name="hot",result="stale"}`: a miss
    /// (or coalesced call) whose call failed or was rejected, answered from
    /// the expired entry.
    pub cache_stale: u64,
    /// `buttress_saga_sagas_total{name="order",outcome="started"}`.
    pub sagas_started: u64,
    /// `buttress_saga_sagas_total{name="order",outcome="completed"}`.
    pub sagas_completed: u64,
    /// `buttress_saga_sagas_total{name="order",outcome="compensated"}`.
    pub sagas_compensated: u64,
    /// `buttress_saga_sagas_total{name="order",outcome="needs_attention"}`.
    pub sagas_needs_attention: u64,
}

/// The gateway's instance names, as its layers label their series.
pub(crate) const RATE_LIMIT: &str = "per-client";
pub(crate) const BULKHEAD: &str = "gateway";
pub(crate) const BREAKER: &str = "upstream";
pub(crate) const TIMEOUT: &str = "upstream-timeout";
pub(crate) const RETRY: &str = "upstream-retry";
pub(crate) const HTTP: &str = "gateway";
pub(crate) const FALLBACK: &str = "upstream-fallback";
pub(crate) const CACHE: &str = "hot";
/// The saga definition's name (its label in `buttress_saga_*`).
pub(crate) const SAGA: &str = "order";

impl MetricsCounts {
    /// Reads the counters from `exposition`. Every series is there from
    /// the moment the layers are built (their handles are resolved then),
    /// so a missing one is an error: the recorder was not the one that
    /// serves `/metrics`, or the layers were built before it.
    pub fn read(exposition: &Exposition) -> Result<Self, DemoError> {
        let get = |name: &str, labels: &[(&str, &str)]| -> Result<u64, DemoError> {
            let sum = exposition.sum(name, labels).ok_or_else(|| {
                DemoError::Metrics(format!("/metrics has no series {name}{labels:?}"))
            })?;
            if sum.is_finite() && sum >= 0.0 && sum.fract() == 0.0 && sum < 2f64.powi(53) {
                Ok(sum as u64)
            } else {
                Err(DemoError::Metrics(format!(
                    "{name}{labels:?} is {sum}, not a count"
                )))
            }
        };
        let transitions = "buttress_circuit_breaker_transitions_total";
        let retry_calls = "buttress_retry_calls_total";
        let cache = |result| {
            get(
                "buttress_cache_requests_total",
                &[("name", CACHE), ("result", result)],
            )
        };
        let sagas = |outcome| {
            get(
                "buttress_saga_sagas_total",
                &[("name", SAGA), ("outcome", outcome)],
            )
        };
        // No request has reached a route before the load starts: its
        // series appears with the first one.
        let http = |route| {
            exposition
                .sum(
                    "http_server_requests",
                    &[("name", HTTP), ("http_route", route)],
                )
                .map_or(0, |n| n as u64)
        };
        Ok(Self {
            rate_limit_permitted: get(
                "buttress_rate_limit_decisions_total",
                &[("name", RATE_LIMIT), ("decision", "permitted")],
            )?,
            rate_limit_rejected: get(
                "buttress_rate_limit_decisions_total",
                &[("name", RATE_LIMIT), ("decision", "rejected")],
            )?,
            bulkhead_rejected: get(
                "buttress_bulkhead_calls_total",
                &[("name", BULKHEAD), ("kind", "rejected")],
            )?,
            circuit_not_permitted: get(
                "buttress_circuit_breaker_calls_total",
                &[("name", BREAKER), ("kind", "not_permitted")],
            )?,
            circuit_opened: get(transitions, &[("name", BREAKER), ("to", "open")])?,
            circuit_reopened: get(
                transitions,
                &[("name", BREAKER), ("from", "half_open"), ("to", "open")],
            )?,
            circuit_closed: get(transitions, &[("name", BREAKER), ("to", "closed")])?,
            timed_out: get(
                "buttress_timeout_calls_total",
                &[("name", TIMEOUT), ("kind", "timed_out")],
            )?,
            retry_attempts: get("buttress_retry_attempts_total", &[("name", RETRY)])?,
            retry_calls: get(retry_calls, &[("name", RETRY)])?,
            retry_succeeded: get(
                retry_calls,
                &[("name", RETRY), ("kind", "successful_with_retry")],
            )?,
            retry_exhausted: get(retry_calls, &[("name", RETRY), ("kind", "exhausted")])?,
            http_requests: http("/"),
            http_requests_hot: http("/hot"),
            fallback_used: get(
                "buttress_fallback_calls_total",
                &[("name", FALLBACK), ("kind", "fallback_used")],
            )?,
            cache_hits: cache("hit")?,
            cache_misses: cache("miss")?,
            cache_coalesced: cache("coalesced")?,
            cache_stale: cache("stale")?,
            sagas_started: sagas("started")?,
            sagas_completed: sagas("completed")?,
            sagas_compensated: sagas("compensated")?,
            sagas_needs_attention: sagas("needs_attention")?,
        })
    }

    /// Retries scheduled: attempts less completed calls.
    pub fn retries(&self) -> u64 {
        self.retry_attempts.saturating_sub(self.retry_calls)
    }

    /// What happened since `before`.
    pub fn since(&self, before: &MetricsCounts) -> MetricsCounts {
        MetricsCounts {
            rate_limit_permitted: self.rate_limit_permitted - before.rate_limit_permitted,
            rate_limit_rejected: self.rate_limit_rejected - before.rate_limit_rejected,
            bulkhead_rejected: self.bulkhead_rejected - before.bulkhead_rejected,
            circuit_not_permitted: self.circuit_not_permitted - before.circuit_not_permitted,
            circuit_opened: self.circuit_opened - before.circuit_opened,
            circuit_reopened: self.circuit_reopened - before.circuit_reopened,
            circuit_closed: self.circuit_closed - before.circuit_closed,
            timed_out: self.timed_out - before.timed_out,
            retry_attempts: self.retry_attempts - before.retry_attempts,
            retry_calls: self.retry_calls - before.retry_calls,
            retry_succeeded: self.retry_succeeded - before.retry_succeeded,
            retry_exhausted: self.retry_exhausted - before.retry_exhausted,
            http_requests: self.http_requests - before.http_requests,
            http_requests_hot: self.http_requests_hot - before.http_requests_hot,
            fallback_used: self.fallback_used - before.fallback_used,
            cache_hits: self.cache_hits - before.cache_hits,
            cache_misses: self.cache_misses - before.cache_misses,
            cache_coalesced: self.cache_coalesced - before.cache_coalesced,
            cache_stale: self.cache_stale - before.cache_stale,
            sagas_started: self.sagas_started - before.sagas_started,
            sagas_completed: self.sagas_completed - before.sagas_completed,
            sagas_compensated: self.sagas_compensated - before.sagas_compensated,
            sagas_needs_attention: self.sagas_needs_attention - before.sagas_needs_attention,
        }
    }

    /// Adds `other`.
    pub(crate) fn merge(&mut self, other: &MetricsCounts) {
        self.rate_limit_permitted += other.rate_limit_permitted;
        self.rate_limit_rejected += other.rate_limit_rejected;
        self.bulkhead_rejected += other.bulkhead_rejected;
        self.circuit_not_permitted += other.circuit_not_permitted;
        self.circuit_opened += other.circuit_opened;
        self.circuit_reopened += other.circuit_reopened;
        self.circuit_closed += other.circuit_closed;
        self.timed_out += other.timed_out;
        self.retry_attempts += other.retry_attempts;
        self.retry_calls += other.retry_calls;
        self.retry_succeeded += other.retry_succeeded;
        self.retry_exhausted += other.retry_exhausted;
        self.http_requests += other.http_requests;
        self.http_requests_hot += other.http_requests_hot;
        self.fallback_used += other.fallback_used;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.cache_coalesced += other.cache_coalesced;
        self.cache_stale += other.cache_stale;
        self.sagas_started += other.sagas_started;
        self.sagas_completed += other.sagas_completed;
        self.sagas_compensated += other.sagas_compensated;
        self.sagas_needs_attention += other.sagas_needs_attention;
    }

    /// Sagas that ended: completed, compensated or left needing attention.
    /// Equal to [`sagas_started`](Self::sagas_started) once none runs.
    pub fn sagas_ended(&self) -> u64 {
        self.sagas_completed + self.sagas_compensated + self.sagas_needs_attention
    }
}

/// Readiness as `/metrics` serves it: `buttress_health_ready` (1 when the
/// last readiness report said ready, 0 when it said not), as a status
/// code: 200 or 503.
pub(crate) fn ready_status(exposition: &Exposition) -> Result<u16, DemoError> {
    match exposition.value("buttress_health_ready", &[]) {
        Some(1.0) => Ok(200),
        Some(0.0) => Ok(503),
        Some(v) => Err(DemoError::Metrics(format!(
            "buttress_health_ready is {v}, neither 0 nor 1"
        ))),
        None => Err(DemoError::Metrics(
            "/metrics has no series buttress_health_ready".into(),
        )),
    }
}

/// The breaker's state as `/metrics` serves it: the `state` label of the
/// `buttress_circuit_breaker_state{name="upstream"}` gauge at 1.
pub(crate) fn circuit_state(exposition: &Exposition) -> Result<&'static str, DemoError> {
    const STATES: [&str; 6] = [
        "closed",
        "open",
        "half_open",
        "disabled",
        "forced_open",
        "metrics_only",
    ];
    let mut on = exposition
        .select("buttress_circuit_breaker_state", &[("name", BREAKER)])
        .filter(|s| s.value == 1.0);
    let state = match (on.next(), on.next()) {
        (Some(sample), None) => sample.label("state"),
        _ => None,
    };
    state
        .and_then(|state| STATES.into_iter().find(|s| *s == state))
        .ok_or_else(|| {
            DemoError::Metrics(
                "not exactly one known state of the breaker's state gauge is at 1".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_state_are_read_by_instance_name() {
        let text = r#"
# TYPE buttress_rate_limit_decisions_total counter
buttress_rate_limit_decisions_total{name="per-client",decision="permitted",reason="none",backend="local"} 90
buttress_rate_limit_decisions_total{name="per-client",decision="rejected",reason="exhausted",backend="local"} 9
buttress_rate_limit_decisions_total{name="per-client",decision="rejected",reason="keys_full",backend="local"} 1
buttress_bulkhead_calls_total{name="gateway",kind="rejected"} 4
buttress_circuit_breaker_calls_total{name="upstream",kind="not_permitted"} 7
buttress_circuit_breaker_transitions_total{name="upstream",from="closed",to="open"} 2
buttress_circuit_breaker_transitions_total{name="upstream",from="half_open",to="open"} 1
buttress_circuit_breaker_transitions_total{name="upstream",from="open",to="half_open"} 3
buttress_circuit_breaker_transitions_total{name="upstream",from="half_open",to="closed"} 2
buttress_circuit_breaker_transitions_total{name="other",from="closed",to="open"} 50
buttress_circuit_breaker_state{name="upstream",state="closed"} 1
buttress_circuit_breaker_state{name="upstream",state="open"} 0
buttress_timeout_calls_total{name="upstream-timeout",kind="timed_out"} 5
buttress_retry_attempts_total{name="upstream-retry"} 110
buttress_retry_calls_total{name="upstream-retry",kind="successful_without_retry"} 80
buttress_retry_calls_total{name="upstream-retry",kind="successful_with_retry"} 12
buttress_retry_calls_total{name="upstream-retry",kind="exhausted"} 2
http_server_requests{name="gateway",http_request_method="GET",http_route="/",outcome="success"} 95
http_server_requests{name="gateway",http_request_method="GET",http_route="/healthz",outcome="success"} 1
http_server_requests{name="gateway",http_request_method="GET",http_route="/hot",outcome="success"} 40
buttress_fallback_calls_total{name="upstream-fallback",kind="primary"} 88
buttress_fallback_calls_total{name="upstream-fallback",kind="fallback_used"} 6
buttress_cache_requests_total{name="hot",result="hit"} 30
buttress_cache_requests_total{name="hot",result="miss"} 8
buttress_cache_requests_total{name="hot",result="coalesced"} 2
buttress_cache_requests_total{name="hot",result="stale"} 3
buttress_saga_sagas_total{name="order",outcome="started"} 20
buttress_saga_sagas_total{name="order",outcome="completed"} 15
buttress_saga_sagas_total{name="order",outcome="compensated"} 4
buttress_saga_sagas_total{name="order",outcome="needs_attention"} 0
buttress_health_ready 0
"#;
        let e = Exposition::parse(text).unwrap();
        let c = MetricsCounts::read(&e).unwrap();
        assert_eq!((c.rate_limit_permitted, c.rate_limit_rejected), (90, 10));
        assert_eq!((c.bulkhead_rejected, c.circuit_not_permitted), (4, 7));
        assert_eq!(
            (c.circuit_opened, c.circuit_reopened, c.circuit_closed),
            (3, 1, 2)
        );
        assert_eq!(
            (c.retry_calls, c.retries(), c.retry_succeeded),
            (94, 16, 12)
        );
        assert_eq!(
            (c.timed_out, c.retry_exhausted, c.http_requests),
            (5, 2, 95)
        );
        assert_eq!((c.http_requests_hot, c.fallback_used), (40, 6));
        assert_eq!(
            (
                c.cache_hits,
                c.cache_misses,
                c.cache_coalesced,
                c.cache_stale
            ),
            (30, 8, 2, 3)
        );
        assert_eq!(
            (c.sagas_started, c.sagas_completed, c.sagas_compensated),
            (20, 15, 4)
        );
        // One still running.
        assert_eq!(c.sagas_ended(), 19);
        assert_eq!(c.since(&c), MetricsCounts::default());
        assert_eq!(circuit_state(&e).unwrap(), "closed");
        assert_eq!(ready_status(&e).unwrap(), 503);
        let ready = Exposition::parse("buttress_health_ready 1\n").unwrap();
        assert_eq!(ready_status(&ready).unwrap(), 200);
        let odd = Exposition::parse("buttress_health_ready 0.5\n").unwrap();
        assert!(ready_status(&odd).is_err());

        // A series the layers always have is missing: an error.
        let e = Exposition::parse("buttress_retry_attempts_total{name=\"x\"} 1\n").unwrap();
        assert!(matches!(
            MetricsCounts::read(&e),
            Err(DemoError::Metrics(_))
        ));
        assert!(circuit_state(&e).is_err());
        assert!(ready_status(&e).is_err());
    }
}
