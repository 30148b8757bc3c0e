//! The load generator: steady clients in a closed loop, each with one
//! request in flight, plus one client that bursts, until the deadline.
//! Every request names its client in the [`CLIENT`] header, by which the
//! gateway's rate limiter keys its per-client limits (all the clients
//! share one IP address, so the client IP could not tell them apart). The
//! steady clients send [`HOT_PERCENT`] % of their requests to the cached
//! `/hot`, the rest to `/`; the bursting client only to `/`. The order
//! sagas' loops run alongside, until the same deadline.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};

use buttress_fallback::FALLBACK_HEADER;

use crate::gateway::{Rejection, CACHE_STATUS, CLIENT, REJECTED_BY};
use crate::orders::Orders;
use crate::rng::XorShift64;
use crate::DemoError;

/// The client gives up on a request after this long.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two requests of one client, in milliseconds. With the
/// default 48 clients this keeps the healthy upstream below the gateway's
/// capacity, so that what the patterns do in the degraded phase stands out.
pub(crate) const THINK_MS: (u64, u64) = (40, 130);
/// Pause after a 503, in milliseconds: a shed client backs off a little
/// (with jitter, so the shed clients do not come back in lockstep).
pub(crate) const BACKOFF_MS: (u64, u64) = (20, 80);
/// Share of a steady client's requests sent to `/hot`, in percent.
pub(crate) const HOT_PERCENT: u64 = 30;
/// The bursting client sends this many requests at once...
pub(crate) const BURST_SIZE: u64 = 30;
/// ...every this long, whatever the answers (it ignores `Retry-After`).
pub(crate) const BURST_EVERY: Duration = Duration::from_millis(500);

type LoadClient = Client<HttpConnector, Empty<Bytes>>;

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 200.
    Ok,
    /// 200 from the gateway's fallback (the [`FALLBACK_HEADER`] says so):
    /// the breaker was open.
    Fallback,
    /// 500: the upstream failed and the gateway passed it on.
    UpstreamError,
    /// 502: the upstream still shed the call (503) after the gateway's
    /// retries, or could not be reached.
    BadGateway,
    /// 429: the client went over its rate limit.
    RateLimited,
    /// 503: shed by the bulkhead or rejected by the open circuit, as the
    /// gateway's `x-rejected-by` header says; `None` without one (the
    /// unprotected gateway passes the upstream's own 503s on).
    Shed(Option<Rejection>),
    /// 504: the gateway's timeout cut the upstream call.
    TimedOut,
    /// Any other status, a connection error or the client's own timeout.
    Other,
}

impl Outcome {
    fn of(status: StatusCode, rejected_by: Option<&HeaderValue>, fallback: bool) -> Self {
        match status {
            StatusCode::OK if fallback => Outcome::Fallback,
            StatusCode::OK => Outcome::Ok,
            StatusCode::TOO_MANY_REQUESTS => Outcome::RateLimited,
            StatusCode::INTERNAL_SERVER_ERROR => Outcome::UpstreamError,
            StatusCode::BAD_GATEWAY => Outcome::BadGateway,
            StatusCode::SERVICE_UNAVAILABLE => {
                Outcome::Shed(rejected_by.and_then(|v| Rejection::from_header(v.as_bytes())))
            }
            StatusCode::GATEWAY_TIMEOUT => Outcome::TimedOut,
            _ => Outcome::Other,
        }
    }
}

/// Where a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /`.
    Root,
    /// `GET /hot`, the cached one.
    Hot,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Hot => "/hot",
        }
    }
}

/// How the cache answered a `/hot` request, by the gateway's
/// [`CACHE_STATUS`] header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheAnswer {
    /// A fresh entry.
    Hit,
    /// This request called the upstream.
    Miss,
    /// It waited for another request's call.
    Coalesced,
    /// The expired entry, because the call failed or was rejected.
    Stale,
}

impl CacheAnswer {
    fn from_header(value: &HeaderValue) -> Option<Self> {
        match value.as_bytes() {
            b"hit" => Some(CacheAnswer::Hit),
            b"miss" => Some(CacheAnswer::Miss),
            b"coalesced" => Some(CacheAnswer::Coalesced),
            b"stale" => Some(CacheAnswer::Stale),
            _ => None,
        }
    }
}

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    /// Steady client `n` (from 0): a request, a think time, again.
    Steady(usize),
    /// The client that sends [`BURST_SIZE`] requests at once every
    /// [`BURST_EVERY`].
    Burst,
}

impl Who {
    /// The value of its [`CLIENT`] header: `c00`, `c01`, ... or `burst`.
    pub(crate) fn name(self) -> String {
        match self {
            Who::Steady(n) => format!("c{n:02}"),
            Who::Burst => "burst".to_owned(),
        }
    }
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Who sent it.
    pub(crate) who: Who,
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// From sending to the last byte of the answer (or the failure).
    pub(crate) latency: Duration,
    /// The `Retry-After` of a 429, in seconds.
    pub(crate) retry_after: Option<u64>,
    /// Where it went.
    pub(crate) route: Route,
    /// How the cache answered it (`/hot` only, when the cache did).
    pub(crate) cache: Option<CacheAnswer>,
}

/// The running clients.
#[derive(Debug)]
pub(crate) struct Load {
    clients: JoinSet<()>,
}

impl Load {
    /// Waits for every client to finish its last request.
    pub(crate) async fn finish(mut self) {
        while self.clients.join_next().await.is_some() {}
    }
}

fn client() -> LoadClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn gateway_uri(gateway: SocketAddr, path: &str) -> Uri {
    format!("http://{gateway}{path}")
        .parse()
        .expect("a socket address and a path form a valid URI")
}

/// Checks, before the load starts, that the gateway answers and reaches
/// the upstream, and that its probes say live and ready, so that a broken
/// setup is one clear error rather than a table full of failures.
pub(crate) async fn preflight(gateway: SocketAddr) -> Result<(), DemoError> {
    let unreachable = |reason: String| DemoError::Unreachable {
        addr: gateway,
        reason,
    };
    let http = client();
    for path in ["/healthz", "/health/live", "/health/ready"] {
        let status = probe(&http, gateway, path)
            .await
            .map_err(|e| unreachable(format!("{path}: {e}")))?;
        match status {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY if path == "/healthz" => {
                return Err(unreachable("it cannot reach the upstream".into()))
            }
            other => return Err(unreachable(format!("{path} answered {other}"))),
        }
    }
    Ok(())
}

/// `GET http://{gateway}{path}`, read to the end, within the client
/// timeout: its status.
pub(crate) async fn probe(
    http: &LoadClient,
    gateway: SocketAddr,
    path: &str,
) -> Result<StatusCode, String> {
    let exchange = async {
        let res = http.get(gateway_uri(gateway, path)).await?;
        let status = res.status();
        res.into_body().collect().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
    };
    match timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CLIENT_TIMEOUT:?}")),
    }
}

/// A client for [`probe`].
pub(crate) fn probe_client() -> LoadClient {
    client()
}

/// Starts `concurrency` steady clients and the bursting one, sending
/// `GET /` and `GET /hot` to the gateway until `deadline`; each finished
/// request goes to `samples`. With `orders`, the order sagas' loops run
/// too, until the same deadline, and [`Load::finish`] waits for them.
pub(crate) fn start(
    gateway: SocketAddr,
    concurrency: usize,
    deadline: Instant,
    samples: UnboundedSender<Sample>,
    orders: Option<&Orders>,
) -> Load {
    // One pool for all clients, as one service calling another would have.
    let http = client();
    let uri = gateway_uri(gateway, Route::Root.path());
    let hot_uri = gateway_uri(gateway, Route::Hot.path());
    let mut clients = JoinSet::new();
    if let Some(orders) = orders {
        orders.spawn(&mut clients, deadline);
    }
    for id in 0..concurrency {
        let (http, uri, hot_uri, samples) =
            (http.clone(), uri.clone(), hot_uri.clone(), samples.clone());
        let mut rng = XorShift64::from_clock(id as u64 + 1);
        let who = Who::Steady(id);
        clients.spawn(async move {
            // Spread the first requests over the first think time.
            sleep_until(Instant::now() + pause(&mut rng, THINK_MS)).await;
            while Instant::now() < deadline {
                let (route, uri) = if rng.percent(HOT_PERCENT) {
                    (Route::Hot, &hot_uri)
                } else {
                    (Route::Root, &uri)
                };
                let Some(outcome) = send_one(&http, uri, route, who, &samples).await else {
                    return;
                };
                let range = if matches!(outcome, Outcome::Shed(_)) {
                    BACKOFF_MS
                } else {
                    THINK_MS
                };
                sleep_until((Instant::now() + pause(&mut rng, range)).min(deadline)).await;
            }
        });
    }
    clients.spawn(async move {
        let mut next = Instant::now() + BURST_EVERY / 2;
        loop {
            sleep_until(next.min(deadline)).await;
            if Instant::now() >= deadline {
                return;
            }
            let mut burst = JoinSet::new();
            for _ in 0..BURST_SIZE {
                let (http, uri, samples) = (http.clone(), uri.clone(), samples.clone());
                burst.spawn(async move {
                    send_one(&http, &uri, Route::Root, Who::Burst, &samples).await
                });
            }
            while burst.join_next().await.is_some() {}
            // A burst that took longer than the period starts the next at
            // once, without catching up on the missed ones.
            next = (next + BURST_EVERY).max(Instant::now());
        }
    });
    Load { clients }
}

/// Sends one request as `who` and reports it; `None` once nobody listens.
async fn send_one(
    http: &LoadClient,
    uri: &Uri,
    route: Route,
    who: Who,
    samples: &UnboundedSender<Sample>,
) -> Option<Outcome> {
    let started = Instant::now();
    let (outcome, retry_after, cache) = send(http, uri.clone(), who).await;
    let sample = Sample {
        who,
        outcome,
        latency: started.elapsed(),
        retry_after,
        route,
        cache,
    };
    samples.send(sample).ok().map(|()| outcome)
}

fn pause(rng: &mut XorShift64, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(rng.between(lo, hi))
}

/// One request, read to the end, bounded by the client timeout: how it
/// ended, the `Retry-After` (in seconds) of a 429, and how the cache
/// answered it.
async fn send(
    http: &LoadClient,
    uri: Uri,
    who: Who,
) -> (Outcome, Option<u64>, Option<CacheAnswer>) {
    let exchange = async {
        let req = http::Request::get(uri)
            .header(CLIENT, who.name())
            .body(Empty::new())?;
        let res = http.request(req).await?;
        let (parts, body) = res.into_parts();
        body.collect().await?;
        let outcome = Outcome::of(
            parts.status,
            parts.headers.get(REJECTED_BY),
            parts.headers.contains_key(FALLBACK_HEADER),
        );
        let retry_after = match outcome {
            Outcome::RateLimited => retry_after(parts.headers.get(http::header::RETRY_AFTER)),
            _ => None,
        };
        let cache = parts
            .headers
            .get(CACHE_STATUS)
            .and_then(CacheAnswer::from_header);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((outcome, retry_after, cache))
    };
    match timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) | Err(_) => (Outcome::Other, None, None),
    }
}

/// A `Retry-After` in seconds (the gateway never sends an HTTP date).
fn retry_after(value: Option<&HeaderValue>) -> Option<u64> {
    value?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn preflight_names_a_gateway_that_is_not_there() {
        // A port that was just free: nothing listens on it any more.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = preflight(addr).await.unwrap_err();
        assert!(
            matches!(err, DemoError::Unreachable { addr: a, .. } if a == addr),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with(&format!("the gateway at http://{addr} is not reachable")));
    }

    #[test]
    fn statuses_sort_into_outcomes() {
        let of = |status| Outcome::of(status, None, false);
        assert_eq!(of(StatusCode::OK), Outcome::Ok);
        assert_eq!(of(StatusCode::TOO_MANY_REQUESTS), Outcome::RateLimited);
        assert_eq!(
            of(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::UpstreamError
        );
        assert_eq!(of(StatusCode::SERVICE_UNAVAILABLE), Outcome::Shed(None));
        assert_eq!(of(StatusCode::GATEWAY_TIMEOUT), Outcome::TimedOut);
        assert_eq!(of(StatusCode::BAD_GATEWAY), Outcome::BadGateway);
        assert_eq!(of(StatusCode::NOT_FOUND), Outcome::Other);
        assert_eq!(Outcome::of(StatusCode::OK, None, true), Outcome::Fallback);
        // Only a 200 is a fallback answer.
        assert_eq!(
            Outcome::of(StatusCode::BAD_GATEWAY, None, true),
            Outcome::BadGateway
        );
        for (text, answer) in [
            ("hit", CacheAnswer::Hit),
            ("miss", CacheAnswer::Miss),
            ("coalesced", CacheAnswer::Coalesced),
            ("stale", CacheAnswer::Stale),
        ] {
            assert_eq!(
                CacheAnswer::from_header(&HeaderValue::from_static(text)),
                Some(answer)
            );
        }
        assert_eq!(
            CacheAnswer::from_header(&HeaderValue::from_static("bypass")),
            None
        );
    }

    #[test]
    fn clients_are_named_in_their_header_and_retry_after_is_read() {
        assert_eq!(Who::Steady(3).name(), "c03");
        assert_eq!(Who::Steady(47).name(), "c47");
        assert_eq!(Who::Burst.name(), "burst");
        assert!(HeaderValue::from_str(&Who::Steady(4095).name()).is_ok());
        assert_eq!(retry_after(Some(&HeaderValue::from_static("1"))), Some(1));
        assert_eq!(retry_after(Some(&HeaderValue::from_static("soon"))), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn a_503_is_sorted_by_the_layer_that_rejected_it() {
        for rejection in [
            Rejection::QueueFull,
            Rejection::WaitTimedOut,
            Rejection::CircuitOpen,
        ] {
            let header = HeaderValue::from_static(rejection.as_header());
            assert_eq!(
                Outcome::of(StatusCode::SERVICE_UNAVAILABLE, Some(&header), false),
                Outcome::Shed(Some(rejection))
            );
        }
        let unknown = HeaderValue::from_static("gremlins");
        assert_eq!(
            Outcome::of(StatusCode::SERVICE_UNAVAILABLE, Some(&unknown), false),
            Outcome::Shed(None)
        );
    }
}
