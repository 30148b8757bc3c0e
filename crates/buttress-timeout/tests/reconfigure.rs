//! `TimeoutHandle::reconfigure` and `config`: live changes for the next
//! calls, in-flight calls under the values they started with, refusals
//! that change nothing.

use std::sync::Arc;
use std::time::Duration;

use buttress_timeout::error::Elapsed;
use buttress_timeout::TimeoutConfig;
use tokio::time::{self, Instant};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_test::mock;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(timeout: Duration, include_ready: bool) -> TimeoutConfig {
    TimeoutConfig {
        name: "upstream".to_owned(),
        timeout,
        include_ready,
    }
}

async fn sleep_for(d: u64) -> Result<u64, std::convert::Infallible> {
    time::sleep(ms(d)).await;
    Ok(d)
}

#[tokio::test(start_paused = true)]
async fn a_new_timeout_applies_to_the_next_calls() {
    let layer = config(ms(100), false).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(sleep_for));

    let err = svc.ready().await.unwrap().call(200).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), ms(100));

    // A check applies nothing.
    handle.check_reconfigure(&config(ms(300), false)).unwrap();
    assert_eq!(handle.config(), config(ms(100), false));
    handle.reconfigure(&config(ms(300), false)).unwrap();
    assert_eq!(svc.ready().await.unwrap().call(200).await.unwrap(), 200);

    handle.reconfigure(&config(ms(50), false)).unwrap();
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(200).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(50));
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), ms(50));
    assert_eq!(handle.config(), config(ms(50), false));
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_keeps_the_limit_it_started_with() {
    let layer = config(ms(100), false).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(sleep_for));

    // Started under 100 ms, needs 80 ms: a lower limit set meanwhile does
    // not cut it short.
    let mut short = task::spawn(svc.ready().await.unwrap().call(80));
    assert_pending!(short.poll());
    // Started under 100 ms, needs 150 ms: a higher limit does not save it.
    let mut long = task::spawn(svc.ready().await.unwrap().call(150));
    assert_pending!(long.poll());

    handle.reconfigure(&config(ms(10), false)).unwrap();
    time::advance(ms(80)).await;
    assert_eq!(assert_ready_ok!(short.poll()), 80);
    handle.reconfigure(&config(ms(1_000), false)).unwrap();
    time::advance(ms(20)).await;
    let err = long.await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), ms(100));

    // The next call gets the limit set last.
    assert_eq!(svc.ready().await.unwrap().call(150).await.unwrap(), 150);
}

#[tokio::test(start_paused = true)]
async fn include_ready_applies_to_the_next_wait_and_a_counting_wait_keeps_its_deadline() {
    let layer = config(ms(100), false).build().unwrap();
    let handle = layer.handle();
    let (inner, mut upstream) = mock::pair::<u32, u32>();
    upstream.allow(0);
    let mut svc = mock::Spawn::new(layer.layer(inner));

    // Off: readiness is not timed.
    assert_pending!(svc.poll_ready());
    time::advance(ms(500)).await;
    assert_pending!(svc.poll_ready());

    // On from now: the wait counts from the next poll.
    handle.reconfigure(&config(ms(100), true)).unwrap();
    assert_pending!(svc.poll_ready());
    // Off again while the wait counts: it keeps its deadline.
    handle.reconfigure(&config(ms(100), false)).unwrap();
    time::advance(ms(99)).await;
    assert_pending!(svc.poll_ready());
    time::advance(ms(1)).await;
    assert_ready_ok!(svc.poll_ready());
    let err = svc.call(1).await.unwrap_err();
    assert!(err.is::<Elapsed>());

    // And the next wait follows the new value (off).
    assert_pending!(svc.poll_ready());
    time::advance(ms(500)).await;
    assert_pending!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_with_builds_error_and_nothing_changes() {
    let handle = config(ms(100), false).build().unwrap().handle();
    for bad in [
        config(Duration::ZERO, true),
        TimeoutConfig {
            name: String::new(),
            ..config(ms(300), true)
        },
    ] {
        let built = bad.build().unwrap_err();
        let checked = handle.check_reconfigure(&bad).unwrap_err();
        let refused = handle.reconfigure(&bad).unwrap_err();
        assert_eq!(checked.to_string(), built.to_string());
        assert_eq!(refused.field(), built.field());
        assert_eq!(refused.to_string(), built.to_string());
        assert_eq!(handle.config(), config(ms(100), false));
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_name_is_refused_naming_the_field_and_nothing_changes() {
    let layer = config(ms(100), false).build().unwrap();
    let handle = layer.handle();
    let renamed = TimeoutConfig {
        name: "other".to_owned(),
        ..config(ms(300), true)
    };
    let checked = handle.check_reconfigure(&renamed).unwrap_err();
    let err = handle.reconfigure(&renamed).unwrap_err();
    assert_eq!(checked.to_string(), err.to_string());
    assert_eq!(err.field(), "name");
    assert!(err.reason().contains("live instance"), "{err}");
    assert_eq!(handle.config(), config(ms(100), false));
    // Still the old limit for calls.
    let mut svc = layer.layer(service_fn(sleep_for));
    let err = svc.ready().await.unwrap().call(200).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().timeout(), ms(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_during_flips_see_one_whole_config_and_none_is_lost() {
    let a = config(Duration::from_secs(20), false);
    let b = config(Duration::from_secs(40), true);
    let layer = a.build().unwrap();
    let handle = layer.handle();
    // Answers at once: no call may time out whatever the limit.
    let svc = layer.layer(service_fn(|n: u64| async move {
        tokio::task::yield_now().await;
        Ok::<_, std::convert::Infallible>(n)
    }));

    let flipper = {
        let (handle, a, b) = (handle.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..2_000 {
                handle
                    .reconfigure(if i % 2 == 0 { &b } else { &a })
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let reader = {
        let (handle, a, b) = (handle.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for _ in 0..2_000 {
                let seen = handle.config();
                assert!(seen == a || seen == b, "a mix of two configs: {seen:?}");
                tokio::task::yield_now().await;
            }
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut callers = Vec::new();
    for t in 0..8u64 {
        let (mut svc, done) = (svc.clone(), done.clone());
        callers.push(tokio::spawn(async move {
            for i in 0..500u64 {
                let n = t * 1_000 + i;
                assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    flipper.await.unwrap();
    reader.await.unwrap();
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 8 * 500);
    assert_eq!(handle.snapshot().timed_out, 0);
    assert_eq!(handle.config(), a);
}
