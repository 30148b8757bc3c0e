//! Models of the retry budget under loom: every interleaving of the model
//! threads, within loom's preemption bound. Run with
//! `RUSTFLAGS="--cfg buttress_loom" cargo test -p buttress-retry --lib loom`
//! (the test command does).
//!
//! The threads drive the budget's own deposit words, `retired` count and
//! window lock. Each call names its slot of the budget's clock, as the
//! clock reads it, so a model also covers a thread that read the clock
//! before another moved a deposit word on to a later slot.

use loom::thread;

use super::*;

/// Checks `f` under loom with at most two preemptions per execution
/// (`LOOM_MAX_PREEMPTIONS` overrides it), which keeps each model to
/// seconds; the bugs loom finds in practice need one or two.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

/// A budget where one request deposits exactly one retry and there is no
/// reserve: its balance is deposits less withdrawals.
fn budget() -> RetryBudget {
    RetryBudget::builder()
        .percent(100.0)
        .min_per_sec(0)
        .build()
        .expect("a valid budget")
}

fn on_thread<T: Send + 'static>(
    budget: &RetryBudget,
    f: impl FnOnce(&RetryBudget) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let budget = budget.clone();
    thread::spawn(move || f(&budget))
}

/// The balance at `slot`, in retries.
fn balance(budget: &RetryBudget, slot: u64) -> i128 {
    let inner = &*budget.inner;
    let w = inner.lock_at(slot);
    inner.balance(&w) / i128::from(ONE_RETRY)
}

#[test]
fn loom_no_deposit_is_lost_when_a_slot_word_is_reused() {
    model(|| {
        let b = budget();
        // Slot 0 and slot 10 share a word (ten slots in the window).
        b.inner.deposit_at(0);
        b.inner.deposit_at(0);
        let threads = [
            on_thread(&b, |b| b.inner.deposit_at(10)),
            on_thread(&b, |b| b.inner.deposit_at(10)),
            // A thread that read the clock before the others moved on.
            on_thread(&b, |b| b.inner.deposit_at(0)),
        ];
        for t in threads {
            t.join().unwrap();
        }
        let inner = &*b.inner;
        assert_eq!(inner.deposits(), 5, "every deposit is counted once");
        let word = inner.deposits[index(10)].load(Ordering::Acquire);
        assert_eq!(stamp_of(word), stamp(10), "the word moved on to slot 10");
        let live = count_of(word);
        // The two of slot 10, and the late one of slot 0 if it landed
        // after the word moved on (it is kept: a deposit is never lost,
        // and counts no earlier than it was made).
        assert!((2..=3).contains(&live), "{live} live deposits");
        assert_eq!(inner.retired.load(Ordering::Acquire), 5 - live);
        assert_eq!(balance(&b, 10), i128::from(live as u32));
    });
}

#[test]
fn loom_concurrent_withdrawals_never_overdraw() {
    model(|| {
        let b = budget();
        let deposit = on_thread(&b, |b| b.inner.deposit_at(0));
        let w1 = on_thread(&b, |b| b.withdraw_at(0).is_some());
        let w2 = on_thread(&b, |b| b.withdraw_at(0).is_some());
        deposit.join().unwrap();
        let taken = u64::from(w1.join().unwrap()) + u64::from(w2.join().unwrap());
        assert!(taken <= 1, "{taken} retries from one deposit");
        assert_eq!(balance(&b, 0), 1 - i128::from(taken as u32));
        assert_eq!(b.inner.withdrawals.load(Ordering::Relaxed), taken);
        assert_eq!(b.inner.refusals.load(Ordering::Relaxed), 2 - taken);
    });
}

#[test]
fn loom_withdrawals_across_a_slot_rollover_never_go_below_zero() {
    model(|| {
        let b = budget();
        // One retry deposited at slot 0, which expires at slot 10.
        b.inner.deposit_at(0);
        let old = on_thread(&b, |b| b.withdraw_at(0).is_some());
        let new = on_thread(&b, |b| b.withdraw_at(10).is_some());
        let deposit = on_thread(&b, |b| b.inner.deposit_at(10));
        let old = old.join().unwrap();
        let new = new.join().unwrap();
        deposit.join().unwrap();
        // Each withdrawal took a retry deposited in its window: at most the
        // one of slot 0 and the one of slot 10.
        let taken = u64::from(old) + u64::from(new);
        assert_eq!(b.inner.withdrawals.load(Ordering::Relaxed), taken);
        let left = balance(&b, 10);
        assert!((0..=1).contains(&left), "a balance of {left} at slot 10");
        // The slot-10 deposit is in the window, so a balance of zero means
        // a withdrawal counted in slot 10 took it.
        if left == 0 {
            assert!(taken >= 1, "the slot-10 deposit vanished");
        }
    });
}
