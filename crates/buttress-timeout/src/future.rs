//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::error::{BoxError, Elapsed};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::events::{Phase, TimeoutEvent};
use crate::layer::Link;
use crate::timer::Timer;

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
    /// nor touches the timer wheel. When the inner future completes in
    /// time, an armed timer is handed to its thread's pool for the next
    /// call (see the crate docs, [Timers](crate#timers)).
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
            timer: Option<Timer>,
            arm: Arm,
            link: Link,
            reuse: bool,
        },
        Elapsed {
            error: Option<Elapsed>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, arm: Arm, link: Link, reuse: bool) -> Self {
        Self {
            kind: Kind::Running {
                inner,
                timer: None,
                arm,
                link,
                reuse,
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
                timer,
                arm,
                link,
                reuse,
            } => {
                if let Poll::Ready(res) = inner.poll(cx) {
                    if let Some(timer) = timer.take() {
                        timer.release();
                    }
                    return Poll::Ready(res.map_err(Into::into));
                }
                if timer.is_none() {
                    let deadline = match *arm {
                        Arm::Lazy(d) => deadline_after(d),
                        Arm::At(at, _) => at,
                        Arm::Never => return Poll::Pending,
                    };
                    *timer = Some(Timer::at(deadline, *reuse));
                }
                if let Some(timer) = timer {
                    if timer.poll_elapsed(cx).is_ready() {
                        let timeout = arm.timeout();
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

/// `timeout` from now, saturated as `tokio::time::sleep` does: a deadline
/// too far away to represent becomes about thirty years from now.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}
