//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, RetryExhausted};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::Span;

use crate::backoff::draw;
use crate::events::{Cause, NotRetried, RetryEvent};
use crate::layer::{Allowed, Link, Settings};
use crate::policy::{is_connect_error, is_local_rejection, RetryPolicy, Verdict};
use crate::request::Replay;

pin_project! {
    /// Response future of [`Retry`](crate::Retry): runs the attempts, waits
    /// between them, and gives the caller the accepted result, the last
    /// response, or the last error.
    ///
    /// Dropping it cancels the attempt in flight and any retry to come.
    pub struct ResponseFuture<F, S, Q, X, P, T> {
        #[pin]
        state: State<F>,
        // `None` for a pass-through retry's one attempt (no larger: the
        // template's `Arc` is the niche).
        ctx: Option<Ctx<S, Q, X, P, T>>,
    }
}

/// The projected parts of a retrying call.
struct Parts<'a, F, S, Q, X, P, T> {
    state: Pin<&'a mut State<F>>,
    ctx: &'a mut Ctx<S, Q, X, P, T>,
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            fut: F,
        },
        // Boxed: a `Sleep` is over 100 bytes that every happy-path future
        // would otherwise carry and move; it is allocated only for a retry.
        Waiting {
            sleep: Pin<Box<Sleep>>,
        },
        Readying,
        Done,
    }
}

/// Everything but the pinned state.
struct Ctx<S, Q, X, P, T> {
    /// What a retry clones the service it calls from: shared with the
    /// `Retry` service, so the happy path holds one reference to it, not a
    /// clone of every layer below.
    template: Arc<Mutex<S>>,
    keep: Result<X, NotRetried>,
    /// What only a retry needs, allocated at the first one so that the
    /// happy path carries and moves none of it.
    retry: Option<Box<Retrying<S, Q, T>>>,
    policy: P,
    settings: Settings,
    link: Link,
    deadline: Option<Instant>,
    started: Option<Instant>,
    attempts: u32,
}

/// The state of a call that is being retried.
struct Retrying<S, Q, T> {
    /// The service the retries are sent to: a clone of the template,
    /// made ready before each of them.
    svc: Option<S>,
    /// The next attempt's request, once made.
    next: Option<Q>,
    /// The last result, kept only while the next request could not be made
    /// yet (its body was still held by the previous attempt), so that it
    /// can still be returned if it never can.
    last: Option<Result<T, BoxError>>,
    /// What made the last attempt fail.
    cause: Cause,
    /// The delay before the attempt in flight (decorrelated jitter grows
    /// from it).
    previous_delay: Duration,
    /// The retry taken from the budget for the next attempt, given back if
    /// that attempt is never made.
    allowed: Option<Allowed>,
    /// The span of the attempt in flight (see the crate docs,
    /// [Tracing](crate#tracing)): disabled unless a subscriber wants it.
    span: Span,
}

/// The `buttress.pattern` field of this crate's `tracing` events.
const PATTERN: &str = "retry";

/// The layer's name, for `tracing` fields.
fn name_of(link: &Link) -> &str {
    match link {
        Link::Quiet(name) => name,
        Link::Observed(shared) => &shared.name,
    }
}

/// Whole milliseconds, for `tracing` fields.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A cause's name in snake case (as its serde form), for `tracing` fields.
fn cause_str(cause: Cause) -> &'static str {
    match cause {
        Cause::Response => "response",
        Cause::Error => "error",
        Cause::ConnectError => "connect_error",
        Cause::Rejected => "rejected",
    }
}

/// A reason's name in snake case (as its serde form), for `tracing` fields.
fn reason_str(reason: NotRetried) -> &'static str {
    match reason {
        NotRetried::NonIdempotent => "non_idempotent",
        NotRetried::BodyTooLarge => "body_too_large",
        NotRetried::BodyInUse => "body_in_use",
        NotRetried::Deadline => "deadline",
        NotRetried::MaxElapsed => "max_elapsed",
        NotRetried::HintTooLong => "hint_too_long",
        NotRetried::Refused => "refused",
        NotRetried::NotReady => "not_ready",
    }
}

/// What to do after an attempt.
enum Step<T> {
    Return(Result<T, BoxError>),
    Retry(Duration),
}

impl<F, S, Q, X, P, T> ResponseFuture<F, S, Q, X, P, T> {
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn new(
        fut: F,
        template: Arc<Mutex<S>>,
        keep: Result<X, NotRetried>,
        policy: P,
        settings: Settings,
        link: Link,
        deadline: Option<Instant>,
        started: Option<Instant>,
    ) -> Self {
        Self {
            state: State::Called { fut },
            ctx: Some(Ctx {
                template,
                keep,
                retry: None,
                policy,
                settings,
                link,
                deadline,
                started,
                attempts: 0,
            }),
        }
    }

    /// The one attempt of a pass-through retry.
    #[inline]
    pub(crate) fn passed(fut: F) -> Self {
        Self {
            state: State::Called { fut },
            ctx: None,
        }
    }
}

impl<F, S, Q, X, P, T> fmt::Debug for ResponseFuture<F, S, Q, X, P, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attempts = self.ctx.as_ref().map_or(0, |ctx| ctx.attempts);
        f.debug_struct("ResponseFuture")
            .field("attempts", &attempts)
            .finish_non_exhaustive()
    }
}

impl<F, S, Q, X, P, T, E> Future for ResponseFuture<F, S, Q, X, P, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    S: Service<Q, Future = F, Response = T, Error = E> + Clone,
    P: RetryPolicy<T>,
    X: Replay<Request = Q>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(ctx) = this.ctx.as_mut() else {
            return match this.state.project() {
                StateProj::Called { fut } => fut.poll(cx).map_err(Into::into),
                _ => panic!("retry ResponseFuture polled after completion"),
            };
        };
        let mut this = Parts {
            state: this.state,
            ctx,
        };
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    // A retry's attempt runs in its own span; the first one
                    // in the caller's.
                    let result = match &this.ctx.retry {
                        None => ready!(fut.poll(cx)),
                        Some(retry) => {
                            let _entered = retry.span.enter();
                            ready!(fut.poll(cx))
                        }
                    };
                    let result = result.map_err(Into::into);
                    // The finished attempt may own the request body (a
                    // connection task, a hand-written future): drop it
                    // before the body is replayed.
                    this.state.set(State::Readying);
                    // What is decided about the attempt is logged in its
                    // span, which ends with the decision.
                    let attempt = this
                        .ctx
                        .retry
                        .as_mut()
                        .map(|retry| std::mem::replace(&mut retry.span, Span::none()));
                    let _entered = attempt.as_ref().map(Span::enter);
                    match decide(this.ctx, result) {
                        Step::Return(result) => {
                            this.state.set(State::Done);
                            return Poll::Ready(result);
                        }
                        Step::Retry(delay) if delay.is_zero() => {
                            // No delay, but a turn for the other tasks: a
                            // service that fails at once would otherwise be
                            // called again and again without this task
                            // ever yielding its worker thread (until
                            // `max_elapsed`, which a paused clock never
                            // reaches).
                            this.ctx.start_attempt(delay);
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        Step::Retry(delay) => this.state.set(State::Waiting {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        }),
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    let delay = this
                        .ctx
                        .retry
                        .as_ref()
                        .map_or(Duration::ZERO, |r| r.previous_delay);
                    this.ctx.start_attempt(delay);
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    // The attempt's span covers getting ready and the call.
                    let span = this.ctx.retry.as_ref().map(|r| r.span.clone());
                    let _entered = span.as_ref().map(Span::enter);
                    if this.ctx.retry.as_ref().is_some_and(|r| r.next.is_none()) {
                        if let Err(result) = this.ctx.make_next() {
                            this.state.set(State::Done);
                            return Poll::Ready(result);
                        }
                    }
                    let ctx = &mut *this.ctx;
                    let Some(retry) = ctx.retry.as_mut() else {
                        // Only a retry gets here: `decide` made its state.
                        this.state.set(State::Done);
                        return Poll::Ready(Err("retry: no retry state".into()));
                    };
                    let template = &ctx.template;
                    let svc = retry.svc.get_or_insert_with(|| {
                        // A panic while cloning elsewhere leaves the
                        // template as it was: clone it all the same.
                        S::clone(&template.lock().unwrap_or_else(|e| e.into_inner()))
                    });
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(this.ctx.not_ready(e.into())));
                    }
                    let Some(req) = retry.next.take() else {
                        // `make_next` leaves a request or ends the call.
                        this.state.set(State::Done);
                        return Poll::Ready(Err("retry: no request to send".into()));
                    };
                    let fut = svc.call(req);
                    this.state.set(State::Called { fut });
                }
                StateProj::Done => panic!("retry ResponseFuture polled after completion"),
            }
        }
    }
}

/// Decides what follows an attempt that ended with `result`: the accepted
/// result goes back here; the rest of the decision is out of line, so the
/// happy path stays small enough to inline.
#[inline]
fn decide<S, Q, X, P, T>(ctx: &mut Ctx<S, Q, X, P, T>, result: Result<T, BoxError>) -> Step<T>
where
    P: RetryPolicy<T>,
    X: Replay<Request = Q>,
{
    ctx.attempts += 1;
    // Replayability first: a request that cannot be sent again is neither
    // put to the policy nor charged to the budget.
    let cause = match ctx.replayable(&result) {
        Ok(cause) => cause,
        Err(reason) => return ctx.not_replayable(result, reason),
    };
    match ctx.policy.check(&result) {
        Verdict::Accept => ctx.accept(result),
        Verdict::Refuse => ctx.give_up(result, Some(NotRetried::Refused)),
        Verdict::Retry { after } => schedule(ctx, result, after, cause),
    }
}

/// What made an attempt fail, were it retried.
#[inline]
fn cause_of<T>(result: &Result<T, BoxError>) -> Cause {
    match result {
        Ok(_) => Cause::Response,
        Err(e) => error_cause(&**e),
    }
}

#[cold]
#[inline(never)]
fn error_cause(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Cause {
    if is_connect_error(e) {
        Cause::ConnectError
    } else if is_local_rejection(e) {
        Cause::Rejected
    } else {
        Cause::Error
    }
}

/// A failure the policy would retry: retry it, or say why not.
#[cold]
#[inline(never)]
fn schedule<S, Q, X, P, T>(
    ctx: &mut Ctx<S, Q, X, P, T>,
    result: Result<T, BoxError>,
    after: Option<Duration>,
    cause: Cause,
) -> Step<T>
where
    X: Replay<Request = Q>,
{
    let attempts = ctx.attempts;
    let retries = attempts - 1;
    if attempts >= ctx.settings.max_attempts {
        if attempts > 1 {
            tracing::warn!(
                buttress.pattern = PATTERN,
                buttress.name = name_of(&ctx.link),
                retry.attempt = attempts,
                retry.cause = cause_str(cause),
                "retries exhausted"
            );
        }
        ctx.link
            .emit(|name| RetryEvent::Exhausted { name, attempts });
        return ctx.end_failed(result, None, true);
    }
    let keep = match &mut ctx.keep {
        Ok(keep) => keep,
        Err(reason) => {
            let reason = *reason;
            return ctx.give_up(result, Some(reason));
        }
    };
    let settings = &ctx.settings;
    if after.is_some_and(|hint| hint > settings.max_delay) {
        return ctx.give_up(result, Some(NotRetried::HintTooLong));
    }
    let backoff = draw(
        &settings.backoff,
        &settings.jitter,
        retries + 1,
        settings.max_delay,
        ctx.retry
            .as_ref()
            .map_or(Duration::ZERO, |r| r.previous_delay),
        ctx.link.random(),
    );
    // Never shorter than the server's hint.
    let delay = backoff.max(after.unwrap_or(Duration::ZERO));
    if ctx.deadline.is_some() || ctx.started.is_some() {
        let now = Instant::now();
        let start_at = now.checked_add(delay);
        if let Some(deadline) = ctx.deadline {
            if start_at.is_none_or(|at| at >= deadline) {
                return ctx.give_up(result, Some(NotRetried::Deadline));
            }
        }
        if let (Some(started), Some(max)) = (ctx.started, settings.max_elapsed) {
            if start_at.is_none_or(|at| at.saturating_duration_since(started) > max) {
                return ctx.give_up(result, Some(NotRetried::MaxElapsed));
            }
        }
    }
    // The budget is charged before the body is replayed: a refused retry
    // must not take the body from the attempt in flight for nothing.
    let Some(allowed) = ctx.link.withdraw() else {
        tracing::debug!(
            buttress.pattern = PATTERN,
            buttress.name = name_of(&ctx.link),
            retry.attempt = attempts,
            retry.reason = "budget_exhausted",
            "not retried: the retry budget is spent"
        );
        ctx.link
            .emit(|name| RetryEvent::BudgetExhausted { name, attempts });
        return ctx.give_up(result, None);
    };
    let retry = ctx.retry.get_or_insert_with(|| {
        Box::new(Retrying {
            svc: None,
            next: None,
            last: None,
            cause,
            previous_delay: Duration::ZERO,
            allowed: None,
            span: Span::none(),
        })
    });
    retry.cause = cause;
    retry.allowed = Some(allowed);
    match keep.next(cause) {
        Ok(next) => retry.next = Some(next),
        // Still held by the previous attempt (hyper may hold a request body
        // a little after the response): try again after the delay, keeping
        // the result in case it never comes free.
        Err(NotRetried::BodyInUse) => retry.last = Some(result),
        Err(reason) => {
            ctx.link.refund(allowed);
            return ctx.give_up(result, Some(reason));
        }
    }
    ctx.link.retried();
    tracing::debug!(
        buttress.pattern = PATTERN,
        buttress.name = name_of(&ctx.link),
        retry.attempt = attempts + 1,
        retry.delay_ms = millis(delay),
        retry.cause = cause_str(cause),
        "retry scheduled"
    );
    ctx.link.emit(|name| RetryEvent::Scheduled {
        name,
        attempt: attempts + 1,
        delay,
        cause,
        hint: after,
    });
    if let Some(retry) = &mut ctx.retry {
        retry.previous_delay = delay;
    }
    Step::Retry(delay)
}

impl<S, Q, X, P, T> Ctx<S, Q, X, P, T>
where
    X: Replay<Request = Q>,
{
    /// What made the attempt that ended with `result` fail, were it
    /// retried, or why the request cannot be sent again whatever the
    /// policy says.
    #[inline]
    fn replayable(&self, result: &Result<T, BoxError>) -> Result<Cause, NotRetried> {
        let keep = self.keep.as_ref().map_err(|reason| *reason)?;
        let cause = cause_of(result);
        keep.replayable(cause)?;
        Ok(cause)
    }
}

impl<S, Q, X, P, T> Ctx<S, Q, X, P, T> {
    /// Gives the caller an accepted result.
    #[inline]
    fn accept(&mut self, result: Result<T, BoxError>) -> Step<T> {
        let retries = self.attempts - 1;
        self.link.finish(result.is_ok(), retries > 0, false);
        if retries > 0 && result.is_ok() {
            tracing::debug!(
                buttress.pattern = PATTERN,
                buttress.name = name_of(&self.link),
                retry.attempt = self.attempts,
                "succeeded after retries"
            );
            self.link
                .emit(|name| RetryEvent::Succeeded { name, retries });
        }
        Step::Return(result)
    }

    /// The result of a request that cannot be sent again, which the policy
    /// is not asked about: a response is accepted as it is, an error is
    /// not retried for `reason`.
    #[cold]
    #[inline(never)]
    fn not_replayable(&mut self, result: Result<T, BoxError>, reason: NotRetried) -> Step<T> {
        match result {
            Ok(_) => self.accept(result),
            Err(_) => self.give_up(result, Some(reason)),
        }
    }

    /// Ends the call with a failure that was not retried (further): the
    /// last response as it is, or the last error, wrapped in
    /// [`RetryExhausted`] when there were retries.
    #[cold]
    fn give_up(&mut self, result: Result<T, BoxError>, reason: Option<NotRetried>) -> Step<T> {
        self.end_failed(result, reason, false)
    }

    /// [`give_up`](Self::give_up), saying whether the attempts ran out.
    #[cold]
    fn end_failed(
        &mut self,
        result: Result<T, BoxError>,
        reason: Option<NotRetried>,
        exhausted: bool,
    ) -> Step<T> {
        let attempts = self.attempts;
        if let Some(reason) = reason {
            tracing::debug!(
                buttress.pattern = PATTERN,
                buttress.name = name_of(&self.link),
                retry.attempt = attempts,
                retry.reason = reason_str(reason),
                "not retried: {reason}"
            );
            self.link.emit(|name| RetryEvent::NotRetried {
                name,
                attempts,
                reason,
            });
        }
        self.link.finish(false, attempts > 1, exhausted);
        Step::Return(match result {
            Ok(res) => Ok(res),
            Err(e) if attempts > 1 => {
                Err(RetryExhausted::new(self.link.name(), attempts, e).into())
            }
            Err(e) => Err(e),
        })
    }
}

impl<S, Q, X, P, T> Ctx<S, Q, X, P, T>
where
    X: Replay<Request = Q>,
{
    /// Makes the next request after the delay, when the body was still in
    /// use at the decision; on failure, the call ends with the kept result.
    fn make_next(&mut self) -> Result<(), Result<T, BoxError>> {
        let Some(retry) = &mut self.retry else {
            return Err(Err("retry: no request to send".into()));
        };
        let last = retry.last.take();
        let made = match &mut self.keep {
            Ok(keep) => keep.next(retry.cause),
            Err(reason) => Err(*reason),
        };
        match (made, last) {
            (Ok(next), _) => {
                retry.next = Some(next);
                Ok(())
            }
            (Err(reason), Some(last)) => {
                if let Some(allowed) = retry.allowed.take() {
                    self.link.refund(allowed);
                }
                match self.give_up(last, Some(reason)) {
                    Step::Return(result) => Err(result),
                    Step::Retry(_) => unreachable!("give_up always returns"),
                }
            }
            (Err(_), None) => Err(Err("retry: no request to send".into())),
        }
    }
}

impl<S, Q, X, P, T> Ctx<S, Q, X, P, T> {
    /// The inner service failed while getting ready for a retry: the call
    /// ends with that error, wrapped like an exhausted retry's.
    fn not_ready(&mut self, error: BoxError) -> BoxError {
        let attempts = self.attempts;
        tracing::debug!(
            buttress.pattern = PATTERN,
            buttress.name = name_of(&self.link),
            retry.attempt = attempts + 1,
            retry.reason = reason_str(NotRetried::NotReady),
            "not retried: {}",
            NotRetried::NotReady
        );
        self.link.emit(|name| RetryEvent::NotRetried {
            name,
            attempts,
            reason: NotRetried::NotReady,
        });
        self.link.finish(false, true, false);
        RetryExhausted::new(self.link.name(), attempts, error).into()
    }
}

impl<S, Q, X, P, T> Ctx<S, Q, X, P, T> {
    /// Opens the span of the attempt about to start after `delay`: a child
    /// of the span current while this future is polled (the request's),
    /// and only if a subscriber wants it; a disabled span costs nothing.
    #[cold]
    fn start_attempt(&mut self, delay: Duration) {
        let attempt = self.attempts + 1;
        let Some(retry) = &mut self.retry else {
            return;
        };
        retry.span = tracing::info_span!(
            "buttress.retry.attempt",
            buttress.pattern = PATTERN,
            buttress.name = name_of(&self.link),
            retry.attempt = attempt,
            retry.delay_ms = millis(delay),
        );
    }
}
