//! Untrusted `Cache-Control` and `Vary` values from upstream responses,
//! fuzzed through the HTTP cache: never a panic, never a hang, and the
//! documented decision for the values that mean something.

use std::convert::Infallible;
use std::time::Duration;

use buttress_cache::{CacheLayer, CacheStatus};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

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
}
