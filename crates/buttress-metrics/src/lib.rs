//! Request metrics for any tower service, through the [`metrics`] facade
//! (any recorder: Prometheus, OpenTelemetry, StatsD...): a counter of
//! requests by outcome, a duration histogram in seconds and an in-flight
//! gauge, labelled by the instance name.
//!
//! **Paths.** Applications depend on the facade crate `buttress`, which
//! re-exports this crate as `buttress::metrics` (feature `metrics`).
//! Depending on `buttress-metrics` directly, the same items are at
//! `buttress_metrics::...`.
//!
//! ```
//! use buttress_metrics::MetricsLayer;
//! use http::{Request, Response};
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! let layer = MetricsLayer::builder_for(buttress_metrics::HttpClient)
//!     .name("catalog")
//!     .recorder(recorder) // else the global (or thread-local) recorder
//!     .build()
//!     .unwrap();
//! let client = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//! });
//! client.oneshot(Request::new(String::new())).await.unwrap();
//!
//! let requests = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .find(|(key, ..)| key.key().name() == "http.client.requests")
//!     .unwrap();
//! assert_eq!(requests.3, DebugValue::Counter(1));
//! # }
//! ```
//!
//! # Metrics
//!
//! Names follow the OpenTelemetry semantic conventions where one exists
//! (HTTP: `http.server.request.duration`, `http.server.active_requests`,
//! `http.client.request.duration`, `http.client.active_requests`; RPC:
//! `rpc.server.duration`, `rpc.client.duration`, in seconds here). The
//! request counter has no OpenTelemetry name; it is `<prefix>.requests`.
//! [`MetricsBuilder::prefix`] replaces the prefix (the first column).
//!
//! | preset | metric | type | unit | labels |
//! |---|---|---|---|---|
//! | [`MetricsLayer::new`] | `buttress.requests` | counter | requests | `name`, `outcome` |
//! | | `buttress.request.duration` | histogram | seconds | as the counter |
//! | | `buttress.active_requests` | gauge | requests | `name` |
//! | [`MetricsLayer::http_server`] | `http.server.requests` | counter | requests | `name`, `http.request.method`, `http.route`, `http.response.status_class`, `outcome`, `error.type` |
//! | | `http.server.request.duration` | histogram | seconds | as the counter |
//! | | `http.server.active_requests` | gauge | requests | `name` |
//! | [`MetricsLayer::http_client`] | `http.client.requests` | counter | requests | as the server, without `http.route` |
//! | | `http.client.request.duration` | histogram | seconds | as the counter |
//! | | `http.client.active_requests` | gauge | requests | `name` |
//! | [`MetricsLayer::grpc_server`] | `rpc.server.requests` | counter | requests | `name`, `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `outcome`, `error.type` |
//! | | `rpc.server.duration` | histogram | seconds | as the counter |
//! | | `rpc.server.active_requests` | gauge | requests | `name` |
//! | [`MetricsLayer::grpc_client`] | `rpc.client.requests`, `rpc.client.duration`, `rpc.client.active_requests` | as the server | | |
//!
//! **Prometheus spelling.** `metrics-exporter-prometheus` replaces every
//! character a Prometheus name cannot hold (`.` here) with `_`, in metric
//! names and label names alike. By default it adds no suffix; with
//! `PrometheusBuilder::with_recommended_naming(true)` counters end in
//! `_total` and the histogram gets its unit, `_seconds`. Without
//! `set_buckets` it renders histograms as summaries (quantiles, `_sum`,
//! `_count`); with buckets as Prometheus histograms (`_bucket{le=...}`).
//!
//! | recorder name | Prometheus (default) | Prometheus (recommended naming) |
//! |---|---|---|
//! | `http.server.requests` | `http_server_requests` | `http_server_requests_total` |
//! | `http.server.request.duration` | `http_server_request_duration` (`_bucket`, `_sum`, `_count`) | `http_server_request_duration_seconds` |
//! | `http.server.active_requests` | `http_server_active_requests` | `http_server_active_requests` |
//! | `rpc.server.duration` | `rpc_server_duration` | `rpc_server_duration_seconds` |
//! | label `http.request.method` | `http_request_method` | same |
//! | label `http.response.status_class` | `http_response_status_class` | same |
//! | label `rpc.grpc.status_code` | `rpc_grpc_status_code` | same |
//!
//! (and likewise for the client and generic names.)
//!
//! **Label values.**
//!
//! - `name`: the instance name, [`MetricsBuilder::name`], default
//!   `"buttress"`.
//! - `outcome`: `success`, `failure` or `ignored` (the call was dropped,
//!   or its response body was dropped before its end). Generic: by the
//!   layer's [`Classifier`](buttress_core::Classifier); HTTP: by
//!   [`HttpClassifier`](buttress_core::HttpClassifier) (5xx and 429 are
//!   failures), and any error; gRPC: by the code table of
//!   [`GrpcClassifier`](buttress_core::GrpcClassifier) (`2`, `4`, `8`,
//!   `13`, `14`, `15` and a missing status are failures).
//! - `http.request.method`: `GET`, `HEAD`, `POST`, `PUT`, `DELETE`,
//!   `CONNECT`, `OPTIONS`, `TRACE`, `PATCH`, else `_OTHER`.
//! - `http.route`: axum's `MatchedPath` (feature `axum`), the route
//!   pattern (`/users/{id}`), never the raw path. Left out when there is
//!   none: without the feature, outside axum, for a request no route
//!   matched, and when the layer wraps the whole `Router` from outside
//!   (use `Router::layer`, which runs after routing). At most
//!   [`MetricsBuilder::max_routes`] distinct routes, then `_OTHER`.
//! - `http.response.status_class`: `1xx` to `5xx`; left out when the
//!   call failed before a response.
//! - `rpc.system`: `grpc`. `rpc.service`, `rpc.method`: from the path
//!   `/pkg.Service/Method` (`_OTHER` for another path, and beyond
//!   `max_routes` pairs, since any client can send any path).
//! - `rpc.grpc.status_code`: the numeric code, `0` to `16`, from the
//!   `grpc-status` header (a trailers-only response), else the trailer at
//!   the end of the body, else a `tonic::Status` error (feature `tonic`);
//!   `_OTHER` when the body ended without one.
//! - `error.type`, only on calls that failed with an error: the buttress
//!   rejection ([`kind_of`](buttress_core::error::kind_of)): `timeout`,
//!   `bulkhead_full`, `circuit_open`, `rate_limited`, `retry_exhausted`,
//!   `key_missing`; `_OTHER` for any other error; `body` when the
//!   response body failed. A rejection that
//!   `ErrorToResponseLayer` turned into a 429/503 below this layer is a
//!   response, counted by its status class.
//!
//! # When a call ends
//!
//! The in-flight gauge goes up when `call` is made, and the call is
//! recorded (counter, histogram, gauge down) when it ends:
//!
//! - generic: when the response future completes, or is dropped
//!   (`outcome="ignored"`);
//! - HTTP and gRPC: an error ends it at once; a response hands it to its
//!   [`ResponseBody`](body::ResponseBody), which ends it at its last frame,
//!   at a body error, or when it is dropped. So a streamed response
//!   counts as in flight, and its duration runs, until its last byte
//!   (as tower-http's classify and trace layers do).
//!
//! Durations are read from `tokio::time::Instant`, so a test with a
//! paused clock gets exact values.
//!
//! # Recorder and cost
//!
//! Handles are resolved through the current recorder (the layer's own,
//! [`MetricsBuilder::recorder`], else the thread's local recorder, else
//! the global one) once per series, and kept in the layer. Per call the
//! layer finds the recorder (a thread-local read and an atomic load),
//! then the series' handles in a small map keyed by integer codes: no
//! string is hashed (but an axum route or gRPC path, once, to its id),
//! no label built, nothing allocated. If the current recorder changes,
//! the kept handles are dropped and resolved again against the new one.
//!
//! A local recorder (`metrics::with_local_recorder`) reaches only its own
//! thread: a multi-threaded server records into it only through
//! [`MetricsBuilder::recorder`].
//!
//! **No recorder, no cost.** With no recorder installed (`metrics`' no-op
//! recorder is current and the layer has none of its own), a call is not
//! measured: the layer checks for a recorder (a thread-local read and an
//! atomic load) and passes the call through, with no clock read, no
//! reference count and no lock. `metrics` offers no way to tell its no-op
//! recorder apart but its size, so a recorder of zero size is taken for
//! it: every real recorder keeps its series in some state. The check is
//! made per call, so a recorder installed later is used from the next
//! call on. Measured in `BENCHMARKS.md`.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
mod error_label;
pub mod future;
mod labels;
mod layer;
mod service;
mod shared;

pub use error_label::ErrorLabel;
pub use layer::{
    Generic, GrpcClient, GrpcServer, HttpClient, HttpProtocol, HttpServer, MetricsBuilder,
    MetricsLayer, Protocol, DEFAULT_MAX_ROUTES,
};
pub use service::Metrics;
