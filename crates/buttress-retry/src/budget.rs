//! Retry budgets: retries as a share of recent traffic, Finagle style.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::ConfigError;
use tokio::time::Instant;

/// Amounts are kept in millionths of a retry, so that a percentage with up
/// to four decimals (`12.5`, `33.3333`) is exact: 1000 requests at 33.3 %
/// allow exactly 333 retries, never 334 (tower's `TpsBudget` rounds a float
/// and over-allocates, tower #857).
const ONE_RETRY: i64 = 1_000_000;
const SLOTS: usize = 10;
/// Deposits are counted with one atomic add and moved into the window in
/// batches of at most this many (or at the next withdrawal or read), so
/// that most requests neither take the lock nor read the clock.
const BATCH: u64 = 32;

/// A budget of retries shared by any number of retry layers: each request
/// deposits `percent` % of a retry, each retry withdraws one, and what is
/// deposited or withdrawn expires after `ttl`. On top of the deposits, a
/// reserve of `min_per_sec * ttl` retries (Finagle's floor) lets a quiet
/// client retry: withdrawals from it expire after `ttl` too, so over any
/// `ttl` a client may make that many retries beyond its share. When the
/// budget is spent, a retry layer returns the last result without retrying
/// (and says so with an event).
///
/// A deposit is one atomic add. Deposits are moved into the window in
/// batches of at most 32 (or at the next withdrawal or read), each batch in
/// the slot of its first deposit: a deposit may expire up to one batch
/// early, never late, so the budget errs on the side of fewer retries.
/// Withdrawals, rare by nature, take a short lock and read the clock.
///
/// The defaults are Finagle's: 20 % of requests, a floor of 10 retries per
/// second, deposits expiring after 10 s. Clones share one budget, so one
/// budget can govern many routes or layers: the retries that a struggling
/// dependency sees stay a bounded share of the traffic, which is what stops
/// a retry storm.
///
/// ```
/// use buttress_retry::RetryBudget;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let budget = RetryBudget::builder()
///     .percent(10.0)
///     .min_per_sec(0)
///     .ttl(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// for _ in 0..20 {
///     budget.deposit();
/// }
/// assert!(budget.try_withdraw());
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw(), "10 % of 20 requests is 2 retries");
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    ttl: Duration,
    percent: f64,
    min_per_sec: u32,
    deposit: i64,
    reserve: i64,
    slot_nanos: u64,
    base: Instant,
    window: Mutex<Window>,
    /// Deposits not yet in the window.
    pending: AtomicU64,
    /// When the first of the pending deposits was made, in nanoseconds
    /// since `base`.
    batch_start: AtomicU64,
    withdrawals: AtomicU64,
    refusals: AtomicU64,
}

/// One slot per tenth of the ttl: what was deposited minus what was
/// withdrawn in it.
struct Window {
    slots: [i64; SLOTS],
    /// Deposits moved into the window since the budget was made.
    deposited: u64,
    /// The slot number (time since `base` divided by the slot length) that
    /// `slots[epoch % SLOTS]` holds.
    epoch: u64,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("percent", &self.inner.percent)
            .field("min_per_sec", &self.inner.min_per_sec)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

/// The state of a budget.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BudgetSnapshot {
    /// Retries that could be made right now.
    pub available: u64,
    /// Requests deposited since the budget was made.
    pub deposits: u64,
    /// Retries withdrawn since the budget was made.
    pub withdrawals: u64,
    /// Retries refused because the budget was spent.
    pub refusals: u64,
}

impl RetryBudget {
    /// A builder with Finagle's defaults.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            percent: 20.0,
        }
    }

    /// Records one request: adds `percent` % of a retry to the budget.
    #[inline]
    pub fn deposit(&self) {
        let inner = &*self.inner;
        let before = inner.pending.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            inner.start_batch();
        } else if before + 1 >= BATCH {
            drop(inner.lock_at(Instant::now()));
        }
    }

    /// Takes one retry from the budget; `false` (and nothing taken) when it
    /// is spent.
    pub fn try_withdraw(&self) -> bool {
        let inner = &*self.inner;
        let mut w = inner.lock_at(Instant::now());
        if inner.reserve + w.slots.iter().sum::<i64>() >= ONE_RETRY {
            let i = w.index();
            w.slots[i] -= ONE_RETRY;
            drop(w);
            inner.withdrawals.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            drop(w);
            inner.refusals.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Gives back a retry that was withdrawn and not made.
    pub(crate) fn refund(&self) {
        let inner = &*self.inner;
        let mut w = inner.lock_at(Instant::now());
        let i = w.index();
        w.slots[i] += ONE_RETRY;
        drop(w);
        inner.withdrawals.fetch_sub(1, Ordering::Relaxed);
    }

    /// Retries that could be made right now.
    pub fn available(&self) -> u64 {
        let inner = &*self.inner;
        let w = inner.lock_at(Instant::now());
        let balance = inner.reserve + w.slots.iter().sum::<i64>();
        u64::try_from(balance / ONE_RETRY).unwrap_or(0)
    }

    /// The current state.
    pub fn snapshot(&self) -> BudgetSnapshot {
        BudgetSnapshot {
            available: self.available(),
            deposits: self.inner.deposits(),
            withdrawals: self.inner.withdrawals.load(Ordering::Relaxed),
            refusals: self.inner.refusals.load(Ordering::Relaxed),
        }
    }

    /// The percentage of requests that may be retried.
    pub fn percent(&self) -> f64 {
        self.inner.percent
    }

    /// The floor of retries per second.
    pub fn min_per_sec(&self) -> u32 {
        self.inner.min_per_sec
    }

    /// How long a deposit or withdrawal counts.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }
}

impl Inner {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Notes when the first deposit of a new batch was made.
    #[cold]
    fn start_batch(&self) {
        self.batch_start
            .store(self.nanos(Instant::now()), Ordering::Release);
    }

    /// Deposits since the budget was made.
    fn deposits(&self) -> u64 {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.deposited + self.pending.load(Ordering::Acquire)
    }

    /// The window at `now`: the slots that expired cleared and the pending
    /// deposits moved in.
    fn lock_at(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        // Every update is a plain integer write: a panic elsewhere cannot
        // leave the window half-updated.
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = self.nanos(now) / self.slot_nanos;
        if epoch > w.epoch {
            let stale = (epoch - w.epoch).min(SLOTS as u64);
            for k in 1..=stale {
                let i = ((w.epoch + k) % SLOTS as u64) as usize;
                w.slots[i] = 0;
            }
            w.epoch = epoch;
        }
        let batch = self.pending.swap(0, Ordering::AcqRel);
        if batch > 0 {
            w.deposited += batch;
            // The batch counts from its first deposit; a batch that began
            // a whole ttl ago has expired already.
            let first = (self.batch_start.load(Ordering::Acquire) / self.slot_nanos).min(w.epoch);
            if first + SLOTS as u64 > w.epoch {
                let amount = i64::try_from(batch)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(self.deposit);
                let i = (first % SLOTS as u64) as usize;
                w.slots[i] = w.slots[i].saturating_add(amount);
            }
        }
        w
    }
}

impl Window {
    fn index(&self) -> usize {
        (self.epoch % SLOTS as u64) as usize
    }
}

/// Builds a [`RetryBudget`].
#[derive(Debug, Clone)]
pub struct RetryBudgetBuilder {
    ttl: Duration,
    min_per_sec: u32,
    percent: f64,
}

impl RetryBudgetBuilder {
    /// How long a deposit counts, from 1 s to 60 s (default 10 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Retries per second always allowed (default 10).
    pub fn min_per_sec(mut self, n: u32) -> Self {
        self.min_per_sec = n;
        self
    }

    /// Retries allowed as a percentage of requests, from 0 to 1000 (default
    /// 20). Exact to a millionth of a retry per request.
    pub fn percent(mut self, percent: f64) -> Self {
        self.percent = percent;
        self
    }

    /// Validates and builds the budget.
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        const KIND: &str = "retry_budget";
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl) {
            return Err(ConfigError::new(KIND, "ttl", "must be from 1s to 60s"));
        }
        if !(self.percent.is_finite() && (0.0..=1000.0).contains(&self.percent)) {
            return Err(ConfigError::new(
                KIND,
                "percent",
                format!("must be a number from 0 to 1000, got {}", self.percent),
            ));
        }
        // percent / 100 retries per request, in millionths: percent * 10^4,
        // rounded once here and exact from then on.
        let deposit = (self.percent * 10_000.0).round() as i64;
        // min_per_sec * ttl retries, the ttl in whole milliseconds.
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(60_000);
        let reserve = i64::from(self.min_per_sec)
            .saturating_mul(ttl_ms)
            .saturating_mul(ONE_RETRY / 1000);
        let slot_nanos = u64::try_from(self.ttl.as_nanos() / SLOTS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                ttl: self.ttl,
                percent: self.percent,
                min_per_sec: self.min_per_sec,
                deposit,
                reserve,
                slot_nanos,
                base: Instant::now(),
                window: Mutex::new(Window {
                    slots: [0; SLOTS],
                    deposited: 0,
                    epoch: 0,
                }),
                pending: AtomicU64::new(0),
                batch_start: AtomicU64::new(0),
                withdrawals: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: f64, min_per_sec: u32) -> RetryBudget {
        RetryBudget::builder()
            .percent(percent)
            .min_per_sec(min_per_sec)
            .build()
            .unwrap()
    }

    fn drain(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_percentages_are_exact() {
        for (percent, requests, retries) in [
            (33.3, 1000, 333),
            (12.5, 1000, 125),
            (0.1, 1000, 1),
            (0.1, 999, 0),
            (20.0, 7, 1),
            (33.3333, 3, 0),
            (33.3334, 3, 1),
            (150.0, 10, 15),
        ] {
            let b = budget(percent, 0);
            for _ in 0..requests {
                b.deposit();
            }
            assert_eq!(b.available(), retries, "{percent} % of {requests}");
            assert_eq!(drain(&b), retries, "{percent} % of {requests}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_without_traffic() {
        let b = RetryBudget::builder()
            .percent(0.0)
            .min_per_sec(3)
            .ttl(Duration::from_secs(2))
            .build()
            .unwrap();
        assert_eq!(drain(&b), 6);
        assert_eq!(b.snapshot().refusals, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_and_withdrawals_expire_after_the_ttl() {
        let b = RetryBudget::builder()
            .percent(50.0)
            .min_per_sec(0)
            .ttl(Duration::from_secs(10))
            .build()
            .unwrap();
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.available(), 5);
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..4 {
            b.deposit();
        }
        assert_eq!(b.available(), 7);
        assert!(b.try_withdraw());
        assert_eq!(b.available(), 6);
        // The first ten deposits leave the window; the later ones and the
        // withdrawal stay.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 1);
        // Everything has expired.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.available(), 0);
        // A long silence clears the whole window at once.
        for _ in 0..2 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.available(), 0);
        let s = b.snapshot();
        assert_eq!((s.deposits, s.withdrawals), (16, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn batched_deposits_expire_from_their_first_never_late() {
        let b = budget(50.0, 0);
        for _ in 0..20 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        // The 32nd deposit moves the first batch in, at the slot of its
        // first deposit (t = 0); the next 8 start a batch at t = 5 s.
        for _ in 0..20 {
            b.deposit();
        }
        assert_eq!(b.available(), 20);
        assert_eq!(b.snapshot().deposits, 40);
        // At t = 10 s the first batch expires, the 12 deposits of t = 5 s
        // in it too: early, never late.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 4);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_older_than_the_ttl_adds_nothing() {
        let b = budget(100.0, 0);
        for _ in 0..5 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.available(), 0);
        assert_eq!(b.snapshot().deposits, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget() {
        let a = budget(100.0, 0);
        let b = a.clone();
        a.deposit();
        assert!(b.try_withdraw());
        assert!(!a.try_withdraw());
    }

    #[test]
    fn invalid_budgets_are_config_errors() {
        let field = |b: RetryBudgetBuilder| b.build().unwrap_err().field();
        assert_eq!(field(RetryBudget::builder().percent(f64::NAN)), "percent");
        assert_eq!(field(RetryBudget::builder().percent(-1.0)), "percent");
        assert_eq!(field(RetryBudget::builder().percent(1000.5)), "percent");
        assert_eq!(field(RetryBudget::builder().ttl(Duration::ZERO)), "ttl");
        assert_eq!(
            field(RetryBudget::builder().ttl(Duration::from_secs(61))),
            "ttl"
        );
    }
}
