//! Tests that pin behaviour which `cargo mutants -p buttress-core` found
//! unchecked: each one fails under at least one mutant that the other
//! tests of the crate let through (accessors returning a constant, a
//! `Display` writing nothing, a match arm deleted, a comparison flipped).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use buttress_core::error::{
    chain, find, kind_of, retry_after, root_kind_of, BoxError, BulkheadFull, BulkheadFullReason,
    CircuitOpen, ConfigError, Elapsed, ErrorKind, KeyMissing, Quota, RateLimited, RetryExhausted,
};

#[test]
fn config_error_accessors_and_display_carry_every_part() {
    let e = ConfigError::new("bulkhead", "max_concurrent", "must be at least 1");
    assert_eq!(e.component(), "bulkhead");
    assert_eq!(e.field(), "max_concurrent");
    assert_eq!(e.reason(), "must be at least 1");
    assert_eq!(
        e.to_string(),
        "invalid bulkhead config: max_concurrent must be at least 1"
    );
}

#[test]
fn rejection_accessors_return_what_was_given() {
    let elapsed = Elapsed::new("upstream".into(), Duration::from_millis(250));
    assert_eq!(elapsed.name(), "upstream");
    assert_eq!(elapsed.timeout(), Duration::from_millis(250));

    let full = BulkheadFull::new("db".into(), BulkheadFullReason::QueueFull);
    assert_eq!(full.name(), "db");
    assert_eq!(full.reason(), BulkheadFullReason::QueueFull);
    assert_eq!(full.retry_after(), None);
    let full = full.with_retry_after(Duration::from_secs(4));
    assert_eq!(full.retry_after(), Some(Duration::from_secs(4)));
    assert_eq!(
        BulkheadFull::new("db".into(), BulkheadFullReason::WaitTimedOut).reason(),
        BulkheadFullReason::WaitTimedOut
    );

    let open = CircuitOpen::new("payments".into(), Some(Duration::from_secs(7)));
    assert_eq!(open.name(), "payments");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(7)));

    let limited = RateLimited::new("api".into(), None);
    assert_eq!(limited.name(), "api");
    assert_eq!(limited.retry_after(), None);

    let quota = Quota::new(
        "per-client".into(),
        100,
        Duration::from_secs(60),
        42,
        Duration::from_secs(9),
    );
    assert_eq!(quota.policy(), "per-client");
    assert_eq!(quota.limit(), 100);
    assert_eq!(quota.window(), Duration::from_secs(60));
    assert_eq!(quota.remaining(), 42);
    assert_eq!(quota.reset(), Duration::from_secs(9));

    let missing = KeyMissing::new("per-user".into(), "HeaderKey");
    assert_eq!(missing.name(), "per-user");
    assert_eq!(missing.extractor(), "HeaderKey");
    let text = missing.to_string();
    assert!(
        text.starts_with("no key for request in `per-user`: `HeaderKey` found none"),
        "{text}"
    );

    let exhausted = RetryExhausted::new("fetch".into(), 5, "connection reset".into());
    assert_eq!(exhausted.name(), "fetch");
    assert_eq!(exhausted.attempts(), 5);
    assert_eq!(exhausted.last_error().to_string(), "connection reset");
    assert_eq!(
        exhausted.source().map(|s| s.to_string()).as_deref(),
        Some("connection reset")
    );
    assert_eq!(exhausted.into_last_error().to_string(), "connection reset");
}

#[test]
fn every_rejection_has_its_own_kind() {
    let cases: Vec<(BoxError, ErrorKind)> = vec![
        (
            Elapsed::new("t".into(), Duration::from_secs(1)).into(),
            ErrorKind::Timeout,
        ),
        (
            BulkheadFull::new("b".into(), BulkheadFullReason::QueueFull).into(),
            ErrorKind::BulkheadFull,
        ),
        (
            CircuitOpen::new("c".into(), None).into(),
            ErrorKind::CircuitOpen,
        ),
        (
            RateLimited::new("r".into(), None).into(),
            ErrorKind::RateLimited,
        ),
        (
            RetryExhausted::new("x".into(), 2, "io".into()).into(),
            ErrorKind::RetryExhausted,
        ),
        (
            KeyMissing::new("k".into(), "HeaderKey").into(),
            ErrorKind::KeyMissing,
        ),
    ];
    for (err, kind) in &cases {
        assert_eq!(kind_of(&**err), Some(*kind), "{err}");
    }
    let plain: BoxError = "plain".into();
    assert_eq!(kind_of(&*plain), None);
    assert_eq!(root_kind_of(&*plain), None);
}

#[test]
fn root_kind_finds_the_rejection_under_a_retry_wrapper() {
    let open: BoxError = CircuitOpen::new("c".into(), None).into();
    let wrapped: BoxError = RetryExhausted::new("r".into(), 3, open).into();
    assert_eq!(root_kind_of(&*wrapped), Some(ErrorKind::CircuitOpen));
    let full: BoxError = BulkheadFull::new("b".into(), BulkheadFullReason::QueueFull).into();
    assert_eq!(root_kind_of(&*full), Some(ErrorKind::BulkheadFull));
}

#[test]
fn retry_after_reads_every_kind_that_carries_one() {
    let open: BoxError = CircuitOpen::new("c".into(), Some(Duration::from_secs(3))).into();
    assert_eq!(retry_after(&*open), Some(Duration::from_secs(3)));
    let limited: BoxError = RateLimited::new("r".into(), Some(Duration::from_secs(5))).into();
    assert_eq!(retry_after(&*limited), Some(Duration::from_secs(5)));
    let full: BoxError = BulkheadFull::new("b".into(), BulkheadFullReason::QueueFull)
        .with_retry_after(Duration::from_secs(2))
        .into();
    assert_eq!(retry_after(&*full), Some(Duration::from_secs(2)));
    let wrapped: BoxError = RetryExhausted::new("x".into(), 2, full).into();
    assert_eq!(retry_after(&*wrapped), Some(Duration::from_secs(2)));
    let elapsed: BoxError = Elapsed::new("t".into(), Duration::from_secs(1)).into();
    assert_eq!(retry_after(&*elapsed), None);
}

#[test]
fn find_returns_the_typed_rejection_and_chain_lists_outermost_first() {
    let limited: BoxError = RateLimited::new("api".into(), None).into();
    let wrapped: BoxError = RetryExhausted::new("x".into(), 2, limited).into();
    assert_eq!(
        find::<RateLimited>(&*wrapped).map(|r| r.name()),
        Some("api")
    );
    assert!(find::<CircuitOpen>(&*wrapped).is_none());
    let texts: Vec<String> = chain(&*wrapped).map(|e| e.to_string()).collect();
    assert_eq!(
        texts,
        [
            "retry `x` gave up after 2 attempts",
            "rate limit `api` exceeded"
        ]
    );
}

/// An error whose `source()` is itself: `chain` must stop.
#[derive(Debug)]
struct Cycle;

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cycle")
    }
}

impl StdError for Cycle {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self)
    }
}

#[test]
fn chain_is_bounded_on_a_cyclic_source() {
    assert_eq!(chain(&Cycle).count(), 64);
    assert_eq!(kind_of(&Cycle), None);
}

mod keys {
    use buttress_core::key::{Extension, FnKey, GrpcMethod, Header, KeyExtractor, UriAuthority};
    use http::Request;

    #[test]
    fn fn_key_returns_what_its_closure_returns() {
        let by_path = FnKey::new(|req: &Request<()>| Some(req.uri().path().len()));
        let req = Request::builder().uri("/abcd").body(()).unwrap();
        assert_eq!(by_path.extract(&req), Some(5));
        assert_eq!(format!("{by_path:?}"), "FnKey { .. }");
    }

    #[test]
    fn header_key_is_the_value_bytes() {
        let key = Header::new(http::HeaderName::from_static("x-tenant"));
        let req = Request::builder()
            .header("x-tenant", "acme")
            .body(())
            .unwrap();
        assert_eq!(key.extract(&req), Some(b"acme".to_vec()));
        assert_eq!(key.extract(&Request::new(())), None);
    }

    #[test]
    fn extension_key_clones_the_typed_extension() {
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        struct Tenant(u32);
        let key = Extension::<Tenant>::new();
        let mut req = Request::new(());
        assert_eq!(key.extract(&req), None);
        req.extensions_mut().insert(Tenant(7));
        assert_eq!(key.extract(&req), Some(Tenant(7)));
        assert!(format!("{key:?}").contains("Tenant"), "{key:?}");
    }

    #[test]
    fn authority_key_falls_back_to_the_host_header_lowercased() {
        let req = Request::builder()
            .uri("/x")
            .header("host", "API.Example.COM")
            .body(())
            .unwrap();
        assert_eq!(
            UriAuthority.extract(&req).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(UriAuthority.extract(&Request::new(())), None);
    }

    #[test]
    fn grpc_method_key_is_the_path() {
        let req = Request::builder()
            .uri("http://h/pkg.Svc/Call")
            .body(())
            .unwrap();
        assert_eq!(GrpcMethod.extract(&req).as_deref(), Some("/pkg.Svc/Call"));
    }
}

mod outcomes {
    use buttress_core::Outcome;

    #[test]
    fn outcome_predicates_and_display() {
        assert!(Outcome::Failure.is_failure());
        assert!(!Outcome::Success.is_failure());
        assert!(!Outcome::Ignored.is_failure());
        assert!(Outcome::Success.is_success());
        assert!(!Outcome::Failure.is_success());
        assert!(!Outcome::Ignored.is_success());
        assert_eq!(Outcome::Success.to_string(), "success");
        assert_eq!(Outcome::Failure.to_string(), "failure");
        assert_eq!(Outcome::Ignored.to_string(), "ignored");
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_classifier_fails_the_server_side_codes_only() {
        use buttress_core::{Classifier, TonicStatusClassifier};
        use tonic::Code;

        let c = TonicStatusClassifier::new();
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
        ] {
            assert_eq!(c.classify_code(code), Outcome::Failure, "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::Cancelled,
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert_eq!(c.classify_code(code), Outcome::Success, "{code:?}");
        }
        let res: Result<(), tonic::Status> = Err(tonic::Status::internal("boom"));
        assert_eq!(c.classify(&res), Outcome::Failure);
        assert_eq!(c.classify(&Ok::<(), tonic::Status>(())), Outcome::Success);
    }
}

mod registry {
    use std::any::Any;

    use buttress_core::registry::{Component, Registry};

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Clone)]
    struct Pool(&'static str);

    /// A component that counts its resets.
    #[derive(Clone, Default)]
    struct Counter(Arc<AtomicUsize>);

    impl Component for Counter {
        fn name(&self) -> &str {
            "counter"
        }
        fn kind(&self) -> &'static str {
            "counter"
        }
        fn snapshot(&self) -> serde_json::Value {
            serde_json::json!({ "resets": self.0.load(Ordering::Relaxed) })
        }
        fn reset(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    impl Component for Pool {
        fn name(&self) -> &str {
            self.0
        }
        fn kind(&self) -> &'static str {
            "pool"
        }
        fn snapshot(&self) -> serde_json::Value {
            serde_json::json!({ "idle": 3 })
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    #[test]
    fn duplicate_name_names_the_taken_name() {
        let registry = Registry::new();
        registry.register(Pool("db")).unwrap();
        let err = registry.register(Pool("db")).unwrap_err();
        assert_eq!(err.name(), "db");
        assert_eq!(
            err.to_string(),
            "a component named `db` is registered already"
        );
    }

    #[test]
    fn debug_lists_the_registered_names() {
        let registry = Registry::new();
        registry.register(Pool("b")).unwrap();
        registry.register(Pool("a")).unwrap();
        assert_eq!(format!("{registry:?}"), r#"{"a", "b"}"#);
    }

    #[test]
    fn metrics_switch_is_off_by_default_and_shared_by_clones() {
        let registry = Registry::new();
        assert!(!registry.metrics_enabled());
        let earlier = registry.clone();
        let registry = registry.with_metrics();
        assert!(registry.metrics_enabled());
        assert!(earlier.metrics_enabled());
        // `with_metrics` keeps the map: what was registered stays.
        let registry = Registry::new();
        registry.register(Pool("db")).unwrap();
        assert_eq!(registry.with_metrics().names(), ["db"]);
    }

    #[test]
    fn register_lookup_snapshot_reset_and_remove() {
        let registry = Registry::new();
        registry.register(Pool("db")).unwrap();
        let counter = Counter::default();
        registry.register_arc(Arc::new(counter.clone())).unwrap();
        assert!(registry.register_arc(Arc::new(Pool("db"))).is_err());
        assert_eq!(registry.names(), ["counter", "db"]);

        assert_eq!(registry.component("db").map(|c| c.kind()), Some("pool"));
        assert!(registry.component("nope").is_none());
        assert_eq!(registry.get::<Pool>("db").map(|p| p.0), Some("db"));
        assert!(registry.get::<Counter>("db").is_none());

        registry.reset_all();
        registry.reset_all();
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
        assert_eq!(
            registry.snapshot(),
            serde_json::json!({
                "counter": { "kind": "counter", "state": { "resets": 2 } },
                "db": { "kind": "pool", "state": { "idle": 3 } },
            })
        );

        assert_eq!(
            registry
                .remove("db")
                .map(|c| c.name().to_owned())
                .as_deref(),
            Some("db")
        );
        assert!(registry.remove("db").is_none());
        assert_eq!(registry.names(), ["counter"]);
        // The name is free again.
        registry.register(Pool("db")).unwrap();
    }
}

mod response {
    use std::time::Duration;

    use buttress_core::error::{BoxError, CircuitOpen, RateLimited};
    use buttress_core::response::{ErrorBody, ErrorToResponseLayer, Problem};
    use http::{HeaderMap, StatusCode};
    use tower::{service_fn, Layer};

    /// A body format that writes every field of the problem it is given.
    #[derive(Debug, Clone, Copy)]
    struct Fields;

    impl ErrorBody<String> for Fields {
        fn body(&self, problem: &Problem<'_>, _headers: &mut HeaderMap) -> String {
            format!(
                "{} {:?} {:?} {:?}",
                problem.status().as_u16(),
                problem.kind(),
                problem.detail(),
                problem.retry_after()
            )
        }
    }

    #[test]
    fn a_custom_body_sees_status_kind_detail_and_retry_hint() {
        let layer = ErrorToResponseLayer::new().body(Fields).detailed(true);
        let open: BoxError = CircuitOpen::new("db".into(), Some(Duration::from_secs(3))).into();
        let res = layer.response::<String>(&*open);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.body(),
            r#"503 Some(CircuitOpen) Some("circuit `db` is open") Some(3s)"#
        );
        let limited: BoxError = RateLimited::new("api".into(), None).into();
        assert_eq!(
            layer.response::<String>(&*limited).body(),
            r#"429 Some(RateLimited) Some("rate limit `api` exceeded") None"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_response_future_has_a_debug_form() {
        let mut svc = ErrorToResponseLayer::new().layer(service_fn(|_: ()| async {
            Ok::<_, BoxError>(http::Response::new(String::new()))
        }));
        let fut = tower::Service::call(&mut svc, ());
        assert_eq!(format!("{fut:?}"), "ErrorToResponseFuture { .. }");
        assert_eq!(fut.await.unwrap().status(), StatusCode::OK);
    }
}

mod bounded_map {
    use std::time::Duration;

    use buttress_core::key::BoundedMap;
    use tokio::time::Instant;

    #[test]
    fn size_accessors_and_debug() {
        let map: BoundedMap<u32, u32> = BoundedMap::with_shards(10, Duration::from_secs(5), 2);
        assert_eq!(map.max_keys(), 10);
        assert_eq!(map.shards(), 2);
        assert!(map.is_empty());
        assert_eq!(
            map.get_or_insert(1, Instant::now(), |k| k * 10, |_| true),
            Some(10)
        );
        assert!(!map.is_empty());
        assert_eq!(map.len(), 1);
        assert_eq!(
            format!("{map:?}"),
            "BoundedMap { max_keys: 10, idle_timeout: 5s, len: 1, shards: 2, .. }"
        );
    }

    #[test]
    fn a_refused_insert_asks_about_a_bounded_number_of_entries() {
        // A full map none of whose entries may go: the sweeps that look for
        // one stop after 64 entries at home and 64 elsewhere.
        let n = 10_000;
        let map: BoundedMap<u32, u32> = BoundedMap::new(n, Duration::from_secs(1));
        let t0 = Instant::now();
        for k in 0..n as u32 {
            map.get_or_insert(k, t0, |k| *k, |_| true);
        }
        let later = t0 + Duration::from_secs(2);
        for k in n as u32..n as u32 + 20 {
            let asked = std::cell::Cell::new(0usize);
            let got = map.get_or_insert(
                k,
                later,
                |k| *k,
                |_| {
                    asked.set(asked.get() + 1);
                    false
                },
            );
            assert_eq!(got, None);
            assert!(
                (1..=128).contains(&asked.get()),
                "asked about {} entries",
                asked.get()
            );
        }
        assert_eq!(map.len(), n);
    }
}
