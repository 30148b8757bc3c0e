//! [`HealthEvent`]: what the registry reports to its listeners.

use std::sync::Arc;
use std::time::Duration;

use crate::Status;

/// An event of a [`HealthRegistry`](crate::HealthRegistry), given to the
/// listeners of [`on_event`](crate::HealthRegistryBuilder::on_event).
///
/// ```
/// use buttress_health::{Check, HealthEvent, HealthRegistry, Status};
/// use std::sync::{Arc, Mutex};
///
/// # tokio_test_block_on(async {
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let registry = HealthRegistry::builder()
///     .check(Check::new("db", || async { Status::Degraded }))
///     .on_event(move |e: &HealthEvent| log.lock().unwrap().push(e.clone()))
///     .build()
///     .unwrap();
/// registry.readiness().await;
/// assert!(matches!(
///     &seen.lock().unwrap()[0],
///     HealthEvent::StatusChanged { check, from: None, to: Status::Degraded } if &**check == "db"
/// ));
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HealthEvent {
    /// A check's status changed (`from` is `None` for its first result).
    StatusChanged {
        /// The check.
        check: Arc<str>,
        /// The status before.
        from: Option<Status>,
        /// The status now.
        to: Status,
    },
    /// An attempt of a check was cut at its timeout.
    TimedOut {
        /// The check.
        check: Arc<str>,
        /// The attempt, from 1.
        attempt: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// An attempt was unhealthy; another follows after the retry delay.
    Retrying {
        /// The check.
        check: Arc<str>,
        /// The attempt that failed, from 1.
        attempt: u32,
    },
    /// A check was not run because a dependency is unhealthy.
    Skipped {
        /// The check.
        check: Arc<str>,
        /// The unhealthy dependency.
        dependency: String,
    },
    /// [`ShutdownHandle::shut_down`](crate::ShutdownHandle::shut_down) was
    /// called: readiness is not-serving from now on.
    ShutdownStarted,
    /// Startup completed: every startup check has passed once and the
    /// manual gate, if any, is open. Emitted once per registry.
    Started {
        /// Time from the registry's creation.
        after: Duration,
    },
}
