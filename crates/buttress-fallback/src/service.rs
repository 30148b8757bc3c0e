use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use buttress_core::BoxError;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::Inner;
use crate::marker::Mark;
use crate::source::FallbackSource;
use crate::trigger::Trigger;

/// Answers from a fallback when the inner service fails; made by
/// [`FallbackLayer`](crate::FallbackLayer).
///
/// The source, the trigger and the marker must be `Clone` (closures are,
/// when what they capture is): an unobserved layer whose parts are plain
/// copies gives each response future its own (see the crate docs, "Cost").
///
/// Readiness is the inner service's: an error from its `poll_ready` is not
/// a failed request and is returned as it is (buttress's own layers never
/// return one for a transient state: they fail the call instead, which the
/// fallback then sees).
pub struct Fallback<S, Src, T, M> {
    inner: S,
    policy: Arc<Inner<Src, T, M>>,
}

impl<S, Src, T, M> Fallback<S, Src, T, M> {
    pub(crate) fn new(inner: S, policy: Arc<Inner<Src, T, M>>) -> Self {
        Self { inner, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.policy.shared.name
    }
}

impl<S: Clone, Src, T, M> Clone for Fallback<S, Src, T, M> {
    /// A clone shares the layer's source, trigger and counters. The
    /// fallback holds no per-clone reservation, so there is nothing to
    /// reset.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.policy.clone())
    }
}

impl<S: fmt::Debug, Src, T, M> fmt::Debug for Fallback<S, Src, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("name", &self.policy.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req, Src, T, M> Service<Req> for Fallback<S, Src, T, M>
where
    S: Service<Req, Response = Src::Response>,
    S::Error: Into<BoxError>,
    Src: FallbackSource<Req> + Clone,
    T: Trigger<Src::Response> + Clone,
    M: Mark<Src::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Req, Src, T, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let kept = self.policy.source.keep(&req);
        ResponseFuture::new(
            self.inner.call(req),
            kept,
            self.policy.link::<Src::Response>(),
        )
    }
}
