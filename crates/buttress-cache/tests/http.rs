//! The HTTP cache: keys, Cache-Control, markers, bodies too large to store.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_cache::{
    CacheEvent, CacheLayer, CacheStatus, CachedResponse, Credentials, HttpKey, NotStored,
    StaleReason,
};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};

type Headers = Vec<(&'static str, &'static str)>;

/// A server answering `"{n} {method} {uri}"` with the headers and status
/// set by the test; counts its calls.
#[derive(Clone)]
struct Server {
    calls: Arc<AtomicUsize>,
    status: Arc<Mutex<StatusCode>>,
    headers: Arc<Mutex<Headers>>,
}

impl Server {
    fn new() -> Self {
        Server {
            calls: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(Mutex::new(StatusCode::OK)),
            headers: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn set(&self, status: StatusCode, headers: &[(&'static str, &'static str)]) {
        *self.status.lock().unwrap() = status;
        *self.headers.lock().unwrap() = headers.to_vec();
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        let s = self.clone();
        service_fn(move |req: Request<()>| {
            let n = s.calls.fetch_add(1, SeqCst) + 1;
            let mut res = Response::new(Full::new(Bytes::from(format!(
                "{n} {} {}",
                req.method(),
                req.uri()
            ))));
            *res.status_mut() = *s.status.lock().unwrap();
            for (k, v) in s.headers.lock().unwrap().iter() {
                res.headers_mut().append(*k, v.parse().unwrap());
            }
            async move { Ok::<_, Infallible>(res) }
        })
    }
}

async fn text<B: Body<Data = Bytes>>(res: Response<B>) -> String
where
    B::Error: std::fmt::Debug,
{
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn status_of<B>(res: &Response<B>) -> CacheStatus {
    *res.extensions().get::<CacheStatus>().unwrap()
}

#[tokio::test(start_paused = true)]
async fn get_is_stored_by_method_and_uri_and_marked() {
    let server = Server::new();
    let layer = CacheLayer::http().build().unwrap();
    let svc = layer.layer(server.service());
    let res = svc.clone().oneshot(get("/a?x=1")).await.unwrap();
    assert_eq!(status_of(&res), CacheStatus::Miss);
    assert!(res.headers().get("age").is_none());
    assert_eq!(text(res).await, "1 GET /a?x=1");
    tokio::time::advance(Duration::from_secs(5)).await;
    let res = svc.clone().oneshot(get("/a?x=1")).await.unwrap();
    assert_eq!(
        status_of(&res),
        CacheStatus::Hit {
            age: Duration::from_secs(5)
        }
    );
    assert_eq!(res.headers()["age"], "5");
    assert_eq!(text(res).await, "1 GET /a?x=1");
    // Another query, another entry; HEAD is answered from the stored GET
    // response (headers, no body) without a call.
    assert_eq!(
        text(svc.clone().oneshot(get("/a?x=2")).await.unwrap()).await,
        "2 GET /a?x=2"
    );
    let head = Request::head("/a?x=1").body(()).unwrap();
    let res = svc.clone().oneshot(head).await.unwrap();
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
    assert_eq!(text(res).await, "");
    assert_eq!(server.calls(), 2);
    // Without a stored GET response, HEAD is a call of its own.
    let head = Request::head("/b").body(()).unwrap();
    assert_eq!(
        text(svc.clone().oneshot(head).await.unwrap()).await,
        "3 HEAD /b"
    );
    assert_eq!(server.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn no_store_and_private_are_not_stored_max_age_sets_the_ttl() {
    let server = Server::new();
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let r = reasons.clone();
    let layer = CacheLayer::http()
        .ttl(Duration::from_secs(100))
        .on_event(move |e: &CacheEvent| {
            if let CacheEvent::NotStored { reason, .. } = e {
                r.lock().unwrap().push(*reason);
            }
        })
        .build()
        .unwrap();
    let svc = layer.layer(server.service());
    for (cc, reason) in [
        ("no-store", NotStored::NoStore),
        ("private, max-age=60", NotStored::Private),
        ("no-cache", NotStored::NoStore),
    ] {
        server.set(StatusCode::OK, &[("cache-control", cc)]);
        let before = server.calls();
        svc.clone().oneshot(get("/p")).await.unwrap();
        svc.clone().oneshot(get("/p")).await.unwrap();
        assert_eq!(server.calls(), before + 2, "{cc}");
        assert_eq!(reasons.lock().unwrap().pop(), Some(reason));
    }
    server.set(StatusCode::OK, &[("set-cookie", "session=1")]);
    svc.clone().oneshot(get("/cookie")).await.unwrap();
    assert_eq!(reasons.lock().unwrap().pop(), Some(NotStored::SetCookie));

    server.set(StatusCode::OK, &[("cache-control", "public, max-age=2")]);
    let n = server.calls();
    svc.clone().oneshot(get("/m")).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.clone().oneshot(get("/m")).await.unwrap();
    assert_eq!(server.calls(), n + 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.clone().oneshot(get("/m")).await.unwrap();
    assert_eq!(server.calls(), n + 2);
    // s-maxage wins for a shared cache.
    server.set(
        StatusCode::OK,
        &[("cache-control", "max-age=1, s-maxage=50")],
    );
    svc.clone().oneshot(get("/s")).await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let res = svc.clone().oneshot(get("/s")).await.unwrap();
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
}

#[tokio::test(start_paused = true)]
async fn failures_and_other_statuses_are_not_stored() {
    let server = Server::new();
    let layer = CacheLayer::http().build().unwrap();
    let svc = layer.layer(server.service());
    for status in [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::CREATED,
    ] {
        server.set(status, &[]);
        let res = svc.clone().oneshot(get("/f")).await.unwrap();
        assert_eq!(res.status(), status);
    }
    assert_eq!(layer.handle().snapshot().stored, 0);
    // 404 may be stored.
    server.set(StatusCode::NOT_FOUND, &[]);
    svc.clone().oneshot(get("/gone")).await.unwrap();
    assert_eq!(
        svc.oneshot(get("/gone")).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(layer.handle().snapshot().hits, 1);
}

#[tokio::test(start_paused = true)]
async fn a_5xx_gets_the_stale_entry_with_a_warning() {
    let server = Server::new();
    let layer = CacheLayer::http()
        .ttl(Duration::from_secs(10))
        .max_stale(Duration::from_secs(100))
        .build()
        .unwrap();
    let svc = layer.layer(server.service());
    svc.clone().oneshot(get("/s")).await.unwrap();
    server.set(StatusCode::BAD_GATEWAY, &[]);
    tokio::time::advance(Duration::from_secs(20)).await;
    let res = svc.clone().oneshot(get("/s")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        status_of(&res),
        CacheStatus::Stale {
            age: Duration::from_secs(20),
            reason: StaleReason::Error
        }
    );
    assert_eq!(res.headers()["warning"], "111 - \"Revalidation Failed\"");
    assert_eq!(res.headers()["age"], "20");
    assert_eq!(text(res).await, "1 GET /s");
}

#[tokio::test(start_paused = true)]
async fn vary_headers_are_part_of_the_key_and_unknown_vary_is_not_stored() {
    let server = Server::new();
    let layer = CacheLayer::http().vary(["Accept"]).build().unwrap();
    let svc = layer.layer(server.service());
    let with = |accept: &str| {
        Request::get("/v")
            .header("accept", accept)
            .body(())
            .unwrap()
    };
    server.set(StatusCode::OK, &[("vary", "accept")]);
    assert_eq!(
        text(svc.clone().oneshot(with("text/html")).await.unwrap()).await,
        "1 GET /v"
    );
    assert_eq!(
        text(svc.clone().oneshot(with("application/json")).await.unwrap()).await,
        "2 GET /v"
    );
    assert_eq!(
        text(svc.clone().oneshot(with("text/html")).await.unwrap()).await,
        "1 GET /v"
    );
    server.set(StatusCode::OK, &[("vary", "accept, user-agent")]);
    svc.clone().oneshot(get("/u")).await.unwrap();
    svc.clone().oneshot(get("/u")).await.unwrap();
    assert_eq!(server.calls(), 4);
    // An invalid header name in the builder is a config error.
    assert_eq!(
        CacheLayer::http()
            .vary(["bad header"])
            .build()
            .unwrap_err()
            .field(),
        "vary"
    );
}

#[tokio::test(start_paused = true)]
async fn credentials_bypass_by_default_and_are_never_in_the_key_text() {
    let server = Server::new();
    let layer = CacheLayer::http().build().unwrap();
    let svc = layer.layer(server.service());
    let authed = || {
        Request::get("/me")
            .header("authorization", "Bearer token-a")
            .body(())
            .unwrap()
    };
    let res = svc.clone().oneshot(authed()).await.unwrap();
    assert_eq!(status_of(&res), CacheStatus::Bypass);
    svc.clone().oneshot(authed()).await.unwrap();
    assert_eq!(server.calls(), 2);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let per_user = CacheLayer::http()
        .credentials(Credentials::InKey)
        .on_event(move |e: &CacheEvent| s.lock().unwrap().push(format!("{e:?}")))
        .build()
        .unwrap();
    let svc = per_user.layer(server.service());
    let user = |t: &str| {
        Request::get("/me")
            .header("authorization", t)
            .body(())
            .unwrap()
    };
    assert_eq!(
        text(svc.clone().oneshot(user("Bearer a")).await.unwrap()).await,
        "3 GET /me"
    );
    assert_eq!(
        text(svc.clone().oneshot(user("Bearer b")).await.unwrap()).await,
        "4 GET /me"
    );
    assert_eq!(
        text(svc.clone().oneshot(user("Bearer a")).await.unwrap()).await,
        "3 GET /me"
    );
    per_user
        .handle()
        .invalidate_prefix("GET /me")
        .await
        .unwrap();
    assert!(seen.lock().unwrap().iter().all(|e| !e.contains("Bearer")));
}

#[tokio::test(start_paused = true)]
async fn an_unsafe_request_invalidates_its_uri() {
    let server = Server::new();
    let layer = CacheLayer::http().build().unwrap();
    let svc = layer.layer(server.service());
    svc.clone().oneshot(get("/item")).await.unwrap();
    svc.clone().oneshot(get("/other")).await.unwrap();
    let res = svc
        .clone()
        .oneshot(Request::post("/item").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(status_of(&res), CacheStatus::Bypass);
    assert_eq!(
        text(svc.clone().oneshot(get("/item")).await.unwrap()).await,
        "4 GET /item"
    );
    assert_eq!(
        text(svc.oneshot(get("/other")).await.unwrap()).await,
        "2 GET /other"
    );
}

/// A body of `chunks` frames, counting how many were read.
struct Chunks {
    left: VecDeque<Bytes>,
    read: Arc<AtomicUsize>,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.left.pop_front();
        if next.is_some() {
            self.read.fetch_add(1, SeqCst);
        }
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length: the cache must read to find out.
        SizeHint::new()
    }
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_streams_through_untouched_and_is_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let read = Arc::new(AtomicUsize::new(0));
    let (c, r) = (calls.clone(), read.clone());
    let inner = service_fn(move |_: Request<()>| {
        c.fetch_add(1, SeqCst);
        let body = Chunks {
            left: (0..10u8)
                .map(|i| Bytes::from(vec![b'a' + i; 100]))
                .collect(),
            read: r.clone(),
        };
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let rs = reasons.clone();
    let layer = CacheLayer::http()
        .max_body(250)
        .on_event(move |e: &CacheEvent| {
            if let CacheEvent::NotStored { reason, .. } = e {
                rs.lock().unwrap().push(*reason);
            }
        })
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    let res = svc.clone().oneshot(get("/big")).await.unwrap();
    assert!(!res.body().is_full());
    // Three frames (300 bytes) were read to find it too large; the rest is
    // still in the inner body.
    assert_eq!(read.load(SeqCst), 3);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let expected: Vec<u8> = (0..10u8).flat_map(|i| vec![b'a' + i; 100]).collect();
    assert_eq!(&body[..], &expected[..]);
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(*reasons.lock().unwrap(), vec![NotStored::TooLarge]);
    // Not stored: called again.
    svc.oneshot(get("/big")).await.unwrap();
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(layer.handle().snapshot().stored, 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_with_a_known_large_length_is_not_read_at_all() {
    let inner = service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![7u8; 10_000]))))
    });
    let layer = CacheLayer::http().max_body(1_000).build().unwrap();
    let res = layer.layer(inner).oneshot(get("/k")).await.unwrap();
    assert_eq!(res.body().size_hint().exact(), Some(10_000));
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len(),
        10_000
    );
}

#[tokio::test(start_paused = true)]
async fn warm_and_invalidate_http_entries() {
    let server = Server::new();
    let layer = CacheLayer::http().build().unwrap();
    let svc = layer.layer(server.service());
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "text/plain".parse().unwrap());
    let page = CachedResponse::new(StatusCode::OK, headers, Bytes::from_static(b"warmed"));
    let key = HttpKey::new(&http::Method::GET, &"/home".parse().unwrap());
    layer.handle().warm([(key.clone(), page)]).await.unwrap();
    let res = svc.clone().oneshot(get("/home")).await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(text(res).await, "warmed");
    layer.handle().invalidate(&key).await.unwrap();
    assert_eq!(
        text(svc.oneshot(get("/home")).await.unwrap()).await,
        "1 GET /home"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_http_misses_share_one_collected_response() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |_: Request<()>| {
        c.fetch_add(1, SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"shared"))))
        }
    });
    let layer = CacheLayer::http().build().unwrap();
    let svc = layer.layer(inner);
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/x"))))
        .collect();
    for t in tasks {
        assert_eq!(text(t.await.unwrap().unwrap()).await, "shared");
    }
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn under_error_to_response_an_error_without_a_stale_entry_is_a_response() {
    use buttress_core::response::ErrorToResponseLayer;
    let inner = service_fn(|_: Request<()>| async {
        Err::<Response<Full<Bytes>>, buttress_core::BoxError>(Box::new(
            buttress_core::CircuitOpen::new("upstream".into(), Some(Duration::from_secs(3))),
        ))
    });
    let cache = CacheLayer::http().build().unwrap();
    let svc = ErrorToResponseLayer::new().layer(cache.layer(inner));
    let res = svc.oneshot(get("/x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "3");
}
