//! Durable sagas as tower services: steps with compensations, a write-ahead
//! log in SQLite or PostgreSQL, crash recovery and a transactional outbox.
//!
//! A [`Saga`] is a list of [`Step`]s over a serde-serializable context. Each
//! step has an action and (before the pivot) a compensation, both tower
//! services, so any buttress layer can wrap them. The saga itself is a
//! `Service<C>`: a call runs the actions in order and returns the final
//! context, or compensates the completed steps in reverse order and returns
//! a [`SagaError`] naming the failed step, its cause and every
//! compensation's outcome.
//!
//! Every step is written to a [`SagaLog`] before it runs and after
//! (write-ahead), so a saga a crash interrupted is finished by
//! [`Saga::recover`] in the same or another process: [`MemoryLog`] for
//! tests, [`sqlite::SqliteLog`] (feature `sqlite`) embedded, and
//! [`postgres::PostgresLog`] (feature `postgres`) for replicas sharing the
//! work. Actions and compensations run at least once: each receives an
//! idempotency key (`saga id:step:kind`) that stays the same across tries
//! and crashes, so the service it calls can de-duplicate.
//!
//! ```
//! # mod buttress { pub mod saga { pub use buttress_saga::*; } }
//! use buttress::saga::{MemoryLog, Saga, Step, StepRequest, RetryPolicy};
//! use serde::{Deserialize, Serialize};
//! use tower::{service_fn, Service, ServiceExt};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Order { reserved: bool, charged: bool }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut saga = Saga::builder("order", 1)
//!     .log(MemoryLog::new())
//!     .retry(RetryPolicy::never())
//!     .step(
//!         Step::new("reserve", service_fn(|r: StepRequest<Order>| async move {
//!             Ok::<_, std::io::Error>(Order { reserved: true, ..r.context })
//!         }))
//!         .compensate(service_fn(|_r: StepRequest<Order>| async move {
//!             Ok::<_, std::io::Error>(())
//!         })),
//!     )
//!     .pivot(Step::new("charge", service_fn(|r: StepRequest<Order>| async move {
//!         Ok::<_, std::io::Error>(Order { charged: true, ..r.context })
//!     })))
//!     .build()
//!     .unwrap();
//! let done = saga.ready().await.unwrap()
//!     .call(Order { reserved: false, charged: false }).await.unwrap();
//! assert!(done.reserved && done.charged);
//! # }
//! ```
//!
//! # Guarantees
//!
//! - Write-ahead: a step is logged as started before its action runs and as
//!   done (with the new context, and its outbox messages, in the same
//!   transaction) after. A process that dies anywhere leaves a log from
//!   which [`Saga::recover`] continues: an action in doubt is compensated
//!   ([`OnCrash::Compensate`], the default) or run again
//!   ([`OnCrash::Resume`]); steps after the pivot always go forward; a
//!   compensation in doubt runs again. Hence at least once, never lost.
//! - One owner at a time: the process running a saga holds a lease, renewed
//!   by every write and while a step runs; recovery claims only sagas whose
//!   lease expired, and a write by a process that lost its lease fails
//!   ([`LogError::LeaseLost`]).
//! - The log is checked on replay ([`SagaState::apply`]): a corrupt or
//!   out-of-order entry is a typed [`LogError`], reported by recovery,
//!   never a panic; a saga logged by another version of the definition is
//!   left alone and reported.
//!
//! The tests kill a process with SIGKILL before and after each write of the
//! log, on SQLite and PostgreSQL, and check these against the effects the
//! steps recorded by idempotency key.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
pub mod error;
pub mod log;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod outbox;
mod saga;
pub mod state;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

pub use config::{RetryConfig, SagaConfig};
pub use error::{Cause, Compensation, CompensationOutcome, LogError, SagaError};
pub use log::{MemoryLog, Message, SagaLog};
pub use saga::{
    OnCompensationFailure, OnCrash, RecoveryReport, RetryPolicy, Saga, SagaBuilder, SagaEvent,
    SagaFuture, SagaHandle, Step, StepOutput, StepRequest,
};
pub use state::{Entry, Kind, Phase, SagaState};
