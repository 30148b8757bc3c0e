//! The atomics of the lock-free state (the GCRA word, the parameters'
//! sequence lock): std's, or loom's when the crate is built with
//! `--cfg buttress_loom` for the model tests (`loom_models.rs`).

#[cfg(buttress_loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(buttress_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(not(buttress_loom))]
pub(crate) use std::hint::spin_loop;
#[cfg(not(buttress_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};
