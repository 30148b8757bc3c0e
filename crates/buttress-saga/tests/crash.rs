//! Real crashes: a child process (this test binary, re-run with
//! `BUTTRESS_SAGA_CHILD` set) runs a saga and kills itself with SIGKILL at
//! one write boundary of the log, before or after the write; another
//! process recovers the saga. Every boundary is tried in turn, on SQLite
//! and on PostgreSQL (there with two recovering processes at once).
//!
//! The steps record every call (`calls`, one row per invocation) and their
//! effects by idempotency key (`effects`, one row per key) in a SQLite
//! database of their own. After recovery: every step whose action took
//! effect has its compensation's effect, no action ran after a
//! compensation began, each action ran once, each compensation once (twice
//! only for the one a crash left in doubt), and the log says compensated.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_saga::log::{BoxFuture, NewSaga, StoredSaga};
use buttress_saga::postgres::PostgresLog;
use buttress_saga::sqlite::SqliteLog;
use buttress_saga::{
    Entry, LogError, Message, OnCrash, Phase, RetryPolicy, Saga, SagaLog, Step, StepRequest,
};
use rusqlite::params;
use tower::service_fn;

const CHILD: &str = "BUTTRESS_SAGA_CHILD";
const SAGA_ID: &str = "crash-saga";
/// Writes of the saga below: create, then (started, done) for s0..s2,
/// started + failed for s3, the phase change, (started, done) for the three
/// compensations, and the final phase.
const WRITES: u64 = 17;

fn effects_schema(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER, kind TEXT, pid INTEGER);
         CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, step INTEGER, kind TEXT);",
    )
    .unwrap();
}

fn record(path: &Path, step: u32, kind: &str, key: &str, action_key: &str) -> Result<(), String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    conn.execute(
        "INSERT INTO calls (step, kind, pid) VALUES (?1, ?2, ?3)",
        params![step, kind, std::process::id()],
    )
    .map_err(|e| e.to_string())?;
    // A compensation takes effect only where its action did.
    conn.execute(
        "INSERT OR IGNORE INTO effects (key, step, kind)
         SELECT ?1, ?2, ?3 WHERE ?3 = 'action' OR EXISTS (SELECT 1 FROM effects WHERE key = ?4)",
        params![key, step, kind, action_key],
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// s0, s1, s2 succeed and are compensable; s3 always fails, unless
/// `forward` (then it succeeds too, and recovery resumes forward).
fn saga(log: Arc<dyn SagaLog>, effects: PathBuf, lease: Duration) -> Saga<Vec<u32>> {
    let forward = std::env::var("CRASH_FORWARD").is_ok_and(|v| v == "1");
    let mut b = Saga::builder("crash", 1)
        .log_arc(log)
        .on_crash(if forward {
            OnCrash::Resume
        } else {
            OnCrash::Compensate
        })
        .lease(lease)
        .retry(RetryPolicy::never())
        .compensation_retry(RetryPolicy::backoff(3, Duration::from_millis(5), 2.0));
    for i in 0..4u32 {
        let (ea, ec) = (effects.clone(), effects.clone());
        let name = ["s0", "s1", "s2", "s3"][i as usize];
        b = b.step(
            Step::new(
                name,
                service_fn(move |r: StepRequest<Vec<u32>>| {
                    let effects = ea.clone();
                    async move {
                        if i == 3 && !forward {
                            record(&effects, i, "call-only", "-", "-")?;
                            return Err(format!("{} is down", r.step));
                        }
                        record(&effects, i, "action", &r.idempotency_key, "")?;
                        let mut ctx = r.context;
                        ctx.push(i);
                        Ok::<_, String>(ctx)
                    }
                }),
            )
            .compensate(service_fn(move |r: StepRequest<Vec<u32>>| {
                let effects = ec.clone();
                async move {
                    let action_key = format!("{}:{}:action", r.saga_id, r.step);
                    record(&effects, i, "compensation", &r.idempotency_key, &action_key)
                }
            })),
        );
    }
    b.build().unwrap()
}

/// A log that kills this process with SIGKILL at write number `at`,
/// before or after the write.
struct CrashingLog {
    inner: Arc<dyn SagaLog>,
    writes: AtomicU64,
    at: u64,
    after: bool,
}

fn die() -> ! {
    let _ = Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

impl CrashingLog {
    async fn around<T>(&self, write: impl std::future::Future<Output = T>) -> T {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n == self.at && !self.after {
            die();
        }
        let out = write.await;
        if n == self.at && self.after {
            die();
        }
        out
    }
}

impl SagaLog for CrashingLog {
    fn create<'a>(
        &'a self,
        saga: &'a NewSaga,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(self.around(self.inner.create(saga, owner, lease)))
    }
    fn append<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        seq: u64,
        entry: &'a Entry,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(self.around(self.inner.append(id, owner, seq, entry, messages)))
    }
    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        self.inner.renew(id, owner, lease)
    }
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredSaga, LogError>> {
        self.inner.load(id)
    }
    fn claim<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        self.inner.claim(name, owner, lease, limit)
    }
    fn take_over<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), LogError>> {
        self.inner.take_over(id, owner, lease)
    }
    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
        self.inner.release(id, owner)
    }
    fn list<'a>(
        &'a self,
        name: &'a str,
        phase: Phase,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>> {
        self.inner.list(name, phase)
    }
}

async fn open_log(backend: &str, url: &str) -> Arc<dyn SagaLog> {
    match backend {
        "sqlite" => Arc::new(SqliteLog::open(url).await.unwrap()),
        _ => Arc::new(PostgresLog::connect(url, 2).await.unwrap()),
    }
}

/// The child's entry point: runs only in a process started by the tests.
#[test]
#[ignore = "the child process of the crash tests, started by them"]
fn crash_child() {
    let role = std::env::var(CHILD).expect("started by the crash tests");
    let backend = std::env::var("BACKEND").unwrap();
    let url = std::env::var("LOG_URL").unwrap();
    let effects = PathBuf::from(std::env::var("EFFECTS").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = open_log(&backend, &url).await;
        match role.as_str() {
            "run" => {
                let at: u64 = std::env::var("CRASH_AT").unwrap().parse().unwrap();
                let after = std::env::var("CRASH_WHEN").unwrap() == "after";
                let crashing = Arc::new(CrashingLog {
                    inner: log,
                    writes: AtomicU64::new(0),
                    at,
                    after,
                });
                // A short lease: the process is about to die.
                let saga = saga(crashing, effects, Duration::from_millis(1));
                let _ = saga.run_with_id(SAGA_ID, vec![]).await;
                println!("CHILD-FINISHED");
            }
            "recover" => {
                let saga = saga(log, effects, Duration::from_secs(60));
                let report = saga.recover().await.unwrap();
                println!(
                    "RECOVERED compensated={} completed={} failed={:?}",
                    report.compensated.len(),
                    report.completed.len(),
                    report.failed
                );
            }
            other => panic!("unknown child role {other}"),
        }
    });
}

fn child(role: &str, backend: &str, url: &str, effects: &Path, at: u64, after: bool) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "crash_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, role)
    .env("BACKEND", backend)
    .env("LOG_URL", url)
    .env("EFFECTS", effects)
    .env("CRASH_AT", at.to_string())
    .env("CRASH_WHEN", if after { "after" } else { "before" })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

#[derive(Debug)]
struct Call {
    step: u32,
    kind: String,
}

fn calls(effects: &Path) -> Vec<Call> {
    let conn = rusqlite::Connection::open(effects).unwrap();
    let mut stmt = conn
        .prepare("SELECT step, kind FROM calls ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Call {
            step: r.get(0)?,
            kind: r.get(1)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn effect_steps(effects: &Path, kind: &str) -> Vec<u32> {
    let conn = rusqlite::Connection::open(effects).unwrap();
    let mut stmt = conn
        .prepare("SELECT step FROM effects WHERE kind = ?1 ORDER BY step")
        .unwrap();
    stmt.query_map([kind], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Checks the invariants after recovery; `what` names the crash point.
async fn check(log: &dyn SagaLog, effects: &Path, created: bool, what: &str) {
    let calls = calls(effects);
    let actions = effect_steps(effects, "action");
    let compensations = effect_steps(effects, "compensation");
    if !created {
        // Killed before the saga was created: nothing ran, nothing logged.
        assert!(calls.is_empty(), "{what}: {calls:?}");
        assert!(
            matches!(log.load(SAGA_ID).await, Err(LogError::NotFound { .. })),
            "{what}"
        );
        return;
    }
    let stored = log.load(SAGA_ID).await.unwrap();
    assert_eq!(stored.phase, Phase::Compensated, "{what}");
    // Every completed step compensated (its effect exactly once, by key).
    assert_eq!(actions, compensations, "{what}: calls {calls:?}");
    // No action after the first compensation.
    if let Some(first_comp) = calls.iter().position(|c| c.kind == "compensation") {
        assert!(
            calls[first_comp..].iter().all(|c| c.kind == "compensation"),
            "{what}: an action ran after compensation began: {calls:?}"
        );
    }
    // Each action ran at most once (none is re-run on recovery), and the
    // ones that ran are a prefix.
    for step in 0..4 {
        let n = calls
            .iter()
            .filter(|c| c.step == step && c.kind != "compensation")
            .count();
        assert!(
            n <= 1,
            "{what}: step {step} action ran {n} times: {calls:?}"
        );
    }
    // Each compensation ran once, except at most one left in doubt.
    let mut twice = 0;
    for step in actions.iter() {
        let n = calls
            .iter()
            .filter(|c| c.step == *step && c.kind == "compensation")
            .count();
        assert!(
            (1..=2).contains(&n),
            "{what}: step {step} compensated {n} times"
        );
        twice += usize::from(n == 2);
    }
    assert!(twice <= 1, "{what}: {calls:?}");
}

fn run_child(backend: &str, url: &str, effects: &Path, at: u64, after: bool) {
    let out = child("run", backend, url, effects, at, after)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the child should die of SIGKILL at write {at}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("CHILD-FINISHED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sagas_killed_at_every_write_boundary_are_compensated_on_recovery() {
    let dir = tempdir("sqlite");
    for at in 0..WRITES {
        for after in [false, true] {
            let what = format!("write {at} {}", if after { "after" } else { "before" });
            let case = dir.join(format!("{at}-{after}"));
            std::fs::create_dir_all(&case).unwrap();
            let db = case.join("saga.db");
            let effects = case.join("effects.db");
            effects_schema(&effects);
            run_child("sqlite", db.to_str().unwrap(), &effects, at, after);
            // This process recovers it.
            let log: Arc<dyn SagaLog> = Arc::new(SqliteLog::open(&db).await.unwrap());
            let s = saga(log.clone(), effects.clone(), Duration::from_secs(60));
            let report = s.recover().await.unwrap();
            assert!(report.failed.is_empty(), "{what}: {report:?}");
            // The saga exists unless killed before its creation, and is unfinished
            // unless killed after its last write.
            let created = at != 0 || after;
            let expect_recovery = created && !(at == WRITES - 1 && after);
            assert_eq!(
                report.compensated.len(),
                usize::from(expect_recovery),
                "{what}: {report:?}"
            );
            check(&*log, &effects, created, &what).await;
            // A second recovery finds nothing.
            assert_eq!(s.recover().await.unwrap(), Default::default(), "{what}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sagas_killed_at_every_write_boundary_are_recovered_by_one_of_two_processes() {
    let dir = tempdir("pg");
    for at in 0..WRITES {
        for after in [false, true] {
            let what = format!("write {at} {}", if after { "after" } else { "before" });
            let db = buttress_test_support::postgres::database();
            let effects = dir.join(format!("effects-{at}-{after}.db"));
            effects_schema(&effects);
            // Migrate first, so the child's write counting starts at create.
            let log = PostgresLog::connect(db.url(), 1).await.unwrap();
            run_child("postgres", db.url(), &effects, at, after);
            // Two recovering processes at once.
            let a = child("recover", "postgres", db.url(), &effects, 0, false)
                .spawn()
                .unwrap();
            let b = child("recover", "postgres", db.url(), &effects, 0, false)
                .spawn()
                .unwrap();
            let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
            let mut compensated = 0;
            for out in &outs {
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{what}: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = stdout
                    .lines()
                    .find_map(|l| l.find("RECOVERED").map(|i| &l[i..]))
                    .unwrap_or_else(|| panic!("{what}: {stdout}"));
                assert!(line.ends_with("failed=[]"), "{what}: {line}");
                compensated += line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("compensated="))
                    .unwrap()
                    .parse::<usize>()
                    .unwrap();
            }
            // The saga exists unless killed before its creation, and is unfinished
            // unless killed after its last write.
            let created = at != 0 || after;
            let expect_recovery = created && !(at == WRITES - 1 && after);
            // Exactly one of the two recovered it.
            assert_eq!(compensated, usize::from(expect_recovery), "{what}");
            check(&log, &effects, created, &what).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "buttress-saga-crash-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes of the saga with no failing step: create, (started, done) for
/// the four steps, and the final phase.
const FORWARD_WRITES: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sagas_killed_at_every_write_boundary_resume_forward_without_losing_a_step() {
    let dir = tempdir("forward");
    for at in 0..FORWARD_WRITES {
        for after in [false, true] {
            let what = format!(
                "forward, write {at} {}",
                if after { "after" } else { "before" }
            );
            let case = dir.join(format!("{at}-{after}"));
            std::fs::create_dir_all(&case).unwrap();
            let db = case.join("saga.db");
            let effects = case.join("effects.db");
            effects_schema(&effects);
            let out = child("run", "sqlite", db.to_str().unwrap(), &effects, at, after)
                .env("CRASH_FORWARD", "1")
                .output()
                .unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), Some(9), "{what}");
            let created = at != 0 || after;
            let log: Arc<dyn SagaLog> = Arc::new(SqliteLog::open(&db).await.unwrap());
            let report = {
                // The recovering side runs the same definition (resume).
                let out = child(
                    "recover",
                    "sqlite",
                    db.to_str().unwrap(),
                    &effects,
                    0,
                    false,
                )
                .env("CRASH_FORWARD", "1")
                .output()
                .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(out.status.success(), "{what}: {stdout}");
                stdout
            };
            let calls = calls(&effects);
            if !created {
                assert!(calls.is_empty(), "{what}");
                continue;
            }
            let finished = at == FORWARD_WRITES - 1 && after;
            assert!(
                report.contains(&format!("completed={}", usize::from(!finished))),
                "{what}: {report}"
            );
            assert_eq!(
                log.load(SAGA_ID).await.unwrap().phase,
                Phase::Completed,
                "{what}"
            );
            // No step lost: all four took effect, none compensated; each ran
            // once but the one in doubt at the crash, run again.
            assert_eq!(effect_steps(&effects, "action"), [0, 1, 2, 3], "{what}");
            assert!(effect_steps(&effects, "compensation").is_empty(), "{what}");
            let mut twice = 0;
            for step in 0..4 {
                let n = calls.iter().filter(|c| c.step == step).count();
                assert!((1..=2).contains(&n), "{what}: step {step} ran {n} times");
                twice += usize::from(n == 2);
            }
            assert!(twice <= 1, "{what}: {calls:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
