//! [`HealthService`]: `/health/live`, `/health/ready` and `/health/startup`
//! as a tower service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::registry::HealthRegistry;
use crate::report::Probe;

/// The response future of [`HealthService`].
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static>>;

/// Serves the liveness, readiness and startup probes as JSON (the shape of
/// [`HealthReport`](crate::HealthReport)), 200 or 503.
///
/// It routes on the last path segment: `…/live` is liveness, `…/ready` is
/// readiness, `…/startup` is [startup](HealthRegistry::startup), anything
/// else 404; `GET` and `HEAD` only (else 405). So it
/// works mounted at `/health/live` and `/health/ready`, nested under
/// `/health` (axum's `nest_service`, which strips the prefix), or as the
/// whole service of a hyper server (Kubernetes: `startupProbe` on
/// `…/startup`, `livenessProbe` on `…/live`, `readinessProbe` on
/// `…/ready`). `Infallible`, `Clone`: an axum route as
/// is. Answers carry `Cache-Control: no-store`.
///
/// ```
/// use axum::Router;
/// use buttress_health::{Check, HealthRegistry, HealthService, Status};
///
/// let registry = HealthRegistry::builder()
///     .check(Check::new("db", || async { Status::Healthy }))
///     .build()
///     .unwrap();
/// let app: Router = Router::new()
///     .nest_service("/health", HealthService::new(registry.clone()));
/// # drop(app);
/// ```
#[derive(Debug, Clone)]
pub struct HealthService {
    registry: HealthRegistry,
}

impl HealthService {
    /// Serves `registry`'s probes.
    pub fn new(registry: HealthRegistry) -> Self {
        Self { registry }
    }

    /// The registry.
    pub fn registry(&self) -> &HealthRegistry {
        &self.registry
    }
}

impl HealthRegistry {
    /// A [`HealthService`] serving this registry's probes.
    pub fn service(&self) -> HealthService {
        HealthService::new(self.clone())
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

impl<B> tower_service::Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let probe = match req.uri().path().trim_end_matches('/').rsplit('/').next() {
            Some("live") => Probe::Liveness,
            Some("ready") => Probe::Readiness,
            Some("startup") => Probe::Startup,
            _ => return Box::pin(async { Ok(plain(StatusCode::NOT_FOUND, "not found\n")) }),
        };
        let head = req.method() == Method::HEAD;
        if !head && req.method() != Method::GET {
            return Box::pin(async {
                let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                res.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
                Ok(res)
            });
        }
        let registry = self.registry.clone();
        Box::pin(async move {
            let report = registry.report(probe).await;
            let body = if head {
                Bytes::new()
            } else {
                // Serializing a `serde_json::Value` cannot fail.
                Bytes::from(serde_json::to_vec(&report.to_json()).unwrap_or_default())
            };
            let mut res = Response::new(Full::new(body));
            *res.status_mut() = report.http_status();
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            Ok(res)
        })
    }
}
