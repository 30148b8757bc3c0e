//! What the README and the `Registry` docs say about names.

use std::time::Duration;

use buttress::bulkhead::BulkheadLayer;
use buttress::timeout::TimeoutLayer;
use buttress::Registry;

#[test]
fn registry_names_are_unique_across_kinds() {
    let registry = Registry::new();
    BulkheadLayer::builder()
        .name("api")
        .max_concurrent(4)
        .registry(&registry)
        .build()
        .expect("the first `api` registers");
    let err = TimeoutLayer::builder(Duration::from_secs(1))
        .name("api")
        .registry(&registry)
        .build()
        .expect_err("a timeout cannot take the bulkhead's name");
    assert_eq!(err.field(), "name");
    assert_eq!(registry.names(), ["api"]);
    assert_eq!(registry.snapshot()["api"]["kind"], "bulkhead");

    TimeoutLayer::builder(Duration::from_secs(1))
        .name("api-timeout")
        .registry(&registry)
        .build()
        .expect("a name of its own registers");
    assert_eq!(registry.names(), ["api", "api-timeout"]);
}
