//! Many tasks on a two-worker runtime, moving between workers, against one
//! limiter in real time with a rate so slow that nothing refills during
//! the test: exactly the burst passes, globally, per key, and under a
//! global limit beside the keys'.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use buttress_core::error::BoxError;
use buttress_core::key::FnKey;
use buttress_core::RateLimited;
use buttress_rate_limit::{Algorithm, KeyedRateLimitLayer, Rate, RateLimitEvent, RateLimitLayer};
use tower::{Service, ServiceBuilder, ServiceExt};

const TASKS: usize = 8;
const CALLS_PER_TASK: usize = 150;
const KEYS: u32 = 5;
/// Each test runs this many times over, for more interleavings.
const ROUNDS: usize = 5;

/// Admitted calls per key (index 0 for the global tests), counted by the
/// inner service.
fn counters() -> Arc<Vec<AtomicU64>> {
    Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect())
}

/// Runs `TASKS` tasks of `CALLS_PER_TASK` calls each on clones of `svc`,
/// each task going round the keys and yielding between calls (so tasks
/// move between the workers); returns the rejections seen.
async fn hammer<S>(svc: S) -> u64
where
    S: Service<u32, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut rejected = 0;
            for i in 0..CALLS_PER_TASK {
                let key = ((t + i) as u32) % KEYS;
                match svc.ready().await.unwrap().call(key).await {
                    Ok(()) => {}
                    Err(e) => {
                        assert!(e.downcast_ref::<RateLimited>().is_some(), "{e}");
                        rejected += 1;
                    }
                }
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            rejected
        }));
    }
    let mut rejected = 0;
    for t in tasks {
        rejected += t.await.unwrap();
    }
    rejected
}

fn inner(
    counts: Arc<Vec<AtomicU64>>,
) -> impl Service<
    u32,
    Response = (),
    Error = Infallible,
    Future = std::future::Ready<Result<(), Infallible>>,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |key: u32| {
        counts[key as usize].fetch_add(1, Relaxed);
        std::future::ready(Ok(()))
    })
}

fn total(counts: &[AtomicU64]) -> u64 {
    counts.iter().map(|c| c.load(Relaxed)).sum()
}

/// A listener counting admitted calls into `permitted`: the limiter does
/// not count them, its `Permitted` events do.
fn count_permitted(permitted: &Arc<AtomicU64>) -> impl Fn(&RateLimitEvent) + Send + Sync + 'static {
    let permitted = permitted.clone();
    move |e: &RateLimitEvent| {
        if let RateLimitEvent::Permitted { .. } = e {
            permitted.fetch_add(1, Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limiter_admits_exactly_its_burst() {
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
    ]
    .repeat(ROUNDS)
    {
        // The windows take no burst: 50 per hour; the buckets 100 per hour
        // with a burst of 50 (one refill every 36 s).
        let mut builder = RateLimitLayer::builder(Rate::per_hour(100)).algorithm(algorithm);
        builder = match algorithm {
            Algorithm::Gcra | Algorithm::TokenBucket => builder.burst(50),
            _ => RateLimitLayer::builder(Rate::per_hour(50)).algorithm(algorithm),
        };
        let permitted = Arc::new(AtomicU64::new(0));
        let layer = builder
            .on_event(count_permitted(&permitted))
            .build()
            .unwrap();
        let handle = layer.handle();
        let counts = counters();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(inner(counts.clone()));
        let rejected = hammer(svc).await;
        assert_eq!(total(&counts), 50, "{algorithm}");
        assert_eq!(rejected, (TASKS * CALLS_PER_TASK) as u64 - 50);
        assert_eq!(permitted.load(Relaxed), 50, "{algorithm}");
        let s = handle.snapshot();
        assert_eq!((s.rejected, s.available), (rejected, 0));
    }
}

fn by_key() -> FnKey<fn(&u32) -> Option<u32>, u32> {
    FnKey::new(|k: &u32| Some(*k))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_limiter_admits_exactly_the_burst_of_each_key() {
    for algorithm in [Algorithm::Gcra, Algorithm::TokenBucket].repeat(ROUNDS) {
        let permitted = Arc::new(AtomicU64::new(0));
        let layer = KeyedRateLimitLayer::builder(by_key(), Rate::per_hour(100))
            .algorithm(algorithm)
            .burst(20)
            .on_event(count_permitted(&permitted))
            .build::<u32>()
            .unwrap();
        let handle = layer.handle();
        let counts = counters();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(inner(counts.clone()));
        let rejected = hammer(svc).await;
        for k in 0..KEYS {
            assert_eq!(counts[k as usize].load(Relaxed), 20, "{algorithm} key {k}");
            assert_eq!(handle.key(&k).available, 0);
        }
        let admitted = 20 * u64::from(KEYS);
        assert_eq!(permitted.load(Relaxed), admitted, "{algorithm}");
        assert_eq!(rejected, (TASKS * CALLS_PER_TASK) as u64 - admitted);
        assert_eq!(handle.rejected(), rejected, "{algorithm}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_beside_the_keys_never_passes_its_burst_nor_charges_refused_keys() {
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingLog,
    ]
    .repeat(ROUNDS)
    {
        // Five keys of 20 could take 100; the global limit lets 50 pass.
        let permitted = Arc::new(AtomicU64::new(0));
        let layer = match algorithm {
            Algorithm::SlidingLog => KeyedRateLimitLayer::builder(by_key(), Rate::per_hour(20))
                .global(Rate::per_hour(50), None),
            _ => KeyedRateLimitLayer::builder(by_key(), Rate::per_hour(100))
                .burst(20)
                .global(Rate::per_hour(100), Some(50)),
        }
        .algorithm(algorithm)
        .on_event(count_permitted(&permitted))
        .build::<u32>()
        .unwrap();
        let handle = layer.handle();
        let counts = counters();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(inner(counts.clone()));
        let rejected = hammer(svc).await;
        assert_eq!(total(&counts), 50, "{algorithm}");
        // Each key was charged exactly what it was admitted.
        for k in 0..KEYS {
            let admitted = counts[k as usize].load(Relaxed);
            assert!(admitted <= 20);
            assert_eq!(
                handle.key(&k).available,
                20 - admitted,
                "{algorithm} key {k}: charged for a refused call"
            );
        }
        let global = handle.global().unwrap().snapshot();
        assert_eq!(global.available, 0);
        assert_eq!(permitted.load(Relaxed), 50, "{algorithm}");
        assert_eq!(rejected, (TASKS * CALLS_PER_TASK) as u64 - 50);
        assert_eq!(handle.rejected(), rejected, "{algorithm}");
    }
}
