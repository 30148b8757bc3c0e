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

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::BoxError;
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
/// per key, with retry and backoff.
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
    id: String,
    lease: Duration,
    keys_per_batch: usize,
    messages_per_key: usize,
    retry: RetryPolicy,
}

impl<P> fmt::Debug for Relay<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
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
            id: crate::saga::new_id("relay"),
            lease: Duration::from_secs(30),
            keys_per_batch: 16,
            messages_per_key: 100,
            retry: RetryPolicy::default(),
        }
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

    /// Claims a batch of keys and publishes their pending messages.
    pub async fn run_once(&mut self) -> Result<RelayReport, LogError> {
        let mut report = RelayReport::default();
        let keys = self
            .store
            .claim_keys(&self.id, self.lease, self.keys_per_batch)
            .await?;
        for key in keys {
            let outcome = self.publish_key(&key, &mut report).await;
            self.store.release_key(&self.id, &key).await?;
            outcome?;
        }
        Ok(report)
    }

    async fn publish_key(&mut self, key: &str, report: &mut RelayReport) -> Result<(), LogError> {
        let pending = self.store.pending(key, self.messages_per_key).await?;
        for stored in pending {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let call = self.publisher.clone().oneshot(stored.message.clone());
                match call.await {
                    Ok(_) => break,
                    Err(e) if attempt >= self.retry.attempts() => {
                        let e: BoxError = e.into();
                        tracing::warn!(key, id = %stored.message.id, error = %e, "outbox publish failed; the key waits");
                        report.failed_keys.push(key.to_owned());
                        return Ok(());
                    }
                    Err(_) => tokio::time::sleep(self.retry.delay(attempt)).await,
                }
            }
            self.store.mark_published(&self.id, key, stored.seq).await?;
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
                Err(e) => tracing::warn!(error = %e, "outbox relay batch failed"),
            }
            tokio::time::sleep(idle).await;
        }
    }
}
