//! Runs the `hyper_client` example's code and checks what it prints.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../hyper_client.rs"]
mod hyper_client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_example_rejects_the_calls_beyond_four_in_flight() {
    let lines = hyper_client::run().await.expect("the example runs");
    assert_eq!(lines.len(), 9, "{lines:#?}");
    assert_eq!(lines[0], "call 0: 200 OK");
    assert_eq!(lines[1], "call 1: 200 OK");
    // The text after it is the timeout error's `Display`.
    assert!(lines[2].starts_with("call 2: timed out ("), "{lines:#?}");
    assert!(lines[3].starts_with("call 3: timed out ("), "{lines:#?}");
    for (n, line) in lines.iter().enumerate().take(8).skip(4) {
        assert_eq!(
            *line,
            format!("call {n}: rejected, 4 calls in flight already")
        );
    }
    assert_eq!(lines[8], "2 answered, 2 timed out, 4 rejected");
}
