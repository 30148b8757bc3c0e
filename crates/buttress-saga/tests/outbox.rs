//! The transactional outbox on real databases: a message is published iff
//! its transaction committed, a relay killed mid-batch (SIGKILL, in a child
//! process) leaves only the unmarked messages to republish, and the order
//! per key holds with failing publishes and two relays at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_saga::outbox::Relay;
use buttress_saga::postgres::{self, PostgresLog};
use buttress_saga::sqlite::{self, SqliteLog};
use buttress_saga::{Message, RetryPolicy, Saga, Step, StepOutput, StepRequest};
use tower::{service_fn, ServiceExt};

const CHILD: &str = "BUTTRESS_OUTBOX_CHILD";

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

fn temp_dir(tag: &str) -> Tmp {
    let dir = std::env::temp_dir().join(format!(
        "buttress-saga-outbox-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Tmp {
        path: dir.clone(),
        dir,
    }
}

type Published = Arc<Mutex<Vec<Message>>>;

fn recorder(
    published: &Published,
) -> impl tower::Service<Message, Response = (), Error = String, Future: Send> + Clone + Send + 'static
{
    let p = published.clone();
    service_fn(move |m: Message| {
        p.lock().unwrap().push(m);
        async { Ok::<_, String>(()) }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_message_is_published_iff_its_transaction_committed() {
    let dir = temp_dir("iff");
    let path = dir.join("app.db");
    let store = SqliteLog::open(&path).await.unwrap();
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    sqlite::migrate(&mut conn).unwrap();
    conn.execute_batch("CREATE TABLE orders (id TEXT PRIMARY KEY)")
        .unwrap();
    {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO orders VALUES ('o-1')", []).unwrap();
        sqlite::enqueue(&tx, &Message::new("o-1:created", "o-1", "{}")).unwrap();
        tx.commit().unwrap();
    }
    {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO orders VALUES ('o-2')", []).unwrap();
        sqlite::enqueue(&tx, &Message::new("o-2:created", "o-2", "{}")).unwrap();
        // Rolled back on drop.
    }
    let published = Published::default();
    let mut relay = Relay::new(store.clone(), recorder(&published));
    let report = relay.run_once().await.unwrap();
    assert_eq!(report.published, 1);
    let ids: Vec<_> = published
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(ids, ["o-1:created"]);
    // Marked: a second pass publishes nothing.
    assert_eq!(relay.run_once().await.unwrap().published, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_message_is_published_iff_its_transaction_committed() {
    let db = buttress_test_support::postgres::database();
    let store = PostgresLog::connect(db.url(), 1).await.unwrap();
    let (mut client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        postgres::migrate(&mut client).await.unwrap(),
        postgres::SCHEMA_VERSION
    );
    client
        .batch_execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES ('o-1')", &[])
        .await
        .unwrap();
    postgres::enqueue(&tx, &Message::new("o-1:created", "o-1", "{}"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    postgres::enqueue(&tx, &Message::new("o-2:created", "o-2", "{}"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let published = Published::default();
    let mut relay = Relay::new(store, recorder(&published));
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(published.lock().unwrap()[0].id, "o-1:created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_steps_write_their_messages_with_their_completion_only() {
    let dir = temp_dir("saga");
    let path = dir.join("app.db");
    let log = SqliteLog::open(&path).await.unwrap();
    let step = |name: &'static str, fails: bool| {
        Step::new(
            name,
            service_fn(move |r: StepRequest<u32>| async move {
                if fails {
                    return Err("down".to_owned());
                }
                let msg = Message::new(&r.idempotency_key, r.saga_id.clone(), name);
                Ok(StepOutput::new(r.context + 1).message(msg))
            }),
        )
        .compensate(service_fn(|_r: StepRequest<u32>| async {
            Ok::<_, String>(())
        }))
    };
    let saga = Saga::builder("order", 1)
        .log(log.clone())
        .retry(RetryPolicy::never())
        .step(step("reserve", false))
        .step(step("charge", true))
        .build()
        .unwrap();
    saga.clone().oneshot(0).await.unwrap_err();
    let published = Published::default();
    let mut relay = Relay::new(log, recorder(&published));
    relay.run_once().await.unwrap();
    let payloads: Vec<_> = published
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(payloads, ["reserve"], "the failed step wrote no message");
}

fn publish_log(effects: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(effects).unwrap();
    let mut stmt = conn
        .prepare("SELECT id FROM published ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn effects_publisher(
    effects: PathBuf,
    kill_after: Option<u64>,
) -> impl tower::Service<Message, Response = (), Error = String, Future: Send> + Clone + Send + 'static
{
    let count = Arc::new(AtomicU64::new(0));
    service_fn(move |m: Message| {
        let effects = effects.clone();
        let count = count.clone();
        async move {
            let conn = rusqlite::Connection::open(&effects).map_err(|e| e.to_string())?;
            conn.busy_timeout(Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            conn.execute("INSERT INTO published (id) VALUES (?1)", [&m.id])
                .map_err(|e| e.to_string())?;
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            if kill_after == Some(n) {
                // Published, not yet marked.
                let _ = Command::new("kill")
                    .args(["-KILL", &std::process::id().to_string()])
                    .status();
                std::thread::sleep(Duration::from_secs(60));
            }
            Ok(())
        }
    })
}

type BoxPublisher = tower::util::BoxCloneSyncService<Message, (), String>;

async fn relay_for(backend: &str, url: &str, publisher: BoxPublisher) -> Relay<BoxPublisher> {
    match backend {
        "sqlite" => Relay::new(SqliteLog::open(url).await.unwrap(), publisher),
        _ => Relay::new(PostgresLog::connect(url, 1).await.unwrap(), publisher),
    }
}

async fn enqueue_all(backend: &str, url: &str, keys: usize, per_key: usize) {
    // Interleaved keys, one transaction per message.
    match backend {
        "sqlite" => {
            let mut conn = rusqlite::Connection::open(url).unwrap();
            sqlite::migrate(&mut conn).unwrap();
            for n in 0..per_key {
                for k in 0..keys {
                    let tx = conn.transaction().unwrap();
                    let m = Message::new(format!("k{k}-{n:03}"), format!("k{k}"), "{}");
                    sqlite::enqueue(&tx, &m).unwrap();
                    tx.commit().unwrap();
                }
            }
        }
        _ => {
            let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            postgres::migrate(&mut client).await.unwrap();
            for n in 0..per_key {
                for k in 0..keys {
                    let tx = client.transaction().await.unwrap();
                    let m = Message::new(format!("k{k}-{n:03}"), format!("k{k}"), "{}");
                    postgres::enqueue(&tx, &m).await.unwrap();
                    tx.commit().await.unwrap();
                }
            }
        }
    }
}

/// The child's entry point: a relay that kills itself (SIGKILL) right
/// after its `KILL_AFTER`th publish, before marking it.
#[test]
#[ignore = "the child process of the outbox tests, started by them"]
fn relay_child() {
    let backend = std::env::var(CHILD).expect("started by the outbox tests");
    let url = std::env::var("STORE_URL").unwrap();
    let effects = PathBuf::from(std::env::var("EFFECTS").unwrap());
    let kill_after: u64 = std::env::var("KILL_AFTER").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let publisher = BoxPublisher::new(effects_publisher(effects, Some(kill_after)));
        let mut relay = relay_for(&backend, &url, publisher)
            .await
            .lease(Duration::from_millis(1));
        for _ in 0..100 {
            relay.run_once().await.unwrap();
        }
        println!("RELAY-FINISHED");
    });
}

async fn killed_relay_republishes_only_unmarked(backend: &str, url: &str, dir: &Path) {
    let (keys, per_key) = (3, 10);
    enqueue_all(backend, url, keys, per_key).await;
    let effects = dir.join("published.db");
    rusqlite::Connection::open(&effects)
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE published (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT)",
        )
        .unwrap();
    for kill_after in [1u64, 7, 14] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "relay_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, backend)
            .env("STORE_URL", url)
            .env("EFFECTS", &effects)
            .env("KILL_AFTER", kill_after.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // This process finishes the work.
    let publisher = BoxPublisher::new(effects_publisher(effects.clone(), None));
    let mut relay = relay_for(backend, url, publisher).await;
    for _ in 0..50 {
        if relay.run_once().await.unwrap().published == 0 {
            break;
        }
    }
    let log = publish_log(&effects);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &log {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(counts.len(), keys * per_key, "every message published");
    // Three kills, each after a publish and before its mark: exactly those
    // three messages went out twice, nothing else.
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n == 2).collect();
    assert_eq!(twice.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n <= 2), "{counts:?}");
    // Order per key, duplicates aside: first publications in sequence.
    for k in 0..keys {
        let prefix = format!("k{k}-");
        let mut firsts: Vec<&String> = Vec::new();
        for id in log.iter().filter(|id| id.starts_with(&prefix)) {
            if !firsts.contains(&id) {
                firsts.push(id);
            }
        }
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(firsts, sorted, "key k{k} out of order: {log:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_relay_killed_mid_batch_republishes_only_what_was_not_marked() {
    let dir = temp_dir("kill");
    let url = dir.join("app.db");
    killed_relay_republishes_only_unmarked("sqlite", url.to_str().unwrap(), &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_killed_mid_batch_republishes_only_what_was_not_marked() {
    let dir = temp_dir("kill-pg");
    let db = buttress_test_support::postgres::database();
    killed_relay_republishes_only_unmarked("postgres", db.url(), &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_relays_with_failing_publishes_keep_the_order_per_key() {
    let db = buttress_test_support::postgres::database();
    let (keys, per_key) = (4, 15);
    enqueue_all("postgres", db.url(), keys, per_key).await;
    let published = Published::default();
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..2 {
        let p = published.clone();
        let calls = calls.clone();
        // Every third call fails.
        let publisher = BoxPublisher::new(service_fn(move |m: Message| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let p = p.clone();
            async move {
                if n % 3 == 2 {
                    return Err("broker hiccup".to_owned());
                }
                p.lock().unwrap().push(m);
                Ok(())
            }
        }));
        let mut relay = relay_for("postgres", db.url(), publisher)
            .await
            .id(format!("relay-{r}"))
            .batch(2, 4)
            .retry(RetryPolicy::backoff(2, Duration::from_millis(1), 1.0));
        tasks.push(tokio::spawn(async move {
            for _ in 0..500 {
                let report = relay.run_once().await.unwrap();
                if report.published == 0 && report.failed_keys.is_empty() {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let published = published.lock().unwrap().clone();
    assert_eq!(
        published.len(),
        keys * per_key,
        "each message once, none lost"
    );
    for k in 0..keys {
        let ids: Vec<String> = published
            .iter()
            .filter(|m| m.key == format!("k{k}"))
            .map(|m| m.id.clone())
            .collect();
        let expected: Vec<String> = (0..per_key).map(|n| format!("k{k}-{n:03}")).collect();
        assert_eq!(ids, expected);
    }
}
