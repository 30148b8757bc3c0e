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

    // Every 503 is a bulkhead rejection, each counted once by reason.
    assert_eq!(
        summary.shed_queue_full + summary.shed_wait_timed_out,
        c.shed,
        "{summary:?}"
    );
    // Both layers are registered under their names.
    assert_eq!(summary.registry["gateway"]["kind"], "bulkhead");
    assert_eq!(summary.registry["upstream"]["kind"], "timeout");
    assert_eq!(summary.phases.len(), 3, "{:?}", summary.phases);

    let report = summary.to_string();
    assert!(report.contains("what each pattern did"), "{report}");
}
