//! HTTP validation: stale entries revalidated with their `ETag` or
//! `Last-Modified` (RFC 9111 §4.3), conditional requests answered from
//! fresh entries, `Expires` as freshness, `HEAD` from a stored `GET`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_cache::{CacheEvent, CacheLayer, CacheStatus, NotStored, StaleReason};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};

type Headers = Vec<(&'static str, &'static str)>;

const LAST_MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// An origin server: answers `v{version}` with its validators and
/// headers, `304 Not Modified` (with `not_modified` headers) to a request
/// whose `If-None-Match` is its `ETag` or whose `If-Modified-Since` is its
/// `Last-Modified`, or `forced` when set. Records each request.
#[derive(Clone, Default)]
struct Origin(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    seen: Vec<(Method, HeaderMap)>,
    version: u32,
    etag: Option<&'static str>,
    last_modified: Option<&'static str>,
    headers: Headers,
    not_modified: Headers,
    forced: Option<(StatusCode, Headers)>,
}

impl Origin {
    fn new(etag: Option<&'static str>, last_modified: Option<&'static str>) -> Self {
        let origin = Origin::default();
        {
            let mut s = origin.0.lock().unwrap();
            s.version = 1;
            s.etag = etag;
            s.last_modified = last_modified;
        }
        origin
    }

    fn with(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.0.lock().unwrap());
    }

    fn calls(&self) -> usize {
        self.0.lock().unwrap().seen.len()
    }

    /// The request headers of call `n` (from 0).
    fn request(&self, n: usize) -> HeaderMap {
        self.0.lock().unwrap().seen[n].1.clone()
    }

    fn method(&self, n: usize) -> Method {
        self.0.lock().unwrap().seen[n].0.clone()
    }

    fn answer(&self, req: &Request<()>) -> Response<Full<Bytes>> {
        let mut s = self.0.lock().unwrap();
        s.seen.push((req.method().clone(), req.headers().clone()));
        let mut res = Response::new(Full::new(Bytes::new()));
        if let Some((status, headers)) = &s.forced {
            *res.status_mut() = *status;
            for (k, v) in headers {
                res.headers_mut().append(*k, v.parse().unwrap());
            }
            return res;
        }
        let h = req.headers();
        let matches = match (h.get("if-none-match"), h.get("if-modified-since")) {
            (Some(inm), _) => s.etag.is_some_and(|e| inm == e),
            (None, Some(ims)) => s.last_modified.is_some_and(|lm| ims == lm),
            _ => false,
        };
        let extra = if matches {
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            &s.not_modified
        } else {
            let body = format!("v{}", s.version);
            res.headers_mut()
                .insert("content-length", body.len().into());
            *res.body_mut() = Full::new(Bytes::from(body));
            &s.headers
        };
        for (k, v) in extra {
            res.headers_mut().append(*k, v.parse().unwrap());
        }
        if let Some(e) = s.etag {
            res.headers_mut().insert("etag", e.parse().unwrap());
        }
        if let Some(lm) = s.last_modified {
            res.headers_mut()
                .insert("last-modified", lm.parse().unwrap());
        }
        res
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
        let origin = self.clone();
        service_fn(move |req: Request<()>| {
            let res = origin.answer(&req);
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

fn get_with(uri: &str, headers: &[(&'static str, &'static str)]) -> Request<()> {
    let mut req = get(uri);
    for (k, v) in headers {
        req.headers_mut().append(*k, v.parse().unwrap());
    }
    req
}

fn status_of<B>(res: &Response<B>) -> CacheStatus {
    *res.extensions().get::<CacheStatus>().unwrap()
}

fn events() -> (
    Arc<Mutex<Vec<CacheEvent>>>,
    impl Fn(&CacheEvent) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, move |e: &CacheEvent| {
        s.lock().unwrap().push(e.clone())
    })
}

#[tokio::test(start_paused = true)]
async fn a_stale_entry_is_revalidated_with_its_etag_and_a_304_refreshes_it() {
    let origin = Origin::new(Some("\"v1\""), None);
    origin.with(|s| {
        s.headers = vec![("cache-control", "max-age=10"), ("x-gen", "1")];
        s.not_modified = vec![
            ("cache-control", "max-age=30"),
            ("x-gen", "2"),
            ("content-length", "0"),
        ];
    });
    let (seen, listener) = events();
    let layer = CacheLayer::http()
        .max_stale(Duration::from_secs(100))
        .on_event(listener)
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());

    let res = svc.clone().oneshot(get("/r")).await.unwrap();
    assert_eq!(status_of(&res), CacheStatus::Miss);
    assert_eq!(text(res).await, "v1");
    assert!(origin.request(0).get("if-none-match").is_none());

    tokio::time::advance(Duration::from_secs(11)).await;
    let res = svc.clone().oneshot(get("/r")).await.unwrap();
    // The call to the origin was conditional, with the stored ETag.
    assert_eq!(origin.calls(), 2);
    assert_eq!(origin.request(1)["if-none-match"], "\"v1\"");
    assert!(origin.request(1).get("if-modified-since").is_none());
    // The caller gets the stored response, its headers updated, as a 200.
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(status_of(&res), CacheStatus::Revalidated);
    assert_eq!(res.headers()["x-gen"], "2");
    assert_eq!(res.headers()["cache-control"], "max-age=30");
    assert_eq!(res.headers()["etag"], "\"v1\"");
    // Content-Length is never taken from a 304.
    assert_eq!(res.headers()["content-length"], "2");
    assert!(res.headers().get("warning").is_none());
    assert_eq!(text(res).await, "v1");
    let s = layer.handle().snapshot();
    assert_eq!(
        (s.hits, s.misses, s.revalidated, s.stale, s.stored),
        (0, 2, 1, 0, 2)
    );
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, CacheEvent::Revalidated { .. }))
            .count(),
        1
    );

    // Fresh again for the 304's max-age.
    tokio::time::advance(Duration::from_secs(25)).await;
    let res = svc.clone().oneshot(get("/r")).await.unwrap();
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
    assert_eq!(res.headers()["x-gen"], "2");
    assert_eq!(text(res).await, "v1");
    assert_eq!(origin.calls(), 2);

    // Stale again, and changed at the origin: its 200 replaces the entry.
    tokio::time::advance(Duration::from_secs(10)).await;
    origin.with(|s| {
        s.version = 2;
        s.etag = Some("\"v2\"");
    });
    let res = svc.clone().oneshot(get("/r")).await.unwrap();
    assert_eq!(origin.request(2)["if-none-match"], "\"v1\"");
    assert_eq!(status_of(&res), CacheStatus::Miss);
    assert_eq!(text(res).await, "v2");
    let res = svc.clone().oneshot(get("/r")).await.unwrap();
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
    assert_eq!(res.headers()["etag"], "\"v2\"");
    assert_eq!(text(res).await, "v2");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn without_an_etag_last_modified_is_sent_as_if_modified_since() {
    let origin = Origin::new(None, Some(LAST_MODIFIED));
    origin.with(|s| {
        s.headers = vec![("cache-control", "max-age=10")];
        s.not_modified = vec![("cache-control", "max-age=10")];
    });
    let layer = CacheLayer::http()
        .max_stale(Duration::from_secs(100))
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/lm")).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    let res = svc.clone().oneshot(get("/lm")).await.unwrap();
    assert_eq!(origin.request(1)["if-modified-since"], LAST_MODIFIED);
    assert!(origin.request(1).get("if-none-match").is_none());
    assert_eq!(status_of(&res), CacheStatus::Revalidated);
    assert_eq!(text(res).await, "v1");
}

#[tokio::test(start_paused = true)]
async fn an_entry_without_a_validator_is_fetched_again_unconditionally() {
    let origin = Origin::new(None, None);
    origin.with(|s| s.headers = vec![("cache-control", "max-age=10")]);
    let layer = CacheLayer::http()
        .max_stale(Duration::from_secs(100))
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/n")).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    let res = svc.clone().oneshot(get("/n")).await.unwrap();
    assert_eq!(status_of(&res), CacheStatus::Miss);
    let h = origin.request(1);
    assert!(h.get("if-none-match").is_none() && h.get("if-modified-since").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_mismatched_revalidation_serves_the_stale_entry() {
    let origin = Origin::new(Some("\"v1\""), None);
    origin.with(|s| s.headers = vec![("cache-control", "max-age=10")]);
    let layer = CacheLayer::http()
        .max_stale(Duration::from_secs(100))
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/f")).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;

    origin.with(|s| s.forced = Some((StatusCode::BAD_GATEWAY, vec![])));
    let res = svc.clone().oneshot(get("/f")).await.unwrap();
    assert_eq!(origin.request(1)["if-none-match"], "\"v1\"");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        status_of(&res),
        CacheStatus::Stale {
            age: Duration::from_secs(20),
            reason: StaleReason::Error
        }
    );
    assert_eq!(res.headers()["warning"], "111 - \"Revalidation Failed\"");
    assert_eq!(text(res).await, "v1");

    // A 304 about another representation cannot refresh this one.
    origin.with(|s| {
        s.forced = Some((
            StatusCode::NOT_MODIFIED,
            vec![("etag", "\"other\""), ("cache-control", "max-age=60")],
        ))
    });
    let res = svc.clone().oneshot(get("/f")).await.unwrap();
    assert_eq!(origin.request(2)["if-none-match"], "\"v1\"");
    assert!(status_of(&res).is_stale());
    assert_eq!(text(res).await, "v1");
    assert_eq!(layer.handle().snapshot().revalidated, 0);
}

#[tokio::test(start_paused = true)]
async fn a_mismatched_304_without_a_stale_entry_is_an_error() {
    let origin = Origin::new(Some("\"v1\""), None);
    origin.with(|s| s.headers = vec![("cache-control", "max-age=10")]);
    let layer = CacheLayer::http()
        .name("pages")
        .max_stale(Duration::from_secs(100))
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/x")).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    // The entry is dropped while the conditional call is in flight, and
    // the origin answers 304 with another ETag: no stale entry to serve.
    let (o, handle) = (origin.clone(), layer.handle());
    let inner = service_fn(move |req: Request<()>| {
        let (o, handle) = (o.clone(), handle.clone());
        async move {
            handle.invalidate_all().await.unwrap();
            o.with(|s| s.forced = Some((StatusCode::NOT_MODIFIED, vec![("etag", "\"v9\"")])));
            Ok::<_, Infallible>(o.answer(&req))
        }
    });
    let err = layer.layer(inner).oneshot(get("/x")).await.unwrap_err();
    let mismatch = err
        .downcast_ref::<buttress_cache::error::ValidatorMismatch>()
        .expect("a ValidatorMismatch");
    assert_eq!(mismatch.name(), "pages");
    assert_eq!(origin.request(1)["if-none-match"], "\"v1\"");
}

#[tokio::test(start_paused = true)]
async fn a_callers_own_precondition_goes_as_it_is_and_its_304_is_its_own() {
    let origin = Origin::new(Some("\"v1\""), Some(LAST_MODIFIED));
    origin.with(|s| {
        s.headers = vec![("cache-control", "max-age=10")];
        s.not_modified = vec![("cache-control", "max-age=60")];
    });
    let layer = CacheLayer::http()
        .max_stale(Duration::from_secs(100))
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/c")).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;

    // Only If-Modified-Since from the caller: no If-None-Match is added.
    let res = svc
        .clone()
        .oneshot(get_with("/c", &[("if-modified-since", LAST_MODIFIED)]))
        .await
        .unwrap();
    let h = origin.request(1);
    assert!(h.get("if-none-match").is_none());
    assert_eq!(h["if-modified-since"], LAST_MODIFIED);
    // The origin's 304 answers the caller, and refreshes nothing.
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(status_of(&res), CacheStatus::Miss);
    assert_eq!(layer.handle().snapshot().revalidated, 0);

    // The caller's own If-None-Match is not replaced by the stored ETag.
    let res = svc
        .clone()
        .oneshot(get_with("/c", &[("if-none-match", "\"mine\"")]))
        .await
        .unwrap();
    let h = origin.request(2);
    assert_eq!(
        h.get_all("if-none-match").iter().collect::<Vec<_>>(),
        ["\"mine\""]
    );
    // Its 200 is stored as usual.
    assert_eq!(status_of(&res), CacheStatus::Miss);
    assert_eq!(text(res).await, "v1");
    let res = svc.clone().oneshot(get("/c")).await.unwrap();
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_background_refresh_of_stale_while_revalidate_is_conditional() {
    let origin = Origin::new(Some("\"v1\""), None);
    origin.with(|s| {
        s.headers = vec![("cache-control", "max-age=10")];
        s.not_modified = vec![("cache-control", "max-age=60")];
    });
    let layer = CacheLayer::http()
        .max_stale(Duration::from_secs(100))
        .stale_while_revalidate(true)
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/w")).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    let res = svc.clone().oneshot(get("/w")).await.unwrap();
    assert_eq!(
        status_of(&res),
        CacheStatus::Stale {
            age: Duration::from_secs(11),
            reason: StaleReason::Revalidating
        }
    );
    // Let the background refresh run (bounded).
    for _ in 0..100 {
        if layer.handle().snapshot().revalidated == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(origin.request(1)["if-none-match"], "\"v1\"");
    assert_eq!(layer.handle().snapshot().revalidated, 1);
    tokio::time::advance(Duration::from_secs(30)).await;
    let res = svc.clone().oneshot(get("/w")).await.unwrap();
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
    assert_eq!(text(res).await, "v1");
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_conditional_request_is_answered_304_from_a_fresh_entry() {
    let origin = Origin::new(Some("\"v1\""), Some(LAST_MODIFIED));
    origin.with(|s| {
        s.headers = vec![
            ("cache-control", "max-age=60"),
            ("x-other", "o"),
            ("vary", "accept"),
        ]
    });
    let layer = CacheLayer::http().vary(["accept"]).build().unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/p")).await.unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;

    for inm in [
        "\"v1\"",
        "W/\"v1\"",
        "\"v0\", \"v1\"",
        "*",
        "  \"a,b\" ,W/\"v1\"",
    ] {
        let res = svc
            .clone()
            .oneshot(get_with("/p", &[("if-none-match", inm)]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{inm}");
        assert_eq!(
            status_of(&res),
            CacheStatus::Hit {
                age: Duration::from_secs(3)
            }
        );
        let h = res.headers();
        assert_eq!(h["etag"], "\"v1\"");
        assert_eq!(h["cache-control"], "max-age=60");
        assert_eq!(h["last-modified"], LAST_MODIFIED);
        assert_eq!(h["vary"], "accept");
        assert_eq!(h["age"], "3");
        assert!(h.get("x-other").is_none() && h.get("content-length").is_none());
        assert_eq!(text(res).await, "");
    }
    // No match, or a malformed field: the full response.
    for inm in ["\"v0\"", "v1", "\"v1", "\"v1\" junk"] {
        let res = svc
            .clone()
            .oneshot(get_with("/p", &[("if-none-match", inm)]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{inm}");
        assert_eq!(text(res).await, "v1");
    }
    // If-Modified-Since, compared with Last-Modified.
    let since = |date| get_with("/p", &[("if-modified-since", date)]);
    let res = svc.clone().oneshot(since(LAST_MODIFIED)).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = svc
        .clone()
        .oneshot(since("Mon, 07 Nov 1994 08:49:37 GMT"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = svc
        .clone()
        .oneshot(since("Sat, 05 Nov 1994 08:49:37 GMT"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = svc.clone().oneshot(since("garbage")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // If-None-Match wins: a mismatch is a full answer whatever the date.
    let res = svc
        .clone()
        .oneshot(get_with(
            "/p",
            &[
                ("if-none-match", "\"v0\""),
                ("if-modified-since", LAST_MODIFIED),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // With If-Match too, the full response.
    let res = svc
        .clone()
        .oneshot(get_with(
            "/p",
            &[("if-none-match", "\"v1\""), ("if-match", "\"v1\"")],
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.handle().snapshot().hits, 15);

    // A stored 404 ignores preconditions.
    origin.with(|s| s.forced = Some((StatusCode::NOT_FOUND, vec![("etag", "\"n\"")])));
    svc.clone().oneshot(get("/gone")).await.unwrap();
    let res = svc
        .clone()
        .oneshot(get_with("/gone", &[("if-none-match", "*")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn expires_sets_the_freshness_without_max_age_and_invalid_means_expired() {
    let origin = Origin::new(None, None);
    origin.with(|s| {
        s.headers = vec![
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:50:07 GMT"),
        ]
    });
    let (seen, listener) = events();
    let layer = CacheLayer::http()
        .ttl(Duration::from_secs(1000))
        .on_event(listener)
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/e")).await.unwrap();
    // 30 s from Date to Expires, not the layer's ttl.
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, CacheEvent::Stored { ttl, .. } if *ttl == Duration::from_secs(30))));
    tokio::time::advance(Duration::from_secs(29)).await;
    let res = svc.clone().oneshot(get("/e")).await.unwrap();
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
    tokio::time::advance(Duration::from_secs(2)).await;
    let res = svc.clone().oneshot(get("/e")).await.unwrap();
    assert_eq!(status_of(&res), CacheStatus::Miss);
    assert_eq!(origin.calls(), 2);

    // An invalid Expires ("0" included) means already expired.
    for expires in ["0", "next week"] {
        origin.with(|s| s.headers = vec![("expires", expires)]);
        seen.lock().unwrap().clear();
        let before = origin.calls();
        svc.clone().oneshot(get("/i")).await.unwrap();
        svc.clone().oneshot(get("/i")).await.unwrap();
        assert_eq!(origin.calls(), before + 2, "{expires}");
        assert!(seen.lock().unwrap().contains(&CacheEvent::NotStored {
            name: "cache".into(),
            reason: NotStored::ZeroTtl
        }));
    }
    // max-age wins over Expires.
    origin.with(|s| s.headers = vec![("expires", "0"), ("cache-control", "max-age=100")]);
    svc.clone().oneshot(get("/m")).await.unwrap();
    tokio::time::advance(Duration::from_secs(50)).await;
    let res = svc.clone().oneshot(get("/m")).await.unwrap();
    assert!(matches!(status_of(&res), CacheStatus::Hit { .. }));
}

#[tokio::test(start_paused = true)]
async fn head_is_answered_from_a_fresh_stored_get_without_a_call() {
    let origin = Origin::new(Some("\"v1\""), None);
    origin.with(|s| s.headers = vec![("cache-control", "max-age=10")]);
    let layer = CacheLayer::http()
        .max_stale(Duration::from_secs(100))
        .build()
        .unwrap();
    let svc = layer.layer(origin.service());
    svc.clone().oneshot(get("/h")).await.unwrap();
    tokio::time::advance(Duration::from_secs(4)).await;

    let head = || Request::head("/h").body(()).unwrap();
    let res = svc.clone().oneshot(head()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        status_of(&res),
        CacheStatus::Hit {
            age: Duration::from_secs(4)
        }
    );
    assert_eq!(res.headers()["content-length"], "2");
    assert_eq!(res.headers()["etag"], "\"v1\"");
    assert_eq!(res.headers()["age"], "4");
    assert_eq!(res.body().size_hint().exact(), Some(0));
    assert_eq!(text(res).await, "");
    // A conditional HEAD gets a 304 the same way.
    let mut conditional = head();
    conditional
        .headers_mut()
        .insert("if-none-match", "\"v1\"".parse().unwrap());
    let res = svc.clone().oneshot(conditional).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.handle().snapshot().hits, 2);

    // The GET response stale: HEAD is a call of its own.
    tokio::time::advance(Duration::from_secs(10)).await;
    let res = svc.clone().oneshot(head()).await.unwrap();
    assert_eq!(status_of(&res), CacheStatus::Miss);
    assert_eq!(origin.calls(), 2);
    assert_eq!(origin.method(1), Method::HEAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stale_calls_make_one_conditional_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let conditional = Arc::new(AtomicUsize::new(0));
    let (c, k) = (calls.clone(), conditional.clone());
    let inner = service_fn(move |req: Request<()>| {
        let n = c.fetch_add(1, SeqCst);
        let is_conditional = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"e\"");
        if is_conditional {
            k.fetch_add(1, SeqCst);
        }
        async move {
            let mut res = Response::new(Full::new(Bytes::new()));
            res.headers_mut().insert("etag", "\"e\"".parse().unwrap());
            if n == 0 {
                res.headers_mut()
                    .insert("cache-control", "max-age=1".parse().unwrap());
                *res.body_mut() = Full::new(Bytes::from_static(b"body"));
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                res.headers_mut()
                    .insert("cache-control", "max-age=600".parse().unwrap());
                *res.status_mut() = if is_conditional {
                    StatusCode::NOT_MODIFIED
                } else {
                    StatusCode::OK
                };
            }
            Ok::<_, Infallible>(res)
        }
    });
    let layer = CacheLayer::http()
        .max_stale(Duration::from_secs(600))
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    assert_eq!(
        text(svc.clone().oneshot(get("/x")).await.unwrap()).await,
        "body"
    );
    // Wait (bounded) until the entry is stale: max-age=1.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/x"))))
        .collect();
    for t in tasks {
        let res = t.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text(res).await, "body");
    }
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(conditional.load(SeqCst), 1);
    assert_eq!(layer.handle().snapshot().revalidated, 1);
}
