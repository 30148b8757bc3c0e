//! Why the demo could not run.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use buttress_core::ConfigError;

/// Why the demo could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum DemoError {
    /// A server could not bind its port on 127.0.0.1.
    Bind {
        /// `"upstream"`, `"gateway"` or `"metrics endpoint"`.
        role: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// A resilience layer rejected its configuration.
    Config(ConfigError),
    /// The gateway (or, through it, the upstream) did not answer the check
    /// made before the load starts.
    Unreachable {
        /// The address that was tried.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// A server failed while serving.
    Serve {
        /// `"upstream"` or `"gateway"`.
        role: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// A server still had connections open long after it was asked to stop.
    Shutdown {
        /// `"upstream"` or `"gateway"`.
        role: &'static str,
    },
    /// The Prometheus recorder could not be installed (another `metrics`
    /// recorder was), or `/metrics` did not serve what the report reads.
    Metrics(String),
    /// The order sagas' SQLite log could not be created, opened or
    /// recovered.
    SagaLog {
        /// The directory or the database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Bind { role, source } => {
                write!(f, "the {role} could not listen on 127.0.0.1: {source}")
            }
            DemoError::Config(e) => write!(f, "{e}"),
            DemoError::Unreachable { addr, reason } => {
                write!(f, "the gateway at http://{addr} is not reachable: {reason}")
            }
            DemoError::Serve { role, source } => write!(f, "the {role} failed: {source}"),
            DemoError::Shutdown { role } => {
                write!(f, "the {role} did not shut down in time")
            }
            DemoError::Metrics(message) => write!(f, "metrics: {message}"),
            DemoError::SagaLog { path, reason } => {
                write!(f, "the saga log at {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for DemoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DemoError::Bind { source, .. } | DemoError::Serve { source, .. } => Some(source),
            DemoError::Config(e) => Some(e),
            DemoError::Unreachable { .. }
            | DemoError::Shutdown { .. }
            | DemoError::Metrics(_)
            | DemoError::SagaLog { .. } => None,
        }
    }
}

impl From<ConfigError> for DemoError {
    fn from(e: ConfigError) -> Self {
        DemoError::Config(e)
    }
}
