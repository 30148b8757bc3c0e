//! What the pattern crates' metrics bridges share (feature `metrics`).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::Registry;

/// Whether a builder attaches its metrics bridge: asked for (`.metrics()`
/// on the builder, or a [`Registry::with_metrics`] registry) **and** a
/// recorder installed now.
///
/// A bridge resolves its handles once, against the recorder installed when
/// the layer is built. With none (`metrics`' no-op recorder is current),
/// every handle would be a no-op for the layer's whole life while its
/// events still cost every call: the bridge is left out instead, and the
/// first such build logs a `tracing` warning naming the component, since
/// the fix (install the recorder before building the layers) is the
/// user's. `metrics` offers no way to tell its no-op recorder apart but
/// its size: a recorder of zero size is taken for it (every real recorder
/// keeps its series in some state).
///
/// ```
/// use buttress_core::bridge::should_attach;
/// use buttress_core::Registry;
///
/// // Not asked for.
/// assert!(!should_attach("db", false, None));
/// // Asked for, but no recorder installed: left out (and a warning).
/// assert!(!should_attach("db", true, Some(&Registry::new().with_metrics())));
/// // Asked for, with a recorder.
/// let recorder = metrics_util::debugging::DebuggingRecorder::new();
/// metrics::with_local_recorder(&recorder, || assert!(should_attach("db", true, None)));
/// ```
pub fn should_attach(name: &str, on: bool, registry: Option<&Registry>) -> bool {
    if !(on || registry.is_some_and(Registry::metrics_enabled)) {
        return false;
    }
    if recorder_installed() {
        return true;
    }
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Relaxed) {
        tracing::warn!(
            buttress.name = name,
            "metrics asked for, but no `metrics` recorder is installed while the layer is built: \
             its events are not bridged to metrics (install the recorder before building the layers)"
        );
    }
    false
}

/// Whether a `metrics` recorder other than the no-op one is current (the
/// thread's local recorder, else the global one); see [`should_attach`].
///
/// ```
/// use buttress_core::bridge::recorder_installed;
///
/// assert!(!recorder_installed());
/// let recorder = metrics_util::debugging::DebuggingRecorder::new();
/// metrics::with_local_recorder(&recorder, || assert!(recorder_installed()));
/// ```
pub fn recorder_installed() -> bool {
    metrics::with_recorder(|r| std::mem::size_of_val(r) != 0)
}
