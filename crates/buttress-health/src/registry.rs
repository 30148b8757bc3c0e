//! [`HealthRegistry`]: runs the checks, caches their results, aggregates
//! them into liveness and readiness reports.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use buttress_core::{ConfigError, Listener, Listeners, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::check::{Check, HealthCheck, Settings};
use crate::config::HealthConfig;
use crate::events::HealthEvent;
use crate::report::{CheckReport, HealthReport, Probe};
use crate::status::{CheckResult, Status};
use crate::summary::Summary;
use crate::KIND;

/// A check could not be registered.
///
/// ```
/// use buttress_health::{Check, HealthRegistry, RegisterError, Status};
///
/// let registry = HealthRegistry::new();
/// let ok = || async { Status::Healthy };
/// registry.register(Check::new("a", ok).depends_on("b")).unwrap();
/// registry.register(Check::new("b", ok).depends_on("c")).unwrap();
/// let err = registry.register(Check::new("c", ok).depends_on("a")).unwrap_err();
/// assert_eq!(err, RegisterError::Cycle { cycle: vec!["c".into(), "a".into(), "b".into(), "c".into()] });
/// assert_eq!(err.to_string(), "health checks would form a cycle: c -> a -> b -> c");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// A setting of the check is invalid.
    Config(ConfigError),
    /// A check of that name is registered already.
    Duplicate {
        /// The name.
        name: String,
    },
    /// The check's dependencies lead back to it. The cycle starts and ends
    /// with the new check, each name depending on the next.
    Cycle {
        /// The names along the cycle.
        cycle: Vec<String>,
    },
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::Config(e) => e.fmt(f),
            RegisterError::Duplicate { name } => {
                write!(f, "a health check named `{name}` is registered already")
            }
            RegisterError::Cycle { cycle } => {
                write!(
                    f,
                    "health checks would form a cycle: {}",
                    cycle.join(" -> ")
                )
            }
        }
    }
}

impl std::error::Error for RegisterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RegisterError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RegisterError> for ConfigError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Config(e) => e,
            RegisterError::Duplicate { name } => {
                ConfigError::new(KIND, "name", format!("`{name}` is registered already"))
            }
            RegisterError::Cycle { cycle } => ConfigError::new(
                KIND,
                "depends_on",
                format!("checks would form a cycle: {}", cycle.join(" -> ")),
            ),
        }
    }
}

/// Builds a [`HealthRegistry`]; `build()` validates everything at once.
#[derive(Debug, Default)]
#[must_use]
pub struct HealthRegistryBuilder {
    checks: Vec<Check>,
    config: HealthConfig,
    components: Option<Registry>,
    listeners: Listeners<HealthEvent>,
    metrics: bool,
    manual_startup: bool,
}

impl HealthRegistryBuilder {
    /// Adds a check. Dependencies may name checks added later.
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Check settings as data (see [`HealthConfig`]).
    pub fn config(mut self, config: HealthConfig) -> Self {
        self.config = config;
        self
    }

    /// The core [`Registry`] whose breakers, bulkheads and rate limiters the
    /// reports summarise (seed 004's shape: breakers by state, bulkhead
    /// utilisation, rate limiter saturation, issues). With a
    /// [`Registry::with_metrics`] registry the `metrics` bridge is on too.
    pub fn components(mut self, registry: &Registry) -> Self {
        self.components = Some(registry.clone());
        self
    }

    /// Adds an event listener.
    pub fn on_event(mut self, listener: impl Listener<HealthEvent>) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Publishes results through the `metrics` facade (feature `metrics`):
    /// `buttress_health_status{check}` (1 healthy, 0.5 degraded, 0
    /// unhealthy), `buttress_health_check_duration_seconds{check}`,
    /// `buttress_health_ready` (1 or 0, set by each readiness report) and
    /// `buttress_health_started` (0 until startup completes, then 1).
    /// Install the recorder first. Without the feature it does nothing.
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Startup also waits for the app to say it is done: the startup probe
    /// fails until [`StartupHandle::done`] is called (on a handle from
    /// [`HealthRegistry::startup_handle`]), as well as until the startup
    /// checks have passed. For work no check sees: migrations, a cache to
    /// warm, a model to load.
    ///
    /// ```
    /// use buttress_health::HealthRegistry;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let registry = HealthRegistry::builder().manual_startup().build().unwrap();
    /// let startup = registry.startup_handle();
    /// assert_eq!(registry.startup().await.http_status(), 503);
    /// // ... migrations ran, caches are warm:
    /// startup.done();
    /// assert_eq!(registry.startup().await.http_status(), 200);
    /// # });
    /// ```
    pub fn manual_startup(mut self) -> Self {
        self.manual_startup = true;
        self
    }

    /// Validates the config and the checks (names, settings, dependencies
    /// that all exist, no cycle) and builds the registry.
    pub fn build(self) -> Result<HealthRegistry, ConfigError> {
        self.config.validate()?;
        for name in self.config.checks.keys() {
            if !self.checks.iter().any(|c| &c.name == name) {
                return Err(ConfigError::new(
                    KIND,
                    "checks",
                    format!("the config names `{name}`, but no check has that name"),
                ));
            }
        }
        #[cfg(feature = "metrics")]
        let metrics =
            buttress_core::bridge::should_attach(KIND, self.metrics, self.components.as_ref());
        #[cfg(not(feature = "metrics"))]
        let metrics = {
            let _ = self.metrics;
            false
        };
        let registry =
            HealthRegistry::with_parts(self.config, self.components, self.listeners, metrics);
        if self.manual_startup {
            registry.inner.gate_open.store(false, Ordering::Release);
        }
        for check in self.checks {
            registry.register(check)?;
        }
        let graph = registry.inner.read();
        for slot in &graph.slots {
            for dep in &slot.depends_on {
                if !graph.by_name.contains_key(dep) {
                    return Err(ConfigError::new(
                        KIND,
                        "depends_on",
                        format!(
                            "`{}` depends on `{dep}`, which is not registered",
                            slot.name
                        ),
                    ));
                }
            }
        }
        drop(graph);
        Ok(registry)
    }
}

/// The health checks of a service: runs them concurrently under their
/// timeouts, caches each result for its interval, and aggregates them into
/// [liveness and readiness](Probe) reports.
///
/// A cheap-to-clone handle: clones share the checks and their results.
/// Probes spawn the check runs as tokio tasks: call them within a tokio
/// runtime.
///
/// # Caching: probes never wait for a slow check
///
/// A probe ([`readiness`](HealthRegistry::readiness),
/// [`liveness`](HealthRegistry::liveness)) answers from each check's last
/// result. A result older than the check's interval is served all the
/// same, and a run starts in the background; the next probe after it ends
/// sees the new result. So a check that hangs costs the probe nothing: it
/// is cut at its timeout in the background and then reported unhealthy.
/// Only a check that has never run makes the probe wait, for that first
/// run (bounded by its timeout and retries); call
/// [`readiness`](HealthRegistry::readiness) once at startup, before
/// serving, to have every result in cache. One run at a time per check,
/// however many probes ask. With
/// [`spawn_refresher`](HealthRegistry::spawn_refresher) the runs happen on
/// each check's interval whether probes come or not, so a probe's answer
/// is never older than the interval plus the run.
///
/// # Aggregation
///
/// The probe's status is the worst of its checks, where a non-critical
/// check counts at most as degraded: unhealthy if a critical check is
/// unhealthy; else degraded if any check is degraded or a non-critical one
/// unhealthy; else healthy (no checks: healthy). Readiness answers 503
/// when unhealthy or [shutting down](ShutdownHandle), 200 otherwise.
///
/// # Dependencies
///
/// A check may depend on others ([`Check::depends_on`]): it runs after
/// them, and while one of them is unhealthy it is reported unhealthy
/// without running (`skipped: true`). A registration that would close a
/// cycle is refused with [`RegisterError::Cycle`], which names it; reports
/// list checks in dependency order.
///
/// ```
/// use std::time::Duration;
/// use buttress_health::{Check, CheckResult, HealthRegistry, Status};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let registry = HealthRegistry::builder()
///     .check(Check::new("db", || async { Ok::<_, std::io::Error>(()) }).depends_on("network"))
///     .check(Check::new("network", || async { Status::Healthy }))
///     .check(
///         Check::new("recommendations", || async { CheckResult::unhealthy("timeout") })
///             .critical(false),
///     )
///     .build()
///     .unwrap();
///
/// let report = registry.readiness().await;
/// assert_eq!(report.status, Status::Degraded); // a non-critical check is down
/// assert_eq!(report.http_status(), 200);
/// let order: Vec<_> = report.checks.iter().map(|c| c.name.as_str()).collect();
/// assert_eq!(order, ["network", "db", "recommendations"]);
/// # });
/// ```
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("checks", &self.names())
            .field("shutting_down", &self.is_shutting_down())
            .finish_non_exhaustive()
    }
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) struct Inner {
    graph: RwLock<Graph>,
    config: HealthConfig,
    components: Option<Registry>,
    listeners: Listeners<HealthEvent>,
    shutting_down: AtomicBool,
    /// Startup completed; never goes back.
    started: AtomicBool,
    /// The manual startup gate is open (open from the start without
    /// [`HealthRegistryBuilder::manual_startup`]).
    gate_open: AtomicBool,
    /// When the registry was created, for [`HealthEvent::Started`].
    created: Instant,
    /// Bumped when a check's status changes or shutdown starts.
    changed: watch::Sender<u64>,
    #[cfg(feature = "metrics")]
    metrics: bool,
    #[cfg(feature = "metrics")]
    ready_gauge: Option<metrics::Gauge>,
    #[cfg(feature = "metrics")]
    started_gauge: Option<metrics::Gauge>,
}

#[derive(Default)]
struct Graph {
    slots: Vec<Arc<Slot>>,
    by_name: HashMap<String, usize>,
    /// Indices of `slots` in dependency order.
    order: Vec<usize>,
}

struct Slot {
    name: Arc<str>,
    check: Arc<dyn HealthCheck>,
    settings: Settings,
    depends_on: Vec<String>,
    liveness: bool,
    /// Has had a healthy or degraded result at least once.
    passed: AtomicBool,
    state: Mutex<SlotState>,
    /// Bumped after each run.
    done: watch::Sender<u64>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::CheckMetrics>,
}

#[derive(Default)]
struct SlotState {
    last: Option<Arc<Run>>,
    running: bool,
}

/// The stored result of one run.
#[derive(Debug)]
struct Run {
    status: Status,
    message: Option<String>,
    details: serde_json::Map<String, serde_json::Value>,
    duration: Duration,
    attempts: u32,
    skipped: bool,
    checked_at: Instant,
    checked_at_wall: SystemTime,
    changed_at: Instant,
    changed_at_wall: SystemTime,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // Every section under this lock is a few assignments: a panic
        // cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no run of this check is in progress.
    async fn idle(&self) {
        let mut rx = self.done.subscribe();
        while self.lock().running {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl HealthRegistry {
    /// A builder.
    pub fn builder() -> HealthRegistryBuilder {
        HealthRegistryBuilder::default()
    }

    /// An empty registry with the default settings; add checks with
    /// [`register`](HealthRegistry::register).
    pub fn new() -> Self {
        Self::with_parts(HealthConfig::default(), None, Listeners::new(), false)
    }

    fn with_parts(
        config: HealthConfig,
        components: Option<Registry>,
        listeners: Listeners<HealthEvent>,
        metrics: bool,
    ) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = metrics;
        Self {
            inner: Arc::new(Inner {
                graph: RwLock::new(Graph::default()),
                config,
                components,
                listeners,
                shutting_down: AtomicBool::new(false),
                started: AtomicBool::new(false),
                gate_open: AtomicBool::new(true),
                created: Instant::now(),
                changed: watch::Sender::new(0),
                #[cfg(feature = "metrics")]
                metrics,
                #[cfg(feature = "metrics")]
                ready_gauge: metrics.then(crate::metrics::ready_gauge),
                #[cfg(feature = "metrics")]
                started_gauge: metrics.then(|| {
                    let g = crate::metrics::started_gauge();
                    g.set(0.0);
                    g
                }),
            }),
        }
    }

    /// Registers a check. Its dependencies may name checks not registered
    /// yet (such a check is reported unhealthy until they are); one that
    /// would close a cycle is refused.
    pub fn register(&self, check: Check) -> Result<(), RegisterError> {
        if check.name.is_empty() {
            return Err(RegisterError::Config(ConfigError::new(
                KIND,
                "name",
                "must not be empty",
            )));
        }
        if check.liveness && !check.depends_on.is_empty() {
            return Err(RegisterError::Config(ConfigError::new(
                KIND,
                "depends_on",
                format!(
                    "`{}` is a liveness check and cannot depend on other checks: liveness \
                     must not fail because a dependency is down",
                    check.name
                ),
            )));
        }
        let settings = self.inner.config.resolve(&check);
        settings.validate().map_err(RegisterError::Config)?;
        let mut graph = self.inner.graph.write().unwrap_or_else(|e| e.into_inner());
        if graph.by_name.contains_key(&check.name) {
            return Err(RegisterError::Duplicate { name: check.name });
        }
        {
            let g = &*graph;
            let cycle = crate::graph::cycle_through(&check.name, |n| {
                if n == check.name {
                    Some(check.depends_on.as_slice())
                } else {
                    g.by_name.get(n).map(|&i| g.slots[i].depends_on.as_slice())
                }
            });
            if let Some(cycle) = cycle {
                return Err(RegisterError::Cycle { cycle });
            }
        }
        let name: Arc<str> = check.name.as_str().into();
        let slot = Arc::new(Slot {
            #[cfg(feature = "metrics")]
            metrics: self
                .inner
                .metrics
                .then(|| crate::metrics::CheckMetrics::new(&name)),
            name,
            check: check.check,
            settings,
            depends_on: check.depends_on,
            liveness: check.liveness,
            passed: AtomicBool::new(false),
            state: Mutex::new(SlotState::default()),
            done: watch::Sender::new(0),
        });
        let index = graph.slots.len();
        graph.by_name.insert(check.name, index);
        graph.slots.push(slot);
        let names: Vec<&str> = graph.slots.iter().map(|s| &*s.name).collect();
        let deps: Vec<&[String]> = graph
            .slots
            .iter()
            .map(|s| s.depends_on.as_slice())
            .collect();
        let order = crate::graph::topological(&names, &deps);
        graph.order = order;
        Ok(())
    }

    /// The check names, in dependency order.
    pub fn names(&self) -> Vec<String> {
        let g = self.inner.read();
        g.order
            .iter()
            .map(|&i| g.slots[i].name.to_string())
            .collect()
    }

    /// The readiness report: every check, plus the summary of the core
    /// registry given to [`components`](HealthRegistryBuilder::components).
    pub async fn readiness(&self) -> HealthReport {
        self.report(Probe::Readiness).await
    }

    /// The liveness report: the checks marked [`Check::liveness`] only, so a
    /// dependency that is down never fails it, nor does shutdown.
    pub async fn liveness(&self) -> HealthReport {
        self.report(Probe::Liveness).await
    }

    /// The startup report, for a Kubernetes `startupProbe`: 503 until
    /// startup completes, then 200 for the life of the registry.
    ///
    /// Startup completes once every startup check has passed (healthy or
    /// degraded) at least once, not necessarily at the same time, and the
    /// manual gate is open ([`HealthRegistryBuilder::manual_startup`],
    /// [`StartupHandle::done`]). The startup checks are those marked
    /// [`Check::startup`] (or `startup: true` in the config); when none is
    /// marked, every critical check. Until then this probe runs the startup
    /// checks as [`readiness`](HealthRegistry::readiness) does (cached for
    /// their interval, first runs awaited) and lists them; any probe's
    /// runs count, so startup may complete before the kubelet asks.
    ///
    /// Once started it answers at once, runs no check and lists none: a
    /// later failure is for liveness and readiness to report, as Kubernetes
    /// expects (it stops the startup probe once it succeeds). Startup is
    /// looked at when a probe asks, a check passes or the gate opens; a
    /// check registered after startup completed does not gate it. A
    /// registry with no startup check and no manual gate is started at its
    /// first probe.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use buttress_health::{Check, HealthRegistry, Status};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
    /// let up = Arc::new(AtomicBool::new(false));
    /// let flag = up.clone();
    /// let registry = HealthRegistry::builder()
    ///     .check(Check::new("db", move || {
    ///         let up = flag.load(Ordering::SeqCst);
    ///         async move { if up { Status::Healthy } else { Status::Unhealthy } }
    ///     }))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(registry.startup().await.http_status(), 503);
    ///
    /// up.store(true, Ordering::SeqCst);
    /// tokio::time::sleep(std::time::Duration::from_secs(5)).await; // the cache interval
    /// registry.startup().await; // starts a run in the background
    /// tokio::time::sleep(std::time::Duration::from_millis(1)).await; // the run ends
    /// let report = registry.startup().await;
    /// assert_eq!(report.http_status(), 200);
    /// assert!(report.started && registry.is_started());
    /// # });
    /// ```
    pub async fn startup(&self) -> HealthReport {
        if self.is_started() {
            return started_report();
        }
        let slots = startup_slots(&self.inner.read());
        let first_runs = start_stale(&self.inner, &slots);
        for slot in first_runs {
            slot.idle().await;
        }
        maybe_start(&self.inner);
        self.cached_startup(&slots)
    }

    /// `true` once startup completed (see
    /// [`startup`](HealthRegistry::startup)); it never goes back.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }

    /// A handle that opens the manual startup gate (see
    /// [`HealthRegistryBuilder::manual_startup`]).
    pub fn startup_handle(&self) -> StartupHandle {
        StartupHandle {
            inner: self.inner.clone(),
        }
    }

    fn cached_startup(&self, slots: &[Arc<Slot>]) -> HealthReport {
        if self.is_started() {
            return started_report();
        }
        let mut report = self.cached_report(Probe::Startup, slots);
        if !self.inner.gate_open.load(Ordering::Acquire) {
            report
                .summary
                .issues
                .push("startup not done: waiting for `StartupHandle::done`".to_owned());
        }
        // `maybe_start` may have completed it since the check above.
        if self.is_started() {
            return started_report();
        }
        report.status = Status::Unhealthy;
        report
    }

    /// The report of `probe` (see the type's docs for caching).
    pub async fn report(&self, probe: Probe) -> HealthReport {
        if probe == Probe::Startup {
            return self.startup().await;
        }
        let slots: Vec<Arc<Slot>> = {
            let g = self.inner.read();
            g.order
                .iter()
                .map(|&i| g.slots[i].clone())
                .filter(|s| probe == Probe::Readiness || s.liveness)
                .collect()
        };
        let first_runs = start_stale(&self.inner, &slots);
        for slot in first_runs {
            slot.idle().await;
        }
        self.cached_report(probe, &slots)
    }

    /// Keeps every result fresh in the background: a task that starts each
    /// check's run once its result is older than its interval, whether or
    /// not probes come. Without it a result is refreshed when a probe finds
    /// it stale, so a probe sees what the previous one started (fine when
    /// probes come more often than the interval, a probe period late when
    /// they come less often). The task ends when the last handle to the
    /// registry is dropped; abort it to stop it sooner.
    ///
    /// ```
    /// use std::time::Duration;
    /// use buttress_health::{Check, HealthRegistry, Probe, Status};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
    /// let registry = HealthRegistry::builder()
    ///     .check(Check::new("db", || async { Status::Healthy }).interval(Duration::from_secs(5)))
    ///     .build()
    ///     .unwrap();
    /// let refresher = registry.spawn_refresher();
    /// tokio::time::sleep(Duration::from_secs(12)).await;
    /// // Refreshed at 0 s, 5 s and 10 s without a single probe.
    /// assert_eq!(registry.cached(Probe::Readiness).checks[0].age, Duration::from_secs(2));
    /// refresher.abort();
    /// # });
    /// ```
    pub fn spawn_refresher(&self) -> JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let slots: Vec<Arc<Slot>> = {
                    let g = inner.read();
                    g.order.iter().map(|&i| g.slots[i].clone()).collect()
                };
                start_stale(&inner, &slots);
                let now = Instant::now();
                let min = slots
                    .iter()
                    .map(|s| s.settings.interval)
                    .min()
                    .unwrap_or(crate::check::DEFAULT_INTERVAL);
                // The next result to go stale; a check still running is
                // looked at again within the smallest interval.
                let next = slots
                    .iter()
                    .filter_map(|s| {
                        let st = s.lock();
                        match &st.last {
                            Some(r) if !st.running => r.checked_at.checked_add(s.settings.interval),
                            _ => None,
                        }
                    })
                    .filter(|due| *due > now)
                    .min();
                let until = now
                    .checked_add(min)
                    .map_or(next, |cap| Some(next.map_or(cap, |n| n.min(cap))));
                drop(inner);
                match until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => tokio::time::sleep(min).await,
                }
            }
        })
    }

    /// The report of `probe` from the cached results only: runs nothing,
    /// never waits. A check that never ran is reported unhealthy
    /// (`"not checked yet"`).
    pub fn cached(&self, probe: Probe) -> HealthReport {
        if probe == Probe::Startup {
            maybe_start(&self.inner);
            if self.is_started() {
                return started_report();
            }
            let slots = startup_slots(&self.inner.read());
            return self.cached_startup(&slots);
        }
        let slots: Vec<Arc<Slot>> = {
            let g = self.inner.read();
            g.order
                .iter()
                .map(|&i| g.slots[i].clone())
                .filter(|s| probe == Probe::Readiness || s.liveness)
                .collect()
        };
        self.cached_report(probe, &slots)
    }

    fn cached_report(&self, probe: Probe, slots: &[Arc<Slot>]) -> HealthReport {
        let now = Instant::now();
        let checks: Vec<CheckReport> = slots
            .iter()
            .map(|slot| {
                let last = slot.lock().last.clone();
                let base = CheckReport {
                    name: slot.name.to_string(),
                    status: Status::Unhealthy,
                    critical: slot.settings.critical,
                    message: Some("not checked yet".to_owned()),
                    details: serde_json::Map::new(),
                    duration: Duration::ZERO,
                    attempts: 0,
                    skipped: false,
                    depends_on: slot.depends_on.clone(),
                    age: Duration::ZERO,
                    since_change: Duration::ZERO,
                    checked_at: None,
                    last_change: None,
                };
                match last {
                    None => base,
                    Some(r) => CheckReport {
                        status: r.status,
                        message: r.message.clone(),
                        details: r.details.clone(),
                        duration: r.duration,
                        attempts: r.attempts,
                        skipped: r.skipped,
                        age: now.saturating_duration_since(r.checked_at),
                        since_change: now.saturating_duration_since(r.changed_at),
                        checked_at: Some(r.checked_at_wall),
                        last_change: Some(r.changed_at_wall),
                        ..base
                    },
                }
            })
            .collect();
        let shutting_down = probe == Probe::Readiness && self.is_shutting_down();
        let mut status = crate::report::aggregate_reports(&checks);
        if shutting_down {
            status = Status::Unhealthy;
        }
        let summary = match (&self.inner.components, probe) {
            (Some(reg), Probe::Readiness) => Summary::of(reg),
            _ => Summary::default(),
        }
        .with_issues(&checks, shutting_down);
        #[cfg(feature = "metrics")]
        if let (Some(g), Probe::Readiness) = (&self.inner.ready_gauge, probe) {
            g.set(if status == Status::Unhealthy {
                0.0
            } else {
                1.0
            });
        }
        HealthReport {
            probe,
            status,
            shutting_down,
            started: self.is_started(),
            checks,
            summary,
        }
    }

    /// A handle that flips readiness to not-serving, for graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            inner: self.inner.clone(),
        }
    }

    /// `true` once [`ShutdownHandle::shut_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever a check's status changes or
    /// shutdown starts (the tonic reporter waits on it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The smallest interval of the registered checks (the default interval
    /// when there are none): how often a poller should ask.
    pub fn min_interval(&self) -> Duration {
        let g = self.inner.read();
        g.slots
            .iter()
            .map(|s| s.settings.interval)
            .min()
            .unwrap_or(crate::check::DEFAULT_INTERVAL)
    }
}

/// Flips readiness to not-serving before the server drains, so that load
/// balancers stop sending first. Liveness is unaffected.
///
/// ```
/// use std::time::Duration;
/// use buttress_health::HealthRegistry;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let registry = HealthRegistry::new();
/// let shutdown = registry.shutdown_handle();
/// assert_eq!(registry.readiness().await.http_status(), 200);
///
/// // e.g. in axum::serve(...).with_graceful_shutdown(...):
/// shutdown.shut_down_and_wait(Duration::from_secs(5)).await;
/// assert_eq!(registry.readiness().await.http_status(), 503);
/// assert_eq!(registry.liveness().await.http_status(), 200);
/// # });
/// ```
#[derive(Clone)]
pub struct ShutdownHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl ShutdownHandle {
    /// Readiness answers 503 (gRPC: `NOT_SERVING`) from now on. Idempotent.
    pub fn shut_down(&self) {
        if !self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            tracing::info!("health: shutting down, readiness is not-serving");
            self.inner.listeners.emit(|| HealthEvent::ShutdownStarted);
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }

    /// [`shut_down`](ShutdownHandle::shut_down), then waits `grace`: long
    /// enough for the load balancers to probe again and stop sending. Give
    /// it to the server's graceful shutdown, after the signal that starts
    /// it.
    pub async fn shut_down_and_wait(&self, grace: Duration) {
        self.shut_down();
        tokio::time::sleep(grace).await;
    }

    /// `true` once shutdown started.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }
}

/// Opens the manual startup gate of a registry built with
/// [`HealthRegistryBuilder::manual_startup`]: the app calls
/// [`done`](StartupHandle::done) once its own startup work is over.
///
/// ```
/// use buttress_health::{Check, HealthRegistry, Status};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let registry = HealthRegistry::builder()
///     .check(Check::new("db", || async { Status::Healthy }))
///     .manual_startup()
///     .build()
///     .unwrap();
/// let startup = registry.startup_handle();
/// assert_eq!(registry.startup().await.http_status(), 503); // db passed, the gate is closed
/// startup.done();
/// assert!(startup.is_started());
/// assert_eq!(registry.startup().await.http_status(), 200);
/// # });
/// ```
#[derive(Clone)]
pub struct StartupHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for StartupHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartupHandle")
            .field("done", &self.inner.gate_open.load(Ordering::Acquire))
            .field("started", &self.is_started())
            .finish()
    }
}

impl StartupHandle {
    /// Opens the gate: startup completes now if every startup check has
    /// passed once, else when the last of them does. Idempotent; without
    /// [`manual_startup`](HealthRegistryBuilder::manual_startup) it does
    /// nothing (the gate is open).
    pub fn done(&self) {
        self.inner.gate_open.store(true, Ordering::Release);
        maybe_start(&self.inner);
    }

    /// `true` once startup completed.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }
}

/// The checks that gate startup, in dependency order: those marked
/// startup, or every critical check when none is marked.
fn startup_slots(g: &Graph) -> Vec<Arc<Slot>> {
    let marked = g.slots.iter().any(|s| s.settings.startup);
    g.order
        .iter()
        .map(|&i| g.slots[i].clone())
        .filter(|s| {
            if marked {
                s.settings.startup
            } else {
                s.settings.critical
            }
        })
        .collect()
}

/// The startup report once started: ok, no checks run or listed.
fn started_report() -> HealthReport {
    HealthReport {
        probe: Probe::Startup,
        status: Status::Healthy,
        shutting_down: false,
        started: true,
        checks: Vec::new(),
        summary: Summary::default(),
    }
}

/// Completes startup if the gate is open and every startup check has
/// passed once: once, with an event, an `info` trace and the metric.
fn maybe_start(inner: &Inner) {
    if inner.started.load(Ordering::Acquire) || !inner.gate_open.load(Ordering::Acquire) {
        return;
    }
    let all_passed = startup_slots(&inner.read())
        .iter()
        .all(|s| s.passed.load(Ordering::Acquire));
    if !all_passed || inner.started.swap(true, Ordering::AcqRel) {
        return;
    }
    let after = inner.created.elapsed();
    tracing::info!(after = ?after, "health: startup complete");
    #[cfg(feature = "metrics")]
    if let Some(g) = &inner.started_gauge {
        g.set(1.0);
    }
    inner.listeners.emit(|| HealthEvent::Started { after });
}

/// Ends a run that is dropped before it stores its result (its task was
/// aborted, the runtime shut down): the check is not left "running" for
/// ever, and the probes waiting for it wake up.
struct RunGuard<'a>(&'a Slot);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        let was_running = std::mem::replace(&mut self.0.lock().running, false);
        if was_running {
            self.0.done.send_modify(|n| *n += 1);
        }
    }
}

/// Aborts the check's task when the run waiting for it is dropped.
struct AbortOnDrop(JoinHandle<CheckResult>);

impl Future for AbortOnDrop {
    type Output = Result<CheckResult, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts, in dependency order, a run of each of `slots` whose result is
/// stale or missing and that is not running; returns those that never ran.
fn start_stale(inner: &Arc<Inner>, slots: &[Arc<Slot>]) -> Vec<Arc<Slot>> {
    let mut first_runs = Vec::new();
    for slot in slots {
        let (start, never_ran) = {
            let mut st = slot.lock();
            let stale = st
                .last
                .as_ref()
                .is_none_or(|r| r.checked_at.elapsed() >= slot.settings.interval);
            let start = stale && !st.running;
            if start {
                st.running = true;
            }
            (start, st.last.is_none())
        };
        if start {
            // In dependency order, so a dependency's run is in progress
            // before its dependents look for it.
            tokio::spawn(run(inner.clone(), slot.clone()));
        }
        if never_ran {
            first_runs.push(slot.clone());
        }
    }
    first_runs
}

async fn run(inner: Arc<Inner>, slot: Arc<Slot>) {
    let guard = RunGuard(&slot);
    let deps: Vec<(String, Option<Arc<Slot>>)> = {
        let g = inner.read();
        slot.depends_on
            .iter()
            .map(|d| (d.clone(), g.by_name.get(d).map(|&i| g.slots[i].clone())))
            .collect()
    };
    let mut blocked = None;
    for (name, dep) in &deps {
        match dep {
            None => {
                blocked = Some((name.clone(), "is not registered"));
                break;
            }
            Some(dep) => {
                dep.idle().await;
                let status = dep.lock().last.as_ref().map(|r| r.status);
                match status {
                    Some(Status::Unhealthy) => {
                        blocked = Some((name.clone(), "is unhealthy"));
                        break;
                    }
                    None => {
                        blocked = Some((name.clone(), "has not been checked yet"));
                        break;
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let started = Instant::now();
    let (result, attempts, skipped) = match blocked {
        Some((dep, why)) => {
            tracing::debug!(buttress.name = %slot.name, dependency = %dep, "health check skipped: its dependency {why}");
            inner.listeners.emit(|| HealthEvent::Skipped {
                check: slot.name.clone(),
                dependency: dep.clone(),
            });
            let r = CheckResult::unhealthy(format!("dependency `{dep}` {why}"))
                .with_detail("dependency", dep);
            (r, 0, true)
        }
        None => {
            let (r, n) = attempt(&inner, &slot).await;
            (r, n, false)
        }
    };
    let duration = started.elapsed();
    store(&inner, &slot, result, duration, attempts, skipped);
    drop(guard);
}

/// Runs the check with its timeout and retries.
async fn attempt(inner: &Inner, slot: &Slot) -> (CheckResult, u32) {
    let s = slot.settings;
    let mut n = 0;
    loop {
        n += 1;
        let task = AbortOnDrop(tokio::spawn(slot.check.check()));
        let result = match tokio::time::timeout(s.timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_panic() => CheckResult::unhealthy("the check panicked"),
            Ok(Err(_)) => CheckResult::unhealthy("the check was cancelled"),
            Err(_) => {
                tracing::debug!(buttress.name = %slot.name, attempt = n, timeout = ?s.timeout, "health check timed out");
                inner.listeners.emit(|| HealthEvent::TimedOut {
                    check: slot.name.clone(),
                    attempt: n,
                    timeout: s.timeout,
                });
                CheckResult::unhealthy(format!(
                    "timed out after {}",
                    humantime::format_duration(s.timeout)
                ))
            }
        };
        if result.status() != Status::Unhealthy || n > s.retries {
            return (result, n);
        }
        tracing::debug!(buttress.name = %slot.name, attempt = n, "health check unhealthy, retrying");
        inner.listeners.emit(|| HealthEvent::Retrying {
            check: slot.name.clone(),
            attempt: n,
        });
        tokio::time::sleep(s.retry_delay).await;
    }
}

fn store(
    inner: &Inner,
    slot: &Slot,
    result: CheckResult,
    duration: Duration,
    attempts: u32,
    skipped: bool,
) {
    let (status, message, details) = result.into_parts();
    let now = Instant::now();
    let wall = SystemTime::now();
    let previous = {
        let mut st = slot.lock();
        let previous = st
            .last
            .as_ref()
            .map(|r| (r.status, r.changed_at, r.changed_at_wall));
        let (changed_at, changed_at_wall) = match previous {
            Some((s, at, at_wall)) if s == status => (at, at_wall),
            _ => (now, wall),
        };
        st.last = Some(Arc::new(Run {
            status,
            message,
            details,
            duration,
            attempts,
            skipped,
            checked_at: now,
            checked_at_wall: wall,
            changed_at,
            changed_at_wall,
        }));
        st.running = false;
        let previous = previous.map(|p| p.0);
        // The change is counted before the lock is let go: a probe that
        // sees this run finished (it reads `running` under this lock) can
        // never be followed by a late notification of the change it
        // already returned (a subscriber taken after that probe would
        // otherwise see it as a new change).
        if previous != Some(status) {
            inner.changed.send_modify(|n| *n += 1);
        }
        previous
    };
    #[cfg(feature = "metrics")]
    if let Some(m) = &slot.metrics {
        m.record(status, duration);
    }
    // Before the waiting probes wake: a startup probe that waited for this
    // run sees it passed.
    let first_pass = status != Status::Unhealthy && !slot.passed.swap(true, Ordering::AcqRel);
    slot.done.send_modify(|n| *n += 1);
    if previous != Some(status) {
        tracing::info!(buttress.name = %slot.name, from = previous.map_or("none", Status::as_str), to = status.as_str(), "health check status changed");
        inner.listeners.emit(|| HealthEvent::StatusChanged {
            check: slot.name.clone(),
            from: previous,
            to: status,
        });
    }
    // After the status change, so that listeners see a check's result
    // before the startup it completes.
    if first_pass {
        maybe_start(inner);
    }
}
