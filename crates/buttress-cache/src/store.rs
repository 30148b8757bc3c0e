//! The in-memory store: moka for the bounds, a small front table for hits.
//!
//! moka's `get` records every read for its eviction policy and runs its
//! housekeeping inline, which costs more than a whole hit may cost here.
//! So moka is the store of record (every entry, its size and entry bounds,
//! eviction, invalidation), and a fixed table of [`FRONT_SLOTS`] slots
//! remembers the entries that were hit lately: a hit found there is one
//! uncontended lock, one key comparison and one clock read.
//!
//! - Every entry in the front is also one that moka held when it was put
//!   there; an entry moka evicted may still be served from the front while
//!   it is fresh (it is still correct data): the front holds at most
//!   [`FRONT_SLOTS`] entries beyond moka's bound.
//! - An insert or invalidation clears the slots concerned and bumps an
//!   epoch; a slot is filled only if the epoch did not move between the
//!   moka lookup and the fill, so the front never brings back an entry
//!   that was replaced or invalidated.
//! - A hit in the front does not read moka (whose reads may allocate in
//!   its housekeeping): the slot counts its hits, and when another key
//!   takes the slot, up to [`REPORTED_HITS`] of them are replayed as moka
//!   reads, so that its eviction policy learns the key was hot. While an
//!   entry sits in the front, moka may evict it as cold; it stays correct
//!   to serve (fresh by its own times), and once it leaves the front a
//!   later call fetches it again.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;

use spin::Mutex;
use tokio::time::Instant;

use crate::key::{slot_hash, CacheKey};

/// Slots in the front table (a power of two).
pub(crate) const FRONT_SLOTS: usize = 64;
/// At most this many of a slot's hits are reported to moka when the slot
/// is taken by another key (moka's frequency sketch counts to 15).
const REPORTED_HITS: u64 = 8;

/// One stored value and its times, on tokio's clock.
#[derive(Debug)]
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    pub(crate) stored_at: Instant,
    pub(crate) fresh_until: Instant,
    pub(crate) stale_until: Instant,
    pub(crate) weight: u32,
}

impl<V> Entry<V> {
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    pub(crate) fn is_usable_stale(&self, now: Instant) -> bool {
        now < self.stale_until
    }
}

/// What a lookup found.
pub(crate) enum Lookup<V> {
    /// A fresh entry: its value and when it was stored.
    Fresh(V, Instant),
    /// The same, found in the front table, whose hit count has it already.
    FreshCounted(V, Instant),
    /// An entry past its ttl, still within `max_stale`.
    Stale(Arc<Entry<V>>),
    /// Nothing usable.
    Missing,
}

/// One slot of the front table.
type FrontSlot<K, V> = Mutex<Option<Slot<K, V>>>;

struct Slot<K, V> {
    key: K,
    entry: Arc<Entry<V>>,
    /// Hits since the slot was filled, counted under its lock (no atomic
    /// on the hit path); added to `Memory::retired_hits` when it leaves.
    hits: u64,
}

pub(crate) struct Memory<K, V> {
    pub(crate) moka: moka::sync::Cache<K, Arc<Entry<V>>>,
    front: Box<[FrontSlot<K, V>]>,
    epoch: AtomicU64,
    /// The hits of slots that were emptied or taken by another key.
    retired_hits: AtomicU64,
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Memory<K, V> {
    pub(crate) fn new(moka: moka::sync::Cache<K, Arc<Entry<V>>>) -> Self {
        Memory {
            moka,
            front: (0..FRONT_SLOTS).map(|_| Mutex::new(None)).collect(),
            epoch: AtomicU64::new(0),
            retired_hits: AtomicU64::new(0),
        }
    }

    #[inline]
    fn slot(&self, key: &K) -> &FrontSlot<K, V> {
        &self.front[(slot_hash(key) as usize) & (FRONT_SLOTS - 1)]
    }

    /// The hit path: the front first, moka after. A hit in the front is
    /// counted here (`Lookup::FreshCounted`).
    #[inline]
    pub(crate) fn lookup(&self, key: &K, now: Instant) -> Lookup<V> {
        let slot = self.slot(key);
        {
            let mut guard = slot.lock();
            if let Some(s) = &mut *guard {
                if s.key == *key && s.entry.is_fresh(now) {
                    s.hits += 1;
                    let value = s.entry.value.clone();
                    let stored_at = s.entry.stored_at;
                    drop(guard);
                    return Lookup::FreshCounted(value, stored_at);
                }
            }
        }
        self.lookup_slow(key, slot, now)
    }

    /// Hits counted in the front table (exact: each slot is read under its
    /// lock).
    pub(crate) fn front_hits(&self) -> u64 {
        let mut n = self.retired_hits.load(SeqCst);
        for slot in self.front.iter() {
            if let Some(s) = &*slot.lock() {
                n += s.hits;
            }
        }
        n
    }

    pub(crate) fn reset_front_hits(&self) {
        for slot in self.front.iter() {
            if let Some(s) = &mut *slot.lock() {
                s.hits = 0;
            }
        }
        self.retired_hits.store(0, SeqCst);
    }

    /// Empties a slot (under its lock), keeping its hit count.
    fn retire(&self, slot: &mut Option<Slot<K, V>>) -> Option<Slot<K, V>> {
        let old = slot.take();
        if let Some(s) = &old {
            self.retired_hits.fetch_add(s.hits, SeqCst);
        }
        old
    }

    #[cold]
    fn lookup_slow(&self, key: &K, slot: &FrontSlot<K, V>, now: Instant) -> Lookup<V> {
        let epoch = self.epoch.load(SeqCst);
        let Some(entry) = self.moka.get(key) else {
            return Lookup::Missing;
        };
        if entry.is_fresh(now) {
            let mut guard = slot.lock();
            let mut displaced = None;
            if self.epoch.load(SeqCst) == epoch {
                displaced = self.retire(&mut guard);
                *guard = Some(Slot {
                    key: key.clone(),
                    entry: entry.clone(),
                    hits: 0,
                });
            }
            drop(guard);
            if let Some(old) = displaced.filter(|old| old.key != *key) {
                for _ in 0..old.hits.min(REPORTED_HITS) {
                    let _ = self.moka.get(&old.key);
                }
            }
            return Lookup::Fresh(entry.value.clone(), entry.stored_at);
        }
        if entry.is_usable_stale(now) {
            return Lookup::Stale(entry);
        }
        // Past max_stale: dead, free its room now rather than at eviction.
        self.remove_if_same(key, &entry);
        Lookup::Missing
    }

    /// The entry for `key` whatever its age (for stale-if-error).
    pub(crate) fn peek(&self, key: &K) -> Option<Arc<Entry<V>>> {
        self.moka.get(key)
    }

    pub(crate) fn insert(&self, key: K, entry: Arc<Entry<V>>) {
        let slot = self.slot(&key);
        self.moka.insert(key.clone(), entry);
        self.epoch.fetch_add(1, SeqCst);
        let mut guard = slot.lock();
        if guard.as_ref().is_some_and(|s| s.key == key) {
            self.retire(&mut guard);
        }
    }

    pub(crate) fn remove_if_same(&self, key: &K, entry: &Arc<Entry<V>>) {
        use moka::ops::compute::Op;
        let _ = self
            .moka
            .entry_by_ref(key)
            .and_compute_with(|current| match current {
                Some(e) if Arc::ptr_eq(e.value(), entry) => Op::Remove,
                _ => Op::Nop,
            });
    }

    pub(crate) fn invalidate(&self, key: &K) {
        self.moka.invalidate(key);
        self.epoch.fetch_add(1, SeqCst);
        let mut guard = self.slot(key).lock();
        if guard.as_ref().is_some_and(|s| s.key == *key) {
            self.retire(&mut guard);
        }
    }

    pub(crate) fn invalidate_if(&self, pred: impl Fn(&K) -> bool + Send + Sync + 'static) {
        let pred = Arc::new(pred);
        let p = pred.clone();
        // Only fails when the cache was built without invalidation
        // closures, which `Memory` always enables.
        let _ = self.moka.invalidate_entries_if(move |k, _| p(k));
        self.epoch.fetch_add(1, SeqCst);
        for slot in self.front.iter() {
            let mut guard = slot.lock();
            if guard.as_ref().is_some_and(|s| pred(&s.key)) {
                self.retire(&mut guard);
            }
        }
    }

    pub(crate) fn invalidate_all(&self) {
        self.moka.invalidate_all();
        self.epoch.fetch_add(1, SeqCst);
        for slot in self.front.iter() {
            self.retire(&mut slot.lock());
        }
    }

    /// Entries and weight, after moka's pending work (exact when no call
    /// is in flight).
    pub(crate) fn sizes(&self) -> (u64, u64) {
        self.moka.run_pending_tasks();
        (self.moka.entry_count(), self.moka.weighted_size())
    }
}
