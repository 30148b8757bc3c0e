//! `#[resilient]`: an async fn's body under a policy of the process-wide
//! set, retried with its arguments cloned, its rejections through the
//! function's error type.
#![cfg(feature = "macros")]
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress::core::error::{chain, kind_of, ErrorKind};
use buttress::policy::{Policy, PolicySet, PolicySpec};
use buttress::retry::{Backoff, Jitter, RetryConfig};
use buttress::{resilient, BoxError};

static CALLS: AtomicU32 = AtomicU32::new(0);

fn install() {
    // One process-wide set for this test binary: a quick retry and a
    // tight per-attempt timeout.
    let quick = Policy::new()
        .retry(RetryConfig {
            max_attempts: 3,
            backoff: Backoff::fixed(Duration::from_millis(1)),
            jitter: Jitter::None,
            ..RetryConfig::default()
        })
        .attempt_timeout(Duration::from_millis(200));
    let spec = PolicySpec::default().policy("quick", quick);
    let set = PolicySet::new(spec, &buttress::Registry::new()).unwrap();
    let _ = set.install_global();
}

#[derive(Debug)]
enum AppError {
    NotFound,
    Policy(BoxError),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::NotFound => f.write_str("not found"),
            AppError::Policy(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<BoxError> for AppError {
    fn from(e: BoxError) -> Self {
        // The body's own error comes back boxed, as it is or as the last
        // error of exhausted retries: find it in the chain.
        let not_found = chain(&*e).any(|e| matches!(e.downcast_ref(), Some(AppError::NotFound)));
        if not_found {
            AppError::NotFound
        } else {
            AppError::Policy(e)
        }
    }
}

/// Fails its first two attempts, then answers with what it was given.
#[resilient(policy = "quick")]
async fn flaky(id: u64, name: String) -> Result<String, BoxError> {
    if CALLS.fetch_add(1, Ordering::SeqCst) % 3 < 2 {
        return Err("transient".into());
    }
    Ok(format!("{id}:{name}"))
}

#[resilient(policy = "quick")]
async fn hangs() -> Result<(), BoxError> {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

static LOOKUPS: AtomicU32 = AtomicU32::new(0);

#[resilient(policy = "quick")]
async fn missing(found: bool) -> Result<u8, AppError> {
    LOOKUPS.fetch_add(1, Ordering::SeqCst);
    if found {
        Ok(1)
    } else {
        Err(AppError::NotFound)
    }
}

#[derive(Clone)]
struct Repo {
    hits: Arc<AtomicU32>,
}

impl Repo {
    #[resilient(policy = "quick")]
    async fn by_ref(&self, n: u32) -> Result<u32, BoxError> {
        let seen = self.hits.fetch_add(1, Ordering::SeqCst);
        if seen == 0 {
            Err("first attempt fails".into())
        } else {
            Ok(n + seen)
        }
    }

    #[resilient(policy = "quick")]
    async fn by_value(self, n: u32) -> Result<u32, BoxError> {
        Ok(n + self.hits.load(Ordering::SeqCst))
    }
}

#[tokio::test(start_paused = true)]
async fn the_body_is_retried_with_its_arguments() {
    install();
    CALLS.store(0, Ordering::SeqCst);
    assert_eq!(flaky(7, "x".to_owned()).await.unwrap(), "7:x");
    assert_eq!(CALLS.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn rejections_arrive_through_the_error_type() {
    install();
    let err = hangs().await.unwrap_err();
    assert_eq!(kind_of(&*err), Some(ErrorKind::RetryExhausted), "{err}");
    // The generic policy retries every error: three lookups, then the
    // body's own error comes back through `From<BoxError>`.
    match missing(false).await {
        Err(AppError::NotFound) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(LOOKUPS.load(Ordering::SeqCst), 3);
    assert_eq!(missing(true).await.unwrap(), 1);
    // A rejection of the policy is not the body's error.
    match AppError::from(BoxError::from("open")) {
        AppError::Policy(e) => assert_eq!(e.to_string(), "open"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn methods_by_reference_and_by_value() {
    install();
    let repo = Repo {
        hits: Arc::default(),
    };
    assert_eq!(repo.by_ref(10).await.unwrap(), 11);
    assert_eq!(repo.clone().by_value(1).await.unwrap(), 3);
}

#[test]
fn misuse_fails_to_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
