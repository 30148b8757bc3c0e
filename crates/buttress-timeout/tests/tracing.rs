//! The timeout's `tracing`, as the crate docs list it: a timeout that
//! fires is a `debug` event with `timeout.elapsed_ms`; a call in time
//! emits nothing.

use std::time::Duration;

use buttress_timeout::error::Elapsed;
use buttress_timeout::TimeoutLayer;
use tower::{service_fn, Layer, ServiceExt};
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

async fn call(layer: &TimeoutLayer, takes: Duration) -> Result<(), buttress_core::BoxError> {
    let svc = layer.layer(service_fn(move |()| async move {
        tokio::time::sleep(takes).await;
        Ok::<_, buttress_core::BoxError>(())
    }));
    svc.oneshot(()).await
}

fn layer() -> TimeoutLayer {
    TimeoutLayer::builder(Duration::from_millis(250))
        .name("t")
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_timeout_that_fires_is_a_debug_event_with_the_elapsed_time() {
    let (capture, _guard) = Capture::install();
    let err = call(&layer(), Duration::from_secs(1)).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    let fired = capture.find("call timed out");
    assert_eq!(fired.len(), 1, "{:#?}", capture.events());
    let e = &fired[0];
    assert_eq!(e.level, Level::DEBUG);
    assert_eq!(e.field("buttress.pattern"), Some("timeout"));
    assert_eq!(e.field("buttress.name"), Some("t"));
    assert_eq!(e.field("timeout.elapsed_ms"), Some("250"));
    assert_eq!(e.field("timeout.phase"), Some("call"));
}

#[tokio::test(start_paused = true)]
async fn the_readiness_budget_firing_says_so() {
    let (capture, _guard) = Capture::install();
    let layer = TimeoutLayer::builder(Duration::from_millis(40))
        .name("t")
        .include_ready(true)
        .build()
        .unwrap();
    let (mock, mut handle) = tower_test::mock::pair::<(), ()>();
    handle.allow(0);
    let err = layer.layer(mock).oneshot(()).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    let fired = capture.find("call timed out");
    assert_eq!(fired.len(), 1, "{:#?}", capture.events());
    assert_eq!(fired[0].field("timeout.phase"), Some("ready"));
    assert_eq!(fired[0].field("timeout.elapsed_ms"), Some("40"));
}

#[tokio::test(start_paused = true)]
async fn a_call_in_time_emits_nothing() {
    let (capture, _guard) = Capture::install();
    let layer = layer();
    for _ in 0..5 {
        call(&layer, Duration::from_millis(100)).await.unwrap();
        call(&layer, Duration::ZERO).await.unwrap();
    }
    let events = capture.events();
    assert!(events.is_empty(), "{events:#?}");
}
