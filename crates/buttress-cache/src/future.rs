//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use buttress_core::BoxError;
use pin_project_lite::pin_project;

/// A boxed miss path: the call to the inner service, single-flight, the
/// store and the stale answers. Only misses take it.
pub(crate) type Boxed<O> = Pin<Box<dyn Future<Output = Result<O, BoxError>> + Send>>;

pin_project! {
    /// The future of [`Cache`](crate::Cache).
    ///
    /// A hit is answered at once, without allocating (`Ready`); a request
    /// without a key goes to the inner service's own future (`Inner`);
    /// everything else (misses, waiting on another call, stale answers
    /// after a failure, Redis) runs in a boxed future.
    #[project = Proj]
    pub struct ResponseFuture<F, T, O> {
        #[pin]
        kind: Kind<F, T, O>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T, O> {
        Ready { out: Option<Result<O, BoxError>> },
        Inner { #[pin] fut: F, map: fn(T) -> O },
        Boxed { fut: Boxed<O> },
    }
}

impl<F, T, O> ResponseFuture<F, T, O> {
    pub(crate) fn ready(out: Result<O, BoxError>) -> Self {
        ResponseFuture {
            kind: Kind::Ready { out: Some(out) },
        }
    }

    pub(crate) fn inner(fut: F, map: fn(T) -> O) -> Self {
        ResponseFuture {
            kind: Kind::Inner { fut, map },
        }
    }

    pub(crate) fn boxed(fut: Boxed<O>) -> Self {
        ResponseFuture {
            kind: Kind::Boxed { fut },
        }
    }
}

impl<F, T, O> fmt::Debug for ResponseFuture<F, T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "ready",
            Kind::Inner { .. } => "inner",
            Kind::Boxed { .. } => "boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, T, E, O> Future for ResponseFuture<F, T, O>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<O, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { out } => {
                Poll::Ready(out.take().expect("ResponseFuture polled after completion"))
            }
            KindProj::Inner { fut, map } => {
                Poll::Ready(ready!(fut.poll(cx)).map(*map).map_err(Into::into))
            }
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}
