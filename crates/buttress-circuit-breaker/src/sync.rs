//! The synchronisation primitives of the state machine: std's, or loom's
//! when the crate is built with `--cfg buttress_loom` for the model tests
//! (`tests` in `state.rs`).

#[cfg(buttress_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(buttress_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Mutex, MutexGuard,
};
