use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, CircuitOpen};
use buttress_core::Classifier;
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
    backpressure: bool,
    ticket: Ticket,
    /// The probe slot of a half-open admission, apart from the ticket so
    /// that the ticket is a small `Copy` value: moving it into the response
    /// future then costs a few register moves on the closed path.
    slot: Option<ProbeSlot>,
    /// The backpressure timer, boxed because the service is not pinned.
    wake: Option<Pin<Box<Sleep>>>,
}

#[derive(Clone, Copy)]
enum Ticket {
    None,
    /// Admitted in generation `gen`; `probe` when the slot holds its
    /// half-open probe slot.
    Permit {
        gen: u64,
        probe: bool,
    },
    Rejected(Option<Duration>),
}

/// An admitted call: its generation and, for a half-open probe, the RAII
/// guard of its probe slot.
pub(crate) struct Probe {
    pub(crate) gen: u64,
    pub(crate) slot: Option<ProbeSlot>,
}

/// A half-open probe slot: freed on drop unless a verdict used it.
pub(crate) struct ProbeSlot {
    shared: Arc<Shared>,
    gen: u64,
    pub(crate) used: bool,
}

impl ProbeSlot {
    pub(crate) fn new(shared: Arc<Shared>, gen: u64) -> Self {
        Self {
            shared,
            gen,
            used: false,
        }
    }
}

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        if !self.used {
            self.shared.release_probe(self.gen);
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classifier: C, backpressure: bool) -> Self {
        Self {
            inner,
            shared,
            classifier,
            backpressure,
            ticket: Ticket::None,
            slot: None,
            wake: None,
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
            self.backpressure,
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
        loop {
            match &self.ticket {
                Ticket::Permit { .. } => return self.inner.poll_ready(cx).map_err(Into::into),
                Ticket::Rejected(Some(wait)) if self.backpressure => {
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
                    if let Some(sleep) = &mut self.wake {
                        if !sleep.is_elapsed() && sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    self.ticket = match self.shared.admit() {
                        Admission::Permit { gen, probe } => {
                            if probe {
                                self.slot = Some(ProbeSlot::new(self.shared.clone(), gen));
                            }
                            Ticket::Permit { gen, probe }
                        }
                        Admission::Reject(retry_after) => Ticket::Rejected(retry_after),
                    };
                }
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.ticket, Ticket::None) {
            Ticket::Permit { gen, probe } => {
                let probe = Probe {
                    gen,
                    slot: if probe { self.slot.take() } else { None },
                };
                let start = self
                    .shared
                    .settings
                    .slow_call_duration
                    .is_some()
                    .then(Instant::now);
                ResponseFuture::called(
                    self.inner.call(req),
                    self.shared.clone(),
                    self.classifier.clone(),
                    probe,
                    start,
                )
            }
            Ticket::Rejected(retry_after) => {
                ResponseFuture::rejected(CircuitOpen::new(self.shared.name.clone(), retry_after))
            }
            Ticket::None => panic!("poll_ready must be called (and return ready) before call"),
        }
    }
}
