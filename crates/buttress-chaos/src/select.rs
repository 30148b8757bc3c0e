//! Which requests the chaos layer may fault.
//!
//! A [`Selector`] is asked about each request, only while the layer is
//! switched on with a non-zero rate. Requests it does not select pass
//! through untouched and draw no random numbers, so they do not shift the
//! faults of the selected ones.

use std::collections::HashSet;
use std::fmt;

use buttress_core::{ConfigError, KeyExtractor};
use http::{Method, Request};

use crate::layer::KIND;

/// Decides whether a request may be faulted.
pub trait Selector<Req>: Send + Sync + 'static {
    /// `true` when `req` may be faulted.
    fn selects(&self, req: &Req) -> bool;
}

/// Every request (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct All;

impl<Req> Selector<Req> for All {
    #[inline]
    fn selects(&self, _: &Req) -> bool {
        true
    }
}

/// A closure as a selector.
///
/// ```
/// use buttress_chaos::select::{SelectFn, Selector};
///
/// let odd = SelectFn(|n: &u64| n % 2 == 1);
/// assert!(odd.selects(&3));
/// assert!(!odd.selects(&4));
/// ```
#[derive(Clone, Copy)]
pub struct SelectFn<F>(pub F);

impl<F> fmt::Debug for SelectFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SelectFn").finish_non_exhaustive()
    }
}

impl<Req, F> Selector<Req> for SelectFn<F>
where
    F: Fn(&Req) -> bool + Send + Sync + 'static,
{
    fn selects(&self, req: &Req) -> bool {
        (self.0)(req)
    }
}

/// HTTP requests by method and path.
///
/// A path ending in `/*` is a prefix: `/api/*` matches `/api` and every
/// path under `/api/`; any other path matches exactly. A route without a
/// method matches every method. No route at all selects every request
/// (so an empty route list in a config file means "no filter").
///
/// ```
/// use buttress_chaos::select::{Routes, Selector};
/// use http::{Method, Request};
///
/// let routes = Routes::new()
///     .route(Method::GET, "/users/*").unwrap()
///     .any_method("/health").unwrap();
/// let req = |m: Method, p: &str| Request::builder().method(m).uri(p).body(()).unwrap();
/// assert!(routes.selects(&req(Method::GET, "/users/7")));
/// assert!(routes.selects(&req(Method::GET, "/users")));
/// assert!(!routes.selects(&req(Method::POST, "/users/7")));
/// assert!(!routes.selects(&req(Method::GET, "/usersx")));
/// assert!(routes.selects(&req(Method::DELETE, "/health")));
/// assert_eq!(Routes::new().route(Method::GET, "users").unwrap_err().field(), "routes");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    method: Option<Method>,
    path: String,
    prefix: bool,
}

impl Route {
    fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        if self.prefix {
            // `/api/*` is stored as `/api`: match it and what is under it.
            path.strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        } else {
            path == self.path
        }
    }
}

impl Routes {
    /// No routes: every request is selected until one is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route for one method. The path must start with `/`.
    pub fn route(self, method: Method, path: &str) -> Result<Self, ConfigError> {
        self.push(Some(method), path)
    }

    /// Adds a route for every method. The path must start with `/`.
    pub fn any_method(self, path: &str) -> Result<Self, ConfigError> {
        self.push(None, path)
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// `true` when there is no route (every request is selected).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn push(mut self, method: Option<Method>, path: &str) -> Result<Self, ConfigError> {
        if !path.starts_with('/') {
            return Err(ConfigError::new(
                KIND,
                "routes",
                format!("path `{path}` must start with `/`"),
            ));
        }
        let (path, prefix) = match path.strip_suffix("/*") {
            Some(p) => (p, true),
            None => (path, false),
        };
        if path.contains('*') {
            return Err(ConfigError::new(
                KIND,
                "routes",
                "`*` is only allowed as a final `/*` (a prefix)",
            ));
        }
        self.routes.push(Route {
            method,
            path: path.to_owned(),
            prefix,
        });
        Ok(self)
    }
}

impl<B> Selector<Request<B>> for Routes {
    fn selects(&self, req: &Request<B>) -> bool {
        self.routes.is_empty()
            || self
                .routes
                .iter()
                .any(|r| r.matches(req.method(), req.uri().path()))
    }
}

/// Requests whose key (from a `buttress_core` key extractor) is one of a
/// set.
///
/// ```
/// use buttress_chaos::select::{Keys, Selector};
/// use buttress_core::key::Header;
///
/// let tenants = Keys::new(
///     Header::new(http::HeaderName::from_static("x-tenant")),
///     [b"canary".to_vec()],
/// );
/// let req = |t: &str| http::Request::builder().header("x-tenant", t).body(()).unwrap();
/// assert!(tenants.selects(&req("canary")));
/// assert!(!tenants.selects(&req("acme")));
/// assert!(!tenants.selects(&http::Request::new(())));
/// ```
///
/// A request without a key is never selected.
pub struct Keys<X, K> {
    extractor: X,
    keys: HashSet<K>,
}

impl<X: fmt::Debug, K: fmt::Debug> fmt::Debug for Keys<X, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("extractor", &self.extractor)
            .field("keys", &self.keys)
            .finish()
    }
}

impl<X, K: std::hash::Hash + Eq> Keys<X, K> {
    /// Selects the requests whose key `extractor` gives is in `keys`.
    pub fn new(extractor: X, keys: impl IntoIterator<Item = K>) -> Self {
        Self {
            extractor,
            keys: keys.into_iter().collect(),
        }
    }
}

impl<Req, X> Selector<Req> for Keys<X, X::Key>
where
    X: KeyExtractor<Req>,
{
    fn selects(&self, req: &Req) -> bool {
        self.extractor
            .extract(req)
            .is_some_and(|k| self.keys.contains(&k))
    }
}
