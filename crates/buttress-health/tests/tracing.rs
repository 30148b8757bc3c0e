//! What the registry logs, and at which level: quiet by default (a status
//! change at `info`, the rest at `debug`).

use std::time::Duration;

use buttress_health::{Check, CheckResult, HealthRegistry, Status};
use buttress_test_support::capture::Capture;
use tracing::Level;

#[tokio::test(start_paused = true)]
async fn status_changes_log_at_info_timeouts_retries_and_skips_at_debug() {
    let (capture, _guard) = Capture::install();
    let registry = HealthRegistry::builder()
        .check(
            Check::new("upstream", std::future::pending::<Status>)
                .timeout(Duration::from_millis(100))
                .retries(1),
        )
        .check(Check::new("db", || async { CheckResult::healthy() }).depends_on("upstream"))
        .build()
        .unwrap();
    registry.readiness().await;

    let changes = capture.find("health check status changed");
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|e| e.level == Level::INFO));
    assert_eq!(changes[0].field("buttress.name"), Some("upstream"));
    assert_eq!(changes[0].field("from"), Some("none"));
    assert_eq!(changes[0].field("to"), Some("unhealthy"));

    let timeouts = capture.find("health check timed out");
    assert_eq!(timeouts.len(), 2);
    assert!(timeouts.iter().all(|e| e.level == Level::DEBUG));
    assert_eq!(timeouts[1].field("attempt"), Some("2"));

    let retries = capture.find("health check unhealthy, retrying");
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].level, Level::DEBUG);

    let skipped = capture.find("health check skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].level, Level::DEBUG);
    assert_eq!(skipped[0].field("buttress.name"), Some("db"));
    assert_eq!(skipped[0].field("dependency"), Some("upstream"));

    // Nothing louder than info, and a second probe with fresh results logs
    // nothing.
    assert!(capture.events().iter().all(|e| e.level >= Level::INFO));
    let before = capture.events().len();
    registry.readiness().await;
    assert_eq!(capture.events().len(), before);
}
