//! The endpoints over real servers on 127.0.0.1: a hyper server and an
//! axum router, status codes and the JSON shape, and readiness following a
//! real circuit breaker registered in a core `Registry`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use buttress_circuit_breaker::{CircuitBreakerLayer, State};
use buttress_core::Registry;
use buttress_health::{BreakersCheck, Check, CheckResult, HealthRegistry, HealthService, Status};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt};

/// One request on a fresh connection: status, content type, body.
async fn request(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, String, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.expect("response");
    let status = res.status();
    let ctype = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    if ctype == "application/json" {
        // A probe's answer is never cached by a proxy on the way.
        assert_eq!(res.headers()[http::header::CACHE_CONTROL], "no-store");
    }
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, ctype, body)
}

async fn get_json(addr: SocketAddr, path: &str) -> (StatusCode, serde_json::Value) {
    let (status, ctype, body) = request(addr, Method::GET, path).await;
    assert_eq!(ctype, "application/json");
    (status, serde_json::from_slice(&body).expect("json"))
}

async fn serve_hyper(service: HealthService) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn serve_axum(registry: &HealthRegistry) -> SocketAddr {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "app" }))
        .nest_service("/health", registry.service());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn keys(v: &serde_json::Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[tokio::test(start_paused = true)]
async fn hyper_server_answers_live_and_ready_with_codes_and_the_documented_json() {
    let registry = HealthRegistry::builder()
        .check(Check::new("event-loop", || async { Status::Healthy }).liveness())
        .check(Check::new("network", || async { Status::Healthy }))
        .check(
            Check::new("db", || async {
                CheckResult::unhealthy("connection refused").with_detail("host", "db:5432")
            })
            .depends_on("network"),
        )
        .build()
        .unwrap();
    let addr = serve_hyper(registry.service()).await;

    let (status, live) = get_json(addr, "/health/live").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(live["status"], "healthy");
    assert_eq!(live["probe"], "liveness");
    assert_eq!(live["checks"].as_array().unwrap().len(), 1);

    let (status, ready) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        keys(&ready),
        BTreeSet::from([
            "status",
            "probe",
            "shutting_down",
            "started",
            "checks",
            "circuit_breakers",
            "bulkheads",
            "rate_limiters",
            "issues"
        ])
    );
    assert_eq!(ready["status"], "unhealthy");
    assert_eq!(ready["probe"], "readiness");
    assert_eq!(ready["shutting_down"], false);
    let checks = ready["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["event-loop", "network", "db"]);
    let db = &checks[2];
    assert_eq!(
        keys(db),
        BTreeSet::from([
            "name",
            "status",
            "critical",
            "message",
            "details",
            "duration_ms",
            "attempts",
            "skipped",
            "depends_on",
            "age_ms",
            "since_change_ms",
            "checked_at",
            "last_change"
        ])
    );
    assert_eq!(db["status"], "unhealthy");
    assert_eq!(db["critical"], true);
    assert_eq!(db["message"], "connection refused");
    assert_eq!(db["details"], serde_json::json!({ "host": "db:5432" }));
    assert_eq!(db["attempts"], 1);
    assert_eq!(db["skipped"], false);
    assert_eq!(db["depends_on"], serde_json::json!(["network"]));
    assert!(db["checked_at"].as_str().unwrap().ends_with('Z'));
    assert!(db["duration_ms"].is_number() && db["age_ms"].is_number());
    assert_eq!(
        ready["circuit_breakers"],
        serde_json::json!({ "total": 0, "by_state": {} })
    );
    assert_eq!(
        ready["issues"],
        serde_json::json!(["check `db` is unhealthy: connection refused"])
    );

    let (status, _, body) = request(addr, Method::HEAD, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.is_empty());
    let (status, _, _) = request(addr, Method::GET, "/health/other").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = request(addr, Method::POST, "/health/ready").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    registry.shutdown_handle().shut_down();
    let (status, ready) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["shutting_down"], true);
    let (status, _) = get_json(addr, "/health/live").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn axum_readiness_flips_to_503_when_a_critical_breaker_opens_and_back_when_it_closes() {
    let components = Registry::new();
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .consecutive_failures(2)
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(1)
        .registry(&components)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let upstream = ServiceBuilder::new()
        .layer(breaker)
        .service_fn(|ok: bool| async move {
            if ok {
                Ok(())
            } else {
                Err("upstream down")
            }
        });
    let interval = Duration::from_secs(1);
    let registry = HealthRegistry::builder()
        .components(&components)
        .check(
            Check::new(
                "breakers",
                BreakersCheck::new(&components).critical(["payments"]),
            )
            .interval(interval),
        )
        .check(Check::new("event-loop", || async { Status::Healthy }).liveness())
        .build()
        .unwrap();
    let addr = serve_axum(&registry).await;

    let (status, ready) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ready["circuit_breakers"],
        serde_json::json!({ "total": 1, "by_state": { "closed": 1 } })
    );

    for _ in 0..2 {
        let _ = upstream.clone().oneshot(false).await;
    }
    assert_eq!(handle.state(), State::Open);

    // Within the interval: the cached answer.
    let (status, _) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::advance(interval).await;
    // Stale: still the cached answer, and a run in the background.
    let (status, _) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    let (status, ready) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["status"], "unhealthy");
    assert_eq!(
        ready["circuit_breakers"],
        serde_json::json!({ "total": 1, "by_state": { "open": 1 } })
    );
    assert_eq!(
        ready["issues"],
        serde_json::json!([
            "check `breakers` is unhealthy: critical circuit breaker(s) open: payments",
            "circuit breaker `payments` is open"
        ])
    );
    assert_eq!(
        ready["checks"][0]["details"]["open"],
        serde_json::json!(["payments"])
    );
    // Liveness does not care.
    let (status, _) = get_json(addr, "/health/live").await;
    assert_eq!(status, StatusCode::OK);

    // The open wait passes, a probe call succeeds: closed again.
    tokio::time::advance(Duration::from_secs(10)).await;
    upstream.clone().oneshot(true).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    let _ = get_json(addr, "/health/ready").await; // stale: refresh starts
    let (status, ready) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "healthy");
    assert_eq!(
        ready["circuit_breakers"],
        serde_json::json!({ "total": 1, "by_state": { "closed": 1 } })
    );
}

#[tokio::test(start_paused = true)]
async fn a_non_critical_open_breaker_degrades_readiness_but_keeps_it_200() {
    let components = Registry::new();
    let breaker = CircuitBreakerLayer::builder()
        .name("recommendations")
        .registry(&components)
        .build()
        .unwrap();
    breaker.handle().force_open();
    let registry = HealthRegistry::builder()
        .components(&components)
        .check(Check::new(
            "breakers",
            BreakersCheck::new(&components).critical(["payments"]),
        ))
        .build()
        .unwrap();
    let addr = serve_axum(&registry).await;
    let (status, ready) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "degraded");
    assert_eq!(
        ready["circuit_breakers"],
        serde_json::json!({ "total": 1, "by_state": { "forced_open": 1 } })
    );
}

#[tokio::test(start_paused = true)]
async fn startup_route_is_503_until_started_then_200_with_the_documented_json() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;

    let up = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU32::new(0));
    let (flag, count) = (up.clone(), runs.clone());
    let registry = HealthRegistry::builder()
        .check(
            Check::new("db", move || {
                count.fetch_add(1, Ordering::SeqCst);
                let up = flag.load(Ordering::SeqCst);
                async move {
                    if up {
                        CheckResult::healthy()
                    } else {
                        CheckResult::unhealthy("connection refused")
                    }
                }
            })
            .startup()
            .interval(Duration::from_secs(1)),
        )
        .manual_startup()
        .build()
        .unwrap();
    let startup = registry.startup_handle();
    let addr = serve_hyper(registry.service()).await;

    let (status, body) = get_json(addr, "/health/startup").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        keys(&body),
        BTreeSet::from([
            "status",
            "probe",
            "shutting_down",
            "started",
            "checks",
            "circuit_breakers",
            "bulkheads",
            "rate_limiters",
            "issues"
        ])
    );
    assert_eq!(body["probe"], "startup");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["started"], false);
    assert_eq!(body["checks"][0]["name"], "db");
    assert_eq!(body["checks"][0]["status"], "unhealthy");
    let issues: Vec<&str> = body["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert_eq!(
        issues,
        [
            "check `db` is unhealthy: connection refused",
            "startup not done: waiting for `StartupHandle::done`"
        ]
    );

    // The check passes; the gate is still closed.
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    get_json(addr, "/health/startup").await; // starts a run in the background
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (status, body) = get_json(addr, "/health/startup").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"][0]["status"], "healthy");
    assert_eq!(body["started"], false);

    startup.done();
    let (status, body) = get_json(addr, "/health/startup").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["probe"], "startup");
    assert_eq!(body["started"], true);
    assert_eq!(body["checks"], serde_json::json!([]));
    assert_eq!(body["issues"], serde_json::json!([]));

    // A later failure: readiness says so, startup stays 200 and runs nothing.
    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    get_json(addr, "/health/ready").await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (status, ready) = get_json(addr, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["started"], true);
    let before = runs.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, _) = get_json(addr, "/health/startup").await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(runs.load(Ordering::SeqCst), before);

    // The same conventions as the other routes.
    let (status, _, body) = request(addr, Method::HEAD, "/health/startup").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    let (status, ctype, _) = request(addr, Method::POST, "/health/startup").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(ctype.starts_with("text/plain"));
    let (status, _, _) = request(addr, Method::GET, "/health/starting").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn axum_serves_startup_next_to_live_and_ready() {
    let registry = HealthRegistry::builder()
        .check(Check::new("db", || async { Status::Healthy }))
        .build()
        .unwrap();
    let addr = serve_axum(&registry).await;
    let (status, body) = get_json(addr, "/health/startup").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["probe"], "startup");
    assert_eq!(body["started"], true);
}
