//! The response body of an [`HttpChaosLayer`](crate::HttpChaosLayer).

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use buttress_core::BoxError;
use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::InjectedFault;
use crate::events::FaultKind;
use crate::state::BodyFault;

pin_project! {
    /// A response body passed through, or cut by an injected fault.
    ///
    /// The fault strikes at a frame boundary: frames pass until
    /// `body_fault_after` bytes have gone through, and the next frame the
    /// inner body yields is replaced:
    ///
    /// - [`FaultKind::AbortedBody`]: by an
    ///   [`InjectedFault`] error, which
    ///   makes hyper abort the connection, so the client's body read fails.
    ///   A body that ends before the cut fails at its end instead.
    /// - [`FaultKind::TruncatedBody`]: by the end of the body. The size
    ///   hint stays the inner body's, so a response with a declared length
    ///   (`Content-Length`) ends short and the client's read fails; a
    ///   chunked response ends cleanly, short (what a parser of the
    ///   payload sees as malformed). A body that ends before the cut is
    ///   not changed.
    ///
    /// Passing through costs a branch per frame.
    pub struct ChaosBody<B> {
        #[pin]
        inner: B,
        fault: Option<BodyFault>,
        sent: u64,
        done: bool,
    }
}

impl<B> fmt::Debug for ChaosBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosBody")
            .field("fault", &self.fault.as_ref().map(|b| b.kind))
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl<B> ChaosBody<B> {
    pub(crate) fn new(inner: B, fault: Option<BodyFault>) -> Self {
        Self {
            inner,
            fault,
            sent: 0,
            done: false,
        }
    }

    /// The body fault this body carries, if any.
    pub fn fault(&self) -> Option<FaultKind> {
        self.fault.as_ref().map(|b| b.kind)
    }

    /// Consumes the wrapper, returning the inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for ChaosBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let frame = ready!(this.inner.poll_frame(cx));
        let Some(fault) = this.fault.as_ref() else {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        };
        match frame {
            Some(Ok(frame)) if *this.sent < fault.after => {
                if let Some(data) = frame.data_ref() {
                    *this.sent += data.remaining() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            // The cut: a frame at or past the limit, or the end before it.
            Some(Ok(_)) | None => {
                *this.done = true;
                match fault.kind {
                    FaultKind::AbortedBody => Poll::Ready(Some(Err(InjectedFault::new(
                        fault.name.clone(),
                        FaultKind::AbortedBody,
                    )
                    .into()))),
                    _ => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.fault {
            _ if self.done => true,
            None => self.inner.is_end_stream(),
            // An abort must be polled for, even after the last frame.
            Some(f) if f.kind == FaultKind::AbortedBody => false,
            Some(_) => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
