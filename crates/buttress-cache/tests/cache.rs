//! The keyed cache: hits, misses and expiry on a paused clock,
//! single-flight, stale answers, the handle.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_cache::error::SharedError;
use buttress_cache::{CacheEvent, CacheLayer, CacheStatus, Invalidation, NotStored, StaleReason};
use buttress_core::{BoxError, CircuitOpen, Registry};
use tokio::sync::Notify;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A service answering `"v{n}:{key}"`, `n` the number of calls so far.
fn counting() -> (
    Arc<AtomicUsize>,
    impl Service<
            u32,
            Response = String,
            Error = Infallible,
            Future = impl std::future::Future<Output = Result<String, Infallible>> + Send,
        > + Clone
        + Send
        + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = service_fn(move |key: u32| {
        let n = c.fetch_add(1, SeqCst) + 1;
        async move { Ok::<_, Infallible>(format!("v{n}:{key}")) }
    });
    (calls, svc)
}

#[tokio::test(start_paused = true)]
async fn hit_miss_and_expiry_follow_the_paused_clock() {
    let (calls, inner) = counting();
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "v1:1");
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "v1:1");
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), "v2:2");
    tokio::time::advance(Duration::from_millis(1)).await;
    // Exactly at its ttl, key 1 is expired: a new call.
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "v3:1");
    assert_eq!(calls.load(SeqCst), 3);
    let s = layer.handle().snapshot();
    assert_eq!(
        (s.hits, s.misses, s.coalesced, s.stale, s.stored),
        (1, 3, 0, 0, 3)
    );
    assert_eq!(s.entries, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_key_passes_through() {
    let (calls, inner) = counting();
    let layer = CacheLayer::builder(|k: &u32| (*k != 0).then_some(*k))
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    svc.clone().oneshot(0).await.unwrap();
    svc.oneshot(0).await.unwrap();
    assert_eq!(calls.load(SeqCst), 2);
    let s = layer.handle().snapshot();
    assert_eq!((s.hits, s.misses, s.entries), (0, 0, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_misses_make_one_inner_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let (c, g) = (calls.clone(), gate.clone());
    let inner = service_fn(move |key: u32| {
        let (c, g) = (c.clone(), g.clone());
        async move {
            c.fetch_add(1, SeqCst);
            g.notified().await;
            Ok::<_, Infallible>(format!("value {key}"))
        }
    });
    let layer = CacheLayer::builder(|k: &u32| Some(*k)).build().unwrap();
    let svc = layer.layer(inner);
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(svc.clone().oneshot(7)))
        .collect();
    // Every call has joined: one leader, 99 waiters.
    let handle = layer.handle();
    while {
        let s = handle.snapshot();
        s.misses + s.coalesced < 100
    } {
        tokio::task::yield_now().await;
    }
    gate.notify_waiters();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "value 7");
    }
    assert_eq!(calls.load(SeqCst), 1);
    let s = handle.snapshot();
    assert_eq!(
        (s.misses, s.coalesced, s.hits, s.stored, s.in_flight),
        (1, 99, 0, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_leader_hands_the_call_to_a_waiter() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |key: u32| {
        let n = c.fetch_add(1, SeqCst) + 1;
        async move {
            if n == 1 {
                // The first call never ends by itself.
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(format!("v{n}:{key}"))
        }
    });
    let layer = CacheLayer::builder(|k: &u32| Some(*k)).build().unwrap();
    let svc = layer.layer(inner);
    let leader = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let waiter = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    assert_eq!(layer.handle().snapshot().coalesced, 1);
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    // The waiter takes over: it calls the inner service itself.
    assert_eq!(waiter.await.unwrap().unwrap(), "v2:1");
    assert_eq!(calls.load(SeqCst), 2);
    // And stored the answer.
    assert_eq!(svc.oneshot(1).await.unwrap(), "v2:1");
    assert_eq!(layer.handle().snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn an_error_is_shared_with_the_waiters_and_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |_: u32| {
        let n = c.fetch_add(1, SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if n == 1 {
                Err::<String, BoxError>("upstream down".into())
            } else {
                Ok(format!("v{n}"))
            }
        }
    });
    let layer = CacheLayer::builder(|k: &u32| Some(*k)).build().unwrap();
    let svc = layer.layer(inner);
    let calls_made: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(1)))
        .collect();
    let mut errors = Vec::new();
    for t in calls_made {
        errors.push(t.await.unwrap().unwrap_err());
    }
    assert_eq!(calls.load(SeqCst), 1);
    for e in &errors {
        let shared = e.downcast_ref::<SharedError>().expect("a shared error");
        assert_eq!(shared.inner().to_string(), "upstream down");
    }
    // Not stored: the next call calls again.
    assert_eq!(svc.oneshot(1).await.unwrap(), "v2");
    let s = layer.handle().snapshot();
    assert_eq!((s.misses, s.coalesced, s.stored), (2, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn an_error_nobody_waited_for_is_returned_as_it_is() {
    let inner = service_fn(|_: u32| async {
        Err::<String, BoxError>(Box::new(CircuitOpen::new("db".into(), None)))
    });
    let layer = CacheLayer::builder(|k: &u32| Some(*k)).build().unwrap();
    let err = layer.layer(inner).oneshot(1).await.unwrap_err();
    assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().name(), "db");
}

/// A service whose answers are set by the test.
#[allow(clippy::type_complexity)]
fn scripted() -> (
    Arc<Mutex<Result<String, String>>>,
    Arc<AtomicUsize>,
    impl Service<
            u32,
            Response = String,
            Error = BoxError,
            Future = impl std::future::Future<Output = Result<String, BoxError>> + Send,
        > + Clone
        + Send
        + 'static,
) {
    let answer = Arc::new(Mutex::new(Ok("fresh".to_owned())));
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, c) = (answer.clone(), calls.clone());
    let svc = service_fn(move |_: u32| {
        c.fetch_add(1, SeqCst);
        let r = a.lock().unwrap().clone();
        async move { r.map_err(BoxError::from) }
    });
    (answer, calls, svc)
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_inside_max_stale_and_not_beyond() {
    let (answer, _calls, inner) = scripted();
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .ttl(Duration::from_secs(10))
        .max_stale(Duration::from_secs(60))
        .mark(|v: &mut String, status| {
            if let CacheStatus::Stale { age, reason } = status {
                v.push_str(&format!(" (stale {}s, {})", age.as_secs(), reason.as_str()));
            }
        })
        .on_event(move |ev: &CacheEvent| {
            if let CacheEvent::StaleServed { age, reason, .. } = ev {
                e.lock().unwrap().push((*age, *reason));
            }
        })
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "fresh");
    *answer.lock().unwrap() = Err("down".into());
    // Fresh: a hit, the failing service is not called.
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "fresh");
    tokio::time::advance(Duration::from_secs(30)).await;
    // Stale (30 s old, 20 s past its ttl): served on the error.
    assert_eq!(
        svc.clone().oneshot(1).await.unwrap(),
        "fresh (stale 30s, error)"
    );
    tokio::time::advance(Duration::from_secs(40)).await;
    // 70 s old: beyond max_stale, the error comes through.
    assert_eq!(
        svc.clone().oneshot(1).await.unwrap_err().to_string(),
        "down"
    );
    assert_eq!(
        *events.lock().unwrap(),
        vec![(Duration::from_secs(30), StaleReason::Error)]
    );
    let s = layer.handle().snapshot();
    assert_eq!((s.hits, s.misses, s.stale), (1, 3, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failure_the_predicate_rejects_gets_the_stale_entry() {
    let (answer, _calls, inner) = scripted();
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(60))
        .cache_if(|v: &String| v != "503")
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "fresh");
    *answer.lock().unwrap() = Ok("503".into());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "fresh");
    // Without a stale entry, the failure itself is answered, not stored.
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), "503");
    assert_eq!(layer.handle().snapshot().stored, 1);
}

#[tokio::test(start_paused = true)]
async fn stale_is_served_while_a_real_breaker_below_is_open() {
    let (answer, calls, inner) = scripted();
    let breaker = buttress_circuit_breaker::CircuitBreakerLayer::builder()
        .name("upstream")
        .consecutive_failures(2)
        .build()
        .unwrap();
    let cache = CacheLayer::builder(|k: &u32| Some(*k))
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(600))
        .mark(|v: &mut String, status| {
            if status.is_stale() {
                v.push_str(" (stale)");
            }
        })
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(cache.clone())
        .layer(breaker.clone())
        .service(inner);
    for k in [1, 2] {
        assert_eq!(svc.clone().oneshot(k).await.unwrap(), "fresh");
    }
    *answer.lock().unwrap() = Err("down".into());
    tokio::time::advance(Duration::from_secs(2)).await;
    // Two failures open the breaker; both answered stale.
    for k in [1, 2] {
        assert_eq!(svc.clone().oneshot(k).await.unwrap(), "fresh (stale)");
    }
    assert_eq!(
        breaker.handle().state(),
        buttress_circuit_breaker::State::Open
    );
    let before = calls.load(SeqCst);
    // Rejected by the open breaker (the service is not even called):
    // still the stale entry.
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "fresh (stale)");
    assert_eq!(calls.load(SeqCst), before);
    // A key with nothing stored gets the rejection itself.
    let err = svc.oneshot(3).await.unwrap_err();
    assert!(buttress_core::error::find::<CircuitOpen>(&*err).is_some());
    assert_eq!(cache.handle().snapshot().stale, 3);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let (c, g) = (calls.clone(), gate.clone());
    let inner = service_fn(move |_: u32| {
        let n = c.fetch_add(1, SeqCst) + 1;
        let g = g.clone();
        async move {
            if n > 1 {
                g.notified().await;
            }
            Ok::<_, Infallible>(format!("v{n}"))
        }
    });
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .ttl(Duration::from_secs(10))
        .max_stale(Duration::from_secs(60))
        .stale_while_revalidate(true)
        .mark(|v: &mut String, status| {
            if let CacheStatus::Stale {
                reason: StaleReason::Revalidating,
                ..
            } = status
            {
                v.push_str(" (revalidating)");
            }
        })
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "v1");
    tokio::time::advance(Duration::from_secs(11)).await;
    // Both answered at once; one refresh in the background.
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "v1 (revalidating)");
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "v1 (revalidating)");
    tokio::task::yield_now().await;
    assert_eq!(calls.load(SeqCst), 2);
    gate.notify_waiters();
    // Let the refresh store its answer.
    while layer.handle().snapshot().stored < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(svc.oneshot(1).await.unwrap(), "v2");
    let s = layer.handle().snapshot();
    // The background refresh is no caller's miss.
    assert_eq!((s.hits, s.misses, s.stale, s.stored), (1, 1, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn invalidate_a_key_a_prefix_or_everything() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let layer = CacheLayer::builder(|k: &String| Some(k.clone()))
        .on_event(move |e: &CacheEvent| {
            if let CacheEvent::Invalidated { scope, .. } = e {
                s2.lock().unwrap().push(scope.clone());
            }
        })
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|k: String| async move {
        Ok::<_, Infallible>(k.len())
    }));
    let handle = layer.handle();
    let keys = ["user/1", "user/2", "team/1", "team/2"];
    assert_eq!(
        handle
            .warm(keys.iter().map(|k| (k.to_string(), 0usize)))
            .await
            .unwrap(),
        4
    );
    // Warmed entries answer (0, not the key's length).
    assert_eq!(svc.clone().oneshot("user/1".into()).await.unwrap(), 0);
    handle.invalidate(&"user/1".to_owned()).await.unwrap();
    assert_eq!(svc.clone().oneshot("user/1".into()).await.unwrap(), 6);
    handle.invalidate_prefix("team/").await.unwrap();
    assert_eq!(svc.clone().oneshot("team/2".into()).await.unwrap(), 6);
    assert_eq!(svc.clone().oneshot("user/2".into()).await.unwrap(), 0);
    handle.invalidate_all().await.unwrap();
    assert_eq!(svc.clone().oneshot("user/2".into()).await.unwrap(), 6);
    assert_eq!(handle.snapshot().entries, Some(1));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Invalidation::Key("user/1".into()),
            Invalidation::Prefix("team/".into()),
            Invalidation::All
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_during_an_invalidation_does_not_store() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let inner = service_fn(move |_: u32| {
        let g = g.clone();
        async move {
            g.notified().await;
            Ok::<_, Infallible>("old")
        }
    });
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let r = reasons.clone();
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .on_event(move |e: &CacheEvent| {
            if let CacheEvent::NotStored { reason, .. } = e {
                r.lock().unwrap().push(*reason);
            }
        })
        .build()
        .unwrap();
    let call = tokio::spawn(layer.layer(inner).oneshot(1));
    tokio::task::yield_now().await;
    layer.handle().invalidate_all().await.unwrap();
    gate.notify_waiters();
    assert_eq!(call.await.unwrap().unwrap(), "old");
    assert_eq!(layer.handle().snapshot().stored, 0);
    assert_eq!(*reasons.lock().unwrap(), vec![NotStored::Invalidated]);
}

#[tokio::test(start_paused = true)]
async fn the_weight_bound_holds() {
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .max_weight(10_000)
        .weigher(|_k, v: &Vec<u8>| v.len())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|k: u32| async move {
        Ok::<_, Infallible>(vec![0u8; 1_000 + k as usize])
    }));
    for k in 0..100 {
        svc.clone().oneshot(k).await.unwrap();
    }
    let s = layer.handle().snapshot();
    assert!(s.weight.unwrap() <= 10_000, "{s:?}");
    assert!(s.entries.unwrap() <= 9, "{s:?}");
    assert_eq!(s.stored, 100);
    assert!(s.evicted >= 91, "{s:?}");
    // An entry heavier than the whole bound is not stored.
    let big = CacheLayer::builder(|k: &u32| Some(*k))
        .max_weight(100)
        .weigher(|_k, v: &Vec<u8>| v.len())
        .build()
        .unwrap();
    big.layer(service_fn(|_: u32| async {
        Ok::<_, Infallible>(vec![0u8; 101])
    }))
    .oneshot(1)
    .await
    .unwrap();
    assert_eq!(big.handle().snapshot().stored, 0);
}

#[tokio::test(start_paused = true)]
async fn both_bounds_hold_together() {
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .max_entries(5)
        .max_weight(1_000_000)
        .weigher(|_k, _v: &u32| 1)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|k: u32| async move { Ok::<_, Infallible>(k) }));
    for k in 0..50 {
        svc.clone().oneshot(k).await.unwrap();
    }
    assert!(layer.handle().snapshot().entries.unwrap() <= 5);
}

#[tokio::test(start_paused = true)]
async fn per_entry_ttl_and_warm_for() {
    let (calls, inner) = counting();
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .ttl(Duration::from_secs(100))
        .ttl_of(|v: &String| v.ends_with(":2").then_some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    svc.clone().oneshot(1).await.unwrap();
    svc.clone().oneshot(2).await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    svc.clone().oneshot(1).await.unwrap();
    svc.clone().oneshot(2).await.unwrap();
    assert_eq!(calls.load(SeqCst), 3);
    layer
        .handle()
        .warm_for(Duration::from_secs(5), [(9, "warm".to_owned())])
        .await
        .unwrap();
    assert_eq!(svc.clone().oneshot(9).await.unwrap(), "warm");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(svc.oneshot(9).await.unwrap(), "v4:9");
}

#[tokio::test(start_paused = true)]
async fn the_registry_holds_the_handle_and_the_snapshot() {
    let registry = Registry::new();
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .name("profiles")
        .registry(&registry)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|k: u32| async move { Ok::<_, Infallible>(k) }));
    svc.clone().oneshot(1).await.unwrap();
    svc.oneshot(1).await.unwrap();
    let snap = registry.snapshot();
    assert_eq!(snap["profiles"]["kind"], "cache");
    assert_eq!(snap["profiles"]["state"]["hits"], 1);
    let handle = registry
        .get::<buttress_cache::CacheHandle<u32, u32>>("profiles")
        .unwrap();
    assert_eq!(handle.snapshot().misses, 1);
    registry.reset_all();
    assert_eq!(handle.snapshot().hits, 0);
    // A second cache of the same name is a config error.
    let err = CacheLayer::builder(|k: &u32| Some(*k))
        .name("profiles")
        .registry(&registry)
        .build()
        .map(|_: CacheLayer<buttress_cache::ByKey<_, u32, u32>>| ())
        .unwrap_err();
    assert_eq!(err.field(), "name");
}

#[test]
fn bad_config_is_an_error_naming_the_field() {
    let b = || CacheLayer::builder(|k: &u32| Some(*k));
    let field = |r: Result<
        CacheLayer<buttress_cache::ByKey<_, u32, u32>>,
        buttress_core::ConfigError,
    >| r.unwrap_err().field();
    assert_eq!(field(b().ttl(Duration::ZERO).build()), "ttl");
    assert_eq!(field(b().name("").build()), "name");
    assert_eq!(field(b().max_entries(0).build()), "max_entries");
    assert_eq!(field(b().max_weight(0).build()), "max_weight");
    assert_eq!(
        field(b().stale_while_revalidate(true).build()),
        "stale_while_revalidate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_counts_are_exact_under_concurrent_hits() {
    let (calls, inner) = counting();
    let layer = CacheLayer::builder(|k: &u32| Some(*k)).build().unwrap();
    let svc = layer.layer(inner);
    for k in 0..8 {
        svc.clone().oneshot(k).await.unwrap();
    }
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..500u32 {
                    svc.clone().oneshot((t + i) % 8).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // An invalidation retires the front table's slots: their hits stay
    // counted.
    layer.handle().invalidate_all().await.unwrap();
    let s = layer.handle().snapshot();
    assert_eq!((s.hits, s.misses, s.coalesced), (4_000, 8, 0));
    assert_eq!(calls.load(SeqCst), 8);
    layer.handle().reset_counters();
    assert_eq!(layer.handle().snapshot().hits, 0);
}
