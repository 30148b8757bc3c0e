//! What the call path and the response futures need of a limiter (not
//! nameable outside the crate: the type parameter of the futures).

use std::hash::Hash;
use std::sync::Arc;

use buttress_core::Quota;

use crate::algorithm::Verdict;
use crate::limiter::{Policy, TimeSource};
use crate::queue::Queue;

/// A decision of a global or keyed limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Option<u64>),
    /// Keyed: no room for a new key.
    KeysFull,
}

impl From<Verdict> for Decision {
    #[inline]
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => Decision::Allow,
            Verdict::Deny(wait) => Decision::Deny(wait),
        }
    }
}

/// What the call path and the response future need of a limiter, global
/// or keyed.
pub trait Decide: Send + Sync + 'static {
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    fn policy(&self) -> &Policy;
    fn time(&self) -> &TimeSource;
    fn queue(&self) -> &Arc<Queue<Self::Key>>;
    /// Takes `cost` permits of `key` at `now` for a call of `priority`.
    fn decide(&self, key: &Self::Key, now: u64, cost: u64, priority: u8) -> Decision;
    /// The quota of `key` at `now`, for headers and rejections.
    fn quota(&self, key: &Self::Key, now: u64) -> Quota;
    /// Counts a rejection delivered to its caller.
    fn count_rejected(&self);
}
