//! The keyed limiter on a paused clock: the bound on keys, eviction that
//! never resets a limited key, missing keys, a global limit beside the
//! keys' and run-time rate changes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::error::{BoxError, KeyMissing};
use buttress_core::key::{FnKey, MissingKey};
use buttress_core::{RateLimited, Registry};
use buttress_rate_limit::{
    Algorithm, KeyedRateLimitHandle, KeyedRateLimitLayer, Rate, RateLimitEvent, RejectReason,
};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A request: its key (if any) and its cost.
type Req = (Option<u32>, u64);

type Key = FnKey<fn(&Req) -> Option<u32>, Req>;

fn key() -> Key {
    FnKey::new(|r: &Req| r.0)
}

#[derive(Clone, Default)]
struct Reasons(Arc<Mutex<Vec<RejectReason>>>);

impl Reasons {
    fn listener(&self) -> impl Fn(&RateLimitEvent) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |e: &RateLimitEvent| {
            if let RateLimitEvent::Rejected { reason, .. } = e {
                seen.lock().unwrap().push(*reason);
            }
        }
    }

    fn take(&self) -> Vec<RejectReason> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Counts admitted calls: the limiter does not, its `Permitted` events do.
#[derive(Clone, Default)]
struct Permits(Arc<AtomicU64>);

impl Permits {
    fn listener(&self) -> impl Fn(&RateLimitEvent) + Send + Sync + 'static {
        let permitted = self.0.clone();
        move |e: &RateLimitEvent| {
            if let RateLimitEvent::Permitted { .. } = e {
                permitted.fetch_add(1, Relaxed);
            }
        }
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

fn service<L>(
    layer: L,
) -> impl Service<
    Req,
    Response = u64,
    Error = BoxError,
    Future = impl Future<Output = Result<u64, BoxError>> + Send,
> + Clone
where
    L: tower::Layer<tower::util::ServiceFn<fn(Req) -> std::future::Ready<Result<u64, Infallible>>>>,
    L::Service: Service<Req, Response = u64, Error = BoxError> + Clone,
    <L::Service as Service<Req>>::Future: Send,
{
    let inner: fn(Req) -> std::future::Ready<Result<u64, Infallible>> =
        |r: Req| std::future::ready(Ok(r.1));
    ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(inner))
}

async fn call<S>(svc: &mut S, key: Option<u32>, cost: u64) -> Result<u64, BoxError>
where
    S: Service<Req, Response = u64, Error = BoxError>,
{
    svc.ready().await?.call((key, cost)).await
}

fn is_limited(res: &Result<u64, BoxError>) -> bool {
    matches!(res, Err(e) if e.downcast_ref::<RateLimited>().is_some())
}

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn max_keys_holds_with_rotating_keys_and_a_full_map_of_limited_keys_refuses_new_ones() {
    let reasons = Reasons::default();
    let layer = KeyedRateLimitLayer::builder(key(), Rate::per_minute(1))
        .max_keys(3)
        .idle_timeout(SEC)
        .on_event(reasons.listener())
        .build::<u32>()
        .unwrap();
    let handle = layer.handle();
    let mut svc = service(layer);
    // Ten keys at once: three fit, all limited, the others are refused.
    let admitted: Vec<bool> = {
        let mut v = Vec::new();
        for k in 0..10 {
            v.push(call(&mut svc, Some(k), 1).await.is_ok());
        }
        v
    };
    assert_eq!(admitted.iter().filter(|a| **a).count(), 3);
    assert_eq!(handle.keys(), 3);
    assert_eq!(handle.keys_full_rejections(), 7);
    assert_eq!(reasons.take(), [RejectReason::KeysFull; 7]);
    // Rotating keys, each back to full a minute later: the bound holds.
    for round in 0..5u32 {
        tokio::time::advance(Duration::from_secs(61)).await;
        for k in 0..3 {
            let key = 100 + round * 3 + k;
            assert!(call(&mut svc, Some(key), 1).await.is_ok(), "key {key}");
            assert!(handle.keys() <= 3);
        }
        assert!(call(&mut svc, Some(9999), 1).await.is_err());
        assert_eq!(handle.keys(), 3);
    }
    assert_eq!(handle.max_keys(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_limited_key_is_never_evicted_by_keys_rotating_through_a_full_map() {
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ] {
        let reasons = Reasons::default();
        // 10 per minute: one permit every 6 s; a window of a minute.
        let layer = KeyedRateLimitLayer::builder(key(), Rate::per_minute(10))
            .algorithm(algorithm)
            .max_keys(4)
            .idle_timeout(SEC)
            .cost(|r: &Req| r.1)
            .on_event(reasons.listener())
            .build::<u32>()
            .unwrap();
        let handle = layer.handle();
        let mut svc = service(layer);
        let start = tokio::time::Instant::now();
        // The victim takes everything at once and goes idle.
        call(&mut svc, Some(1), 10).await.unwrap();
        // Others rotate through the map: each takes one permit, refills
        // (GCRA, bucket) or slides out (log) before it is evicted.
        let mut rotated = 0;
        while start.elapsed() < Duration::from_secs(50) {
            tokio::time::advance(Duration::from_secs(7)).await;
            let res = call(&mut svc, Some(100 + rotated), 1).await;
            if algorithm == Algorithm::Gcra || algorithm == Algorithm::TokenBucket {
                assert!(res.is_ok(), "{algorithm}: key {rotated}");
            }
            rotated += 1;
            assert!(handle.keys() <= 4);
        }
        // Still limited: its state was kept.
        let res = call(&mut svc, Some(1), 10).await;
        assert!(is_limited(&res), "{algorithm}: the victim was reset");
        assert!(handle.key(&1).available < 10, "{algorithm}");
        let _ = reasons.take();
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_key_is_rejected_by_default() {
    let layer = KeyedRateLimitLayer::builder(key(), Rate::per_minute(1))
        .name("per-client")
        .build::<u32>()
        .unwrap();
    let handle = layer.handle();
    let mut svc = service(layer);
    for _ in 0..3 {
        let err = call(&mut svc, None, 1).await.unwrap_err();
        let missing = err.downcast_ref::<KeyMissing>().expect("KeyMissing");
        assert_eq!(missing.name(), "per-client");
    }
    assert_eq!(handle.missing_key(), 3);
    assert_eq!(handle.keys(), 0);
    assert!(call(&mut svc, Some(1), 1).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_shared_bucket_gives_keyless_requests_one_limit() {
    let layer = KeyedRateLimitLayer::builder(key(), Rate::per_minute(2))
        .on_missing_key(MissingKey::SharedBucket)
        .build::<u32>()
        .unwrap();
    let handle = layer.handle();
    let mut svc = service(layer);
    assert!(call(&mut svc, None, 1).await.is_ok());
    assert!(call(&mut svc, None, 1).await.is_ok());
    let res = call(&mut svc, None, 1).await;
    assert!(is_limited(&res));
    assert_eq!(handle.unkeyed().available, 0);
    // Keys are not touched by it, and it takes no key's place.
    assert!(call(&mut svc, Some(7), 1).await.is_ok());
    assert_eq!(handle.keys(), 1);
    assert_eq!(handle.key(&7).available, 1);
    assert_eq!(handle.missing_key(), 3);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(call(&mut svc, None, 1).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn set_rate_applies_to_every_key_at_its_next_decision() {
    let layer = KeyedRateLimitLayer::builder(key(), Rate::per_second(1))
        .burst(1)
        .build::<u32>()
        .unwrap();
    let handle: KeyedRateLimitHandle<u32> = layer.handle();
    let mut svc = service(layer);
    assert!(call(&mut svc, Some(1), 1).await.is_ok());
    assert!(call(&mut svc, Some(1), 1).await.is_err());
    handle.set_rate(Rate::per_second(10), Some(3)).unwrap();
    // A new key: the new burst.
    for _ in 0..3 {
        assert!(call(&mut svc, Some(2), 1).await.is_ok());
    }
    let err = call(&mut svc, Some(2), 1).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.retry_after(), Some(Duration::from_millis(100)));
    assert_eq!(limited.quota().unwrap().limit(), 10);
    // An old key: its debt (1 s) is kept in time, the new burst (300 ms)
    // applies from now.
    let err = call(&mut svc, Some(1), 1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        Some(Duration::from_millis(800))
    );
    assert_eq!(handle.key(&2).rate, Rate::per_second(10));
    assert_eq!(
        handle
            .set_rate(Rate::per_second(1), Some(0))
            .unwrap_err()
            .field(),
        "burst"
    );
}

#[tokio::test(start_paused = true)]
async fn a_global_refusal_leaves_the_key_untouched() {
    for algorithm in [Algorithm::Gcra, Algorithm::TokenBucket] {
        let layer = KeyedRateLimitLayer::builder(key(), Rate::per_minute(2))
            .algorithm(algorithm)
            .global(Rate::per_minute(3), None)
            .build::<u32>()
            .unwrap();
        let handle = layer.handle();
        let mut svc = service(layer);
        assert!(call(&mut svc, Some(1), 1).await.is_ok());
        assert!(call(&mut svc, Some(1), 1).await.is_ok());
        assert!(call(&mut svc, Some(2), 1).await.is_ok());
        // The global limit (3) is spent; key 2 has one left.
        let res = call(&mut svc, Some(2), 1).await;
        assert!(is_limited(&res), "{algorithm}");
        assert_eq!(
            handle.key(&2).available,
            1,
            "{algorithm}: key 2 was charged"
        );
        let res = call(&mut svc, Some(3), 1).await;
        assert!(is_limited(&res));
        assert_eq!(
            handle.key(&3).available,
            2,
            "{algorithm}: key 3 was charged"
        );
        // Key 1 is refused by its own limit before the global one is asked.
        assert!(call(&mut svc, Some(1), 1).await.is_err());
        // One global permit back after 20 s: key 2 still has its own.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(call(&mut svc, Some(2), 1).await.is_ok(), "{algorithm}");
        assert_eq!(handle.key(&2).available, 0);
        let global = handle.global().unwrap().snapshot();
        assert_eq!(global.available, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn the_keyed_registry_entry_is_exact() {
    let registry = Registry::new();
    let permits = Permits::default();
    let layer = KeyedRateLimitLayer::builder(key(), Rate::per_minute(2))
        .name("per-client")
        .max_keys(10)
        .registry(&registry)
        .on_event(permits.listener())
        .build::<u32>()
        .unwrap();
    let mut svc = service(layer);
    let mut admitted = 0;
    for k in [1, 1, 1, 2] {
        admitted += u64::from(call(&mut svc, Some(k), 1).await.is_ok());
    }
    assert!(call(&mut svc, None, 1).await.is_err());
    assert_eq!((admitted, permits.get()), (3, 3));
    assert_eq!(
        registry.snapshot(),
        serde_json::json!({
            "per-client": {
                "kind": "keyed_rate_limit",
                "state": {
                    "algorithm": "gcra",
                    "rate_per_key": "2/1m",
                    "burst_per_key": 2,
                    "keys": 2,
                    "max_keys": 10,
                    "waiting": 0,
                    "rejected": 1,
                    "rejected_keys_full": 0,
                    "missing_key": 1,
                    "on_missing_key": "reject",
                    "backend": "local",
                    "global": null,
                }
            }
        })
    );
    let handle: KeyedRateLimitHandle<u32> = registry.get("per-client").unwrap();
    let s = handle.snapshot();
    assert_eq!((s.keys, s.rejected, s.missing_key), (2, 1, 1));
    assert_eq!(handle.rejected(), 1);
}

#[tokio::test(start_paused = true)]
async fn keys_wait_in_their_own_queue() {
    let layer = KeyedRateLimitLayer::builder(key(), Rate::per_second(1))
        .burst(1)
        .max_wait(Duration::from_secs(5))
        .max_queue(10)
        .build::<u32>()
        .unwrap();
    let handle = layer.handle();
    let mut svc = service(layer);
    let start = tokio::time::Instant::now();
    call(&mut svc, Some(1), 1).await.unwrap();
    let mut other = svc.clone();
    let waiter = tokio::spawn(async move { call(&mut other, Some(1), 1).await });
    tokio::task::yield_now().await;
    assert_eq!(handle.waiting(), 1);
    // Another key is not held up by key 1's waiter.
    call(&mut svc, Some(2), 1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    waiter.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), SEC);
}

#[tokio::test(start_paused = true)]
async fn the_global_limit_counts_its_calls() {
    let permits = Permits::default();
    let layer = KeyedRateLimitLayer::builder(key(), Rate::per_minute(2))
        .global(Rate::per_minute(3), None)
        .on_event(permits.listener())
        .build::<u32>()
        .unwrap();
    let handle = layer.handle();
    let mut svc = service(layer);
    let mut admitted = Vec::new();
    for k in [1, 1, 2, 2, 3] {
        admitted.push(call(&mut svc, Some(k), 1).await.is_ok());
    }
    // The second call of key 2 and the one of key 3 find the global limit
    // spent.
    assert_eq!(admitted, [true, true, true, false, false]);
    assert_eq!(permits.get(), 3);
    let global = handle.global().unwrap().snapshot();
    assert_eq!(handle.rejected(), 2);
    assert_eq!((global.available, global.rejected), (0, 2));
}
