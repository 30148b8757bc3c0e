//! Exact names, labels, types and values, read from `DebuggingRecorder`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, BulkheadFull, BulkheadFullReason, CircuitOpen, RateLimited};
use buttress_core::response::ErrorToResponseLayer;
use buttress_metrics::{GrpcServer, HttpClient, HttpServer, MetricsLayer};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use tower::{Service, ServiceBuilder, ServiceExt};

type Labels<'a> = &'a [(&'a str, &'a str)];

type Series = (
    MetricKind,
    String,
    Vec<(String, String)>,
    Option<Unit>,
    DebugValue,
);

thread_local! {
    /// What earlier snapshots returned: `DebuggingRecorder` snapshots
    /// drain (counters and gauges restart from 0, histograms empty), so
    /// the running totals are the sum of every snapshot.
    static TOTALS: std::cell::RefCell<Vec<Series>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every series so far: (kind, name, sorted labels, unit, value).
fn series(snapshotter: &Snapshotter) -> Vec<Series> {
    let fresh = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, unit, _, value)| {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (kind, key.name().to_owned(), labels, unit, value)
        });
    TOTALS.with(|totals| {
        let mut totals = totals.borrow_mut();
        for new in fresh {
            match totals
                .iter_mut()
                .find(|t| t.0 == new.0 && t.1 == new.1 && t.2 == new.2)
            {
                None => totals.push(new),
                Some(old) => match (&mut old.4, new.4) {
                    (DebugValue::Counter(a), DebugValue::Counter(b)) => *a += b,
                    (DebugValue::Gauge(a), DebugValue::Gauge(b)) => {
                        *a = (a.into_inner() + b.into_inner()).into()
                    }
                    (DebugValue::Histogram(a), DebugValue::Histogram(b)) => a.extend(b),
                    (old, new) => panic!("{old:?} became {new:?}"),
                },
            }
        }
        totals
            .iter()
            .map(|t| (t.0, t.1.clone(), t.2.clone(), t.3, copy(&t.4)))
            .collect()
    })
}

fn copy(v: &DebugValue) -> DebugValue {
    match v {
        DebugValue::Counter(c) => DebugValue::Counter(*c),
        DebugValue::Gauge(g) => DebugValue::Gauge(*g),
        DebugValue::Histogram(h) => DebugValue::Histogram(h.clone()),
    }
}

fn sorted(labels: Labels<'_>) -> Vec<(String, String)> {
    let mut v: Vec<_> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// The one series with exactly these name, kind and labels.
fn value(all: &[Series], kind: MetricKind, name: &str, labels: Labels<'_>) -> DebugValue {
    let want = sorted(labels);
    let found: Vec<_> = all
        .iter()
        .filter(|s| s.0 == kind && s.1 == name && s.2 == want)
        .collect();
    assert_eq!(found.len(), 1, "{kind:?} {name} {want:?} in {all:#?}");
    copy(&found[0].4)
}

fn histogram(v: DebugValue) -> Vec<f64> {
    match v {
        DebugValue::Histogram(values) => values.into_iter().map(|f| f.into_inner()).collect(),
        other => panic!("not a histogram: {other:?}"),
    }
}

fn gauge(v: DebugValue) -> f64 {
    match v {
        DebugValue::Gauge(g) => g.into_inner(),
        other => panic!("not a gauge: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn generic_service_counts_by_outcome_with_durations_in_seconds() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = MetricsLayer::builder()
        .name("db")
        .recorder(recorder)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if ms == 0 {
                Err("boom")
            } else {
                Ok(ms)
            }
        });
    assert_eq!(svc.ready().await.unwrap().call(250).await, Ok(250));
    assert_eq!(svc.ready().await.unwrap().call(0).await, Err("boom"));
    // Started, then dropped: counted as ignored, with the time it ran.
    let mut dropped = Box::pin(svc.ready().await.unwrap().call(1000));
    assert!(futures_poll(dropped.as_mut()).is_pending());
    tokio::time::advance(Duration::from_millis(100)).await;
    drop(dropped);

    let all = series(&snapshotter);
    let c = |outcome| {
        value(
            &all,
            MetricKind::Counter,
            "buttress.requests",
            &[("name", "db"), ("outcome", outcome)],
        )
    };
    assert_eq!(c("success"), DebugValue::Counter(1));
    assert_eq!(c("failure"), DebugValue::Counter(1));
    assert_eq!(c("ignored"), DebugValue::Counter(1));
    let h = |outcome| {
        histogram(value(
            &all,
            MetricKind::Histogram,
            "buttress.request.duration",
            &[("name", "db"), ("outcome", outcome)],
        ))
    };
    assert_eq!(h("success"), [0.25]);
    assert_eq!(h("failure"), [0.0]);
    assert_eq!(h("ignored"), [0.1]);
    assert_eq!(
        gauge(value(
            &all,
            MetricKind::Gauge,
            "buttress.active_requests",
            &[("name", "db")]
        )),
        0.0
    );
    let duration_unit = all
        .iter()
        .find(|s| s.1 == "buttress.request.duration")
        .unwrap()
        .3;
    assert_eq!(duration_unit, Some(Unit::Seconds));
    assert_eq!(all.len(), 7, "{all:#?}");
}

fn futures_poll<F: std::future::Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(std::task::Waker::noop()))
}

/// A server whose handler answers by path, with buttress rejections
/// turned into responses below the metrics layer.
fn http_server(
    recorder: DebuggingRecorder,
) -> impl Service<Request<()>, Response = Response<impl Body>, Error = Infallible> + Clone {
    let layer = MetricsLayer::builder_for(HttpServer)
        .name("api")
        .recorder(recorder)
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(layer)
        .layer(ErrorToResponseLayer::new())
        .service_fn(|req: Request<()>| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let status = match req.uri().path() {
                "/ok" => StatusCode::OK,
                "/missing" => StatusCode::NOT_FOUND,
                "/broken" => StatusCode::INTERNAL_SERVER_ERROR,
                "/full" => {
                    return Err::<Response<Full<Bytes>>, BoxError>(
                        BulkheadFull::new("db".into(), BulkheadFullReason::QueueFull).into(),
                    )
                }
                "/limited" => {
                    return Err(
                        RateLimited::new("per-client".into(), Some(Duration::from_secs(1))).into(),
                    )
                }
                _ => unreachable!(),
            };
            Ok(Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"hello")))
                .unwrap())
        })
}

#[tokio::test(start_paused = true)]
async fn http_server_labels_by_method_and_status_class_including_mapped_rejections() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let svc = http_server(recorder);
    let req = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    };
    for (method, path, status) in [
        ("GET", "/ok", 200),
        ("GET", "/ok", 200),
        ("POST", "/missing", 404),
        ("BREW", "/broken", 500),
        ("GET", "/full", 503),
        ("GET", "/limited", 429),
    ] {
        let res = svc.clone().oneshot(req(method, path)).await.unwrap();
        assert_eq!(res.status(), status);
        res.into_body().collect().await.ok().unwrap();
    }

    let all = series(&snapshotter);
    let labels = |method, class, outcome| {
        [
            ("name", "api"),
            ("http.request.method", method),
            ("http.response.status_class", class),
            ("outcome", outcome),
        ]
    };
    let count = |method, class, outcome| {
        value(
            &all,
            MetricKind::Counter,
            "http.server.requests",
            &labels(method, class, outcome),
        )
    };
    assert_eq!(count("GET", "2xx", "success"), DebugValue::Counter(2));
    assert_eq!(count("POST", "4xx", "success"), DebugValue::Counter(1));
    assert_eq!(count("_OTHER", "5xx", "failure"), DebugValue::Counter(1));
    // 503 from the bulkhead rejection, 429 from the rate limiter: both failures.
    assert_eq!(count("GET", "5xx", "failure"), DebugValue::Counter(1));
    assert_eq!(count("GET", "4xx", "failure"), DebugValue::Counter(1));
    assert_eq!(
        histogram(value(
            &all,
            MetricKind::Histogram,
            "http.server.request.duration",
            &labels("GET", "2xx", "success")
        )),
        [0.02, 0.02]
    );
    assert_eq!(
        histogram(value(
            &all,
            MetricKind::Histogram,
            "http.server.request.duration",
            &labels("GET", "5xx", "failure")
        )),
        [0.02]
    );
    assert_eq!(
        gauge(value(
            &all,
            MetricKind::Gauge,
            "http.server.active_requests",
            &[("name", "api")]
        )),
        0.0
    );
    assert_eq!(all.len(), 11, "{all:#?}");
}

#[tokio::test(start_paused = true)]
async fn errors_before_a_response_are_labelled_by_rejection_kind() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = MetricsLayer::builder_for(HttpClient)
        .name("catalog")
        .recorder(recorder)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|req: Request<()>| async move {
            match req.uri().path() {
                "/open" => Err::<Response<Full<Bytes>>, BoxError>(
                    CircuitOpen::new("catalog".into(), None).into(),
                ),
                _ => Err("connection refused".into()),
            }
        });
    assert!(svc
        .clone()
        .oneshot(Request::get("/open").body(()).unwrap())
        .await
        .is_err());
    assert!(svc
        .clone()
        .oneshot(Request::get("/other").body(()).unwrap())
        .await
        .is_err());

    let all = series(&snapshotter);
    let labels = |kind| {
        [
            ("name", "catalog"),
            ("http.request.method", "GET"),
            ("outcome", "failure"),
            ("error.type", kind),
        ]
    };
    assert_eq!(
        value(
            &all,
            MetricKind::Counter,
            "http.client.requests",
            &labels("circuit_open")
        ),
        DebugValue::Counter(1)
    );
    assert_eq!(
        value(
            &all,
            MetricKind::Counter,
            "http.client.requests",
            &labels("_OTHER")
        ),
        DebugValue::Counter(1)
    );
    assert_eq!(
        gauge(value(
            &all,
            MetricKind::Gauge,
            "http.client.active_requests",
            &[("name", "catalog")]
        )),
        0.0
    );
}

/// A body of queued frames; the test pushes frames or errors.
struct Frames(VecDeque<Result<Frame<Bytes>, std::io::Error>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.0.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn streaming(
    recorder: DebuggingRecorder,
) -> impl Service<
    Request<()>,
    Response = Response<impl Body<Data = Bytes, Error = std::io::Error>>,
    Error = Infallible,
> {
    let handler = tower::service_fn(|req: Request<()>| async move {
        let mut frames = VecDeque::new();
        frames.push_back(Ok(Frame::data(Bytes::from_static(b"one"))));
        match req.uri().path() {
            "/fails" | "/pkg.Svc/Fails" => frames.push_back(Err(std::io::Error::other("reset"))),
            p if p.starts_with("/pkg.") => {
                frames.push_back(Ok(Frame::data(Bytes::from_static(b"two"))));
                let mut trailers = http::HeaderMap::new();
                trailers.insert(
                    "grpc-status",
                    if p.ends_with("Down") { "14" } else { "0" }
                        .parse()
                        .unwrap(),
                );
                frames.push_back(Ok(Frame::trailers(trailers)));
            }
            _ => frames.push_back(Ok(Frame::data(Bytes::from_static(b"two")))),
        }
        Ok::<_, Infallible>(Response::new(Frames(frames)))
    });
    let layer_http = MetricsLayer::builder_for(HttpServer).recorder(recorder);
    ServiceBuilder::new()
        .layer(layer_http.build().unwrap())
        .service(handler)
}

fn in_flight(snapshotter: &Snapshotter, name: &str) -> f64 {
    gauge(value(
        &series(snapshotter),
        MetricKind::Gauge,
        name,
        &[("name", "buttress")],
    ))
}

#[tokio::test]
async fn in_flight_until_a_streamed_body_ends() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let svc = streaming(recorder);
    let res = svc
        .oneshot(Request::get("/stream").body(()).unwrap())
        .await
        .unwrap();
    let mut body = res.into_body();
    assert_eq!(in_flight(&snapshotter, "http.server.active_requests"), 1.0);
    body.frame().await.unwrap().unwrap();
    assert_eq!(
        in_flight(&snapshotter, "http.server.active_requests"),
        1.0,
        "one frame left"
    );
    body.frame().await.unwrap().unwrap();
    assert_eq!(
        in_flight(&snapshotter, "http.server.active_requests"),
        0.0,
        "the last frame ends it"
    );
    let all = series(&snapshotter);
    let labels = [
        ("name", "buttress"),
        ("http.request.method", "GET"),
        ("http.response.status_class", "2xx"),
        ("outcome", "success"),
    ];
    assert_eq!(
        value(&all, MetricKind::Counter, "http.server.requests", &labels),
        DebugValue::Counter(1)
    );
}

#[tokio::test]
async fn in_flight_returns_to_zero_when_a_body_is_dropped_mid_stream() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let svc = streaming(recorder);
    let res = svc
        .oneshot(Request::get("/stream").body(()).unwrap())
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(in_flight(&snapshotter, "http.server.active_requests"), 1.0);
    drop(body);
    assert_eq!(in_flight(&snapshotter, "http.server.active_requests"), 0.0);
    let all = series(&snapshotter);
    let labels = [
        ("name", "buttress"),
        ("http.request.method", "GET"),
        ("http.response.status_class", "2xx"),
        ("outcome", "ignored"),
    ];
    assert_eq!(
        value(&all, MetricKind::Counter, "http.server.requests", &labels),
        DebugValue::Counter(1)
    );
}

#[tokio::test]
async fn in_flight_returns_to_zero_after_a_body_error() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let svc = streaming(recorder);
    let res = svc
        .oneshot(Request::get("/fails").body(()).unwrap())
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(in_flight(&snapshotter, "http.server.active_requests"), 0.0);
    let all = series(&snapshotter);
    let labels = [
        ("name", "buttress"),
        ("http.request.method", "GET"),
        ("http.response.status_class", "2xx"),
        ("outcome", "failure"),
        ("error.type", "body"),
    ];
    assert_eq!(
        value(&all, MetricKind::Counter, "http.server.requests", &labels),
        DebugValue::Counter(1)
    );
}

#[tokio::test]
async fn grpc_code_comes_from_the_trailers_at_the_end_of_the_body() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = MetricsLayer::builder_for(GrpcServer)
        .name("rpc")
        .recorder(recorder)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|req: Request<()>| async move {
            let mut frames = VecDeque::new();
            frames.push_back(Ok(Frame::data(Bytes::from_static(b"msg"))));
            let mut trailers = http::HeaderMap::new();
            let code = if req.uri().path().ends_with("Down") {
                "14"
            } else {
                "0"
            };
            trailers.insert("grpc-status", code.parse().unwrap());
            frames.push_back(Ok(Frame::trailers(trailers)));
            Ok::<_, Infallible>(Response::new(Frames(frames)))
        });
    for path in ["/pkg.Svc/Get", "/pkg.Svc/Down", "/not-grpc"] {
        let res = svc
            .clone()
            .oneshot(Request::post(path).body(()).unwrap())
            .await
            .unwrap();
        let mut body = res.into_body();
        assert_eq!(
            gauge(value(
                &series(&snapshotter),
                MetricKind::Gauge,
                "rpc.server.active_requests",
                &[("name", "rpc")]
            )),
            1.0
        );
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
    }
    let all = series(&snapshotter);
    let labels = |service, method, code, outcome| {
        [
            ("name", "rpc"),
            ("rpc.system", "grpc"),
            ("rpc.service", service),
            ("rpc.method", method),
            ("rpc.grpc.status_code", code),
            ("outcome", outcome),
        ]
    };
    assert_eq!(
        value(
            &all,
            MetricKind::Counter,
            "rpc.server.requests",
            &labels("pkg.Svc", "Get", "0", "success")
        ),
        DebugValue::Counter(1)
    );
    assert_eq!(
        value(
            &all,
            MetricKind::Counter,
            "rpc.server.requests",
            &labels("pkg.Svc", "Down", "14", "failure")
        ),
        DebugValue::Counter(1)
    );
    assert_eq!(
        value(
            &all,
            MetricKind::Counter,
            "rpc.server.requests",
            &labels("_OTHER", "_OTHER", "0", "success")
        ),
        DebugValue::Counter(1)
    );
    assert_eq!(
        gauge(value(
            &all,
            MetricKind::Gauge,
            "rpc.server.active_requests",
            &[("name", "rpc")]
        )),
        0.0
    );
}

/// With no recorder installed a call is not measured at all (no clock read,
/// no gauge), and the same layer measures once a recorder is there: the
/// check is made per call.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_recorder_no_measure_then_a_recorder_measures() {
    let layer = MetricsLayer::new();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|()| async { Ok::<_, Infallible>("ok") });
    assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "ok");

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "ok");
    let requests: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "buttress.requests")
        .map(|(.., value)| value)
        .collect();
    assert_eq!(
        requests,
        [DebugValue::Counter(1)],
        "only the call made with the recorder"
    );
}
