//! The transactional outbox: messages written in the same database
//! transaction as the change that produced them, and a [`Relay`] that
//! publishes them to any tower service.
//!
//! Writing: a saga step returns its messages in a
//! [`StepOutput`](crate::StepOutput) and the log writes them with the step's
//! completion; application code calls `sqlite::enqueue` or
//! `postgres::enqueue` inside its own transaction. Either way a message
//! exists iff the transaction committed.
//!
//! Publishing: a [`Relay`] claims aggregate keys (a lease per key, so
//! several relays on PostgreSQL share the work and never publish one key at
//! once), publishes each key's pending messages in order, and marks each
//! published after its publisher call succeeded: at least once, in order
//! per key. A relay that dies mid-batch leaves the unmarked messages to the
//! next claim of the key; consumers de-duplicate on [`Message::id`].
//!
//! # Metrics and tracing
//!
//! With the `metrics` feature, [`Relay::metrics`] publishes what the relay
//! does through the `metrics` facade, labelled `name` = [`Relay::name`]:
//! messages published and deferred, failed publisher calls by kind,
//! retries, store errors, the publisher's latency, and after each batch the
//! outbox's backlog (see [`crate::metrics`] for the names).
//!
//! The relay reports through [`tracing`], with `buttress.pattern =
//! "outbox"`, `buttress.name` (its name) and `relay` (its id) on every
//! event:
//!
//! | event (message) | level | fields |
//! |---|---|---|
//! | `outbox batch published` | `debug`, one per batch that claimed keys | `keys`, `published`, `failed_keys` |
//! | `outbox batch found nothing to publish` | `trace`, one per empty poll | |
//! | `outbox publish failed; retrying` | `debug`, one per failed try that is tried again | `key`, `id`, `attempt`, `kind`, `error` |
//! | `outbox publish failed; the key waits` | `warn`, one per message that failed every try | `key`, `id`, `attempt`, `kind`, `error` |
//! | `outbox relay batch failed` | `warn`, from [`Relay::run`] | `error` |
//! | `outbox backlog query failed` | `warn` (metrics on) | `error` |
//!
//! `kind` is the buttress rejection the publisher returned (`timeout`,
//! `circuit_open`, `bulkhead_full`, `rate_limited`, `retry_exhausted`,
//! `key_missing`, `rejected` for a kind newer than this crate), or `error`
//! for any other error. A failed try that is retried is a `debug`, as an
//! action's failed try is in the saga; only a message the relay gives up
//! on for this batch is a `warn`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::error::{kind_of, ErrorKind};
use buttress_core::BoxError;
use tokio::time::Instant;
use tower::util::ServiceExt;
use tower_service::Service;

use crate::error::LogError;
use crate::log::{BoxFuture, Message};
use crate::RetryPolicy;

/// A stored outbox message: its position in the outbox and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its position (increasing in write order).
    pub seq: i64,
    /// The message.
    pub message: Message,
}

/// Where a [`Relay`] reads and marks messages. Implemented by
/// [`SqliteLog`](crate::sqlite::SqliteLog) and
/// [`PostgresLog`](crate::postgres::PostgresLog).
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` keys with pending messages that no other relay
    /// holds, for `relay`, for `lease`.
    fn claim_keys<'a>(
        &'a self,
        relay: &'a str,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, LogError>>;

    /// Up to `limit` of `key`'s unpublished messages, oldest first.
    fn pending<'a>(
        &'a self,
        key: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>, LogError>>;

    /// Marks message `seq` of `key` published, if `relay` still holds the
    /// key ([`LogError::LeaseLost`] otherwise).
    fn mark_published<'a>(
        &'a self,
        relay: &'a str,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// Gives up `relay`'s lease on `key`.
    fn release_key<'a>(
        &'a self,
        relay: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// The unpublished messages of the whole outbox (every key, leased or
    /// not): how many, and how long ago the first of them (by position) was
    /// written, on the store's clock. A relay with metrics on reads it
    /// after each batch; it costs one query that walks the pending messages
    /// (an index of them), not the published ones.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use buttress_saga::outbox::OutboxStore;
    /// use buttress_saga::sqlite::SqliteLog;
    ///
    /// let store = SqliteLog::open(":memory:").await?;
    /// let backlog = store.backlog().await?;
    /// assert_eq!(backlog.messages, 0);
    /// assert_eq!(backlog.oldest_age, None);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, LogError>>;
}

/// The unpublished messages of an outbox, from [`OutboxStore::backlog`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many messages are not yet published.
    pub messages: u64,
    /// How long ago the first unpublished message was written (zero if the
    /// store's clock is behind its timestamp); `None` when there is none.
    pub oldest_age: Option<Duration>,
}

/// What one [`Relay::run_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Messages published and marked.
    pub published: usize,
    /// Keys left with pending messages because a publish failed on every
    /// try (their later messages wait, to keep the order).
    pub failed_keys: Vec<String>,
}

/// Publishes outbox messages to a tower service: at least once, in order
/// per key, with retry and backoff. Its metrics and events are listed in
/// the [module docs](self).
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use buttress_saga::outbox::Relay;
/// use buttress_saga::sqlite::SqliteLog;
/// use tower::service_fn;
///
/// let store = SqliteLog::open("/tmp/app.db").await?;
/// let publisher = service_fn(|m: buttress_saga::Message| async move {
///     println!("{} {} {}", m.id, m.key, m.payload);
///     Ok::<_, std::io::Error>(())
/// });
/// let mut relay = Relay::new(store, publisher);
/// let report = relay.run_once().await?;
/// println!("published {}", report.published);
/// # Ok(()) }
/// ```
pub struct Relay<P> {
    store: Arc<dyn OutboxStore>,
    publisher: P,
    name: Arc<str>,
    id: String,
    lease: Duration,
    keys_per_batch: usize,
    messages_per_key: usize,
    retry: RetryPolicy,
    #[cfg(feature = "metrics")]
    metrics_on: bool,
    metrics: Option<RelayMetrics>,
}

#[cfg(feature = "metrics")]
use crate::metrics::RelayMetrics;

/// Without the `metrics` feature the relay has no metrics: a type with no
/// value, so that every recording site compiles to nothing.
#[cfg(not(feature = "metrics"))]
enum RelayMetrics {}

#[cfg(not(feature = "metrics"))]
impl RelayMetrics {
    fn published(&self) {
        match *self {}
    }
    fn deferred(&self) {
        match *self {}
    }
    fn failed(&self, _kind: usize) {
        match *self {}
    }
    fn retried(&self) {
        match *self {}
    }
    fn store_error(&self) {
        match *self {}
    }
    fn publish_duration(&self, _: Duration) {
        match *self {}
    }
    fn backlog(&self, _: &Backlog) {
        match *self {}
    }
}

/// The `kind` label of a failed publish, indexed by [`failure_kind`].
pub(crate) const FAILURE_KINDS: [&str; 8] = [
    "timeout",
    "circuit_open",
    "bulkhead_full",
    "rate_limited",
    "retry_exhausted",
    "key_missing",
    "rejected",
    "error",
];

/// The index in [`FAILURE_KINDS`] of what the publisher returned.
fn failure_kind(e: &BoxError) -> usize {
    match kind_of(&**e) {
        Some(ErrorKind::Timeout) => 0,
        Some(ErrorKind::CircuitOpen) => 1,
        Some(ErrorKind::BulkheadFull) => 2,
        Some(ErrorKind::RateLimited) => 3,
        Some(ErrorKind::RetryExhausted) => 4,
        Some(ErrorKind::KeyMissing) => 5,
        Some(_) => 6,
        None => 7,
    }
}

impl<P> fmt::Debug for Relay<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<P> Relay<P>
where
    P: Service<Message> + Clone + Send + 'static,
    P::Error: Into<BoxError>,
    P::Future: Send,
{
    /// A relay reading `store` and publishing to `publisher`: 16 keys and
    /// 100 messages per key per batch, a 30 s lease, 3 tries per message.
    pub fn new(store: impl OutboxStore, publisher: P) -> Self {
        Self {
            store: Arc::new(store),
            publisher,
            name: Arc::from("outbox"),
            id: crate::saga::new_id("relay"),
            lease: Duration::from_secs(30),
            keys_per_batch: 16,
            messages_per_key: 100,
            retry: RetryPolicy::default(),
            #[cfg(feature = "metrics")]
            metrics_on: false,
            metrics: None,
        }
    }

    /// This relay's name (`"outbox"` unless set): the `name` label of its
    /// metrics and the `buttress.name` of its events. Unlike the
    /// [`id`](Self::id), replicas of one relay share it, so that their
    /// series add up.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use buttress_saga::outbox::Relay;
    /// use buttress_saga::sqlite::SqliteLog;
    /// use tower::service_fn;
    ///
    /// let store = SqliteLog::open("/tmp/app.db").await?;
    /// let publisher = service_fn(|_m: buttress_saga::Message| async { Ok::<_, std::io::Error>(()) });
    /// let relay = Relay::new(store, publisher).name("orders");
    /// assert!(format!("{relay:?}").contains(r#"name: "orders""#));
    /// # Ok(()) }
    /// ```
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        #[cfg(feature = "metrics")]
        if self.metrics_on {
            self.metrics = RelayMetrics::attach(&self.name);
        }
        self
    }

    /// Publishes what this relay does as metrics (see [`crate::metrics`]),
    /// labelled with its [`name`](Self::name). The handles are resolved now,
    /// against the recorder installed then: install the recorder first, and
    /// name the relay first (a later [`name`](Self::name) resolves them
    /// again, but leaves the old name's series, at zero, in the recorder).
    /// With no recorder installed the relay gets no metrics, and the first
    /// such call logs a warning.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use buttress_saga::outbox::Relay;
    /// use buttress_saga::sqlite::SqliteLog;
    /// use tower::service_fn;
    ///
    /// // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
    /// let store = SqliteLog::open("/tmp/app.db").await?;
    /// let publisher = service_fn(|_m: buttress_saga::Message| async { Ok::<_, std::io::Error>(()) });
    /// let relay = Relay::new(store, publisher).name("orders").metrics();
    /// tokio::spawn(relay.run(std::time::Duration::from_secs(1)));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self) -> Self {
        self.metrics_on = true;
        self.metrics = RelayMetrics::attach(&self.name);
        self
    }

    /// This relay's id (owner of its key leases): distinct per relay.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// How long a claimed key stays this relay's without a write.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Keys, and messages per key, taken per batch (at least 1 each).
    pub fn batch(mut self, keys: usize, messages_per_key: usize) -> Self {
        self.keys_per_batch = keys.max(1);
        self.messages_per_key = messages_per_key.max(1);
        self
    }

    /// Tries per message before the key is left for the next batch.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Claims a batch of keys and publishes their pending messages; with
    /// metrics on, then reads the outbox's [`Backlog`] for the gauges.
    pub async fn run_once(&mut self) -> Result<RelayReport, LogError> {
        let result = self.publish_batch().await;
        if let Some(m) = &self.metrics {
            match &result {
                Ok(_) => match self.store.backlog().await {
                    Ok(backlog) => m.backlog(&backlog),
                    Err(e) => {
                        m.store_error();
                        tracing::warn!(
                            buttress.pattern = "outbox",
                            buttress.name = %self.name,
                            relay = %self.id,
                            error = %e,
                            "outbox backlog query failed"
                        );
                    }
                },
                Err(_) => m.store_error(),
            }
        }
        result
    }

    async fn publish_batch(&mut self) -> Result<RelayReport, LogError> {
        let mut report = RelayReport::default();
        let keys = self
            .store
            .claim_keys(&self.id, self.lease, self.keys_per_batch)
            .await?;
        if keys.is_empty() {
            tracing::trace!(
                buttress.pattern = "outbox",
                buttress.name = %self.name,
                relay = %self.id,
                "outbox batch found nothing to publish"
            );
            return Ok(report);
        }
        for key in &keys {
            let outcome = self.publish_key(key, &mut report).await;
            self.store.release_key(&self.id, key).await?;
            outcome?;
        }
        tracing::debug!(
            buttress.pattern = "outbox",
            buttress.name = %self.name,
            relay = %self.id,
            keys = keys.len(),
            published = report.published,
            failed_keys = report.failed_keys.len(),
            "outbox batch published"
        );
        Ok(report)
    }

    async fn publish_key(&mut self, key: &str, report: &mut RelayReport) -> Result<(), LogError> {
        let pending = self.store.pending(key, self.messages_per_key).await?;
        for stored in pending {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let call = self.publisher.clone().oneshot(stored.message.clone());
                let started = Instant::now();
                let result = call.await;
                if let Some(m) = &self.metrics {
                    m.publish_duration(started.elapsed());
                }
                let e: BoxError = match result {
                    Ok(_) => break,
                    Err(e) => e.into(),
                };
                let kind = failure_kind(&e);
                if let Some(m) = &self.metrics {
                    m.failed(kind);
                }
                if attempt >= self.retry.attempts() {
                    tracing::warn!(
                        buttress.pattern = "outbox",
                        buttress.name = %self.name,
                        relay = %self.id,
                        key,
                        id = %stored.message.id,
                        attempt,
                        kind = FAILURE_KINDS[kind],
                        error = %e,
                        "outbox publish failed; the key waits"
                    );
                    if let Some(m) = &self.metrics {
                        m.deferred();
                    }
                    report.failed_keys.push(key.to_owned());
                    return Ok(());
                }
                tracing::debug!(
                    buttress.pattern = "outbox",
                    buttress.name = %self.name,
                    relay = %self.id,
                    key,
                    id = %stored.message.id,
                    attempt,
                    kind = FAILURE_KINDS[kind],
                    error = %e,
                    "outbox publish failed; retrying"
                );
                tokio::time::sleep(self.retry.delay(attempt)).await;
                if let Some(m) = &self.metrics {
                    m.retried();
                }
            }
            self.store.mark_published(&self.id, key, stored.seq).await?;
            if let Some(m) = &self.metrics {
                m.published();
            }
            report.published += 1;
        }
        Ok(())
    }

    /// Runs batches until none finds work, then waits `idle` and goes on,
    /// forever (spawn it). Store errors are logged and retried after
    /// `idle`.
    pub async fn run(mut self, idle: Duration) {
        loop {
            match self.run_once().await {
                Ok(r) if r.published > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    buttress.pattern = "outbox",
                    buttress.name = %self.name,
                    relay = %self.id,
                    error = %e,
                    "outbox relay batch failed"
                ),
            }
            tokio::time::sleep(idle).await;
        }
    }
}
