//! Events of the bulkhead.

use std::sync::Arc;
use std::time::Duration;

use buttress_core::BulkheadFullReason;

/// What a bulkhead reports to its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BulkheadEvent {
    /// A call got a permit, after `waited` in the queue (zero when a
    /// permit was free).
    Permitted {
        /// The bulkhead's name.
        name: Arc<str>,
        /// Time spent in the queue.
        waited: Duration,
    },
    /// A call joined the wait queue.
    Queued {
        /// The bulkhead's name.
        name: Arc<str>,
        /// Callers in the queue, this one included.
        queued: usize,
    },
    /// A call was rejected.
    Rejected {
        /// The bulkhead's name.
        name: Arc<str>,
        /// Why.
        reason: BulkheadFullReason,
    },
    /// A call released its permit (completed, failed or dropped).
    Finished {
        /// The bulkhead's name.
        name: Arc<str>,
        /// How long the permit was held.
        held: Duration,
    },
}
