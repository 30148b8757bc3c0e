//! The IETF `RateLimit-Policy` / `RateLimit` headers on every response.

use buttress_core::Quota;

/// Whether, and how, a limiter's responses carry its quota.
///
/// [`NoHeaders`] (the default) leaves responses alone and works with any
/// response type; [`WithHeaders`] adds `RateLimit-Policy` and `RateLimit`
/// (draft-ietf-httpapi-ratelimit-headers) to every `http::Response` the
/// inner service returns. Rejections carry the quota either way, for the
/// 429 that the error-to-response layer makes of them.
pub trait Headers<Res>: Send + Sync + 'static {
    /// `false` when [`add`](Self::add) does nothing, so the quota is not
    /// even computed.
    const ENABLED: bool;

    /// Adds the quota to a response.
    fn add(res: &mut Res, quota: &Quota);
}

/// Responses are left as the inner service made them.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl<Res> Headers<Res> for NoHeaders {
    const ENABLED: bool = false;

    #[inline]
    fn add(_: &mut Res, _: &Quota) {}
}

/// Every `http::Response` gets `RateLimit-Policy` and `RateLimit` headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct WithHeaders;

impl<B> Headers<http::Response<B>> for WithHeaders {
    const ENABLED: bool = true;

    fn add(res: &mut http::Response<B>, quota: &Quota) {
        buttress_core::response::ratelimit_headers(quota, res.headers_mut());
    }
}
