//! Policies: each preset builds its layers in the README's order, with its
//! values; slots can be replaced and removed; `execute` runs plain async
//! code under the same layers.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress::bulkhead::BulkheadHandle;
use buttress::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerHandle, State};
use buttress::core::error::{chain, kind_of, CircuitOpen, ErrorKind};
use buttress::policy::{Generic, Policy};
use buttress::retry::{Backoff, Jitter, RetryConfig, RetryHandle};
use buttress::timeout::TimeoutHandle;
use buttress::{BoxError, Registry};
use tower::{Service, ServiceBuilder, ServiceExt};

fn retry(attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts: attempts,
        backoff: Backoff::fixed(Duration::ZERO),
        jitter: Jitter::None,
        ..RetryConfig::default()
    }
}

/// A service that counts its calls and sleeps `ms[i]` on call `i` (the
/// last entry for every later call), failing when told to.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicU32>,
    sleeps: Arc<Vec<u64>>,
    fail: bool,
}

impl Upstream {
    fn new(sleeps: &[u64], fail: bool) -> Self {
        Self {
            calls: Arc::default(),
            sleeps: Arc::new(sleeps.to_vec()),
            fail,
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<u32> for Upstream {
    type Response = u32;
    type Error = BoxError;
    type Future = futures_like::Boxed<u32>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        let i = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
        let ms = *self.sleeps.get(i).or(self.sleeps.last()).unwrap_or(&0);
        let fail = self.fail;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if fail {
                Err("upstream failed".into())
            } else {
                Ok(req)
            }
        })
    }
}

mod futures_like {
    pub(crate) type Boxed<T> =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, buttress::BoxError>> + Send>>;
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_sits_inside_the_retry() {
    // The first attempt hangs past its 1 s; the second answers at once.
    let upstream = Upstream::new(&[10_000, 0], false);
    let layer = Policy::new()
        .retry(retry(2))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_sits_outside_the_retry() {
    // Every attempt hangs: attempts start at 0 s, 1 s and 2 s (each cut at
    // 1 s), then the total of 2.5 s ends the call during the third.
    let upstream = Upstream::new(&[10_000], false);
    let layer = Policy::new()
        .retry(retry(10))
        .timeout(Duration::from_millis(2500))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    let started = tokio::time::Instant::now();
    let err = svc.oneshot(7).await.unwrap_err();
    assert_eq!(kind_of(&*err), Some(ErrorKind::Timeout));
    assert_eq!(started.elapsed(), Duration::from_millis(2500));
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_sits_below_the_retry_and_stops_it() {
    // Two failed attempts open the breaker (two consecutive failures);
    // the next attempt is refused without reaching the upstream, and its
    // hint (60 s until half-open) is beyond the retry's longest wait.
    let upstream = Upstream::new(&[0], true);
    let registry = Registry::new();
    let layer = Policy::new()
        .retry(retry(5))
        .circuit_breaker(CircuitBreakerConfig {
            consecutive_failures: Some(2),
            ..CircuitBreakerConfig::default()
        })
        .build_named::<Generic>("orders", Some(&registry))
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    let err = svc.oneshot(7).await.unwrap_err();
    assert_eq!(upstream.calls(), 2);
    // The retry gives up on the open breaker: its error says so, with the
    // breaker's rejection as the cause.
    assert_eq!(kind_of(&*err), Some(ErrorKind::RetryExhausted));
    assert!(chain(&*err).any(|e| e.is::<CircuitOpen>()), "{err:?}");
    let breaker: CircuitBreakerHandle = registry.get("orders.circuit_breaker").unwrap();
    assert_eq!(breaker.state(), State::Open);
    let retry: RetryHandle = registry.get("orders.retry").unwrap();
    assert_eq!(retry.name(), "orders.retry");
}

#[tokio::test(start_paused = true)]
async fn each_preset_registers_its_slots_under_the_policy_name() {
    let cases = [
        (Policy::api(), true),
        (Policy::ai(), true),
        (Policy::database(), true),
        (Policy::external(), true),
        (Policy::critical(), false),
    ];
    for (i, (policy, has_breaker)) in cases.into_iter().enumerate() {
        let registry = Registry::new();
        let name = format!("p{i}");
        let layer = policy
            .build_named::<Generic>(&name, Some(&registry))
            .unwrap();
        let mut want = vec![
            format!("{name}.attempt_timeout"),
            format!("{name}.bulkhead"),
            format!("{name}.retry"),
            format!("{name}.timeout"),
        ];
        if has_breaker {
            want.push(format!("{name}.circuit_breaker"));
        }
        want.sort();
        assert_eq!(registry.names(), want);
        assert_eq!(layer.circuit_breaker().is_some(), has_breaker);
        // The values reached the instances.
        let total: TimeoutHandle = registry.get(&format!("{name}.timeout")).unwrap();
        assert_eq!(
            total.snapshot().timeout,
            policy_total(i),
            "the total timeout of preset {i}"
        );
        let bulkhead: BulkheadHandle = registry.get(&format!("{name}.bulkhead")).unwrap();
        assert_eq!(bulkhead.snapshot().max_concurrent, [50, 10, 100, 20, 5][i]);
        // And the layer works.
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(Upstream::new(&[0], false));
        assert_eq!(svc.oneshot(3).await.unwrap(), 3);
    }
}

fn policy_total(i: usize) -> Duration {
    Duration::from_secs([30, 120, 30, 15, 60][i])
}

#[tokio::test(start_paused = true)]
async fn an_empty_policy_passes_calls_through() {
    let upstream = Upstream::new(&[5], false);
    let layer = Policy::new().build().unwrap();
    assert_eq!(
        format!("{layer:?}"),
        r#"PolicyLayer { name: "policy", layers: [] }"#
    );
    let svc = ServiceBuilder::new().layer(layer).service(upstream.clone());
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    assert_eq!(upstream.calls(), 1);
}

#[test]
fn an_invalid_slot_names_its_field() {
    let err = Policy::new().retry(retry(0)).build().unwrap_err();
    assert_eq!(err.field(), "retry.max_attempts");
    let err = Policy::api()
        .attempt_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "attempt_timeout.timeout");
}

#[test]
fn two_policies_of_one_name_in_one_registry_are_refused() {
    let registry = Registry::new();
    Policy::api()
        .build_named::<Generic>("api", Some(&registry))
        .unwrap();
    let err = Policy::api()
        .build_named::<Generic>("api", Some(&registry))
        .unwrap_err();
    assert!(err.reason().contains("api.timeout"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn execute_runs_a_closure_under_the_policy() {
    let policy = Policy::new()
        .retry(retry(3))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    // Hangs once, fails once, then answers.
    let out = policy
        .execute(|| async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(0)
                }
                1 => Err(std::io::Error::other("reset")),
                n => Ok(n),
            }
        })
        .await
        .unwrap();
    assert_eq!(out, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // The closure's own error comes back, downcastable.
    let err = Policy::new()
        .build()
        .unwrap()
        .execute(|| async { Err::<(), _>(std::io::Error::other("no")) })
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<std::io::Error>().unwrap().to_string(),
        "no"
    );
}
