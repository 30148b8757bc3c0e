//! The saga's options from a file: parsing, defaults equal to the
//! builder's, errors naming the field, and the options at work.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_saga::{
    MemoryLog, OnCompensationFailure, OnCrash, RetryConfig, Saga, SagaConfig, Step, StepRequest,
};
use tower::{service_fn, ServiceExt};

fn failing_step(tries: Arc<AtomicU32>) -> Step<u32> {
    Step::new(
        "charge",
        service_fn(move |_: StepRequest<u32>| {
            let tries = tries.clone();
            async move {
                tries.fetch_add(1, Ordering::SeqCst);
                Err::<u32, _>("declined")
            }
        }),
    )
    .compensate(service_fn(|_: StepRequest<u32>| async {
        Ok::<_, String>(())
    }))
}

#[test]
fn a_file_sets_every_option_and_the_rest_keep_the_defaults() {
    let c: SagaConfig = serde_json::from_str(
        r#"{
            "retry": { "attempts": 4, "initial": "50ms", "multiplier": 2.0, "max_delay": "1s" },
            "on_compensation_failure": "stop",
            "parallel_compensation": true,
            "on_crash": "resume",
            "deadline": "5m",
            "lease": "2m"
        }"#,
    )
    .unwrap();
    assert_eq!(
        c.retry,
        RetryConfig {
            attempts: 4,
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
        }
    );
    assert_eq!(c.on_compensation_failure, OnCompensationFailure::Stop);
    assert!(c.parallel_compensation);
    assert_eq!(c.on_crash, OnCrash::Resume);
    assert_eq!(c.deadline, Some(Duration::from_secs(300)));
    assert_eq!(c.lease, Duration::from_secs(120));
    assert_eq!(
        c.compensation_retry,
        SagaConfig::default().compensation_retry
    );
    // Round trip.
    let back: SagaConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let empty: SagaConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, SagaConfig::default());
}

#[test]
fn unknown_fields_and_bad_values_are_errors() {
    let err = serde_json::from_str::<SagaConfig>(r#"{ "retries": 3 }"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `retries`"), "{err}");
    let err = serde_json::from_str::<SagaConfig>(r#"{ "on_crash": "panic" }"#).unwrap_err();
    assert!(err.to_string().contains("unknown variant `panic`"), "{err}");
    let err = serde_json::from_str::<SagaConfig>(r#"{ "lease": "soon" }"#).unwrap_err();
    assert!(err.to_string().contains("expected number"), "{err}");

    let cases = [
        (r#"{ "retry": { "attempts": 0 } }"#, "retry"),
        (
            r#"{ "compensation_retry": { "multiplier": 0.5 } }"#,
            "compensation_retry",
        ),
        (r#"{ "lease": "0s" }"#, "lease"),
        (r#"{ "deadline": "0s" }"#, "deadline"),
    ];
    for (json, field) in cases {
        let config: SagaConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.validate().unwrap_err().field(), field, "{json}");
        // `build` refuses the same config the same way.
        let err = Saga::<u32>::builder("s", 1)
            .log(MemoryLog::new())
            .step(failing_step(Arc::default()))
            .config(&config)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), field, "{json}");
    }
    assert!(SagaConfig::default().validate().is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_retry_of_a_config_is_the_one_the_steps_get() {
    let tries = Arc::new(AtomicU32::new(0));
    let config: SagaConfig =
        serde_json::from_str(r#"{ "retry": { "attempts": 2, "initial": "10ms" } }"#).unwrap();
    let saga = Saga::<u32>::builder("pay", 1)
        .log(MemoryLog::new())
        .step(failing_step(tries.clone()))
        .config(&config)
        .build()
        .unwrap();
    let err = saga.oneshot(1).await.unwrap_err();
    assert_eq!(err.step(), Some("charge"), "{err:?}");
    assert_eq!(tries.load(Ordering::SeqCst), 2);
}
