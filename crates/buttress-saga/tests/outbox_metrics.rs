//! The outbox relay's metrics and tracing on real databases: every series
//! by name, labels and value after batches that publish, retry, give up and
//! drain the outbox; the backlog gauges per poll; the events, levels and
//! fields.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::error::Elapsed;
use buttress_core::BoxError;
use buttress_saga::outbox::{Backlog, OutboxStore, Relay};
use buttress_saga::postgres::{self, PostgresLog};
use buttress_saga::sqlite::{self, SqliteLog};
use buttress_saga::{Message, RetryPolicy};
use buttress_test_support::capture::Capture;
use buttress_test_support::series::{expect, nonzero, series, V};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use tower::service_fn;
use tracing::Level;

/// A temporary directory, removed when the guard drops.
struct Tmp(std::path::PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "buttress-saga-outbox-metrics-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn db(&self) -> std::path::PathBuf {
        self.0.join("app.db")
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which messages the broker refuses: `(id, failures left)`, `u32::MAX`
/// for always. Every call takes 30 ms; a refusal of key `b` is a timeout,
/// any other a plain error.
type Refusals = Arc<Mutex<HashMap<&'static str, u32>>>;

type Publisher = tower::util::BoxCloneSyncService<Message, (), BoxError>;

fn broker(refusals: &Refusals) -> Publisher {
    let refusals = refusals.clone();
    Publisher::new(service_fn(move |m: Message| {
        let refusals = refusals.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let refuse = match refusals.lock().unwrap().get_mut(m.id.as_str()) {
                Some(left) if *left > 0 => {
                    *left = left.saturating_sub(1);
                    true
                }
                _ => false,
            };
            match (refuse, m.key.as_str()) {
                (false, _) => Ok(()),
                (true, "b") => Err(Elapsed::new("broker".into(), Duration::from_millis(30)).into()),
                (true, _) => Err("broker hiccup".into()),
            }
        }
    }))
}

/// a-1, a-2, b-1, b-2, each in its own transaction; b-1 written an hour
/// ago.
fn sqlite_enqueue(path: &std::path::Path) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    sqlite::migrate(&mut conn).unwrap();
    for (id, key) in [("a-1", "a"), ("a-2", "a"), ("b-1", "b"), ("b-2", "b")] {
        let tx = conn.transaction().unwrap();
        sqlite::enqueue(&tx, &Message::new(id, key, "{}")).unwrap();
        tx.commit().unwrap();
    }
    conn.execute(
        "UPDATE buttress_outbox SET created_ms = created_ms - 3600000 WHERE id = 'b-1'",
        [],
    )
    .unwrap();
}

async fn postgres_enqueue(url: &str) {
    let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    postgres::migrate(&mut client).await.unwrap();
    for (id, key) in [("a-1", "a"), ("a-2", "a"), ("b-1", "b"), ("b-2", "b")] {
        let tx = client.transaction().await.unwrap();
        postgres::enqueue(&tx, &Message::new(id, key, "{}"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    client
        .execute(
            "UPDATE buttress_outbox SET created_at = created_at - interval '1 hour' WHERE id = 'b-1'",
            &[],
        )
        .await
        .unwrap();
}

fn retry() -> RetryPolicy {
    RetryPolicy::backoff(2, Duration::from_millis(100), 1.0)
}

fn gauge(all: &BTreeMap<String, V>, key: &str) -> f64 {
    match all.get(key) {
        Some(V::Gauge(g)) => *g,
        other => panic!("{key}: {other:?} in {all:#?}"),
    }
}

fn histogram(all: &BTreeMap<String, V>, key: &str) -> Vec<f64> {
    match all.get(key) {
        Some(V::Histogram(h)) => h.clone(),
        other => panic!("{key}: {other:?} in {all:#?}"),
    }
}

/// The relay's nonzero counters.
fn counters(all: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    nonzero(all, "buttress_outbox_")
        .into_iter()
        .filter(|(_, v)| matches!(v, V::Counter(_)))
        .collect()
}

const DURATION: &str = "buttress_outbox_publish_duration_seconds{name=orders}";
const PENDING: &str = "buttress_outbox_pending_messages{name=orders}";
const AGE: &str = "buttress_outbox_oldest_pending_age_seconds{name=orders}";

/// Three batches over a-1, a-2, b-1 (an hour old), b-2, with 2 tries per
/// message: the counters, the durations (`exact`: every call took exactly
/// 30 ms, on a paused clock; else at least 30 ms) and the backlog gauges
/// after each batch.
async fn three_batches(
    relay: &mut Relay<Publisher>,
    store: &dyn OutboxStore,
    refusals: &Refusals,
    snapshotter: &Snapshotter,
    exact: bool,
) {
    let durations = |all: &BTreeMap<String, V>, calls: usize| {
        let samples = histogram(all, DURATION);
        assert_eq!(samples.len(), calls, "{samples:?}");
        if exact {
            assert!(samples.iter().all(|s| *s == 0.03), "{samples:?}");
        } else {
            assert!(samples.iter().all(|s| *s >= 0.03), "{samples:?}");
        }
    };

    // 1. a-2 fails once then goes; b-1 times out on both tries, so b waits.
    refusals
        .lock()
        .unwrap()
        .extend([("a-2", 1), ("b-1", u32::MAX), ("b-2", u32::MAX)]);
    let report = relay.run_once().await.unwrap();
    assert_eq!(report.published, 2);
    assert_eq!(report.failed_keys, ["b"]);
    let all = series(snapshotter);
    assert_eq!(
        counters(&all),
        expect([
            (
                "buttress_outbox_messages_total{name=orders,outcome=deferred}",
                V::Counter(1)
            ),
            (
                "buttress_outbox_messages_total{name=orders,outcome=published}",
                V::Counter(2)
            ),
            (
                "buttress_outbox_publish_failures_total{kind=error,name=orders}",
                V::Counter(1)
            ),
            (
                "buttress_outbox_publish_failures_total{kind=timeout,name=orders}",
                V::Counter(2)
            ),
            ("buttress_outbox_retries_total{name=orders}", V::Counter(2)),
        ])
    );
    // a-1 once, a-2 twice, b-1 twice.
    durations(&all, 5);
    assert_eq!(gauge(&all, PENDING), 2.0);
    // The first pending message, b-1, was written an hour ago.
    let age = gauge(&all, AGE);
    assert!((3600.0..7200.0).contains(&age), "{age}");

    // 2. b-1 goes now, b-2 still times out: one pending, written just now.
    refusals.lock().unwrap().insert("b-1", 0);
    let report = relay.run_once().await.unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(report.failed_keys, ["b"]);
    let all = series(snapshotter);
    assert_eq!(
        counters(&all),
        expect([
            (
                "buttress_outbox_messages_total{name=orders,outcome=deferred}",
                V::Counter(1)
            ),
            (
                "buttress_outbox_messages_total{name=orders,outcome=published}",
                V::Counter(1)
            ),
            (
                "buttress_outbox_publish_failures_total{kind=timeout,name=orders}",
                V::Counter(2)
            ),
            ("buttress_outbox_retries_total{name=orders}", V::Counter(1)),
        ])
    );
    durations(&all, 3);
    assert_eq!(gauge(&all, PENDING), 1.0);
    let age = gauge(&all, AGE);
    assert!((0.0..3600.0).contains(&age), "{age}");

    // 3. Everything goes: the outbox is empty.
    refusals.lock().unwrap().clear();
    let report = relay.run_once().await.unwrap();
    assert_eq!(report.published, 1);
    assert!(report.failed_keys.is_empty());
    let all = series(snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_outbox_messages_total"),
        expect([(
            "buttress_outbox_messages_total{name=orders,outcome=published}",
            V::Counter(1)
        )])
    );
    assert_eq!(
        nonzero(&all, "buttress_outbox_publish_failures_total"),
        expect([])
    );
    durations(&all, 1);
    assert_eq!(gauge(&all, PENDING), 0.0);
    assert_eq!(gauge(&all, AGE), 0.0);
    assert_eq!(
        store.backlog().await.unwrap(),
        Backlog {
            messages: 0,
            oldest_age: None
        }
    );
}

#[test]
fn sqlite_relay_publishes_its_series_per_batch() {
    let dir = Tmp::new("series");
    sqlite_enqueue(&dir.db());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let refusals = Refusals::default();
    let store = rt.block_on(SqliteLog::open(dir.db())).unwrap();
    let mut relay = metrics::with_local_recorder(&recorder, || {
        Relay::new(store.clone(), broker(&refusals))
            .name("orders")
            .retry(retry())
            .metrics()
    });
    rt.block_on(three_batches(
        &mut relay,
        &store,
        &refusals,
        &snapshotter,
        true,
    ));

    // A store that fails: the batch's error is counted.
    rusqlite::Connection::open(dir.db())
        .unwrap()
        .execute_batch("DROP TABLE buttress_outbox_key")
        .unwrap();
    rt.block_on(relay.run_once()).unwrap_err();
    assert_eq!(
        counters(&series(&snapshotter)),
        expect([(
            "buttress_outbox_store_errors_total{name=orders}",
            V::Counter(1)
        )])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_publishes_its_series_per_batch() {
    let db = buttress_test_support::postgres::database();
    postgres_enqueue(db.url()).await;
    let store = PostgresLog::connect(db.url(), 1).await.unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let refusals = Refusals::default();
    let mut relay = metrics::with_local_recorder(&recorder, || {
        Relay::new(store.clone(), broker(&refusals))
            .name("orders")
            .retry(retry())
            .metrics()
    });
    three_batches(&mut relay, &store, &refusals, &snapshotter, false).await;
}

#[test]
fn a_relay_without_metrics_publishes_no_series() {
    let dir = Tmp::new("off");
    sqlite_enqueue(&dir.db());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = rt.block_on(SqliteLog::open(dir.db())).unwrap();
    let mut relay = metrics::with_local_recorder(&recorder, || {
        Relay::new(store, broker(&Refusals::default())).name("orders")
    });
    assert_eq!(rt.block_on(relay.run_once()).unwrap().published, 4);
    assert_eq!(
        nonzero(&series(&snapshotter), "buttress_outbox_"),
        expect([])
    );
    assert!(series(&snapshotter).is_empty());
}

#[test]
fn the_default_name_is_outbox() {
    let dir = Tmp::new("default");
    sqlite_enqueue(&dir.db());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = rt.block_on(SqliteLog::open(dir.db())).unwrap();
    let mut relay = metrics::with_local_recorder(&recorder, || {
        Relay::new(store, broker(&Refusals::default())).metrics()
    });
    assert_eq!(rt.block_on(relay.run_once()).unwrap().published, 4);
    assert_eq!(
        nonzero(&series(&snapshotter), "buttress_outbox_messages_total"),
        expect([(
            "buttress_outbox_messages_total{name=outbox,outcome=published}",
            V::Counter(4)
        )])
    );
}

#[test]
fn a_name_given_after_metrics_labels_the_series() {
    let dir = Tmp::new("rename");
    sqlite_enqueue(&dir.db());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = rt.block_on(SqliteLog::open(dir.db())).unwrap();
    let mut relay = metrics::with_local_recorder(&recorder, || {
        Relay::new(store, broker(&Refusals::default()))
            .metrics()
            .name("orders")
    });
    assert_eq!(rt.block_on(relay.run_once()).unwrap().published, 4);
    assert_eq!(
        nonzero(&series(&snapshotter), "buttress_outbox_messages_total"),
        expect([(
            "buttress_outbox_messages_total{name=orders,outcome=published}",
            V::Counter(4)
        )])
    );
}

#[tokio::test(start_paused = true)]
async fn the_relay_logs_each_batch_and_each_failed_publish() {
    let (capture, _guard) = Capture::install();
    let dir = Tmp::new("tracing");
    let store = SqliteLog::open(dir.db()).await.unwrap();
    let refusals = Refusals::default();
    let mut relay = Relay::new(store, broker(&refusals))
        .name("orders")
        .id("relay-1")
        .retry(retry());

    // An empty outbox: a trace, no batch event.
    assert_eq!(relay.run_once().await.unwrap().published, 0);
    let empty = capture.find("outbox batch found nothing to publish");
    assert_eq!(empty.len(), 1, "{:#?}", capture.events());
    assert_eq!(empty[0].level, Level::TRACE);
    assert_eq!(empty[0].field("buttress.name"), Some("orders"));
    assert!(capture.find("outbox batch published").is_empty());
    capture.clear();

    sqlite_enqueue(&dir.db());
    refusals
        .lock()
        .unwrap()
        .extend([("a-2", u32::MAX), ("b-1", 1)]);
    let report = relay.run_once().await.unwrap();
    assert_eq!(report.published, 3);
    assert_eq!(report.failed_keys, ["a"]);

    let retrying = capture.find("outbox publish failed; retrying");
    assert_eq!(retrying.len(), 2, "{:#?}", capture.events());
    let by_id = |events: &[buttress_test_support::capture::Record], id: &str| {
        events
            .iter()
            .find(|e| e.field("id") == Some(id))
            .cloned()
            .unwrap_or_else(|| panic!("no event for {id}: {events:#?}"))
    };
    let a2 = by_id(&retrying, "a-2");
    assert_eq!(a2.level, Level::DEBUG);
    assert_eq!(a2.field("buttress.pattern"), Some("outbox"));
    assert_eq!(a2.field("buttress.name"), Some("orders"));
    assert_eq!(a2.field("relay"), Some("relay-1"));
    assert_eq!(a2.field("key"), Some("a"));
    assert_eq!(a2.field("attempt"), Some("1"));
    assert_eq!(a2.field("kind"), Some("error"));
    assert_eq!(a2.field("error"), Some("broker hiccup"));
    let b1 = by_id(&retrying, "b-1");
    assert_eq!(b1.field("kind"), Some("timeout"));
    assert_eq!(b1.field("attempt"), Some("1"));

    let waits = capture.find("outbox publish failed; the key waits");
    assert_eq!(waits.len(), 1, "{:#?}", capture.events());
    let w = &waits[0];
    assert_eq!(w.level, Level::WARN);
    assert_eq!(w.field("buttress.pattern"), Some("outbox"));
    assert_eq!(w.field("buttress.name"), Some("orders"));
    assert_eq!(w.field("relay"), Some("relay-1"));
    assert_eq!(w.field("key"), Some("a"));
    assert_eq!(w.field("id"), Some("a-2"));
    assert_eq!(w.field("attempt"), Some("2"));
    assert_eq!(w.field("kind"), Some("error"));
    assert_eq!(w.field("error"), Some("broker hiccup"));

    let batch = capture.find("outbox batch published");
    assert_eq!(batch.len(), 1, "{:#?}", capture.events());
    let b = &batch[0];
    assert_eq!(b.level, Level::DEBUG);
    assert_eq!(b.field("buttress.pattern"), Some("outbox"));
    assert_eq!(b.field("buttress.name"), Some("orders"));
    assert_eq!(b.field("relay"), Some("relay-1"));
    assert_eq!(b.field("keys"), Some("2"));
    assert_eq!(b.field("published"), Some("3"));
    assert_eq!(b.field("failed_keys"), Some("1"));
    assert!(capture.find("outbox batch found nothing").is_empty());
}
