//! Runs the `resilient_macro` example against its line-protocol database
//! and checks each step.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../resilient_macro.rs"]
mod resilient_macro;

// One test in this binary: the example installs the process-wide policy
// set, which can be done once per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attribute_and_execute_retry_and_time_out_under_the_database_policy() {
    let lines = resilient_macro::run().await.expect("the example runs");
    assert_eq!(
        lines,
        [
            "#[resilient] stock(bolts) = 120, after 3 connections",
            "execute(slow-item): Some(RetryExhausted), last attempt Some(Timeout), after 3 connections",
            "execute(nuts) = 80",
            "registry: database.attempt_timeout, database.bulkhead, database.circuit_breaker, database.retry, database.timeout",
        ]
    );
}
