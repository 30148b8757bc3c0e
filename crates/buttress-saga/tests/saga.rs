//! The saga's semantics on the in-memory log: order, compensation,
//! retries, deadline, forward recovery, needing attention, idempotency keys,
//! and the state machine's checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::Registry;
use buttress_saga::{
    CompensationOutcome, Entry, Kind, MemoryLog, OnCompensationFailure, Phase, RetryPolicy, Saga,
    SagaHandle, SagaLog, SagaState, Step, StepRequest,
};
use proptest::prelude::*;
use tower::{service_fn, Service, ServiceExt};

type Calls = Arc<Mutex<Vec<String>>>;

/// A step that appends its name to the context's list and records
/// `"<step>:<kind>:<key>"` in `calls`; its action fails when `fail_action`
/// says so for the try, its compensation when `fail_comp` does.
fn step(
    name: &'static str,
    calls: &Calls,
    fail_action: impl Fn(u32) -> bool + Send + Sync + Clone + 'static,
    fail_comp: impl Fn(u32) -> bool + Send + Sync + Clone + 'static,
) -> Step<Vec<String>> {
    let a = calls.clone();
    let c = calls.clone();
    Step::new(
        name,
        service_fn(move |r: StepRequest<Vec<String>>| {
            let a = a.clone();
            let fail = fail_action.clone();
            async move {
                a.lock()
                    .unwrap()
                    .push(format!("{}:action:{}", r.step, r.idempotency_key));
                if fail(r.attempt) {
                    return Err(format!("{} failed", r.step));
                }
                let mut ctx = r.context;
                ctx.push(r.step.to_owned());
                Ok(ctx)
            }
        }),
    )
    .compensate(service_fn(move |r: StepRequest<Vec<String>>| {
        let c = c.clone();
        let fail = fail_comp.clone();
        async move {
            c.lock()
                .unwrap()
                .push(format!("{}:compensation:{}", r.step, r.idempotency_key));
            if fail(r.attempt) {
                return Err(format!("undo {} failed", r.step));
            }
            Ok(())
        }
    }))
}

fn never(_: u32) -> bool {
    false
}
fn always(_: u32) -> bool {
    true
}

fn kinds(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.splitn(3, ':').take(2).collect::<Vec<_>>().join(":"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn steps_run_in_order_and_return_the_context() {
    let calls = Calls::default();
    let mut saga = Saga::builder("order", 1)
        .log(MemoryLog::new())
        .step(step("a", &calls, never, never))
        .step(step("b", &calls, never, never))
        .step(step("c", &calls, never, never))
        .build()
        .unwrap();
    let out = saga.ready().await.unwrap().call(vec![]).await.unwrap();
    assert_eq!(out, ["a", "b", "c"]);
    assert_eq!(kinds(&calls), ["a:action", "b:action", "c:action"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_step_compensates_the_completed_ones_in_reverse_order() {
    let calls = Calls::default();
    let log = MemoryLog::new();
    let mut saga = Saga::builder("order", 1)
        .log(log.clone())
        .retry(RetryPolicy::never())
        .step(step("a", &calls, never, never))
        .step(step("b", &calls, never, never))
        .step(step("c", &calls, always, never))
        .build()
        .unwrap();
    let err = saga.ready().await.unwrap().call(vec![]).await.unwrap_err();
    assert_eq!(err.step(), Some("c"));
    assert_eq!(err.cause().to_string(), "c failed");
    assert!(err.is_compensated());
    assert_eq!(
        kinds(&calls),
        [
            "a:action",
            "b:action",
            "c:action",
            "b:compensation",
            "a:compensation"
        ]
    );
    let steps: Vec<_> = err.compensations().iter().map(|c| c.step).collect();
    assert_eq!(steps, ["b", "a"]);
    assert!(err
        .compensations()
        .iter()
        .all(|c| c.outcome == CompensationOutcome::Compensated { attempts: 1 }));
    // The log holds the write-ahead records, and they replay to the end state.
    let stored = log.load(err.saga_id()).await.unwrap();
    assert_eq!(stored.phase, Phase::Compensated);
    let st = SagaState::replay(err.saga_id(), stored.input, stored.entries.clone()).unwrap();
    assert_eq!(st.phase, Phase::Compensated);
    assert_eq!(st.actions_done, 2);
    assert_eq!(st.compensated.iter().copied().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        stored.entries[0],
        Entry::Started {
            step: 0,
            kind: Kind::Action
        }
    );
}

#[tokio::test(start_paused = true)]
async fn idempotency_keys_name_saga_step_and_kind_and_hold_across_tries() {
    let calls = Calls::default();
    let mut saga = Saga::builder("order", 1)
        .log(MemoryLog::new())
        .retry(RetryPolicy::backoff(3, Duration::from_millis(10), 1.5))
        .step(step("a", &calls, |attempt| attempt < 3, never))
        .step(step("b", &calls, always, never))
        .build()
        .unwrap();
    let err = saga
        .ready()
        .await
        .unwrap()
        .run_with_id("s-1", vec![])
        .await
        .unwrap_err();
    assert_eq!(err.saga_id(), "s-1");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "a:action:s-1:a:action",
            "a:action:s-1:a:action",
            "a:action:s-1:a:action",
            "b:action:s-1:b:action",
            "b:action:s-1:b:action",
            "b:action:s-1:b:action",
            "a:compensation:s-1:a:compensation",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn retries_wait_with_backoff() {
    let calls = Calls::default();
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let start = tokio::time::Instant::now();
    let mut saga = Saga::builder("order", 1)
        .log(MemoryLog::new())
        .retry(RetryPolicy::backoff(3, Duration::from_millis(100), 1.5))
        .on_event(move |e: &buttress_saga::SagaEvent| {
            if let buttress_saga::SagaEvent::StepSucceeded { attempts, .. } = e {
                t.lock().unwrap().push((*attempts, start.elapsed()));
            }
        })
        .step(step("a", &calls, |attempt| attempt < 3, never))
        .build()
        .unwrap();
    saga.ready().await.unwrap().call(vec![]).await.unwrap();
    // 100 ms, then 150 ms.
    assert_eq!(*times.lock().unwrap(), [(3, Duration::from_millis(250))]);
}

#[tokio::test(start_paused = true)]
async fn a_step_timeout_fails_the_try() {
    let mut saga = Saga::builder("order", 1)
        .log(MemoryLog::new())
        .retry(RetryPolicy::never())
        .step(
            Step::new(
                "slow",
                service_fn(|r: StepRequest<u8>| async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok::<_, std::io::Error>(r.context)
                }),
            )
            .timeout(Duration::from_secs(1))
            .compensate(service_fn(|_r: StepRequest<u8>| async {
                Ok::<_, std::io::Error>(())
            })),
        )
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = saga.ready().await.unwrap().call(0).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(err.step(), Some("slow"));
    assert!(
        matches!(err.cause(), buttress_saga::Cause::Step(e) if e.is::<buttress_core::Elapsed>())
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_the_saga_and_compensates() {
    let calls = Calls::default();
    let c = calls.clone();
    let mut saga = Saga::builder("order", 1)
        .log(MemoryLog::new())
        .deadline(Duration::from_secs(300))
        .retry(
            RetryPolicy::backoff(100, Duration::from_secs(60), 1.0)
                .max_delay(Duration::from_secs(60)),
        )
        .step(step("a", &calls, never, never))
        .step(
            Step::new(
                "b",
                service_fn(move |r: StepRequest<Vec<String>>| {
                    c.lock().unwrap().push("b:action".into());
                    async move {
                        tokio::time::sleep(Duration::from_secs(100)).await;
                        Err::<Vec<String>, _>(format!("{} down", r.step))
                    }
                }),
            )
            .compensate(service_fn(|_r: StepRequest<Vec<String>>| async {
                Ok::<_, std::io::Error>(())
            })),
        )
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = saga.ready().await.unwrap().call(vec![]).await.unwrap_err();
    // Tries at 0 s and 160 s (100 s each, 60 s apart); the wait before a
    // third reaches the deadline at 300 s.
    assert_eq!(start.elapsed(), Duration::from_secs(300));
    assert!(matches!(
        err.cause(),
        buttress_saga::Cause::DeadlineExceeded
    ));
    assert_eq!(err.step(), Some("b"));
    assert!(err.is_compensated());
    assert_eq!(
        kinds(&calls),
        ["a:action", "b:action", "b:action", "a:compensation"]
    );
}

#[tokio::test(start_paused = true)]
async fn steps_after_the_pivot_are_retried_to_completion_never_compensated() {
    let calls = Calls::default();
    let c = calls.clone();
    let mut saga = Saga::builder("order", 1)
        .log(MemoryLog::new())
        .retry(RetryPolicy::backoff(2, Duration::from_millis(10), 2.0))
        .step(step("reserve", &calls, never, never))
        .pivot(Step::new(
            "charge",
            service_fn(|r: StepRequest<Vec<String>>| async move {
                let mut ctx = r.context;
                ctx.push("charge".into());
                Ok::<_, std::io::Error>(ctx)
            }),
        ))
        .retriable(Step::new(
            "ship",
            service_fn(move |r: StepRequest<Vec<String>>| {
                c.lock().unwrap().push("ship:action".into());
                async move {
                    // Fails far past the policy's 2 tries.
                    if r.attempt < 7 {
                        return Err("carrier down".to_owned());
                    }
                    let mut ctx = r.context;
                    ctx.push("ship".into());
                    Ok(ctx)
                }
            }),
        ))
        .build()
        .unwrap();
    let out = saga.ready().await.unwrap().call(vec![]).await.unwrap();
    assert_eq!(out, ["reserve", "charge", "ship"]);
    let k = kinds(&calls);
    assert_eq!(k.iter().filter(|c| *c == "ship:action").count(), 7);
    assert!(!k.iter().any(|c| c.ends_with("compensation")));
}

#[tokio::test(start_paused = true)]
async fn a_failed_pivot_compensates_the_steps_before_it() {
    let calls = Calls::default();
    let mut saga = Saga::builder("order", 1)
        .log(MemoryLog::new())
        .retry(RetryPolicy::never())
        .step(step("reserve", &calls, never, never))
        .pivot(Step::new(
            "charge",
            service_fn(|_r: StepRequest<Vec<String>>| async move {
                Err::<Vec<String>, _>("card declined".to_owned())
            }),
        ))
        .retriable(step("ship", &calls, never, never))
        .build()
        .unwrap();
    let err = saga.ready().await.unwrap().call(vec![]).await.unwrap_err();
    assert_eq!(err.step(), Some("charge"));
    assert!(err.is_compensated());
    assert_eq!(kinds(&calls), ["reserve:action", "reserve:compensation"]);
}

async fn parked_saga(
    stop: OnCompensationFailure,
    fixed: Arc<std::sync::atomic::AtomicBool>,
    calls: &Calls,
    registry: &Registry,
) -> (Saga<Vec<String>>, buttress_saga::SagaError) {
    let f = fixed.clone();
    let mut saga = Saga::builder("order", 1)
        .log(MemoryLog::new())
        .registry(registry)
        .retry(RetryPolicy::never())
        .compensation_retry(RetryPolicy::backoff(3, Duration::from_millis(10), 2.0))
        .on_compensation_failure(stop)
        .step(step("a", calls, never, never))
        .step(step("b", calls, never, move |_| {
            !f.load(std::sync::atomic::Ordering::SeqCst)
        }))
        .step(step("c", calls, never, never))
        .step(step("d", calls, always, never))
        .build()
        .unwrap();
    let err = saga
        .ready()
        .await
        .unwrap()
        .run_with_id("s-9", vec![])
        .await
        .unwrap_err();
    (saga, err)
}

#[tokio::test(start_paused = true)]
async fn a_compensation_failing_past_its_limit_parks_the_saga_and_a_manual_resume_finishes_it() {
    let calls = Calls::default();
    let registry = Registry::new();
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (saga, err) = parked_saga(
        OnCompensationFailure::Continue,
        fixed.clone(),
        &calls,
        &registry,
    )
    .await;
    assert!(err.needs_attention());
    let outcomes: Vec<_> = err
        .compensations()
        .iter()
        .map(|c| (c.step, c.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("c", CompensationOutcome::Compensated { attempts: 1 }),
            (
                "b",
                CompensationOutcome::Failed {
                    attempts: 3,
                    error: "undo b failed".into()
                }
            ),
            ("a", CompensationOutcome::Compensated { attempts: 1 }),
        ]
    );
    // Visible in the registry and in the log.
    let handle: SagaHandle<Vec<String>> = registry.get("order").unwrap();
    assert_eq!(handle.parked(), ["s-9"]);
    assert_eq!(handle.needs_attention().await.unwrap(), ["s-9"]);
    let snap = registry.snapshot();
    assert_eq!(snap["order"]["kind"], "saga");
    assert_eq!(snap["order"]["state"]["needs_attention"][0], "s-9");

    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    calls.lock().unwrap().clear();
    let err = saga.handle().resume("s-9").await.unwrap_err();
    assert!(err.is_compensated());
    // Only the failed compensation runs again.
    assert_eq!(kinds(&calls), ["b:compensation"]);
    assert!(handle.parked().is_empty());
    assert!(handle.needs_attention().await.unwrap().is_empty());
    assert_eq!(handle.compensated(), 1);
    assert_eq!(handle.needs_attention_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_at_a_failed_compensation_leaves_the_rest_for_the_resume() {
    let calls = Calls::default();
    let registry = Registry::new();
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (saga, err) = parked_saga(
        OnCompensationFailure::Stop,
        fixed.clone(),
        &calls,
        &registry,
    )
    .await;
    assert!(err.needs_attention());
    let outcomes: Vec<_> = err
        .compensations()
        .iter()
        .map(|c| (c.step, matches!(c.outcome, CompensationOutcome::NotRun)))
        .collect();
    assert_eq!(outcomes, [("c", false), ("b", false), ("a", true)]);
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    calls.lock().unwrap().clear();
    let err = saga.handle().resume("s-9").await.unwrap_err();
    assert!(err.is_compensated());
    assert_eq!(kinds(&calls), ["b:compensation", "a:compensation"]);
}

#[test]
fn invalid_definitions_are_config_errors() {
    let calls = Calls::default();
    let err = Saga::<Vec<String>>::builder("x", 1)
        .step(step("a", &calls, never, never))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "log");
    let err = Saga::<Vec<String>>::builder("x", 1)
        .log(MemoryLog::new())
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "steps");
    let err = Saga::builder("x", 1)
        .log(MemoryLog::new())
        .step(step("a", &calls, never, never))
        .step(step("a", &calls, never, never))
        .build()
        .unwrap_err();
    assert!(err.reason().contains("used twice"), "{err}");
    let err = Saga::builder("x", 1)
        .log(MemoryLog::new())
        .retriable(step("a", &calls, never, never))
        .build()
        .unwrap_err();
    assert!(err.reason().contains("must follow the pivot"), "{err}");
    let plain = Step::new(
        "n",
        service_fn(|r: StepRequest<Vec<String>>| async move { Ok::<_, std::io::Error>(r.context) }),
    );
    let err = Saga::builder("x", 1)
        .log(MemoryLog::new())
        .step(plain)
        .build()
        .unwrap_err();
    assert!(err.reason().contains("needs a compensation"), "{err}");
    let err = Saga::builder("x", 1)
        .log(MemoryLog::new())
        .retry(RetryPolicy::backoff(0, Duration::ZERO, 2.0))
        .step(step("a", &calls, never, never))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "retry");
    let err = Saga::builder("x", 1)
        .log(MemoryLog::new())
        .retry(RetryPolicy::backoff(2, Duration::ZERO, f64::NAN))
        .step(step("a", &calls, never, never))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "retry");
}

#[test]
fn backoff_grows_by_the_multiplier_and_is_capped() {
    let p = RetryPolicy::backoff(5, Duration::from_millis(100), 1.5)
        .max_delay(Duration::from_millis(200));
    assert_eq!(p.delay(1), Duration::from_millis(100));
    assert_eq!(p.delay(2), Duration::from_millis(150));
    assert_eq!(p.delay(3), Duration::from_millis(200));
    assert_eq!(p.delay(u32::MAX), Duration::from_millis(200));
}

#[test]
fn the_state_machine_rejects_out_of_order_entries_with_typed_errors() {
    use buttress_saga::LogError;
    let started = |step| Entry::Started {
        step,
        kind: Kind::Action,
    };
    let mut st = SagaState::new("s", serde_json::json!(null));
    // Step 1 cannot start before step 0.
    assert!(matches!(
        st.apply(&started(1)),
        Err(LogError::InvalidTransition { seq: 0, .. })
    ));
    st.apply(&started(0)).unwrap();
    // Done without a context.
    let done = Entry::Done {
        step: 0,
        kind: Kind::Action,
        context: None,
    };
    assert!(st.apply(&done).is_err());
    // A compensation while going forward.
    let comp = Entry::Started {
        step: 0,
        kind: Kind::Compensation,
    };
    assert!(st.apply(&comp).is_err());
    // Completed with an action in doubt.
    let completed = Entry::Phase {
        phase: Phase::Completed,
        reason: None,
    };
    assert!(st.apply(&completed).is_err());
    assert_eq!(st.next_seq, 1, "failed applies change nothing");
    // Going back: the action in doubt is compensated.
    st.apply(&Entry::Phase {
        phase: Phase::Compensating,
        reason: None,
    })
    .unwrap();
    assert_eq!(st.to_compensate(|_| true), [0]);
}

/// A model of a saga run: which step fails and which compensations fail.
fn run_model(steps: u32, fail_at: Option<u32>) -> (Vec<String>, bool) {
    let mut calls = Vec::new();
    let upto = fail_at.unwrap_or(steps);
    for i in 0..=upto.min(steps - 1) {
        calls.push(format!("s{i}:action"));
    }
    if fail_at.is_some() {
        for i in (0..upto).rev() {
            calls.push(format!("s{i}:compensation"));
        }
    }
    (calls, fail_at.is_none())
}

const NAMES: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever step fails, the actions up to it run in order and the
    /// completed ones are compensated in reverse order, each once; the
    /// log replays to the phase returned.
    #[test]
    fn compensation_follows_the_model(steps in 1u32..6, fail in proptest::option::of(0u32..6)) {
        let fail_at = fail.filter(|f| *f < steps);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let calls = Calls::default();
            let log = MemoryLog::new();
            let mut b = Saga::builder("m", 1).log(log.clone()).retry(RetryPolicy::never());
            for i in 0..steps {
                let failing = fail_at == Some(i);
                b = b.step(step(NAMES[i as usize], &calls, move |_| failing, never));
            }
            let mut saga = b.build().unwrap();
            let out = saga.ready().await.unwrap().run_with_id("p", vec![]).await;
            let (expected, ok) = run_model(steps, fail_at);
            prop_assert_eq!(kinds(&calls), expected);
            prop_assert_eq!(out.is_ok(), ok);
            let stored = log.load("p").await.unwrap();
            let st = SagaState::replay("p", stored.input, stored.entries).unwrap();
            prop_assert_eq!(st.phase, if ok { Phase::Completed } else { Phase::Compensated });
            Ok(())
        })?;
    }

    /// Any sequence of entries folds into a state or a typed error, never
    /// a panic.
    #[test]
    fn arbitrary_entries_never_panic(entries in proptest::collection::vec(entry(), 0..40)) {
        let mut st = SagaState::new("s", serde_json::json!({}));
        for e in &entries {
            let before = st.clone();
            if st.apply(e).is_err() {
                prop_assert_eq!(&st, &before);
            }
        }
    }
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![Just(Kind::Action), Just(Kind::Compensation)];
    let phase = prop_oneof![
        Just(Phase::Forward),
        Just(Phase::Compensating),
        Just(Phase::Completed),
        Just(Phase::Compensated),
        Just(Phase::NeedsAttention)
    ];
    prop_oneof![
        (0u32..4, kind.clone()).prop_map(|(step, kind)| Entry::Started { step, kind }),
        (0u32..4, kind.clone(), any::<bool>()).prop_map(|(step, kind, c)| Entry::Done {
            step,
            kind,
            context: c.then(|| serde_json::json!([step])),
        }),
        (0u32..4, kind).prop_map(|(step, kind)| Entry::Failed {
            step,
            kind,
            error: "e".into()
        }),
        phase.prop_map(|phase| Entry::Phase {
            phase,
            reason: None
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sagas_on_one_definition_keep_their_own_state() {
    let calls = Calls::default();
    let log = MemoryLog::new();
    let saga = Saga::builder("order", 1)
        .log(log.clone())
        .retry(RetryPolicy::never())
        .step(step("a", &calls, never, never))
        .step(step("b", &calls, never, never))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let saga = saga.clone();
        tasks.push(tokio::spawn(async move {
            saga.oneshot(vec![format!("in{i}")]).await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), [format!("in{i}"), "a".into(), "b".into()]);
    }
    assert_eq!(saga.handle().completed(), 50);
    assert_eq!(log.list("order", Phase::Completed).await.unwrap().len(), 50);
}

#[tokio::test(start_paused = true)]
async fn parallel_compensations_overlap_and_each_is_logged() {
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow_undo = |name: &'static str, fails: bool| {
        let (running, peak) = (running.clone(), peak.clone());
        Step::new(
            name,
            service_fn(|r: StepRequest<u8>| async move { Ok::<_, String>(r.context) }),
        )
        .compensate(service_fn(move |_r: StepRequest<u8>| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                running.fetch_sub(1, SeqCst);
                if fails {
                    Err("undo failed".to_owned())
                } else {
                    Ok(())
                }
            }
        }))
    };
    let log = MemoryLog::new();
    let mut saga = Saga::builder("order", 1)
        .log(log.clone())
        .retry(RetryPolicy::never())
        .compensation_retry(RetryPolicy::never())
        .parallel_compensation(true)
        .step(slow_undo("a", false))
        .step(slow_undo("b", true))
        .step(slow_undo("c", false))
        .step(
            Step::new(
                "d",
                service_fn(|_r: StepRequest<u8>| async { Err::<u8, _>("d down".to_owned()) }),
            )
            .compensate(service_fn(|_r: StepRequest<u8>| async {
                Ok::<_, String>(())
            })),
        )
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = saga
        .ready()
        .await
        .unwrap()
        .run_with_id("par", 0)
        .await
        .unwrap_err();
    // Three 1 s undos at once take 1 s, not 3.
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(err.needs_attention());
    let outcomes: Vec<_> = err
        .compensations()
        .iter()
        .map(|c| {
            (
                c.step,
                matches!(c.outcome, CompensationOutcome::Compensated { .. }),
            )
        })
        .collect();
    assert_eq!(outcomes, [("c", true), ("b", false), ("a", true)]);
    let stored = log.load("par").await.unwrap();
    let st = SagaState::replay("par", stored.input, stored.entries).unwrap();
    assert_eq!(st.phase, Phase::NeedsAttention);
    assert_eq!(st.compensated.iter().copied().collect::<Vec<_>>(), [0, 2]);
    assert!(st.compensation_in_doubt.is_empty());
}
