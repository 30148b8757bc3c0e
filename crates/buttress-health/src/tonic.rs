//! [`TonicHealth`]: gRPC health checking (`grpc.health.v1.Health`) that
//! follows readiness (feature `tonic`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use buttress_core::ConfigError;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::registry::HealthRegistry;
use crate::report::{aggregate, HealthReport};
use crate::status::Status;
use crate::KIND;

/// Which checks decide a gRPC service name's status.
#[derive(Debug, Clone)]
enum Scope {
    /// The whole readiness report.
    All,
    /// These checks only.
    Checks(Vec<String>),
}

/// Keeps a [`tonic_health`] reporter's serving statuses in step with
/// readiness, per service name: `SERVING` unless the checks of the name
/// aggregate to unhealthy or shutdown started, then `NOT_SERVING`.
///
/// It polls readiness (which runs stale checks in the background, as every
/// probe does) every poll interval, and at once when a check's status
/// changes or shutdown starts, so `Watch` clients see a flip within one
/// check run.
///
/// ```
/// use buttress_health::{Check, HealthRegistry, Status, TonicHealth};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let registry = HealthRegistry::builder()
///     .check(Check::new("db", || async { Status::Healthy }))
///     .build()
///     .unwrap();
/// let (reporter, health_server) = tonic_health::server::health_reporter();
/// let task = TonicHealth::builder(&registry, reporter)
///     .service("") // the whole server: every check
///     .service_checks("shop.Orders", ["db"])
///     .build()
///     .unwrap()
///     .spawn();
/// // tonic::transport::Server::builder().add_service(health_server)...
/// # drop(health_server); task.abort();
/// # });
/// ```
pub struct TonicHealth {
    registry: HealthRegistry,
    reporter: HealthReporter,
    services: Vec<(String, Scope)>,
    poll: Duration,
    last: HashMap<String, ServingStatus>,
}

impl fmt::Debug for TonicHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TonicHealth")
            .field("services", &self.services)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TonicHealth`].
#[must_use]
pub struct TonicHealthBuilder {
    registry: HealthRegistry,
    reporter: HealthReporter,
    services: Vec<(String, Scope)>,
    poll: Option<Duration>,
}

impl fmt::Debug for TonicHealthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TonicHealthBuilder")
            .field("services", &self.services)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl TonicHealth {
    /// A builder reporting `registry`'s readiness through `reporter`.
    pub fn builder(registry: &HealthRegistry, reporter: HealthReporter) -> TonicHealthBuilder {
        TonicHealthBuilder {
            registry: registry.clone(),
            reporter,
            services: Vec::new(),
            poll: None,
        }
    }

    /// Updates every service name from one readiness report.
    pub async fn update(&mut self) {
        let report = self.registry.readiness().await;
        for (name, scope) in &self.services {
            let status = serving(&report, scope);
            if self.last.get(name) != Some(&status) {
                tracing::debug!(service = %name, ?status, "grpc health status");
                self.reporter.set_service_status(name, status).await;
                self.last.insert(name.clone(), status);
            }
        }
    }

    /// Updates for ever: every poll interval, and whenever a check's
    /// status changes or shutdown starts.
    pub async fn run(mut self) {
        let mut changed = self.registry.subscribe();
        loop {
            changed.borrow_and_update();
            self.update().await;
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                // The registry holds the sender: it cannot close while we
                // hold the registry.
                _ = changed.changed() => {}
            }
        }
    }

    /// [`run`](TonicHealth::run) in a task.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }
}

fn serving(report: &HealthReport, scope: &Scope) -> ServingStatus {
    if report.shutting_down {
        return ServingStatus::NotServing;
    }
    let status = match scope {
        Scope::All => report.status,
        Scope::Checks(names) => aggregate(
            report
                .checks
                .iter()
                .filter(|c| names.contains(&c.name))
                .map(|c| (c.status, c.critical)),
        ),
    };
    if status == Status::Unhealthy {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    }
}

impl TonicHealthBuilder {
    /// Reports `name` (`""`: the whole server) from the whole readiness
    /// report.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.services.push((name.into(), Scope::All));
        self
    }

    /// Reports `name` from the checks `checks` only (unhealthy when one of
    /// them is critical and unhealthy).
    pub fn service_checks<I, S>(mut self, name: impl Into<String>, checks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let checks = checks.into_iter().map(Into::into).collect();
        self.services.push((name.into(), Scope::Checks(checks)));
        self
    }

    /// How often to poll readiness when nothing changes (default: the
    /// smallest check interval); more than zero.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = Some(every);
        self
    }

    /// Validates: known check names, a poll interval more than zero. With
    /// no service named, reports `""` (the whole server).
    pub fn build(mut self) -> Result<TonicHealth, ConfigError> {
        let known = self.registry.names();
        for (name, scope) in &self.services {
            if let Scope::Checks(checks) = scope {
                if checks.is_empty() {
                    return Err(ConfigError::new(
                        KIND,
                        "service_checks",
                        format!("service `{name}` names no check"),
                    ));
                }
                if let Some(c) = checks.iter().find(|c| !known.contains(c)) {
                    return Err(ConfigError::new(
                        KIND,
                        "service_checks",
                        format!("service `{name}` names `{c}`, which is not registered"),
                    ));
                }
            }
        }
        let poll = self.poll.unwrap_or_else(|| self.registry.min_interval());
        if poll.is_zero() {
            return Err(ConfigError::new(
                KIND,
                "poll_interval",
                "must be more than zero",
            ));
        }
        if self.services.is_empty() {
            self.services.push((String::new(), Scope::All));
        }
        Ok(TonicHealth {
            registry: self.registry,
            reporter: self.reporter,
            services: self.services,
            poll,
            last: HashMap::new(),
        })
    }
}
