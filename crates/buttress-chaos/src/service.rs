use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use buttress_core::BoxError;
use http::{Request, Response};
use tower_service::Service;

use crate::future::{HttpResponseFuture, ResponseFuture};
use crate::select::{All, Selector};
use crate::state::Shared;

/// The service made by [`ChaosLayer`](crate::ChaosLayer).
///
/// The fault is decided in `call`. A call that fails or hangs never
/// reaches the inner service; a delayed call reaches it at once (its
/// future is created in `call`, as the Service contract wants) and is
/// polled only after the delay, so a lazy inner future (an `async` block,
/// a hyper request) starts its work late. `poll_ready` is the inner
/// service's: capacity an inner layer reserved there for a call that then
/// fails or hangs here stays with the service until its next call or
/// its drop, as tower's contract allows.
pub struct Chaos<S, Sel = All> {
    inner: S,
    shared: Arc<Shared>,
    selector: Arc<Sel>,
}

/// The service made by [`HttpChaosLayer`](crate::HttpChaosLayer): as
/// [`Chaos`], and it wraps every response body in a
/// [`ChaosBody`](crate::body::ChaosBody).
pub struct HttpChaos<S, Sel = All> {
    inner: S,
    shared: Arc<Shared>,
    selector: Arc<Sel>,
}

macro_rules! service_common {
    ($service:ident) => {
        impl<S, Sel> $service<S, Sel> {
            pub(crate) fn new(inner: S, shared: Arc<Shared>, selector: Arc<Sel>) -> Self {
                Self {
                    inner,
                    shared,
                    selector,
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

            /// Consumes the layer's service, returning the inner one.
            pub fn into_inner(self) -> S {
                self.inner
            }
        }

        // By hand: the selector need not be `Clone`, it is shared.
        impl<S: Clone, Sel> Clone for $service<S, Sel> {
            fn clone(&self) -> Self {
                Self {
                    inner: self.inner.clone(),
                    shared: self.shared.clone(),
                    selector: self.selector.clone(),
                }
            }
        }

        impl<S: fmt::Debug, Sel> fmt::Debug for $service<S, Sel> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($service))
                    .field("inner", &self.inner)
                    .field("chaos", &self.shared)
                    .finish()
            }
        }
    };
}

service_common!(Chaos);
service_common!(HttpChaos);

impl<S, Sel, Req> Service<Req> for Chaos<S, Sel>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Sel: Selector<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if self.shared.armed() {
            return self.call_armed(req);
        }
        ResponseFuture::pass(self.inner.call(req))
    }
}

impl<S, Sel> Chaos<S, Sel> {
    /// The call of a switched-on layer, out of line so that the call of
    /// a layer that is off stays a load and a branch.
    #[inline(never)]
    fn call_armed<Req>(&mut self, req: Req) -> ResponseFuture<S::Future>
    where
        S: Service<Req>,
        Sel: Selector<Req>,
    {
        if !self.selector.selects(&req) {
            return ResponseFuture::pass(self.inner.call(req));
        }
        let decision = self.shared.decide();
        // A generic layer is built with body rates of zero: no body fault
        // is ever drawn for it.
        let (future, _body) =
            ResponseFuture::decided(decision, &self.shared.name, || self.inner.call(req));
        future
    }
}

impl<S, Sel, ReqB, ResB> Service<Request<ReqB>> for HttpChaos<S, Sel>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    Sel: Selector<Request<ReqB>>,
{
    type Response = Response<crate::body::ChaosBody<ResB>>;
    type Error = BoxError;
    type Future = HttpResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.shared.armed() {
            return self.call_armed(req);
        }
        HttpResponseFuture::new(ResponseFuture::pass(self.inner.call(req)), None)
    }
}

impl<S, Sel> HttpChaos<S, Sel> {
    /// As `Chaos::call_armed`, with the body fault.
    #[inline(never)]
    fn call_armed<ReqB>(&mut self, req: Request<ReqB>) -> HttpResponseFuture<S::Future>
    where
        S: Service<Request<ReqB>>,
        Sel: Selector<Request<ReqB>>,
    {
        if !self.selector.selects(&req) {
            return HttpResponseFuture::new(ResponseFuture::pass(self.inner.call(req)), None);
        }
        let decision = self.shared.decide();
        let (future, body) =
            ResponseFuture::decided(decision, &self.shared.name, || self.inner.call(req));
        HttpResponseFuture::new(future, body)
    }
}
