//! The PostgreSQL saga log and outbox, for replicas sharing the work.
//!
//! Leases use the database's clock. Claiming sagas for recovery (and keys
//! for the outbox relay) takes row locks with `FOR UPDATE SKIP LOCKED`, so
//! two processes never claim the same saga while its lease runs, and a
//! process that dies holding one loses it when the lease expires. Every
//! write checks that the writer still owns the saga.
//!
//! ```no_run
//! # async fn demo() -> Result<(), buttress_saga::LogError> {
//! use buttress_saga::postgres::PostgresLog;
//!
//! let log = PostgresLog::connect("postgres://app@127.0.0.1/app", 4).await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use crate::error::LogError;
use crate::log::{
    decode_entry, decode_row, lease_ms, phase_of, BoxFuture, Message, NewSaga, SagaLog, StoredSaga,
};
use crate::outbox::{Backlog, OutboxStore, StoredMessage};
use crate::state::{Entry, Phase};

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE buttress_saga (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    phase TEXT NOT NULL,
    input TEXT NOT NULL,
    owner TEXT,
    lease_ms BIGINT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX buttress_saga_by_phase ON buttress_saga (name, phase, lease_until);
CREATE TABLE buttress_saga_entry (
    saga_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
CREATE TABLE buttress_outbox (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    published_at TIMESTAMPTZ
);
CREATE INDEX buttress_outbox_pending ON buttress_outbox (key, seq) WHERE published_at IS NULL;
CREATE TABLE buttress_outbox_key (
    key TEXT PRIMARY KEY,
    owner TEXT,
    lease_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
"#,
    r#"
ALTER TABLE buttress_saga ADD COLUMN deadline_ms BIGINT;
"#,
];

/// The schema version this library writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// An arbitrary constant: the advisory lock that serializes migrations.
const MIGRATION_LOCK: i64 = 0x6275_7474_7265_7373;

/// Applies the pending migrations in one transaction (serialized across
/// processes by an advisory lock), recording each version in
/// `buttress_saga_schema`; returns the schema version. Idempotent;
/// [`PostgresLog::connect`] calls it.
pub async fn migrate(client: &mut Client) -> Result<i64, LogError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS buttress_saga_schema (
            version BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )",
    )
    .await
    .map_err(pg)?;
    let current: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::BIGINT FROM buttress_saga_schema",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(LogError::SchemaTooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO buttress_saga_schema (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )
        .await
        .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(SCHEMA_VERSION)
}

/// Writes `message` to the outbox inside the caller's transaction: it is
/// published iff `tx` commits.
pub async fn enqueue(tx: &Transaction<'_>, message: &Message) -> Result<(), LogError> {
    tx.execute(
        "INSERT INTO buttress_outbox (id, key, payload) VALUES ($1, $2, $3)",
        &[&message.id, &message.key, &message.payload],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "INSERT INTO buttress_outbox_key (key) VALUES ($1) ON CONFLICT (key) DO NOTHING",
        &[&message.key],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// A saga log and outbox in PostgreSQL, over a few connections. Clones
/// share them.
#[derive(Clone)]
pub struct PostgresLog {
    clients: Arc<[Mutex<Conn>]>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for PostgresLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLog")
            .field("connections", &self.clients.len())
            .finish()
    }
}

impl PostgresLog {
    /// Opens `connections` connections (at least 1) to `url` (no TLS: for
    /// loopback or a private network) and applies the migrations.
    pub async fn connect(url: &str, connections: usize) -> Result<Self, LogError> {
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "saga log connection to PostgreSQL ended");
                }
            });
            clients.push(Mutex::new(Conn {
                client,
                append: None,
            }));
        }
        migrate(&mut clients[0].lock().await.client).await?;
        Ok(Self {
            clients: clients.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn client(&self) -> &Mutex<Conn> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i64, LogError> {
        let client = self.client().lock().await;
        let row = client
            .query_one(
                "SELECT coalesce(max(version), 0)::BIGINT FROM buttress_saga_schema",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }
}

const UPDATE_ON_APPEND: &str = "UPDATE buttress_saga SET
        phase = coalesce($1, phase),
        owner = CASE WHEN $2 THEN NULL ELSE owner END,
        lease_until = clock_timestamp() + lease_ms * interval '1 millisecond',
        updated_at = clock_timestamp()
     WHERE id = $3 AND owner = $4";
const INSERT_ENTRY: &str =
    "INSERT INTO buttress_saga_entry (saga_id, seq, body) VALUES ($1, $2, $3)";

/// A connection, with the append path's statements prepared on first use.
struct Conn {
    client: Client,
    append: Option<(Statement, Statement)>,
}

impl Conn {
    async fn append_statements(&mut self) -> Result<(Statement, Statement), LogError> {
        if let Some(s) = &self.append {
            return Ok(s.clone());
        }
        let update = self.client.prepare(UPDATE_ON_APPEND).await.map_err(pg)?;
        let insert = self.client.prepare(INSERT_ENTRY).await.map_err(pg)?;
        self.append = Some((update.clone(), insert.clone()));
        Ok((update, insert))
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

async fn lease_error(tx: &Transaction<'_>, id: &str) -> LogError {
    match tx
        .query_opt("SELECT 1 FROM buttress_saga WHERE id = $1", &[&id])
        .await
    {
        Ok(Some(_)) => LogError::LeaseLost { saga: id.into() },
        Ok(None) => LogError::NotFound { saga: id.into() },
        Err(e) => pg(e),
    }
}

/// The error with the server's message (tokio-postgres's `Display` says
/// only "db error").
fn pg(e: tokio_postgres::Error) -> LogError {
    match e.as_db_error() {
        Some(db) => LogError::db(format!("{}: {}", db.code().code(), db.message())),
        None => LogError::db(e),
    }
}

fn millis(lease: Duration) -> i64 {
    lease_ms(lease)
}

impl SagaLog for PostgresLog {
    fn create<'a>(
        &'a self,
        saga: &'a NewSaga,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let input = serde_json::to_string(&saga.input)
                .map_err(|e| LogError::Context(e.to_string().into()))?;
            let lease = millis(lease);
            let client = self.client().lock().await;
            let inserted = client
                .execute(
                    "INSERT INTO buttress_saga
                        (id, name, version, phase, input, owner, lease_ms, lease_until, deadline_ms)
                     VALUES ($1, $2, $3, 'forward', $4, $5, $6,
                             clock_timestamp() + $6::BIGINT * interval '1 millisecond', $7)
                     ON CONFLICT (id) DO NOTHING",
                    &[
                        &saga.id,
                        &saga.name,
                        &i64::from(saga.version),
                        &input,
                        &owner,
                        &lease,
                        &saga.deadline_ms,
                    ],
                )
                .await
                .map_err(pg)?;
            if inserted == 0 {
                return Err(LogError::Duplicate {
                    saga: saga.id.clone(),
                });
            }
            Ok(())
        })
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        seq: u64,
        entry: &'a Entry,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let body = serde_json::to_string(entry)
                .map_err(|e| LogError::Context(e.to_string().into()))?;
            let phase = phase_of(entry);
            let release = phase.is_some_and(|p| !p.is_unfinished());
            let mut client = self.client().lock().await;
            let (update, insert) = client.append_statements().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let changed = tx
                .execute(&update, &[&phase.map(Phase::as_str), &release, &id, &owner])
                .await
                .map_err(pg)?;
            if changed == 0 {
                return Err(lease_error(&tx, id).await);
            }
            tx.execute(&insert, &[&id, &(seq as i64), &body])
                .await
                .map_err(pg)?;
            for m in messages {
                enqueue(&tx, m).await?;
            }
            tx.commit().await.map_err(pg)
        })
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let lease = millis(lease);
            let mut client = self.client().lock().await;
            let tx = client.transaction().await.map_err(pg)?;
            let changed = tx
                .execute(
                    "UPDATE buttress_saga
                     SET lease_until = clock_timestamp() + $1::BIGINT * interval '1 millisecond'
                     WHERE id = $2 AND owner = $3",
                    &[&lease, &id, &owner],
                )
                .await
                .map_err(pg)?;
            if changed == 0 {
                return Err(lease_error(&tx, id).await);
            }
            tx.commit().await.map_err(pg)
        })
    }

    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredSaga, LogError>> {
        Box::pin(async move {
            let mut client = self.client().lock().await;
            let tx = client
                .build_transaction()
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await
                .map_err(pg)?;
            let row = tx
                .query_opt(
                    "SELECT name, version, phase, input, deadline_ms FROM buttress_saga WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(pg)?;
            let Some(row) = row else {
                return Err(LogError::NotFound { saga: id.into() });
            };
            let phase: String = row.get(2);
            let input: String = row.get(3);
            let mut saga = decode_row(id, row.get(0), row.get(1), &phase, &input, row.get(4))?;
            let rows = tx
                .query(
                    "SELECT seq, body FROM buttress_saga_entry WHERE saga_id = $1 ORDER BY seq",
                    &[&id],
                )
                .await
                .map_err(pg)?;
            for (expected, row) in rows.iter().enumerate() {
                let seq: i64 = row.get(0);
                if seq != expected as i64 {
                    return Err(LogError::Corrupt {
                        saga: id.into(),
                        seq: Some(expected as u64),
                        reason: format!("entry {expected} is missing (found {seq})"),
                    });
                }
                let body: String = row.get(1);
                saga.entries.push(decode_entry(id, seq as u64, &body)?);
            }
            tx.commit().await.map_err(pg)?;
            Ok(saga)
        })
    }

    fn claim<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        Box::pin(async move {
            let lease = millis(lease);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let client = self.client().lock().await;
            let rows = client
                .query(
                    "UPDATE buttress_saga SET owner = $1, lease_ms = $2,
                        lease_until = clock_timestamp() + $2::BIGINT * interval '1 millisecond'
                     WHERE id IN (
                        SELECT id FROM buttress_saga
                        WHERE name = $3 AND phase IN ('forward', 'compensating')
                          AND (owner IS NULL OR lease_until <= clock_timestamp())
                        ORDER BY created_at LIMIT $4
                        FOR UPDATE SKIP LOCKED)
                     RETURNING id",
                    &[&owner, &lease, &name, &limit],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn take_over<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let lease = millis(lease);
            let mut client = self.client().lock().await;
            let tx = client.transaction().await.map_err(pg)?;
            let changed = tx
                .execute(
                    "UPDATE buttress_saga SET owner = $1, lease_ms = $2,
                        lease_until = clock_timestamp() + $2::BIGINT * interval '1 millisecond'
                     WHERE id = $3 AND (phase = 'needs_attention'
                        OR (phase IN ('forward', 'compensating')
                            AND (owner IS NULL OR lease_until <= clock_timestamp())))",
                    &[&owner, &lease, &id],
                )
                .await
                .map_err(pg)?;
            if changed == 0 {
                return Err(lease_error(&tx, id).await);
            }
            tx.commit().await.map_err(pg)
        })
    }

    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let client = self.client().lock().await;
            client
                .execute(
                    "UPDATE buttress_saga SET owner = NULL, lease_until = '-infinity'
                     WHERE id = $1 AND owner = $2",
                    &[&id, &owner],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn list<'a>(
        &'a self,
        name: &'a str,
        phase: Phase,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        Box::pin(async move {
            let client = self.client().lock().await;
            let rows = client
                .query(
                    "SELECT id FROM buttress_saga WHERE name = $1 AND phase = $2 ORDER BY id",
                    &[&name, &phase.as_str()],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}

impl OutboxStore for PostgresLog {
    fn claim_keys<'a>(
        &'a self,
        relay: &'a str,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        Box::pin(async move {
            let lease = millis(lease);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let client = self.client().lock().await;
            let rows = client
                .query(
                    "UPDATE buttress_outbox_key SET owner = $1,
                        lease_until = clock_timestamp() + $2::BIGINT * interval '1 millisecond'
                     WHERE key IN (
                        SELECT k.key FROM buttress_outbox_key k
                        WHERE (k.owner IS NULL OR k.lease_until <= clock_timestamp())
                          AND EXISTS (SELECT 1 FROM buttress_outbox o
                                      WHERE o.key = k.key AND o.published_at IS NULL)
                        LIMIT $3
                        FOR UPDATE SKIP LOCKED)
                     RETURNING key",
                    &[&relay, &lease, &limit],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn pending<'a>(
        &'a self,
        key: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, LogError>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let client = self.client().lock().await;
            let rows = client
                .query(
                    "SELECT seq, id, payload FROM buttress_outbox
                     WHERE key = $1 AND published_at IS NULL ORDER BY seq LIMIT $2",
                    &[&key, &limit],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| StoredMessage {
                    seq: r.get(0),
                    message: Message {
                        id: r.get(1),
                        key: key.to_owned(),
                        payload: r.get(2),
                    },
                })
                .collect())
        })
    }

    fn mark_published<'a>(
        &'a self,
        relay: &'a str,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let client = self.client().lock().await;
            let changed = client
                .execute(
                    "UPDATE buttress_outbox SET published_at = clock_timestamp()
                     WHERE seq = $1 AND key = $2 AND EXISTS (
                        SELECT 1 FROM buttress_outbox_key WHERE key = $2 AND owner = $3)",
                    &[&seq, &key, &relay],
                )
                .await
                .map_err(pg)?;
            if changed == 0 {
                return Err(LogError::LeaseLost { saga: key.into() });
            }
            Ok(())
        })
    }

    fn release_key<'a>(
        &'a self,
        relay: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let client = self.client().lock().await;
            client
                .execute(
                    "UPDATE buttress_outbox_key SET owner = NULL, lease_until = '-infinity'
                     WHERE key = $1 AND owner = $2",
                    &[&key, &relay],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, LogError>> {
        Box::pin(async move {
            let client = self.client().lock().await;
            // count and min(seq) read the partial index of pending messages;
            // the first one's row gives its time, aged on the database clock.
            let row = client
                .query_one(
                    "SELECT p.n, (SELECT extract(epoch FROM clock_timestamp() - o.created_at)::FLOAT8
                                  FROM buttress_outbox o WHERE o.seq = p.first)
                     FROM (SELECT count(*) AS n, min(seq) AS first FROM buttress_outbox
                           WHERE published_at IS NULL) p",
                    &[],
                )
                .await
                .map_err(pg)?;
            let messages: i64 = row.get(0);
            let age: Option<f64> = row.get(1);
            Ok(Backlog {
                messages: u64::try_from(messages).unwrap_or(0),
                oldest_age: age
                    .map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default()),
            })
        })
    }
}
