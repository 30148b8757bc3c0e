//! An axum server on loopback with a Prometheus recorder, scraped over
//! HTTP and parsed with a strict Prometheus text-format parser (below:
//! `prometheus-parse` drops, without an error, every sample whose label
//! values hold `{` or `}`, as axum's route patterns do).

use axum::routing::get;
use axum::Router;
use buttress_metrics::{HttpServer, MetricsLayer};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::collections::{BTreeMap, HashMap};

/// One sample line: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    metric: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The text exposition format 0.0.4, strictly: `# HELP`/`# TYPE` lines,
/// samples `name{label="value",...} value [timestamp]` with escaped label
/// values; any other line, a sample of an undeclared family, or a family
/// declared twice is a panic.
fn parse(text: &str) -> (HashMap<String, (String, String)>, Vec<Sample>) {
    let mut families: HashMap<String, (String, String)> = HashMap::new();
    let mut samples = Vec::new();
    let is_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a name and a text");
            assert!(is_name(name), "{line}");
            families.entry(name.to_owned()).or_default().1 = help.to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE has a name and a type");
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            let family = families.entry(name.to_owned()).or_default();
            assert!(family.0.is_empty(), "family declared twice: {line}");
            family.0 = ty.to_owned();
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line: {line}");
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let metric = &line[..name_end];
        assert!(is_name(metric), "{line}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = l.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = l.split_once("=\"").expect("label=\"value\"");
                assert!(
                    is_name(key) && !key.contains(':'),
                    "label name {key:?} in {line}"
                );
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("unterminated label value") {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        (_, c) => value.push(c),
                    }
                };
                assert!(
                    labels.insert(key.to_owned(), value).is_none(),
                    "duplicate label in {line}"
                );
                l = &after[end + 1..];
                l = l.strip_prefix(',').unwrap_or(l);
            }
        }
        let mut fields = rest
            .strip_prefix(' ')
            .expect("a space before the value")
            .split(' ');
        let value = match fields.next().unwrap() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?} in {line}")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().expect("timestamp");
        }
        assert!(fields.next().is_none(), "trailing fields: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| metric.strip_suffix(suffix))
            .find(|base| {
                families
                    .get(*base)
                    .is_some_and(|f| f.0 == "histogram" || f.0 == "summary")
            })
            .unwrap_or(metric);
        assert!(
            families.get(family).is_some_and(|f| !f.0.is_empty()),
            "sample of an undeclared family: {line}"
        );
        samples.push(Sample {
            metric: metric.to_owned(),
            labels,
            value,
        });
    }
    (families, samples)
}

/// The one sample with exactly this name and these labels.
fn find(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.metric == metric && s.labels == want)
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?} in {samples:#?}");
    found[0].value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_server_series_scraped_from_prometheus_exposition() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.005, 0.1, 1.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    // The layer's own recorder: the server's worker threads would not see
    // a thread-local one.
    let metrics = MetricsLayer::builder_for(HttpServer)
        .name("api")
        .recorder(recorder)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/boom", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route_layer(metrics)
        .route("/metrics", get(move || async move { handle.render() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |path: &str| {
        let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
        let client = client.clone();
        async move {
            let res = client.get(uri).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    for path in ["/users/1", "/users/2", "/users/3", "/boom"] {
        get(path).await;
    }
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    let (families, samples) = parse(&text);
    let samples = &samples[..];
    let family = |name: &str| {
        families
            .get(name)
            .map(|(ty, help)| (ty.as_str(), help.as_str()))
    };
    assert_eq!(
        family("http_server_requests"),
        Some(("counter", "Requests handled, by outcome."))
    );
    assert_eq!(
        family("http_server_active_requests"),
        Some(("gauge", "Requests in flight."))
    );
    assert_eq!(
        family("http_server_request_duration"),
        Some((
            "histogram",
            "Duration of requests, until the end of the response body."
        ))
    );
    let ok = [
        ("name", "api"),
        ("http_request_method", "GET"),
        ("http_route", "/users/{id}"),
        ("http_response_status_class", "2xx"),
        ("outcome", "success"),
    ];
    let failed = [
        ("name", "api"),
        ("http_request_method", "GET"),
        ("http_route", "/boom"),
        ("http_response_status_class", "5xx"),
        ("outcome", "failure"),
    ];
    assert_eq!(find(samples, "http_server_requests", &ok), 3.0);
    assert_eq!(find(samples, "http_server_requests", &failed), 1.0);
    assert_eq!(
        find(samples, "http_server_active_requests", &[("name", "api")]),
        0.0
    );
    for (le, count) in [("0.005", 3.0), ("0.1", 3.0), ("1", 3.0), ("+Inf", 3.0)] {
        let mut labels = ok.to_vec();
        labels.push(("le", le));
        let n = find(samples, "http_server_request_duration_bucket", &labels);
        assert!(n <= count && (le != "+Inf" || n == count), "le={le}: {n}");
    }
    assert_eq!(
        find(samples, "http_server_request_duration_count", &ok),
        3.0
    );
    let sum = find(samples, "http_server_request_duration_sum", &ok);
    assert!(
        (0.0..1.0).contains(&sum),
        "seconds, not milliseconds: {sum}"
    );
    assert_eq!(
        find(samples, "http_server_request_duration_count", &failed),
        1.0
    );
    // Only the route pattern, never a raw path.
    assert!(samples.iter().all(|s| s
        .labels
        .get("http_route")
        .is_none_or(|r| r == "/users/{id}" || r == "/boom")));
    assert_eq!(samples.len(), 2 + 1 + 2 * 6, "{samples:#?}");
}
