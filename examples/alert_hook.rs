//! An alert hook on a circuit breaker: one alert when the breaker opens,
//! one when it closes again, and never more than one alert per breaker per
//! `min_interval`, so that a flapping breaker cannot flood the on-call
//! channel. Alerts held back by the interval are folded into one sent when
//! the interval is over, and only if the state then differs from the last
//! one alerted: the last alert always tells the breaker's current state.
//!
//! `cargo run -p buttress-examples --example alert_hook`

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress::circuit_breaker::{CircuitBreakerEvent, CircuitBreakerLayer, State};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

/// What an alert says about a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The breaker opened: calls to its dependency fail fast.
    Opened,
    /// The breaker closed again.
    Closed,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alert {
    /// The breaker's name.
    pub(crate) breaker: Arc<str>,
    /// Its state now.
    pub(crate) status: Status,
    /// Openings and closings folded into this alert by the rate limit.
    pub(crate) folded: u32,
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.status {
            Status::Opened => "opened",
            Status::Closed => "closed again",
        };
        write!(f, "ALERT breaker `{}` {what}", self.breaker)?;
        if self.folded > 0 {
            write!(f, " ({} more changes folded in)", self.folded)?;
        }
        Ok(())
    }
}

/// Per breaker: what was alerted last and when, and what is not alerted yet.
struct Breaker {
    alerted: Status,
    at: Option<Instant>,
    current: Status,
    folded: u32,
    flush_scheduled: bool,
}

type Sink = Arc<dyn Fn(Alert) + Send + Sync>;

/// Turns a breaker's transitions into rate-limited alerts.
#[derive(Clone)]
pub(crate) struct AlertHook {
    min_interval: Duration,
    breakers: Arc<Mutex<HashMap<Arc<str>, Breaker>>>,
    sink: Sink,
}

impl fmt::Debug for AlertHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertHook")
            .field("min_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

impl AlertHook {
    /// Sends alerts to `sink`, at most one per breaker per `min_interval`.
    pub(crate) fn new(
        min_interval: Duration,
        sink: impl Fn(Alert) + Send + Sync + 'static,
    ) -> Self {
        Self {
            min_interval,
            breakers: Arc::default(),
            sink: Arc::new(sink),
        }
    }

    /// The listener to give the breaker's builder (`.on_event(...)`).
    pub(crate) fn listener(&self) -> impl Fn(&CircuitBreakerEvent) + Send + Sync + 'static {
        let hook = self.clone();
        move |event| {
            if let CircuitBreakerEvent::StateTransition { name, to, .. } = event {
                // Half-open is neither: an opening ends with a close (or
                // another opening, which is no news).
                let status = match to {
                    State::Open | State::ForcedOpen => Status::Opened,
                    State::Closed => Status::Closed,
                    _ => return,
                };
                hook.changed(name, status);
            }
        }
    }

    fn changed(&self, name: &Arc<str>, status: Status) {
        let now = Instant::now();
        let mut breakers = self.breakers.lock().unwrap();
        let b = breakers.entry(name.clone()).or_insert(Breaker {
            alerted: Status::Closed,
            at: None,
            current: Status::Closed,
            folded: 0,
            flush_scheduled: false,
        });
        if status == b.current {
            return;
        }
        b.current = status;
        let free = b.at.is_none_or(|at| now >= at + self.min_interval);
        if free && !b.flush_scheduled {
            let alert = Self::take(name, b, now);
            drop(breakers);
            if let Some(alert) = alert {
                (self.sink)(alert);
            }
            return;
        }
        b.folded += 1;
        if !b.flush_scheduled {
            b.flush_scheduled = true;
            let at = b.at.map_or(now, |at| at + self.min_interval);
            let hook = self.clone();
            let name = name.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                hook.flush(&name);
            });
        }
    }

    /// Sends what the interval held back, if the state differs from the
    /// last alert.
    fn flush(&self, name: &Arc<str>) {
        let mut breakers = self.breakers.lock().unwrap();
        let Some(b) = breakers.get_mut(name) else {
            return;
        };
        b.flush_scheduled = false;
        let alert = Self::take(name, b, Instant::now());
        drop(breakers);
        if let Some(alert) = alert {
            (self.sink)(alert);
        }
    }

    fn take(name: &Arc<str>, b: &mut Breaker, now: Instant) -> Option<Alert> {
        let folded = std::mem::take(&mut b.folded);
        if b.current == b.alerted {
            // Flapped back to what was alerted last: nothing to say.
            return None;
        }
        b.alerted = b.current;
        b.at = Some(now);
        Some(Alert {
            breaker: name.clone(),
            status: b.current,
            folded: folded.saturating_sub(1),
        })
    }
}

/// Drives a breaker through an opening, a recovery, then a flapping
/// minute, and returns the alerts sent, with the second they were sent at.
pub(crate) async fn run() -> Vec<String> {
    let start = Instant::now();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let sent = sent.clone();
        AlertHook::new(Duration::from_secs(60), move |alert: Alert| {
            let line = format!("t={}s {alert}", start.elapsed().as_secs());
            println!("{line}");
            sent.lock().unwrap().push(line);
        })
    };
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .consecutive_failures(3)
        .wait_in_open(Duration::from_secs(5))
        .permitted_calls_in_half_open(1)
        .on_event(hook.listener())
        .build()
        .expect("valid breaker");
    let call = |fail: bool| {
        let svc = breaker.layer(service_fn(move |()| async move {
            if fail {
                Err::<(), _>("payments down")
            } else {
                Ok(())
            }
        }));
        svc.oneshot(())
    };

    // An outage: three failures open the breaker (alert), ...
    for _ in 0..3 {
        let _ = call(true).await;
    }
    // ... it recovers after the open wait (alert, 70 s after the first).
    tokio::time::sleep(Duration::from_secs(70)).await;
    let _ = call(false).await;
    // Then it flaps: open, closed, open, closed, ... every 6 s for a
    // minute. One alert says it opened; the rest are folded.
    tokio::time::sleep(Duration::from_secs(70)).await;
    for _ in 0..5 {
        for _ in 0..3 {
            let _ = call(true).await;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        let _ = call(false).await;
    }
    // The interval ends with the breaker closed: one alert says so.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let lines = sent.lock().unwrap().clone();
    lines
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    // The paused clock makes the minutes of this story pass at once.
    let lines = run().await;
    println!("{} alerts", lines.len());
}
