//! A registry of named components, for health checks, dashboards and admin
//! endpoints.
//!
//! There is no hidden global: create a [`Registry`], clone it where needed
//! (clones share the same map) and hand it to the builders that should
//! register their instance.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// A component that can be registered: a bulkhead, a breaker, ...
///
/// Pattern crates implement this on their handle types; applications rarely
/// implement it themselves, but may.
pub trait Component: Send + Sync + 'static {
    /// The instance name.
    fn name(&self) -> &str;

    /// The kind: `"bulkhead"`, `"timeout"`, `"circuit_breaker"`, ...
    fn kind(&self) -> &'static str;

    /// The current state, serialized.
    fn snapshot(&self) -> serde_json::Value;

    /// Resets counters and state to their initial values, where that makes
    /// sense for the kind. The default does nothing.
    fn reset(&self) {}

    /// The handle as `Any`, so that [`Registry::get`] can give back the
    /// typed handle with all its controls.
    fn as_any(&self) -> &dyn Any;
}

/// A name was registered twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateName {
    name: String,
}

impl DuplicateName {
    /// The name that was taken already.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for DuplicateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a component named `{}` is registered already", self.name)
    }
}

impl std::error::Error for DuplicateName {}

/// A cheap-to-clone handle to a map of named components.
///
/// Names are unique across kinds: one registry holds one component per
/// name, whatever its kind, so a bulkhead and a timeout both named `"api"`
/// cannot both register. [`register`](Registry::register) refuses the
/// second with [`DuplicateName`], and a builder given the registry fails
/// its `build()` with a `ConfigError` on the `name` field. Give each
/// registered instance its own name (`"api"`, `"api-timeout"`).
///
/// ```
/// use buttress_core::registry::{Component, Registry};
/// use std::any::Any;
///
/// #[derive(Clone)]
/// struct Pool;
/// impl Component for Pool {
///     fn name(&self) -> &str { "pool" }
///     fn kind(&self) -> &'static str { "pool" }
///     fn snapshot(&self) -> serde_json::Value { serde_json::json!({ "idle": 3 }) }
///     fn as_any(&self) -> &dyn Any { self }
/// }
///
/// let registry = Registry::new();
/// registry.register(Pool).unwrap();
/// assert!(registry.register(Pool).is_err());
/// assert_eq!(registry.snapshot()["pool"]["state"]["idle"], 3);
/// assert!(registry.get::<Pool>("pool").is_some());
/// ```
///
/// # Metrics
///
/// [`with_metrics`](Registry::with_metrics) switches the `metrics` bridge
/// on for every instance built with `.registry(&registry)`, as if each
/// builder had been given `.metrics()`. It takes effect in the pattern
/// crates built with their `metrics` feature (the facade's `metrics`
/// feature turns them all on), and only for builders that run after it.
///
/// ```
/// use buttress_core::Registry;
///
/// let registry = Registry::new().with_metrics();
/// assert!(registry.metrics_enabled());
/// assert!(registry.clone().metrics_enabled());
/// assert!(!Registry::new().metrics_enabled());
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<BTreeMap<String, Arc<dyn Component>>>>,
    /// Shared by every clone, like the map.
    metrics: Arc<AtomicBool>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Switches the `metrics` bridge on for every instance registered from
    /// now on (by a builder given `.registry(&registry)`), whether or not
    /// its builder was given `.metrics()`; builder style. Every clone of
    /// the registry, earlier ones included, sees the switch. It needs the
    /// `metrics` feature of the pattern crates; without it, builders
    /// ignore it.
    pub fn with_metrics(self) -> Self {
        self.metrics.store(true, Ordering::Relaxed);
        self
    }

    /// `true` when [`with_metrics`](Registry::with_metrics) was called on
    /// this registry or a clone of it: the pattern builders then attach
    /// their `metrics` bridge.
    pub fn metrics_enabled(&self) -> bool {
        self.metrics.load(Ordering::Relaxed)
    }

    /// Registers a component under its name.
    pub fn register(&self, component: impl Component) -> Result<(), DuplicateName> {
        self.register_arc(Arc::new(component))
    }

    /// Registers a shared component under its name.
    pub fn register_arc(&self, component: Arc<dyn Component>) -> Result<(), DuplicateName> {
        let mut map = self.write();
        let name = component.name().to_owned();
        if map.contains_key(&name) {
            return Err(DuplicateName { name });
        }
        map.insert(name, component);
        Ok(())
    }

    /// Removes the component `name`, returning it.
    pub fn remove(&self, name: &str) -> Option<Arc<dyn Component>> {
        self.write().remove(name)
    }

    /// The component `name`, type-erased.
    pub fn component(&self, name: &str) -> Option<Arc<dyn Component>> {
        self.read().get(name).cloned()
    }

    /// The component `name` as its concrete handle type `T`, with all the
    /// controls of that type.
    pub fn get<T: Component + Clone>(&self, name: &str) -> Option<T> {
        self.read()
            .get(name)
            .and_then(|c| c.as_any().downcast_ref::<T>().cloned())
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Every component: `{ name: { "kind": ..., "state": ... } }`.
    pub fn snapshot(&self) -> serde_json::Value {
        let map = self.read();
        let obj = map
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    serde_json::json!({ "kind": c.kind(), "state": c.snapshot() }),
                )
            })
            .collect();
        serde_json::Value::Object(obj)
    }

    /// Calls [`Component::reset`] on every component.
    pub fn reset_all(&self) {
        let components: Vec<_> = self.read().values().cloned().collect();
        for c in components {
            c.reset();
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn Component>>> {
        // A panic while holding this lock cannot leave the map inconsistent:
        // every write is a single insert or remove.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn Component>>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}
