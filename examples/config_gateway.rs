//! A small HTTP gateway whose protection comes from a policy file, and
//! follows it: change a limit in the file and live traffic sees the new
//! limit, with no restart and no request failed by the change.
//!
//! The file (TOML; YAML and JSON work the same) names two policies:
//!
//! - `servers.gateway`, the server preset (`Policy::server()`) changed
//!   where the file says: the gateway's own protection, here a limit of 2
//!   requests a second per client, in bursts of 5;
//! - `policies.upstream`, the `api` client preset with HTTP's rules
//!   (`flavor = "http"`): retry, breaker, timeouts around the gateway's
//!   calls to the service behind it.
//!
//! `PolicySet::from_path` builds both; `PolicySet::watch` reloads the set
//! when the file changes, applying the new values to the live instances
//! through their handles (nothing is rebuilt, in-flight calls finish
//! under the values they started with). A file that does not parse, or a
//! change that cannot apply live, leaves the policies as they were and is
//! reported to the callback.
//!
//! The example writes the file in a temporary directory, starts an
//! upstream service and the gateway on 127.0.0.1, and then:
//! 1. starts two slow requests that stay in flight across the reload;
//! 2. sends 10 requests in a row: what the slow ones left of the burst
//!    passes, the rest is answered 429;
//! 3. raises the limit in the file (written to a new file and renamed over
//!    the old one, as editors do), and waits for the watcher's report;
//! 4. sends 10 requests again: all answered;
//! 5. lets the slow requests finish: both answered.
//!
//! `cargo run -p buttress-examples --example config_gateway`; its test is
//! `examples/tests/config_gateway.rs`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use buttress::policy::{Http, PolicySet};
use buttress::retry::ReplayBody;
use buttress::{BoxError, Registry};
use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// The policy file as the example first writes it.
pub(crate) const BEFORE: &str = r#"
# The gateway's own protection: the server preset, changed here.
[servers.gateway]
per_client = { rate = "2/1s", burst = 5 }  # requests per client IP
timeout = "5s"

# The gateway's calls to the service behind it.
[policies.upstream]
preset = "api"
flavor = "http"
attempt_timeout = "3s"
"#;

/// The policy file after the operator's change: a higher limit.
pub(crate) const AFTER: &str = r#"
# The gateway's own protection: the server preset, changed here.
[servers.gateway]
per_client = { rate = "100/1s", burst = 500 }  # raised
timeout = "5s"

# The gateway's calls to the service behind it.
[policies.upstream]
preset = "api"
flavor = "http"
attempt_timeout = "3s"
"#;

/// The upstream service: `/quick` answers at once; `/slow` answers once
/// the example lets it (or after 5 s), and counts its callers.
#[derive(Clone)]
struct Upstream {
    slow_started: Arc<AtomicU32>,
    release: tokio::sync::watch::Receiver<bool>,
}

async fn slow(State(up): State<Upstream>) -> &'static str {
    up.slow_started.fetch_add(1, Ordering::SeqCst);
    let mut release = up.release.clone();
    let _ = tokio::time::timeout(Duration::from_secs(5), release.wait_for(|go| *go)).await;
    "slow answer\n"
}

/// The gateway's client to the upstream, under the file's `upstream`
/// policy.
type UpstreamClient = BoxCloneSyncService<
    http::Request<Full<Bytes>>,
    http::Response<hyper::body::Incoming>,
    BoxError,
>;

#[derive(Clone)]
struct Gateway {
    client: UpstreamClient,
    upstream: SocketAddr,
}

/// Forwards a GET to the upstream; a failed call (the policy's rejection,
/// the upstream unreachable) is a 502.
async fn forward(State(gw): State<Gateway>, uri: Uri) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = match http::Request::get(format!("http://{}{path}", gw.upstream))
        .body(Full::new(Bytes::new()))
    {
        Ok(req) => req,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match gw.client.oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// Fails with `what` unless `ok`: the example checks what it shows.
fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// Writes `text` to `path` as editors do: a new file, renamed over the old
/// one, so that no reader ever sees it half written.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Runs the example; one line per step, an error if a step goes
/// otherwise.
pub(crate) async fn run() -> Result<Vec<String>, BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, BEFORE)?;

    // ----- the upstream service -----
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let upstream = Upstream {
        slow_started: Arc::default(),
        release: release_rx,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = listener.local_addr()?;
    let upstream_app = Router::new()
        .route("/quick", get(|| async { "quick answer\n" }))
        .route("/slow", get(slow))
        .with_state(upstream.clone());
    let upstream_server = tokio::spawn(async move { axum::serve(listener, upstream_app).await });

    // ----- the gateway, its policies from the file -----
    let registry = Registry::new();
    let policies = PolicySet::from_path(&path, &registry)?;
    let (reloaded_tx, mut reloaded) = tokio::sync::mpsc::unbounded_channel();
    // Reloads the set when the file changes, until dropped.
    let _watcher = policies.watch(&path, move |outcome| {
        let _ = reloaded_tx.send(outcome);
    })?;
    let client = ServiceBuilder::new()
        .layer(policies.layer::<Http>("upstream")?)
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    let gateway = Router::new()
        .fallback(forward)
        .with_state(Gateway {
            client: BoxCloneSyncService::new(client),
            upstream: upstream_addr,
        })
        .layer(policies.server("gateway")?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_addr = listener.local_addr()?;
    let gateway_server = tokio::spawn(async move {
        axum::serve(
            listener,
            gateway.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let res = client
                .get(format!("http://{gateway_addr}{path}").parse()?)
                .await?;
            Ok::<_, BoxError>(res.status())
        }
    };
    let mut lines = Vec::new();
    let mut errors = 0;
    let mut sent = 0;

    // 1. Two slow requests, in flight until after the reload.
    let in_flight = [tokio::spawn(get("/slow")), tokio::spawn(get("/slow"))];
    sent += 2;
    for _ in 0..400 {
        if upstream.slow_started.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure(upstream.slow_started.load(Ordering::SeqCst) == 2, || {
        "the slow requests never reached the upstream".to_owned()
    })?;

    // 2. Ten requests at the old limit: what is left of the burst of 5
    //    passes (and one more for each half second they take), the rest
    //    is limited.
    let (ok, limited, other) = burst(&get, 10).await;
    sent += 10;
    errors += other;
    let line = format!("limit 2/1s: {ok} answered, {limited} limited (429)");
    ensure(ok >= 1 && limited >= 5 && other == 0, || line.clone())?;
    lines.push(line);

    // 3. The operator raises the limit in the file; the watcher reloads.
    //    A client keeps what it owes across the change: the limiter keeps
    //    its debt in time (here at most 2.5 s, a burst of 5 at 2 a
    //    second), and the new limit admits it again once its new burst
    //    (500 at 100 a second: 5 s) covers that. So the raise applies at
    //    once; a smaller new burst would apply when the debt has run down.
    replace_file(&path, AFTER)?;
    let report = tokio::time::timeout(Duration::from_secs(5), reloaded.recv())
        .await
        .map_err(|_| "no reload within 5 s")?
        .ok_or("the watcher stopped")??;
    let line = format!("reloaded: changed {}", report.changed.join(", "));
    ensure(report.changed == ["servers.gateway.per_client"], || {
        line.clone()
    })?;
    lines.push(line);

    // 4. The same ten requests at the new limit: all answered.
    let (ok, limited, other) = burst(&get, 10).await;
    sent += 10;
    errors += other;
    let line = format!("limit 100/1s: {ok} answered, {limited} limited (429)");
    ensure(ok == 10, || line.clone())?;
    lines.push(line);

    // 5. The requests in flight across the reload finish normally.
    release.send_replace(true);
    let mut statuses = Vec::new();
    for task in in_flight {
        match task.await? {
            Ok(status) => statuses.push(status.to_string()),
            Err(e) => {
                errors += 1;
                statuses.push(e.to_string());
            }
        }
    }
    let line = format!("in flight during the reload: {}", statuses.join(", "));
    ensure(statuses.iter().all(|s| s == "200 OK"), || line.clone())?;
    lines.push(line);
    let line = format!("{sent} requests, {errors} failed (an error, or neither 200 nor 429)");
    ensure(errors == 0, || line.clone())?;
    lines.push(line);

    gateway_server.abort();
    upstream_server.abort();
    Ok(lines)
}

/// Sends `n` requests to `/quick` one after the other: how many were
/// answered (200), limited (429), and anything else (an error, another
/// status).
async fn burst<F, Fut>(get: &F, n: u32) -> (u32, u32, u32)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<StatusCode, BoxError>>,
{
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for _ in 0..n {
        match get("/quick").await {
            Ok(StatusCode::OK) => ok += 1,
            Ok(StatusCode::TOO_MANY_REQUESTS) => limited += 1,
            _ => other += 1,
        }
    }
    (ok, limited, other)
}
