//! What a keyed layer does with a request whose key cannot be extracted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// What a keyed layer does with a request whose key its extractor cannot
/// find: most often a server started without the connect info that
/// `ClientIp` and `PeerAddr` read (axum: serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` and enable
/// buttress's `axum` feature).
///
/// The default, [`Reject`](MissingKey::Reject), fails such requests with
/// [`KeyMissing`](crate::error::KeyMissing) (a 500 through the HTTP
/// mapping: the server, not the client, is misconfigured), so a
/// misconfiguration shows at once instead of putting every client in one
/// shared bucket. Either way the requests are counted and the first one is
/// logged as a warning (see [`MissingKeys`]).
///
/// ```
/// use buttress_core::key::MissingKey;
///
/// assert_eq!(MissingKey::default(), MissingKey::Reject);
/// assert_eq!(MissingKey::SharedBucket.as_str(), "shared_bucket");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum MissingKey {
    /// Fail the call with [`KeyMissing`](crate::error::KeyMissing) without
    /// calling the inner service (the default).
    #[default]
    Reject,
    /// Run the call in one extra instance shared by every request without
    /// a key, with the same limits as a key's.
    SharedBucket,
}

impl MissingKey {
    /// The policy's name in snake case, as in snapshots and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MissingKey::Reject => "reject",
            MissingKey::SharedBucket => "shared_bucket",
        }
    }
}

/// A keyed layer's [`MissingKey`] policy and its count of requests without
/// a key; the first one is logged as a `tracing` warning naming the layer,
/// the extractor and the usual fix.
///
/// ```
/// use buttress_core::key::{MissingKey, MissingKeys};
///
/// let missing = MissingKeys::new(MissingKey::Reject, "ClientIp");
/// assert_eq!(missing.note("per-client"), MissingKey::Reject);
/// missing.note("per-client");
/// assert_eq!(missing.count(), 2);
/// ```
#[derive(Debug)]
pub struct MissingKeys {
    policy: MissingKey,
    extractor: &'static str,
    count: AtomicU64,
    warned: AtomicBool,
}

impl MissingKeys {
    /// `policy` for requests that `extractor` (a type name, for the
    /// warning and the error) finds no key in.
    pub fn new(policy: MissingKey, extractor: &'static str) -> Self {
        Self {
            policy,
            extractor,
            count: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    /// Counts a request without a key of the layer `name`, warns about the
    /// first one, and returns what to do with it.
    pub fn note(&self, name: &str) -> MissingKey {
        self.count.fetch_add(1, Relaxed);
        if !self.warned.load(Relaxed) && !self.warned.swap(true, Relaxed) {
            tracing::warn!(
                name,
                extractor = self.extractor,
                policy = self.policy.as_str(),
                "a request had no key; for a peer-address key behind axum, serve with \
                 into_make_service_with_connect_info::<SocketAddr>() and enable buttress's \
                 `axum` feature (further requests without a key are only counted)"
            );
        }
        self.policy
    }

    /// The policy.
    pub fn policy(&self) -> MissingKey {
        self.policy
    }

    /// The extractor's type name.
    pub fn extractor(&self) -> &'static str {
        self.extractor
    }

    /// Requests without a key so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}
