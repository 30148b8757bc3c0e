//! The service, its two policies (keyed by a function, HTTP) and the
//! paths of a call.

use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::BoxError;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use crate::error::{SharedError, ValidatorMismatch};
use crate::events::{Invalidation, NotStored, StaleReason};
use crate::future::ResponseFuture;
use crate::http::{
    collect, CacheBody, CacheStatus, CachedResponse, Collected, Markers, Rules, Verdict,
};
use crate::key::{CacheKey, HttpKey, HttpKeyer};
use crate::shared::{FlightResult, Leading, Role, Shared};
use crate::store::Lookup;
use crate::validate;

mod sealed {
    pub trait Sealed {}
}

/// What a cache keys and stores: [`ByKey`] (a key function, the
/// responses themselves) or [`HttpPolicy`] (HTTP requests and responses).
/// Sealed.
pub trait Policy: sealed::Sealed + Send + Sync + 'static {
    /// The key type.
    type Key: CacheKey;
    /// What is stored.
    type Value: Clone + Send + Sync + 'static;
}

pub(crate) type Hook<V, R> = Arc<dyn Fn(&V) -> R + Send + Sync>;
pub(crate) type MarkHook<V> = Arc<dyn Fn(&mut V, CacheStatus) + Send + Sync>;

/// The policy of a cache keyed by a function of the request, storing the
/// responses themselves (`V` is the inner service's response).
pub struct ByKey<F, K, V> {
    pub(crate) key: F,
    pub(crate) cache_if: Option<Hook<V, bool>>,
    pub(crate) ttl_of: Option<Hook<V, Option<Duration>>>,
    pub(crate) mark: Option<MarkHook<V>>,
    pub(crate) _types: PhantomData<fn() -> (K, V)>,
}

impl<F, K, V> fmt::Debug for ByKey<F, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByKey")
            .field("cache_if", &self.cache_if.is_some())
            .field("ttl_of", &self.ttl_of.is_some())
            .field("mark", &self.mark.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, K, V> sealed::Sealed for ByKey<F, K, V> {}

impl<F, K, V> Policy for ByKey<F, K, V>
where
    F: Send + Sync + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    type Key = K;
    type Value = V;
}

/// The policy of an HTTP cache (see [`HttpCacheBuilder`](crate::HttpCacheBuilder)).
#[derive(Debug)]
pub struct HttpPolicy {
    pub(crate) keyer: HttpKeyer,
    pub(crate) rules: Rules,
    pub(crate) markers: Markers,
    pub(crate) max_body: usize,
    pub(crate) invalidate_on_unsafe: bool,
    /// The cache's name, for the errors made here.
    pub(crate) name: Arc<str>,
}

impl sealed::Sealed for HttpPolicy {}

impl Policy for HttpPolicy {
    type Key = HttpKey;
    type Value = CachedResponse;
}

/// How an inner result is to be answered, shared and stored.
pub(crate) enum Settled<V, O> {
    /// Usable by every waiter; stored for the ttl given (`None`: the
    /// layer's) unless `store` says why not.
    Share {
        value: V,
        out: O,
        store: Result<Option<Duration>, NotStored>,
        failure: bool,
        /// A `304 Not Modified` refreshed the stale entry.
        revalidated: bool,
    },
    /// For this caller only.
    Own {
        out: O,
        reason: NotStored,
        failure: bool,
        revalidated: bool,
    },
}

/// One policy's handling of an inner result of type `T`.
pub(crate) trait Flow<T>: Policy {
    type Out: Send + 'static;

    /// An answer from a stored or shared value.
    fn respond(&self, value: Self::Value, status: CacheStatus) -> Self::Out;

    /// Decides what to do with an inner result; `revalidating` is the
    /// stale value whose validator the call carried.
    fn settle(
        self: Arc<Self>,
        res: T,
        revalidating: Option<Self::Value>,
    ) -> impl Future<Output = Result<Settled<Self::Value, Self::Out>, BoxError>> + Send;
}

/// One policy's handling of the requests of type `Req`.
pub(crate) trait Requests<Req, T>: Flow<T> {
    /// The answer to `req` from a fresh value (a hit).
    #[inline]
    fn answer(&self, value: Self::Value, status: CacheStatus, req: &Req) -> Self::Out {
        let _ = req;
        self.respond(value, status)
    }

    /// Makes `req` a revalidation of the stale `value` (a conditional
    /// request); `true` when it did.
    fn revalidate(&self, req: &mut Req, value: &Self::Value) -> bool {
        let _ = (req, value);
        false
    }
}

impl<F, K, V, Req> Requests<Req, V> for ByKey<F, K, V>
where
    F: Send + Sync + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
}

impl<ReqB, B> Requests<Request<ReqB>, Response<B>> for HttpPolicy
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    #[inline]
    fn answer(&self, value: CachedResponse, status: CacheStatus, req: &Request<ReqB>) -> Self::Out {
        if validate::not_modified(req.headers(), value.status(), value.headers()) {
            return value.to_not_modified(status, self.markers);
        }
        if req.method() == Method::HEAD {
            return value.to_head_response(status, self.markers);
        }
        value.to_response(status, self.markers)
    }

    fn revalidate(&self, req: &mut Request<ReqB>, value: &CachedResponse) -> bool {
        if validate::is_conditional(req.headers()) {
            // The caller's own precondition goes as it is; its answer is
            // for that caller.
            return false;
        }
        match validate::validator(value.headers()) {
            Some((name, validator)) => {
                req.headers_mut().insert(name, validator);
                true
            }
            None => false,
        }
    }
}

impl<F, K, V> Flow<V> for ByKey<F, K, V>
where
    F: Send + Sync + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    type Out = V;

    fn respond(&self, mut value: V, status: CacheStatus) -> V {
        if let Some(mark) = &self.mark {
            mark(&mut value, status);
        }
        value
    }

    #[allow(clippy::manual_async_fn)]
    fn settle(
        self: Arc<Self>,
        res: V,
        _revalidating: Option<V>,
    ) -> impl Future<Output = Result<Settled<V, V>, BoxError>> + Send {
        async move {
            let success = self.cache_if.as_ref().is_none_or(|f| f(&res));
            let store = if success {
                Ok(self.ttl_of.as_ref().and_then(|f| f(&res)))
            } else {
                Err(NotStored::Failure)
            };
            let out = self.respond(res.clone(), CacheStatus::Miss);
            Ok(Settled::Share {
                value: res,
                out,
                store,
                failure: !success,
                revalidated: false,
            })
        }
    }
}

impl<B> Flow<Response<B>> for HttpPolicy
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Out = Response<CacheBody<B>>;

    fn respond(&self, value: CachedResponse, status: CacheStatus) -> Self::Out {
        value.to_response(status, self.markers)
    }

    #[allow(clippy::manual_async_fn)]
    fn settle(
        self: Arc<Self>,
        res: Response<B>,
        revalidating: Option<CachedResponse>,
    ) -> impl Future<Output = Result<Settled<CachedResponse, Self::Out>, BoxError>> + Send {
        async move {
            let (mut parts, body) = res.into_parts();
            if parts.status == StatusCode::NOT_MODIFIED {
                if let Some(stale) = revalidating {
                    return self.not_modified(&stale, &parts.headers);
                }
                // The answer to the caller's own precondition: for that
                // caller only (a waiter without one needs the response).
                parts.extensions.insert(CacheStatus::Miss);
                return Ok(Settled::Own {
                    out: Response::from_parts(parts, CacheBody::inner(body)),
                    reason: NotStored::Status,
                    failure: false,
                    revalidated: false,
                });
            }
            parts.extensions.insert(CacheStatus::Miss);
            let failure = self
                .rules
                .classifier
                .classify_status(parts.status)
                .is_failure();
            let verdict = self.rules.verdict(parts.status, &parts.headers);
            let store = match verdict {
                Verdict::Own(reason) => {
                    let out = Response::from_parts(parts, CacheBody::inner(body));
                    return Ok(Settled::Own {
                        out,
                        reason,
                        failure,
                        revalidated: false,
                    });
                }
                Verdict::Store(ttl) => Ok(Some(ttl)),
                Verdict::Share(reason) => Err(reason),
            };
            match collect(body, self.max_body).await? {
                Collected::Partial(pending, rest, reason) => Ok(Settled::Own {
                    out: Response::from_parts(parts, CacheBody::streaming(pending, rest)),
                    reason,
                    failure,
                    revalidated: false,
                }),
                Collected::Whole(bytes) => {
                    let value = CachedResponse::with_version(
                        parts.status,
                        parts.version,
                        parts.headers.clone(),
                        bytes.clone(),
                    );
                    let out = Response::from_parts(parts, CacheBody::full(bytes));
                    Ok(Settled::Share {
                        value,
                        out,
                        store,
                        failure,
                        revalidated: false,
                    })
                }
            }
        }
    }
}

impl HttpPolicy {
    /// A `304 Not Modified` answering this cache's revalidation of
    /// `stale`: the stored response, its headers updated with the 304's,
    /// answers as a 200 (or whatever was stored) and is stored again for
    /// the freshness those headers give (RFC 9111 §4.3.4).
    fn not_modified<O>(
        &self,
        stale: &CachedResponse,
        headers: &http::HeaderMap,
    ) -> Result<Settled<CachedResponse, Response<CacheBody<O>>>, BoxError> {
        if !validate::same_validators(stale.headers(), headers) {
            return Err(Box::new(ValidatorMismatch::new(self.name.clone())));
        }
        let value = stale.updated(headers);
        let out = value.to_response(CacheStatus::Revalidated, self.markers);
        Ok(match self.rules.verdict(value.status(), value.headers()) {
            Verdict::Store(ttl) => Settled::Share {
                value,
                out,
                store: Ok(Some(ttl)),
                failure: false,
                revalidated: true,
            },
            Verdict::Share(reason) => Settled::Share {
                value,
                out,
                store: Err(reason),
                failure: false,
                revalidated: true,
            },
            Verdict::Own(reason) => Settled::Own {
                out,
                reason,
                failure: false,
                revalidated: true,
            },
        })
    }
}

/// The cache service: answers from the store when it can, calls the inner
/// service once per key otherwise (see the [crate docs](crate)).
pub struct Cache<S, P: Policy> {
    inner: S,
    shared: Arc<Shared<P::Key, P::Value>>,
    policy: Arc<P>,
}

impl<S: Clone, P: Policy> Clone for Cache<S, P> {
    fn clone(&self) -> Self {
        // The inner service's clone starts as the inner service says (an
        // unready clone for services that reserve in `poll_ready`); the
        // cache itself holds no per-clone state.
        Cache {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, P: Policy> fmt::Debug for Cache<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, P: Policy> Cache<S, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<P::Key, P::Value>>, policy: Arc<P>) -> Self {
        Cache {
            inner,
            shared,
            policy,
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

    /// The inner service, consuming the cache.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The keyed path of a call: a hit at once, everything else boxed.
    #[inline]
    fn call_keyed<Req, T>(
        &mut self,
        key: P::Key,
        req: Req,
    ) -> ResponseFuture<S::Future, T, <P as Flow<T>>::Out>
    where
        P: Requests<Req, T>,
        S: Service<Req, Response = T> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        T: Send + 'static,
        Req: Send + 'static,
    {
        let first = if self.shared.is_memory() {
            let now = Instant::now();
            match self.shared.lookup_memory(&key, now) {
                Lookup::FreshCounted(value, stored_at) => {
                    self.shared.hit_counted();
                    let age = now.saturating_duration_since(stored_at);
                    return ResponseFuture::ready(Ok(self.policy.answer(
                        value,
                        CacheStatus::Hit { age },
                        &req,
                    )));
                }
                Lookup::Fresh(value, stored_at) => {
                    self.shared.hit();
                    let age = now.saturating_duration_since(stored_at);
                    return ResponseFuture::ready(Ok(self.policy.answer(
                        value,
                        CacheStatus::Hit { age },
                        &req,
                    )));
                }
                other => Some(other),
            }
        } else {
            None
        };
        // The ready service goes with the call; a clone stays (DESIGN
        // rule 3).
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(Box::pin(slow(
            self.policy.clone(),
            self.shared.clone(),
            key,
            svc,
            req,
            first,
        )))
    }
}

/// Answers with a stale entry, if there is one within `max_stale`.
async fn stale_answer<P, T>(
    policy: &P,
    shared: &Shared<P::Key, P::Value>,
    key: &P::Key,
) -> Option<P::Out>
where
    P: Flow<T>,
{
    let entry = shared.stale_entry(key).await?;
    let age = Instant::now().saturating_duration_since(entry.stored_at);
    shared.stale_served(age, StaleReason::Error);
    Some(policy.respond(
        entry.value.clone(),
        CacheStatus::Stale {
            age,
            reason: StaleReason::Error,
        },
    ))
}

/// Every path but a memory hit.
async fn slow<P, T, S, Req>(
    policy: Arc<P>,
    shared: Arc<Shared<P::Key, P::Value>>,
    key: P::Key,
    mut svc: S,
    mut req: Req,
    first: Option<Lookup<P::Value>>,
) -> Result<P::Out, BoxError>
where
    P: Requests<Req, T>,
    S: Service<Req, Response = T> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    T: Send + 'static,
    Req: Send + 'static,
{
    let found = match first {
        Some(found) => found,
        None => shared.lookup(&key).await,
    };
    let stale = match found {
        Lookup::FreshCounted(value, stored_at) => {
            shared.hit_counted();
            let age = Instant::now().saturating_duration_since(stored_at);
            return Ok(policy.answer(value, CacheStatus::Hit { age }, &req));
        }
        Lookup::Fresh(value, stored_at) => {
            shared.hit();
            let age = Instant::now().saturating_duration_since(stored_at);
            return Ok(policy.answer(value, CacheStatus::Hit { age }, &req));
        }
        Lookup::Stale(entry) if shared.revalidate => {
            let age = Instant::now().saturating_duration_since(entry.stored_at);
            shared.stale_served(age, StaleReason::Revalidating);
            let out = policy.respond(
                entry.value.clone(),
                CacheStatus::Stale {
                    age,
                    reason: StaleReason::Revalidating,
                },
            );
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                if let Some(leading) = shared.try_lead(&key) {
                    let revalidating = policy
                        .revalidate(&mut req, &entry.value)
                        .then(|| entry.value.clone());
                    let fut = svc.call(req);
                    runtime.spawn(async move {
                        let _ = lead(policy, leading, fut, revalidating).await;
                    });
                }
            }
            return Ok(out);
        }
        Lookup::Stale(entry) => Some(entry),
        Lookup::Missing => None,
    };
    match shared.join_or_lead(&key) {
        Role::Lead(leading) => {
            shared.miss();
            // A stale entry with a validator is revalidated: the call
            // asks for it conditionally (RFC 9111 §4.3.1).
            let revalidating = stale.and_then(|entry| {
                policy
                    .revalidate(&mut req, &entry.value)
                    .then(|| entry.value.clone())
            });
            let fut = svc.call(req);
            lead(policy, leading, fut, revalidating).await
        }
        Role::Wait(flight) => {
            shared.coalesced();
            wait(policy, shared, key, flight, svc, req).await
        }
    }
}

/// The leader of a flight: calls, answers, stores, wakes the waiters.
async fn lead<P, T, Fut, E>(
    policy: Arc<P>,
    leading: Leading<P::Key, P::Value>,
    fut: Fut,
    revalidating: Option<P::Value>,
) -> Result<P::Out, BoxError>
where
    P: Flow<T>,
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    let shared = leading.shared().clone();
    let key = leading.key().clone();
    let generation = leading.generation;
    // The inner error becomes a `BoxError` before any other await: `E`
    // need not be `Send`.
    let called: Result<T, BoxError> = fut.await.map_err(Into::into);
    let result = match called {
        Ok(res) => policy.clone().settle(res, revalidating).await,
        Err(e) => Err(e),
    };
    match result {
        Err(e) => {
            let err = leading.fail(e);
            match stale_answer(&*policy, &shared, &key).await {
                Some(out) => Ok(out),
                None => Err(err),
            }
        }
        Ok(Settled::Share {
            value,
            out,
            store,
            failure,
            revalidated,
        }) => {
            if revalidated {
                shared.revalidated();
            }
            if failure {
                leading.complete(FlightResult::Value { value, failure });
                shared.not_stored(NotStored::Failure);
                return Ok(stale_answer(&*policy, &shared, &key).await.unwrap_or(out));
            }
            match store {
                Ok(ttl) => {
                    let ttl = ttl.unwrap_or(shared.ttl);
                    shared.store(key, value.clone(), ttl, generation).await
                }
                Err(reason) => shared.not_stored(reason),
            }
            leading.complete(FlightResult::Value { value, failure });
            Ok(out)
        }
        Ok(Settled::Own {
            out,
            reason,
            failure,
            revalidated,
        }) => {
            if revalidated {
                shared.revalidated();
            }
            leading.complete(FlightResult::Own);
            shared.not_stored(reason);
            if failure {
                if let Some(stale) = stale_answer(&*policy, &shared, &key).await {
                    return Ok(stale);
                }
            }
            Ok(out)
        }
    }
}

/// A call that makes its own inner call, outside any flight (its
/// leader's answer was for the leader only).
async fn alone<P, T, S, Req>(
    policy: Arc<P>,
    shared: Arc<Shared<P::Key, P::Value>>,
    key: P::Key,
    mut svc: S,
    req: Req,
) -> Result<P::Out, BoxError>
where
    P: Flow<T>,
    S: Service<Req, Response = T>,
    S::Error: Into<BoxError>,
{
    let generation = shared.generation();
    let ready: Result<(), BoxError> = poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into);
    let called: Result<T, BoxError> = match ready {
        Ok(()) => svc.call(req).await.map_err(Into::into),
        Err(e) => Err(e),
    };
    let result = match called {
        Ok(res) => policy.clone().settle(res, None).await,
        Err(e) => Err(e),
    };
    match result {
        Err(e) => match stale_answer(&*policy, &shared, &key).await {
            Some(out) => Ok(out),
            None => Err(e),
        },
        Ok(Settled::Share {
            value,
            out,
            store,
            failure,
            ..
        }) => {
            if failure {
                shared.not_stored(NotStored::Failure);
                return Ok(stale_answer(&*policy, &shared, &key).await.unwrap_or(out));
            }
            match store {
                Ok(ttl) => {
                    let ttl = ttl.unwrap_or(shared.ttl);
                    shared.store(key, value, ttl, generation).await
                }
                Err(reason) => shared.not_stored(reason),
            }
            Ok(out)
        }
        Ok(Settled::Own {
            out,
            reason,
            failure,
            ..
        }) => {
            shared.not_stored(reason);
            if failure {
                if let Some(stale) = stale_answer(&*policy, &shared, &key).await {
                    return Ok(stale);
                }
            }
            Ok(out)
        }
    }
}

/// A waiter: the leader's result, or its own call when the leader went
/// away (it takes over) or answered for itself only.
async fn wait<P, T, S, Req>(
    policy: Arc<P>,
    shared: Arc<Shared<P::Key, P::Value>>,
    key: P::Key,
    mut flight: Arc<crate::shared::Flight<P::Value>>,
    mut svc: S,
    req: Req,
) -> Result<P::Out, BoxError>
where
    P: Flow<T>,
    S: Service<Req, Response = T>,
    S::Error: Into<BoxError>,
{
    loop {
        match flight.wait().await {
            Some(FlightResult::Value { value, failure }) => {
                if failure {
                    if let Some(stale) = stale_answer(&*policy, &shared, &key).await {
                        return Ok(stale);
                    }
                }
                return Ok(policy.respond(value, CacheStatus::Coalesced));
            }
            Some(FlightResult::Error(e)) => {
                return match stale_answer(&*policy, &shared, &key).await {
                    Some(stale) => Ok(stale),
                    None => Err(Box::new(SharedError::new(shared.name.clone(), e))),
                };
            }
            Some(FlightResult::Own) => return alone(policy, shared, key, svc, req).await,
            None => match shared.join_or_lead(&key) {
                Role::Lead(leading) => {
                    tracing::debug!(
                        buttress.pattern = "cache",
                        buttress.name = %shared.name,
                        "the leading call was dropped; a waiting call takes over"
                    );
                    let ready: Result<(), BoxError> =
                        poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into);
                    if let Err(e) = ready {
                        return Err(leading.fail(e));
                    }
                    let fut = svc.call(req);
                    return lead(policy, leading, fut, None).await;
                }
                Role::Wait(next) => flight = next,
            },
        }
    }
}

// ===== impl Service =====

impl<S, Req, F, K, V> Service<Req> for Cache<S, ByKey<F, K, V>>
where
    S: Service<Req, Response = V> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
    Req: Send + 'static,
{
    type Response = V;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, V, V>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match (self.policy.key)(&req) {
            Some(key) => self.call_keyed(key, req),
            None => ResponseFuture::inner(self.inner.call(req), identity),
        }
    }
}

impl<S> Cache<S, HttpPolicy> {
    /// A `HEAD` request: answered from a fresh stored `GET` response
    /// (RFC 9110 §9.3.2: the same headers, no body), else by its own
    /// entry or call.
    fn call_head<ReqB, ResB>(
        &mut self,
        key: HttpKey,
        req: Request<ReqB>,
    ) -> ResponseFuture<S::Future, Response<ResB>, Response<CacheBody<ResB>>>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ResB: Body + Unpin + Send + 'static,
        ResB::Data: Send,
        ResB::Error: Into<BoxError>,
        ReqB: Send + 'static,
    {
        let Some(get) = self.policy.keyer.key_as(&req, &Method::GET) else {
            return self.call_keyed(key, req);
        };
        if self.shared.is_memory() {
            let now = Instant::now();
            let found = match self.shared.lookup_memory(&get, now) {
                Lookup::FreshCounted(value, stored_at) => {
                    self.shared.hit_counted();
                    Some((value, stored_at))
                }
                Lookup::Fresh(value, stored_at) => {
                    self.shared.hit();
                    Some((value, stored_at))
                }
                _ => None,
            };
            if let Some((value, stored_at)) = found {
                let age = now.saturating_duration_since(stored_at);
                return ResponseFuture::ready(Ok(self.policy.answer(
                    value,
                    CacheStatus::Hit { age },
                    &req,
                )));
            }
            return self.call_keyed(key, req);
        }
        // A store over the network: the lookup of the GET response is
        // part of the boxed call.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        let shared = self.shared.clone();
        ResponseFuture::boxed(Box::pin(async move {
            if let Lookup::Fresh(value, stored_at) = shared.lookup(&get).await {
                shared.hit();
                let age = Instant::now().saturating_duration_since(stored_at);
                return Ok(policy.answer(value, CacheStatus::Hit { age }, &req));
            }
            slow(policy, shared, key, svc, req, None).await
        }))
    }
}

fn identity<V>(v: V) -> V {
    v
}

fn bypass<B>(res: Response<B>) -> Response<CacheBody<B>> {
    let (mut parts, body) = res.into_parts();
    parts.extensions.insert(CacheStatus::Bypass);
    Response::from_parts(parts, CacheBody::inner(body))
}

fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Cache<S, HttpPolicy>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResB: Body + Unpin + Send + 'static,
    ResB::Data: Send,
    ResB::Error: Into<BoxError>,
    ReqB: Send + 'static,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Response<ResB>, Response<CacheBody<ResB>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if let Some(key) = self.policy.keyer.key(&req) {
            if req.method() == Method::HEAD {
                return self.call_head(key, req);
            }
            return self.call_keyed(key, req);
        }
        if self.policy.invalidate_on_unsafe && is_unsafe(req.method()) && self.shared.is_memory() {
            // RFC 9111 §4.4: a successful unsafe request invalidates the
            // stored responses of its target.
            let get = HttpKey::new(&Method::GET, req.uri());
            let head = HttpKey::new(&Method::HEAD, req.uri());
            let shared = self.shared.clone();
            let fut = self.inner.call(req);
            return ResponseFuture::boxed(Box::pin(async move {
                let res = fut.await.map_err(Into::into)?;
                if res.status().is_success() || res.status().is_redirection() {
                    let scope = Invalidation::Key(get.target().to_owned());
                    shared.invalidate_matching(
                        move |k: &HttpKey| {
                            k.target() == get.target() || k.target() == head.target()
                        },
                        scope,
                    );
                }
                Ok(bypass(res))
            }));
        }
        ResponseFuture::inner(self.inner.call(req), bypass)
    }
}
