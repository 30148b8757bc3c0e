//! The [`HealthCheck`] trait and [`Check`], a named check with its settings.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::ConfigError;

use crate::status::CheckResult;
use crate::KIND;

/// Default timeout of one attempt of a check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a result is served from cache before the check runs again.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default pause between two attempts of a check with retries.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);

pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
pub(crate) const MAX_RETRIES: u32 = 10;

/// The future a [`HealthCheck`] returns.
pub type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send + 'static>>;

/// An asynchronous health check.
///
/// Closures `Fn() -> impl Future<Output = R>` implement it, where `R` is a
/// [`CheckResult`], a [`Status`](crate::Status) or any `Result<T, E:
/// Display>` (`Ok` is healthy, `Err` unhealthy with its message). The
/// registry runs it under its timeout, in a task of its own: a check that
/// hangs is cut at its timeout, one that panics is reported unhealthy.
///
/// ```
/// use buttress_health::{CheckFuture, CheckResult, HealthCheck};
///
/// // A closure...
/// let ping = || async { Ok::<_, std::io::Error>(()) };
/// # fn is_check(_: &impl HealthCheck) {}
/// # is_check(&ping);
///
/// // ...or a type of your own.
/// struct DiskSpace;
/// impl HealthCheck for DiskSpace {
///     fn check(&self) -> CheckFuture {
///         Box::pin(async { CheckResult::healthy().with_detail("free_gb", 42) })
///     }
/// }
/// ```
pub trait HealthCheck: Send + Sync + 'static {
    /// Runs the check once.
    fn check(&self) -> CheckFuture;
}

impl<F, Fut, R> HealthCheck for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: Into<CheckResult> + 'static,
{
    fn check(&self) -> CheckFuture {
        let fut = self();
        Box::pin(async move { fut.await.into() })
    }
}

/// A named check and how to run it: timeout, retries, cache interval,
/// critical or not, dependencies, and whether liveness includes it.
///
/// Settings left unset here take the [`HealthConfig`](crate::HealthConfig)
/// defaults of the registry, then the crate defaults ([`DEFAULT_TIMEOUT`],
/// [`DEFAULT_INTERVAL`], no retries, critical); a setting of the config
/// for this check's name wins over all (operators tune, code proposes).
///
/// ```
/// use std::time::Duration;
/// use buttress_health::{Check, Status};
///
/// let db = Check::new("db", || async { Status::Healthy })
///     .timeout(Duration::from_millis(500))
///     .retries(2)
///     .interval(Duration::from_secs(10))
///     .depends_on("network");
/// assert_eq!(db.name(), "db");
/// ```
#[derive(Clone)]
pub struct Check {
    pub(crate) name: String,
    pub(crate) check: Arc<dyn HealthCheck>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) interval: Option<Duration>,
    pub(crate) retries: Option<u32>,
    pub(crate) retry_delay: Option<Duration>,
    pub(crate) critical: Option<bool>,
    pub(crate) depends_on: Vec<String>,
    pub(crate) liveness: bool,
    pub(crate) startup: Option<bool>,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .field("critical", &self.critical)
            .field("depends_on", &self.depends_on)
            .field("liveness", &self.liveness)
            .field("startup", &self.startup)
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A check named `name` (unique in its registry) running `check`.
    pub fn new(name: impl Into<String>, check: impl HealthCheck) -> Self {
        Self::from_arc(name, Arc::new(check))
    }

    /// Like [`new`](Check::new), with a shared check.
    pub fn from_arc(name: impl Into<String>, check: Arc<dyn HealthCheck>) -> Self {
        Self {
            name: name.into(),
            check,
            timeout: None,
            interval: None,
            retries: None,
            retry_delay: None,
            critical: None,
            depends_on: Vec::new(),
            liveness: false,
            startup: None,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The timeout of one attempt (more than zero, at most an hour): an
    /// attempt still running then is cancelled and counts as unhealthy.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long a result is served from cache (more than zero, at most a
    /// day). A probe that finds it older answers with it anyway and starts
    /// a run in the background.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Attempts after the first when one is unhealthy or times out (at most
    /// 10). A degraded result is not retried.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// The pause between two attempts (at most a minute).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = Some(delay);
        self
    }

    /// Whether an unhealthy result makes the probe unhealthy (`true`, the
    /// default) or only degraded (`false`).
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = Some(critical);
        self
    }

    /// Runs after the check `name` and is reported unhealthy, without
    /// running, while `name` is unhealthy. Call once per dependency.
    pub fn depends_on(mut self, name: impl Into<String>) -> Self {
        self.depends_on.push(name.into());
        self
    }

    /// Includes the check in the liveness probe (it is always in the
    /// readiness probe). Only checks of the process itself belong there
    /// (an event loop that answers, a deadlock detector): liveness must
    /// never fail because a dependency is down, since a restart would not
    /// help. A liveness check therefore cannot have dependencies.
    pub fn liveness(mut self) -> Self {
        self.liveness = true;
        self
    }

    /// Includes the check in the [startup probe](crate::HealthRegistry::startup):
    /// startup completes once every startup check has passed (healthy or
    /// degraded) at least once.
    ///
    /// Which checks gate startup: the checks marked here (or `startup:
    /// true` in the [`HealthConfig`](crate::HealthConfig)); when no check
    /// is marked, every critical check. A slow first connection, a cache to
    /// warm: mark the checks that say the app has come up.
    ///
    /// ```
    /// use buttress_health::{Check, HealthRegistry, Status};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let registry = HealthRegistry::builder()
    ///     .check(Check::new("migrations", || async { Status::Healthy }).startup())
    ///     .check(Check::new("db", || async { Status::Unhealthy }))
    ///     .build()
    ///     .unwrap();
    /// // Only `migrations` gates startup; `db` is for readiness to report.
    /// assert_eq!(registry.startup().await.http_status(), 200);
    /// assert_eq!(registry.readiness().await.http_status(), 503);
    /// # });
    /// ```
    pub fn startup(mut self) -> Self {
        self.startup = Some(true);
        self
    }
}

/// A check's settings once resolved and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) timeout: Duration,
    pub(crate) interval: Duration,
    pub(crate) retries: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) critical: bool,
    /// Marked for the startup probe.
    pub(crate) startup: bool,
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(ConfigError::new(
                KIND,
                "timeout",
                format!(
                    "must be more than zero and at most 1h, got {:?}",
                    self.timeout
                ),
            ));
        }
        if self.interval.is_zero() || self.interval > MAX_INTERVAL {
            return Err(ConfigError::new(
                KIND,
                "interval",
                format!(
                    "must be more than zero and at most 1day, got {:?}",
                    self.interval
                ),
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(ConfigError::new(
                KIND,
                "retries",
                format!("must be at most {MAX_RETRIES}, got {}", self.retries),
            ));
        }
        if self.retry_delay > MAX_RETRY_DELAY {
            return Err(ConfigError::new(
                KIND,
                "retry_delay",
                format!("must be at most 1m, got {:?}", self.retry_delay),
            ));
        }
        Ok(())
    }
}
