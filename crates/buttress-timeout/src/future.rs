//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, Elapsed};
use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::events::{Phase, TimeoutEvent};
use crate::layer::Link;

/// When the timer of one call goes off.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arm {
    /// `timeout` after the first poll that finds the inner future pending.
    Lazy(Duration),
    /// At a known instant, standing for the given timeout.
    At(Instant, Duration),
    /// Never.
    Never,
}

impl Arm {
    fn timeout(self) -> Duration {
        match self {
            Arm::Lazy(d) | Arm::At(_, d) => d,
            Arm::Never => Duration::MAX,
        }
    }
}

pin_project! {
    /// Response future of [`Timeout`](crate::Timeout).
    ///
    /// The timer is armed only if the inner future is not ready at its
    /// first poll, so a call that completes at once never reads the clock
    /// nor touches the timer wheel. An armed timer lives inside this
    /// future (no allocation) and is dropped as soon as the call ends,
    /// before the response is returned (see the crate docs,
    /// [Timers](crate#timers)).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Running {
            #[pin]
            inner: F,
            #[pin]
            sleep: Option<Sleep>,
            arm: Arm,
            link: Link,
        },
        Elapsed {
            error: Option<Elapsed>,
        },
    }
}

/// The `buttress.pattern` field of this crate's `tracing` events.
pub(crate) const PATTERN: &str = "timeout";

fn link_name(link: &Link) -> &str {
    match link {
        Link::Quiet(name) => name,
        Link::Observed(shared) => &shared.name,
    }
}

/// The `tracing` event of a timeout that fired: `debug`, as every
/// per-call decision (a slow dependency times out every call; the caller
/// sees the `Elapsed` error). `timeout.elapsed_ms` is the timeout that
/// elapsed: the timer fires once that long has passed.
#[cold]
pub(crate) fn trace_elapsed(name: &str, timeout: Duration, phase: Phase) {
    tracing::debug!(
        buttress.pattern = PATTERN,
        buttress.name = name,
        timeout.elapsed_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        timeout.phase = match phase {
            Phase::Call => "call",
            Phase::Ready => "ready",
        },
        "call timed out"
    );
}

/// `timeout` from now, saturated (as `tokio::time::sleep` does) to about
/// thirty years for a timeout too long to represent.
#[inline]
fn deadline_in(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn new(inner: F, arm: Arm, link: Link) -> Self {
        Self {
            kind: Kind::Running {
                inner,
                sleep: None,
                arm,
                link,
            },
        }
    }

    pub(crate) fn elapsed(error: Elapsed) -> Self {
        Self {
            kind: Kind::Elapsed { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Running {
                inner,
                mut sleep,
                arm,
                link,
            } => {
                // The inner future first: a response it produced is
                // returned whatever state the timer or its runtime is in.
                if let Poll::Ready(res) = inner.poll(cx) {
                    // Deregister now rather than when the future is
                    // dropped, which may be much later: a finished call
                    // keeps no timer (and no waker) in the driver.
                    sleep.set(None);
                    return Poll::Ready(res.map_err(Into::into));
                }
                if sleep.is_none() {
                    let at = match *arm {
                        Arm::Lazy(d) => deadline_in(d),
                        Arm::At(at, _) => at,
                        Arm::Never => return Poll::Pending,
                    };
                    sleep.set(Some(sleep_until(at)));
                }
                if let Some(timer) = sleep.as_mut().as_pin_mut() {
                    if timer.poll(cx).is_ready() {
                        sleep.set(None);
                        let timeout = arm.timeout();
                        trace_elapsed(link_name(link), timeout, Phase::Call);
                        let name = match link {
                            Link::Quiet(name) => Arc::from(*name),
                            Link::Observed(shared) => {
                                shared.record_timeout(|| TimeoutEvent::TimedOut {
                                    name: shared.name.clone(),
                                    timeout,
                                    phase: Phase::Call,
                                });
                                shared.name.clone()
                            }
                        };
                        return Poll::Ready(Err(Elapsed::new(name, timeout).into()));
                    }
                }
                Poll::Pending
            }
            KindProj::Elapsed { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(error.into()))
            }
        }
    }
}
