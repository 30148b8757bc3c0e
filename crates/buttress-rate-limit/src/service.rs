//! The global limiter's service.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use buttress_core::error::BoxError;
use buttress_core::Quota;
use tower_service::Service;

use crate::algorithm::Verdict;
use crate::events::Backend;
use crate::future::{poll_below, release, wait_or_reject, Decide, Decision, ResponseFuture};
use crate::headers::Headers;
use crate::limiter::{quota, Limiter, Policy, TimeSource};
use crate::queue::Queue;
use crate::weigh::{Cost, Priority};

/// The cost and priority extractors of a limiter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Weigh<C, P> {
    pub(crate) cost: C,
    pub(crate) priority: P,
}

impl Decide for Limiter {
    type Key = ();

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn time(&self) -> &TimeSource {
        &self.time
    }

    fn queue(&self) -> &Arc<Queue<()>> {
        &self.queue
    }

    #[inline]
    fn decide(&self, _: &(), now: u64, cost: u64, priority: u8) -> Decision {
        let p = self.params.load();
        let keep = self.policy.keep(priority, &p);
        self.acquire(&p, now, cost, keep).into()
    }

    fn quota(&self, _: &(), now: u64) -> Quota {
        let p = self.params.load();
        quota(&self.policy.name, &p, self.levels(&p, now))
    }

    #[inline]
    fn count_rejected(&self) {
        Limiter::count_rejected(self);
    }
}

/// Limits the rate of calls to the inner service; made by
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// The decision is made in `call`, where the request (its cost, its
/// priority) is known, and nothing the inner service reserves is held for
/// a call the limiter may refuse. `poll_ready` asks the inner service: if
/// it is ready at once (a bulkhead's free permit), an admitted call is
/// made on it at once, and a refused one gives back what it reserved; if
/// it is not (a full bulkhead's queue), what it started is dropped,
/// `poll_ready` answers ready all the same, and an admitted call waits for
/// the inner service in its response future. So a call over the limit is
/// refused at once and never takes a bulkhead's permit or queue place. A
/// rejected call fails with [`RateLimited`](buttress_core::RateLimited)
/// without reaching the inner service; one that may wait keeps a clone of
/// the inner service and its request in its response future until its
/// turn, then makes the clone ready and calls it. That is why the inner
/// service must be `Clone` (as for tower's `Retry`); by tower's contract a
/// clone starts with nothing reserved, and dropping a service releases
/// what its `poll_ready` took.
pub struct RateLimit<S, C, P, H> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Limiter>,
    /// Inline, not behind an `Arc`: a clone (tower's `Retry` clones the
    /// service for every call) costs one reference count, not two.
    pub(crate) weigh: Weigh<C, P>,
    /// Admit every call, count nothing
    /// ([`RateLimitLayer::pass_through`](crate::RateLimitLayer::pass_through)).
    pub(crate) pass_through: bool,
    /// Whether `poll_ready` left `inner` ready (see
    /// `future::poll_below`).
    pub(crate) ready: bool,
    pub(crate) _headers: PhantomData<fn() -> H>,
}

impl<S, C, P, H> RateLimit<S, C, P, H> {
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

impl<S: Clone, C: Clone, P: Clone, H> Clone for RateLimit<S, C, P, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            weigh: self.weigh.clone(),
            pass_through: self.pass_through,
            ready: false,
            _headers: PhantomData,
        }
    }
}

impl<S: fmt::Debug, C, P, H> fmt::Debug for RateLimit<S, C, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.policy.name)
            .finish()
    }
}

impl<S, C, P, H, Req> Service<Req> for RateLimit<S, C, P, H>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Cost<Req>,
    P: Priority<Req>,
    H: Headers<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, Limiter, H>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.pass_through {
            return self.inner.poll_ready(cx).map_err(Into::into);
        }
        poll_below(&mut self.inner, &mut self.ready, cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if self.pass_through {
            return ResponseFuture::called(self.inner.call(req), Default::default());
        }
        let shared = &*self.shared;
        let cost = self.weigh.cost.cost(&req);
        let policy = &shared.policy;
        let mut priority = 0;
        if policy.uses_priority {
            priority = self.weigh.priority.priority(&req);
        }
        let now = shared.time.now();
        // Nobody can wait without a queue: no need to look at it.
        let denied = if !policy.can_wait || shared.queue.len() == 0 {
            let p = shared.params.load();
            let keep = policy.keep(priority, &p);
            match shared.acquire(&p, now, cost, keep) {
                Verdict::Allow => {
                    policy.emit_permitted(cost, std::time::Duration::ZERO, Backend::Local);
                    let quota = H::keep(|| quota(&policy.name, &p, shared.levels(&p, now)));
                    if std::mem::take(&mut self.ready) {
                        return ResponseFuture::called(self.inner.call(req), quota);
                    }
                    return ResponseFuture::readying(self.inner.clone(), req, quota);
                }
                Verdict::Deny(wait) => wait,
            }
        } else {
            // Someone waits: take a place behind them.
            Some(0)
        };
        // Refused or queued: nothing reserved below is held meanwhile.
        if self.ready {
            release(&mut self.inner, &mut self.ready);
        }
        wait_or_reject(
            &self.shared,
            &mut self.inner,
            req,
            (),
            now,
            cost,
            priority,
            denied,
        )
    }
}
