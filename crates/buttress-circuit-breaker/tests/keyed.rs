//! Keyed breakers: one breaker per key in a bounded map.

use std::time::Duration;

use buttress_circuit_breaker::error::CircuitOpen;
use buttress_circuit_breaker::{
    CircuitBreakerConfig, KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer, MissingKey, State,
};
use buttress_core::error::KeyMissing;
use buttress_core::key::FnKey;
use buttress_core::Registry;
use tokio::time;
use tower::{service_fn, Layer, ServiceExt};

/// (key, fail?)
type Req = (Option<&'static str>, bool);

fn key_of(r: &Req) -> Option<&'static str> {
    r.0
}

type ByKey = KeyedCircuitBreakerLayer<FnKey<fn(&Req) -> Option<&'static str>, Req>, &'static str>;

fn layer(max_keys: usize) -> ByKey {
    KeyedCircuitBreakerLayer::builder(FnKey::new(key_of as fn(&Req) -> Option<&'static str>))
        .name("upstreams")
        .config(CircuitBreakerConfig {
            window_size: 2,
            minimum_calls: 2,
            wait_in_open: Duration::from_secs(30),
            ..CircuitBreakerConfig::default()
        })
        .max_keys(max_keys)
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn call(
    l: &ByKey,
    key: Option<&'static str>,
    fail: bool,
) -> Result<(), buttress_core::BoxError> {
    let svc = l.layer(service_fn(|(_, fail): Req| async move {
        if fail {
            Err("down")
        } else {
            Ok(())
        }
    }));
    svc.oneshot((key, fail)).await
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_breaker() {
    let l = layer(100);
    call(&l, Some("a"), true).await.unwrap_err();
    call(&l, Some("a"), true).await.unwrap_err();
    let h: KeyedCircuitBreakerHandle<&'static str> = l.handle();
    assert_eq!(h.key(&"a").unwrap().state(), State::Open);
    let err = call(&l, Some("a"), false).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(open.name(), "upstreams[\"a\"]");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
    // Another upstream is not affected.
    call(&l, Some("b"), false).await.unwrap();
    assert_eq!(h.key(&"b").unwrap().state(), State::Closed);
    assert_eq!(h.keys(), 2);
    assert_eq!(h.states()[&State::Open], 1);
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_are_rejected_with_key_missing_and_counted() {
    let l = layer(100);
    for _ in 0..3 {
        let err = call(&l, None, false).await.unwrap_err();
        let missing = err.downcast_ref::<KeyMissing>().expect("KeyMissing");
        assert_eq!(missing.name(), "upstreams");
    }
    let h = l.handle();
    assert_eq!(h.on_missing_key(), MissingKey::Reject);
    assert_eq!(h.missing_key(), 3);
    assert_eq!(h.keys(), 0);
    // The inner service was never called: the shared breaker saw nothing.
    assert_eq!(h.unkeyed().snapshot().buffered_calls, 0);
    let json = buttress_core::Component::snapshot(&h);
    assert_eq!(json["missing_key"], 3);
    assert_eq!(json["on_missing_key"], "reject");
    call(&l, Some("a"), false).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shared_bucket_policy_sends_requests_without_a_key_through_one_breaker() {
    let l: ByKey =
        KeyedCircuitBreakerLayer::builder(FnKey::new(key_of as fn(&Req) -> Option<&'static str>))
            .name("upstreams")
            .config(CircuitBreakerConfig {
                window_size: 2,
                minimum_calls: 2,
                ..CircuitBreakerConfig::default()
            })
            .on_missing_key(MissingKey::SharedBucket)
            .build()
            .unwrap();
    call(&l, None, true).await.unwrap_err();
    call(&l, None, true).await.unwrap_err();
    assert_eq!(l.handle().unkeyed().state(), State::Open);
    assert_eq!(l.handle().keys(), 0);
    assert_eq!(l.handle().missing_key(), 2);
    call(&l, Some("a"), false).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_map_is_bounded_and_never_forgets_an_open_breaker() {
    let l = layer(1);
    let h = l.handle();
    call(&l, Some("a"), false).await.unwrap();
    // `a` is closed but not idle yet: `b` falls back to the shared breaker.
    call(&l, Some("b"), false).await.unwrap();
    assert_eq!(h.keys(), 1);
    assert!(h.key(&"b").is_none());
    // Idle long enough: `a` makes room for `b`.
    time::advance(Duration::from_secs(60)).await;
    call(&l, Some("b"), true).await.unwrap_err();
    call(&l, Some("b"), true).await.unwrap_err();
    assert!(h.key(&"a").is_none());
    assert_eq!(h.key(&"b").unwrap().state(), State::Open);
    // An open breaker is kept however long it idles.
    time::advance(Duration::from_secs(3_600)).await;
    call(&l, Some("c"), false).await.unwrap();
    assert_eq!(h.key(&"b").unwrap().state(), State::Open);
    assert!(h.key(&"c").is_none());
}

#[test]
fn keyed_registry_and_config_errors() {
    let registry = Registry::new();
    let _l: KeyedCircuitBreakerLayer<_, &'static str> =
        KeyedCircuitBreakerLayer::builder(FnKey::<_, Req>::new(
            key_of as fn(&Req) -> Option<&'static str>,
        ))
        .name("per-host")
        .registry(&registry)
        .build()
        .unwrap();
    let snap = registry.snapshot();
    assert_eq!(snap["per-host"]["kind"], "keyed_circuit_breaker");
    assert_eq!(snap["per-host"]["state"]["keys"], 0);
    assert_eq!(snap["per-host"]["state"]["unkeyed"], "closed");
    let err = KeyedCircuitBreakerLayer::builder(FnKey::<_, Req>::new(
        key_of as fn(&Req) -> Option<&'static str>,
    ))
    .max_keys(0)
    .build::<&'static str>()
    .unwrap_err();
    assert_eq!(err.field(), "max_keys");
}
