//! Shared building blocks of [buttress](https://docs.rs/buttress): the
//! resilience middleware for tower.
//!
//! Application code rarely depends on this crate directly; the facade
//! crate `buttress` re-exports it. Pattern crates use it for:
//!
//! - [`Outcome`] and [`Classifier`]: is a result a success, a failure, or
//!   not counted? Presets for errors, HTTP and gRPC.
//! - [`Listeners`]: the events of every pattern, zero cost when nobody
//!   listens, safe against panicking listeners.
//! - [`Registry`]: named components with a snapshot and controls, for health
//!   checks and dashboards.
//! - [`key`]: which bucket a request belongs to, for keyed instances.
//! - [`error`]: [`ConfigError`], the rejection errors ([`BulkheadFull`],
//!   [`Elapsed`], [`CircuitOpen`], [`RateLimited`] with its [`Quota`],
//!   [`RetryExhausted`]) and helpers to inspect a [`BoxError`].
//! - [`response`]: rejections to HTTP responses, [`grpc`] (feature `tonic`):
//!   to `tonic::Status`.
//! - [`deadline`]: per-request deadlines carried in request extensions.
//! - [`clock`]: a coarse clock read with one atomic load, kept by a ticker
//!   task that follows tokio's (paused) clock.
//!
//! ```
//! use buttress_core::{error::kind_of, BoxError, Elapsed, ErrorKind};
//! use std::time::Duration;
//!
//! let err: BoxError = Elapsed::new("upstream".into(), Duration::from_secs(2)).into();
//! assert_eq!(kind_of(&*err), Some(ErrorKind::Timeout));
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod bridge;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod error;
pub mod event;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod key;
pub mod outcome;
pub mod registry;
pub mod response;

pub use error::{
    BoxError, BulkheadFull, BulkheadFullReason, CircuitOpen, ConfigError, Elapsed, ErrorKind,
    Quota, RateLimited, RetryExhausted,
};
pub use event::{Listener, Listeners};
pub use key::KeyExtractor;
#[cfg(feature = "tonic")]
pub use outcome::TonicStatusClassifier;
pub use outcome::{
    Classifier, ErrorsAsFailures, GrpcClassifier, HttpClassifier, IgnoreIf, Outcome,
};
pub use registry::{Component, Registry};
