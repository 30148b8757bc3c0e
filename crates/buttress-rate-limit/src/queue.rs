//! The wait queue: callers that may wait for permits, served by priority,
//! then in arrival order, per key.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use crate::algorithm::Verdict;

/// A waiter's place: higher priorities first, then arrival order.
pub(crate) type Place = (Reverse<u8>, u64);

/// The waiters of every key. Only the first waiter of a key (its head) may
/// take permits of that key; when it does (or leaves), it wakes the next.
/// A caller arriving while anyone waits joins the queue instead of taking
/// permits directly, so nobody overtakes a waiter of its key and priority.
pub struct Queue<K> {
    inner: Mutex<Inner<K>>,
    /// Waiters of all keys: the call path reads it to know whether the
    /// queue must be consulted at all.
    len: AtomicUsize,
}

struct Inner<K> {
    next: u64,
    keys: HashMap<K, BTreeMap<Place, Option<Waker>>>,
}

/// What a waiter's turn gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// The waiter was at the head and got its permits; it has left the
    /// queue.
    Acquired,
    /// At the head, but denied: the verdict's wait.
    Denied(Option<u64>),
    /// Not at the head: its waker is stored, it is woken when it is.
    Behind,
    /// The waiter is not in the queue (it left).
    Gone,
}

impl<K> Queue<K> {
    /// Waiters now, of every key.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len.load(Acquire)
    }
}

impl<K> fmt::Debug for Queue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("len", &self.len()).finish()
    }
}

impl<K: Hash + Eq + Clone> Queue<K> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                next: 0,
                keys: HashMap::new(),
            }),
            len: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the queue of `key` at `priority`; `None` when `max` callers
    /// already wait.
    pub(crate) fn join(&self, key: &K, priority: u8, max: usize) -> Option<Place> {
        let mut inner = self.lock();
        if self.len.load(Relaxed) >= max {
            return None;
        }
        let place = (Reverse(priority), inner.next);
        inner.next += 1;
        inner
            .keys
            .entry(key.clone())
            .or_default()
            .insert(place, None);
        self.len.fetch_add(1, Release);
        Some(place)
    }

    /// The waiter's turn: if it is the head of its key, `acquire` runs
    /// (under the queue's lock, so that no other waiter of the key runs
    /// between its check and its taking); on success it leaves and wakes
    /// the next head. Otherwise `waker` is stored for when it becomes head.
    pub(crate) fn turn(
        &self,
        key: &K,
        place: Place,
        waker: &Waker,
        acquire: impl FnOnce() -> Verdict,
    ) -> Turn {
        let mut inner = self.lock();
        let Some(waiters) = inner.keys.get_mut(key) else {
            return Turn::Gone;
        };
        let Some((&head, _)) = waiters.first_key_value() else {
            return Turn::Gone;
        };
        if head != place {
            match waiters.get_mut(&place) {
                Some(slot) => {
                    if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                        *slot = Some(waker.clone());
                    }
                    return Turn::Behind;
                }
                None => return Turn::Gone,
            }
        }
        match acquire() {
            Verdict::Allow => {
                let next = Self::remove(&mut inner, key, place, &self.len);
                drop(inner);
                if let Some(w) = next {
                    w.wake();
                }
                Turn::Acquired
            }
            Verdict::Deny(wait) => Turn::Denied(wait),
        }
    }

    /// Leaves the queue (a waiter that gave up, timed out or was dropped);
    /// wakes the next head if this one was the head.
    pub(crate) fn leave(&self, key: &K, place: Place) {
        let mut inner = self.lock();
        let next = Self::remove(&mut inner, key, place, &self.len);
        drop(inner);
        if let Some(w) = next {
            w.wake();
        }
    }

    /// Removes `place`; returns the waker of the key's new head if the
    /// removed one was the head.
    fn remove(inner: &mut Inner<K>, key: &K, place: Place, len: &AtomicUsize) -> Option<Waker> {
        let waiters = inner.keys.get_mut(key)?;
        let was_head = waiters.first_key_value().is_some_and(|(p, _)| *p == place);
        waiters.remove(&place)?;
        len.fetch_sub(1, Release);
        if waiters.is_empty() {
            inner.keys.remove(key);
            return None;
        }
        if was_head {
            return waiters.first_entry().and_then(|mut e| e.get_mut().take());
        }
        None
    }

    /// Waiters of one key.
    pub(crate) fn len_of(&self, key: &K) -> usize {
        self.lock().keys.get(key).map_or(0, BTreeMap::len)
    }
}

/// A waiter's membership: leaves the queue when dropped.
pub(crate) struct Enrolled<K: Hash + Eq + Clone> {
    pub(crate) queue: Arc<Queue<K>>,
    pub(crate) key: K,
    pub(crate) place: Place,
    pub(crate) active: bool,
}

impl<K: Hash + Eq + Clone> Enrolled<K> {
    pub(crate) fn turn(&mut self, waker: &Waker, acquire: impl FnOnce(&K) -> Verdict) -> Turn {
        let key = &self.key;
        let turn = self.queue.turn(key, self.place, waker, || acquire(key));
        if matches!(turn, Turn::Acquired | Turn::Gone) {
            self.active = false;
        }
        turn
    }

    pub(crate) fn leave(&mut self) {
        if std::mem::take(&mut self.active) {
            self.queue.leave(&self.key, self.place);
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Enrolled<K> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, SeqCst);
        }
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let f = Arc::new(Flag(false.into()));
        (f.clone(), Waker::from(f))
    }

    #[test]
    fn serves_priority_then_arrival_and_wakes_the_next_head() {
        let q: Queue<()> = Queue::new();
        let low = q.join(&(), 0, 10).unwrap();
        let low2 = q.join(&(), 0, 10).unwrap();
        let high = q.join(&(), 5, 10).unwrap();
        assert!(q.join(&(), 0, 3).is_none(), "bounded");
        let (_, w) = flag();
        assert_eq!(q.turn(&(), low, &w, || Verdict::Allow), Turn::Behind);
        let (low2_flag, w2) = flag();
        assert_eq!(q.turn(&(), low2, &w2, || Verdict::Allow), Turn::Behind);
        assert_eq!(
            q.turn(&(), high, &w, || Verdict::Deny(Some(5))),
            Turn::Denied(Some(5))
        );
        let (low_flag, wl) = flag();
        assert_eq!(q.turn(&(), low, &wl, || Verdict::Allow), Turn::Behind);
        assert_eq!(q.turn(&(), high, &w, || Verdict::Allow), Turn::Acquired);
        assert!(low_flag.0.load(SeqCst), "the new head is woken");
        assert!(!low2_flag.0.load(SeqCst));
        // The head leaving wakes the next one.
        q.leave(&(), low);
        assert!(low2_flag.0.load(SeqCst));
        assert_eq!(q.len(), 1);
        assert_eq!(q.turn(&(), low2, &w, || Verdict::Allow), Turn::Acquired);
        assert_eq!(q.len(), 0);
        assert_eq!(q.turn(&(), low2, &w, || Verdict::Allow), Turn::Gone);
    }

    #[test]
    fn keys_do_not_wait_for_each_other() {
        let q: Queue<u32> = Queue::new();
        let a = q.join(&1, 0, 10).unwrap();
        let b = q.join(&2, 0, 10).unwrap();
        let (_, w) = flag();
        assert_eq!(q.turn(&2, b, &w, || Verdict::Allow), Turn::Acquired);
        assert_eq!(q.len_of(&1), 1);
        q.leave(&1, a);
        assert_eq!(q.len(), 0);
    }
}
