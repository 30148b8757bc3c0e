//! [`PostgresCheck`]: reachability of a PostgreSQL database (feature
//! `postgres`).

use std::fmt;

use buttress_core::ConfigError;

use crate::check::{CheckFuture, HealthCheck};
use crate::status::CheckResult;
use crate::KIND;

/// Connects to a PostgreSQL database (no TLS) and runs `SELECT 1`: healthy
/// when it answers, unhealthy with the error otherwise. A new connection
/// each run, so it says whether a client can connect and query now. Bound
/// it with the check's timeout.
///
/// ```
/// use buttress_health::{Check, PostgresCheck};
///
/// let check = Check::new(
///     "postgres",
///     PostgresCheck::new("postgres://app@127.0.0.1:5432/app").unwrap(),
/// );
/// # drop(check);
/// assert_eq!(PostgresCheck::new("host=/x port=nope").unwrap_err().field(), "postgres_url");
/// ```
#[derive(Clone)]
pub struct PostgresCheck {
    config: tokio_postgres::Config,
}

impl fmt::Debug for PostgresCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config may hold a password: not printed.
        f.debug_struct("PostgresCheck").finish_non_exhaustive()
    }
}

impl PostgresCheck {
    /// Checks the database at `url` (a `postgres://` URL or a `key=value`
    /// connection string).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let config = url
            .parse()
            .map_err(|e| ConfigError::new(KIND, "postgres_url", format!("is invalid: {e}")))?;
        Ok(Self { config })
    }

    /// Checks the database of `config`.
    pub fn from_config(config: tokio_postgres::Config) -> Self {
        Self { config }
    }
}

impl HealthCheck for PostgresCheck {
    fn check(&self) -> CheckFuture {
        let config = self.config.clone();
        Box::pin(async move {
            let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
                Ok(c) => c,
                Err(e) => {
                    return CheckResult::unhealthy(format!("cannot connect to postgres: {e}"))
                }
            };
            let driver = tokio::spawn(connection);
            let result = match client.simple_query("SELECT 1").await {
                Ok(_) => CheckResult::healthy(),
                Err(e) => CheckResult::unhealthy(format!("postgres SELECT 1 failed: {e}")),
            };
            drop(client);
            driver.abort();
            result
        })
    }
}
