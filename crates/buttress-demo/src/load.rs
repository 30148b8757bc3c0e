//! The load generator: steady clients in a closed loop, each with one
//! request in flight, plus one client that bursts, until the deadline.
//! Every request names its client in the [`CLIENT`] header, by which the
//! gateway's rate limiter keys its per-client limits (all the clients
//! share one IP address, so the client IP could not tell them apart).

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

use crate::gateway::{Rejection, CLIENT, REJECTED_BY};
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
    fn of(status: StatusCode, rejected_by: Option<&HeaderValue>) -> Self {
        match status {
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
/// the upstream, so that a broken setup is one clear error rather than a
/// table full of failures.
pub(crate) async fn preflight(gateway: SocketAddr) -> Result<(), DemoError> {
    let unreachable = |reason: String| DemoError::Unreachable {
        addr: gateway,
        reason,
    };
    let res = timeout(
        CLIENT_TIMEOUT,
        client().get(gateway_uri(gateway, "/healthz")),
    )
    .await
    .map_err(|_| unreachable(format!("no answer within {CLIENT_TIMEOUT:?}")))?
    .map_err(|e| unreachable(e.to_string()))?;
    match res.status() {
        StatusCode::OK => Ok(()),
        StatusCode::BAD_GATEWAY => Err(unreachable("it cannot reach the upstream".into())),
        other => Err(unreachable(format!("health check answered {other}"))),
    }
}

/// Starts `concurrency` steady clients and the bursting one, sending
/// `GET /` to the gateway until `deadline`; each finished request goes to
/// `samples`.
pub(crate) fn start(
    gateway: SocketAddr,
    concurrency: usize,
    deadline: Instant,
    samples: UnboundedSender<Sample>,
) -> Load {
    // One pool for all clients, as one service calling another would have.
    let http = client();
    let uri = gateway_uri(gateway, "/");
    let mut clients = JoinSet::new();
    for id in 0..concurrency {
        let (http, uri, samples) = (http.clone(), uri.clone(), samples.clone());
        let mut rng = XorShift64::from_clock(id as u64 + 1);
        let who = Who::Steady(id);
        clients.spawn(async move {
            // Spread the first requests over the first think time.
            sleep_until(Instant::now() + pause(&mut rng, THINK_MS)).await;
            while Instant::now() < deadline {
                let Some(outcome) = send_one(&http, &uri, who, &samples).await else {
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
                burst.spawn(async move { send_one(&http, &uri, Who::Burst, &samples).await });
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
    who: Who,
    samples: &UnboundedSender<Sample>,
) -> Option<Outcome> {
    let started = Instant::now();
    let (outcome, retry_after) = send(http, uri.clone(), who).await;
    let sample = Sample {
        who,
        outcome,
        latency: started.elapsed(),
        retry_after,
    };
    samples.send(sample).ok().map(|()| outcome)
}

fn pause(rng: &mut XorShift64, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(rng.between(lo, hi))
}

/// One request, read to the end, bounded by the client timeout: how it
/// ended, and the `Retry-After` (in seconds) of a 429.
async fn send(http: &LoadClient, uri: Uri, who: Who) -> (Outcome, Option<u64>) {
    let exchange = async {
        let req = http::Request::get(uri)
            .header(CLIENT, who.name())
            .body(Empty::new())?;
        let res = http.request(req).await?;
        let (parts, body) = res.into_parts();
        body.collect().await?;
        let outcome = Outcome::of(parts.status, parts.headers.get(REJECTED_BY));
        let retry_after = match outcome {
            Outcome::RateLimited => retry_after(parts.headers.get(http::header::RETRY_AFTER)),
            _ => None,
        };
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((outcome, retry_after))
    };
    match timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) | Err(_) => (Outcome::Other, None),
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
        let of = |status| Outcome::of(status, None);
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
                Outcome::of(StatusCode::SERVICE_UNAVAILABLE, Some(&header)),
                Outcome::Shed(Some(rejection))
            );
        }
        let unknown = HeaderValue::from_static("gremlins");
        assert_eq!(
            Outcome::of(StatusCode::SERVICE_UNAVAILABLE, Some(&unknown)),
            Outcome::Shed(None)
        );
    }
}
