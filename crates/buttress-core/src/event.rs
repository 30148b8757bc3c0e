//! Events and listeners.
//!
//! Every pattern publishes an event enum (`BulkheadEvent`, `TimeoutEvent`,
//! ...). Builders take `.on_event(listener)`; any `Fn(&Event) + Send + Sync`
//! is a listener. Without listeners, publishing costs one branch and the
//! event is never built.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Receives the events of one component.
///
/// ```
/// use buttress_core::{Listener, Listeners};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let seen = Arc::new(AtomicUsize::new(0));
/// let counter = seen.clone();
/// let listeners = Listeners::new().with(move |e: &u32| {
///     counter.fetch_add(*e as usize, Ordering::Relaxed);
/// });
/// listeners.emit(|| 2);
/// assert_eq!(seen.load(Ordering::Relaxed), 2);
/// ```
pub trait Listener<E>: Send + Sync + 'static {
    /// Called synchronously on the call path: keep it short and non-blocking.
    fn on_event(&self, event: &E);
}

impl<E, F> Listener<E> for F
where
    F: Fn(&E) + Send + Sync + 'static,
{
    fn on_event(&self, event: &E) {
        self(event)
    }
}

/// A set of listeners, cheap to clone and to test for emptiness.
///
/// A listener that panics is caught: the panic is reported through
/// `tracing` at `error` level and the call it was observing goes on.
pub struct Listeners<E> {
    list: Option<Arc<[Arc<dyn Listener<E>>]>>,
}

impl<E> Clone for Listeners<E> {
    fn clone(&self) -> Self {
        Self {
            list: self.list.clone(),
        }
    }
}

impl<E> Default for Listeners<E> {
    fn default() -> Self {
        Self { list: None }
    }
}

impl<E> fmt::Debug for Listeners<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners")
            .field("len", &self.list.as_deref().map_or(0, <[_]>::len))
            .finish()
    }
}

impl<E: 'static> Listeners<E> {
    /// No listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a listener (builder style).
    pub fn with(mut self, listener: impl Listener<E>) -> Self {
        self.push(Arc::new(listener));
        self
    }

    /// Adds a shared listener.
    pub fn push(&mut self, listener: Arc<dyn Listener<E>>) {
        let mut list: Vec<Arc<dyn Listener<E>>> =
            self.list.as_deref().map(<[_]>::to_vec).unwrap_or_default();
        list.push(listener);
        self.list = Some(list.into());
    }

    /// Number of listeners.
    pub fn len(&self) -> usize {
        self.list.as_deref().map_or(0, <[_]>::len)
    }

    /// `true` when nobody listens: the event need not be built.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.list.is_none()
    }

    /// Builds the event with `make` and hands it to every listener, only if
    /// there is one.
    #[inline]
    pub fn emit(&self, make: impl FnOnce() -> E) {
        if let Some(list) = &self.list {
            Self::dispatch(list, &make());
        }
    }

    #[cold]
    fn dispatch(list: &[Arc<dyn Listener<E>>], event: &E) {
        for listener in list {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| listener.on_event(event))) {
                tracing::error!(
                    panic = panic_message(&*panic),
                    "an event listener panicked; the call goes on"
                );
            }
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn empty_listeners_never_build_the_event() {
        let l: Listeners<u32> = Listeners::new();
        assert!(l.is_empty());
        l.emit(|| panic!("must not be built"));
    }

    #[test]
    fn a_panicking_listener_does_not_stop_the_others() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let l = Listeners::new()
            .with(|_: &u32| panic!("listener bug"))
            .with(move |e: &u32| {
                h.fetch_add(*e as usize, Ordering::SeqCst);
            });
        assert_eq!(l.len(), 2);
        l.emit(|| 5);
        l.emit(|| 1);
        assert_eq!(hits.load(Ordering::SeqCst), 6);
    }
}
