//! Runs the whole demo briefly on 127.0.0.1 and checks that its numbers
//! are consistent.

use std::time::Duration;

use buttress_demo::{run, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_run_sends_requests_and_its_counts_add_up() {
    let config = DemoConfig {
        duration: Duration::from_secs(3),
        concurrency: 8,
        print_table: false,
    };
    let summary = tokio::time::timeout(Duration::from_secs(30), run(config))
        .await
        .expect("the demo stops by itself")
        .expect("the demo runs");

    let c = summary.counts;
    assert!(c.total > 0, "no request was made");
    assert_eq!(
        c.ok + c.upstream_errors + c.shed + c.timeouts + c.other,
        c.total,
        "{c:?}"
    );
    assert!(c.ok > 0, "no request succeeded: {c:?}");
    assert!(summary.elapsed >= Duration::from_secs(3));

    // Every 503 is a bulkhead rejection or an open-circuit rejection, each
    // counted once from the layers' events.
    assert_eq!(
        summary.shed_queue_full + summary.shed_wait_timed_out + summary.circuit_rejected,
        c.shed,
        "{summary:?}"
    );
    let phases = &summary.phases;
    assert_eq!(
        phases.iter().map(|p| p.circuit_rejected).sum::<u64>(),
        summary.circuit_rejected
    );
    assert_eq!(
        phases.iter().map(|p| p.circuit_opened).sum::<u64>(),
        summary.circuit_opened
    );
    assert!(
        summary.circuit_reopened <= summary.circuit_opened,
        "{summary:?}"
    );
    // The three layers are registered under their names.
    assert_eq!(summary.registry["gateway"]["kind"], "bulkhead");
    assert_eq!(summary.registry["upstream"]["kind"], "circuit_breaker");
    assert_eq!(
        summary.registry["upstream"]["state"]["not_permitted_calls"],
        summary.circuit_rejected
    );
    assert_eq!(summary.registry["upstream-timeout"]["kind"], "timeout");
    assert_eq!(phases.len(), 3, "{phases:?}");

    let report = summary.to_string();
    assert!(report.contains("what each pattern did"), "{report}");
    assert!(report.contains("  circuit    "), "{report}");
}
