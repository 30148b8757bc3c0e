use std::fmt;
use std::sync::Arc;

use buttress_core::registry::Component;
use buttress_core::{ConfigError, Listener, Listeners, Registry};
use tower_layer::Layer;

use crate::events::{ChaosEvent, FaultKind};
use crate::latency::Latency;
use crate::rng::seed_of_name;
use crate::select::{All, SelectFn};
use crate::service::{Chaos, HttpChaos};
use crate::state::{Rates, Settings, Shared};

pub(crate) const KIND: &str = "chaos";

/// Injects faults into the calls of the services it wraps: errors,
/// delays and hangs. See [`HttpChaosLayer`] for broken response bodies.
///
/// Off by default: a layer injects nothing until it is switched on
/// ([`ChaosBuilder::enabled`] or [`ChaosHandle::enable`]) with a rate
/// above zero. Every service made by one layer (and every clone) shares
/// the switch, the rates and the sequence of random draws.
///
/// ```
/// use buttress_chaos::{error::InjectedFault, ChaosLayer};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = ChaosLayer::builder().name("db").error_rate(1.0).build().unwrap();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|()| async { Ok::<_, std::convert::Infallible>("rows") });
///
/// // Off by default: the rate is set, but nothing is injected yet.
/// assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "rows");
/// layer.handle().enable();
/// let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
/// assert!(err.is::<InjectedFault>());
/// # }
/// ```
pub struct ChaosLayer<Sel = All> {
    shared: Arc<Shared>,
    selector: Arc<Sel>,
}

/// Like [`ChaosLayer`], for HTTP services, with two more faults: a
/// response body that fails part way ([`FaultKind::AbortedBody`]) and one
/// that ends early ([`FaultKind::TruncatedBody`]). Built by
/// [`ChaosBuilder::build_http`]; its services answer
/// `http::Response<ChaosBody<B>>`.
///
/// ```
/// use buttress_chaos::{ChaosLayer, select::Routes};
/// use http::Method;
///
/// let layer = ChaosLayer::builder()
///     .name("api")
///     .select(Routes::new().route(Method::GET, "/search/*").unwrap())
///     .abort_body_rate(0.05)
///     .body_fault_after(1024)
///     .build_http()
///     .unwrap();
/// assert_eq!(layer.handle().snapshot().abort_body_rate, 0.05);
/// ```
pub struct HttpChaosLayer<Sel = All> {
    shared: Arc<Shared>,
    selector: Arc<Sel>,
}

macro_rules! layer_common {
    ($layer:ident, $service:ident) => {
        impl<Sel> Clone for $layer<Sel> {
            fn clone(&self) -> Self {
                Self {
                    shared: self.shared.clone(),
                    selector: self.selector.clone(),
                }
            }
        }

        impl<Sel> fmt::Debug for $layer<Sel> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.shared, f)
            }
        }

        impl<Sel> $layer<Sel> {
            /// A handle to switch the layer and change its rates at run
            /// time.
            pub fn handle(&self) -> ChaosHandle {
                ChaosHandle {
                    shared: self.shared.clone(),
                }
            }
        }

        impl<S, Sel> Layer<S> for $layer<Sel> {
            type Service = $service<S, Sel>;

            fn layer(&self, inner: S) -> Self::Service {
                $service::new(inner, self.shared.clone(), self.selector.clone())
            }
        }
    };
}

layer_common!(ChaosLayer, Chaos);
layer_common!(HttpChaosLayer, HttpChaos);

impl ChaosLayer {
    /// A builder: every rate 0, switched off, named `"chaos"`.
    pub fn builder() -> ChaosBuilder {
        ChaosBuilder::default()
    }
}

/// Builds a [`ChaosLayer`] or an [`HttpChaosLayer`].
pub struct ChaosBuilder<Sel = All> {
    name: Arc<str>,
    enabled: bool,
    seed: Option<u64>,
    rates: Rates,
    latency: Latency,
    body_after: u64,
    selector: Sel,
    registry: Option<Registry>,
    listeners: Listeners<ChaosEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

impl Default for ChaosBuilder {
    fn default() -> Self {
        Self {
            name: Arc::from(KIND),
            enabled: false,
            seed: None,
            rates: Rates::default(),
            latency: Latency::default(),
            body_after: 0,
            selector: All,
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }
}

impl<Sel> fmt::Debug for ChaosBuilder<Sel> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosBuilder")
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("seed", &self.seed)
            .field("rates", &self.rates)
            .field("latency", &self.latency)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl<Sel> ChaosBuilder<Sel> {
    /// The instance name, used in errors, events, metrics and the registry
    /// (default `"chaos"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Switched on from the start (default `false`: a built layer injects
    /// nothing until [`ChaosHandle::enable`]).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The seed of the random draws (default: derived from the name, so
    /// even an unseeded instance is reproducible). The same seed and the
    /// same order of calls give the same faults.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The share of selected calls that fail with
    /// [`InjectedFault`](crate::error::InjectedFault), in [0, 1]
    /// (default 0).
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.rates.error = rate;
        self
    }

    /// The share of selected calls delayed (in [0, 1], default 0), and
    /// the distribution of the delay. A delayed call waits on tokio's
    /// clock, then goes on (or fails, or hangs, if another fault was
    /// drawn for it too).
    pub fn latency(mut self, rate: f64, latency: Latency) -> Self {
        self.rates.latency = rate;
        self.latency = latency;
        self
    }

    /// The share of selected calls that never complete until dropped, in
    /// [0, 1] (default 0). Put a timeout above the layer.
    pub fn hang_rate(mut self, rate: f64) -> Self {
        self.rates.hang = rate;
        self
    }

    /// HTTP only ([`build_http`](Self::build_http)): the share of
    /// responses whose body fails with
    /// [`InjectedFault`](crate::error::InjectedFault) after
    /// [`body_fault_after`](Self::body_fault_after) bytes (default 0).
    pub fn abort_body_rate(mut self, rate: f64) -> Self {
        self.rates.abort_body = rate;
        self
    }

    /// HTTP only ([`build_http`](Self::build_http)): the share of
    /// responses whose body ends after
    /// [`body_fault_after`](Self::body_fault_after) bytes (default 0).
    pub fn truncate_body_rate(mut self, rate: f64) -> Self {
        self.rates.truncate_body = rate;
        self
    }

    /// Bytes of a faulted body let through before it is cut (default 0).
    /// The cut falls on a frame boundary: the frame that reaches this
    /// count is sent whole, and the next one is replaced by the fault.
    pub fn body_fault_after(mut self, bytes: u64) -> Self {
        self.body_after = bytes;
        self
    }

    /// Faults only the requests `selector` selects: [`Routes`] (HTTP
    /// method and path), [`Keys`] (a `buttress_core` key extractor and a
    /// set of keys), [`SelectFn`], or your own [`Selector`].
    ///
    /// [`Routes`]: crate::select::Routes
    /// [`Keys`]: crate::select::Keys
    /// [`Selector`]: crate::select::Selector
    pub fn select<S2>(self, selector: S2) -> ChaosBuilder<S2> {
        ChaosBuilder {
            name: self.name,
            enabled: self.enabled,
            seed: self.seed,
            rates: self.rates,
            latency: self.latency,
            body_after: self.body_after,
            selector,
            registry: self.registry,
            listeners: self.listeners,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Faults only the requests for which `f` returns `true`.
    ///
    /// ```
    /// use buttress_chaos::ChaosLayer;
    ///
    /// let layer = ChaosLayer::builder()
    ///     .select_fn(|id: &u64| *id >= 1000)
    ///     .error_rate(0.5)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn select_fn<F>(self, f: F) -> ChaosBuilder<SelectFn<F>> {
        self.select(SelectFn(f))
    }

    /// Registers the layer's [`ChaosHandle`] in `registry` under its name,
    /// so operators can switch it from there.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener.
    pub fn on_event(mut self, listener: impl Listener<ChaosEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Publishes the injected faults as metrics through the [`metrics`]
    /// facade (feature `metrics`): the counter
    /// `buttress_chaos_faults_total{name, kind}`. A
    /// [`Registry::with_metrics`] registry given to
    /// [`registry`](Self::registry) does the same. Install the recorder
    /// before building the layer.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Validates and builds a layer for any request type. Body faults need
    /// [`build_http`](Self::build_http): a non-zero body rate here is an
    /// error.
    pub fn build(self) -> Result<ChaosLayer<Sel>, ConfigError> {
        let (shared, selector) = self.finish(false)?;
        Ok(ChaosLayer { shared, selector })
    }

    /// Validates and builds a layer for HTTP services, which can also
    /// break response bodies.
    pub fn build_http(self) -> Result<HttpChaosLayer<Sel>, ConfigError> {
        let (shared, selector) = self.finish(true)?;
        Ok(HttpChaosLayer { shared, selector })
    }

    fn finish(self, http: bool) -> Result<(Arc<Shared>, Arc<Sel>), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(KIND, "name", "must not be empty"));
        }
        self.rates.validate(http)?;
        self.latency.validate()?;
        #[allow(unused_mut)]
        let mut listeners = self.listeners;
        #[cfg(feature = "metrics")]
        crate::metrics::attach(
            &self.name,
            self.metrics,
            self.registry.as_ref(),
            &mut listeners,
        );
        let shared = Arc::new(Shared::new(Settings {
            seed: self.seed.unwrap_or_else(|| seed_of_name(&self.name)),
            name: self.name,
            http,
            enabled: self.enabled,
            rates: self.rates,
            latency: self.latency,
            body_after: self.body_after,
            listeners,
        }));
        if let Some(registry) = &self.registry {
            registry
                .register(ChaosHandle {
                    shared: shared.clone(),
                })
                .map_err(|e| ConfigError::new(KIND, "name", e.to_string()))?;
        }
        Ok((shared, Arc::new(self.selector)))
    }
}

/// Switches a chaos layer and changes its rates at run time, without
/// rebuilding it; also reachable through the [`Registry`]
/// (`registry.get::<ChaosHandle>(name)`).
///
/// Every setter validates as the builder does and changes nothing on an
/// error. Changes apply to calls made from then on.
///
/// ```
/// use buttress_chaos::{ChaosHandle, ChaosLayer, Latency};
/// use buttress_core::Registry;
/// use std::time::Duration;
///
/// let registry = Registry::new();
/// let _layer = ChaosLayer::builder().name("payments").registry(&registry).build().unwrap();
///
/// let chaos = registry.get::<ChaosHandle>("payments").unwrap();
/// chaos.set_error_rate(0.1).unwrap();
/// chaos.set_latency(0.5, Latency::Fixed(Duration::from_millis(200))).unwrap();
/// chaos.enable();
/// assert!(chaos.snapshot().enabled);
/// assert_eq!(chaos.set_error_rate(1.5).unwrap_err().field(), "error_rate");
/// assert_eq!(chaos.snapshot().error_rate, 0.1);
/// chaos.disable();
/// ```
#[derive(Clone)]
pub struct ChaosHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

/// The state of a chaos layer, from [`ChaosHandle::snapshot`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChaosSnapshot {
    /// Switched on.
    pub enabled: bool,
    /// The seed of the draws.
    pub seed: u64,
    /// Calls rolled for so far (selected while switched on with a rate
    /// above zero): the number of the next call in the sequence.
    pub calls: u64,
    /// See [`ChaosBuilder::error_rate`].
    pub error_rate: f64,
    /// See [`ChaosBuilder::latency`].
    pub latency_rate: f64,
    /// See [`ChaosBuilder::latency`].
    pub latency: Latency,
    /// See [`ChaosBuilder::hang_rate`].
    pub hang_rate: f64,
    /// See [`ChaosBuilder::abort_body_rate`].
    pub abort_body_rate: f64,
    /// See [`ChaosBuilder::truncate_body_rate`].
    pub truncate_body_rate: f64,
    /// See [`ChaosBuilder::body_fault_after`].
    pub body_fault_after: u64,
    /// Faults injected, by kind, in the order of [`FaultKind::ALL`].
    pub injected: [u64; 5],
}

impl ChaosSnapshot {
    /// Faults of `kind` injected so far.
    pub fn injected(&self, kind: FaultKind) -> u64 {
        self.injected[kind.index()]
    }
}

impl ChaosHandle {
    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Switches fault injection on (with the current rates).
    pub fn enable(&self) {
        self.switch(true);
    }

    /// Switches fault injection off: calls pass straight through. Calls
    /// already delayed or hanging are not touched.
    pub fn disable(&self) {
        self.switch(false);
    }

    fn switch(&self, on: bool) {
        if self.shared.set_enabled(on) {
            tracing::info!(
                buttress.pattern = KIND,
                buttress.name = &*self.shared.name,
                "{}",
                if on {
                    "chaos switched on"
                } else {
                    "chaos switched off"
                }
            );
            self.shared.listeners.emit(|| ChaosEvent::Switched {
                name: self.shared.name.clone(),
                enabled: on,
            });
        }
    }

    /// `true` while switched on.
    pub fn is_enabled(&self) -> bool {
        self.shared.is_enabled()
    }

    /// Changes the error rate.
    pub fn set_error_rate(&self, rate: f64) -> Result<(), ConfigError> {
        self.shared.update_rates(|r| r.error = rate)
    }

    /// Changes the latency rate and distribution.
    pub fn set_latency(&self, rate: f64, latency: Latency) -> Result<(), ConfigError> {
        self.shared.set_latency(rate, latency)
    }

    /// Changes the hang rate.
    pub fn set_hang_rate(&self, rate: f64) -> Result<(), ConfigError> {
        self.shared.update_rates(|r| r.hang = rate)
    }

    /// Changes the aborted-body rate (an error unless the layer was built
    /// with `build_http`, or for a rate above zero there).
    pub fn set_abort_body_rate(&self, rate: f64) -> Result<(), ConfigError> {
        self.shared.update_rates(|r| r.abort_body = rate)
    }

    /// Changes the truncated-body rate (an error unless the layer was
    /// built with `build_http`, for a rate above zero).
    pub fn set_truncate_body_rate(&self, rate: f64) -> Result<(), ConfigError> {
        self.shared.update_rates(|r| r.truncate_body = rate)
    }

    /// Changes how many body bytes pass before a body fault.
    pub fn set_body_fault_after(&self, bytes: u64) {
        self.shared.set_body_after(bytes);
    }

    /// Sets a new seed and starts the sequence of draws over (call number
    /// 0), to replay a run.
    pub fn reseed(&self, seed: u64) {
        self.shared.reseed(seed);
    }

    /// Counters and the call number back to 0: the sequence of draws
    /// starts over with the current seed.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// The current state.
    pub fn snapshot(&self) -> ChaosSnapshot {
        let s = &self.shared;
        let rates = s.rates();
        ChaosSnapshot {
            enabled: s.is_enabled(),
            seed: s.seed(),
            calls: s.calls(),
            error_rate: rates.error,
            latency_rate: rates.latency,
            latency: s.latency(),
            hang_rate: rates.hang,
            abort_body_rate: rates.abort_body,
            truncate_body_rate: rates.truncate_body,
            body_fault_after: s.body_after(),
            injected: FaultKind::ALL.map(|k| s.injected(k)),
        }
    }
}

/// The latency as the config file writes it (`{"fixed": "50ms"}`), with
/// `Duration`'s `Debug` text for the durations.
fn latency_json(latency: &Latency) -> serde_json::Value {
    let d = |d: &std::time::Duration| serde_json::Value::from(format!("{d:?}"));
    match latency {
        Latency::Fixed(x) => serde_json::json!({ "fixed": d(x) }),
        Latency::Uniform { min, max } => {
            serde_json::json!({ "uniform": { "min": d(min), "max": d(max) } })
        }
        Latency::Exponential { mean } => serde_json::json!({ "exponential": { "mean": d(mean) } }),
        Latency::Normal { mean, std_dev } => {
            serde_json::json!({ "normal": { "mean": d(mean), "std_dev": d(std_dev) } })
        }
    }
}

impl Component for ChaosHandle {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn snapshot(&self) -> serde_json::Value {
        let s = ChaosHandle::snapshot(self);
        let injected: serde_json::Map<String, serde_json::Value> = FaultKind::ALL
            .iter()
            .map(|k| (k.as_str().to_owned(), s.injected(*k).into()))
            .collect();
        serde_json::json!({
            "enabled": s.enabled,
            "seed": s.seed,
            "calls": s.calls,
            "error_rate": s.error_rate,
            "latency_rate": s.latency_rate,
            "latency": latency_json(&s.latency),
            "hang_rate": s.hang_rate,
            "abort_body_rate": s.abort_body_rate,
            "truncate_body_rate": s.truncate_body_rate,
            "body_fault_after": s.body_fault_after,
            "injected": injected,
        })
    }

    fn reset(&self) {
        self.shared.reset();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
