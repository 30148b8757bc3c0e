//! The startup probe: which checks gate it, 503 until each has passed
//! once, 200 for good after (without running checks), the manual gate, the
//! event and the log line.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_health::{Check, CheckResult, HealthEvent, HealthRegistry, Probe, Status};
use buttress_test_support::capture::Capture;
use tracing::Level;

/// A check that is healthy while `up` is set, and counts its runs.
fn switch(
    up: &Arc<AtomicBool>,
    runs: &Arc<AtomicU32>,
) -> impl Fn() -> std::future::Ready<CheckResult> + Send + Sync + 'static {
    let (up, runs) = (up.clone(), runs.clone());
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if up.load(Ordering::SeqCst) {
            CheckResult::healthy()
        } else {
            CheckResult::unhealthy("not up yet")
        })
    }
}

/// Lets the background runs a probe started finish (paused time advances
/// only once every task is idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn startup_is_503_until_the_first_pass_then_200_for_good_without_running_checks() {
    let up = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU32::new(0));
    let registry = HealthRegistry::builder()
        .check(Check::new("db", switch(&up, &runs)).interval(Duration::from_secs(1)))
        .build()
        .unwrap();

    let report = registry.startup().await;
    assert_eq!(report.probe, Probe::Startup);
    assert_eq!(report.http_status(), 503);
    assert!(!report.started && !registry.is_started());
    assert_eq!(report.check("db").unwrap().status, Status::Unhealthy);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(registry.startup().await.http_status(), 503); // the stale result, a run started
    settle().await;
    let report = registry.startup().await;
    assert_eq!(report.http_status(), 200);
    assert_eq!(report.status, Status::Healthy);
    assert!(report.started && registry.is_started());
    assert!(report.checks.is_empty());
    assert_eq!(report.to_json()["probe"], "startup");

    // A later failure is readiness's to report; startup stays 200 and no
    // longer runs the check, however stale its result.
    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    registry.readiness().await;
    settle().await;
    assert_eq!(registry.readiness().await.http_status(), 503);
    let before = runs.load(Ordering::SeqCst);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(registry.startup().await.http_status(), 200);
        assert_eq!(registry.cached(Probe::Startup).http_status(), 200);
        settle().await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), before);
}

#[tokio::test(start_paused = true)]
async fn each_startup_check_must_pass_once_not_all_at_the_same_time() {
    let (a_up, b_up) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    let runs = Arc::new(AtomicU32::new(0));
    let registry = HealthRegistry::builder()
        .check(Check::new("a", switch(&a_up, &runs)).interval(Duration::from_secs(1)))
        .check(Check::new("b", switch(&b_up, &runs)).interval(Duration::from_secs(1)))
        .build()
        .unwrap();
    assert_eq!(registry.startup().await.http_status(), 503);

    // `a` fails now, `b` passes: each has passed once.
    a_up.store(false, Ordering::SeqCst);
    b_up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    registry.startup().await;
    settle().await;
    assert_eq!(registry.startup().await.http_status(), 200);
    assert_eq!(registry.readiness().await.http_status(), 503);
}

#[tokio::test(start_paused = true)]
async fn marked_checks_gate_startup_else_the_critical_ones() {
    let ok = || async { Status::Healthy };
    let down = || async { Status::Unhealthy };

    // None marked: the critical checks; a non-critical one that is down
    // does not hold startup back...
    let registry = HealthRegistry::builder()
        .check(Check::new("db", ok))
        .check(Check::new("recommendations", down).critical(false))
        .build()
        .unwrap();
    let report = registry.startup().await;
    assert_eq!(report.http_status(), 200);

    // ...but a critical one does.
    let registry = HealthRegistry::builder()
        .check(Check::new("db", down))
        .check(Check::new("recommendations", ok).critical(false))
        .build()
        .unwrap();
    let report = registry.startup().await;
    assert_eq!(report.http_status(), 503);
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["db"]);

    // Marked: only those, critical or not.
    let registry = HealthRegistry::builder()
        .check(Check::new("db", down))
        .check(Check::new("warm-cache", ok).critical(false).startup())
        .build()
        .unwrap();
    let report = registry.startup().await;
    assert_eq!(report.http_status(), 200);
    let registry = HealthRegistry::builder()
        .check(Check::new("db", ok))
        .check(Check::new("migrations", down).startup())
        .build()
        .unwrap();
    let report = registry.startup().await;
    assert_eq!(report.http_status(), 503);
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["migrations"]);
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn the_config_marks_startup_checks_and_wins_over_the_code() {
    let config: buttress_health::HealthConfig = serde_json::from_str(
        r#"{ "checks": { "migrations": { "startup": true }, "db": { "startup": false } } }"#,
    )
    .unwrap();
    let registry = HealthRegistry::builder()
        .config(config)
        .check(Check::new("db", || async { Status::Healthy }).startup())
        .check(Check::new("migrations", || async { Status::Unhealthy }))
        .build()
        .unwrap();
    let report = registry.startup().await;
    assert_eq!(report.http_status(), 503);
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["migrations"]);

    let err = serde_json::from_str::<buttress_health::HealthConfig>(
        r#"{ "defaults": { "startup": "yes" } }"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid type"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_manual_gate_holds_startup_until_done_even_with_every_check_passing() {
    let registry = HealthRegistry::builder()
        .check(Check::new("db", || async { Status::Healthy }))
        .manual_startup()
        .build()
        .unwrap();
    let handle = registry.startup_handle();
    let report = registry.startup().await;
    assert_eq!(report.http_status(), 503);
    assert_eq!(report.check("db").unwrap().status, Status::Healthy);
    assert!(report
        .summary
        .issues
        .iter()
        .any(|i| i.contains("StartupHandle::done")));
    assert!(!handle.is_started());

    handle.done();
    assert!(handle.is_started() && registry.is_started());
    assert_eq!(registry.cached(Probe::Startup).http_status(), 200);
    handle.done(); // idempotent
    assert_eq!(registry.startup().await.http_status(), 200);
}

#[tokio::test(start_paused = true)]
async fn done_before_the_checks_pass_waits_for_them() {
    let up = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU32::new(0));
    let registry = HealthRegistry::builder()
        .check(Check::new("db", switch(&up, &runs)).interval(Duration::from_secs(1)))
        .manual_startup()
        .build()
        .unwrap();
    registry.startup_handle().done();
    assert_eq!(registry.startup().await.http_status(), 503);
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Readiness's run counts for startup too.
    registry.readiness().await;
    settle().await;
    assert!(registry.is_started());
    assert_eq!(registry.startup().await.http_status(), 200);
}

#[tokio::test(start_paused = true)]
async fn without_startup_checks_or_gate_it_is_started_at_the_first_probe() {
    let registry = HealthRegistry::new();
    assert!(!registry.is_started());
    assert_eq!(registry.startup().await.http_status(), 200);
    assert!(registry.is_started());
}

#[tokio::test(start_paused = true)]
async fn completing_startup_emits_one_event_and_logs_at_info() {
    let (capture, _guard) = Capture::install();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let registry = HealthRegistry::builder()
        .check(Check::new("db", || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Status::Healthy
        }))
        .on_event(move |e: &HealthEvent| log.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.startup().await.http_status(), 200);
    registry.startup().await;
    registry.readiness().await;

    let started: Vec<HealthEvent> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, HealthEvent::Started { .. }))
        .cloned()
        .collect();
    assert_eq!(
        started,
        [HealthEvent::Started {
            after: Duration::from_millis(500)
        }]
    );
    let logged = capture.find("health: startup complete");
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].level, Level::INFO);
    assert_eq!(logged[0].field("after"), Some("500ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_probes_and_done_complete_startup_exactly_once() {
    let count = Arc::new(AtomicU32::new(0));
    let c = count.clone();
    let registry = HealthRegistry::builder()
        .check(Check::new("db", || async { Status::Healthy }))
        .check(Check::new("cache", || async { Status::Degraded }))
        .manual_startup()
        .on_event(move |e: &HealthEvent| {
            if matches!(e, HealthEvent::Started { .. }) {
                c.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            if i == 16 {
                registry.startup_handle().done();
            }
            registry.startup().await.http_status()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(registry.startup().await.http_status(), 200);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
