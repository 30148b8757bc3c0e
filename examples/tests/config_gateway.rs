//! Runs the `config_gateway` example: a gateway whose per-client limit is
//! raised in its policy file while requests are in flight.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../config_gateway.rs"]
mod config_gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_raised_in_the_file_applies_to_live_traffic_and_fails_no_request() {
    let lines = config_gateway::run().await.expect("the example runs");
    assert_eq!(lines.len(), 5, "{lines:#?}");
    // Before the change, what the two slow requests left of the burst of
    // 5 passes: 3, or one more for each half second the requests took
    // (2 a second), on a slow machine.
    assert!(
        [
            "3 answered, 7 limited",
            "4 answered, 6 limited",
            "5 answered, 5 limited"
        ]
        .iter()
        .any(|counts| lines[0] == format!("limit 2/1s: {counts} (429)")),
        "{lines:#?}"
    );
    assert_eq!(
        lines[1..],
        [
            "reloaded: changed servers.gateway.per_client",
            "limit 100/1s: 10 answered, 0 limited (429)",
            "in flight during the reload: 200 OK, 200 OK",
            "22 requests, 0 failed (an error, or neither 200 nor 429)",
        ]
    );
}

#[test]
fn both_versions_of_the_policy_file_parse_and_differ_only_in_the_limit() {
    use buttress::policy::PolicySpec;
    let before = PolicySpec::from_toml(config_gateway::BEFORE).unwrap();
    let after = PolicySpec::from_toml(config_gateway::AFTER).unwrap();
    let server = |spec: &PolicySpec| spec.servers().next().unwrap().1.clone();
    let (b, a) = (server(&before), server(&after));
    assert_ne!(b.per_client, a.per_client);
    assert_eq!((b.bulkhead, b.timeout), (a.bulkhead, a.timeout));
    assert!(before.policies().eq(after.policies()));
}
