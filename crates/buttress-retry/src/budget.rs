//! Retry budgets: retries as a share of recent traffic, Finagle style.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use buttress_core::clock::CoarseClock;
use buttress_core::ConfigError;
use tokio::time::Instant;

use crate::sync::{AtomicU64, Mutex, MutexGuard, Ordering};

/// Amounts are kept in millionths of a retry, so that a percentage with up
/// to four decimals (`12.5`, `33.3333`) is exact: 1000 requests at 33.3 %
/// allow exactly 333 retries, never 334 (tower's `TpsBudget` rounds a float
/// and over-allocates, tower #857).
const ONE_RETRY: i64 = 1_000_000;
/// The window is ten slots of a tenth of the ttl each.
const SLOTS: usize = 10;
/// A deposit word keeps its slot number in the high half and the count of
/// deposits made in that slot in the low half, so that a deposit is one
/// atomic add (a slot of at least 100 ms would need 2^32 deposits, 43
/// billion a second, to overflow into the slot number).
const COUNT_BITS: u32 = 32;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// A budget of retries shared by any number of retry layers: each request
/// deposits `percent` % of a retry, each retry withdraws one, and what is
/// deposited or withdrawn expires after `ttl`. On top of the deposits, a
/// reserve of `min_per_sec * ttl` retries (Finagle's floor) lets a quiet
/// client retry: withdrawals from it expire after `ttl` too, so over any
/// `ttl` a client may make that many retries beyond its share. When the
/// budget is spent, a retry layer returns the last result without retrying
/// (and says so with an event).
///
/// # Exactness
///
/// Time is cut into slots of a tenth of `ttl`, read from the budget's
/// [`CoarseClock`] (period: one slot), and every deposit and every
/// withdrawal is counted in the slot that clock shows when it is made; the
/// window is the current slot and the nine before it. Deposits,
/// withdrawals, refunds and snapshots all read that one clock, which never
/// goes back, so a deposit is never stamped later than a withdrawal that
/// follows it. In the clock's time, a deposit or withdrawal counts for at
/// least `ttl - ttl / 10` and at most `ttl`: expiry errs toward fewer
/// retries, by less than one slot, and never drops a deposit that is still
/// in the window.
///
/// The clock is a ticker task's, so that a deposit costs one atomic load
/// instead of a clock read: it follows tokio's clock (paused in tests) and
/// lags real time by at most the ticker's scheduling delay (outside a
/// runtime the clock is read instead). What is stated above holds exactly
/// in the clock's time. In real time, the window is late by the clock's
/// lag: a deposit stamped while the ticker is late lands in an earlier
/// slot and expires early (fewer retries), and a withdrawal made while the
/// ticker is late still counts deposits that expired within that lag (at
/// most that lag's worth). On a runtime that polls its tasks on time the
/// lag is the ticker's wake-up delay; a runtime that is blocked, or a
/// current-thread runtime that is not being driven, holds the clock back
/// until it runs the ticker again.
///
/// A deposit is one atomic load of the clock and one atomic add on the
/// word of its own slot; nothing is batched or kept per thread.
/// [`try_withdraw`], [`available`] and [`snapshot`] take a short lock and
/// read every slot, so they see every deposit and withdrawal that
/// completed before they began; a snapshot taken when no deposit is in
/// flight counts every deposit made. Withdrawals, rare by nature, take the
/// lock.
///
/// [`try_withdraw`]: RetryBudget::try_withdraw
/// [`available`]: RetryBudget::available
/// [`snapshot`]: RetryBudget::snapshot
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
    /// The slot number: the one time source of deposits, withdrawals,
    /// refunds and snapshots.
    clock: CoarseClock,
    /// One word per slot: the slot number (wrapping at 2^32, which takes
    /// over 13 years of 100 ms slots) and the deposits made in it.
    deposits: [AtomicU64; SLOTS],
    /// Deposits of words that moved on to a later slot number.
    retired: AtomicU64,
    window: Mutex<Withdrawn>,
    withdrawals: AtomicU64,
    refusals: AtomicU64,
}

/// The withdrawals of each slot of the window.
struct Withdrawn {
    slots: [u64; SLOTS],
    /// The latest slot number seen: `slots[now % SLOTS]` holds its
    /// withdrawals.
    now: u64,
}

/// A retry taken from a budget, which [`RetryBudget::refund`] gives back
/// to the slot it was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Withdrawal {
    slot: u64,
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

    /// Records one request: adds `percent` % of a retry to the budget, in
    /// the slot the budget's clock shows.
    #[inline]
    pub fn deposit(&self) {
        let inner = &*self.inner;
        inner.deposit_at(inner.clock.now_ticks());
    }

    /// Takes one retry from the budget; `false` (and nothing taken) when it
    /// is spent.
    pub fn try_withdraw(&self) -> bool {
        self.withdraw().is_some()
    }

    /// Takes one retry from the budget, saying from which slot; `None` when
    /// it is spent.
    pub(crate) fn withdraw(&self) -> Option<Withdrawal> {
        self.withdraw_at(self.inner.clock.now_ticks())
    }

    /// [`withdraw`](Self::withdraw) at slot `slot` of the budget's clock.
    fn withdraw_at(&self, slot: u64) -> Option<Withdrawal> {
        let inner = &*self.inner;
        let mut w = inner.lock_at(slot);
        if inner.balance(&w) >= i128::from(ONE_RETRY) {
            let slot = w.now;
            w.slots[index(slot)] += 1;
            drop(w);
            inner.withdrawals.fetch_add(1, Ordering::Relaxed);
            Some(Withdrawal { slot })
        } else {
            drop(w);
            inner.refusals.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Gives back a retry that was withdrawn and not made, as if it had
    /// never been taken: from the slot it was taken from, if that slot is
    /// still in the window.
    pub(crate) fn refund(&self, withdrawal: Withdrawal) {
        let inner = &*self.inner;
        let mut w = inner.lock_now();
        if withdrawal.slot + SLOTS as u64 > w.now {
            let taken = &mut w.slots[index(withdrawal.slot)];
            *taken = taken.saturating_sub(1);
        }
        drop(w);
        inner.withdrawals.fetch_sub(1, Ordering::Relaxed);
    }

    /// Retries that could be made right now.
    pub fn available(&self) -> u64 {
        let inner = &*self.inner;
        let w = inner.lock_now();
        let balance = inner.balance(&w);
        drop(w);
        u64::try_from(balance / i128::from(ONE_RETRY)).unwrap_or(0)
    }

    /// The current state.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let inner = &*self.inner;
        let w = inner.lock_now();
        let available = u64::try_from(inner.balance(&w) / i128::from(ONE_RETRY)).unwrap_or(0);
        let deposits = inner.deposits();
        drop(w);
        BudgetSnapshot {
            available,
            deposits,
            withdrawals: inner.withdrawals.load(Ordering::Relaxed),
            refusals: inner.refusals.load(Ordering::Relaxed),
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

/// Where slot number `slot` lives in the window.
#[inline]
fn index(slot: u64) -> usize {
    (slot % SLOTS as u64) as usize
}

/// The slot number as kept in a deposit word.
#[inline]
fn stamp(slot: u64) -> u32 {
    slot as u32
}

#[inline]
fn stamp_of(word: u64) -> u32 {
    (word >> COUNT_BITS) as u32
}

#[inline]
fn count_of(word: u64) -> u64 {
    word & COUNT_MASK
}

/// How many slots `then` lies before `now` (negative: after), for slot
/// numbers less than 2^31 apart.
#[inline]
fn age(now: u32, then: u32) -> i64 {
    i64::from(now.wrapping_sub(then) as i32)
}

impl Inner {
    /// [`RetryBudget::deposit`] at slot `slot` of the budget's clock.
    #[inline]
    fn deposit_at(&self, slot: u64) {
        let word = &self.deposits[index(slot)];
        let before = word.fetch_add(1, Ordering::AcqRel);
        if stamp_of(before) != stamp(slot) {
            self.deposit_slow(word, slot, before);
        }
    }

    /// A deposit whose add landed in a word that another slot number holds.
    ///
    /// A word holding a later slot number (this thread read the clock
    /// before another thread that has already moved the word on) keeps
    /// the deposit: it was made no earlier than that slot began. A word
    /// holding an earlier, expired slot number is moved on to this one, its
    /// old deposits (less this one) going to `retired`; if another deposit
    /// moved it on first, that one retired this add too, so it is taken
    /// back from `retired` and made again.
    #[cold]
    #[inline(never)]
    fn deposit_slow(&self, word: &AtomicU64, slot: u64, before: u64) {
        let ours = stamp(slot);
        if age(ours, stamp_of(before)) < 0 {
            return;
        }
        let mut current = word.load(Ordering::Acquire);
        loop {
            if age(ours, stamp_of(current)) <= 0 {
                self.retired.fetch_sub(1, Ordering::AcqRel);
                word.fetch_add(1, Ordering::AcqRel);
                return;
            }
            let fresh = (u64::from(ours) << COUNT_BITS) | 1;
            match word.compare_exchange_weak(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
                Ok(old) => {
                    self.retired.fetch_add(count_of(old) - 1, Ordering::AcqRel);
                    return;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Deposits since the budget was made: exact when no deposit is in
    /// flight.
    fn deposits(&self) -> u64 {
        let live: u64 = self
            .deposits
            .iter()
            .map(|word| count_of(word.load(Ordering::Acquire)))
            .sum();
        self.retired.load(Ordering::Acquire).wrapping_add(live)
    }

    /// Reserve plus live deposits less live withdrawals, in millionths of
    /// a retry, at the slot `w.now`.
    fn balance(&self, w: &Withdrawn) -> i128 {
        let now = stamp(w.now);
        let deposited: u64 = self
            .deposits
            .iter()
            .map(|word| word.load(Ordering::Acquire))
            .filter(|&word| age(now, stamp_of(word)) < SLOTS as i64)
            .map(count_of)
            .sum();
        let withdrawn: u64 = w.slots.iter().sum();
        i128::from(self.reserve) + i128::from(deposited) * i128::from(self.deposit)
            - i128::from(withdrawn) * i128::from(ONE_RETRY)
    }

    /// The withdrawals at the clock's current slot, the slots that expired
    /// cleared.
    fn lock_now(&self) -> MutexGuard<'_, Withdrawn> {
        self.lock_at(self.clock.now_ticks())
    }

    /// The withdrawals at slot `slot`, or at a later slot a thread that
    /// read the clock after this one has moved the window to.
    fn lock_at(&self, slot: u64) -> MutexGuard<'_, Withdrawn> {
        // Every update is a plain integer write: a panic elsewhere cannot
        // leave the window half-updated.
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        // A thread that read the clock before another took the lock keeps
        // the later slot: the window never moves back.
        if slot > w.now {
            let stale = (slot - w.now).min(SLOTS as u64);
            for k in 1..=stale {
                let i = index(w.now + k);
                w.slots[i] = 0;
            }
            w.now = slot;
        }
        w
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
        // ttl is at least 1 s: a slot is at least 100 ms.
        let slot = self.ttl / SLOTS as u32;
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                ttl: self.ttl,
                percent: self.percent,
                min_per_sec: self.min_per_sec,
                deposit,
                reserve,
                clock: CoarseClock::new(Instant::now(), slot),
                deposits: std::array::from_fn(|_| AtomicU64::new(0)),
                retired: AtomicU64::new(0),
                window: Mutex::new(Withdrawn {
                    slots: [0; SLOTS],
                    now: 0,
                }),
                withdrawals: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
            }),
        })
    }
}

#[cfg(all(test, buttress_loom))]
mod loom_models;

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

    /// Advances the paused clock and lets the budget's clock ticker run:
    /// `advance` yields once, but the current-thread scheduler polls the
    /// test's task again before the ticker that the timer woke, so without
    /// the second yield the next deposit would still see the slot before.
    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
        tokio::task::yield_now().await;
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
        advance(Duration::from_secs(5)).await;
        for _ in 0..4 {
            b.deposit();
        }
        assert_eq!(b.available(), 7);
        assert!(b.try_withdraw());
        assert_eq!(b.available(), 6);
        // The first ten deposits leave the window; the later ones and the
        // withdrawal stay.
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 1);
        // Everything has expired.
        advance(Duration::from_secs(10)).await;
        assert_eq!(b.available(), 0);
        // A long silence clears the whole window at once.
        for _ in 0..2 {
            b.deposit();
        }
        advance(Duration::from_secs(3600)).await;
        assert_eq!(b.available(), 0);
        let s = b.snapshot();
        assert_eq!((s.deposits, s.withdrawals), (16, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_count_in_the_slot_of_their_own_time() {
        let b = budget(50.0, 0);
        for _ in 0..20 {
            b.deposit();
        }
        advance(Duration::from_secs(5)).await;
        for _ in 0..20 {
            b.deposit();
        }
        assert_eq!(b.available(), 20);
        assert_eq!(b.snapshot().deposits, 40);
        // At t = 10 s the deposits of t = 0 expire, those of t = 5 s stay.
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 10);
        advance(Duration::from_millis(4_999)).await;
        assert_eq!(b.available(), 10, "still in the window at 14.999 s");
        advance(Duration::from_millis(1)).await;
        assert_eq!(b.available(), 0);
        assert_eq!(b.snapshot().deposits, 40);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_undoes_the_withdrawal_in_its_own_slot() {
        let b = budget(100.0, 0);
        b.deposit();
        b.deposit();
        let taken = b.withdraw().expect("two retries deposited");
        assert_eq!(b.available(), 1);
        advance(Duration::from_secs(5)).await;
        b.refund(taken);
        assert_eq!(b.available(), 2);
        assert_eq!(b.snapshot().withdrawals, 0);
        // Deposits and the refunded withdrawal were all of t = 0: at 10 s
        // nothing is left (a refund counted at 5 s would leave a retry).
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_after_its_slot_expired_changes_only_the_count() {
        let b = budget(100.0, 0);
        b.deposit();
        let taken = b.withdraw().expect("one retry deposited");
        advance(Duration::from_secs(10)).await;
        b.deposit();
        b.refund(taken);
        assert_eq!(b.available(), 1);
        assert_eq!(b.snapshot().withdrawals, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_older_than_the_ttl_add_nothing() {
        let b = budget(100.0, 0);
        for _ in 0..5 {
            b.deposit();
        }
        advance(Duration::from_secs(30)).await;
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
