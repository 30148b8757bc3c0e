//! Events of the fallback layer.

use std::sync::Arc;

use crate::marker::FallbackReason;

/// What a fallback layer reports to its listeners: one event per call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackEvent {
    /// The primary's result went back to the caller: the trigger did not
    /// fire (a success, or an error the trigger lets through).
    Primary {
        /// The layer's name.
        name: Arc<str>,
    },
    /// The fallback answered in place of the primary.
    Used {
        /// The layer's name.
        name: Arc<str>,
        /// Why it ran.
        reason: FallbackReason,
    },
    /// The fallback failed too; the caller gets a
    /// [`FallbackFailed`](crate::error::FallbackFailed).
    Failed {
        /// The layer's name.
        name: Arc<str>,
        /// Why it ran.
        reason: FallbackReason,
        /// The fallback's own error, as text.
        error: String,
    },
}

impl FallbackEvent {
    /// The layer's name.
    pub fn name(&self) -> &str {
        match self {
            FallbackEvent::Primary { name }
            | FallbackEvent::Used { name, .. }
            | FallbackEvent::Failed { name, .. } => name,
        }
    }
}
