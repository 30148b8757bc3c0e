//! The response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use buttress_core::BoxError;
use http::StatusCode;
use pin_project_lite::pin_project;

use crate::error::{FallbackFailed, UnhealthyResponse};
use crate::layer::Link;
use crate::marker::{FallbackReason, FallbackUsed, Mark};
use crate::source::{Failure, FallbackSource};
use crate::trigger::Trigger;

pin_project! {
    /// Response future of [`Fallback`](crate::Fallback): the primary's
    /// call, then, if the trigger fires, the fallback's.
    ///
    /// Dropping it cancels whichever is in flight; a dropped call is
    /// counted nowhere.
    pub struct ResponseFuture<F, Req, Src, T, M>
    where
        Src: FallbackSource<Req>,
    {
        #[pin]
        state: State<F, Src::Future, Src::Kept>,
        link: Link<Src, T, M>,
        _req: PhantomData<fn(Req)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Fb, K> {
        Primary {
            #[pin]
            fut: F,
            // What the source keeps of the request, taken when the
            // fallback starts.
            kept: Option<K>,
        },
        // Boxed, with what triggered it: allocated only when the fallback
        // runs, so that a healthy call's future is the primary's and a
        // few words, however large the fallback's future is.
        Fallback {
            running: Option<(Pin<Box<Fb>>, Original)>,
        },
    }
}

/// What triggered the fallback, kept as the source of a
/// [`FallbackFailed`].
enum Original {
    Error(BoxError, FallbackReason),
    Response(Option<StatusCode>),
}

impl Original {
    fn reason(&self) -> FallbackReason {
        match self {
            Original::Error(_, reason) => *reason,
            Original::Response(_) => FallbackReason::Response,
        }
    }

    fn into_error(self) -> BoxError {
        match self {
            Original::Error(e, _) => e,
            Original::Response(status) => UnhealthyResponse::new(status).into(),
        }
    }
}

impl<F, Req, Src, T, M> ResponseFuture<F, Req, Src, T, M>
where
    Src: FallbackSource<Req>,
{
    #[inline]
    pub(crate) fn new(fut: F, kept: Src::Kept, link: Link<Src, T, M>) -> Self {
        Self {
            state: State::Primary {
                fut,
                kept: Some(kept),
            },
            link,
            _req: PhantomData,
        }
    }
}

impl<F, Req, Src, T, M> fmt::Debug for ResponseFuture<F, Req, Src, T, M>
where
    Src: FallbackSource<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("name", &self.link.name())
            .field(
                "fallback_running",
                &matches!(self.state, State::Fallback { .. }),
            )
            .finish()
    }
}

impl<F, E, Req, Src, T, M> Future for ResponseFuture<F, Req, Src, T, M>
where
    F: Future<Output = Result<Src::Response, E>>,
    E: Into<BoxError>,
    Src: FallbackSource<Req>,
    T: Trigger<Src::Response>,
    M: Mark<Src::Response>,
{
    type Output = Result<Src::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { fut, kept } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let link = &*this.link;
                    if !link.trigger().triggers(&result) {
                        link.primary();
                        return Poll::Ready(result);
                    }
                    let failure = match result {
                        Ok(res) => Failure::Response(res),
                        Err(e) => Failure::Error(e),
                    };
                    let reason = FallbackReason::of(&failure);
                    let kept = kept.take().expect("polled after completion");
                    let fallback = link.source().fallback(kept, &failure);
                    let original = match failure {
                        Failure::Error(e) => Original::Error(e, reason),
                        Failure::Response(res) => Original::Response(link.marker().status(&res)),
                    };
                    this.state.set(State::Fallback {
                        running: Some((Box::pin(fallback), original)),
                    });
                }
                StateProj::Fallback { running } => {
                    let (fut, _) = running.as_mut().expect("polled after completion");
                    let result = ready!(fut.as_mut().poll(cx));
                    let link = &*this.link;
                    let (_, original) = running.take().expect("polled after completion");
                    let reason = original.reason();
                    return Poll::Ready(match result {
                        Ok(mut res) => {
                            let used = FallbackUsed::new(link.name_arc(), reason);
                            link.marker().mark(&mut res, &used);
                            link.used(reason);
                            Ok(res)
                        }
                        Err(e) => {
                            link.failed(reason, &*e);
                            Err(FallbackFailed::new(
                                link.name_arc(),
                                reason,
                                e,
                                original.into_error(),
                            )
                            .into())
                        }
                    });
                }
            }
        }
    }
}
