//! The ready-made HTTP server fallback: 503, a small JSON body, and
//! Retry-After when the cause has one.

use std::time::Duration;

use buttress_core::{BoxError, BulkheadFull, BulkheadFullReason, RateLimited};
use buttress_fallback::{FallbackLayer, FallbackReason, FallbackUsed, FALLBACK_HEADER};
use tower::{Layer, ServiceExt};

type Outcome = Result<http::Response<String>, BoxError>;

/// An upstream that answers with `result()`.
#[derive(Clone, Copy)]
struct Upstream(fn() -> Outcome);

impl tower::Service<http::Request<()>> for Upstream {
    type Response = http::Response<String>;
    type Error = BoxError;
    type Future = std::future::Ready<Outcome>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready((self.0)())
    }
}

async fn answer<L>(layer: &L, result: fn() -> Outcome) -> http::Response<String>
where
    L: Layer<Upstream>,
    L::Service:
        tower::Service<http::Request<()>, Response = http::Response<String>, Error = BoxError>,
{
    layer
        .layer(Upstream(result))
        .oneshot(http::Request::new(()))
        .await
        .unwrap()
}

fn status(code: u16) -> http::Response<String> {
    let mut res = http::Response::new(format!("upstream {code}"));
    *res.status_mut() = http::StatusCode::from_u16(code).unwrap();
    res
}

#[tokio::test]
async fn a_rate_limit_gets_a_503_with_json_and_retry_after() {
    let layer = FallbackLayer::http_unavailable::<String>()
        .name("api")
        .build()
        .unwrap();
    let res = answer(&layer, || {
        Err(RateLimited::new("api".into(), Some(Duration::from_millis(2500))).into())
    })
    .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["retry-after"], "3");
    assert_eq!(
        res.body(),
        r#"{"error":"service_unavailable","reason":"rate_limited","retry_after":3}"#
    );
    let used = res.extensions().get::<FallbackUsed>().unwrap();
    assert_eq!(
        (used.name(), used.reason().as_str()),
        ("api", "rate_limited")
    );
}

#[tokio::test]
async fn a_bulkhead_without_a_hint_gets_no_retry_after() {
    let layer = FallbackLayer::http_unavailable::<String>().build().unwrap();
    let res = answer(&layer, || {
        Err(BulkheadFull::new("db".into(), BulkheadFullReason::QueueFull).into())
    })
    .await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(
        res.body(),
        r#"{"error":"service_unavailable","reason":"bulkhead_full"}"#
    );
}

#[tokio::test]
async fn an_upstream_503_is_replaced_and_its_retry_after_kept() {
    let layer = FallbackLayer::http_unavailable::<String>()
        .marker_header(FALLBACK_HEADER)
        .build()
        .unwrap();
    let res = answer(&layer, || {
        let mut res = status(503);
        res.headers_mut()
            .insert("retry-after", "120".parse().unwrap());
        res.headers_mut()
            .insert("x-internal", "secret".parse().unwrap());
        Ok(res)
    })
    .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "120");
    assert!(
        res.headers().get("x-internal").is_none(),
        "the upstream's headers are not passed on"
    );
    assert_eq!(res.headers()[FALLBACK_HEADER], "response");
    assert_eq!(
        res.body(),
        r#"{"error":"service_unavailable","reason":"response","retry_after":120}"#
    );
    assert_eq!(
        res.extensions().get::<FallbackUsed>().unwrap().reason(),
        FallbackReason::Response
    );
}

#[tokio::test]
async fn healthy_and_client_error_responses_pass_untouched() {
    let layer = FallbackLayer::http_unavailable::<String>().build().unwrap();
    let res = answer(&layer, || Ok(status(404))).await;
    assert_eq!(res.status(), 404);
    assert!(res.extensions().get::<FallbackUsed>().is_none());
    let res = answer(&layer, || Ok(status(422))).await;
    assert_eq!(res.status(), 422);
    let res = answer(&layer, || Ok(status(200))).await;
    assert_eq!(res.body(), "upstream 200");
}

#[tokio::test]
async fn an_unknown_error_says_error_and_never_its_text() {
    let layer = FallbackLayer::http_unavailable::<String>().build().unwrap();
    let res = answer(&layer, || Err("password=hunter2 in the DSN".into())).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.body(),
        r#"{"error":"service_unavailable","reason":"error"}"#
    );
}

#[cfg(feature = "serde")]
#[tokio::test]
async fn a_config_sets_the_kinds_the_statuses_and_the_header() {
    let config: buttress_fallback::FallbackConfig = serde_json::from_str(
        r#"{ "name": "edge", "kinds": ["rate_limited"], "statuses": [502], "header": "x-degraded" }"#,
    )
    .unwrap();
    let layer = config
        .http_unavailable::<String>()
        .unwrap()
        .build()
        .unwrap();
    let res = answer(&layer, || Ok(status(502))).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-degraded"], "edge; reason=response");
    // 503 is not in the list: it passes.
    let res = answer(&layer, || Ok(status(503))).await;
    assert_eq!(res.body(), "upstream 503");
    let res = answer(&layer, || Err(RateLimited::new("x".into(), None).into())).await;
    assert_eq!(res.status(), 503);
    assert!(res.extensions().get::<FallbackUsed>().is_some());
    // Other errors go back as errors.
    let err = layer
        .layer(Upstream(|| Err("boom".into())))
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "boom");
}

#[cfg(feature = "serde")]
#[test]
fn bad_configs_name_the_field() {
    let parse = |s: &str| serde_json::from_str::<buttress_fallback::FallbackConfig>(s).unwrap();
    let e = parse(r#"{ "kinds": ["open"] }"#).rules().unwrap_err();
    assert_eq!((e.component(), e.field()), ("fallback", "kinds"));
    let e = parse(r#"{ "statuses": [99] }"#).rules().unwrap_err();
    assert_eq!(e.field(), "statuses");
    let e = parse(r#"{ "header": "bad header" }"#).marker().unwrap_err();
    assert_eq!(e.field(), "header");
    assert!(
        serde_json::from_str::<buttress_fallback::FallbackConfig>(r#"{ "nme": "x" }"#).is_err()
    );
    let round = buttress_fallback::FallbackConfig {
        kinds: Some(vec!["elapsed".into(), "circuit_open".into()]),
        ..buttress_fallback::FallbackConfig::default()
    };
    let json = serde_json::to_string(&round).unwrap();
    assert_eq!(
        serde_json::from_str::<buttress_fallback::FallbackConfig>(&json).unwrap(),
        round
    );
    assert_eq!(
        format!("{:?}", round.error_kinds().unwrap().unwrap()),
        r#"{"circuit_open", "timeout"}"#
    );
}
