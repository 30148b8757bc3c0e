//! The retry budget against a sequential model: deposits and withdrawals
//! count in the slot of their own time, expire a whole window later, and
//! every read sees every deposit already made, on one thread or many.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress_retry::RetryBudget;
use proptest::prelude::*;

const ONE_RETRY: i128 = 1_000_000;

fn budget(percent: f64, min_per_sec: u32, ttl: Duration) -> RetryBudget {
    RetryBudget::builder()
        .percent(percent)
        .min_per_sec(min_per_sec)
        .ttl(ttl)
        .build()
        .unwrap()
}

/// Advances the paused clock and lets the budget's clock ticker run:
/// `advance` yields once, but the current-thread scheduler polls the test's
/// task again before the ticker that the timer woke, so without the second
/// yield the next deposit would still see the slot before.
async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn a_deposit_expiring_does_not_take_later_deposits_with_it() {
    let b = budget(20.0, 0, Duration::from_secs(10));
    b.deposit();
    advance(Duration::from_millis(10_500)).await;
    for _ in 0..19 {
        b.deposit();
    }
    // The deposit of t = 0 has expired; 19 × 20 % = 3.8 retries remain.
    let s = b.snapshot();
    assert_eq!((s.available, s.deposits), (3, 20));
    let mut retries = 0;
    while b.try_withdraw() {
        retries += 1;
    }
    assert_eq!(retries, 3);
}

#[test]
fn outside_a_runtime_the_budget_reads_the_clock() {
    let b = budget(50.0, 0, Duration::from_secs(10));
    for _ in 0..4 {
        b.deposit();
    }
    assert!(b.try_withdraw());
    assert!(b.try_withdraw());
    assert!(!b.try_withdraw());
    let s = b.snapshot();
    assert_eq!(
        (s.available, s.deposits, s.withdrawals, s.refusals),
        (0, 4, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn the_clock_ticker_ends_with_the_budget() {
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let b = budget(20.0, 10, Duration::from_secs(10));
    b.deposit();
    tokio::task::yield_now().await;
    assert_eq!(alive(), 1, "the first deposit started the ticker");
    let clone = b.clone();
    drop(b);
    advance(Duration::from_secs(1)).await;
    assert_eq!(alive(), 1, "a clone keeps the budget");
    drop(clone);
    // The ticker holds no reference while it waits: it ends at its next
    // tick (one slot, a tenth of the ttl).
    advance(Duration::from_secs(1)).await;
    assert_eq!(alive(), 0);
}

/// The budget as its docs define it, one event at a time: every deposit
/// and withdrawal is kept with its slot number and counts while its slot is
/// one of the last ten.
struct Model {
    deposit: i128,
    reserve: i128,
    slot_nanos: u128,
    now_nanos: u128,
    /// (slot number, +deposit or -one retry)
    entries: Vec<(u128, i128)>,
    deposits: u64,
    withdrawals: u64,
    refusals: u64,
}

impl Model {
    fn new(percent_hundredths: u32, min_per_sec: u32, ttl_ms: u64) -> Self {
        Self {
            // percent / 100 of a retry, in millionths.
            deposit: i128::from(percent_hundredths) * 100,
            reserve: i128::from(min_per_sec) * i128::from(ttl_ms) * 1000,
            slot_nanos: u128::from(ttl_ms) * 1_000_000 / 10,
            now_nanos: 0,
            entries: Vec::new(),
            deposits: 0,
            withdrawals: 0,
            refusals: 0,
        }
    }

    fn slot(&self) -> u128 {
        self.now_nanos / self.slot_nanos
    }

    fn balance(&self) -> i128 {
        let now = self.slot();
        self.reserve
            + self
                .entries
                .iter()
                .filter(|(slot, _)| slot + 10 > now)
                .map(|(_, amount)| amount)
                .sum::<i128>()
    }

    fn available(&self) -> u64 {
        u64::try_from(self.balance() / ONE_RETRY).unwrap_or(0)
    }

    fn deposit(&mut self) {
        self.entries.push((self.slot(), self.deposit));
        self.deposits += 1;
    }

    fn withdraw(&mut self) -> bool {
        if self.balance() >= ONE_RETRY {
            self.entries.push((self.slot(), -ONE_RETRY));
            self.withdrawals += 1;
            true
        } else {
            self.refusals += 1;
            false
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Deposit(u32),
    Withdraw,
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..4_000).prop_map(Op::Advance),
        3 => (1u32..40).prop_map(Op::Deposit),
        3 => Just(Op::Withdraw),
        1 => Just(Op::Snapshot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn withdrawals_and_snapshots_match_the_sequential_model(
        percent_hundredths in 0u32..=30_000,
        min_per_sec in 0u32..3,
        ttl_ms in 1_000u64..=20_000,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let b = budget(
                f64::from(percent_hundredths) / 100.0,
                min_per_sec,
                Duration::from_millis(ttl_ms),
            );
            let mut model = Model::new(percent_hundredths, min_per_sec, ttl_ms);
            for op in ops {
                match op {
                    Op::Advance(ms) => {
                        advance(Duration::from_millis(ms)).await;
                        model.now_nanos += u128::from(ms) * 1_000_000;
                    }
                    Op::Deposit(n) => {
                        for _ in 0..n {
                            b.deposit();
                            model.deposit();
                        }
                    }
                    Op::Withdraw => {
                        prop_assert_eq!(b.try_withdraw(), model.withdraw());
                    }
                    Op::Snapshot => {
                        let s = b.snapshot();
                        prop_assert_eq!(
                            (s.available, s.deposits, s.withdrawals, s.refusals),
                            (model.available(), model.deposits, model.withdrawals, model.refusals)
                        );
                    }
                }
            }
            let s = b.snapshot();
            prop_assert_eq!(
                (s.available, s.deposits, s.withdrawals, s.refusals),
                (model.available(), model.deposits, model.withdrawals, model.refusals)
            );
            Ok(())
        })?;
    }
}

#[test]
fn concurrent_deposits_and_withdrawals_are_all_counted() {
    const TASKS: u64 = 8;
    const DEPOSITS: u64 = 5_000;
    const WITHDRAWALS: u64 = 200;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    // A minute-long window: everything the test does stays in it.
    let b = budget(12.5, 0, Duration::from_secs(60));
    let granted = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let b = b.clone();
                let granted = granted.clone();
                tokio::spawn(async move {
                    for i in 0..DEPOSITS {
                        b.deposit();
                        if i % (DEPOSITS / WITHDRAWALS) == 0 && b.try_withdraw() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                        // Let the task move to another worker now and then.
                        if (i + t) % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let granted = granted.load(Ordering::Relaxed);
    let s = b.snapshot();
    let deposits = TASKS * DEPOSITS;
    assert_eq!(s.deposits, deposits);
    assert_eq!(s.withdrawals, granted);
    assert_eq!(s.refusals, TASKS * WITHDRAWALS - granted);
    // 12.5 % of every deposit made, less every retry granted.
    assert_eq!(s.available, deposits / 8 - granted);
    assert_eq!(b.available(), deposits / 8 - granted);
}

#[test]
fn deposits_racing_across_slot_boundaries_are_all_counted() {
    const TASKS: u64 = 8;
    const ROUNDS: u64 = 30;
    const PER_ROUND: u64 = 200;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    // 100 ms slots: the tasks cross a slot boundary every few rounds and
    // race to move the words on to the new slot.
    let b = budget(100.0, 0, Duration::from_secs(1));
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        for _ in 0..PER_ROUND {
                            b.deposit();
                        }
                        tokio::time::sleep(Duration::from_millis(7)).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(b.snapshot().deposits, TASKS * ROUNDS * PER_ROUND);
        // Once everything has expired, only new deposits count.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(b.available(), 0);
        for _ in 0..5 {
            b.deposit();
        }
        let s = b.snapshot();
        assert_eq!(
            (s.available, s.deposits),
            (5, TASKS * ROUNDS * PER_ROUND + 5)
        );
    });
}
