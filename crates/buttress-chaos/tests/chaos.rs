//! The chaos layer on tower services: switching, seeding, rates, latency
//! under paused time, hangs, selection, configuration, events.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_chaos::error::{is_injected, InjectedFault};
use buttress_chaos::select::{Keys, Routes};
use buttress_chaos::{ChaosEvent, ChaosHandle, ChaosLayer, FaultKind, Latency};
use buttress_core::key::Header;
use buttress_core::{BoxError, Registry};
use http::{Method, Request, Response};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A service that counts the calls that reach it.
fn counting() -> (
    Arc<AtomicUsize>,
    impl Service<
            u64,
            Response = u64,
            Error = Infallible,
            Future = impl std::future::Future<Output = Result<u64, Infallible>> + Send,
        > + Clone
        + Send,
) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let svc = tower::service_fn(move |n: u64| {
        h.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(n) }
    });
    (hits, svc)
}

/// What happened to each call: `Ok` or which injected fault.
async fn outcomes<S>(svc: &mut S, calls: u64) -> Vec<Result<u64, FaultKind>>
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    let mut out = Vec::new();
    for i in 0..calls {
        let r = svc.ready().await.unwrap().call(i).await;
        out.push(r.map_err(|e| e.downcast_ref::<InjectedFault>().unwrap().kind()));
    }
    out
}

fn layer(seed: u64, error_rate: f64) -> ChaosLayer {
    ChaosLayer::builder()
        .name("t")
        .seed(seed)
        .error_rate(error_rate)
        .enabled(true)
        .build()
        .unwrap()
}

#[tokio::test]
async fn off_by_default_even_with_rates_set() {
    let (hits, inner) = counting();
    let chaos = ChaosLayer::builder()
        .error_rate(1.0)
        .hang_rate(0.0)
        .build()
        .unwrap();
    assert!(!chaos.handle().is_enabled());
    let mut svc = ServiceBuilder::new().layer(chaos.clone()).service(inner);
    let out = outcomes(&mut svc, 50).await;
    assert!(out.iter().all(Result::is_ok));
    assert_eq!(hits.load(Ordering::SeqCst), 50);
    let s = chaos.handle().snapshot();
    assert_eq!((s.calls, s.injected), (0, [0; 5]));
}

#[tokio::test]
async fn switched_on_with_zero_rates_draws_nothing() {
    let (hits, inner) = counting();
    let chaos = ChaosLayer::builder().enabled(true).build().unwrap();
    let mut svc = ServiceBuilder::new().layer(chaos.clone()).service(inner);
    assert!(outcomes(&mut svc, 20).await.iter().all(Result::is_ok));
    assert_eq!(hits.load(Ordering::SeqCst), 20);
    assert_eq!(chaos.handle().snapshot().calls, 0);
}

#[tokio::test]
async fn an_injected_error_never_reaches_the_inner_service() {
    let (hits, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(layer(1, 1.0)).service(inner);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    let fault = err.downcast_ref::<InjectedFault>().unwrap();
    assert_eq!((fault.name(), fault.kind()), ("t", FaultKind::Error));
    assert!(is_injected(&*err));
    assert_eq!(buttress_core::error::kind_of(&*err), None);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults_and_another_seed_others() {
    let run = |seed| async move {
        let chaos = ChaosLayer::builder()
            .seed(seed)
            .error_rate(0.3)
            .hang_rate(0.0)
            .enabled(true)
            .build()
            .unwrap();
        let (_, inner) = counting();
        let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
        outcomes(&mut svc, 500).await
    };
    let a = run(7).await;
    assert_eq!(a, run(7).await);
    assert_ne!(a, run(8).await);
    assert!(a.iter().any(Result::is_ok) && a.iter().any(Result::is_err));
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_delays() {
    let run = || async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let chaos = ChaosLayer::builder()
            .seed(11)
            .latency(
                0.5,
                Latency::Normal {
                    mean: Duration::from_millis(40),
                    std_dev: Duration::from_millis(10),
                },
            )
            .enabled(true)
            .on_event(move |e: &ChaosEvent| {
                if let ChaosEvent::FaultInjected { delay, .. } = e {
                    s.lock().unwrap().push(*delay);
                }
            })
            .build()
            .unwrap();
        let (_, inner) = counting();
        let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
        outcomes(&mut svc, 200).await;
        let delays = seen.lock().unwrap().clone();
        delays
    };
    let a = run().await;
    assert!(a.len() > 50 && a.len() < 150, "{}", a.len());
    assert_eq!(a, run().await);
}

#[tokio::test]
async fn the_observed_error_rate_is_within_a_binomial_bound() {
    const N: u64 = 10_000;
    for (seed, p) in [(1, 0.1), (2, 0.5), (3, 0.01)] {
        let (_, inner) = counting();
        let mut svc = ServiceBuilder::new().layer(layer(seed, p)).service(inner);
        let errors = outcomes(&mut svc, N)
            .await
            .iter()
            .filter(|r| r.is_err())
            .count() as f64;
        let mean = N as f64 * p;
        let sigma = (N as f64 * p * (1.0 - p)).sqrt();
        // Five standard deviations: a fair generator misses this bound
        // with probability below 1e-6; the seed makes the count fixed.
        assert!(
            (errors - mean).abs() <= 5.0 * sigma,
            "p = {p}: {errors} errors in {N} calls, expected {mean} +- {}",
            5.0 * sigma
        );
    }
}

#[tokio::test]
async fn rates_of_zero_and_one_are_exact() {
    let (_, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(layer(5, 1.0)).service(inner);
    assert!(outcomes(&mut svc, 1000).await.iter().all(Result::is_err));
    let (_, inner) = counting();
    let chaos = layer(5, 0.0);
    chaos
        .handle()
        .set_latency(1.0, Latency::Fixed(Duration::ZERO))
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
    assert!(outcomes(&mut svc, 1000).await.iter().all(Result::is_ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_draw_exactly_the_sequential_number_of_faults() {
    const TASKS: u64 = 8;
    const CALLS: u64 = 1_000;
    // Sequentially, the first TASKS * CALLS calls of seed 21 fail this
    // many times...
    let (_, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(layer(21, 0.2)).service(inner);
    let expected = outcomes(&mut svc, TASKS * CALLS)
        .await
        .iter()
        .filter(|r| r.is_err())
        .count() as u64;
    // ...and in any interleaving too: each call takes its own number.
    let chaos = layer(21, 0.2);
    let (hits, inner) = counting();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut svc = ServiceBuilder::new()
                .layer(chaos.clone())
                .service(inner.clone());
            tokio::spawn(async move { outcomes(&mut svc, CALLS).await })
        })
        .collect();
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap().iter().filter(|r| r.is_err()).count() as u64;
    }
    let s = chaos.handle().snapshot();
    assert_eq!(errors, expected);
    assert_eq!(s.injected(FaultKind::Error), expected);
    assert_eq!(s.calls, TASKS * CALLS);
    assert_eq!(hits.load(Ordering::SeqCst) as u64, TASKS * CALLS - expected);
}

#[tokio::test]
async fn reseed_and_reset_replay_the_sequence() {
    let chaos = layer(1, 0.5);
    let (_, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(chaos.clone()).service(inner);
    let first = outcomes(&mut svc, 100).await;
    chaos.handle().reset();
    assert_eq!(chaos.handle().snapshot().calls, 0);
    assert_eq!(outcomes(&mut svc, 100).await, first);
    chaos.handle().reseed(2);
    let other = outcomes(&mut svc, 100).await;
    assert_ne!(other, first);
    chaos.handle().reseed(1);
    assert_eq!(outcomes(&mut svc, 100).await, first);
}

#[tokio::test]
async fn an_unseeded_instance_is_reproducible_by_its_name() {
    let run = |name: &'static str| async move {
        let chaos = ChaosLayer::builder()
            .name(name)
            .error_rate(0.5)
            .enabled(true)
            .build()
            .unwrap();
        let (_, inner) = counting();
        let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
        outcomes(&mut svc, 64).await
    };
    assert_eq!(run("a").await, run("a").await);
    assert_ne!(run("a").await, run("b").await);
}

#[tokio::test(start_paused = true)]
async fn a_fixed_delay_holds_the_call_on_tokio_time() {
    let polled = Arc::new(AtomicUsize::new(0));
    let p = polled.clone();
    let inner = tower::service_fn(move |n: u64| {
        let p = p.clone();
        async move {
            p.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(n)
        }
    });
    let chaos = ChaosLayer::builder()
        .latency(1.0, Latency::Fixed(Duration::from_millis(100)))
        .enabled(true)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(chaos.clone()).service(inner);
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(9));
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_pending!(fut.poll());
    assert_eq!(polled.load(Ordering::SeqCst), 0, "the inner future waits");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(fut.is_woken());
    assert_eq!(assert_ready_ok!(fut.poll()), 9);
    assert_eq!(polled.load(Ordering::SeqCst), 1);
    assert_eq!(chaos.handle().snapshot().injected(FaultKind::Latency), 1);
}

#[tokio::test(start_paused = true)]
async fn a_uniform_delay_stays_within_its_bounds() {
    let chaos = ChaosLayer::builder()
        .seed(4)
        .latency(
            1.0,
            Latency::Uniform {
                min: Duration::from_millis(10),
                max: Duration::from_millis(20),
            },
        )
        .enabled(true)
        .build()
        .unwrap();
    let (_, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
    for i in 0..50 {
        let start = tokio::time::Instant::now();
        svc.ready().await.unwrap().call(i).await.unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(10) && took <= Duration::from_millis(21),
            "{took:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_delayed_error_fails_after_the_delay() {
    let chaos = ChaosLayer::builder()
        .error_rate(1.0)
        .latency(1.0, Latency::Fixed(Duration::from_secs(1)))
        .enabled(true)
        .build()
        .unwrap();
    let (hits, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = assert_ready_err!(fut.poll());
    assert!(err.is::<InjectedFault>());
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hang_never_completes_until_dropped() {
    let chaos = ChaosLayer::builder()
        .hang_rate(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let (hits, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(chaos.clone()).service(inner);
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    assert_pending!(fut.poll());
    assert!(!fut.is_woken());
    drop(fut);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(chaos.handle().snapshot().injected(FaultKind::Hang), 1);
    // The service is still usable once chaos is off.
    chaos.handle().disable();
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_above_a_hang_ends_the_call() {
    let chaos = ChaosLayer::builder()
        .hang_rate(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let timeout = buttress_timeout::TimeoutLayer::new(Duration::from_secs(2)).unwrap();
    let (_, inner) = counting();
    let mut svc = ServiceBuilder::new()
        .layer(timeout)
        .layer(chaos)
        .service(inner);
    let start = tokio::time::Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.is::<buttress_core::Elapsed>(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test]
async fn the_handle_switches_and_retunes_at_run_time() {
    let (hits, inner) = counting();
    let chaos = ChaosLayer::builder().seed(9).build().unwrap();
    let handle = chaos.handle();
    let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
    assert!(outcomes(&mut svc, 10).await.iter().all(Result::is_ok));
    handle.set_error_rate(1.0).unwrap();
    assert!(
        outcomes(&mut svc, 10).await.iter().all(Result::is_ok),
        "still off"
    );
    handle.enable();
    assert!(outcomes(&mut svc, 10).await.iter().all(Result::is_err));
    handle.set_error_rate(0.0).unwrap();
    assert!(outcomes(&mut svc, 10).await.iter().all(Result::is_ok));
    handle.set_hang_rate(0.0).unwrap();
    handle.set_error_rate(1.0).unwrap();
    handle.disable();
    assert!(outcomes(&mut svc, 10).await.iter().all(Result::is_ok));
    assert_eq!(hits.load(Ordering::SeqCst), 40);
    assert_eq!(handle.snapshot().injected(FaultKind::Error), 10);
}

#[tokio::test]
async fn the_registry_finds_the_handle_and_controls_the_layer() {
    let registry = Registry::new();
    let chaos = ChaosLayer::builder()
        .name("orders-chaos")
        .registry(&registry)
        .build()
        .unwrap();
    let (_, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
    let handle = registry.get::<ChaosHandle>("orders-chaos").unwrap();
    handle.set_error_rate(1.0).unwrap();
    handle.enable();
    assert!(outcomes(&mut svc, 3).await.iter().all(Result::is_err));
    let snap = registry.snapshot();
    assert_eq!(snap["orders-chaos"]["kind"], "chaos");
    assert_eq!(snap["orders-chaos"]["state"]["enabled"], true);
    assert_eq!(snap["orders-chaos"]["state"]["injected"]["error"], 3);
    registry.reset_all();
    assert_eq!(handle.snapshot().injected(FaultKind::Error), 0);
    handle.disable();
    assert!(outcomes(&mut svc, 3).await.iter().all(Result::is_ok));
    // A second instance may not take the name.
    let dup = ChaosLayer::builder()
        .name("orders-chaos")
        .registry(&registry)
        .build()
        .unwrap_err();
    assert_eq!(dup.field(), "name");
}

fn http_inner() -> impl Service<
    Request<()>,
    Response = Response<&'static str>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<&'static str>, Infallible>> + Send,
> + Clone {
    tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new("ok")) })
}

async fn http_call<S>(svc: &mut S, method: Method, path: &str, tenant: Option<&str>) -> bool
where
    S: Service<Request<()>, Error = BoxError>,
{
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = tenant {
        req = req.header("x-tenant", t);
    }
    svc.ready()
        .await
        .unwrap()
        .call(req.body(()).unwrap())
        .await
        .is_ok()
}

#[tokio::test]
async fn routes_select_by_method_and_path() {
    let chaos = ChaosLayer::builder()
        .select(
            Routes::new()
                .route(Method::GET, "/search/*")
                .unwrap()
                .any_method("/pay")
                .unwrap(),
        )
        .error_rate(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(chaos.clone())
        .service(http_inner());
    assert!(!http_call(&mut svc, Method::GET, "/search/books", None).await);
    assert!(!http_call(&mut svc, Method::GET, "/search", None).await);
    assert!(!http_call(&mut svc, Method::POST, "/pay", None).await);
    assert!(http_call(&mut svc, Method::POST, "/search/books", None).await);
    assert!(http_call(&mut svc, Method::GET, "/searching", None).await);
    assert!(http_call(&mut svc, Method::GET, "/pay/extra", None).await);
    let s = chaos.handle().snapshot();
    // Unselected requests draw nothing.
    assert_eq!((s.calls, s.injected(FaultKind::Error)), (3, 3));
}

#[tokio::test]
async fn keys_select_by_a_core_key_extractor() {
    let canary = Keys::new(
        Header::new(http::HeaderName::from_static("x-tenant")),
        [b"canary".to_vec()],
    );
    let chaos = ChaosLayer::builder()
        .select(canary)
        .error_rate(1.0)
        .enabled(true)
        .build_http()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(chaos).service(http_inner());
    assert!(!http_call(&mut svc, Method::GET, "/", Some("canary")).await);
    assert!(http_call(&mut svc, Method::GET, "/", Some("acme")).await);
    assert!(http_call(&mut svc, Method::GET, "/", None).await);
}

#[tokio::test]
async fn a_closure_selects_too() {
    let chaos = ChaosLayer::builder()
        .select_fn(|n: &u64| n.is_multiple_of(2))
        .error_rate(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let (_, inner) = counting();
    let mut svc = ServiceBuilder::new().layer(chaos).service(inner);
    let out = outcomes(&mut svc, 6).await;
    let failed: Vec<bool> = out.iter().map(Result::is_err).collect();
    assert_eq!(failed, [true, false, true, false, true, false]);
}

#[test]
fn the_builder_and_setters_reject_bad_settings() {
    let field = |b: buttress_chaos::ChaosBuilder| b.build().unwrap_err().field();
    assert_eq!(field(ChaosLayer::builder().name("")), "name");
    assert_eq!(field(ChaosLayer::builder().error_rate(-0.1)), "error_rate");
    assert_eq!(
        field(ChaosLayer::builder().error_rate(f64::NAN)),
        "error_rate"
    );
    assert_eq!(field(ChaosLayer::builder().hang_rate(1.01)), "hang_rate");
    assert_eq!(
        field(ChaosLayer::builder().latency(f64::INFINITY, Latency::default())),
        "latency_rate"
    );
    assert_eq!(
        field(ChaosLayer::builder().error_rate(0.6).hang_rate(0.5)),
        "error_rate"
    );
    let e = ChaosLayer::builder()
        .abort_body_rate(0.1)
        .build()
        .unwrap_err();
    assert_eq!((e.component(), e.field()), ("chaos", "abort_body_rate"));
    assert!(e.reason().contains("build_http"), "{e}");
    assert_eq!(
        field(ChaosLayer::builder().truncate_body_rate(0.1)),
        "truncate_body_rate"
    );
    assert_eq!(
        field(ChaosLayer::builder().latency(
            0.5,
            Latency::Uniform {
                min: Duration::from_secs(2),
                max: Duration::from_secs(1)
            }
        )),
        "latency"
    );
    // Rates that add up to 1 with rounding are accepted.
    ChaosLayer::builder()
        .error_rate(0.1)
        .hang_rate(0.2)
        .abort_body_rate(0.7)
        .build_http()
        .unwrap();

    let handle = ChaosLayer::builder()
        .error_rate(0.5)
        .build()
        .unwrap()
        .handle();
    assert_eq!(handle.set_hang_rate(0.6).unwrap_err().field(), "error_rate");
    assert_eq!(
        handle.set_abort_body_rate(0.1).unwrap_err().field(),
        "abort_body_rate"
    );
    assert_eq!(
        handle
            .set_latency(2.0, Latency::Fixed(Duration::ZERO))
            .unwrap_err()
            .field(),
        "latency_rate"
    );
    assert_eq!(
        handle
            .set_latency(0.5, Latency::Fixed(buttress_chaos::MAX_LATENCY * 2))
            .unwrap_err()
            .field(),
        "latency"
    );
    let s = handle.snapshot();
    assert_eq!((s.error_rate, s.hang_rate, s.latency_rate), (0.5, 0.0, 0.0));
}

#[test]
fn events_report_each_fault_and_each_switch_in_order() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let chaos = ChaosLayer::builder()
            .name("ev")
            .error_rate(1.0)
            .latency(1.0, Latency::Fixed(Duration::from_millis(5)))
            .on_event(move |ev: &ChaosEvent| e.lock().unwrap().push(ev.clone()))
            .build()
            .unwrap();
        let (_, inner) = counting();
        let mut svc = ServiceBuilder::new().layer(chaos.clone()).service(inner);
        chaos.handle().enable();
        chaos.handle().enable();
        outcomes(&mut svc, 1).await;
        chaos.handle().disable();
    });
    let name: Arc<str> = Arc::from("ev");
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            ChaosEvent::Switched {
                name: name.clone(),
                enabled: true
            },
            ChaosEvent::FaultInjected {
                name: name.clone(),
                kind: FaultKind::Latency,
                delay: Duration::from_millis(5)
            },
            ChaosEvent::FaultInjected {
                name: name.clone(),
                kind: FaultKind::Error,
                delay: Duration::ZERO
            },
            ChaosEvent::Switched {
                name,
                enabled: false
            },
        ]
    );
}

#[tokio::test]
async fn an_inner_error_passes_through_boxed() {
    let chaos = layer(1, 0.0);
    let mut svc = ServiceBuilder::new()
        .layer(chaos)
        .service_fn(|_: u64| async { Err::<u64, _>(std::io::Error::other("down")) });
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.is::<std::io::Error>());
    assert!(!is_injected(&*err));
}

#[tokio::test]
async fn poll_ready_is_the_inner_services() {
    let (mut mock, mut handle) = tower_test::mock::spawn_layer::<u64, u64, _>(layer(1, 1.0));
    handle.allow(0);
    assert_pending!(mock.poll_ready());
    handle.allow(1);
    assert_ready!(mock.poll_ready()).unwrap();
    let err = mock.call(1).await.unwrap_err();
    assert!(err.is::<InjectedFault>());
}

#[tokio::test(start_paused = true)]
async fn an_http_layer_delays_fails_hangs_and_cuts_bodies() {
    use http_body_util::{BodyExt, Full};

    let chaos = ChaosLayer::builder()
        .name("http")
        .latency(1.0, Latency::Fixed(Duration::from_millis(50)))
        .enabled(true)
        .build_http()
        .unwrap();
    let handle = chaos.handle();
    let mut svc = ServiceBuilder::new()
        .layer(chaos)
        .service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from_static(
                b"payload",
            ))))
        });
    let req = || Request::new(());

    // Delayed, body untouched.
    let start = tokio::time::Instant::now();
    let res = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(res.body().fault(), None);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "payload"
    );

    // Failed.
    handle.set_latency(0.0, Latency::default()).unwrap();
    handle.set_error_rate(1.0).unwrap();
    let err = svc.ready().await.unwrap().call(req()).await.unwrap_err();
    assert!(err.is::<InjectedFault>());

    // Hung.
    handle.set_error_rate(0.0).unwrap();
    handle.set_hang_rate(1.0).unwrap();
    let mut hung = tokio_test::task::spawn(svc.ready().await.unwrap().call(req()));
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_pending!(hung.poll());
    drop(hung);

    // Truncated: the one frame is cut, the body ends empty.
    handle.set_hang_rate(0.0).unwrap();
    handle.set_truncate_body_rate(1.0).unwrap();
    let res = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(res.body().fault(), Some(FaultKind::TruncatedBody));
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "");

    // Aborted after the first frame (7 bytes let through): the body
    // ends with the injected error.
    handle.set_truncate_body_rate(0.0).unwrap();
    handle.set_abort_body_rate(1.0).unwrap();
    handle.set_body_fault_after(7);
    let res = svc.ready().await.unwrap().call(req()).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "payload");
    let err = body.frame().await.unwrap().unwrap_err();
    let fault = err.downcast_ref::<InjectedFault>().unwrap();
    assert_eq!(
        (fault.name(), fault.kind()),
        ("http", FaultKind::AbortedBody)
    );
    assert_eq!(err.to_string(), "chaos `http` aborted the response body");
    assert!(body.frame().await.is_none());

    let s = handle.snapshot();
    assert_eq!(s.injected, [1, 1, 1, 1, 1]);
    assert_eq!(s.calls, 5);
}

#[test]
fn the_registry_snapshot_shows_the_latency_as_a_config_file_would() {
    let registry = Registry::new();
    ChaosLayer::builder()
        .name("lat")
        .latency(
            0.25,
            Latency::Uniform {
                min: Duration::from_millis(5),
                max: Duration::from_millis(80),
            },
        )
        .registry(&registry)
        .build()
        .unwrap();
    let state = &registry.snapshot()["lat"]["state"];
    assert_eq!(state["latency_rate"], 0.25);
    assert_eq!(
        state["latency"],
        serde_json::json!({ "uniform": { "min": "5ms", "max": "80ms" } })
    );
    assert_eq!(state["enabled"], false);
}

#[test]
fn concurrent_setters_never_break_the_sum_of_the_rates() {
    // Two threads race to set rates that are valid alone and invalid
    // together: one of each pair wins, the sum stays at most 1.
    for round in 0..200 {
        let handle = ChaosLayer::builder().build().unwrap().handle();
        let a = handle.clone();
        let b = handle.clone();
        let t1 = std::thread::spawn(move || a.set_error_rate(0.6).is_ok());
        let t2 = std::thread::spawn(move || b.set_hang_rate(0.6).is_ok());
        let (ok1, ok2) = (t1.join().unwrap(), t2.join().unwrap());
        assert!(ok1 != ok2, "round {round}: exactly one setter wins");
        let s = handle.snapshot();
        assert!(s.error_rate + s.hang_rate <= 1.0, "round {round}: {s:?}");
    }
}
