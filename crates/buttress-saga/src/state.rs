//! The saga state machine: the entries a log holds, and the state they fold
//! into.
//!
//! The log is append-only; a saga's state is the fold of its entries from
//! the input context, so a process that recovers a saga sees exactly what
//! the crashed one had written. [`SagaState::apply`] checks every transition
//! and returns a typed [`LogError`] for an entry that does not fit (a corrupt
//! or foreign log), never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::LogError;

/// Which half of a step an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
}

impl Kind {
    /// `"action"` or `"compensation"`, as used in idempotency keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Action => "action",
            Kind::Compensation => "compensation",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Running its actions in order.
    Forward,
    /// Running the compensations of its completed steps, last first.
    Compensating,
    /// Every action succeeded (terminal).
    Completed,
    /// Every needed compensation succeeded (terminal).
    Compensated,
    /// A compensation failed past its retry limit: parked until resumed by
    /// hand.
    NeedsAttention,
}

impl Phase {
    /// The name stored in the log's status column.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Compensating => "compensating",
            Phase::Completed => "completed",
            Phase::Compensated => "compensated",
            Phase::NeedsAttention => "needs_attention",
        }
    }

    /// Parses [`Phase::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "forward" => Phase::Forward,
            "compensating" => Phase::Compensating,
            "completed" => Phase::Completed,
            "compensated" => Phase::Compensated,
            "needs_attention" => Phase::NeedsAttention,
            _ => return None,
        })
    }

    /// `true` for the phases recovery picks up (forward, compensating).
    pub fn is_unfinished(self) -> bool {
        matches!(self, Phase::Forward | Phase::Compensating)
    }

    /// `true` for completed and compensated.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Compensated)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record of the write-ahead log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum Entry {
    /// A step's action or compensation is about to run (written before it
    /// runs).
    Started {
        /// The step's index.
        step: u32,
        /// Action or compensation.
        kind: Kind,
    },
    /// It succeeded; for an action, `context` is the context after it.
    Done {
        /// The step's index.
        step: u32,
        /// Action or compensation.
        kind: Kind,
        /// The context after an action (`None` for a compensation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<serde_json::Value>,
    },
    /// It failed after its retries.
    Failed {
        /// The step's index.
        step: u32,
        /// Action or compensation.
        kind: Kind,
        /// The last error, as text.
        error: String,
    },
    /// The saga moved to another phase.
    Phase {
        /// The new phase.
        phase: Phase,
        /// Why, for people reading the log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// A saga's state: the fold of its log entries.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaState {
    /// The saga's id.
    pub id: String,
    /// Its phase.
    pub phase: Phase,
    /// The context after the last completed action.
    pub context: serde_json::Value,
    /// How many actions completed (always a prefix of the steps).
    pub actions_done: u32,
    /// An action recorded as started, with no outcome: it may have run.
    pub action_in_doubt: Option<u32>,
    /// The action that failed, with its error.
    pub action_failed: Option<(u32, String)>,
    /// Steps whose compensation completed.
    pub compensated: BTreeSet<u32>,
    /// Compensations recorded as started, with no outcome (several when
    /// they run in parallel).
    pub compensation_in_doubt: BTreeSet<u32>,
    /// Compensations that failed past their limit (since the saga last
    /// entered the compensating phase), with their errors.
    pub compensation_failed: BTreeMap<u32, String>,
    /// Entries applied so far: the sequence number of the next one.
    pub next_seq: u64,
    /// Why the saga last changed phase.
    pub reason: Option<String>,
}

impl SagaState {
    /// The state of a saga that has written no entry yet.
    pub fn new(id: impl Into<String>, context: serde_json::Value) -> Self {
        Self {
            id: id.into(),
            phase: Phase::Forward,
            context,
            actions_done: 0,
            action_in_doubt: None,
            action_failed: None,
            compensated: BTreeSet::new(),
            compensation_in_doubt: BTreeSet::new(),
            compensation_failed: BTreeMap::new(),
            next_seq: 0,
            reason: None,
        }
    }

    /// Folds `entries` (in sequence order) into a state.
    pub fn replay(
        id: impl Into<String>,
        input: serde_json::Value,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Self, LogError> {
        let mut state = Self::new(id, input);
        for entry in entries {
            state.apply(&entry)?;
        }
        Ok(state)
    }

    fn invalid(&self, entry: &Entry, why: &str) -> LogError {
        LogError::InvalidTransition {
            saga: self.id.clone(),
            seq: self.next_seq,
            reason: format!("{entry:?} in phase {}: {why}", self.phase),
        }
    }

    /// Applies one entry, checking that it is a legal next step. On error
    /// the state is unchanged.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), LogError> {
        use Kind::*;
        match entry {
            Entry::Started { step, kind: Action } => {
                if self.phase != Phase::Forward {
                    return Err(self.invalid(entry, "actions run only going forward"));
                }
                if *step != self.actions_done {
                    return Err(self.invalid(entry, "actions start in order"));
                }
                self.action_in_doubt = Some(*step);
            }
            Entry::Done {
                step,
                kind: Action,
                context,
            } => {
                if self.phase != Phase::Forward || self.action_in_doubt != Some(*step) {
                    return Err(self.invalid(entry, "no such action in flight"));
                }
                let Some(context) = context else {
                    return Err(self.invalid(entry, "a done action carries its context"));
                };
                self.context = context.clone();
                self.actions_done += 1;
                self.action_in_doubt = None;
            }
            Entry::Failed {
                step,
                kind: Action,
                error,
            } => {
                if self.phase != Phase::Forward || self.action_in_doubt != Some(*step) {
                    return Err(self.invalid(entry, "no such action in flight"));
                }
                self.action_in_doubt = None;
                self.action_failed = Some((*step, error.clone()));
            }
            Entry::Started {
                step,
                kind: Compensation,
            } => {
                if self.phase != Phase::Compensating {
                    return Err(self.invalid(entry, "compensations run only compensating"));
                }
                let ran = *step < self.actions_done || self.action_in_doubt == Some(*step);
                if !ran || self.compensated.contains(step) {
                    return Err(self.invalid(entry, "nothing to compensate for this step"));
                }
                if self.compensation_in_doubt.contains(step) {
                    return Err(self.invalid(entry, "this compensation is in flight already"));
                }
                self.compensation_in_doubt.insert(*step);
            }
            Entry::Done {
                step,
                kind: Compensation,
                ..
            } => {
                if self.phase != Phase::Compensating || !self.compensation_in_doubt.contains(step) {
                    return Err(self.invalid(entry, "no such compensation in flight"));
                }
                self.compensation_in_doubt.remove(step);
                self.compensated.insert(*step);
            }
            Entry::Failed {
                step,
                kind: Compensation,
                error,
            } => {
                if self.phase != Phase::Compensating || !self.compensation_in_doubt.contains(step) {
                    return Err(self.invalid(entry, "no such compensation in flight"));
                }
                self.compensation_in_doubt.remove(step);
                self.compensation_failed.insert(*step, error.clone());
            }
            Entry::Phase { phase, reason } => {
                let ok = match (self.phase, phase) {
                    (Phase::Forward, Phase::Completed) => self.action_in_doubt.is_none(),
                    (Phase::Forward, Phase::Compensating) => true,
                    (Phase::NeedsAttention, Phase::Compensating) => true,
                    (Phase::Compensating, Phase::Compensated) => {
                        self.compensation_in_doubt.is_empty() && self.compensation_failed.is_empty()
                    }
                    (Phase::Compensating, Phase::NeedsAttention) => {
                        self.compensation_in_doubt.is_empty()
                    }
                    _ => false,
                };
                if !ok {
                    return Err(self.invalid(entry, "not a legal phase change"));
                }
                if *phase == Phase::Compensating {
                    self.compensation_failed.clear();
                }
                self.phase = *phase;
                self.reason = reason.clone();
            }
        }
        self.next_seq += 1;
        Ok(())
    }

    /// The steps that still need compensating, last first: completed
    /// actions and an action in doubt, minus those compensated, those whose
    /// compensation failed and those `compensable` rules out (the pivot and
    /// after).
    pub fn to_compensate(&self, compensable: impl Fn(u32) -> bool) -> Vec<u32> {
        let upper = match self.action_in_doubt {
            Some(s) => s + 1,
            None => self.actions_done,
        };
        (0..upper)
            .rev()
            .filter(|s| {
                compensable(*s)
                    && !self.compensated.contains(s)
                    && !self.compensation_failed.contains_key(s)
            })
            .collect()
    }
}
