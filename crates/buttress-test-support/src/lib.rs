//! Test helpers shared by the buttress crates' test suites: not published,
//! a dev-dependency only.
#![forbid(unsafe_code)]

/// A `tracing_subscriber` layer that keeps every event and span, with the
/// span each event was emitted in and each span's parent, for tests that
/// check the fields and levels a layer logs.
///
/// ```
/// use buttress_test_support::capture::Capture;
///
/// let (capture, _guard) = Capture::install();
/// tracing::warn!(buttress.name = "db", "circuit breaker opened");
/// let events = capture.find("circuit breaker opened");
/// assert_eq!(events[0].level, tracing::Level::WARN);
/// assert_eq!(events[0].field("buttress.name"), Some("db"));
/// ```
pub mod capture {
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
    pub struct Record {
        /// The event's level.
        pub level: Level,
        /// Its fields, `message` included, as text.
        pub fields: BTreeMap<String, String>,
        /// The spans it was emitted in, innermost first.
        pub scope: Vec<SpanRecord>,
    }

    impl Record {
        /// The field `name`, as text.
        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields.get(name).map(String::as_str)
        }

        /// The event's message.
        pub fn message(&self) -> &str {
            self.field("message").unwrap_or("")
        }
    }

    /// A recorded span.
    #[derive(Debug, Clone)]
    pub struct SpanRecord {
        /// The span's name.
        pub name: &'static str,
        /// Its level.
        pub level: Level,
        /// Its fields at creation, as text.
        pub fields: BTreeMap<String, String>,
        /// The parent span's name.
        pub parent: Option<&'static str>,
    }

    impl SpanRecord {
        /// The field `name`, as text.
        pub fn field(&self, name: &str) -> Option<&str> {
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

    /// The capturing layer: clones share what they recorded.
    #[derive(Clone, Default, Debug)]
    pub struct Capture {
        events: Arc<Mutex<Vec<Record>>>,
        spans: Arc<Mutex<Vec<SpanRecord>>>,
    }

    impl Capture {
        /// Installs a capture as this thread's default subscriber until the
        /// guard is dropped.
        pub fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
            let capture = Capture::default();
            let subscriber = tracing_subscriber::registry().with(capture.clone());
            (capture, tracing::subscriber::set_default(subscriber))
        }

        /// Every event recorded so far.
        pub fn events(&self) -> Vec<Record> {
            self.events.lock().unwrap().clone()
        }

        /// Every span created so far.
        pub fn spans(&self) -> Vec<SpanRecord> {
            self.spans.lock().unwrap().clone()
        }

        /// The events whose message starts with `prefix`.
        pub fn find(&self, prefix: &str) -> Vec<Record> {
            self.events()
                .into_iter()
                .filter(|e| e.message().starts_with(prefix))
                .collect()
        }

        /// Forgets what was recorded.
        pub fn clear(&self) {
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
