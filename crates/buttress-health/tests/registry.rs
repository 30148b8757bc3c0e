//! The registry: aggregation, caching, timeouts, retries, dependencies,
//! criticality, liveness, shutdown. Paused tokio time throughout.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_health::{
    Check, CheckResult, HealthEvent, HealthRegistry, Probe, RegisterError, Status,
};
use tokio::time::Instant;

fn fixed(status: Status) -> impl Fn() -> std::future::Ready<CheckResult> + Send + Sync + 'static {
    move || std::future::ready(CheckResult::from(status).with_message(status.as_str()))
}

/// A check whose status is set from the test, counting its runs.
#[derive(Clone, Default)]
struct Switch {
    status: Arc<Mutex<Option<Status>>>,
    runs: Arc<AtomicUsize>,
}

impl Switch {
    fn new(status: Status) -> Self {
        let s = Self::default();
        s.set(status);
        s
    }
    fn set(&self, status: Status) {
        *self.status.lock().unwrap() = Some(status);
    }
    /// `None`: the next runs hang.
    fn hang(&self) {
        *self.status.lock().unwrap() = None;
    }
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
    fn check(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Status> + Send>>
           + Send
           + Sync
           + 'static {
        let me = self.clone();
        move || {
            me.runs.fetch_add(1, Ordering::SeqCst);
            let status = *me.status.lock().unwrap();
            Box::pin(async move {
                match status {
                    Some(s) => s,
                    None => std::future::pending().await,
                }
            })
        }
    }
}

fn statuses(report: &buttress_health::HealthReport) -> Vec<(String, Status)> {
    report
        .checks
        .iter()
        .map(|c| (c.name.clone(), c.status))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn aggregation_takes_the_worst_with_non_critical_unhealthy_as_degraded() {
    let cases: &[(&[(Status, bool)], Status)] = &[
        (&[], Status::Healthy),
        (
            &[(Status::Healthy, true), (Status::Healthy, false)],
            Status::Healthy,
        ),
        (
            &[(Status::Healthy, true), (Status::Degraded, false)],
            Status::Degraded,
        ),
        (&[(Status::Degraded, true)], Status::Degraded),
        (
            &[(Status::Unhealthy, false), (Status::Healthy, true)],
            Status::Degraded,
        ),
        (
            &[(Status::Unhealthy, false), (Status::Degraded, true)],
            Status::Degraded,
        ),
        (
            &[(Status::Unhealthy, true), (Status::Degraded, false)],
            Status::Unhealthy,
        ),
    ];
    for (checks, expected) in cases {
        let mut b = HealthRegistry::builder();
        for (i, (status, critical)) in checks.iter().enumerate() {
            b = b.check(Check::new(format!("c{i}"), fixed(*status)).critical(*critical));
        }
        let registry = b.build().unwrap();
        let report = registry.readiness().await;
        assert_eq!(report.status, *expected, "{checks:?}");
        let code = if *expected == Status::Unhealthy {
            503
        } else {
            200
        };
        assert_eq!(report.http_status(), code, "{checks:?}");
        for (i, (status, critical)) in checks.iter().enumerate() {
            let c = report.check(&format!("c{i}")).unwrap();
            assert_eq!((c.status, c.critical), (*status, *critical));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_fresh_result_is_served_from_cache_without_running_the_check() {
    let sw = Switch::new(Status::Healthy);
    let registry = HealthRegistry::builder()
        .check(Check::new("db", sw.check()).interval(Duration::from_secs(10)))
        .build()
        .unwrap();
    registry.readiness().await;
    assert_eq!(sw.runs(), 1);
    tokio::time::advance(Duration::from_secs(9)).await;
    sw.set(Status::Unhealthy);
    for _ in 0..5 {
        assert_eq!(registry.readiness().await.status, Status::Healthy);
    }
    assert_eq!(sw.runs(), 1);
    let r = registry.readiness().await;
    assert_eq!(r.checks[0].age, Duration::from_secs(9));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_is_answered_from_cache_at_once_and_cut_at_its_timeout() {
    let sw = Switch::new(Status::Healthy);
    let registry = HealthRegistry::builder()
        .check(
            Check::new("upstream", sw.check())
                .interval(Duration::from_secs(5))
                .timeout(Duration::from_secs(2)),
        )
        .build()
        .unwrap();
    assert_eq!(registry.readiness().await.status, Status::Healthy);

    sw.hang();
    tokio::time::advance(Duration::from_secs(5)).await;
    // Stale: answered from the last result, at once; the run goes on in
    // the background.
    let asked = Instant::now();
    let r = registry.readiness().await;
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert_eq!(r.status, Status::Healthy);
    tokio::task::yield_now().await;
    assert_eq!(sw.runs(), 2);

    // Still within the timeout: the last result, no second run.
    tokio::time::advance(Duration::from_millis(1999)).await;
    let asked = Instant::now();
    assert_eq!(registry.readiness().await.status, Status::Healthy);
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert_eq!(sw.runs(), 2);

    // The timeout cut the run: unhealthy, said why.
    tokio::time::advance(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    let r = registry.readiness().await;
    assert_eq!(r.status, Status::Unhealthy);
    let c = r.check("upstream").unwrap();
    assert_eq!(c.message.as_deref(), Some("timed out after 2s"));
    assert_eq!(c.duration, Duration::from_secs(2));
    assert_eq!(c.attempts, 1);
    assert_eq!(r.http_status(), 503);
}

#[tokio::test(start_paused = true)]
async fn the_first_probe_waits_for_the_first_run_bounded_by_the_timeout() {
    let registry = HealthRegistry::builder()
        .check(
            Check::new("hangs", std::future::pending::<Status>).timeout(Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    let asked = Instant::now();
    let r = registry.readiness().await;
    assert_eq!(asked.elapsed(), Duration::from_millis(300));
    assert_eq!(r.status, Status::Unhealthy);
}

#[tokio::test(start_paused = true)]
async fn a_flaky_check_is_retried_until_it_passes() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let registry = HealthRegistry::builder()
        .check(
            Check::new("flaky", move || {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if n < 3 {
                        CheckResult::unhealthy(format!("attempt {n} failed"))
                    } else {
                        CheckResult::healthy()
                    }
                }
            })
            .retries(3)
            .retry_delay(Duration::from_millis(100)),
        )
        .on_event(move |e: &HealthEvent| log.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let asked = Instant::now();
    let r = registry.readiness().await;
    assert_eq!(asked.elapsed(), Duration::from_millis(200));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let c = r.check("flaky").unwrap();
    assert_eq!((c.status, c.attempts), (Status::Healthy, 3));
    let retries: Vec<u32> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            HealthEvent::Retrying { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_limit_and_timeouts_count_as_failures() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let registry = HealthRegistry::builder()
        .check(
            Check::new("down", move || {
                c.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Status>()
            })
            .timeout(Duration::from_millis(50))
            .retries(2)
            .retry_delay(Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let asked = Instant::now();
    let r = registry.readiness().await;
    assert_eq!(asked.elapsed(), Duration::from_millis(3 * 50 + 2 * 10));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let c = r.check("down").unwrap();
    assert_eq!((c.status, c.attempts), (Status::Unhealthy, 3));
}

#[tokio::test(start_paused = true)]
async fn a_degraded_result_is_not_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let registry = HealthRegistry::builder()
        .check(
            Check::new("slow-replica", move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { CheckResult::degraded("lagging") }
            })
            .retries(5),
        )
        .build()
        .unwrap();
    assert_eq!(registry.readiness().await.status, Status::Degraded);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cycle_is_refused_at_registration_with_the_cycle_named() {
    let registry = HealthRegistry::new();
    registry
        .register(Check::new("api", fixed(Status::Healthy)).depends_on("db"))
        .unwrap();
    registry
        .register(Check::new("db", fixed(Status::Healthy)).depends_on("network"))
        .unwrap();
    let err = registry
        .register(Check::new("network", fixed(Status::Healthy)).depends_on("api"))
        .unwrap_err();
    assert_eq!(
        err,
        RegisterError::Cycle {
            cycle: vec![
                "network".into(),
                "api".into(),
                "db".into(),
                "network".into()
            ]
        }
    );
    assert_eq!(
        err.to_string(),
        "health checks would form a cycle: network -> api -> db -> network"
    );
    // Refused: not registered.
    assert_eq!(registry.names(), ["db", "api"]);

    let self_loop = registry
        .register(Check::new("me", fixed(Status::Healthy)).depends_on("me"))
        .unwrap_err();
    assert_eq!(
        self_loop.to_string(),
        "health checks would form a cycle: me -> me"
    );

    let err = HealthRegistry::builder()
        .check(Check::new("a", fixed(Status::Healthy)).depends_on("b"))
        .check(Check::new("b", fixed(Status::Healthy)).depends_on("a"))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "depends_on");
    assert_eq!(err.reason(), "checks would form a cycle: b -> a -> b");
}

#[tokio::test(start_paused = true)]
async fn reports_follow_dependency_order_and_dependents_run_after_their_dependencies() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let check = |name: &'static str, delay: u64| {
        let order = order.clone();
        move || {
            let order = order.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                order.lock().unwrap().push(name);
                Status::Healthy
            }
        }
    };
    let registry = HealthRegistry::builder()
        .check(
            Check::new("app", check("app", 1))
                .depends_on("db")
                .depends_on("cache"),
        )
        .check(Check::new("db", check("db", 30)).depends_on("network"))
        .check(Check::new("cache", check("cache", 5)).depends_on("network"))
        .check(Check::new("network", check("network", 10)))
        .check(Check::new("clock", check("clock", 1)))
        .build()
        .unwrap();
    assert_eq!(registry.names(), ["network", "db", "cache", "app", "clock"]);
    let asked = Instant::now();
    let r = registry.readiness().await;
    let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["network", "db", "cache", "app", "clock"]);
    // Independent checks run concurrently: network (10) then db (30) and
    // cache (5) together, then app (1): 41ms, not the 47ms of a sequence.
    assert_eq!(asked.elapsed(), Duration::from_millis(41));
    assert_eq!(
        *order.lock().unwrap(),
        ["clock", "network", "cache", "db", "app"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_check_whose_dependency_is_unhealthy_is_reported_so_without_running() {
    let network = Switch::new(Status::Unhealthy);
    let db = Switch::new(Status::Healthy);
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let registry = HealthRegistry::builder()
        .check(Check::new("network", network.check()).interval(Duration::from_secs(1)))
        .check(
            Check::new("db", db.check())
                .depends_on("network")
                .interval(Duration::from_secs(1)),
        )
        .on_event(move |e: &HealthEvent| log.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let r = registry.readiness().await;
    assert_eq!(db.runs(), 0);
    let c = r.check("db").unwrap();
    assert_eq!(c.status, Status::Unhealthy);
    assert!(c.skipped);
    assert_eq!(c.attempts, 0);
    assert_eq!(
        c.message.as_deref(),
        Some("dependency `network` is unhealthy")
    );
    assert_eq!(c.details["dependency"], "network");
    assert!(events.lock().unwrap().contains(&HealthEvent::Skipped {
        check: "db".into(),
        dependency: "network".into()
    }));

    // A degraded dependency does not block.
    network.set(Status::Degraded);
    tokio::time::advance(Duration::from_secs(1)).await;
    registry.readiness().await; // stale: refresh in the background
    tokio::task::yield_now().await;
    let r = registry.readiness().await;
    assert_eq!(db.runs(), 1);
    assert_eq!(
        statuses(&r),
        [
            ("network".into(), Status::Degraded),
            ("db".into(), Status::Healthy)
        ]
    );
    assert!(!r.check("db").unwrap().skipped);
}

#[tokio::test(start_paused = true)]
async fn a_dependency_not_registered_makes_the_dependent_unhealthy_until_it_is() {
    let registry = HealthRegistry::builder()
        .check(Check::new("db", fixed(Status::Healthy)).interval(Duration::from_secs(1)))
        .build()
        .unwrap();
    registry
        .register(
            Check::new("app", fixed(Status::Healthy))
                .depends_on("late")
                .interval(Duration::from_secs(1)),
        )
        .unwrap();
    let r = registry.readiness().await;
    let app = r.check("app").unwrap();
    assert_eq!(app.status, Status::Unhealthy);
    assert_eq!(
        app.message.as_deref(),
        Some("dependency `late` is not registered")
    );

    registry
        .register(Check::new("late", fixed(Status::Healthy)))
        .unwrap();
    assert_eq!(registry.names(), ["db", "late", "app"]);
    tokio::time::advance(Duration::from_secs(1)).await;
    registry.readiness().await;
    tokio::task::yield_now().await;
    assert_eq!(registry.readiness().await.status, Status::Healthy);

    let err = HealthRegistry::builder()
        .check(Check::new("app", fixed(Status::Healthy)).depends_on("nowhere"))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "depends_on");
    assert_eq!(
        err.reason(),
        "`app` depends on `nowhere`, which is not registered"
    );
}

#[tokio::test(start_paused = true)]
async fn critical_and_non_critical_checks_decide_readiness_differently() {
    let optional = Switch::new(Status::Unhealthy);
    let required = Switch::new(Status::Healthy);
    let registry = HealthRegistry::builder()
        .check(
            Check::new("recommendations", optional.check())
                .critical(false)
                .interval(Duration::from_secs(1)),
        )
        .check(Check::new("payments", required.check()).interval(Duration::from_secs(1)))
        .build()
        .unwrap();
    let r = registry.readiness().await;
    assert_eq!(r.status, Status::Degraded);
    assert_eq!(r.http_status(), 200);
    assert_eq!(r.summary.issues, ["check `recommendations` is unhealthy"]);

    required.set(Status::Unhealthy);
    tokio::time::advance(Duration::from_secs(1)).await;
    registry.readiness().await;
    tokio::task::yield_now().await;
    let r = registry.readiness().await;
    assert_eq!(r.status, Status::Unhealthy);
    assert_eq!(r.http_status(), 503);
}

#[tokio::test(start_paused = true)]
async fn liveness_holds_only_liveness_checks_and_ignores_dependencies_and_shutdown() {
    let registry = HealthRegistry::builder()
        .check(Check::new("event-loop", fixed(Status::Healthy)).liveness())
        .check(Check::new("db", fixed(Status::Unhealthy)))
        .build()
        .unwrap();
    let live = registry.liveness().await;
    assert_eq!(live.probe, Probe::Liveness);
    assert_eq!(statuses(&live), [("event-loop".into(), Status::Healthy)]);
    assert_eq!(live.http_status(), 200);
    let ready = registry.readiness().await;
    assert_eq!(ready.checks.len(), 2);
    assert_eq!(ready.http_status(), 503);

    registry.shutdown_handle().shut_down();
    assert_eq!(registry.liveness().await.http_status(), 200);

    let err = registry
        .register(
            Check::new("loop-2", fixed(Status::Healthy))
                .liveness()
                .depends_on("db"),
        )
        .unwrap_err();
    match err {
        RegisterError::Config(e) => assert_eq!(e.field(), "depends_on"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_flips_readiness_to_not_serving_at_once() {
    let registry = HealthRegistry::builder()
        .check(Check::new("db", fixed(Status::Healthy)))
        .build()
        .unwrap();
    let mut changed = registry.subscribe();
    assert_eq!(registry.readiness().await.http_status(), 200);
    changed.borrow_and_update();
    let handle = registry.shutdown_handle();
    let drain = tokio::spawn({
        let handle = handle.clone();
        async move { handle.shut_down_and_wait(Duration::from_secs(5)).await }
    });
    tokio::task::yield_now().await;
    assert!(changed.has_changed().unwrap());
    let r = registry.readiness().await;
    assert!(r.shutting_down);
    assert_eq!(r.status, Status::Unhealthy);
    assert_eq!(r.http_status(), 503);
    assert_eq!(
        r.summary.issues[0],
        "shutting down: not accepting new traffic"
    );
    assert!(!drain.is_finished());
    tokio::time::advance(Duration::from_secs(5)).await;
    drain.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_is_unhealthy_and_runs_again_later() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let registry = HealthRegistry::builder()
        .check(
            Check::new("buggy", move || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(n > 0, "first run panics");
                    Status::Healthy
                }
            })
            .interval(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let r = registry.readiness().await;
    assert_eq!(
        r.check("buggy").unwrap().message.as_deref(),
        Some("the check panicked")
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    registry.readiness().await;
    tokio::task::yield_now().await;
    assert_eq!(registry.readiness().await.status, Status::Healthy);
}

#[tokio::test(start_paused = true)]
async fn last_change_and_status_events_follow_changes_only() {
    let sw = Switch::new(Status::Healthy);
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let registry = HealthRegistry::builder()
        .check(Check::new("db", sw.check()).interval(Duration::from_secs(1)))
        .on_event(move |e: &HealthEvent| {
            if let HealthEvent::StatusChanged { from, to, .. } = e {
                log.lock().unwrap().push((*from, *to));
            }
        })
        .build()
        .unwrap();
    let refresh = || async {
        tokio::time::advance(Duration::from_secs(1)).await;
        registry.readiness().await;
        tokio::task::yield_now().await;
        registry.readiness().await
    };
    registry.readiness().await;
    let r = refresh().await;
    assert_eq!(r.checks[0].since_change, Duration::from_secs(1));
    let first_change = r.checks[0].last_change;
    sw.set(Status::Degraded);
    let r = refresh().await;
    assert_eq!(r.checks[0].since_change, Duration::ZERO);
    assert_ne!(r.checks[0].last_change, first_change);
    let r = refresh().await;
    assert_eq!(r.checks[0].since_change, Duration::from_secs(1));
    assert_eq!(
        *events.lock().unwrap(),
        [
            (None, Status::Healthy),
            (Some(Status::Healthy), Status::Degraded)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cached_reports_run_nothing() {
    let sw = Switch::new(Status::Healthy);
    let registry = HealthRegistry::builder()
        .check(Check::new("db", sw.check()))
        .build()
        .unwrap();
    let r = registry.cached(Probe::Readiness);
    assert_eq!(r.checks[0].message.as_deref(), Some("not checked yet"));
    assert_eq!(r.status, Status::Unhealthy);
    assert_eq!(sw.runs(), 0);
    registry.readiness().await;
    assert_eq!(registry.cached(Probe::Readiness).status, Status::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_probes_share_one_run_per_check() {
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (r, g) = (runs.clone(), gate.clone());
    let registry = HealthRegistry::builder()
        .check(Check::new("db", move || {
            r.fetch_add(1, Ordering::SeqCst);
            let g = g.clone();
            async move {
                let _ = g.acquire().await;
                Status::Healthy
            }
        }))
        .build()
        .unwrap();
    let probes: Vec<_> = (0..64)
        .map(|_| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.readiness().await.status })
        })
        .collect();
    // Every probe is waiting for the same first run.
    tokio::time::timeout(Duration::from_secs(10), async {
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    gate.add_permits(1);
    for p in probes {
        assert_eq!(p.await.unwrap(), Status::Healthy);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_keeps_results_fresh_without_probes_and_ends_with_the_registry() {
    let sw = Switch::new(Status::Healthy);
    let registry = HealthRegistry::builder()
        .check(Check::new("db", sw.check()).interval(Duration::from_secs(5)))
        .check(
            Check::new("app", fixed(Status::Healthy))
                .depends_on("db")
                .interval(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    let refresher = registry.spawn_refresher();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sw.runs(), 1);
    assert_eq!(registry.cached(Probe::Readiness).status, Status::Healthy);

    sw.set(Status::Unhealthy);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sw.runs(), 2);
    // The first probe after the change already has it: the refresher ran
    // the check (and its dependent, skipped) at 5 s.
    let r = registry.readiness().await;
    assert_eq!(
        statuses(&r),
        [
            ("db".into(), Status::Unhealthy),
            ("app".into(), Status::Unhealthy)
        ]
    );
    assert!(r.check("app").unwrap().skipped);
    assert_eq!(r.checks[0].age, Duration::from_secs(1));

    drop(r);
    drop(registry);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(refresher.is_finished());
    assert_eq!(sw.runs(), 2);
}

/// A probe that returned a new status is never followed by a late
/// notification of that same change: a subscription taken after the probe
/// sees only later changes. The change used to be counted after the
/// waiting probes woke (and after the event listeners ran), so on a
/// multi-thread runtime a subscriber could see the first run's change as a
/// new one; the slow listener here holds that window open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_taken_after_a_probe_sees_no_earlier_change() {
    for round in 0..20 {
        let registry = HealthRegistry::builder()
            .check(Check::new("a", fixed(Status::Healthy)).interval(Duration::from_secs(60)))
            .on_event(|e: &HealthEvent| {
                if matches!(e, HealthEvent::StatusChanged { .. }) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .build()
            .unwrap();
        assert_eq!(registry.readiness().await.status, Status::Healthy);
        let changed = registry.subscribe();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            !changed.has_changed().unwrap(),
            "round {round}: a change already returned was notified again"
        );
    }
}
