//! Tests that pin behaviour which `cargo mutants -p buttress-bulkhead`
//! found unchecked: each one fails under at least one mutant of
//! `src/state.rs` that the other tests of the crate let through.

use buttress_bulkhead::BulkheadLayer;

#[test]
fn debug_shows_the_name_and_the_snapshot() {
    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(3)
        .build()
        .unwrap();
    let text = format!("{:?}", layer.handle());
    assert!(
        text.starts_with(
            r#"Bulkhead { name: "db", snapshot: BulkheadSnapshot { max_concurrent: 3,"#
        ),
        "{text}"
    );
    assert_eq!(format!("{layer:?}"), text);
}
