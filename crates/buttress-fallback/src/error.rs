//! The errors a [`Fallback`](crate::Fallback) returns of its own.
//!
//! An error that does not trigger the fallback goes back as it is (boxed
//! into a [`BoxError`]); these two are added only when a fallback ran.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

pub use buttress_core::BoxError;

use crate::marker::FallbackReason;

/// The fallback itself failed: [`fallback_error`](Self::fallback_error) is
/// its error, and the failure that triggered it (the primary's error, or
/// [`UnhealthyResponse`]) is the [`source()`](StdError::source), so
/// `buttress_core::error::kind_of` and `retry_after` still find an open
/// circuit or a rate limit behind it.
///
/// ```
/// use buttress_fallback::error::FallbackFailed;
/// use buttress_fallback::FallbackLayer;
/// use buttress_core::{error::kind_of, BoxError, CircuitOpen, ErrorKind};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = FallbackLayer::from_error(|_: &buttress_fallback::Failure<&str>| {
///     Err::<&str, BoxError>("the cache is down too".into())
/// })
/// .name("profile")
/// .build()
/// .unwrap();
/// let svc = layer.layer(service_fn(|()| async {
///     Err::<&str, BoxError>(CircuitOpen::new("users".into(), None).into())
/// }));
/// let err = svc.oneshot(()).await.unwrap_err();
/// let failed = err.downcast_ref::<FallbackFailed>().unwrap();
/// assert_eq!(failed.fallback_error().to_string(), "the cache is down too");
/// assert_eq!(kind_of(&*err), Some(ErrorKind::CircuitOpen));
/// assert_eq!(err.to_string(), "fallback `profile` failed: the cache is down too");
/// # }
/// ```
#[derive(Debug)]
pub struct FallbackFailed {
    name: Arc<str>,
    reason: FallbackReason,
    fallback: BoxError,
    original: BoxError,
}

impl FallbackFailed {
    pub(crate) fn new(
        name: Arc<str>,
        reason: FallbackReason,
        fallback: BoxError,
        original: BoxError,
    ) -> Self {
        Self {
            name,
            reason,
            fallback,
            original,
        }
    }

    /// The name of the fallback layer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why the fallback ran.
    pub fn reason(&self) -> FallbackReason {
        self.reason
    }

    /// The fallback's own error.
    pub fn fallback_error(&self) -> &BoxError {
        &self.fallback
    }

    /// The failure that triggered the fallback (also the `source()`).
    pub fn original(&self) -> &BoxError {
        &self.original
    }

    /// The fallback's error and the original failure.
    pub fn into_parts(self) -> (BoxError, BoxError) {
        (self.fallback, self.original)
    }
}

impl fmt::Display for FallbackFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() || &*self.name == crate::layer::KIND {
            write!(f, "fallback failed: {}", self.fallback)
        } else {
            write!(f, "fallback `{}` failed: {}", self.name, self.fallback)
        }
    }
}

impl StdError for FallbackFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.original)
    }
}

/// The primary answered with a response that the trigger called a failure
/// (an HTTP 503 under the HTTP classifier): the `source()` of a
/// [`FallbackFailed`] when the fallback for such a response failed. The
/// response itself was handed to the fallback and is gone; its status, when
/// it had one, is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnhealthyResponse {
    status: Option<http::StatusCode>,
}

impl UnhealthyResponse {
    pub(crate) fn new(status: Option<http::StatusCode>) -> Self {
        Self { status }
    }

    /// The HTTP status of the response, when it was an `http::Response`.
    pub fn status(&self) -> Option<http::StatusCode> {
        self.status
    }
}

impl fmt::Display for UnhealthyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "the primary answered {status}, classified as a failure"),
            None => f.write_str("the primary's response was classified as a failure"),
        }
    }
}

impl StdError for UnhealthyResponse {}
