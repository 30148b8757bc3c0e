//! The rate limiter's `tracing`, as the crate docs list it: a rejection
//! is a `debug` event per call (never a `warn`, which would flood the log
//! under exactly the load the limit exists for), with `rate_limit.reason`;
//! an admitted call emits nothing.

use buttress_core::RateLimited;
use buttress_rate_limit::{Rate, RateLimitLayer};
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

#[tokio::test(start_paused = true)]
async fn a_rejection_is_a_debug_event_with_the_reason() {
    let (capture, _guard) = Capture::install();
    let layer = RateLimitLayer::builder(Rate::per_minute(2))
        .name("rl")
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Ok::<_, buttress_core::BoxError>(())
    }));
    svc.clone().oneshot(()).await.unwrap();
    svc.clone().oneshot(()).await.unwrap();
    assert!(capture.events().is_empty(), "{:#?}", capture.events());
    for _ in 0..3 {
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert!(err.is::<RateLimited>());
    }
    let rejected = capture.find("call rejected");
    assert_eq!(rejected.len(), 3, "{:#?}", capture.events());
    for e in &rejected {
        assert_eq!(e.level, Level::DEBUG);
        assert_eq!(e.field("buttress.pattern"), Some("rate_limit"));
        assert_eq!(e.field("buttress.name"), Some("rl"));
        assert_eq!(e.field("rate_limit.reason"), Some("exhausted"));
        assert_eq!(e.field("rate_limit.cost"), Some("1"));
        assert!(e.field("rate_limit.retry_after_ms").is_some());
    }
    assert!(capture.events().iter().all(|e| e.level >= Level::DEBUG));
}
