//! What the chaos layer logs: a `debug` event per fault, an `info` event
//! per switch, nothing while off.

use std::convert::Infallible;
use std::time::Duration;

use buttress_chaos::{ChaosLayer, Latency};
use buttress_test_support::capture::Capture;
use tower::{Service, ServiceBuilder, ServiceExt};

#[test]
fn faults_are_debug_events_and_switches_are_info() {
    let (capture, _guard) = Capture::install();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let chaos = ChaosLayer::builder()
            .name("search")
            .error_rate(1.0)
            .latency(1.0, Latency::Fixed(Duration::from_millis(250)))
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(chaos.clone())
            .service_fn(|n: u32| async move { Ok::<_, Infallible>(n) });
        // Off: nothing logged.
        svc.ready().await.unwrap().call(1).await.unwrap();
        assert!(capture.events().is_empty());

        chaos.handle().enable();
        let _ = svc.ready().await.unwrap().call(2).await;
        chaos.handle().disable();
    });

    let switches = capture.find("chaos switched");
    assert_eq!(switches.len(), 2);
    assert_eq!(switches[0].message(), "chaos switched on");
    assert_eq!(switches[1].message(), "chaos switched off");
    for s in &switches {
        assert_eq!(s.level, tracing::Level::INFO);
        assert_eq!(s.field("buttress.pattern"), Some("chaos"));
        assert_eq!(s.field("buttress.name"), Some("search"));
    }

    let faults = capture.find("fault injected");
    assert_eq!(faults.len(), 2);
    assert!(faults.iter().all(|f| f.level == tracing::Level::DEBUG));
    assert_eq!(faults[0].field("chaos.kind"), Some("latency"));
    assert_eq!(faults[0].field("chaos.delay_ms"), Some("250.0"));
    assert_eq!(faults[1].field("chaos.kind"), Some("error"));
    assert_eq!(faults[1].field("chaos.delay_ms"), Some("0.0"));
    assert_eq!(faults[1].field("buttress.name"), Some("search"));
    assert_eq!(capture.events().len(), 4);
}
