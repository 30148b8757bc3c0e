use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, CircuitOpen};
use buttress_core::{Classifier, Outcome};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::state::{Admission, Shared};

/// A circuit breaker around the inner service; made by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// Admission is decided in `poll_ready`. A rejection is not an error from
/// `poll_ready`: the service reports ready and the next call fails with
/// [`CircuitOpen`] without reaching the inner service (unless the layer was
/// built with `backpressure`, which reports `Pending` until the open wait is
/// over instead). Clones start with no admission of their own.
pub struct CircuitBreaker<S, C> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
    /// The admission `poll_ready` got, apart from the rejection ticket so
    /// that `call` moves two words into the response future.
    admitted: Option<Admitted>,
    ticket: Ticket,
    /// The backpressure timer, boxed because the service is not pinned.
    wake: Option<Pin<Box<Sleep>>>,
    /// Admit every call, record nothing
    /// ([`CircuitBreakerLayer::pass_through`](crate::CircuitBreakerLayer::pass_through)).
    pass_through: bool,
}

enum Ticket {
    None,
    Rejected(Option<Duration>),
}

const PROBE: u64 = 1;
const RECORDING: u64 = 2;
const FLAG_BITS: u32 = 2;

/// An admitted call: the breaker, the generation it was admitted in and
/// two flags. A half-open probe's slot is freed when this is dropped
/// without a verdict (dropped, cancelled, ignored).
pub(crate) struct Admitted {
    shared: Arc<Shared>,
    bits: u64,
}

impl Admitted {
    #[inline]
    pub(crate) fn new(shared: &Arc<Shared>, gen: u64, probe: bool, recording: bool) -> Self {
        Self {
            shared: shared.clone(),
            bits: (gen << FLAG_BITS)
                | if probe { PROBE } else { 0 }
                | if recording { RECORDING } else { 0 },
        }
    }

    /// Records the outcome of the call, which started at `start` (see
    /// `Shared::call_start`); a call admitted while the breaker was
    /// disabled records and reports nothing.
    #[inline]
    pub(crate) fn complete(&mut self, start: u64, outcome: Outcome) {
        if self.bits & RECORDING == 0 {
            return;
        }
        let gen = self.bits >> FLAG_BITS;
        if self
            .shared
            .complete(gen, self.bits & PROBE != 0, start, outcome)
        {
            // The verdict used the probe slot: it is not freed on drop.
            self.bits &= !PROBE;
        }
    }
}

impl Drop for Admitted {
    #[inline]
    fn drop(&mut self) {
        if self.bits & PROBE != 0 {
            self.shared.release_probe(self.bits >> FLAG_BITS);
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classifier: C, pass_through: bool) -> Self {
        Self {
            inner,
            shared,
            classifier,
            admitted: None,
            ticket: Ticket::None,
            wake: None,
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

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.shared.clone(),
            self.classifier.clone(),
            self.pass_through,
        )
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A rejection decided by an earlier `poll_ready` that no call
        // consumed (an outer layer answered that request itself) is not
        // handed to the next request: decide again, now. (With
        // backpressure, a rejection with a wait is waited out below.)
        // (`backpressure` is read only for a rejection: it can change at
        // run time, and the admitted path stays free of the load.)
        if matches!(self.ticket, Ticket::Rejected(wait) if wait.is_none() || !self.shared.backpressure())
        {
            self.ticket = Ticket::None;
        }
        loop {
            if self.admitted.is_some() {
                return self.inner.poll_ready(cx).map_err(Into::into);
            }
            match &self.ticket {
                Ticket::Rejected(Some(wait)) if self.shared.backpressure() => {
                    let at = Instant::now() + *wait;
                    let sleep = match &mut self.wake {
                        Some(sleep) => {
                            sleep.as_mut().reset(at);
                            sleep
                        }
                        None => self.wake.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        self.ticket = Ticket::None;
                        return Poll::Pending;
                    }
                    self.ticket = Ticket::None;
                }
                Ticket::Rejected(_) => return Poll::Ready(Ok(())),
                Ticket::None => {
                    if self.pass_through {
                        return self.inner.poll_ready(cx).map_err(Into::into);
                    }
                    if let Some(sleep) = &mut self.wake {
                        if !sleep.is_elapsed() && sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    match self.shared.admit() {
                        Admission::Permit {
                            gen,
                            probe,
                            recording,
                        } => {
                            self.admitted =
                                Some(Admitted::new(&self.shared, gen, probe, recording));
                        }
                        Admission::Reject(retry_after) => {
                            self.ticket = Ticket::Rejected(retry_after);
                        }
                    }
                }
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(admitted) = self.admitted.take() {
            let start = self.shared.call_start();
            return ResponseFuture::called(
                self.inner.call(req),
                self.classifier.clone(),
                admitted,
                start,
            );
        }
        if self.pass_through {
            return ResponseFuture::passed(self.inner.call(req));
        }
        match std::mem::replace(&mut self.ticket, Ticket::None) {
            Ticket::Rejected(retry_after) => {
                self.shared.count_not_permitted();
                ResponseFuture::rejected(CircuitOpen::new(self.shared.name.clone(), retry_after))
            }
            Ticket::None => panic!("poll_ready must be called (and return ready) before call"),
        }
    }
}
