//! `PostgresCheck` against a real PostgreSQL on 127.0.0.1 (the test
//! command's server, `BUTTRESS_POSTGRES_URL`, or one started for this test
//! binary): healthy on a live database, unhealthy once the database is
//! gone, and on a port where nothing listens.

use std::time::Duration;

use buttress_health::{Check, HealthRegistry, PostgresCheck, Status};
use buttress_test_support::postgres;

/// Probes until a check's status changes (each probe past the interval
/// starts a run in the background), at most 200 probes of 25 ms.
async fn next_change(registry: &HealthRegistry) -> buttress_health::HealthReport {
    let mut changed = registry.subscribe();
    changed.borrow_and_update();
    for _ in 0..200 {
        registry.readiness().await;
        if tokio::time::timeout(Duration::from_millis(25), changed.changed())
            .await
            .is_ok()
        {
            return registry.readiness().await;
        }
    }
    panic!("no status change within 200 probes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reachability_is_healthy_then_unhealthy_once_the_database_is_gone() {
    let db = postgres::database();
    let registry = HealthRegistry::builder()
        .check(
            Check::new("postgres", PostgresCheck::new(db.url()).unwrap())
                .timeout(Duration::from_secs(5))
                .interval(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    let r = registry.readiness().await;
    assert_eq!(r.status, Status::Healthy, "{:?}", r.checks);

    drop(db); // DROP DATABASE ... WITH (FORCE)
    let r = next_change(&registry).await;
    assert_eq!(r.status, Status::Unhealthy);
    assert_eq!(r.http_status(), 503);
    let msg = r.check("postgres").unwrap().message.clone().unwrap();
    assert!(msg.starts_with("cannot connect to postgres"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_where_nothing_listens_is_unhealthy() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let registry = HealthRegistry::builder()
        .check(
            Check::new("postgres", PostgresCheck::new(&url).unwrap())
                .timeout(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    let r = registry.readiness().await;
    let c = r.check("postgres").unwrap();
    assert_eq!(c.status, Status::Unhealthy);
    assert!(
        c.message
            .as_deref()
            .unwrap()
            .starts_with("cannot connect to postgres"),
        "{:?}",
        c.message
    );
}
