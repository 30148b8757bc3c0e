//! The errors of sagas and of their logs.

use std::fmt;
use std::sync::Arc;

use buttress_core::BoxError;

use crate::state::Phase;

/// A log could not be read or written.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LogError {
    /// The database failed (connection, I/O, constraint).
    Database(Arc<str>),
    /// A stored row could not be decoded.
    Corrupt {
        /// The saga (or outbox message) it belongs to.
        saga: String,
        /// The entry's sequence number, when the row is an entry.
        seq: Option<u64>,
        /// What was wrong with it.
        reason: String,
    },
    /// An entry does not follow from the ones before it.
    InvalidTransition {
        /// The saga.
        saga: String,
        /// The entry's sequence number.
        seq: u64,
        /// Which entry, in which phase, and why it is illegal.
        reason: String,
    },
    /// This process no longer holds the saga's lease (another process
    /// claimed it after the lease expired): it must stop writing.
    LeaseLost {
        /// The saga.
        saga: String,
    },
    /// A saga with this id exists already.
    Duplicate {
        /// The saga.
        saga: String,
    },
    /// No saga with this id.
    NotFound {
        /// The saga.
        saga: String,
    },
    /// The database's schema is newer than this library knows.
    SchemaTooNew {
        /// The version found.
        found: i64,
        /// The newest version this library knows.
        known: i64,
    },
    /// The context could not be serialized or deserialized.
    Context(Arc<str>),
}

impl LogError {
    pub(crate) fn db(e: impl fmt::Display) -> Self {
        LogError::Database(e.to_string().into())
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Database(e) => write!(f, "saga log database error: {e}"),
            LogError::Corrupt { saga, seq, reason } => match seq {
                Some(seq) => write!(f, "corrupt saga log entry {saga}#{seq}: {reason}"),
                None => write!(f, "corrupt saga log row {saga}: {reason}"),
            },
            LogError::InvalidTransition { saga, seq, reason } => {
                write!(f, "invalid saga log entry {saga}#{seq}: {reason}")
            }
            LogError::LeaseLost { saga } => {
                write!(f, "lease on saga {saga} lost to another process")
            }
            LogError::Duplicate { saga } => write!(f, "saga {saga} exists already"),
            LogError::NotFound { saga } => write!(f, "no saga {saga} in the log"),
            LogError::SchemaTooNew { found, known } => write!(
                f,
                "saga log schema version {found} is newer than this library's ({known})"
            ),
            LogError::Context(e) => write!(f, "saga context (de)serialization failed: {e}"),
        }
    }
}

impl std::error::Error for LogError {}

/// How one compensation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompensationOutcome {
    /// It succeeded (after `attempts` tries in this run).
    Compensated {
        /// Tries in this run.
        attempts: u32,
    },
    /// It failed on every try; the last error as text.
    Failed {
        /// Tries in this run.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// It was not run: an earlier compensation failed and the saga stops
    /// at the first failure.
    NotRun,
}

/// One compensated (or not) step in a [`SagaError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compensation {
    /// The step's name.
    pub step: &'static str,
    /// How its compensation ended.
    pub outcome: CompensationOutcome,
}

/// Why a saga did not complete.
#[derive(Debug)]
#[non_exhaustive]
pub enum Cause {
    /// A step's action failed after its retries.
    Step(BoxError),
    /// The saga's deadline passed.
    DeadlineExceeded,
    /// The saga was compensated when recovered after a crash.
    Recovered,
    /// The log failed: the saga's state is whatever the log last holds, and
    /// recovery will pick it up.
    Log(LogError),
    /// The input or output context did not (de)serialize.
    Context(serde_json::Error),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Step(e) => write!(f, "{e}"),
            Cause::DeadlineExceeded => f.write_str("saga deadline exceeded"),
            Cause::Recovered => f.write_str("interrupted by a crash and compensated on recovery"),
            Cause::Log(e) => write!(f, "{e}"),
            Cause::Context(e) => write!(f, "context serialization: {e}"),
        }
    }
}

/// A saga failed: the step that failed, the cause, the outcome of every
/// compensation and the phase the saga ended in.
#[derive(Debug)]
pub struct SagaError {
    pub(crate) saga_id: String,
    pub(crate) step: Option<&'static str>,
    pub(crate) cause: Cause,
    pub(crate) compensations: Vec<Compensation>,
    pub(crate) phase: Option<Phase>,
}

impl SagaError {
    /// The saga's id.
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    /// The step whose action failed (`None` when the saga failed outside a
    /// step: its deadline before a step began, the log).
    pub fn step(&self) -> Option<&'static str> {
        self.step
    }

    /// Why the saga failed.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// The compensations run, last step first.
    pub fn compensations(&self) -> &[Compensation] {
        &self.compensations
    }

    /// The phase the saga ended in: `Compensated`, `NeedsAttention`, or
    /// `None` when the log failed and the phase is unknown.
    pub fn phase(&self) -> Option<Phase> {
        self.phase
    }

    /// `true` when every compensation succeeded.
    pub fn is_compensated(&self) -> bool {
        self.phase == Some(Phase::Compensated)
    }

    /// `true` when the saga is parked for a person to look at.
    pub fn needs_attention(&self) -> bool {
        self.phase == Some(Phase::NeedsAttention)
    }
}

impl fmt::Display for SagaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "saga {} failed", self.saga_id)?;
        if let Some(step) = self.step {
            write!(f, " at step `{step}`")?;
        }
        write!(f, ": {}", self.cause)?;
        if let Some(phase) = self.phase {
            write!(f, " ({phase})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SagaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Step(e) => Some(&**e),
            Cause::Log(e) => Some(e),
            Cause::Context(e) => Some(e),
            _ => None,
        }
    }
}
