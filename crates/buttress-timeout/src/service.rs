use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, Elapsed};
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

use crate::events::{Phase, TimeoutEvent};
use crate::future::{Arm, ResponseFuture};
use crate::layer::Shared;
use crate::policy::{FixedTimeout, Prepared, RequestTimeout};

/// Applies a timeout to every call of the inner service; made by
/// [`TimeoutLayer`](crate::TimeoutLayer).
pub struct Timeout<S, P = FixedTimeout> {
    inner: S,
    shared: Arc<Shared>,
    policy: P,
    ready: ReadyWait,
    /// The limit as last read, so that a call costs one relaxed load and a
    /// compare instead of a nanoseconds-to-`Duration` division.
    cached: (u64, Duration),
}

/// The readiness budget (only with `include_ready`).
#[derive(Default)]
struct ReadyWait {
    /// Boxed because the service is not pinned; allocated at the first wait
    /// of this service and reused with `reset` afterwards.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// The deadline of the current budget, handed to the next call.
    deadline: Option<Instant>,
    /// The budget ran out: the next call fails without reaching `inner`.
    elapsed: bool,
}

impl<S, P> Timeout<S, P> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>, policy: P) -> Self {
        let cached = (shared.timeout_nanos(), shared.timeout());
        Self {
            inner,
            shared,
            policy,
            ready: ReadyWait::default(),
            cached,
        }
    }

    #[inline]
    fn configured(&mut self) -> Duration {
        let nanos = self.shared.timeout_nanos();
        if nanos != self.cached.0 {
            self.cached = (nanos, Duration::from_nanos(nanos));
        }
        self.cached.1
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

impl<S: Clone, P: Clone> Clone for Timeout<S, P> {
    /// A clone starts with no readiness budget of its own.
    fn clone(&self) -> Self {
        Self::from_shared(self.inner.clone(), self.shared.clone(), self.policy.clone())
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for Timeout<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("timeout", &self.shared.timeout())
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Timeout<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: RequestTimeout<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready.elapsed {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(res) = self.inner.poll_ready(cx) {
            self.ready.armed = false;
            return Poll::Ready(res.map_err(Into::into));
        }
        // A wait that is counting keeps its deadline whatever a
        // `reconfigure` does to `include_ready` meanwhile.
        if !self.ready.armed && !self.shared.include_ready() {
            return Poll::Pending;
        }
        if !self.ready.armed {
            self.ready.armed = true;
            let timeout = self.configured();
            self.ready.deadline = Instant::now().checked_add(timeout);
            if let Some(deadline) = self.ready.deadline {
                match &mut self.ready.sleep {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => self.ready.sleep = Some(Box::pin(sleep_until(deadline))),
                }
            }
        }
        if self.ready.deadline.is_some() {
            if let Some(sleep) = &mut self.ready.sleep {
                if sleep.as_mut().poll(cx).is_ready() {
                    self.ready.armed = false;
                    self.ready.elapsed = true;
                    let timeout = self.configured();
                    let shared = &self.shared;
                    crate::future::trace_elapsed(&shared.name, timeout, Phase::Ready);
                    shared.record_timeout(|| TimeoutEvent::TimedOut {
                        name: shared.name.clone(),
                        timeout,
                        phase: Phase::Ready,
                    });
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Poll::Pending
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        let configured = self.configured();
        // The usual call: no readiness budget ran or ran out (one branch,
        // no write).
        let ready_deadline = if self.ready.elapsed || self.ready.deadline.is_some() {
            if std::mem::take(&mut self.ready.elapsed) {
                self.ready.deadline = None;
                return ResponseFuture::elapsed(Elapsed::new(self.shared.name.clone(), configured));
            }
            self.ready.deadline.take()
        } else {
            None
        };
        let arm = match (self.policy.prepare(&mut req, configured), ready_deadline) {
            (Prepared::Configured, None) => Arm::Lazy(configured),
            (Prepared::Configured | Prepared::Unlimited, Some(at)) => Arm::At(at, configured),
            (Prepared::Unlimited, None) => Arm::Never,
            (Prepared::Deadline { at, timeout }, None) => Arm::At(at, timeout),
            (Prepared::Deadline { at, timeout }, Some(ready_at)) => {
                if ready_at < at {
                    Arm::At(ready_at, configured)
                } else {
                    Arm::At(at, timeout)
                }
            }
        };
        // Everything else first, the inner call last: its future is then
        // built where the response future keeps it, not copied there.
        let link = self.shared.link();
        ResponseFuture::new(self.inner.call(req), arm, link)
    }
}
