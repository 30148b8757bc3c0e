//! When the fallback runs: on any error (the default), on some rejection
//! kinds, on a predicate, on what a classifier calls a failure, on HTTP
//! statuses.

use std::fmt;

use buttress_core::error::{chain, kind_of};
use buttress_core::{BoxError, Classifier, ErrorKind};
use http::StatusCode;

use crate::marker::kind_label;

/// Decides, from the primary's result, whether the fallback runs.
///
/// Errors are already boxed: an error the trigger lets through goes back to
/// the caller as it is. Any `Fn(&Result<Res, BoxError>) -> bool` is a
/// trigger.
pub trait Trigger<Res> {
    /// `true` when `result` must be replaced by the fallback.
    fn triggers(&self, result: &Result<Res, BoxError>) -> bool;
}

impl<Res, F> Trigger<Res> for F
where
    F: Fn(&Result<Res, BoxError>) -> bool,
{
    fn triggers(&self, result: &Result<Res, BoxError>) -> bool {
        self(result)
    }
}

/// Every error triggers the fallback; no response does (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyError;

impl<Res> Trigger<Res> for AnyError {
    #[inline]
    fn triggers(&self, result: &Result<Res, BoxError>) -> bool {
        result.is_err()
    }
}

/// Errors that match a predicate on the error.
#[derive(Clone, Copy)]
pub struct Predicate<F>(pub(crate) F);

impl<F> fmt::Debug for Predicate<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Predicate")
    }
}

impl<Res, F> Trigger<Res> for Predicate<F>
where
    F: Fn(&BoxError) -> bool,
{
    #[inline]
    fn triggers(&self, result: &Result<Res, BoxError>) -> bool {
        match result {
            Err(e) => (self.0)(e),
            Ok(_) => false,
        }
    }
}

/// Responses and errors a [`Classifier`] calls a
/// [`Failure`](buttress_core::Outcome::Failure): with buttress's
/// `HttpClassifier`, every error, and the `5xx` and `429` responses.
#[derive(Debug, Clone, Copy)]
pub struct Classified<C>(pub(crate) C);

impl<Res, C> Trigger<Res> for Classified<C>
where
    C: Classifier<Res, BoxError>,
{
    #[inline]
    fn triggers(&self, result: &Result<Res, BoxError>) -> bool {
        self.0.classify(result).is_failure()
    }
}

/// A set of buttress rejection kinds: errors with one of them anywhere in
/// their `source()` chain trigger the fallback (an open circuit behind a
/// `RetryExhausted` included); other errors go back to the caller.
///
/// ```
/// use buttress_fallback::Kinds;
/// use buttress_core::ErrorKind;
///
/// let kinds = Kinds::from([ErrorKind::CircuitOpen, ErrorKind::Timeout]);
/// assert!(kinds.contains(ErrorKind::Timeout));
/// assert!(!kinds.contains(ErrorKind::RateLimited));
/// assert_eq!(Kinds::parse("bulkhead_full").unwrap(), Kinds::from([ErrorKind::BulkheadFull]));
/// assert!(Kinds::parse("teapot").is_none());
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Kinds(u8);

/// Every kind this crate knows, in the order of their bits.
const KNOWN: [ErrorKind; 6] = [
    ErrorKind::CircuitOpen,
    ErrorKind::Timeout,
    ErrorKind::BulkheadFull,
    ErrorKind::RateLimited,
    ErrorKind::RetryExhausted,
    ErrorKind::KeyMissing,
];

fn bit(kind: ErrorKind) -> u8 {
    KNOWN.iter().position(|k| *k == kind).map_or(0, |i| 1 << i)
}

impl Kinds {
    /// No kind.
    pub const fn none() -> Self {
        Kinds(0)
    }

    /// Every rejection kind: an open circuit, a timeout, a full bulkhead,
    /// a rate limit, exhausted retries, a missing key.
    pub fn all() -> Self {
        Kinds::from(KNOWN)
    }

    /// The rejections that say the dependency is unavailable or overloaded
    /// now: an open circuit, a timeout, a full bulkhead, a rate limit.
    pub fn unavailable() -> Self {
        Kinds::from([
            ErrorKind::CircuitOpen,
            ErrorKind::Timeout,
            ErrorKind::BulkheadFull,
            ErrorKind::RateLimited,
        ])
    }

    /// Adds `kind`.
    pub fn with(self, kind: ErrorKind) -> Self {
        Kinds(self.0 | bit(kind))
    }

    /// The kinds of both sets.
    pub fn union(self, other: Kinds) -> Self {
        Kinds(self.0 | other.0)
    }

    /// Whether `kind` is in the set.
    pub fn contains(&self, kind: ErrorKind) -> bool {
        let b = bit(kind);
        b != 0 && self.0 & b != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The kinds, as their labels (`circuit_open`, `timeout`,
    /// `bulkhead_full`, `rate_limited`, `retry_exhausted`, `key_missing`).
    pub fn labels(&self) -> impl Iterator<Item = &'static str> + '_ {
        KNOWN
            .iter()
            .filter(|k| self.contains(**k))
            .map(|k| kind_label(*k))
    }

    /// The kind named by `label` (one of [`labels`](Self::labels), or
    /// `elapsed` for a timeout), as a set of one.
    pub fn parse(label: &str) -> Option<Self> {
        let label = if label == "elapsed" { "timeout" } else { label };
        KNOWN
            .iter()
            .find(|k| kind_label(**k) == label)
            .map(|k| Kinds::none().with(*k))
    }

    /// Whether `err`'s chain has a rejection of a kind in the set.
    pub fn matches(&self, err: &(dyn std::error::Error + 'static)) -> bool {
        !self.is_empty() && chain(err).any(|e| kind_of(e).is_some_and(|k| self.contains(k)))
    }
}

impl<const N: usize> From<[ErrorKind; N]> for Kinds {
    fn from(kinds: [ErrorKind; N]) -> Self {
        kinds.into_iter().fold(Kinds::none(), Kinds::with)
    }
}

impl fmt::Debug for Kinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.labels()).finish()
    }
}

impl<Res> Trigger<Res> for Kinds {
    #[inline]
    fn triggers(&self, result: &Result<Res, BoxError>) -> bool {
        match result {
            Err(e) => self.matches(&**e),
            Ok(_) => false,
        }
    }
}

/// The triggers that are data ([`FallbackConfig`](crate::FallbackConfig)):
/// errors (any, or some rejection kinds, or none), and for
/// `http::Response`s a set of statuses.
///
/// ```
/// use buttress_fallback::{Kinds, Rules, Trigger};
/// use buttress_core::{BoxError, CircuitOpen, ErrorKind};
///
/// let rules = Rules::new()
///     .kinds(Kinds::from([ErrorKind::CircuitOpen]))
///     .statuses([502, 503])
///     .unwrap();
/// let open: BoxError = CircuitOpen::new("db".into(), None).into();
/// assert!(Trigger::<http::Response<()>>::triggers(&rules, &Err(open)));
/// let other: BoxError = "connection reset".into();
/// assert!(!Trigger::<http::Response<()>>::triggers(&rules, &Err(other)));
/// let bad_gateway = http::Response::builder().status(502).body(()).unwrap();
/// assert!(rules.triggers(&Ok(bad_gateway)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    any_error: bool,
    kinds: Kinds,
    statuses: Vec<StatusCode>,
}

impl Rules {
    /// Every error, no status: [`AnyError`] as data.
    pub fn new() -> Self {
        Self {
            any_error: true,
            kinds: Kinds::none(),
            statuses: Vec::new(),
        }
    }

    /// Only errors with one of `kinds` in their chain (an empty set: no
    /// error).
    pub fn kinds(mut self, kinds: Kinds) -> Self {
        self.any_error = false;
        self.kinds = kinds;
        self
    }

    /// Every error.
    pub fn any_error(mut self) -> Self {
        self.any_error = true;
        self
    }

    /// Responses with one of these statuses trigger the fallback too.
    /// Each must be a valid status (100 to 999).
    pub fn statuses(
        mut self,
        statuses: impl IntoIterator<Item = u16>,
    ) -> Result<Self, buttress_core::ConfigError> {
        let mut out = Vec::new();
        for code in statuses {
            let status = StatusCode::from_u16(code).map_err(|_| {
                buttress_core::ConfigError::new(
                    crate::layer::KIND,
                    "statuses",
                    format!("{code} is not an HTTP status (100 to 999)"),
                )
            })?;
            if !out.contains(&status) {
                out.push(status);
            }
        }
        out.sort();
        self.statuses = out;
        Ok(self)
    }

    /// Whether an error triggers the fallback.
    pub fn error_triggers(&self, err: &(dyn std::error::Error + 'static)) -> bool {
        self.any_error || self.kinds.matches(err)
    }

    /// Whether a response status triggers the fallback.
    pub fn status_triggers(&self, status: StatusCode) -> bool {
        self.statuses.binary_search(&status).is_ok()
    }
}

impl<B> Trigger<http::Response<B>> for Rules {
    #[inline]
    fn triggers(&self, result: &Result<http::Response<B>, BoxError>) -> bool {
        match result {
            Err(e) => self.error_triggers(&**e),
            Ok(res) => !self.statuses.is_empty() && self.status_triggers(res.status()),
        }
    }
}
