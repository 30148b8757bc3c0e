//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use buttress_core::error::{BoxError, CircuitOpen};
use buttress_core::Classifier;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::service::Probe;
use crate::state::Shared;

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
            shared: Arc<Shared>,
            classifier: C,
            probe: Probe,
            start: Option<Instant>,
        },
        Rejected {
            error: Option<CircuitOpen>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(
        inner: F,
        shared: Arc<Shared>,
        classifier: C,
        probe: Probe,
        start: Option<Instant>,
    ) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                shared,
                classifier,
                probe,
                start,
            },
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
                shared,
                classifier,
                probe,
                start,
            } => {
                let result = ready!(inner.poll(cx));
                let outcome = classifier.classify(&result);
                // One clock read serves both the slow-call check and the
                // time window; none when neither is configured.
                let end = (start.is_some() || shared.needs_clock()).then(Instant::now);
                let elapsed = start.zip(end).map(|(s, e)| e.saturating_duration_since(s));
                let recorded =
                    shared.record(probe.gen, probe.slot.is_some(), outcome, elapsed, end);
                if let Some(slot) = probe.slot.take() {
                    let mut slot = slot;
                    slot.used = recorded;
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(error.into()))
            }
        }
    }
}
