//! The live table, the totals and what they mean.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use buttress_retry::BudgetSnapshot;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, Instant};

use crate::gateway::{
    Observer, Rejection, RetryCounts, BREAKER_OPEN, BREAKER_PROBES, BREAKER_THRESHOLD,
    BREAKER_WINDOW, HEALTH_BULKHEAD_THRESHOLD, HEALTH_INTERVAL, HOT_MAX_STALE, HOT_TTL,
    MAX_CONCURRENT, MAX_QUEUE, MAX_WAIT, RATE_BURST, RATE_PER_CLIENT, RETRY_ATTEMPTS,
    RETRY_BACKOFF, RETRY_BUDGET_FLOOR, RETRY_BUDGET_PERCENT, RETRY_MAX_DELAY, UPSTREAM_TIMEOUT,
};
use crate::load::{
    self, CacheAnswer, Load, Outcome, Route, Sample, Who, BURST_EVERY, BURST_SIZE, CLIENT_TIMEOUT,
    HOT_PERCENT,
};
use crate::orders::{Warehouse, CHARGE_TIMEOUT, ORDER_PAUSE_MS, ORDER_WORKERS};
use crate::phase::{Phase, Timeline};
use crate::prometheus::{self, MetricsCounts, MetricsEndpoint};
use crate::upstream::{UpstreamLoad, FAST_MS, SLOW_MS};
use crate::DemoError;

/// How often the bulkhead's occupancy is sampled for its peak.
const OCCUPANCY_SAMPLE: Duration = Duration::from_millis(10);

/// Requests by how they ended, as the clients saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every finished request.
    pub total: u64,
    /// 200 (from the upstream, or from the cache on `/hot`).
    pub ok: u64,
    /// 200 from the gateway's fallback on `/`, marked `x-fallback`: the
    /// breaker refused the call.
    pub fallback: u64,
    /// 429: the client was over its rate limit.
    pub rate_limited: u64,
    /// 500: the upstream failed and the gateway passed it on.
    pub upstream_errors: u64,
    /// 502: the upstream still shed the call (503) after the gateway's
    /// retries, or could not be reached.
    pub bad_gateway: u64,
    /// 503: shed by the bulkhead, or rejected by the open circuit on
    /// `/hot` with no stale entry to answer from (the three fields below
    /// split them, by the gateway's `x-rejected-by` header; without
    /// buttress, the upstream's own 503s).
    pub shed: u64,
    /// Among `shed`: the bulkhead's slots and queue were all taken.
    pub shed_queue_full: u64,
    /// Among `shed`: waited the bulkhead's whole `max_wait` in its queue.
    pub shed_wait_timed_out: u64,
    /// Among `shed`: the circuit was open (or half-open with every probe
    /// slot taken).
    pub shed_circuit_open: u64,
    /// 504: the gateway's timeout cut the upstream call.
    pub timeouts: u64,
    /// Any other status, connection errors and client-side timeouts.
    pub other: u64,
    /// Among `total`: requests sent to `/hot` (the fields above count them
    /// by status too).
    pub hot: u64,
    /// Among `hot`: answered from a fresh cache entry (`x-cache: hit`).
    pub hot_hit: u64,
    /// Among `hot`: the request called the upstream (`x-cache: miss`).
    pub hot_miss: u64,
    /// Among `hot`: waited for another request's call (`x-cache:
    /// coalesced`).
    pub hot_coalesced: u64,
    /// Among `hot`: answered from an expired entry because the call failed
    /// or was rejected (`x-cache: stale`).
    pub hot_stale: u64,
}

impl Counts {
    /// Counts one finished request: its outcome, and its route and cache
    /// answer.
    fn add_sample(&mut self, sample: &Sample) {
        self.add(sample.outcome);
        if sample.route != Route::Hot {
            return;
        }
        self.hot += 1;
        match sample.cache {
            Some(CacheAnswer::Hit) => self.hot_hit += 1,
            Some(CacheAnswer::Miss) => self.hot_miss += 1,
            Some(CacheAnswer::Coalesced) => self.hot_coalesced += 1,
            Some(CacheAnswer::Stale) => self.hot_stale += 1,
            None => {}
        }
    }

    fn add(&mut self, outcome: Outcome) {
        self.total += 1;
        *match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::Fallback => &mut self.fallback,
            Outcome::RateLimited => &mut self.rate_limited,
            Outcome::UpstreamError => &mut self.upstream_errors,
            Outcome::BadGateway => &mut self.bad_gateway,
            Outcome::Shed(by) => {
                match by {
                    Some(Rejection::QueueFull) => self.shed_queue_full += 1,
                    Some(Rejection::WaitTimedOut) => self.shed_wait_timed_out += 1,
                    Some(Rejection::CircuitOpen) => self.shed_circuit_open += 1,
                    None => {}
                }
                &mut self.shed
            }
            Outcome::TimedOut => &mut self.timeouts,
            Outcome::Other => &mut self.other,
        } += 1;
    }

    fn merge(&mut self, other: &Counts) {
        self.total += other.total;
        self.ok += other.ok;
        self.fallback += other.fallback;
        self.rate_limited += other.rate_limited;
        self.upstream_errors += other.upstream_errors;
        self.bad_gateway += other.bad_gateway;
        self.shed += other.shed;
        self.shed_queue_full += other.shed_queue_full;
        self.shed_wait_timed_out += other.shed_wait_timed_out;
        self.shed_circuit_open += other.shed_circuit_open;
        self.timeouts += other.timeouts;
        self.other += other.other;
        self.hot += other.hot;
        self.hot_hit += other.hot_hit;
        self.hot_miss += other.hot_miss;
        self.hot_coalesced += other.hot_coalesced;
        self.hot_stale += other.hot_stale;
    }

    /// `part` as a percentage of the total.
    fn percent(&self, part: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            part as f64 * 100.0 / self.total as f64
        }
    }
}

/// One client's requests, as the per-client rate limit judged them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    /// Its `x-client` header: `"c00"`, `"c01"`, ... for the steady
    /// clients, `"burst"` for the one that bursts.
    pub name: String,
    /// Requests the rate limit let through (whatever came of them next).
    pub admitted: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// The shortest and the longest `Retry-After` (seconds) on its 429s.
    pub retry_after: Option<(u64, u64)>,
}

impl ClientSummary {
    fn new(who: Who) -> Self {
        Self {
            name: who.name(),
            admitted: 0,
            rate_limited: 0,
            retry_after: None,
        }
    }

    fn add(&mut self, sample: &Sample) {
        if sample.outcome != Outcome::RateLimited {
            // A request that got no answer may not have reached the
            // limiter; the clients' own timeouts are rare enough here.
            self.admitted += 1;
            return;
        }
        self.rate_limited += 1;
        if let Some(secs) = sample.retry_after {
            self.retry_after = Some(match self.retry_after {
                None => (secs, secs),
                Some((lo, hi)) => (lo.min(secs), hi.max(secs)),
            });
        }
    }
}

/// One phase of the run, summed up.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSummary {
    /// `"healthy"`, `"degraded"` or `"recovered"`.
    pub phase: &'static str,
    /// Seconds of the run spent in it.
    pub seconds: u64,
    /// Requests that finished in it.
    pub counts: Counts,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Calls rejected by the open circuit in it, answered 503
    /// (`counts.shed_circuit_open`).
    pub circuit_rejected: u64,
    /// Calls on `/` the breaker refused in it, answered by the fallback
    /// (from `/metrics`).
    pub fallback_used: u64,
    /// `/hot` requests answered from a fresh entry in it (from `/metrics`).
    pub cache_hits: u64,
    /// `/hot` requests answered from an expired entry in it (from
    /// `/metrics`).
    pub cache_stale: u64,
    /// Order sagas completed in it (from `/metrics`).
    pub sagas_completed: u64,
    /// Order sagas compensated in it (from `/metrics`).
    pub sagas_compensated: u64,
    /// Seconds whose `/health/ready` probe was answered 503.
    pub not_ready_seconds: u64,
    /// Times the breaker opened in it (from `/metrics`).
    pub circuit_opened: u64,
    /// Times the breaker closed again in it (from `/metrics`).
    pub circuit_closed: u64,
    /// Retries the gateway made in it (from `/metrics`: the sum of the
    /// table's `retry` column over the phase).
    pub retries: u64,
    /// Calls answered after one retry or more in it (from `/metrics`).
    pub retry_succeeded: u64,
    /// Retries refused in it because the budget was spent (from the retry
    /// layer's events).
    pub retry_budget_spent: u64,
    /// Calls the upstream received in it, retries included.
    pub upstream_calls: u64,
    /// Most calls seen in flight at the upstream at once in it (sampled).
    pub upstream_peak: usize,
}

/// The comparison run: the same upstream phase and the same clients,
/// through a gateway without buttress.
#[derive(Debug, Clone, PartialEq)]
pub struct Unprotected {
    /// The upstream's phase during the run (`"degraded"`).
    pub phase: &'static str,
    /// How long the load ran.
    pub seconds: u64,
    /// Requests by how they ended (every 503 is the upstream's own).
    pub counts: Counts,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
    /// Calls the upstream received.
    pub upstream_calls: u64,
    /// Most calls seen in flight at the upstream at once (sampled).
    pub upstream_peak: usize,
}

/// What happened during a run; `Display` prints the final report.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Summary {
    /// From the start of the load to the end of the last request.
    pub elapsed: Duration,
    /// Number of clients.
    pub concurrency: usize,
    /// Requests by how they ended.
    pub counts: Counts,
    /// Requests the per-client rate limit rejected (from `/metrics`); each
    /// was answered 429.
    pub rate_limited: u64,
    /// Requests the per-client rate limit let through (from `/metrics`).
    pub rate_limit_admitted: u64,
    /// Each client's requests as the rate limit judged them (from the
    /// clients' answers): the steady clients in order, then `"burst"`.
    pub clients: Vec<ClientSummary>,
    /// Bulkhead rejections because every slot and the queue were taken
    /// (as the clients saw them, by the gateway's `x-rejected-by` header).
    pub shed_queue_full: u64,
    /// Bulkhead rejections after waiting the whole `max_wait` in the queue
    /// (as the clients saw them).
    pub shed_wait_timed_out: u64,
    /// Calls the circuit breaker rejected with 503 without calling the
    /// upstream, because it was open or half-open with every probe slot
    /// taken (as the clients saw them, by the gateway's `x-rejected-by`
    /// header). With the bulkhead's rejections, this makes up every 503.
    pub circuit_rejected: u64,
    /// Times the circuit breaker opened: tripped from closed, or reopened
    /// from half-open because its probes failed (from `/metrics`).
    pub circuit_opened: u64,
    /// Among [`circuit_opened`](Self::circuit_opened), the reopenings from
    /// half-open (from `/metrics`).
    pub circuit_reopened: u64,
    /// Times the circuit breaker closed again after its probes passed (from
    /// `/metrics`).
    pub circuit_closed: u64,
    /// The breaker's state at the end of the load, from its state gauge in
    /// `/metrics`: `"closed"`, `"open"` or `"half_open"`.
    pub circuit_state: &'static str,
    /// Upstream calls the gateway's timeout cut (from `/metrics`).
    pub upstream_calls_timed_out: u64,
    /// Calls the gateway forwarded through its retry layer: first
    /// attempts (from the retry budget's deposits).
    pub forwarded: u64,
    /// Retries the gateway made, each one more call to the upstream (from
    /// `/metrics`: attempts less completed calls).
    pub retries: u64,
    /// Calls retried at least once (from the retry layer's events).
    pub retried_calls: u64,
    /// Calls whose answer after one retry or more was no longer a 503: a
    /// 200, now and then a 500 (from `/metrics`).
    pub retry_succeeded: u64,
    /// Calls shed (503) at every one of their attempts, answered 502 (from
    /// `/metrics`).
    pub retry_exhausted: u64,
    /// Retries refused because the budget was spent; the call was answered
    /// 502 (from the retry layer's events).
    pub retry_budget_spent: u64,
    /// Retries not made because they could not start before the gateway's
    /// timeout; the call was answered 502 (from the retry layer's events).
    pub retry_deadline: u64,
    /// Calls retried at least once that the gateway's timeout cut while
    /// retrying, answered 504 (the retried calls that ended with no
    /// event).
    pub retry_timed_out: u64,
    /// Retries the budget still allowed at the end of the load.
    pub retry_budget_left: u64,
    /// Calls on `/` the breaker refused, answered 200 by the fallback
    /// (from `/metrics`; the clients saw `counts.fallback` of them).
    pub fallback_used: u64,
    /// `/hot` requests answered from a fresh entry (from `/metrics`).
    pub cache_hits: u64,
    /// `/hot` requests answered from an expired entry because the call
    /// to refresh it failed or was rejected (from `/metrics`).
    pub cache_stale: u64,
    /// `/hot` requests that called the upstream (from `/metrics`).
    pub cache_misses: u64,
    /// `/hot` requests that waited for another's call to the upstream
    /// (from `/metrics`).
    pub cache_coalesced: u64,
    /// The HTTP status of `GET /health/ready` at the end of each second
    /// (`None`: no answer within the client timeout).
    pub readiness: Vec<Option<u16>>,
    /// `buttress_health_ready` in `/metrics` right after each of those
    /// probes, as a status: 200 (1) or 503 (0).
    pub ready_gauge: Vec<u16>,
    /// Order sagas started, completed, compensated and left needing
    /// attention (from `/metrics`).
    pub sagas_started: u64,
    /// See [`sagas_started`](Self::sagas_started).
    pub sagas_completed: u64,
    /// See [`sagas_started`](Self::sagas_started).
    pub sagas_compensated: u64,
    /// See [`sagas_started`](Self::sagas_started).
    pub sagas_needs_attention: u64,
    /// Stock reservations the sagas' first step made, as the warehouse
    /// counted them.
    pub stock_reserved: u64,
    /// Reservations the compensations released.
    pub stock_released: u64,
    /// Orders the last step shipped.
    pub shipped: u64,
    /// The temporary directory the sagas were logged in (SQLite), removed
    /// by the time the run returns.
    pub saga_log: std::path::PathBuf,
    /// Most calls seen running in the bulkhead at once (sampled).
    pub peak_active: usize,
    /// Most calls seen waiting in the bulkhead's queue at once (sampled).
    pub peak_queued: usize,
    /// Median latency of all requests.
    pub p50: Duration,
    /// 99th percentile latency of all requests.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
    /// The same, phase by phase, in order.
    pub phases: Vec<PhaseSummary>,
    /// The comparison run without buttress, unless it was turned off
    /// (`--compare 0`).
    pub unprotected: Option<Unprotected>,
    /// The registry snapshot at the end of the load.
    pub registry: serde_json::Value,
    /// Where `/metrics` was served.
    pub metrics_url: String,
    /// The layers' counters in `/metrics` at the end of the load (less
    /// what they were when the gateway was built: nothing, unless the
    /// process ran the demo before, as the recorder is global). The fields
    /// above marked "from `/metrics`" are these.
    pub metrics: MetricsCounts,
}

/// What the live loop hands to [`Report::summary`].
#[derive(Debug)]
pub(crate) struct Totals {
    elapsed: Duration,
    counts: Counts,
    latencies: Vec<Duration>,
    phases: Vec<PhaseTotals>,
    /// `/metrics` at the end of the load, less the baseline.
    metrics: MetricsCounts,
    /// The breaker's state gauge at the end of the load.
    circuit_state: &'static str,
    /// `/health/ready`, each second.
    readiness: Vec<Option<u16>>,
    /// `buttress_health_ready`, each second.
    ready_gauge: Vec<u16>,
}

/// One phase, as the live loop sums it up.
#[derive(Debug)]
struct PhaseTotals {
    phase: Phase,
    seconds: u64,
    counts: Counts,
    latencies: Vec<Duration>,
    /// The phase's share of the `/metrics` counters.
    metrics: MetricsCounts,
    /// The sum of the `retry` column over the phase.
    retries_made: u64,
    /// Counted from the retry layer's events (budget spent).
    retries: RetryCounts,
    upstream_calls: u64,
    upstream_peak: usize,
    not_ready_seconds: u64,
}

/// Prints the table while the load runs and sums it up.
#[derive(Debug)]
pub(crate) struct Report {
    secs: u64,
    observer: Observer,
    /// Renders what `/metrics` serves.
    metrics: PrometheusHandle,
    metrics_url: String,
    /// The `/metrics` counters when the report was made, before the load.
    baseline: MetricsCounts,
    upstream: Arc<UpstreamLoad>,
    warehouse: Arc<Warehouse>,
    print: bool,
    concurrency: usize,
    /// Where the gateway listens, for its readiness probe.
    gateway: Option<SocketAddr>,
    /// Per client: the steady ones, then the bursting one.
    clients: Vec<ClientSummary>,
    peak_active: usize,
    peak_queued: usize,
    /// Most upstream calls in flight seen since the last row.
    upstream_peak: usize,
}

impl Report {
    /// A report for a run of `secs` seconds; prints only if `print`.
    /// Reads `/metrics` once for its baseline: fails if the gateway's
    /// series are not there.
    pub(crate) fn new(
        secs: u64,
        observer: Observer,
        metrics: &MetricsEndpoint,
        upstream: Arc<UpstreamLoad>,
        warehouse: Arc<Warehouse>,
        print: bool,
    ) -> Result<Self, DemoError> {
        let handle = metrics.handle();
        let baseline = MetricsCounts::read(&prometheus::scrape(&handle)?)?;
        Ok(Self {
            secs,
            observer,
            metrics: handle,
            metrics_url: metrics.url(),
            baseline,
            upstream,
            warehouse,
            print,
            concurrency: 0,
            gateway: None,
            clients: Vec::new(),
            peak_active: 0,
            peak_queued: 0,
            upstream_peak: 0,
        })
    }

    /// The setup, the legend and the table header.
    pub(crate) fn print_intro(
        &mut self,
        concurrency: usize,
        gateway: SocketAddr,
        timeline: &Timeline,
        saga_log: &std::path::Path,
    ) {
        self.concurrency = concurrency;
        self.gateway = Some(gateway);
        self.clients = (0..concurrency)
            .map(Who::Steady)
            .chain([Who::Burst])
            .map(ClientSummary::new)
            .collect();
        if !self.print {
            return;
        }
        let (healthy_until, degraded_until) = timeline.boundaries();
        let secs = timeline.secs();
        let rates = |p: Phase| {
            format!(
                "{}% slow, {}% 500, {}% 503",
                p.slow_percent(),
                p.error_percent(),
                p.unavailable_percent()
            )
        };
        println!("buttress demo: {secs} s, {concurrency} clients in a closed loop (each waits for its answer;");
        println!(
            "               {HOT_PERCENT}% of their requests go to the cached /hot, the rest to /), and one that bursts:"
        );
        println!(
            "               {BURST_SIZE} requests at once every {} to /, ignoring 429s",
            ms(BURST_EVERY)
        );
        println!();
        println!(
            "  upstream  answers in {}-{} ms, slow calls take {}-{} ms; fails with 500, or sheds a call\n            \
             at once with 503 and Retry-After: 0",
            FAST_MS.0, FAST_MS.1, SLOW_MS.0, SLOW_MS.1
        );
        println!(
            "            healthy 0-{healthy_until} s ({}), degraded {healthy_until}-{degraded_until} s ({}), recovered {degraded_until}-{secs} s ({})",
            rates(Phase::Healthy),
            rates(Phase::Degraded),
            rates(Phase::Recovered)
        );
        println!(
            "  metrics   {} (Prometheus text format): the layers' buttress_* series and the\n            \
             gateway's http_server_* (MetricsLayer `gateway`, by route)",
            self.metrics_url
        );
        println!("  gateway   http://{gateway}, outermost first:");
        println!("            error-to-response   rejections become 429 / 503 (+ Retry-After) / 504, empty body");
        println!(
            "            rate limit `per-client`  {RATE_PER_CLIENT}/s per client (x-client header), burst {RATE_BURST} (GCRA);\n                                \
             over it: 429 before taking a bulkhead slot"
        );
        println!(
            "            bulkhead `gateway`  {MAX_CONCURRENT} running, {MAX_QUEUE} queued, wait at most {}",
            ms(MAX_WAIT)
        );
        println!(
            "            breaker `upstream`  opens at {BREAKER_THRESHOLD:.0}% failures (500, 502, timeouts) in the last {BREAKER_WINDOW} calls,\n                                \
             stays open {} s, then lets {BREAKER_PROBES} probes through: closes if under {BREAKER_THRESHOLD:.0}% fail",
            BREAKER_OPEN.as_secs_f64()
        );
        println!(
            "            fallback `upstream-fallback`  a call the breaker refuses is answered 200 with a\n                                \
             canned page, marked `x-fallback` (inside the bulkhead: a shed call stays a 503)"
        );
        println!(
            "            timeout `upstream-timeout`  {} per forwarded call, retries included",
            ms(UPSTREAM_TIMEOUT)
        );
        println!(
            "            retry `upstream-retry`  around the upstream client, inside the timeout: a GET\n                                \
             shed with 503 (or a 502, 504, 429, transport error) is sent again,\n                                \
             {RETRY_ATTEMPTS} attempts in all, after up to {}, then up to {} (full jitter,\n                                \
             cap {}), never past the timeout; budget {RETRY_BUDGET_PERCENT:.0}% of the calls + {RETRY_BUDGET_FLOOR}/s",
            ms(RETRY_BACKOFF),
            ms(RETRY_BACKOFF * 2),
            ms(RETRY_MAX_DELAY)
        );
        println!(
            "            /hot     the same, with a cache `hot` between the rate limit and the bulkhead:\n                     \
             fresh for {} s, then served stale for up to {} s while the call to refresh it\n                     \
             fails or is rejected (stale-if-error); concurrent misses make one call",
            HOT_TTL.as_secs(),
            HOT_MAX_STALE.as_secs()
        );
        println!(
            "            /health  /health/live: the process answers; /health/ready: 503 while the breaker\n                     \
             is open, degraded (still 200) from {:.0}% bulkhead use; checked every {}",
            HEALTH_BULKHEAD_THRESHOLD * 100.0,
            ms(HEALTH_INTERVAL)
        );
        println!(
            "  orders    saga `order`, {ORDER_WORKERS} loops (a pause of {}-{} ms between two orders): reserve stock,\n            \
             charge (POST to the upstream, at most {}), ship; a failed charge releases the stock;\n            \
             logged in SQLite in {} (removed at the end)",
            ORDER_PAUSE_MS.0,
            ORDER_PAUSE_MS.1,
            ms(CHARGE_TIMEOUT),
            saga_log.display()
        );
        println!();
        println!(
            "  columns   the answers the clients got (/ and /hot): 200; fb: 200 from the fallback, the\n            \
             breaker open; 429 over the client's rate limit; 500 upstream failure passed on; 502\n            \
             still shed (503) after the retries; 503 shed by the bulkhead (or, on /hot with\n            \
             nothing stale to serve, the open circuit); 504 cut by the timeout; hot: to /hot\n            \
             from /metrics, as Prometheus scrapes it: retry: retries made; saved: calls answered\n            \
             after a retry; hit / stale: /hot answered from a fresh / an expired entry; done /\n            \
             undone: order sagas completed / compensated; circuit: breaker state at the end of the\n            \
             second; ready: GET /health/ready then (buttress_health_ready says the same)\n            \
             from the layers: spent: retries refused, budget spent"
        );
        println!();
        let header = format!(
            "{:>4}  {:<9} {:>5} {:>5} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>7}  {:<9} ready",
            "sec",
            "phase",
            "req",
            "200",
            "fb",
            "429",
            "500",
            "502",
            "503",
            "504",
            "retry",
            "saved",
            "spent",
            "hot",
            "hit",
            "stale",
            "done",
            "undone",
            "p99",
            "circuit",
        );
        println!("{header}");
        println!("{}", "-".repeat(header.len()));
    }

    /// Prints one row per second until the load is over; the last row
    /// waits for the clients' last answers.
    pub(crate) async fn live(
        &mut self,
        start: Instant,
        timeline: &Timeline,
        mut samples: UnboundedReceiver<Sample>,
        load: Load,
    ) -> Result<Totals, DemoError> {
        let mut load = Some(load);
        let mut upstream_before = self.upstream.calls();
        let mut metrics_before = MetricsCounts::default();
        let mut retries_before = RetryCounts::default();
        let mut totals = Totals {
            elapsed: Duration::ZERO,
            counts: Counts::default(),
            latencies: Vec::new(),
            phases: Vec::new(),
            metrics: MetricsCounts::default(),
            circuit_state: "closed",
            readiness: Vec::new(),
            ready_gauge: Vec::new(),
        };
        let probes = load::probe_client();
        // Retries are attempts less completed calls, two counters that a
        // scrape may catch between the two increments of one call: a row
        // shows what the total reached less what the rows above showed, so
        // that the rows always add up to the total.
        let mut retries_shown = 0;
        for second in 1..=self.secs {
            self.watch_until(start + Duration::from_secs(second)).await;
            if second == self.secs {
                if let Some(load) = load.take() {
                    load.finish().await;
                }
            }
            let mut counts = Counts::default();
            let mut latencies = Vec::new();
            while let Ok(sample) = samples.try_recv() {
                let client = match sample.who {
                    Who::Steady(n) => n,
                    Who::Burst => self.concurrency,
                };
                if let Some(tally) = self.clients.get_mut(client) {
                    tally.add(&sample);
                }
                counts.add_sample(&sample);
                latencies.push(sample.latency);
            }
            latencies.sort_unstable();
            let upstream_now = self.upstream.calls();
            let upstream_calls = upstream_now - upstream_before;
            upstream_before = upstream_now;
            let upstream_peak = std::mem::take(&mut self.upstream_peak);
            // What a load balancer probing readiness is told now; the probe
            // sets `buttress_health_ready`, read below.
            let ready = match self.gateway {
                Some(gateway) => load::probe(&probes, gateway, "/health/ready")
                    .await
                    .ok()
                    .map(|status| status.as_u16()),
                None => None,
            };
            // What Prometheus would scrape now.
            let exposition = prometheus::scrape(&self.metrics)?;
            let ready_gauge = prometheus::ready_status(&exposition)?;
            totals.readiness.push(ready);
            totals.ready_gauge.push(ready_gauge);
            let metrics_now = MetricsCounts::read(&exposition)?.since(&self.baseline);
            let metrics = metrics_now.since(&metrics_before);
            metrics_before = metrics_now;
            let retries_made = metrics_now.retries().saturating_sub(retries_shown);
            retries_shown += retries_made;
            let circuit = prometheus::circuit_state(&exposition)?;
            totals.metrics = metrics_now;
            totals.circuit_state = circuit;
            let retries_now = self.observer.retries.get();
            let retries = retries_now.since(retries_before);
            retries_before = retries_now;
            let phase = timeline.phase_at(Duration::from_secs(second - 1));
            if self.print {
                let ready = ready.map_or_else(|| "-".to_owned(), |s| s.to_string());
                println!(
                    "{second:>4}  {phase:<9} {:>5} {:>5} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>7}  {circuit:<9} {ready}",
                    counts.total,
                    counts.ok,
                    counts.fallback,
                    counts.rate_limited,
                    counts.upstream_errors,
                    counts.bad_gateway,
                    counts.shed,
                    counts.timeouts,
                    retries_made,
                    metrics.retry_succeeded,
                    retries.budget_spent,
                    counts.hot,
                    metrics.cache_hits,
                    metrics.cache_stale,
                    metrics.sagas_completed,
                    metrics.sagas_compensated,
                    ms(percentile(&latencies, 99)),
                );
                if counts.other > 0 {
                    println!("      ({} other: another status, a connection error or the client's {} timeout)", counts.other, ms(CLIENT_TIMEOUT));
                }
            }
            let not_ready = u64::from(ready == Some(503));
            totals.counts.merge(&counts);
            totals.latencies.extend_from_slice(&latencies);
            match totals.phases.last_mut() {
                Some(p) if p.phase == phase => {
                    p.seconds += 1;
                    p.counts.merge(&counts);
                    p.latencies.extend(latencies);
                    p.metrics.merge(&metrics);
                    p.retries_made += retries_made;
                    p.retries.merge(retries);
                    p.upstream_calls += upstream_calls;
                    p.upstream_peak = p.upstream_peak.max(upstream_peak);
                    p.not_ready_seconds += not_ready;
                }
                _ => totals.phases.push(PhaseTotals {
                    phase,
                    seconds: 1,
                    counts,
                    latencies,
                    metrics,
                    retries_made,
                    retries,
                    upstream_calls,
                    upstream_peak,
                    not_ready_seconds: not_ready,
                }),
            }
        }
        totals.elapsed = start.elapsed();
        Ok(totals)
    }

    /// Sleeps until `until`, sampling the bulkhead's occupancy for its peak.
    async fn watch_until(&mut self, until: Instant) {
        loop {
            let snapshot = self.observer.bulkhead.snapshot();
            self.peak_active = self.peak_active.max(snapshot.active);
            self.peak_queued = self.peak_queued.max(snapshot.queued);
            self.upstream_peak = self.upstream_peak.max(self.upstream.in_flight());
            let now = Instant::now();
            if now >= until {
                return;
            }
            sleep_until((now + OCCUPANCY_SAMPLE).min(until)).await;
        }
    }

    /// The final numbers.
    pub(crate) fn summary(
        &self,
        totals: Totals,
        registry: serde_json::Value,
        unprotected: Option<Unprotected>,
    ) -> Summary {
        let Totals {
            elapsed,
            counts,
            mut latencies,
            phases,
            metrics,
            circuit_state,
            readiness,
            ready_gauge,
        } = totals;
        let (stock_reserved, stock_released, shipped) = self.warehouse.get();
        latencies.sort_unstable();
        // The 503s as the clients saw them. The layers' events count more:
        // the bulkhead and the breaker decide in `poll_ready`, and a request
        // they refused there that the rate limit above them then answered
        // 429 never reached them, yet was counted.
        let (full_events, wait_events) = self.observer.rejections.get();
        debug_assert!(
            full_events + wait_events >= counts.shed_queue_full + counts.shed_wait_timed_out
        );
        let (shed_queue_full, shed_wait_timed_out) =
            (counts.shed_queue_full, counts.shed_wait_timed_out);
        let retries = self.observer.retries.get();
        let budget = self
            .observer
            .retry
            .snapshot()
            .budget
            .unwrap_or(BudgetSnapshot {
                available: 0,
                deposits: 0,
                withdrawals: 0,
                refusals: 0,
            });
        let phases = phases
            .into_iter()
            .map(|mut p| {
                p.latencies.sort_unstable();
                PhaseSummary {
                    phase: p.phase.name(),
                    seconds: p.seconds,
                    counts: p.counts,
                    p50: percentile(&p.latencies, 50),
                    p99: percentile(&p.latencies, 99),
                    circuit_rejected: p.counts.shed_circuit_open,
                    fallback_used: p.metrics.fallback_used,
                    cache_hits: p.metrics.cache_hits,
                    cache_stale: p.metrics.cache_stale,
                    sagas_completed: p.metrics.sagas_completed,
                    sagas_compensated: p.metrics.sagas_compensated,
                    not_ready_seconds: p.not_ready_seconds,
                    circuit_opened: p.metrics.circuit_opened,
                    circuit_closed: p.metrics.circuit_closed,
                    retries: p.retries_made,
                    retry_succeeded: p.metrics.retry_succeeded,
                    retry_budget_spent: p.retries.budget_spent,
                    upstream_calls: p.upstream_calls,
                    upstream_peak: p.upstream_peak,
                }
            })
            .collect();
        Summary {
            elapsed,
            concurrency: self.concurrency,
            counts,
            rate_limited: metrics.rate_limit_rejected,
            rate_limit_admitted: metrics.rate_limit_permitted,
            clients: self.clients.clone(),
            shed_queue_full,
            shed_wait_timed_out,
            circuit_rejected: counts.shed_circuit_open,
            circuit_opened: metrics.circuit_opened,
            circuit_reopened: metrics.circuit_reopened,
            circuit_closed: metrics.circuit_closed,
            circuit_state,
            upstream_calls_timed_out: metrics.timed_out,
            forwarded: budget.deposits,
            retries: metrics.retries(),
            retried_calls: retries.retried_calls,
            retry_succeeded: metrics.retry_succeeded,
            retry_exhausted: metrics.retry_exhausted,
            retry_budget_spent: retries.budget_spent,
            retry_deadline: retries.deadline,
            retry_timed_out: retries.timed_out_after_retry(),
            retry_budget_left: budget.available,
            fallback_used: metrics.fallback_used,
            cache_hits: metrics.cache_hits,
            cache_stale: metrics.cache_stale,
            cache_misses: metrics.cache_misses,
            cache_coalesced: metrics.cache_coalesced,
            readiness,
            ready_gauge,
            sagas_started: metrics.sagas_started,
            sagas_completed: metrics.sagas_completed,
            sagas_compensated: metrics.sagas_compensated,
            sagas_needs_attention: metrics.sagas_needs_attention,
            stock_reserved,
            stock_released,
            shipped,
            saga_log: std::path::PathBuf::new(),
            peak_active: self.peak_active,
            peak_queued: self.peak_queued,
            p50: percentile(&latencies, 50),
            p99: percentile(&latencies, 99),
            max: latencies.last().copied().unwrap_or_default(),
            phases,
            unprotected,
            registry,
            metrics_url: self.metrics_url.clone(),
            metrics,
        }
    }
}

/// Sums up the comparison run from its samples.
pub(crate) fn unprotected(
    phase: Phase,
    seconds: u64,
    samples: impl IntoIterator<Item = Sample>,
    upstream_calls: u64,
    upstream_peak: usize,
) -> Unprotected {
    let mut counts = Counts::default();
    let mut latencies = Vec::new();
    for sample in samples {
        counts.add(sample.outcome);
        latencies.push(sample.latency);
    }
    latencies.sort_unstable();
    Unprotected {
        phase: phase.name(),
        seconds,
        counts,
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
        max: latencies.last().copied().unwrap_or_default(),
        upstream_calls,
        upstream_peak,
    }
}

/// The nearest-rank percentile of sorted values; zero when there are none.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// `part` as a percentage of `whole`; zero when `whole` is.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A duration for people: whole milliseconds, one decimal below 10 ms.
fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            c.total as f64 / secs
        } else {
            0.0
        };
        writeln!(
            f,
            "totals: {} requests in {secs:.1} s ({rate:.0} req/s) from {} clients and the bursting one",
            c.total, self.concurrency
        )?;
        let line = |f: &mut fmt::Formatter<'_>, label: &str, n: u64, note: String| {
            let pct = c.percent(n);
            if note.is_empty() {
                writeln!(f, "  {label:<18} {n:>7}  {pct:>5.1} %")
            } else {
                writeln!(f, "  {label:<18} {n:>7}  {pct:>5.1} %   {note}")
            }
        };
        line(f, "200 ok", c.ok, String::new())?;
        line(
            f,
            "200 fallback",
            c.fallback,
            "the breaker refused the call; the fallback answered".to_owned(),
        )?;
        line(
            f,
            "429 rate limited",
            c.rate_limited,
            self.rate_limited_note(),
        )?;
        line(f, "500 upstream error", c.upstream_errors, String::new())?;
        line(
            f,
            "502 still shed",
            c.bad_gateway,
            format!(
                "503 after {RETRY_ATTEMPTS} attempts {}, budget spent {}, out of time {}",
                self.retry_exhausted, self.retry_budget_spent, self.retry_deadline
            ),
        )?;
        line(
            f,
            "503 rejected",
            c.shed,
            format!(
                "bulkhead {} ({} queue full, {} waited {}), open circuit on /hot {}",
                self.shed_bulkhead(),
                self.shed_queue_full,
                self.shed_wait_timed_out,
                ms(MAX_WAIT),
                self.circuit_rejected
            ),
        )?;
        line(f, "504 timed out", c.timeouts, String::new())?;
        line(f, "other", c.other, String::new())?;
        writeln!(
            f,
            "  latency            p50 {}, p99 {}, max {}",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "by phase     {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}  circuit",
            "req/s", "200", "fb", "500", "502", "503", "504", "retry", "p99"
        )?;
        for p in &self.phases {
            let pc = &p.counts;
            writeln!(
                f,
                "  {:<10} {:>5} {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}% {:>7}  opened {}, closed {}",
                p.phase,
                pc.total / p.seconds.max(1),
                pc.percent(pc.ok),
                pc.percent(pc.fallback),
                pc.percent(pc.upstream_errors),
                pc.percent(pc.bad_gateway),
                pc.percent(pc.shed),
                pc.percent(pc.timeouts),
                pc.percent(p.retries),
                ms(p.p99),
                p.circuit_opened,
                p.circuit_closed
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "by phase     {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "fallback", "/hot hit", "stale", "orders", "undone", "ready 503"
        )?;
        for p in &self.phases {
            let ended = p.sagas_completed + p.sagas_compensated;
            writeln!(
                f,
                "  {:<10} {:>8} {:>8} {:>8} {:>8} {:>7.0}% {:>8} s",
                p.phase,
                p.fallback_used,
                p.cache_hits,
                p.cache_stale,
                ended,
                percent(p.sagas_compensated, ended),
                p.not_ready_seconds
            )?;
        }
        writeln!(f)?;
        writeln!(f, "what each pattern did")?;
        self.fmt_rate_limit(f)?;
        self.fmt_retry(f)?;
        writeln!(
            f,
            "  timeout    {} slow upstream calls cut at {} and answered 504: none held a\n             \
             bulkhead slot or a client for up to {} ms; the slowest answer took {}\n             \
             (at most {} in the queue plus {} of call, plus overhead)",
            self.upstream_calls_timed_out,
            ms(UPSTREAM_TIMEOUT),
            SLOW_MS.1,
            ms(self.max),
            ms(MAX_WAIT),
            ms(UPSTREAM_TIMEOUT)
        )?;
        self.fmt_circuit(f)?;
        self.fmt_fallback(f)?;
        self.fmt_cache(f)?;
        self.fmt_health(f)?;
        self.fmt_sagas(f)?;
        writeln!(
            f,
            "  bulkhead   {} requests shed with 503 instead of queueing unboundedly: {} found\n             \
             {} running and {} waiting, {} waited {} in vain; peak {} running, {} waiting",
            self.shed_bulkhead(),
            self.shed_queue_full,
            MAX_CONCURRENT,
            MAX_QUEUE,
            self.shed_wait_timed_out,
            ms(MAX_WAIT),
            self.peak_active,
            self.peak_queued
        )?;
        writeln!(
            f,
            "  responses  rejections became bare 429 / 503 / 504 statuses (the 429s and 503s\n             \
             with Retry-After, every answer with RateLimit headers), never error text;\n             \
             upstream 500s passed through ({}), and the upstream 503s left after the\n             \
             retries became 502 ({}), so that a 503 from the gateway always means\n             \
             \"shed here\"",
            c.upstream_errors, c.bad_gateway
        )?;
        self.fmt_comparison(f)?;
        self.fmt_metrics(f)?;
        writeln!(f)?;
        writeln!(f, "registry snapshot")?;
        let json = serde_json::to_string_pretty(&self.registry).map_err(|_| fmt::Error)?;
        writeln!(f, "{json}")
    }
}

impl Summary {
    /// 503s from the bulkhead: queue full or waited too long.
    pub fn shed_bulkhead(&self) -> u64 {
        self.shed_queue_full + self.shed_wait_timed_out
    }

    /// The protected run's phase beside the same phase without buttress.
    fn fmt_comparison(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(bare) = &self.unprotected else {
            return Ok(());
        };
        let Some(with) = self.phases.iter().find(|p| p.phase == bare.phase) else {
            return Ok(());
        };
        writeln!(f)?;
        writeln!(
            f,
            "without buttress: the same {} upstream and {} clients (and the bursting one) for {} s,\n  \
             through a gateway that only forwards (no rate limit, bulkhead, breaker, timeout or retry)",
            bare.phase,
            self.concurrency,
            bare.seconds
        )?;
        writeln!(
            f,
            "  {:<18} {:>5} {:>6} {:>7} {:>8} {:>8} {:>11} {:>13}",
            bare.phase, "req/s", "200", "not 200", "p50", "p99", "upstream/s", "upstream peak"
        )?;
        let row = |f: &mut fmt::Formatter<'_>,
                   label: &str,
                   c: &Counts,
                   secs: u64,
                   p50: Duration,
                   p99: Duration,
                   calls: u64,
                   peak: usize| {
            let secs = secs.max(1);
            writeln!(
                f,
                "  {label:<18} {:>5} {:>5.0}% {:>6.0}% {:>8} {:>8} {:>11} {:>13}",
                c.total / secs,
                c.percent(c.ok),
                c.percent(c.total - c.ok),
                ms(p50),
                ms(p99),
                calls / secs,
                peak
            )
        };
        row(
            f,
            "with buttress",
            &with.counts,
            with.seconds,
            with.p50,
            with.p99,
            with.upstream_calls,
            with.upstream_peak,
        )?;
        row(
            f,
            "without",
            &bare.counts,
            bare.seconds,
            bare.p50,
            bare.p99,
            bare.upstream_calls,
            bare.upstream_peak,
        )?;
        let text = format!(
            "Only the gateway differs. With buttress a request waits at most {} for a \
             bulkhead slot and {} for the upstream, retries included, and otherwise fails \
             fast (503 shed, 504 cut); without it, every request reaches the upstream and \
             its client waits as long as the upstream takes (up to {} ms in this phase; the \
             slowest took {}).",
            ms(MAX_WAIT),
            ms(UPSTREAM_TIMEOUT),
            SLOW_MS.1,
            ms(bare.max)
        );
        writeln!(f, "  {}", wrap(&text, 89, "\n  "))
    }

    /// The `/metrics` counters the report printed, by series, as a scrape
    /// reads them.
    fn fmt_metrics(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.metrics;
        writeln!(f)?;
        writeln!(
            f,
            "from /metrics ({}), as Prometheus scrapes it at the end of the load:\n  \
             the counters behind the table's retry, saved, hit, stale, done, undone and circuit\n  \
             columns and the 429s, retries, timeouts, breaker, fallback, cache and saga numbers\n  \
             above (fewer labels: the sum of the series)",
            self.metrics_url
        )?;
        let rl = prometheus::RATE_LIMIT;
        let cb = prometheus::BREAKER;
        let rt = prometheus::RETRY;
        let (fb, ca, sg) = (prometheus::FALLBACK, prometheus::CACHE, prometheus::SAGA);
        let mut rows: Vec<(String, u64, &str)> = vec![
            (
                format!("buttress_rate_limit_decisions_total{{name=\"{rl}\",decision=\"permitted\"}}"),
                m.rate_limit_permitted,
                "admitted",
            ),
            (
                format!("buttress_rate_limit_decisions_total{{name=\"{rl}\",decision=\"rejected\"}}"),
                m.rate_limit_rejected,
                "429",
            ),
            (
                format!(
                    "buttress_bulkhead_calls_total{{name=\"{}\",kind=\"rejected\"}}",
                    prometheus::BULKHEAD
                ),
                m.bulkhead_rejected,
                "refusals: the 503s, /hot misses answered stale, requests then answered 429",
            ),
            (
                format!("buttress_circuit_breaker_calls_total{{name=\"{cb}\",kind=\"not_permitted\"}}"),
                m.circuit_not_permitted,
                "refusals: fb, /hot misses answered stale (or 503), requests then answered 429",
            ),
            (
                format!("buttress_circuit_breaker_transitions_total{{name=\"{cb}\",to=\"open\"}}"),
                m.circuit_opened,
                "opened",
            ),
            (
                format!("buttress_circuit_breaker_transitions_total{{name=\"{cb}\",from=\"half_open\",to=\"open\"}}"),
                m.circuit_reopened,
                "reopened",
            ),
            (
                format!("buttress_circuit_breaker_transitions_total{{name=\"{cb}\",to=\"closed\"}}"),
                m.circuit_closed,
                "closed",
            ),
            (
                format!(
                    "buttress_timeout_calls_total{{name=\"{}\",kind=\"timed_out\"}}",
                    prometheus::TIMEOUT
                ),
                m.timed_out,
                "504",
            ),
            (
                format!("buttress_retry_attempts_total{{name=\"{rt}\"}}"),
                m.retry_attempts,
                "calls + retries",
            ),
            (
                format!("buttress_retry_calls_total{{name=\"{rt}\"}}"),
                m.retry_calls,
                "completed calls",
            ),
            (
                format!("buttress_retry_calls_total{{name=\"{rt}\",kind=\"successful_with_retry\"}}"),
                m.retry_succeeded,
                "saved",
            ),
            (
                format!("buttress_retry_calls_total{{name=\"{rt}\",kind=\"exhausted\"}}"),
                m.retry_exhausted,
                "503 at every attempt",
            ),
            (
                format!(
                    "http_server_requests{{name=\"{}\",http_route=\"/\"}}",
                    prometheus::HTTP
                ),
                m.http_requests,
                "requests",
            ),
            (
                format!(
                    "http_server_requests{{name=\"{}\",http_route=\"/hot\"}}",
                    prometheus::HTTP
                ),
                m.http_requests_hot,
                "requests",
            ),
            (
                format!("buttress_fallback_calls_total{{name=\"{fb}\",kind=\"fallback_used\"}}"),
                m.fallback_used,
                "fb",
            ),
        ];
        for (result, value, meaning) in [
            ("hit", m.cache_hits, "hit"),
            ("miss", m.cache_misses, "called the upstream"),
            ("coalesced", m.cache_coalesced, "waited for another's call"),
            ("stale", m.cache_stale, "stale"),
        ] {
            rows.push((
                format!("buttress_cache_requests_total{{name=\"{ca}\",result=\"{result}\"}}"),
                value,
                meaning,
            ));
        }
        for (outcome, value, meaning) in [
            ("started", m.sagas_started, "orders"),
            ("completed", m.sagas_completed, "done"),
            ("compensated", m.sagas_compensated, "undone"),
            (
                "needs_attention",
                m.sagas_needs_attention,
                "left for a person",
            ),
        ] {
            rows.push((
                format!("buttress_saga_sagas_total{{name=\"{sg}\",outcome=\"{outcome}\"}}"),
                value,
                meaning,
            ));
        }
        let width = rows
            .iter()
            .map(|(series, ..)| series.len())
            .max()
            .unwrap_or(0);
        for (series, value, meaning) in rows {
            writeln!(f, "  {series:<width$} {value:>7}  {meaning}")?;
        }
        writeln!(
            f,
            "  retries = attempts - completed calls = {}; breaker state gauge at 1: {}",
            m.retries(),
            self.circuit_state
        )?;
        if let Some(last) = self.ready_gauge.last() {
            writeln!(
                f,
                "  buttress_health_ready after the last probe: {} ({last})",
                u8::from(*last == 200)
            )?;
        }
        Ok(())
    }

    /// Who the 429s went to, for the totals.
    fn rate_limited_note(&self) -> String {
        let burst = self.burst().map_or(0, |b| b.rate_limited);
        let steady = self.counts.rate_limited.saturating_sub(burst);
        format!("the bursting client {burst}, the steady ones {steady}")
    }

    /// The bursting client's numbers.
    fn burst(&self) -> Option<&ClientSummary> {
        self.clients.iter().find(|c| c.name == "burst")
    }

    /// The rate limit's line of "what each pattern did", and the
    /// per-client numbers.
    fn fmt_rate_limit(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steady: Vec<&ClientSummary> =
            self.clients.iter().filter(|c| c.name != "burst").collect();
        let steady_limited: u64 = steady.iter().map(|c| c.rate_limited).sum();
        let mut text = format!(
            "{} requests over their client's limit of {RATE_PER_CLIENT}/s (burst {RATE_BURST}) were \
             answered 429 at once, before they could take a bulkhead slot or reach the upstream",
            self.rate_limited
        );
        if let Some(b) = self.burst() {
            text += &format!(
                "; the bursting client got {} of them and {} through: of each {BURST_SIZE} \
                 sent at once, as many as its bucket held (at most {RATE_BURST}, one more every {})",
                b.rate_limited,
                b.admitted,
                ms(Duration::from_secs(1) / RATE_PER_CLIENT as u32)
            );
            match b.retry_after {
                Some((lo, hi)) if lo == hi => {
                    text += &format!(
                        ". Each 429 said Retry-After: {lo} (whole seconds, rounded up from \
                         the wait for the next permit); it ignored them"
                    )
                }
                Some((lo, hi)) => {
                    text += &format!(". Its 429s said Retry-After: {lo} to {hi}; it ignored them")
                }
                None => {}
            }
        }
        text += &format!(
            ". The {} steady clients, at most about 20 requests a second each, got {}",
            steady.len(),
            if steady_limited == 0 {
                "none".to_owned()
            } else {
                steady_limited.to_string()
            }
        );
        writeln!(f, "  rate limit {}", wrap(&text, 78, "\n             "))?;
        writeln!(
            f,
            "             {:<10} {:>9} {:>7}  Retry-After seen",
            "client", "admitted", "429"
        )?;
        if let Some(b) = self.burst() {
            let seen = match b.retry_after {
                Some((lo, hi)) if lo == hi => format!("{lo} s"),
                Some((lo, hi)) => format!("{lo}-{hi} s"),
                None => "-".to_owned(),
            };
            writeln!(
                f,
                "             {:<10} {:>9} {:>7}  {seen}",
                b.name, b.admitted, b.rate_limited
            )?;
        }
        if let (Some(first), Some(last)) = (steady.first(), steady.last()) {
            let admitted: u64 = steady.iter().map(|c| c.admitted).sum();
            let least = steady.iter().map(|c| c.admitted).min().unwrap_or(0);
            let most = steady.iter().map(|c| c.admitted).max().unwrap_or(0);
            let label = if steady.len() == 1 {
                first.name.clone()
            } else {
                format!("{}-{}", first.name, last.name)
            };
            let each = if steady.len() == 1 {
                String::new()
            } else {
                format!("   ({least}-{most} admitted each)")
            };
            writeln!(
                f,
                "             {label:<10} {admitted:>9} {steady_limited:>7}  -{each}"
            )?;
        }
        Ok(())
    }

    /// The retry layer's line of "what each pattern did".
    fn fmt_retry(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra = if self.forwarded == 0 {
            0.0
        } else {
            self.retries as f64 * 100.0 / self.forwarded as f64
        };
        let mut text = format!(
            "{} for {}, {extra:.1}% more upstream calls than the {} forwarded: \
             {} answered after a retry instead of with 502",
            count(self.retries, "retry", "retries"),
            count(self.retried_calls, "shed call", "shed calls"),
            self.forwarded,
            count(self.retry_succeeded, "call was", "calls were")
        );
        if self.retry_exhausted > 0 {
            text += &format!(
                "; {} shed at all {RETRY_ATTEMPTS} attempts",
                count(self.retry_exhausted, "call was", "calls were")
            );
        }
        if self.retry_timed_out > 0 {
            text += &format!(
                "; {} cut by the {} timeout while retrying",
                count(self.retry_timed_out, "call was", "calls were"),
                ms(UPSTREAM_TIMEOUT)
            );
        }
        if self.retry_deadline > 0 {
            text += &format!(
                "; {} not made, as {} not have started within the {} timeout",
                count(self.retry_deadline, "retry was", "retries were"),
                if self.retry_deadline == 1 {
                    "it could"
                } else {
                    "they could"
                },
                ms(UPSTREAM_TIMEOUT)
            );
        }
        if self.retry_budget_spent > 0 {
            text += &format!(
                ". The budget ({RETRY_BUDGET_PERCENT:.0}% of the calls + {RETRY_BUDGET_FLOOR}/s) \
                 ran out {}: {} refused, so that a shedding upstream did not get \
                 {RETRY_ATTEMPTS} calls for each one",
                self.phases_where(|p| p.retry_budget_spent),
                count(self.retry_budget_spent, "retry", "retries")
            );
        } else {
            text += &format!(
                ". The budget ({RETRY_BUDGET_PERCENT:.0}% of the calls + {RETRY_BUDGET_FLOOR}/s) \
                 never ran out ({} retries left at the end); it is what would keep an upstream \
                 that sheds every call from getting {RETRY_ATTEMPTS} calls for each one",
                self.retry_budget_left
            );
        }
        writeln!(f, "  retry      {}", wrap(&text, 78, "\n             "))
    }

    /// The breaker's line of "what each pattern did".
    fn fmt_circuit(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = if self.circuit_opened == 0 {
            format!(
                "never opened: the failure rate (500s, 502s and timeouts) of the last {BREAKER_WINDOW} \
                 calls stayed below {BREAKER_THRESHOLD:.0}%"
            )
        } else {
            format!(
                "opened {} {}",
                times(self.circuit_opened),
                self.phases_where(|p| p.circuit_opened)
            )
        };
        if self.circuit_reopened > 0 {
            text += &format!(
                ", {} of them because half-open probes failed again",
                self.circuit_reopened
            );
        }
        if self.circuit_closed > 0 {
            text += &format!(
                "; closed {} {} after {BREAKER_PROBES} probes with under \
                 {BREAKER_THRESHOLD:.0}% failures",
                times(self.circuit_closed),
                self.phases_where(|p| p.circuit_closed)
            );
        }
        text += &format!("; it ended {}", self.circuit_state);
        if self.circuit_rejected > 0 {
            text += &format!(
                ". {} calls failed fast with 503 (and Retry-After while open) instead of \
                 waiting up to {} on a failing upstream while holding a bulkhead slot",
                self.circuit_rejected,
                ms(UPSTREAM_TIMEOUT)
            );
        }
        writeln!(f, "  circuit    {}", wrap(&text, 78, "\n             "))
    }
}

impl Summary {
    /// The fallback's line of "what each pattern did".
    fn fmt_fallback(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = if self.fallback_used == 0 {
            "never used: the breaker refused no call on /".to_owned()
        } else {
            format!(
                "{} calls on / that the breaker refused {} were answered 200 with the canned \
                 page, marked `x-fallback: {}; reason=circuit_open`, instead of a 503 (the \
                 clients saw {} of them); a timeout, an upstream error or a shed call was not \
                 hidden behind it",
                self.fallback_used,
                self.phases_where(|p| p.fallback_used),
                prometheus::FALLBACK,
                self.counts.fallback
            )
        };
        writeln!(f, "  fallback   {}", wrap(&text, 78, "\n             "))
    }

    /// The cache's line of "what each pattern did".
    fn fmt_cache(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = format!(
            "/hot ({} requests): {} answered from the fresh entry without a call to the \
             upstream; {} called it, and {} more waited for such a call rather than make their own",
            self.counts.hot, self.cache_hits, self.cache_misses, self.cache_coalesced
        );
        if self.cache_stale > 0 {
            text += &format!(
                "; of these, {} were answered from the expired entry (at most {} s past its \
                 {} s) when the call failed or was rejected {}, instead of with an error",
                self.cache_stale,
                HOT_MAX_STALE.as_secs(),
                HOT_TTL.as_secs(),
                self.phases_where(|p| p.cache_stale)
            );
        }
        writeln!(f, "  cache      {}", wrap(&text, 78, "\n             "))
    }

    /// The health probes' line of "what each pattern did".
    fn fmt_health(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not_ready: u64 = self.phases.iter().map(|p| p.not_ready_seconds).sum();
        let text = if not_ready == 0 {
            format!(
                "/health/ready answered 200 at the end of each of the {} seconds: the breaker \
                 was never open then",
                self.readiness.len()
            )
        } else {
            format!(
                "/health/ready answered 503 at the end of {not_ready} of the {} seconds {}, \
                 while the breaker was open (a load balancer would send its traffic elsewhere), \
                 and 200 otherwise; /health/live asks only whether the process answers, so a \
                 failing upstream never gets the gateway restarted",
                self.readiness.len(),
                self.phases_where(|p| p.not_ready_seconds)
            )
        };
        writeln!(f, "  health     {}", wrap(&text, 78, "\n             "))
    }

    /// The sagas' line of "what each pattern did".
    fn fmt_sagas(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ended = |p: &PhaseSummary| p.sagas_completed + p.sagas_compensated;
        let rates: Vec<String> = self
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{:.0}% in {}",
                    percent(p.sagas_compensated, ended(p)),
                    p.phase
                )
            })
            .collect();
        let mut text = format!(
            "{} orders: {} completed (charged and shipped), {} compensated (the charge failed \
             or took over {}, so the stock was released: {})",
            self.sagas_started,
            self.sagas_completed,
            self.sagas_compensated,
            ms(CHARGE_TIMEOUT),
            rates.join(", ")
        );
        if self.sagas_needs_attention > 0 {
            text += &format!(", {} left needing attention", self.sagas_needs_attention);
        }
        text += &format!(
            ". The warehouse: {} reservations, {} released, {} shipped",
            self.stock_reserved, self.stock_released, self.shipped
        );
        writeln!(f, "  saga       {}", wrap(&text, 78, "\n             "))
    }

    /// Where something counted by `count` happened: "in the degraded
    /// phase" or "(1 in healthy, 3 in degraded)"; empty if nowhere.
    fn phases_where(&self, count: impl Fn(&PhaseSummary) -> u64) -> String {
        let phases: Vec<_> = self.phases.iter().filter(|p| count(p) > 0).collect();
        match phases.as_slice() {
            [] => String::new(),
            [one] => format!("in the {} phase", one.phase),
            many => {
                let parts: Vec<_> = many
                    .iter()
                    .map(|p| format!("{} in {}", count(p), p.phase))
                    .collect();
                format!("({})", parts.join(", "))
            }
        }
    }
}

/// `text` in lines of at most `width` characters (longer words stay
/// whole), joined by `newline`.
fn wrap(text: &str, width: usize, newline: &str) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split_whitespace() {
        if line_len > 0 && line_len + 1 + word.len() > width {
            out += newline;
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out += word;
        line_len += word.len();
    }
    out
}

/// "1 call", "2 calls".
fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// "once", "twice", "3 times".
fn times(n: u64) -> String {
    match n {
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn counts_add_up() {
        let mut c = Counts::default();
        for o in [
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Shed(Some(Rejection::QueueFull)),
            Outcome::Shed(Some(Rejection::CircuitOpen)),
            Outcome::Shed(Some(Rejection::CircuitOpen)),
            Outcome::Shed(None),
            Outcome::Other,
        ] {
            c.add(o);
        }
        assert_eq!((c.total, c.ok, c.shed, c.other), (7, 2, 4, 1));
        assert_eq!(
            (
                c.shed_queue_full,
                c.shed_wait_timed_out,
                c.shed_circuit_open
            ),
            (1, 0, 2)
        );
        let mut sum = c;
        sum.merge(&c);
        assert_eq!((sum.shed, sum.shed_circuit_open), (8, 4));
        assert!((c.percent(c.ok) - 200.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn clients_count_their_429s_and_the_retry_after_they_saw() {
        let mut c = ClientSummary::new(Who::Burst);
        let sample = |outcome, retry_after| Sample {
            who: Who::Burst,
            outcome,
            latency: Duration::ZERO,
            retry_after,
            route: Route::Root,
            cache: None,
        };
        for s in [
            sample(Outcome::Ok, None),
            sample(Outcome::Shed(None), None),
            sample(Outcome::RateLimited, Some(2)),
            sample(Outcome::RateLimited, Some(1)),
            sample(Outcome::RateLimited, None),
        ] {
            c.add(&s);
        }
        assert_eq!(c.name, "burst");
        assert_eq!((c.admitted, c.rate_limited), (2, 3));
        assert_eq!(c.retry_after, Some((1, 2)));
        let mut counts = Counts::default();
        counts.add(Outcome::RateLimited);
        assert_eq!((counts.total, counts.rate_limited), (1, 1));
    }

    #[test]
    fn long_lines_wrap_between_words() {
        assert_eq!(wrap("ab cd ef", 5, "|"), "ab cd|ef");
        assert_eq!(wrap("abcdefg h", 3, "|"), "abcdefg|h");
        assert_eq!(wrap("", 3, "|"), "");
    }

    #[test]
    fn counts_read_as_words() {
        assert_eq!(times(1), "once");
        assert_eq!(times(2), "twice");
        assert_eq!(times(7), "7 times");
        assert_eq!(count(1, "retry", "retries"), "1 retry");
        assert_eq!(count(0, "retry", "retries"), "0 retries");
    }

    #[test]
    fn latencies_print_in_milliseconds() {
        assert_eq!(ms(Duration::from_micros(4_260)), "4.3 ms");
        assert_eq!(ms(Duration::from_millis(152)), "152 ms");
    }
}
