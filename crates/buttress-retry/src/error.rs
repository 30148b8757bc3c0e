//! Error types.

pub use buttress_core::error::{BoxError, RetryExhausted};
