//! The synchronisation primitives of the permit state: std's, or loom's
//! when the crate is built with `--cfg buttress_loom` for the model tests
//! (`loom_models.rs`).

#[cfg(buttress_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(buttress_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(buttress_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(buttress_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Nothing outside the models; a `SeqCst` fence in them.
///
/// The permit state pairs a `SeqCst` write on one atomic with a `SeqCst`
/// read of another (see the top of `state.rs`), relying on the single
/// total order of `SeqCst` operations to rule out lost wake-ups. loom
/// treats `SeqCst` accesses as `AcqRel` (its README, "Unsupported
/// features") and would explore executions the memory model forbids; a
/// `SeqCst` fence between the write and the read, which loom does model,
/// gives the model that same order.
#[inline(always)]
pub(crate) fn seq_cst_pairing() {
    #[cfg(buttress_loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}
