//! The live table, the totals and what they mean.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, Instant};

use crate::gateway::{
    BreakCounts, Observer, BREAKER_OPEN, BREAKER_PROBES, BREAKER_THRESHOLD, BREAKER_WINDOW,
    MAX_CONCURRENT, MAX_QUEUE, MAX_WAIT, UPSTREAM_TIMEOUT,
};
use crate::load::{Load, Outcome, Sample, CLIENT_TIMEOUT};
use crate::phase::{Phase, Timeline};
use crate::upstream::{FAST_MS, SLOW_MS};

/// How often the bulkhead's occupancy is sampled for its peak.
const OCCUPANCY_SAMPLE: Duration = Duration::from_millis(10);
/// Width of the live table, for the rule under its header.
const TABLE_WIDTH: usize = 99;

/// Requests by how they ended, as the clients saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every finished request.
    pub total: u64,
    /// 200.
    pub ok: u64,
    /// 500: the upstream failed and the gateway passed it on.
    pub upstream_errors: u64,
    /// 503: shed by the bulkhead or rejected by the open circuit (the
    /// split is in [`Summary`], counted from the layers' events).
    pub shed: u64,
    /// 504: the gateway's timeout cut the upstream call.
    pub timeouts: u64,
    /// Any other status, connection errors and client-side timeouts.
    pub other: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        self.total += 1;
        *match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::UpstreamError => &mut self.upstream_errors,
            Outcome::Shed => &mut self.shed,
            Outcome::TimedOut => &mut self.timeouts,
            Outcome::Other => &mut self.other,
        } += 1;
    }

    fn merge(&mut self, other: &Counts) {
        self.total += other.total;
        self.ok += other.ok;
        self.upstream_errors += other.upstream_errors;
        self.shed += other.shed;
        self.timeouts += other.timeouts;
        self.other += other.other;
    }

    /// `part` as a percentage of the total.
    fn percent(&self, part: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            part as f64 * 100.0 / self.total as f64
        }
    }
}

/// One phase of the run, summed up.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSummary {
    /// `"healthy"`, `"degraded"` or `"recovered"`.
    pub phase: &'static str,
    /// Seconds of the run spent in it.
    pub seconds: u64,
    /// Requests that finished in it.
    pub counts: Counts,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Calls rejected by the open circuit in it (from the breaker's events).
    pub circuit_rejected: u64,
    /// Times the breaker opened in it (from the breaker's events).
    pub circuit_opened: u64,
    /// Times the breaker closed again in it (from the breaker's events).
    pub circuit_closed: u64,
}

/// What happened during a run; `Display` prints the final report.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Summary {
    /// From the start of the load to the end of the last request.
    pub elapsed: Duration,
    /// Number of clients.
    pub concurrency: usize,
    /// Requests by how they ended.
    pub counts: Counts,
    /// Bulkhead rejections because every slot and the queue were taken
    /// (from the bulkhead's events).
    pub shed_queue_full: u64,
    /// Bulkhead rejections after waiting the whole `max_wait` in the queue
    /// (from the bulkhead's events).
    pub shed_wait_timed_out: u64,
    /// Calls the circuit breaker rejected with 503 without calling the
    /// upstream, because it was open or half-open with every probe slot
    /// taken (from its events). With the bulkhead's rejections, this makes
    /// up every 503.
    pub circuit_rejected: u64,
    /// Times the circuit breaker opened: tripped from closed, or reopened
    /// from half-open because its probes failed (from its events).
    pub circuit_opened: u64,
    /// Among [`circuit_opened`](Self::circuit_opened), the reopenings from
    /// half-open.
    pub circuit_reopened: u64,
    /// Times the circuit breaker closed again after its probes passed (from
    /// its events).
    pub circuit_closed: u64,
    /// The breaker's state at the end of the load: `"closed"`, `"open"` or
    /// `"half_open"`.
    pub circuit_state: &'static str,
    /// Upstream calls the gateway's timeout cut (from its handle).
    pub upstream_calls_timed_out: u64,
    /// Most calls seen running in the bulkhead at once (sampled).
    pub peak_active: usize,
    /// Most calls seen waiting in the bulkhead's queue at once (sampled).
    pub peak_queued: usize,
    /// Median latency of all requests.
    pub p50: Duration,
    /// 99th percentile latency of all requests.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
    /// The same, phase by phase, in order.
    pub phases: Vec<PhaseSummary>,
    /// The registry snapshot at the end of the load.
    pub registry: serde_json::Value,
}

/// What the live loop hands to [`Report::summary`].
#[derive(Debug)]
pub(crate) struct Totals {
    elapsed: Duration,
    counts: Counts,
    latencies: Vec<Duration>,
    phases: Vec<PhaseTotals>,
}

/// One phase, as the live loop sums it up.
#[derive(Debug)]
struct PhaseTotals {
    phase: Phase,
    seconds: u64,
    counts: Counts,
    latencies: Vec<Duration>,
    breaks: BreakCounts,
}

/// Prints the table while the load runs and sums it up.
#[derive(Debug)]
pub(crate) struct Report {
    secs: u64,
    observer: Observer,
    print: bool,
    concurrency: usize,
    peak_active: usize,
    peak_queued: usize,
}

impl Report {
    /// A report for a run of `secs` seconds; prints only if `print`.
    pub(crate) fn new(secs: u64, observer: Observer, print: bool) -> Self {
        Self {
            secs,
            observer,
            print,
            concurrency: 0,
            peak_active: 0,
            peak_queued: 0,
        }
    }

    /// The setup, the legend and the table header.
    pub(crate) fn print_intro(
        &mut self,
        concurrency: usize,
        gateway: SocketAddr,
        timeline: &Timeline,
    ) {
        self.concurrency = concurrency;
        if !self.print {
            return;
        }
        let (healthy_until, degraded_until) = timeline.boundaries();
        let secs = timeline.secs();
        let rates = |p: Phase| format!("{}% slow, {}% fail", p.slow_percent(), p.error_percent());
        println!("buttress demo: {secs} s, {concurrency} clients in a closed loop (each waits for its answer)");
        println!();
        println!(
            "  upstream  answers in {}-{} ms, slow calls take {}-{} ms, failures are 500",
            FAST_MS.0, FAST_MS.1, SLOW_MS.0, SLOW_MS.1
        );
        println!(
            "            healthy 0-{healthy_until} s ({}), degraded {healthy_until}-{degraded_until} s ({}), recovered {degraded_until}-{secs} s ({})",
            rates(Phase::Healthy),
            rates(Phase::Degraded),
            rates(Phase::Recovered)
        );
        println!("  gateway   http://{gateway}, outermost first:");
        println!("            error-to-response   rejections become 503 (+ Retry-After) / 504, empty body");
        println!(
            "            bulkhead `gateway`  {MAX_CONCURRENT} running, {MAX_QUEUE} queued, wait at most {}",
            ms(MAX_WAIT)
        );
        println!(
            "            breaker `upstream`  opens at {BREAKER_THRESHOLD:.0}% failures (500, timeouts) in the last {BREAKER_WINDOW} calls,\n                                \
             stays open {} s, then lets {BREAKER_PROBES} probes through: closes if under {BREAKER_THRESHOLD:.0}% fail",
            BREAKER_OPEN.as_secs_f64()
        );
        println!(
            "            timeout `upstream-timeout`  {} per forwarded call",
            ms(UPSTREAM_TIMEOUT)
        );
        println!();
        println!(
            "  columns   500 upstream failure passed on; 503 rejected, by the bulkhead (full: queue full,\n            \
             wait: waited {} in the queue) or the open circuit (open); 504 cut by the timeout;\n            \
             active/queued: bulkhead now; circuit: breaker state now",
            ms(MAX_WAIT)
        );
        println!();
        println!(
            "{:>4}  {:<9} {:>5} {:>5} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>6} {:>6} {:>6} {:>7}  circuit",
            "sec",
            "phase",
            "req",
            "200",
            "500",
            "503",
            "full",
            "wait",
            "open",
            "504",
            "active",
            "queued",
            "p50",
            "p99",
        );
        println!("{}", "-".repeat(TABLE_WIDTH));
    }

    /// Prints one row per second until the load is over; the last row
    /// waits for the clients' last answers.
    pub(crate) async fn live(
        &mut self,
        start: Instant,
        timeline: &Timeline,
        mut samples: UnboundedReceiver<Sample>,
        load: Load,
    ) -> Totals {
        let mut load = Some(load);
        let mut rejections_before = (0, 0);
        let mut breaks_before = BreakCounts::default();
        let mut totals = Totals {
            elapsed: Duration::ZERO,
            counts: Counts::default(),
            latencies: Vec::new(),
            phases: Vec::new(),
        };
        for second in 1..=self.secs {
            self.watch_until(start + Duration::from_secs(second)).await;
            let occupancy = self.observer.bulkhead.snapshot();
            if second == self.secs {
                if let Some(load) = load.take() {
                    load.finish().await;
                }
            }
            let mut counts = Counts::default();
            let mut latencies = Vec::new();
            while let Ok(sample) = samples.try_recv() {
                counts.add(sample.outcome);
                latencies.push(sample.latency);
            }
            latencies.sort_unstable();
            let rejections = self.observer.rejections.get();
            let full = rejections.0 - rejections_before.0;
            let wait = rejections.1 - rejections_before.1;
            rejections_before = rejections;
            let breaks_now = self.observer.breaks.get();
            let breaks = breaks_now.since(breaks_before);
            breaks_before = breaks_now;
            let circuit = self.observer.breaker.state();
            let phase = timeline.phase_at(Duration::from_secs(second - 1));
            if self.print {
                println!(
                    "{second:>4}  {phase:<9} {:>5} {:>5} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>6} {:>6} {:>6} {:>7}  {}",
                    counts.total,
                    counts.ok,
                    counts.upstream_errors,
                    counts.shed,
                    full,
                    wait,
                    breaks.not_permitted,
                    counts.timeouts,
                    occupancy.active,
                    occupancy.queued,
                    ms(percentile(&latencies, 50)),
                    ms(percentile(&latencies, 99)),
                    circuit.as_str(),
                );
                if counts.other > 0 {
                    println!("      ({} other: another status, a connection error or the client's {} timeout)", counts.other, ms(CLIENT_TIMEOUT));
                }
            }
            totals.counts.merge(&counts);
            totals.latencies.extend_from_slice(&latencies);
            match totals.phases.last_mut() {
                Some(p) if p.phase == phase => {
                    p.seconds += 1;
                    p.counts.merge(&counts);
                    p.latencies.extend(latencies);
                    p.breaks.merge(breaks);
                }
                _ => totals.phases.push(PhaseTotals {
                    phase,
                    seconds: 1,
                    counts,
                    latencies,
                    breaks,
                }),
            }
        }
        totals.elapsed = start.elapsed();
        totals
    }

    /// Sleeps until `until`, sampling the bulkhead's occupancy for its peak.
    async fn watch_until(&mut self, until: Instant) {
        loop {
            let snapshot = self.observer.bulkhead.snapshot();
            self.peak_active = self.peak_active.max(snapshot.active);
            self.peak_queued = self.peak_queued.max(snapshot.queued);
            let now = Instant::now();
            if now >= until {
                return;
            }
            sleep_until((now + OCCUPANCY_SAMPLE).min(until)).await;
        }
    }

    /// The final numbers.
    pub(crate) fn summary(&self, totals: Totals, registry: serde_json::Value) -> Summary {
        let Totals {
            elapsed,
            counts,
            mut latencies,
            phases,
        } = totals;
        latencies.sort_unstable();
        let (shed_queue_full, shed_wait_timed_out) = self.observer.rejections.get();
        let breaks = self.observer.breaks.get();
        let phases = phases
            .into_iter()
            .map(|mut p| {
                p.latencies.sort_unstable();
                PhaseSummary {
                    phase: p.phase.name(),
                    seconds: p.seconds,
                    counts: p.counts,
                    p50: percentile(&p.latencies, 50),
                    p99: percentile(&p.latencies, 99),
                    circuit_rejected: p.breaks.not_permitted,
                    circuit_opened: p.breaks.opened,
                    circuit_closed: p.breaks.closed,
                }
            })
            .collect();
        Summary {
            elapsed,
            concurrency: self.concurrency,
            counts,
            shed_queue_full,
            shed_wait_timed_out,
            circuit_rejected: breaks.not_permitted,
            circuit_opened: breaks.opened,
            circuit_reopened: breaks.reopened,
            circuit_closed: breaks.closed,
            circuit_state: self.observer.breaker.state().as_str(),
            upstream_calls_timed_out: self.observer.timeout.snapshot().timed_out,
            peak_active: self.peak_active,
            peak_queued: self.peak_queued,
            p50: percentile(&latencies, 50),
            p99: percentile(&latencies, 99),
            max: latencies.last().copied().unwrap_or_default(),
            phases,
            registry,
        }
    }
}

/// The nearest-rank percentile of sorted values; zero when there are none.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A duration for people: whole milliseconds, one decimal below 10 ms.
fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            c.total as f64 / secs
        } else {
            0.0
        };
        writeln!(
            f,
            "totals: {} requests in {secs:.1} s ({rate:.0} req/s) from {} clients",
            c.total, self.concurrency
        )?;
        let line = |f: &mut fmt::Formatter<'_>, label: &str, n: u64, note: String| {
            let pct = c.percent(n);
            if note.is_empty() {
                writeln!(f, "  {label:<18} {n:>7}  {pct:>5.1} %")
            } else {
                writeln!(f, "  {label:<18} {n:>7}  {pct:>5.1} %   {note}")
            }
        };
        line(f, "200 ok", c.ok, String::new())?;
        line(f, "500 upstream error", c.upstream_errors, String::new())?;
        line(
            f,
            "503 rejected",
            c.shed,
            format!(
                "bulkhead {} ({} queue full, {} waited {}), open circuit {}",
                self.shed_bulkhead(),
                self.shed_queue_full,
                self.shed_wait_timed_out,
                ms(MAX_WAIT),
                self.circuit_rejected
            ),
        )?;
        line(f, "504 timed out", c.timeouts, String::new())?;
        line(f, "other", c.other, String::new())?;
        writeln!(
            f,
            "  latency            p50 {}, p99 {}, max {}",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "by phase     {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}  circuit",
            "req/s", "200", "500", "503", "open", "504", "p99"
        )?;
        for p in &self.phases {
            let pc = &p.counts;
            writeln!(
                f,
                "  {:<10} {:>5} {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}% {:>7}  opened {}, closed {}",
                p.phase,
                pc.total / p.seconds.max(1),
                pc.percent(pc.ok),
                pc.percent(pc.upstream_errors),
                pc.percent(pc.shed),
                pc.percent(p.circuit_rejected),
                pc.percent(pc.timeouts),
                ms(p.p99),
                p.circuit_opened,
                p.circuit_closed
            )?;
        }
        writeln!(f)?;
        writeln!(f, "what each pattern did")?;
        writeln!(
            f,
            "  timeout    {} slow upstream calls cut at {} and answered 504: none held a\n             \
             bulkhead slot or a client for up to {} ms; the slowest answer took {}\n             \
             (at most {} in the queue plus {} of call, plus overhead)",
            self.upstream_calls_timed_out,
            ms(UPSTREAM_TIMEOUT),
            SLOW_MS.1,
            ms(self.max),
            ms(MAX_WAIT),
            ms(UPSTREAM_TIMEOUT)
        )?;
        self.fmt_circuit(f)?;
        writeln!(
            f,
            "  bulkhead   {} requests shed with 503 instead of queueing unboundedly: {} found\n             \
             {} running and {} waiting, {} waited {} in vain; peak {} running, {} waiting",
            self.shed_bulkhead(),
            self.shed_queue_full,
            MAX_CONCURRENT,
            MAX_QUEUE,
            self.shed_wait_timed_out,
            ms(MAX_WAIT),
            self.peak_active,
            self.peak_queued
        )?;
        writeln!(
            f,
            "  responses  rejections became bare 503 / 504 statuses (the breaker's 503s with\n             \
             Retry-After), never error text; the {} upstream 500s passed through",
            c.upstream_errors
        )?;
        writeln!(f)?;
        writeln!(f, "registry snapshot")?;
        let json = serde_json::to_string_pretty(&self.registry).map_err(|_| fmt::Error)?;
        writeln!(f, "{json}")
    }
}

impl Summary {
    /// 503s from the bulkhead: queue full or waited too long.
    pub fn shed_bulkhead(&self) -> u64 {
        self.shed_queue_full + self.shed_wait_timed_out
    }

    /// The breaker's line of "what each pattern did".
    fn fmt_circuit(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = if self.circuit_opened == 0 {
            format!(
                "never opened: the failure rate (500s and timeouts) of the last {BREAKER_WINDOW} \
                 calls stayed below {BREAKER_THRESHOLD:.0}%"
            )
        } else {
            format!(
                "opened {} {}",
                times(self.circuit_opened),
                self.phases_where(|p| p.circuit_opened)
            )
        };
        if self.circuit_reopened > 0 {
            text += &format!(
                ", {} of them because half-open probes failed again",
                self.circuit_reopened
            );
        }
        if self.circuit_closed > 0 {
            text += &format!(
                "; closed {} {} after {BREAKER_PROBES} probes with under \
                 {BREAKER_THRESHOLD:.0}% failures",
                times(self.circuit_closed),
                self.phases_where(|p| p.circuit_closed)
            );
        }
        text += &format!("; it ended {}", self.circuit_state);
        if self.circuit_rejected > 0 {
            text += &format!(
                ". {} calls failed fast with 503 (and Retry-After while open) instead of \
                 waiting up to {} on a failing upstream while holding a bulkhead slot",
                self.circuit_rejected,
                ms(UPSTREAM_TIMEOUT)
            );
        }
        writeln!(f, "  circuit    {}", wrap(&text, 78, "\n             "))
    }
}

impl Summary {
    /// Where something counted by `count` happened: "in the degraded
    /// phase" or "(1 in healthy, 3 in degraded)"; empty if nowhere.
    fn phases_where(&self, count: impl Fn(&PhaseSummary) -> u64) -> String {
        let phases: Vec<_> = self.phases.iter().filter(|p| count(p) > 0).collect();
        match phases.as_slice() {
            [] => String::new(),
            [one] => format!("in the {} phase", one.phase),
            many => {
                let parts: Vec<_> = many
                    .iter()
                    .map(|p| format!("{} in {}", count(p), p.phase))
                    .collect();
                format!("({})", parts.join(", "))
            }
        }
    }
}

/// `text` in lines of at most `width` characters (longer words stay
/// whole), joined by `newline`.
fn wrap(text: &str, width: usize, newline: &str) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split_whitespace() {
        if line_len > 0 && line_len + 1 + word.len() > width {
            out += newline;
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out += word;
        line_len += word.len();
    }
    out
}

/// "once", "twice", "3 times".
fn times(n: u64) -> String {
    match n {
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn counts_add_up() {
        let mut c = Counts::default();
        for o in [Outcome::Ok, Outcome::Ok, Outcome::Shed, Outcome::Other] {
            c.add(o);
        }
        assert_eq!((c.total, c.ok, c.shed, c.other), (4, 2, 1, 1));
        assert_eq!(c.percent(c.ok), 50.0);
    }

    #[test]
    fn long_lines_wrap_between_words() {
        assert_eq!(wrap("ab cd ef", 5, "|"), "ab cd|ef");
        assert_eq!(wrap("abcdefg h", 3, "|"), "abcdefg|h");
        assert_eq!(wrap("", 3, "|"), "");
    }

    #[test]
    fn counts_read_as_words() {
        assert_eq!(times(1), "once");
        assert_eq!(times(2), "twice");
        assert_eq!(times(7), "7 times");
    }

    #[test]
    fn latencies_print_in_milliseconds() {
        assert_eq!(ms(Duration::from_micros(4_260)), "4.3 ms");
        assert_eq!(ms(Duration::from_millis(152)), "152 ms");
    }
}
