//! The checks over the core `Registry`, fed by real instances: bulkhead
//! utilisation, rate limiter saturation, breakers by criticality, and the
//! report's summary of them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use buttress_bulkhead::BulkheadLayer;
use buttress_circuit_breaker::CircuitBreakerLayer;
use buttress_core::Registry;
use buttress_health::{
    BreakersCheck, BulkheadsCheck, Check, HealthRegistry, RateLimitersCheck, Status,
};
use buttress_rate_limit::{Rate, RateLimitLayer};
use tokio::sync::Semaphore;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_bulkhead_over_the_utilisation_threshold_degrades_readiness() {
    let components = Registry::new();
    let bulkhead = BulkheadLayer::builder()
        .name("db-pool")
        .max_concurrent(4)
        .registry(&components)
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let svc = ServiceBuilder::new()
        .layer(bulkhead)
        .service_fn(move |_: ()| {
            let g = g.clone();
            async move {
                let _ = g.acquire().await;
                Ok::<_, Infallible>(())
            }
        });
    let interval = Duration::from_secs(1);
    let registry = HealthRegistry::builder()
        .components(&components)
        .check(
            Check::new("bulkheads", BulkheadsCheck::new(&components, 0.75).unwrap())
                .interval(interval),
        )
        .build()
        .unwrap();
    let r = registry.readiness().await;
    assert_eq!(r.status, Status::Healthy);
    assert_eq!(r.summary.bulkheads[0].utilization, 0.0);

    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut s = svc.clone();
        s.ready().await.unwrap();
        calls.push(tokio::spawn(s.call(())));
    }
    tokio::task::yield_now().await;
    tokio::time::advance(interval).await;
    registry.readiness().await;
    tokio::task::yield_now().await;
    let r = registry.readiness().await;
    assert_eq!(r.status, Status::Degraded);
    let c = r.check("bulkheads").unwrap();
    assert_eq!(
        c.message.as_deref(),
        Some("bulkhead(s) at or over 75% utilisation: db-pool")
    );
    assert_eq!(c.details["over_threshold"][0]["utilization"], 0.75);
    let b = &r.summary.bulkheads[0];
    assert_eq!(
        (b.name.as_str(), b.active, b.max_concurrent),
        ("db-pool", 3, 4)
    );
    assert_eq!(r.to_json()["bulkheads"][0]["utilization"], 0.75);

    gate.add_permits(3);
    for c in calls {
        c.await.unwrap().unwrap();
    }
    tokio::time::advance(interval).await;
    registry.readiness().await;
    tokio::task::yield_now().await;
    assert_eq!(registry.readiness().await.status, Status::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_saturated_rate_limiter_degrades_readiness() {
    let components = Registry::new();
    let limiter = RateLimitLayer::builder(Rate::per_second(1))
        .name("api")
        .burst(4)
        .registry(&components)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(limiter)
        .service_fn(|_: ()| async { Ok::<_, Infallible>(()) });
    let registry = HealthRegistry::builder()
        .components(&components)
        .check(Check::new(
            "rate-limiters",
            RateLimitersCheck::new(&components, 0.9).unwrap(),
        ))
        .build()
        .unwrap();
    assert_eq!(registry.readiness().await.status, Status::Healthy);

    for _ in 0..4 {
        svc.clone().oneshot(()).await.unwrap();
    }
    let fresh = HealthRegistry::builder()
        .components(&components)
        .check(Check::new(
            "rate-limiters",
            RateLimitersCheck::new(&components, 0.9).unwrap(),
        ))
        .build()
        .unwrap();
    let r = fresh.readiness().await;
    assert_eq!(r.status, Status::Degraded);
    let l = &r.summary.rate_limiters[0];
    assert_eq!((l.name.as_str(), l.burst, l.available), ("api", 4, 0));
    assert_eq!(l.saturation, 1.0);
    assert_eq!(
        r.check("rate-limiters").unwrap().message.as_deref(),
        Some("rate limiter(s) at or over 90% saturation: api")
    );
}

#[tokio::test(start_paused = true)]
async fn breakers_check_is_unhealthy_for_critical_breakers_and_degraded_for_others() {
    let components = Registry::new();
    let make = |name: &str| {
        CircuitBreakerLayer::builder()
            .name(name)
            .registry(&components)
            .build()
            .unwrap()
            .handle()
    };
    let payments = make("payments");
    let search = make("search");
    let check = BreakersCheck::new(&components).critical(["payments"]);
    let report = |check: BreakersCheck| {
        let components = components.clone();
        async move {
            HealthRegistry::builder()
                .components(&components)
                .check(Check::new("breakers", check))
                .build()
                .unwrap()
                .readiness()
                .await
        }
    };
    assert_eq!(report(check.clone()).await.status, Status::Healthy);

    search.force_open();
    let r = report(check.clone()).await;
    assert_eq!(r.status, Status::Degraded);
    assert_eq!(
        r.check("breakers").unwrap().message.as_deref(),
        Some("circuit breaker(s) open: search")
    );

    payments.force_open();
    let r = report(check.clone()).await;
    assert_eq!(r.status, Status::Unhealthy);
    assert_eq!(
        r.check("breakers").unwrap().details["open"],
        serde_json::json!(["payments", "search"])
    );
    assert_eq!(r.summary.circuit_breakers.total, 2);
    assert_eq!(r.summary.circuit_breakers.by_state["forced_open"], 2);

    // Every breaker critical.
    payments.force_closed();
    let r = report(BreakersCheck::new(&components).all_critical()).await;
    assert_eq!(r.status, Status::Unhealthy);
}

#[test]
fn thresholds_outside_zero_to_one_are_refused_with_the_field_named() {
    let components = Registry::new();
    for bad in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
        let e = BulkheadsCheck::new(&components, bad).unwrap_err();
        assert_eq!(e.field(), "utilization_threshold");
        let e = RateLimitersCheck::new(&components, bad).unwrap_err();
        assert_eq!(e.field(), "saturation_threshold");
    }
    assert!(BulkheadsCheck::new(&components, 1.0).is_ok());
}
