//! The write-ahead log sagas run on: the [`SagaLog`] trait and the
//! in-memory [`MemoryLog`].
//!
//! A log keeps one row per saga (name, version, phase, input context,
//! lease) and its entries in order. A process owns a saga while it runs it:
//! every write names the owner and fails with [`LogError::LeaseLost`] when
//! another process has claimed the saga since (its lease had expired), so a
//! process that lost a saga can never write over the one that took it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::LogError;
use crate::state::{Entry, Phase};

/// A boxed, sendable future: what the log's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A saga about to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSaga {
    /// Its id, unique in the log.
    pub id: String,
    /// The definition's name.
    pub name: String,
    /// The definition's version.
    pub version: u32,
    /// The input context.
    pub input: serde_json::Value,
    /// When its deadline passes (milliseconds since the Unix epoch), if it
    /// has one: recovery keeps to it.
    pub deadline_ms: Option<i64>,
}

/// A saga as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSaga {
    /// Its id.
    pub id: String,
    /// The definition's name.
    pub name: String,
    /// The definition's version.
    pub version: u32,
    /// The phase recorded in its row.
    pub phase: Phase,
    /// The input context.
    pub input: serde_json::Value,
    /// Its deadline (milliseconds since the Unix epoch), if any.
    pub deadline_ms: Option<i64>,
    /// Its entries, in sequence order.
    pub entries: Vec<Entry>,
}

/// A message for the transactional outbox: written in the same transaction
/// as the record of the step (or the business change) that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// A stable id consumers de-duplicate on.
    pub id: String,
    /// The aggregate key: messages of one key are published in order.
    pub key: String,
    /// The payload (JSON text).
    pub payload: String,
}

impl Message {
    /// A message with its id, key and payload.
    pub fn new(id: impl Into<String>, key: impl Into<String>, payload: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            payload: payload.into(),
        }
    }
}

/// Storage for saga logs. Implemented by [`MemoryLog`],
/// [`SqliteLog`](crate::sqlite::SqliteLog) and
/// [`PostgresLog`](crate::postgres::PostgresLog); a wrapper may implement it
/// to observe or inject faults.
pub trait SagaLog: Send + Sync + 'static {
    /// Records a new saga, owned by `owner` for `lease`.
    fn create<'a>(
        &'a self,
        saga: &'a NewSaga,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// Appends entry `seq` of saga `id`, renews `owner`'s lease, sets the
    /// row's phase when the entry changes it, and writes `messages` to the
    /// outbox, all in one transaction. Fails with
    /// [`LogError::LeaseLost`] when `owner` no longer owns the saga.
    fn append<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        seq: u64,
        entry: &'a Entry,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// Extends `owner`'s lease on saga `id` by `lease` from now, while a
    /// step runs longer than a lease ([`LogError::LeaseLost`] when another
    /// process has claimed it).
    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// Reads a saga and its entries.
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredSaga, LogError>>;

    /// Claims up to `limit` unfinished sagas of definition `name` whose
    /// lease has expired (their owner died), for `owner`, for `lease`. Two
    /// claimers never get the same saga while its lease runs.
    fn claim<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>>;

    /// Takes a saga parked as needing attention (or unfinished with an
    /// expired lease), for a manual resume.
    fn take_over<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// Gives up `owner`'s lease on a saga so another process may claim it.
    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), LogError>>;

    /// The ids of definition `name`'s sagas in `phase`.
    fn list<'a>(
        &'a self,
        name: &'a str,
        phase: Phase,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>>;
}

/// Milliseconds since the Unix epoch, the lease clock of the embedded logs.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The new phase an entry sets, if any.
pub(crate) fn phase_of(entry: &Entry) -> Option<Phase> {
    match entry {
        Entry::Phase { phase, .. } => Some(*phase),
        _ => None,
    }
}

#[allow(dead_code)] // used by the database logs only
pub(crate) fn decode_entry(saga: &str, seq: u64, body: &str) -> Result<Entry, LogError> {
    serde_json::from_str(body).map_err(|e| LogError::Corrupt {
        saga: saga.into(),
        seq: Some(seq),
        reason: e.to_string(),
    })
}

#[allow(dead_code)] // used by the database logs only
pub(crate) fn decode_row(
    id: &str,
    name: String,
    version: i64,
    phase: &str,
    input: &str,
    deadline_ms: Option<i64>,
) -> Result<StoredSaga, LogError> {
    let corrupt = |reason: String| LogError::Corrupt {
        saga: id.into(),
        seq: None,
        reason,
    };
    let version =
        u32::try_from(version).map_err(|_| corrupt(format!("version {version} out of range")))?;
    let phase = Phase::parse(phase).ok_or_else(|| corrupt(format!("unknown phase `{phase}`")))?;
    let input = serde_json::from_str(input).map_err(|e| corrupt(format!("input: {e}")))?;
    Ok(StoredSaga {
        id: id.into(),
        name,
        version,
        phase,
        input,
        deadline_ms,
        entries: Vec::new(),
    })
}

#[derive(Debug)]
struct Row {
    name: String,
    version: u32,
    phase: Phase,
    input: serde_json::Value,
    deadline_ms: Option<i64>,
    entries: Vec<Entry>,
    owner: Option<String>,
    lease_until: i64,
}

/// A log in this process's memory: for tests, and for sagas that need the
/// saga semantics (steps, compensations, retries) but not crash recovery.
/// Clones share the log.
///
/// ```
/// use buttress_saga::MemoryLog;
///
/// let log = MemoryLog::new();
/// assert!(log.messages().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    sagas: HashMap<String, Row>,
    messages: Vec<Message>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every outbox message written so far, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SagaLog for MemoryLog {
    fn create<'a>(
        &'a self,
        saga: &'a NewSaga,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let mut inner = self.lock();
        let out = if inner.sagas.contains_key(&saga.id) {
            Err(LogError::Duplicate {
                saga: saga.id.clone(),
            })
        } else {
            inner.sagas.insert(
                saga.id.clone(),
                Row {
                    name: saga.name.clone(),
                    version: saga.version,
                    phase: Phase::Forward,
                    input: saga.input.clone(),
                    deadline_ms: saga.deadline_ms,
                    entries: Vec::new(),
                    owner: Some(owner.to_owned()),
                    lease_until: now_ms().saturating_add(lease_ms(lease)),
                },
            );
            Ok(())
        };
        Box::pin(std::future::ready(out))
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        seq: u64,
        entry: &'a Entry,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let mut inner = self.lock();
        let out = match inner.sagas.get_mut(id) {
            None => Err(LogError::NotFound { saga: id.into() }),
            Some(row) if row.owner.as_deref() != Some(owner) => {
                Err(LogError::LeaseLost { saga: id.into() })
            }
            Some(row) if row.entries.len() as u64 != seq => Err(LogError::db(format!(
                "entry {seq} of saga {id} conflicts with the {} stored",
                row.entries.len()
            ))),
            Some(row) => {
                row.entries.push(entry.clone());
                if let Some(phase) = phase_of(entry) {
                    row.phase = phase;
                    if !phase.is_unfinished() {
                        row.owner = None;
                    }
                }
                inner.messages.extend_from_slice(messages);
                Ok(())
            }
        };
        Box::pin(std::future::ready(out))
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let mut inner = self.lock();
        let out = match inner.sagas.get_mut(id) {
            None => Err(LogError::NotFound { saga: id.into() }),
            Some(row) if row.owner.as_deref() != Some(owner) => {
                Err(LogError::LeaseLost { saga: id.into() })
            }
            Some(row) => {
                row.lease_until = now_ms().saturating_add(lease_ms(lease));
                Ok(())
            }
        };
        Box::pin(std::future::ready(out))
    }

    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredSaga, LogError>> {
        let inner = self.lock();
        let out = match inner.sagas.get(id) {
            None => Err(LogError::NotFound { saga: id.into() }),
            Some(row) => Ok(StoredSaga {
                id: id.into(),
                name: row.name.clone(),
                version: row.version,
                phase: row.phase,
                input: row.input.clone(),
                deadline_ms: row.deadline_ms,
                entries: row.entries.clone(),
            }),
        };
        Box::pin(std::future::ready(out))
    }

    fn claim<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        let mut inner = self.lock();
        let now = now_ms();
        let mut ids: Vec<String> = Vec::new();
        for (id, row) in inner.sagas.iter_mut() {
            if ids.len() >= limit {
                break;
            }
            let free = row.owner.is_none() || row.lease_until <= now;
            if row.name == name && row.phase.is_unfinished() && free {
                row.owner = Some(owner.to_owned());
                row.lease_until = now.saturating_add(lease_ms(lease));
                ids.push(id.clone());
            }
        }
        Box::pin(std::future::ready(Ok(ids)))
    }

    fn take_over<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let mut inner = self.lock();
        let now = now_ms();
        let out = match inner.sagas.get_mut(id) {
            None => Err(LogError::NotFound { saga: id.into() }),
            Some(row) => {
                let free = row.owner.is_none() || row.lease_until <= now;
                if row.phase == Phase::NeedsAttention || (row.phase.is_unfinished() && free) {
                    row.owner = Some(owner.to_owned());
                    row.lease_until = now.saturating_add(lease_ms(lease));
                    Ok(())
                } else {
                    Err(LogError::LeaseLost { saga: id.into() })
                }
            }
        };
        Box::pin(std::future::ready(out))
    }

    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
        let mut inner = self.lock();
        if let Some(row) = inner.sagas.get_mut(id) {
            if row.owner.as_deref() == Some(owner) {
                row.owner = None;
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn list<'a>(
        &'a self,
        name: &'a str,
        phase: Phase,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        let inner = self.lock();
        let mut ids: Vec<String> = inner
            .sagas
            .iter()
            .filter(|(_, r)| r.name == name && r.phase == phase)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        Box::pin(std::future::ready(Ok(ids)))
    }
}
