//! What a request costs and how urgent it is.

use std::fmt;

/// The permits a request takes (1 unless a cost extractor says otherwise).
///
/// Closures implement it through [`CostFn`]; set one with the builders'
/// `cost` method.
pub trait Cost<Req>: Send + Sync + 'static {
    /// Permits `req` takes; 0 is taken as 1.
    fn cost(&self, req: &Req) -> u64;
}

/// The priority of a request (0 unless a priority extractor says
/// otherwise): waiters with a higher priority are served first, and a
/// reserve may be kept for the highest ones.
///
/// Closures implement it through [`PriorityFn`]; set one with the builders'
/// `priority` method.
pub trait Priority<Req>: Send + Sync + 'static {
    /// The priority of `req`.
    fn priority(&self, req: &Req) -> u8;
}

/// Every request costs one permit and has priority 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unit;

impl<Req> Cost<Req> for Unit {
    #[inline]
    fn cost(&self, _: &Req) -> u64 {
        1
    }
}

impl<Req> Priority<Req> for Unit {
    #[inline]
    fn priority(&self, _: &Req) -> u8 {
        0
    }
}

/// A closure as a [`Cost`].
///
/// ```
/// use buttress_rate_limit::{Cost, CostFn};
///
/// // A gRPC-style weight: bulk calls cost ten permits.
/// let by_path = CostFn(|req: &http::Request<()>| if req.uri().path().ends_with("/Bulk") { 10 } else { 1 });
/// let req = http::Request::builder().uri("/svc/Bulk").body(()).unwrap();
/// assert_eq!(by_path.cost(&req), 10);
/// ```
#[derive(Clone, Copy)]
pub struct CostFn<F>(pub F);

impl<F> fmt::Debug for CostFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CostFn")
    }
}

impl<F, Req> Cost<Req> for CostFn<F>
where
    F: Fn(&Req) -> u64 + Send + Sync + 'static,
{
    #[inline]
    fn cost(&self, req: &Req) -> u64 {
        (self.0)(req).max(1)
    }
}

/// A closure as a [`Priority`].
///
/// ```
/// use buttress_rate_limit::{Priority, PriorityFn};
///
/// let by_header = PriorityFn(|req: &http::Request<()>| {
///     req.headers().get("x-priority").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0)
/// });
/// let req = http::Request::builder().header("x-priority", "3").body(()).unwrap();
/// assert_eq!(by_header.priority(&req), 3);
/// let bad = http::Request::builder().header("x-priority", "urgent!").body(()).unwrap();
/// assert_eq!(by_header.priority(&bad), 0);
/// ```
#[derive(Clone, Copy)]
pub struct PriorityFn<F>(pub F);

impl<F> fmt::Debug for PriorityFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PriorityFn")
    }
}

impl<F, Req> Priority<Req> for PriorityFn<F>
where
    F: Fn(&Req) -> u8 + Send + Sync + 'static,
{
    #[inline]
    fn priority(&self, req: &Req) -> u8 {
        (self.0)(req)
    }
}
