//! The state every service of one layer shares: the names, the recorder,
//! the interned routes and the metric handles resolved so far.

use std::fmt;
use std::sync::Arc;

use buttress_core::Outcome;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use std::hash::{BuildHasherDefault, Hasher};
use tokio::time::Instant;

use crate::labels::{self, outcome_code};

/// What a layer measures; decides the labels.
// `pub` in a private module: the sealed `Protocol` trait names it.
#[allow(unreachable_pub)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Generic,
    HttpServer,
    HttpClient,
    GrpcServer,
    GrpcClient,
}

impl Kind {
    pub(crate) fn is_grpc(self) -> bool {
        matches!(self, Kind::GrpcServer | Kind::GrpcClient)
    }

    /// The metric name prefix when none is configured.
    pub(crate) fn default_prefix(self) -> &'static str {
        match self {
            Kind::Generic => "buttress",
            Kind::HttpServer => "http.server",
            Kind::HttpClient => "http.client",
            Kind::GrpcServer => "rpc.server",
            Kind::GrpcClient => "rpc.client",
        }
    }

    /// The duration histogram's name after the prefix: OpenTelemetry's
    /// `http.*.request.duration` and `rpc.*.duration`.
    fn duration_suffix(self) -> &'static str {
        if self.is_grpc() {
            "duration"
        } else {
            "request.duration"
        }
    }
}

/// FxHash (rustc's): the keys are a few bytes, hashed in a few
/// nanoseconds; they come from the layer (codes) or are bounded by
/// `max_routes`, so flooding is not a concern.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type HashMap<K, V> = hashbrown::HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Route id of a request without a route (HTTP: no `http.route` label;
/// gRPC: a path that is not `/service/method`).
pub(crate) const NO_ROUTE: u32 = 0;
/// Route id once `max_routes` routes are interned: `_OTHER`.
pub(crate) const OVERFLOW_ROUTE: u32 = 1;

/// What one series (one combination of label values) is keyed by: small
/// codes, so that finding its handles hashes no string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub(crate) route: u32,
    pub(crate) method: u8,
    pub(crate) status: u8,
    pub(crate) outcome: u8,
    pub(crate) error: u8,
}

impl SeriesKey {
    pub(crate) const fn new(route: u32, method: u8) -> Self {
        Self {
            route,
            method,
            status: labels::NO_STATUS,
            outcome: 2, // ignored, until the call says otherwise
            error: labels::NO_ERROR,
        }
    }
}

struct Series {
    requests: Counter,
    duration: Histogram,
}

/// The handles resolved against one recorder.
struct Resolved {
    /// The address of the recorder they belong to; 0 before the first call.
    recorder: usize,
    active: Gauge,
    series: HashMap<SeriesKey, Series>,
}

/// Interned route strings: the label text of each id.
struct Routes {
    ids: HashMap<Box<str>, u32>,
    /// `(http.route or rpc.service, rpc.method)` by id.
    labels: Vec<(SharedString, SharedString)>,
}

pub(crate) struct Shared {
    pub(crate) kind: Kind,
    name: SharedString,
    requests: KeyName,
    duration: KeyName,
    active: KeyName,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    max_routes: usize,
    routes: spin::RwLock<Routes>,
    resolved: spin::RwLock<Resolved>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("kind", &self.kind)
            .field("name", &&*self.name)
            .field("requests", &self.requests.as_str())
            .field("duration", &self.duration.as_str())
            .field("active", &self.active.as_str())
            .field("own_recorder", &self.recorder.is_some())
            .field("max_routes", &self.max_routes)
            .finish()
    }
}

/// The identity of a recorder: its address.
fn address(recorder: &dyn Recorder) -> usize {
    std::ptr::from_ref(recorder).cast::<()>() as usize
}

const OTHER: SharedString = SharedString::const_str("_OTHER");

impl Shared {
    pub(crate) fn new(
        kind: Kind,
        name: Arc<str>,
        prefix: &str,
        recorder: Option<Arc<dyn Recorder + Send + Sync>>,
        max_routes: usize,
    ) -> Self {
        let key = |suffix: &str| KeyName::from(format!("{prefix}.{suffix}"));
        let none = SharedString::const_str("");
        Self {
            kind,
            name: SharedString::from(name),
            requests: key("requests"),
            duration: key(kind.duration_suffix()),
            active: key("active_requests"),
            recorder,
            max_routes,
            routes: spin::RwLock::new(Routes {
                ids: HashMap::default(),
                labels: vec![(none.clone(), none), (OTHER, OTHER)],
            }),
            resolved: spin::RwLock::new(Resolved {
                recorder: 0,
                active: Gauge::noop(),
                series: HashMap::default(),
            }),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn metric_names(&self) -> [&str; 3] {
        [
            self.requests.as_str(),
            self.duration.as_str(),
            self.active.as_str(),
        ]
    }

    /// Runs `f` with the layer's own recorder, else the current one
    /// (thread-local, else global, else the no-op recorder).
    fn with_recorder<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match &self.recorder {
            Some(recorder) => f(&**recorder),
            None => metrics::with_recorder(f),
        }
    }

    /// Whether a call is measured: with the layer's own recorder, or with a
    /// current recorder (thread-local, else global) that is not `metrics`'
    /// no-op one. That one has no state and `metrics` exposes nothing else
    /// to tell it by, so a recorder of zero size is taken for it (every
    /// real recorder keeps its series somewhere). With none installed, a
    /// call costs this check (a thread-local read and an atomic load): no
    /// clock read, no reference count, no lock.
    #[inline]
    pub(crate) fn recording(&self) -> bool {
        self.recorder.is_some() || metrics::with_recorder(|r| std::mem::size_of_val(r) != 0)
    }

    /// The route id of an HTTP route or a gRPC path, interned on first
    /// sight; `_OTHER` once `max_routes` are known.
    pub(crate) fn route_id(&self, route: &str) -> u32 {
        if let Some(&id) = self.routes.read().ids.get(route) {
            return id;
        }
        let label = if self.kind.is_grpc() {
            match parse_grpc_path(route) {
                Some((service, method)) => (
                    SharedString::from(service.to_owned()),
                    SharedString::from(method.to_owned()),
                ),
                None => return NO_ROUTE,
            }
        } else {
            (
                SharedString::from(route.to_owned()),
                SharedString::const_str(""),
            )
        };
        let mut routes = self.routes.write();
        if let Some(&id) = routes.ids.get(route) {
            return id;
        }
        // Ids 0 and 1 are the fixed entries, not interned routes.
        if routes.labels.len() - 2 >= self.max_routes {
            return OVERFLOW_ROUTE;
        }
        let id = routes.labels.len() as u32;
        routes.labels.push(label);
        routes.ids.insert(route.into(), id);
        id
    }

    /// Describes the metrics to a recorder seen for the first time and
    /// resolves its in-flight gauge.
    fn resolve_base(&self, recorder: &dyn Recorder) -> Resolved {
        recorder.describe_counter(
            self.requests.clone(),
            None,
            SharedString::const_str("Requests handled, by outcome."),
        );
        recorder.describe_histogram(
            self.duration.clone(),
            Some(Unit::Seconds),
            SharedString::const_str("Duration of requests, until the end of the response body."),
        );
        recorder.describe_gauge(
            self.active.clone(),
            None,
            SharedString::const_str("Requests in flight."),
        );
        let key = Key::from_parts(
            self.active.clone(),
            vec![Label::new(
                SharedString::const_str("name"),
                self.name.clone(),
            )],
        );
        Resolved {
            recorder: address(recorder),
            active: recorder.register_gauge(&key, &metadata()),
            series: HashMap::default(),
        }
    }

    /// A call starts: the in-flight gauge goes up, and the guard that
    /// records the call when it is dropped is returned.
    pub(crate) fn start(self: &Arc<Self>, key: SeriesKey) -> Guard {
        let active = self.with_recorder(|recorder| {
            let address = address(recorder);
            {
                let resolved = self.resolved.read();
                if resolved.recorder == address {
                    return resolved.active.clone();
                }
            }
            let mut resolved = self.resolved.write();
            if resolved.recorder != address {
                *resolved = self.resolve_base(recorder);
            }
            resolved.active.clone()
        });
        active.increment(1.0);
        Guard {
            shared: Arc::clone(self),
            start: Instant::now(),
            active,
            key,
            end_outcome: outcome_code(Outcome::Success),
            grpc_pending: false,
        }
    }

    fn record(&self, key: SeriesKey, seconds: f64) {
        self.with_recorder(|recorder| {
            let address = address(recorder);
            {
                let resolved = self.resolved.read();
                if resolved.recorder == address {
                    if let Some(series) = resolved.series.get(&key) {
                        series.requests.increment(1);
                        series.duration.record(seconds);
                        return;
                    }
                }
            }
            let mut resolved = self.resolved.write();
            if resolved.recorder != address {
                *resolved = self.resolve_base(recorder);
            }
            let series = resolved
                .series
                .entry(key)
                .or_insert_with(|| self.register(recorder, key));
            series.requests.increment(1);
            series.duration.record(seconds);
        });
    }

    /// Resolves one series' handles: the only place that builds labels
    /// (and allocates), once per series and recorder.
    fn register(&self, recorder: &dyn Recorder, key: SeriesKey) -> Series {
        let mut labels = Vec::with_capacity(8);
        let label = |k: &'static str, v: SharedString| Label::new(SharedString::const_str(k), v);
        let fixed = |k: &'static str, v: &'static str| {
            Label::new(SharedString::const_str(k), SharedString::const_str(v))
        };
        labels.push(label("name", self.name.clone()));
        let route = {
            let routes = self.routes.read();
            routes.labels[key.route as usize].clone()
        };
        match self.kind {
            Kind::Generic => {}
            Kind::HttpServer | Kind::HttpClient => {
                labels.push(fixed(
                    "http.request.method",
                    labels::METHODS[usize::from(key.method)],
                ));
                if key.route != NO_ROUTE {
                    labels.push(label("http.route", route.0));
                }
                if key.status != labels::NO_STATUS {
                    labels.push(fixed(
                        "http.response.status_class",
                        labels::STATUS_CLASSES[usize::from(key.status)],
                    ));
                }
            }
            Kind::GrpcServer | Kind::GrpcClient => {
                labels.push(fixed("rpc.system", "grpc"));
                if key.route == NO_ROUTE {
                    labels.push(label("rpc.service", OTHER));
                    labels.push(label("rpc.method", OTHER));
                } else {
                    labels.push(label("rpc.service", route.0));
                    labels.push(label("rpc.method", route.1));
                }
                if key.status != labels::NO_STATUS {
                    labels.push(fixed(
                        "rpc.grpc.status_code",
                        labels::GRPC_CODES[usize::from(key.status)],
                    ));
                }
            }
        }
        labels.push(fixed("outcome", labels::OUTCOMES[usize::from(key.outcome)]));
        if key.error != labels::NO_ERROR {
            labels.push(fixed(
                "error.type",
                labels::ERROR_TYPES[usize::from(key.error)],
            ));
        }
        let meta = metadata();
        let requests = recorder.register_counter(
            &Key::from_parts(self.requests.clone(), labels.clone()),
            &meta,
        );
        let duration =
            recorder.register_histogram(&Key::from_parts(self.duration.clone(), labels), &meta);
        Series { requests, duration }
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

/// `/pkg.Service/Method` to `("pkg.Service", "Method")`.
fn parse_grpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// Records one call when dropped: the in-flight gauge goes down, the
/// request counter and the duration histogram get the call, labelled by
/// `key` as it is then. A guard dropped before the call ended leaves
/// `outcome` at `ignored`.
pub(crate) struct Guard {
    shared: Arc<Shared>,
    start: Instant,
    active: Gauge,
    pub(crate) key: SeriesKey,
    /// The outcome to record when the response body ends.
    pub(crate) end_outcome: u8,
    /// A gRPC response whose status is still to come in the trailers.
    pub(crate) grpc_pending: bool,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.shared.name())
            .field("start", &self.start)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Guard {
    pub(crate) fn kind(&self) -> Kind {
        self.shared.kind
    }

    /// The call ended as planned: record it with `end_outcome`.
    pub(crate) fn finish(mut self) {
        if self.grpc_pending {
            // The body ended without a `grpc-status` trailer.
            self.key.status = labels::GRPC_OTHER;
            self.end_outcome = outcome_code(labels::grpc_outcome(labels::GRPC_OTHER));
        }
        self.key.outcome = self.end_outcome;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.active.decrement(1.0);
        let seconds = self.start.elapsed().as_secs_f64();
        self.shared.record(self.key, seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths() {
        assert_eq!(
            parse_grpc_path("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        for bad in ["", "/", "//x", "/svc/", "svc/m", "/a/b/c"] {
            assert_eq!(parse_grpc_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn routes_beyond_the_bound_are_other() {
        let shared = Shared::new(Kind::HttpServer, "t".into(), "p", None, 2);
        assert_eq!(shared.route_id("/a"), 2);
        assert_eq!(shared.route_id("/b"), 3);
        assert_eq!(shared.route_id("/c"), OVERFLOW_ROUTE);
        assert_eq!(shared.route_id("/a"), 2);
    }
}
