//! Configuration errors, the rejection errors every pattern returns, and
//! helpers to inspect a [`BoxError`].
//!
//! Rejections are small structs, boxed into [`BoxError`] as tower does, and
//! recognised by downcasting. They live here, rather than in each pattern
//! crate, so that [`kind_of`], [`retry_after`] and the HTTP and gRPC mappings
//! know all of them.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The error type of every layer that can reject: tower's convention.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A configuration value was invalid: names the component, the field and
/// the reason.
///
/// ```
/// use buttress_core::ConfigError;
///
/// let err = ConfigError::new("bulkhead", "max_concurrent", "must be at least 1");
/// assert_eq!(err.field(), "max_concurrent");
/// assert_eq!(err.to_string(), "invalid bulkhead config: max_concurrent must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    component: &'static str,
    field: &'static str,
    reason: String,
}

impl ConfigError {
    /// A new error for `field` of `component`.
    pub fn new(component: &'static str, field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            component,
            field,
            reason: reason.into(),
        }
    }

    /// The component kind (`"bulkhead"`, `"timeout"`, ...).
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// The field that was invalid.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why it was invalid.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} config: {} {}",
            self.component, self.field, self.reason
        )
    }
}

impl StdError for ConfigError {}

/// A call did not complete within its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elapsed {
    name: Arc<str>,
    timeout: Duration,
}

impl Elapsed {
    /// A timeout of `timeout` in the component `name` fired.
    pub fn new(name: Arc<str>, timeout: Duration) -> Self {
        Self { name, timeout }
    }

    /// The name of the timeout layer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The timeout that was exceeded.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request timed out after {:?}", self.timeout)?;
        if is_named(&self.name, &["timeout"]) {
            write!(f, " (timeout `{}`)", self.name)?;
        }
        Ok(())
    }
}

impl StdError for Elapsed {}

/// Why a bulkhead rejected a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum BulkheadFullReason {
    /// Every permit was taken and there was no room to wait: the wait
    /// queue was full, or the bulkhead has none.
    QueueFull,
    /// The call waited in the queue for `max_wait` without getting a permit.
    WaitTimedOut,
}

impl fmt::Display for BulkheadFullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BulkheadFullReason::QueueFull => "no free permit and no room to wait",
            BulkheadFullReason::WaitTimedOut => "wait in queue timed out",
        })
    }
}

/// A bulkhead had no capacity for the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadFull {
    name: Arc<str>,
    reason: BulkheadFullReason,
    retry_after: Option<Duration>,
}

impl BulkheadFull {
    /// The bulkhead `name` rejected a call for `reason`.
    pub fn new(name: Arc<str>, reason: BulkheadFullReason) -> Self {
        Self {
            name,
            reason,
            retry_after: None,
        }
    }

    /// Attach a retry hint.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// The name of the bulkhead.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why the call was rejected.
    pub fn reason(&self) -> BulkheadFullReason {
        self.reason
    }

    /// How long to wait before trying again, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_named(&self.name, &["bulkhead"]) {
            write!(f, "bulkhead `{}` is full: {}", self.name, self.reason)
        } else {
            write!(f, "bulkhead is full: {}", self.reason)
        }
    }
}

impl StdError for BulkheadFull {}

/// A circuit breaker is open (or forced open) and rejected the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    name: Arc<str>,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    /// The breaker `name` is open; it admits probes again after `retry_after`
    /// (`None` when forced open).
    pub fn new(name: Arc<str>, retry_after: Option<Duration>) -> Self {
        Self { name, retry_after }
    }

    /// The name of the breaker.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Time left until the breaker lets probes through, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_named(&self.name, &["circuit_breaker"]) {
            write!(f, "circuit `{}` is open", self.name)
        } else {
            f.write_str("circuit breaker is open")
        }
    }
}

impl StdError for CircuitOpen {}

/// The quota of a rate-limit policy at the time of a call: what the
/// `RateLimit-Policy` and `RateLimit` response headers of
/// draft-ietf-httpapi-ratelimit-headers advertise (see
/// [`ratelimit_headers`](crate::response::ratelimit_headers)).
///
/// `limit` quota units (requests, unless the limiter counts otherwise) per
/// `window`, of which `remaining` are left; after `reset` the quota is
/// restored. A plain value: the limiter that builds it decides what the
/// numbers mean for its algorithm.
///
/// ```
/// use buttress_core::Quota;
/// use std::time::Duration;
///
/// // 100 requests a minute, none left, restored in 30 s.
/// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 0, Duration::from_secs(30));
/// assert_eq!(quota.policy(), "api");
/// assert_eq!(quota.limit(), 100);
/// assert_eq!(quota.window(), Duration::from_secs(60));
/// assert_eq!(quota.remaining(), 0);
/// assert_eq!(quota.reset(), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    policy: Arc<str>,
    limit: u64,
    window: Duration,
    remaining: u64,
    reset: Duration,
}

impl Quota {
    /// The policy named `policy` allows `limit` units per `window`;
    /// `remaining` are left, and the quota is restored after `reset`.
    ///
    /// ```
    /// use buttress_core::Quota;
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("per-client".into(), 10, Duration::from_secs(1), 3, Duration::from_millis(400));
    /// assert_eq!(quota.remaining(), 3);
    /// ```
    pub fn new(
        policy: Arc<str>,
        limit: u64,
        window: Duration,
        remaining: u64,
        reset: Duration,
    ) -> Self {
        Self {
            policy,
            limit,
            window,
            remaining,
            reset,
        }
    }

    /// The name of the policy: the list item of both headers. Any text;
    /// the headers escape it (see
    /// [`ratelimit_headers`](crate::response::ratelimit_headers)).
    ///
    /// ```
    /// use buttress_core::Quota;
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 99, Duration::ZERO);
    /// assert_eq!(quota.policy(), "api");
    /// ```
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Units allowed per [`window`](Quota::window): the header's `q`.
    ///
    /// ```
    /// use buttress_core::Quota;
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 99, Duration::ZERO);
    /// assert_eq!(quota.limit(), 100);
    /// ```
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window the [`limit`](Quota::limit) applies to: the header's
    /// `w`, in whole seconds rounded up.
    ///
    /// ```
    /// use buttress_core::Quota;
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 99, Duration::ZERO);
    /// assert_eq!(quota.window(), Duration::from_secs(60));
    /// ```
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Units left: the header's `r`.
    ///
    /// ```
    /// use buttress_core::Quota;
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 99, Duration::ZERO);
    /// assert_eq!(quota.remaining(), 99);
    /// ```
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Time until the quota is restored: the header's `t`, in whole
    /// seconds rounded up.
    ///
    /// ```
    /// use buttress_core::Quota;
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 0, Duration::from_millis(1500));
    /// assert_eq!(quota.reset(), Duration::from_millis(1500));
    /// ```
    pub fn reset(&self) -> Duration {
        self.reset
    }
}

/// A rate limiter rejected the call.
///
/// ```
/// use buttress_core::{Quota, RateLimited};
/// use std::time::Duration;
///
/// let limited = RateLimited::new("api".into(), Some(Duration::from_secs(30)));
/// assert_eq!(limited.retry_after(), Some(Duration::from_secs(30)));
/// assert_eq!(limited.quota(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    name: Arc<str>,
    retry_after: Option<Duration>,
    quota: Option<Quota>,
}

impl RateLimited {
    /// The limiter `name` rejected a call; the next one is admitted after
    /// `retry_after`.
    ///
    /// ```
    /// use buttress_core::RateLimited;
    ///
    /// let limited = RateLimited::new("api".into(), None);
    /// assert_eq!(limited.name(), "api");
    /// ```
    pub fn new(name: Arc<str>, retry_after: Option<Duration>) -> Self {
        Self {
            name,
            retry_after,
            quota: None,
        }
    }

    /// Attach the quota, for the `RateLimit-Policy` and `RateLimit`
    /// response headers (and the gRPC metadata of the same names).
    ///
    /// When a response carries both `Retry-After` and `RateLimit`, the
    /// draft asks that they agree (`Retry-After` not earlier than `t`), so
    /// a limiter should give a `reset` consistent with `retry_after`.
    ///
    /// ```
    /// use buttress_core::{Quota, RateLimited};
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 0, Duration::from_secs(30));
    /// let limited = RateLimited::new("api".into(), Some(Duration::from_secs(30))).with_quota(quota);
    /// assert_eq!(limited.limit(), Some(100));
    /// assert_eq!(limited.quota().unwrap().window(), Duration::from_secs(60));
    /// ```
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// The name of the limiter.
    ///
    /// ```
    /// use buttress_core::RateLimited;
    ///
    /// assert_eq!(RateLimited::new("per-client".into(), None).name(), "per-client");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long until a call would be admitted.
    ///
    /// ```
    /// use buttress_core::RateLimited;
    /// use std::time::Duration;
    ///
    /// let limited = RateLimited::new("api".into(), Some(Duration::from_millis(250)));
    /// assert_eq!(limited.retry_after(), Some(Duration::from_millis(250)));
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The quota, if attached with [`with_quota`](RateLimited::with_quota).
    ///
    /// ```
    /// use buttress_core::{Quota, RateLimited};
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 0, Duration::from_secs(30));
    /// let limited = RateLimited::new("api".into(), None).with_quota(quota.clone());
    /// assert_eq!(limited.quota(), Some(&quota));
    /// assert_eq!(RateLimited::new("api".into(), None).quota(), None);
    /// ```
    pub fn quota(&self) -> Option<&Quota> {
        self.quota.as_ref()
    }

    /// Units allowed per window ([`Quota::limit`]), if a quota is attached.
    ///
    /// ```
    /// use buttress_core::{Quota, RateLimited};
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 0, Duration::from_secs(30));
    /// assert_eq!(RateLimited::new("api".into(), None).with_quota(quota).limit(), Some(100));
    /// ```
    pub fn limit(&self) -> Option<u64> {
        self.quota.as_ref().map(Quota::limit)
    }

    /// Units left in the window ([`Quota::remaining`]), if a quota is
    /// attached.
    ///
    /// ```
    /// use buttress_core::{Quota, RateLimited};
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 0, Duration::from_secs(30));
    /// assert_eq!(RateLimited::new("api".into(), None).with_quota(quota).remaining(), Some(0));
    /// ```
    pub fn remaining(&self) -> Option<u64> {
        self.quota.as_ref().map(Quota::remaining)
    }

    /// Time until the quota is restored ([`Quota::reset`]), if a quota is
    /// attached.
    ///
    /// ```
    /// use buttress_core::{Quota, RateLimited};
    /// use std::time::Duration;
    ///
    /// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 0, Duration::from_secs(30));
    /// let limited = RateLimited::new("api".into(), None).with_quota(quota);
    /// assert_eq!(limited.reset(), Some(Duration::from_secs(30)));
    /// ```
    pub fn reset(&self) -> Option<Duration> {
        self.quota.as_ref().map(Quota::reset)
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_named(&self.name, &["rate_limiter", "rate_limit"]) {
            write!(f, "rate limit `{}` exceeded", self.name)
        } else {
            f.write_str("rate limit exceeded")
        }
    }
}

impl StdError for RateLimited {}

/// A keyed layer could not extract a key from the request and its policy
/// for such requests is to reject them (the default of the keyed bulkhead
/// and the keyed circuit breaker).
///
/// This is a server misconfiguration rather than an overload, so the HTTP
/// mapping answers 500. The usual cause: a `ClientIp` or `PeerAddr` key
/// behind a server that does not record the peer address. With axum, serve
/// with `into_make_service_with_connect_info::<SocketAddr>()` and enable
/// buttress's `axum` feature.
///
/// ```
/// use buttress_core::error::{kind_of, BoxError, ErrorKind, KeyMissing};
///
/// let err: BoxError = KeyMissing::new("per-client".into(), "ClientIp").into();
/// assert_eq!(kind_of(&*err), Some(ErrorKind::KeyMissing));
/// assert!(err.to_string().starts_with("no key for request in `per-client`"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMissing {
    name: Arc<str>,
    extractor: &'static str,
}

impl KeyMissing {
    /// The keyed layer `name` found no key with the extractor named
    /// `extractor` (a type name, for the message).
    pub fn new(name: Arc<str>, extractor: &'static str) -> Self {
        Self { name, extractor }
    }

    /// The name of the keyed layer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The type name of the key extractor that found no key.
    pub fn extractor(&self) -> &'static str {
        self.extractor
    }
}

impl fmt::Display for KeyMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no key for request in `{}`: `{}` found none (for a peer-address key, \
             serve with `into_make_service_with_connect_info::<SocketAddr>()` and \
             enable the `axum` feature)",
            self.name, self.extractor
        )
    }
}

impl StdError for KeyMissing {}

/// Retries were exhausted; the last error is the `source()`.
#[derive(Debug)]
pub struct RetryExhausted {
    name: Arc<str>,
    attempts: u32,
    last: BoxError,
}

impl RetryExhausted {
    /// `attempts` attempts of the retry layer `name` all failed; `last` is
    /// the last error.
    pub fn new(name: Arc<str>, attempts: u32, last: BoxError) -> Self {
        Self {
            name,
            attempts,
            last,
        }
    }

    /// The name of the retry layer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many attempts were made in all.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The last error.
    pub fn last_error(&self) -> &BoxError {
        &self.last
    }

    /// Take the last error.
    pub fn into_last_error(self) -> BoxError {
        self.last
    }
}

impl fmt::Display for RetryExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_named(&self.name, &["retry"]) {
            write!(
                f,
                "retry `{}` gave up after {} attempts",
                self.name, self.attempts
            )
        } else {
            write!(f, "retry gave up after {} attempts", self.attempts)
        }
    }
}

impl StdError for RetryExhausted {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.last)
    }
}

/// Whether `name` was given by the user: neither empty nor the default name
/// a pattern crate gives an unnamed instance (its kind, e.g. `"bulkhead"`).
/// Messages leave default names out, so an unnamed bulkhead reads "bulkhead
/// is full", not "bulkhead `bulkhead` is full".
fn is_named(name: &str, defaults: &[&str]) -> bool {
    !name.is_empty() && !defaults.contains(&name)
}

/// The kinds of rejection that buttress knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Elapsed`].
    Timeout,
    /// [`BulkheadFull`].
    BulkheadFull,
    /// [`CircuitOpen`].
    CircuitOpen,
    /// [`RateLimited`].
    RateLimited,
    /// [`RetryExhausted`].
    RetryExhausted,
    /// [`KeyMissing`].
    KeyMissing,
}

/// The kind of the first buttress rejection in `err`'s `source()` chain,
/// `err` itself included.
///
/// ```
/// use buttress_core::error::{kind_of, BoxError, ErrorKind, RetryExhausted, CircuitOpen};
///
/// let open: BoxError = CircuitOpen::new("db".into(), None).into();
/// assert_eq!(kind_of(&*open), Some(ErrorKind::CircuitOpen));
/// let wrapped: BoxError = RetryExhausted::new("r".into(), 3, open).into();
/// assert_eq!(kind_of(&*wrapped), Some(ErrorKind::RetryExhausted));
/// assert_eq!(kind_of(&std::io::Error::other("x")), None);
/// ```
pub fn kind_of(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    chain(err).find_map(kind_of_one)
}

/// The kind of the first rejection in the chain that is not a
/// [`RetryExhausted`] wrapper: what finally stopped the call.
pub fn root_kind_of(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    chain(err)
        .filter_map(kind_of_one)
        .find(|k| *k != ErrorKind::RetryExhausted)
}

fn kind_of_one(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    if err.is::<Elapsed>() {
        Some(ErrorKind::Timeout)
    } else if err.is::<BulkheadFull>() {
        Some(ErrorKind::BulkheadFull)
    } else if err.is::<CircuitOpen>() {
        Some(ErrorKind::CircuitOpen)
    } else if err.is::<RateLimited>() {
        Some(ErrorKind::RateLimited)
    } else if err.is::<RetryExhausted>() {
        Some(ErrorKind::RetryExhausted)
    } else if err.is::<KeyMissing>() {
        Some(ErrorKind::KeyMissing)
    } else {
        None
    }
}

/// Finds an error of type `T` in `err`'s `source()` chain.
///
/// ```
/// use buttress_core::error::{find, BoxError, BulkheadFull, BulkheadFullReason, RetryExhausted};
///
/// let full: BoxError = BulkheadFull::new("db".into(), BulkheadFullReason::QueueFull).into();
/// let err: BoxError = RetryExhausted::new("r".into(), 2, full).into();
/// assert_eq!(find::<BulkheadFull>(&*err).unwrap().name(), "db");
/// ```
pub fn find<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    chain(err).find_map(|e| e.downcast_ref::<T>())
}

/// The retry hint carried by the first buttress rejection in the chain that
/// has one.
///
/// ```
/// use buttress_core::error::{retry_after, BoxError, CircuitOpen};
/// use std::time::Duration;
///
/// let err: BoxError = CircuitOpen::new("db".into(), Some(Duration::from_secs(3))).into();
/// assert_eq!(retry_after(&*err), Some(Duration::from_secs(3)));
/// ```
pub fn retry_after(err: &(dyn StdError + 'static)) -> Option<Duration> {
    chain(err).find_map(|e| {
        if let Some(e) = e.downcast_ref::<CircuitOpen>() {
            e.retry_after()
        } else if let Some(e) = e.downcast_ref::<RateLimited>() {
            e.retry_after()
        } else if let Some(e) = e.downcast_ref::<BulkheadFull>() {
            e.retry_after()
        } else {
            None
        }
    })
}

/// `err`, then its sources, outermost first.
pub fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> + 'a {
    // A cycle in a hand-written `source()` must not hang us.
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source()).take(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn kind_of_walks_the_source_chain() {
        let inner: BoxError =
            RateLimited::new("api".into(), Some(Duration::from_millis(1500))).into();
        let outer: BoxError = Wrapper(inner).into();
        assert_eq!(kind_of(&*outer), Some(ErrorKind::RateLimited));
        assert_eq!(retry_after(&*outer), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn rate_limited_reads_limit_remaining_and_reset_from_its_quota() {
        let limited = RateLimited::new("api".into(), Some(Duration::from_secs(2)));
        assert_eq!(limited.quota(), None);
        assert_eq!(limited.limit(), None);
        assert_eq!(limited.remaining(), None);
        assert_eq!(limited.reset(), None);

        let quota = Quota::new(
            "per-client".into(),
            10,
            Duration::from_secs(1),
            0,
            Duration::from_millis(1500),
        );
        let limited = limited.with_quota(quota.clone());
        assert_eq!(limited.quota(), Some(&quota));
        assert_eq!(limited.quota().unwrap().policy(), "per-client");
        assert_eq!(limited.limit(), Some(10));
        assert_eq!(limited.remaining(), Some(0));
        assert_eq!(limited.reset(), Some(Duration::from_millis(1500)));
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn root_kind_skips_retry_wrapper() {
        let inner: BoxError = Elapsed::new("t".into(), Duration::from_secs(1)).into();
        let outer: BoxError = RetryExhausted::new("r".into(), 3, inner).into();
        assert_eq!(kind_of(&*outer), Some(ErrorKind::RetryExhausted));
        assert_eq!(root_kind_of(&*outer), Some(ErrorKind::Timeout));
        let plain: BoxError = RetryExhausted::new("r".into(), 3, "io".into()).into();
        assert_eq!(root_kind_of(&*plain), None);
    }

    #[test]
    fn displays_are_lowercase_and_name_the_instance() {
        let e = BulkheadFull::new("db".into(), BulkheadFullReason::WaitTimedOut);
        assert_eq!(
            e.to_string(),
            "bulkhead `db` is full: wait in queue timed out"
        );
        let e = Elapsed::new("upstream".into(), Duration::from_millis(250));
        assert_eq!(
            e.to_string(),
            "request timed out after 250ms (timeout `upstream`)"
        );
    }

    #[test]
    fn displays_leave_default_names_out() {
        let full = BulkheadFull::new("bulkhead".into(), BulkheadFullReason::QueueFull);
        assert_eq!(
            full.to_string(),
            "bulkhead is full: no free permit and no room to wait"
        );
        let open = CircuitOpen::new("circuit_breaker".into(), None);
        assert_eq!(open.to_string(), "circuit breaker is open");
        assert_eq!(
            CircuitOpen::new("payments".into(), None).to_string(),
            "circuit `payments` is open"
        );
        let elapsed = Elapsed::new("timeout".into(), Duration::from_millis(250));
        assert_eq!(elapsed.to_string(), "request timed out after 250ms");
        let limited = RateLimited::new("rate_limiter".into(), None);
        assert_eq!(limited.to_string(), "rate limit exceeded");
        assert_eq!(
            RateLimited::new("api".into(), None).to_string(),
            "rate limit `api` exceeded"
        );
        let exhausted = RetryExhausted::new("retry".into(), 3, "io".into());
        assert_eq!(exhausted.to_string(), "retry gave up after 3 attempts");
        assert_eq!(
            RetryExhausted::new("fetch".into(), 3, "io".into()).to_string(),
            "retry `fetch` gave up after 3 attempts"
        );
        let empty = BulkheadFull::new("".into(), BulkheadFullReason::WaitTimedOut);
        assert_eq!(
            empty.to_string(),
            "bulkhead is full: wait in queue timed out"
        );
    }
}
