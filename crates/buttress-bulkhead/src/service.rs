use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use buttress_core::error::BoxError;
use buttress_core::BulkheadFullReason;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::state::{Acquire, Permit, Shared};

/// Limits the concurrent calls of the inner service; made by
/// [`BulkheadLayer`](crate::BulkheadLayer).
///
/// The wait for a permit happens in `poll_ready`, so callers that drive
/// readiness (tower's `Buffer`, a `ServiceExt::ready` loop) get
/// backpressure. A rejection is not an error from `poll_ready`: the service
/// reports ready and the next call fails with
/// [`BulkheadFull`](crate::error::BulkheadFull) without reaching the inner
/// service, as tower's `LoadShed` does.
pub struct Bulkhead<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The permit `poll_ready` took, apart from the slow states so that
    /// `call` moves two words into the response future.
    permit: Option<Permit>,
    state: State,
    /// Admit every call, count nothing ([`BulkheadLayer::pass_through`](crate::BulkheadLayer::pass_through)).
    pass_through: bool,
}

enum State {
    Idle,
    Acquiring(Acquire),
    Rejected(BulkheadFullReason),
}

impl<S> Bulkhead<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>, pass_through: bool) -> Self {
        Self {
            inner,
            shared,
            permit: None,
            state: State::Idle,
            pass_through,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service (and releasing any
    /// permit it held).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Bulkhead<S> {
    /// A clone shares the bulkhead but starts without a permit.
    fn clone(&self) -> Self {
        Self::from_shared(self.inner.clone(), self.shared.clone(), self.pass_through)
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}

impl<S> Bulkhead<S> {
    /// `poll_ready` without a permit at hand: the queue, or a rejection.
    #[cold]
    fn poll_slow<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        loop {
            match &mut self.state {
                State::Rejected(_) => return Poll::Ready(Ok(())),
                State::Idle => {
                    if self.shared.try_acquire() {
                        self.permit = Some(Permit::new(&self.shared, None));
                        return self.inner.poll_ready(cx).map_err(Into::into);
                    }
                    self.state = State::Acquiring(Acquire::deferred(self.shared.clone()));
                }
                State::Acquiring(acquire) => match acquire.poll_acquire(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(permit)) => {
                        self.state = State::Idle;
                        self.permit = Some(permit);
                        return self.inner.poll_ready(cx).map_err(Into::into);
                    }
                    Poll::Ready(Err(reason)) => self.state = State::Rejected(reason),
                },
            }
        }
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let State::Rejected(_) = self.state {
            // Decided by an earlier `poll_ready` that no call consumed (an
            // outer layer answered that request itself): decide again, now,
            // rather than hand a stale rejection to the next request.
            self.state = State::Idle;
        }
        if self.permit.is_none() {
            if self.pass_through {
                return self.inner.poll_ready(cx).map_err(Into::into);
            }
            if let State::Idle = self.state {
                if self.shared.try_acquire() {
                    self.permit = Some(Permit::new(&self.shared, None));
                    return self.inner.poll_ready(cx).map_err(Into::into);
                }
            }
            return self.poll_slow(cx);
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(permit) = self.permit.take() {
            return ResponseFuture::called(self.inner.call(req), permit);
        }
        if self.pass_through {
            return ResponseFuture::passed(self.inner.call(req));
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Rejected(reason) => {
                // Counted when delivered: a rejection no call consumed is
                // decided again by the next `poll_ready`, not counted twice.
                self.shared.count_rejected(reason);
                ResponseFuture::rejected(self.shared.rejection(reason))
            }
            State::Idle | State::Acquiring(_) => {
                panic!("poll_ready must be called (and return ready) before call")
            }
        }
    }
}
