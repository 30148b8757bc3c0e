//! Shared state that response futures reach without a reference count of
//! their own.
//!
//! A layer's services share its state through an `Arc`. A response future
//! must reach that state when it completes (to record an outcome, to give a
//! permit back), and the obvious way, one more `Arc` per call, costs two
//! atomic read-modify-writes per call: about as much as the rest of a
//! bulkhead or a circuit breaker. Under two threads those two writes also
//! bounce the reference count's cache line between the cores on every call.
//!
//! This module replaces that `Arc` with a [`Token`]: a `Copy` id. The
//! owners of the state (layers, services, handles) hold an [`Anchor`]; the
//! service asks it for a token in `call`, which also makes sure that the
//! thread's [`Cache`] holds the state. When the future completes,
//! [`Token::with`] finds the state in the cache of the thread it runs on: a
//! thread-local lookup, no atomic write. A future that completes on another
//! thread (a task moved by a work-stealing runtime) finds it in the
//! [`Home`]'s directory under a lock, and caches it there in turn.
//!
//! Each cache entry also carries one word of thread-local data for the
//! state's own use (see [`Local::flush`]): a circuit breaker counts
//! successes there and moves them to its shared window in batches.
//!
//! # Lifetime
//!
//! The state lives while any [`Anchor`] of it does. When the last one is
//! dropped, the state leaves the directory at once, and each thread's cache
//! lets go of it on that thread's next use of the same home (or when the
//! thread exits); only then is the state dropped. A token of a state whose
//! anchors are gone may still find it in a cache until then: using it is
//! harmless, since nothing can observe the state any more. Otherwise
//! [`Token::with`] returns `None`.
//!
//! # Declaring a home
//!
//! Each kind of state has one home: a `static` beside a `thread_local!`
//! cache.
//!
//! ```
//! use buttress_core::local::{Anchor, Cache, Home, Local};
//! use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
//! use std::sync::Arc;
//!
//! struct Counter(AtomicU64);
//!
//! impl Local for Counter {
//!     fn home() -> &'static Home<Self> {
//!         &HOME
//!     }
//!
//!     // Thread-local counts reach the shared one when a cache lets go.
//!     fn flush(&self, local: u64) {
//!         self.0.fetch_add(local, Relaxed);
//!     }
//! }
//!
//! thread_local! {
//!     static CACHE: Cache<Counter> = const { Cache::new() };
//! }
//! static HOME: Home<Counter> = Home::new(&CACHE);
//!
//! let anchor = Anchor::new(Arc::new(Counter(AtomicU64::new(0))));
//! let token = anchor.token();
//! for _ in 0..10 {
//!     token.with(|_, local| local.set(local.get() + 1)).unwrap();
//! }
//! // Still on this thread; a thread's exit or an eviction flushes it.
//! assert_eq!(token.with(|_, local| local.get()), Some(10));
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU64;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::LocalKey;

/// Entries in each thread's cache of one home. Ids are handed out in
/// sequence, so the last `SLOTS` states made never collide.
const SLOTS: usize = 32;
/// Shards of a home's directory.
const SHARDS: usize = 8;

/// Ids are unique in the process, across every home, and never reused.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// State kept in a [`Home`].
pub trait Local: Send + Sync + Sized + 'static {
    /// The home of this type: a `static` (see the [module docs](self)).
    fn home() -> &'static Home<Self>;

    /// Called with a thread's local word when that thread's cache lets go
    /// of a live state (the entry is evicted by another state, or the
    /// thread exits), and after a [`Token::with`] that could not use a
    /// cache, so that nothing a thread kept for the state is lost. Not
    /// called when the word is 0, nor once the state's anchors are gone.
    ///
    /// The default does nothing.
    fn flush(&self, local: u64) {
        let _ = local;
    }
}

/// Live states by id, each with its liveness flag.
type Entries<T> = BTreeMap<u64, (Arc<T>, Arc<AtomicBool>)>;
type Directory<T> = Mutex<Entries<T>>;

/// Where the states of one type live: the `thread_local!` cache of each
/// thread and a directory of the live states. Declared once per type, as a
/// `static` (see the [module docs](self)).
pub struct Home<T: Local> {
    cache: &'static LocalKey<Cache<T>>,
    directory: [Directory<T>; SHARDS],
    /// Raised when a state's last anchor goes: caches then drop the dead.
    epoch: AtomicU64,
}

impl<T: Local> Home<T> {
    /// A home whose threads cache states in `cache`.
    pub const fn new(cache: &'static LocalKey<Cache<T>>) -> Self {
        Self {
            cache,
            directory: [const { Mutex::new(BTreeMap::new()) }; SHARDS],
            epoch: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, Entries<T>> {
        // Every critical section is a single map operation: a poisoned
        // lock still guards a consistent map.
        self.directory[(id % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, id: u64) -> Option<(Arc<T>, Arc<AtomicBool>)> {
        self.shard(id).get(&id).cloned()
    }
}

impl<T: Local> fmt::Debug for Home<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Home").finish_non_exhaustive()
    }
}

struct Entry<T> {
    id: u64,
    value: Arc<T>,
    alive: Arc<AtomicBool>,
    local: Cell<u64>,
}

impl<T: Local> Entry<T> {
    /// Hands the local word to the state, unless it is 0 or the state is
    /// dead.
    fn flush(&self) {
        let local = self.local.replace(0);
        if local != 0 && self.alive.load(Acquire) {
            self.value.flush(local);
        }
    }
}

/// One thread's cache of the states of a [`Home`]; declare it with
/// `thread_local!` and a `const` initializer (see the
/// [module docs](self)).
///
/// Each live entry is flushed ([`Local::flush`]) when the thread exits.
pub struct Cache<T: Local> {
    slots: RefCell<[Option<Entry<T>>; SLOTS]>,
    epoch: Cell<u64>,
}

impl<T: Local> Cache<T> {
    /// An empty cache.
    #[allow(clippy::new_without_default)] // a `const` initializer is the point
    pub const fn new() -> Self {
        Self {
            slots: RefCell::new([const { None }; SLOTS]),
            epoch: Cell::new(0),
        }
    }

    /// Drops the entries of states whose anchors are gone, if any went
    /// since the last look.
    #[inline]
    fn sweep(&self, home: &Home<T>) {
        let epoch = home.epoch.load(Acquire);
        if self.epoch.get() != epoch {
            self.sweep_dead(epoch);
        }
    }

    #[cold]
    fn sweep_dead(&self, epoch: u64) {
        // Busy (a state's code is running on this thread, below a `with`):
        // the next use sweeps.
        let Ok(mut slots) = self.slots.try_borrow_mut() else {
            return;
        };
        self.epoch.set(epoch);
        let mut dead: [Option<Entry<T>>; SLOTS] = [const { None }; SLOTS];
        for (slot, out) in slots.iter_mut().zip(dead.iter_mut()) {
            if slot.as_ref().is_some_and(|e| !e.alive.load(Acquire)) {
                *out = slot.take();
            }
        }
        // The states drop with the borrow released: their `Drop` may use
        // this cache.
        drop(slots);
        drop(dead);
    }

    /// Puts a state into its slot, flushing whatever it evicts.
    #[cold]
    fn install(&self, id: u64, value: Arc<T>, alive: Arc<AtomicBool>) -> bool {
        let Ok(mut slots) = self.slots.try_borrow_mut() else {
            return false;
        };
        let entry = Entry {
            id,
            value,
            alive,
            local: Cell::new(0),
        };
        let old = slots[slot(id)].replace(entry);
        drop(slots);
        if let Some(old) = old {
            old.flush();
        }
        true
    }

    /// Runs `f` on the cached state `id`, if this thread holds it; `f` is
    /// only taken on a hit.
    #[inline]
    fn hit<R, F: FnOnce(&T, &Cell<u64>) -> R>(&self, id: u64, f: &mut Option<F>) -> Option<R> {
        let slots = self.slots.try_borrow().ok()?;
        let entry = slots[slot(id)].as_ref().filter(|e| e.id == id)?;
        let f = f.take()?;
        Some(f(&entry.value, &entry.local))
    }

    #[inline]
    fn holds(&self, id: u64) -> bool {
        match self.slots.try_borrow() {
            Ok(slots) => slots[slot(id)].as_ref().is_some_and(|e| e.id == id),
            // Busy: do not install now.
            Err(_) => true,
        }
    }
}

impl<T: Local> Drop for Cache<T> {
    fn drop(&mut self) {
        for entry in self.slots.get_mut().iter().flatten() {
            entry.flush();
        }
    }
}

impl<T: Local> fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

#[inline]
fn slot(id: u64) -> usize {
    (id % SLOTS as u64) as usize
}

/// Owns a state of a [`Home`]: the state stays reachable by its tokens while
/// an anchor of it exists. Cloning an anchor is cheap (two reference
/// count); layers, services and handles each hold one.
///
/// Dereferences to the `Arc` of the state.
pub struct Anchor<T: Local> {
    owner: Arc<Owner<T>>,
}

/// Retires the state when the last anchor goes. One `Arc` per anchor, so
/// that cloning a service costs one reference count, as with a plain
/// `Arc`.
struct Owner<T: Local> {
    id: u64,
    value: Arc<T>,
    alive: Arc<AtomicBool>,
}

impl<T: Local> Drop for Owner<T> {
    fn drop(&mut self) {
        let home = T::home();
        self.alive.store(false, Release);
        let gone = home.shard(self.id).remove(&self.id);
        home.epoch.fetch_add(1, AcqRel);
        // The state's own `Drop` (if this was its last reference) runs with
        // the directory unlocked.
        drop(gone);
    }
}

impl<T: Local> Anchor<T> {
    /// Anchors `value` in its type's home, under a new id.
    pub fn new(value: Arc<T>) -> Self {
        let home = T::home();
        let id = NonZeroU64::MIN
            .saturating_add(NEXT_ID.fetch_add(1, Relaxed))
            .get();
        let alive = Arc::new(AtomicBool::new(true));
        home.shard(id).insert(id, (value.clone(), alive.clone()));
        Self {
            owner: Arc::new(Owner { id, value, alive }),
        }
    }

    /// A token for a response future; makes sure this thread's cache holds
    /// the state, so that the future finds it there.
    #[inline]
    pub fn token(&self) -> Token<T> {
        let owner = &*self.owner;
        let id = owner.id;
        let _ = T::home().cache.try_with(|cache| {
            if !cache.holds(id) {
                cache.install(id, owner.value.clone(), owner.alive.clone());
            }
        });
        Token::new(id)
    }

    /// How many anchors of this state exist (this one included).
    pub fn owners(&self) -> usize {
        Arc::strong_count(&self.owner)
    }

    /// Runs `f` with this thread's local word of the state, as
    /// [`Token::with`] would (for example to flush it before a snapshot).
    pub fn with_local<R>(&self, f: impl FnOnce(&T, &Cell<u64>) -> R) -> R {
        let token = self.token();
        let mut f = Some(f);
        let home = T::home();
        if let Ok(Some(r)) = home.cache.try_with(|c| c.hit(token.id.get(), &mut f)) {
            return r;
        }
        let local = Cell::new(0);
        let r = match f.take() {
            Some(f) => f(&self.owner.value, &local),
            // `f` is taken only on a hit, which returned above.
            None => unreachable!("the closure runs once"),
        };
        if local.get() != 0 {
            self.owner.value.flush(local.get());
        }
        r
    }
}

impl<T: Local> Clone for Anchor<T> {
    fn clone(&self) -> Self {
        Self {
            owner: self.owner.clone(),
        }
    }
}

impl<T: Local> Deref for Anchor<T> {
    type Target = Arc<T>;

    #[inline]
    fn deref(&self) -> &Arc<T> {
        &self.owner.value
    }
}

impl<T: Local + fmt::Debug> fmt::Debug for Anchor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.owner.value, f)
    }
}

/// A `Copy` reference to a state of a [`Home`], for response futures: it
/// holds no reference count. See the [module docs](self).
pub struct Token<T: Local> {
    id: NonZeroU64,
    _state: PhantomData<fn() -> T>,
}

impl<T: Local> Clone for Token<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Local> Copy for Token<T> {}

impl<T: Local> fmt::Debug for Token<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Token").field(&self.id).finish()
    }
}

impl<T: Local> Token<T> {
    fn new(id: u64) -> Self {
        Self {
            id: NonZeroU64::MIN.saturating_add(id - 1),
            _state: PhantomData,
        }
    }

    /// Runs `f` on the state and this thread's local word of it; `None`
    /// when the state's anchors are all gone (and this thread no longer
    /// caches it).
    ///
    /// On a thread whose cache does not hold the state, the state is
    /// looked up in the home's directory and cached; if the cache cannot
    /// take it (the thread is exiting, or this is a nested call from the
    /// state's own code), `f` gets a fresh word, flushed right after.
    #[inline]
    pub fn with<R>(self, f: impl FnOnce(&T, &Cell<u64>) -> R) -> Option<R> {
        let home = T::home();
        let mut f = Some(f);
        if let Ok(Some(r)) = home.cache.try_with(|c| {
            c.sweep(home);
            c.hit(self.id.get(), &mut f)
        }) {
            return Some(r);
        }
        self.slow(f?)
    }

    #[cold]
    #[inline(never)]
    fn slow<R>(self, f: impl FnOnce(&T, &Cell<u64>) -> R) -> Option<R> {
        let home = T::home();
        let (value, alive) = home.lookup(self.id.get())?;
        let mut f = Some(f);
        let cached = home.cache.try_with(|c| {
            if c.install(self.id.get(), value.clone(), alive.clone()) {
                c.hit(self.id.get(), &mut f)
            } else {
                None
            }
        });
        if let Ok(Some(r)) = cached {
            return Some(r);
        }
        let local = Cell::new(0);
        let r = f.take()?(&value, &local);
        if local.get() != 0 && alive.load(Acquire) {
            value.flush(local.get());
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counter {
        flushed: AtomicU64,
        dropped: Arc<AtomicUsize>,
    }

    impl Local for Counter {
        fn home() -> &'static Home<Self> {
            &HOME
        }

        fn flush(&self, local: u64) {
            self.flushed.fetch_add(local, Relaxed);
        }
    }

    impl Drop for Counter {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    thread_local! {
        static CACHE: Cache<Counter> = const { Cache::new() };
    }
    static HOME: Home<Counter> = Home::new(&CACHE);

    fn counter() -> (Anchor<Counter>, Arc<AtomicUsize>) {
        let dropped = Arc::new(AtomicUsize::new(0));
        let anchor = Anchor::new(Arc::new(Counter {
            flushed: AtomicU64::new(0),
            dropped: dropped.clone(),
        }));
        (anchor, dropped)
    }

    fn bump(token: Token<Counter>) -> Option<u64> {
        token.with(|_, local| {
            local.set(local.get() + 1);
            local.get()
        })
    }

    #[test]
    fn a_token_reaches_its_state_on_the_same_thread() {
        let (anchor, _) = counter();
        let token = anchor.token();
        assert_eq!(bump(token), Some(1));
        assert_eq!(bump(token), Some(2));
        assert_eq!(anchor.flushed.load(Relaxed), 0);
    }

    #[test]
    fn a_token_reaches_its_state_on_another_thread_and_flushes_there_at_exit() {
        let (anchor, _) = counter();
        let token = anchor.token();
        std::thread::spawn(move || {
            assert_eq!(bump(token), Some(1));
            assert_eq!(bump(token), Some(2));
        })
        .join()
        .unwrap();
        assert_eq!(anchor.flushed.load(Relaxed), 2);
    }

    #[test]
    fn an_evicted_entry_is_flushed() {
        let (first, _) = counter();
        let token = first.token();
        bump(token);
        bump(token);
        // A later anchor whose id lands on the first's slot evicts it (ids
        // are shared with the tests running beside this one).
        let mut others = Vec::new();
        loop {
            let (other, _) = counter();
            bump(other.token());
            let evicts = slot(other.owner.id) == slot(first.owner.id);
            others.push(other);
            if evicts {
                break;
            }
        }
        assert_eq!(first.flushed.load(Relaxed), 2);
        // And the token still works, through the directory.
        assert_eq!(bump(token), Some(1));
    }

    #[test]
    fn a_dead_state_is_unreachable_and_freed_by_the_next_use() {
        let (anchor, dropped) = counter();
        let token = anchor.token();
        bump(token);
        let clone = anchor.clone();
        assert_eq!(anchor.owners(), 2);
        drop(anchor);
        assert_eq!(bump(token), Some(2), "an anchor is left");
        drop(clone);
        // Cached here until this thread's next use of the home.
        assert_eq!(dropped.load(Relaxed), 0);
        let (other, _) = counter();
        bump(other.token());
        assert_eq!(dropped.load(Relaxed), 1);
        assert_eq!(bump(token), None);
        // Elsewhere it was never cached.
        std::thread::spawn(move || assert_eq!(bump(token), None))
            .join()
            .unwrap();
    }

    #[test]
    fn nested_use_from_the_state_code_does_not_panic() {
        let (outer, _) = counter();
        let (inner, _) = counter();
        let (outer_token, inner_token) = (outer.token(), inner.token());
        let nested = outer_token.with(|_, _| {
            // A new state installed while a cache entry is borrowed.
            let (third, _) = counter();
            let third_token = third.token();
            (bump(inner_token), bump(third_token))
        });
        assert_eq!(nested, Some((Some(1), Some(1))));
    }

    #[test]
    fn with_local_reads_this_threads_word() {
        let (anchor, _) = counter();
        let token = anchor.token();
        bump(token);
        bump(token);
        let taken = anchor.with_local(|_, local| local.replace(0));
        assert_eq!(taken, 2);
        assert_eq!(bump(token), Some(1));
    }
}
