//! Events of the cache.

use std::sync::Arc;
use std::time::Duration;

/// Why a stale entry was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StaleReason {
    /// The inner call failed or was rejected (an open breaker, a full
    /// bulkhead, a timeout), or its response was classified as a failure.
    Error,
    /// Stale-while-revalidate: served at once while a refresh runs in the
    /// background.
    Revalidating,
}

impl StaleReason {
    /// `error` or `revalidating`.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::Error => "error",
            StaleReason::Revalidating => "revalidating",
        }
    }
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotStored {
    /// The classifier called it a failure (an HTTP 5xx, a 429, ...).
    Failure,
    /// The status is not one a shared cache may store by default.
    Status,
    /// `Cache-Control: no-store` (or `no-cache`, which asks for a
    /// revalidation on every use; this cache revalidates stale entries
    /// only).
    NoStore,
    /// `Cache-Control: private`.
    Private,
    /// The response sets a cookie.
    SetCookie,
    /// `Vary` names a header that is not part of the key (or is `*`).
    Vary,
    /// The body is larger than `max_body`: it was streamed through.
    TooLarge,
    /// The body has trailers, which the store does not keep.
    Trailers,
    /// The entry weighs more than the whole cache may.
    TooHeavy,
    /// A ttl of zero (`max-age=0`, or the per-entry ttl function).
    ZeroTtl,
    /// An invalidation ran while the call was in flight: its answer may
    /// predate it.
    Invalidated,
    /// The store (Redis) did not take it.
    StoreUnavailable,
}

impl NotStored {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Failure => "failure",
            NotStored::Status => "status",
            NotStored::NoStore => "no_store",
            NotStored::Private => "private",
            NotStored::SetCookie => "set_cookie",
            NotStored::Vary => "vary",
            NotStored::TooLarge => "too_large",
            NotStored::Trailers => "trailers",
            NotStored::TooHeavy => "too_heavy",
            NotStored::ZeroTtl => "zero_ttl",
            NotStored::Invalidated => "invalidated",
            NotStored::StoreUnavailable => "store_unavailable",
        }
    }
}

/// What an invalidation covered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// One key (its text).
    Key(String),
    /// Every key whose text starts with this prefix.
    Prefix(String),
    /// Every entry.
    All,
}

/// What a cache reports to its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// A fresh entry answered the call.
    Hit {
        /// The cache's name.
        name: Arc<str>,
    },
    /// No fresh entry: this call leads a call to the inner service.
    Miss {
        /// The cache's name.
        name: Arc<str>,
    },
    /// The call waits for the result of a call already in flight for the
    /// same key (single-flight).
    Coalesced {
        /// The cache's name.
        name: Arc<str>,
    },
    /// A stale entry answered the call.
    StaleServed {
        /// The cache's name.
        name: Arc<str>,
        /// Its age (time since it was stored).
        age: Duration,
        /// Why.
        reason: StaleReason,
    },
    /// A stale entry was revalidated: the inner service answered `304
    /// Not Modified` to this cache's conditional request, and the entry,
    /// its headers updated, answered the call (HTTP caches). The call was
    /// counted as a miss too.
    Revalidated {
        /// The cache's name.
        name: Arc<str>,
    },
    /// A response was stored.
    Stored {
        /// The cache's name.
        name: Arc<str>,
        /// Its time to live.
        ttl: Duration,
        /// Its weight.
        weight: u32,
    },
    /// A response was not stored.
    NotStored {
        /// The cache's name.
        name: Arc<str>,
        /// Why.
        reason: NotStored,
    },
    /// Entries were invalidated through the handle (or by an unsafe HTTP
    /// method on their URI).
    Invalidated {
        /// The cache's name.
        name: Arc<str>,
        /// What.
        scope: Invalidation,
    },
    /// Entries were preloaded through the handle.
    Warmed {
        /// The cache's name.
        name: Arc<str>,
        /// How many were stored.
        entries: usize,
    },
    /// moka evicted an entry to stay within its bounds.
    Evicted {
        /// The cache's name.
        name: Arc<str>,
    },
    /// The store (Redis) failed: calls go to the inner service until it
    /// answers again. Sent once per outage.
    StoreUnavailable {
        /// The cache's name.
        name: Arc<str>,
        /// The error, as text.
        error: String,
    },
    /// The store (Redis) answers again.
    StoreRecovered {
        /// The cache's name.
        name: Arc<str>,
    },
}
