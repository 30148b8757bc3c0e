//! The load generator: clients in a closed loop, each with one request in
//! flight, until the deadline.

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

use crate::gateway::{Rejection, REJECTED_BY};
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

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// From sending to the last byte of the answer (or the failure).
    pub(crate) latency: Duration,
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

/// Starts `concurrency` clients sending `GET /` to the gateway until
/// `deadline`; each finished request goes to `samples`.
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
        clients.spawn(async move {
            // Spread the first requests over the first think time.
            sleep_until(Instant::now() + pause(&mut rng, THINK_MS)).await;
            while Instant::now() < deadline {
                let started = Instant::now();
                let outcome = send(&http, uri.clone()).await;
                let sample = Sample {
                    outcome,
                    latency: started.elapsed(),
                };
                if samples.send(sample).is_err() {
                    return;
                }
                let range = if matches!(outcome, Outcome::Shed(_)) {
                    BACKOFF_MS
                } else {
                    THINK_MS
                };
                sleep_until((Instant::now() + pause(&mut rng, range)).min(deadline)).await;
            }
        });
    }
    Load { clients }
}

fn pause(rng: &mut XorShift64, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(rng.between(lo, hi))
}

/// One request, read to the end, bounded by the client timeout.
async fn send(http: &LoadClient, uri: Uri) -> Outcome {
    let exchange = async {
        let res = http.get(uri).await?;
        let (parts, body) = res.into_parts();
        body.collect().await?;
        let outcome = Outcome::of(parts.status, parts.headers.get(REJECTED_BY));
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(outcome)
    };
    match timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) | Err(_) => Outcome::Other,
    }
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
