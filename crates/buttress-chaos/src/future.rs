//! The response futures of the chaos services.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use buttress_core::BoxError;
use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::body::ChaosBody;
use crate::error::InjectedFault;
use crate::events::FaultKind;
use crate::state::{BodyFault, Decision, Outcome};

pin_project! {
    /// The response future of [`Chaos`](crate::Chaos): the inner future,
    /// or a delay before it, or an injected error, or a hang.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // No fault: the inner future.
        Inner { #[pin] fut: F },
        // A delay, then the inner future. The timer is boxed (only
        // delayed calls pay for it) so that the future of a call that
        // passes through stays as small as the inner one plus a tag.
        Delayed { sleep: Option<Pin<Box<Sleep>>>, #[pin] fut: F },
        // An injected error, after a delay or not.
        Fail { sleep: Option<Pin<Box<Sleep>>>, fault: InjectedFault },
        // Pending until dropped.
        Hang,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "inner",
            State::Delayed { .. } => "delayed",
            State::Fail { .. } => "fail",
            State::Hang => "hang",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn pass(fut: F) -> Self {
        Self {
            state: State::Inner { fut },
        }
    }

    /// The future for a decided call, calling the inner service (`call`)
    /// only when the call is to reach it; and the body fault, if any.
    pub(crate) fn decided(
        decision: Decision,
        name: &Arc<str>,
        call: impl FnOnce() -> F,
    ) -> (Self, Option<BodyFault>) {
        // Made only for the calls that wait: a hang has no use for it.
        let sleep = || decision.latency.map(|d| Box::pin(tokio::time::sleep(d)));
        let (state, body) = match decision.outcome {
            Outcome::Error => (
                State::Fail {
                    sleep: sleep(),
                    fault: InjectedFault::new(name.clone(), FaultKind::Error),
                },
                None,
            ),
            Outcome::Hang => (State::Hang, None),
            outcome => {
                let body = match outcome {
                    Outcome::Body(b) => Some(b),
                    _ => None,
                };
                let fut = call();
                let state = match sleep() {
                    Some(sleep) => State::Delayed {
                        sleep: Some(sleep),
                        fut,
                    },
                    None => State::Inner { fut },
                };
                (state, body)
            }
        };
        (Self { state }, body)
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
        match self.project().state.project() {
            StateProj::Inner { fut } => fut.poll(cx).map_err(Into::into),
            StateProj::Delayed { sleep, fut } => {
                if let Some(delay) = sleep {
                    ready!(delay.as_mut().poll(cx));
                    *sleep = None;
                }
                fut.poll(cx).map_err(Into::into)
            }
            StateProj::Fail { sleep, fault } => {
                if let Some(delay) = sleep {
                    ready!(delay.as_mut().poll(cx));
                    *sleep = None;
                }
                // Cloning the fault (an `Arc` and a kind) keeps a future
                // polled again after completion harmless.
                Poll::Ready(Err(fault.clone().into()))
            }
            // Never woken: a timeout (or the caller dropping it) ends it.
            StateProj::Hang => Poll::Pending,
        }
    }
}

pin_project! {
    /// The response future of [`HttpChaos`](crate::HttpChaos): as
    /// [`ResponseFuture`], and the response body wrapped in a
    /// [`ChaosBody`].
    pub struct HttpResponseFuture<F> {
        #[pin]
        inner: ResponseFuture<F>,
        body: Option<BodyFault>,
    }
}

impl<F> fmt::Debug for HttpResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponseFuture")
            .field("inner", &self.inner)
            .field("body_fault", &self.body.as_ref().map(|b| b.kind))
            .finish()
    }
}

impl<F> HttpResponseFuture<F> {
    #[inline]
    pub(crate) fn new(inner: ResponseFuture<F>, body: Option<BodyFault>) -> Self {
        Self { inner, body }
    }
}

impl<F, B, E> Future for HttpResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ChaosBody<B>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        Poll::Ready(res.map(|r| r.map(|b| ChaosBody::new(b, this.body.take()))))
    }
}
