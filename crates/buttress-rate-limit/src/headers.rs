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
    /// What a response future keeps for the headers: `()` (nothing, not
    /// even room for a quota) when none are added.
    type Kept: Default + Send + Sync + 'static;

    /// Keeps the quota `make` computes, or nothing (without calling it).
    fn keep(make: impl FnOnce() -> Quota) -> Self::Kept;

    /// Adds what was kept to a response.
    fn add(res: &mut Res, kept: Self::Kept);
}

/// Responses are left as the inner service made them.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl<Res> Headers<Res> for NoHeaders {
    type Kept = ();

    #[inline]
    fn keep(_: impl FnOnce() -> Quota) {}

    #[inline]
    fn add(_: &mut Res, _: ()) {}
}

/// Every `http::Response` gets `RateLimit-Policy` and `RateLimit` headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct WithHeaders;

impl<B> Headers<http::Response<B>> for WithHeaders {
    type Kept = Option<Quota>;

    fn keep(make: impl FnOnce() -> Quota) -> Option<Quota> {
        Some(make())
    }

    fn add(res: &mut http::Response<B>, kept: Option<Quota>) {
        if let Some(quota) = kept {
            buttress_core::response::ratelimit_headers(&quota, res.headers_mut());
        }
    }
}
