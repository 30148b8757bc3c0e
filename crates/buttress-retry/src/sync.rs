//! The synchronisation primitives of the retry budget: std's, or loom's
//! when the crate is built with `--cfg buttress_loom` for the model tests
//! (`budget/loom_models.rs`).

#[cfg(buttress_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(buttress_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(buttress_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(buttress_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
