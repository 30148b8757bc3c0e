//! The buttress demo: a protected gateway in front of a flaky upstream,
//! under load.
//!
//! [`run`] starts, on 127.0.0.1 with ports chosen by the OS:
//!
//! - an **upstream** whose latency, error rate (500) and shedding rate
//!   (503) change in phases (healthy, degraded, recovered);
//! - a **gateway** that forwards every request to the upstream, protected
//!   in the server order of the design: errors to responses, then a rate
//!   limit per client (by its `x-client` header), then a bulkhead, then a
//!   **fallback** that answers 200 with a canned page (marked
//!   `x-fallback`) whatever the circuit breaker below it refuses, then the
//!   breaker, then a timeout, then the forwarding handler, which calls the
//!   upstream through a retry layer with a budget (the client side of the
//!   design), so that a shed call (503) is tried again within the timeout;
//! - on the same gateway, `GET /hot`: the same call behind a **cache**
//!   (between the rate limit and the bulkhead, so that a hit takes no
//!   bulkhead slot), fresh for 1 s, then served stale for up to 30 s while
//!   the call to refresh it fails or is rejected (stale-if-error); and
//!   **`/health/live` and `/health/ready`**, from a health registry that
//!   reads the layers' registry: readiness is 503 while the breaker is
//!   open, liveness only asks whether the process answers;
//! - **order sagas**, run continuously: reserve stock, charge the payment
//!   (a `POST` to the flaky upstream, the pivot), ship; a failed charge
//!   compensates the order (its stock is released). Every step is logged
//!   in SQLite, in a temporary directory removed when the run ends;
//! - a **load generator**: `concurrency` clients in a closed loop (30 % of
//!   their requests to `/hot`), and one more that sends bursts of requests
//!   at once, over its rate limit, and gets 429s (the steady clients stay
//!   under theirs).
//!
//! Before it builds any layer, it installs the Prometheus recorder of
//! `metrics-exporter-prometheus` as the global `metrics` recorder and
//! serves its exposition at `GET /metrics` on a listener of its own on
//! 127.0.0.1 ([`MetricsEndpoint`]; the URL is printed at the start). The
//! gateway's layers are built from a `Registry::with_metrics()` registry,
//! so each publishes its `buttress_*` series, and a
//! `MetricsLayer` (HTTP server preset, named `gateway`) records every
//! request as `http_server_*`. The report reads the layers' counters (rate
//! limit decisions, bulkhead rejections, breaker state, transitions and
//! rejections, timeouts, retries, the fallback's answers, the cache's hits
//! and stale answers, the sagas' outcomes, readiness) from that
//! exposition, parsed ([`Exposition`]), so what it prints is what
//! Prometheus scrapes.
//!
//! It prints one row per second (unless [`DemoConfig::print_table`] is
//! off): the answers the clients got (200, `fb` from the fallback, 429,
//! 500, 502, 503, 504), the retries, the requests to `/hot` and how many
//! the cache answered fresh (`hit`) or stale (`stale`), the order sagas
//! completed (`done`) and compensated (`undone`), the p99, the breaker's
//! state and what `GET /health/ready` answered (`ready`: 200, or 503 while
//! the breaker is open). It stops after [`DemoConfig::duration`]. Then, for
//! [`DemoConfig::compare`] (a few seconds), it puts the upstream back in its
//! degraded phase and sends the same load through a second gateway without
//! buttress, which only forwards, so the report shows what the protection
//! bought. It shuts the servers down gracefully and returns a [`Summary`],
//! whose `Display` is the final report.
//!
//! ```no_run
//! # async fn demo() -> Result<(), buttress_demo::DemoError> {
//! use std::time::Duration;
//!
//! let config = buttress_demo::DemoConfig {
//!     duration: Duration::from_secs(5),
//!     ..Default::default()
//! };
//! let summary = buttress_demo::run(config).await?;
//! println!("{summary}");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod cli;
mod error;
mod exposition;
mod gateway;
mod load;
mod orders;
mod phase;
mod prometheus;
mod report;
mod rng;
mod server;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::Registry;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::phase::Phase;

/// How often the comparison samples the upstream's calls in flight.
const UPSTREAM_SAMPLE: Duration = Duration::from_millis(10);

pub use cli::{parse_args, Command, USAGE};
pub use error::DemoError;
pub use exposition::{Exposition, ParseError, Sample};
pub use prometheus::{MetricsCounts, MetricsEndpoint};
pub use report::{ClientSummary, Counts, PhaseSummary, Summary, Unprotected};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// How long the load runs (whole seconds are reported; at least 1 s).
    pub duration: Duration,
    /// Number of clients, each sending one request at a time.
    pub concurrency: usize,
    /// Print the header and one row per second to stdout while running.
    pub print_table: bool,
    /// How long the comparison without buttress runs after the protected
    /// run (at most the length of the degraded phase); zero for none.
    pub compare: Duration,
}

impl Default for DemoConfig {
    /// 20 s, 48 clients, with the live table, then a 3 s comparison.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(20),
            concurrency: 48,
            print_table: true,
            compare: Duration::from_secs(3),
        }
    }
}

/// Runs the whole demo and returns what happened, with a `/metrics`
/// endpoint of its own for the length of the run ([`run_with`] and
/// [`MetricsEndpoint::start`]).
///
/// Fails when a server cannot bind, when the gateway or the upstream cannot
/// be reached before the load starts, when the resilience layers reject
/// their configuration, or when the Prometheus recorder cannot be
/// installed (another `metrics` recorder was). Everything it starts is
/// stopped before it returns.
pub async fn run(config: DemoConfig) -> Result<Summary, DemoError> {
    // First of all: the layers resolve their metric handles against the
    // recorder installed when they are built.
    let metrics = MetricsEndpoint::start().await?;
    let summary = run_with(config, &metrics).await;
    let metrics_down = metrics.shutdown().await;
    let summary = summary?;
    metrics_down?;
    Ok(summary)
}

/// Runs the whole demo as [`run`] does, with `metrics` as its `/metrics`
/// endpoint, which the caller started (and so the recorder installed)
/// before, and which still serves the run's series after it.
///
/// The recorder is global: a process that runs the demo twice sees the
/// counters of both runs in `/metrics`. The report counts from the values
/// it found when the gateway was built, zero in a process that runs the
/// demo once.
pub async fn run_with(config: DemoConfig, metrics: &MetricsEndpoint) -> Result<Summary, DemoError> {
    let secs = config.duration.as_secs().max(1);
    let concurrency = config.concurrency.max(1);
    // Every layer registered in it publishes its metrics.
    let registry = Registry::new().with_metrics();

    // The upstream's phases follow this clock; it is started again right
    // before the load so that the first phase gets its full share.
    let timeline = phase::Timeline::new(secs);
    let upstream_load = Arc::new(upstream::UpstreamLoad::default());
    let upstream = upstream::start(timeline.clone(), upstream_load.clone()).await?;
    let gateway = match gateway::start(upstream.addr(), &registry).await {
        Ok(gateway) => gateway,
        Err(e) => {
            // Best effort: the bind error is what the user needs to see.
            let _ = upstream.shutdown().await;
            return Err(e);
        }
    };
    // Its temporary directory is removed when it is dropped, on every
    // path out of this function.
    let orders = match orders::Orders::start(upstream.addr(), &registry).await {
        Ok(orders) => orders,
        Err(e) => {
            let _ = gateway.shutdown().await;
            let _ = upstream.shutdown().await;
            return Err(e);
        }
    };

    let report = match report::Report::new(
        secs,
        gateway.observer(),
        metrics,
        upstream_load.clone(),
        orders.warehouse(),
        config.print_table,
    ) {
        Ok(report) => report,
        Err(e) => {
            let _ = gateway.shutdown().await;
            let _ = upstream.shutdown().await;
            return Err(e);
        }
    };
    let outcome = drive(concurrency, &timeline, &gateway, &orders, report).await;
    // Servers stop in any case: the gateway first, so that no request is
    // forwarded to an upstream that is going away.
    let gateway_down = gateway.shutdown().await;
    let outcome = match outcome {
        Ok((report, totals)) if !config.compare.is_zero() => {
            let compared = compare(
                &config,
                concurrency,
                &timeline,
                upstream.addr(),
                &upstream_load,
            )
            .await;
            compared.map(|bare| (report, totals, Some(bare)))
        }
        Ok((report, totals)) => Ok((report, totals, None)),
        Err(e) => Err(e),
    };
    let upstream_down = upstream.shutdown().await;
    let (report, totals, bare) = outcome?;
    gateway_down?;
    upstream_down?;
    let mut summary = report.summary(totals, registry.snapshot(), bare);
    summary.saga_log = orders.dir().to_owned();
    // The saga log's directory goes now.
    drop(orders);
    Ok(summary)
}

/// The load phase: preflight, clients and order sagas, live report,
/// totals.
async fn drive(
    concurrency: usize,
    timeline: &phase::Timeline,
    gateway: &gateway::Gateway,
    orders: &orders::Orders,
    mut report: report::Report,
) -> Result<(report::Report, report::Totals), DemoError> {
    load::preflight(gateway.addr()).await?;
    report.print_intro(concurrency, gateway.addr(), timeline, orders.dir());

    let (samples_tx, samples_rx) = mpsc::unbounded_channel();
    let start = timeline.restart();
    let deadline = start + Duration::from_secs(timeline.secs());
    let load = load::start(
        gateway.addr(),
        concurrency,
        deadline,
        samples_tx,
        Some(orders),
    );

    let totals = report.live(start, timeline, samples_rx, load).await?;
    Ok((report, totals))
}

/// The comparison: the upstream degraded again, the same clients, through
/// a gateway without buttress, for `config.compare` (at most the degraded
/// phase's length).
async fn compare(
    config: &DemoConfig,
    concurrency: usize,
    timeline: &phase::Timeline,
    upstream: SocketAddr,
    upstream_load: &upstream::UpstreamLoad,
) -> Result<Unprotected, DemoError> {
    let bare = gateway::start_unprotected(upstream).await?;
    let length = timeline.restart_in(Phase::Degraded);
    let secs = config.compare.as_secs().clamp(1, length.as_secs().max(1));
    if config.print_table {
        println!();
        println!(
            "comparison: the same {concurrency} clients and the bursting one for {secs} s, the upstream {} again, through a gateway without buttress ...",
            Phase::Degraded
        );
    }
    let (samples_tx, mut samples_rx) = mpsc::unbounded_channel();
    let calls_before = upstream_load.calls();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let load = load::start(bare.addr(), concurrency, deadline, samples_tx, None);
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(upstream_load.in_flight());
        tokio::time::sleep(UPSTREAM_SAMPLE).await;
    }
    load.finish().await;
    let calls = upstream_load.calls() - calls_before;
    let mut samples = Vec::new();
    while let Ok(sample) = samples_rx.try_recv() {
        samples.push(sample);
    }
    bare.shutdown().await?;
    Ok(report::unprotected(
        Phase::Degraded,
        secs,
        samples,
        calls,
        peak,
    ))
}
