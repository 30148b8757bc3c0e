//! `RateLimitHandle::reconfigure` (and the keyed one) and `config`: the
//! rate and burst live for the next decisions, calls admitted or waiting
//! finish as they started, fixed settings and invalid configs refused
//! with nothing changed.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use buttress_core::error::BoxError;
use buttress_core::key::Header;
use buttress_core::RateLimited;
use buttress_rate_limit::{Algorithm, KeyedRateLimitLayer, Rate, RateLimitConfig, RateLimitHandle};
use tokio::time::{self, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(rate: Rate, burst: Option<u64>) -> RateLimitConfig {
    RateLimitConfig {
        name: "api".to_owned(),
        burst,
        ..RateLimitConfig::new(rate)
    }
}

/// Calls made at once: how many passed.
async fn burst_of<S>(svc: &mut S, n: u32) -> u32
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    let mut passed = 0;
    for i in 0..n {
        if svc.ready().await.unwrap().call(i).await.is_ok() {
            passed += 1;
        }
    }
    passed
}

fn echo() -> impl Service<
    u32,
    Response = u32,
    Error = Infallible,
    Future = std::future::Ready<Result<u32, Infallible>>,
> + Clone {
    service_fn(|n: u32| std::future::ready(Ok::<_, Infallible>(n)))
}

fn limited(err: &BoxError) -> &RateLimited {
    err.downcast_ref::<RateLimited>().expect("a RateLimited")
}

#[tokio::test(start_paused = true)]
async fn rate_and_burst_apply_to_the_next_decisions() {
    let layer = config(Rate::per_second(1), Some(1)).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(echo());
    assert_eq!(burst_of(&mut svc, 5).await, 1);

    // A check applies nothing.
    handle
        .check_reconfigure(&config(Rate::per_second(1), Some(3)))
        .unwrap();
    assert_eq!(handle.snapshot().burst, 1);
    // A larger burst: the debt of the call taken is kept, two more fit.
    handle
        .reconfigure(&config(Rate::per_second(1), Some(3)))
        .unwrap();
    assert_eq!(handle.snapshot().burst, 3);
    assert_eq!(burst_of(&mut svc, 5).await, 2);

    // A faster rate refills faster from now on.
    handle
        .reconfigure(&config(Rate::per_second(100), Some(3)))
        .unwrap();
    time::advance(ms(3_000)).await;
    assert_eq!(burst_of(&mut svc, 5).await, 3);
    time::advance(ms(10)).await;
    assert_eq!(burst_of(&mut svc, 5).await, 1);
    assert_eq!(
        handle.config(),
        config(Rate::per_second(100), Some(3)),
        "the config read back is the one applied"
    );

    // Back to the default burst (the rate's permits): `None` read back.
    handle
        .reconfigure(&config(Rate::per_second(2), None))
        .unwrap();
    assert_eq!(handle.config(), config(Rate::per_second(2), None));
    assert_eq!(handle.snapshot().burst, 2);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_keeps_its_place_and_deadline_and_the_next_call_gets_the_new_rate() {
    let queued = RateLimitConfig {
        max_wait: Some(ms(3_000)),
        max_queue: 2,
        ..config(Rate::per_second(1), None)
    };
    let layer = queued.build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|n: u32| async move {
        time::sleep(ms(500)).await;
        Ok::<_, Infallible>(n)
    }));
    let start = Instant::now();
    let a = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let b = tokio::spawn(svc.clone().oneshot(2));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().waiting, 1);

    // Slower from now: one permit a minute.
    let slow = RateLimitConfig {
        rate: Rate::per_minute(1),
        ..queued.clone()
    };
    handle.reconfigure(&slow).unwrap();
    assert_eq!(a.await.unwrap().unwrap(), 1);
    assert_eq!(start.elapsed(), ms(500));
    // Its permit came due under the old rate, at 1 s.
    assert_eq!(b.await.unwrap().unwrap(), 2);
    assert_eq!(start.elapsed(), ms(1_500));
    // The next one needs a minute under the new rate: beyond max_wait.
    let err = svc.clone().oneshot(3).await.unwrap_err();
    assert!(
        limited(&err).retry_after().unwrap() > ms(3_000),
        "{:?}",
        limited(&err).retry_after()
    );
    assert_eq!(handle.config(), slow);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_with_builds_error_and_nothing_changes() {
    let before = config(Rate::per_second(10), Some(5));
    let handle = before.build().unwrap().handle();
    let bad = [
        config(Rate::per_second(0), None),
        config(Rate::per_second(10), Some(0)),
        RateLimitConfig {
            max_wait: Some(ms(10)),
            ..before.clone()
        },
        RateLimitConfig {
            resolution: Some(Duration::from_secs(5)),
            ..before.clone()
        },
        RateLimitConfig {
            name: String::new(),
            ..before.clone()
        },
    ];
    for bad in bad {
        let built = bad.build().unwrap_err();
        let checked = handle.check_reconfigure(&bad).unwrap_err();
        let refused = handle.reconfigure(&bad).unwrap_err();
        assert_eq!(checked.to_string(), built.to_string());
        assert_eq!(refused.to_string(), built.to_string());
        assert_eq!(handle.config(), before);
    }
}

#[tokio::test(start_paused = true)]
async fn settings_fixed_at_build_are_refused_naming_the_field_and_nothing_changes() {
    let before = config(Rate::per_second(10), Some(5));
    let layer = before.build().unwrap();
    let handle = layer.handle();
    let faster = config(Rate::per_second(1_000), Some(500));
    let changes = [
        (
            "name",
            RateLimitConfig {
                name: "other".to_owned(),
                ..faster.clone()
            },
        ),
        (
            "algorithm",
            RateLimitConfig {
                algorithm: Algorithm::TokenBucket,
                ..faster.clone()
            },
        ),
        (
            "max_wait",
            RateLimitConfig {
                max_wait: Some(ms(10)),
                max_queue: 4,
                ..faster.clone()
            },
        ),
        (
            "resolution",
            RateLimitConfig {
                resolution: Some(ms(1)),
                ..faster.clone()
            },
        ),
    ];
    for (field, change) in changes {
        change.build().expect("valid for a new layer");
        let checked = handle.check_reconfigure(&change).unwrap_err();
        let err = handle.reconfigure(&change).unwrap_err();
        assert_eq!(checked.to_string(), err.to_string());
        assert_eq!(err.field(), field);
        assert!(err.reason().contains("live instance"), "{err}");
        assert_eq!(handle.config(), before);
    }
    // Zero and unset are the same: not a change.
    handle
        .reconfigure(&RateLimitConfig {
            max_wait: Some(Duration::ZERO),
            resolution: Some(Duration::ZERO),
            ..faster.clone()
        })
        .unwrap();
    assert_eq!(handle.config(), faster);
    // The limiter still decides with the numbers applied last.
    let mut svc = layer.layer(echo());
    assert_eq!(burst_of(&mut svc, 600).await, 500);
}

/// Requests of `client` made at once: how many passed.
async fn passed<S>(svc: &mut S, client: &str, n: u32) -> u32
where
    S: Service<http::Request<()>, Error = BoxError>,
{
    let mut ok = 0;
    for _ in 0..n {
        let req = http::Request::builder()
            .header("x-client", client)
            .body(())
            .unwrap();
        if svc.ready().await.unwrap().call(req).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(start_paused = true)]
async fn a_keyed_limiter_applies_a_config_to_every_key_now_and_later() {
    let base = config(Rate::per_second(1), Some(1));
    let layer = base
        .apply_keyed(KeyedRateLimitLayer::builder(
            Header::new(http::HeaderName::from_static("x-client")),
            base.rate,
        ))
        .build::<Vec<u8>>()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(())
    }));
    assert_eq!(passed(&mut svc, "a", 3).await, 1);
    let more = config(Rate::per_second(1), Some(4));
    handle.reconfigure(&more).unwrap();
    assert_eq!(handle.config(), more);
    // The key held gets three more, a new key the full four.
    assert_eq!(passed(&mut svc, "a", 6).await, 3);
    assert_eq!(passed(&mut svc, "b", 6).await, 4);

    let err = handle
        .reconfigure(&RateLimitConfig {
            algorithm: Algorithm::SlidingWindow,
            burst: None,
            ..more.clone()
        })
        .unwrap_err();
    assert_eq!(err.field(), "algorithm");
    let checked = handle
        .check_reconfigure(&config(Rate::per_second(1), Some(0)))
        .unwrap_err();
    assert_eq!(checked.field(), "burst");
    let err = handle
        .reconfigure(&config(Rate::per_second(1), Some(0)))
        .unwrap_err();
    assert_eq!(err.field(), "burst");
    assert_eq!(handle.config(), more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decisions_during_flips_see_one_whole_setting_and_every_call_is_answered() {
    const CALLERS: u32 = 8;
    const CALLS: u32 = 500;
    let small = config(Rate::per_minute(10), Some(5));
    let large = config(Rate::per_second(1_000), Some(900));
    let layer = small.build().unwrap();
    let handle: RateLimitHandle = layer.handle();
    let svc = layer.layer(echo());

    let flipper = {
        let (handle, small, large) = (handle.clone(), small.clone(), large.clone());
        tokio::spawn(async move {
            for i in 0..2_000 {
                handle
                    .reconfigure(if i % 2 == 0 { &large } else { &small })
                    .unwrap();
                let s = handle.snapshot();
                assert!(
                    (s.rate, s.burst) == (small.rate, 5) || (s.rate, s.burst) == (large.rate, 900),
                    "a mix of two settings: {s:?}"
                );
                tokio::task::yield_now().await;
            }
        })
    };
    let (ok, rejected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..CALLERS)
        .map(|t| {
            let (mut svc, ok, rejected) = (svc.clone(), ok.clone(), rejected.clone());
            tokio::spawn(async move {
                for i in 0..CALLS {
                    let n = t * 10_000 + i;
                    match svc.ready().await.unwrap().call(n).await {
                        Ok(got) => {
                            assert_eq!(got, n);
                            ok.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            let reason = limited(&e);
                            assert!(reason.retry_after().is_some());
                            rejected.fetch_add(1, Relaxed);
                        }
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    flipper.await.unwrap();
    let (ok, rejected) = (ok.load(Relaxed), rejected.load(Relaxed));
    assert_eq!(ok + rejected, u64::from(CALLERS * CALLS), "a call was lost");
    assert_eq!(handle.snapshot().rejected, rejected);
    assert!(ok >= 5, "at least the small burst passed");
    assert_eq!(handle.config(), small);
}
