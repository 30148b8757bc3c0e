//! Test helpers shared by the buttress crates' test suites: not published,
//! a dev-dependency only.
#![forbid(unsafe_code)]

pub mod postgres;

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

/// Series read back from a `metrics_util` `DebuggingRecorder`, for tests
/// of the metrics bridges: names, labels, kinds and values at once.
///
/// ```
/// use buttress_test_support::series::{expect, nonzero, series, V};
/// use metrics_util::debugging::DebuggingRecorder;
///
/// let recorder = DebuggingRecorder::new();
/// let snapshotter = recorder.snapshotter();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("calls_total", "name" => "db").increment(2);
/// });
/// let all = series(&snapshotter);
/// assert_eq!(nonzero(&all, "calls"), expect([("calls_total{name=db}", V::Counter(2))]));
/// ```
pub mod series {
    use std::collections::BTreeMap;

    use metrics_util::debugging::{DebugValue, Snapshotter};
    use metrics_util::MetricKind;

    /// A series' value: the kind and what the recorder holds.
    #[derive(Debug, Clone, PartialEq)]
    pub enum V {
        /// A counter's value.
        Counter(u64),
        /// A gauge's value.
        Gauge(f64),
        /// A histogram's samples.
        Histogram(Vec<f64>),
    }

    /// Every series as `"name{label=value,...}"` (labels sorted) to its value.
    /// Taking it drains the recorder (counters and gauges to 0), so take one
    /// per scenario.
    pub fn series(snapshotter: &Snapshotter) -> BTreeMap<String, V> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _unit, _desc, value)| {
                let mut labels: Vec<String> = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                labels.sort();
                let value = match (key.kind(), value) {
                    (MetricKind::Counter, DebugValue::Counter(n)) => V::Counter(n),
                    (MetricKind::Gauge, DebugValue::Gauge(g)) => V::Gauge(g.into_inner()),
                    (MetricKind::Histogram, DebugValue::Histogram(h)) => {
                        V::Histogram(h.into_iter().map(|v| v.into_inner()).collect())
                    }
                    (kind, value) => panic!("{kind:?} with {value:?}"),
                };
                (
                    format!("{}{{{}}}", key.key().name(), labels.join(",")),
                    value,
                )
            })
            .collect()
    }

    /// The series whose name starts with `prefix`, zero counters left out.
    pub fn nonzero(all: &BTreeMap<String, V>, prefix: &str) -> BTreeMap<String, V> {
        all.iter()
            .filter(|(k, v)| k.starts_with(prefix) && **v != V::Counter(0))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// `[(key, value)]` as a map, for comparisons.
    pub fn expect<const N: usize>(pairs: [(&str, V); N]) -> BTreeMap<String, V> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// Strategies and checks shared by the crates' config fuzz tests: a
/// builder fed random values returns an error or a working layer, never a
/// panic, a hang or a huge allocation.
pub mod fuzz {
    use std::alloc::System;
    use std::time::Duration;

    use proptest::prelude::*;
    use stats_alloc::{Region, StatsAlloc};

    /// Durations, the edges (zero, `Duration::MAX`) included.
    pub fn durations() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..10_000).prop_map(Duration::from_millis),
            any::<u64>().prop_map(Duration::from_nanos),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    /// Floats, NaN and the infinities included.
    pub fn floats() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            Just(-1.0),
            Just(f64::MAX),
            -10.0f64..200.0,
            any::<f64>(),
        ]
    }

    /// Counts, 0 and `u32::MAX` included.
    pub fn counts() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0), Just(u32::MAX), 0u32..20, any::<u32>()]
    }

    /// Runs a build, counted by `counter` (the test binary's global
    /// allocator, a `stats_alloc::StatsAlloc`), that must not allocate by the size asked for (a window or
    /// a queue of `u32::MAX` would take gigabytes): at most 64 MiB allocated
    /// while it runs, a loose bound since other tests of this binary may
    /// allocate at the same time. Counted, not timed: exact on any machine.
    pub fn bounded<T>(counter: &'static StatsAlloc<System>, f: impl FnOnce() -> T) -> T {
        let region = Region::new(counter);
        let out = f();
        let allocated = region.change().bytes_allocated;
        assert!(
            allocated < 64 << 20,
            "the build allocated {allocated} bytes"
        );
        out
    }

    /// Runs `f` on a paused current-thread runtime; it must finish within an
    /// hour of paused time.
    pub fn finishes<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(3600), f)
                .await
                .expect("the call hung")
        })
    }
}

/// A real `redis-server` for tests, on a free loopback port: started,
/// killed (a crash), stopped (`SIGSTOP`) and restarted on the same port.
///
/// ```no_run
/// let server = buttress_test_support::redis_server::Server::start();
/// let url = server.url(); // redis://127.0.0.1:<port>/
/// # drop(url);
/// ```
pub mod redis_server {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A redis-server on a free loopback port, killed on drop.
    #[derive(Debug)]
    pub struct Server {
        /// The port it listens on.
        pub port: u16,
        child: Option<Child>,
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free loopback port")
            .port()
    }

    fn ping(port: u16) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn spawn(port: u16) -> Option<Child> {
        let mut child = match Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: the test command `bash scripts/test.sh` installs it \
                 (or: apt-get install redis-server)"
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(port) {
                return Some(child);
            }
            if let Ok(Some(_)) = child.try_wait() {
                return None; // the port was taken meanwhile
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    impl Server {
        /// Starts a server (no persistence) on a free port; panics with an
        /// install hint when `redis-server` is not on `PATH`.
        pub fn start() -> Self {
            for _ in 0..5 {
                let port = free_port();
                if let Some(child) = spawn(port) {
                    return Self {
                        port,
                        child: Some(child),
                    };
                }
            }
            panic!("redis-server did not answer PING on any of 5 free ports");
        }

        /// `redis://127.0.0.1:<port>/`.
        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        /// Kills the server (SIGKILL): a crash, not a shutdown.
        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Starts a new, empty server on the same port.
        pub fn restart(&mut self) {
            self.kill();
            for _ in 0..50 {
                if let Some(child) = spawn(self.port) {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("redis-server did not restart on port {}", self.port);
        }

        /// Sends a signal (`-STOP`, `-CONT`, ...) to the server process.
        pub fn signal(&self, sig: &str) {
            let pid = self.child.as_ref().expect("running").id().to_string();
            let ok = Command::new("kill")
                .args([sig, &pid])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {pid} failed");
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(c) = &self.child {
                // A stopped server dies of SIGKILL too.
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
            }
            self.kill();
        }
    }
}
