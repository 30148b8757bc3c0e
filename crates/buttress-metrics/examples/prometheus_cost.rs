//! The per-call cost of `MetricsLayer` with a Prometheus recorder, next to
//! the bare service and the layer with no recorder, in one run:
//!
//! ```sh
//! cargo run --release -p buttress-metrics --example prometheus_cost
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use buttress_metrics::{HttpServer, MetricsLayer};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{Layer, Service};

const CALLS: u32 = 2_000_000;

fn drive<S: Service<http::Request<()>>>(svc: &mut S) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(http::Request::new(())));
    loop {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            black_box(res.is_ok());
            return;
        }
    }
}

/// Nanoseconds per call, the best of five rounds.
fn measure<S: Service<http::Request<()>>>(mut svc: S) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                drive(&mut svc);
            }
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let bare = tower::service_fn(|_: http::Request<()>| {
        std::future::ready(Ok::<_, Infallible>(http::Response::new(String::new())))
    });
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let with_prometheus = MetricsLayer::builder_for(HttpServer)
        .recorder(recorder)
        .build()
        .unwrap();
    let without = MetricsLayer::http_server();

    let b = measure(bare);
    let n = measure(without.layer(bare));
    let p = measure(with_prometheus.layer(bare));
    println!("bare HTTP service:                 {b:6.1} ns/call");
    println!(
        "MetricsLayer, no recorder:         {n:6.1} ns/call (+{:.1})",
        n - b
    );
    println!(
        "MetricsLayer, Prometheus recorder: {p:6.1} ns/call (+{:.1})",
        p - b
    );
    let text = handle.render();
    assert!(text.contains("http_server_requests{"), "{text}");
}
