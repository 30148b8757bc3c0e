use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use buttress_core::BoxError;
use tokio::time::Instant;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::{Settings, Shared};
use crate::policy::{RetryErrors, RetryPolicy};
use crate::request::{CloneRequest, ReplayRequest};

/// Retries failed calls of the inner service; made by
/// [`RetryLayer`](crate::RetryLayer).
///
/// The first attempt goes to this service's inner instance, which
/// `poll_ready` made ready; the response future keeps a clone of it and
/// makes that clone ready again before every further attempt, so no
/// attempt is ever sent to a service that was not ready.
pub struct Retry<S, P = RetryErrors, R = CloneRequest> {
    inner: S,
    /// A clone of `inner` made when the layer wrapped it, shared by the
    /// response futures: a retry clones its service from it. Behind a
    /// mutex (locked only to clone it, at a retry) so that the service and
    /// its futures stay `Send` for a service that is `Send` but not `Sync`.
    template: Arc<Mutex<S>>,
    shared: Arc<Shared>,
    /// The layer's settings as last read, and their generation: a call
    /// compares the generation (one relaxed load) and reads the settings
    /// again, under the layer's lock, only after a run-time change.
    settings: Settings,
    generation: u64,
    policy: P,
    replay: R,
    /// One attempt, nothing kept, nothing counted
    /// ([`RetryLayer::pass_through`](crate::RetryLayer::pass_through)).
    pass_through: bool,
}

impl<S: Clone, P, R> Retry<S, P, R> {
    pub(crate) fn new(
        inner: S,
        shared: Arc<Shared>,
        policy: P,
        replay: R,
        pass_through: bool,
    ) -> Self {
        let (settings, mut generation) = shared.settings();
        if pass_through {
            // Never the layer's (see `call`).
            generation = u64::MAX;
        }
        Self {
            template: Arc::new(Mutex::new(inner.clone())),
            inner,
            shared,
            settings,
            generation,
            policy,
            replay,
            pass_through,
        }
    }
}

impl<S, P, R> Retry<S, P, R> {
    #[cold]
    #[inline(never)]
    fn refresh(&mut self) {
        (self.settings, self.generation) = self.shared.settings();
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
}

impl<S: Clone, P: Clone, R: Clone> Clone for Retry<S, P, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            template: self.template.clone(),
            shared: self.shared.clone(),
            settings: self.settings,
            generation: self.generation,
            policy: self.policy.clone(),
            replay: self.replay.clone(),
            pass_through: self.pass_through,
        }
    }
}

impl<S: fmt::Debug, P, R> fmt::Debug for Retry<S, P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("max_attempts", &self.settings.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<S, P, R> Retry<S, P, R> {
    /// The call of a pass-through retry, out of line so that the usual
    /// call's code stays as it was.
    #[inline(never)]
    fn call_once<Req>(
        &mut self,
        req: Req,
    ) -> ResponseFuture<S::Future, S, R::Request, R::Replay, P, S::Response>
    where
        R: ReplayRequest<Req>,
        S: Service<R::Request>,
    {
        ResponseFuture::passed(self.inner.call(self.replay.only(req)))
    }
}

impl<S, P, R, Req> Service<Req> for Retry<S, P, R>
where
    R: ReplayRequest<Req> + Clone,
    S: Service<R::Request> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, R::Request, R::Replay, P, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // A pass-through retry's generation never matches: its calls take
        // the branch of a run-time change, out of the usual call's way.
        if self.shared.generation() != self.generation {
            if self.pass_through {
                return self.call_once(req);
            }
            self.refresh();
        }
        let settings = self.settings;
        let deadline = self.replay.deadline(&req);
        let link = self.shared.link();
        link.deposit();
        let started = settings.max_elapsed.map(|_| Instant::now());
        let (first, keep) = self.replay.first(req);
        let fut = self.inner.call(first);
        ResponseFuture::new(
            fut,
            self.template.clone(),
            keep,
            self.policy.clone(),
            settings,
            link,
            deadline,
            started,
        )
    }
}
