//! Events of the chaos layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The kinds of fault the chaos layer injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The call fails with [`InjectedFault`](crate::error::InjectedFault)
    /// without reaching the inner service.
    Error,
    /// The call is delayed before it reaches the inner service.
    Latency,
    /// The call never completes until it is dropped (a timeout above
    /// ends it).
    Hang,
    /// HTTP: the response body fails part way with
    /// [`InjectedFault`](crate::error::InjectedFault).
    AbortedBody,
    /// HTTP: the response body ends early.
    TruncatedBody,
}

impl FaultKind {
    /// Every kind, in the order of [`FaultKind::index`].
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Error,
        FaultKind::Latency,
        FaultKind::Hang,
        FaultKind::AbortedBody,
        FaultKind::TruncatedBody,
    ];

    /// The kind as used in metrics labels, tracing fields and snapshots:
    /// `error`, `latency`, `hang`, `aborted_body`, `truncated_body`.
    ///
    /// ```
    /// use buttress_chaos::FaultKind;
    ///
    /// assert_eq!(FaultKind::AbortedBody.as_str(), "aborted_body");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            FaultKind::Error => "error",
            FaultKind::Latency => "latency",
            FaultKind::Hang => "hang",
            FaultKind::AbortedBody => "aborted_body",
            FaultKind::TruncatedBody => "truncated_body",
        }
    }

    /// The position of the kind in [`FaultKind::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a chaos layer reports to its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChaosEvent {
    /// A fault was chosen for a call. A call that is delayed and then
    /// fails reports two events, `Latency` first. A body fault is
    /// reported when it is chosen, with the response; it hits when the
    /// body is read.
    FaultInjected {
        /// The instance name.
        name: Arc<str>,
        /// Which fault.
        kind: FaultKind,
        /// The injected delay for [`FaultKind::Latency`]; zero for the
        /// other kinds.
        delay: Duration,
    },
    /// The layer was switched on or off through its handle.
    Switched {
        /// The instance name.
        name: Arc<str>,
        /// `true` when switched on.
        enabled: bool,
    },
}
