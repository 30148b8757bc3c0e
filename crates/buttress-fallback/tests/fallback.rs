//! Each source, each trigger, chains, the marker and the fallback's own
//! failure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::error::{kind_of, retry_after};
use buttress_core::{
    BoxError, BulkheadFull, BulkheadFullReason, CircuitOpen, Elapsed, ErrorKind, HttpClassifier,
    RateLimited, Registry, RetryExhausted,
};
use buttress_fallback::error::{FallbackFailed, UnhealthyResponse};
use buttress_fallback::{
    Failure, FallbackEvent, FallbackLayer, FallbackReason, FallbackSnapshot, FallbackUsed,
    HttpMarker, Kinds, Rules, FALLBACK_HEADER,
};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

fn open() -> BoxError {
    CircuitOpen::new("upstream".into(), Some(Duration::from_secs(5))).into()
}

fn failing(
    err: fn() -> BoxError,
) -> impl Service<
    u64,
    Response = String,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<String, BoxError>> + Send,
> + Clone {
    service_fn(move |_: u64| async move { Err::<String, BoxError>(err()) })
}

fn ok_svc() -> impl Service<
    u64,
    Response = String,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<String, BoxError>> + Send,
> + Clone {
    service_fn(|x: u64| async move { Ok::<_, BoxError>(format!("primary {x}")) })
}

// ===== sources =====

#[tokio::test]
async fn a_value_answers_for_a_failed_call() {
    let layer = FallbackLayer::value(String::from("default"))
        .build()
        .unwrap();
    assert_eq!(
        layer.layer(failing(open)).oneshot(1).await.unwrap(),
        "default"
    );
}

#[tokio::test]
async fn the_primary_answers_when_it_succeeds() {
    let layer = FallbackLayer::value(String::from("default"))
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(layer.layer(ok_svc()).oneshot(3).await.unwrap(), "primary 3");
    assert_eq!(
        handle.snapshot(),
        FallbackSnapshot {
            calls: 1,
            primary: 1,
            fallbacks_used: 0,
            fallback_failures: 0
        }
    );
}

#[tokio::test]
async fn a_function_of_the_error_sees_the_failure() {
    let layer = FallbackLayer::from_error(|f: &Failure<String>| {
        Ok(format!(
            "degraded ({}, retry in {:?})",
            f.reason(),
            f.retry_after()
        ))
    })
    .build()
    .unwrap();
    assert_eq!(
        layer.layer(failing(open)).oneshot(1).await.unwrap(),
        "degraded (circuit_open, retry in Some(5s))"
    );
}

#[tokio::test]
async fn a_function_of_the_request_gets_the_request() {
    let layer = FallbackLayer::from_request(|x: u64, f: &Failure<String>| {
        Ok(format!("cached {x} after {}", f.error().unwrap()))
    })
    .build()
    .unwrap();
    let svc = layer.layer(service_fn(|_: u64| async {
        Err::<String, BoxError>("connection refused".into())
    }));
    assert_eq!(
        svc.oneshot(9).await.unwrap(),
        "cached 9 after connection refused"
    );
}

#[tokio::test]
async fn a_secondary_service_gets_the_same_request() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let secondary = service_fn(move |x: u64| {
        s.lock().unwrap().push(x);
        async move { Ok::<_, BoxError>(format!("secondary {x}")) }
    });
    let layer = FallbackLayer::service(secondary).build().unwrap();
    let mut svc = layer.layer(failing(open));
    assert_eq!(
        svc.ready().await.unwrap().call(4).await.unwrap(),
        "secondary 4"
    );
    assert_eq!(
        svc.ready().await.unwrap().call(5).await.unwrap(),
        "secondary 5"
    );
    assert_eq!(*seen.lock().unwrap(), vec![4, 5]);
}

#[tokio::test]
async fn a_secondary_service_is_made_ready_before_it_is_called() {
    // A bulkhead of one in front of the secondary: ready is the only way in.
    let secondary = ServiceBuilder::new()
        .concurrency_limit(1)
        .service(service_fn(|x: u64| async move {
            Ok::<_, BoxError>(format!("s{x}"))
        }));
    let layer = FallbackLayer::service(secondary).build().unwrap();
    let svc = layer.layer(failing(open));
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    assert_eq!((a.unwrap(), b.unwrap()), ("s1".into(), "s2".into()));
}

#[tokio::test]
async fn a_secondary_http_service_gets_the_head_without_the_body() {
    let secondary = service_fn(|req: http::Request<String>| async move {
        Ok::<_, BoxError>(http::Response::new(format!(
            "{} {} {:?} body={:?}",
            req.method(),
            req.uri(),
            req.headers().get("x-user"),
            req.body()
        )))
    });
    let layer = FallbackLayer::service_without_body(secondary)
        .build()
        .unwrap();
    // The primary's body is a type that cannot be cloned.
    struct Stream;
    let svc = layer.layer(service_fn(|_: http::Request<Stream>| async {
        Err::<http::Response<String>, BoxError>(open())
    }));
    let req = http::Request::post("/orders")
        .header("x-user", "7")
        .body(Stream)
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.body(), r#"POST /orders Some("7") body="""#);
}

// ===== triggers =====

#[tokio::test]
async fn kinds_trigger_only_on_those_rejections() {
    let layer = FallbackLayer::value(String::from("fb"))
        .on_kinds([ErrorKind::CircuitOpen, ErrorKind::BulkheadFull])
        .build()
        .unwrap();
    let full =
        || -> BoxError { BulkheadFull::new("b".into(), BulkheadFullReason::QueueFull).into() };
    let limited = || -> BoxError { RateLimited::new("r".into(), None).into() };
    let plain = || -> BoxError { "boom".into() };
    let behind_retry = || -> BoxError { RetryExhausted::new("r".into(), 3, open()).into() };
    assert_eq!(layer.layer(failing(open)).oneshot(1).await.unwrap(), "fb");
    assert_eq!(layer.layer(failing(full)).oneshot(1).await.unwrap(), "fb");
    assert_eq!(
        layer.layer(failing(behind_retry)).oneshot(1).await.unwrap(),
        "fb"
    );
    let err = layer.layer(failing(limited)).oneshot(1).await.unwrap_err();
    assert!(err.is::<RateLimited>(), "passed through as it is: {err}");
    let err = layer.layer(failing(plain)).oneshot(1).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
}

#[tokio::test]
async fn a_predicate_decides_on_the_error() {
    let layer = FallbackLayer::value(String::from("fb"))
        .when(|e: &BoxError| e.to_string().contains("retryable"))
        .build()
        .unwrap();
    let yes = || -> BoxError { "retryable glitch".into() };
    let no = || -> BoxError { "bad request".into() };
    assert_eq!(layer.layer(failing(yes)).oneshot(1).await.unwrap(), "fb");
    assert_eq!(
        layer
            .layer(failing(no))
            .oneshot(1)
            .await
            .unwrap_err()
            .to_string(),
        "bad request"
    );
}

fn status_svc(
    status: u16,
) -> impl Service<http::Request<()>, Response = http::Response<String>, Error = BoxError> + Clone {
    service_fn(move |_: http::Request<()>| async move {
        let mut res = http::Response::new(format!("upstream {status}"));
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        if status == 503 {
            res.headers_mut()
                .insert("retry-after", "7".parse().unwrap());
        }
        Ok::<_, BoxError>(res)
    })
}

#[tokio::test]
async fn a_classifier_triggers_on_failed_responses() {
    let layer = FallbackLayer::value(http::Response::new(String::from("cached")))
        .classify(HttpClassifier::new())
        .mark(HttpMarker::new())
        .build()
        .unwrap();
    let res = layer
        .layer(status_svc(503))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.body(), "cached");
    assert_eq!(
        res.extensions().get::<FallbackUsed>().unwrap().reason(),
        FallbackReason::Response
    );
    // 404 is the caller's fault: the primary answers.
    let res = layer
        .layer(status_svc(404))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.body(), "upstream 404");
    assert!(res.extensions().get::<FallbackUsed>().is_none());
}

#[tokio::test]
async fn rules_trigger_on_statuses_and_kinds() {
    let rules = Rules::new()
        .kinds(Kinds::from([ErrorKind::Timeout]))
        .statuses([502])
        .unwrap();
    let layer = FallbackLayer::value(http::Response::new(String::from("fb")))
        .on(rules)
        .build()
        .unwrap();
    let res = layer
        .layer(status_svc(502))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.body(), "fb");
    let res = layer
        .layer(status_svc(503))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.body(), "upstream 503");
    let elapsed = service_fn(|_: http::Request<()>| async {
        Err::<http::Response<String>, BoxError>(
            Elapsed::new("t".into(), Duration::from_secs(1)).into(),
        )
    });
    let res = layer
        .layer(elapsed)
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.body(), "fb");
    assert_eq!(
        Rules::new().statuses([1000]).unwrap_err().field(),
        "statuses"
    );
}

#[tokio::test]
async fn a_closure_is_a_trigger_over_the_whole_result() {
    let layer = FallbackLayer::value(String::from("fb"))
        .on(|r: &Result<String, BoxError>| matches!(r, Ok(s) if s.is_empty()))
        .build()
        .unwrap();
    let empty = service_fn(|_: u64| async { Ok::<_, BoxError>(String::new()) });
    assert_eq!(layer.layer(empty).oneshot(1).await.unwrap(), "fb");
    assert_eq!(layer.layer(ok_svc()).oneshot(1).await.unwrap(), "primary 1");
    // Errors are not this trigger's business.
    assert!(layer.layer(failing(open)).oneshot(1).await.is_err());
}

// ===== chains =====

#[tokio::test]
async fn a_chain_goes_primary_then_secondary_then_the_static_default() {
    let secondary_up = Arc::new(AtomicUsize::new(1));
    let up = secondary_up.clone();
    let secondary = service_fn(move |x: u64| {
        let up = up.load(Ordering::SeqCst) == 1;
        async move {
            if up {
                Ok(format!("popular for {x}"))
            } else {
                Err::<String, BoxError>("popular service down".into())
            }
        }
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::value(String::from("static defaults"))
                .name("default")
                .on_event(move |ev: &FallbackEvent| e.lock().unwrap().push(ev.clone()))
                .build()
                .unwrap(),
        )
        .layer(
            FallbackLayer::service(secondary)
                .name("popular")
                .build()
                .unwrap(),
        )
        .service(failing(open));
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "popular for 1");
    secondary_up.store(0, Ordering::SeqCst);
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), "static defaults");
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![
            FallbackEvent::Primary {
                name: "default".into()
            },
            FallbackEvent::Used {
                name: "default".into(),
                // The secondary's failure still says what stopped the primary.
                reason: FallbackReason::Rejected(ErrorKind::CircuitOpen),
            },
        ]
    );
}

#[tokio::test]
async fn an_http_chain_catches_a_failed_secondary_response() {
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::value(http::Response::new(String::from("static")))
                .name("default")
                .classify(HttpClassifier::new())
                .marker_header(FALLBACK_HEADER)
                .build()
                .unwrap(),
        )
        .layer(
            FallbackLayer::service(status_svc(503))
                .name("mirror")
                .classify(HttpClassifier::new())
                .marker_header(FALLBACK_HEADER)
                .build()
                .unwrap(),
        )
        .service(status_svc(500));
    let res = svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.body(), "static");
    assert_eq!(res.headers()[FALLBACK_HEADER], "default; reason=response");
}

// ===== the marker =====

#[tokio::test]
async fn the_http_marker_sets_the_extension_and_the_header() {
    let layer = FallbackLayer::value(http::Response::new(String::from("cached")))
        .name("catalog")
        .marker_header(FALLBACK_HEADER)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Err::<http::Response<String>, BoxError>(open())
    }));
    let res = svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.headers()["x-fallback"], "catalog; reason=circuit_open");
    let used = res.extensions().get::<FallbackUsed>().unwrap();
    assert_eq!(used.name(), "catalog");
    assert_eq!(
        used.reason(),
        FallbackReason::Rejected(ErrorKind::CircuitOpen)
    );
}

#[tokio::test]
async fn the_header_is_off_unless_asked_for() {
    let layer = FallbackLayer::value(http::Response::new(String::new()))
        .mark(HttpMarker::new())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Err::<http::Response<String>, BoxError>("x".into())
    }));
    let res = svc.oneshot(http::Request::new(())).await.unwrap();
    assert!(res.headers().is_empty());
    assert_eq!(
        res.extensions().get::<FallbackUsed>().unwrap().reason(),
        FallbackReason::Error
    );
}

#[tokio::test]
async fn a_closure_marks_a_generic_response() {
    #[derive(Clone, Debug, PartialEq)]
    struct Price {
        cents: u64,
        stale: Option<&'static str>,
    }
    let layer = FallbackLayer::value(Price {
        cents: 100,
        stale: None,
    })
    .mark(|p: &mut Price, used: &FallbackUsed| p.stale = Some(used.reason().as_str()))
    .build()
    .unwrap();
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<Price, BoxError>(RateLimited::new("api".into(), None).into())
    }));
    assert_eq!(
        svc.oneshot(()).await.unwrap(),
        Price {
            cents: 100,
            stale: Some("rate_limited")
        }
    );
}

// ===== the fallback's own failure =====

#[tokio::test]
async fn a_failed_fallback_returns_its_error_with_the_original_as_source() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let secondary = service_fn(|_: u64| async { Err::<String, BoxError>("secondary down".into()) });
    let layer = FallbackLayer::service(secondary)
        .name("mirror")
        .on_event(move |ev: &FallbackEvent| e.lock().unwrap().push(ev.clone()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let err = layer.layer(failing(open)).oneshot(1).await.unwrap_err();
    let failed = err
        .downcast_ref::<FallbackFailed>()
        .expect("a FallbackFailed");
    assert_eq!(failed.name(), "mirror");
    assert_eq!(failed.fallback_error().to_string(), "secondary down");
    assert_eq!(
        failed.reason(),
        FallbackReason::Rejected(ErrorKind::CircuitOpen)
    );
    let source = std::error::Error::source(failed).unwrap();
    assert!(source.is::<CircuitOpen>());
    assert_eq!(kind_of(&*err), Some(ErrorKind::CircuitOpen));
    assert_eq!(retry_after(&*err), Some(Duration::from_secs(5)));
    assert_eq!(err.to_string(), "fallback `mirror` failed: secondary down");
    assert_eq!(
        *events.lock().unwrap(),
        vec![FallbackEvent::Failed {
            name: "mirror".into(),
            reason: FallbackReason::Rejected(ErrorKind::CircuitOpen),
            error: "secondary down".into()
        }]
    );
    assert_eq!(handle.snapshot().fallback_failures, 1);
    assert_eq!(handle.snapshot().calls, 1);
}

#[tokio::test]
async fn a_failed_fallback_for_a_failed_response_names_the_status() {
    let layer =
        FallbackLayer::from_error(|_: &Failure<http::Response<String>>| Err("no cache".into()))
            .classify(HttpClassifier::new())
            .mark(HttpMarker::new())
            .build()
            .unwrap();
    let err = layer
        .layer(status_svc(503))
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    let original = failed
        .original()
        .downcast_ref::<UnhealthyResponse>()
        .unwrap();
    assert_eq!(
        original.status(),
        Some(http::StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(err.to_string(), "fallback failed: no cache");
}

// ===== events, handle, registry =====

#[tokio::test]
async fn events_report_every_call() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let layer = FallbackLayer::value(String::from("fb"))
        .name("ev")
        .on_event(move |ev: &FallbackEvent| e.lock().unwrap().push(ev.clone()))
        .build()
        .unwrap();
    layer.layer(ok_svc()).oneshot(1).await.unwrap();
    layer.layer(failing(open)).oneshot(1).await.unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            FallbackEvent::Primary { name: "ev".into() },
            FallbackEvent::Used {
                name: "ev".into(),
                reason: FallbackReason::Rejected(ErrorKind::CircuitOpen)
            },
        ]
    );
}

#[tokio::test]
async fn the_registry_shows_the_counters() {
    let registry = Registry::new();
    let layer = FallbackLayer::value(String::from("fb"))
        .name("catalog-fallback")
        .registry(&registry)
        .build()
        .unwrap();
    layer.layer(ok_svc()).oneshot(1).await.unwrap();
    layer.layer(failing(open)).oneshot(1).await.unwrap();
    let snap = registry.snapshot();
    let entry = &snap["catalog-fallback"];
    assert_eq!(entry["kind"], "fallback");
    assert_eq!(entry["state"]["calls"], 2);
    assert_eq!(entry["state"]["primary"], 1);
    assert_eq!(entry["state"]["fallbacks_used"], 1);
    assert_eq!(entry["state"]["fallback_failures"], 0);
    // A second layer of the same name is refused.
    let dup = FallbackLayer::value(0u8)
        .name("catalog-fallback")
        .registry(&registry)
        .build();
    assert_eq!(dup.unwrap_err().field(), "name");
    assert!(FallbackLayer::value(0u8).name("").build().is_err());
}

#[tokio::test]
async fn counters_start_when_the_layer_is_observed() {
    // A value that is not a plain copy: futures reach the shared state, so
    // fallbacks are counted, but primary calls only once observed.
    let layer = FallbackLayer::value(String::from("fb")).build().unwrap();
    layer.layer(ok_svc()).oneshot(1).await.unwrap();
    layer.layer(failing(open)).oneshot(1).await.unwrap();
    let snap = layer.handle().snapshot();
    assert_eq!((snap.primary, snap.fallbacks_used), (0, 1));
    layer.layer(ok_svc()).oneshot(1).await.unwrap();
    assert_eq!(layer.handle().snapshot().primary, 1);

    // A plain value and a static name: until observed, a call carries its
    // own copies and counts nothing; once a handle is taken, everything.
    let layer = FallbackLayer::value(7u64).name("plain").build().unwrap();
    let svc = layer.layer(service_fn(|x: u64| async move {
        if x == 0 {
            Err::<u64, BoxError>(open())
        } else {
            Ok(x)
        }
    }));
    assert_eq!(svc.clone().oneshot(0).await.unwrap(), 7);
    let handle = layer.handle();
    assert_eq!(handle.snapshot().calls, 0);
    assert_eq!(svc.clone().oneshot(0).await.unwrap(), 7);
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), 2);
    assert_eq!(
        handle.snapshot(),
        FallbackSnapshot {
            calls: 2,
            primary: 1,
            fallbacks_used: 1,
            fallback_failures: 0
        }
    );
}

#[tokio::test]
async fn a_poll_ready_error_is_not_a_call_and_passes_through() {
    #[derive(Debug)]
    struct Broken;
    impl Service<u64> for Broken {
        type Response = String;
        type Error = BoxError;
        type Future = std::future::Ready<Result<String, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Err("broken".into()))
        }
        fn call(&mut self, _: u64) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let mut svc = FallbackLayer::value(String::new())
        .build()
        .unwrap()
        .layer(Broken);
    assert_eq!(svc.ready().await.unwrap_err().to_string(), "broken");
}

#[tokio::test]
async fn clones_share_the_layer_and_debug_says_so() {
    let layer = FallbackLayer::value(String::from("fb"))
        .name("c")
        .build()
        .unwrap();
    let svc = layer.layer(failing(open));
    let clone = svc.clone();
    clone.oneshot(1).await.unwrap();
    svc.oneshot(1).await.unwrap();
    assert_eq!(layer.handle().snapshot().fallbacks_used, 2);
    assert!(format!("{layer:?}").contains("\"c\""));
}
