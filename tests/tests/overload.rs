//! Overload end to end on 127.0.0.1: a server whose handler is held shut
//! by a gate the test opens, called through the real client stack (rate
//! limiter, bulkhead, hyper-util client) by more callers at once than the
//! limits admit. The bulkhead and the rate limiter shed what is beyond
//! their limit and queue, the admitted calls wait in queues that never
//! grow past their bound, and every count is asserted exactly against the
//! configured limits: calls that reached the handler, the most in it at
//! once, queued, admitted, rejected and why. The runtime's clock is paused;
//! nothing is timed.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress::bulkhead::BulkheadLayer;
use buttress::core::error::{find, BulkheadFullReason};
use buttress::core::{BoxError, BulkheadFull, RateLimited};
use buttress_integration_tests::TestServer;
use buttress_rate_limit::{Rate, RateLimitEvent, RateLimitLayer, RejectReason};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The upstream's counters.
#[derive(Default)]
struct Upstream {
    /// Requests that reached the handler.
    entered: AtomicU64,
    /// Requests in the handler now.
    inside: AtomicU64,
    /// The most requests in the handler at once.
    most_inside: AtomicU64,
    /// Requests answered.
    answered: AtomicU64,
}

/// A server on 127.0.0.1 whose one route waits for a permit of `gate`
/// (one per request, never given back) before it answers.
async fn gated_upstream(gate: Arc<Semaphore>) -> (TestServer, Arc<Upstream>) {
    let up = Arc::new(Upstream::default());
    let u = up.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            let (u, gate) = (u.clone(), gate.clone());
            async move {
                u.entered.fetch_add(1, SeqCst);
                let now = u.inside.fetch_add(1, SeqCst) + 1;
                u.most_inside.fetch_max(now, SeqCst);
                gate.acquire().await.expect("gate open").forget();
                u.inside.fetch_sub(1, SeqCst);
                u.answered.fetch_add(1, SeqCst);
                "ok"
            }
        }),
    );
    (TestServer::start(app).await, up)
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get_req(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// What one call ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    Ok,
    BulkheadFull(BulkheadFullReason),
    RateLimited,
}

fn end(res: Result<http::Response<hyper::body::Incoming>, BoxError>) -> End {
    match res {
        Ok(r) => {
            assert_eq!(r.status(), 200);
            End::Ok
        }
        Err(e) => {
            if let Some(b) = find::<BulkheadFull>(&*e) {
                End::BulkheadFull(b.reason())
            } else if find::<RateLimited>(&*e).is_some() {
                End::RateLimited
            } else {
                panic!("unexpected error: {e}")
            }
        }
    }
}

/// Lets the runtime run every task as far as it can: the clock is paused,
/// so a short sleep returns only once every task is waiting (on the
/// gate, a socket or a timer); then `cond` must hold. Bounded: at most
/// 1000 sleeps of 1 ms of paused time.
async fn settle(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never settled: {what}");
}

/// How many of the finished calls ended each way.
fn count(ends: &[End], which: End) -> usize {
    ends.iter().filter(|e| **e == which).count()
}

/// `n` callers at once, each on its own clone of `stack`.
fn spawn_callers<S>(stack: &S, url: &str, n: usize) -> Vec<JoinHandle<End>>
where
    S: Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    (0..n)
        .map(|_| {
            let svc = stack.clone();
            let req = get_req(url);
            tokio::spawn(async move { end(svc.oneshot(req).await) })
        })
        .collect()
}

/// The finished callers' ends (`None` for those still running).
async fn finished(tasks: &mut Vec<JoinHandle<End>>) -> Vec<End> {
    let mut done = Vec::new();
    let mut running = Vec::new();
    for t in tasks.drain(..) {
        if t.is_finished() {
            done.push(t.await.expect("caller panicked"));
        } else {
            running.push(t);
        }
    }
    *tasks = running;
    done
}

/// Ten callers at once on a bulkhead of 2 permits and a queue of 3: two
/// reach the handler, three wait in the queue, five are shed at once. As
/// the handler answers, the queued ones take the permits in turn, never
/// more than two in the handler. A second wave with a queue timeout: the
/// queued callers that wait longer are shed with `WaitTimedOut`.
#[tokio::test(start_paused = true)]
async fn bulkhead_sheds_beyond_its_permits_and_queue_and_the_queue_stays_bounded() {
    const PERMITS: usize = 2;
    const QUEUE: usize = 3;
    const CALLERS: usize = 10;
    const MAX_WAIT: Duration = Duration::from_secs(5);
    let gate = Arc::new(Semaphore::new(0));
    let (server, up) = gated_upstream(gate.clone()).await;
    let bulkhead = BulkheadLayer::builder()
        .name("overload")
        .max_concurrent(PERMITS)
        .max_queue(QUEUE)
        .max_wait(MAX_WAIT)
        .build()
        .unwrap();
    let handle = bulkhead.handle();
    let stack = ServiceBuilder::new()
        .layer(bulkhead)
        .map_err(Into::<BoxError>::into)
        .service(client());
    let url = server.url("/");

    let mut tasks = spawn_callers(&stack, &url, CALLERS);
    settle("two in the handler, three queued, five shed", || {
        let s = handle.snapshot();
        up.entered.load(SeqCst) == PERMITS as u64 && s.queued == QUEUE && s.rejected == 5
    })
    .await;
    let s = handle.snapshot();
    assert_eq!((s.active, s.queued, s.available), (PERMITS, QUEUE, 0));
    assert_eq!(
        (s.completed, s.rejected),
        (0, (CALLERS - PERMITS - QUEUE) as u64)
    );
    let shed = finished(&mut tasks).await;
    assert_eq!(shed.len(), CALLERS - PERMITS - QUEUE, "{shed:?}");
    assert!(shed
        .iter()
        .all(|e| *e == End::BulkheadFull(BulkheadFullReason::QueueFull)));

    // One answer at a time: each frees a permit, which the head of the
    // queue takes; the handler never holds more than the permits.
    for answered in 1..=(PERMITS + QUEUE) as u64 {
        gate.add_permits(1);
        settle("one more answered", || {
            up.answered.load(SeqCst) == answered && handle.snapshot().completed == answered
        })
        .await;
        let s = handle.snapshot();
        let left = PERMITS + QUEUE - answered as usize;
        assert_eq!(s.active, left.min(PERMITS), "after {answered} answers");
        assert_eq!(s.queued, left.saturating_sub(PERMITS));
        assert_eq!(up.entered.load(SeqCst), (answered + PERMITS as u64).min(5));
    }
    let ends: Vec<End> = finished(&mut tasks).await;
    assert!(tasks.is_empty());
    assert_eq!(count(&ends, End::Ok), PERMITS + QUEUE);
    assert_eq!(up.most_inside.load(SeqCst), PERMITS as u64);
    let s = handle.snapshot();
    assert_eq!((s.completed, s.rejected), (5, 5));
    assert!(handle.is_idle());

    // A second wave of six: two in, three queued, one shed; the queued
    // ones wait out `max_wait` (the gate stays shut) and are shed too.
    let mut tasks = spawn_callers(&stack, &url, 6);
    settle("second wave admitted and queued", || {
        let s = handle.snapshot();
        up.entered.load(SeqCst) == 7 && s.queued == QUEUE && s.rejected == 6
    })
    .await;
    tokio::time::sleep(MAX_WAIT).await;
    settle("queued callers timed out", || {
        handle.snapshot().rejected == 9
    })
    .await;
    let ends = finished(&mut tasks).await;
    assert_eq!(ends.len(), 4, "{ends:?}");
    assert_eq!(
        count(&ends, End::BulkheadFull(BulkheadFullReason::QueueFull)),
        1
    );
    assert_eq!(
        count(&ends, End::BulkheadFull(BulkheadFullReason::WaitTimedOut)),
        QUEUE
    );
    let s = handle.snapshot();
    assert_eq!((s.active, s.queued), (PERMITS, 0));
    gate.add_permits(PERMITS);
    let ends = futures_join(tasks).await;
    assert_eq!(ends, vec![End::Ok; PERMITS]);
    let s = handle.snapshot();
    assert_eq!((s.active, s.queued, s.completed, s.rejected), (0, 0, 7, 9));
    assert_eq!(up.entered.load(SeqCst), 7);
    assert_eq!(up.most_inside.load(SeqCst), PERMITS as u64);
    server.shutdown().await;
}

async fn futures_join(tasks: Vec<JoinHandle<End>>) -> Vec<End> {
    let mut ends = Vec::new();
    for t in tasks {
        ends.push(t.await.expect("caller panicked"));
    }
    ends
}

/// Rejections by reason, from the limiter's events.
type Reasons = Arc<Mutex<Vec<RejectReason>>>;

/// Twelve callers at once on a rate limit of 4 per second (one permit
/// every 250 ms), a burst of 4 and a wait queue of 3: the burst goes
/// through at once, three wait their turn (served 250, 500 and 750 ms
/// later), five are shed with `QueueFull`. Then a rate limiter and a
/// bulkhead together (the design's order, limiter outside): the limiter's
/// admitted calls meet a bulkhead of 2 without a queue, which sheds what
/// the limiter let through beyond its permits.
#[tokio::test(start_paused = true)]
async fn rate_limit_sheds_beyond_its_burst_and_queue_and_serves_the_queue_at_its_rate() {
    const BURST: u64 = 4;
    const QUEUE: usize = 3;
    const CALLERS: usize = 12;
    let gate = Arc::new(Semaphore::new(usize::MAX >> 4));
    let (server, up) = gated_upstream(gate.clone()).await;
    let reasons: Reasons = Arc::default();
    let r = reasons.clone();
    let limiter = RateLimitLayer::builder(Rate::per_second(4))
        .name("overload-rate")
        .burst(BURST)
        .max_queue(QUEUE)
        .max_wait(Duration::from_secs(2))
        .on_event(move |e: &RateLimitEvent| {
            if let RateLimitEvent::Rejected { reason, .. } = e {
                r.lock().unwrap().push(*reason);
            }
        })
        .build()
        .unwrap();
    let handle = limiter.handle();
    let stack = ServiceBuilder::new()
        .layer(limiter.clone())
        .map_err(Into::<BoxError>::into)
        .service(client());
    let url = server.url("/");

    let mut tasks = spawn_callers(&stack, &url, CALLERS);
    settle("the burst answered, three waiting, five shed", || {
        up.answered.load(SeqCst) == BURST && handle.snapshot().waiting == QUEUE
    })
    .await;
    let shed = finished(&mut tasks).await;
    assert_eq!(count(&shed, End::Ok), BURST as usize);
    assert_eq!(
        count(&shed, End::RateLimited),
        CALLERS - BURST as usize - QUEUE
    );
    assert_eq!(handle.snapshot().rejected, 5);
    assert_eq!(*reasons.lock().unwrap(), vec![RejectReason::QueueFull; 5]);

    // The queue is served at the rate, one waiter per 250 ms, in order.
    for served in 1..=QUEUE as u64 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        settle("one waiter served", || {
            up.answered.load(SeqCst) == BURST + served
        })
        .await;
        assert_eq!(handle.snapshot().waiting, QUEUE - served as usize);
    }
    let ends = futures_join(tasks).await;
    assert_eq!(ends, vec![End::Ok; QUEUE]);
    let s = handle.snapshot();
    assert_eq!((s.waiting, s.rejected), (0, 5));
    assert_eq!(up.entered.load(SeqCst), BURST + QUEUE as u64);

    // The limiter and a bulkhead of 2 (no queue) below it, the handler shut.
    // After a 4 s rest the limiter is full again: four callers pass it
    // at once, two take the bulkhead's permits, two are shed by it; the
    // queue of the limiter is not used (nobody waits for permits).
    tokio::time::sleep(Duration::from_secs(4)).await;
    gate.forget_permits(usize::MAX);
    let bulkhead = BulkheadLayer::builder()
        .name("overload-bulkhead")
        .max_concurrent(2)
        .build()
        .unwrap();
    let bh = bulkhead.handle();
    let both = ServiceBuilder::new()
        .layer(limiter)
        .map_err(Into::<BoxError>::into)
        .layer(bulkhead)
        .map_err(Into::<BoxError>::into)
        .service(client());
    let entered = up.entered.load(SeqCst);
    let mut tasks = spawn_callers(&both, &url, 4);
    settle("two in, two shed by the bulkhead", || {
        up.entered.load(SeqCst) == entered + 2 && bh.snapshot().rejected == 2
    })
    .await;
    let shed = finished(&mut tasks).await;
    assert_eq!(
        shed,
        vec![End::BulkheadFull(BulkheadFullReason::QueueFull); 2]
    );
    assert_eq!(
        handle.snapshot().rejected,
        5,
        "the limiter admitted all four"
    );
    gate.add_permits(2);
    assert_eq!(futures_join(tasks).await, vec![End::Ok; 2]);
    let s = bh.snapshot();
    assert_eq!((s.active, s.completed, s.rejected), (0, 2, 2));
    server.shutdown().await;
}
