//! Overload on the server side, end to end on 127.0.0.1: an axum server and
//! a tonic server protected by buttress, their handlers held shut by a gate
//! the test opens, called by more clients at once than they admit.
//!
//! - **HTTP**: `Policy::server()` itself (rejections as responses, a rate
//!   limit per client IP, a bulkhead with a short queue, a timeout),
//!   configured small. The clients are
//!   told apart by `X-Forwarded-For` behind one trusted proxy (the peer,
//!   127.0.0.1), so each has its own bucket and the counts are exact:
//!   requests that reached the handler, the most in it at once, queued,
//!   answered 503 with `Retry-After` (bulkhead full, queue wait timed out),
//!   429 with `Retry-After` (rate limited), 504 (timeout), and 200 for
//!   every admitted request once the gate opens.
//! - **gRPC**: a rate limiter and a bulkhead under `error_to_status()`:
//!   `UNAVAILABLE` and `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`
//!   and a generic message (the rejection's text only in the detailed
//!   mode), `OK` for every admitted call.
//!
//! The bulkhead is saturated and the rate limit exhausted in two waves,
//! so that each wave's counts are exact; that a refused request never
//! takes the bulkhead's permit or queue place when both apply at once is
//! `a_rate_limited_request_never_takes_a_bulkhead_queue_slot`.
//!
//! Sockets need the real clock: the tests assert counts, never durations;
//! they wait for events with generous bounded polls, never fixed sleeps.
//! A client breaker opened by a server's rejections is in `tests/grpc.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress::bulkhead::{BulkheadConfig, BulkheadHandle, BulkheadLayer};
use buttress::core::grpc::{ErrorToStatusLayer, RETRY_PUSHBACK_MS};
use buttress::policy::{PerClient, Policy};
use buttress_integration_tests::{client, HttpClient};
use buttress_rate_limit::{KeyedRateLimitHandle, Rate, RateLimitLayer};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

/// How long a wait for an event may take before the test fails: generous,
/// for a loaded machine; a passing run waits far less.
const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `cond` holds, polling every 5 ms, at most [`PATIENCE`].
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let polls = PATIENCE.as_millis() / 5;
    for _ in 0..polls {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(cond(), "still not, after {PATIENCE:?}: {what}");
}

/// The handler's counters.
#[derive(Default)]
struct Counters {
    /// Requests that reached the handler.
    entered: AtomicU64,
    /// Requests in the handler now.
    inside: AtomicU64,
    /// The most requests in the handler at once.
    most_inside: AtomicU64,
    /// Requests the handler answered.
    answered: AtomicU64,
}

/// One request in the handler; leaves it when dropped (answered, or
/// cancelled by a timeout).
struct Inside(Arc<Counters>);

impl Inside {
    fn enter(c: &Arc<Counters>) -> Inside {
        c.entered.fetch_add(1, SeqCst);
        let now = c.inside.fetch_add(1, SeqCst) + 1;
        c.most_inside.fetch_max(now, SeqCst);
        Inside(c.clone())
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, SeqCst);
    }
}

/// Waits for a permit of `gate` (one per request, never given back).
async fn pass(gate: &Semaphore) {
    gate.acquire().await.expect("gate open").forget();
}

// ===== HTTP =====

/// `Policy::server()`'s settings, configured small.
struct HttpPolicy {
    /// Per client IP: a burst, then one request an hour (none in a test).
    burst: u64,
    permits: usize,
    queue: usize,
    /// The queue's wait (only with a queue).
    max_wait: Option<Duration>,
    timeout: Duration,
}

/// An axum server on 127.0.0.1 whose one route is gated, behind
/// `Policy::server()` with small numbers: rejections answered as
/// responses, the rate limit per client IP (one trusted proxy, so
/// `X-Forwarded-For` names the client), the bulkhead, the timeout.
struct HttpServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    per_client: KeyedRateLimitHandle<IpAddr>,
    bulkhead: BulkheadHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl HttpServer {
    async fn start(p: HttpPolicy) -> HttpServer {
        let policy = Policy::server()
            .per_client(
                PerClient::new(Rate::per_hour(1))
                    .burst(p.burst)
                    .trusted_proxies(1),
            )
            .bulkhead(BulkheadConfig {
                max_concurrent: p.permits,
                max_queue: p.queue,
                max_wait: p.max_wait,
                ..BulkheadConfig::default()
            })
            .timeout(p.timeout)
            .build()
            .expect("server policy");
        let per_client = policy.per_client().expect("a per-client limit").clone();
        let bulkhead = policy.bulkhead().expect("a bulkhead").clone();
        let (per_client_handle, bulkhead_handle) = (per_client.handle(), bulkhead.handle());
        let counters = Arc::new(Counters::default());
        let gate = Arc::new(Semaphore::new(0));
        let (c, g) = (counters.clone(), gate.clone());
        let app = Router::new()
            .route(
                "/",
                get(move || {
                    let (c, g) = (c.clone(), g.clone());
                    async move {
                        let _inside = Inside::enter(&c);
                        pass(&g).await;
                        c.answered.fetch_add(1, SeqCst);
                        "ok"
                    }
                }),
            )
            .layer(policy);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .expect("server error");
        });
        HttpServer {
            addr,
            counters,
            gate,
            per_client: per_client_handle,
            bulkhead: bulkhead_handle,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server and waits (bounded) for it to finish.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the server stops")
            .expect("server task");
    }
}

/// What a client got.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    client: IpAddr,
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// The replies so far, in the order they came.
type Replies = Arc<Mutex<Vec<Reply>>>;

/// Starts `n` GETs from `client`, one after another (its
/// `X-Forwarded-For`, after a forged left-most entry that a trusted proxy
/// would not have written); each reply lands in `replies`. Each request is
/// bounded by [`PATIENCE`].
fn send(
    http: &HttpClient,
    addr: SocketAddr,
    client: IpAddr,
    n: usize,
    replies: &Replies,
) -> JoinHandle<()> {
    let (http, replies) = (http.clone(), replies.clone());
    tokio::spawn(async move {
        for _ in 0..n {
            let req = http::Request::get(format!("http://{addr}/"))
                .header("x-forwarded-for", format!("6.6.6.6, {client}"))
                .body(String::new())
                .expect("request");
            let res = tokio::time::timeout(PATIENCE, http.request(req))
                .await
                .expect("a reply in time")
                .expect("a reply");
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii").to_owned());
            let body = res.into_body().collect().await.expect("body").to_bytes();
            replies.lock().unwrap().push(Reply {
                client,
                status,
                retry_after,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
    })
}

fn replies_len(replies: &Replies) -> usize {
    replies.lock().unwrap().len()
}

fn with_status(replies: &Replies, status: u16) -> Vec<Reply> {
    replies
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.status == status)
        .cloned()
        .collect()
}

async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        tokio::time::timeout(PATIENCE, t)
            .await
            .expect("a client ends")
            .expect("client panicked");
    }
}

/// Eight clients at once, one request each, on a bulkhead of 3 permits and
/// a queue of 2 (each client allowed a burst of two): three reach the
/// handler, two wait, three are answered 503 with `Retry-After` at once. As
/// the gate lets one answer go at a time, the head of the queue takes the
/// freed permit; never more than three in the handler; every admitted
/// request is answered 200. Then four of the clients send three more
/// requests each, one after another, the gate open: each has one request
/// of its burst left (the first wave took one, shed or not), so each gets
/// one 200 and two 429 with `Retry-After`; the clients did not share a
/// bucket (all come from 127.0.0.1, told apart by `X-Forwarded-For`).
///
/// The two waves are apart because a rate-limited request passes the
/// bulkhead's `poll_ready` first (see
/// `a_rate_limited_request_never_takes_a_bulkhead_queue_slot`): with both
/// at once, which requests are shed and which are limited would depend on
/// the order they arrive in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_sheds_by_bulkhead_and_client_rate_with_exact_counts() {
    const CLIENTS: u8 = 8;
    const BURST: u64 = 2;
    const PERMITS: usize = 3;
    const QUEUE: usize = 2;
    const ADMITTED: usize = PERMITS + QUEUE;
    const SHED: usize = CLIENTS as usize - ADMITTED;
    let server = HttpServer::start(HttpPolicy {
        burst: BURST,
        permits: PERMITS,
        queue: QUEUE,
        // Neither is reached: the gate opens long before.
        max_wait: Some(Duration::from_secs(600)),
        timeout: Duration::from_secs(600),
    })
    .await;
    let (http, replies) = (client(), Replies::default());
    let clients: Vec<IpAddr> = (1..=CLIENTS)
        .map(|i| IpAddr::from([203, 0, 113, i]))
        .collect();
    let tasks: Vec<_> = clients
        .iter()
        .map(|ip| send(&http, server.addr, *ip, 1, &replies))
        .collect();

    let (c, bh, rl) = (&server.counters, &server.bulkhead, &server.per_client);
    wait_until("three in the handler, two queued, three shed", || {
        c.entered.load(SeqCst) == PERMITS as u64
            && bh.snapshot().queued == QUEUE
            && replies_len(&replies) == SHED
    })
    .await;
    let s = bh.snapshot();
    assert_eq!((s.active, s.queued, s.available), (PERMITS, QUEUE, 0));
    assert_eq!((s.completed, s.rejected), (0, SHED as u64));
    assert_eq!(c.inside.load(SeqCst), PERMITS as u64);
    assert_eq!(rl.rejected(), 0);
    assert_eq!(rl.missing_key(), 0, "every request named its client");
    let shed = with_status(&replies, 503);
    assert_eq!(shed.len(), SHED, "{:?}", replies.lock().unwrap());
    for r in &shed {
        // The bulkhead's retry hint, 1 s by default; no error text.
        assert_eq!(r.retry_after.as_deref(), Some("1"), "{r:?}");
        assert_eq!(r.body, "");
    }

    // One answer at a time; the head of the queue takes each freed permit.
    for answered in 1..=ADMITTED {
        server.gate.add_permits(1);
        let left = ADMITTED - answered;
        wait_until("one more answered, the next one in", || {
            replies_len(&replies) == SHED + answered
                && c.entered.load(SeqCst) == (PERMITS + answered).min(ADMITTED) as u64
                && c.inside.load(SeqCst) == left.min(PERMITS) as u64
        })
        .await;
        let s = bh.snapshot();
        assert_eq!(s.active, left.min(PERMITS), "after {answered} answers");
        assert_eq!(s.queued, left.saturating_sub(PERMITS));
        assert_eq!(s.completed, answered as u64);
    }
    join_all(tasks).await;
    let ok = with_status(&replies, 200);
    assert_eq!(ok.len(), ADMITTED);
    assert!(ok.iter().all(|r| r.body == "ok" && r.retry_after.is_none()));
    assert_eq!(replies_len(&replies), CLIENTS as usize, "no other status");
    assert_eq!(rl.keys(), CLIENTS as usize, "one bucket per client");
    assert_eq!(c.most_inside.load(SeqCst), PERMITS as u64);
    let s = bh.snapshot();
    assert_eq!(
        (s.active, s.queued, s.completed, s.rejected),
        (0, 0, ADMITTED as u64, SHED as u64)
    );

    // The second wave, the gate open: at most four requests at once, fewer
    // than the permits and the queue, so the bulkhead sheds none.
    const AGAIN: usize = 4;
    const EACH: usize = 3;
    server.gate.add_permits(AGAIN * EACH);
    let replies = Replies::default();
    let tasks: Vec<_> = clients[..AGAIN]
        .iter()
        .map(|ip| send(&http, server.addr, *ip, EACH, &replies))
        .collect();
    join_all(tasks).await;
    let replies = replies.lock().unwrap().clone();
    assert_eq!(replies.len(), AGAIN * EACH);
    for ip in &clients[..AGAIN] {
        let mine: Vec<&Reply> = replies.iter().filter(|r| r.client == *ip).collect();
        let statuses: Vec<u16> = mine.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 429, 429], "{ip}");
        for r in &mine[1..] {
            let secs: u64 = r
                .retry_after
                .as_deref()
                .expect("429 has Retry-After")
                .parse()
                .expect("whole seconds");
            // The client's next request is allowed within the hour.
            assert!((1..=3600).contains(&secs), "{r:?}");
            assert_eq!(r.body, "", "no error text in the body");
        }
    }
    assert_eq!(rl.rejected(), (AGAIN * (EACH - 1)) as u64);
    assert_eq!(c.answered.load(SeqCst), (ADMITTED + AGAIN) as u64);
    let s = bh.snapshot();
    assert_eq!((s.active, s.queued, s.rejected), (0, 0, SHED as u64));
    assert_eq!(c.most_inside.load(SeqCst), PERMITS as u64);
    server.shutdown().await;
}

/// A bulkhead of one permit whose queue wait is short: with the permit
/// held, the two queued requests are answered 503 once their wait runs
/// out, never reaching the handler. Then a timeout shorter than the gate:
/// both requests in the handler are answered 504 and leave it, and their
/// permits come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_answers_queue_timeouts_503_and_request_timeouts_504() {
    // The queue's wait runs out; the held request is never timed out.
    let server = HttpServer::start(HttpPolicy {
        burst: 100,
        permits: 1,
        queue: 2,
        max_wait: Some(Duration::from_millis(200)),
        timeout: Duration::from_secs(600),
    })
    .await;
    let (http, replies) = (client(), Replies::default());
    let ip = IpAddr::from([203, 0, 113, 1]);
    let c = server.counters.clone();
    let held = send(&http, server.addr, ip, 1, &replies);
    wait_until("one in the handler", || c.inside.load(SeqCst) == 1).await;
    let queued: Vec<_> = (0..2)
        .map(|_| send(&http, server.addr, ip, 1, &replies))
        .collect();
    join_all(queued).await;
    let shed = with_status(&replies, 503);
    assert_eq!(shed.len(), 2, "{:?}", replies.lock().unwrap());
    assert!(shed.iter().all(|r| r.retry_after.as_deref() == Some("1")));
    let s = server.bulkhead.snapshot();
    assert_eq!((s.active, s.queued, s.rejected), (1, 0, 2));
    assert_eq!(c.entered.load(SeqCst), 1);
    server.gate.add_permits(1);
    join_all(vec![held]).await;
    assert_eq!(with_status(&replies, 200).len(), 1);
    assert_eq!(replies_len(&replies), 3);
    assert_eq!(server.per_client.rejected(), 0);
    server.shutdown().await;

    // The timeout runs out; the gate stays shut.
    let server = HttpServer::start(HttpPolicy {
        burst: 100,
        permits: 2,
        queue: 0,
        max_wait: None,
        timeout: Duration::from_millis(200),
    })
    .await;
    let replies = Replies::default();
    let c = server.counters.clone();
    let tasks: Vec<_> = (0..2)
        .map(|_| send(&http, server.addr, ip, 1, &replies))
        .collect();
    join_all(tasks).await;
    let timed_out = with_status(&replies, 504);
    assert_eq!(timed_out.len(), 2, "{:?}", replies.lock().unwrap());
    assert!(timed_out.iter().all(|r| r.retry_after.is_none()));
    assert_eq!(c.entered.load(SeqCst), 2);
    assert_eq!(c.answered.load(SeqCst), 0);
    wait_until("the timed-out requests left the handler", || {
        c.inside.load(SeqCst) == 0
    })
    .await;
    let s = server.bulkhead.snapshot();
    assert_eq!((s.active, s.completed, s.rejected), (0, 2, 0));
    server.shutdown().await;
}

/// The server order of the README puts the per-client limiter above the
/// bulkhead "so a client over its limit is answered 429 at once, before it
/// takes a bulkhead permit or any work; one client's burst is its own
/// problem, not its neighbours'". One permit, held; a queue of one. A
/// second request of client A, over its limit, must be answered 429 at
/// once without waiting in the bulkhead's queue, and client B, within its
/// limit, must then find the queue slot free.
///
/// (It failed while the limiters' `poll_ready` was the inner service's:
/// the bulkhead below reserved a permit or a queue place, and waited in
/// the queue, before the limiter refused the request; A's refused request
/// waited in the queue and B was answered 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_request_never_takes_a_bulkhead_queue_slot() {
    let server = HttpServer::start(HttpPolicy {
        burst: 1,
        permits: 1,
        queue: 1,
        max_wait: Some(Duration::from_secs(600)),
        timeout: Duration::from_secs(600),
    })
    .await;
    let (http, replies) = (client(), Replies::default());
    let (a, b) = (
        IpAddr::from([203, 0, 113, 1]),
        IpAddr::from([203, 0, 113, 2]),
    );
    let (c, bh) = (server.counters.clone(), server.bulkhead.clone());
    let mut tasks = vec![send(&http, server.addr, a, 1, &replies)];
    wait_until("A's first request in the handler", || {
        c.inside.load(SeqCst) == 1
    })
    .await;

    tasks.push(send(&http, server.addr, a, 1, &replies));
    wait_until("A's second request answered or queued", || {
        replies_len(&replies) == 1 || bh.snapshot().queued == 1
    })
    .await;
    assert_eq!(bh.snapshot().queued, 0, "A's refused request is queued");
    assert_eq!(with_status(&replies, 429).len(), 1);

    tasks.push(send(&http, server.addr, b, 1, &replies));
    wait_until("B's request answered or queued", || {
        replies_len(&replies) == 2 || bh.snapshot().queued == 1
    })
    .await;
    assert_eq!(bh.snapshot().queued, 1, "{:?}", replies.lock().unwrap());
    assert!(with_status(&replies, 503).is_empty());

    server.gate.add_permits(2);
    join_all(tasks).await;
    assert_eq!(with_status(&replies, 200).len(), 2);
    assert_eq!(bh.snapshot().rejected, 0);
    server.shutdown().await;
}

// ===== gRPC =====

/// A tonic health server on 127.0.0.1: `error_to_status()` outermost, then
/// a rate limiter (a burst, then one call an hour), a bulkhead with a
/// queue, and the gate.
struct GrpcServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    bulkhead: BulkheadHandle,
    limiter: buttress_rate_limit::RateLimitHandle,
    task: JoinHandle<()>,
}

impl GrpcServer {
    async fn start(detailed: bool, burst: u64, permits: usize, queue: usize) -> GrpcServer {
        let limiter = RateLimitLayer::builder(Rate::per_hour(1))
            .name("grpc.rate_limit")
            .burst(burst)
            .build()
            .expect("rate limit config");
        let bulkhead = BulkheadLayer::builder()
            .name("grpc.bulkhead")
            .max_concurrent(permits)
            .max_queue(queue)
            .max_wait(Duration::from_secs(600))
            .build()
            .expect("bulkhead config");
        let (limiter_handle, bulkhead_handle) = (limiter.handle(), bulkhead.handle());
        let counters = Arc::new(Counters::default());
        let gate = Arc::new(Semaphore::new(0));
        let (c, g) = (counters.clone(), gate.clone());
        let stack = ServiceBuilder::new()
            .layer(ErrorToStatusLayer::new().detailed(detailed))
            .layer(limiter)
            .layer(bulkhead)
            .map_future(move |call| {
                let (c, g) = (c.clone(), g.clone());
                async move {
                    let _inside = Inside::enter(&c);
                    pass(&g).await;
                    let res = call.await;
                    c.answered.fetch_add(1, SeqCst);
                    res
                }
            })
            .into_inner();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = Server::builder()
            .layer(stack)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener));
        let task = tokio::spawn(async move {
            server.await.expect("server error");
        });
        GrpcServer {
            addr,
            counters,
            gate,
            bulkhead: bulkhead_handle,
            limiter: limiter_handle,
            task,
        }
    }
}

/// What a call ended with: the code, the message and the pushback.
type GrpcEnd = (Code, String, Option<u64>);

/// The ends of the calls so far.
type GrpcEnds = Arc<Mutex<Vec<GrpcEnd>>>;

/// Starts `n` health checks on `channel`, one after another; each end
/// lands in `ends`. Each call is bounded by [`PATIENCE`].
fn call(channel: &Channel, n: usize, ends: &GrpcEnds) -> JoinHandle<()> {
    let mut client = HealthClient::new(channel.clone());
    let ends = ends.clone();
    tokio::spawn(async move {
        for _ in 0..n {
            let call = client.check(HealthCheckRequest::default());
            let end = match tokio::time::timeout(PATIENCE, call)
                .await
                .expect("an answer in time")
            {
                Ok(res) => {
                    assert_eq!(res.get_ref().status(), ServingStatus::Serving);
                    (Code::Ok, String::new(), None)
                }
                Err(status) => {
                    let pushback = status
                        .metadata()
                        .get(RETRY_PUSHBACK_MS)
                        .map(|v| v.to_str().expect("ascii").parse::<u64>().expect("whole ms"));
                    (status.code(), status.message().to_owned(), pushback)
                }
            };
            ends.lock().unwrap().push(end);
        }
    })
}

fn of_code(ends: &GrpcEnds, code: Code) -> Vec<GrpcEnd> {
    ends.lock()
        .unwrap()
        .iter()
        .filter(|e| e.0 == code)
        .cloned()
        .collect()
}

/// Eight calls at once from four clients (two calls each, each client on
/// its own connection) on a bulkhead of 3 permits and a queue of 2: three
/// reach the handler, two wait, three are answered `UNAVAILABLE` with
/// `grpc-retry-pushback-ms`. Once the gate opens, one answer at a time,
/// the five admitted calls are answered `OK`, never more than three in the
/// handler. The rate limiter (a burst of ten) let all eight through; then
/// the four clients make three calls each, one after another, the gate
/// open: two more pass the limiter and ten are answered
/// `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`. The messages are
/// generic unless the server is in the detailed mode. (The two waves are
/// apart for the reason given in the HTTP test.)
async fn grpc_overload(detailed: bool) {
    const CLIENTS: usize = 4;
    const FIRST: usize = 2;
    const BURST: u64 = 10;
    const PERMITS: usize = 3;
    const QUEUE: usize = 2;
    const SENT: usize = CLIENTS * FIRST;
    const ADMITTED: usize = PERMITS + QUEUE;
    const SHED: usize = SENT - ADMITTED;
    let server = GrpcServer::start(detailed, BURST, PERMITS, QUEUE).await;
    let mut channels = Vec::new();
    for _ in 0..CLIENTS {
        let channel = Endpoint::from_shared(format!("http://{}", server.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        channels.push(channel);
    }
    let ends = GrpcEnds::default();
    let mut tasks = Vec::new();
    for channel in &channels {
        for _ in 0..FIRST {
            tasks.push(call(channel, 1, &ends));
        }
    }

    let (c, bh, rl) = (&server.counters, &server.bulkhead, &server.limiter);
    let ends_len = || ends.lock().unwrap().len();
    wait_until("three in the handler, two queued, three shed", || {
        c.entered.load(SeqCst) == PERMITS as u64
            && bh.snapshot().queued == QUEUE
            && ends_len() == SHED
    })
    .await;
    let s = bh.snapshot();
    assert_eq!(
        (s.active, s.queued, s.rejected),
        (PERMITS, QUEUE, SHED as u64)
    );
    assert_eq!(rl.snapshot().rejected, 0);
    let unavailable = of_code(&ends, Code::Unavailable);
    assert_eq!(unavailable.len(), SHED, "{:?}", ends.lock().unwrap());
    for (_, message, pushback) in &unavailable {
        if detailed {
            assert_eq!(
                message,
                "bulkhead `grpc.bulkhead` is full: no free permit and no room to wait"
            );
        } else {
            assert_eq!(message, "service unavailable");
        }
        // The bulkhead's retry hint, 1 s by default.
        assert_eq!(*pushback, Some(1000));
    }

    for answered in 1..=ADMITTED {
        server.gate.add_permits(1);
        let left = ADMITTED - answered;
        wait_until("one more answered, the next one in", || {
            ends_len() == SHED + answered
                && c.entered.load(SeqCst) == (PERMITS + answered).min(ADMITTED) as u64
                && c.inside.load(SeqCst) == left.min(PERMITS) as u64
        })
        .await;
        let s = bh.snapshot();
        assert_eq!(s.active, left.min(PERMITS), "after {answered} answers");
        assert_eq!(s.queued, left.saturating_sub(PERMITS));
    }
    join_all(tasks).await;
    assert_eq!(of_code(&ends, Code::Ok).len(), ADMITTED);
    assert_eq!(ends_len(), SENT, "{:?}", ends.lock().unwrap());
    assert_eq!(c.most_inside.load(SeqCst), PERMITS as u64);
    let s = bh.snapshot();
    assert_eq!(
        (s.active, s.queued, s.completed, s.rejected),
        (0, 0, ADMITTED as u64, SHED as u64)
    );

    // The second wave, the gate open: at most four calls at once, fewer
    // than the permits and the queue, so the bulkhead sheds none.
    const EACH: usize = 3;
    const LEFT: usize = BURST as usize - SENT;
    const LIMITED: usize = CLIENTS * EACH - LEFT;
    server.gate.add_permits(CLIENTS * EACH);
    let ends = GrpcEnds::default();
    let tasks: Vec<_> = channels.iter().map(|ch| call(ch, EACH, &ends)).collect();
    join_all(tasks).await;
    assert_eq!(ends.lock().unwrap().len(), CLIENTS * EACH);
    assert_eq!(
        of_code(&ends, Code::Ok).len(),
        LEFT,
        "{:?}",
        ends.lock().unwrap()
    );
    let exhausted = of_code(&ends, Code::ResourceExhausted);
    assert_eq!(exhausted.len(), LIMITED, "{:?}", ends.lock().unwrap());
    for (_, message, pushback) in &exhausted {
        if detailed {
            assert!(message.contains("grpc.rate_limit"), "{message}");
        } else {
            assert_eq!(message, "rate limit exceeded");
        }
        // The next call is allowed within the hour.
        let ms = pushback.expect("pushback from the limiter");
        assert!((1..=3_600_000).contains(&ms), "{ms} ms");
    }
    assert_eq!(rl.snapshot().rejected, LIMITED as u64);
    assert_eq!(c.answered.load(SeqCst), (ADMITTED + LEFT) as u64);
    assert_eq!(c.most_inside.load(SeqCst), PERMITS as u64);
    let s = bh.snapshot();
    assert_eq!((s.active, s.queued, s.rejected), (0, 0, SHED as u64));
    server.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_sheds_with_resource_exhausted_and_unavailable_and_generic_messages() {
    grpc_overload(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_in_detailed_mode_sends_the_rejection_text() {
    grpc_overload(true).await;
}
