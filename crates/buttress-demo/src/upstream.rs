//! The flaky upstream: random latency, some slow calls, some 500s, with
//! rates that follow the phases of the run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::phase::Timeline;
use crate::rng::XorShift64;
use crate::server::Server;
use crate::DemoError;

/// Latency of a normal call, in milliseconds.
pub(crate) const FAST_MS: (u64, u64) = (5, 40);
/// Latency of a slow call, in milliseconds.
pub(crate) const SLOW_MS: (u64, u64) = (300, 800);

/// What every request handler shares.
#[derive(Debug)]
struct Upstream {
    timeline: Timeline,
    // Held for three draws, never across an await.
    rng: Mutex<XorShift64>,
}

impl Upstream {
    /// How long this call takes and whether it fails, by the current phase.
    fn draw(&self) -> (Duration, bool) {
        let phase = self.timeline.phase();
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = if rng.percent(phase.slow_percent()) {
            SLOW_MS
        } else {
            FAST_MS
        };
        let latency = Duration::from_millis(rng.between(lo, hi));
        (latency, rng.percent(phase.error_percent()))
    }
}

/// `GET /`: waits the drawn latency, then answers 200 or 500.
async fn work(State(upstream): State<Arc<Upstream>>) -> (StatusCode, &'static str) {
    let (latency, fails) = upstream.draw();
    tokio::time::sleep(latency).await;
    if fails {
        (StatusCode::INTERNAL_SERVER_ERROR, "upstream failure\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Starts the upstream on 127.0.0.1; its behaviour follows `timeline`.
pub(crate) async fn start(timeline: Timeline) -> Result<Server, DemoError> {
    let state = Arc::new(Upstream {
        timeline,
        rng: Mutex::new(XorShift64::from_clock(0)),
    });
    let app = Router::new()
        .route("/", get(work))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    Server::start("upstream", app).await
}
