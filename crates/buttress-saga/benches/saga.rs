//! Saga cost per step: with the in-memory log beside the bare step calls,
//! and with SQLite (WAL, synchronous=NORMAL) and PostgreSQL on loopback
//! beside the physical floor measured in the same run: a plain loop of the
//! same inserts and updates, one transaction per write, without the saga.
//!
//! Run: `cargo bench -p buttress-saga --features sqlite,postgres --bench saga`
//! (PostgreSQL: `BUTTRESS_POSTGRES_URL`, or a server started on loopback).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::time::Duration;

use buttress_saga::postgres::PostgresLog;
use buttress_saga::sqlite::SqliteLog;
use buttress_saga::{MemoryLog, RetryPolicy, Saga, SagaLog, Step, StepRequest};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tower::{service_fn, Service, ServiceExt};

const STEPS: u32 = 5;

fn saga(log: impl SagaLog) -> Saga<u64> {
    let mut b = Saga::builder("bench", 1)
        .log(log)
        .retry(RetryPolicy::never());
    for name in ["s0", "s1", "s2", "s3", "s4"] {
        b = b.step(
            Step::new(
                name,
                service_fn(|r: StepRequest<u64>| {
                    std::future::ready(Ok::<_, std::convert::Infallible>(r.context + 1))
                }),
            )
            .compensate(service_fn(|_r: StepRequest<u64>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(()))
            })),
        );
    }
    b.build().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("saga/memory");
    g.throughput(Throughput::Elements(u64::from(STEPS)));
    // The bare steps: the same services called in a loop.
    let step = service_fn(|r: StepRequest<u64>| {
        std::future::ready(Ok::<_, std::convert::Infallible>(r.context + 1))
    });
    g.bench_function("bare_steps", |b| {
        b.to_async(&rt).iter(|| {
            let mut step = step;
            async move {
                let mut ctx = 0u64;
                for s in 0..STEPS {
                    let req = StepRequest {
                        context: ctx,
                        idempotency_key: format!("id:s{s}:action"),
                        saga_id: "id".into(),
                        step: "s",
                        attempt: 1,
                    };
                    ctx = step.ready().await.unwrap().call(req).await.unwrap();
                }
                ctx
            }
        })
    });
    // A fresh log per batch, so the map does not grow without bound.
    g.bench_function("saga", |b| {
        b.to_async(&rt).iter_batched(
            || saga(MemoryLog::new()),
            |saga| async move { saga.oneshot(0).await.unwrap() },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

const SQLITE_DDL: &str = "
    CREATE TABLE IF NOT EXISTS floor_saga (id TEXT PRIMARY KEY, name TEXT, version INTEGER, phase TEXT,
        input TEXT, owner TEXT, lease_ms INTEGER, lease_until INTEGER, created_ms INTEGER, updated_ms INTEGER);
    CREATE TABLE IF NOT EXISTS floor_entry (saga_id TEXT, seq INTEGER, body TEXT, PRIMARY KEY (saga_id, seq));";

/// The same writes as a saga of `STEPS` steps, straight on a connection:
/// one insert, then per write a transaction updating the row and inserting
/// an entry.
fn sqlite_floor(conn: &mut rusqlite::Connection, id: u64) {
    let id = format!("f{id}");
    conn.execute(
        "INSERT INTO floor_saga VALUES (?1, 'bench', 1, 'forward', '0', 'o', 60000, 0, 0, 0)",
        [&id],
    )
    .unwrap();
    for seq in 0..(2 * STEPS + 1) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.prepare_cached(
            "UPDATE floor_saga SET phase = coalesce(NULL, phase), lease_until = 1 + lease_ms, updated_ms = 1
             WHERE id = ?1 AND owner = 'o'",
        )
        .unwrap()
        .execute([&id])
        .unwrap();
        tx.prepare_cached(
            "INSERT INTO floor_entry VALUES (?1, ?2, '{\"entry\":\"done\",\"step\":0,\"kind\":\"action\",\"context\":1}')",
        )
        .unwrap()
        .execute(rusqlite::params![id, seq])
        .unwrap();
        tx.commit().unwrap();
    }
}

fn temp_db(tag: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("buttress-saga-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("bench.db")
}

fn sqlite(c: &mut Criterion) {
    let rt = runtime();
    let path = temp_db("sqlite");
    let log = rt.block_on(SqliteLog::open(&path)).unwrap();
    let s = saga(log);
    let mut g = c.benchmark_group("saga/sqlite");
    g.throughput(Throughput::Elements(u64::from(STEPS)));
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("saga", |b| b.to_async(&rt).iter(|| s.clone().oneshot(0)));
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(SQLITE_DDL).unwrap();
    let mut n = 0u64;
    g.bench_function("floor", |b| {
        b.iter(|| {
            n += 1;
            sqlite_floor(&mut conn, n)
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

const PG_DDL: &str = "
    CREATE TABLE IF NOT EXISTS floor_saga (id TEXT PRIMARY KEY, name TEXT, version BIGINT, phase TEXT,
        input TEXT, owner TEXT, lease_ms BIGINT, lease_until TIMESTAMPTZ, created_at TIMESTAMPTZ DEFAULT clock_timestamp(),
        updated_at TIMESTAMPTZ DEFAULT clock_timestamp());
    CREATE TABLE IF NOT EXISTS floor_entry (saga_id TEXT, seq BIGINT, body TEXT, PRIMARY KEY (saga_id, seq));";

/// The statements prepared once per connection, as the log does.
async fn pg_floor_statements(
    client: &tokio_postgres::Client,
) -> (tokio_postgres::Statement, tokio_postgres::Statement) {
    let update = client
        .prepare(
            "UPDATE floor_saga SET phase = coalesce(NULL, phase),
                lease_until = clock_timestamp() + lease_ms * interval '1 millisecond',
                updated_at = clock_timestamp()
             WHERE id = $1 AND owner = 'o'",
        )
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO floor_entry VALUES ($1, $2, '{\"entry\":\"done\",\"step\":0,\"kind\":\"action\",\"context\":1}')")
        .await
        .unwrap();
    (update, insert)
}

async fn pg_floor(
    client: &mut tokio_postgres::Client,
    (update, insert): &(tokio_postgres::Statement, tokio_postgres::Statement),
    id: u64,
) {
    let id = format!("f{id}");
    client
        .execute(
            "INSERT INTO floor_saga (id, name, version, phase, input, owner, lease_ms, lease_until)
             VALUES ($1, 'bench', 1, 'forward', '0', 'o', 60000, clock_timestamp())",
            &[&id],
        )
        .await
        .unwrap();
    for seq in 0..i64::from(2 * STEPS + 1) {
        let tx = client.transaction().await.unwrap();
        tx.execute(update, &[&id]).await.unwrap();
        tx.execute(insert, &[&id, &seq]).await.unwrap();
        tx.commit().await.unwrap();
    }
}

fn postgres(c: &mut Criterion) {
    let rt = runtime();
    let db = buttress_test_support::postgres::database();
    let log = rt.block_on(PostgresLog::connect(db.url(), 1)).unwrap();
    let s = saga(log);
    let mut g = c.benchmark_group("saga/postgres");
    g.throughput(Throughput::Elements(u64::from(STEPS)));
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("saga", |b| b.to_async(&rt).iter(|| s.clone().oneshot(0)));
    let (mut client, statements) = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(PG_DDL).await.unwrap();
        let statements = pg_floor_statements(&client).await;
        (client, statements)
    });
    let mut n = 0u64;
    g.bench_function("floor", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(pg_floor(&mut client, &statements, n))
        })
    });
    g.finish();
}

criterion_group!(benches, memory, sqlite, postgres);
criterion_main!(benches);
