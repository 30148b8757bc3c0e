//! Runs the `alert_hook` example and checks the alerts it sends.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../alert_hook.rs"]
mod alert_hook;

#[tokio::test(start_paused = true)]
async fn one_alert_per_opening_and_closing_and_at_most_one_a_minute_while_flapping() {
    let lines = alert_hook::run().await;
    assert_eq!(
        lines,
        [
            "t=0s ALERT breaker `payments` opened",
            "t=70s ALERT breaker `payments` closed again",
            "t=140s ALERT breaker `payments` opened",
            "t=200s ALERT breaker `payments` closed again (8 more changes folded in)",
        ]
    );
}
