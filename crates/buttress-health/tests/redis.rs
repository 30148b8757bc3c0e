//! `RedisCheck` against a real redis-server on 127.0.0.1: healthy while it
//! runs, unhealthy once killed, healthy again after a restart.

use std::time::Duration;

use buttress_health::{Check, HealthRegistry, RedisCheck, Status};
use buttress_test_support::redis_server::Server;

/// Probes until a check's status changes (each probe past the interval
/// starts a run in the background), at most 200 probes of 25 ms. The
/// subscription is taken after the previous status was read, so the
/// change it sees is a later one.
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
async fn redis_reachability_follows_the_server_down_and_up() {
    let mut server = Server::start();
    let registry = HealthRegistry::builder()
        .check(
            Check::new("redis", RedisCheck::new(&server.url()).unwrap())
                .timeout(Duration::from_secs(2))
                .interval(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    let r = registry.readiness().await;
    assert_eq!(r.status, Status::Healthy, "{:?}", r.checks);

    server.kill();
    let r = next_change(&registry).await;
    assert_eq!(r.status, Status::Unhealthy);
    assert_eq!(r.http_status(), 503);
    let msg = r.check("redis").unwrap().message.clone().unwrap();
    assert!(msg.starts_with("cannot connect to redis"), "{msg}");

    server.restart();
    let r = next_change(&registry).await;
    assert_eq!(r.status, Status::Healthy, "{:?}", r.checks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_is_cut_at_the_timeout() {
    let server = Server::start();
    let registry = HealthRegistry::builder()
        .check(
            Check::new("redis", RedisCheck::new(&server.url()).unwrap())
                .timeout(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    server.signal("-STOP");
    let r = registry.readiness().await;
    server.signal("-CONT");
    let c = r.check("redis").unwrap();
    assert_eq!(c.status, Status::Unhealthy);
    assert_eq!(c.message.as_deref(), Some("timed out after 200ms"));
}
