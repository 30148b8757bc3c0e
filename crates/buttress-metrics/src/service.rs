use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use buttress_core::Classifier;
use http::{Request, Response};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error_label::ErrorLabel;
use crate::future::{HttpResponseFuture, ResponseFuture};
use crate::labels;
use crate::layer::{Generic, HttpProtocol};
use crate::shared::{Kind, SeriesKey, Shared, NO_ROUTE};

/// The service a [`MetricsLayer`](crate::MetricsLayer) makes: measures
/// every call of `S`.
pub struct Metrics<S, P> {
    inner: S,
    shared: Arc<Shared>,
    protocol: P,
}

// ===== impl Metrics =====

impl<S, P> Metrics<S, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, protocol: P) -> Self {
        Self {
            inner,
            shared,
            protocol,
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

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

// Holds no per-call state: a clone is a clone of the inner service.
impl<S: Clone, P: Clone> Clone for Metrics<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            protocol: self.protocol.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Metrics<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .field("layer", &self.shared)
            .finish()
    }
}

impl<S, Req, C> Service<Req> for Metrics<S, Generic<C>>
where
    S: Service<Req>,
    C: Classifier<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let guard = self
            .shared
            .recording()
            .then(|| self.shared.start(SeriesKey::new(NO_ROUTE, 0)));
        ResponseFuture::new(self.inner.call(req), self.protocol.0.clone(), guard)
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for Metrics<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: ErrorLabel,
    P: HttpProtocol,
    ResBody: http_body::Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = HttpResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if !self.shared.recording() {
            return HttpResponseFuture::new(self.inner.call(req), None);
        }
        let key = match self.shared.kind {
            Kind::GrpcServer | Kind::GrpcClient => {
                SeriesKey::new(self.shared.route_id(req.uri().path()), 0)
            }
            Kind::HttpServer => SeriesKey::new(
                route_of(&self.shared, &req),
                labels::method_code(req.method()),
            ),
            _ => SeriesKey::new(NO_ROUTE, labels::method_code(req.method())),
        };
        let guard = self.shared.start(key);
        HttpResponseFuture::new(self.inner.call(req), Some(guard))
    }
}

/// The route: axum's `MatchedPath` (the route pattern, never the raw path,
/// which would make one series per URL).
#[cfg(feature = "axum")]
fn route_of<B>(shared: &Shared, req: &Request<B>) -> u32 {
    match req.extensions().get::<axum::extract::MatchedPath>() {
        Some(path) => shared.route_id(path.as_str()),
        None => NO_ROUTE,
    }
}

#[cfg(not(feature = "axum"))]
fn route_of<B>(_shared: &Shared, _req: &Request<B>) -> u32 {
    NO_ROUTE
}
