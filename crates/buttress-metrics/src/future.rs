//! The response futures of [`Metrics`](crate::Metrics).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use buttress_core::{Classifier, HttpClassifier, Outcome};
use http::Response;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::error_label::ErrorLabel;
use crate::labels::{self, outcome_code};
use crate::shared::Guard;

pin_project! {
    /// The response future of a [`Generic`](crate::Generic) layer: records
    /// the call when it completes, or as `ignored` when it is dropped.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        classifier: C,
        guard: Option<Guard>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, classifier: C, guard: Option<Guard>) -> Self {
        Self {
            inner,
            classifier,
            guard,
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classifier<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(mut guard) = this.guard.take() {
            guard.end_outcome = outcome_code(this.classifier.classify(&result));
            guard.finish();
        }
        Poll::Ready(result)
    }
}

pin_project! {
    /// The response future of an HTTP or gRPC layer: an error ends the
    /// call at once; a response hands the measurement to its
    /// [`ResponseBody`], which ends it with the body.
    pub struct HttpResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Guard>,
    }
}

impl<F> HttpResponseFuture<F> {
    pub(crate) fn new(inner: F, guard: Option<Guard>) -> Self {
        Self { inner, guard }
    }
}

impl<F> fmt::Debug for HttpResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponseFuture")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for HttpResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    E: ErrorLabel,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut guard) = this.guard.take() else {
            // Not measured (no recorder when the call started), or polled
            // again after completion: pass the result through.
            return Poll::Ready(result.map(|res| res.map(ResponseBody::unmeasured)));
        };
        match result {
            Ok(res) => {
                if guard.kind().is_grpc() {
                    // A trailers-only response has its status in the headers.
                    match res.headers().get("grpc-status") {
                        Some(value) => {
                            let code = labels::grpc_code_of(value.as_bytes());
                            guard.key.status = code;
                            guard.end_outcome = outcome_code(labels::grpc_outcome(code));
                        }
                        None => guard.grpc_pending = true,
                    }
                } else {
                    guard.key.status = labels::status_class_code(res.status());
                    guard.end_outcome =
                        outcome_code(HttpClassifier::new().classify_status(res.status()));
                }
                Poll::Ready(Ok(res.map(|body| ResponseBody::new(body, guard))))
            }
            Err(err) => {
                guard.key.error = labels::error_code(err.error_kind());
                let mut outcome = Outcome::Failure;
                if guard.kind().is_grpc() {
                    if let Some(code) = err.grpc_code() {
                        let code = u8::try_from(code)
                            .ok()
                            .filter(|c| *c < labels::GRPC_OTHER)
                            .unwrap_or(labels::GRPC_OTHER);
                        guard.key.status = code;
                        outcome = labels::grpc_outcome(code);
                    }
                }
                guard.end_outcome = outcome_code(outcome);
                guard.finish();
                Poll::Ready(Err(err))
            }
        }
    }
}
