//! The keyed map behind keyed layers, `buttress_core::key::BoundedMap`
//! (sharded, bounded eviction sweep), against the previous implementation
//! (one mutex over a `std` `HashMap`, a full scan when a new key finds the
//! map full), copied below as `previous`.
//!
//! `cargo bench -p buttress-benches --bench keyed`. Keys are IPv4
//! addresses, values `Arc<AtomicU64>` (what a keyed layer clones out), or a
//! plain `u64` updated in place through `with_entry`. `now` is a fixed
//! instant (or one advanced by arithmetic): the clock read is the caller's
//! cost, not the map's.
//!
//! - `hit/100k`: a key already held, in a map of 100k keys, keys visited in
//!   a scattered order so most lookups miss the CPU cache as they would in
//!   a server.
//! - `new-key/full-idle`: a new key on a full map where every entry but the
//!   last thousand inserted is idle and evictable (each one makes room).
//! - `new-key/full-busy`: a new key on a full map where nothing may go: the
//!   answer is `None`.
//! - `hit/100k/N-thread`: hits split over N threads on one shared map, time
//!   per call (wall time / calls), as in the `scaling` bench.
//! - `keyed/rate-limit/hit/100k`: the same hits through the keyed rate
//!   limiter's layer (`KeyedRateLimitLayer`, GCRA, a `FnKey` taking the
//!   request's `IpAddr`, every call admitted): `poll_ready`, `call` and the
//!   response future polled to completion over a bare service, as in the
//!   `layers` bench. Unlike the map cases the layer reads its own clock:
//!   tokio's (`exact`), or a coarse clock of 1 ms (`coarse-1ms`, one
//!   atomic load; its ticker is started in a current-thread runtime that
//!   is then not driven, so the time it reads stands still, as between two
//!   ticks).

// criterion_group! and criterion_main! generate undocumented public items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use buttress_core::key::{BoundedMap, FnKey};
use buttress_rate_limit::{KeyedRateLimitLayer, Rate};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// The previous implementation of `BoundedMap` (before the sharded map),
/// unchanged but for the docs, as the baseline.
mod previous {
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::{Mutex, MutexGuard};
    use std::time::Duration;

    use tokio::time::Instant;

    pub(crate) struct BoundedMap<K, V> {
        max_keys: usize,
        idle_timeout: Duration,
        map: Mutex<HashMap<K, (V, Instant)>>,
    }

    impl<K: Hash + Eq, V: Clone> BoundedMap<K, V> {
        pub(crate) fn new(max_keys: usize, idle_timeout: Duration) -> Self {
            Self {
                max_keys,
                idle_timeout,
                map: Mutex::new(HashMap::new()),
            }
        }

        fn lock(&self) -> MutexGuard<'_, HashMap<K, (V, Instant)>> {
            self.map.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub(crate) fn get_or_insert(
            &self,
            key: K,
            now: Instant,
            make: impl FnOnce(&K) -> V,
            evictable: impl Fn(&V) -> bool,
        ) -> Option<V> {
            let mut map = self.lock();
            if let Some((value, last_used)) = map.get_mut(&key) {
                *last_used = now;
                return Some(value.clone());
            }
            if map.len() >= self.max_keys {
                let idle = self.idle_timeout;
                map.retain(|_, (v, last)| !(now.duration_since(*last) >= idle && evictable(v)));
                if map.len() >= self.max_keys {
                    return None;
                }
            }
            let value = make(&key);
            map.insert(key, (value.clone(), now));
            Some(value)
        }
    }
}

type Value = Arc<AtomicU64>;

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// `0..n` in a scattered order (a multiplicative permutation).
fn scattered(n: u32) -> Vec<IpAddr> {
    let step = 2_654_435_761u64 % u64::from(n);
    let step = (step..)
        .find(|s| gcd(*s, u64::from(n)) == 1)
        .expect("a coprime step");
    (0..u64::from(n))
        .map(|i| ip((i * step % u64::from(n)) as u32))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn make(_: &IpAddr) -> Value {
    Arc::new(AtomicU64::new(0))
}

fn unshared(v: &Value) -> bool {
    Arc::strong_count(v) == 1
}

/// One call of a keyed layer on the map: look up, use, drop the clone.
trait Keyed: Sync {
    fn call(&self, key: IpAddr, now: Instant) -> bool;
}

impl Keyed for BoundedMap<IpAddr, Value> {
    fn call(&self, key: IpAddr, now: Instant) -> bool {
        self.get_or_insert(key, now, make, unshared)
            .map(|v| v.fetch_add(1, Relaxed))
            .is_some()
    }
}

impl Keyed for previous::BoundedMap<IpAddr, Value> {
    fn call(&self, key: IpAddr, now: Instant) -> bool {
        self.get_or_insert(key, now, make, unshared)
            .map(|v| v.fetch_add(1, Relaxed))
            .is_some()
    }
}

/// The in-place form a rate limiter can use: no `Arc`, no atomics.
struct InPlace(BoundedMap<IpAddr, u64>);

impl Keyed for InPlace {
    fn call(&self, key: IpAddr, now: Instant) -> bool {
        self.0
            .with_entry(key, now, |_| 0, |_| true, |n| *n += 1)
            .is_some()
    }
}

fn filled<M: Keyed>(map: M, keys: &[IpAddr], now: Instant) -> M {
    for k in keys {
        assert!(map.call(*k, now), "the map has room for every key");
    }
    map
}

const HIT_KEYS: u32 = 100_000;

fn hit_maps(keys: &[IpAddr], now: Instant) -> Vec<(&'static str, Box<dyn Keyed>)> {
    let n = keys.len();
    let idle = Duration::from_secs(60);
    vec![
        (
            "sharded",
            Box::new(filled(BoundedMap::new(n, idle), keys, now)) as Box<dyn Keyed>,
        ),
        (
            "sharded-in-place",
            Box::new(filled(InPlace(BoundedMap::new(n, idle)), keys, now)),
        ),
        (
            "previous",
            Box::new(filled(previous::BoundedMap::new(n, idle), keys, now)),
        ),
    ]
}

fn hit(c: &mut Criterion) {
    let now = Instant::now();
    let keys = scattered(HIT_KEYS);
    let mut group = c.benchmark_group("keyed/hit/100k");
    for (name, map) in hit_maps(&keys, now) {
        group.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                if i == keys.len() {
                    i = 0;
                }
                black_box(map.call(black_box(keys[i]), now))
            })
        });
    }
    group.finish();
}

/// `iters` hits split over `threads` threads, each walking the keys from
/// its own offset.
fn run(map: &dyn Keyed, keys: &[IpAddr], now: Instant, iters: u64, threads: u64) -> Duration {
    let per_thread = iters / threads;
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let mut i = (t as usize * keys.len()) / threads as usize;
                for _ in 0..per_thread {
                    i += 1;
                    if i == keys.len() {
                        i = 0;
                    }
                    black_box(map.call(black_box(keys[i]), now));
                }
            });
        }
    });
    start.elapsed()
}

fn hit_threads(c: &mut Criterion) {
    let now = Instant::now();
    let keys = scattered(HIT_KEYS);
    let maps = hit_maps(&keys, now);
    let mut group = c.benchmark_group("keyed/hit/100k/threads");
    for threads in [1u64, 2] {
        for (name, map) in &maps {
            group.bench_function(BenchmarkId::new(*name, format!("{threads}-thread")), |b| {
                b.iter_custom(|iters| run(map.as_ref(), &keys, now, iters.max(threads), threads))
            });
        }
    }
    group.finish();
}

fn new_key(c: &mut Criterion) {
    let t0 = Instant::now();
    let idle = Duration::from_secs(1);
    let mut group = c.benchmark_group("keyed/new-key");
    for n in [10_000u32, 100_000] {
        let keys: Vec<IpAddr> = (0..n).map(ip).collect();
        // Every entry idle but the last thousand inserted: `now` moves 1 ms
        // a key, the idle timeout is one second.
        let maps: Vec<(&str, Box<dyn Keyed>)> = vec![
            (
                "sharded",
                Box::new(filled(BoundedMap::new(n as usize, idle), &keys, t0)),
            ),
            (
                "previous",
                Box::new(filled(
                    previous::BoundedMap::new(n as usize, idle),
                    &keys,
                    t0,
                )),
            ),
        ];
        for (name, map) in &maps {
            let mut next = n;
            let mut now = t0 + 2 * idle;
            group.bench_function(BenchmarkId::new(format!("full-idle/{name}"), n), |b| {
                b.iter(|| {
                    next += 1;
                    now += Duration::from_millis(1);
                    let admitted = map.call(ip(next), now);
                    assert!(admitted, "an idle entry makes room");
                })
            });
        }

        // Nothing may go: every entry is idle but refused.
        let later = t0 + 2 * idle;
        let busy = |_: &Value| false;
        let sharded: BoundedMap<IpAddr, Value> = BoundedMap::new(n as usize, idle);
        let sharded = filled(sharded, &keys, t0);
        let prev = filled(previous::BoundedMap::new(n as usize, idle), &keys, t0);
        let mut next = n;
        group.bench_function(BenchmarkId::new("full-busy/sharded", n), |b| {
            b.iter(|| {
                next += 1;
                let got = sharded.get_or_insert(ip(next), later, make, busy);
                assert!(got.is_none());
            })
        });
        group.bench_function(BenchmarkId::new("full-busy/previous", n), |b| {
            b.iter(|| {
                next += 1;
                let got = prev.get_or_insert(ip(next), later, make, busy);
                assert!(got.is_none());
            })
        });
    }
    group.finish();
}

/// Rate and burst per key: every call admitted (one permit per
/// nanosecond, a second's worth of burst), as in the `layers` bench.
const RATE_HUGE: u64 = 1_000_000_000;

/// `poll_ready`, `call`, poll to completion, as `cases::drive` does.
#[inline]
fn drive<S: Service<IpAddr>>(svc: &mut S, key: IpAddr) {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("a benchmark service must be ready"),
    }
    let mut fut = pin!(svc.call(key));
    loop {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            assert!(res.is_ok(), "every call is admitted");
            black_box(res.ok());
            return;
        }
    }
}

fn rate_limit_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let _guard = rt.enter();
    let keys = scattered(HIT_KEYS);
    let mut group = c.benchmark_group("keyed/rate-limit/hit/100k");
    for (name, resolution) in [
        ("exact", None),
        ("coarse-1ms", Some(Duration::from_millis(1))),
    ] {
        let mut builder = KeyedRateLimitLayer::builder(
            FnKey::new(|ip: &IpAddr| Some(*ip)),
            Rate::per_second(RATE_HUGE),
        )
        .burst(RATE_HUGE)
        .max_keys(HIT_KEYS as usize);
        if let Some(resolution) = resolution {
            builder = builder.resolution(resolution);
        }
        let layer = builder.build().expect("a valid keyed rate limiter");
        let mut svc = layer.layer(tower::service_fn(|ip: IpAddr| {
            std::future::ready(Ok::<_, Infallible>(ip))
        }));
        for k in &keys {
            drive(&mut svc, *k);
        }
        // Let the coarse clock's ticker run once, as in a running server.
        rt.block_on(tokio::task::yield_now());
        assert_eq!(layer.handle().keys(), keys.len(), "every key is held");
        group.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                if i == keys.len() {
                    i = 0;
                }
                drive(&mut svc, black_box(keys[i]))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = hit, rate_limit_hit, hit_threads, new_key
}
criterion_main!(benches);
