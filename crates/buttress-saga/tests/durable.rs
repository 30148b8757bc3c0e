//! The durable logs on real databases: migrations, typed errors for
//! corrupt rows, leases, unknown versions, and recovery going forward.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buttress_saga::log::NewSaga;
use buttress_saga::postgres::{self, PostgresLog};
use buttress_saga::sqlite::{self, SqliteLog};
use buttress_saga::{
    Entry, Kind, LogError, MemoryLog, OnCrash, Phase, RetryPolicy, Saga, SagaLog, Step, StepRequest,
};
use tower::service_fn;

/// A temporary path whose directory is removed when the guard drops.
struct Tmp {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl std::ops::Deref for Tmp {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::path::Path> for Tmp {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_db(tag: &str) -> Tmp {
    let dir = std::env::temp_dir().join(format!(
        "buttress-saga-durable-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Tmp {
        path: dir.join("saga.db"),
        dir,
    }
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

fn new_saga(id: &str, version: u32) -> NewSaga {
    NewSaga {
        id: id.into(),
        name: "order".into(),
        version,
        input: serde_json::json!([]),
        deadline_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrations_are_applied_once_and_the_version_recorded() {
    let path = temp_db("migrate");
    let a = SqliteLog::open(&path).await.unwrap();
    let b = SqliteLog::open(&path).await.unwrap();
    assert_eq!(a.schema_version().await.unwrap(), sqlite::SCHEMA_VERSION);
    assert_eq!(b.schema_version().await.unwrap(), sqlite::SCHEMA_VERSION);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM buttress_saga_schema", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, sqlite::SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // A schema from the future is refused, not guessed at.
    conn.execute(
        "INSERT INTO buttress_saga_schema (version, applied_ms) VALUES (99, 0)",
        [],
    )
    .unwrap();
    let err = SqliteLog::open(&path).await.unwrap_err();
    assert!(
        matches!(err, LogError::SchemaTooNew { found: 99, known } if known == sqlite::SCHEMA_VERSION),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_run_once_even_when_two_processes_open_at_once() {
    let db = buttress_test_support::postgres::database();
    let (a, b) = tokio::join!(
        PostgresLog::connect(db.url(), 1),
        PostgresLog::connect(db.url(), 1)
    );
    assert_eq!(
        a.unwrap().schema_version().await.unwrap(),
        postgres::SCHEMA_VERSION
    );
    assert_eq!(
        b.unwrap().schema_version().await.unwrap(),
        postgres::SCHEMA_VERSION
    );
    let client = pg_client(db.url()).await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM buttress_saga_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, postgres::SCHEMA_VERSION);
    client
        .execute(
            "INSERT INTO buttress_saga_schema (version) VALUES (99)",
            &[],
        )
        .await
        .unwrap();
    let err = PostgresLog::connect(db.url(), 1).await.unwrap_err();
    assert!(
        matches!(err, LogError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_corrupt_rows_are_typed_errors_and_recovery_reports_them() {
    let path = temp_db("corrupt");
    let log = SqliteLog::open(&path).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO buttress_saga VALUES ('bad-phase', 'order', 1, 'sideways', '[]', NULL, 1, 0, 0, 0, NULL);
         INSERT INTO buttress_saga VALUES ('bad-input', 'order', 1, 'forward', '{nope', NULL, 1, 0, 1, 0, NULL);
         INSERT INTO buttress_saga VALUES ('bad-entry', 'order', 1, 'forward', '[]', NULL, 1, 0, 2, 0, NULL);
         INSERT INTO buttress_saga_entry VALUES ('bad-entry', 0, '{\"entry\":\"exploded\"}');
         INSERT INTO buttress_saga VALUES ('gap', 'order', 1, 'forward', '[]', NULL, 1, 0, 3, 0, NULL);
         INSERT INTO buttress_saga_entry VALUES ('gap', 1, '{\"entry\":\"started\",\"step\":0,\"kind\":\"action\"}');
         INSERT INTO buttress_saga VALUES ('illegal', 'order', 1, 'forward', '[]', NULL, 1, 0, 4, 0, NULL);
         INSERT INTO buttress_saga_entry VALUES ('illegal', 0, '{\"entry\":\"started\",\"step\":5,\"kind\":\"action\"}');
         INSERT INTO buttress_saga VALUES ('bad-version', 'order', -1, 'forward', '[]', NULL, 1, 0, 5, 0, NULL);",
    )
    .unwrap();
    let corrupt = |r: Result<_, LogError>| match r {
        Err(LogError::Corrupt { saga, seq, reason }) => (saga, seq, reason),
        other => panic!("{other:?}"),
    };
    let (saga, seq, reason) = corrupt(log.load("bad-phase").await);
    assert_eq!((saga.as_str(), seq), ("bad-phase", None));
    assert!(reason.contains("unknown phase `sideways`"), "{reason}");
    let (_, seq, _) = corrupt(log.load("bad-input").await);
    assert_eq!(seq, None);
    let (_, seq, _) = corrupt(log.load("bad-entry").await);
    assert_eq!(seq, Some(0));
    let (_, seq, reason) = corrupt(log.load("gap").await);
    assert_eq!(seq, Some(0));
    assert!(reason.contains("missing"), "{reason}");
    let (_, _, reason) = corrupt(log.load("bad-version").await);
    assert!(reason.contains("version -1"), "{reason}");

    // Recovery reports each, never panics, and leaves them for a person.
    let saga = Saga::builder("order", 1)
        .log(log.clone())
        .step(
            Step::new(
                "a",
                service_fn(|r: StepRequest<Vec<u32>>| async move { Ok::<_, String>(r.context) }),
            )
            .compensate(service_fn(|_r: StepRequest<Vec<u32>>| async {
                Ok::<_, String>(())
            })),
        )
        .build()
        .unwrap();
    let report = saga.recover().await.unwrap();
    let mut failed: Vec<_> = report.failed.iter().map(|(id, _)| id.as_str()).collect();
    failed.sort();
    assert_eq!(
        failed,
        ["bad-entry", "bad-input", "bad-version", "gap", "illegal"]
    );
    let illegal = &report
        .failed
        .iter()
        .find(|(id, _)| id == "illegal")
        .unwrap()
        .1;
    assert!(
        illegal.contains("invalid saga log entry illegal#0"),
        "{illegal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_corrupt_rows_are_typed_errors() {
    let db = buttress_test_support::postgres::database();
    let log = PostgresLog::connect(db.url(), 1).await.unwrap();
    let client = pg_client(db.url()).await;
    client
        .batch_execute(
            "INSERT INTO buttress_saga (id, name, version, phase, input, lease_ms, lease_until)
                VALUES ('p', 'order', 1, 'forward', '[]', 1, now());
             INSERT INTO buttress_saga_entry VALUES ('p', 0, 'not json');",
        )
        .await
        .unwrap();
    assert!(matches!(
        log.load("p").await,
        Err(LogError::Corrupt { seq: Some(0), .. })
    ));
    assert!(matches!(
        log.load("nobody").await,
        Err(LogError::NotFound { .. })
    ));
}

async fn lease_rules(log: &dyn SagaLog) {
    // A live lease is not claimed; a write by its owner goes through.
    log.create(&new_saga("live", 1), "a", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(log
        .claim("order", "b", Duration::from_secs(60), 10)
        .await
        .unwrap()
        .is_empty());
    let started = Entry::Started {
        step: 0,
        kind: Kind::Action,
    };
    log.append("live", "a", 0, &started, &[]).await.unwrap();
    // An expired one is claimed, once, and its old owner is fenced off.
    log.create(&new_saga("dead", 1), "a", Duration::from_millis(1))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let claimed = loop {
        let ids = log
            .claim("order", "b", Duration::from_secs(60), 10)
            .await
            .unwrap();
        if !ids.is_empty() || Instant::now() > deadline {
            break ids;
        }
        // The lease runs on the database clock: poll it, bounded.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(claimed, ["dead"]);
    assert!(log
        .claim("order", "c", Duration::from_secs(60), 10)
        .await
        .unwrap()
        .is_empty());
    let err = log.append("dead", "a", 0, &started, &[]).await.unwrap_err();
    assert!(matches!(err, LogError::LeaseLost { .. }), "{err}");
    log.append("dead", "b", 0, &started, &[]).await.unwrap();
    // The same sequence number cannot be written twice.
    assert!(log.append("dead", "b", 0, &started, &[]).await.is_err());
    assert!(matches!(
        log.create(&new_saga("dead", 1), "z", Duration::from_secs(1))
            .await,
        Err(LogError::Duplicate { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_leases_fence_and_expire() {
    let db = temp_db("lease");
    let log = SqliteLog::open(&db).await.unwrap();
    lease_rules(&log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_fence_and_expire() {
    let db = buttress_test_support::postgres::database();
    let log = PostgresLog::connect(db.url(), 2).await.unwrap();
    lease_rules(&log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_claims_never_share_a_saga() {
    let db = buttress_test_support::postgres::database();
    let log = PostgresLog::connect(db.url(), 1).await.unwrap();
    for i in 0..60 {
        log.create(&new_saga(&format!("s{i:02}"), 1), "dead", Duration::ZERO)
            .await
            .unwrap();
    }
    // Four claimers, each on its own connection, in small batches at once.
    let mut tasks = Vec::new();
    for c in 0..4 {
        let url = db.url().to_owned();
        tasks.push(tokio::spawn(async move {
            let log = PostgresLog::connect(&url, 1).await.unwrap();
            let mut mine = Vec::new();
            for _ in 0..40 {
                let ids = log
                    .claim("order", &format!("c{c}"), Duration::from_secs(60), 3)
                    .await
                    .unwrap();
                if ids.is_empty() {
                    break;
                }
                mine.extend(ids);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let expected: Vec<String> = (0..60).map(|i| format!("s{i:02}")).collect();
    assert_eq!(all, expected, "every saga claimed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_logged_by_another_version_is_reported_not_run() {
    let db = temp_db("version");
    let log = SqliteLog::open(&db).await.unwrap();
    log.create(&new_saga("v2", 2), "dead", Duration::ZERO)
        .await
        .unwrap();
    let ran = Arc::new(Mutex::new(0));
    let r = ran.clone();
    let saga = Saga::builder("order", 1)
        .log(log.clone())
        .step(
            Step::new(
                "a",
                service_fn(move |q: StepRequest<Vec<u32>>| {
                    *r.lock().unwrap() += 1;
                    async move { Ok::<_, String>(q.context) }
                }),
            )
            .compensate(service_fn(|_q: StepRequest<Vec<u32>>| async {
                Ok::<_, String>(())
            })),
        )
        .build()
        .unwrap();
    let report = saga.recover().await.unwrap();
    assert_eq!(report.unknown_version, [("v2".to_owned(), 2)]);
    assert_eq!(*ran.lock().unwrap(), 0);
    assert_eq!(log.load("v2").await.unwrap().phase, Phase::Forward);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_crash_resume_reruns_the_step_in_doubt_and_finishes_forward() {
    let log = MemoryLog::new();
    // The log a crash left: step 0 done, step 1 started.
    log.create(&new_saga("r", 1), "dead", Duration::ZERO)
        .await
        .unwrap();
    let entries = [
        Entry::Started {
            step: 0,
            kind: Kind::Action,
        },
        Entry::Done {
            step: 0,
            kind: Kind::Action,
            context: Some(serde_json::json!([0])),
        },
        Entry::Started {
            step: 1,
            kind: Kind::Action,
        },
    ];
    for (seq, e) in entries.iter().enumerate() {
        log.append("r", "dead", seq as u64, e, &[]).await.unwrap();
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut b = Saga::builder("order", 1)
        .log(log.clone())
        .on_crash(OnCrash::Resume)
        .retry(RetryPolicy::never());
    for i in 0..3u32 {
        let c = calls.clone();
        b = b.step(
            Step::new(
                ["a", "b", "c"][i as usize],
                service_fn(move |r: StepRequest<Vec<u32>>| {
                    c.lock().unwrap().push(r.idempotency_key.clone());
                    async move {
                        let mut ctx = r.context;
                        ctx.push(i);
                        Ok::<_, String>(ctx)
                    }
                }),
            )
            .compensate(service_fn(|_r: StepRequest<Vec<u32>>| async {
                Ok::<_, String>(())
            })),
        );
    }
    let saga = b.build().unwrap();
    let report = saga.recover().await.unwrap();
    assert_eq!(report.completed, ["r"]);
    assert_eq!(*calls.lock().unwrap(), ["r:b:action", "r:c:action"]);
    let stored = log.load("r").await.unwrap();
    assert_eq!(stored.phase, Phase::Completed);
    let last_ctx = stored.entries.iter().rev().find_map(|e| match e {
        Entry::Done { context, .. } => context.clone(),
        _ => None,
    });
    assert_eq!(last_ctx, Some(serde_json::json!([0, 1, 2])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_longer_than_the_lease_keeps_its_saga_by_heartbeat() {
    // Leases run on the wall clock (the database's), so the lease is long
    // next to a loaded machine's scheduling delays: the heartbeat renews
    // it every third of it, and a renewal later than two thirds of a lease
    // would let the other process claim the saga (a 150 ms lease failed
    // on a loaded machine that ran the heartbeat over 100 ms late). The step
    // runs until the other process has tried for two leases, counted
    // from the step's start, however slow the machine: this test takes
    // ~2 s.
    const LEASE: Duration = Duration::from_secs(1);
    let path = temp_db("heartbeat");
    let log = SqliteLog::open(&path).await.unwrap();
    let step_started = Arc::new(Mutex::new(None::<Instant>));
    let release = Arc::new(tokio::sync::Notify::new());
    let (started, step_release) = (step_started.clone(), release.clone());
    let saga = Saga::builder("order", 1)
        .log(log.clone())
        .lease(LEASE)
        .retry(RetryPolicy::never())
        .step(
            Step::new(
                "slow",
                service_fn(move |r: StepRequest<Vec<u32>>| {
                    let started = started.clone();
                    let release = step_release.clone();
                    async move {
                        *started.lock().unwrap() = Some(Instant::now());
                        release.notified().await;
                        Ok::<_, String>(r.context)
                    }
                }),
            )
            .compensate(service_fn(|_r: StepRequest<Vec<u32>>| async {
                Ok::<_, String>(())
            })),
        )
        .build()
        .unwrap();
    let run = tokio::spawn(saga.run_with_id("long", vec![]));
    // Another process keeps trying to claim it while the step runs.
    let other = SqliteLog::open(&path).await.unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut claims = 0;
    let mut released = false;
    while !run.is_finished() {
        assert!(Instant::now() < give_up, "the step never ended");
        let ids = other
            .claim("order", "other", Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert!(
            ids.is_empty(),
            "claimed while its owner was running it (try {claims}, {:?})",
            log.load("long").await
        );
        claims += 1;
        let since = *step_started.lock().unwrap();
        if !released && claims >= 10 && since.is_some_and(|t| t.elapsed() >= 2 * LEASE) {
            // Claims have failed for two leases of the step: let it end.
            release.notify_one();
            released = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(released, "the step ended before it was let go");
    run.await.unwrap().unwrap();
    assert_eq!(log.load("long").await.unwrap().phase, Phase::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_failed_before_the_crash_is_compensated_even_when_resuming() {
    let log = MemoryLog::new();
    log.create(&new_saga("f", 1), "dead", Duration::ZERO)
        .await
        .unwrap();
    let entries = [
        Entry::Started {
            step: 0,
            kind: Kind::Action,
        },
        Entry::Done {
            step: 0,
            kind: Kind::Action,
            context: Some(serde_json::json!([0])),
        },
        Entry::Started {
            step: 1,
            kind: Kind::Action,
        },
        Entry::Failed {
            step: 1,
            kind: Kind::Action,
            error: "declined".into(),
        },
    ];
    for (seq, e) in entries.iter().enumerate() {
        log.append("f", "dead", seq as u64, e, &[]).await.unwrap();
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut b = Saga::builder("order", 1)
        .log(log.clone())
        .on_crash(OnCrash::Resume);
    for name in ["a", "b"] {
        let (c1, c2) = (calls.clone(), calls.clone());
        b = b.step(
            Step::new(
                name,
                service_fn(move |r: StepRequest<Vec<u32>>| {
                    c1.lock().unwrap().push(r.idempotency_key.clone());
                    async move { Ok::<_, String>(r.context) }
                }),
            )
            .compensate(service_fn(move |r: StepRequest<Vec<u32>>| {
                c2.lock().unwrap().push(r.idempotency_key.clone());
                async move { Ok::<_, String>(()) }
            })),
        );
    }
    let report = b.build().unwrap().recover().await.unwrap();
    assert_eq!(report.compensated, ["f"]);
    assert_eq!(*calls.lock().unwrap(), ["f:a:compensation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_is_logged_and_kept_by_recovery() {
    let path = temp_db("deadline");
    let log = SqliteLog::open(&path).await.unwrap();
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 1_000;
    let saga = NewSaga {
        deadline_ms: Some(past),
        ..new_saga("late", 1)
    };
    log.create(&saga, "dead", Duration::ZERO).await.unwrap();
    assert_eq!(log.load("late").await.unwrap().deadline_ms, Some(past));
    let entries = [
        Entry::Started {
            step: 0,
            kind: Kind::Action,
        },
        Entry::Done {
            step: 0,
            kind: Kind::Action,
            context: Some(serde_json::json!([0])),
        },
    ];
    for (seq, e) in entries.iter().enumerate() {
        log.append("late", "dead", seq as u64, e, &[])
            .await
            .unwrap();
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut b = Saga::builder("order", 1)
        .log(log.clone())
        .on_crash(OnCrash::Resume);
    for name in ["a", "b"] {
        let (c1, c2) = (calls.clone(), calls.clone());
        b = b.step(
            Step::new(
                name,
                service_fn(move |r: StepRequest<Vec<u32>>| {
                    c1.lock().unwrap().push(r.idempotency_key.clone());
                    async move { Ok::<_, String>(r.context) }
                }),
            )
            .compensate(service_fn(move |r: StepRequest<Vec<u32>>| {
                c2.lock().unwrap().push(r.idempotency_key.clone());
                async move { Ok::<_, String>(()) }
            })),
        );
    }
    let report = b.build().unwrap().recover().await.unwrap();
    // Past its deadline: step b never starts, step a is undone.
    assert_eq!(report.compensated, ["late"]);
    assert_eq!(*calls.lock().unwrap(), ["late:a:compensation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_naming_steps_the_definition_lacks_is_reported_not_run() {
    let log = MemoryLog::new();
    log.create(&new_saga("long", 1), "dead", Duration::ZERO)
        .await
        .unwrap();
    let mut seq = 0;
    for step in 0..2 {
        for e in [
            Entry::Started {
                step,
                kind: Kind::Action,
            },
            Entry::Done {
                step,
                kind: Kind::Action,
                context: Some(serde_json::json!([])),
            },
        ] {
            log.append("long", "dead", seq, &e, &[]).await.unwrap();
            seq += 1;
        }
    }
    let saga = Saga::builder("order", 1)
        .log(log.clone())
        .step(
            Step::new(
                "only",
                service_fn(|r: StepRequest<Vec<u32>>| async move { Ok::<_, String>(r.context) }),
            )
            .compensate(service_fn(|_r: StepRequest<Vec<u32>>| async {
                Ok::<_, String>(())
            })),
        )
        .build()
        .unwrap();
    let report = saga.recover().await.unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].1.contains("beyond"), "{report:?}");
    assert_eq!(log.load("long").await.unwrap().phase, Phase::Forward);
}
