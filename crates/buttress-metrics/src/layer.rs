use std::fmt;
use std::sync::Arc;

use buttress_core::{ConfigError, ErrorsAsFailures};
use metrics::Recorder;
use tower_layer::Layer;

use crate::service::Metrics;
use crate::shared::{Kind, Shared};

const COMPONENT: &str = "metrics";

mod sealed {
    pub trait Sealed {
        fn kind(&self) -> super::Kind;
    }
}

/// What a [`MetricsLayer`] measures, which decides its labels and the
/// default metric names. Sealed: the five markers below are all there is.
pub trait Protocol: sealed::Sealed + Clone {}

/// Any tower service: the outcome comes from a
/// [`Classifier`](buttress_core::Classifier) (by default
/// [`ErrorsAsFailures`]). Labels: `name`, `outcome`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Generic<C = ErrorsAsFailures>(pub C);

/// An HTTP server (`http::Request` in, `http::Response` out). Labels:
/// `name`, `http.request.method`, `http.route` (axum's `MatchedPath`,
/// feature `axum`), `http.response.status_class`, `outcome`, `error.type`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpServer;

/// An HTTP client: as [`HttpServer`], without `http.route`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClient;

/// A gRPC server, at the HTTP level (tonic's `Routes`, a tonic server's
/// `layer`). Labels: `name`, `rpc.system`, `rpc.service`, `rpc.method`,
/// `rpc.grpc.status_code`, `outcome`, `error.type`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServer;

/// A gRPC client, at the HTTP level (around a tonic `Channel`): as
/// [`GrpcServer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClient;

macro_rules! protocol {
    ($($ty:ty => $kind:expr),*) => {$(
        impl sealed::Sealed for $ty {
            fn kind(&self) -> Kind {
                $kind
            }
        }
        impl Protocol for $ty {}
    )*};
}
protocol!(HttpServer => Kind::HttpServer, HttpClient => Kind::HttpClient, GrpcServer => Kind::GrpcServer, GrpcClient => Kind::GrpcClient);

impl<C> sealed::Sealed for Generic<C> {
    fn kind(&self) -> Kind {
        Kind::Generic
    }
}
impl<C: Clone> Protocol for Generic<C> {}

/// The HTTP-level protocols: [`HttpServer`], [`HttpClient`],
/// [`GrpcServer`], [`GrpcClient`]. Sealed.
pub trait HttpProtocol: Protocol {}
impl HttpProtocol for HttpServer {}
impl HttpProtocol for HttpClient {}
impl HttpProtocol for GrpcServer {}
impl HttpProtocol for GrpcClient {}

// ===== impl MetricsLayer =====

/// Request metrics for a tower service: a counter of requests by outcome,
/// a duration histogram in seconds and an in-flight gauge; see the [crate
/// docs](crate) for the names and labels.
///
/// Every service made by one layer (and every clone) shares one state,
/// so axum's per-route `layer()` calls report one set of series.
///
/// ```
/// use buttress_metrics::MetricsLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(MetricsLayer::new())
///     .service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x + 1) });
/// assert_eq!(svc.oneshot(1).await.unwrap(), 2);
/// # }
/// ```
pub struct MetricsLayer<P = Generic> {
    shared: Arc<Shared>,
    protocol: P,
}

impl<P: Clone> Clone for MetricsLayer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            protocol: self.protocol.clone(),
        }
    }
}

impl<P> fmt::Debug for MetricsLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl MetricsLayer<Generic> {
    /// Metrics for any service, named `"buttress"`, prefix `buttress`:
    /// `buttress.requests`, `buttress.request.duration`,
    /// `buttress.active_requests`. Errors are failures.
    pub fn new() -> Self {
        Self::builder().build_valid()
    }

    /// A builder for any service; [`MetricsBuilder::classifier`] sets how
    /// results are classified.
    ///
    /// ```
    /// use buttress_metrics::MetricsLayer;
    /// use buttress_core::Outcome;
    ///
    /// let layer = MetricsLayer::builder()
    ///     .name("db")
    ///     .prefix("myapp.db")
    ///     .classifier(|r: &Result<u8, std::io::Error>| match r {
    ///         Ok(_) => Outcome::Success,
    ///         Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Success,
    ///         Err(_) => Outcome::Failure,
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.metric_names(), ["myapp.db.requests", "myapp.db.request.duration", "myapp.db.active_requests"]);
    /// ```
    pub fn builder() -> MetricsBuilder<Generic> {
        MetricsBuilder::new(Generic(ErrorsAsFailures))
    }

    /// A builder for one of the HTTP-level protocols.
    ///
    /// ```
    /// use buttress_metrics::{MetricsLayer, HttpServer};
    ///
    /// let layer = MetricsLayer::builder_for(HttpServer).name("api").build().unwrap();
    /// assert_eq!(layer.name(), "api");
    /// assert_eq!(layer.metric_names()[1], "http.server.request.duration");
    /// ```
    pub fn builder_for<P: HttpProtocol>(protocol: P) -> MetricsBuilder<P> {
        MetricsBuilder::new(protocol)
    }

    /// An HTTP server: `http.server.request.duration`,
    /// `http.server.active_requests`, `http.server.requests`.
    pub fn http_server() -> MetricsLayer<HttpServer> {
        Self::builder_for(HttpServer).build_valid()
    }

    /// An HTTP client: `http.client.request.duration`,
    /// `http.client.active_requests`, `http.client.requests`.
    pub fn http_client() -> MetricsLayer<HttpClient> {
        Self::builder_for(HttpClient).build_valid()
    }

    /// A gRPC server: `rpc.server.duration`, `rpc.server.active_requests`,
    /// `rpc.server.requests`.
    pub fn grpc_server() -> MetricsLayer<GrpcServer> {
        Self::builder_for(GrpcServer).build_valid()
    }

    /// A gRPC client: `rpc.client.duration`, `rpc.client.active_requests`,
    /// `rpc.client.requests`.
    pub fn grpc_client() -> MetricsLayer<GrpcClient> {
        Self::builder_for(GrpcClient).build_valid()
    }
}

impl Default for MetricsLayer<Generic> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> MetricsLayer<P> {
    /// The instance name, the `name` label of every series.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The metric names: the request counter, the duration histogram and
    /// the in-flight gauge, as the recorder sees them (before an
    /// exporter's renaming).
    pub fn metric_names(&self) -> [&str; 3] {
        self.shared.metric_names()
    }
}

impl<S, P: Clone> Layer<S> for MetricsLayer<P> {
    type Service = Metrics<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner, Arc::clone(&self.shared), self.protocol.clone())
    }
}

// ===== impl MetricsBuilder =====

/// Builds a [`MetricsLayer`].
pub struct MetricsBuilder<P> {
    protocol: P,
    name: Arc<str>,
    prefix: Option<String>,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    max_routes: usize,
}

impl<P: fmt::Debug> fmt::Debug for MetricsBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBuilder")
            .field("protocol", &self.protocol)
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("own_recorder", &self.recorder.is_some())
            .field("max_routes", &self.max_routes)
            .finish()
    }
}

/// The default bound on distinct routes (HTTP) or methods (gRPC).
pub const DEFAULT_MAX_ROUTES: usize = 1000;

impl<P> MetricsBuilder<P> {
    fn new(protocol: P) -> Self {
        Self {
            protocol,
            name: Arc::from("buttress"),
            prefix: None,
            recorder: None,
            max_routes: DEFAULT_MAX_ROUTES,
        }
    }

    /// The instance name, the `name` label (default `"buttress"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The metric name prefix (default by protocol: `buttress`,
    /// `http.server`, `http.client`, `rpc.server`, `rpc.client`). ASCII
    /// letters, digits, `_`, `.` and `:`, not starting with a digit or a dot.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Records into this recorder rather than the current one (the
    /// thread's local recorder, else the global one). For tests, and for a
    /// layer whose requests run on threads a local recorder does not reach.
    ///
    /// ```
    /// use buttress_metrics::MetricsLayer;
    /// use metrics_util::debugging::DebuggingRecorder;
    ///
    /// let recorder = DebuggingRecorder::new();
    /// let snapshotter = recorder.snapshotter();
    /// let layer = MetricsLayer::builder().recorder(recorder).build().unwrap();
    /// # let _ = (layer, snapshotter);
    /// ```
    pub fn recorder<R: Recorder + Send + Sync + 'static>(mut self, recorder: R) -> Self {
        self.recorder = Some(Arc::new(recorder));
        self
    }

    /// At most this many distinct routes (HTTP `http.route`) or gRPC
    /// `service/method` pairs get series of their own (default 1000); the
    /// others are labelled `_OTHER`, so clients that send made-up gRPC
    /// paths cannot grow the series without bound.
    pub fn max_routes(mut self, max_routes: usize) -> Self {
        self.max_routes = max_routes;
        self
    }
}

impl<P: Protocol> MetricsBuilder<P> {
    /// Validates and builds.
    ///
    /// ```
    /// use buttress_metrics::MetricsLayer;
    ///
    /// let err = MetricsLayer::builder().prefix("9 lives").build().unwrap_err();
    /// assert_eq!(err.field(), "prefix");
    /// assert_eq!(MetricsLayer::builder().name("").build().unwrap_err().field(), "name");
    /// ```
    pub fn build(self) -> Result<MetricsLayer<P>, ConfigError> {
        let kind = sealed::Sealed::kind(&self.protocol);
        if self.name.is_empty() {
            return Err(ConfigError::new(COMPONENT, "name", "must not be empty"));
        }
        let prefix = self.prefix.as_deref().unwrap_or(kind.default_prefix());
        validate_prefix(prefix)?;
        if self.max_routes == 0 || self.max_routes > u32::MAX as usize / 2 {
            return Err(ConfigError::new(
                COMPONENT,
                "max_routes",
                "must be between 1 and 2^31",
            ));
        }
        Ok(MetricsLayer {
            shared: Arc::new(Shared::new(
                kind,
                self.name,
                prefix,
                self.recorder,
                self.max_routes,
            )),
            protocol: self.protocol,
        })
    }

    /// `build` for the defaults, which are valid.
    fn build_valid(self) -> MetricsLayer<P> {
        match self.build() {
            Ok(layer) => layer,
            Err(err) => unreachable!("the default configuration is valid: {err}"),
        }
    }
}

impl<C> MetricsBuilder<Generic<C>> {
    /// How results count: a [`Classifier`](buttress_core::Classifier) of
    /// the inner service's `Result` (default: errors are failures).
    pub fn classifier<C2: Clone>(self, classifier: C2) -> MetricsBuilder<Generic<C2>> {
        MetricsBuilder {
            protocol: Generic(classifier),
            name: self.name,
            prefix: self.prefix,
            recorder: self.recorder,
            max_routes: self.max_routes,
        }
    }
}

fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
    let valid = !prefix.is_empty()
        && !prefix.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && !prefix.ends_with('.')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            COMPONENT,
            "prefix",
            format!("{prefix:?} is not a metric name: use ASCII letters, digits, '_', '.' and ':', not starting with a digit or '.', not ending with '.'"),
        ))
    }
}
