//! The algorithms, as synchronous state machines driven by a time argument
//! (nanoseconds since the limiter's base instant).

use std::collections::VecDeque;
use std::fmt;

use buttress_core::ConfigError;

use crate::rate::{Rate, MAX_PERMITS};
use crate::KIND;

/// How a limiter counts. Each variant documents the most it admits in any
/// interval of time, in permits (a call costs one permit unless a cost
/// extractor says otherwise).
///
/// With `rate` = *n* per *P*, *T* = *P*/*n* rounded up to the nanosecond
/// ([`Rate::interval`]) and `burst` = *b*:
///
/// | algorithm | state per limiter (or key) | the most admitted in any interval of length *L* |
/// |---|---|---|
/// | [`Gcra`](Self::Gcra) (default) | one `u64` (one atomic word when global) | *b* + ⌊*L*/*T*⌋ |
/// | [`TokenBucket`](Self::TokenBucket) | two `u64` under a lock | *b* + ⌊*L*/*T*⌋ (the same decisions as GCRA) |
/// | [`FixedWindow`](Self::FixedWindow) | two `u64` under a lock | *n* per aligned window [*kP*, (*k*+1)*P*); 2*n* in any interval of length *P* |
/// | [`SlidingLog`](Self::SlidingLog) | one entry per admitted call in the last *P* | *n* in any half-open interval of length *P* (exact) |
/// | [`SlidingWindow`](Self::SlidingWindow) | three `u64` under a lock | *n* per aligned window; at most 2*n* − 1 in any interval of length *P* |
///
/// The windows count *n* = `rate.permits()` per window of *P* =
/// `rate.period()` and take no burst. Windows are aligned on the limiter's
/// creation time.
///
/// ```
/// use buttress_rate_limit::Algorithm;
///
/// assert_eq!(Algorithm::default(), Algorithm::Gcra);
/// assert_eq!(Algorithm::SlidingWindow.as_str(), "sliding_window");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Algorithm {
    /// The generic cell rate algorithm: a token bucket of `burst` permits
    /// refilled continuously at the rate, kept as one "theoretical arrival
    /// time". Exact, O(1), one compare-and-swap per global decision.
    #[default]
    Gcra,
    /// A token bucket of `burst` permits refilled continuously at the rate,
    /// kept as a level and a time. It makes exactly the decisions of
    /// [`Gcra`](Self::Gcra) (a test checks it); it exists for users who
    /// think in tokens, and uses a lock where GCRA uses an atomic.
    TokenBucket,
    /// `permits` per aligned window of `period`; the count starts again at
    /// each window. Cheap and easy to explain, but a client can pass twice
    /// the rate across a window boundary.
    FixedWindow,
    /// Remembers the time of every admitted permit in the last `period`:
    /// never more than `permits` in any interval of that length. Memory
    /// grows with `permits` (16 bytes per admitted call in the window, per
    /// key), so `permits` is limited to 100 000 for this algorithm.
    SlidingLog,
    /// A fixed window that also counts the previous window, weighted by how
    /// much of it still overlaps the last `period` (the "sliding window
    /// counter"). Close to the sliding log at the memory of a fixed window.
    SlidingWindow,
}

impl Algorithm {
    /// The algorithm's name in snake case, as in snapshots and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
        }
    }

    fn is_window(self) -> bool {
        matches!(
            self,
            Algorithm::FixedWindow | Algorithm::SlidingLog | Algorithm::SlidingWindow
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most permits a sliding log may hold per period.
pub const MAX_SLIDING_LOG_PERMITS: u64 = 100_000;

/// The longest `burst × interval` accepted: about 146 years, so that every
/// sum of times below fits in a `u64` of nanoseconds.
const MAX_SPAN: u64 = 1 << 62;

/// A limiter's numbers, validated and in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) algorithm: Algorithm,
    pub(crate) rate: Rate,
    /// Permits per window (windows) or per period.
    pub(crate) permits: u64,
    pub(crate) period: u64,
    /// The bucket's size (GCRA, token bucket); `permits` for windows.
    pub(crate) burst: u64,
    /// `period / permits`, rounded up.
    pub(crate) interval: u64,
    /// `burst × interval`.
    pub(crate) span: u64,
}

impl Params {
    pub(crate) fn new(
        algorithm: Algorithm,
        rate: Rate,
        burst: Option<u64>,
    ) -> Result<Self, ConfigError> {
        rate.validate("rate")?;
        if algorithm.is_window() {
            if burst.is_some_and(|b| b != rate.permits()) {
                return Err(ConfigError::new(
                    KIND,
                    "burst",
                    format!(
                        "a {algorithm} limiter admits `rate.permits` per window and takes no burst; \
                         leave burst unset or use gcra / token_bucket"
                    ),
                ));
            }
            if algorithm == Algorithm::SlidingLog && rate.permits() > MAX_SLIDING_LOG_PERMITS {
                return Err(ConfigError::new(
                    KIND,
                    "rate",
                    format!(
                        "a sliding log keeps one entry per admitted call: at most \
                         {MAX_SLIDING_LOG_PERMITS} permits per period, got {}; use sliding_window",
                        rate.permits()
                    ),
                ));
            }
        }
        let burst = burst.unwrap_or(rate.permits());
        if burst == 0 {
            return Err(ConfigError::new(KIND, "burst", "must be at least 1"));
        }
        if burst > MAX_PERMITS {
            return Err(ConfigError::new(
                KIND,
                "burst",
                format!("must be at most {MAX_PERMITS}, got {burst}"),
            ));
        }
        let interval = rate.interval_nanos();
        let span = burst
            .checked_mul(interval)
            .filter(|s| *s <= MAX_SPAN)
            .ok_or_else(|| {
                ConfigError::new(
                    KIND,
                    "burst",
                    format!(
                        "burst × interval ({burst} × {:?}) must be at most 146 years",
                        rate.interval()
                    ),
                )
            })?;
        Ok(Params {
            algorithm,
            rate,
            permits: rate.permits(),
            period: rate.period_nanos(),
            burst,
            interval,
            span,
        })
    }

    /// The most permits one decision can ever admit.
    pub(crate) fn capacity(&self) -> u64 {
        self.burst
    }

    /// GCRA: the new theoretical arrival time if `cost` permits are
    /// admitted at `now` leaving at least `keep` of the burst, else the time
    /// until they would be (`None`: never, the cost exceeds what may ever
    /// be taken).
    #[inline]
    pub(crate) fn gcra(
        &self,
        tat: u64,
        now: u64,
        cost: u64,
        keep: u64,
    ) -> Result<u64, Option<u64>> {
        let usable = self.burst.saturating_sub(keep);
        if cost > usable {
            return Err(None);
        }
        // cost × interval <= span <= 2^62 and tat, now < 2^63: no overflow.
        let new_tat = tat.max(now) + cost * self.interval;
        let allowed = usable * self.interval;
        let ahead = new_tat - now;
        if ahead <= allowed {
            Ok(new_tat)
        } else {
            Err(Some(ahead - allowed))
        }
    }

    /// GCRA levels at `now`.
    pub(crate) fn gcra_levels(&self, tat: u64, now: u64) -> Levels {
        let debt = tat.saturating_sub(now);
        Levels {
            remaining: (self.span.saturating_sub(debt)) / self.interval,
            reset: debt,
        }
    }
}

/// A limiter's state at one time: what is left and when it is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Levels {
    /// Permits that could be taken now.
    pub(crate) remaining: u64,
    /// Nanoseconds until the limiter is back to full.
    pub(crate) reset: u64,
}

/// A decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Admitted: the permits are taken.
    Allow,
    /// Denied; the nanoseconds until the same cost would be admitted
    /// (`None`: never).
    Deny(Option<u64>),
}

/// The state of one limiter under a lock (or of one key in the keyed map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// The theoretical arrival time.
    Gcra(u64),
    /// The bucket's level, in nanoseconds of refill (`interval` per
    /// permit), and the time it was last brought up to date.
    Bucket { level: u64, last: u64 },
    /// The start of the current window and the permits taken in it.
    Fixed { start: u64, count: u64 },
    /// Admitted permits in the last period.
    Log(Box<Log>),
    /// The start of the current window and the permits taken in it and in
    /// the one before.
    Sliding { start: u64, prev: u64, curr: u64 },
}

/// The entries of a sliding log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Log {
    /// (time, permits), oldest first.
    entries: VecDeque<(u64, u64)>,
    /// The sum of the permits of `entries`.
    sum: u64,
    /// The latest time seen: times handed in out of order are raised to it.
    last: u64,
}

impl State {
    /// A full limiter at `now`.
    pub(crate) fn new(p: &Params, now: u64) -> Self {
        match p.algorithm {
            Algorithm::Gcra => State::Gcra(0),
            Algorithm::TokenBucket => State::Bucket {
                level: p.span,
                last: now,
            },
            Algorithm::FixedWindow => State::Fixed {
                start: now - now % p.period,
                count: 0,
            },
            Algorithm::SlidingLog => State::Log(Box::default()),
            Algorithm::SlidingWindow => State::Sliding {
                start: now - now % p.period,
                prev: 0,
                curr: 0,
            },
        }
    }

    /// Takes `cost` permits at `now` if at least `keep` are left afterwards.
    ///
    /// A `now` earlier than a time this state has already seen (two threads
    /// that read the clock in one order and reach the lock in the other)
    /// is taken as that time: decisions never go back in time.
    pub(crate) fn acquire(&mut self, p: &Params, now: u64, cost: u64, keep: u64) -> Verdict {
        match self {
            State::Gcra(tat) => match p.gcra(*tat, now, cost, keep) {
                Ok(new) => {
                    *tat = new;
                    Verdict::Allow
                }
                Err(wait) => Verdict::Deny(wait),
            },
            State::Bucket { level, last } => {
                let now = now.max(*last);
                *level = level.saturating_add(now - *last).min(p.span);
                *last = now;
                let usable = p.burst.saturating_sub(keep);
                if cost > usable {
                    return Verdict::Deny(None);
                }
                let need = (cost + keep) * p.interval;
                if *level >= need {
                    *level -= cost * p.interval;
                    Verdict::Allow
                } else {
                    Verdict::Deny(Some(need - *level))
                }
            }
            State::Fixed { start, count } => {
                let (s, passed) = advance(*start, now, p.period);
                if passed > 0 {
                    *start = s;
                    *count = 0;
                }
                let usable = p.permits.saturating_sub(keep);
                if cost > usable {
                    return Verdict::Deny(None);
                }
                if *count + cost <= usable {
                    *count += cost;
                    Verdict::Allow
                } else {
                    // The next window starts empty.
                    let next = *start + p.period;
                    Verdict::Deny(Some(next.saturating_sub(now).max(1)))
                }
            }
            State::Log(log) => log.acquire(p, now, cost, keep),
            State::Sliding { start, prev, curr } => {
                let (s, passed) = advance(*start, now, p.period);
                (*prev, *curr) = slide(*prev, *curr, passed);
                *start = s;
                let usable = p.permits.saturating_sub(keep);
                if cost > usable {
                    return Verdict::Deny(None);
                }
                let elapsed = now.saturating_sub(*start).min(p.period - 1);
                if sliding_fits(p.period, *prev, *curr + cost, usable, elapsed) {
                    *curr += cost;
                    return Verdict::Allow;
                }
                Verdict::Deny(Some(sliding_wait(
                    p.period, *prev, *curr, cost, usable, elapsed,
                )))
            }
        }
    }

    /// What is left at `now`, without changing anything.
    pub(crate) fn levels(&self, p: &Params, now: u64) -> Levels {
        match self {
            State::Gcra(tat) => p.gcra_levels(*tat, now),
            State::Bucket { level, last } => {
                let level = level.saturating_add(now.saturating_sub(*last)).min(p.span);
                Levels {
                    remaining: level / p.interval,
                    reset: p.span - level,
                }
            }
            State::Fixed { start, count } => {
                let (_, passed) = advance(*start, now, p.period);
                if passed > 0 || *count == 0 {
                    Levels {
                        remaining: p.permits,
                        reset: 0,
                    }
                } else {
                    Levels {
                        remaining: p.permits.saturating_sub(*count),
                        reset: (*start + p.period).saturating_sub(now),
                    }
                }
            }
            State::Log(log) => log.levels(p, now),
            State::Sliding { start, prev, curr } => {
                let (start, passed) = advance(*start, now, p.period);
                let (prev, curr) = slide(*prev, *curr, passed);
                if prev == 0 && curr == 0 {
                    return Levels {
                        remaining: p.permits,
                        reset: 0,
                    };
                }
                let elapsed = now.saturating_sub(start).min(p.period - 1);
                // permits × P − prev × (P − e) − curr × P, in permit-periods.
                let used = u128::from(prev) * u128::from(p.period - elapsed)
                    + u128::from(curr) * u128::from(p.period);
                let total = u128::from(p.permits) * u128::from(p.period);
                let remaining = (total.saturating_sub(used) / u128::from(p.period)) as u64;
                // Empty once the current window has passed too (then both
                // counts have slid out).
                let reset = if curr > 0 {
                    (start + 2 * p.period).saturating_sub(now)
                } else {
                    (start + p.period).saturating_sub(now)
                };
                Levels { remaining, reset }
            }
        }
    }

    /// `true` when the state at `now` is that of a new, full limiter, so
    /// that dropping it (evicting its key) changes no decision.
    pub(crate) fn is_full(&self, p: &Params, now: u64) -> bool {
        match self {
            State::Gcra(tat) => *tat <= now,
            State::Bucket { level, last } => {
                level.saturating_add(now.saturating_sub(*last)) >= p.span
            }
            State::Fixed { start, count } => *count == 0 || advance(*start, now, p.period).1 > 0,
            State::Log(log) => log.is_empty_at(p, now),
            State::Sliding { start, curr, prev } => {
                let passed = advance(*start, now, p.period).1;
                slide(*prev, *curr, passed) == (0, 0)
            }
        }
    }
}

/// The start of the window `now` is in, and how many windows passed since
/// the one starting at `start`. A window keeps its start when the period
/// changes (it just gets the new length), and a `now` before `start` (a
/// thread that read the clock earlier) counts in the current window.
fn advance(start: u64, now: u64, period: u64) -> (u64, u64) {
    if now < start.saturating_add(period) {
        return (start, 0);
    }
    let passed = (now - start) / period;
    (start + passed * period, passed)
}

/// The counts of a sliding window after `passed` windows.
fn slide(prev: u64, curr: u64, passed: u64) -> (u64, u64) {
    match passed {
        0 => (prev, curr),
        1 => (curr, 0),
        _ => (0, 0),
    }
}

/// `prev × (P − e) + curr × P <= usable × P`: the weighted count with
/// `curr` permits in the current window fits.
fn sliding_fits(period: u64, prev: u64, curr: u64, usable: u64, elapsed: u64) -> bool {
    let weighted =
        u128::from(prev) * u128::from(period - elapsed) + u128::from(curr) * u128::from(period);
    weighted <= u128::from(usable) * u128::from(period)
}

/// Nanoseconds from `elapsed` into the current window until `cost` more
/// permits fit (`cost <= usable`).
fn sliding_wait(period: u64, prev: u64, curr: u64, cost: u64, usable: u64, elapsed: u64) -> u64 {
    let p = u128::from(period);
    if curr + cost <= usable {
        // Later in this window, when enough of the previous one slid out:
        // prev × (P − e') <= (usable − curr − cost) × P.
        let room = u128::from(usable - curr - cost) * p;
        let max_tail = room / u128::from(prev.max(1));
        let e = (p - max_tail.min(p)) as u64;
        return e.saturating_sub(elapsed).max(1);
    }
    // In the next window, where the current one is the previous:
    // curr × (P − e'') <= (usable − cost) × P.
    let to_next = period - elapsed;
    if curr == 0 {
        return to_next;
    }
    let room = u128::from(usable - cost) * p;
    let max_tail = room / u128::from(curr);
    let e = (p - max_tail.min(p)) as u64;
    to_next + e
}

impl Log {
    fn expire(&mut self, p: &Params, now: u64) {
        while let Some(&(t, n)) = self.entries.front() {
            if t + p.period <= now {
                self.entries.pop_front();
                self.sum -= n;
            } else {
                break;
            }
        }
    }

    fn acquire(&mut self, p: &Params, now: u64, cost: u64, keep: u64) -> Verdict {
        let now = now.max(self.last);
        self.last = now;
        self.expire(p, now);
        let usable = p.permits.saturating_sub(keep);
        if cost > usable {
            return Verdict::Deny(None);
        }
        if self.sum + cost <= usable {
            self.entries.push_back((now, cost));
            self.sum += cost;
            return Verdict::Allow;
        }
        // The first time enough entries have expired.
        let mut sum = self.sum;
        for &(t, n) in &self.entries {
            sum -= n;
            if sum + cost <= usable {
                return Verdict::Deny(Some((t + p.period).saturating_sub(now).max(1)));
            }
        }
        // Unreachable: with every entry gone the cost fits.
        Verdict::Deny(Some(p.period))
    }

    fn levels(&self, p: &Params, now: u64) -> Levels {
        let live = self.entries.iter().filter(|(t, _)| t + p.period > now);
        let mut sum = 0;
        let mut newest = None;
        for &(t, n) in live {
            sum += n;
            newest = Some(t);
        }
        Levels {
            remaining: p.permits.saturating_sub(sum),
            reset: newest.map_or(0, |t| (t + p.period).saturating_sub(now)),
        }
    }

    fn is_empty_at(&self, p: &Params, now: u64) -> bool {
        self.entries
            .back()
            .is_none_or(|&(t, _)| t + p.period <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn params(alg: Algorithm, n: u64, period_ms: u64, burst: Option<u64>) -> Params {
        Params::new(alg, Rate::new(n, Duration::from_millis(period_ms)), burst).unwrap()
    }

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        let p = params(Algorithm::Gcra, 10, 1000, Some(3));
        let mut s = State::new(&p, 0);
        for _ in 0..3 {
            assert_eq!(s.acquire(&p, 0, 1, 0), Verdict::Allow);
        }
        assert_eq!(s.acquire(&p, 0, 1, 0), Verdict::Deny(Some(100 * MS)));
        assert_eq!(s.acquire(&p, 100 * MS, 1, 0), Verdict::Allow);
        assert_eq!(s.acquire(&p, 100 * MS, 1, 0), Verdict::Deny(Some(100 * MS)));
        // More than the burst can never pass.
        assert_eq!(s.acquire(&p, 10_000 * MS, 4, 0), Verdict::Deny(None));
        assert!(s.is_full(&p, 10_000 * MS));
    }

    #[test]
    fn keep_holds_back_part_of_the_burst() {
        let p = params(Algorithm::Gcra, 10, 1000, Some(4));
        let mut s = State::new(&p, 0);
        assert_eq!(s.acquire(&p, 0, 1, 2), Verdict::Allow);
        assert_eq!(s.acquire(&p, 0, 1, 2), Verdict::Allow);
        assert!(matches!(s.acquire(&p, 0, 1, 2), Verdict::Deny(Some(_))));
        assert_eq!(s.acquire(&p, 0, 1, 0), Verdict::Allow);
        assert_eq!(s.acquire(&p, 0, 1, 0), Verdict::Allow);
        assert_eq!(s.acquire(&p, 0, 3, 2), Verdict::Deny(None));
    }

    #[test]
    fn fixed_window_counts_per_window() {
        let p = params(Algorithm::FixedWindow, 2, 1000, None);
        let mut s = State::new(&p, 0);
        assert_eq!(s.acquire(&p, 10 * MS, 1, 0), Verdict::Allow);
        assert_eq!(s.acquire(&p, 20 * MS, 1, 0), Verdict::Allow);
        assert_eq!(s.acquire(&p, 30 * MS, 1, 0), Verdict::Deny(Some(970 * MS)));
        assert_eq!(s.acquire(&p, 1000 * MS, 2, 0), Verdict::Allow);
        assert_eq!(
            s.levels(&p, 1500 * MS),
            Levels {
                remaining: 0,
                reset: 500 * MS
            }
        );
    }

    #[test]
    fn sliding_log_is_exact() {
        let p = params(Algorithm::SlidingLog, 2, 1000, None);
        let mut s = State::new(&p, 0);
        assert_eq!(s.acquire(&p, 0, 1, 0), Verdict::Allow);
        assert_eq!(s.acquire(&p, 400 * MS, 1, 0), Verdict::Allow);
        assert_eq!(s.acquire(&p, 999 * MS, 1, 0), Verdict::Deny(Some(MS)));
        assert_eq!(s.acquire(&p, 1000 * MS, 1, 0), Verdict::Allow);
        assert_eq!(
            s.acquire(&p, 1000 * MS, 1, 0),
            Verdict::Deny(Some(400 * MS))
        );
        assert!(!s.is_full(&p, 1999 * MS));
        assert!(s.is_full(&p, 2000 * MS));
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let p = params(Algorithm::SlidingWindow, 10, 1000, None);
        let mut s = State::new(&p, 0);
        for _ in 0..10 {
            assert_eq!(s.acquire(&p, 900 * MS, 1, 0), Verdict::Allow);
        }
        // At 1.5 s half of the previous window still counts: 5 fit.
        for _ in 0..5 {
            assert_eq!(s.acquire(&p, 1500 * MS, 1, 0), Verdict::Allow);
        }
        let Verdict::Deny(Some(wait)) = s.acquire(&p, 1500 * MS, 1, 0) else {
            panic!("admitted over the weighted count")
        };
        // prev × (P − e) + 6 P <= 10 P  <=>  e >= 0.6 P.
        assert_eq!(wait, 100 * MS);
        assert_eq!(s.acquire(&p, 1500 * MS + wait, 1, 0), Verdict::Allow);
    }

    #[test]
    fn token_bucket_matches_gcra_on_a_fixed_sequence() {
        let g = params(Algorithm::Gcra, 5, 1000, Some(3));
        let b = params(Algorithm::TokenBucket, 5, 1000, Some(3));
        let (mut sg, mut sb) = (State::new(&g, 0), State::new(&b, 0));
        let mut t = 0;
        for i in 0..200u64 {
            t += (i * 7919) % (150 * MS);
            let cost = 1 + i % 3;
            let keep = i % 2;
            assert_eq!(
                sg.acquire(&g, t, cost, keep),
                sb.acquire(&b, t, cost, keep),
                "step {i}"
            );
        }
    }

    #[test]
    fn windows_refuse_a_burst() {
        let e = Params::new(Algorithm::FixedWindow, Rate::per_second(5), Some(10)).unwrap_err();
        assert_eq!(e.field(), "burst");
        let e = Params::new(Algorithm::SlidingLog, Rate::per_second(200_000), None).unwrap_err();
        assert_eq!(e.field(), "rate");
        assert!(Params::new(Algorithm::Gcra, Rate::per_second(5), Some(0)).is_err());
        assert!(Params::new(Algorithm::Gcra, Rate::per_hour(1), Some(MAX_PERMITS)).is_err());
    }
}
