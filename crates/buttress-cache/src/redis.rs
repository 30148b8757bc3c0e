//! A store in Redis, shared by every replica (feature `redis`).
//!
//! ```no_run
//! use buttress_cache::{redis::RedisOptions, CacheLayer};
//! use std::time::Duration;
//!
//! let layer = CacheLayer::http()
//!     .name("catalog")
//!     .ttl(Duration::from_secs(30))
//!     .max_stale(Duration::from_secs(300))
//!     .redis(RedisOptions::url("redis://127.0.0.1:6379/").timeout(Duration::from_millis(50)))
//!     .build()
//!     .unwrap();
//! # let _ = layer;
//! ```
//!
//! - **Keys.** `{prefix}{key text}`, the prefix `buttress:cache:{name}:`
//!   by default: replicas that share entries use the same name (or
//!   prefix). Each key expires in Redis when its `max_stale` ends.
//! - **Values.** A versioned envelope: `BTC`, a format version (1), the
//!   times stored, fresh until and stale until (Unix milliseconds, so
//!   replicas agree on an entry's age within their clocks' skew), the
//!   weight, then the value as its [`RedisValue`] impl writes it. For HTTP:
//!   status, headers (name and value, in order) and body. An entry of
//!   another version is a miss, and is overwritten by the next store.
//! - **No local tier.** Every lookup is one `GET`, so an invalidation is
//!   seen by every replica at once; single-flight still holds within one
//!   process. Entry and weight bounds are Redis' own (`maxmemory`); the
//!   snapshot has no sizes.
//! - **Outages.** A Redis operation that fails or takes longer than
//!   [`timeout`](RedisOptions::timeout) (default 50 ms) is a miss (the
//!   inner service answers) or a skipped store, never an error of the
//!   call; after a failure Redis is left alone for
//!   [`retry_backoff`](RedisOptions::retry_backoff) (default 1 s), so an
//!   outage costs no timeout per call. The first failure of an outage is
//!   logged at `warn` and sent as [`CacheEvent::StoreUnavailable`], the
//!   recovery at `info` and as [`CacheEvent::StoreRecovered`]; the handle's
//!   operations return [`StoreError`].
//! - **Time.** Redis keeps its own time for the key's expiry; the entry's
//!   freshness is read from the wall clock (`SystemTime`), not tokio's, so
//!   a paused tokio clock does not move Redis entries.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use buttress_core::ConfigError;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::error::StoreError;
use crate::events::CacheEvent;
use crate::http::CachedResponse;
use crate::key::CacheKey;
use crate::layer::{Codec, KIND};
use crate::shared::Shared;
use crate::store::Entry;

const MAGIC: &[u8; 3] = b"BTC";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 3 + 1 + 8 * 3 + 4;

/// A value that a Redis store can keep: how it is written and read back.
///
/// ```
/// use buttress_cache::redis::RedisValue;
///
/// let mut out = Vec::new();
/// "hello".to_owned().encode(&mut out);
/// assert_eq!(String::decode(&out).as_deref(), Some("hello"));
/// ```
pub trait RedisValue: Sized + 'static {
    /// Appends the value to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads a value written by [`encode`](Self::encode); `None` if the
    /// bytes are not one (the entry is then a miss).
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl RedisValue for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl RedisValue for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl RedisValue for Bytes {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Bytes::copy_from_slice(bytes))
    }
}

impl RedisValue for CachedResponse {
    fn encode(&self, out: &mut Vec<u8>) {
        let (status, headers, body) = self.parts();
        out.extend_from_slice(&status.as_u16().to_be_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        out.extend_from_slice(body);
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let status = StatusCode::from_u16(u16::from_be_bytes(r.take()?)).ok()?;
        let count = u32::from_be_bytes(r.take()?);
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let n = u16::from_be_bytes(r.take()?) as usize;
            let name = HeaderName::from_bytes(r.bytes(n)?).ok()?;
            let n = u32::from_be_bytes(r.take()?) as usize;
            let value = HeaderValue::from_bytes(r.bytes(n)?).ok()?;
            headers.append(name, value);
        }
        let n = usize::try_from(u64::from_be_bytes(r.take()?)).ok()?;
        let body = Bytes::copy_from_slice(r.bytes(n)?);
        if !r.0.is_empty() {
            return None;
        }
        Some(CachedResponse::new(status, headers, body))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }
}

enum Target {
    Url(String),
    Client(redis::Client),
}

/// Where and how a cache keeps its entries in Redis.
///
/// ```
/// use buttress_cache::redis::RedisOptions;
/// use std::time::Duration;
///
/// let options = RedisOptions::url("redis://127.0.0.1/")
///     .prefix("shop:cache:")
///     .timeout(Duration::from_millis(20))
///     .retry_backoff(Duration::from_millis(500));
/// # let _ = options;
/// ```
pub struct RedisOptions {
    target: Target,
    prefix: Option<String>,
    timeout: Duration,
    retry_backoff: Duration,
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("retry_backoff", &self.retry_backoff)
            .finish_non_exhaustive()
    }
}

impl RedisOptions {
    /// Redis at `url` (`redis://host:port/db`); the connection is made on
    /// first use, and remade after a failure.
    pub fn url(url: impl Into<String>) -> Self {
        Self::with(Target::Url(url.into()))
    }

    /// Redis through an existing client.
    pub fn client(client: redis::Client) -> Self {
        Self::with(Target::Client(client))
    }

    fn with(target: Target) -> Self {
        RedisOptions {
            target,
            prefix: None,
            timeout: Duration::from_millis(50),
            retry_backoff: Duration::from_secs(1),
        }
    }

    /// The prefix of every key (default `buttress:cache:{name}:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The longest a Redis operation may take before it counts as failed
    /// (default 50 ms; above zero).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long Redis is left alone after a failure (default 1 s).
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                KIND,
                "redis_timeout",
                "must be above zero",
            ));
        }
        if let Target::Url(url) = &self.target {
            redis::Client::open(url.as_str())
                .map_err(|e| ConfigError::new(KIND, "redis_url", e.to_string()))?;
        }
        Ok(())
    }

    pub(crate) fn codec<V: RedisValue>() -> Codec<V> {
        (V::encode, V::decode)
    }
}

pub(crate) struct RedisStore<V> {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    retry_backoff: Duration,
    down: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
    encode: fn(&V, &mut Vec<u8>),
    decode: fn(&[u8]) -> Option<V>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl<V: Clone + Send + Sync + 'static> RedisStore<V> {
    pub(crate) fn new(
        options: RedisOptions,
        name: &str,
        encode: fn(&V, &mut Vec<u8>),
        decode: fn(&[u8]) -> Option<V>,
    ) -> Result<Self, String> {
        let client = match options.target {
            Target::Client(c) => c,
            Target::Url(url) => redis::Client::open(url.as_str()).map_err(|e| e.to_string())?,
        };
        Ok(RedisStore {
            client,
            conn: OnceLock::new(),
            prefix: options
                .prefix
                .unwrap_or_else(|| format!("buttress:cache:{name}:")),
            timeout: options.timeout,
            retry_backoff: options.retry_backoff,
            down: AtomicBool::new(false),
            retry_at: Mutex::new(None),
            encode,
            decode,
        })
    }

    fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let c = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.conn.get_or_init(|| c).clone())
    }

    fn redis_key<K: CacheKey>(&self, key: &K) -> String {
        format!("{}{}", self.prefix, key.text())
    }

    /// Runs one operation within the timeout, keeping the up/down state.
    async fn run<K, T, Fut>(
        &self,
        shared: &Shared<K, V>,
        op: impl FnOnce(ConnectionManager) -> Fut,
    ) -> Result<T, StoreError>
    where
        K: CacheKey,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.down.load(Acquire) {
            let mut retry_at = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match *retry_at {
                // One call tries Redis when the backoff is over; the next
                // try is pushed a backoff away meanwhile.
                Some(at) if now >= at => *retry_at = Some(now + self.retry_backoff),
                _ => {
                    return Err(StoreError::new(
                        shared.name.clone(),
                        "unavailable (waiting before the next try)",
                    ))
                }
            }
        }
        let result = match self.connection() {
            Ok(conn) => match tokio::time::timeout(self.timeout, op(conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            },
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(v) => {
                if self.down.swap(false, AcqRel) {
                    tracing::info!(
                        buttress.pattern = "cache",
                        buttress.name = %shared.name,
                        "Redis answers again; the cache uses it"
                    );
                    shared.listeners.emit(|| CacheEvent::StoreRecovered {
                        name: shared.name.clone(),
                    });
                }
                Ok(v)
            }
            Err(error) => {
                shared.counters.store_errors.fetch_add(1, Relaxed);
                *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + self.retry_backoff);
                if !self.down.swap(true, AcqRel) {
                    tracing::warn!(
                        buttress.pattern = "cache",
                        buttress.name = %shared.name,
                        error = %error,
                        "Redis is unreachable; calls go to the inner service until it answers"
                    );
                    let e = error.clone();
                    shared.listeners.emit(|| CacheEvent::StoreUnavailable {
                        name: shared.name.clone(),
                        error: e,
                    });
                }
                Err(StoreError::new(shared.name.clone(), error))
            }
        }
    }

    pub(crate) async fn get<K: CacheKey>(
        &self,
        shared: &Shared<K, V>,
        key: &K,
    ) -> Result<Option<Arc<Entry<V>>>, StoreError> {
        let k = self.redis_key(key);
        let bytes: Option<Vec<u8>> = self
            .run(shared, |mut c| async move {
                redis::cmd("GET").arg(&k).query_async(&mut c).await
            })
            .await?;
        Ok(bytes.and_then(|b| self.decode_entry(&b)))
    }

    fn decode_entry(&self, b: &[u8]) -> Option<Arc<Entry<V>>> {
        if b.len() < HEADER_LEN || &b[..3] != MAGIC || b[3] != VERSION {
            return None;
        }
        let mut r = Reader(&b[4..]);
        let stored = u64::from_be_bytes(r.take()?);
        let fresh = u64::from_be_bytes(r.take()?);
        let stale = u64::from_be_bytes(r.take()?);
        let weight = u32::from_be_bytes(r.take()?);
        let value = (self.decode)(r.0)?;
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        let at = |ms: u64| {
            if ms >= now_ms {
                now + Duration::from_millis(ms - now_ms)
            } else {
                now.checked_sub(Duration::from_millis(now_ms - ms))
                    .unwrap_or(now)
            }
        };
        Some(Arc::new(Entry {
            value,
            stored_at: at(stored),
            fresh_until: at(fresh),
            stale_until: at(stale),
            weight,
        }))
    }

    pub(crate) async fn set<K: CacheKey>(
        &self,
        shared: &Shared<K, V>,
        key: &K,
        entry: &Entry<V>,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        let ms = |t: Instant| {
            now_ms.saturating_add(
                u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
            )
        };
        let mut buf = Vec::with_capacity(HEADER_LEN + 64);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&now_ms.to_be_bytes());
        buf.extend_from_slice(&ms(entry.fresh_until).to_be_bytes());
        buf.extend_from_slice(&ms(entry.stale_until).to_be_bytes());
        buf.extend_from_slice(&entry.weight.to_be_bytes());
        (self.encode)(&entry.value, &mut buf);
        let px = u64::try_from(entry.stale_until.saturating_duration_since(now).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let k = self.redis_key(key);
        self.run(shared, |mut c| async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(buf)
                .arg("PX")
                .arg(px)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    pub(crate) async fn delete<K: CacheKey>(
        &self,
        shared: &Shared<K, V>,
        key: &K,
    ) -> Result<(), StoreError> {
        let k = self.redis_key(key);
        self.run(shared, |mut c| async move {
            redis::cmd("DEL").arg(&k).query_async::<()>(&mut c).await
        })
        .await
    }

    pub(crate) async fn delete_prefix<K: CacheKey>(
        &self,
        shared: &Shared<K, V>,
        prefix: &str,
    ) -> Result<(), StoreError> {
        let pattern = format!("{}*", glob_escape(&format!("{}{prefix}", self.prefix)));
        let mut cursor: u64 = 0;
        loop {
            let p = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .run(shared, |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&p)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                self.run(shared, |mut c| async move {
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_survives_its_encoding() {
        let mut headers = HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let r = CachedResponse::new(StatusCode::NOT_FOUND, headers, Bytes::from_static(b"body"));
        let mut out = Vec::new();
        r.encode(&mut out);
        let back = CachedResponse::decode(&out).unwrap();
        assert_eq!(back.status(), StatusCode::NOT_FOUND);
        assert_eq!(back.headers(), r.headers());
        assert_eq!(back.body(), r.body());
        assert!(CachedResponse::decode(&out[..out.len() - 1]).is_none());
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
