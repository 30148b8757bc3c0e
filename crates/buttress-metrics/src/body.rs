//! The response body of an HTTP or gRPC [`Metrics`](crate::Metrics)
//! service.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::labels::{self, outcome_code};
use crate::shared::Guard;
use buttress_core::Outcome;

pin_project! {
    /// A response body that ends its request's measurement when it ends:
    /// at its last frame (a gRPC response's `grpc-status` trailer gives
    /// the code), at an error (`error.type="body"`, a failure), or when it
    /// is dropped before its end (`outcome="ignored"`).
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<Guard>,
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: Guard) -> Self {
        // A body that is already over is never polled (hyper checks
        // `is_end_stream` first): the call ends with the headers.
        if inner.is_end_stream() {
            guard.finish();
            return Self::unmeasured(inner);
        }
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn unmeasured(inner: B) -> Self {
        Self { inner, guard: None }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(guard) = this.guard.as_mut() {
            match &frame {
                None => {}
                Some(Ok(frame)) => {
                    if let (true, Some(trailers)) = (guard.grpc_pending, frame.trailers_ref()) {
                        let code = trailers
                            .get("grpc-status")
                            .map_or(labels::GRPC_OTHER, |v| labels::grpc_code_of(v.as_bytes()));
                        guard.grpc_pending = false;
                        guard.key.status = code;
                        guard.end_outcome = outcome_code(labels::grpc_outcome(code));
                    }
                }
                Some(Err(_)) => {
                    guard.key.error = labels::BODY_ERROR;
                    guard.end_outcome = outcome_code(Outcome::Failure);
                    guard.grpc_pending = false;
                }
            }
            let ended = match &frame {
                None | Some(Err(_)) => true,
                Some(Ok(_)) => this.inner.is_end_stream(),
            };
            if ended {
                if let Some(guard) = this.guard.take() {
                    guard.finish();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
