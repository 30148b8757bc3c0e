//! The retry layer around a hyper-util client talking to real servers on
//! 127.0.0.1: `Retry-After` honoured, streamed bodies replayed from the
//! bounded buffer (and not beyond it), non-idempotent requests retried only
//! when they never left, counters, exhaustion and a budget shared by two
//! layers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use buttress::core::RetryExhausted;
use buttress::retry::policy::is_connect_error;
use buttress::retry::{
    Backoff, Cause, HttpReplay, HttpRetry, Jitter, ReplayBody, RetryBudget, RetryBuilder,
    RetryEvent, RetryLayer, RetrySnapshot, IDEMPOTENCY_KEY,
};
use buttress::{BoxError, ServiceBuilderExt};
use buttress_integration_tests::TestServer;
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const MIB: usize = 1024 * 1024;
const KIB: usize = 1024;

// ---------------------------------------------------------------------------
// Server side: a scripted server that records every request it answers.
// ---------------------------------------------------------------------------

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// When the handler ran (after the whole body was read).
    at: Instant,
    method: Method,
    idempotency_key: Option<String>,
    body: Bytes,
}

/// What the server answers: `script[n]` to the n-th request (0-based), the
/// last entry to every later one.
#[derive(Clone)]
struct Script {
    answers: Arc<Vec<(u16, Option<&'static str>)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn scripted(
    State(script): State<Script>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = {
        let mut seen = script.seen.lock().unwrap();
        seen.push(Seen {
            at: Instant::now(),
            method,
            idempotency_key: headers
                .get(IDEMPOTENCY_KEY)
                .map(|v| v.to_str().unwrap().to_owned()),
            body,
        });
        seen.len()
    };
    let (status, retry_after) = script.answers[(n - 1).min(script.answers.len() - 1)];
    let mut res = (
        StatusCode::from_u16(status).unwrap(),
        format!("request {n}"),
    )
        .into_response();
    if let Some(ra) = retry_after {
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static(ra));
    }
    res
}

/// Serves `answers` on `/`; returns the server and what it saw.
async fn scripted_server(
    answers: &[(u16, Option<&'static str>)],
) -> (TestServer, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Script {
        answers: Arc::new(answers.to_vec()),
        seen: seen.clone(),
    };
    let app = Router::new().route("/", any(scripted)).with_state(script);
    (TestServer::start(app).await, seen)
}

fn seen_now(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    seen.lock().unwrap().clone()
}

// ---------------------------------------------------------------------------
// Client side.
// ---------------------------------------------------------------------------

/// A request body streamed in the given chunks, with no size hint: the
/// retry layer cannot know its length in advance and must tee it.
#[derive(Debug)]
struct Chunked {
    chunks: VecDeque<Bytes>,
}

impl Chunked {
    fn new(data: &Bytes, chunk: usize) -> Self {
        let mut chunks = VecDeque::new();
        let mut at = 0;
        while at < data.len() {
            let end = (at + chunk).min(data.len());
            chunks.push_back(data.slice(at..end));
            at = end;
        }
        Chunked { chunks }
    }
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// A hyper-util client whose requests carry the retry layer's body.
fn raw_client<B>() -> Client<HttpConnector, ReplayBody<B>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// The HTTP preset with fixed, unjittered delays.
fn http_retry(max_attempts: u32, delay: Duration) -> RetryBuilder<HttpRetry, HttpReplay> {
    RetryLayer::for_http()
        .max_attempts(max_attempts)
        .backoff(Backoff::fixed(delay))
        .jitter(Jitter::None)
        .max_delay(delay)
}

type Events = Arc<Mutex<Vec<RetryEvent>>>;

/// A listener that records every event.
fn recorder() -> (Events, impl Fn(&RetryEvent) + Send + Sync + 'static) {
    let events: Events = Arc::default();
    let sink = events.clone();
    (events, move |e: &RetryEvent| {
        sink.lock().unwrap().push(e.clone())
    })
}

/// The event that ends every call a retry layer completes.
fn finished(name: &str, succeeded: bool, retried: bool, exhausted: bool) -> RetryEvent {
    RetryEvent::Finished {
        name: name.into(),
        succeeded,
        retried,
        exhausted,
    }
}

fn events_now(events: &Events) -> Vec<RetryEvent> {
    events.lock().unwrap().clone()
}

/// Sends `req` through `layer` around a fresh client, bounded by 5 s;
/// returns the status and body text of the response.
async fn send<B>(
    layer: RetryLayer<HttpRetry, HttpReplay>,
    req: http::Request<B>,
) -> Result<(u16, String), BoxError>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let svc = ServiceBuilder::new()
        .retry_with(layer)
        .service(raw_client::<B>());
    let res = tokio::time::timeout(Duration::from_secs(5), svc.oneshot(req))
        .await
        .expect("an answer within 5 s")?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Every error of `err`'s `source()` chain, with the kind of any I/O error.
fn describe_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let io = e
            .downcast_ref::<std::io::Error>()
            .map(|io| format!(" [io::Error kind {:?}]", io.kind()))
            .unwrap_or_default();
        out.push(format!("{e:?}{io}"));
        next = e.source();
    }
    out.join("\n  caused by: ")
}

/// 1 MiB that no shifted or reordered chunk reproduces.
fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_of_a_503_is_waited_before_the_second_attempt() {
    let (server, seen) = scripted_server(&[(503, Some("1")), (200, None)]).await;
    let (events, listener) = recorder();
    let layer = http_retry(3, 10 * MS)
        .max_delay(Duration::from_secs(3))
        .name("retry-after")
        .on_event(listener)
        .build()
        .unwrap();
    let req = http::Request::get(server.url("/"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let (status, body) = send(layer, req).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "request 2"));
    let seen = seen_now(&seen);
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(1_000),
        "second attempt after {gap:?}, before the 1 s Retry-After"
    );
    assert!(
        gap < Duration::from_millis(1_800),
        "second attempt after {gap:?}"
    );
    assert_eq!(
        events_now(&events),
        [
            RetryEvent::Scheduled {
                name: "retry-after".into(),
                attempt: 2,
                delay: Duration::from_secs(1),
                cause: Cause::Response,
                hint: Some(Duration::from_secs(1)),
            },
            finished("retry-after", true, true, false),
            RetryEvent::Succeeded {
                name: "retry-after".into(),
                retries: 1,
            },
        ]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_post_with_idempotency_key_is_replayed_byte_for_byte() {
    let (server, seen) = scripted_server(&[(503, None), (200, None)]).await;
    let (events, listener) = recorder();
    let layer = http_retry(3, 10 * MS)
        .body_limit(2 * MIB)
        .name("upload")
        .on_event(listener)
        .build()
        .unwrap();
    let data = payload(MIB);
    let req = http::Request::post(server.url("/"))
        .header(IDEMPOTENCY_KEY, "order-42")
        .body(Chunked::new(&data, 64 * KIB))
        .unwrap();

    let (status, body) = send(layer, req).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "request 2"));
    let seen = seen_now(&seen);
    assert_eq!(seen.len(), 2);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.method, Method::POST, "request {}", i + 1);
        assert_eq!(s.idempotency_key.as_deref(), Some("order-42"));
        assert_eq!(s.body.len(), MIB, "request {} body length", i + 1);
        assert!(s.body == data, "request {} body differs", i + 1);
    }
    assert_eq!(
        events_now(&events),
        [
            RetryEvent::Scheduled {
                name: "upload".into(),
                attempt: 2,
                delay: 10 * MS,
                cause: Cause::Response,
                hint: None,
            },
            finished("upload", true, true, false),
            RetryEvent::Succeeded {
                name: "upload".into(),
                retries: 1,
            },
        ]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_post_beyond_the_body_limit_is_sent_once() {
    let (server, seen) = scripted_server(&[(503, None), (200, None)]).await;
    let (events, listener) = recorder();
    let layer = http_retry(3, 10 * MS)
        .body_limit(64 * KIB)
        .name("upload")
        .on_event(listener)
        .build()
        .unwrap();
    let data = payload(MIB);
    let req = http::Request::post(server.url("/"))
        .header(IDEMPOTENCY_KEY, "order-43")
        .body(Chunked::new(&data, 64 * KIB))
        .unwrap();

    let (status, body) = send(layer, req).await.unwrap();
    assert_eq!((status, body.as_str()), (503, "request 1"));
    let seen = seen_now(&seen);
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].body == data,
        "the single attempt got the whole body"
    );
    // A request that cannot be sent again is not put to the policy: its
    // response is returned as it is, with no retry event, only the end of
    // the call.
    assert_eq!(
        events_now(&events),
        [finished("upload", true, false, false)]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_post_answered_503_is_not_retried() {
    let (server, seen) = scripted_server(&[(503, None), (200, None)]).await;
    let (events, listener) = recorder();
    let layer = http_retry(3, 10 * MS)
        .name("orders")
        .on_event(listener)
        .build()
        .unwrap();
    let req = http::Request::post(server.url("/"))
        .body(Full::new(Bytes::from_static(b"{\"item\":1}")))
        .unwrap();

    let (status, body) = send(layer, req).await.unwrap();
    assert_eq!((status, body.as_str()), (503, "request 1"));
    let seen = seen_now(&seen);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].idempotency_key, None);
    assert_eq!(seen[0].body, Bytes::from_static(b"{\"item\":1}"));
    // Not replayable, so not put to the policy: the 503 is returned as it
    // is, with no retry event, only the end of the call.
    assert_eq!(
        events_now(&events),
        [finished("orders", true, false, false)]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_post_is_retried_after_a_connect_error() {
    // A port where nothing listens any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (events, listener) = recorder();
    let layer = http_retry(3, 10 * MS)
        .name("orders")
        .on_event(listener)
        .build()
        .unwrap();
    let req = http::Request::post(format!("http://127.0.0.1:{port}/"))
        .body(Full::new(Bytes::from_static(b"{\"item\":1}")))
        .unwrap();

    let err = send(layer, req).await.unwrap_err();
    let chain = describe_chain(&*err);
    let exhausted = err
        .downcast_ref::<RetryExhausted>()
        .unwrap_or_else(|| panic!("expected RetryExhausted, got the chain:\n  {chain}"));
    assert!(
        is_connect_error(&**exhausted.last_error()),
        "not recognised as a connect error; the chain:\n  {chain}"
    );
    assert_eq!(exhausted.attempts(), 3, "chain:\n  {chain}");
    assert_eq!(exhausted.name(), "orders");
    let events = events_now(&events);
    let connect_retries = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                RetryEvent::Scheduled {
                    cause: Cause::ConnectError,
                    ..
                }
            )
        })
        .count();
    assert_eq!(connect_retries, 2, "events: {events:?}");
    assert_eq!(
        events,
        [
            RetryEvent::Scheduled {
                name: "orders".into(),
                attempt: 2,
                delay: 10 * MS,
                cause: Cause::ConnectError,
                hint: None,
            },
            RetryEvent::Scheduled {
                name: "orders".into(),
                attempt: 3,
                delay: 10 * MS,
                cause: Cause::ConnectError,
                hint: None,
            },
            RetryEvent::Exhausted {
                name: "orders".into(),
                attempts: 3,
            },
            finished("orders", false, true, true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_answered_502_twice_succeeds_on_the_third_attempt() {
    let (server, seen) = scripted_server(&[(502, None), (502, None), (200, None)]).await;
    let layer = http_retry(3, 10 * MS).build().unwrap();
    let handle = layer.handle();
    let req = http::Request::get(server.url("/"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let (status, body) = send(layer, req).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "request 3"));
    assert_eq!(seen_now(&seen).len(), 3);
    assert_eq!(
        handle.snapshot(),
        RetrySnapshot {
            successful_without_retry: 0,
            successful_with_retry: 1,
            failed_without_retry: 0,
            failed_with_retry: 0,
            retries: 2,
            budget: None,
        }
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_returns_the_last_503_response() {
    let (server, seen) = scripted_server(&[(503, None)]).await;
    let (events, listener) = recorder();
    let layer = http_retry(3, 10 * MS)
        .name("always-503")
        .on_event(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let req = http::Request::get(server.url("/"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let (status, body) = send(layer, req).await.unwrap();
    assert_eq!((status, body.as_str()), (503, "request 3"));
    assert_eq!(seen_now(&seen).len(), 3);
    let scheduled = |attempt| RetryEvent::Scheduled {
        name: "always-503".into(),
        attempt,
        delay: 10 * MS,
        cause: Cause::Response,
        hint: None,
    };
    assert_eq!(
        events_now(&events),
        [
            scheduled(2),
            scheduled(3),
            RetryEvent::Exhausted {
                name: "always-503".into(),
                attempts: 3,
            },
            finished("always-503", false, true, true),
        ]
    );
    let snap = handle.snapshot();
    assert_eq!((snap.failed_with_retry, snap.retries), (1, 2));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_shared_by_two_layers_allows_one_retry_in_all() {
    let (server, seen) = scripted_server(&[(503, None)]).await;
    // No share of traffic, a floor of 1 retry per second over a 1 s window:
    // exactly one retry in the window, whichever layer takes it.
    let budget = RetryBudget::builder()
        .percent(0.0)
        .min_per_sec(1)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let (events, listener) = recorder();
    let listener = Arc::new(listener);
    // Two attempts per call: the call that gets the retry ends exhausted
    // (not refused by the budget), so the only refusal is the other call's.
    let layer = |name: &'static str| {
        let l = listener.clone();
        http_retry(2, 10 * MS)
            .name(name)
            .budget(budget.clone())
            .on_event(move |e: &RetryEvent| l(e))
            .build()
            .unwrap()
    };
    let (a, b) = (layer("client-a"), layer("client-b"));
    let (ha, hb) = (a.handle(), b.handle());
    let req = || {
        http::Request::get(server.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    let (ra, rb) = tokio::join!(send(a, req()), send(b, req()));
    assert_eq!(ra.unwrap().0, 503);
    assert_eq!(rb.unwrap().0, 503);
    assert_eq!(seen_now(&seen).len(), 3, "2 calls + 1 retry");
    let events = events_now(&events);
    let count = |f: fn(&RetryEvent) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(|e| matches!(e, RetryEvent::Scheduled { .. })),
        1,
        "{events:?}"
    );
    assert_eq!(
        count(|e| matches!(e, RetryEvent::BudgetExhausted { attempts: 1, .. })),
        1,
        "{events:?}"
    );
    assert_eq!(
        count(|e| matches!(e, RetryEvent::Exhausted { attempts: 2, .. })),
        1,
        "{events:?}"
    );
    // And the end of each of the two calls.
    assert_eq!(
        count(|e| matches!(e, RetryEvent::Finished { .. })),
        2,
        "{events:?}"
    );
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(ha.snapshot().retries + hb.snapshot().retries, 1);
    let b = budget.snapshot();
    assert_eq!((b.deposits, b.withdrawals, b.refusals), (2, 1, 1), "{b:?}");
    server.shutdown().await;
}
