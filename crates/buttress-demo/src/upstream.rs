//! The flaky upstream: random latency, some slow calls, some 500s and some
//! 503s, with rates that follow the phases of the run. `GET /` is the
//! catalogue the gateway forwards to; `POST /charge/{key}` is the payment
//! service the order sagas call, just as flaky.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::phase::{Phase, Timeline};
use crate::rng::XorShift64;
use crate::server::Server;
use crate::DemoError;

/// Latency of a normal call, in milliseconds.
pub(crate) const FAST_MS: (u64, u64) = (5, 40);
/// Latency of a slow call, in milliseconds.
pub(crate) const SLOW_MS: (u64, u64) = (300, 800);

/// How the upstream answers one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 200.
    Ok,
    /// 500: a failure that trying again would not fix.
    Failure,
    /// 503 with `Retry-After: 0`: shed at once, try again.
    Unavailable,
}

/// How much work the upstream gets: what the gateway in front of it
/// spares it (or not).
#[derive(Debug, Default)]
pub(crate) struct UpstreamLoad {
    calls: AtomicU64,
    in_flight: AtomicUsize,
}

impl UpstreamLoad {
    /// Calls received so far (`GET /` only).
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls being answered now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a call in flight until it is dropped: answered, or abandoned by
/// the gateway.
struct InFlight<'a>(&'a UpstreamLoad);

impl<'a> InFlight<'a> {
    fn enter(load: &'a UpstreamLoad) -> Self {
        load.calls.fetch_add(1, Ordering::Relaxed);
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(load)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct Upstream {
    timeline: Timeline,
    load: Arc<UpstreamLoad>,
    // Held for three draws, never across an await.
    rng: Mutex<XorShift64>,
}

impl Upstream {
    /// How this call is answered and after how long, by the current phase.
    fn draw(&self) -> (Duration, Answer) {
        let phase = self.timeline.phase();
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        draw(&mut rng, phase)
    }
}

/// One call in `phase`: a shed call (503) is answered after a normal
/// latency, never a slow one; any other is slow `slow_percent` % of the
/// time.
fn draw(rng: &mut XorShift64, phase: Phase) -> (Duration, Answer) {
    let roll = rng.between(0, 99);
    let answer = if roll < phase.unavailable_percent() {
        Answer::Unavailable
    } else if roll < phase.unavailable_percent() + phase.error_percent() {
        Answer::Failure
    } else {
        Answer::Ok
    };
    let (lo, hi) = if answer != Answer::Unavailable && rng.percent(phase.slow_percent()) {
        SLOW_MS
    } else {
        FAST_MS
    };
    (Duration::from_millis(rng.between(lo, hi)), answer)
}

/// `POST /charge/{key}`: the payment service of the order sagas, with the
/// same draws as `GET /` (so it fails as often, and is as slow, in each
/// phase); not counted in [`UpstreamLoad`], which is the gateway's load.
/// The key is the step's idempotency key; nothing is kept by it (a retry
/// would be answered anew: the demo's payment step is not retried).
async fn charge(State(upstream): State<Arc<Upstream>>) -> Response {
    let (latency, answer) = upstream.draw();
    tokio::time::sleep(latency).await;
    match answer {
        Answer::Ok => (StatusCode::OK, "charged\n").into_response(),
        Answer::Failure => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Answer::Unavailable => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `GET /`: waits the drawn latency, then answers 200, 500 or 503.
async fn work(State(upstream): State<Arc<Upstream>>) -> Response {
    let _in_flight = InFlight::enter(&upstream.load);
    let (latency, answer) = upstream.draw();
    tokio::time::sleep(latency).await;
    match answer {
        Answer::Ok => (StatusCode::OK, "ok\n").into_response(),
        Answer::Failure => {
            (StatusCode::INTERNAL_SERVER_ERROR, "upstream failure\n").into_response()
        }
        // No body: the gateway drops a response it retries, and an empty
        // one leaves the connection reusable.
        Answer::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "0")],
        )
            .into_response(),
    }
}

/// Starts the upstream on 127.0.0.1; its behaviour follows `timeline`, and
/// it counts its calls in `load`.
pub(crate) async fn start(
    timeline: Timeline,
    load: Arc<UpstreamLoad>,
) -> Result<Server, DemoError> {
    let state = Arc::new(Upstream {
        timeline,
        load,
        rng: Mutex::new(XorShift64::from_clock(0)),
    });
    let app = Router::new()
        .route("/", get(work))
        .route("/charge/{key}", post(charge))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    Server::start("upstream", app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_phase_and_shed_calls_are_fast() {
        let mut rng = XorShift64::seeded(3);
        let n = 100_000;
        let mut seen = [0u64; 3];
        let mut slow = 0;
        for _ in 0..n {
            let (latency, answer) = draw(&mut rng, Phase::Degraded);
            seen[answer as usize] += 1;
            if latency >= Duration::from_millis(SLOW_MS.0) {
                assert_ne!(answer, Answer::Unavailable, "a 503 took {latency:?}");
                slow += 1;
            }
        }
        let about = |k: u64, pct: u64| k.abs_diff(n * pct / 100) < n / 100;
        assert!(about(seen[Answer::Unavailable as usize], 20), "{seen:?}");
        assert!(about(seen[Answer::Failure as usize], 15), "{seen:?}");
        // Half of the 80 % it serves.
        assert!(about(slow, 40), "{slow}");
    }
}
