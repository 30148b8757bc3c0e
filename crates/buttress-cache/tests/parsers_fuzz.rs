//! Untrusted `Cache-Control` and `Vary` values from upstream responses,
//! validators (`ETag`, `Last-Modified`), `Expires` and `Date`, and the
//! conditional headers of requests (`If-None-Match`,
//! `If-Modified-Since`), fuzzed through the HTTP cache: never a panic,
//! never a hang, and the documented decision for the values that mean
//! something.

use std::convert::Infallible;
use std::time::Duration;

use buttress_cache::{CacheLayer, CacheStatus};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

/// Header values as upstreams send them, and as they should not.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Directive-shaped text.
        prop::collection::vec(
            prop_oneof![
                Just("no-store".to_owned()),
                Just("private".to_owned()),
                Just("public".to_owned()),
                Just("no-cache".to_owned()),
                (0u64..100_000).prop_map(|n| format!("max-age={n}")),
                (0u64..100_000).prop_map(|n| format!("s-maxage={n}")),
                Just("max-age=".to_owned()),
                Just("max-age=-1".to_owned()),
                Just("max-age=99999999999999999999999".to_owned()),
                "[a-z-]{0,12}(=[a-z0-9\"]{0,8})?",
            ],
            0..6,
        )
        .prop_map(|parts| parts.join(", ").into_bytes()),
        // Any visible bytes a header value may hold.
        prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..64),
    ]
}

/// One call through a fresh HTTP cache whose upstream answers 200 with
/// `cache-control: <value>`, then a second call: whether it was a hit.
fn second_call_hits(value: HeaderValue) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let layer = CacheLayer::http()
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        let upstream = service_fn(move |_req: Request<()>| {
            let value = value.clone();
            async move {
                let mut res = Response::new(Full::new(Bytes::from_static(b"body")));
                res.headers_mut().insert(http::header::CACHE_CONTROL, value);
                Ok::<_, Infallible>(res)
            }
        });
        let svc = layer.layer(upstream);
        let call = |svc: _| async move {
            let req = Request::get("http://h/p").body(()).unwrap();
            tokio::time::timeout(Duration::from_secs(5), ServiceExt::oneshot(svc, req))
                .await
                .expect("the call hung")
                .expect("the cache never fails a call its upstream answered")
        };
        let _first = call(svc.clone()).await;
        let second = call(svc).await;
        matches!(
            second.extensions().get::<CacheStatus>(),
            Some(CacheStatus::Hit { .. })
        )
    })
}

/// Values for validators, dates and conditional headers: well-formed,
/// nearly so, and anything.
fn validator_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\"v1\"".to_vec()),
        Just(b"W/\"v1\"".to_vec()),
        Just(b"*".to_vec()),
        Just(b"0".to_vec()),
        Just(b"Sun, 06 Nov 1994 08:49:37 GMT".to_vec()),
        Just(b"Sunday, 06-Nov-94 08:49:37 GMT".to_vec()),
        Just(b"Sun Nov  6 08:49:37 1994".to_vec()),
        Just(b"Sun, 06 Nov 9999 08:49:37 GMT".to_vec()),
        Just(b"Sun, 31 Feb 1994 25:61:61 GMT".to_vec()),
        "(W/)?\"[ -~]{0,10}\"?(, ?(W/)?\"[a-z,]{0,4}\")*".prop_map(String::into_bytes),
        "[A-Za-z]{3}, [0-9]{1,2} [A-Za-z]{3} [0-9]{1,5} [0-9:]{0,9} GMT"
            .prop_map(String::into_bytes),
        prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..48),
    ]
}

/// Headers named `names` with the given values (values that are not
/// valid header values are left out).
fn headers_of(names: &[&'static str], values: &[Vec<u8>]) -> Vec<(&'static str, HeaderValue)> {
    names
        .iter()
        .zip(values)
        .filter_map(|(n, v)| HeaderValue::from_bytes(v).ok().map(|v| (*n, v)))
        .collect()
}

/// What the calls of [`validation_run`] saw.
struct Run {
    /// The second, conditional request's answer: its status and cache status.
    conditional: (StatusCode, CacheStatus),
    /// The third request, made when the entry is stale: its status, cache
    /// status and body.
    stale: (StatusCode, CacheStatus, Bytes),
    /// The request headers of each upstream call.
    upstream: Vec<http::HeaderMap>,
}

/// An HTTP cache (ttl 60 s, max_stale 600 s) whose upstream answers 200
/// with `stored` headers first, then `304 Not Modified` with `revalidated`
/// headers: a first call, a conditional call with `request` headers, then
/// (past every freshness) a third call.
fn validation_run(
    stored: Vec<(&'static str, HeaderValue)>,
    request: Vec<(&'static str, HeaderValue)>,
    revalidated: Vec<(&'static str, HeaderValue)>,
) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let layer = CacheLayer::http()
            .ttl(Duration::from_secs(60))
            .max_stale(Duration::from_secs(600))
            .build()
            .unwrap();
        let upstream_seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = upstream_seen.clone();
        let upstream = service_fn(move |req: Request<()>| {
            let first = {
                let mut seen = seen.lock().unwrap();
                seen.push(req.headers().clone());
                seen.len() == 1
            };
            let (status, headers, body) = if first {
                (StatusCode::OK, stored.clone(), Bytes::from_static(b"body"))
            } else {
                (StatusCode::NOT_MODIFIED, revalidated.clone(), Bytes::new())
            };
            async move {
                let mut res = Response::new(Full::new(body));
                *res.status_mut() = status;
                for (n, v) in headers {
                    res.headers_mut().append(n, v);
                }
                Ok::<_, Infallible>(res)
            }
        });
        let svc = layer.layer(upstream);
        let call = |svc: _, req: Request<()>| async move {
            let res: Result<
                Response<buttress_cache::CacheBody<Full<Bytes>>>,
                buttress_core::BoxError,
            > = tokio::time::timeout(Duration::from_secs(5), ServiceExt::oneshot(svc, req))
                .await
                .expect("the call hung");
            match res {
                Ok(res) => {
                    let status = res.status();
                    let cache = *res.extensions().get::<CacheStatus>().unwrap();
                    use http_body_util::BodyExt;
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    (status, cache, body)
                }
                // Only a 304 about another representation with no stale
                // entry left fails a call; max_stale covers this run.
                Err(e) => panic!("a call failed: {e}"),
            }
        };
        let get = || Request::get("http://h/p").body(()).unwrap();
        let _first = call(svc.clone(), get()).await;
        let mut conditional = get();
        for (n, v) in request {
            conditional.headers_mut().append(n, v);
        }
        let (status, cache, _) = call(svc.clone(), conditional).await;
        // Past the layer's ttl: stale, unless an Expires keeps it fresh
        // (or made it never stored).
        tokio::time::advance(Duration::from_secs(61)).await;
        let stale = call(svc, get()).await;
        let upstream = upstream_seen.lock().unwrap().clone();
        Run {
            conditional: (status, cache),
            stale,
            upstream,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_validators_dates_and_preconditions_are_a_decision_never_a_panic(
        stored in prop::collection::vec(validator_bytes(), 4),
        request in prop::collection::vec(validator_bytes(), 2),
        revalidated in prop::collection::vec(validator_bytes(), 3),
    ) {
        let stored = headers_of(&["etag", "last-modified", "expires", "date"], &stored);
        let request = headers_of(&["if-none-match", "if-modified-since"], &request);
        let revalidated = headers_of(&["etag", "last-modified", "expires"], &revalidated);
        let stored_etag = stored.iter().find(|(n, _)| *n == "etag").map(|(_, v)| v.clone());
        let has_expires = stored.iter().any(|(n, _)| *n == "expires");
        let inm = request.iter().find(|(n, _)| *n == "if-none-match").map(|(_, v)| v.clone());
        let run = validation_run(stored, request, revalidated);
        let (status, cache) = run.conditional;
        // A conditional answer is a 304 or the full 200, nothing else.
        prop_assert!(status == StatusCode::NOT_MODIFIED || status == StatusCode::OK);
        if !has_expires {
            // Fresh for the layer's ttl: the conditional call is a hit.
            prop_assert!(matches!(cache, CacheStatus::Hit { .. }), "{cache:?}");
            // A well-formed If-None-Match naming the stored ETag is a 304.
            if let (Some(etag), Some(inm)) = (&stored_etag, &inm) {
                let quoted = |v: &HeaderValue| {
                    let b = v.as_bytes();
                    b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"'
                        && b[1..b.len() - 1].iter().all(|&c| c == b'!' || (0x23..0x7f).contains(&c) || c >= 0x80)
                };
                if etag == inm && quoted(etag) {
                    prop_assert_eq!(status, StatusCode::NOT_MODIFIED);
                }
            }
        }
        // A 304 from the cache is never sent without the caller asking.
        if inm.is_none() && status == StatusCode::NOT_MODIFIED {
            prop_assert!(run.upstream.len() == 1);
        }
        // The stale call: the stored body (revalidated, stale after an
        // unusable 304, or a hit), or the upstream's own 304 when nothing
        // was stored.
        let (status, cache, body) = run.stale;
        if status == StatusCode::OK {
            prop_assert_eq!(&body[..], b"body");
        } else {
            prop_assert_eq!(status, StatusCode::NOT_MODIFIED);
            prop_assert_eq!(cache, CacheStatus::Miss);
        }
        // The upstream only ever sees a conditional header the caller sent
        // or the stored validator.
        for headers in &run.upstream[1..] {
            if let Some(v) = headers.get("if-none-match") {
                prop_assert!(Some(v) == inm.as_ref() || Some(v) == stored_etag.as_ref());
            }
        }
    }

    #[test]
    fn any_cache_control_is_a_decision_never_a_panic(bytes in header_bytes()) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
            let hit = second_call_hits(value);
            // What must never be stored, whatever else the header says.
            if text.split(',').any(|d| matches!(d.trim(), "no-store" | "private" | "no-cache")) {
                prop_assert!(!hit, "stored despite {text:?}");
            }
        }
    }

    #[test]
    fn a_positive_max_age_alone_is_stored(n in 1u64..100_000) {
        let value = HeaderValue::from_str(&format!("public, max-age={n}")).unwrap();
        prop_assert!(second_call_hits(value));
    }

    #[test]
    fn an_if_none_match_naming_the_stored_etag_is_a_304(
        tag in "[!#-~]{0,12}",
        weak_stored in any::<bool>(),
        weak_request in any::<bool>(),
        others in prop::collection::vec("[a-z]{1,4}", 0..3),
    ) {
        let entity = |weak: bool, t: &str| format!("{}\"{t}\"", if weak { "W/" } else { "" });
        let etag = HeaderValue::from_str(&entity(weak_stored, &tag)).unwrap();
        let mut list: Vec<String> = others.iter().map(|o| entity(false, &format!("{o}~"))).collect();
        list.push(entity(weak_request, &tag));
        let inm = HeaderValue::from_str(&list.join(", ")).unwrap();
        let run = validation_run(vec![("etag", etag)], vec![("if-none-match", inm)], vec![]);
        prop_assert_eq!(run.conditional.0, StatusCode::NOT_MODIFIED);
        prop_assert!(
            matches!(run.conditional.1, CacheStatus::Hit { .. }),
            "{:?}",
            run.conditional.1
        );
        // Stale, the entry is revalidated with its ETag, and the 304
        // (naming no validator) refreshes it.
        prop_assert_eq!(run.upstream.len(), 2);
        prop_assert_eq!(
            run.upstream[1].get("if-none-match").map(|v| v.as_bytes().to_vec()),
            Some(entity(weak_stored, &tag).into_bytes())
        );
        prop_assert_eq!(run.stale.1, CacheStatus::Revalidated);
    }
}
