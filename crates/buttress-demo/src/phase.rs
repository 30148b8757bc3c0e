//! The upstream's phases: healthy, degraded, recovered.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A phase of the run, with the upstream's behaviour in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Mostly fast, some slow calls, some errors and some shedding.
    Healthy,
    /// Half the calls it serves are slow; 15 % fail and 20 % are shed.
    Degraded,
    /// Back to the healthy rates.
    Recovered,
}

impl Phase {
    /// Percentage of the calls it serves (every answer but a 503) that
    /// take 300–800 ms instead of 5–40 ms.
    pub(crate) fn slow_percent(self) -> u64 {
        match self {
            Phase::Healthy | Phase::Recovered => 8,
            Phase::Degraded => 50,
        }
    }

    /// Percentage of calls answered with 500: a failure that a retry would
    /// not fix.
    pub(crate) fn error_percent(self) -> u64 {
        match self {
            Phase::Healthy | Phase::Recovered => 5,
            Phase::Degraded => 15,
        }
    }

    /// Percentage of calls shed at once with 503 and `Retry-After: 0`: a
    /// transient refusal, which the gateway retries.
    pub(crate) fn unavailable_percent(self) -> u64 {
        match self {
            Phase::Healthy | Phase::Recovered => 5,
            Phase::Degraded => 20,
        }
    }

    /// The name printed in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Degraded => "degraded",
            Phase::Recovered => "recovered",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The clock of a run, shared by the upstream and the report: which phase
/// is it?
///
/// Phases change on whole seconds, so each table row belongs to one phase:
/// healthy for the first 30 % of the run, degraded until 65 %, then
/// recovered.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    base: Instant,
    /// Nanoseconds from `base` to the start of the run.
    start_offset: Arc<AtomicU64>,
    secs: u64,
}

impl Timeline {
    /// A run of `secs` seconds, starting now.
    pub(crate) fn new(secs: u64) -> Self {
        Self {
            base: Instant::now(),
            start_offset: Arc::new(AtomicU64::new(0)),
            secs,
        }
    }

    /// Starts the run again from now (every clone sees it); returns the
    /// new start.
    pub(crate) fn restart(&self) -> Instant {
        let now = Instant::now();
        let offset = u64::try_from((now - self.base).as_nanos()).unwrap_or(u64::MAX);
        self.start_offset.store(offset, Ordering::Relaxed);
        now
    }

    /// Starts the run again so that it is `phase`'s first second now (every
    /// clone sees it); returns when `phase` ends, counted from now.
    pub(crate) fn restart_in(&self, phase: Phase) -> Duration {
        let (healthy_until, degraded_until) = self.boundaries();
        let (from, until) = match phase {
            Phase::Healthy => (0, healthy_until),
            Phase::Degraded => (healthy_until, degraded_until),
            Phase::Recovered => (degraded_until, self.secs.max(degraded_until + 1)),
        };
        let start = Instant::now()
            .checked_sub(Duration::from_secs(from))
            .unwrap_or(self.base)
            .max(self.base);
        let offset = u64::try_from((start - self.base).as_nanos()).unwrap_or(u64::MAX);
        self.start_offset.store(offset, Ordering::Relaxed);
        Duration::from_secs(until - from)
    }

    /// Time since the start of the run.
    pub(crate) fn elapsed(&self) -> Duration {
        let start = self.base + Duration::from_nanos(self.start_offset.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(start)
    }

    /// The phase now.
    pub(crate) fn phase(&self) -> Phase {
        self.phase_at(self.elapsed())
    }

    /// The phase `elapsed` into the run.
    pub(crate) fn phase_at(&self, elapsed: Duration) -> Phase {
        let (healthy_until, degraded_until) = self.boundaries();
        let secs = elapsed.as_secs();
        if secs < healthy_until {
            Phase::Healthy
        } else if secs < degraded_until {
            Phase::Degraded
        } else {
            Phase::Recovered
        }
    }

    /// The ends of the healthy and the degraded phase, in whole seconds.
    pub(crate) fn boundaries(&self) -> (u64, u64) {
        let healthy_until = ((self.secs * 30 + 50) / 100).max(1);
        let degraded_until = ((self.secs * 65 + 50) / 100).max(healthy_until + 1);
        (healthy_until, degraded_until)
    }

    /// Length of the run in seconds.
    pub(crate) fn secs(&self) -> u64 {
        self.secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_change_on_whole_seconds() {
        assert_eq!(Timeline::new(20).boundaries(), (6, 13));
        assert_eq!(Timeline::new(8).boundaries(), (2, 5));
        assert_eq!(Timeline::new(3).boundaries(), (1, 2));
        let t = Timeline::new(20);
        assert_eq!(t.phase_at(Duration::from_millis(5_999)), Phase::Healthy);
        assert_eq!(t.phase_at(Duration::from_secs(6)), Phase::Degraded);
        assert_eq!(t.phase_at(Duration::from_secs(13)), Phase::Recovered);
        assert_eq!(t.phase_at(Duration::from_secs(25)), Phase::Recovered);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_in_a_phase_starts_at_its_first_second() {
        let t = Timeline::new(20);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(t.restart_in(Phase::Degraded), Duration::from_secs(7));
        assert_eq!(t.phase(), Phase::Degraded);
        assert_eq!(t.elapsed(), Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(t.phase(), Phase::Recovered);
    }
}
