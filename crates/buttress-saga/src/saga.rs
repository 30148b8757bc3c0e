//! The saga: its steps, its builder, the service that runs it, recovery and
//! the handle.

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::{BoxError, Component, ConfigError, Elapsed, Listener, Listeners, Registry};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tower::util::{BoxCloneSyncService, ServiceExt};
use tower_service::Service;

use crate::error::{Cause, Compensation, CompensationOutcome, LogError, SagaError};
use crate::log::{Message, NewSaga, SagaLog};
use crate::state::{Entry, Kind, Phase, SagaState};

/// What a step's action or compensation receives.
#[derive(Debug, Clone)]
pub struct StepRequest<C> {
    /// The saga's context: for an action, as the previous steps left it;
    /// for a compensation, as the last completed action left it.
    pub context: C,
    /// `"<saga id>:<step>:<action|compensation>"`: the same on every try
    /// and after a crash, so the receiving service can de-duplicate.
    pub idempotency_key: String,
    /// The saga's id.
    pub saga_id: String,
    /// The step's name.
    pub step: &'static str,
    /// The try, from 1, within this process's run of the step.
    pub attempt: u32,
}

/// What an action returns: the new context, and outbox messages written in
/// the same transaction as the step's completion. Any `C` converts into one
/// without messages, so an action may return its context alone.
#[derive(Debug, Clone)]
pub struct StepOutput<C> {
    /// The context after the step.
    pub context: C,
    /// Messages for the outbox.
    pub messages: Vec<Message>,
}

impl<C> StepOutput<C> {
    /// The context, no messages.
    pub fn new(context: C) -> Self {
        Self {
            context,
            messages: Vec::new(),
        }
    }

    /// Adds an outbox message.
    pub fn message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }
}

impl<C> From<C> for StepOutput<C> {
    fn from(context: C) -> Self {
        Self::new(context)
    }
}

/// How often and how patiently a step's action (or the compensations) are
/// tried: `attempts` tries in all, waiting `initial`, then `initial *
/// multiplier`, ... capped at `max_delay` between them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    attempts: u32,
    initial: Duration,
    multiplier: f64,
    max_delay: Duration,
}

impl RetryPolicy {
    /// One try, no retry.
    pub fn never() -> Self {
        Self {
            attempts: 1,
            initial: Duration::ZERO,
            multiplier: 1.0,
            max_delay: Duration::ZERO,
        }
    }

    /// `attempts` tries with exponential backoff from `initial` by
    /// `multiplier` (seed 000: 3 tries, 1.5x), capped at 30 s.
    pub fn backoff(attempts: u32, initial: Duration, multiplier: f64) -> Self {
        Self {
            attempts,
            initial,
            multiplier,
            max_delay: Duration::from_secs(30),
        }
    }

    /// Caps the wait between tries.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// The number of tries.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait after try `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    pub(crate) fn check(&self, field: &'static str) -> Result<(), ConfigError> {
        if self.attempts == 0 {
            return Err(ConfigError::new("saga", field, "needs at least 1 attempt"));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(ConfigError::new(
                "saga",
                field,
                format!(
                    "multiplier must be finite and at least 1, got {}",
                    self.multiplier
                ),
            ));
        }
        Ok(())
    }
}

impl Default for RetryPolicy {
    /// Seed 000's policy: 3 tries, 100 ms then 1.5x.
    fn default() -> Self {
        Self::backoff(3, Duration::from_millis(100), 1.5)
    }
}

type StepService<C, R> = BoxCloneSyncService<StepRequest<C>, R, BoxError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Compensable,
    Pivot,
    Retriable,
}

/// One step: a name, an action, optionally a compensation, a timeout and a
/// retry policy. Action and compensation are tower services, so any layer
/// (a circuit breaker, a rate limiter) can wrap them.
///
/// ```
/// use buttress_saga::{Step, StepRequest};
/// use tower::service_fn;
///
/// let step = Step::new("reserve", service_fn(|r: StepRequest<u32>| async move {
///     Ok::<_, std::io::Error>(r.context + 1)
/// }))
/// .compensate(service_fn(|_r: StepRequest<u32>| async move { Ok::<_, std::io::Error>(()) }))
/// .timeout(std::time::Duration::from_secs(2));
/// assert_eq!(step.name(), "reserve");
/// ```
pub struct Step<C> {
    name: &'static str,
    action: StepService<C, StepOutput<C>>,
    compensation: Option<StepService<C, ()>>,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
}

impl<C> fmt::Debug for Step<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensable", &self.compensation.is_some())
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl<C: Send + 'static> Step<C> {
    /// A step named `name` running `action`, which returns the new context
    /// (or a [`StepOutput`] with outbox messages).
    pub fn new<S, R>(name: &'static str, action: S) -> Self
    where
        S: Service<StepRequest<C>, Response = R> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        R: Into<StepOutput<C>> + 'static,
    {
        Self {
            name,
            action: BoxCloneSyncService::new(action.map_response(Into::into).map_err(Into::into)),
            compensation: None,
            timeout: None,
            retry: None,
        }
    }

    /// The compensation that undoes the action (required for steps before
    /// the pivot).
    pub fn compensate<S, R>(mut self, compensation: S) -> Self
    where
        S: Service<StepRequest<C>, Response = R> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        R: 'static,
    {
        self.compensation = Some(BoxCloneSyncService::new(
            compensation.map_response(|_| ()).map_err(Into::into),
        ));
        self
    }

    /// A timeout for each try of the action.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The action's retry policy (default: the saga's).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The step's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

struct StepDef<C> {
    name: &'static str,
    role: Role,
    action: StepService<C, StepOutput<C>>,
    compensation: Option<StepService<C, ()>>,
    timeout: Option<Duration>,
    retry: RetryPolicy,
}

/// What a compensation that fails past its retry limit does to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCompensationFailure {
    /// Run the remaining compensations anyway (default).
    #[default]
    Continue,
    /// Stop there; the rest wait for a manual resume.
    Stop,
}

/// What recovery does with a saga that a crash interrupted going forward,
/// before its pivot. (After the pivot it always goes forward.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCrash {
    /// Compensate what was done, and the step in doubt (default: the
    /// caller has long given up on the answer).
    #[default]
    Compensate,
    /// Run the step in doubt again and carry on.
    Resume,
}

/// An event of a saga, for `.on_event` listeners.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SagaEvent {
    /// A saga started.
    Started {
        /// Its id.
        saga_id: String,
    },
    /// An action or compensation succeeded.
    StepSucceeded {
        /// The saga.
        saga_id: String,
        /// The step.
        step: &'static str,
        /// Action or compensation.
        kind: Kind,
        /// Tries it took.
        attempts: u32,
        /// Time from the first try to the success.
        duration: Duration,
    },
    /// An action or compensation failed on every try.
    StepFailed {
        /// The saga.
        saga_id: String,
        /// The step.
        step: &'static str,
        /// Action or compensation.
        kind: Kind,
        /// Tries it took.
        attempts: u32,
        /// Time from the first try to the last failure.
        duration: Duration,
    },
    /// Every action succeeded.
    Completed {
        /// The saga.
        saga_id: String,
    },
    /// The saga failed and every needed compensation succeeded.
    Compensated {
        /// The saga.
        saga_id: String,
    },
    /// A compensation failed past its limit: the saga is parked.
    NeedsAttention {
        /// The saga.
        saga_id: String,
    },
}

/// Builds a [`Saga`]. See the [crate docs](crate) for an example.
pub struct SagaBuilder<C> {
    name: &'static str,
    version: u32,
    steps: Vec<(Step<C>, Role)>,
    log: Option<Arc<dyn SagaLog>>,
    retry: RetryPolicy,
    compensation_retry: RetryPolicy,
    on_compensation_failure: OnCompensationFailure,
    parallel_compensation: bool,
    on_crash: OnCrash,
    deadline: Option<Duration>,
    lease: Duration,
    registry: Option<Registry>,
    listeners: Listeners<SagaEvent>,
    #[cfg(feature = "metrics")]
    metrics: bool,
}

impl<C> fmt::Debug for SagaBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.steps.len())
            .finish_non_exhaustive()
    }
}

impl<C> SagaBuilder<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Appends a step that is compensated when a later one fails.
    pub fn step(mut self, step: Step<C>) -> Self {
        self.steps.push((step, Role::Compensable));
        self
    }

    /// Appends the pivot: once it succeeds the saga can no longer fail; the
    /// steps after it are [`retriable`](Self::retriable) ones, retried to
    /// completion. A pivot has no compensation.
    pub fn pivot(mut self, step: Step<C>) -> Self {
        self.steps.push((step, Role::Pivot));
        self
    }

    /// Appends a step after the pivot: retried (with its policy's backoff,
    /// past its attempt count) until it succeeds, never compensated.
    pub fn retriable(mut self, step: Step<C>) -> Self {
        self.steps.push((step, Role::Retriable));
        self
    }

    /// The log (required): [`MemoryLog`](crate::MemoryLog),
    /// [`SqliteLog`](crate::sqlite::SqliteLog) or
    /// [`PostgresLog`](crate::postgres::PostgresLog).
    pub fn log(mut self, log: impl SagaLog) -> Self {
        self.log = Some(Arc::new(log));
        self
    }

    /// A shared log.
    pub fn log_arc(mut self, log: Arc<dyn SagaLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// The default retry policy of the actions (default
    /// [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The compensations' policy: after its tries a compensation counts as
    /// failed and the saga ends needing attention (default 5 tries, 100 ms
    /// then 2x).
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    /// Continue past a failed compensation (default) or stop at it.
    pub fn on_compensation_failure(mut self, what: OnCompensationFailure) -> Self {
        self.on_compensation_failure = what;
        self
    }

    /// Runs the compensations all at once rather than last step first
    /// (when the steps' undos do not depend on each other). Each is still
    /// logged as started before it runs and done after.
    pub fn parallel_compensation(mut self, parallel: bool) -> Self {
        self.parallel_compensation = parallel;
        self
    }

    /// What recovery does with a saga interrupted before its pivot.
    pub fn on_crash(mut self, what: OnCrash) -> Self {
        self.on_crash = what;
        self
    }

    /// A deadline for the actions before the pivot, from the saga's start
    /// (seed 000: 5 minutes): past it the saga is compensated.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// How long a claim on a saga lasts without a write (default 60 s):
    /// when the owner dies, another process may recover the saga this long
    /// after its last write. Make it longer than the longest step.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Registers the handle in `registry` under the saga's name.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Adds an event listener.
    pub fn on_event(mut self, listener: impl Listener<SagaEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Publishes the saga's events as metrics (see [`crate::metrics`]);
    /// a [`Registry::with_metrics`] registry does it too.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Checks the definition and builds the saga.
    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
    pub fn build(mut self) -> Result<Saga<C>, ConfigError> {
        #[cfg(feature = "metrics")]
        if buttress_core::bridge::should_attach(self.name, self.metrics, self.registry.as_ref()) {
            let steps: Vec<_> = self
                .steps
                .iter()
                .map(|(s, role)| (s.name, *role == Role::Compensable))
                .collect();
            self.listeners = self
                .listeners
                .with(crate::metrics::MetricsBridge::new(self.name, &steps));
        }
        let log = self
            .log
            .ok_or_else(|| ConfigError::new("saga", "log", "is required"))?;
        if self.steps.is_empty() {
            return Err(ConfigError::new("saga", "steps", "needs at least one step"));
        }
        self.retry.check("retry")?;
        self.compensation_retry.check("compensation_retry")?;
        if self.lease.is_zero() {
            return Err(ConfigError::new(
                "saga",
                "lease",
                "must be longer than zero",
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "saga",
                "deadline",
                "must be longer than zero",
            ));
        }
        let mut names = BTreeSet::new();
        let mut pivot = None;
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, (step, role)) in self.steps.into_iter().enumerate() {
            if !names.insert(step.name) {
                return Err(ConfigError::new(
                    "saga",
                    "steps",
                    format!("step name `{}` is used twice", step.name),
                ));
            }
            if let Some(policy) = &step.retry {
                policy.check("steps.retry")?;
            }
            if step.timeout.is_some_and(|t| t.is_zero()) {
                return Err(ConfigError::new(
                    "saga",
                    "steps.timeout",
                    format!("step `{}`: must be longer than zero", step.name),
                ));
            }
            match role {
                Role::Compensable if pivot.is_some() => {
                    return Err(ConfigError::new(
                        "saga",
                        "steps",
                        format!("step `{}` after the pivot must be retriable", step.name),
                    ))
                }
                Role::Compensable if step.compensation.is_none() => {
                    return Err(ConfigError::new(
                        "saga",
                        "steps",
                        format!("step `{}` needs a compensation", step.name),
                    ))
                }
                Role::Pivot if pivot.is_some() => {
                    return Err(ConfigError::new("saga", "steps", "only one pivot"))
                }
                Role::Pivot => pivot = Some(i as u32),
                Role::Retriable if pivot.is_none() => {
                    return Err(ConfigError::new(
                        "saga",
                        "steps",
                        format!("retriable step `{}` must follow the pivot", step.name),
                    ))
                }
                _ => {}
            }
            steps.push(StepDef {
                name: step.name,
                role,
                retry: step.retry.unwrap_or(self.retry),
                action: step.action,
                compensation: step.compensation,
                timeout: step.timeout,
            });
        }
        let inner = Arc::new(Inner {
            name: self.name,
            version: self.version,
            steps,
            pivot,
            log,
            compensation_retry: self.compensation_retry,
            on_compensation_failure: self.on_compensation_failure,
            parallel_compensation: self.parallel_compensation,
            on_crash: self.on_crash,
            deadline: self.deadline,
            lease: self.lease,
            owner: new_id("owner"),
            listeners: self.listeners,
            stats: Stats::default(),
            _c: PhantomData,
        });
        let saga = Saga { inner };
        if let Some(registry) = &self.registry {
            registry
                .register(saga.handle())
                .map_err(|e| ConfigError::new("saga", "name", e.to_string()))?;
        }
        Ok(saga)
    }
}

#[derive(Debug, Default)]
struct Stats {
    started: AtomicU64,
    completed: AtomicU64,
    compensated: AtomicU64,
    needs_attention: AtomicU64,
    parked: Mutex<BTreeSet<String>>,
}

struct Inner<C> {
    name: &'static str,
    version: u32,
    steps: Vec<StepDef<C>>,
    pivot: Option<u32>,
    log: Arc<dyn SagaLog>,
    compensation_retry: RetryPolicy,
    on_compensation_failure: OnCompensationFailure,
    parallel_compensation: bool,
    on_crash: OnCrash,
    deadline: Option<Duration>,
    lease: Duration,
    owner: String,
    listeners: Listeners<SagaEvent>,
    stats: Stats,
    _c: PhantomData<fn() -> C>,
}

/// A saga definition, runnable as a tower `Service<C>`: each call starts a
/// new saga with the input context and resolves to the final context, or a
/// [`SagaError`]. Clones share the definition.
pub struct Saga<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Saga<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> fmt::Debug for Saga<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .field("steps", &self.inner.steps.len())
            .finish_non_exhaustive()
    }
}

/// The future a [`Saga`] call returns.
pub type SagaFuture<C> = Pin<Box<dyn Future<Output = Result<C, SagaError>> + Send>>;

/// What [`Saga::recover`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecoveryReport {
    /// Sagas finished forward.
    pub completed: Vec<String>,
    /// Sagas compensated.
    pub compensated: Vec<String>,
    /// Sagas parked as needing attention.
    pub needs_attention: Vec<String>,
    /// Sagas logged by another version of the definition: left alone.
    pub unknown_version: Vec<(String, u32)>,
    /// Sagas whose log could not be read or continued, with the error.
    pub failed: Vec<(String, String)>,
}

pub(crate) fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let a = RandomState::new().hash_one((n, std::process::id()));
    let b = RandomState::new().hash_one((crate::log::now_ms(), n));
    format!("{prefix}-{a:016x}{b:016x}")
}

impl<C> Saga<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A builder for the definition `name`, version `version`: recovery
    /// only continues sagas logged by the same name and version.
    pub fn builder(name: &'static str, version: u32) -> SagaBuilder<C> {
        SagaBuilder {
            name,
            version,
            steps: Vec::new(),
            log: None,
            retry: RetryPolicy::default(),
            compensation_retry: RetryPolicy::backoff(5, Duration::from_millis(100), 2.0),
            on_compensation_failure: OnCompensationFailure::default(),
            parallel_compensation: false,
            on_crash: OnCrash::default(),
            deadline: None,
            lease: Duration::from_secs(60),
            registry: None,
            listeners: Listeners::new(),
            #[cfg(feature = "metrics")]
            metrics: false,
        }
    }

    /// The handle: counters, sagas needing attention, manual resume.
    pub fn handle(&self) -> SagaHandle<C> {
        SagaHandle { saga: self.clone() }
    }

    /// Runs a new saga with a chosen id (unique in the log).
    pub fn run_with_id(&self, id: impl Into<String>, input: C) -> SagaFuture<C> {
        let inner = self.inner.clone();
        let id = id.into();
        Box::pin(async move { inner.run_new(id, input).await })
    }

    /// Finds this definition's sagas left unfinished by a dead process
    /// (their lease expired) and finishes them, forward or backward as the
    /// log and the definition say. Call it on start, and from time to time.
    pub async fn recover(&self) -> Result<RecoveryReport, LogError> {
        let inner = &self.inner;
        let mut report = RecoveryReport::default();
        let mut seen = BTreeSet::new();
        loop {
            let ids = inner
                .log
                .claim(inner.name, &inner.owner, inner.lease, 16)
                .await?;
            if ids.iter().all(|id| seen.contains(id)) {
                for id in &ids {
                    inner.log.release(id, &inner.owner).await?;
                }
                return Ok(report);
            }
            for id in ids {
                if !seen.insert(id.clone()) {
                    inner.log.release(&id, &inner.owner).await?;
                    continue;
                }
                inner.recover_one(&id, &mut report).await;
            }
        }
    }
}

impl<C> Inner<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn compensable(&self, step: u32) -> bool {
        self.steps
            .get(step as usize)
            .is_some_and(|s| s.role == Role::Compensable)
    }

    fn pivot_done(&self, st: &SagaState) -> bool {
        self.pivot.is_some_and(|p| st.actions_done > p)
    }

    /// Checks that a replayed log fits this definition (no step beyond its
    /// last), since a log written under the same name and version by other
    /// code could say anything.
    fn fits(&self, st: &SagaState) -> Result<(), LogError> {
        let steps = self.steps.len();
        let beyond = st.actions_done as usize > steps
            || st.action_in_doubt.is_some_and(|s| s as usize >= steps)
            || st
                .compensation_in_doubt
                .iter()
                .any(|s| *s as usize >= steps);
        if beyond {
            return Err(LogError::Corrupt {
                saga: st.id.clone(),
                seq: None,
                reason: format!("the log names steps beyond this definition's {steps}"),
            });
        }
        Ok(())
    }

    fn key(id: &str, step: &str, kind: Kind) -> String {
        format!("{id}:{step}:{kind}")
    }

    async fn run_new(self: Arc<Self>, id: String, input: C) -> Result<C, SagaError> {
        let fail = |cause| SagaError {
            saga_id: id.clone(),
            step: None,
            cause,
            compensations: Vec::new(),
            phase: None,
        };
        let json = serde_json::to_value(&input).map_err(|e| fail(Cause::Context(e)))?;
        let new = NewSaga {
            id: id.clone(),
            name: self.name.to_owned(),
            version: self.version,
            input: json.clone(),
            deadline_ms: self
                .deadline
                .map(|d| crate::log::now_ms().saturating_add(crate::log::lease_ms(d))),
        };
        self.log
            .create(&new, &self.owner, self.lease)
            .await
            .map_err(|e| fail(Cause::Log(e)))?;
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        self.listeners.emit(|| SagaEvent::Started {
            saga_id: id.clone(),
        });
        tracing::debug!(saga = %id, name = self.name, "saga started");
        let deadline = self.deadline.map(|d| Instant::now() + d);
        let st = SagaState::new(id.clone(), json);
        self.drive(st, input, deadline, false).await
    }

    async fn recover_one(&self, id: &str, report: &mut RecoveryReport) {
        let stored = match self.log.load(id).await {
            Ok(s) => s,
            Err(e) => {
                report.failed.push((id.to_owned(), e.to_string()));
                let _ = self.log.release(id, &self.owner).await;
                return;
            }
        };
        if stored.version != self.version {
            tracing::warn!(saga = %id, version = stored.version, "saga logged by an unknown version: left alone");
            report.unknown_version.push((id.to_owned(), stored.version));
            let _ = self.log.release(id, &self.owner).await;
            return;
        }
        let st = match SagaState::replay(id, stored.input, stored.entries) {
            Ok(st) => st,
            Err(e) => {
                report.failed.push((id.to_owned(), e.to_string()));
                let _ = self.log.release(id, &self.owner).await;
                return;
            }
        };
        if let Err(e) = self.fits(&st) {
            report.failed.push((id.to_owned(), e.to_string()));
            let _ = self.log.release(id, &self.owner).await;
            return;
        }
        let ctx: C = match serde_json::from_value(st.context.clone()) {
            Ok(c) => c,
            Err(e) => {
                report.failed.push((id.to_owned(), format!("context: {e}")));
                let _ = self.log.release(id, &self.owner).await;
                return;
            }
        };
        tracing::info!(saga = %id, phase = %st.phase, "recovering saga");
        let deadline = stored.deadline_ms.map(|at| {
            let left = u64::try_from(at.saturating_sub(crate::log::now_ms())).unwrap_or(0);
            Instant::now() + Duration::from_millis(left)
        });
        match self.drive(st, ctx, deadline, true).await {
            Ok(_) => report.completed.push(id.to_owned()),
            Err(e) if e.is_compensated() => report.compensated.push(id.to_owned()),
            Err(e) if e.needs_attention() => report.needs_attention.push(id.to_owned()),
            Err(e) => report.failed.push((id.to_owned(), e.to_string())),
        }
    }

    /// Runs `step` while renewing the saga's lease every third of it, so
    /// a step longer than the lease does not let another process claim the
    /// saga meanwhile.
    async fn with_heartbeat<F: Future>(&self, id: &str, step: F) -> F::Output {
        let period = self.lease / 3;
        let beat = async {
            loop {
                tokio::time::sleep(period).await;
                match self.log.renew(id, &self.owner, self.lease).await {
                    Ok(()) => {}
                    Err(LogError::LeaseLost { .. }) => break,
                    Err(e) => {
                        tracing::warn!(saga = %id, error = %e, "could not renew the saga's lease")
                    }
                }
            }
            tracing::error!(saga = %id, "lease lost while a step runs: another process owns the saga");
        };
        let mut step = std::pin::pin!(step);
        let mut beat = std::pin::pin!(beat);
        let mut beating = true;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = step.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if beating && beat.as_mut().poll(cx).is_ready() {
                // The next write reports the lost lease.
                beating = false;
            }
            Poll::Pending
        })
        .await
    }

    async fn append(
        &self,
        st: &mut SagaState,
        entry: Entry,
        messages: &[Message],
    ) -> Result<(), LogError> {
        st.apply(&entry)?;
        self.log
            .append(&st.id, &self.owner, st.next_seq - 1, &entry, messages)
            .await
    }

    /// Runs the saga from `st` to a final or parked phase.
    async fn drive(
        &self,
        mut st: SagaState,
        mut ctx: C,
        deadline: Option<Instant>,
        recovered: bool,
    ) -> Result<C, SagaError> {
        let id = st.id.clone();
        let mut failed_step = st
            .action_failed
            .as_ref()
            .and_then(|(s, _)| self.steps.get(*s as usize))
            .map(|s| s.name);
        let mut cause = if recovered {
            Cause::Recovered
        } else {
            Cause::DeadlineExceeded
        };
        let log_err = |e: LogError, step| SagaError {
            saga_id: id.clone(),
            step,
            cause: Cause::Log(e),
            compensations: Vec::new(),
            phase: None,
        };
        if st.phase == Phase::Forward {
            // A pivot in doubt may have run: it is tried again, not undone.
            let pivot_in_doubt = self.pivot.is_some() && st.action_in_doubt == self.pivot;
            // A step that failed for good before the crash is not tried
            // again, whatever the policy.
            let go_back = recovered
                && (self.on_crash == OnCrash::Compensate || st.action_failed.is_some())
                && !self.pivot_done(&st)
                && !pivot_in_doubt;
            if go_back {
                let reason = Some("interrupted by a crash".to_owned());
                let entry = Entry::Phase {
                    phase: Phase::Compensating,
                    reason,
                };
                self.append(&mut st, entry, &[])
                    .await
                    .map_err(|e| log_err(e, None))?;
            }
            while st.phase == Phase::Forward {
                let i = st.actions_done;
                let Some(step) = self.steps.get(i as usize) else {
                    let entry = Entry::Phase {
                        phase: Phase::Completed,
                        reason: None,
                    };
                    self.append(&mut st, entry, &[])
                        .await
                        .map_err(|e| log_err(e, None))?;
                    self.stats.completed.fetch_add(1, Ordering::Relaxed);
                    self.listeners.emit(|| SagaEvent::Completed {
                        saga_id: id.clone(),
                    });
                    tracing::debug!(saga = %id, name = self.name, "saga completed");
                    return Ok(ctx);
                };
                let to_completion = self.pivot.is_some_and(|p| i > p);
                let deadline = if to_completion { None } else { deadline };
                if st.action_in_doubt != Some(i) {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        failed_step = Some(step.name);
                        cause = Cause::DeadlineExceeded;
                        let entry = Entry::Phase {
                            phase: Phase::Compensating,
                            reason: Some("deadline exceeded".into()),
                        };
                        self.append(&mut st, entry, &[])
                            .await
                            .map_err(|e| log_err(e, Some(step.name)))?;
                        break;
                    }
                    let entry = Entry::Started {
                        step: i,
                        kind: Kind::Action,
                    };
                    self.append(&mut st, entry, &[])
                        .await
                        .map_err(|e| log_err(e, Some(step.name)))?;
                }
                let run = self.run_action(&id, step, &ctx, deadline, to_completion);
                match self.with_heartbeat(&id, run).await {
                    Ok(out) => {
                        let json = serde_json::to_value(&out.context).map_err(|e| SagaError {
                            saga_id: id.clone(),
                            step: Some(step.name),
                            cause: Cause::Context(e),
                            compensations: Vec::new(),
                            phase: None,
                        })?;
                        let entry = Entry::Done {
                            step: i,
                            kind: Kind::Action,
                            context: Some(json),
                        };
                        self.append(&mut st, entry, &out.messages)
                            .await
                            .map_err(|e| log_err(e, Some(step.name)))?;
                        ctx = out.context;
                    }
                    Err(e) => {
                        failed_step = Some(step.name);
                        let text = e.to_string();
                        cause = match e {
                            ActionError::Failed(e) => Cause::Step(e),
                            ActionError::Deadline => Cause::DeadlineExceeded,
                        };
                        let entry = Entry::Failed {
                            step: i,
                            kind: Kind::Action,
                            error: text.clone(),
                        };
                        self.append(&mut st, entry, &[])
                            .await
                            .map_err(|e| log_err(e, Some(step.name)))?;
                        let entry = Entry::Phase {
                            phase: Phase::Compensating,
                            reason: Some(format!("step `{}` failed: {text}", step.name)),
                        };
                        self.append(&mut st, entry, &[])
                            .await
                            .map_err(|e| log_err(e, Some(step.name)))?;
                    }
                }
            }
        }
        if st.phase == Phase::NeedsAttention {
            let entry = Entry::Phase {
                phase: Phase::Compensating,
                reason: Some("resumed by hand".into()),
            };
            self.append(&mut st, entry, &[])
                .await
                .map_err(|e| log_err(e, failed_step))?;
        }
        if st.phase != Phase::Compensating {
            // Completed or compensated already (a resume of a finished saga).
            let phase = st.phase;
            return match phase {
                Phase::Completed => Ok(ctx),
                _ => Err(SagaError {
                    saga_id: id.clone(),
                    step: failed_step,
                    cause,
                    compensations: Vec::new(),
                    phase: Some(phase),
                }),
            };
        }
        let mut compensations = Vec::new();
        let mut stopped = false;
        let pending = st.to_compensate(|s| self.compensable(s));
        // In parallel, one batch of all; else one step at a time.
        let batches: Vec<&[u32]> = if self.parallel_compensation {
            vec![&pending[..]]
        } else {
            pending.chunks(1).collect()
        };
        for batch in batches {
            if stopped {
                compensations.extend(batch.iter().map(|i| Compensation {
                    step: self.steps[*i as usize].name,
                    outcome: CompensationOutcome::NotRun,
                }));
                continue;
            }
            for &i in batch {
                if !st.compensation_in_doubt.contains(&i) {
                    let entry = Entry::Started {
                        step: i,
                        kind: Kind::Compensation,
                    };
                    self.append(&mut st, entry, &[])
                        .await
                        .map_err(|e| log_err(e, failed_step))?;
                }
            }
            let runs = batch
                .iter()
                .map(|&i| self.run_compensation(&id, &self.steps[i as usize], &ctx))
                .collect();
            let results = self.with_heartbeat(&id, join_all(runs)).await;
            for (&i, (result, attempts)) in batch.iter().zip(results) {
                let entry = match &result {
                    Ok(()) => Entry::Done {
                        step: i,
                        kind: Kind::Compensation,
                        context: None,
                    },
                    Err(e) => Entry::Failed {
                        step: i,
                        kind: Kind::Compensation,
                        error: e.to_string(),
                    },
                };
                self.append(&mut st, entry, &[])
                    .await
                    .map_err(|e| log_err(e, failed_step))?;
                let outcome = match result {
                    Ok(()) => CompensationOutcome::Compensated { attempts },
                    Err(e) => {
                        stopped = self.on_compensation_failure == OnCompensationFailure::Stop;
                        CompensationOutcome::Failed {
                            attempts,
                            error: e.to_string(),
                        }
                    }
                };
                compensations.push(Compensation {
                    step: self.steps[i as usize].name,
                    outcome,
                });
            }
        }
        let phase = if st.compensation_failed.is_empty() && !stopped {
            Phase::Compensated
        } else {
            Phase::NeedsAttention
        };
        let entry = Entry::Phase {
            phase,
            reason: None,
        };
        self.append(&mut st, entry, &[])
            .await
            .map_err(|e| log_err(e, failed_step))?;
        let mut parked = self.stats.parked.lock().unwrap_or_else(|e| e.into_inner());
        if phase == Phase::Compensated {
            parked.remove(&id);
            drop(parked);
            self.stats.compensated.fetch_add(1, Ordering::Relaxed);
            self.listeners.emit(|| SagaEvent::Compensated {
                saga_id: id.clone(),
            });
            tracing::info!(saga = %id, name = self.name, "saga compensated");
        } else {
            parked.insert(id.clone());
            drop(parked);
            self.stats.needs_attention.fetch_add(1, Ordering::Relaxed);
            self.listeners.emit(|| SagaEvent::NeedsAttention {
                saga_id: id.clone(),
            });
            tracing::error!(saga = %id, name = self.name, "saga needs attention: a compensation failed");
        }
        Err(SagaError {
            saga_id: id,
            step: failed_step,
            cause,
            compensations,
            phase: Some(phase),
        })
    }

    async fn run_action(
        &self,
        id: &str,
        step: &StepDef<C>,
        ctx: &C,
        deadline: Option<Instant>,
        to_completion: bool,
    ) -> Result<StepOutput<C>, ActionError> {
        let key = Self::key(id, step.name, Kind::Action);
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let request = StepRequest {
                context: ctx.clone(),
                idempotency_key: key.clone(),
                saga_id: id.to_owned(),
                step: step.name,
                attempt,
            };
            let call = step.action.clone().oneshot(request);
            let limit = match (step.timeout.map(|t| Instant::now() + t), deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let result = match limit {
                Some(at) => match tokio::time::timeout_at(at, call).await {
                    Ok(r) => r,
                    Err(_) => Err(Box::new(Elapsed::new(
                        step.name.into(),
                        step.timeout.unwrap_or_default(),
                    )) as BoxError),
                },
                None => call.await,
            };
            let error = match result {
                Ok(out) => {
                    self.listeners.emit(|| SagaEvent::StepSucceeded {
                        saga_id: id.to_owned(),
                        step: step.name,
                        kind: Kind::Action,
                        attempts: attempt,
                        duration: start.elapsed(),
                    });
                    return Ok(out);
                }
                Err(e) => e,
            };
            tracing::debug!(saga = %id, step = step.name, attempt, error = %error, "saga action failed");
            let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
            if past_deadline || (!to_completion && attempt >= step.retry.attempts) {
                self.listeners.emit(|| SagaEvent::StepFailed {
                    saga_id: id.to_owned(),
                    step: step.name,
                    kind: Kind::Action,
                    attempts: attempt,
                    duration: start.elapsed(),
                });
                return Err(if past_deadline {
                    ActionError::Deadline
                } else {
                    ActionError::Failed(error)
                });
            }
            let wake = Instant::now() + step.retry.delay(attempt);
            match deadline {
                Some(d) if d <= wake => {
                    // No time left for another try.
                    tokio::time::sleep_until(d).await;
                    self.listeners.emit(|| SagaEvent::StepFailed {
                        saga_id: id.to_owned(),
                        step: step.name,
                        kind: Kind::Action,
                        attempts: attempt,
                        duration: start.elapsed(),
                    });
                    return Err(ActionError::Deadline);
                }
                _ => tokio::time::sleep_until(wake).await,
            }
        }
    }

    async fn run_compensation(
        &self,
        id: &str,
        step: &StepDef<C>,
        ctx: &C,
    ) -> (Result<(), BoxError>, u32) {
        let Some(service) = &step.compensation else {
            return (Ok(()), 0);
        };
        let key = Self::key(id, step.name, Kind::Compensation);
        let policy = self.compensation_retry;
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = StepRequest {
                context: ctx.clone(),
                idempotency_key: key.clone(),
                saga_id: id.to_owned(),
                step: step.name,
                attempt,
            };
            match service.clone().oneshot(request).await {
                Ok(()) => {
                    self.listeners.emit(|| SagaEvent::StepSucceeded {
                        saga_id: id.to_owned(),
                        step: step.name,
                        kind: Kind::Compensation,
                        attempts: attempt,
                        duration: start.elapsed(),
                    });
                    return (Ok(()), attempt);
                }
                Err(e) if attempt >= policy.attempts => {
                    self.listeners.emit(|| SagaEvent::StepFailed {
                        saga_id: id.to_owned(),
                        step: step.name,
                        kind: Kind::Compensation,
                        attempts: attempt,
                        duration: start.elapsed(),
                    });
                    return (Err(e), attempt);
                }
                Err(e) => {
                    tracing::warn!(saga = %id, step = step.name, attempt, error = %e, "compensation failed; retrying");
                    tokio::time::sleep(policy.delay(attempt)).await;
                }
            }
        }
    }
}

/// Polls every future to completion, together; outputs in input order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(o) => *output = Some(o),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

enum ActionError {
    Failed(BoxError),
    Deadline,
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionError::Failed(e) => write!(f, "{e}"),
            ActionError::Deadline => f.write_str("saga deadline exceeded"),
        }
    }
}

impl<C> Service<C> for Saga<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Response = C;
    type Error = SagaError;
    type Future = SagaFuture<C>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, input: C) -> Self::Future {
        self.run_with_id(new_id(self.inner.name), input)
    }
}

/// The handle of a saga definition: counters, the sagas needing attention,
/// and manual resume. Registered in a [`Registry`] as kind `"saga"`.
pub struct SagaHandle<C> {
    saga: Saga<C>,
}

impl<C> Clone for SagaHandle<C> {
    fn clone(&self) -> Self {
        Self {
            saga: self.saga.clone(),
        }
    }
}

impl<C> fmt::Debug for SagaHandle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaHandle")
            .field("name", &self.saga.inner.name)
            .finish_non_exhaustive()
    }
}

impl<C> SagaHandle<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Sagas started by this process.
    pub fn started(&self) -> u64 {
        self.saga.inner.stats.started.load(Ordering::Relaxed)
    }

    /// Sagas this process completed (run or recovered).
    pub fn completed(&self) -> u64 {
        self.saga.inner.stats.completed.load(Ordering::Relaxed)
    }

    /// Sagas this process compensated (run, recovered or resumed).
    pub fn compensated(&self) -> u64 {
        self.saga.inner.stats.compensated.load(Ordering::Relaxed)
    }

    /// Times a saga of this process was parked as needing attention.
    pub fn needs_attention_total(&self) -> u64 {
        self.saga
            .inner
            .stats
            .needs_attention
            .load(Ordering::Relaxed)
    }

    /// The sagas this process parked as needing attention and did not
    /// resume since (what the registry snapshot shows).
    pub fn parked(&self) -> Vec<String> {
        let parked = self.saga.inner.stats.parked.lock();
        parked
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Every saga of this definition the log holds as needing attention,
    /// whichever process parked it.
    pub async fn needs_attention(&self) -> Result<Vec<String>, LogError> {
        let inner = &self.saga.inner;
        inner.log.list(inner.name, Phase::NeedsAttention).await
    }

    /// Resumes a parked saga by hand (after fixing what made its
    /// compensation fail): its remaining compensations run again.
    pub async fn resume(&self, id: &str) -> Result<C, SagaError> {
        let inner = &self.saga.inner;
        let fail = |e: LogError| SagaError {
            saga_id: id.to_owned(),
            step: None,
            cause: Cause::Log(e),
            compensations: Vec::new(),
            phase: None,
        };
        inner
            .log
            .take_over(id, &inner.owner, inner.lease)
            .await
            .map_err(fail)?;
        let stored = inner.log.load(id).await.map_err(fail)?;
        if stored.version != inner.version || stored.name != inner.name {
            let _ = inner.log.release(id, &inner.owner).await;
            return Err(fail(LogError::Corrupt {
                saga: id.to_owned(),
                seq: None,
                reason: format!(
                    "logged by definition {} v{}, this is {} v{}",
                    stored.name, stored.version, inner.name, inner.version
                ),
            }));
        }
        let st = SagaState::replay(id, stored.input, stored.entries).map_err(fail)?;
        inner.fits(&st).map_err(fail)?;
        let ctx: C = serde_json::from_value(st.context.clone()).map_err(|e| SagaError {
            saga_id: id.to_owned(),
            step: None,
            cause: Cause::Context(e),
            compensations: Vec::new(),
            phase: None,
        })?;
        inner.drive(st, ctx, None, true).await
    }

    /// The saga this is the handle of.
    pub fn saga(&self) -> &Saga<C> {
        &self.saga
    }
}

impl<C> Component for SagaHandle<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        self.saga.inner.name
    }

    fn kind(&self) -> &'static str {
        "saga"
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.saga.inner.version,
            "started": self.started(),
            "completed": self.completed(),
            "compensated": self.compensated(),
            "needs_attention_total": self.needs_attention_total(),
            "needs_attention": self.parked(),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
