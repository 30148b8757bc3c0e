//! The SQLite saga log and outbox: the embedded default.
//!
//! One file, in WAL mode with `synchronous=NORMAL` (a commit survives a
//! process crash; an OS crash may lose the last commits, never corrupt
//! the file). The connection lives on a thread of its own, so the blocking
//! calls never run on the async executor. Several processes may open the
//! same file: writes take SQLite's write lock (`BEGIN IMMEDIATE`) and leases
//! decide who runs a saga.
//!
//! ```no_run
//! # async fn demo() -> Result<(), buttress_saga::LogError> {
//! use buttress_saga::sqlite::SqliteLog;
//!
//! let log = SqliteLog::open("sagas.db").await?;
//! assert_eq!(log.schema_version().await?, buttress_saga::sqlite::SCHEMA_VERSION);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::LogError;
use crate::log::{
    decode_entry, decode_row, lease_ms, now_ms, phase_of, BoxFuture, Message, NewSaga, SagaLog,
    StoredSaga,
};
use crate::outbox::{Backlog, OutboxStore, StoredMessage};
use crate::state::{Entry, Phase};

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE buttress_saga (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    phase TEXT NOT NULL,
    input TEXT NOT NULL,
    owner TEXT,
    lease_ms INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX buttress_saga_by_phase ON buttress_saga (name, phase, lease_until);
CREATE TABLE buttress_saga_entry (
    saga_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
CREATE TABLE buttress_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    published_ms INTEGER
);
CREATE INDEX buttress_outbox_pending ON buttress_outbox (key, seq) WHERE published_ms IS NULL;
CREATE TABLE buttress_outbox_key (
    key TEXT PRIMARY KEY,
    owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
ALTER TABLE buttress_saga ADD COLUMN deadline_ms INTEGER;
"#,
];

/// The schema version this library writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the pending migrations to `conn` in one transaction, recording
/// each version in `buttress_saga_schema`; returns the schema version.
/// Idempotent; [`SqliteLog::open`] calls it, and applications that
/// [`enqueue`] through their own connection call it once first.
pub fn migrate(conn: &mut Connection) -> Result<i64, LogError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(LogError::db)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS buttress_saga_schema (
            version INTEGER PRIMARY KEY,
            applied_ms INTEGER NOT NULL
        )",
    )
    .map_err(LogError::db)?;
    let current: i64 = tx
        .query_row(
            "SELECT coalesce(max(version), 0) FROM buttress_saga_schema",
            [],
            |r| r.get(0),
        )
        .map_err(LogError::db)?;
    if current > SCHEMA_VERSION {
        return Err(LogError::SchemaTooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(LogError::db)?;
        tx.execute(
            "INSERT INTO buttress_saga_schema (version, applied_ms) VALUES (?1, ?2)",
            params![i as i64 + 1, now_ms()],
        )
        .map_err(LogError::db)?;
    }
    tx.commit().map_err(LogError::db)?;
    Ok(SCHEMA_VERSION)
}

/// Writes `message` to the outbox inside the caller's transaction (on a
/// database [`migrate`]d first): it is published iff `tx` commits.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use buttress_saga::{sqlite, Message};
///
/// let mut conn = rusqlite::Connection::open_in_memory()?;
/// sqlite::migrate(&mut conn)?;
/// conn.execute_batch("CREATE TABLE orders (id TEXT)")?;
/// let tx = conn.transaction()?;
/// tx.execute("INSERT INTO orders VALUES ('o-1')", [])?;
/// sqlite::enqueue(&tx, &Message::new("o-1:created", "o-1", r#"{"created":true}"#))?;
/// tx.commit()?;
/// # Ok(()) }
/// ```
pub fn enqueue(tx: &Transaction<'_>, message: &Message) -> Result<(), LogError> {
    tx.execute(
        "INSERT INTO buttress_outbox (id, key, payload, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![message.id, message.key, message.payload, now_ms()],
    )
    .map_err(LogError::db)?;
    tx.execute(
        "INSERT INTO buttress_outbox_key (key) VALUES (?1) ON CONFLICT (key) DO NOTHING",
        params![message.key],
    )
    .map_err(LogError::db)?;
    Ok(())
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A saga log and outbox in one SQLite file. Clones share the connection
/// thread, which ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SqliteLog {
    jobs: mpsc::Sender<Job>,
}

impl SqliteLog {
    /// Opens (creating it if needed) the database at `path`, sets WAL and
    /// `synchronous=NORMAL`, and applies the migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        let path = path.as_ref().to_owned();
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("buttress-saga-sqlite".into())
            .spawn(move || {
                let opened = Connection::open(&path)
                    .map_err(LogError::db)
                    .and_then(|mut conn| {
                        conn.busy_timeout(Duration::from_secs(10))
                            .map_err(LogError::db)?;
                        conn.pragma_update(None, "journal_mode", "WAL")
                            .map_err(LogError::db)?;
                        conn.pragma_update(None, "synchronous", "NORMAL")
                            .map_err(LogError::db)?;
                        migrate(&mut conn)?;
                        Ok(conn)
                    });
                let mut conn = match opened {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(LogError::db)?;
        ready_rx
            .await
            .map_err(|_| LogError::db("the SQLite thread ended while opening"))??;
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the connection's thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| LogError::db("the SQLite thread has ended"))?;
        rx.await
            .map_err(|_| LogError::db("the SQLite thread has ended"))?
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i64, LogError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT coalesce(max(version), 0) FROM buttress_saga_schema",
                [],
                |r| r.get(0),
            )
            .map_err(LogError::db)
        })
        .await
    }
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, LogError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(LogError::db)
}

fn lease_error(tx: &Transaction<'_>, id: &str) -> LogError {
    let exists = tx
        .query_row(
            "SELECT 1 FROM buttress_saga WHERE id = ?1",
            [id],
            |_| Ok(()),
        )
        .optional();
    match exists {
        Ok(Some(())) => LogError::LeaseLost { saga: id.into() },
        Ok(None) => LogError::NotFound { saga: id.into() },
        Err(e) => LogError::db(e),
    }
}

impl SagaLog for SqliteLog {
    fn create<'a>(
        &'a self,
        saga: &'a NewSaga,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let saga = saga.clone();
        let owner = owner.to_owned();
        Box::pin(self.with(move |conn| {
            let input = serde_json::to_string(&saga.input)
                .map_err(|e| LogError::Context(e.to_string().into()))?;
            let now = now_ms();
            let lease = lease_ms(lease);
            let inserted = conn
                .execute(
                    "INSERT INTO buttress_saga
                     (id, name, version, phase, input, owner, lease_ms, lease_until, created_ms, updated_ms, deadline_ms)
                     VALUES (?1, ?2, ?3, 'forward', ?4, ?5, ?6, ?7, ?8, ?8, ?9)
                     ON CONFLICT (id) DO NOTHING",
                    params![
                        saga.id,
                        saga.name,
                        saga.version,
                        input,
                        owner,
                        lease,
                        now.saturating_add(lease),
                        now,
                        saga.deadline_ms
                    ],
                )
                .map_err(LogError::db)?;
            if inserted == 0 {
                return Err(LogError::Duplicate { saga: saga.id });
            }
            Ok(())
        }))
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        seq: u64,
        entry: &'a Entry,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let id = id.to_owned();
        let owner = owner.to_owned();
        let body = serde_json::to_string(entry);
        let phase = phase_of(entry);
        let messages = messages.to_vec();
        Box::pin(self.with(move |conn| {
            let body = body.map_err(|e| LogError::Context(e.to_string().into()))?;
            let tx = immediate(conn)?;
            let now = now_ms();
            let release = phase.is_some_and(|p| !p.is_unfinished());
            // The hot path: statements prepared once per connection.
            let changed = tx
                .prepare_cached(
                    "UPDATE buttress_saga SET
                        phase = coalesce(?1, phase),
                        owner = CASE WHEN ?2 THEN NULL ELSE owner END,
                        lease_until = ?3 + lease_ms,
                        updated_ms = ?3
                     WHERE id = ?4 AND owner = ?5",
                )
                .and_then(|mut st| {
                    st.execute(params![phase.map(Phase::as_str), release, now, id, owner])
                })
                .map_err(LogError::db)?;
            if changed == 0 {
                return Err(lease_error(&tx, &id));
            }
            tx.prepare_cached(
                "INSERT INTO buttress_saga_entry (saga_id, seq, body) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| st.execute(params![id, seq as i64, body]))
            .map_err(LogError::db)?;
            for m in &messages {
                enqueue(&tx, m)?;
            }
            tx.commit().map_err(LogError::db)
        }))
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let id = id.to_owned();
        let owner = owner.to_owned();
        Box::pin(self.with(move |conn| {
            let tx = immediate(conn)?;
            let changed = tx
                .execute(
                    "UPDATE buttress_saga SET lease_until = ?1 WHERE id = ?2 AND owner = ?3",
                    params![now_ms().saturating_add(lease_ms(lease)), id, owner],
                )
                .map_err(LogError::db)?;
            if changed == 0 {
                return Err(lease_error(&tx, &id));
            }
            tx.commit().map_err(LogError::db)
        }))
    }

    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredSaga, LogError>> {
        let id = id.to_owned();
        Box::pin(self.with(move |conn| {
            let tx = conn.transaction().map_err(LogError::db)?;
            let row = tx
                .query_row(
                    "SELECT name, version, phase, input, deadline_ms FROM buttress_saga WHERE id = ?1",
                    [&id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(LogError::db)?;
            let Some((name, version, phase, input, deadline_ms)) = row else {
                return Err(LogError::NotFound { saga: id });
            };
            let mut saga = decode_row(&id, name, version, &phase, &input, deadline_ms)?;
            let mut stmt = tx
                .prepare(
                    "SELECT seq, body FROM buttress_saga_entry WHERE saga_id = ?1 ORDER BY seq",
                )
                .map_err(LogError::db)?;
            let rows = stmt
                .query_map([&id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(LogError::db)?;
            for (expected, row) in rows.enumerate() {
                let (seq, body) = row.map_err(LogError::db)?;
                if seq != expected as i64 {
                    return Err(LogError::Corrupt {
                        saga: id,
                        seq: Some(expected as u64),
                        reason: format!("entry {expected} is missing (found {seq})"),
                    });
                }
                saga.entries.push(decode_entry(&id, seq as u64, &body)?);
            }
            Ok(saga)
        }))
    }

    fn claim<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        let name = name.to_owned();
        let owner = owner.to_owned();
        Box::pin(self.with(move |conn| {
            let tx = immediate(conn)?;
            let now = now_ms();
            let lease = lease_ms(lease);
            let ids: Vec<String> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT id FROM buttress_saga
                         WHERE name = ?1 AND phase IN ('forward', 'compensating')
                           AND (owner IS NULL OR lease_until <= ?2)
                         ORDER BY created_ms LIMIT ?3",
                    )
                    .map_err(LogError::db)?;
                let rows = stmt
                    .query_map(
                        params![name, now, i64::try_from(limit).unwrap_or(i64::MAX)],
                        |r| r.get(0),
                    )
                    .map_err(LogError::db)?;
                rows.collect::<Result<_, _>>().map_err(LogError::db)?
            };
            for id in &ids {
                tx.execute(
                    "UPDATE buttress_saga SET owner = ?1, lease_ms = ?2, lease_until = ?3 WHERE id = ?4",
                    params![owner, lease, now.saturating_add(lease), id],
                )
                .map_err(LogError::db)?;
            }
            tx.commit().map_err(LogError::db)?;
            Ok(ids)
        }))
    }

    fn take_over<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let id = id.to_owned();
        let owner = owner.to_owned();
        Box::pin(self.with(move |conn| {
            let tx = immediate(conn)?;
            let now = now_ms();
            let lease = lease_ms(lease);
            let changed = tx
                .execute(
                    "UPDATE buttress_saga SET owner = ?1, lease_ms = ?2, lease_until = ?3
                     WHERE id = ?4 AND (phase = 'needs_attention'
                        OR (phase IN ('forward', 'compensating') AND (owner IS NULL OR lease_until <= ?5)))",
                    params![owner, lease, now.saturating_add(lease), id, now],
                )
                .map_err(LogError::db)?;
            if changed == 0 {
                return Err(lease_error(&tx, &id));
            }
            tx.commit().map_err(LogError::db)
        }))
    }

    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
        let id = id.to_owned();
        let owner = owner.to_owned();
        Box::pin(self.with(move |conn| {
            conn.execute(
                "UPDATE buttress_saga SET owner = NULL, lease_until = 0 WHERE id = ?1 AND owner = ?2",
                params![id, owner],
            )
            .map_err(LogError::db)?;
            Ok(())
        }))
    }

    fn list<'a>(
        &'a self,
        name: &'a str,
        phase: Phase,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        let name = name.to_owned();
        Box::pin(self.with(move |conn| {
            let mut stmt = conn
                .prepare("SELECT id FROM buttress_saga WHERE name = ?1 AND phase = ?2 ORDER BY id")
                .map_err(LogError::db)?;
            let rows = stmt
                .query_map(params![name, phase.as_str()], |r| r.get(0))
                .map_err(LogError::db)?;
            rows.collect::<Result<_, _>>().map_err(LogError::db)
        }))
    }
}

impl OutboxStore for SqliteLog {
    fn claim_keys<'a>(
        &'a self,
        relay: &'a str,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        let relay = relay.to_owned();
        Box::pin(self.with(move |conn| {
            let tx = immediate(conn)?;
            let now = now_ms();
            let keys: Vec<String> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT k.key FROM buttress_outbox_key k
                         WHERE (k.owner IS NULL OR k.lease_until <= ?1)
                           AND EXISTS (SELECT 1 FROM buttress_outbox o
                                       WHERE o.key = k.key AND o.published_ms IS NULL)
                         LIMIT ?2",
                    )
                    .map_err(LogError::db)?;
                let rows = stmt
                    .query_map(
                        params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
                        |r| r.get(0),
                    )
                    .map_err(LogError::db)?;
                rows.collect::<Result<_, _>>().map_err(LogError::db)?
            };
            for key in &keys {
                tx.execute(
                    "UPDATE buttress_outbox_key SET owner = ?1, lease_until = ?2 WHERE key = ?3",
                    params![relay, now.saturating_add(lease_ms(lease)), key],
                )
                .map_err(LogError::db)?;
            }
            tx.commit().map_err(LogError::db)?;
            Ok(keys)
        }))
    }

    fn pending<'a>(
        &'a self,
        key: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, LogError>> {
        let key = key.to_owned();
        Box::pin(self.with(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT seq, id, payload FROM buttress_outbox
                     WHERE key = ?1 AND published_ms IS NULL ORDER BY seq LIMIT ?2",
                )
                .map_err(LogError::db)?;
            let rows = stmt
                .query_map(
                    params![key, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| {
                        Ok(StoredMessage {
                            seq: r.get(0)?,
                            message: Message {
                                id: r.get(1)?,
                                key: key.clone(),
                                payload: r.get(2)?,
                            },
                        })
                    },
                )
                .map_err(LogError::db)?;
            rows.collect::<Result<_, _>>().map_err(LogError::db)
        }))
    }

    fn mark_published<'a>(
        &'a self,
        relay: &'a str,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let relay = relay.to_owned();
        let key = key.to_owned();
        Box::pin(self.with(move |conn| {
            let tx = immediate(conn)?;
            let changed = tx
                .execute(
                    "UPDATE buttress_outbox SET published_ms = ?1
                     WHERE seq = ?2 AND key = ?3 AND EXISTS (
                        SELECT 1 FROM buttress_outbox_key WHERE key = ?3 AND owner = ?4)",
                    params![now_ms(), seq, key, relay],
                )
                .map_err(LogError::db)?;
            if changed == 0 {
                return Err(LogError::LeaseLost { saga: key });
            }
            tx.commit().map_err(LogError::db)
        }))
    }

    fn release_key<'a>(
        &'a self,
        relay: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        let relay = relay.to_owned();
        let key = key.to_owned();
        Box::pin(self.with(move |conn| {
            conn.execute(
                "UPDATE buttress_outbox_key SET owner = NULL, lease_until = 0 WHERE key = ?1 AND owner = ?2",
                params![key, relay],
            )
            .map_err(LogError::db)?;
            Ok(())
        }))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, LogError>> {
        Box::pin(self.with(|conn| {
            // count and min(seq) read the partial index of pending messages
            // only (seq is the rowid); the first one's row gives its time.
            let (messages, created): (i64, Option<i64>) = conn
                .query_row(
                    "SELECT p.n, (SELECT o.created_ms FROM buttress_outbox o WHERE o.seq = p.first)
                     FROM (SELECT count(*) AS n, min(seq) AS first FROM buttress_outbox
                           WHERE published_ms IS NULL) p",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(LogError::db)?;
            Ok(Backlog {
                messages: u64::try_from(messages).unwrap_or(0),
                oldest_age: created.map(|c| {
                    Duration::from_millis(u64::try_from(now_ms().saturating_sub(c)).unwrap_or(0))
                }),
            })
        }))
    }
}
