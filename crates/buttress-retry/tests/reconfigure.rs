//! `RetryHandle::reconfigure` and `config`: the live settings reach the
//! next calls of services made before the change, a retry in progress
//! keeps what it started with, refusals change nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::{BoxError, RetryExhausted};
use buttress_retry::{Backoff, BudgetConfig, Jitter, RetryConfig};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Fixed delays of `delay`, no jitter, `attempts` attempts.
fn config(attempts: u32, delay: Duration) -> RetryConfig {
    RetryConfig {
        name: "upstream".to_owned(),
        max_attempts: attempts,
        backoff: Backoff::fixed(delay),
        jitter: Jitter::None,
        max_delay: Duration::from_secs(10),
        ..RetryConfig::default()
    }
}

/// An always failing service that records, per request, the instants of
/// its attempts.
#[derive(Clone, Default)]
struct Down {
    attempts: Arc<Mutex<HashMap<u32, Vec<Instant>>>>,
}

impl Down {
    fn of(&self, id: u32) -> Vec<Instant> {
        self.attempts
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    fn gaps(&self, id: u32) -> Vec<Duration> {
        self.of(id).windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = u32,
        Error = BoxError,
        Future = std::future::Ready<Result<u32, BoxError>>,
    > + Clone
           + Send {
        let attempts = self.attempts.clone();
        service_fn(move |id: u32| {
            attempts
                .lock()
                .unwrap()
                .entry(id)
                .or_default()
                .push(Instant::now());
            std::future::ready(Err::<u32, BoxError>("down".into()))
        })
    }
}

fn exhausted(err: &BoxError) -> &RetryExhausted {
    err.downcast_ref::<RetryExhausted>()
        .expect("a RetryExhausted")
}

#[tokio::test(start_paused = true)]
async fn attempts_and_delays_reach_the_next_calls_of_services_made_before() {
    let layer = config(3, ms(10)).build().unwrap();
    let handle = layer.handle();
    let down = Down::default();
    let mut svc = layer.layer(down.service());

    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(exhausted(&err).attempts(), 3);
    assert_eq!(down.gaps(1), vec![ms(10); 2]);

    // A check applies nothing.
    handle.check_reconfigure(&config(5, ms(50))).unwrap();
    assert_eq!(handle.config(), config(3, ms(10)));
    handle.reconfigure(&config(5, ms(50))).unwrap();
    let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(exhausted(&err).attempts(), 5);
    assert_eq!(down.gaps(2), vec![ms(50); 4]);

    // A clone made now, and the layer's next service, agree.
    let err = svc.clone().oneshot(3).await.unwrap_err();
    assert_eq!(exhausted(&err).attempts(), 5);
    let err = layer.layer(down.service()).oneshot(4).await.unwrap_err();
    assert_eq!(exhausted(&err).attempts(), 5);

    // max_delay caps the backoff, max_elapsed ends the retries.
    let capped = RetryConfig {
        max_attempts: 10,
        max_delay: ms(20),
        max_elapsed: Some(ms(45)),
        ..config(10, ms(50))
    };
    handle.reconfigure(&capped).unwrap();
    let err = svc.ready().await.unwrap().call(5).await.unwrap_err();
    assert_eq!(down.gaps(5), vec![ms(20); 2], "attempts at 0, 20 and 40 ms");
    assert_eq!(exhausted(&err).attempts(), 3);
    assert_eq!(handle.config(), capped);
}

#[tokio::test(start_paused = true)]
async fn a_retry_in_progress_keeps_its_attempt_budget_and_backoff() {
    let layer = config(3, ms(100)).build().unwrap();
    let handle = layer.handle();
    let down = Down::default();
    let svc = layer.layer(down.service());

    let in_progress = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    assert_eq!(down.of(1).len(), 1, "the first attempt was made");
    handle.reconfigure(&config(8, ms(1))).unwrap();
    let err = in_progress.await.unwrap().unwrap_err();
    assert_eq!(exhausted(&err).attempts(), 3);
    assert_eq!(down.gaps(1), vec![ms(100); 2]);

    // Lowered while one is in progress: it still has its three.
    let in_progress = tokio::spawn(svc.clone().oneshot(2));
    tokio::task::yield_now().await;
    handle.reconfigure(&config(1, ms(1))).unwrap();
    let err = in_progress.await.unwrap().unwrap_err();
    assert_eq!(exhausted(&err).attempts(), 8);
    assert_eq!(down.gaps(2), vec![ms(1); 7]);

    // And the next call has one attempt.
    svc.clone().oneshot(3).await.unwrap_err();
    assert_eq!(down.of(3).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_with_builds_error_and_nothing_changes() {
    let before = config(3, ms(10));
    let handle = before.build().unwrap().handle();
    let bad = [
        config(0, ms(10)),
        RetryConfig {
            max_delay: Duration::ZERO,
            ..before.clone()
        },
        RetryConfig {
            max_elapsed: Some(Duration::ZERO),
            ..before.clone()
        },
        config(20, ms(10)),
        RetryConfig {
            jitter: Jitter::Proportional(-1.0),
            ..before.clone()
        },
        // Build checks the budget first: both errors, the budget's wins.
        RetryConfig {
            budget: Some(BudgetConfig {
                percent: -5.0,
                ..BudgetConfig::default()
            }),
            ..config(0, ms(10))
        },
        RetryConfig {
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
async fn name_budget_and_seed_are_refused_naming_the_field_and_nothing_changes() {
    let before = RetryConfig {
        budget: Some(BudgetConfig::default()),
        seed: Some(7),
        ..config(3, ms(10))
    };
    let layer = before.build().unwrap();
    let handle = layer.handle();
    let more = RetryConfig {
        max_attempts: 6,
        ..before.clone()
    };
    let changes = [
        (
            "name",
            RetryConfig {
                name: "other".to_owned(),
                ..more.clone()
            },
        ),
        (
            "budget",
            RetryConfig {
                budget: None,
                ..more.clone()
            },
        ),
        (
            "budget",
            RetryConfig {
                budget: Some(BudgetConfig {
                    percent: 50.0,
                    ..BudgetConfig::default()
                }),
                ..more.clone()
            },
        ),
        (
            "seed",
            RetryConfig {
                seed: Some(8),
                ..more.clone()
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
    let down = Down::default();
    let err = layer.layer(down.service()).oneshot(1).await.unwrap_err();
    assert_eq!(exhausted(&err).attempts(), 3, "still the old settings");
    handle.reconfigure(&more).unwrap();
    assert_eq!(handle.config(), more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_during_flips_get_one_whole_setting_and_none_is_lost() {
    const CALLERS: u32 = 8;
    const CALLS: u32 = 60;
    let two = config(2, Duration::from_micros(1));
    let four = config(4, Duration::from_micros(1));
    let layer = two.build().unwrap();
    let handle = layer.handle();
    let down = Down::default();
    let svc = layer.layer(down.service());

    let flipper = {
        let (handle, two, four) = (handle.clone(), two.clone(), four.clone());
        tokio::spawn(async move {
            for i in 0..1_000 {
                handle
                    .reconfigure(if i % 2 == 0 { &four } else { &two })
                    .unwrap();
                let seen = handle.config();
                assert!(seen == two || seen == four, "a mix: {seen:?}");
                tokio::task::yield_now().await;
            }
        })
    };
    let callers: Vec<_> = (0..CALLERS)
        .map(|t| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let mut attempts = Vec::new();
                for i in 0..CALLS {
                    let err = svc
                        .ready()
                        .await
                        .unwrap()
                        .call(t * 1_000 + i)
                        .await
                        .unwrap_err();
                    attempts.push((t * 1_000 + i, exhausted(&err).attempts()));
                }
                attempts
            })
        })
        .collect();
    let mut answered = 0;
    for c in callers {
        for (id, n) in c.await.unwrap() {
            assert!(n == 2 || n == 4, "call {id}: {n} attempts");
            assert_eq!(down.of(id).len(), n as usize, "call {id}");
            answered += 1;
        }
    }
    flipper.await.unwrap();
    assert_eq!(answered, CALLERS * CALLS, "a call was lost");
    assert_eq!(handle.config(), two);
}
