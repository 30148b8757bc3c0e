//! The bulkhead's `tracing`, as the crate docs list it: a rejection is a
//! `debug` event per call (never a `warn`, which would flood the log when
//! the service is busiest), with `bulkhead.queued`; a call that gets a
//! permit emits nothing.

use std::time::Duration;

use buttress_bulkhead::error::BulkheadFull;
use buttress_bulkhead::BulkheadLayer;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracing::Level;

/// A `tracing_subscriber` layer that keeps every event and span, with the
/// span each event was emitted in and each span's parent. Each test binary
/// uses a part of it.
#[allow(dead_code)]
mod capture {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    /// A recorded event.
    #[derive(Debug, Clone)]
    pub(crate) struct Record {
        pub(crate) level: Level,
        pub(crate) fields: BTreeMap<String, String>,
        /// The spans it was emitted in, innermost first.
        pub(crate) scope: Vec<SpanRecord>,
    }

    impl Record {
        pub(crate) fn field(&self, name: &str) -> Option<&str> {
            self.fields.get(name).map(String::as_str)
        }

        pub(crate) fn message(&self) -> &str {
            self.field("message").unwrap_or("")
        }
    }

    /// A recorded span.
    #[derive(Debug, Clone)]
    pub(crate) struct SpanRecord {
        pub(crate) name: &'static str,
        pub(crate) level: Level,
        pub(crate) fields: BTreeMap<String, String>,
        /// The parent span's name.
        pub(crate) parent: Option<&'static str>,
    }

    impl SpanRecord {
        pub(crate) fn field(&self, name: &str) -> Option<&str> {
            self.fields.get(name).map(String::as_str)
        }
    }

    #[derive(Default)]
    struct Fields(BTreeMap<String, String>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().into(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().into(), value.into());
        }
    }

    #[derive(Clone, Default)]
    pub(crate) struct Capture {
        events: Arc<Mutex<Vec<Record>>>,
        spans: Arc<Mutex<Vec<SpanRecord>>>,
    }

    impl Capture {
        /// Installs a capture as this thread's default subscriber until the
        /// guard is dropped.
        pub(crate) fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
            let capture = Capture::default();
            let subscriber = tracing_subscriber::registry().with(capture.clone());
            (capture, tracing::subscriber::set_default(subscriber))
        }

        pub(crate) fn events(&self) -> Vec<Record> {
            self.events.lock().unwrap().clone()
        }

        pub(crate) fn spans(&self) -> Vec<SpanRecord> {
            self.spans.lock().unwrap().clone()
        }

        /// The events whose message starts with `prefix`.
        pub(crate) fn find(&self, prefix: &str) -> Vec<Record> {
            self.events()
                .into_iter()
                .filter(|e| e.message().starts_with(prefix))
                .collect()
        }

        pub(crate) fn clear(&self) {
            self.events.lock().unwrap().clear();
            self.spans.lock().unwrap().clear();
        }
    }

    impl<S> Layer<S> for Capture
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            let Some(span) = ctx.span(id) else { return };
            let record = SpanRecord {
                name: attrs.metadata().name(),
                level: *attrs.metadata().level(),
                fields: fields.0,
                parent: span.parent().map(|p| p.name()),
            };
            span.extensions_mut().insert(record.clone());
            self.spans.lock().unwrap().push(record);
        }

        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let scope = ctx
                .event_scope(event)
                .map(|scope| {
                    scope
                        .filter_map(|span| span.extensions().get::<SpanRecord>().cloned())
                        .collect()
                })
                .unwrap_or_default();
            self.events.lock().unwrap().push(Record {
                level: *event.metadata().level(),
                fields: fields.0,
                scope,
            });
        }
    }
}

use capture::Capture;

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_rejects_with_a_debug_event_per_call() {
    let (capture, _guard) = Capture::install();
    let layer = BulkheadLayer::builder()
        .name("b")
        .max_concurrent(1)
        .max_queue(1)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, buttress_core::BoxError>(())
    }));
    // One call holds the permit, one waits: the third finds no room.
    let running = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let waiting = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let mut third = svc.clone();
    let err = third.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<BulkheadFull>());

    let queued = capture.find("call queued");
    assert_eq!(queued.len(), 1, "{:#?}", capture.events());
    assert_eq!(queued[0].level, Level::TRACE);
    assert_eq!(queued[0].field("bulkhead.queued"), Some("1"));

    let rejected = capture.find("call rejected");
    assert_eq!(rejected.len(), 1, "{:#?}", capture.events());
    let e = &rejected[0];
    assert_eq!(e.level, Level::DEBUG);
    assert_eq!(e.field("buttress.pattern"), Some("bulkhead"));
    assert_eq!(e.field("buttress.name"), Some("b"));
    assert_eq!(e.field("bulkhead.queued"), Some("1"));
    assert_eq!(e.field("bulkhead.reason"), Some("queue_full"));

    // The waiting call times out in the queue: rejected too, for that.
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.is::<BulkheadFull>());
    let rejected = capture.find("call rejected");
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[1].field("bulkhead.reason"), Some("wait_timed_out"));
    assert_eq!(rejected[1].field("bulkhead.queued"), Some("0"));
    running.await.unwrap().unwrap();
    assert!(capture.events().iter().all(|e| e.level >= Level::DEBUG));
}

#[tokio::test(start_paused = true)]
async fn a_call_with_a_permit_emits_nothing() {
    let (capture, _guard) = Capture::install();
    let layer = BulkheadLayer::builder()
        .name("b")
        .max_concurrent(2)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Ok::<_, buttress_core::BoxError>(())
    }));
    for _ in 0..10 {
        svc.clone().oneshot(()).await.unwrap();
    }
    let events = capture.events();
    assert!(events.is_empty(), "{events:#?}");
}
