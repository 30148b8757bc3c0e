//! Rejections from real buttress layers below the fallback trigger it: an
//! open circuit breaker and a timeout that fires under paused time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_circuit_breaker::CircuitBreakerLayer;
use buttress_core::{BoxError, ErrorKind};
use buttress_fallback::{FallbackLayer, FallbackReason, FallbackUsed};
use buttress_timeout::TimeoutLayer;
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn an_open_breaker_below_is_answered_by_the_fallback() {
    let upstream_calls = Arc::new(AtomicUsize::new(0));
    let calls = upstream_calls.clone();
    let breaker = CircuitBreakerLayer::builder()
        .name("catalog")
        .window_size(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_secs(30))
        .build()
        .unwrap();
    let fallback =
        FallbackLayer::from_error(|f: &buttress_fallback::Failure<http::Response<String>>| {
            let mut res = http::Response::new(String::from("cached catalog"));
            if let Some(wait) = f.retry_after() {
                res.headers_mut()
                    .insert("x-retry-in", wait.as_secs().into());
            }
            Ok(res)
        })
        .name("catalog-fallback")
        .on_kinds([ErrorKind::CircuitOpen])
        .mark(buttress_fallback::HttpMarker::new())
        .build()
        .unwrap();
    let handle = fallback.handle();
    let svc = ServiceBuilder::new()
        .layer(fallback)
        .layer(breaker.clone())
        .service(service_fn(move |_: http::Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<http::Response<String>, BoxError>("upstream refused".into()) }
        }));
    // Four failures open the breaker; they are not rejections, so they go
    // back to the caller (the trigger is `CircuitOpen` only).
    for _ in 0..4 {
        let err = svc
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "upstream refused");
    }
    assert_eq!(
        breaker.handle().state(),
        buttress_circuit_breaker::State::Open
    );
    // Now the breaker rejects and the fallback answers, without a call upstream.
    let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.body(), "cached catalog");
    assert_eq!(res.headers()["x-retry-in"], "30");
    let used = res.extensions().get::<FallbackUsed>().unwrap();
    assert_eq!(
        used.reason(),
        FallbackReason::Rejected(ErrorKind::CircuitOpen)
    );
    assert_eq!(upstream_calls.load(Ordering::SeqCst), 4);
    let snap = handle.snapshot();
    assert_eq!((snap.primary, snap.fallbacks_used), (4, 1));
}

#[tokio::test(start_paused = true)]
async fn a_forced_open_breaker_is_answered_by_the_http_preset() {
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .build()
        .unwrap();
    breaker.handle().force_open();
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::http_unavailable::<String>()
                .name("edge")
                .build()
                .unwrap(),
        )
        .layer(breaker)
        .service(service_fn(|_: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(String::from("paid")))
        }));
    let res = svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.status(), 503);
    // Forced open: no time is known, so no Retry-After.
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(
        res.body(),
        r#"{"error":"service_unavailable","reason":"circuit_open"}"#
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_below_fires_under_paused_time_and_the_fallback_answers() {
    let fallback = FallbackLayer::value(String::from("stale quote"))
        .on_kinds([ErrorKind::Timeout])
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(fallback.clone())
        .layer(TimeoutLayer::new(Duration::from_millis(200)).unwrap())
        .service(service_fn(|slow: bool| async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok::<_, BoxError>(String::from("fresh quote"))
        }));
    let started = tokio::time::Instant::now();
    assert_eq!(svc.clone().oneshot(true).await.unwrap(), "stale quote");
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(svc.oneshot(false).await.unwrap(), "fresh quote");
    assert_eq!(fallback.handle().snapshot().fallbacks_used, 1);
}

#[test]
fn counters_are_exact_on_a_multi_thread_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let layer = FallbackLayer::from_error(|f: &buttress_fallback::Failure<u64>| {
        match f.error().map(|e| e.to_string()) {
            Some(e) if e == "hard" => Err("no fallback".into()),
            _ => Ok(0),
        }
    })
    .build()
    .unwrap();
    let handle = layer.handle();
    let svc = tower::Layer::layer(
        &layer,
        service_fn(|x: u64| async move {
            tokio::task::yield_now().await;
            match x % 3 {
                0 => Ok::<u64, BoxError>(x),
                1 => Err("soft".into()),
                _ => Err("hard".into()),
            }
        }),
    );
    rt.block_on(async {
        let tasks: Vec<_> = (0..3000u64)
            .map(|x| tokio::spawn(svc.clone().oneshot(x)))
            .collect();
        for t in tasks {
            let _ = t.await.unwrap();
        }
    });
    let s = handle.snapshot();
    assert_eq!(
        (s.calls, s.primary, s.fallbacks_used, s.fallback_failures),
        (3000, 1000, 1000, 1000)
    );
}
