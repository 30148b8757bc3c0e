//! Policies from files: parsing with field paths, presets and empty slots,
//! building into a registry, and reloading live instances all or nothing.
#![cfg(feature = "config")]
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress::bulkhead::BulkheadHandle;
use buttress::circuit_breaker::CircuitBreakerHandle;
use buttress::policy::{FlavorKind, Generic, Http, Policy, PolicyErrorKind, PolicySet, PolicySpec};
use buttress::timeout::TimeoutHandle;
use buttress::Registry;
use tower::{ServiceBuilder, ServiceExt};

const FILE: &str = r#"
[policies.catalog]
preset = "api"
flavor = "http"
timeout = "10s"
rate_limit = false

[policies.catalog.circuit_breaker]
failure_rate_threshold = 25.0
window_size = 50
minimum_calls = 20
wait_in_open = "30s"

[policies.db]
preset = "database"
bulkhead = { max_concurrent = 4, max_queue = 0 }

[policies.bare]

[servers.public]
per_client = { rate = "50/1s", burst = 100 }
bulkhead = { max_concurrent = 128, max_queue = 256, max_wait = "50ms" }
"#;

#[test]
fn a_toml_file_resolves_presets_and_slots() {
    let spec = PolicySpec::from_toml(FILE).unwrap();
    let policies: Vec<_> = spec.policies().collect();
    assert_eq!(policies.len(), 3);
    let (_, kind, catalog) = policies.iter().find(|(n, ..)| *n == "catalog").unwrap();
    assert_eq!(*kind, FlavorKind::Http);
    // The preset, with the file's changes.
    let expected = Policy::api()
        .timeout(Duration::from_secs(10))
        .rate_limit(None)
        .circuit_breaker(buttress::circuit_breaker::CircuitBreakerConfig {
            failure_rate_threshold: 25.0,
            window_size: 50,
            minimum_calls: 20,
            wait_in_open: Duration::from_secs(30),
            ..Default::default()
        });
    assert_eq!(**catalog, expected);
    let (_, kind, bare) = policies.iter().find(|(n, ..)| *n == "bare").unwrap();
    assert_eq!(*kind, FlavorKind::Generic);
    assert_eq!(**bare, Policy::new());
    let (_, server) = spec.servers().next().unwrap();
    let per_client = server.per_client.as_ref().unwrap();
    assert_eq!(per_client.burst, Some(100));
}

#[test]
fn yaml_and_json_read_the_same_shape() {
    let yaml = r#"
policies:
  db:
    preset: database
    bulkhead: { max_concurrent: 4, max_queue: 0 }
    attempt_timeout: false
"#;
    let json = r#"{ "policies": { "db": {
        "preset": "database",
        "bulkhead": { "max_concurrent": 4, "max_queue": 0 },
        "attempt_timeout": false
    } } }"#;
    let a = PolicySpec::from_yaml(yaml).unwrap();
    let b = PolicySpec::from_json(json).unwrap();
    assert_eq!(a, b);
    let (_, _, db) = a.policies().next().unwrap();
    assert!(db.attempt_timeout.is_none());
    assert_eq!(db.bulkhead.as_ref().unwrap().max_concurrent, 4);
}

#[test]
fn parse_errors_name_the_field_path() {
    let cases = [
        (
            "[policies.api.retry]\nmax_atempts = 3\n",
            "policies.api.retry.max_atempts",
            "unknown field `max_atempts`",
        ),
        (
            "[policies.api]\ntimeout = 5\n",
            "policies.api.timeout",
            "expected a duration",
        ),
        (
            "[policies.api]\npreset = \"fast\"\n",
            "policies.api.preset",
            "unknown variant `fast`",
        ),
        (
            "[policies.api]\nbulkhead = true\n",
            "policies.api.bulkhead",
            "`true` is not a setting",
        ),
        (
            "[policies.api.bulkhead]\nmax_concurrent = \"many\"\n",
            "policies.api.bulkhead.max_concurrent",
            "invalid type",
        ),
        ("[polices.api]\n", "polices", "unknown field `polices`"),
    ];
    for (text, path, reason) in cases {
        let err = PolicySpec::from_toml(text).unwrap_err();
        assert_eq!(err.kind(), PolicyErrorKind::Parse, "{text}: {err}");
        assert_eq!(err.path(), path, "{text}: {err}");
        assert!(err.reason().contains(reason), "{text}: {err}");
    }
    let err =
        PolicySpec::from_json(r#"{ "policies": { "x": { "retry": { "max_attempts": -1 } } } }"#)
            .unwrap_err();
    assert_eq!(err.path(), "policies.x.retry.max_attempts");
    let err = PolicySpec::from_yaml("policies:\n  x:\n    flavor: soap\n").unwrap_err();
    assert_eq!(err.path(), "policies.x.flavor");
    let err = PolicySpec::from_toml("[policies.x\n").unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Parse);
}

#[test]
fn invalid_values_name_the_field_path_and_register_nothing() {
    let registry = Registry::new();
    let spec = PolicySpec::from_toml(
        "[policies.a]\npreset = \"api\"\n[policies.b.retry]\nmax_attempts = 0\n",
    )
    .unwrap();
    let err = PolicySet::new(spec, &registry).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Invalid);
    assert_eq!(err.path(), "policies.b.retry.max_attempts");
    assert_eq!(
        err.to_string(),
        format!("policies.b.retry.max_attempts: {}", err.reason())
    );
    // `a` was built before `b` failed: its instances are gone again.
    assert!(registry.names().is_empty(), "{:?}", registry.names());
}

#[test]
fn a_name_taken_in_the_registry_is_a_duplicate() {
    let registry = Registry::new();
    let _taken = buttress::bulkhead::BulkheadLayer::builder()
        .name("db.bulkhead")
        .registry(&registry)
        .build()
        .unwrap();
    let spec = PolicySpec::default().policy("db", Policy::database());
    let err = PolicySet::new(spec, &registry).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Duplicate);
    assert_eq!(err.path(), "policies.db.bulkhead.name");
    assert_eq!(registry.names(), ["db.bulkhead"]);
}

#[tokio::test]
async fn layers_by_name_and_flavor() {
    let registry = Registry::new();
    let set = PolicySet::new(PolicySpec::from_toml(FILE).unwrap(), &registry).unwrap();
    assert!(set.layer::<Http>("catalog").is_ok());
    let err = set.layer::<Generic>("catalog").unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::WrongFlavor);
    assert_eq!(err.path(), "policies.catalog.flavor");
    let err = set.layer::<Generic>("nope").unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Unknown);
    assert!(set.server("public").is_ok());
    let db: BulkheadHandle = registry.get("db.bulkhead").unwrap();
    assert_eq!(db.snapshot().max_concurrent, 4);
    let svc = ServiceBuilder::new()
        .layer(set.layer::<Generic>("db").unwrap())
        .service_fn(|x: u8| async move { Ok::<_, std::io::Error>(x) });
    assert_eq!(svc.oneshot(9).await.unwrap(), 9);
    let out = set
        .execute("db", || async { Ok::<_, std::io::Error>("ok") })
        .await
        .unwrap();
    assert_eq!(out, "ok");
}

#[test]
fn reload_changes_live_instances() {
    let registry = Registry::new();
    let set = PolicySet::new(PolicySpec::from_toml(FILE).unwrap(), &registry).unwrap();
    let changed = FILE
        .replace("max_concurrent = 4", "max_concurrent = 9")
        .replace("timeout = \"10s\"", "timeout = \"12s\"")
        .replace(
            "failure_rate_threshold = 25.0",
            "failure_rate_threshold = 40.0",
        );
    let report = set
        .reload(PolicySpec::from_toml(&changed).unwrap())
        .unwrap();
    let mut changed_paths = report.changed.clone();
    changed_paths.sort();
    assert_eq!(
        changed_paths,
        [
            "policies.catalog.circuit_breaker",
            "policies.catalog.timeout",
            "policies.db.bulkhead"
        ]
    );
    assert!(report.added.is_empty() && report.removed.is_empty());
    let db: BulkheadHandle = registry.get("db.bulkhead").unwrap();
    assert_eq!(db.snapshot().max_concurrent, 9);
    let total: TimeoutHandle = registry.get("catalog.timeout").unwrap();
    assert_eq!(total.snapshot().timeout, Duration::from_secs(12));
    let breaker: CircuitBreakerHandle = registry.get("catalog.circuit_breaker").unwrap();
    assert_eq!(breaker.config().failure_rate_threshold, 40.0);
    assert_eq!(
        set.policy("db").unwrap().bulkhead.unwrap().max_concurrent,
        9
    );
    // The same file again changes nothing.
    let report = set
        .reload(PolicySpec::from_toml(&changed).unwrap())
        .unwrap();
    assert!(report.is_empty(), "{report:?}");
}

#[test]
fn reload_is_all_or_nothing() {
    let registry = Registry::new();
    let set = PolicySet::new(PolicySpec::from_toml(FILE).unwrap(), &registry).unwrap();
    let before = set.spec();
    let db: BulkheadHandle = registry.get("db.bulkhead").unwrap();

    // A valid change beside a slot removed: refused, nothing applied.
    let bad = FILE
        .replace("max_concurrent = 4", "max_concurrent = 9")
        .replace("rate_limit = false", "rate_limit = false\nretry = false");
    let err = set
        .reload(PolicySpec::from_toml(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::NotLive);
    assert_eq!(err.path(), "policies.catalog.retry");
    assert_eq!(db.snapshot().max_concurrent, 4);
    assert_eq!(set.spec(), before);

    // Another flavor.
    let bad = FILE.replace("flavor = \"http\"", "flavor = \"grpc\"");
    let err = set
        .reload(PolicySpec::from_toml(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::NotLive);
    assert_eq!(err.path(), "policies.catalog.flavor");

    // A change the breaker cannot make live (another window kind), after a
    // change that could: the first is undone.
    let bad = FILE
        .replace("max_concurrent = 4", "max_concurrent = 9")
        .replace("window_size = 50", "time_window = \"10s\"");
    let err = set
        .reload(PolicySpec::from_toml(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::NotLive, "{err}");
    assert!(
        err.path().starts_with("policies.catalog.circuit_breaker"),
        "{err}"
    );
    assert_eq!(db.snapshot().max_concurrent, 4);

    // An invalid value.
    let bad = FILE.replace("max_concurrent = 4", "max_concurrent = 0");
    let err = set
        .reload(PolicySpec::from_toml(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Invalid);
    assert_eq!(err.path(), "policies.db.bulkhead.max_concurrent");
    assert_eq!(set.spec(), before);
}

#[test]
fn reload_adds_and_removes_policies() {
    let registry = Registry::new();
    let set = PolicySet::new(PolicySpec::from_toml(FILE).unwrap(), &registry).unwrap();
    let next = FILE.replace("[policies.bare]", "[policies.extra]\npreset = \"critical\"");
    let report = set.reload(PolicySpec::from_toml(&next).unwrap()).unwrap();
    assert_eq!(report.added, ["policies.extra"]);
    assert_eq!(report.removed, ["policies.bare"]);
    assert!(set.layer::<Generic>("extra").is_ok());
    assert!(set.layer::<Generic>("bare").is_err());
    assert!(registry.names().contains(&"extra.retry".to_owned()));
}

/// Calls keep flowing while the bulkhead's limit is reloaded back and
/// forth: none fails, and the last reload's limit holds at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let registry = Registry::new();
    let spec = |n: usize| {
        PolicySpec::default().policy(
            "db",
            Policy::new()
                .bulkhead(buttress::bulkhead::BulkheadConfig {
                    max_concurrent: n,
                    max_queue: 1000,
                    max_wait: Some(Duration::from_secs(10)),
                    ..Default::default()
                })
                .timeout(Duration::from_secs(10)),
        )
    };
    let set = PolicySet::new(spec(2), &registry).unwrap();
    let layer = set.layer::<Generic>("db").unwrap();
    let done = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let svc = ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(|x: u32| async move {
                    tokio::task::yield_now().await;
                    Ok::<_, std::io::Error>(x)
                });
            let done = done.clone();
            tokio::spawn(async move {
                for i in 0..200u32 {
                    assert_eq!(svc.clone().oneshot(i).await.unwrap(), i);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for n in [1, 5, 3, 8, 2, 6] {
        set.reload(spec(n)).unwrap();
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 1600);
    let bulkhead: BulkheadHandle = registry.get("db.bulkhead").unwrap();
    let s = bulkhead.snapshot();
    assert_eq!((s.max_concurrent, s.active, s.queued), (6, 0, 0));
}

#[cfg(feature = "config-watch")]
#[test]
fn a_watched_file_reloads_when_it_changes() {
    let dir = std::env::temp_dir().join(format!("buttress-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policies.toml");
    std::fs::write(&path, "[policies.db.bulkhead]\nmax_concurrent = 3\n").unwrap();
    let registry = Registry::new();
    let set = PolicySet::from_path(&path, &registry).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = set
        .watch(&path, move |outcome| {
            let _ = tx.send(outcome.map_err(|e| e.to_string()));
        })
        .unwrap();
    std::fs::write(&path, "[policies.db.bulkhead]\nmax_concurrent = 7\n").unwrap();
    let outcome = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the watcher saw the change");
    assert_eq!(outcome.unwrap().changed, ["policies.db.bulkhead"]);
    let db: BulkheadHandle = registry.get("db.bulkhead").unwrap();
    assert_eq!(db.snapshot().max_concurrent, 7);
    // A broken file is reported and changes nothing.
    std::fs::write(&path, "[policies.db.bulkhead]\nmax_concurrent = 0\n").unwrap();
    let outcome = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(outcome.unwrap_err().contains("max_concurrent"));
    assert_eq!(db.snapshot().max_concurrent, 7);
    drop(watcher);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_policy_reloads_its_rate_its_bulkhead_and_its_timeout() {
    let registry = Registry::new();
    let set = PolicySet::new(PolicySpec::from_toml(FILE).unwrap(), &registry).unwrap();
    let next = FILE
        .replace(
            "rate = \"50/1s\", burst = 100",
            "rate = \"80/1s\", burst = 160",
        )
        .replace("max_concurrent = 128", "max_concurrent = 64");
    let report = set.reload(PolicySpec::from_toml(&next).unwrap()).unwrap();
    let mut changed = report.changed.clone();
    changed.sort();
    assert_eq!(
        changed,
        ["servers.public.bulkhead", "servers.public.per_client"]
    );
    let bulkhead: BulkheadHandle = registry.get("public.bulkhead").unwrap();
    assert_eq!(bulkhead.snapshot().max_concurrent, 64);
    let per_client = set.server("public").unwrap();
    let config = per_client.per_client().unwrap().handle().config();
    assert_eq!(config.rate, "80/1s".parse().unwrap());
    assert_eq!(config.burst, Some(160));

    // How clients are told apart cannot change live.
    let bad = next.replace("burst = 160", "burst = 160, trusted_proxies = 1");
    let err = set
        .reload(PolicySpec::from_toml(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::NotLive);
    assert_eq!(err.path(), "servers.public.per_client.trusted_proxies");
    // Nor can a slot be removed.
    let bad = next.replace("[servers.public]", "[servers.public]\ntimeout = false");
    let err = set
        .reload(PolicySpec::from_toml(&bad).unwrap())
        .unwrap_err();
    assert_eq!(err.path(), "servers.public.timeout");
}
