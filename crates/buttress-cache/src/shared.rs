//! The state every service of one layer shares: the store, the calls in
//! flight (single-flight), the counters and the listeners.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::{BoxError, Listeners};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{SharedError, StoreError};
use crate::events::{CacheEvent, Invalidation, NotStored, StaleReason};
use crate::key::CacheKey;
use crate::store::{Entry, Lookup, Memory};

/// Computes an entry's weight.
pub(crate) type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync>;

pub(crate) enum Backend<K, V> {
    Memory(Memory<K, V>),
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisStore<V>),
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) revalidated: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) store_errors: AtomicU64,
}

/// A point-in-time view of a cache.
///
/// `hits + misses + coalesced` is the number of calls that had a key;
/// `stale` counts the calls among them answered with a stale entry (a miss
/// or a coalesced call whose inner call failed, or a stale-while-revalidate
/// answer, which is counted as neither hit nor miss but as `stale` only);
/// `revalidated` counts the misses among them answered by a revalidated
/// entry (an HTTP `304 Not Modified`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CacheSnapshot {
    /// The instance name.
    pub name: String,
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// Entries held (memory only; `None` for Redis, which holds the
    /// entries of every replica).
    pub entries: Option<u64>,
    /// Their weight, as moka charges it (memory only).
    pub weight: Option<u64>,
    /// Calls answered by a fresh entry.
    pub hits: u64,
    /// Calls that found no fresh entry and called the inner service.
    pub misses: u64,
    /// Calls answered by a stale entry.
    pub stale: u64,
    /// Calls that waited for another call's result instead of calling.
    pub coalesced: u64,
    /// Misses whose conditional call (HTTP revalidation) was answered
    /// `304 Not Modified`: the stale entry answered and was refreshed.
    pub revalidated: u64,
    /// Responses stored (warmed entries included).
    pub stored: u64,
    /// Entries moka evicted to stay within its bounds.
    pub evicted: u64,
    /// Store operations (Redis) that failed or timed out.
    pub store_errors: u64,
    /// Keys with a call in flight now.
    pub in_flight: usize,
}

/// The outcome a flight hands to its waiters.
pub(crate) enum FlightResult<V> {
    /// A value every waiter may use (stored or not); `failure` when the
    /// classifier called it a failure (the waiters then try a stale entry
    /// first).
    Value { value: V, failure: bool },
    /// The inner error, shared.
    Error(Arc<dyn std::error::Error + Send + Sync>),
    /// A response only its caller may use (streamed, private): each
    /// waiter makes its own call.
    Own,
}

impl<V: Clone> Clone for FlightResult<V> {
    fn clone(&self) -> Self {
        match self {
            FlightResult::Value { value, failure } => FlightResult::Value {
                value: value.clone(),
                failure: *failure,
            },
            FlightResult::Error(e) => FlightResult::Error(e.clone()),
            FlightResult::Own => FlightResult::Own,
        }
    }
}

enum FlightState<V> {
    Running,
    Done(FlightResult<V>),
    Abandoned,
}

pub(crate) struct Flight<V> {
    state: Mutex<FlightState<V>>,
    done: Notify,
    waiters: AtomicUsize,
}

impl<V: Clone> Flight<V> {
    /// Waits for the flight's end: its result, or `None` when its leader
    /// was dropped (the caller then takes over).
    pub(crate) async fn wait(&self) -> Option<FlightResult<V>> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
                FlightState::Done(r) => return Some(r.clone()),
                FlightState::Abandoned => return None,
                FlightState::Running => {}
            }
            notified.await;
        }
    }
}

/// Held by the caller that leads a flight; completing or dropping it ends
/// the flight and wakes the waiters.
pub(crate) struct Leading<K: CacheKey, V: Clone + Send + Sync + 'static> {
    shared: Arc<Shared<K, V>>,
    key: K,
    flight: Arc<Flight<V>>,
    done: bool,
    /// The invalidation generation when the call started.
    pub(crate) generation: u64,
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Leading<K, V> {
    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<K, V>> {
        &self.shared
    }

    /// Ends the flight; returns how many callers waited for it.
    fn finish(&mut self, state: FlightState<V>) -> usize {
        self.done = true;
        {
            let mut flights = self
                .shared
                .flights
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&self.key);
            }
        }
        // Removed from the map: nobody joins any more, the count is final.
        let waiters = self.flight.waiters.load(Acquire);
        *self.flight.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.flight.done.notify_waiters();
        waiters
    }

    /// Ends the flight with `result`.
    pub(crate) fn complete(mut self, result: FlightResult<V>) {
        self.finish(FlightState::Done(result));
    }

    /// Ends the flight with the inner error: returned as it is when nobody
    /// waited, shared (as [`SharedError`]) when someone did.
    pub(crate) fn fail(mut self, err: BoxError) -> BoxError {
        if self.flight.waiters.load(Acquire) == 0 {
            // Nobody waits yet; take the flight out of the map first, then
            // look again: a waiter that joined meanwhile gets the shared
            // error.
            let mut flights = self
                .shared
                .flights
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if self.flight.waiters.load(Acquire) == 0 {
                if flights
                    .get(&self.key)
                    .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
                {
                    flights.remove(&self.key);
                }
                drop(flights);
                self.done = true;
                *self.flight.state.lock().unwrap_or_else(|e| e.into_inner()) =
                    FlightState::Done(FlightResult::Own);
                self.flight.done.notify_waiters();
                return err;
            }
        }
        let shared: Arc<dyn std::error::Error + Send + Sync> = Arc::from(err);
        let name = self.shared.name.clone();
        self.finish(FlightState::Done(FlightResult::Error(shared.clone())));
        Box::new(SharedError::new(name, shared))
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Drop for Leading<K, V> {
    fn drop(&mut self) {
        if !self.done {
            // The leader's caller went away: a waiter takes over.
            self.finish(FlightState::Abandoned);
        }
    }
}

/// A caller's part in a flight.
pub(crate) enum Role<K: CacheKey, V: Clone + Send + Sync + 'static> {
    Lead(Leading<K, V>),
    Wait(Arc<Flight<V>>),
}

pub(crate) struct Shared<K, V> {
    pub(crate) name: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) max_stale: Duration,
    pub(crate) revalidate: bool,
    pub(crate) max_weight: Option<u64>,
    pub(crate) backend: Backend<K, V>,
    pub(crate) weigher: Weigher<K, V>,
    flights: Mutex<HashMap<K, Arc<Flight<V>>>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) listeners: Listeners<CacheEvent>,
    /// Bumped by every invalidation: a call that started before one does
    /// not store its answer.
    generation: AtomicU64,
}

impl<K, V> fmt::Debug for Shared<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("max_stale", &self.max_stale)
            .field("hits", &self.counters.hits.load(Relaxed))
            .field("misses", &self.counters.misses.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Shared<K, V> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: Arc<str>,
        ttl: Duration,
        max_stale: Duration,
        revalidate: bool,
        max_weight: Option<u64>,
        backend: Backend<K, V>,
        weigher: Weigher<K, V>,
        counters: Arc<Counters>,
        listeners: Listeners<CacheEvent>,
    ) -> Self {
        Shared {
            name,
            ttl,
            max_stale,
            revalidate,
            max_weight,
            backend,
            weigher,
            flights: Mutex::new(HashMap::new()),
            counters,
            listeners,
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }

    /// The memory lookup of the hit path (`Missing` for Redis).
    #[inline]
    pub(crate) fn lookup_memory(&self, key: &K, now: Instant) -> Lookup<V> {
        match &self.backend {
            Backend::Memory(m) => m.lookup(key, now),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => Lookup::Missing,
        }
    }

    /// A lookup in any store; a store failure is a miss.
    pub(crate) async fn lookup(&self, key: &K) -> Lookup<V> {
        match &self.backend {
            Backend::Memory(m) => m.lookup(key, Instant::now()),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => match r.get(self, key).await {
                Ok(Some(entry)) => {
                    let now = Instant::now();
                    if entry.is_fresh(now) {
                        Lookup::Fresh(entry.value.clone(), entry.stored_at)
                    } else if entry.is_usable_stale(now) {
                        Lookup::Stale(entry)
                    } else {
                        Lookup::Missing
                    }
                }
                _ => Lookup::Missing,
            },
        }
    }

    /// A stale entry still within `max_stale`, for stale-if-error.
    pub(crate) async fn stale_entry(&self, key: &K) -> Option<Arc<Entry<V>>> {
        if self.max_stale.is_zero() {
            return None;
        }
        let entry = match &self.backend {
            Backend::Memory(m) => m.peek(key),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.get(self, key).await.ok().flatten(),
        }?;
        let now = Instant::now();
        (!entry.is_fresh(now) && entry.is_usable_stale(now)).then_some(entry)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// Stores `value` under `key` for `ttl` unless an invalidation ran
    /// since `generation` was read.
    pub(crate) async fn store(&self, key: K, value: V, ttl: Duration, generation: u64) {
        if ttl.is_zero() {
            return self.not_stored(NotStored::ZeroTtl);
        }
        if self.generation() != generation {
            return self.not_stored(NotStored::Invalidated);
        }
        let weight = (self.weigher)(&key, &value);
        if self.max_weight.is_some_and(|max| u64::from(weight) > max) {
            return self.not_stored(NotStored::TooHeavy);
        }
        let now = Instant::now();
        let fresh_until = now.checked_add(ttl).unwrap_or_else(far_future);
        let stale_until = fresh_until
            .checked_add(self.max_stale)
            .unwrap_or_else(far_future);
        let entry = Arc::new(Entry {
            value,
            stored_at: now,
            fresh_until,
            stale_until,
            weight,
        });
        match &self.backend {
            Backend::Memory(m) => {
                m.insert(key.clone(), entry.clone());
                // An invalidation that began after the check above may
                // have run before the insert: undo the insert.
                if self.generation() != generation {
                    m.remove_if_same(&key, &entry);
                    return self.not_stored(NotStored::Invalidated);
                }
            }
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                if r.set(self, &key, &entry).await.is_err() {
                    return self.not_stored(NotStored::StoreUnavailable);
                }
            }
        }
        self.counters.stored.fetch_add(1, Relaxed);
        self.listeners.emit(|| CacheEvent::Stored {
            name: self.name.clone(),
            ttl,
            weight,
        });
    }

    pub(crate) fn not_stored(&self, reason: NotStored) {
        tracing::debug!(
            buttress.pattern = "cache",
            buttress.name = %self.name,
            cache.reason = reason.as_str(),
            "response not stored"
        );
        self.listeners.emit(|| CacheEvent::NotStored {
            name: self.name.clone(),
            reason,
        });
    }

    /// Leads a flight for `key`, or joins the one in flight.
    pub(crate) fn join_or_lead(self: &Arc<Self>, key: &K) -> Role<K, V> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = flights.get(key) {
            f.waiters.fetch_add(1, AcqRel);
            return Role::Wait(f.clone());
        }
        Role::Lead(self.start_flight(&mut flights, key))
    }

    /// Leads a flight for `key` unless one is in flight already.
    pub(crate) fn try_lead(self: &Arc<Self>, key: &K) -> Option<Leading<K, V>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.contains_key(key) {
            return None;
        }
        Some(self.start_flight(&mut flights, key))
    }

    fn start_flight(
        self: &Arc<Self>,
        flights: &mut HashMap<K, Arc<Flight<V>>>,
        key: &K,
    ) -> Leading<K, V> {
        let flight = Arc::new(Flight {
            state: Mutex::new(FlightState::Running),
            done: Notify::new(),
            waiters: AtomicUsize::new(0),
        });
        flights.insert(key.clone(), flight.clone());
        Leading {
            shared: self.clone(),
            key: key.clone(),
            flight,
            done: false,
            generation: self.generation(),
        }
    }

    pub(crate) fn hit(&self) {
        self.counters.hits.fetch_add(1, Relaxed);
        self.hit_counted();
    }

    /// A hit whose count is kept elsewhere (the front table's slots).
    #[inline]
    pub(crate) fn hit_counted(&self) {
        self.listeners.emit(|| CacheEvent::Hit {
            name: self.name.clone(),
        });
    }

    pub(crate) fn miss(&self) {
        self.counters.misses.fetch_add(1, Relaxed);
        tracing::trace!(buttress.pattern = "cache", buttress.name = %self.name, "cache miss");
        self.listeners.emit(|| CacheEvent::Miss {
            name: self.name.clone(),
        });
    }

    pub(crate) fn coalesced(&self) {
        self.counters.coalesced.fetch_add(1, Relaxed);
        tracing::trace!(buttress.pattern = "cache", buttress.name = %self.name, "call coalesced");
        self.listeners.emit(|| CacheEvent::Coalesced {
            name: self.name.clone(),
        });
    }

    /// A `304 Not Modified` refreshed a stale entry.
    pub(crate) fn revalidated(&self) {
        self.counters.revalidated.fetch_add(1, Relaxed);
        tracing::debug!(
            buttress.pattern = "cache",
            buttress.name = %self.name,
            "stale entry revalidated"
        );
        self.listeners.emit(|| CacheEvent::Revalidated {
            name: self.name.clone(),
        });
    }

    pub(crate) fn stale_served(&self, age: Duration, reason: StaleReason) {
        self.counters.stale.fetch_add(1, Relaxed);
        tracing::debug!(
            buttress.pattern = "cache",
            buttress.name = %self.name,
            cache.age_ms = age.as_millis() as u64,
            cache.reason = reason.as_str(),
            "stale entry served"
        );
        self.listeners.emit(|| CacheEvent::StaleServed {
            name: self.name.clone(),
            age,
            reason,
        });
    }

    fn invalidated(&self, scope: Invalidation) {
        self.generation.fetch_add(1, SeqCst);
        tracing::debug!(buttress.pattern = "cache", buttress.name = %self.name, cache.scope = ?scope, "entries invalidated");
        self.listeners.emit(|| CacheEvent::Invalidated {
            name: self.name.clone(),
            scope,
        });
    }

    pub(crate) async fn invalidate(&self, key: &K) -> Result<(), StoreError> {
        self.generation.fetch_add(1, SeqCst);
        match &self.backend {
            Backend::Memory(m) => m.invalidate(key),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.delete(self, key).await?,
        }
        self.invalidated(Invalidation::Key(key.text().into_owned()));
        Ok(())
    }

    pub(crate) async fn invalidate_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.generation.fetch_add(1, SeqCst);
        match &self.backend {
            Backend::Memory(m) => {
                let p = prefix.to_owned();
                m.invalidate_if(move |k: &K| k.text().starts_with(&p));
            }
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.delete_prefix(self, prefix).await?,
        }
        self.invalidated(Invalidation::Prefix(prefix.to_owned()));
        Ok(())
    }

    pub(crate) async fn invalidate_all(&self) -> Result<(), StoreError> {
        self.generation.fetch_add(1, SeqCst);
        match &self.backend {
            Backend::Memory(m) => m.invalidate_all(),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.delete_prefix(self, "").await?,
        }
        self.invalidated(Invalidation::All);
        Ok(())
    }

    /// Drops the entries of one HTTP target (every method and variant).
    pub(crate) fn invalidate_matching(
        &self,
        pred: impl Fn(&K) -> bool + Send + Sync + 'static,
        scope: Invalidation,
    ) {
        self.generation.fetch_add(1, SeqCst);
        #[allow(irrefutable_let_patterns)]
        if let Backend::Memory(m) = &self.backend {
            m.invalidate_if(pred);
        }
        self.invalidated(scope);
    }

    pub(crate) async fn warm(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
        ttl: Option<Duration>,
    ) -> Result<usize, StoreError> {
        let ttl = ttl.unwrap_or(self.ttl);
        let mut n = 0;
        for (key, value) in entries {
            let before = self.counters.stored.load(Relaxed);
            self.store(key, value, ttl, self.generation()).await;
            if self.counters.stored.load(Relaxed) > before {
                n += 1;
            } else {
                #[cfg(feature = "redis")]
                if let Backend::Redis(_) = &self.backend {
                    return Err(StoreError::new(
                        self.name.clone(),
                        "a warm entry was not stored",
                    ));
                }
            }
        }
        self.listeners.emit(|| CacheEvent::Warmed {
            name: self.name.clone(),
            entries: n,
        });
        Ok(n)
    }

    pub(crate) fn snapshot(&self) -> CacheSnapshot {
        let (backend, entries, weight, front_hits) = match &self.backend {
            Backend::Memory(m) => {
                let (e, w) = m.sizes();
                ("memory", Some(e), Some(w), m.front_hits())
            }
            #[cfg(feature = "redis")]
            Backend::Redis(_) => ("redis", None, None, 0),
        };
        let c = &self.counters;
        CacheSnapshot {
            name: self.name.to_string(),
            backend,
            entries,
            weight,
            hits: c.hits.load(Relaxed) + front_hits,
            misses: c.misses.load(Relaxed),
            stale: c.stale.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            revalidated: c.revalidated.load(Relaxed),
            stored: c.stored.load(Relaxed),
            evicted: c.evicted.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            in_flight: self.flights.lock().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }

    pub(crate) fn reset_counters(&self) {
        let c = &self.counters;
        for a in [
            &c.hits,
            &c.misses,
            &c.stale,
            &c.coalesced,
            &c.revalidated,
            &c.stored,
            &c.evicted,
            &c.store_errors,
        ] {
            a.store(0, Relaxed);
        }
        #[allow(irrefutable_let_patterns)]
        if let Backend::Memory(m) = &self.backend {
            m.reset_front_hits();
        }
    }
}

fn far_future() -> Instant {
    // About 30 years: what tokio itself uses for "never".
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}
