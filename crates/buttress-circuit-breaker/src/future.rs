//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use buttress_core::error::{BoxError, CircuitOpen, ErrorKind};
use buttress_core::{Classifier, Outcome};
use pin_project_lite::pin_project;

use crate::service::Admitted;

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker): records
    /// the outcome when the inner future completes. A future dropped before
    /// completion records nothing and frees its probe slot.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            inner: F,
            classifier: C,
            admitted: Admitted,
            // When the call started (see `Shared::call_start`); 0 when no
            // slow-call duration is configured.
            start: u64,
        },
        Rejected {
            error: Option<CircuitOpen>,
        },
        // A pass-through breaker's call: nothing to record.
        Passed {
            #[pin]
            inner: F,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(inner: F, classifier: C, admitted: Admitted, start: u64) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                classifier,
                admitted,
                start,
            },
        }
    }

    #[inline]
    pub(crate) fn passed(inner: F) -> Self {
        Self {
            kind: Kind::Passed { inner },
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                inner,
                classifier,
                admitted,
                start,
            } => {
                let result = ready!(inner.poll(cx));
                let outcome = classifier.classify(&result);
                let result = result.map_err(Into::into);
                let outcome = match &result {
                    Err(e) if outcome == Outcome::Failure => local_rejection(&**e, outcome),
                    _ => outcome,
                };
                admitted.complete(*start, outcome);
                Poll::Ready(result)
            }
            KindProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(error.into()))
            }
            KindProj::Passed { inner } => inner.poll(cx).map_err(Into::into),
        }
    }
}

/// A rejection by a buttress layer below the breaker (a rate limiter, a
/// bulkhead, another breaker) is the caller's own choice not to call, not
/// the dependency failing: it is `Ignored`, whatever the classifier says.
/// Out of line: only a failed call gets here.
#[cold]
#[inline(never)]
fn local_rejection(error: &(dyn std::error::Error + 'static), outcome: Outcome) -> Outcome {
    match buttress_core::error::kind_of(error) {
        Some(ErrorKind::RateLimited | ErrorKind::BulkheadFull | ErrorKind::CircuitOpen) => {
            Outcome::Ignored
        }
        _ => outcome,
    }
}
