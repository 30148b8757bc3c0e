//! The buttress demo: a protected gateway in front of a flaky upstream,
//! under load.
//!
//! [`run`] starts, on 127.0.0.1 with ports chosen by the OS:
//!
//! - an **upstream** whose latency, error rate (500) and shedding rate
//!   (503) change in phases (healthy, degraded, recovered);
//! - a **gateway** that forwards every request to the upstream, protected
//!   in the server order of the design: errors to responses, then a
//!   bulkhead, then a circuit breaker, then a timeout, then the forwarding
//!   handler, which calls the upstream through a retry layer with a budget
//!   (the client side of the design), so that a shed call (503) is tried
//!   again within the timeout;
//! - a **load generator**: `concurrency` clients in a closed loop.
//!
//! It prints one row per second (unless [`DemoConfig::print_table`] is
//! off), stops after [`DemoConfig::duration`], shuts both servers down
//! gracefully and returns a [`Summary`], whose `Display` is the final
//! report.
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
mod gateway;
mod load;
mod phase;
mod report;
mod rng;
mod server;
mod upstream;

use std::time::Duration;

use buttress_core::Registry;
use tokio::sync::mpsc;

pub use cli::{parse_args, Command, USAGE};
pub use error::DemoError;
pub use report::{Counts, PhaseSummary, Summary};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// How long the load runs (whole seconds are reported; at least 1 s).
    pub duration: Duration,
    /// Number of clients, each sending one request at a time.
    pub concurrency: usize,
    /// Print the header and one row per second to stdout while running.
    pub print_table: bool,
}

impl Default for DemoConfig {
    /// 20 s, 48 clients, with the live table.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(20),
            concurrency: 48,
            print_table: true,
        }
    }
}

/// Runs the whole demo and returns what happened.
///
/// Fails when a server cannot bind, when the gateway or the upstream cannot
/// be reached before the load starts, or when the resilience layers reject
/// their configuration. Everything it starts is stopped before it returns.
pub async fn run(config: DemoConfig) -> Result<Summary, DemoError> {
    let secs = config.duration.as_secs().max(1);
    let concurrency = config.concurrency.max(1);
    let registry = Registry::new();

    // The upstream's phases follow this clock; it is started again right
    // before the load so that the first phase gets its full share.
    let timeline = phase::Timeline::new(secs);
    let upstream = upstream::start(timeline.clone()).await?;
    let gateway = match gateway::start(upstream.addr(), &registry).await {
        Ok(gateway) => gateway,
        Err(e) => {
            // Best effort: the bind error is what the user needs to see.
            let _ = upstream.shutdown().await;
            return Err(e);
        }
    };

    let outcome = drive(&config, secs, concurrency, &timeline, &gateway, &registry).await;

    // Servers stop in any case: the gateway first, so that no request is
    // forwarded to an upstream that is going away.
    let gateway_down = gateway.shutdown().await;
    let upstream_down = upstream.shutdown().await;
    let summary = outcome?;
    gateway_down?;
    upstream_down?;
    Ok(summary)
}

/// The load phase: preflight, clients, live report, totals.
async fn drive(
    config: &DemoConfig,
    secs: u64,
    concurrency: usize,
    timeline: &phase::Timeline,
    gateway: &gateway::Gateway,
    registry: &Registry,
) -> Result<Summary, DemoError> {
    load::preflight(gateway.addr()).await?;

    let mut report = report::Report::new(secs, gateway.observer(), config.print_table);
    report.print_intro(concurrency, gateway.addr(), timeline);

    let (samples_tx, samples_rx) = mpsc::unbounded_channel();
    let start = timeline.restart();
    let deadline = start + Duration::from_secs(secs);
    let load = load::start(gateway.addr(), concurrency, deadline, samples_tx);

    let totals = report.live(start, timeline, samples_rx, load).await;
    Ok(report.summary(totals, registry.snapshot()))
}
