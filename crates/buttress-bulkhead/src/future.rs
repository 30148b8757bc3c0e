//! Response futures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use buttress_core::error::{BoxError, BulkheadFull};
use pin_project_lite::pin_project;

use crate::state::Permit;

pin_project! {
    /// Response future of [`Bulkhead`](crate::Bulkhead): holds the permit
    /// until the inner future completes or is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            inner: F,
            permit: Option<Permit>,
        },
        Rejected {
            error: Option<BulkheadFull>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(inner: F, permit: Permit) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                permit: Some(permit),
            },
        }
    }

    /// A call of a pass-through bulkhead: no permit.
    pub(crate) fn passed(inner: F) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                permit: None,
            },
        }
    }

    pub(crate) fn rejected(error: BulkheadFull) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner, permit } => match inner.poll(cx) {
                Poll::Ready(res) => {
                    // Release now, not when the caller drops the future.
                    drop(permit.take());
                    Poll::Ready(res.map_err(Into::into))
                }
                Poll::Pending => Poll::Pending,
            },
            KindProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(error.into()))
            }
        }
    }
}
