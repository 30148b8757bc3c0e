//! `CircuitBreakerHandle::reconfigure` (and the keyed one) and `config`:
//! every live field changes the next verdicts, a call already admitted is
//! recorded under the new values, an open breaker keeps its wait, and
//! refusals change nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_circuit_breaker::error::CircuitOpen;
use buttress_circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, KeyedCircuitBreakerLayer, State,
};
use buttress_core::BoxError;
use buttress_test_support::capture::Capture;
use tokio::time;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{service_fn, Layer, Service, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

/// What the inner service does with a request.
#[derive(Debug, Clone, Copy)]
enum Call {
    Ok,
    Fail,
    /// Succeeds after this many milliseconds.
    SlowOk(u64),
    /// Fails after this many milliseconds.
    SlowFail(u64),
}

use Call::*;

type Fut = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u8, &'static str>> + Send>>;

fn run(call: Call) -> Fut {
    Box::pin(async move {
        match call {
            Call::Ok => Result::Ok(1),
            Call::Fail => Err("boom"),
            Call::SlowOk(ms) => {
                time::sleep(Duration::from_millis(ms)).await;
                Result::Ok(1)
            }
            Call::SlowFail(ms) => {
                time::sleep(Duration::from_millis(ms)).await;
                Err("boom")
            }
        }
    })
}

type Svc = buttress_circuit_breaker::CircuitBreaker<
    tower::util::ServiceFn<fn(Call) -> Fut>,
    buttress_core::ErrorsAsFailures,
>;

fn svc(layer: &CircuitBreakerLayer) -> Svc {
    layer.layer(service_fn(run as fn(Call) -> Fut))
}

async fn call(s: &Svc, c: Call) -> Result<u8, BoxError> {
    s.clone().oneshot(c).await
}

async fn calls(s: &Svc, cs: &[Call]) {
    for c in cs {
        let _ = call(s, *c).await;
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A window of 4, all 4 needed, 50 %, 10 s open, 2 probes.
fn base() -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        name: "cb".to_owned(),
        window_size: 4,
        minimum_calls: 4,
        wait_in_open: secs(10),
        permitted_calls_in_half_open: 2,
        ..CircuitBreakerConfig::default()
    }
}

fn open_it(handle: &buttress_circuit_breaker::CircuitBreakerHandle) {
    handle.force_closed();
    handle.force_open();
}

#[tokio::test(start_paused = true)]
async fn a_lower_threshold_judges_the_next_outcome_with_the_window_as_it_is() {
    let layer = base().build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    calls(&s, &[Ok, Ok, Ok, Fail]).await;
    assert_eq!(handle.state(), State::Closed, "25 % < 50 %");

    // A check applies nothing.
    handle
        .check_reconfigure(&CircuitBreakerConfig {
            failure_rate_threshold: 25.0,
            ..base()
        })
        .unwrap();
    assert_eq!(handle.config(), base());
    handle
        .reconfigure(&CircuitBreakerConfig {
            failure_rate_threshold: 25.0,
            ..base()
        })
        .unwrap();
    assert_eq!(handle.state(), State::Closed, "nothing recorded yet");
    calls(&s, &[Ok]).await;
    assert_eq!(handle.state(), State::Open, "25 % >= 25 %");
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_and_the_slow_call_rules_apply_to_the_next_outcome() {
    let wide = CircuitBreakerConfig {
        window_size: 10,
        minimum_calls: 10,
        ..base()
    };
    let layer = wide.build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    calls(&s, &[Fail, Fail, Fail]).await;
    assert_eq!(handle.state(), State::Closed, "below the minimum");
    handle
        .reconfigure(&CircuitBreakerConfig {
            minimum_calls: 4,
            ..wide.clone()
        })
        .unwrap();
    calls(&s, &[Ok]).await;
    assert_eq!(handle.state(), State::Open, "3 of 4 failed");

    // Slow-call detection turned on: slow successes now trip it.
    handle.force_closed();
    let slow = CircuitBreakerConfig {
        minimum_calls: 4,
        slow_call_duration: Some(ms(50)),
        slow_call_rate_threshold: 50.0,
        ..wide.clone()
    };
    handle.reconfigure(&slow).unwrap();
    calls(&s, &[SlowOk(100), Ok, SlowOk(100)]).await;
    assert_eq!(handle.snapshot().slow_calls, 2);
    assert_eq!(handle.state(), State::Closed);
    calls(&s, &[Ok]).await;
    assert_eq!(handle.state(), State::Open, "2 of 4 slow");
    assert_eq!(handle.config(), slow);
}

#[tokio::test(start_paused = true)]
async fn a_call_admitted_before_the_change_is_recorded_under_the_new_values() {
    let never = CircuitBreakerConfig {
        failure_rate_threshold: 100.0,
        ..base()
    };
    let layer = never.build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    calls(&s, &[Ok, Ok, Ok]).await;
    let in_flight = tokio::spawn(s.clone().oneshot(SlowFail(100)));
    tokio::task::yield_now().await;
    handle
        .reconfigure(&CircuitBreakerConfig {
            failure_rate_threshold: 25.0,
            ..never.clone()
        })
        .unwrap();
    assert!(in_flight.await.unwrap().is_err());
    assert_eq!(handle.state(), State::Open, "1 of 4 under the new 25 %");
}

#[tokio::test(start_paused = true)]
async fn the_consecutive_failure_limit_is_live() {
    let five = CircuitBreakerConfig {
        consecutive_failures: Some(5),
        ..base()
    };
    let layer = five.build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    calls(&s, &[Fail, Fail, Fail]).await;
    handle
        .reconfigure(&CircuitBreakerConfig {
            consecutive_failures: Some(4),
            ..five.clone()
        })
        .unwrap();
    assert_eq!(handle.state(), State::Closed);
    calls(&s, &[Fail]).await;
    assert_eq!(handle.state(), State::Open, "the run of 3 goes on to 4");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_keeps_its_wait_and_the_next_opening_gets_the_new_one() {
    let layer = base().build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    assert_eq!(handle.state(), State::Open);
    handle
        .reconfigure(&CircuitBreakerConfig {
            wait_in_open: secs(1),
            ..base()
        })
        .unwrap();
    assert_eq!(handle.snapshot().retry_after, Some(secs(10)));
    time::advance(secs(2)).await;
    let err = call(&s, Ok).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "still the 10 s it opened with");
    time::advance(secs(8)).await;
    calls(&s, &[Fail, Fail]).await;
    assert_eq!(handle.state(), State::Open, "the probes failed");
    assert_eq!(handle.snapshot().retry_after, Some(secs(1)), "the new wait");
}

#[tokio::test(start_paused = true)]
async fn probes_recorded_reaching_a_lowered_number_decide_at_once() {
    let three = CircuitBreakerConfig {
        permitted_calls_in_half_open: 3,
        ..base()
    };
    let layer = three.build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    open_it(&handle);
    handle.force_closed();
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(secs(10)).await;
    calls(&s, &[Ok, Ok]).await;
    assert_eq!(handle.state(), State::HalfOpen, "2 of 3 probes done");

    handle
        .reconfigure(&CircuitBreakerConfig {
            permitted_calls_in_half_open: 2,
            ..three.clone()
        })
        .unwrap();
    assert_eq!(handle.state(), State::Closed, "decided with the 2 done");

    // Lowered while probes are in flight: the first recorded decides, the
    // others finish and are not recorded.
    handle
        .reconfigure(&CircuitBreakerConfig {
            permitted_calls_in_half_open: 3,
            ..three.clone()
        })
        .unwrap();
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(secs(10)).await;
    let probes: Vec<_> = (0..3)
        .map(|_| tokio::spawn(s.clone().oneshot(SlowOk(100))))
        .collect();
    tokio::task::yield_now().await;
    assert!(
        call(&s, Ok).await.unwrap_err().is::<CircuitOpen>(),
        "3 probes at most"
    );
    handle
        .reconfigure(&CircuitBreakerConfig {
            permitted_calls_in_half_open: 1,
            ..three.clone()
        })
        .unwrap();
    for p in probes {
        assert_eq!(p.await.unwrap().unwrap(), 1);
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(
        handle.snapshot().buffered_calls,
        0,
        "the late probes were not recorded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_half_open_limit_counts_from_the_start_of_the_state() {
    let layer = base().build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    time::advance(secs(10)).await;
    let probe = tokio::spawn(s.clone().oneshot(SlowOk(60_000)));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    time::advance(secs(3)).await;
    handle
        .reconfigure(&CircuitBreakerConfig {
            max_wait_in_half_open: Some(secs(5)),
            ..base()
        })
        .unwrap();
    time::advance(ms(1_999)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    time::advance(ms(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::Open, "5 s after it began, by timer");
    probe.abort();
}

#[tokio::test(start_paused = true)]
async fn automatic_half_open_turned_on_while_open_ends_the_wait_by_timer() {
    let layer = base().build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    handle
        .reconfigure(&CircuitBreakerConfig {
            automatic_half_open: true,
            ..base()
        })
        .unwrap();
    time::advance(secs(10)).await;
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen, "no call needed");
}

#[tokio::test(start_paused = true)]
async fn backpressure_is_live() {
    let layer = base().build().unwrap();
    let handle = layer.handle();
    let mut s = svc(&layer);
    open_it(&handle);
    handle.force_closed();
    calls(&s, &[Fail, Fail, Fail, Fail]).await;
    let err = call(&s, Ok).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());

    handle
        .reconfigure(&CircuitBreakerConfig {
            backpressure: true,
            ..base()
        })
        .unwrap();
    let mut ready = tokio_test::task::spawn(async { s.ready().await.map(|_| ()) });
    assert_pending!(ready.poll());
    time::advance(secs(10)).await;
    assert_ready_ok!(ready.poll());
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_with_builds_error_and_nothing_changes() {
    let layer = base().build().unwrap();
    let handle = layer.handle();
    let bad = [
        CircuitBreakerConfig {
            failure_rate_threshold: f64::NAN,
            ..base()
        },
        CircuitBreakerConfig {
            minimum_calls: 0,
            ..base()
        },
        CircuitBreakerConfig {
            permitted_calls_in_half_open: 0,
            ..base()
        },
        CircuitBreakerConfig {
            max_wait_in_open: Some(secs(1)),
            ..base()
        },
        CircuitBreakerConfig {
            name: String::new(),
            ..base()
        },
    ];
    for bad in bad {
        let built = bad.build().unwrap_err();
        let checked = handle.check_reconfigure(&bad).unwrap_err();
        let refused = handle.reconfigure(&bad).unwrap_err();
        assert_eq!(checked.to_string(), built.to_string());
        assert_eq!(refused.to_string(), built.to_string());
        assert_eq!(handle.config(), base());
    }
}

#[tokio::test(start_paused = true)]
async fn a_window_mode_or_name_change_is_refused_naming_the_field_and_nothing_changes() {
    let layer = base().build().unwrap();
    let handle = layer.handle();
    let s = svc(&layer);
    calls(&s, &[Fail, Ok]).await;
    let lower = CircuitBreakerConfig {
        failure_rate_threshold: 10.0,
        ..base()
    };
    let changes = [
        (
            "name",
            CircuitBreakerConfig {
                name: "other".to_owned(),
                ..lower.clone()
            },
        ),
        (
            "time_window",
            CircuitBreakerConfig {
                time_window: Some(secs(30)),
                ..lower.clone()
            },
        ),
        (
            "window_size",
            CircuitBreakerConfig {
                window_size: 8,
                ..lower.clone()
            },
        ),
        (
            "consecutive_failures",
            CircuitBreakerConfig {
                consecutive_failures: Some(3),
                ..lower.clone()
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
        assert_eq!(handle.config(), base());
    }
    // The 50 % threshold still applies, not the refused 10 %.
    calls(&s, &[Ok, Ok]).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().buffered_calls, 4);
}

#[tokio::test(start_paused = true)]
async fn a_keyed_breaker_applies_a_config_to_its_keys_now_and_later() {
    let layer = KeyedCircuitBreakerLayer::builder(buttress_core::key::UriAuthority)
        .config(CircuitBreakerConfig {
            name: "upstreams".to_owned(),
            window_size: 4,
            minimum_calls: 4,
            ..CircuitBreakerConfig::default()
        })
        .build::<String>()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        if req.uri().path() == "/fail" {
            Err("boom")
        } else {
            Result::<(), &str>::Ok(())
        }
    }));
    let req = |host: &str, path: &str| {
        http::Request::builder()
            .uri(format!("http://{host}{path}"))
            .body(())
            .unwrap()
    };
    svc.clone().oneshot(req("a", "/ok")).await.unwrap();
    let new = CircuitBreakerConfig {
        failure_rate_threshold: 25.0,
        ..handle.config()
    };
    handle.reconfigure(&new).unwrap();
    assert_eq!(handle.config(), new);
    assert_eq!(handle.key(&"a".to_owned()).unwrap().config(), new);
    assert_eq!(handle.unkeyed().config(), new);
    // An existing key and a new one both trip at 25 %.
    for host in ["a", "b"] {
        let mut n = if host == "a" { 1 } else { 0 };
        while n < 3 {
            svc.clone().oneshot(req(host, "/ok")).await.unwrap();
            n += 1;
        }
        let _ = svc.clone().oneshot(req(host, "/fail")).await;
        assert_eq!(
            handle.key(&host.to_owned()).unwrap().state(),
            State::Open,
            "{host}"
        );
    }
    let err = handle
        .reconfigure(&CircuitBreakerConfig {
            window_size: 9,
            ..new.clone()
        })
        .unwrap_err();
    assert_eq!(err.field(), "window_size");
    let checked = handle
        .check_reconfigure(&CircuitBreakerConfig {
            window_size: 9,
            ..new.clone()
        })
        .unwrap_err();
    assert_eq!(checked.field(), "window_size");
    let err = handle
        .reconfigure(&CircuitBreakerConfig {
            failure_rate_threshold: 120.0,
            ..new.clone()
        })
        .unwrap_err();
    assert_eq!(err.field(), "failure_rate_threshold");
    assert_eq!(handle.config(), new);
    assert_eq!(handle.key(&"b".to_owned()).unwrap().config(), new);
}

/// The probe numbers the breaker `name` logged as it admitted them (each
/// is the count of probe slots taken in its half-open state).
fn probe_numbers(capture: &Capture, name: &str) -> Vec<u32> {
    capture
        .find("half-open probe admitted")
        .iter()
        .filter(|e| e.field("buttress.name") == Some(name))
        .map(|e| e.field("circuit.probe").unwrap().parse().unwrap())
        .collect()
}

/// `callers` tasks making `calls` calls each: (failed, rejected).
async fn hammer<S>(svc: &S, callers: usize, calls: usize) -> (u64, u64)
where
    S: Service<usize, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let (failed, rejected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (mut svc, failed, rejected) = (svc.clone(), failed.clone(), rejected.clone());
            tokio::spawn(async move {
                for i in 0..calls {
                    let err = svc.ready().await.unwrap().call(i).await.unwrap_err();
                    if err.is::<CircuitOpen>() {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(err.to_string(), "down");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (
        failed.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_never_exceed_either_limit_while_it_flips_and_no_call_is_lost() {
    const CALLERS: usize = 8;
    const CALLS: usize = 400;
    // Every thread of the runtime logs to this capture (the only test of
    // this binary that sets the global subscriber).
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .expect("no other global subscriber in this test binary");
    // One failure opens it; the open wait is over at once, so every call
    // after the first is a probe of some half-open state, and every probe
    // fails: the breaker cycles open -> half-open -> open.
    let one = CircuitBreakerConfig {
        name: "cycling".to_owned(),
        window_size: 1,
        minimum_calls: 1,
        wait_in_open: Duration::from_nanos(1),
        permitted_calls_in_half_open: 1,
        ..CircuitBreakerConfig::default()
    };
    let four = CircuitBreakerConfig {
        permitted_calls_in_half_open: 4,
        ..one.clone()
    };
    let layer = one.build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: usize| async {
        tokio::task::yield_now().await;
        Err::<(), _>("down")
    }));
    let flipper = {
        let (handle, one, four) = (handle.clone(), one.clone(), four.clone());
        tokio::spawn(async move {
            for i in 0..1_000 {
                handle
                    .reconfigure(if i % 2 == 0 { &four } else { &one })
                    .unwrap();
                let seen = handle.config();
                assert!(seen == one || seen == four, "a mix: {seen:?}");
                tokio::task::yield_now().await;
            }
        })
    };
    let (failed, rejected) = hammer(&svc, CALLERS, CALLS).await;
    flipper.await.unwrap();
    assert_eq!(
        failed + rejected,
        (CALLERS * CALLS) as u64,
        "a call was lost"
    );
    assert_eq!(handle.snapshot().not_permitted_calls, rejected);
    let probes = probe_numbers(&capture, "cycling");
    assert!(!probes.is_empty());
    let most = probes.iter().copied().max().unwrap();
    assert!(most <= 4, "probe {most} admitted: more than either limit");

    // Settled at one probe: never a second slot from now on.
    assert_eq!(handle.config(), one);
    capture.clear();
    let (failed, rejected) = hammer(&svc, CALLERS, 100).await;
    assert_eq!(failed + rejected, (CALLERS * 100) as u64);
    let probes = probe_numbers(&capture, "cycling");
    assert!(!probes.is_empty());
    assert!(probes.iter().all(|&n| n == 1), "{probes:?}");
}
