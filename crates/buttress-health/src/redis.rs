//! [`RedisCheck`]: reachability of a Redis server (feature `redis`).

use std::fmt;

use buttress_core::ConfigError;

use crate::check::{CheckFuture, HealthCheck};
use crate::status::CheckResult;
use crate::KIND;

/// Connects to a Redis server and sends `PING`: healthy on `PONG`,
/// unhealthy with the error otherwise. A new connection each run, so the
/// check says whether a client can reach the server now (not whether an
/// old connection survives). Bound it with the check's timeout.
///
/// ```
/// use buttress_health::{Check, RedisCheck};
/// use std::time::Duration;
///
/// let check = Check::new("redis", RedisCheck::new("redis://127.0.0.1:6379/").unwrap())
///     .timeout(Duration::from_millis(500));
/// # drop(check);
/// assert_eq!(RedisCheck::new("not a url").unwrap_err().field(), "redis_url");
/// ```
#[derive(Clone)]
pub struct RedisCheck {
    client: redis::Client,
}

impl fmt::Debug for RedisCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection info may hold a password: not printed.
        f.debug_struct("RedisCheck").finish_non_exhaustive()
    }
}

impl RedisCheck {
    /// Checks the server at `url` (`redis://host:port/db`).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|e| ConfigError::new(KIND, "redis_url", format!("is invalid: {e}")))?;
        Ok(Self { client })
    }

    /// Checks the server of `client`.
    pub fn from_client(client: redis::Client) -> Self {
        Self { client }
    }
}

impl HealthCheck for RedisCheck {
    fn check(&self) -> CheckFuture {
        let client = self.client.clone();
        Box::pin(async move {
            let mut con = match client.get_multiplexed_async_connection().await {
                Ok(c) => c,
                Err(e) => return CheckResult::unhealthy(format!("cannot connect to redis: {e}")),
            };
            match redis::cmd("PING").query_async::<String>(&mut con).await {
                Ok(pong) if pong == "PONG" => CheckResult::healthy(),
                Ok(other) => CheckResult::unhealthy(format!("redis answered PING with `{other}`")),
                Err(e) => CheckResult::unhealthy(format!("redis PING failed: {e}")),
            }
        })
    }
}
