//! Error types.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

pub use buttress_core::error::BoxError;

/// The error of a call that failed while other callers waited for it
/// (single-flight): each of them, the caller that made the call included,
/// gets one of these, sharing the inner error, which is its
/// [`source`](StdError::source). buttress's error helpers
/// (`kind_of`, `find`, `retry_after`) walk the source chain, so an open
/// breaker below is still recognised.
///
/// A call that failed with nobody waiting returns the inner error itself.
///
/// ```
/// use buttress_cache::error::SharedError;
/// use std::error::Error;
///
/// let inner: Box<dyn Error + Send + Sync> = "upstream down".into();
/// let err = SharedError::new("users".into(), inner.into());
/// assert_eq!(err.to_string(), "upstream down (shared by the callers of cache `users`)");
/// assert_eq!(err.source().unwrap().to_string(), "upstream down");
/// ```
#[derive(Clone)]
pub struct SharedError {
    name: Arc<str>,
    inner: Arc<dyn StdError + Send + Sync>,
}

impl SharedError {
    /// Shares `inner` among the callers of cache `name`.
    pub fn new(name: Arc<str>, inner: Arc<dyn StdError + Send + Sync>) -> Self {
        Self { name, inner }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared inner error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedError")
            .field("name", &self.name)
            .field("inner", &self.inner)
            .finish()
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (shared by the callers of cache `{}`)",
            self.inner, self.name
        )
    }
}

impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.inner)
    }
}

/// A store operation (Redis) failed or timed out. Calls never see it (a
/// lookup that fails is a miss, a store that fails is skipped); the
/// handle's operations return it.
///
/// ```
/// use buttress_cache::error::StoreError;
/// let err = StoreError::new("users".into(), "timed out");
/// assert_eq!(err.to_string(), "the store of cache `users` failed: timed out");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    name: Arc<str>,
    reason: String,
}

impl StoreError {
    /// A failure of cache `name`'s store.
    pub fn new(name: Arc<str>, reason: impl Into<String>) -> Self {
        Self {
            name,
            reason: reason.into(),
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What failed.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the store of cache `{}` failed: {}",
            self.name, self.reason
        )
    }
}

impl StdError for StoreError {}

/// A revalidation was answered `304 Not Modified` with a validator
/// (`ETag`, else `Last-Modified`) other than the stored response's: the
/// 304 is about another representation, so the stored one cannot be
/// refreshed from it (RFC 9111 §4.3.4). The call is then treated as a
/// failed one: a stale entry within `max_stale` answers, else the caller
/// gets this error.
///
/// ```
/// use buttress_cache::error::ValidatorMismatch;
/// let err = ValidatorMismatch::new("pages".into());
/// assert_eq!(err.name(), "pages");
/// assert_eq!(
///     err.to_string(),
///     "cache `pages`: a 304 Not Modified named a validator other than the stored response's"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorMismatch {
    name: Arc<str>,
}

impl ValidatorMismatch {
    /// The mismatch seen by cache `name`.
    pub fn new(name: Arc<str>) -> Self {
        Self { name }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ValidatorMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cache `{}`: a 304 Not Modified named a validator other than the stored response's",
            self.name
        )
    }
}

impl StdError for ValidatorMismatch {}
