//! Response futures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use buttress_core::error::BoxError;
use buttress_core::{Quota, RateLimited};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::algorithm::Verdict;
pub(crate) use crate::decide::{Decide, Decision};
use crate::events::{Backend, RateLimitEvent, RejectReason};
use crate::headers::Headers;
use crate::limiter::Policy;
use crate::queue::{Enrolled, Turn};

/// The rejection of a call and its accounting.
pub(crate) fn reject<D: Decide>(
    d: &D,
    key: &D::Key,
    now: u64,
    cost: u64,
    reason: RejectReason,
    retry_after: Option<u64>,
) -> BoxError {
    d.count_rejected();
    d.policy()
        .emit_rejected(cost, reason, retry_after, Backend::Local);
    let retry_after = retry_after.map(Duration::from_nanos);
    let mut quota = d.quota(key, now);
    if let Some(wait) = retry_after {
        // `t` of the `RateLimit` header says when this client may come
        // back: the same moment as `Retry-After`, not when the limiter is
        // full again.
        quota = Quota::new(
            d.policy().name.clone(),
            quota.limit(),
            quota.window(),
            quota.remaining(),
            wait,
        );
    }
    RateLimited::new(d.policy().name.clone(), retry_after)
        .with_quota(quota)
        .into()
}

/// The retry hint of a call refused because the queue is full: when the
/// limiter is full again (the waiters ahead will have been served by then),
/// at least 1 ms, so that it is never "come back now".
pub(crate) fn queue_full_hint<D: Decide>(d: &D, key: &D::Key, now: u64) -> u64 {
    let reset = d.quota(key, now).reset();
    u64::try_from(reset.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1_000_000)
}

/// `poll_ready` of a limiter, which decides in `call` (the key, cost and
/// priority come from the request): the service below is asked, but
/// nothing it would reserve is held for a call the limiter may refuse.
/// Ready at once (a bulkhead's free permit, the usual case): kept, and an
/// admitted call is made on it. Not ready (a bulkhead's queue): what it
/// started is dropped, the limiter answers ready, and an admitted call
/// waits for the service below in its response future. So a call over
/// its limit never takes a place in a queue below, and is refused at once.
#[inline]
pub(crate) fn poll_below<S, Req>(
    inner: &mut S,
    ready: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), BoxError>>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    match inner.poll_ready(cx) {
        Poll::Ready(Ok(())) => {
            *ready = true;
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
        Poll::Pending => {
            release(inner, ready);
            Poll::Ready(Ok(()))
        }
    }
}

/// Lets go of what the service below reserved for a call that will not
/// be made on it now (refused, queued, or not ready yet): the service is
/// replaced by a clone, which starts with nothing reserved, and the old
/// one is dropped (tower's contract: dropping a service releases what
/// `poll_ready` took).
#[cold]
#[inline(never)]
pub(crate) fn release<S: Clone>(inner: &mut S, ready: &mut bool) {
    *ready = false;
    let fresh = inner.clone();
    drop(std::mem::replace(inner, fresh));
}

/// A call that was denied, or that arrives while others wait: rejected at
/// once, or queued with a clone of the inner service (nothing reserved
/// below: the caller released it) and its request until its turn, when
/// the clone is made ready and called.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn wait_or_reject<S, Req, D, H>(
    shared: &Arc<D>,
    inner: &mut S,
    req: Req,
    key: D::Key,
    now: u64,
    cost: u64,
    priority: u8,
    wait: Option<u64>,
) -> ResponseFuture<S, Req, D, H>
where
    S: Service<Req> + Clone,
    D: Decide,
    H: Headers<S::Response>,
{
    let d = &**shared;
    let policy = d.policy();
    if let Some(reason) = wait_or_reason(policy, wait) {
        return ResponseFuture::rejected(reject(d, &key, now, cost, reason, wait));
    }
    let Some(place) = d.queue().join(&key, priority, policy.max_queue) else {
        let hint = queue_full_hint(d, &key, now);
        return ResponseFuture::rejected(reject(
            d,
            &key,
            now,
            cost,
            RejectReason::QueueFull,
            Some(hint),
        ));
    };
    tracing::trace!(
        buttress.pattern = "rate_limit",
        buttress.name = &*policy.name,
        rate_limit.priority = priority,
        "call waits for its permits"
    );
    policy.listeners.emit(|| RateLimitEvent::Queued {
        name: policy.name.clone(),
        queued: d.queue().len(),
        priority,
    });
    ResponseFuture::waiting(Wait {
        shared: shared.clone(),
        service: Some(inner.clone()),
        request: Some(req),
        enrolled: Enrolled {
            queue: d.queue().clone(),
            key,
            place,
            active: true,
        },
        cost,
        priority,
        joined: now,
        deadline: now.saturating_add(nanos(policy.max_wait)),
        sleep: None,
    })
}

/// `None` when a call denied with `wait` may wait for its permits, else
/// why it is rejected at once.
pub(crate) fn wait_or_reason(policy: &Policy, wait: Option<u64>) -> Option<RejectReason> {
    match wait {
        None => Some(RejectReason::OverCapacity),
        Some(_) if !policy.can_wait => Some(RejectReason::Exhausted),
        Some(w) if w > nanos(policy.max_wait) => Some(RejectReason::Exhausted),
        Some(_) => None,
    }
}

pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pin_project! {
    /// Response future of the rate limiters: the inner call, a call waiting
    /// for its permits, or a rejection.
    pub struct ResponseFuture<S, Req, D, H>
    where
        S: Service<Req>,
        D: Decide,
        H: Headers<S::Response>,
    {
        #[pin]
        kind: Kind<S, Req, D>,
        // The quota for the headers: `()` without them.
        quota: H::Kept,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req, D>
    where
        S: Service<Req>,
        D: Decide,
    {
        Called {
            #[pin]
            inner: S::Future,
        },
        Waiting {
            wait: Box<Wait<S, Req, D>>,
        },
        Rejected {
            error: Option<BoxError>,
        },
        // Admitted, the service below not ready yet.
        Readying {
            call: Box<Readying<S, Req>>,
        },
    }
}

/// An admitted call whose service below was not ready when it was
/// admitted: made ready, then called.
pub(crate) struct Readying<S, Req> {
    service: S,
    request: Option<Req>,
}

/// A call waiting in the queue, with the ready inner service and the
/// request it will get.
pub(crate) struct Wait<S, Req, D: Decide> {
    pub(crate) shared: Arc<D>,
    pub(crate) service: Option<S>,
    pub(crate) request: Option<Req>,
    pub(crate) enrolled: Enrolled<D::Key>,
    pub(crate) cost: u64,
    pub(crate) priority: u8,
    /// Nanoseconds (limiter time) when it joined and when it gives up.
    pub(crate) joined: u64,
    pub(crate) deadline: u64,
    pub(crate) sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, Req, D, H> ResponseFuture<S, Req, D, H>
where
    S: Service<Req>,
    D: Decide,
    H: Headers<S::Response>,
{
    #[inline]
    pub(crate) fn called(inner: S::Future, quota: H::Kept) -> Self {
        Self {
            kind: Kind::Called { inner },
            quota,
        }
    }

    /// An admitted call on a service below that is not ready yet.
    #[cold]
    #[inline(never)]
    pub(crate) fn readying(service: S, request: Req, quota: H::Kept) -> Self {
        Self {
            kind: Kind::Readying {
                call: Box::new(Readying {
                    service,
                    request: Some(request),
                }),
            },
            quota,
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
            quota: H::Kept::default(),
        }
    }

    pub(crate) fn waiting(wait: Wait<S, Req, D>) -> Self {
        Self {
            kind: Kind::Waiting {
                wait: Box::new(wait),
            },
            quota: H::Kept::default(),
        }
    }
}

impl<S, Req, D, H> fmt::Debug for ResponseFuture<S, Req, D, H>
where
    S: Service<Req>,
    D: Decide,
    H: Headers<S::Response>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Waiting { .. } => "waiting",
            Kind::Rejected { .. } => "rejected",
            Kind::Readying { .. } => "readying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Where a waiting call stands after one turn.
enum Step<S, Req> {
    Pending,
    /// Its permits granted: the service below (made ready next) and the
    /// request.
    Granted(S, Req),
    Reject(BoxError),
}

impl<S, Req, D: Decide> Wait<S, Req, D>
where
    S: Service<Req>,
{
    fn poll_turn<H: Headers<S::Response>>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> (Step<S, Req>, H::Kept) {
        let shared = self.shared.clone();
        let d = &*shared;
        loop {
            let now = d.time().now();
            let mut keys_full = false;
            let turn = self.enrolled.turn(cx.waker(), |key| {
                match d.decide(key, now, self.cost, self.priority) {
                    Decision::Allow => Verdict::Allow,
                    Decision::Deny(wait) => Verdict::Deny(wait),
                    Decision::KeysFull => {
                        keys_full = true;
                        Verdict::Deny(None)
                    }
                }
            });
            let wake_at = match turn {
                Turn::Acquired => {
                    d.policy().emit_permitted(
                        self.cost,
                        Duration::from_nanos(now.saturating_sub(self.joined)),
                        Backend::Local,
                    );
                    let quota = H::keep(|| d.quota(&self.enrolled.key, now));
                    let (Some(service), Some(request)) = (self.service.take(), self.request.take())
                    else {
                        unreachable!("a waiter is served once")
                    };
                    return (Step::Granted(service, request), quota);
                }
                Turn::Denied(wait) => {
                    let until = wait.map(|w| now.saturating_add(w));
                    match until {
                        Some(t) if t <= self.deadline => t,
                        _ => {
                            // It cannot be served before its deadline: no
                            // point waiting for the timeout.
                            self.enrolled.leave();
                            let reason = if keys_full {
                                RejectReason::KeysFull
                            } else if wait.is_none() {
                                RejectReason::OverCapacity
                            } else {
                                RejectReason::WaitTimedOut
                            };
                            let err = reject(d, &self.enrolled.key, now, self.cost, reason, wait);
                            return (Step::Reject(err), H::Kept::default());
                        }
                    }
                }
                Turn::Behind => {
                    if now >= self.deadline {
                        self.enrolled.leave();
                        let err = reject(
                            d,
                            &self.enrolled.key,
                            now,
                            self.cost,
                            RejectReason::WaitTimedOut,
                            None,
                        );
                        return (Step::Reject(err), H::Kept::default());
                    }
                    self.deadline
                }
                Turn::Gone => {
                    let err = reject(
                        d,
                        &self.enrolled.key,
                        now,
                        self.cost,
                        RejectReason::WaitTimedOut,
                        None,
                    );
                    return (Step::Reject(err), H::Kept::default());
                }
            };
            let at = d.time().instant(wake_at);
            let sleep = match &mut self.sleep {
                Some(sleep) => {
                    sleep.as_mut().reset(at);
                    sleep
                }
                slot @ None => slot.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return (Step::Pending, H::Kept::default());
            }
        }
    }
}

impl<S, Req, D, H> Future for ResponseFuture<S, Req, D, H>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    D: Decide,
    H: Headers<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The admitted call, small enough to inline into the layer above;
        // a wait or a rejection out of line.
        let this = self.as_mut().project();
        if let KindProj::Called { inner } = this.kind.project() {
            let mut res = ready!(inner.poll(cx)).map_err(Into::into)?;
            H::add(&mut res, std::mem::take(this.quota));
            return Poll::Ready(Ok(res));
        }
        self.poll_other(cx)
    }
}

impl<S, Req, D, H> ResponseFuture<S, Req, D, H>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    D: Decide,
    H: Headers<S::Response>,
{
    #[inline(never)]
    fn poll_other(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        let mut this = self.project();
        loop {
            match this.kind.as_mut().project() {
                KindProj::Called { inner } => {
                    let mut res = ready!(inner.poll(cx)).map_err(Into::into)?;
                    H::add(&mut res, std::mem::take(this.quota));
                    return Poll::Ready(Ok(res));
                }
                KindProj::Rejected { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error));
                }
                KindProj::Readying { call } => {
                    if let Err(e) = ready!(call.service.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let request = call.request.take().expect("polled after completion");
                    let inner = call.service.call(request);
                    this.kind.set(Kind::Called { inner });
                }
                KindProj::Waiting { wait } => match wait.poll_turn::<H>(cx) {
                    (Step::Pending, _) => return Poll::Pending,
                    (Step::Granted(service, request), quota) => {
                        *this.quota = quota;
                        this.kind.set(Kind::Readying {
                            call: Box::new(Readying {
                                service,
                                request: Some(request),
                            }),
                        });
                    }
                    (Step::Reject(error), _) => {
                        this.kind.set(Kind::Rejected { error: Some(error) });
                    }
                },
            }
        }
    }
}
