//! The error the chaos layer injects.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::events::FaultKind;

/// An injected fault: the error of a call failed by [`FaultKind::Error`],
/// or of a response body cut by [`FaultKind::AbortedBody`].
///
/// Callers (and tests) downcast it to tell an injected failure from a
/// real one:
///
/// ```
/// use buttress_chaos::error::{is_injected, InjectedFault};
/// use buttress_chaos::FaultKind;
/// use buttress_core::BoxError;
///
/// let err: BoxError = InjectedFault::new("upstream".into(), FaultKind::Error).into();
/// let fault = err.downcast_ref::<InjectedFault>().unwrap();
/// assert_eq!((fault.name(), fault.kind()), ("upstream", FaultKind::Error));
/// assert_eq!(err.to_string(), "chaos `upstream` injected an error");
/// assert!(is_injected(&*err));
/// ```
///
/// It is deliberately *not* one of the rejections that
/// `buttress_core::error::kind_of` knows: it stands for a failure of the
/// dependency, so breakers, retries and classifiers must treat it as they
/// treat any upstream error. Use [`is_injected`] to find it in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    name: Arc<str>,
    kind: FaultKind,
}

impl InjectedFault {
    /// A fault of `kind` injected by the instance `name`.
    pub fn new(name: Arc<str>, kind: FaultKind) -> Self {
        Self { name, kind }
    }

    /// The name of the chaos instance that injected it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which fault: [`FaultKind::Error`] for a failed call,
    /// [`FaultKind::AbortedBody`] for a body cut with an error.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::AbortedBody => {
                write!(f, "chaos `{}` aborted the response body", self.name)
            }
            FaultKind::Error => write!(f, "chaos `{}` injected an error", self.name),
            kind => write!(f, "chaos `{}` injected a fault ({kind})", self.name),
        }
    }
}

impl StdError for InjectedFault {}

/// `true` when `err` or one of its sources is an [`InjectedFault`]
/// (found with `buttress_core::error::find`, which walks the `source()`
/// chain: through a `RetryExhausted`, a hyper body error, ...).
pub fn is_injected(err: &(dyn StdError + 'static)) -> bool {
    buttress_core::error::find::<InjectedFault>(err).is_some()
}
