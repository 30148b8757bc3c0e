//! A bounded HTTP load generator on 127.0.0.1: buttress's
//! `Policy::server()` in front of axum, beside a bare server and beside
//! tower-resilience's equivalent stack.
//!
//! ```sh
//! cargo run --release -p buttress-benches --bin load            # both scenarios, 3 rounds
//! cargo run --release -p buttress-benches --bin load -- --help  # the settings
//! ```
//!
//! Two scenarios, each run as rounds in which the variants take turns,
//! each round starting with the next variant (so drift of a shared machine
//! and the position in a round hit them alike); rows print in run order:
//!
//! - **overhead**: a hello-world handler, closed loop (every connection
//!   sends its next request when the previous answer is read) for a fixed
//!   time: requests per second and p50/p99 latency, bare axum against the
//!   same router behind `Policy::server()` (its per-client rate limit
//!   raised above the load: every request comes from 127.0.0.1, so the
//!   preset's 100 a second would measure rejections, not overhead) and
//!   behind tower-resilience's stack.
//! - **overload**: a handler of fixed capacity (a semaphore of `capacity`
//!   permits held for `service` each) driven open loop at 3x that
//!   capacity. Latency is measured from the time the schedule meant the
//!   request to leave, so a request held back by a busy connection counts
//!   its wait (no coordinated omission).
//!
//! Every loop is bounded: a run ends at its duration (plus a grace period
//! for the overload's answers in flight), each request is cut off there,
//! and the request count is capped.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use buttress::bulkhead::BulkheadConfig;
use buttress::policy::{PerClient, Policy};
use buttress::rate_limit::Rate;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_resilience::bulkhead::{BulkheadError, BulkheadServiceError};
use tower_resilience::ratelimiter::RateLimiterServiceError;
use tower_resilience::timelimiter::TimeLimiterError;

/// Requests per second the raised rate limits admit (per client for
/// buttress, in all for tower-resilience): far above what one machine's
/// loopback carries, so no request of these runs is rate limited.
const RATE_ABOVE_LOAD: u64 = 10_000_000;
/// The most requests one run sends, whatever its duration.
const MAX_REQUESTS_PER_RUN: u64 = 20_000_000;
/// How long a server may take to close once its run is over.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

const HELP: &str = "\
load: buttress's Policy::server() under load, beside bare axum and tower-resilience

USAGE: load [OPTIONS]

OPTIONS (defaults in brackets):
  --scenario <all|overhead|overload>  which scenario to run [all]
  --rounds <n>                 rounds of each scenario, variants interleaved and rotated [3]
  --duration <secs>            length of each overhead run [3]
  --warmup <secs>              leading part of each overhead run not counted [0.5]
  --connections <n>            connections of the overhead runs [32]
  --capacity <n>               permits of the overload handler [16]
  --service-ms <ms>            time each overload request holds its permit [20]
  --overload-factor <x>        offered load as a multiple of capacity [3]
  --overload-duration <secs>   length of the schedule of each overload run [3]
  --overload-connections <n>   connections of the overload runs [128]
  --grace <secs>               time after the schedule for answers in flight [2]
  --queue <n>                  protected bulkhead's queue [capacity]
  --max-wait-ms <ms>           protected bulkhead's longest wait in its queue [service-ms]
  --server-threads <n>         worker threads of the server runtime [1]
  --client-threads <n>         worker threads of the load generator's runtime [1]
  -h, --help                   this text
";

/// The settings of a run of the binary.
#[derive(Debug, Clone)]
struct Settings {
    overhead: bool,
    overload: bool,
    rounds: u32,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    capacity: usize,
    service: Duration,
    factor: f64,
    overload_duration: Duration,
    overload_connections: usize,
    grace: Duration,
    queue: Option<usize>,
    max_wait: Option<Duration>,
    server_threads: usize,
    client_threads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            overhead: true,
            overload: true,
            rounds: 3,
            duration: Duration::from_secs(3),
            warmup: Duration::from_millis(500),
            connections: 32,
            capacity: 16,
            service: Duration::from_millis(20),
            factor: 3.0,
            overload_duration: Duration::from_secs(3),
            overload_connections: 128,
            grace: Duration::from_secs(2),
            queue: None,
            max_wait: None,
            server_threads: 1,
            client_threads: 1,
        }
    }
}

/// What `parse` returns besides settings.
#[derive(Debug)]
enum Parsed {
    Run(Settings),
    Help,
}

fn value<'a>(flag: &str, it: &mut impl Iterator<Item = &'a String>) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag}: a value is missing"))
}

fn count(flag: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = v
        .parse()
        .map_err(|_| format!("{flag}: `{v}` is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{flag}: {n} is outside {min}..={max}"));
    }
    Ok(n)
}

fn seconds(flag: &str, v: &str, min: f64, max: f64) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("{flag}: `{v}` is not a number of seconds"))?;
    if !s.is_finite() || s < min || s > max {
        return Err(format!("{flag}: {v} is outside {min}..={max} seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut s = Settings::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--scenario" => match value(flag, &mut it)? {
                "all" => (s.overhead, s.overload) = (true, true),
                "overhead" => (s.overhead, s.overload) = (true, false),
                "overload" => (s.overhead, s.overload) = (false, true),
                other => {
                    return Err(format!(
                        "--scenario: `{other}` is not one of all, overhead, overload"
                    ))
                }
            },
            "--rounds" => s.rounds = count(flag, value(flag, &mut it)?, 1, 20)? as u32,
            "--duration" => s.duration = seconds(flag, value(flag, &mut it)?, 0.1, 120.0)?,
            "--warmup" => s.warmup = seconds(flag, value(flag, &mut it)?, 0.0, 60.0)?,
            "--connections" => {
                s.connections = count(flag, value(flag, &mut it)?, 1, 4096)? as usize
            }
            "--capacity" => s.capacity = count(flag, value(flag, &mut it)?, 1, 4096)? as usize,
            "--service-ms" => {
                s.service = Duration::from_millis(count(flag, value(flag, &mut it)?, 1, 10_000)?)
            }
            "--overload-factor" => {
                let v = value(flag, &mut it)?;
                let x: f64 = v
                    .parse()
                    .map_err(|_| format!("{flag}: `{v}` is not a number"))?;
                if !x.is_finite() || !(0.1..=100.0).contains(&x) {
                    return Err(format!("{flag}: {v} is outside 0.1..=100"));
                }
                s.factor = x;
            }
            "--overload-duration" => {
                s.overload_duration = seconds(flag, value(flag, &mut it)?, 0.1, 120.0)?
            }
            "--overload-connections" => {
                s.overload_connections = count(flag, value(flag, &mut it)?, 1, 4096)? as usize
            }
            "--grace" => s.grace = seconds(flag, value(flag, &mut it)?, 0.0, 60.0)?,
            "--queue" => s.queue = Some(count(flag, value(flag, &mut it)?, 0, 1 << 20)? as usize),
            "--max-wait-ms" => {
                s.max_wait = Some(Duration::from_millis(count(
                    flag,
                    value(flag, &mut it)?,
                    0,
                    60_000,
                )?))
            }
            "--server-threads" => {
                s.server_threads = count(flag, value(flag, &mut it)?, 1, 64)? as usize
            }
            "--client-threads" => {
                s.client_threads = count(flag, value(flag, &mut it)?, 1, 64)? as usize
            }
            other => return Err(format!("unknown option `{other}` (see --help)")),
        }
    }
    if s.warmup >= s.duration {
        return Err(format!(
            "--warmup: {:?} leaves nothing of the {:?} run to count",
            s.warmup, s.duration
        ));
    }
    let rate = s.factor * s.capacity as f64 / s.service.as_secs_f64();
    if rate * s.overload_duration.as_secs_f64() > MAX_REQUESTS_PER_RUN as f64 {
        return Err(format!(
            "--overload-factor: {rate:.0} requests a second for {:?} is more than \
             {MAX_REQUESTS_PER_RUN} requests",
            s.overload_duration
        ));
    }
    Ok(Parsed::Run(s))
}

/// Who protects the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    Buttress,
    TowerResilience,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Bare, Variant::Buttress, Variant::TowerResilience];

    /// The variants in the order of round `round` (from 1): each round
    /// starts one further along, so that no variant always runs first.
    fn order(round: u32) -> [Variant; 3] {
        let mut order = Variant::ALL;
        order.rotate_left((round as usize - 1) % Variant::ALL.len());
        order
    }

    fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare axum",
            Variant::Buttress => "buttress `Policy::server()`",
            Variant::TowerResilience => "tower-resilience",
        }
    }
}

/// The handler a server runs.
#[derive(Debug, Clone, Copy)]
enum Handler {
    /// Answers "hello" at once.
    Hello,
    /// Holds one of `capacity` permits for `service`, then answers.
    Capacity { capacity: usize, service: Duration },
}

/// The settings of the protection for a handler: for the overload, the
/// bulkhead is the handler's capacity with a short queue and wait; for the
/// overhead, the preset's bulkhead.
#[derive(Debug, Clone, Copy)]
struct Protection {
    /// `None`: the preset's bulkhead (256 in flight, 512 queued, 100 ms).
    bulkhead: Option<(usize, usize, Duration)>,
    /// The timeout of each request.
    timeout: Duration,
}

fn router(handler: Handler) -> Router {
    match handler {
        Handler::Hello => Router::new().route("/", get(|| async { "hello" })),
        Handler::Capacity { capacity, service } => {
            let permits = Arc::new(Semaphore::new(capacity));
            Router::new().route(
                "/",
                get(move || {
                    let permits = Arc::clone(&permits);
                    async move {
                        match permits.acquire().await {
                            Ok(_permit) => {
                                tokio::time::sleep(service).await;
                                (StatusCode::OK, "done")
                            }
                            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "closed"),
                        }
                    }
                }),
            )
        }
    }
}

/// tower-resilience's errors as responses: its time limiter's timeout 504,
/// its bulkhead's and rate limiter's rejections 503 and 429.
type RezError = RateLimiterServiceError<BulkheadServiceError<TimeLimiterError<Infallible>>>;

async fn rez_error_response(err: RezError) -> impl IntoResponse {
    match err {
        RateLimiterServiceError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        RateLimiterServiceError::Inner(BulkheadServiceError::Bulkhead(
            BulkheadError::BulkheadFull { .. } | BulkheadError::Timeout,
        )) => StatusCode::SERVICE_UNAVAILABLE,
        RateLimiterServiceError::Inner(BulkheadServiceError::Inner(TimeLimiterError::Timeout)) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        RateLimiterServiceError::Inner(BulkheadServiceError::Bulkhead(_)) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        RateLimiterServiceError::Inner(BulkheadServiceError::Inner(TimeLimiterError::Inner(
            never,
        ))) => match never {},
    }
}

/// The app of `variant` over `handler`.
fn app(variant: Variant, handler: Handler, protection: Protection) -> Result<Router, String> {
    let router = router(handler);
    Ok(match variant {
        Variant::Bare => router,
        Variant::Buttress => {
            let mut policy = Policy::server()
                .per_client(
                    PerClient::new(Rate::per_second(RATE_ABOVE_LOAD)).burst(RATE_ABOVE_LOAD),
                )
                .timeout(protection.timeout);
            if let Some((max_concurrent, max_queue, max_wait)) = protection.bulkhead {
                policy = policy.bulkhead(BulkheadConfig {
                    max_concurrent,
                    max_queue,
                    max_wait: Some(max_wait),
                    ..BulkheadConfig::default()
                });
            }
            router.layer(policy.build().map_err(|e| e.to_string())?)
        }
        Variant::TowerResilience => {
            // The same shape: a rate limiter (tower-resilience has no keyed
            // one; a global limiter raised above the load), a bulkhead
            // (no queue bound of its own: the wait bounds it), a time
            // limiter.
            let (max_concurrent, max_wait) = match protection.bulkhead {
                Some((c, _, w)) => (c, w),
                None => (256, Duration::from_millis(100)),
            };
            let layers = tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(rez_error_response))
                .layer(
                    tower_resilience::ratelimiter::RateLimiterLayer::builder()
                        .limit_for_period(RATE_ABOVE_LOAD as usize)
                        .refresh_period(Duration::from_secs(1))
                        .build()
                        .map_err(|e| e.to_string())?,
                )
                .layer(
                    tower_resilience::bulkhead::BulkheadLayer::builder()
                        .max_concurrent_calls(max_concurrent)
                        .max_wait_duration(max_wait)
                        .build()
                        .map_err(|e| e.to_string())?,
                )
                .layer(
                    tower_resilience::timelimiter::TimeLimiterLayer::builder()
                        .timeout_duration(protection.timeout)
                        .build(),
                );
            router.layer(layers)
        }
    })
}

/// A server running on the server runtime.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

fn start(rt: &Runtime, app: Router) -> Result<Server, String> {
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("binding 127.0.0.1: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the listener's address: {e}"))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = rt.spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .await
    });
    Ok(Server { addr, stop, task })
}

fn stop(rt: &Runtime, server: Server) {
    let _ = server.stop.send(());
    let abort = server.task.abort_handle();
    let task = server.task;
    // The timer is made inside the runtime: it needs its time driver.
    if rt
        .block_on(async move { tokio::time::timeout(SHUTDOWN_WAIT, task).await })
        .is_err()
    {
        abort.abort();
    }
}

/// One HTTP/1 connection of the load generator.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/1 handshake: {e}"))?;
    // Ends when `sender` is dropped or the server closes.
    tokio::spawn(conn);
    Ok(sender)
}

/// One request: its status, the body read to the end.
async fn request(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
) -> Result<StatusCode, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::get("/")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// What one worker saw.
#[derive(Debug, Default)]
struct Tally {
    /// Latencies of 200 answers, microseconds.
    ok: Vec<u32>,
    /// Latencies of 429/503/504 answers, microseconds.
    rejected: Vec<u32>,
    /// 429, 503, 504 answers.
    statuses: [u64; 3],
    /// Other statuses, failed connections, cut-off requests.
    errors: u64,
    /// The first error seen, for the report.
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, status: StatusCode, latency: Duration) {
        let micros = latency.as_micros().min(u32::MAX as u128) as u32;
        match status {
            StatusCode::OK => self.ok.push(micros),
            StatusCode::TOO_MANY_REQUESTS => {
                self.statuses[0] += 1;
                self.rejected.push(micros)
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                self.statuses[1] += 1;
                self.rejected.push(micros)
            }
            StatusCode::GATEWAY_TIMEOUT => {
                self.statuses[2] += 1;
                self.rejected.push(micros)
            }
            other => self.error(format!("status {other}")),
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok.extend(other.ok);
        self.rejected.extend(other.rejected);
        for (a, b) in self.statuses.iter_mut().zip(other.statuses) {
            *a += b;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Closed loop: each connection sends its next request when the previous
/// answer is read, until `duration`; answers completed in the first
/// `warmup` are not counted.
async fn closed_loop(
    addr: SocketAddr,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Tally, String> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let start = Instant::now();
    let counted_from = start + warmup;
    let end = start + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(connections);
    for mut sender in senders {
        let sent = Arc::clone(&sent);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end
                && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS_PER_RUN
            {
                let began = Instant::now();
                match tokio::time::timeout_at(end, request(&mut sender, addr)).await {
                    // Cut off at the end of the run: not counted.
                    Err(_) => break,
                    Ok(Ok(status)) => {
                        let done = Instant::now();
                        if done >= counted_from {
                            tally.record(status, done - began);
                        }
                    }
                    Ok(Err(e)) => {
                        tally.error(e);
                        match connect(addr).await {
                            Ok(s) => sender = s,
                            Err(e) => {
                                tally.error(e);
                                break;
                            }
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.await.map_err(|e| format!("a load worker failed: {e}"))?);
    }
    Ok(tally)
}

/// What an open-loop run adds to its tally.
#[derive(Debug)]
struct OpenLoop {
    tally: Tally,
    /// Requests the schedule held.
    scheduled: u64,
    /// 200 answers completed within the schedule's duration.
    ok_in_window: u64,
}

/// Open loop: `rate` requests a second for `duration`, spread evenly,
/// sent over `connections` connections (a request waits for a free
/// connection); latency from the scheduled time. Requests not answered by
/// `duration + grace` are left unanswered (counted as such).
async fn open_loop(
    addr: SocketAddr,
    connections: usize,
    rate: f64,
    duration: Duration,
    grace: Duration,
) -> Result<OpenLoop, String> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let scheduled = ((rate * duration.as_secs_f64()) as u64).min(MAX_REQUESTS_PER_RUN);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let window_end = start + duration;
    let hard_stop = window_end + grace;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(connections);
    for mut sender in senders {
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut ok_in_window = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= scheduled {
                    break;
                }
                let at = start + interval.mul_f64(i as f64);
                tokio::time::sleep_until(at).await;
                if Instant::now() >= hard_stop {
                    break;
                }
                match tokio::time::timeout_at(hard_stop, request(&mut sender, addr)).await {
                    Err(_) => break,
                    Ok(Ok(status)) => {
                        let done = Instant::now();
                        if status == StatusCode::OK && done <= window_end {
                            ok_in_window += 1;
                        }
                        tally.record(status, done - at);
                    }
                    Ok(Err(e)) => {
                        tally.error(e);
                        match connect(addr).await {
                            Ok(s) => sender = s,
                            Err(e) => {
                                tally.error(e);
                                break;
                            }
                        }
                    }
                }
            }
            (tally, ok_in_window)
        }));
    }
    let mut tally = Tally::default();
    let mut ok_in_window = 0;
    for w in workers {
        let (t, n) = w.await.map_err(|e| format!("a load worker failed: {e}"))?;
        tally.merge(t);
        ok_in_window += n;
    }
    Ok(OpenLoop {
        tally,
        scheduled,
        ok_in_window,
    })
}

/// The `p`-quantile (0..=1) of sorted microseconds, as milliseconds.
fn quantile_ms(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.0} ms"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One overhead run's figures.
#[derive(Debug, Clone, Copy)]
struct OverheadRow {
    rps: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: u64,
}

fn overhead(settings: &Settings, server_rt: &Runtime, client_rt: &Runtime) -> Result<(), String> {
    let protection = Protection {
        bulkhead: None,
        timeout: Duration::from_secs(30),
    };
    let counted = settings.duration - settings.warmup;
    println!(
        "## Overhead: hello world, closed loop, {} connections, {:?} per run ({:?} counted)\n",
        settings.connections, settings.duration, counted
    );
    println!(
        "| round | server | requests/s | vs bare (same round) | p50 | p99 | errors and non-200 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rows: Vec<(Variant, OverheadRow, f64)> = Vec::new();
    for round in 1..=settings.rounds {
        let mut runs = Vec::with_capacity(Variant::ALL.len());
        for variant in Variant::order(round) {
            let server = start(server_rt, app(variant, Handler::Hello, protection)?)?;
            let result = client_rt.block_on(closed_loop(
                server.addr,
                settings.connections,
                settings.warmup,
                settings.duration,
            ));
            stop(server_rt, server);
            let mut tally = result?;
            tally.ok.sort_unstable();
            let row = OverheadRow {
                rps: tally.ok.len() as f64 / counted.as_secs_f64(),
                p50: quantile_ms(&tally.ok, 0.50),
                p99: quantile_ms(&tally.ok, 0.99),
                errors: tally.errors + tally.statuses.iter().sum::<u64>(),
            };
            runs.push((variant, row, tally.first_error));
        }
        let bare = runs
            .iter()
            .find(|(v, _, _)| *v == Variant::Bare)
            .map_or(f64::NAN, |(_, r, _)| r.rps);
        for (variant, row, first_error) in runs {
            let ratio = row.rps / bare;
            println!(
                "| {round} | {} | {:.0} | {ratio:.3}x | {} | {} | {}{} |",
                variant.label(),
                row.rps,
                ms(row.p50),
                ms(row.p99),
                row.errors,
                first_error
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
            );
            rows.push((variant, row, ratio));
        }
    }
    println!("\nMedian of the {} rounds:\n", settings.rounds);
    println!("| server | requests/s | vs bare (median of the rounds' ratios) | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for variant in Variant::ALL {
        let mine = || rows.iter().filter(move |(v, _, _)| *v == variant);
        let med = |f: &dyn Fn(&OverheadRow) -> Option<f64>| {
            median(mine().filter_map(|(_, r, _)| f(r)).collect())
        };
        println!(
            "| {} | {:.0} | {:.3}x | {} | {} |",
            variant.label(),
            med(&|r| Some(r.rps)),
            median(mine().map(|(_, _, ratio)| *ratio).collect()),
            ms(Some(med(&|r| r.p50))),
            ms(Some(med(&|r| r.p99))),
        );
    }
    println!();
    Ok(())
}

/// One overload run's figures.
#[derive(Debug, Clone, Copy)]
struct OverloadRow {
    ok_rps: f64,
    ok_p50: Option<f64>,
    ok_p99: Option<f64>,
    ok_max: Option<f64>,
    rejected: u64,
    rej_p50: Option<f64>,
    rej_p99: Option<f64>,
    unanswered: u64,
    errors: u64,
}

fn overload(settings: &Settings, server_rt: &Runtime, client_rt: &Runtime) -> Result<(), String> {
    let capacity_rps = settings.capacity as f64 / settings.service.as_secs_f64();
    let rate = settings.factor * capacity_rps;
    let queue = settings.queue.unwrap_or(settings.capacity);
    let max_wait = settings.max_wait.unwrap_or(settings.service);
    let timeout = Duration::from_secs(1);
    let protection = Protection {
        bulkhead: Some((settings.capacity, queue, max_wait)),
        timeout,
    };
    let handler = Handler::Capacity {
        capacity: settings.capacity,
        service: settings.service,
    };
    println!(
        "## Overload: capacity {} in flight x {:?} each = {capacity_rps:.0} requests/s, \
         offered {rate:.0}/s ({}x) open loop for {:?}, {} connections, {:?} grace\n",
        settings.capacity,
        settings.service,
        settings.factor,
        settings.overload_duration,
        settings.overload_connections,
        settings.grace
    );
    println!(
        "Protected: bulkhead {} in flight, {queue} queued for at most {max_wait:?}, \
         timeout {timeout:?} (tower-resilience: bulkhead {} with the same wait, no queue \
         bound; time limiter {timeout:?}; a global rate limiter raised above the load).\n",
        settings.capacity, settings.capacity
    );
    println!(
        "| round | server | 200/s in the window | vs capacity | 200 p50 | 200 p99 | 200 max \
         | 429/503/504 | their p50 | their p99 | unanswered | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows: Vec<(Variant, OverloadRow)> = Vec::new();
    for round in 1..=settings.rounds {
        for variant in Variant::order(round) {
            let server = start(server_rt, app(variant, handler, protection)?)?;
            let result = client_rt.block_on(open_loop(
                server.addr,
                settings.overload_connections,
                rate,
                settings.overload_duration,
                settings.grace,
            ));
            stop(server_rt, server);
            let mut run = result?;
            run.tally.ok.sort_unstable();
            run.tally.rejected.sort_unstable();
            let answered =
                run.tally.ok.len() as u64 + run.tally.rejected.len() as u64 + run.tally.errors;
            let row = OverloadRow {
                ok_rps: run.ok_in_window as f64 / settings.overload_duration.as_secs_f64(),
                ok_p50: quantile_ms(&run.tally.ok, 0.50),
                ok_p99: quantile_ms(&run.tally.ok, 0.99),
                ok_max: quantile_ms(&run.tally.ok, 1.0),
                rejected: run.tally.rejected.len() as u64,
                rej_p50: quantile_ms(&run.tally.rejected, 0.50),
                rej_p99: quantile_ms(&run.tally.rejected, 0.99),
                unanswered: run.scheduled.saturating_sub(answered),
                errors: run.tally.errors,
            };
            println!(
                "| {round} | {} | {:.0} | {:.0} % | {} | {} | {} | {} ({}/{}/{}) | {} | {} | {} | {}{} |",
                variant.label(),
                row.ok_rps,
                100.0 * row.ok_rps / capacity_rps,
                ms(row.ok_p50),
                ms(row.ok_p99),
                ms(row.ok_max),
                row.rejected,
                run.tally.statuses[0],
                run.tally.statuses[1],
                run.tally.statuses[2],
                ms(row.rej_p50),
                ms(row.rej_p99),
                row.unanswered,
                row.errors,
                run.tally
                    .first_error
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
            );
            rows.push((variant, row));
        }
    }
    println!("\nMedian of the {} rounds:\n", settings.rounds);
    println!(
        "| server | 200/s in the window | vs capacity | 200 p50 | 200 p99 | 429/503/504 | their p50 | their p99 | unanswered |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for variant in Variant::ALL {
        let mine = || rows.iter().filter(move |(v, _)| *v == variant);
        let med = |f: &dyn Fn(&OverloadRow) -> Option<f64>| {
            let v: Vec<f64> = mine().filter_map(|(_, r)| f(r)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let ok_rps = med(&|r| Some(r.ok_rps)).unwrap_or(0.0);
        println!(
            "| {} | {ok_rps:.0} | {:.0} % | {} | {} | {:.0} | {} | {} | {:.0} |",
            variant.label(),
            100.0 * ok_rps / capacity_rps,
            ms(med(&|r| r.ok_p50)),
            ms(med(&|r| r.ok_p99)),
            med(&|r| Some(r.rejected as f64)).unwrap_or(0.0),
            ms(med(&|r| r.rej_p50)),
            ms(med(&|r| r.rej_p99)),
            med(&|r| Some(r.unanswered as f64)).unwrap_or(0.0),
        );
    }
    println!();
    Ok(())
}

fn runtime(threads: usize, name: &str) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("the {name} runtime: {e}"))
}

fn run(settings: &Settings) -> Result<(), String> {
    let server_rt = runtime(settings.server_threads, "load-server")?;
    let client_rt = runtime(settings.client_threads, "load-client")?;
    println!(
        "server runtime: {} worker thread(s); load generator: {} worker thread(s); \
         hyper HTTP/1 client; 127.0.0.1; {} logical CPUs\n",
        settings.server_threads,
        settings.client_threads,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    if settings.overhead {
        overhead(settings, &server_rt, &client_rt)?;
    }
    if settings.overload {
        overload(settings, &server_rt, &client_rt)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(settings)) => match run(&settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("load: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::from(2)
        }
    }
}
